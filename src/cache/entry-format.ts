// On-disk (and later on-the-wire) format of one cache entry. Everything read back is
// length-checked and checksummed, so a truncated, corrupted or hostile buffer is refused
// with a one-line reason instead of being returned as a compile result.
//
// Layout, integers little-endian:
//   header (84 bytes)
//     0  8  magic "MESHCC01"
//     8  1  format version: 2, or 3 when an output refers to another (below); both are read
//     9  1  body encoding: 0 = stored, 1 = raw deflate (read only: entries of earlier meshcc
//           versions), 2 = brotli
//    10  2  reserved, zero
//    12  4  payload length (uncompressed)
//    16  4  body length (bytes that follow the header)
//    20 32  sha256 of the uncompressed payload
//    52 32  the cache key the entry was stored under (version 2): an entry that ends up under
//           another key's name, copied or renamed, is refused rather than answering that key
//   body: the payload, encoded as the header says
//   payload
//     i32 exit code
//     u32 length + stdout bytes
//     u32 length + stderr bytes
//     u16 output count, each: u8 name length + ASCII name, then
//       version 2: u32 length + data
//       version 3: u8 form, then
//         form 0 (data): u32 length + data
//         form 1 (bytes of another output): u8 index of that output (a form 0 one), u32 offset
//           and u32 length of the bytes in it; no data follows (rlib-metadata.ts says why:
//           an rlib holds its .rmeta output's bytes once more)
//     u16 meta count, each: u16 length + UTF-8 key, u16 length + UTF-8 value
//     (nothing after the last field)
import { createHash } from 'node:crypto'
import { promisify } from 'node:util'
import { brotliDecompress, createBrotliCompress, inflateRaw, constants as zlibConstants } from 'node:zlib'
import { embeddedMetadata } from './rlib-metadata.js'

export interface CacheEntry {
  /** always 0 for stored entries */
  exitCode: number
  stdout: Buffer
  stderr: Buffer
  /** e.g. { name: 'obj', data }, { name: 'dep', data } */
  outputs: Array<{ name: string; data: Buffer }>
  /** free-form small strings (compiler, source name, ...) */
  meta?: Record<string, string>
}

/** A buffer that is not a valid entry, or an entry that cannot be encoded. */
export class EntryFormatError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'EntryFormatError'
  }
}

/** An entry written by an older meshcc in an older format: not damage, just not usable. */
export class StaleEntryError extends EntryFormatError {
  constructor(message: string) {
    super(message)
    this.name = 'StaleEntryError'
  }
}

export function isValidKey(key: unknown): key is string {
  return typeof key === 'string' && /^[0-9a-f]{64}$/.test(key)
}

function keyBytes(key: string): Buffer {
  if (!isValidKey(key)) fail(`invalid cache key ${JSON.stringify(String(key).slice(0, 80))}: expected 64 lowercase hex digits`)
  return Buffer.from(key, 'hex')
}

export const ENTRY_MAGIC = Buffer.from('MESHCC01', 'latin1')
/** the newest format version, written when an output refers to another */
export const ENTRY_VERSION = 3
/** the format version written when no output does (what meshcc wrote before version 3) */
export const ENTRY_VERSION_PLAIN = 2
/** whether a header's version byte is one this meshcc reads */
export function isReadableVersion(version: number): boolean {
  return version === ENTRY_VERSION_PLAIN || version === ENTRY_VERSION
}
const FORM_DATA = 0
const FORM_SLICE_OF = 1
export const HEADER_LENGTH = 84
export const ENCODING_STORED = 0
export const ENCODING_DEFLATE = 1
export const ENCODING_BROTLI = 2

/** Largest uncompressed payload accepted by default; bigger outputs are not worth caching. */
export const MAX_PAYLOAD_BYTES = 1024 ** 3
export const MAX_OUTPUTS = 64
export const MAX_META = 256
export const MAX_META_KEY_BYTES = 256
export const MAX_META_VALUE_BYTES = 0xffff
/** Output names may end up in file names, so keep them short and plain. */
export const OUTPUT_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

/**
 * Brotli's fastest quality: the cache exists to save CPU, and a cold build pays for every
 * entry it writes. On a cold quick bench:rust build's 106 MB of rlibs and rmetas, quality 1
 * took 443 to 878 ms of CPU to 34.4 MB, quality 0 275 to 320 ms to 37.0 MB; on libc.a and
 * libstdc++.a (gcc objects) 39 to 61 ms against 25 to 31 ms, for 8 to 12 % more bytes.
 */
const ENTRY_BROTLI_QUALITY = 0
/**
 * A 256 KiB window: at quality 0 a larger one compresses those rlibs to the same 37.1 MB, but
 * each entry's encoder allocated (and faulted in) its 4 MiB ring buffer anew: 339 and 308 ms
 * of CPU for the 39 entries against 689 and 373 ms with the default window.
 */
const ENTRY_BROTLI_LGWIN = 18
/** brotli's output buffers: fewer turns through the libuv pool than its 16 KiB default */
const BROTLI_CHUNK = 256 * 1024
/** pieces smaller than this go to the compressor joined (coalesced) */
const COALESCE_BYTES = 256 * 1024
const unbrotliAsync = promisify(brotliDecompress)
const inflateRawAsync = promisify(inflateRaw)
const utf8 = new TextDecoder('utf-8', { fatal: true })

/** how much of a payload is hashed between two turns of the event loop */
const HASH_SLICE = 4 * 1024 * 1024

/**
 * The sha256 of `pieces` in one pass, yielding to the event loop every few megabytes so that
 * hashing a large entry does not stall the daemon's other requests. WebCrypto's digest ran on
 * the libuv pool but copied its input first: for a payload of rlibs, more CPU than the hash.
 */
async function sha256(pieces: readonly Uint8Array[]): Promise<Buffer> {
  const h = createHash('sha256')
  let sinceYield = 0
  for (const p of pieces) {
    for (let at = 0; at < p.length; at += HASH_SLICE) {
      const slice = p.subarray(at, at + HASH_SLICE)
      h.update(slice)
      sinceYield += slice.length
      if (sinceYield >= HASH_SLICE) {
        sinceYield = 0
        await new Promise((resolve) => setImmediate(resolve))
      }
    }
  }
  return h.digest()
}

function fail(message: string): never {
  throw new EntryFormatError(message)
}

function isBytes(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array
}

/**
 * The payload as a list of pieces: small field buffers and the outputs' own data, which is
 * never copied (rlibs come to a hundred megabytes per build). Validates as it goes.
 */
function payloadPieces(entry: CacheEntry): { pieces: Buffer[]; size: number; version: number } {
  if (entry === null || typeof entry !== 'object') fail('cannot encode cache entry: not an object')
  const { exitCode, stdout, stderr, outputs, meta } = entry
  if (!Number.isInteger(exitCode) || exitCode < -0x80000000 || exitCode > 0x7fffffff) fail(`cannot encode cache entry: bad exit code ${String(exitCode)}`)
  if (!isBytes(stdout) || !isBytes(stderr)) fail('cannot encode cache entry: stdout and stderr must be Buffers')
  if (!Array.isArray(outputs)) fail('cannot encode cache entry: outputs must be an array')
  if (outputs.length > MAX_OUTPUTS) fail(`cannot encode cache entry: ${outputs.length} outputs (at most ${MAX_OUTPUTS})`)

  const pieces: Buffer[] = []
  const u32 = (n: number) => { const b = Buffer.allocUnsafe(4); b.writeUInt32LE(n, 0); return b }
  const u16 = (n: number) => { const b = Buffer.allocUnsafe(2); b.writeUInt16LE(n, 0); return b }
  const bytes = (v: Uint8Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength)
  const exit = Buffer.allocUnsafe(4)
  exit.writeInt32LE(exitCode, 0)
  pieces.push(exit, u32(stdout.length), bytes(stdout), u32(stderr.length), bytes(stderr), u16(outputs.length))
  const names = new Set<string>()
  for (const out of outputs) {
    if (out === null || typeof out !== 'object' || typeof out.name !== 'string' || !OUTPUT_NAME_RE.test(out.name)) {
      fail(`cannot encode cache entry: bad output name ${JSON.stringify(String(out?.name)).slice(0, 80)}`)
    }
    if (names.has(out.name)) fail(`cannot encode cache entry: duplicate output "${out.name}"`)
    names.add(out.name)
    if (!isBytes(out.data)) fail(`cannot encode cache entry: output "${out.name}" data must be a Buffer`)
  }
  const slices = metadataSlices(outputs.map((o) => bytes(o.data)))
  const version = slices.size > 0 ? ENTRY_VERSION : ENTRY_VERSION_PLAIN
  outputs.forEach((out, i) => {
    const data = bytes(out.data)
    pieces.push(Buffer.from([out.name.length]), Buffer.from(out.name, 'latin1'))
    const slice = slices.get(i)
    if (version === ENTRY_VERSION_PLAIN) pieces.push(u32(data.length), data)
    else if (slice === undefined) pieces.push(Buffer.from([FORM_DATA]), u32(data.length), data)
    else pieces.push(Buffer.from([FORM_SLICE_OF, slice.source]), u32(slice.offset), u32(slice.size))
  })

  const metaPieces: Buffer[] = []
  if (meta !== undefined) {
    if (meta === null || typeof meta !== 'object') fail('cannot encode cache entry: meta must be an object')
    const keys = Object.keys(meta)
    if (keys.length > MAX_META) fail(`cannot encode cache entry: ${keys.length} meta keys (at most ${MAX_META})`)
    for (const k of keys) {
      const v = meta[k]
      if (typeof v !== 'string') fail(`cannot encode cache entry: meta "${k.slice(0, 40)}" is not a string`)
      const kb = Buffer.from(k, 'utf8')
      const vb = Buffer.from(v, 'utf8')
      if (kb.length === 0 || kb.length > MAX_META_KEY_BYTES) fail(`cannot encode cache entry: meta key of ${kb.length} bytes (1 to ${MAX_META_KEY_BYTES})`)
      if (vb.length > MAX_META_VALUE_BYTES) fail(`cannot encode cache entry: meta "${k.slice(0, 40)}" is ${vb.length} bytes (at most ${MAX_META_VALUE_BYTES})`)
      metaPieces.push(u16(kb.length), kb, u16(vb.length), vb)
    }
  }
  pieces.push(u16(metaPieces.length / 4), ...metaPieces)
  const size = pieces.reduce((n, p) => n + p.length, 0)
  if (size > MAX_PAYLOAD_BYTES) fail(`cannot encode cache entry: ${size} bytes (at most ${MAX_PAYLOAD_BYTES})`)
  return { pieces, size, version }
}

interface Slice { source: number; offset: number; size: number }

/**
 * The outputs (by index) whose bytes are an rlib's metadata, byte for byte: each with the rlib's
 * index and where in it they sit. The rlib is stored whole and they as a slice of it, so a
 * read hands out a view, with no copy (putting the metadata back into an rlib stored without
 * it cost a read more CPU than decompressing it twice). Found by the rlib's layout, never by
 * searching; an output that is a slice is never the source of one (no chains to resolve).
 */
function metadataSlices(datas: readonly Buffer[]): Map<number, Slice> {
  const slices = new Map<number, Slice>()
  datas.forEach((data, source) => {
    const found = embeddedMetadata(data)
    if (found === null) return
    const inside = data.subarray(found.offset, found.offset + found.size)
    const i = datas.findIndex((other, j) => j !== source && !slices.has(j) && other.length === found.size && other.equals(inside))
    if (i >= 0) slices.set(i, { source, ...found })
  })
  for (const [i, slice] of slices) if (slices.has(slice.source)) slices.delete(i)
  return slices
}

/**
 * Serialize the entry for `key`: validated, checksummed, compressed off the main thread.
 * Brotli rather than deflate at level 1: on rustc's rlibs quality 1 took 0.57 s of CPU for
 * 106 MB where deflate took 1.43 s, to a slightly smaller size (35 MB); on gcc objects half
 * the CPU for 4 % more bytes. Decompressing costs about as much as inflating. Now at
 * quality 0 (ENTRY_BROTLI_QUALITY says why).
 * The payload is never laid out in one buffer: its pieces stream through the compressor
 * and the hash, and the compressed chunks are copied once, behind the header. Packing it
 * first, and concatenating brotli's output twice, cost more CPU than the compression itself
 * on rustc's outputs (fresh memory is a page fault per 4 KiB).
 */
export async function encodeEntry(entry: CacheEntry, key: string, opts: EncodeOptions = {}): Promise<Buffer> {
  return Buffer.concat(await encodeEntryPieces(entry, key, opts))
}

export interface EncodeOptions {
  /**
   * keep the payload as it is (body encoding 0), only hashed: a builder storing the entry of a
   * keep from outputs it made, where compressing cost twice what checking a sent entry did
   */
  uncompressed?: boolean
}

/**
 * The encoded entry as pieces to write one after the other (the header, then the body): a
 * store writes them with writev. Laying 37 MB of brotli output (the rlibs of a quick cold
 * bench:rust build) into one fresh buffer behind the header cost the daemon 0.17 s of CPU,
 * half of it page faults on that buffer.
 */
export async function encodeEntryPieces(entry: CacheEntry, key: string, opts: EncodeOptions = {}): Promise<Buffer[]> {
  const keyBin = keyBytes(key)
  const { pieces, size, version } = payloadPieces(entry)
  if (opts.uncompressed) return [entryHeader(keyBin, version, ENCODING_STORED, size, size, await sha256(pieces)), ...pieces.filter((b) => b.length > 0)]
  const z = createBrotliCompress({
    chunkSize: BROTLI_CHUNK,
    params: { [zlibConstants.BROTLI_PARAM_QUALITY]: ENTRY_BROTLI_QUALITY, [zlibConstants.BROTLI_PARAM_LGWIN]: ENTRY_BROTLI_LGWIN, [zlibConstants.BROTLI_PARAM_SIZE_HINT]: size }
  })
  const chunks: Buffer[] = []
  let compressedLength = 0
  z.on('data', (c: Buffer) => { chunks.push(c); compressedLength += c.length })
  const compressed = new Promise<void>((resolve, reject) => { z.once('end', resolve); z.once('error', reject) })
  compressed.catch(() => {}) // awaited below; a failure before then must not go unhandled
  // the last one with end(): compressed and finished in the same trip through the pool
  const input = coalesced(pieces)
  input.forEach((p, i) => { if (i < input.length - 1) z.write(p); else z.end(p) })
  if (input.length === 0) z.end()
  // the compressor works on the libuv pool while the hash runs here
  const [digest] = await Promise.all([sha256(pieces), compressed])
  // Already-compressed outputs would only grow.
  const stored = compressedLength >= size
  const body = stored ? pieces : chunks
  const bodyLength = stored ? size : compressedLength
  const header = entryHeader(keyBin, version, stored ? ENCODING_STORED : ENCODING_BROTLI, size, bodyLength, digest)
  const written = body.reduce((n, b) => n + b.length, 0)
  if (written !== bodyLength) fail(`internal error: a body of ${written} bytes, ${bodyLength} declared`)
  return [header, ...body.filter((b) => b.length > 0)]
}

/**
 * The pieces with the small ones joined: every write to the compressor is a trip through the
 * libuv pool (a wake-up there and back), and an entry's header fields, names and meta are a
 * dozen pieces or more. Outputs of COALESCE_BYTES or more stay as they are, never copied.
 */
function coalesced(pieces: readonly Buffer[]): Buffer[] {
  const out: Buffer[] = []
  let run: Buffer[] = []
  let runBytes = 0
  const flush = () => {
    if (run.length > 0) out.push(run.length === 1 ? run[0]! : Buffer.concat(run, runBytes))
    run = []
    runBytes = 0
  }
  for (const p of pieces) {
    if (p.length === 0) continue
    if (p.length >= COALESCE_BYTES) {
      flush()
      out.push(p)
      continue
    }
    run.push(p)
    runBytes += p.length
    if (runBytes >= COALESCE_BYTES) flush()
  }
  flush()
  return out
}

/**
 * An encoded entry (encodeEntryPieces' pieces, or one buffer) under another key: the key is in
 * the header only, the content hash is of the payload, so nothing is encoded again. The first
 * piece is copied (the header, or the whole entry when it is one buffer), the rest shared.
 */
export function reKeyed(encoded: readonly Buffer[], key: string): Buffer[] {
  const first = encoded[0]
  if (first === undefined || first.length < HEADER_LENGTH) fail('cannot re-key an encoded entry: no header')
  const copy = Buffer.from(first)
  keyBytes(key).copy(copy, 52)
  return [copy, ...encoded.slice(1)]
}

function entryHeader(keyBin: Buffer, version: number, encoding: number, size: number, bodyLength: number, digest: Buffer): Buffer {
  const header = Buffer.alloc(HEADER_LENGTH)
  ENTRY_MAGIC.copy(header, 0)
  header.writeUInt8(version, 8)
  header.writeUInt8(encoding, 9)
  header.writeUInt32LE(size, 12)
  header.writeUInt32LE(bodyLength, 16)
  digest.copy(header, 20)
  keyBin.copy(header, 52)
  return header
}

class Reader {
  pos = 0
  constructor(private readonly buf: Buffer) {}

  private need(n: number, what: string): void {
    const left = this.buf.length - this.pos
    if (n > left) fail(`malformed payload: ${what} needs ${n} bytes, ${left} left`)
  }
  u8(what: string): number { this.need(1, what); const v = this.buf.readUInt8(this.pos); this.pos += 1; return v }
  u16(what: string): number { this.need(2, what); const v = this.buf.readUInt16LE(this.pos); this.pos += 2; return v }
  u32(what: string): number { this.need(4, what); const v = this.buf.readUInt32LE(this.pos); this.pos += 4; return v }
  i32(what: string): number { this.need(4, what); const v = this.buf.readInt32LE(this.pos); this.pos += 4; return v }
  bytes(n: number, what: string): Buffer { this.need(n, what); const v = this.buf.subarray(this.pos, this.pos + n); this.pos += n; return v }
  text(n: number, what: string): string {
    const b = this.bytes(n, what)
    try { return utf8.decode(b) } catch { return fail(`malformed payload: ${what} is not UTF-8`) }
  }
  get remaining(): number { return this.buf.length - this.pos }
}

function unpackPayload(payload: Buffer, version: number, maxBytes: number): CacheEntry {
  const r = new Reader(payload)
  const exitCode = r.i32('exit code')
  const stdout = r.bytes(r.u32('stdout length'), 'stdout')
  const stderr = r.bytes(r.u32('stderr length'), 'stderr')
  const outputCount = r.u16('output count')
  if (outputCount > MAX_OUTPUTS) fail(`malformed payload: ${outputCount} outputs (at most ${MAX_OUTPUTS})`)
  const outputs: CacheEntry['outputs'] = []
  const names = new Set<string>()
  const slices = new Map<number, Slice>()
  for (let i = 0; i < outputCount; i++) {
    const name = r.text(r.u8('output name length'), 'output name')
    if (!OUTPUT_NAME_RE.test(name)) fail(`malformed payload: bad output name ${JSON.stringify(name)}`)
    if (names.has(name)) fail(`malformed payload: duplicate output "${name}"`)
    names.add(name)
    const form = version === ENTRY_VERSION_PLAIN ? FORM_DATA : r.u8(`output "${name}" form`)
    if (form === FORM_SLICE_OF) {
      slices.set(i, { source: r.u8(`output "${name}" source`), offset: r.u32(`output "${name}" offset`), size: r.u32(`output "${name}" length`) })
      outputs.push({ name, data: Buffer.alloc(0) }) // filled in below, once every output is read
    } else if (form === FORM_DATA) {
      outputs.push({ name, data: r.bytes(r.u32(`output "${name}" length`), `output "${name}"`) })
    } else fail(`malformed payload: output "${name}" has unknown form ${form}`)
  }
  fillSlices(outputs, slices, maxBytes)
  const metaCount = r.u16('meta count')
  if (metaCount > MAX_META) fail(`malformed payload: ${metaCount} meta keys (at most ${MAX_META})`)
  const pairs: Array<[string, string]> = []
  const keys = new Set<string>()
  for (let i = 0; i < metaCount; i++) {
    const klen = r.u16('meta key length')
    if (klen === 0 || klen > MAX_META_KEY_BYTES) fail(`malformed payload: meta key of ${klen} bytes`)
    const key = r.text(klen, 'meta key')
    if (keys.has(key)) fail('malformed payload: duplicate meta key')
    keys.add(key)
    pairs.push([key, r.text(r.u16('meta value length'), 'meta value')])
  }
  if (r.remaining !== 0) fail(`malformed payload: ${r.remaining} trailing bytes`)
  const entry: CacheEntry = { exitCode, stdout, stderr, outputs }
  // fromEntries defines own properties, so a "__proto__" key cannot touch the prototype.
  if (pairs.length > 0) entry.meta = Object.fromEntries(pairs)
  return entry
}

export interface DecodeOptions {
  /** refuse payloads that declare more bytes than this (default MAX_PAYLOAD_BYTES) */
  maxPayloadBytes?: number
}

/**
 * Parse and verify an encoded entry, which must have been stored for `key`. Throws
 * EntryFormatError with a one-line reason on a truncated, corrupted or malformed buffer, or
 * one stored for another key (StaleEntryError for an older format); never returns partial
 * data. The returned Buffers are views into one freshly allocated payload buffer, not into `buf`.
 */
export async function decodeEntry(buf: Uint8Array, key: string, opts: DecodeOptions = {}): Promise<CacheEntry> {
  const maxPayload = opts.maxPayloadBytes ?? MAX_PAYLOAD_BYTES
  const keyBin = keyBytes(key)
  const data = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
  if (data.length >= 9 && data.subarray(0, 8).equals(ENTRY_MAGIC) && data.readUInt8(8) < ENTRY_VERSION_PLAIN) {
    throw new StaleEntryError(`format version ${data.readUInt8(8)} of an older meshcc`)
  }
  if (data.length < HEADER_LENGTH) fail(`truncated: ${data.length} bytes, shorter than the ${HEADER_LENGTH}-byte header`)
  if (!data.subarray(0, 8).equals(ENTRY_MAGIC)) fail('bad magic: not a meshcc cache entry')
  const version = data.readUInt8(8)
  if (!isReadableVersion(version)) fail(`unsupported format version ${version} (expected ${ENTRY_VERSION_PLAIN} or ${ENTRY_VERSION})`)
  if (!data.subarray(52, 84).equals(keyBin)) fail(`stored for key ${data.toString('hex', 52, 84)}, not this one`)
  const encoding = data.readUInt8(9)
  if (encoding !== ENCODING_STORED && encoding !== ENCODING_DEFLATE && encoding !== ENCODING_BROTLI) fail(`unknown body encoding ${encoding}`)
  if (data.readUInt16LE(10) !== 0) fail('reserved header bytes are not zero')
  const payloadLength = data.readUInt32LE(12)
  const bodyLength = data.readUInt32LE(16)
  if (payloadLength > maxPayload) fail(`payload of ${payloadLength} bytes exceeds the limit of ${maxPayload}`)
  const actualBody = data.length - HEADER_LENGTH
  if (bodyLength > actualBody) fail(`truncated: header declares ${bodyLength} body bytes, ${actualBody} present`)
  if (bodyLength < actualBody) fail(`${actualBody - bodyLength} trailing bytes after the body`)
  const body = data.subarray(HEADER_LENGTH)

  let payload: Buffer
  if (encoding === ENCODING_STORED) {
    if (bodyLength !== payloadLength) fail(`stored body is ${bodyLength} bytes, header declares ${payloadLength}`)
    payload = Buffer.from(body) // copy: the entry must not alias the caller's buffer
  } else {
    try {
      // maxOutputLength stops a small hostile body from inflating into gigabytes.
      const opts = { maxOutputLength: Math.max(1, payloadLength) }
      payload = encoding === ENCODING_BROTLI ? await unbrotliAsync(body, opts) : await inflateRawAsync(body, opts)
    } catch (err) {
      const msg = String((err as Error).message ?? err).split('\n')[0]
      return fail(`decompression failed: ${msg}`)
    }
    if (payload.length !== payloadLength) fail(`decompressed to ${payload.length} bytes, header declares ${payloadLength}`)
  }
  const digest = await sha256([payload])
  if (!digest.equals(data.subarray(20, 52))) fail('checksum mismatch')
  return unpackPayload(payload, version, maxPayload)
}

/**
 * Each slice output as a view of its source's bytes (metadataSlices, when encoding): a slice of
 * no output, of itself or of another slice, or bytes past its source's end, are refused, and so
 * are outputs of more than `maxBytes` in all (they are written out, each on its own).
 */
function fillSlices(outputs: CacheEntry['outputs'], slices: Map<number, Slice>, maxBytes: number): void {
  let total = outputs.reduce((n, o) => n + o.data.length, 0)
  for (const [i, slice] of slices) {
    const out = outputs[i]!
    const source = outputs[slice.source]
    if (source === undefined || slices.has(slice.source)) fail(`malformed payload: output "${out.name}" is a slice of output ${slice.source}, which is not a data output of this entry`)
    if (slice.offset + slice.size > source.data.length) fail(`malformed payload: output "${out.name}" is bytes ${slice.offset} to ${slice.offset + slice.size} of "${source.name}", which has ${source.data.length}`)
    total += slice.size
    if (total > maxBytes) fail(`malformed payload: outputs of more than ${maxBytes} bytes in all`)
    outputs[i] = { name: out.name, data: source.data.subarray(slice.offset, slice.offset + slice.size) }
  }
}

