// The placement policy: never a full peer, the fastest tier with room first, a spread within
// that tier that tracks free capacity (what keeps many clients from piling onto one peer), and
// a free local slot skipped only for a clearly faster peer.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { choosePeer, fasterPeerThanHere, hedgeAfterMs, HEDGE_FACTOR, HEDGE_FLOOR_MS, JobTimes, type Candidate } from '../src/daemon/placement.js'

const peer = (id: string, free: number, extra: Partial<Candidate> = {}): Candidate => ({ id, free, speed: 10, rttMs: 1, hasToolchain: false, ...extra })

/** a repeatable pseudo-random sequence */
function lcg(seed: number): () => number {
  let s = seed
  return () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
}

function spread(cands: Candidate[], n: number, seed: number): Record<string, number> {
  const r = lcg(seed)
  const counts: Record<string, number> = Object.fromEntries(cands.map((c) => [c.id, 0]))
  for (let i = 0; i < n; i++) counts[choosePeer(cands, r)!.id]!++
  return counts
}

test('no candidate with free slots means no peer', () => {
  assert.equal(choosePeer([]), null)
  assert.equal(choosePeer([peer('a', 0), peer('b', 0)]), null)
})

test('a full peer is never chosen, however fast', () => {
  const r = lcg(1)
  for (let i = 0; i < 500; i++) assert.equal(choosePeer([peer('full', 0, { speed: 100 }), peer('free', 1)], r)!.id, 'free')
})

test('among equally fast peers the spread follows free capacity; no herding onto the biggest', () => {
  // speed scores within 10 % are one tier: measured speeds of identical machines differ a little
  const counts = spread([peer('big', 8), peer('small', 2, { speed: 9.5 }), peer('mid', 4, { speed: 10.4 })], 7000, 7)
  assert.ok(counts.big! > counts.small! * 3, JSON.stringify(counts))
  assert.ok(counts.mid! > counts.small! * 1.5, JSON.stringify(counts))
  assert.ok(counts.small! > 0, JSON.stringify(counts))
})

test('a faster peer with room wins over a slower one with more room', () => {
  // what the two-draw policy got wrong: an idle 16-slot slow builder beat an idle 2-slot fast one
  const counts = spread([peer('slow-big', 16, { speed: 10 }), peer('fast-small', 2, { speed: 20 })], 500, 3)
  assert.deepEqual(counts, { 'slow-big': 0, 'fast-small': 500 })
})

test('a toolchain holder comes first; a far peer only when the near ones are full', () => {
  assert.equal(spread([peer('lacks', 8), peer('holds', 1, { hasToolchain: true })], 300, 5).holds, 300)
  assert.equal(spread([peer('far', 8, { rttMs: 40 }), peer('near', 1, { rttMs: 1 })], 300, 5).near, 300)
  assert.equal(choosePeer([peer('far', 8, { rttMs: 40 }), peer('near', 0, { rttMs: 1 })], lcg(2))!.id, 'far')
})

test('a free local slot is skipped only for a peer with room that is clearly faster', () => {
  assert.equal(fasterPeerThanHere(100, [{ speed: 150, rttMs: 1 }]), true)
  assert.equal(fasterPeerThanHere(100, [{ speed: 110, rttMs: 1 }]), false, 'noise between equal machines keeps jobs here')
  assert.equal(fasterPeerThanHere(100, [{ speed: 150, rttMs: 40 }]), false, 'a far peer does not pay for the transfer')
  assert.equal(fasterPeerThanHere(100, []), false)
  assert.equal(fasterPeerThanHere(null, [{ speed: 500, rttMs: 1 }]), false, 'before its own first load message a daemon stays local')
})

test('among equally fast peers, the one holding more of the job\'s inputs is preferred, and the other still gets jobs', () => {
  const s = spread([peer('holds', 2, { inputsHeld: 1 }), peer('empty', 2, { inputsHeld: 0 })], 2000, 11)
  // weights 1.25 : 0.25
  assert.ok(s.holds! > 1550 && s.holds! < 1780, JSON.stringify(s))
  assert.ok(s.empty! > 200, 'no peer starves: the load still spreads')
  // held inputs never lift a slower tier or a full peer
  assert.equal(choosePeer([peer('slow', 4, { speed: 1, inputsHeld: 1 }), peer('fast', 1, { speed: 10, inputsHeld: 0 })], lcg(3))!.id, 'fast')
  assert.equal(choosePeer([peer('full', 0, { inputsHeld: 1 }), peer('free', 1, { inputsHeld: 0 })], lcg(3))!.id, 'free')
})

test('the hedge bound follows a peer\'s usual job time per toolchain, and a job that fetched the toolchain is not a usual one', () => {
  const times = new JobTimes()
  const gcc = 'peer\0gcc-toolchain'
  const rustc = 'peer\0rustc-toolchain'
  // nothing finished there yet: three times the floor
  assert.equal(hedgeAfterMs(times.get(rustc)), HEDGE_FACTOR * HEDGE_FLOOR_MS)
  // the first rustc job had the peer fetch its 175 MiB toolchain: 20 s that no later job takes
  times.record(rustc, 20_000, true)
  assert.equal(times.get(rustc), null)
  assert.equal(hedgeAfterMs(times.get(rustc)), HEDGE_FACTOR * HEDGE_FLOOR_MS)
  // crates of 1.5 s: the bound is three times that
  for (let i = 0; i < 5; i++) times.record(rustc, 1_500)
  assert.equal(hedgeAfterMs(times.get(rustc)), HEDGE_FACTOR * 1_500)
  // short C units on the same peer leave rustc's bound alone, and get the floor
  for (let i = 0; i < 5; i++) times.record(gcc, 100)
  assert.equal(hedgeAfterMs(times.get(rustc)), HEDGE_FACTOR * 1_500)
  assert.equal(hedgeAfterMs(times.get(gcc)), HEDGE_FLOOR_MS)
  // the usual time follows the last jobs (about five)
  for (let i = 0; i < 12; i++) times.record(rustc, 4_000)
  assert.ok(Math.abs(times.get(rustc)! - 4_000) < 100, `${times.get(rustc)}`)
})
