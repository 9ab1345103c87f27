// The compile-job protocol: a client sends one compile to a builder peer.
//
//   client → {v, toolchain, compiler, argv, cwd, env, ppHash, ppArgv, objPath, files: n, dirs}
//          + blob: the file table, n × {path, mode, size, sha256} in binary (encodeFileTable)
//   builder → {type:'refused', reason}                  full, not offering, no sandbox: try another peer
//           | {type:'accepted', need:[i...]}            the files whose content (sha256) it does not hold
//   client → blob: gzip of the needed files' bytes, concatenated in the order of `need`
//
// The table is binary, each path stored as the part that differs from the previous one (the
// list is sorted): a kernel unit names ~800 files, about 135 KB as JSON and 40 KB here, and a
// large C++ unit names thousands, which no JSON control frame should carry. A builder that
// refuses never decodes it.
//
// Builders keep received inputs by content hash (InputCache), so the headers every unit of a
// project includes cross the network once, not once per unit. A received file whose bytes do
// not match its hash fails the job; nothing unverified enters the cache.
//   builder → {type:'working'} …                        heartbeats, so a long compile is never idle-aborted
//           → {type:'done', exitCode, keep?} + blob stdout + blob stderr [+ blob object when exitCode is 0]
//             keep: the id under which the builder holds these outputs for a while (kept-jobs.ts),
//             so that the client can have its signed entry stored there without sending it back
//             (cache-exchange.ts, op 'keep'); a client of the previous version ignores it
//           | {type:'failed', reason}                   sandbox, toolchain or input problem: try another peer
//
// Version 4 (rustc, and any family without a preprocessor to check): the header names
// `outputs`, the files the job writes (relative to cwd, at most MAX_JOB_OUTPUTS); ppArgv is
// empty and ppHash '' (no check on the builder: the client checks what the compiler says it
// read); the object blob carries every output, each as u32 length + bytes in header order
// (encodeJobOutputs). A client sends v3 for C jobs, so builders of the previous version keep
// taking them; such a builder fails a v4 job as a protocol violation, which the client
// treats as any peer failure (another peer, then here).
//
// It carries argv, files and environment only: nothing here knows compiler flags.
import { createHash } from 'node:crypto'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGunzip, gzip } from 'node:zlib'
import { promisify } from 'node:util'
import type { Libp2p } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { clip } from '../../log.js'
import { HeldBytes, StreamCounts } from './admission.js'
import { Framed, framedBytes, ProtocolViolation, int, str, strList } from './framing.js'

const gzipAsync = promisify(gzip)

export const compileJobProtocol = (meshId: string) => `/meshcc/${meshId}/compile/3.0.0`
const VERSION = 3
/** a job with several outputs and no preprocessor check */
const VERSION_OUTPUTS = 4
/** the most files one job may name as its outputs */
export const MAX_JOB_OUTPUTS = 8

export const LIMITS = {
  files: 20_000,
  /** compressed and decompressed input bytes of one job */
  inputBytes: 512 * 1024 * 1024,
  outputBytes: 256 * 1024 * 1024,
  argv: 4096,
  env: 512,
  /** a path in the file table */
  pathBytes: 4096
}
/** the largest table accepted: LIMITS.files entries' fixed parts and 16 MiB of path bytes (paths are front-coded) */
const MAX_TABLE_BYTES = LIMITS.files * 48 + 16 * 1024 * 1024
/**
 * A builder says it is alive this often from the moment it accepts a job, and a client that
 * hears nothing on a job's stream for JOB_STALL_MS gives the job up (and retries it elsewhere):
 * a builder whose link died without a FIN or RST (power cut, cable, Wi-Fi) costs seconds, not
 * the keep-alive's minute and a half. The stall allows for a builder of the previous version,
 * which beat every 15 s.
 */
export const HEARTBEAT_MS = 5_000
export const JOB_STALL_MS = 20_000

export interface JobFile { path: string; mode: number; data: Buffer }

/** An input as the header names it: the builder fetches only contents it does not hold. */
export interface JobFileRef { path: string; mode: number; size: number; hash: string }

/** Builder side: received inputs by content hash. */
export interface InputCache {
  get(hash: string): Buffer | undefined
  /** only called with bytes whose sha256 is `hash` */
  put(hash: string, data: Buffer): void
}

export interface JobHeader {
  toolchain: string
  compiler: string
  argv: string[]
  cwd: string
  env: Record<string, string>
  /** sha256 of the client's preprocessed output: the builder's own must match */
  ppHash: string
  ppArgv: string[]
  objPath: string
  files: JobFileRef[]
  /** directories that must exist although no file is sent in them */
  dirs: string[]
  /** v4: the files the job writes, relative to cwd, all carried back in the object blob (encodeJobOutputs) */
  outputs?: string[]
}

export type JobReply =
  | { kind: 'done'; exitCode: number; stdout: Buffer; stderr: Buffer; obj: Buffer | null; keep?: string }
  | { kind: 'refused'; reason: string }
  | { kind: 'failed'; reason: string }

/** The header without its file table; `files` is the number of entries the table must hold. */
type WireHeader = Omit<JobHeader, 'files'> & { files: number }

function parseHeader(h: Record<string, unknown>): WireHeader {
  if (h.v !== VERSION && h.v !== VERSION_OUTPUTS) throw new ProtocolViolation(`unsupported job version ${clip(String(h.v), 40)}`)
  const envIn = h.env
  if (envIn === null || typeof envIn !== 'object' || Array.isArray(envIn)) throw new ProtocolViolation('field env: expected an object')
  const env: Record<string, string> = {}
  const entries = Object.entries(envIn as Record<string, unknown>)
  if (entries.length > LIMITS.env) throw new ProtocolViolation('too many environment variables')
  for (const [k, v] of entries) env[str(k, 'env key', 256)] = str(v, `env ${k}`, 65536)
  const dirs = strList(h.dirs, 'dirs', LIMITS.files)
  for (const d of dirs) if (!d.startsWith('/') || d.split('/').includes('..')) throw new ProtocolViolation(`dirs entry must be absolute without '..': ${clip(d)}`)
  const cwd = str(h.cwd, 'cwd')
  const objPath = str(h.objPath, 'objPath')
  if (!cwd.startsWith('/') || !objPath.startsWith(cwd + '/') || objPath.split('/').includes('..')) throw new ProtocolViolation('cwd must be absolute and objPath inside it')
  const outputs = h.v === VERSION_OUTPUTS ? strList(h.outputs, 'outputs', MAX_JOB_OUTPUTS, LIMITS.pathBytes) : undefined
  if (outputs?.length === 0) throw new ProtocolViolation('field outputs: expected at least one file')
  for (const o of outputs ?? []) if (o.startsWith('/') || o.split('/').some((p) => p === '..' || p === '' || p === '.')) throw new ProtocolViolation(`outputs entry must be a plain path relative to cwd: ${clip(o)}`)
  return {
    toolchain: str(h.toolchain, 'toolchain', 128),
    compiler: str(h.compiler, 'compiler'),
    argv: strList(h.argv, 'argv', LIMITS.argv, 65536),
    cwd, env,
    ppHash: str(h.ppHash, 'ppHash', 128),
    ppArgv: strList(h.ppArgv, 'ppArgv', LIMITS.argv, 65536),
    objPath, files: int(h.files, 'files', 0, LIMITS.files), dirs,
    ...(outputs ? { outputs } : {})
  }
}

/** A v4 job's outputs as one object blob: each as u32 length + bytes, in the header's order. */
export function encodeJobOutputs(files: Buffer[]): Buffer {
  return Buffer.concat(files.flatMap((f) => {
    const n = Buffer.allocUnsafe(4)
    n.writeUInt32BE(f.length)
    return [n, f]
  }))
}

/** The outputs in a v4 job's object blob (exactly `count` of them, filling it), or a ProtocolViolation. */
export function decodeJobOutputs(blob: Buffer, count: number): Buffer[] {
  const out: Buffer[] = []
  let off = 0
  for (let i = 0; i < count; i++) {
    if (off + 4 > blob.length) throw new ProtocolViolation(`job outputs end before output ${i}`)
    const n = blob.readUInt32BE(off)
    off += 4
    if (n > blob.length - off) throw new ProtocolViolation(`job output ${i} is longer than the blob holding it`)
    out.push(blob.subarray(off, off + n))
    off += n
  }
  if (off !== blob.length) throw new ProtocolViolation('job outputs blob longer than its outputs')
  return out
}

// One table entry: u16 bytes shared with the previous path, u16 bytes that follow, those
// bytes (UTF-8), u16 mode, u32 size, 32 bytes of sha256.
const ENTRY_FIXED = 2 + 2 + 2 + 4 + 32

/** The file table of a job's inputs (sorted by path, as InputScanner lists them). */
export function encodeFileTable(files: JobFileRef[]): Buffer {
  const paths = files.map((f) => Buffer.from(f.path, 'utf8'))
  const out = Buffer.allocUnsafe(paths.reduce((n, p) => n + ENTRY_FIXED + p.length, 0))
  let off = 0
  let prev: Buffer = Buffer.alloc(0)
  files.forEach((f, i) => {
    const p = paths[i]!
    let shared = 0
    const most = Math.min(prev.length, p.length, 0xffff)
    while (shared < most && prev[shared] === p[shared]) shared++
    off = out.writeUInt16BE(shared, off)
    off = out.writeUInt16BE(p.length - shared, off)
    off += p.copy(out, off, shared)
    off = out.writeUInt16BE(f.mode, off)
    off = out.writeUInt32BE(f.size, off)
    off += out.write(f.hash, off, 32, 'hex')
    prev = p
  })
  return out.subarray(0, off) // sized for whole paths; only the differing parts were written
}

// a job offered to several peers (full ones refuse) is encoded once
const encodedTables = new WeakMap<JobFileRef[], Buffer>()
function fileTableOf(files: JobFileRef[]): Buffer {
  let t = encodedTables.get(files)
  if (!t) encodedTables.set(files, (t = encodeFileTable(files)))
  return t
}

/** Decode and check a file table of exactly `n` entries; throws ProtocolViolation naming the entry. */
export function decodeFileTable(table: Buffer, n: number): JobFileRef[] {
  const files: JobFileRef[] = []
  let off = 0
  // the current path's bytes: each entry overwrites what follows the part it shares
  const path8 = Buffer.allocUnsafe(LIMITS.pathBytes)
  let prevLength = 0
  const need = (bytes: number, i: number) => { if (off + bytes > table.length) throw new ProtocolViolation(`file table ends inside entry ${i}`) }
  for (let i = 0; i < n; i++) {
    need(4, i)
    const shared = table.readUInt16BE(off)
    const rest = table.readUInt16BE(off + 2)
    off += 4
    if (shared > prevLength || shared + rest > LIMITS.pathBytes) throw new ProtocolViolation(`files[${i}]: bad path length`)
    need(rest + ENTRY_FIXED - 4, i)
    table.copy(path8, shared, off, off + rest)
    prevLength = shared + rest
    off += rest
    const path = path8.toString('utf8', 0, prevLength)
    if (!path.startsWith('/') || path.split('/').includes('..')) throw new ProtocolViolation(`files[${i}].path must be absolute without '..': ${clip(path)}`)
    const mode = table.readUInt16BE(off)
    if (mode > 0o777) throw new ProtocolViolation(`files[${i}].mode: expected permission bits`)
    const size = table.readUInt32BE(off + 2)
    if (size > LIMITS.inputBytes) throw new ProtocolViolation(`files[${i}].size exceeds the input limit`)
    const hash = table.toString('hex', off + 6, off + 38)
    off += 38
    files.push({ path, mode, size, hash })
  }
  if (off !== table.length) throw new ProtocolViolation('file table longer than its entries')
  return files
}

export interface SendOptions {
  signal: AbortSignal
  /** give up when the builder says nothing for this long (default JOB_STALL_MS) */
  stallMs?: number
  /** called once the builder has accepted, before the inputs are sent */
  onAccepted?: () => void
  /** told the bytes this job put on the stream: header, file table, inputs (framing aside) */
  onSent?: (bytes: number) => void
}

/**
 * Client side: run one job on `peer`. `load` returns the bytes of the files the builder asks
 * for (indices into header.files). Throws on transport or protocol trouble.
 */
export async function sendCompileJob(node: Libp2p, meshId: string, peer: string, header: JobHeader, load: (need: number[]) => Promise<Buffer[]>, opts: SendOptions): Promise<JobReply> {
  const stream = await node.dialProtocol(peerIdFromString(peer), compileJobProtocol(meshId), { signal: opts.signal })
  const f = new Framed(stream, { stallMs: opts.stallMs ?? JOB_STALL_MS })
  try {
    const head = { v: header.outputs ? VERSION_OUTPUTS : VERSION, ...header, files: header.files.length }
    const table = fileTableOf(header.files)
    // one write (one muxer frame, one encryption, one syscall) where the header and its table took two
    await f.writeFrames(head, [table], opts.signal)
    opts.onSent?.(Buffer.byteLength(JSON.stringify(head)) + table.length)
    const first = await f.readJson<{ type?: string; reason?: unknown; need?: unknown }>(opts.signal)
    if (first.type === 'refused') return { kind: 'refused', reason: str(first.reason, 'reason', 1024) }
    if (first.type !== 'accepted') throw new ProtocolViolation(`unexpected reply ${clip(String(first.type), 40)}`)
    const need = first.need
    if (!Array.isArray(need) || need.length > header.files.length) throw new ProtocolViolation('field need: expected a list of file indices')
    for (const i of need) if (!Number.isInteger(i) || i < 0 || i >= header.files.length) throw new ProtocolViolation('field need: index out of range')
    opts.onAccepted?.()
    // the reply may come faster than a busy client reads it (yamux grants window as bytes
    // arrive, not as they are read; libp2p drops a stream past 4 MiB unread): an rlib of tens
    // of MiB lost to a lagging event loop. Let as much wait as the reply's object may be,
    // which the client would hold anyway once read.
    f.allowUnread(REPLY_UNREAD_BYTES)
    const data = await load(need as number[])
    const packed = await gzipAsync(Buffer.concat(data), { level: 1 })
    await f.writeBlob(packed, opts.signal)
    opts.onSent?.(packed.length)
    for (;;) {
      const msg = await f.readJson<{ type?: string; reason?: unknown; exitCode?: unknown; keep?: unknown }>(opts.signal)
      if (msg.type === 'working') continue
      if (msg.type === 'failed') return { kind: 'failed', reason: str(msg.reason, 'reason', 1024) }
      if (msg.type !== 'done') throw new ProtocolViolation(`unexpected reply ${clip(String(msg.type), 40)}`)
      const exitCode = int(msg.exitCode, 'exitCode', 0, 255)
      const keep = msg.keep === undefined ? undefined : str(msg.keep, 'keep', 64)
      const stdout = await f.readBlob(LIMITS.outputBytes, opts.signal)
      const stderr = await f.readBlob(LIMITS.outputBytes, opts.signal)
      const obj = exitCode === 0 ? await f.readBlob(LIMITS.outputBytes, opts.signal) : null
      return { kind: 'done', exitCode, stdout, stderr, obj, ...(keep !== undefined && exitCode === 0 ? { keep } : {}) }
    }
  } finally {
    // a caller that stopped the job resets the stream: the builder learns at once and stops it too
    if (opts.signal.aborted) f.abort(new Error('job cancelled by the client'))
    else await f.close()
  }
}

export interface JobHandler {
  /** decide at once: a refusal reason, or a release function for the reserved slot (the file table is not read yet) */
  admit(peer: string, header: Omit<JobHeader, 'files'>): string | (() => void)
  /** `signal`: the client closed the job's stream (it has its result from elsewhere): stop the job */
  run(peer: string, header: JobHeader, files: JobFile[], signal: AbortSignal): Promise<JobReply>
}

export interface ServeOptions {
  /**
   * Compile streams one peer may have open at once; more are refused unread. A builder runs at
   * most `cores` jobs, and a refusal is a few bytes, so a client never needs many more.
   */
  maxStreamsPerPeer?: number
  /** bytes of file tables and inputs that one peer's jobs may make this builder hold at once */
  peerBytes?: number
  /** the same for all peers together */
  totalBytes?: number
  /** an admitted job whose client sends nothing for this long is dropped, its slot freed (default 60 s) */
  stallMs?: number
}

/** What the builder holds for jobs being received and run, for status and tests. */
export interface CompileJobServer {
  /** bytes of file tables and inputs held for jobs now */
  heldBytes(): number
  /** compile streams being served now */
  openStreams(): number
}

/**
 * What one peer's jobs may make a builder hold at once: a job's inputs count twice while they
 * arrive (packed, then unpacked), so one job alone may bring about 255 MiB of inputs, far more
 * than the largest units seen; a bigger one is refused and compiled elsewhere.
 */
const PEER_BYTES = 512 * 1024 * 1024
const TOTAL_BYTES = 1024 * 1024 * 1024
/** a builder waits this long for the next piece of a job it admitted, then frees the slot */
const STALL_MS = 60_000

/** the largest gzip stream `n` bytes can honestly become (stored blocks, header and trailer) */
const gzipBound = (n: number) => n + (n >> 8) + 1024
/** what a client lets wait unread of a job's reply: an object of the largest size, its frames, and room for stdout and stderr */
const REPLY_UNREAD_BYTES = framedBytes(LIMITS.outputBytes) + 4 * 1024 * 1024

/**
 * Gunzip the received inputs into one buffer per needed file, checking each file against its
 * hash as it completes and dropping each packed chunk once gunzip has it: the builder holds
 * about the inputs' size, never the packed stream and the whole unpacked one beside it and
 * copies of both, as it did.
 */
async function receiveInputs(packed: Uint8Array[], files: JobFileRef[], need: number[], onFile: (x: JobFileRef, data: Buffer) => void): Promise<void> {
  let k = 0
  let buf: Buffer | null = null
  let fill = 0
  // complete the files that are (empty files at once), and start the next
  const settle = () => {
    while (k < need.length) {
      const x = files[need[k]!]!
      buf ??= Buffer.allocUnsafe(x.size)
      if (fill < buf.length) return
      if (createHash('sha256').update(buf).digest('hex') !== x.hash) throw new ProtocolViolation(`input ${clip(x.path)} does not match its hash`)
      onFile(x, buf)
      buf = null
      fill = 0
      k++
    }
  }
  settle()
  const chunks = function * () { while (packed.length > 0) yield packed.shift()! }
  await pipeline(Readable.from(chunks(), { objectMode: false }), createGunzip(), async (out: AsyncIterable<Buffer>) => {
    for await (const piece of out) {
      let off = 0
      while (off < piece.length) {
        if (buf === null) throw new ProtocolViolation('inputs longer than their declared sizes')
        const n = Math.min(buf.length - fill, piece.length - off)
        piece.copy(buf, fill, off, off + n)
        fill += n
        off += n
        settle()
      }
    }
  }).catch((err: NodeJS.ErrnoException) => {
    throw err instanceof ProtocolViolation || !err.code?.startsWith('Z_') ? err : new ProtocolViolation(`inputs are not gzip data: ${err.message}`)
  })
  if (k < need.length) throw new ProtocolViolation('inputs shorter than their declared sizes')
}

const BUSY_MEMORY = 'busy: this peer\'s jobs hold all the memory it may use here'

async function refuse(f: Framed, reason: string): Promise<void> {
  await f.writeJson({ type: 'refused', reason })
  await f.closeAfterReply()
}

/** Builder side: serve compile jobs with `handler`. */
export async function serveCompileJobs(node: Libp2p, meshId: string, handler: JobHandler, cache: InputCache, onError: (peer: string, err: Error) => void, opts: ServeOptions = {}): Promise<CompileJobServer> {
  const maxStreams = opts.maxStreamsPerPeer ?? 8
  const held = new HeldBytes(opts.peerBytes ?? PEER_BYTES, opts.totalBytes ?? TOTAL_BYTES)
  const streams = new StreamCounts()
  await node.handle(compileJobProtocol(meshId), async (stream, connection) => {
    const peer = connection.remotePeer.toString()
    const f = new Framed(stream, { stallMs: opts.stallMs ?? STALL_MS })
    const slot = streams.open(peer)
    const before = slot.before
    const account = held.account(peer)
    let release: (() => void) | null = null
    let beat: NodeJS.Timeout | null = null
    // the client closes its side only after the reply: a close before it means it has gone
    const gone = new AbortController()
    const onClose = () => gone.abort(new Error('the client closed the job stream'))
    stream.addEventListener('close', onClose, { once: true })
    try {
      // the header is one control frame; nothing larger is read before the job is admitted
      if (before >= maxStreams) return await refuse(f, 'busy: too many jobs in flight from this peer')
      const wire = parseHeader(await f.readJson())
      const admitted = handler.admit(peer, wire)
      if (typeof admitted === 'string') return await refuse(f, admitted)
      release = admitted
      const tableBytes = await f.readBlobSize(Math.min(MAX_TABLE_BYTES, wire.files * (ENTRY_FIXED + LIMITS.pathBytes)))
      if (!account.take(tableBytes)) return await refuse(f, BUSY_MEMORY)
      const header: JobHeader = { ...wire, files: decodeFileTable(await f.readBlobBody(tableBytes), wire.files) }
      account.give(tableBytes)
      // what we hold, pinned for this job (the cache may evict meanwhile); each content once
      const have = new Map<string, Buffer>()
      const need: number[] = []
      const asked = new Set<string>()
      header.files.forEach((x, i) => {
        const data = have.get(x.hash) ?? cache.get(x.hash)
        if (data && data.length === x.size) have.set(x.hash, data)
        else if (!asked.has(x.hash)) { asked.add(x.hash); need.push(i) }
      })
      const declared = need.reduce((n, i) => n + header.files[i]!.size, 0)
      if (declared > LIMITS.inputBytes) return await refuse(f, `inputs of ${declared} bytes exceed the limit of ${LIMITS.inputBytes}`)
      const inputCost = declared + gzipBound(declared)
      if (inputCost > held.peerLimit) return await refuse(f, `inputs of ${declared} bytes are more than this builder takes from one peer`)
      if (!account.take(inputCost)) return await refuse(f, BUSY_MEMORY)
      // the packed inputs may wait unread in the memory just reserved for them: yamux grants
      // window as bytes arrive, not as they are read, so a client on a fast link outruns a busy
      // builder, and libp2p drops a stream whose unread bytes pass 4 MiB (an honest job lost)
      f.allowUnread(framedBytes(gzipBound(declared)))
      await f.writeJson({ type: 'accepted', need })
      // alive from here on, also while the inputs arrive and are unpacked (the client reads
      // these after it has sent them)
      beat = setInterval(() => { void f.writeJson({ type: 'working' }).catch(() => {}) }, HEARTBEAT_MS)
      // read at the pace it arrives (libp2p drops a stream whose unread bytes pass 4 MiB), then
      // unpacked: gunzip runs in the thread pool and cannot be relied on to keep up
      const packed: Uint8Array[] = []
      for await (const chunk of f.readBlobChunks(await f.readBlobSize(gzipBound(declared)))) packed.push(chunk)
      await receiveInputs(packed, header.files, need, (x, data) => {
        have.set(x.hash, data)
        cache.put(x.hash, data) // its hash checked
      })
      account.give(gzipBound(declared))
      const files = header.files.map((x) => ({ path: x.path, mode: x.mode, data: have.get(x.hash)! }))
      const reply = await handler.run(peer, header, files, gone.signal)
      clearInterval(beat)
      beat = null
      if (reply.kind === 'done') {
        await f.writeJson(reply.keep !== undefined ? { type: 'done', exitCode: reply.exitCode, keep: reply.keep } : { type: 'done', exitCode: reply.exitCode })
        await f.writeBlob(reply.stdout)
        await f.writeBlob(reply.stderr)
        if (reply.exitCode === 0) await f.writeBlob(reply.obj ?? Buffer.alloc(0))
      } else {
        await f.writeJson({ type: reply.kind === 'refused' ? 'refused' : 'failed', reason: reply.reason })
      }
    } catch (err) {
      onError(peer, err as Error)
      f.abort(err as Error)
    } finally {
      stream.removeEventListener('close', onClose)
      if (beat) clearInterval(beat)
      account.end()
      release?.()
      slot.close()
      await f.close()
    }
  }, { maxInboundStreams: 2 * maxStreams })
  return { heldBytes: () => held.total, openStreams: () => streams.total }
}
