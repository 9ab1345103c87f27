// Byte-exact checks against the worked examples in docs/sccache-protocol.md 1.9
// (produced there with the real bincode 1.3.3 crate).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  BincodeError,
  BincodeReader,
  decodeToolchain,
  encodeAllocJobFail,
  encodeSchedulerStatus,
  schedulerStatusJson
} from '../src/shim/bincode.js'

/** Hex as printed in the doc: spaces/newlines ignored, "0000 " offsets stripped. */
function hex(text: string): Buffer {
  const cleaned = text.split('\n').map((l) => l.replace(/^[0-9a-f]{4}  /, '')).join(' ')
  return Buffer.from(cleaned.replace(/\s+/g, ''), 'hex')
}

test('SchedulerStatusResult 3/56/24 is the doc\'s 24 bytes', () => {
  const expected = hex(`
03 00 00 00 00 00 00 00
38 00 00 00 00 00 00 00
18 00 00 00 00 00 00 00`)
  const got = encodeSchedulerStatus({ numServers: 3, numCpus: 56, inProgress: 24 })
  assert.equal(got.length, 24)
  assert.deepEqual(got, expected)
})

test('status JSON matches the reference scheduler', () => {
  assert.equal(schedulerStatusJson({ numServers: 3, numCpus: 56, inProgress: 24 }), '{"num_servers":3,"num_cpus":56,"in_progress":24}')
})

test('large usize values are u64 little-endian', () => {
  const got = encodeSchedulerStatus({ numServers: 0, numCpus: 2 ** 32 + 1, inProgress: Number.MAX_SAFE_INTEGER })
  assert.deepEqual(got.subarray(8, 16), hex('01 00 00 00 01 00 00 00'))
  assert.deepEqual(got.subarray(16, 24), hex('ff ff ff ff ff ff 1f 00'))
})

test('status refuses values a usize cannot hold exactly', () => {
  for (const bad of [-1, 1.5, Number.NaN, Infinity, 2 ** 53]) {
    assert.throws(() => encodeSchedulerStatus({ numServers: bad, numCpus: 1, inProgress: 0 }), RangeError)
    assert.throws(() => schedulerStatusJson({ numServers: 1, numCpus: bad, inProgress: 0 }), RangeError)
  }
})

test('AllocJobHttpResponse::Fail is the doc\'s 60 bytes', () => {
  const expected = hex(`
01 00 00 00
30 00 00 00 00 00 00 00
49 6e 73 75 66 66 69 63 69 65 6e 74 20 63 61 70
61 63 69 74 79 20 61 63 72 6f 73 73 20 30 20 61
76 61 69 6c 61 62 6c 65 20 73 65 72 76 65 72 73`)
  const got = encodeAllocJobFail('Insufficient capacity across 0 available servers')
  assert.equal(got.length, 60)
  assert.deepEqual(got, expected)
})

test('Fail msg length counts UTF-8 bytes, not UTF-16 units', () => {
  const got = encodeAllocJobFail('é')
  assert.deepEqual(got, hex('01 00 00 00 02 00 00 00 00 00 00 00 c3 a9'))
})

test('the doc\'s 72-byte alloc_job request decodes to its Toolchain', () => {
  const body = hex(`
40 00 00 00 00 00 00 00
35 66 32 62 31 63 30 65 39 64 38 61 37 62 36 63
35 64 34 65 33 66 32 61 31 62 30 63 39 64 38 65
37 66 36 61 35 62 34 63 33 64 32 65 31 66 30 61
39 62 38 63 37 64 36 65 35 66 34 61 33 62 32 63`)
  assert.equal(body.length, 72)
  assert.deepEqual(decodeToolchain(body), { archiveId: '5f2b1c0e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c' })
  // trailing bytes are ignored, as by bincode::deserialize
  assert.equal(decodeToolchain(Buffer.concat([body, Buffer.from([1, 2, 3])])).archiveId.length, 64)
})

test('decoding refuses short, oversized-length and non-UTF-8 input without throwing anything else', () => {
  assert.throws(() => decodeToolchain(Buffer.alloc(0)), BincodeError)
  assert.throws(() => decodeToolchain(hex('05 00 00 00 00 00 00 00 61 62')), BincodeError)
  assert.throws(() => decodeToolchain(hex('ff ff ff ff ff ff ff ff')), BincodeError)
  assert.throws(() => decodeToolchain(hex('01 00 00 00 00 00 00 00 ff')), BincodeError)
})

test('reader walks a Fail response', () => {
  const r = new BincodeReader(encodeAllocJobFail('no'))
  assert.equal(r.u32(), 1)
  assert.equal(r.string(), 'no')
  assert.equal(r.remaining, 0)
})
