// The mesh as one shared cache: a miss here is looked up at the members most likely to hold the
// entry, and every result made here is handed to those members in the background.
//
// Who holds what: the owners of a key are the DEFAULT_OWNERS members with the highest rendezvous
// score for it (cache/owners.ts) among the members that hold entries for others (their load
// gossip says sharesCache: [cache] shared_size > 0). The producer keeps its own entries too, in
// the same store, so a caller that knows who made an entry can ask it as well (hints).
//
// The pipeline's API (all of it never throws, and never blocks a build):
//   lookup(key, hints?)  after a local miss, before compiling. Asks this member's own store of
//                        entries held for others, then the owners (and hints) at once, only those
//                        with a direct link whose RTT is at most goodLinkRttMs, within a budget of
//                        4 × their largest RTT + minBudgetMs (at most maxBudgetMs) for the answer;
//                        an entry whose answer came in time may take longer to arrive. A member that
//                        answered late three times in a row, or failed, is skipped for skipMs. Every hit is verified
//                        (signature, the producer against the trust policy, the entry's checksum)
//                        before it is returned. Resolves to { entry, producer, from } or null.
//                        The caller stores the entry locally and writes its outputs as for a local hit.
//                        With follow (a manifest set's key), a holder that has the entry the set
//                        points at sends it in the same answer; it is kept here briefly, unverified,
//                        and the lookup of its key that follows takes it (verified then) without
//                        asking anyone: a hit from another checkout in one round trip, not two.
//   publish(key, entry)  after a result was made here (a local compile, or a remote compile this
//                        member vouches for): signed and queued for the owners; bounded backlog
//                        (oldest dropped, counted), bounded upload rate.
//   stats()              counters as a plain object (for stats.ts and status).
//   serve()              answers the other members' gets and puts (protocols/cache-exchange.ts).
import { join } from 'node:path'
import type { Libp2p } from '@libp2p/interface'
import type { Config } from '../config.js'
import type { Logger } from '../log.js'
import type { MeshMember } from '../mesh/mesh.js'
import { decodeEntry, isValidKey, type CacheEntry } from '../cache/entry-format.js'
import { manifestResultHint } from '../cache/manifest.js'
import { DEFAULT_OWNERS, ownersOf } from '../cache/owners.js'
import { SharedStore } from '../cache/shared-store.js'
import { MAX_SIGNED_ENTRY_BYTES, SignedEntryError, openSignedEntry, sealEntry, wrappedEntry, type EntrySigner } from '../cache/signed-entry.js'
import type { TrustPolicy } from '../cache/trust.js'
import { BackgroundQueue } from '../cache/background-queue.js'
import { getEntry, putEntry, serveCacheExchange, type CacheExchangeServer, type FollowedEntry } from '../mesh/protocols/cache-exchange.js'
import { sharedIdentity } from './shared-identity.js'

/** a member is skipped after this many answers in a row came after the lookup's budget */
const LATE_ANSWERS_BEFORE_SKIP = 3
/** entries sent behind a manifest set wait this long for the lookup of their key, at most this many and bytes */
const FOLLOWED_TTL_MS = 10_000
const MAX_FOLLOWED = 32
const MAX_FOLLOWED_BYTES = 64 * 1024 * 1024
/**
 * a holder reads a manifest set it sends along only up to this size, packed and unpacked: a
 * member cannot make it unpack a big entry of its own on every request (sets are kilobytes)
 */
const MAX_SET_BYTES = 4 * 1024 * 1024

/** What MeshCache needs of the mesh (mesh.ts's Mesh has it all). */
export interface MeshCacheMesh {
  readonly peerId: string
  readonly meshId: string
  members(): MeshMember[]
  isAllowed(peerId: string): boolean
  readonly libp2p: Libp2p
}

export interface MeshCacheOptions {
  mesh: MeshCacheMesh
  signer: EntrySigner
  trust: TrustPolicy
  /** entries held for others (<cache dir>/shared); null when [cache] shared_size = 0 */
  store: SharedStore | null
  log: Logger
  owners?: number
  /** members whose RTT is above this are not asked (default 50 ms) */
  goodLinkRttMs?: number
  /** the answer budget's floor and ceiling (defaults 80 and 400 ms) */
  minBudgetMs?: number
  maxBudgetMs?: number
  /** a member that answered late or failed is not asked for this long (default 30 s) */
  skipMs?: number
  /** publish backlog: entries and bytes waiting (defaults 256 and 256 MiB) */
  backlogEntries?: number
  backlogBytes?: number
  /** upload rate of publishing, bytes per second (default 32 MiB/s) */
  uploadBytesPerSec?: number
}

export interface RemoteHit {
  entry: CacheEntry
  /** the entry as encoded (verified): what the local store keeps, without compressing it again */
  encoded: Buffer
  /** the member that made the entry (its signature) */
  producer: string
  /** the member that sent it, or this member's own peer ID for an entry held here for others */
  from: string
}

/** Reasons a lookup or a push came to nothing, as counted. */
export type SharedFailure = 'timeout' | 'error' | 'refused' | SignedEntryError['kind']

export interface MeshCacheStats {
  lookups: number
  remote_hits: number
  /** remote hits whose entry came in the answer about their manifest set (no request of their own) */
  followed_hits: number
  /** lookups that asked someone and found nothing */
  remote_misses: number
  /** lookups with nobody to ask (no owner with a good link) */
  lookups_unasked: number
  /** milliseconds spent in lookups, summed */
  shared_lookup_ms: number
  entries_published: number
  /** entries dropped from the publish backlog unsent */
  publish_dropped: number
  /** entries an owner accepted from us */
  entries_pushed: number
  /** entries sent whole to other members */
  entries_served: number
  entries_stored_for_others: number
  /** entries other members offered that were refused (quota, signature, producer) */
  entries_refused_for_others: number
  failures: Record<SharedFailure, number>
  /** members skipped now after answering late or failing */
  members_skipped: number
  /** cache-exchange streams other members have open here now */
  serving_streams: number
  shared_entries: number
  shared_bytes: number
  shared_max_bytes: number
}

interface PublishItem {
  key: string
  entry: CacheEntry | null
  /** already signed (read repair: someone else's entry, passed on as it is) */
  blob: Buffer | null
  /** owners to send to; null = the owners at the time it is sent */
  targets: string[] | null
}

type Answer = { kind: 'hit'; hit: RemoteHit; blob: Buffer } | { kind: 'miss' } | { kind: 'none' }

function entryBytes(e: CacheEntry): number {
  return e.stdout.length + e.stderr.length + e.outputs.reduce((n, o) => n + o.data.length, 0)
}

export class MeshCache {
  private readonly n: number
  private readonly goodLinkRttMs: number
  private readonly minBudgetMs: number
  private readonly maxBudgetMs: number
  private readonly skipMs: number
  private readonly skipped = new Map<string, number>()
  /** members whose last answers all came after the budget, and how many */
  private readonly lateInARow = new Map<string, number>()
  /** entries holders sent behind a manifest set, by key, until their lookup takes them */
  private readonly followed = new Map<string, FollowedEntry & { from: string; until: number }>()
  private readonly queue: BackgroundQueue<PublishItem>
  private readonly stopping = new AbortController()
  private server: CacheExchangeServer | null = null
  private readonly counters: Omit<MeshCacheStats, 'failures' | 'members_skipped' | 'serving_streams' | 'shared_entries' | 'shared_bytes' | 'shared_max_bytes'> = {
    lookups: 0, remote_hits: 0, followed_hits: 0, remote_misses: 0, lookups_unasked: 0, shared_lookup_ms: 0, entries_published: 0,
    publish_dropped: 0, entries_pushed: 0, entries_served: 0, entries_stored_for_others: 0, entries_refused_for_others: 0
  }
  private readonly failures: Record<SharedFailure, number> = { timeout: 0, error: 0, refused: 0, malformed: 0, signature: 0, untrusted: 0, entry: 0 }

  constructor(private readonly opts: MeshCacheOptions) {
    this.n = opts.owners ?? DEFAULT_OWNERS
    this.goodLinkRttMs = opts.goodLinkRttMs ?? 50
    this.minBudgetMs = opts.minBudgetMs ?? 80
    this.maxBudgetMs = Math.max(this.minBudgetMs, opts.maxBudgetMs ?? 400)
    this.skipMs = opts.skipMs ?? 30_000
    this.queue = new BackgroundQueue<PublishItem>({
      run: (item) => this.send(item),
      size: (item) => item.blob?.length ?? (item.entry ? entryBytes(item.entry) : 0),
      onDrop: () => { this.counters.publish_dropped++ },
      maxItems: opts.backlogEntries ?? 256,
      maxBytes: opts.backlogBytes ?? 256 * 1024 * 1024,
      concurrency: 2,
      bytesPerSec: opts.uploadBytesPerSec ?? 32 * 1024 * 1024
    })
  }

  private get self(): string { return this.opts.mesh.peerId }

  /** Answer the other members' gets and puts. */
  async serve(): Promise<void> {
    const { mesh, store, log } = this.opts
    this.server = await serveCacheExchange(mesh.libp2p, mesh.meshId, {
      isAllowed: (peer) => mesh.isAllowed(peer),
      get: async (_peer, key, follow) => {
        const blob = store ? await store.get(key) : null
        return blob && { blob, next: follow ? await this.followedBy(key, blob) : null }
      },
      admitPut: (_peer, _key, size) => (store ? store.admit(size) : 'this member holds no entries for others ([cache] shared_size = 0)'),
      put: async (peer, key, blob) => {
        const r = await store!.put(key, blob)
        if (r.stored) { this.counters.entries_stored_for_others++; return null }
        this.counters.entries_refused_for_others++
        if (r.kind !== 'quota') log.warn(`refused a cache entry offered by ${peer}: ${r.reason}`)
        return r.reason
      },
      onServed: () => { this.counters.entries_served++ }
    }, (peer, err) => log.debug(`cache exchange with ${peer}: ${err.message.split('\n')[0]}`), { maxEntryBytes: MAX_SIGNED_ENTRY_BYTES })
  }

  /**
   * The verified entry for `key` from the mesh, or null. Never throws. `follow`: `key` is a
   * manifest set's, and the holder may send the entry the set points at along (see the header).
   */
  async lookup(key: string, hints: readonly string[] = [], opts: { follow?: boolean } = {}): Promise<RemoteHit | null> {
    if (!isValidKey(key) || this.stopping.signal.aborted) return null
    const t0 = performance.now()
    this.counters.lookups++
    try {
      const own = await this.fromOwnStore(key)
      if (own) return own
      const sent = await this.takeFollowed(key)
      if (sent) return sent
      const members = this.opts.mesh.members()
      const owners = this.ownersOf(key, members)
      const byId = new Map(members.map((m) => [m.peerId, m]))
      const now = Date.now()
      const asked = [...new Set([...owners, ...hints])].filter((id) => id !== this.self && this.goodLink(byId.get(id), now))
      if (asked.length === 0) {
        this.counters.lookups_unasked++
        return null
      }
      const rtt = Math.max(...asked.map((id) => byId.get(id)!.rttMs ?? 0))
      const budgetMs = Math.min(this.maxBudgetMs, Math.ceil(4 * rtt) + this.minBudgetMs)
      const answers = await this.askAll(key, asked, budgetMs, opts.follow === true)
      const hit = answers.find((a): a is Extract<Answer, { kind: 'hit' }> => a.kind === 'hit')
      if (!hit) {
        this.counters.remote_misses++
        return null
      }
      this.counters.remote_hits++
      // read repair: owners that answered "miss" get the entry as it is (its producer's signature),
      // and this member keeps it when it is an owner itself
      const missed = asked.filter((id, i) => answers[i]!.kind === 'miss' && owners.includes(id))
      if (missed.length > 0) this.queue.push({ key, entry: null, blob: hit.blob, targets: missed })
      if (owners.includes(this.self)) void this.opts.store?.keepVerified(key, hit.blob).catch(() => {})
      return hit.hit
    } catch (err) {
      this.failures.error++
      this.opts.log.warn(`mesh cache lookup ${key.slice(0, 16)} failed: ${(err as Error).message}`)
      return null
    } finally {
      this.counters.shared_lookup_ms += performance.now() - t0
    }
  }

  /** Sign `entry` (made here) and hand it to the key's owners in the background. Never throws. */
  publish(key: string, entry: CacheEntry): void {
    if (!isValidKey(key) || entry?.exitCode !== 0) return
    this.counters.entries_published++
    this.queue.push({ key, entry, blob: null, targets: null })
  }

  stats(): MeshCacheStats {
    const now = Date.now()
    const st = this.opts.store?.stats() ?? { entries: 0, bytes: 0, maxBytes: 0 }
    return {
      ...this.counters,
      shared_lookup_ms: Math.round(this.counters.shared_lookup_ms * 1000) / 1000,
      failures: { ...this.failures },
      members_skipped: [...this.skipped.values()].filter((until) => until > now).length,
      serving_streams: this.server?.openStreams() ?? 0,
      shared_entries: st.entries, shared_bytes: st.bytes, shared_max_bytes: st.maxBytes
    }
  }

  /** Resolves once the publish backlog is empty and nothing is being sent (tests, shutdown). */
  flushed(): Promise<void> {
    return this.queue.idle()
  }

  /** Drop the backlog, abort uploads in flight, close the store of entries held for others. */
  async stop(): Promise<void> {
    this.stopping.abort()
    await this.server?.stop().catch(() => {})
    await this.queue.stop()
    await this.opts.store?.close()
  }

  // --- internals ---

  private ownersOf(key: string, members: MeshMember[]): string[] {
    return ownersOf(key, members.filter((m) => m.load.sharesCache === true).map((m) => m.peerId), this.n)
  }

  private goodLink(m: MeshMember | undefined, now: number): m is MeshMember {
    if (!m || m.self || m.connection !== 'direct' || m.rttMs === null || m.rttMs > this.goodLinkRttMs) return false
    const until = this.skipped.get(m.peerId)
    if (until === undefined) return true
    if (until > now) return false
    this.skipped.delete(m.peerId)
    return true
  }

  private skip(peer: string, why: string): void {
    if (!this.skipped.has(peer)) this.opts.log.info(`mesh cache: not asking ${peer} for ${this.skipMs / 1000} s: ${why}`)
    this.skipped.set(peer, Date.now() + this.skipMs)
  }

  private fail(kind: SharedFailure, peer: string, why: string): void {
    this.failures[kind]++
    // One late answer from a busy member (its daemon storing a big entry, the machine loaded) is
    // no reason to lose its hits for skipMs: bench:shared lost 52 of 139 that way at load 12.
    // A member that is late several times in a row is skipped; anything else at once.
    if (kind === 'timeout') {
      const n = (this.lateInARow.get(peer) ?? 0) + 1
      if (n < LATE_ANSWERS_BEFORE_SKIP) {
        this.lateInARow.set(peer, n)
        return
      }
    }
    this.lateInARow.delete(peer)
    this.skip(peer, why)
  }

  /** An entry this member holds for others is a hit here too. */
  private async fromOwnStore(key: string): Promise<RemoteHit | null> {
    const blob = await this.opts.store?.get(key)
    if (!blob) return null
    try {
      const o = await openSignedEntry(blob, key, { refuseProducer: (p) => this.opts.trust.refusal(p) })
      this.counters.remote_hits++
      return { entry: o.entry, encoded: o.encoded, producer: o.producer, from: this.self }
    } catch (err) {
      if (err instanceof SignedEntryError) this.failures[err.kind]++
      return null
    }
  }

  /**
   * Holder side of follow: the entry held here that the manifest set in `blob` (read and verified
   * by the store just now) points at, or null. A hint only: the asking member checks both.
   */
  private async followedBy(key: string, blob: Buffer): Promise<FollowedEntry | null> {
    try {
      const encoded = blob.length <= MAX_SET_BYTES ? wrappedEntry(blob) : null
      const entry = encoded && (await decodeEntry(encoded, key, { maxPayloadBytes: MAX_SET_BYTES }))
      const text = entry?.outputs.length === 1 && entry.outputs[0]!.name === 'manifest' ? entry.outputs[0]!.data.toString('utf8') : null
      const next = text === null ? null : manifestResultHint(text)
      const nextBlob = next === null || next === key ? null : await this.opts.store!.get(next)
      return nextBlob && { key: next!, blob: nextBlob }
    } catch {
      return null // not a manifest set, or one this member cannot read: the plain answer
    }
  }

  /** An entry a holder sent behind its manifest set, verified now as any answer is; null when none (or refused). */
  private async takeFollowed(key: string): Promise<RemoteHit | null> {
    const f = this.followed.get(key)
    if (!f) return null
    this.followed.delete(key)
    if (f.until < Date.now()) return null
    try {
      const o = await openSignedEntry(f.blob, key, { refuseProducer: (p) => this.opts.trust.refusal(p) })
      this.counters.remote_hits++
      this.counters.followed_hits++
      return { entry: o.entry, encoded: o.encoded, producer: o.producer, from: f.from }
    } catch (err) {
      this.refused(err, f.from, key)
      return null
    }
  }

  private keepFollowed(next: FollowedEntry, from: string): void {
    const now = Date.now()
    for (const [k, f] of this.followed) if (f.until < now) this.followed.delete(k)
    let bytes = next.blob.length
    for (const f of this.followed.values()) bytes += f.blob.length
    // oldest first: the lookups that wanted them have moved on
    for (const [k, f] of this.followed) {
      if (this.followed.size < MAX_FOLLOWED && bytes <= MAX_FOLLOWED_BYTES) break
      this.followed.delete(k)
      bytes -= f.blob.length
    }
    this.followed.set(next.key, { ...next, from, until: now + FOLLOWED_TTL_MS })
  }

  /** Count and log a signed entry `peer` sent that did not pass; whether it was one. */
  private refused(err: unknown, peer: string, key: string): boolean {
    if (!(err instanceof SignedEntryError)) return false
    // an untrusted producer is this machine's policy, not the holder's fault
    if (err.kind === 'untrusted') { this.failures.untrusted++; this.opts.log.debug(`mesh cache: ${err.message}`) }
    else { this.fail(err.kind, peer, err.message); this.opts.log.warn(`mesh cache: ${peer} sent a bad entry for ${key.slice(0, 16)}: ${err.message}`) }
    return true
  }

  /** Ask every member at once; the first verified hit ends the others. One answer per member, in order. */
  private askAll(key: string, peers: string[], budgetMs: number, follow: boolean): Promise<Answer[]> {
    const won = new AbortController()
    const answerBy = AbortSignal.timeout(budgetMs)
    const all = AbortSignal.any([won.signal, this.stopping.signal])
    return Promise.all(peers.map(async (peer): Promise<Answer> => {
      const a = await this.ask(peer, key, all, answerBy, follow)
      if (a.kind === 'hit') won.abort()
      return a
    }))
  }

  private async ask(peer: string, key: string, signal: AbortSignal, answerBy: AbortSignal, follow: boolean): Promise<Answer> {
    const { mesh, trust } = this.opts
    try {
      const r = await getEntry(mesh.libp2p, mesh.meshId, peer, key, { signal, answerSignal: answerBy, limit: MAX_SIGNED_ENTRY_BYTES, follow })
      this.lateInARow.delete(peer)
      if (r.kind === 'miss') return { kind: 'miss' }
      if (r.kind === 'refused') {
        this.fail('refused', peer, `it refused: ${r.reason}`)
        return { kind: 'none' }
      }
      if (signal.aborted) return { kind: 'none' }
      const o = await openSignedEntry(r.blob, key, { refuseProducer: (p) => trust.refusal(p) })
      if (r.next) this.keepFollowed(r.next, peer)
      return { kind: 'hit', hit: { entry: o.entry, encoded: o.encoded, producer: o.producer, from: peer }, blob: r.blob }
    } catch (err) {
      if (this.refused(err, peer, key)) {
        // counted and logged
      } else if (signal.aborted) {
        // another member answered first, or the daemon stops
      } else if (answerBy.aborted) {
        this.fail('timeout', peer, 'it did not answer within the lookup budget')
      } else {
        this.fail('error', peer, (err as Error).message.split('\n')[0]!)
      }
      return { kind: 'none' }
    }
  }

  private async send(item: PublishItem): Promise<void> {
    const { mesh, signer, store, log } = this.opts
    let blob = item.blob
    if (blob === null) {
      try {
        blob = await sealEntry(item.entry!, item.key, signer)
      } catch (err) {
        this.failures.entry++
        log.warn(`cannot publish cache entry ${item.key.slice(0, 16)}: ${(err as Error).message}`)
        return
      }
      // the producer keeps what it made: callers that know who made an entry may ask it
      await store?.keepVerified(item.key, blob).catch((err: Error) => log.warn(`cannot keep cache entry ${item.key.slice(0, 16)} for the mesh: ${err.message}`))
    }
    const members = mesh.members()
    const byId = new Map(members.map((m) => [m.peerId, m]))
    const now = Date.now()
    const targets = (item.targets ?? this.ownersOf(item.key, members)).filter((id) => {
      if (id === this.self) return false
      const m = byId.get(id)
      return m !== undefined && m.connection !== 'none' && (this.skipped.get(id) ?? 0) <= now
    })
    const b = blob
    await Promise.all(targets.map(async (peer) => {
      const signal = AbortSignal.any([this.stopping.signal, AbortSignal.timeout(5000 + Math.ceil(b.length / 1024))])
      try {
        await this.queue.pace(b.length, signal)
        const r = await putEntry(mesh.libp2p, mesh.meshId, peer, item.key, b, signal)
        if (r.kind === 'stored') this.counters.entries_pushed++
        else {
          this.failures.refused++
          log.debug(`mesh cache: ${peer} refused entry ${item.key.slice(0, 16)}: ${r.reason}`)
        }
      } catch (err) {
        if (this.stopping.signal.aborted) return
        this.fail('error', peer, `publishing failed: ${(err as Error).message.split('\n')[0]}`)
      }
    }))
  }
}

/**
 * The daemon's MeshCache: its store of entries held for others (<cache dir>/shared, when
 * [cache] shared_size > 0), serving the other members' requests. Stopping it closes the store.
 */
export async function startMeshCache(config: Config, mesh: MeshCacheMesh, log: Logger, tuning: Partial<MeshCacheOptions> = {}): Promise<MeshCache> {
  const { signer, trust } = await sharedIdentity(config, log)
  const store = config.cache.sharedSize > 0
    ? new SharedStore({ dir: join(config.cache.dir, 'shared'), maxBytes: config.cache.sharedSize, log, refuseToHold: (p) => trust.refusalToHold(p) })
    : null
  await store?.open()
  const cache = new MeshCache({ ...tuning, mesh, signer, trust, store, log })
  await cache.serve()
  return cache
}
