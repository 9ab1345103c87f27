// A second tier behind the mesh, for teams that already run a store: [cache] remote names a Redis
// server (tiers/redis.ts), an HTTP store in ccache's layout (tiers/http.ts) or an S3 bucket
// (tiers/s3.ts). The same rules as the mesh: entries are signed (signed-entry.ts) and verified on
// every read (a store is one more place where bytes can be changed), lookups have a short
// timeout, publishing happens in the background with a bounded backlog, and every failure is
// counted and logged, never thrown. A store that failed is not asked again for a while (5 s,
// doubling to a minute while it keeps failing), so a dead store costs a build nothing but its
// first timeout.
//
// API for the pipeline: lookup(key) after the mesh missed; publish(key, entry) beside the mesh's
// publish; stats() for status. Neither throws or blocks a build.
import type { Logger } from '../../log.js'
import { BackgroundQueue } from '../background-queue.js'
import { isValidKey, type CacheEntry } from '../entry-format.js'
import { MAX_SIGNED_ENTRY_BYTES, SignedEntryError, openSignedEntry, sealEntry, type EntrySigner } from '../signed-entry.js'
import type { TrustPolicy } from '../trust.js'

/** A store of opaque blobs by cache key. Throws on trouble; get resolves null for a missing key. */
export interface BlobBackend {
  /** the store's address without secrets, for logs and status */
  readonly name: string
  get(key: string, limit: number, signal: AbortSignal): Promise<Buffer | null>
  put(key: string, blob: Buffer, signal: AbortSignal): Promise<void>
  close(): Promise<void>
}

export type TierFailure = 'timeout' | 'error' | 'down' | SignedEntryError['kind']

export interface TierStats {
  tier: string
  tier_lookups: number
  tier_hits: number
  tier_misses: number
  tier_lookup_ms: number
  tier_writes: number
  tier_publish_dropped: number
  tier_failures: Record<TierFailure, number>
  /** the store is skipped now after a failure */
  tier_down: boolean
}

export interface RemoteTierOptions {
  backend: BlobBackend
  signer: EntrySigner
  trust: TrustPolicy
  log: Logger
  /** a lookup's answer must come within this (default 1000 ms); a write within putTimeoutMs (default 30 s) */
  timeoutMs?: number
  putTimeoutMs?: number
  backlogEntries?: number
  backlogBytes?: number
  uploadBytesPerSec?: number
}

const FIRST_BACKOFF_MS = 5000
const MAX_BACKOFF_MS = 60_000

interface TierItem { key: string; entry: CacheEntry }

export class RemoteTier {
  private readonly queue: BackgroundQueue<TierItem>
  private readonly stopping = new AbortController()
  private downUntil = 0
  private backoffMs = FIRST_BACKOFF_MS
  private readonly counts = { tier_lookups: 0, tier_hits: 0, tier_misses: 0, tier_lookup_ms: 0, tier_writes: 0, tier_publish_dropped: 0 }
  private readonly failures: Record<TierFailure, number> = { timeout: 0, error: 0, down: 0, malformed: 0, signature: 0, untrusted: 0, entry: 0 }

  constructor(private readonly opts: RemoteTierOptions) {
    this.queue = new BackgroundQueue<TierItem>({
      run: (item) => this.write(item),
      size: (item) => item.entry.outputs.reduce((n, o) => n + o.data.length, item.entry.stdout.length + item.entry.stderr.length),
      onDrop: () => { this.counts.tier_publish_dropped++ },
      maxItems: opts.backlogEntries ?? 256,
      maxBytes: opts.backlogBytes ?? 128 * 1024 * 1024,
      concurrency: 2,
      bytesPerSec: opts.uploadBytesPerSec ?? 32 * 1024 * 1024
    })
  }

  get name(): string { return this.opts.backend.name }

  /** The verified entry for `key` from the store, or null. Never throws. */
  async lookup(key: string): Promise<{ entry: CacheEntry; producer: string } | null> {
    if (!isValidKey(key) || this.stopping.signal.aborted) return null
    this.counts.tier_lookups++
    if (this.isDown()) { this.failures.down++; return null }
    const t0 = performance.now()
    const timeout = AbortSignal.timeout(this.opts.timeoutMs ?? 1000)
    try {
      const blob = await this.opts.backend.get(key, MAX_SIGNED_ENTRY_BYTES, AbortSignal.any([timeout, this.stopping.signal]))
      this.up()
      if (blob === null) { this.counts.tier_misses++; return null }
      const o = await openSignedEntry(blob, key, { refuseProducer: (p) => this.opts.trust.refusal(p) })
      this.counts.tier_hits++
      return { entry: o.entry, producer: o.producer }
    } catch (err) {
      if (err instanceof SignedEntryError) {
        this.failures[err.kind]++
        this.counts.tier_misses++
        if (err.kind !== 'untrusted') this.opts.log.warn(`remote cache ${this.name}: bad entry for ${key.slice(0, 16)}: ${err.message}`)
      } else if (!this.stopping.signal.aborted) {
        this.down(timeout.aborted ? 'timeout' : 'error', timeout.aborted ? `no answer within ${this.opts.timeoutMs ?? 1000} ms` : (err as Error).message)
      }
      return null
    } finally {
      this.counts.tier_lookup_ms += performance.now() - t0
    }
  }

  /** Sign `entry` and write it to the store in the background. Never throws. */
  publish(key: string, entry: CacheEntry): void {
    if (!isValidKey(key) || entry?.exitCode !== 0) return
    this.queue.push({ key, entry })
  }

  stats(): TierStats {
    return {
      tier: this.name, ...this.counts, tier_lookup_ms: Math.round(this.counts.tier_lookup_ms * 1000) / 1000,
      tier_failures: { ...this.failures }, tier_down: this.isDown()
    }
  }

  flushed(): Promise<void> {
    return this.queue.idle()
  }

  async stop(): Promise<void> {
    this.stopping.abort()
    await this.queue.stop()
    await this.opts.backend.close().catch(() => {})
  }

  private isDown(): boolean {
    return Date.now() < this.downUntil
  }

  private up(): void {
    this.backoffMs = FIRST_BACKOFF_MS
  }

  private down(kind: 'timeout' | 'error', why: string): void {
    this.failures[kind]++
    this.opts.log.warn(`remote cache ${this.name}: ${why.split('\n')[0]}; not used for ${this.backoffMs / 1000} s`)
    this.downUntil = Date.now() + this.backoffMs
    this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs * 2)
  }

  private async write(item: TierItem): Promise<void> {
    if (this.isDown()) { this.failures.down++; this.counts.tier_publish_dropped++; return }
    let blob: Buffer
    try {
      blob = await sealEntry(item.entry, item.key, this.opts.signer)
    } catch (err) {
      this.failures.entry++
      this.opts.log.warn(`cannot publish cache entry ${item.key.slice(0, 16)} to ${this.name}: ${(err as Error).message}`)
      return
    }
    const timeout = AbortSignal.timeout(this.opts.putTimeoutMs ?? 30_000)
    const signal = AbortSignal.any([timeout, this.stopping.signal])
    try {
      await this.queue.pace(blob.length, signal)
      await this.opts.backend.put(item.key, blob, signal)
      this.up()
      this.counts.tier_writes++
    } catch (err) {
      if (!this.stopping.signal.aborted) this.down(timeout.aborted ? 'timeout' : 'error', (err as Error).message)
    }
  }
}
