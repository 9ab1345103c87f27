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
//   publish(key, entry, built?, encoded?)  after a result was made here (a local compile, or a remote
//                        compile this member vouches for): signed and queued for the owners (`encoded`:
//                        the entry as the local store got it, so it is compressed once); bounded
//                        backlog (oldest dropped, counted), bounded upload rate. `built`: the
//                        builder that ran the remote compile still holds its outputs, and gets a
//                        keep instead of the entry (see "The builder keeps it too" below).
//
// The builder keeps it too. The builder of a remote compile gets only a keep (cache-exchange.ts):
// the client's signature and how the entry is made of the job's outputs, which the builder held
// on to (kept-jobs.ts); it rebuilds the entry, checks it against the signed content hash and
// stores it as any signed entry offered to it. A builder that is one of the key's owners counts
// as that owner: its keep replaces the put it would have had, and a keep it refuses (outputs gone,
// a member of the previous version) falls back to that put. A builder that is no owner becomes an
// extra holder, once per job (not again for the job's result under its depend-form key: each keep
// costs the builder an encode and both sides a stream): the owners still get the entry whole, and
// a refused keep is not followed by a put (a copy beyond the owners is not worth the entry). Lookups ask the owners, so such
// an extra holder answers those whose owners change to include it, or who ask it by hint.
// Fewer streams. A get or batch offers its stream for the next request to the same member
// (cache-exchange.ts, again), which a lookup or publish soon after takes. What one publish run
// hands one member (puts and keeps: a job's result, its depend form and manifest set, and other
// jobs' when publishing lags) goes on one stream, a batch (cache-exchange.ts), and a publish waits
// PUBLISH_LINGER_MS for the others of its job to join it: on bench-job-cpu's kernel units a remote
// job's client opened 7.2 cache-exchange streams, and each costs both sides a yamux stream,
// protocol negotiation and a handler run. A member that fails a batch before answering any of it
// (one of the previous version) gets them one by one for a while.
//   stats()              counters as a plain object (for stats.ts and status).
//   serve()              answers the other members' gets and puts (protocols/cache-exchange.ts).
import { join } from 'node:path'
import type { Libp2p } from '@libp2p/interface'
import type { Config } from '../config.js'
import type { Logger } from '../log.js'
import type { MeshMember } from '../mesh/mesh.js'
import { EntryFormatError, encodeEntry, isValidKey, reKeyed, type CacheEntry } from '../cache/entry-format.js'
import { DEFAULT_OWNERS, ownersOf } from '../cache/owners.js'
import { SharedStore, signedManifestSet } from '../cache/shared-store.js'
import { MAX_SIGNED_ENTRY_BYTES, SignedEntryError, attachSignature, checkSignature, openSignedEntry, sealEncoded, sealEntry, signatureOf, type EntrySigner } from '../cache/signed-entry.js'
import type { TrustPolicy } from '../cache/trust.js'
import { BackgroundQueue } from '../cache/background-queue.js'
import { KEEP_MAX_BYTES, MAX_BATCH_OPS, getEntry, keepEntry, putEntry, ReusableStreams, sendBatch, serveCacheExchange, type BatchOp, type CacheExchangeServer, type FollowedEntry, type KeepRequest, type PartRef } from '../mesh/protocols/cache-exchange.js'
import type { KeptJobs } from './kept-jobs.js'
import { sharedIdentity } from './shared-identity.js'

/** a member is skipped after this many answers in a row came after the lookup's budget */
const LATE_ANSWERS_BEFORE_SKIP = 3
/** entries sent behind a manifest set wait this long for the lookup of their key, at most this many and bytes */
const FOLLOWED_TTL_MS = 10_000
const MAX_FOLLOWED = 32
const MAX_FOLLOWED_BYTES = 64 * 1024 * 1024
/** a member whose keep failed as a stream (one of the previous version) gets whole entries for this long; one whose batch failed, single operations */
const NO_KEEP_MS = 10 * 60_000
/** a publish waits this long for the other publishes of its job (they follow within milliseconds), to share their streams */
const PUBLISH_LINGER_MS = 20
/** the most bytes of meta a keep carries in its control frame (entryMeta is a few short strings) */
const KEEP_MAX_META_BYTES = 64 * 1024

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
  /** this member's builder's outputs of its last jobs, for their clients' keeps (null: no builder) */
  kept?: KeptJobs | null
}

/** The builder of a remote compile and what its reply carried: its job id and the reply's stdout, stderr and object blob. */
export interface BuiltBy {
  peer: string
  job: string
  parts: readonly Buffer[]
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
  /** builder side: entries stored here from a client's keep, rebuilt from the outputs of the job this member ran */
  entries_kept_by_builder: number
  /** builder side: keeps refused (outputs gone, content hash or signature wrong, quota, producer) */
  keep_refused: number
  /** client side: keeps a builder took instead of the entry */
  keeps_accepted: number
  /** client side: keeps not sent (too much to describe) or not taken; an owner got the entry whole then */
  keep_fallbacks: number
  /** client side: bytes of keeps sent (control frame and extra bytes) */
  keep_bytes_sent: number
  /** client side: batches sent (the puts and keeps one member gets from a publish run, on one stream) */
  batches_sent: number
  /** client side: puts and keeps answered in those */
  batched_ops: number
  /** puts and keeps other members sent here in batches */
  batched_ops_received: number
  /** client side: gets and batches sent on a stream a member had answered on already (cache-exchange.ts, again) */
  streams_reused: number
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
  /** the builder that made it holds its outputs: it gets a keep */
  built: BuiltBy | null
  /** `entry` encoded for `key` already (encodeEntryPieces), not to be compressed again */
  encoded?: Promise<readonly Buffer[]>
}

/** What one member gets of a published entry: the signed entry whole, or a keep (the builder that ran it, `owner`: one of the key's owners too). */
type Delivery = { peer: string; key: string; blob: Buffer } & ({ kind: 'put' } | { kind: 'keep'; entry: CacheEntry; built: BuiltBy; owner: boolean })

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
  /** members that failed a keep as a stream (the previous version), until when they get whole entries */
  private readonly noKeep = new Map<string, number>()
  /** members that failed a batch before answering any of it (the previous version), until when they get single operations */
  private readonly noBatch = new Map<string, number>()
  /** jobs whose builder, no owner, was sent its keep as an extra holder already */
  private readonly extraKept = new WeakSet<BuiltBy>()
  /** streams the other members read another request on */
  private readonly streams = new ReusableStreams()
  private readonly queue: BackgroundQueue<PublishItem>
  private readonly stopping = new AbortController()
  private server: CacheExchangeServer | null = null
  private readonly counters: Omit<MeshCacheStats, 'failures' | 'members_skipped' | 'serving_streams' | 'shared_entries' | 'shared_bytes' | 'shared_max_bytes' | 'streams_reused'> = {
    lookups: 0, remote_hits: 0, followed_hits: 0, remote_misses: 0, lookups_unasked: 0, shared_lookup_ms: 0, entries_published: 0,
    publish_dropped: 0, entries_pushed: 0, entries_served: 0, entries_stored_for_others: 0, entries_refused_for_others: 0,
    entries_kept_by_builder: 0, keep_refused: 0, keeps_accepted: 0, keep_fallbacks: 0, keep_bytes_sent: 0,
    batches_sent: 0, batched_ops: 0, batched_ops_received: 0
  }
  private readonly failures: Record<SharedFailure, number> = { timeout: 0, error: 0, refused: 0, malformed: 0, signature: 0, untrusted: 0, entry: 0 }

  constructor(private readonly opts: MeshCacheOptions) {
    this.n = opts.owners ?? DEFAULT_OWNERS
    this.goodLinkRttMs = opts.goodLinkRttMs ?? 50
    this.minBudgetMs = opts.minBudgetMs ?? 80
    this.maxBudgetMs = Math.max(this.minBudgetMs, opts.maxBudgetMs ?? 400)
    this.skipMs = opts.skipMs ?? 30_000
    this.queue = new BackgroundQueue<PublishItem>({
      run: (item) => this.send([item]),
      // a batch carries at most one operation per item
      group: { max: MAX_BATCH_OPS, lingerMs: PUBLISH_LINGER_MS, run: (items) => this.send(items) },
      size: (item) => item.blob?.length ?? (item.entry ? entryBytes(item.entry) : 0),
      onDrop: () => { this.counters.publish_dropped++ },
      maxItems: opts.backlogEntries ?? 256,
      maxBytes: opts.backlogBytes ?? 256 * 1024 * 1024,
      concurrency: 2,
      bytesPerSec: opts.uploadBytesPerSec ?? 32 * 1024 * 1024
    })
  }

  private get self(): string { return this.opts.mesh.peerId }

  /** whether this member holds entries for others (a builder keeps its jobs' outputs only then) */
  get holdsForOthers(): boolean { return this.opts.store !== null }

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
        if (r.kind === 'held') log.debug(`kept the manifest set held for ${key.slice(0, 16)} rather than ${peer}'s: ${r.reason}`)
        else if (r.kind !== 'quota') log.warn(`refused a cache entry offered by ${peer}: ${r.reason}`)
        return r.reason
      },
      onServed: () => { this.counters.entries_served++ },
      onBatched: () => { this.counters.batched_ops_received++ },
      keep: async (peer, req, extra) => {
        const why = await this.keepHere(peer, req, extra)
        if (why === null) this.counters.entries_kept_by_builder++
        else {
          this.counters.keep_refused++
          log.debug(`refused a keep of ${req.key.slice(0, 16)} from ${peer}: ${why}`)
        }
        return why
      }
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
      if (missed.length > 0) this.queue.push({ key, entry: null, blob: hit.blob, targets: missed, built: null })
      if (owners.includes(this.self)) void this.opts.store?.keepVerified(key, hit.blob, hit.hit.entry).catch(() => {})
      return hit.hit
    } catch (err) {
      this.failures.error++
      this.opts.log.warn(`mesh cache lookup ${key.slice(0, 16)} failed: ${(err as Error).message}`)
      return null
    } finally {
      this.counters.shared_lookup_ms += performance.now() - t0
    }
  }

  /**
   * Sign `entry` (made here) and hand it to the key's owners in the background. Never throws.
   * `encoded`: the entry encoded for `key` already (the local store's copy).
   */
  publish(key: string, entry: CacheEntry, built?: BuiltBy, encoded?: Promise<readonly Buffer[]>): void {
    if (!isValidKey(key) || entry?.exitCode !== 0) return
    this.counters.entries_published++
    this.queue.push({ key, entry, blob: null, targets: null, built: built ?? null, ...(encoded ? { encoded } : {}) })
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
      streams_reused: this.streams.reused,
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
    this.streams.closeAll()
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
      const next = (await signedManifestSet(key, blob))?.sets[0]?.result
      const nextBlob = next === undefined || next === key ? null : await this.opts.store!.get(next)
      return nextBlob && { key: next!, blob: nextBlob }
    } catch {
      return null // the store closing: the plain answer
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
      const r = await getEntry(mesh.libp2p, mesh.meshId, peer, key, { signal, answerSignal: answerBy, limit: MAX_SIGNED_ENTRY_BYTES, follow, streams: this.streams })
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

  /** Publish `items`: what each member gets of them, on one stream per member. */
  private async send(items: PublishItem[]): Promise<void> {
    const byPeer = new Map<string, Delivery[]>()
    for (const d of (await Promise.all(items.map((item) => this.deliveries(item)))).flat()) {
      const list = byPeer.get(d.peer)
      if (list) list.push(d)
      else byPeer.set(d.peer, [d])
    }
    await Promise.all([...byPeer].map(([peer, ds]) => this.deliver(peer, ds)))
  }

  /** Sign `item` (unless it is signed) and say what each of its owners, and the builder that ran it, gets. */
  private async deliveries(item: PublishItem): Promise<Delivery[]> {
    const { mesh, signer, store, log } = this.opts
    let blob = item.blob
    if (blob === null) {
      try {
        blob = item.encoded ? await sealEncoded(await item.encoded, item.key, signer) : await sealEntry(item.entry!, item.key, signer)
      } catch (err) {
        this.failures.entry++
        log.warn(`cannot publish cache entry ${item.key.slice(0, 16)}: ${(err as Error).message}`)
        return []
      }
      // the producer keeps what it made: callers that know who made an entry may ask it
      await store?.keepVerified(item.key, blob, item.entry!).catch((err: Error) => log.warn(`cannot keep cache entry ${item.key.slice(0, 16)} for the mesh: ${err.message}`))
    }
    const members = mesh.members()
    const byId = new Map(members.map((m) => [m.peerId, m]))
    const now = Date.now()
    const targets = (item.targets ?? this.ownersOf(item.key, members)).filter((id) => {
      if (id === this.self) return false
      const m = byId.get(id)
      return m !== undefined && m.connection !== 'none' && (this.skipped.get(id) ?? 0) <= now
    })
    // the builder that ran it: a keep, as the owner it may be or as an extra holder (see the header)
    const built = item.built
    let keeper = built !== null && this.takesKeeps(byId.get(built.peer), now) ? built.peer : null
    if (keeper !== null && !targets.includes(keeper)) {
      if (this.extraKept.has(built!)) keeper = null
      else this.extraKept.add(built!)
    }
    const key = item.key
    const b = blob
    return [
      ...targets.filter((peer) => peer !== keeper).map((peer): Delivery => ({ kind: 'put', peer, key, blob: b })),
      ...(keeper !== null ? [{ kind: 'keep', peer: keeper, key, blob: b, entry: item.entry!, built: built!, owner: targets.includes(keeper) } as const] : [])
    ]
  }

  /**
   * Hand `peer` what it gets: in a batch (one operation too: it may go on a parked stream, and
   * leaves one), one by one to a member of the previous version.
   */
  private async deliver(peer: string, ds: Delivery[]): Promise<void> {
    const now = Date.now()
    if (!this.current(this.noBatch, peer, now)) {
      await Promise.all(ds.map((d) => (d.kind === 'put' ? this.put(peer, d.key, d.blob) : this.keepAt(peer, d.key, d.entry, d.blob, d.built, d.owner))))
      return
    }
    const { mesh, log } = this.opts
    // a keep too large to describe goes as the put an owner would get instead (as keepAt does)
    const sent: Array<{ d: Delivery; op: BatchOp }> = []
    let undescribed = 0
    for (const d of ds) {
      const made = d.kind === 'keep' ? keepRequest(d.key, d.entry, d.blob, d.built) : null
      if (made) sent.push({ d, op: { op: 'keep', req: made.req, extra: made.extra } })
      else if (d.kind === 'put' || d.owner) sent.push({ d: { peer, key: d.key, blob: d.blob, kind: 'put' }, op: { op: 'put', key: d.key, blob: d.blob } })
      if (d.kind === 'keep' && !made) undescribed++
    }
    if (sent.length === 0) {
      this.counters.keep_fallbacks += undescribed
      return
    }
    const bytes = sent.reduce((n, { op }) => n + (op.op === 'put' ? op.blob.length : op.extra.length), 0)
    const signal = AbortSignal.any([this.stopping.signal, AbortSignal.timeout(5000 * sent.length + Math.ceil(bytes / 1024))])
    await this.queue.pace(bytes, signal)
    const r = await sendBatch(mesh.libp2p, mesh.meshId, peer, sent.map((s) => s.op), signal, this.streams)
    if (this.stopping.signal.aborted) return
    if (r.replies.length === 0 && r.error !== null && !signal.aborted) {
      log.debug(`mesh cache: a batch to ${peer} failed before any answer (single operations go there for ${NO_KEEP_MS / 60_000} min): ${r.error.message.split('\n')[0]}`)
      this.noBatch.set(peer, now + NO_KEEP_MS)
      await this.deliver(peer, ds)
      return
    }
    this.counters.keep_fallbacks += undescribed
    this.counters.batches_sent++
    this.counters.batched_ops += r.replies.length
    const refusedKeeps: Delivery[] = []
    r.replies.forEach((reply, i) => {
      const { d } = sent[i]!
      if (d.kind === 'keep') {
        this.counters.keep_bytes_sent += reply.sent ?? 0
        if (reply.kind === 'stored') this.counters.keeps_accepted++
        else {
          this.counters.keep_fallbacks++
          log.debug(`mesh cache: ${peer} did not keep ${d.key.slice(0, 16)}: ${reply.reason}`)
          if (d.owner) refusedKeeps.push(d)
        }
      } else if (reply.kind === 'stored') this.counters.entries_pushed++
      else {
        this.failures.refused++
        log.debug(`mesh cache: ${peer} refused entry ${d.key.slice(0, 16)}: ${reply.reason}`)
      }
    })
    if (r.error !== null) this.fail('error', peer, `publishing failed: ${r.error.message.split('\n')[0]}`)
    // an owner that did not keep gets the entry whole
    else await Promise.all(refusedKeeps.map((d) => this.put(peer, d.key, d.blob)))
  }

  /** Offer the signed entry `blob` of `key` to `peer`, an owner. */
  private async put(peer: string, key: string, blob: Buffer): Promise<void> {
    const { mesh, log } = this.opts
    const signal = AbortSignal.any([this.stopping.signal, AbortSignal.timeout(5000 + Math.ceil(blob.length / 1024))])
    try {
      await this.queue.pace(blob.length, signal)
      const r = await putEntry(mesh.libp2p, mesh.meshId, peer, key, blob, signal)
      if (r.kind === 'stored') this.counters.entries_pushed++
      else {
        this.failures.refused++
        log.debug(`mesh cache: ${peer} refused entry ${key.slice(0, 16)}: ${r.reason}`)
      }
    } catch (err) {
      if (this.stopping.signal.aborted) return
      this.fail('error', peer, `publishing failed: ${(err as Error).message.split('\n')[0]}`)
    }
  }

  /** A member that may take a keep: connected, holding entries for others, not known to lack keeps. */
  private takesKeeps(m: MeshMember | undefined, now: number): m is MeshMember {
    if (!m || m.self || m.connection === 'none' || m.load.sharesCache !== true || (this.skipped.get(m.peerId) ?? 0) > now) return false
    return this.current(this.noKeep, m.peerId, now)
  }

  /** `peer` is not (or no longer) marked in `older` as a member of the previous version. */
  private current(older: Map<string, number>, peer: string, now: number): boolean {
    const until = older.get(peer)
    if (until === undefined) return true
    if (until > now) return false
    older.delete(peer)
    return true
  }

  /**
   * Have the builder `peer` store the entry from the outputs it kept; when it does not and it is
   * one of the key's owners (`owner`), it gets the entry whole. A failed keep is no failure of
   * the member's: a member of the previous version answers every keep that way.
   */
  private async keepAt(peer: string, key: string, entry: CacheEntry, blob: Buffer, built: BuiltBy, owner: boolean): Promise<void> {
    const { mesh, log } = this.opts
    const made = keepRequest(key, entry, blob, built)
    if (made !== null) {
      try {
        const r = await keepEntry(mesh.libp2p, mesh.meshId, peer, made.req, made.extra, AbortSignal.any([this.stopping.signal, AbortSignal.timeout(5000)]))
        this.counters.keep_bytes_sent += r.sent
        if (r.kind === 'stored') {
          this.counters.keeps_accepted++
          return
        }
        log.debug(`mesh cache: ${peer} did not keep ${key.slice(0, 16)}: ${r.reason}`)
      } catch (err) {
        if (this.stopping.signal.aborted) return
        log.debug(`mesh cache: keep of ${key.slice(0, 16)} at ${peer} failed (whole entries go there for ${NO_KEEP_MS / 60_000} min): ${(err as Error).message.split('\n')[0]}`)
        this.noKeep.set(peer, Date.now() + NO_KEEP_MS)
      }
    }
    this.counters.keep_fallbacks++
    if (owner) await this.put(peer, key, blob)
  }

  /**
   * Builder side of a keep: the entry `req` describes, made of the outputs of the job `peer` sent
   * here and `extra`, stored when it is exactly the one `peer` signed; a refusal reason, or null.
   * The signature is checked before anything is encoded, the content hash after: what is stored
   * is the client's signed entry, its parts named as this job's outputs are this job's outputs as
   * this member produced them, and its producer passes the rules for holding entries a put's does.
   */
  private async keepHere(peer: string, req: KeepRequest, extra: Buffer): Promise<string | null> {
    const { store, kept, trust } = this.opts
    if (!store) return 'this member holds no entries for others ([cache] shared_size = 0)'
    if (req.signature.producer !== peer) return 'a keep must be signed by the member that sends it'
    const job = kept?.take(peer, req.job) ?? null
    if (job === null) return 'the outputs of that job are not held here (expired, or not a job of yours)'
    try {
      const key = Buffer.from(req.key, 'hex')
      checkSignature(key, req.contentHash, req.signature, (p) => trust.refusalToHold(p))
      const encoded = job.encoded?.subarray(20, 52).equals(req.contentHash) ? reKeyed([job.encoded], req.key)[0]! : await keptEntry(req, [...job.parts, extra])
      if (!encoded.subarray(20, 52).equals(req.contentHash)) return 'the entry made of that job\'s outputs does not have the signed content hash'
      kept!.setEncoded(job, encoded)
      return await store.keepVerified(req.key, attachSignature(encoded, req.signature))
    } catch (err) {
      if (err instanceof SignedEntryError || err instanceof EntryFormatError) return err.message
      throw err
    }
  }

}

/**
 * The entry a keep describes, encoded, from `pieces` (the job's parts and the keep's own bytes).
 * Throws on a bad ref or entry. Uncompressed, only hashed: on kernel units compressing the entry
 * took 1.7 to 3.3 ms of CPU against 1.2 to 2.0 ms for checking the same entry sent whole (which
 * made keeps cost the builders 4 to 13 % more CPU per job than puts in bench-job-cpu), hashing it
 * 0.4 to 0.7 ms. Such an entry takes two to three times the room here, and as many bytes when it
 * is served; a member fetching it decompresses nothing.
 */
function keptEntry(req: KeepRequest, pieces: Buffer[]): Promise<Buffer> {
  const bytes = ([part, offset, length]: PartRef): Buffer => {
    const p = pieces[part]
    if (p === undefined || offset + length > p.length) throw new SignedEntryError('malformed', `a ref past the end of part ${part}`)
    return p.subarray(offset, offset + length)
  }
  const entry: CacheEntry = {
    exitCode: 0, stdout: bytes(req.stdout), stderr: bytes(req.stderr),
    outputs: req.outputs.map((o) => ({ name: o.name, data: bytes(o.ref) })),
    ...(req.meta.length > 0 ? { meta: Object.fromEntries(req.meta) } : {})
  }
  return encodeEntry(entry, req.key, { uncompressed: true })
}

/**
 * The keep that describes `entry` (signed as `blob`) from the parts of `built`'s reply: each piece
 * that lies in a part (the same memory: the object as the client took it) or equals one is named
 * by a ref, the rest is sent along. Null when that is too much to be worth it.
 */
function keepRequest(key: string, entry: CacheEntry, blob: Buffer, built: BuiltBy): { req: KeepRequest; extra: Buffer } | null {
  const sig = signatureOf(blob)
  if (sig === null || built.parts.length !== 3) return null
  const extra: Buffer[] = []
  let extraBytes = 0
  const { parts } = built
  const ref = (piece: Buffer): PartRef => {
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!
      if (piece.buffer === p.buffer && piece.byteOffset >= p.byteOffset && piece.byteOffset + piece.length <= p.byteOffset + p.length) return [i, piece.byteOffset - p.byteOffset, piece.length]
    }
    const same = parts.findIndex((p) => p.length === piece.length && p.equals(piece))
    if (same >= 0) return [same, 0, piece.length]
    extra.push(piece)
    extraBytes += piece.length
    return [parts.length, extraBytes - piece.length, piece.length]
  }
  const meta = Object.entries(entry.meta ?? {})
  const req: KeepRequest = {
    key, job: built.job, contentHash: sig.contentHash, signature: sig,
    stdout: ref(entry.stdout), stderr: ref(entry.stderr), outputs: entry.outputs.map((o) => ({ name: o.name, ref: ref(o.data) })), meta
  }
  const metaBytes = meta.reduce((n, [k, v]) => n + k.length + v.length, 0)
  if (extraBytes > KEEP_MAX_BYTES || metaBytes > KEEP_MAX_META_BYTES) return null
  return { req, extra: Buffer.concat(extra) }
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
