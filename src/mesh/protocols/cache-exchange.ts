// The cache-exchange protocol: members fetch signed cache entries (signed-entry.ts) from the
// member that holds them, and hand entries to their owners. One request per stream.
//
//   client → {v:1, op:'get', key, follow?: true}
//   holder → {type:'hit', next?: key2} + blob (the signed entry) [+ blob of key2]
//            |   {type:'miss'}   |   {type:'refused', reason}
//   With follow (the client looks up a manifest set), a holder that also holds the entry the set
//   points at (key2) sends it behind the first: one round trip for a hit from another checkout.
//   A holder that does not know follow (an older meshcc) answers as to a plain get, and a client
//   that did not ask never gets a second blob. The client verifies key2's entry like any other.
//   The second entry is at most FOLLOW_MAX_BYTES (a larger one the client asks for itself).
//   With again: true the client offers to send its next request (a get or a batch) on the same
//   stream; a holder that takes it says again: true in its answer (a miss or a hit) and reads one
//   more request, waiting IDLE_MS for it, then closes quietly; the client parks the stream for
//   less than that (ReusableStreams). Lookups and publishes per job and owner each opened a
//   stream of their own: yamux, protocol negotiation and a handler run on both sides. A holder of
//   the previous version ignores the field and closes as before; a parked stream that fails
//   before its answer is dialed anew.
//
//   client → {v:1, op:'put', key, size}
//   owner  → {type:'accepted'}   |   {type:'refused', reason}     decided before any entry byte is read
//   client → blob (size bytes)
//   owner  → {type:'stored'}     |   {type:'refused', reason}     after verifying the whole entry
//
//   client → {v:1, op:'keep', key, job, hash, producer, timestamp, sig, stdout, stderr, outputs, meta, size}
//          [+ blob: raw deflate of part 3's `size` bytes, when size > 0]
//   builder → {type:'stored'}   |   {type:'refused', reason}
//   After a remote compile, to the builder that ran it and still holds its outputs under `job` (an
//   id its reply gave, kept-jobs.ts): the client's signature (producer, timestamp, sig, over key and
//   the content hash `hash`, signed-entry.ts) and how the entry is made of the job's outputs, not
//   the entry itself. Each of stdout, stderr and the outputs' data is a ref [part, offset, length]
//   into part 0 the job's stdout, 1 its stderr, 2 its object blob, 3 the blob sent here (what
//   the builder cannot know: the client's depfile, text it rewrote); outputs are [name, ref]
//   pairs, meta [key, value] pairs. Part 3 goes deflated: it is mostly a depfile, text that
//   shrinks several times. The builder rebuilds and encodes the entry, and stores it only
//   when its content hash is the signed one and the signature is the client's own. A member of
//   the previous version fails the stream on the unknown op: the client sends the entry whole.
//
//   client → {v:1, op:'batch', key, count}      then `count` (at most MAX_BATCH_OPS) puts and keeps,
//            each exactly as on a stream of its own, with the same replies, one after the other;
//            with again: true, the member reads one more request after it, as after a get (every
//            member that takes batches does)
//   What a client hands one owner at once (a job's result, its depend form, the manifest set, and
//   other jobs' when publishing lags) on one stream: each stream costs both sides a yamux stream,
//   protocol negotiation and a handler run. Every operation in it passes the checks and limits
//   it would alone (admission before its bytes are read, its own held bytes, given back when it
//   ends); a refused one does not end the batch. `key` (the first operation's) only gets the head
//   past the checks of a member of the previous version, which fails the stream on the unknown
//   op before answering anything: the client sends the operations one by one then.
//
// Entries are opaque bytes here: the holder and the client verify them (signature, producer,
// checksum) with signed-entry.ts. What this file bounds is what a member holding the mesh key can
// make another one hold: a few streams per peer (more are refused unread), blob sizes announced
// before they are read and checked against a limit, bytes in flight per peer and in all
// (HeldBytes, as compile jobs), and a stall limit on every read.
import { promisify } from 'node:util'
import { deflateRaw, inflateRaw } from 'node:zlib'
import type { Libp2p } from '@libp2p/interface'
import { MAX_META, MAX_OUTPUTS, isValidKey } from '../../cache/entry-format.js'
import type { EntrySignature } from '../../cache/signed-entry.js'
import { clip } from '../../log.js'
import { peerIdOf } from '../peer-ids.js'
import { HeldBytes, StreamCounts } from './admission.js'
import { Framed, ProtocolViolation, framedBytes, int, str } from './framing.js'

export const cacheExchangeProtocol = (meshId: string) => `/meshcc/${meshId}/cache/1.0.0`
const VERSION = 1
/** the largest entry a holder sends behind a manifest set (an object file is rarely a tenth of it) */
export const FOLLOW_MAX_BYTES = 16 * 1024 * 1024
/** the most bytes a keep carries besides its control frame (a depfile, rewritten text): more, and the entry goes whole */
export const KEEP_MAX_BYTES = 1024 * 1024
/** a keep's parts: the job's stdout, stderr and object blob, and the bytes sent with the keep */
export const KEEP_PARTS = 4
/** the most operations one batch carries */
export const MAX_BATCH_OPS = 32
/** a holder that said again waits this long for the next request; a client parks a stream for PARK_MS, well under it */
export const IDLE_MS = 3000
const PARK_MS = 2000
/** requests one stream carries at most, and streams parked per holder */
const MAX_REQUESTS_PER_STREAM = 256
const MAX_PARKED_PER_PEER = 2
const deflateRawAsync = promisify(deflateRaw)
const inflateRawAsync = promisify(inflateRaw)
/** the largest raw deflate stream `n` bytes can honestly become (stored blocks) */
const deflateBound = (n: number) => n + (n >> 8) + 64

/** [part, offset, length]: bytes of one of a keep's parts */
export type PartRef = readonly [number, number, number]

/** What a keep says: everything the builder needs besides the outputs it kept. */
export interface KeepRequest {
  key: string
  /** the id the job's reply gave */
  job: string
  contentHash: Buffer
  signature: EntrySignature
  stdout: PartRef
  stderr: PartRef
  outputs: Array<{ name: string; ref: PartRef }>
  meta: Array<[string, string]>
}

/** a second entry a holder sent behind the first (follow): still to be verified */
export interface FollowedEntry { key: string; blob: Buffer }
export type GetReply = { kind: 'hit'; blob: Buffer; next: FollowedEntry | null } | { kind: 'miss' } | { kind: 'refused'; reason: string }
export type PutReply = { kind: 'stored' } | { kind: 'refused'; reason: string }

export interface GetOptions {
  /** the whole request: aborted when another holder answered first, or the caller gave up */
  signal: AbortSignal
  /** the answer (hit or miss) must arrive by this; the entry's bytes may take longer (transferMs) */
  answerSignal?: AbortSignal
  /** refuse an announced entry larger than this */
  limit: number
  /** ask the holder to send the entry a manifest set points at too (see the header) */
  follow?: boolean
  /** a read that waits longer than this for the next piece fails (default 5 s) */
  stallMs?: number
  /** streams the holder reads another request on: taken from here, and parked here again after the answer */
  streams?: ReusableStreams
}

/** Client side: streams whose holders read one more request (again), a few per holder, each for PARK_MS. */
export class ReusableStreams {
  private readonly parked = new Map<string, Array<{ f: Framed; timer: NodeJS.Timeout }>>()
  /** requests answered on a parked stream */
  reused = 0

  /** a parked stream to `peer` that its end has not closed, or null */
  take(peer: string): Framed | null {
    for (let p = this.parked.get(peer)?.at(-1); p; p = this.parked.get(peer)?.at(-1)) {
      this.drop(peer, p, false)
      const { stream } = p.f
      if (stream.status === 'open' && stream.remoteWriteStatus === 'writable') return p.f
      void p.f.close()
    }
    return null
  }

  park(peer: string, f: Framed): void {
    const list = this.parked.get(peer) ?? []
    this.parked.set(peer, list)
    if (list.length >= MAX_PARKED_PER_PEER) this.drop(peer, list.shift()!)
    const p = { f, timer: setTimeout(() => this.drop(peer, p), PARK_MS) }
    p.timer.unref()
    list.push(p)
  }

  closeAll(): void {
    for (const [peer, list] of this.parked) for (const p of [...list]) this.drop(peer, p)
  }

  private drop(peer: string, p: { f: Framed; timer: NodeJS.Timeout }, close = true): void {
    clearTimeout(p.timer)
    const list = this.parked.get(peer)
    const i = list?.indexOf(p) ?? -1
    if (i >= 0) list!.splice(i, 1)
    if (list?.length === 0) this.parked.delete(peer)
    if (close) void p.f.close()
  }
}

/** a parked stream that failed before its answer (the holder closed it meanwhile): the get goes on a new one */
class Unanswered extends Error {}

function key(v: unknown): string {
  const k = str(v, 'key', 64)
  if (!isValidKey(k)) throw new ProtocolViolation('field key: expected 64 lowercase hex digits')
  return k
}

function either(a: AbortSignal, b?: AbortSignal): AbortSignal {
  return b ? AbortSignal.any([a, b]) : a
}

/** Client side: ask `peer` for the signed entry of `k`. Throws on transport or protocol trouble. */
export async function getEntry(node: Libp2p, meshId: string, peer: string, k: string, opts: GetOptions): Promise<GetReply> {
  const answer = either(opts.signal, opts.answerSignal)
  const parked = opts.streams?.take(peer)
  if (parked) {
    try {
      const r = await getOn(parked, peer, k, opts, answer, true)
      opts.streams!.reused++
      return r
    } catch (err) {
      if (!(err instanceof Unanswered)) throw err
    }
  }
  // the protocol's name goes out with the request: no round trip of its own
  const stream = await node.dialProtocol(peerIdOf(peer), cacheExchangeProtocol(meshId), { signal: answer, negotiateFully: false })
  return await getOn(new Framed(stream), peer, k, opts, answer, false)
}

async function getOn(f: Framed, peer: string, k: string, opts: GetOptions, answer: AbortSignal, reused: boolean): Promise<GetReply> {
  let parked = false
  f.setStallMs(opts.stallMs ?? 5000)
  try {
    let head: { type?: unknown; reason?: unknown; next?: unknown; again?: unknown }
    try {
      await f.writeJson({ v: VERSION, op: 'get', key: k, ...(opts.follow ? { follow: true } : {}), ...(opts.streams ? { again: true } : {}) }, answer)
      // the answer may arrive faster than a busy asker reads it (libp2p drops a stream past 4 MiB
      // unread): let what it would hold anyway once read wait, the entry and the one it follows
      f.resetUnread()
      f.allowUnread(framedBytes(opts.limit) + (opts.follow ? framedBytes(FOLLOW_MAX_BYTES) : 0))
      head = await f.readJson<typeof head>(answer)
    } catch (err) {
      if (reused && !answer.aborted) throw new Unanswered((err as Error).message)
      throw err
    }
    const again = head.again === true && opts.streams !== undefined
    const done = (reply: GetReply): GetReply => {
      if (again && !opts.signal.aborted) {
        opts.streams!.park(peer, f)
        parked = true
      }
      return reply
    }
    if (head.type === 'miss') return done({ kind: 'miss' })
    if (head.type === 'refused') return { kind: 'refused', reason: str(head.reason, 'reason', 1024) }
    if (head.type !== 'hit') throw new ProtocolViolation(`unexpected reply ${clip(String(head.type), 40)}`)
    const nextKey = head.next === undefined ? null : key(head.next)
    if (nextKey !== null && !opts.follow) throw new ProtocolViolation('a second entry nobody asked for')
    const size = await f.readBlobSize(opts.limit, answer)
    const blob = await f.readBlobBody(size, opts.signal)
    if (nextKey === null) return done({ kind: 'hit', blob, next: null })
    const nextSize = await f.readBlobSize(Math.min(opts.limit, FOLLOW_MAX_BYTES), opts.signal)
    return done({ kind: 'hit', blob, next: { key: nextKey, blob: await f.readBlobBody(nextSize, opts.signal) } })
  } finally {
    if (!parked) await f.close()
  }
}

/** Client side: offer `blob` (the signed entry of `k`) to `peer`. Throws on transport or protocol trouble. */
export async function putEntry(node: Libp2p, meshId: string, peer: string, k: string, blob: Buffer, signal: AbortSignal): Promise<PutReply> {
  const f = await open(node, meshId, peer, signal)
  try {
    return await putOn(f, k, blob, signal)
  } finally {
    await f.close()
  }
}

/**
 * Client side: ask the builder `peer` to store the entry of `req.key` from the outputs of the job
 * it ran, with `extra` as part 3. `sent`: the bytes this put on the stream. Throws on transport or
 * protocol trouble (a member of the previous version, which does not know keeps, ends up here).
 */
export async function keepEntry(node: Libp2p, meshId: string, peer: string, req: KeepRequest, extra: Buffer, signal: AbortSignal): Promise<PutReply & { sent: number }> {
  const f = await open(node, meshId, peer, signal)
  try {
    return await keepOn(f, req, extra, signal)
  } finally {
    await f.close()
  }
}

/** One operation of a batch: a put of a signed entry, or a keep. */
export type BatchOp = { op: 'put'; key: string; blob: Buffer } | { op: 'keep'; req: KeepRequest; extra: Buffer }
/** A batch's outcome: the replies in order, as far as they came; `error` what ended it early (null: nothing). */
export interface BatchResult { replies: Array<PutReply & { sent?: number }>; error: Error | null }

/**
 * Client side: several puts and keeps to `peer` on one stream (see the header), a parked one from
 * `streams` when there is one (and parked there again after). Never throws: a member of the
 * previous version gives no reply at all and an error, and the caller sends the operations one
 * by one then.
 */
export async function sendBatch(node: Libp2p, meshId: string, peer: string, ops: BatchOp[], signal: AbortSignal, streams?: ReusableStreams): Promise<BatchResult> {
  if (ops.length === 0 || ops.length > MAX_BATCH_OPS) return { replies: [], error: new Error(`a batch of ${ops.length} operations`) }
  const parked = streams?.take(peer)
  if (parked) {
    const r = await batchOn(parked, peer, ops, signal, streams)
    if (r.replies.length > 0 || r.error === null) streams!.reused++
    // the member closed it meanwhile: on a new one
    if (r.replies.length > 0 || r.error === null || signal.aborted) return r
  }
  let f: Framed
  try {
    f = await open(node, meshId, peer, signal)
  } catch (err) {
    return { replies: [], error: err as Error }
  }
  return await batchOn(f, peer, ops, signal, streams)
}

async function batchOn(f: Framed, peer: string, ops: BatchOp[], signal: AbortSignal, streams?: ReusableStreams): Promise<BatchResult> {
  const replies: BatchResult['replies'] = []
  let parked = false
  f.setStallMs(10_000)
  try {
    const first = ops[0]!
    await f.writeJson({ v: VERSION, op: 'batch', key: first.op === 'put' ? first.key : first.req.key, count: ops.length, ...(streams ? { again: true } : {}) }, signal)
    for (const o of ops) replies.push(o.op === 'put' ? await putOn(f, o.key, o.blob, signal) : await keepOn(f, o.req, o.extra, signal))
    if (streams && !signal.aborted) {
      streams.park(peer, f)
      parked = true
    }
    return { replies, error: null }
  } catch (err) {
    return { replies, error: err as Error }
  } finally {
    if (!parked) await f.close()
  }
}

async function open(node: Libp2p, meshId: string, peer: string, signal: AbortSignal): Promise<Framed> {
  const stream = await node.dialProtocol(peerIdOf(peer), cacheExchangeProtocol(meshId), { signal, negotiateFully: false })
  return new Framed(stream, { stallMs: 10_000 })
}

async function putOn(f: Framed, k: string, blob: Buffer, signal: AbortSignal): Promise<PutReply> {
  await f.writeJson({ v: VERSION, op: 'put', key: k, size: blob.length }, signal)
  const first = await f.readJson<{ type?: unknown; reason?: unknown }>(signal)
  if (first.type === 'refused') return { kind: 'refused', reason: str(first.reason, 'reason', 1024) }
  if (first.type !== 'accepted') throw new ProtocolViolation(`unexpected reply ${clip(String(first.type), 40)}`)
  await f.writeBlob(blob, signal)
  return await stored(f, signal)
}

async function keepOn(f: Framed, req: KeepRequest, extra: Buffer, signal: AbortSignal): Promise<PutReply & { sent: number }> {
  const { signature: s } = req
  const head = {
    v: VERSION, op: 'keep', key: req.key, job: req.job, hash: req.contentHash.toString('hex'),
    producer: s.producer, timestamp: s.timestamp, sig: s.signature.toString('base64'),
    stdout: req.stdout, stderr: req.stderr, outputs: req.outputs.map((o) => [o.name, o.ref]), meta: req.meta, size: extra.length
  }
  const packed = extra.length > 0 ? await deflateRawAsync(extra, { level: 1 }) : null
  if (packed) await f.writeFrames(head, [packed], signal)
  else await f.writeJson(head, signal)
  const sent = Buffer.byteLength(JSON.stringify(head)) + (packed?.length ?? 0)
  return { ...(await stored(f, signal)), sent }
}

/** The owner's last word on a put or keep. */
async function stored(f: Framed, signal: AbortSignal): Promise<PutReply> {
  const done = await f.readJson<{ type?: unknown; reason?: unknown }>(signal)
  if (done.type === 'stored') return { kind: 'stored' }
  if (done.type === 'refused') return { kind: 'refused', reason: str(done.reason, 'reason', 1024) }
  throw new ProtocolViolation(`unexpected reply ${clip(String(done.type), 40)}`)
}

function partRef(v: unknown, field: string): PartRef {
  if (!Array.isArray(v) || v.length !== 3) throw new ProtocolViolation(`field ${field}: expected [part, offset, length]`)
  return [int(v[0], `${field} part`, 0, KEEP_PARTS - 1), int(v[1], `${field} offset`, 0, 0xffffffff), int(v[2], `${field} length`, 0, 0xffffffff)]
}

function pairs<T>(v: unknown, field: string, max: number, item: (x: unknown[]) => T): T[] {
  if (!Array.isArray(v) || v.length > max) throw new ProtocolViolation(`field ${field}: expected at most ${max} pairs`)
  return v.map((x) => {
    if (!Array.isArray(x) || x.length !== 2) throw new ProtocolViolation(`field ${field}: expected pairs`)
    return item(x)
  })
}

/** A keep's control frame, checked for shape (the entry's own rules are checked when it is encoded). */
function parseKeep(k: string, req: Record<string, unknown>): KeepRequest {
  const job = str(req.job, 'job', 64)
  const hash = str(req.hash, 'hash', 64)
  if (!/^[0-9a-f]{64}$/.test(hash)) throw new ProtocolViolation('field hash: expected 64 lowercase hex digits')
  const sig = Buffer.from(str(req.sig, 'sig', 128), 'base64')
  if (sig.length !== 64) throw new ProtocolViolation('field sig: expected 64 bytes')
  return {
    key: k, job, contentHash: Buffer.from(hash, 'hex'),
    signature: { producer: str(req.producer, 'producer', 128), timestamp: int(req.timestamp, 'timestamp'), signature: sig },
    stdout: partRef(req.stdout, 'stdout'), stderr: partRef(req.stderr, 'stderr'),
    outputs: pairs(req.outputs, 'outputs', MAX_OUTPUTS, ([name, ref]) => ({ name: str(name, 'output name', 64), ref: partRef(ref, 'output') })),
    meta: pairs(req.meta, 'meta', MAX_META, ([mk, mv]) => [str(mk, 'meta key', 256), str(mv, 'meta value', 65535)] as [string, string])
  }
}

export interface CacheExchangeHandler {
  /** may this peer read or write here at all ([mesh] allow) */
  isAllowed(peer: string): boolean
  /**
   * the signed entry held for `key`, or null; with `follow`, also the entry the manifest set in
   * it points at, when held here (null when it is no manifest set or that entry is not here)
   */
  get(peer: string, key: string, follow: boolean): Promise<{ blob: Buffer; next: FollowedEntry | null } | null>
  /** decide before reading: a refusal reason, or null to accept an entry of `size` bytes */
  admitPut(peer: string, key: string, size: number): string | null
  /** verify and keep; a refusal reason, or null once stored */
  put(peer: string, key: string, blob: Buffer): Promise<string | null>
  /** an entry was sent whole to `peer` */
  onServed?(peer: string, key: string, bytes: number): void
  /** rebuild the entry a keep describes from the job's outputs held here, check and store it; a refusal reason, or null once stored */
  keep?(peer: string, req: KeepRequest, extra: Buffer): Promise<string | null>
  /** a put or keep came in a batch */
  onBatched?(peer: string): void
}

export interface CacheServeOptions {
  /** streams one peer may have open at once; more are refused unread (default 8) */
  maxStreamsPerPeer?: number
  /** bytes one peer's requests may make this member hold at once (default 512 MiB) */
  peerBytes?: number
  /** the same for all peers together (default 1 GiB) */
  totalBytes?: number
  /** the largest entry accepted or served */
  maxEntryBytes: number
  /** a client that sends nothing for this long is dropped (default 10 s) */
  stallMs?: number
}

export interface CacheExchangeServer {
  heldBytes(): number
  openStreams(): number
  /** stop answering (a config reload that turns sharing off or restarts it) */
  stop(): Promise<void>
}

type Request = { v?: unknown; op?: unknown; key?: unknown; size?: unknown; follow?: unknown; count?: unknown; again?: unknown } & Record<string, unknown>

/** A request's control frame, of this version. */
async function readRequest(f: Framed, signal?: AbortSignal): Promise<Request> {
  const req = await f.readJson<Request>(signal)
  if (req.v !== VERSION) throw new ProtocolViolation(`unsupported cache request version ${clip(String(req.v), 40)}`)
  return req
}

/** The next request on a stream whose asker was told again; null when it closed the stream or sent nothing for IDLE_MS (a quiet end). */
async function nextRequest(f: Framed): Promise<Request | null> {
  const idle = new AbortController()
  const timer = setTimeout(() => idle.abort(), IDLE_MS)
  try {
    return await readRequest(f, idle.signal)
  } catch (err) {
    if (err instanceof ProtocolViolation && !idle.signal.aborted) throw err
    return null
  } finally {
    clearTimeout(timer)
  }
}

async function refuse(f: Framed, reason: string): Promise<void> {
  await f.writeJson({ type: 'refused', reason })
  await f.closeAfterReply()
}

const BUSY = 'busy: this peer\'s requests hold all the memory they may use here'

/** Holder side: answer gets and puts with `handler`. */
export async function serveCacheExchange(node: Libp2p, meshId: string, handler: CacheExchangeHandler, onError: (peer: string, err: Error) => void, opts: CacheServeOptions): Promise<CacheExchangeServer> {
  const maxStreams = opts.maxStreamsPerPeer ?? 8
  const held = new HeldBytes(opts.peerBytes ?? 512 * 1024 * 1024, opts.totalBytes ?? 1024 * 1024 * 1024)
  const streams = new StreamCounts()
  await node.handle(cacheExchangeProtocol(meshId), async (stream, connection) => {
    const peer = connection.remotePeer.toString()
    const f = new Framed(stream, { stallMs: opts.stallMs ?? 10_000 })
    const slot = streams.open(peer)
    let account = held.account(peer)
    /** a put or keep, alone on its stream (a refusal ends it) or in a batch (the next one follows) */
    const store = async (req: Request, k: string, alone: boolean): Promise<void> => {
      const no = (reason: string) => (alone ? refuse(f, reason) : f.writeJson({ type: 'refused', reason }))
      if (req.op === 'keep') {
        const keep = parseKeep(k, req)
        const size = int(req.size, 'size', 0, KEEP_MAX_BYTES)
        if (!account.take(size + deflateBound(size))) {
          // in a batch its bytes are on their way: passed over a chunk at a time, never held
          if (!alone && size > 0) for await (const _ of f.readBlobChunks(await f.readBlobSize(deflateBound(size)))) { /* dropped */ }
          return await no(BUSY)
        }
        let extra = Buffer.alloc(0)
        if (size > 0) {
          const packed = await f.readBlob(deflateBound(size))
          // maxOutputLength: a small hostile stream cannot inflate past what was announced
          extra = await inflateRawAsync(packed, { maxOutputLength: size }).catch((err: Error) => { throw new ProtocolViolation(`keep bytes are not deflate data: ${err.message.split('\n')[0]}`) })
          if (extra.length !== size) throw new ProtocolViolation(`keep of ${extra.length} bytes, announced ${size}`)
        }
        const why = handler.keep ? await handler.keep(peer, keep, extra) : 'this member takes no keeps'
        await f.writeJson(why === null ? { type: 'stored' } : { type: 'refused', reason: why })
        return
      }
      if (req.op !== 'put') throw new ProtocolViolation(`unknown cache operation ${clip(String(req.op), 40)}`)
      const size = int(req.size, 'size', 1, opts.maxEntryBytes)
      const refusal = handler.admitPut(peer, k, size)
      if (refusal !== null) return await no(refusal)
      if (!account.take(size)) return await no(BUSY)
      // the entry may arrive faster than a busy owner reads it: what the account holds may wait
      f.allowUnread(framedBytes(size))
      await f.writeJson({ type: 'accepted' })
      const blob = await f.readBlob(size)
      if (blob.length !== size) throw new ProtocolViolation(`entry of ${blob.length} bytes, announced ${size}`)
      const why = await handler.put(peer, k, blob)
      await f.writeJson(why === null ? { type: 'stored' } : { type: 'refused', reason: why })
    }
    /** the operations of a batch, each as on a stream of its own; false when the stream ends here */
    const batch = async (req: Request): Promise<boolean> => {
      const count = int(req.count, 'count', 1, MAX_BATCH_OPS)
      for (let i = 0; i < count; i++) {
        account.end()
        account = held.account(peer)
        f.resetUnread()
        const sub = await readRequest(f)
        if (sub.op !== 'put' && sub.op !== 'keep') throw new ProtocolViolation(`cache operation ${clip(String(sub.op), 40)} in a batch`)
        const sk = key(sub.key)
        if (!handler.isAllowed(peer)) {
          await refuse(f, 'not allowed here ([mesh] allow)')
          return false
        }
        await store(sub, sk, false)
        handler.onBatched?.(peer)
      }
      return true
    }
    /** answer a get (again: the asker may send another on this stream); false when the stream ends here */
    const answerGet = async (k: string, follow: boolean, again: boolean): Promise<boolean> => {
      const more = again ? { again: true } : {}
      const got = await handler.get(peer, k, follow)
      if (got === null || got.blob.length > opts.maxEntryBytes) {
        await f.writeJson({ type: 'miss', ...more })
        return true
      }
      const next = got.next !== null && got.next.blob.length <= Math.min(opts.maxEntryBytes, FOLLOW_MAX_BYTES) ? got.next : null
      if (!account.take(got.blob.length + (next?.blob.length ?? 0))) {
        await refuse(f, BUSY)
        return false
      }
      await f.writeFrames(next ? { type: 'hit', next: next.key, ...more } : { type: 'hit', ...more }, next ? [got.blob, next.blob] : [got.blob])
      handler.onServed?.(peer, k, got.blob.length)
      if (next) handler.onServed?.(peer, next.key, next.blob.length)
      return true
    }
    try {
      if (slot.before >= maxStreams) return await refuse(f, 'busy: too many cache requests in flight from this peer')
      const req = await readRequest(f)
      const k = key(req.key)
      if (!handler.isAllowed(peer)) return await refuse(f, 'not allowed here ([mesh] allow)')
      // gets and batches may be followed by another request on the stream (again); a put or keep is alone
      if (req.op !== 'get' && req.op !== 'batch') return await store(req, k, true)
      let r = req
      let rk = k
      for (let n = 1; ; n++) {
        const again = r.again === true && n < MAX_REQUESTS_PER_STREAM
        if (!(await (r.op === 'batch' ? batch(r) : answerGet(rk, r.follow === true, again))) || !again) return
        // the next request, as on a stream of its own: its bytes held until it is answered, no more room to wait unread
        account.end()
        account = held.account(peer)
        f.resetUnread()
        const next = await nextRequest(f)
        if (next === null) return
        if (next.op !== 'get' && next.op !== 'batch') throw new ProtocolViolation(`cache operation ${clip(String(next.op), 40)} after a get or batch`)
        rk = key(next.key)
        if (!handler.isAllowed(peer)) return await refuse(f, 'not allowed here ([mesh] allow)')
        r = next
      }
    } catch (err) {
      onError(peer, err as Error)
      f.abort(err as Error)
    } finally {
      account.end()
      slot.close()
      await f.close()
    }
  }, { maxInboundStreams: 2 * maxStreams })
  return { heldBytes: () => held.total, openStreams: () => streams.total, stop: () => node.unhandle(cacheExchangeProtocol(meshId)) }
}
