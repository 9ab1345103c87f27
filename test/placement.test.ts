// The placement policy: never a full peer, the better of two weighted draws, and a spread
// that tracks free capacity (what keeps many clients from herding onto one peer).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { choosePeer, type Candidate } from '../src/daemon/placement.js'

const peer = (id: string, free: number, extra: Partial<Candidate> = {}): Candidate => ({ id, free, speed: 10, rttMs: 1, hasToolchain: false, ...extra })

/** a repeatable pseudo-random sequence */
function lcg(seed: number): () => number {
  let s = seed
  return () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
}

test('no candidate with free slots means no peer', () => {
  assert.equal(choosePeer([]), null)
  assert.equal(choosePeer([peer('a', 0), peer('b', 0)]), null)
})

test('a full peer is never chosen', () => {
  const r = lcg(1)
  for (let i = 0; i < 500; i++) assert.equal(choosePeer([peer('full', 0), peer('free', 1)], r)!.id, 'free')
})

test('the spread follows free capacity and favours toolchain holders', () => {
  const r = lcg(7)
  const counts: Record<string, number> = { big: 0, small: 0, holder: 0 }
  for (let i = 0; i < 6000; i++) counts[choosePeer([peer('big', 8), peer('small', 2), peer('holder', 2, { hasToolchain: true })], r)!.id]++
  assert.ok(counts.big > counts.small * 3, JSON.stringify(counts))
  assert.ok(counts.holder > counts.small * 1.5, JSON.stringify(counts))
  assert.ok(counts.small > 0, 'a small peer still gets work: no herding onto the single best')
})
