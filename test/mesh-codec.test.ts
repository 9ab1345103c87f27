import { test } from 'node:test'
import assert from 'node:assert/strict'
import { encodeLoad, decodeLoad, LoadDecodeError, MAX_LOAD_MESSAGE_BYTES, MAX_TOOLCHAINS, loadTopic, type LoadMessage } from '../src/mesh/protocols/load-gossip.js'
import { decodeExchange, exchangeDoc, MAX_EXCHANGE_ADDRS } from '../src/mesh/protocols/member-exchange.js'
import { MAX_CONTROL_BYTES, ProtocolViolation } from '../src/mesh/protocols/framing.js'
import { decodeFileTable, encodeFileTable, type JobFileRef } from '../src/mesh/protocols/compile-job.js'
import { createHash } from 'node:crypto'
import { firstLine } from '../src/log.js'

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
  assert.equal(decodeLoad(encodeLoad({ ...sample, wantsForwarding: true })).wantsForwarding, true)
  assert.equal(decodeLoad(encodeLoad(sample)).wantsForwarding, undefined)
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

test('member exchange: roundtrip, caps, and one control frame at most', () => {
  const members = [{ peerId: '12D3KooWabc', addrs: Array.from({ length: 10 }, (_, i) => `/ip4/10.0.0.${i}/tcp/10650`) }]
  const doc = JSON.parse(JSON.stringify(exchangeDoc({ load: sample, members }))) as Record<string, unknown>
  const back = decodeExchange(doc)
  assert.deepEqual(back.load, sample)
  assert.equal(back.members[0]!.peerId, '12D3KooWabc')
  assert.equal(back.members[0]!.addrs.length, MAX_EXCHANGE_ADDRS)
  // a huge mesh is cut to what fits one control frame, and that still decodes
  const many = Array.from({ length: 5000 }, (_, i) => ({ peerId: `12D3KooW${'x'.repeat(44)}${i}`, addrs: ['/ip4/10.1.2.3/tcp/10650', '/ip6/fd00::1/tcp/10650', '/ip4/192.168.100.200/tcp/10650', '/dns4/some-build-host.example.org/tcp/10650'] }))
  const big = exchangeDoc({ load: sample, members: many })
  assert.ok(Buffer.byteLength(JSON.stringify(big)) <= MAX_CONTROL_BYTES)
  assert.ok(decodeExchange(JSON.parse(JSON.stringify(big)) as Record<string, unknown>).members.length > 100)
})

test('member exchange: bad frames are refused with a ProtocolViolation naming the field', () => {
  const good = JSON.parse(JSON.stringify(exchangeDoc({ load: sample, members: [] }))) as Record<string, unknown>
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ ...good, v: 2 }, /field v/],
    [{ ...good, load: '{"v":1}' }, /field load/],
    [{ ...good, load: 7 }, /field load/],
    [{ ...good, members: 'all' }, /field members/],
    [{ ...good, members: [['12D3KooWabc']] }, /members\[0\]/],
    [{ ...good, members: [[5, []]] }, /members\[0\]\[0\]/],
    [{ ...good, members: [['12D3KooWabc', ['a', 'b', 'c', 'd', 'e']]] }, /members\[0\]\[1\]/],
    [{ ...good, members: Array.from({ length: 1001 }, () => ['p', []]) }, /field members/]
  ]
  for (const [doc, re] of bad) assert.throws(() => decodeExchange(doc), (e: unknown) => e instanceof ProtocolViolation && re.test((e as Error).message), JSON.stringify(doc).slice(0, 120))
})

test('compile job file table: roundtrip of thousands of entries, compact, and every malformed table refused', () => {
  const hash = (i: number) => createHash('sha256').update(String(i)).digest('hex')
  const files: JobFileRef[] = ['/usr/include/stdio.h', '/usr/include/stdlib.h', '/home/ünï/src/a b.h',
    ...Array.from({ length: 3000 }, (_, i) => `/w/include/vendor/lib/detail/component_${i}.hpp`)].sort()
    .map((path, i) => ({ path, mode: i % 2 ? 0o755 : 0o644, size: i * 1000, hash: hash(i) }))
  const table = encodeFileTable(files)
  assert.deepEqual(decodeFileTable(table, files.length), files)
  assert.ok(table.length < files.length * 70, `${table.length} bytes for ${files.length} entries`)
  assert.deepEqual(decodeFileTable(encodeFileTable([]), 0), [])
  const bad = (t: Buffer, n: number, why: RegExp) => assert.throws(() => decodeFileTable(t, n), (e: Error) => e instanceof ProtocolViolation && why.test(e.message))
  bad(table.subarray(0, table.length - 1), files.length, /ends inside entry/)
  bad(table, files.length - 1, /longer than its entries/)
  bad(table, files.length + 1, /ends inside entry/)
  const one = (path: string, shared = 0, mode = 0o644, size = 1) => {
    const p = Buffer.from(path)
    const b = Buffer.alloc(4 + p.length + 38)
    b.writeUInt16BE(shared, 0); b.writeUInt16BE(p.length, 2); p.copy(b, 4); b.writeUInt16BE(mode, 4 + p.length); b.writeUInt32BE(size, 6 + p.length)
    return b
  }
  assert.equal(decodeFileTable(one('/ok.h'), 1)[0]!.path, '/ok.h')
  bad(one('relative.h'), 1, /absolute/)
  bad(one('/a/../etc/passwd'), 1, /absolute/)
  bad(one('/x.h', 1), 1, /bad path length/) // shares bytes with a previous path that does not exist
  bad(one('/x.h', 0, 0o4755), 1, /mode/)
  bad(one('/x.h', 0, 0o644, 0xffffffff), 1, /size/)
})

test('firstLine: what a failed stream operation threw, as one line, whatever it was', () => {
  // libp2p's write rejects with the stream's close Event when the peer resets it mid-write:
  // reading .message of that in a catch block threw a TypeError before firstLine
  assert.equal(firstLine(new Event('close')), '[object Event]')
  assert.equal(firstLine(null), 'null')
  assert.equal(firstLine(undefined), 'undefined')
  assert.equal(firstLine('text\nstack'), 'text')
  assert.equal(firstLine(new Error('first\n    at x')), 'first')
  assert.equal(firstLine(new Error('x'.repeat(300)), 120).length, 120)
})
