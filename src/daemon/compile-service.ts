// One compile request, end to end, for every compiler family: pick the family, let it plan
// the job, look the result up (direct manifest, then the family's content key), compile on a
// miss (here or on a mesh peer), store, replay. What a key is made of lives in the family
// (src/compiler/family.ts is the seam); this file is the one pipeline they share. Every outcome
// is one of: a result to replay, "run it yourself" (not cacheable) or "run it yourself" (we
// failed). The build never depends on this code being right about anything but cache keys.
import { createHash } from 'node:crypto'
import { lstat } from 'node:fs/promises'
import { availableParallelism, setPriority } from 'node:os'
import { basename, join, resolve } from 'node:path'
import type { CompileSpec } from '../compiler/types.js'
import type { CacheEntry, LocalStore } from '../cache/local-store.js'
import { encodeEntryPieces, reKeyed } from '../cache/entry-format.js'
import { FileHasher, type FileHash } from '../cache/file-hashes.js'
import { parseManifest, sharedManifestEntry, sharedManifestKey, type FileSet, type ManifestStore } from '../cache/manifest.js'
import type { InputSet } from '../compiler/inputs.js'
import { hashedInputs, sharedSetRefusal, type CompileJob, type CompilerFamily, type ContentKey, type Dependencies, type FamilyContext, type OutputBlobs, type RunPlan } from '../compiler/family.js'
import { CFamily } from '../compiler/c-family.js'
import { RustFamily } from '../compiler/rust-family.js'
import type { Logger } from '../log.js'
import { Semaphore } from '../util/semaphore.js'
import { runProcess } from '../util/run-process.js'
import { writeFileAtomic } from '../util/atomic-write.js'
import type { CompileRequest } from './launcher-protocol.js'
import type { FamilyStats, Stats } from './stats.js'
import type { SharedCache, SharedHit } from './shared-cache.js'
import type { BuiltBy } from './mesh-cache.js'
import type { VerifiedKind } from '../cache/verifier.js'

export { KEY_ENV } from '../compiler/c-family.js'

export type CompileReply =
  | { kind: 'result'; exitCode: number; stdout: Buffer; stderr: Buffer }
  | { kind: 'passthrough'; reason: string }
  | { kind: 'fallback'; reason: string }

const DEPEND_KEY_VERSION = 'meshcc-depend-1'
/** a shared manifest set naming more files than this is not checked (a crate's dep-info is a few hundred) */
const MAX_SHARED_SET_FILES = 20_000
/** compilers' file hashes kept beside the cache entries (a Rust toolchain is hashed once, not by every daemon) */
const COMPILER_HASHES_FILE = 'compiler-hashes.json'
/** members remembered as having had a set refused (a warning each); past this the list starts over */
const MAX_REFUSING_MEMBERS = 1024

/** A miss that may be compiled on a mesh peer: a preprocessed C unit, or a command with its outputs (rustc). */
export type RemoteJob = PreprocessedRemoteJob | CommandRemoteJob

/**
 * A family's job as a command the builder runs without a preprocessor check (compile-job v4):
 * the family itself checks afterwards that the compiler read what it was sent.
 */
export interface CommandRemoteJob {
  req: CompileRequest
  /** the source, for logs */
  input: string
  /** how the toolchain is found and packed */
  toolchainFamily: import('../toolchain/types.js').CompilerFamily
  compilerReal: string
  compilerHash: string
  /** the arguments for a run whose outputs go into `outDir` (the job's cwd on the builder), and the environment it may read */
  command(outDir: string): { argv: string[]; env: Record<string, string>; outputs: string[] }
  /** the files the compile reads, each with its hash */
  inputs: () => Promise<HashedInputs>
}

/** A C unit: the builder preprocesses it again and must get the client's text. */
export interface PreprocessedRemoteJob {
  req: CompileRequest
  spec: CompileSpec
  /** the compiler's real path and content hash */
  compilerReal: string
  compilerHash: string
  /** the sha256 of the preprocessed TU: the builder re-preprocesses and must get the same */
  ppHash: string
  /** it was preprocessed with -fdirectives-only (so must the builder's check be) */
  directivesOnly: boolean
  /** bytes of that preprocessed TU (what a distcc-style farm would send), when known */
  ppBytes?: number
  /** the files the TU read, each with its hash (null: not a readable regular file) */
  inputs: () => Promise<HashedInputs>
}

/** `keep`: the builder holds these outputs under this id for a while (kept-jobs.ts), see BuiltBy */
export interface RemoteOutcome { exitCode: number; stdout: Buffer; stderr: Buffer; obj: Buffer | null; peer: string; keep?: string }

/** A job made ready to ship (toolchain packed, inputs read), offered to peers until one runs it. */
export interface PreparedJob {
  input: string
  header: import('../mesh/protocols/compile-job.js').JobHeader
  files: import('../mesh/protocols/compile-job.js').JobFileRef[]
  /** failed peer attempts so far (refusals by full peers do not count) */
  failures: number
  /** the class of the last failure, for the fallback's reason */
  lastFailure: string | null
  /** bytes of the preprocessed TU, for the transfer figures */
  ppBytes?: number
}

/**
 * 'failed': too many peer failures, compile here; `reason` is the last one's class.
 * 'cancelled': the caller's signal stopped it (a hedge here finished first).
 */
export type RemoteAttempt = { kind: 'done'; outcome: RemoteOutcome } | { kind: 'no-room' } | { kind: 'failed'; reason: string } | { kind: 'cancelled' }

/** How the caller follows one offer of a job: to stop it, and to hear when a builder has taken it. */
export interface OfferOptions {
  /** abort: stop the job wherever it runs (its stream is closed) */
  signal?: AbortSignal
  /** a builder accepted the job; after `hedgeAfterMs` it has run longer than is usual there (placement.ts) */
  onAccepted?: (peer: string, hedgeAfterMs: number) => void
}

/** Where misses can go besides this machine (the mesh); absent without a mesh. */
export interface RemoteRunner {
  /** should this miss try the mesh? `localFree` says whether a local slot is free now */
  wants(localFree: boolean): boolean
  /** the job ready to offer, or why it cannot be shipped */
  prepare(job: RemoteJob): Promise<PreparedJob | { unshippable: string }>
  tryPeers(job: PreparedJob, offer?: OfferOptions): Promise<RemoteAttempt>
  /** resolves when the load view shows room for the job (or after `ms`) */
  waitForRoom(job: PreparedJob, ms: number): Promise<void>
}

export interface CompileServiceOptions {
  store: LocalStore
  stats: Stats
  log: Logger
  /** compiles this machine runs for itself at once; 0 = every miss to the mesh when a peer can take it */
  slots: number
  /** direct mode's manifests; null = always run the preprocessor */
  direct?: ManifestStore | null
}

/** The files a preprocessed unit read (its line markers) and their hashes: taken once per miss for the job's inputs and the manifest. */
export interface HashedInputs { set: InputSet; hashes: Array<FileHash | null> }
/** A manifest entry to write once the result it points at is stored. */
interface ManifestUpdate { direct: string; write: () => Promise<void> }
interface LocalResult { exitCode: number; stdout: Buffer; stderr: Buffer }
/** A compile's result and outputs, and who made it when not this machine. */
interface CompileOutcome { result: LocalResult; outputs: OutputBlobs | null; producer?: Producer }
/** How a hedge's compile here is followed: its pid, to kill it when the peer answers first. */
interface HedgeHooks { onSpawn(pid: number): void; onExit(): void; killed(): boolean }
/** One request as the pipeline carries it; `held`: a verification keeps the job (its temp files) and disposes of it. */
interface Call {
  req: CompileRequest; job: CompileJob; stats: FamilyStats; requestStart: number; held?: boolean
  /** a content-keyed miss with a direct key: its result also goes to the mesh in depend form (publishDependForm) */
  dependForm?: { direct: string; k: ContentKey }
  /** the files a content key's unit read as a manifest set records them (recordedSet), once per call */
  recorded?: { k: ContentKey; set: Promise<Omit<FileSet, 'result'> | null> }
  /** the unit's content key, taken once per call (contentKeyOf) */
  keyed?: Promise<ContentKey | 'failed' | { notCacheable: string }>
}
/** Who made a result this machine did not compile itself: the builder of a remote compile. */
interface Producer { kind: VerifiedKind; peer: string; built?: BuiltBy }

export class CompileService {
  /** file content hashes, memoised by stat: direct mode's checks, manifests and the inputs of jobs sent to peers */
  readonly hasher = new FileHasher()
  /** local compiles: `slots` of them (at least one, for depend-mode probes and the like) */
  readonly cpu: Semaphore
  /**
   * With local_slots = 0, the compiles that were meant for the mesh and fall back to this
   * machine: they use its cores as a plain build would, not one slot (a build's -j waits on them).
   */
  readonly fallbackCpu = new Semaphore(availableParallelism())
  /** local preprocessing: bounded separately, so distributing misses cannot thrash this machine */
  private readonly pre = new Semaphore(availableParallelism())
  private readonly pendingWrites = new Set<Promise<void>>()
  /** manifest updates in flight, by direct key */
  private readonly manifestWrites = new Map<string, Promise<void>>()
  /**
   * Entries being stored, by key. The reply goes out before the store ends; the same compile
   * asked again a moment later (the next build step, a second checkout) waits for it and hits
   * instead of compiling again.
   */
  private readonly entryWrites = new Map<string, Promise<void>>()
  /** members whose refused shared manifest sets were logged at warn already */
  private readonly refusedFrom = new Set<string>()
  /** the compiler families, asked in order which one a request's compiler belongs to (C takes the rest) */
  private readonly families: CompilerFamily[]
  /** how the cache's writes fail now (ENOSPC on a full disk), so the log says it once, not once per compile */
  private writesFailing: string | null = null
  remote: RemoteRunner | null = null
  /** the mesh and the second tier as one cache behind the local one ([cache] shared, remote); null: none */
  shared: SharedCache | null = null

  constructor(private readonly opts: CompileServiceOptions) {
    this.cpu = new Semaphore(Math.max(1, opts.slots))
    this.families = [new RustFamily(join(opts.store.dir, COMPILER_HASHES_FILE)), new CFamily()]
  }

  /** A reloaded config's local_slots. */
  setSlots(slots: number): void {
    this.opts.slots = slots
    this.cpu.setLimit(Math.max(1, slots))
  }

  async handle(req: CompileRequest): Promise<CompileReply> {
    const { log } = this.opts
    const family = this.families.find((f) => f.claims(req))!
    const stats = this.opts.stats.family(family.name)
    stats.inc('compile_requests')
    const ctx: FamilyContext = { hasher: this.hasher, pre: this.pre, remote: this.remote !== null, direct: Boolean(this.opts.direct), log, stats }
    let planned: CompileJob | { notCacheable: string }
    try {
      planned = await family.plan(req, ctx)
    } catch (err) {
      stats.fallback('daemon error')
      log.error(`planning ${family.name} compile in ${req.cwd} failed inside the daemon: ${(err as Error).message}`)
      return { kind: 'fallback', reason: 'daemon error' }
    }
    if ('notCacheable' in planned) return this.notCacheable(stats, planned.notCacheable)
    const job = planned
    // `-o /dev/null` (configure probes) or any other non-file output: an atomic rename would
    // replace the device itself, so the compiler writes it as it would without us
    for (const o of job.outputs) {
      const st = await lstat(resolve(req.cwd, o.path)).catch(() => null)
      if (st && !st.isFile()) return this.notCacheable(stats, `output ${o.path} is not a regular file`)
    }

    const call: Call = { req, job, stats, requestStart: Date.now() }
    try {
      const started = performance.now()
      const dk = this.opts.direct ? await job.directKey(call.requestStart) : null
      const direct = dk?.key ?? null
      let preferPreprocessed = false
      if (direct) {
        const { hit, preprocess } = await this.directLookup(call, direct)
        preferPreprocessed = preprocess
        if (hit) {
          stats.inc('cache_hits')
          stats.inc('direct_hits')
          stats.hitTime(performance.now() - started)
          log.debug(`${job.family} direct hit ${direct.slice(0, 16)} ${job.input}`)
          return hit
        }
      }
      // A miss compiled here needs no preprocessor run at all; one that may go to a peer does (its
      // inputs). A source saved a moment ago (the edit-compile loop) goes the preprocessed way,
      // which can store its result where depend mode could not key it safely. A family without
      // a content key (rustc) keys every miss through depend mode. The shared cache is asked by
      // the direct key there (the depend form every member publishes), so sharing needs no -E.
      const distributable = this.remote !== null && job.remoteBlocker === null && job.remoteJob !== undefined
      const peerWanted = distributable && this.remote!.wants(this.cpu.running < this.opts.slots)
      if (direct && job.listInputs && peerWanted) {
        const r = await this.compileListed(call, direct, started)
        if (r) return r
      }
      if (direct && (!job.contentKey || (!dk!.sourceFresh && !preferPreprocessed && !peerWanted))) {
        const r = await this.compileDepend(call, direct)
        if (r) return r
      }
      if (!job.contentKey) return this.notCacheable(stats, direct ? 'dependencies not listed' : 'source not readable')
      // A member that ran this command published the files it read: checked here by their
      // hashes (no preprocessor run), its result is a hit before the unit is keyed at all
      if (direct && this.shared) {
        const r = await this.sharedDependLookup(call, direct, started)
        if (r) return r
      }
      const k = await this.contentKeyOf(call)
      if (k === 'failed') {
        // a missing source, a syntax error in a directive: the compile fails the same way, and
        // the compiler run by the launcher says exactly how
        stats.inc('compile_failures')
        log.debug(`preprocessing ${job.input} failed: the compiler reports it`)
        return { kind: 'passthrough', reason: 'compile failed' }
      }
      if ('notCacheable' in k) return this.notCacheable(stats, k.notCacheable)
      // once the result is in the cache, the next identical command can find it without -E
      const record: ManifestUpdate | null = direct ? { direct, write: () => this.recordManifest(call, direct, k) } : null
      const got = await this.storeGet(k.key)
      if (got) {
        const replay = await this.writeOutputs(job, got)
        if (replay) {
          stats.inc('cache_hits')
          stats.hitTime(performance.now() - started)
          log.debug(`${job.family} hit ${k.key.slice(0, 16)} ${job.input}`)
          if (record) this.track(record.write(), record.direct)
          return replay
        }
        // outputs could not be written (e.g. missing directory): the compiler reports that best
        return this.notCacheable(stats, 'output not writable')
      }
      if (direct) call.dependForm = { direct, k }
      return await this.compileAndStore(call, k, record, started)
    } catch (err) {
      stats.fallback('daemon error')
      log.error(`compile of ${job.input} in ${req.cwd} failed inside the daemon: ${(err as Error).message}`)
      return { kind: 'fallback', reason: 'daemon error' }
    } finally {
      if (!call.held) await job.dispose()
    }
  }

  private notCacheable(stats: FamilyStats, reason: string, family = stats.name): CompileReply {
    stats.nonCacheable(reason)
    this.opts.log.debug(`${family} not cacheable: ${reason}`)
    return { kind: 'passthrough', reason }
  }

  private async compileAndStore(call: Call, k: ContentKey, afterStore: ManifestUpdate | null, started: number): Promise<CompileReply> {
    const { job, stats } = call
    const { log } = this.opts
    const remote = this.remote
    const shipping = remote !== null && job.remoteBlocker === null && job.remoteJob !== undefined
    // a miss whose remote job would cost more than its compile stays here, also with local_slots = 0
    const keptHere = shipping ? ((await job.keepHere?.(k)) ?? null) : null
    const wantsPeer = shipping && keptHere === null && remote.wants(this.cpu.running < this.opts.slots)

    // After a local miss the shared cache is asked while the job is made ready to ship (the
    // lookup has its own time budget); a verified hit is replayed as a local hit is.
    const preparing = wantsPeer ? remote.prepare(job.remoteJob!(k)) : null
    if (this.shared) {
      const [hit] = await Promise.all([this.shared.lookup(k.key), preparing?.catch(() => null)])
      const replay = hit && (await this.replayShared(call, k.key, hit, afterStore, started))
      if (replay) return replay
    }
    stats.inc('cache_misses')
    log.debug(`${job.family} miss ${k.key.slice(0, 16)} ${job.input}`)

    // Here when a local slot is free (unless a peer with room is clearly faster); else a peer
    // with room; with neither, wait for whichever comes first (a queued job never commits to
    // one side while the other frees up).
    let outcome: CompileOutcome | null = null
    /** why a miss meant for the mesh is compiled here after all (counted as a fallback) */
    let fallback: string | null = null
    if (!shipping) {
      fallback = this.unsentReason(job)
    } else if (keptHere !== null) {
      stats.keptHere(keptHere)
      log.debug(`compiling ${job.input} here: ${keptHere}`)
    } else if (preparing) {
      const prepared = await preparing
      if ('unshippable' in prepared) fallback = `job not shippable (${prepared.unshippable})`
      while (!('unshippable' in prepared) && outcome === null) {
        const a = await this.offerHedged(call, prepared, remote)
        if (a.kind === 'here') {
          // the hedge here answered first, or the peers gave no result while it ran
          if ('kind' in a.local) return a.local
          outcome = a.local
          break
        }
        if (a.kind === 'cancelled') break
        if (a.kind === 'done' && a.outcome.exitCode !== 0) {
          // A failure may be a file the compiler read that no line marker named (an assembler
          // .incbin, say): the local compile below gives the verdict the user sees.
          stats.retry('remote compile failed, rechecked here')
          log.info(`compile of ${job.input} failed on ${a.outcome.peer}; rechecking it here`)
          break
        }
        if (a.kind === 'done') {
          const { exitCode, obj, peer } = a.outcome
          // a family that checks a peer's outputs (rustc: it read what was sent) may refuse them
          let taken: { outputs: OutputBlobs | null; stdout: Buffer; stderr: Buffer }
          try {
            const text = (b: Buffer) => (job.remoteText ? job.remoteText(b) : b)
            taken = { outputs: obj && (await job.remoteOutputs!(obj)), stdout: text(a.outcome.stdout), stderr: text(a.outcome.stderr) }
          } catch (err) {
            log.info(`outputs of ${job.input} from ${peer} not taken: ${(err as Error).message}`)
            fallback = 'remote outputs not taken'
            break
          }
          stats.inc('remote_compiles')
          log.debug(`compiled ${job.input} on ${peer}`)
          const built = a.outcome.keep === undefined ? undefined : { peer, job: a.outcome.keep, parts: [a.outcome.stdout, a.outcome.stderr, obj ?? Buffer.alloc(0)] }
          outcome = { result: { exitCode, stdout: taken.stdout, stderr: taken.stderr }, outputs: taken.outputs, producer: { kind: 'remote-compile', peer, built } }
          break
        }
        if (a.kind === 'failed') { fallback = `all attempts failed: ${a.reason}`; break }
        if (!remote.wants(false)) {
          fallback = prepared.lastFailure ? `all attempts failed: ${prepared.lastFailure}` : 'no peer with room'
          break
        }
        if (this.opts.slots > 0 && this.cpu.running < this.opts.slots) break
        await Promise.race([remote.waitForRoom(prepared, 1000), this.opts.slots > 0 ? this.cpu.whenFree() : new Promise(() => {})])
        if (this.opts.slots > 0 && this.cpu.running < this.opts.slots) break
      }
    } else if (this.opts.slots === 0) {
      fallback = 'no peer takes jobs'
    }
    if (outcome === null) {
      if (fallback !== null) {
        stats.fallback(fallback)
        log.info(`compiling ${job.input} here: ${fallback}`)
      }
      // (with local_slots = 0 both run beside the slots, on this machine's cores)
      const r = await this.compileHere(call, fallback !== null || keptHere !== null)
      if ('kind' in r) return r
      outcome = r
    }
    return this.storeResult(call, k.key, outcome.result, outcome.outputs, afterStore, false, { producer: outcome.producer ?? null })
  }

  /** The plain compile of a content-keyed miss here, its outputs collected. */
  private async compileHere(call: Call, fallback: boolean, hedge?: HedgeHooks): Promise<CompileOutcome | CompileReply> {
    const plan = call.job.compilePlan!()
    const r = await this.localCompile(call, plan, fallback, hedge)
    if ('kind' in r) return r
    return { result: r, outputs: r.exitCode === 0 ? (await plan.collect()).outputs : null }
  }

  /**
   * Offer the job to peers and, on a client with local slots, hedge it: once its builder has
   * run it longer than is usual there (placement.ts, hedgeAfterMs) and a local slot is free,
   * compile it here too. The first result wins: the offer's stream is closed, or the compiler
   * here killed (and waited for: it may write in place, rustc). Only the winner's outputs are
   * written, by the caller. A local failure waits for the peer's verdict; a peer's failure
   * takes the local one.
   */
  private async offerHedged(call: Call, prepared: PreparedJob, remote: RemoteRunner): Promise<RemoteAttempt | { kind: 'here'; local: CompileOutcome | CompileReply }> {
    if (this.opts.slots === 0) return remote.tryPeers(prepared)
    const { job, stats } = call
    const { log } = this.opts
    const cancel = new AbortController()
    let settled = false
    let timer: NodeJS.Timeout | undefined
    let peer = ''
    let running: Promise<{ local: CompileOutcome | CompileReply }> | null = null
    let started!: () => void
    const hedgeStarted = new Promise<{ hedge: true }>((r) => { started = () => r({ hedge: true }) })
    let acceptedAt = 0
    let pid: number | null = null
    let killed = false
    const hooks: HedgeHooks = {
      onSpawn: (p) => { pid = p; if (killed) kill() },
      onExit: () => { pid = null },
      killed: () => killed
    }
    const kill = () => {
      killed = true
      // the compiler's group: a driver's cc1 and as would run on without it
      if (pid !== null) try { process.kill(-pid, 'SIGKILL') } catch { /* exited meanwhile */ }
    }
    const hedge = async () => {
      // (a reload may set local_slots to 0 meanwhile: then no slot will come)
      while (!settled && this.opts.slots > 0 && this.cpu.running >= this.opts.slots) await this.cpu.whenFree()
      if (settled || running || this.opts.slots === 0) return
      stats.inc('hedged')
      log.debug(`hedging ${job.input}: ${peer} has not answered in ${Math.round(performance.now() - acceptedAt)} ms, compiling it here too`)
      running = this.compileHere(call, false, hooks).then((local) => ({ local }))
      started()
    }
    const offered = remote.tryPeers(prepared, {
      signal: cancel.signal,
      onAccepted: (p, afterMs) => {
        peer = p
        acceptedAt = performance.now()
        clearTimeout(timer)
        if (!running) timer = setTimeout(() => void hedge(), afterMs)
      }
    }).then((a) => ({ a }))
    // not awaited when the compile here wins: a rejection must not go unhandled
    offered.catch(() => {})
    try {
      const first = await Promise.race([offered, hedgeStarted])
      if (!running) return (first as { a: RemoteAttempt }).a
      const here: Promise<{ local: CompileOutcome | CompileReply }> = running
      const next = 'a' in first ? first : await Promise.race([offered, here])
      if ('local' in next) {
        const won = !('kind' in next.local) && next.local.result.exitCode === 0 && next.local.outputs !== null
        if (won) {
          cancel.abort()
          stats.inc('hedge_won_local')
          log.debug(`${job.input} compiled here first; job on ${peer} stopped`)
          return { kind: 'here', local: next.local }
        }
        // the compile here did not give a result to keep: the peer's decides, if it has one
        const { a } = await offered
        return a.kind === 'done' && a.outcome.exitCode === 0 ? a : { kind: 'here', local: next.local }
      }
      if (next.a.kind === 'done' && next.a.outcome.exitCode === 0) {
        kill()
        await here.catch(() => {})
        log.debug(`${job.input} compiled on ${peer} first; the compile here stopped`)
        return next.a
      }
      return { kind: 'here', local: (await here).local }
    } finally {
      settled = true
      clearTimeout(timer)
    }
  }

  /**
   * A verified entry from the mesh or the second tier: its outputs written as for a local hit,
   * stored here, counted, and offered to the verifier. Null when it does not fit this request
   * (the miss is compiled as usual).
   */
  private async replayShared(call: Call, key: string, hit: SharedHit, afterStore: ManifestUpdate | null, started: number,
    stillSame?: () => Promise<boolean>): Promise<CompileReply | null> {
    const { job, stats } = call
    const replay = await this.writeOutputs(job, hit.entry)
    if (!replay) return null
    stats.inc('cache_hits')
    stats.inc(hit.source === 'mesh' ? 'mesh_hits' : 'tier_hits')
    stats.hitTime(performance.now() - started)
    this.opts.log.debug(`${job.family} ${hit.source} hit ${key.slice(0, 16)} ${job.input} (made by ${hit.producer})`)
    this.storeLocally(call, key, hit.entry, afterStore, hit.encoded)
    this.verifyLater(call, key, hit.entry, { kind: hit.source === 'mesh' ? 'mesh-hit' : 'tier-hit', peer: hit.producer }, undefined, stillSame)
    return replay
  }

  /**
   * Offer a result this machine did not make to the verifier ([cache] verify_rate). A sampled job
   * keeps its temp files (the depfile the preprocessor wrote) until the verification is done.
   * True when it was sampled.
   */
  private verifyLater(call: Call, key: string, entry: CacheEntry, producer: Producer, onMatch?: () => void, stillSame?: () => Promise<boolean>): boolean {
    const { job } = call
    // a compile in place (rustc writes into cargo's directory) is never run again behind the build's back
    if (!this.shared || !job.compilePlan || (!job.contentKey && !stillSame) || job.compilePlan().inPlace) return false
    // a depfile made in another checkout names that checkout's files: a hit there writes this
    // build's own (restore), so only a depfile made here is compared
    const elsewhere = entry.meta?.cwd !== undefined && entry.meta.cwd !== call.req.cwd
    const taken = this.shared.verify({
      key, entry, producer: producer.peer, kind: producer.kind, onMatch, ignore: elsewhere ? ['dep'] : undefined,
      recompile: () => this.recompile(call, key, stillSame),
      // the wrong result stays in no cache here: the local compile's replaces it
      onMismatch: (fresh) => this.storeLocally(call, key, { ...entry, outputs: fresh }, null),
      release: () => { void job.dispose() }
    })
    if (taken) call.held = true
    return taken
  }

  /**
   * The verifier's compile: the same command here, at the lowest CPU priority, into temp outputs.
   * Null when it failed or the inputs changed since the key was taken (a difference would prove
   * nothing about the producer).
   */
  private async recompile(call: Call, key: string, stillSame?: () => Promise<boolean>): Promise<OutputBlobs | null> {
    const { req, job } = call
    const plan = job.compilePlan!({ objectOnly: stillSame !== undefined })
    const r = await runProcess(req.compiler, plan.args, {
      cwd: req.cwd, env: this.planEnv(req, plan, false),
      onSpawn: (pid) => { try { setPriority(pid, 19) } catch { /* it may have exited already */ } }
    })
    if (r.exitCode !== 0) return null
    const { outputs } = await plan.collect()
    // a hit found through a manifest set is keyed by its files: they must still be the set's
    if (stillSame) return (await stillSame()) ? outputs : null
    const now = await job.contentKey!(true)
    if (typeof now !== 'object' || !('key' in now) || now.key !== key) return null
    return outputs
  }

  /**
   * Keep an entry in the local cache in the background; then the manifest that points at it.
   * `encoded`: the entry in the store's format already (a verified one from the mesh, or one
   * encoded once for this store and the mesh).
   */
  private storeLocally(call: Call, key: string, entry: CacheEntry, afterStore: ManifestUpdate | null, encoded?: Buffer | Promise<readonly Buffer[]>): void {
    // a verified entry from the mesh is kept as it came: compressing it again cost a hit more CPU than the rest of it
    const stored = (encoded ? this.opts.store.putEncoded(key, encoded) : this.opts.store.put(key, entry)).then(
      () => { call.stats.inc('cache_writes'); this.writeWorked(); return true },
      (err: Error) => { call.stats.inc('cache_errors'); this.writeFailed(`cache entry ${key}`, err); return false }
    )
    const settled = stored.then(() => undefined)
    this.entryWrites.set(key, settled)
    void settled.finally(() => { if (this.entryWrites.get(key) === settled) this.entryWrites.delete(key) })
    // the manifest names the entry: written only once the entry is
    this.track(stored.then(async (ok) => { if (ok && afterStore) await afterStore.write() }), afterStore?.direct)
  }

  /**
   * With local_slots = 0 every miss is meant for the mesh: why this one cannot go there (no
   * mesh, an option that keeps it here). Null when local compiles are normal.
   */
  private unsentReason(job: CompileJob): string | null {
    if (this.opts.slots > 0) return null
    if (!this.remote) return 'no mesh'
    // a job the mesh could take that stayed here without a blocker found nobody to take it
    if (job.remoteBlocker === null && job.remoteJob !== undefined && !this.remote.wants(false)) return 'no peer takes jobs'
    return `not distributable (${job.remoteBlocker ?? `${job.family} jobs are compiled here`})`
  }

  /**
   * Run the compiler here; the plan's temps are our temp paths that must not show in its
   * output. A fallback (a miss meant for the mesh) runs beside the local slots, as a plain
   * build would.
   */
  private async localCompile(call: Call, plan: RunPlan, fallback = false, hedge?: HedgeHooks): Promise<LocalResult | CompileReply> {
    const { req } = call
    const sem = fallback && this.opts.slots === 0 ? this.fallbackCpu : this.cpu
    const r = await sem.run(async () => {
      const done = await runProcess(req.compiler, plan.args, { cwd: req.cwd, env: this.planEnv(req, plan, hedge === undefined), onSpawn: hedge?.onSpawn, ownGroup: hedge !== undefined })
      hedge?.onExit()
      return done
    })
    // a hedge stopped because the peer answered first compiled nothing
    if (hedge?.killed()) return { kind: 'passthrough', reason: 'compiler killed' }
    call.stats.inc('local_compiles')
    const { stdout, stderr } = r
    // a diagnostic naming our temp file would differ from the plain compiler's: let the launcher rerun it
    if (plan.temps.some((t) => stderr.includes(t) || stdout.includes(t))) {
      return r.exitCode === 0 ? this.notCacheable(call.stats, 'compiler output names the output file') : { kind: 'passthrough', reason: 'compile failed' }
    }
    if (r.exitCode === undefined || r.signal) return { kind: 'passthrough', reason: 'compiler killed' }
    return { exitCode: r.exitCode, stdout, stderr }
  }

  /** The request's environment without the variables the plan drops, with its jobserver's when `jobserver`. */
  private planEnv(req: CompileRequest, plan: RunPlan, jobserver: boolean): Record<string, string> {
    const join = jobserver ? plan.jobserverEnv : undefined
    if (!join && !plan.dropEnv?.some((k) => req.env[k] !== undefined)) return req.env
    const env = { ...req.env }
    for (const k of plan.dropEnv ?? []) delete env[k]
    return { ...env, ...join }
  }

  /**
   * Hand a finished compile to the user and, when it succeeded, to the cache under `key`;
   * `inPlace`: the compiler wrote the outputs where the user expects them already. `share`:
   * the key is a content key others can look up, so the result goes to the shared cache too
   * (a remote compile's after its verification when one is sampled); `producer` made it when
   * not this machine.
   */
  private async storeResult(call: Call, key: string | null, result: LocalResult, outputs: OutputBlobs | null,
    afterStore: ManifestUpdate | null, inPlace = false, share: { producer: Producer | null } | null = null): Promise<CompileReply> {
    const { req, job, stats } = call
    const { log } = this.opts
    if (result.exitCode !== 0) {
      stats.inc('compile_failures')
      return { kind: 'result', exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr }
    }
    if (outputs === null) {
      log.info(`${basename(req.compiler)} ${req.args.join(' ').slice(0, 300)} (in ${req.cwd}) exited 0 but wrote no ${job.family === 'c' ? 'object' : 'output'}; passing through`)
      return this.notCacheable(stats, 'expected output missing')
    }
    const entry: CacheEntry = { exitCode: 0, stdout: result.stdout, stderr: result.stderr, outputs, meta: job.entryMeta() }
    if (!inPlace && !(await this.writeOutputs(job, entry))) return this.notCacheable(stats, 'output not writable')
    if (key !== null) {
      const shared = this.shared && share ? this.shared : null
      // compressed once for the local store and the mesh (under its depend-form key too, re-keyed)
      const encoded = shared ? encodeEntryPieces(entry, key) : undefined
      encoded?.catch(() => {}) // the store reports a failure; a publish that is never made must not leave it unhandled
      this.storeLocally(call, key, entry, afterStore, encoded)
      if (shared && share) {
        const publish = () => {
          shared.publish(key, entry, share.producer?.built, encoded)
          // (in the background: a failure costs the others a cheap hit, never this compile)
          if (call.dependForm) this.track(this.publishDependForm(call, call.dependForm, entry, share.producer?.built, encoded).catch((err: Error) => log.debug(`depend form of ${job.input} not published: ${err.message}`)))
        }
        if (!share.producer || !this.verifyLater(call, key, entry, share.producer, publish)) publish()
      }
    }
    return { kind: 'result', exitCode: 0, stdout: result.stdout, stderr: result.stderr }
  }

  /**
   * Depend mode, for a miss this machine compiles anyway: no preprocessor run. The compiler
   * lists every file it read (a depfile, rustc's dep-info); their hashes and the direct key
   * make the result key, recorded in the manifest for the next lookup. Null when the compile
   * does not qualify (its list could miss files): the caller takes the content-key path.
   */
  private async compileDepend(call: Call, direct: string): Promise<CompileReply | null> {
    const { job, stats } = call
    const plan = job.dependPlan()
    if (plan === null) return null
    const fromShared = this.shared && (await this.sharedDependLookup(call, direct, performance.now()))
    if (fromShared) return fromShared
    stats.inc('cache_misses')
    this.opts.log.debug(`${job.family} miss (depend mode) ${direct.slice(0, 16)} ${job.input}`)
    const fallback = this.unsentReason(job)
    if (fallback !== null) stats.fallback(fallback)
    const r = await this.localCompile(call, plan, fallback !== null)
    if ('kind' in r) return r
    if (r.exitCode !== 0) return this.storeResult(call, null, r, null, null)
    const { outputs, deps } = await plan.collect()
    let key: string | null = null
    let record: ManifestUpdate | null = null
    const set = deps && (await this.trustedSet(call, deps))
    if (set) {
      key = dependKey(direct, set)
      const entry: FileSet = { ...set, result: key }
      record = { direct, write: () => this.manifestWrite(direct, this.opts.direct!.add(direct, entry)) }
      // the others find the result through this set: published beside it
      if (r.exitCode === 0 && outputs) this.shared?.publish(sharedManifestKey(direct), sharedManifestEntry(direct, entry))
    }
    const placed = plan.inPlace || (outputs !== null && (await plan.place?.()) === true)
    return await this.storeResult(call, key, r, outputs, record, placed, key ? { producer: null } : null)
  }

  /**
   * A depend-mode key is known only after the compile, too late to ask anyone: the mesh carries
   * the producer's manifest set under a key made from the direct key, and the result under its
   * own. A set is used only when every file (and fact) it names is the same here and its result
   * key is the one those files make (a member cannot point a command at another result).
   */
  private async sharedDependLookup(call: Call, direct: string, started: number): Promise<CompileReply | null> {
    const found = await this.shared!.lookup(sharedManifestKey(direct), { follow: true })
    const text = found?.entry.outputs.find((o) => o.name === 'manifest')?.data.toString('utf8')
    if (!text) return null
    const m = parseManifest(text, direct)
    if (typeof m === 'string') {
      this.opts.log.warn(`shared manifest for ${direct.slice(0, 16)} from ${found!.producer} is unusable: ${m}`)
      return null
    }
    const set = m.sets[0]
    // a pointer (preprocess: the producer's files were too new to vouch for): its result is a
    // preprocessed key, taken here too before it is asked for
    const pointer = m.preprocess
    if (!set || set.files.length > MAX_SHARED_SET_FILES || (!pointer && dependKey(direct, set) !== set.result)) return null
    if ((await this.refusedSharedSet(call, set, found!.producer)) || !(await this.setMatches(call, set))) return null
    let record: ManifestUpdate = { direct, write: () => this.manifestWrite(direct, this.opts.direct!.add(direct, set)) }
    if (pointer) {
      const k = call.job.contentKey ? await this.contentKeyOf(call) : 'failed'
      if (k === 'failed' || 'notCacheable' in k || k.key !== set.result) return null
      record = { direct, write: () => this.recordManifest(call, direct, k) }
    }
    const hit = await this.shared!.lookup(set.result)
    if (!hit) return null
    const replay = await this.replayShared(call, set.result, hit, record, started, () => this.setMatches(call, set))
    if (replay) call.stats.inc('shared_manifest_hits')
    return replay
  }

  /**
   * A set another member published is checked here only when it names files this command can
   * read and facts its family records (SharedReach): else the fetch of its result would tell
   * the publisher that a file here (a key, /etc/shadow) or a variable has the content it
   * guessed. A refusal is counted and logged, at warn once per member.
   */
  private async refusedSharedSet(call: Call, set: FileSet, producer: string): Promise<boolean> {
    const { job, req, stats } = call
    const reach = job.sharedReach?.()
    const bad = reach ? await sharedSetRefusal(set, req.cwd, reach) : `anything (${job.family} jobs take none)`
    if (bad === null) return false
    stats.inc('shared_sets_refused')
    const line = `shared manifest set for ${job.input} from ${producer} refused: it names ${bad}, which this command does not read`
    if (this.refusedFrom.has(producer)) {
      this.opts.log.debug(line)
    } else {
      if (this.refusedFrom.size >= MAX_REFUSING_MEMBERS) this.refusedFrom.clear()
      this.refusedFrom.add(producer)
      this.opts.log.warn(`${line} (counted in shared_sets_refused; more from this member at debug level)`)
    }
    return true
  }

  /**
   * A content-keyed result as depend mode would have stored it: under the key its direct key and
   * the files it read make, with that set published under the direct key. Another member running
   * the same command then finds it by hashing those files (sharedDependLookup), without keying
   * the unit; the result key follows from the set, so no set can point a command elsewhere.
   */
  private async publishDependForm(call: Call, form: { direct: string; k: ContentKey }, entry: CacheEntry, built?: BuiltBy, encoded?: Promise<readonly Buffer[]>): Promise<void> {
    const recorded = await this.recordedSet(call, form.k)
    if (!recorded) return this.publishPointer(call, form)
    if (recorded.files.length > MAX_SHARED_SET_FILES) return
    const key = dependKey(form.direct, recorded)
    this.shared!.publish(key, entry, built, encoded?.then((pieces) => reKeyed(pieces, key)))
    this.shared!.publish(sharedManifestKey(form.direct), sharedManifestEntry(form.direct, { ...recorded, result: key }))
  }

  /**
   * A unit whose files changed just before its compile cannot vouch for their hashes (one may
   * have changed again after the compiler read it), so no depend form: a pointer instead, the
   * set as hashed now with the preprocessed key as its result. A member whose files have those
   * hashes takes its own preprocessed key and asks for the result only when the two are equal,
   * so a wrong hash costs it one preprocessor run, never a wrong result.
   */
  private async publishPointer(call: Call, form: { direct: string; k: ContentKey }): Promise<void> {
    const { set, hashes } = await hashedInputs(form.k, this.hasher)
    if (set.files.length > MAX_SHARED_SET_FILES || !hashes.every((f) => f !== null && !f.volatile)) return
    const files = set.files.map((p, i): [string, string] => [p, hashes[i]!.hash])
    const pointer = call.job.recordSet ? call.job.recordSet(files, []) : { files }
    this.shared!.publish(sharedManifestKey(form.direct), sharedManifestEntry(form.direct, { ...pointer, result: form.k.key }, true))
  }

  /** The unit's content key (its preprocessor run), once per call. */
  private contentKeyOf(call: Call): Promise<ContentKey | 'failed' | { notCacheable: string }> {
    call.keyed ??= call.job.contentKey!()
    return call.keyed
  }

  /** Every file a manifest set names still has its recorded hash here, and every fact its value. */
  private async setMatches(call: Call, set: FileSet): Promise<boolean> {
    const { req, job } = call
    // a relative path (rustc's sources under the working directory) is this build's file
    const now = await Promise.all(set.files.map(([p]) => this.hasher.hash(p.startsWith('/') ? p : resolve(req.cwd, p))))
    if (!now.every((f, i) => f !== null && f.hash === set.files[i][1])) return false
    return !set.env || set.env.every(([name, value]) => (job.fact ? job.fact(name) : req.env[name] ?? null) === value)
  }

  /**
   * A miss keyed by the inputs the compiler lists before compiling (rustc's dep-info), so that
   * it can go to a peer with them. The key is depend mode's for the same list: a crate compiled
   * either way finds the other's entry. Null: compile here in depend mode (the listing failed,
   * could not be trusted, or the job stays here).
   */
  private async compileListed(call: Call, direct: string, started: number): Promise<CompileReply | null> {
    const { job, stats } = call
    const listed = await job.listInputs!()
    if (listed === 'failed' || 'local' in listed) return null
    const set = await this.trustedSet(call, listed.deps)
    if (!set) return null
    const key = dependKey(direct, set)
    const record: ManifestUpdate = { direct, write: () => this.manifestWrite(direct, this.opts.direct!.add(direct, { ...set, result: key })) }
    const got = await this.storeGet(key)
    const replay = got && (await this.writeOutputs(job, got))
    if (replay) {
      stats.inc('cache_hits')
      stats.hitTime(performance.now() - started)
      this.opts.log.debug(`${job.family} hit (listed) ${key.slice(0, 16)} ${job.input}`)
      this.track(record.write(), direct)
      return replay
    }
    // counted as a miss there, after the shared cache was asked
    return this.compileAndStore(call, { key, inputs: listed.ship }, record, started)
  }

  /** Place an entry's outputs where the compiler would have written them, each atomically; the replay, or null. */
  private async writeOutputs(job: CompileJob, entry: CacheEntry): Promise<CompileReply | null> {
    const restore = await job.restore(entry)
    if (restore === null) return null
    try {
      for (const f of restore.files) await writeFileAtomic(f.path, f.data)
      return { kind: 'result', exitCode: 0, stdout: restore.stdout, stderr: restore.stderr }
    } catch {
      return null
    }
  }

  /**
   * Keep a background write (entry, manifest) in the set that drain() waits for; with a direct
   * key, a lookup of that key waits for it too (the same command right after its miss hits).
   */
  private track(write: Promise<void>, direct?: string): void {
    this.pendingWrites.add(write)
    if (direct) this.manifestWrites.set(direct, write)
    void write.finally(() => {
      this.pendingWrites.delete(write)
      if (direct && this.manifestWrites.get(direct) === write) this.manifestWrites.delete(direct)
    })
  }

  /** A hit found through the manifest: every recorded file (and variable) still has its recorded hash (and value). */
  private async directLookup(call: Call, direct: string): Promise<{ hit: CompileReply | null; preprocess: boolean }> {
    const { job } = call
    await this.manifestWrites.get(direct)
    const manifest = await this.opts.direct!.get(direct)
    if (manifest.damaged !== null) {
      this.opts.stats.inc('cache_errors')
      this.opts.log.warn(`manifest ${direct} was damaged and has been removed: ${manifest.damaged}`)
    }
    for (const set of manifest.sets) {
      if (!(await this.setMatches(call, set))) continue
      const got = await this.storeGet(set.result)
      if (got === null) continue
      const replay = await this.writeOutputs(job, got)
      if (!replay) break
      return { hit: replay, preprocess: false }
    }
    return { hit: null, preprocess: manifest.preprocess }
  }

  /** A cache entry, or null; a corrupt one is counted, logged and (by the store) removed. */
  private async storeGet(key: string): Promise<CacheEntry | null> {
    await this.entryWrites.get(key)
    const got = await this.opts.store.get(key)
    if (got.status === 'corrupt') {
      this.opts.stats.inc('cache_errors')
      this.opts.log.warn(`cache entry ${key} was corrupt and has been removed: ${got.reason}`)
    }
    return got.status === 'hit' ? got.entry : null
  }

  /**
   * What a depend-mode compile read, as a manifest records it, or null when it cannot go into
   * one: a file unreadable, using __TIME__ and the like, changed while we looked, or (for a
   * -MMD list) a self-declared system header whose own includes the list leaves out. Files
   * under the working directory are recorded relative to it when the job says its key does
   * not hold where the build lies (rustc).
   */
  private async trustedSet(call: Call, deps: Dependencies): Promise<Omit<FileSet, 'result'> | null> {
    const { req, job, requestStart } = call
    const hashes = await Promise.all(deps.files.map((p) => this.hasher.hash(p)))
    const files = trusted(deps.files, hashes, requestStart - job.tooNewMs, deps.userHeadersOnly)
    if (files === null) return null
    if (job.recordSet) return job.recordSet(files, deps.env)
    if (!job.relativeFiles) return { files }
    const cwd = req.cwd.endsWith('/') ? req.cwd : `${req.cwd}/`
    return { files: files.map(([p, h]) => [p.startsWith(cwd) ? p.slice(cwd.length) : p, h]), env: deps.env }
  }

  /**
   * Remember which files produced `k` (from the preprocessor's line markers); when they are too
   * new to trust, at least that the result is under its preprocessed key.
   */
  private async recordManifest(call: Call, direct: string, k: ContentKey): Promise<void> {
    const recorded = await this.recordedSet(call, k)
    await this.manifestWrite(direct, recorded ? this.opts.direct!.add(direct, { ...recorded, result: k.key }) : this.opts.direct!.markPreprocess(direct))
  }

  /**
   * The files the unit of `k` read (its line markers), as a manifest set records them; null when
   * they cannot be recorded (too new, unreadable, volatile). Made once per call: the manifest
   * here and the depend form for the mesh both take it (a kernel unit's set is ~800 files).
   */
  private recordedSet(call: Call, k: ContentKey): Promise<Omit<FileSet, 'result'> | null> {
    if (call.recorded?.k !== k) {
      const set = hashedInputs(k, this.hasher).then(({ set, hashes }) => {
        const files = trusted(set.files, hashes, call.requestStart - call.job.tooNewMs, false)
        return files && (call.job.recordSet ? call.job.recordSet(files, []) : { files })
      })
      call.recorded = { k, set }
    }
    return call.recorded.set
  }

  /** A manifest that cannot be written costs a later hit, never the compile. */
  private async manifestWrite(direct: string, op: Promise<void>): Promise<void> {
    await op.then(() => this.writeWorked(), (err: Error) => this.writeFailed(`manifest ${direct}`, err))
  }

  /** A cache write failed: a warning when it starts failing this way, then debug lines while it goes on. */
  private writeFailed(what: string, err: Error): void {
    const how = (err as NodeJS.ErrnoException).code ?? err.message
    if (this.writesFailing === how) {
      this.opts.log.debug(`could not store ${what}: ${err.message}`)
      return
    }
    this.writesFailing = how
    this.opts.log.warn(`could not store ${what}: ${err.message}; compiles go on without storing their results while this lasts (counted in cache_errors)`)
  }

  private writeWorked(): void {
    if (this.writesFailing === null) return
    this.opts.log.info(`cache writes work again (they failed with ${this.writesFailing})`)
    this.writesFailing = null
  }

  /** Wait for cache writes still in flight (shutdown, tests). */
  async drain(): Promise<void> {
    await Promise.all([...this.pendingWrites])
  }
}

/** The result key of a depend-mode compile: its direct key and every file (and variable) it read. */
export function dependKey(direct: string, set: Omit<FileSet, 'result'>): string {
  const h = createHash('sha256').update(`${DEPEND_KEY_VERSION}\0${direct}\0`)
  for (const [p, fh] of set.files) h.update(`${p}\0${fh}\0`)
  for (const [name, value] of set.env ?? []) h.update(`env\0${name}\0${value === null ? '\x01' : `=${value}`}\0`)
  return h.digest('hex')
}

/**
 * [path, hash] of each file, or null when one cannot go into a manifest: unreadable, using
 * __TIME__ and the like, changed at or after `since`, or (for a -MMD list) a self-declared
 * system header whose own includes the list leaves out.
 */
function trusted(paths: string[], hashes: Array<FileHash | null>, since: number, userHeadersOnly: boolean): Array<[string, string]> | null {
  const ok = hashes.every((f) => f !== null && !f.volatile && !(userHeadersOnly && f.systemHeader) && !f.newerThan(since))
  return ok ? paths.map((p, i) => [p, hashes[i]!.hash]) : null
}
