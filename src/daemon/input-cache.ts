// A builder's received compile inputs (sources, headers) by content hash, in memory: the
// headers every unit of a project includes then cross the network once per builder, not once
// per unit. Bounded in bytes (least recently used go first) and emptied when no job has used
// it for a while, so an idle daemon does not sit on a build's headers.
import type { InputCache } from '../mesh/protocols/compile-job.js'

export interface InputCacheStatus { files: number; bytes: number; received_bytes: number }

export const INPUT_CACHE_BYTES = 256 * 1024 * 1024
const IDLE_DROP_MS = 10 * 60_000

export class MemoryInputCache implements InputCache {
  private readonly entries = new Map<string, Buffer>() // insertion order = recency
  private bytes = 0
  /** input bytes received from clients since start (what the cache could not spare them) */
  private received = 0
  private lastUse = Date.now()
  private readonly timer: NodeJS.Timeout

  constructor(private readonly maxBytes = INPUT_CACHE_BYTES) {
    this.timer = setInterval(() => { if (Date.now() - this.lastUse > IDLE_DROP_MS) this.clear() }, 60_000)
    this.timer.unref()
  }

  get(hash: string): Buffer | undefined {
    const data = this.entries.get(hash)
    if (data) {
      this.entries.delete(hash)
      this.entries.set(hash, data)
      this.lastUse = Date.now()
    }
    return data
  }

  put(hash: string, data: Buffer): void {
    this.lastUse = Date.now()
    this.received += data.length
    if (data.length > this.maxBytes / 4 || this.entries.has(hash)) return
    this.entries.set(hash, data)
    this.bytes += data.length
    for (const [h, d] of this.entries) {
      if (this.bytes <= this.maxBytes) break
      this.entries.delete(h)
      this.bytes -= d.length
    }
  }

  status(): InputCacheStatus {
    return { files: this.entries.size, bytes: this.bytes, received_bytes: this.received }
  }

  clear(): void {
    this.entries.clear()
    this.bytes = 0
  }

  stop(): void {
    clearInterval(this.timer)
    this.clear()
  }
}
