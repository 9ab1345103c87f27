import { test } from 'node:test'
import assert from 'node:assert/strict'
import { encodeLoad, decodeLoad, LoadDecodeError, MAX_LOAD_MESSAGE_BYTES, MAX_TOOLCHAINS, loadTopic, type LoadMessage } from '../src/mesh/protocols/load-gossip.js'

const sample: LoadMessage = {
  cores: 16, running: 3, queued: 1, freeSlots: 13, load1: 2.57, speed: 1.25,
  toolchains: ['a'.repeat(64), 'b'.repeat(64)], accept: 'idle', version: '0.1.0', shim: true,
  name: 'build-host-1', addrs: ['/ip4/10.0.0.5/tcp/10650/p2p/12D3KooWabc'], seq: 1717000000123, timestamp: 1717000000999
}

test('load message roundtrip', () => {
  const bytes = encodeLoad(sample)
  assert.ok(bytes.length < 512, `compact: ${bytes.length} bytes`)
  assert.deepEqual(decodeLoad(bytes), sample)
  const bye = decodeLoad(encodeLoad({ ...sample, bye: true, accept: 'never' }))
  assert.equal(bye.bye, true)
  assert.equal(bye.accept, 'never')
})

test('encode caps lists and sanitises numbers', () => {
  const m = decodeLoad(encodeLoad({ ...sample, toolchains: Array.from({ length: 100 }, (_, i) => `t${i}`), load1: NaN, cores: -3, speed: Infinity }))
  assert.equal(m.toolchains.length, MAX_TOOLCHAINS)
  assert.equal(m.load1, 0)
  assert.equal(m.cores, 0)
  assert.equal(m.speed, 0)
})

test('garbage is rejected with LoadDecodeError', () => {
  const enc = (s: string) => new TextEncoder().encode(s)
  const good = JSON.parse(new TextDecoder().decode(encodeLoad(sample))) as Record<string, unknown>
  const bad: Array<[string, Uint8Array]> = [
    ['empty', new Uint8Array(0)],
    ['binary', new Uint8Array([0xff, 0xfe, 0x00, 0x01])],
    ['not json', enc('hello')],
    ['array', enc('[1,2,3]')],
    ['null', enc('null')],
    ['wrong version', enc(JSON.stringify({ ...good, v: 2 }))],
    ['missing version', enc(JSON.stringify({ ...good, v: undefined }))],
    ['bad accept', enc(JSON.stringify({ ...good, a: 'x' }))],
    ['negative cores', enc(JSON.stringify({ ...good, c: -1 }))],
    ['fractional running', enc(JSON.stringify({ ...good, r: 1.5 }))],
    ['string cores', enc(JSON.stringify({ ...good, c: '4' }))],
    ['toolchains not array', enc(JSON.stringify({ ...good, t: 'abc' }))],
    ['toolchain not string', enc(JSON.stringify({ ...good, t: [1] }))],
    ['too many addrs', enc(JSON.stringify({ ...good, ad: Array.from({ length: 40 }, () => '/ip4/1.2.3.4/tcp/1') }))],
    ['long name', enc(JSON.stringify({ ...good, n: 'x'.repeat(1000) }))],
    ['missing seq', enc(JSON.stringify({ ...good, seq: undefined }))]
  ]
  for (const [what, data] of bad) {
    assert.throws(() => decodeLoad(data), LoadDecodeError, what)
  }
})

test('oversize messages are rejected before parsing', () => {
  const big = new TextEncoder().encode(JSON.stringify({ v: 1, pad: 'x'.repeat(MAX_LOAD_MESSAGE_BYTES) }))
  assert.throws(() => decodeLoad(big), /too large/)
})

test('unknown fields are ignored (room for additions)', () => {
  const doc = { ...JSON.parse(new TextDecoder().decode(encodeLoad(sample))), future: { x: 1 } }
  assert.deepEqual(decodeLoad(new TextEncoder().encode(JSON.stringify(doc))), sample)
})

test('topic names the mesh', () => {
  assert.equal(loadTopic('0123abcd'), '/meshcc/0123abcd/load/1')
})
