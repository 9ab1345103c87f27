// A builder's outputs of the jobs it just ran, kept a few seconds so that the client can have
// them stored here as its signed cache entry by sending only what the builder cannot know (a keep,
// cache-exchange.ts) instead of sending the whole entry back. Bounded in jobs, bytes and time:
// the oldest go first, and a job whose outputs do not fit is not kept (its client sends the
// entry whole, as before). Each job is named by a random id the builder gives its client in the
// job's reply, and only that client may take it: a keep for someone else's job finds nothing.
import { randomBytes } from 'node:crypto'

/** what a client's keep names: the stdout, stderr and object blob of the job's reply, in that order */
export type JobParts = readonly Buffer[]

export interface KeptJobsOptions {
  /** jobs kept at once (default 64) */
  maxJobs?: number
  /** bytes of outputs kept at once (default 64 MiB) */
  maxBytes?: number
  /** a job larger than this is not kept (default 16 MiB) */
  maxJobBytes?: number
  /** how long outputs wait for their keep (default 30 s: the client publishes in the background, after a verification when one is sampled) */
  ttlMs?: number
  /** keeps one job's outputs may serve: its key and the same result under its depend-form key (default 2) */
  maxUses?: number
}

/** A job's outputs as its keeps find them. */
export interface KeptJob {
  readonly parts: JobParts
  /**
   * the entry the last keep made of them (encoded, stored under that keep's key): a second keep
   * whose content hash is that entry's (the result under its depend-form key) reuses it rather
   * than encoding the same payload again; no larger than the parts (the body is stored as is
   * when compressing would not shrink it); set through KeptJobs.setEncoded, which counts it
   */
  readonly encoded: Buffer | null
}

interface Kept extends KeptJob { id: string; encoded: Buffer | null; peer: string; bytes: number; until: number; uses: number }

export const KEEP_ID_RE = /^[0-9a-f]{32}$/

export class KeptJobs {
  private readonly jobs = new Map<string, Kept>()
  private bytes = 0
  private readonly maxJobs: number
  private readonly maxBytes: number
  private readonly maxJobBytes: number
  private readonly ttlMs: number
  private readonly maxUses: number

  constructor(opts: KeptJobsOptions = {}) {
    this.maxJobs = opts.maxJobs ?? 64
    this.maxBytes = opts.maxBytes ?? 64 * 1024 * 1024
    this.maxJobBytes = Math.min(this.maxBytes, opts.maxJobBytes ?? 16 * 1024 * 1024)
    this.ttlMs = opts.ttlMs ?? 30_000
    this.maxUses = opts.maxUses ?? 2
  }

  /** Keep the outputs of a job `peer` sent; the id its keep names, or null when they are not kept. */
  keep(peer: string, parts: JobParts): string | null {
    const bytes = parts.reduce((n, p) => n + p.length, 0)
    if (bytes > this.maxJobBytes || this.maxJobs === 0) return null
    this.expire(Date.now())
    // oldest first (a Map iterates in insertion order): their clients have published by now
    for (const [id, k] of this.jobs) {
      if (this.jobs.size < this.maxJobs && this.bytes + bytes <= this.maxBytes) break
      this.drop(id, k)
    }
    const id = randomBytes(16).toString('hex')
    this.jobs.set(id, { id, peer, parts, encoded: null, bytes, until: Date.now() + this.ttlMs, uses: 0 })
    this.bytes += bytes
    return id
  }

  /**
   * The outputs of job `id` when `peer` sent it and they are still here; each call uses up one
   * of the job's keeps (a client cannot make the builder encode them again and again).
   */
  take(peer: string, id: string): KeptJob | null {
    const k = this.jobs.get(id)
    if (!k || k.peer !== peer) return null
    const expired = k.until < Date.now()
    if (expired || ++k.uses >= this.maxUses) this.drop(id, k)
    return expired ? null : k
  }

  /**
   * Hold the entry a keep made of `job`'s outputs for its next keep, counted in the bytes kept:
   * the oldest jobs go when it does not fit (this one too, in its turn). A job used up holds nothing.
   */
  setEncoded(job: KeptJob, encoded: Buffer): void {
    const k = job as Kept
    if (this.jobs.get(k.id) !== k) return
    const more = encoded.length - (k.encoded?.length ?? 0)
    k.encoded = encoded
    k.bytes += more
    this.bytes += more
    for (const [id, o] of this.jobs) {
      if (this.bytes <= this.maxBytes) break
      this.drop(id, o)
    }
  }

  stats(): { jobs: number; bytes: number } {
    return { jobs: this.jobs.size, bytes: this.bytes }
  }

  private expire(now: number): void {
    for (const [id, k] of this.jobs) if (k.until < now) this.drop(id, k)
  }

  private drop(id: string, k: Kept): void {
    if (this.jobs.delete(id)) this.bytes -= k.bytes
  }
}
