// An rlib holds its crate's metadata a second time (the .rmeta file's bytes, inside the archive's
// lib.rmeta member): the entry format stores the rlib whole and the rmeta as a slice of it.
// Real rustc makes the rlib and rmeta; the forged payloads are what a hostile peer holding the
// mesh key could send (checksum and all).
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { EntryFormatError, HEADER_LENGTH, decodeEntry, encodeEntry, type CacheEntry } from '../src/cache/entry-format.js'
import { embeddedMetadata } from '../src/cache/rlib-metadata.js'
import { openSignedEntry, sealEntry } from '../src/cache/signed-entry.js'
import { findCargo } from './helpers/cargo.js'

const K = createHash('sha256').update('rlib entry').digest('hex')
let dir: string
let rlib: Buffer
let rmeta: Buffer

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'meshcc-rlib-entry-'))
  // enough code that the metadata is far larger than the entry's overhead
  const fns = Array.from({ length: 200 }, (_, i) => `pub fn f${i}(x: u64) -> u64 { x.wrapping_mul(${i + 3}) ^ ${i} }\n#[inline] pub fn g${i}<T: Clone>(v: &[T]) -> Vec<T> { v.iter().cloned().skip(${i % 7}).collect() }`)
  writeFileSync(join(dir, 'lib.rs'), fns.join('\n') + '\n')
  const { rustc } = findCargo()
  const r = spawnSync(rustc, ['--crate-name', 'dedupe', '--edition=2021', '--crate-type', 'lib', '--emit=dep-info,metadata,link', '-C', 'debuginfo=2', '--out-dir', dir, join(dir, 'lib.rs')], { encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
  rlib = readFileSync(join(dir, 'libdedupe.rlib'))
  rmeta = readFileSync(join(dir, 'libdedupe.rmeta'))
})
after(() => rmSync(dir, { recursive: true, force: true }))

const rustEntry = (outputs = [{ name: 'rlib', data: rlib }, { name: 'rmeta', data: rmeta }]): CacheEntry =>
  ({ exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.from('warning: x\n'), outputs })

test("rustc's rlib holds the rmeta output's bytes where rlib-metadata.ts says", () => {
  const at = embeddedMetadata(rlib)
  assert.ok(at, 'lib.rmeta member and its .rmeta section found')
  assert.equal(at.size, rmeta.length)
  assert.ok(rlib.subarray(at.offset, at.offset + at.size).equals(rmeta))
  assert.equal(embeddedMetadata(rmeta), null)
  assert.equal(embeddedMetadata(Buffer.from('!<arch>\n')), null)
  // a member that claims more bytes than the archive has is not followed
  const cut = Buffer.from(rlib.subarray(0, at.offset + 10))
  assert.equal(embeddedMetadata(cut), null)
})

test('an rlib and its rmeta are stored once and come back byte-identical', async () => {
  const enc = await encodeEntry(rustEntry(), K, { uncompressed: true })
  assert.equal(enc[8], 3, 'format version 3: an output refers to another')
  const payload = enc.readUInt32LE(12)
  assert.ok(payload < rlib.length + 4096, `payload of ${payload} bytes for an rlib of ${rlib.length} and an rmeta of ${rmeta.length}: the metadata is stored once`)
  const back = await decodeEntry(enc, K)
  assert.deepEqual(back.outputs.map((o) => o.name), ['rlib', 'rmeta'])
  assert.ok(back.outputs[0]!.data.equals(rlib), 'the rlib rebuilt exactly')
  assert.ok(back.outputs[1]!.data.equals(rmeta))
  // compressed too, and in the other order
  const swapped = rustEntry([{ name: 'rmeta', data: rmeta }, { name: 'rlib', data: rlib }])
  const back2 = await decodeEntry(await encodeEntry(swapped, K), K)
  assert.ok(back2.outputs[1]!.data.equals(rlib) && back2.outputs[0]!.data.equals(rmeta))
})

test('an rmeta that differs from the rlib\'s metadata is stored whole (version 2, as before)', async () => {
  const other = Buffer.from(rmeta)
  other[other.length - 1] ^= 1
  const enc = await encodeEntry(rustEntry([{ name: 'rlib', data: rlib }, { name: 'rmeta', data: other }]), K, { uncompressed: true })
  assert.equal(enc[8], 2)
  assert.ok(enc.readUInt32LE(12) > rlib.length + other.length)
  const back = await decodeEntry(enc, K)
  assert.ok(back.outputs[0]!.data.equals(rlib) && back.outputs[1]!.data.equals(other))
})

test('an entry in the version 2 layout with both outputs whole (older meshcc) still reads', async () => {
  const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b }
  const payload = Buffer.concat([Buffer.alloc(4), u32(0), u32(0), Buffer.from([2, 0]),
    Buffer.from([4]), Buffer.from('rlib'), u32(rlib.length), rlib, Buffer.from([5]), Buffer.from('rmeta'), u32(rmeta.length), rmeta, Buffer.from([0, 0])])
  const header = Buffer.alloc(HEADER_LENGTH)
  header.write('MESHCC01', 0, 'latin1')
  header[8] = 2
  header.writeUInt32LE(payload.length, 12)
  header.writeUInt32LE(payload.length, 16)
  createHash('sha256').update(payload).digest().copy(header, 20)
  Buffer.from(K, 'hex').copy(header, 52)
  const back = await decodeEntry(Buffer.concat([header, payload]), K)
  assert.ok(back.outputs[0]!.data.equals(rlib) && back.outputs[1]!.data.equals(rmeta))
})

/** The entry with one field of the rmeta's slice changed and its checksum made right again. */
async function forged(change: (payload: Buffer, ref: number) => void): Promise<Buffer> {
  const enc = Buffer.from(await encodeEntry(rustEntry(), K, { uncompressed: true }))
  const payload = enc.subarray(HEADER_LENGTH)
  // exit code, empty stdout, stderr, output count, the rlib whole (name length, name, form 0,
  // length, data), then the rmeta: name length, name, form
  const form = 4 + 4 + 4 + 11 + 2 + (1 + 4 + 1 + 4 + rlib.length) + 1 + 5
  assert.equal(payload[form], 1, 'the rmeta is a slice of the rlib')
  change(payload, form + 1)
  createHash('sha256').update(payload).digest().copy(enc, 20)
  return enc
}

test('a forged reference is refused with a one-line reason, never a wrong file', async () => {
  const cases: Array<[string, (p: Buffer, at: number) => void, RegExp]> = [
    ['source out of range', (p, at) => { p[at] = 9 }, /output "rmeta" is a slice of output 9, which is not a data output/],
    ['source is itself', (p, at) => { p[at] = 1 }, /output "rmeta" is a slice of output 1, which is not a data output/],
    ['offset past the data', (p, at) => { p.writeUInt32LE(0xfffffff0, at + 1) }, new RegExp(`output "rmeta" is bytes 4294967280 to \\d+ of "rlib", which has ${rlib.length}`)],
    ['size past the data', (p, at) => { p.writeUInt32LE(rlib.length, at + 5) }, new RegExp(`output "rmeta" is bytes \\d+ to \\d+ of "rlib", which has ${rlib.length}`)],
    ['unknown form', (p, at) => { p[at - 1] = 7 }, /output "rmeta" has unknown form 7/]
  ]
  for (const [what, change, reason] of cases) {
    const err = await decodeEntry(await forged(change), K).then(() => null, (e: unknown) => e)
    assert.ok(err instanceof EntryFormatError, `${what}: refused as a bad entry (${String(err)})`)
    assert.match(err.message, reason, what)
    assert.ok(!err.message.includes('\n'), `${what}: one line`)
  }
  // a reference that would grow the outputs past the decoder's limit
  const good = await forged(() => {})
  await assert.rejects(decodeEntry(good, K, { maxPayloadBytes: rlib.length + 100 }), /outputs of more than \d+ bytes in all/)
  const back = await decodeEntry(good, K)
  assert.ok(back.outputs[0]!.data.equals(rlib) && back.outputs[1]!.data.equals(rmeta))
})

test('a signed entry of version 3 travels: sealed, opened, byte-identical', async () => {
  const privateKey = await generateKeyPair('Ed25519')
  const signer = { peerId: peerIdFromPrivateKey(privateKey).toString(), privateKey }
  const opened = await openSignedEntry(await sealEntry(rustEntry(), K, signer), K)
  assert.equal(opened.encoded[8], 3)
  assert.ok(opened.entry.outputs[0]!.data.equals(rlib) && opened.entry.outputs[1]!.data.equals(rmeta))
  // the encoding is a function of the entry: a builder rebuilding it from the same outputs (a
  // keep, cache-exchange.ts) gets the content hash the client signed
  const again = await encodeEntry(rustEntry(), K, { uncompressed: true })
  assert.ok(again.subarray(20, 52).equals(opened.encoded.subarray(20, 52)))
})
