// Framing shared by meshcc's request/response protocols on libp2p streams: length-prefixed
// JSON control frames, and blobs sent as a {blob: n} frame followed by chunks of at most
// 1 MiB (so no single frame outgrows libp2p's read buffer). Every read is size-checked:
// nothing that comes off the network is trusted for its length.
import type { Stream } from '@libp2p/interface'
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils'

export const CHUNK_BYTES = 1024 * 1024
/** control frames are small; anything bigger is a broken or hostile peer */
export const MAX_CONTROL_BYTES = 256 * 1024

export class ProtocolViolation extends Error {}

export class Framed {
  private readonly lp: LengthPrefixedStream<Stream>

  constructor(readonly stream: Stream) {
    this.lp = lpStream(stream, { maxDataLength: Math.max(CHUNK_BYTES, MAX_CONTROL_BYTES) })
  }

  async writeJson(value: unknown, signal?: AbortSignal): Promise<void> {
    await this.lp.write(Buffer.from(JSON.stringify(value)), { signal })
  }

  async readJson<T = Record<string, unknown>>(signal?: AbortSignal): Promise<T> {
    const frame = (await this.lp.read({ signal })).subarray()
    if (frame.length > MAX_CONTROL_BYTES) throw new ProtocolViolation(`control frame of ${frame.length} bytes`)
    let v: unknown
    try {
      v = JSON.parse(Buffer.from(frame).toString('utf8'))
    } catch {
      throw new ProtocolViolation('control frame is not JSON')
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ProtocolViolation('control frame is not an object')
    return v as T
  }

  async writeBlob(data: Uint8Array, signal?: AbortSignal): Promise<void> {
    await this.writeJson({ blob: data.length }, signal)
    for (let off = 0; off < data.length; off += CHUNK_BYTES) {
      await this.lp.write(data.subarray(off, Math.min(data.length, off + CHUNK_BYTES)), { signal })
    }
  }

  /** Read a blob announced by writeBlob, refusing one larger than `limit` before reading it. */
  async readBlob(limit: number, signal?: AbortSignal): Promise<Buffer> {
    const head = await this.readJson<{ blob?: unknown }>(signal)
    const n = head.blob
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) throw new ProtocolViolation('expected a blob header')
    if (n > limit) throw new ProtocolViolation(`blob of ${n} bytes exceeds the limit of ${limit}`)
    const out = Buffer.allocUnsafe(n)
    let got = 0
    while (got < n) {
      const chunk = (await this.lp.read({ signal })).subarray()
      if (got + chunk.length > n) throw new ProtocolViolation('blob longer than announced')
      out.set(chunk, got)
      got += chunk.length
    }
    return out
  }

  async close(): Promise<void> {
    try { await this.stream.close() } catch { /* already gone */ }
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
