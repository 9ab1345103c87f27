// Framing shared by meshcc's request/response protocols on libp2p streams: length-prefixed
// JSON control frames, and blobs sent as a {blob: n} frame followed by chunks of at most
// 1 MiB (so no single frame outgrows libp2p's read buffer). Every read is size-checked:
// nothing that comes off the network is trusted for its length.
import { StreamStateError, type Stream } from '@libp2p/interface'
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils'

export const CHUNK_BYTES = 1024 * 1024
/** control frames are small; anything bigger is a broken or hostile peer */
export const MAX_CONTROL_BYTES = 256 * 1024

/** what libp2p lets wait unread on a stream before it drops it (lpStream's default) */
const DEFAULT_UNREAD_BYTES = 4 * 1024 * 1024

/** a blob of `n` bytes as it crosses the stream: its size frame and a length prefix per chunk (for allowUnread) */
export const framedBytes = (n: number): number => n + 64 + 8 * Math.ceil(n / CHUNK_BYTES)

export class ProtocolViolation extends Error {}
/** a write the stream's end cut off (the peer reset it, or it was closed) */
export class StreamGone extends Error {}

export interface FramedOptions {
  /** a read that waits longer than this for the peer fails (a stalled sender holds nothing for long) */
  stallMs?: number
  /**
   * bytes received and not yet read that make libp2p drop the stream (its default, 4 MiB): the
   * peer is never told to wait (yamux grants window as data arrives, not as it is read), so a
   * reader that pauses for the disk needs this much room
   */
  maxBufferSize?: number
}

export class Framed {
  private lp: LengthPrefixedStream<Stream>
  /** aborted when a read waits past stallMs: one per stream, armed by a plain timer per read */
  private readonly stall = new AbortController()
  /** the caller's signal joined with `stall`, kept while the caller passes the same one */
  private joined: { from: AbortSignal | undefined; signal: AbortSignal } | null = null
  /** allowUnread widened the read buffer */
  private raised = false

  private readonly opts: FramedOptions

  constructor(readonly stream: Stream, opts: FramedOptions = {}) {
    this.opts = { ...opts } // setStallMs changes this copy
    this.lp = this.wrap(opts.maxBufferSize)
  }

  private wrap(maxBufferSize: number | undefined): LengthPrefixedStream<Stream> {
    return lpStream(this.stream, { maxDataLength: Math.max(CHUNK_BYTES, MAX_CONTROL_BYTES), maxBufferSize })
  }

  /**
   * Let up to `bytes` received and not yet read wait from now on (call it between reads): for a
   * transfer whose memory the caller has reserved, so a reader that falls behind the link (a
   * busy event loop) keeps the stream where the default buffer would have it dropped.
   */
  allowUnread(bytes: number): void {
    if (bytes <= (this.opts.maxBufferSize ?? DEFAULT_UNREAD_BYTES)) return
    this.lp.unwrap() // what is buffered goes back onto the stream, for the new reader
    this.lp = this.wrap(bytes)
    this.raised = true
  }

  /** The stall limit of the reads from now on (a stream that carries requests of different kinds). */
  setStallMs(ms: number): void {
    this.opts.stallMs = ms
  }

  /** Back to the room for unread bytes the stream started with, once what allowUnread reserved is given back. */
  resetUnread(): void {
    if (!this.raised) return
    this.lp.unwrap()
    this.lp = this.wrap(this.opts.maxBufferSize)
    this.raised = false
  }

  // Not AbortSignal.timeout and AbortSignal.any per frame: each of those timers stays armed
  // after its read (the joined signal listens to it) and fires later, building a DOMException
  // for nobody; a compile job reads a dozen frames, and a build's worth of them showed in the
  // daemons' profiles.
  private async read(signal?: AbortSignal): Promise<Uint8Array> {
    const { stallMs } = this.opts
    if (stallMs === undefined) return (await this.lp.read({ signal })).subarray()
    const stall = this.stall
    const joined = this.joined !== null && this.joined.from === signal ? this.joined : { from: signal, signal: signal ? AbortSignal.any([signal, stall.signal]) : stall.signal }
    this.joined = joined
    const timer = setTimeout(() => stall.abort(), stallMs)
    timer.unref()
    try {
      return (await this.lp.read({ signal: joined.signal })).subarray()
    } catch (err) {
      if (stall.signal.aborted && !signal?.aborted) throw new ProtocolViolation(`nothing received for ${stallMs / 1000} s`)
      throw err
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * Every write goes through here. lpStream's write, waiting for room, rejects with the stream's
   * close event (not an Error: no message, and callers' `err.message` throws) when the peer
   * resets the stream, and a write after the reset throws "Cannot write to a stream that is
   * closed"; both become one Error saying the peer closed the stream, which callers treat as
   * any failure of that peer.
   */
  private async send(pieces: Uint8Array[], signal: AbortSignal | undefined): Promise<void> {
    try {
      await (pieces.length === 1 ? this.lp.write(pieces[0]!, { signal }) : this.lp.writeV(pieces, { signal }))
    } catch (err) {
      if (err instanceof Error && !(err instanceof StreamStateError)) throw err
      throw new StreamGone(`the stream was ${this.stream.status === 'reset' ? 'reset by the peer' : 'closed'} before everything was sent`)
    }
  }

  async writeJson(value: unknown, signal?: AbortSignal): Promise<void> {
    await this.send([Buffer.from(JSON.stringify(value))], signal)
  }

  async readJson<T = Record<string, unknown>>(signal?: AbortSignal): Promise<T> {
    const frame = await this.read(signal)
    if (frame.length > MAX_CONTROL_BYTES) throw new ProtocolViolation(`control frame of ${frame.length} bytes`)
    let v: unknown
    try {
      v = JSON.parse(Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength).toString('utf8'))
    } catch {
      throw new ProtocolViolation('control frame is not JSON')
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ProtocolViolation('control frame is not an object')
    return v as T
  }

  async writeBlob(data: Uint8Array, signal?: AbortSignal): Promise<void> {
    await this.writeFrames(null, [data], signal)
  }

  /**
   * A control frame (none: null) and blobs, each blob as its size frame and its chunks, small
   * pieces coalesced: one write (one muxer frame, one encryption, one syscall) where a small
   * reply took four. Each chunk of a blob larger than a chunk ends its write, so a write carries
   * at most one chunk of it, as when every chunk was written alone: libp2p drops a stream whose
   * unread bytes pass its read buffer, and bigger writes arrive in bigger lumps.
   */
  async writeFrames(head: unknown, blobs: Uint8Array[], signal?: AbortSignal): Promise<void> {
    let batch: Uint8Array[] = head === null ? [] : [Buffer.from(JSON.stringify(head))]
    for (const data of blobs) {
      batch.push(Buffer.from(JSON.stringify({ blob: data.length })))
      for (let off = 0; off < data.length; off += CHUNK_BYTES) {
        batch.push(data.subarray(off, Math.min(data.length, off + CHUNK_BYTES)))
        if (data.length > CHUNK_BYTES) {
          await this.send(batch, signal)
          batch = []
        }
      }
    }
    if (batch.length > 0) await this.send(batch, signal)
  }

  /**
   * Send a blob of `size` bytes from a source of chunks (a file being read), as writeBlob does.
   * With a `window`, at most that many bytes go out beyond what the reader acknowledged in
   * {ack: bytes} frames: a reader slower than the link (a loaded disk) is waited for, where
   * libp2p would drop a stream whose unread bytes outgrow its read buffer (maxBufferSize).
   */
  async writeBlobFrom(size: number, chunks: AsyncIterable<Uint8Array>, signal?: AbortSignal, window?: number): Promise<void> {
    await this.writeJson({ blob: size }, signal)
    let sent = 0
    let acked = 0
    for await (const chunk of chunks) {
      for (let off = 0; off < chunk.length; off += CHUNK_BYTES) {
        const piece = chunk.subarray(off, Math.min(chunk.length, off + CHUNK_BYTES))
        if (sent + piece.length > size) throw new Error(`blob source longer than its ${size} bytes`)
        while (window !== undefined && sent - acked >= window) acked = int((await this.readJson(signal)).ack, 'ack', acked, sent)
        await this.send([piece], signal)
        sent += piece.length
      }
    }
    if (sent !== size) throw new Error(`blob source ended after ${sent} of ${size} bytes`)
  }

  /** Read a blob's header, refusing one larger than `limit`; the size it announces. */
  async readBlobSize(limit: number, signal?: AbortSignal): Promise<number> {
    const head = await this.readJson<{ blob?: unknown }>(signal)
    const n = head.blob
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) throw new ProtocolViolation('expected a blob header')
    if (n > limit) throw new ProtocolViolation(`blob of ${n} bytes exceeds the limit of ${limit}`)
    return n
  }

  /** The `n` bytes of a blob whose header readBlobSize read, as they arrive; nothing is kept here. */
  async *readBlobChunks(n: number, signal?: AbortSignal): AsyncGenerator<Uint8Array> {
    let got = 0
    while (got < n) {
      const chunk = await this.read(signal)
      if (got + chunk.length > n) throw new ProtocolViolation('blob longer than announced')
      got += chunk.length
      yield chunk
    }
  }

  /** Read a blob announced by writeBlob, refusing one larger than `limit` before reading it. */
  async readBlob(limit: number, signal?: AbortSignal): Promise<Buffer> {
    return this.readBlobBody(await this.readBlobSize(limit, signal), signal)
  }

  /** The `n` bytes of a blob whose header readBlobSize read, in one buffer. */
  async readBlobBody(n: number, signal?: AbortSignal): Promise<Buffer> {
    const out = Buffer.allocUnsafe(n)
    let got = 0
    for await (const chunk of this.readBlobChunks(n, signal)) {
      out.set(chunk, got)
      got += chunk.length
    }
    return out
  }

  async close(): Promise<void> {
    try { await this.stream.close() } catch { /* already gone */ }
  }

  /**
   * Stop reading (what the peer still sends is dropped as it arrives, never buffered) and close:
   * a refusal sent before the peer's upload ends.
   */
  async closeAfterReply(): Promise<void> {
    try { await this.stream.closeRead() } catch { /* already gone */ }
    await this.close()
  }

  abort(err: Error): void {
    try { this.stream.abort(err) } catch { /* already gone */ }
  }
}

/** Narrow an untrusted value to a string, or throw naming the field. */
export function str(v: unknown, field: string, max = 4096): string {
  if (typeof v !== 'string' || v.length > max) throw new ProtocolViolation(`field ${field}: expected a string of at most ${max} characters`)
  return v
}

export function int(v: unknown, field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new ProtocolViolation(`field ${field}: expected a whole number from ${min} to ${max}`)
  return v
}

export function strList(v: unknown, field: string, maxItems: number, maxLen = 4096): string[] {
  if (!Array.isArray(v) || v.length > maxItems) throw new ProtocolViolation(`field ${field}: expected a list of at most ${maxItems} strings`)
  return v.map((x, i) => str(x, `${field}[${i}]`, maxLen))
}
