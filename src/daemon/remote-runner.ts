// Client side of distributed compilation: choose a peer from the gossip load view
// (placement.ts), ship the job, retry another peer on any peer problem, and give up (compile
// here) after a few tries. In-flight jobs count against a peer's advertised slots until the
// view catches up, so many clients do not herd.
import { createHash } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { Config } from '../config.js'
import { readSmallFile } from '../cache/file-hashes.js'
import { firstLine, type Logger } from '../log.js'
import type { Mesh, MeshMember } from '../mesh/index.js'
import { sendCompileJob, type JobFileRef, type JobHeader } from '../mesh/protocols/compile-job.js'
import { packToolchainCached } from '../toolchain/pack.js'
import { KEY_ENV, type CommandRemoteJob, type OfferOptions, type PreparedJob, type RemoteAttempt, type RemoteJob, type RemoteRunner } from './compile-service.js'
import type { Stats } from './stats.js'
import { choosePeer, fasterPeerThanHere, hedgeAfterMs, JobTimes } from './placement.js'

const MAX_ATTEMPTS = 3
/** environment a remote compile may depend on: the key's, and the include paths the preprocessor reads */
const JOB_ENV = [...KEY_ENV, 'CPATH', 'C_INCLUDE_PATH', 'CPLUS_INCLUDE_PATH', 'OBJC_INCLUDE_PATH']
const MAX_INPUT_BYTES = 256 * 1024 * 1024
/** how long a refusal marks a peer full when no newer load message arrives */
const REFUSAL_HOLD_MS = 250
/** a job sent this close before a load message may not be counted in it yet */
const IN_FLIGHT_MARGIN_MS = 50
/** a peer that failed a job is skipped for this long, or twice as long as the failed attempt took */
const BACKOFF_MS = 5_000
/** a failed job's time includes shipping the toolchain (a minute for rustc's on a slow link): never hold a builder off longer */
const MAX_BACKOFF_MS = 30_000

export interface PeerJobStats { sent: number; done: number; failed: number; refused: number }

/** What this client's remote jobs put on the wire, against their preprocessed units' size. */
export interface TransferStats {
  /** jobs whose inputs went out (accepted by a peer) */
  jobs: number
  /** header, file table and inputs of those jobs (every attempt counts) */
  bytes_sent: number
  /** the preprocessed units of those jobs: what a farm shipping preprocessed text would send */
  pp_bytes: number
}

/** input hashes remembered per peer; past this the peer's record starts over */
const MAX_HELD_PER_PEER = 200_000

interface Toolchain { hash: string; archive: string }

/** devices every builder's sandbox provides (bwrap --dev /dev): inputs that need no shipping */
const SANDBOX_DEVICES = new Set(['/dev/null', '/dev/zero'])

export class MeshRemoteRunner implements RemoteRunner {
  /** jobs this client has sent to each peer and not yet seen finish */
  private readonly inFlight = new Map<string, Array<{ at: number }>>()
  private readonly backoff = new Map<string, number>()
  /** when each peer last refused a job as full */
  private readonly refusedAt = new Map<string, number>()
  private readonly perPeer = new Map<string, PeerJobStats>()
  /**
   * Input hashes each peer holds as far as this client knows: it asked for the others, and
   * was sent them. Only steers placement: a peer that dropped some asks for them again.
   */
  private readonly held = new Map<string, Set<string>>()
  private readonly transfer: TransferStats = { jobs: 0, bytes_sent: 0, pp_bytes: 0 }
  private readonly toolchains = new Map<string, Promise<Toolchain>>()
  private readonly configured = new Map<string, Promise<Toolchain>>()
  /** the jobs in flight to each peer, to abandon when it leaves the view */
  private readonly running = new Map<string, Set<AbortController>>()
  /** how long jobs take from acceptance to result, per peer and toolchain: the hedge's bound */
  private readonly jobTimes = new JobTimes()
  private readonly unsubscribe: () => void
  /** builders whose results failed a verification ([cache] verify_rate): sent no jobs until an operator clears them */
  distrusted: (peer: string) => boolean = () => false

  constructor(private readonly opts: { mesh: Mesh; config: Config; log: Logger; stats: Stats; toolchainDir: string }) {
    // a builder that left the view (silent past the expiry: a dead link, a crash) will not
    // answer: its jobs go elsewhere now, not when the connection's keep-alive gives up
    this.unsubscribe = opts.mesh.on('members', (members) => {
      if (this.running.size === 0) return
      const live = new Set(members.map((m) => m.peerId))
      for (const [peer, jobs] of this.running) {
        if (live.has(peer)) continue
        for (const c of jobs) c.abort(new PeerGoneError())
      }
    })
  }

  stop(): void {
    this.unsubscribe()
  }

  wants(localFree: boolean): boolean {
    // a free local slot beats any transfer, unless a peer with room is clearly faster
    if (localFree && this.opts.config.build.localSlots > 0) {
      const members = this.opts.mesh.members()
      const own = members.find((m) => m.self)?.load.speed ?? null
      return fasterPeerThanHere(own, this.candidates(new Set(), members).map((m) => ({ speed: m.load.speed, rttMs: m.rttMs, relayed: m.connection === 'relayed' })))
    }
    // any member that accepts jobs: the caller waits for room there or for a local slot
    const now = Date.now()
    return this.opts.mesh.members().some((m) => !m.self && m.load.accept !== 'never' && (this.backoff.get(m.peerId) ?? 0) < now && this.usable(m.peerId) && (m.connection !== 'none' || m.dialable))
  }

  private usable(peer: string): boolean {
    return this.opts.mesh.isAllowed(peer) && !this.distrusted(peer)
  }

  private candidates(exclude: ReadonlySet<string> = new Set(), members: MeshMember[] = this.opts.mesh.members()): MeshMember[] {
    const now = Date.now()
    // a member we have no connection to only when a dial is likely to work: a dial that fails
    // costs the job its wait (libp2p's dial timeout) before the next peer or a local compile
    return members.filter((m) => !m.self && !exclude.has(m.peerId) && m.load.accept !== 'never' &&
      this.effectiveFree(m) > 0 && (this.backoff.get(m.peerId) ?? 0) < now && this.usable(m.peerId) &&
      (m.connection !== 'none' || m.dialable))
  }

  /**
   * The peer's advertised free slots, minus this client's jobs sent after that advertisement
   * was received: earlier ones are already counted in it.
   */
  private effectiveFree(m: MeshMember): number {
    // a peer that just refused is full until its next load message says otherwise (bounded,
    // so a lost message cannot hide a peer): otherwise waiting jobs re-offer it every round trip
    const refused = this.refusedAt.get(m.peerId)
    if (refused !== undefined && m.lastSeen < refused && Date.now() - refused < REFUSAL_HOLD_MS) return 0
    const newer = (this.inFlight.get(m.peerId) ?? []).filter((j) => j.at > m.lastSeen - IN_FLIGHT_MARGIN_MS).length
    return m.load.freeSlots - newer
  }

  private pick(toolchain: string, exclude: ReadonlySet<string>, files: readonly JobFileRef[] = []): MeshMember | null {
    const members = this.candidates(exclude)
    const chosen = choosePeer(members.map((m) => ({
      id: m.peerId, free: this.effectiveFree(m), speed: m.load.speed, rttMs: m.rttMs, hasToolchain: m.load.toolchains.includes(toolchain), relayed: m.connection === 'relayed',
      inputsHeld: this.heldShare(m.peerId, files)
    })))
    return chosen ? members.find((m) => m.peerId === chosen.id) ?? null : null
  }

  private peerStats(peer: string): PeerJobStats {
    let s = this.perPeer.get(peer)
    if (!s) this.perPeer.set(peer, (s = { sent: 0, done: 0, failed: 0, refused: 0 }))
    return s
  }

  /** Share of these inputs the peer holds as far as this client knows (undefined: no inputs to weigh). */
  private heldShare(peer: string, files: readonly JobFileRef[]): number | undefined {
    if (files.length === 0) return undefined
    const held = this.held.get(peer)
    if (!held) return 0
    let n = 0
    for (const f of files) if (held.has(f.hash)) n++
    return n / files.length
  }

  /** The peer holds every one of these inputs now: it asked for those it lacked, which are being sent. */
  private recordHeld(peer: string, files: readonly JobFileRef[]): void {
    let held = this.held.get(peer)
    if (!held || held.size + files.length > MAX_HELD_PER_PEER) this.held.set(peer, (held = new Set()))
    for (const f of files) held.add(f.hash)
  }

  transferStats(): TransferStats {
    return { ...this.transfer }
  }

  /** How long this peer is still held back after a failed job (0: not held back). */
  heldBackMs(peer: string): number {
    return Math.max(0, (this.backoff.get(peer) ?? 0) - Date.now())
  }

  jobsPerPeer(): Record<string, PeerJobStats> {
    return Object.fromEntries(this.perPeer)
  }

  /** Packed once per compiler; a configured archive (cross/custom toolchains) takes precedence. */
  private toolchainFor(job: RemoteJob): Promise<Toolchain> {
    const custom = this.opts.config.build.toolchainArchives[job.req.compiler] ?? this.opts.config.build.toolchainArchives[job.compilerReal]
    if (custom) {
      let p = this.configured.get(custom)
      if (!p) {
        p = readFile(custom).then((data) => ({ hash: createHash('sha256').update(data).digest('hex'), archive: custom }))
        this.configured.set(custom, p)
        p.catch(() => this.configured.delete(custom))
      }
      return p
    }
    const memo = `${job.compilerReal}:${job.compilerHash}`
    let p = this.toolchains.get(memo)
    if (!p) {
      const t0 = Date.now()
      p = packToolchainCached(job.req.compiler, 'spec' in job ? job.spec.family : job.toolchainFamily, this.opts.toolchainDir).then((r) => {
        this.opts.log.info(`toolchain for ${job.req.compiler}: ${r.hash.slice(0, 12)} (${(r.bytes / 1048576).toFixed(1)} MiB, ready in ${Date.now() - t0} ms)`)
        void this.opts.mesh.provideToolchain(r.hash)
        return { hash: r.hash, archive: r.archive }
      })
      this.toolchains.set(memo, p)
      p.catch(() => this.toolchains.delete(memo))
    }
    return p
  }

  /** The archive of a toolchain this client packed or was configured with (served to builders), or null. */
  async archivePath(hash: string): Promise<string | null> {
    for (const p of [...this.toolchains.values(), ...this.configured.values()]) {
      const t = await p.catch(() => null)
      if (t && t.hash === hash) return t.archive
    }
    const packed = join(this.opts.toolchainDir, `${hash}.tar.gz`)
    return stat(packed).then(() => packed, () => null)
  }

  /** Hashes of the toolchains this client can serve. */
  async heldToolchains(): Promise<string[]> {
    const out: string[] = []
    for (const p of [...this.toolchains.values(), ...this.configured.values()]) {
      const t = await p.catch(() => null)
      if (t) out.push(t.hash)
    }
    return out
  }

  /** The job's inputs by content hash (memoised by stat): a builder fetches only what it lacks. */
  private async readInputs(job: RemoteJob): Promise<{ files: JobFileRef[]; dirs: string[] }> {
    const { set, hashes } = await job.inputs()
    const files: JobFileRef[] = []
    let total = 0
    for (const [i, path] of set.files.entries()) {
      const h = hashes[i]
      // Kbuild's compiler probes compile /dev/null: the sandbox has its own (bwrap --dev)
      if (!h && SANDBOX_DEVICES.has(path) && (await stat(path).catch(() => null))?.isCharacterDevice()) continue
      if (!h) throw new Error(`input ${path} is not a readable regular file`)
      total += h.size
      if (total > MAX_INPUT_BYTES) throw new Error('inputs larger than 256 MiB')
      files.push({ path, mode: h.mode & 0o755, size: h.size, hash: h.hash })
    }
    return { files, dirs: set.dirs }
  }

  /** The bytes of the files a builder asked for; a file that changed since fails the job there. */
  private async loadInputs(files: JobFileRef[], need: number[]): Promise<Buffer[]> {
    const out: Buffer[] = []
    for (const i of need) {
      const data = await readSmallFile(files[i]!.path, files[i]!.size)
      if (data.length !== files[i]!.size) throw new Error(`input ${files[i]!.path} changed during the compile`)
      out.push(data)
    }
    return out
  }

  /** Toolchain and inputs, once per job however many peers it is offered to; or why it cannot be shipped. */
  async prepare(job: RemoteJob): Promise<PreparedJob | { unshippable: string }> {
    let toolchain: Toolchain
    let inputs: { files: JobFileRef[]; dirs: string[] }
    try {
      ;[toolchain, inputs] = await Promise.all([this.toolchainFor(job), this.readInputs(job)])
    } catch (err) {
      this.opts.log.debug(`cannot ship ${'spec' in job ? job.spec.input : job.input}: ${firstLine(err)}`)
      return { unshippable: firstLine(err, 120) }
    }
    const cwd = resolve(job.req.cwd)
    if (!('spec' in job)) return commandJob(job, cwd, toolchain.hash, inputs)
    const objPath = join(cwd, `.meshcc-remote-${process.pid}-${createHash('sha256').update(job.ppHash + Math.random()).digest('hex').slice(0, 8)}.o`)
    const env: Record<string, string> = {}
    for (const k of JOB_ENV) if (job.req.env[k] !== undefined) env[k] = job.req.env[k]
    const header: JobHeader = {
      toolchain: toolchain.hash,
      compiler: job.req.compiler,
      argv: job.spec.compileArgs(objPath),
      cwd, env,
      ppHash: job.ppHash,
      ppArgv: job.spec.preprocessArgs(null, job.directivesOnly),
      objPath,
      files: inputs.files,
      dirs: inputs.dirs
    }
    return { input: job.spec.input, header, files: inputs.files, failures: 0, lastFailure: null, ppBytes: job.ppBytes ?? 0 }
  }

  /**
   * Offer the job to peers with room, up to three attempts. "no-room" when every peer was full
   * (the caller waits for room or a local slot); "failed" after peer failures (compile here).
   */
  async tryPeers(job: PreparedJob, offer: OfferOptions = {}): Promise<RemoteAttempt> {
    const { log, stats, mesh, config } = this.opts
    const tried = new Set<string>()
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      if (offer.signal?.aborted) return { kind: 'cancelled' }
      const peer = this.pick(job.header.toolchain, tried, job.files)
      if (!peer) break
      tried.add(peer.peerId)
      const ps = this.peerStats(peer.peerId)
      ps.sent++
      const mine = { at: Date.now() }
      const list = this.inFlight.get(peer.peerId) ?? []
      list.push(mine)
      this.inFlight.set(peer.peerId, list)
      let reason: string
      const gone = new AbortController()
      const jobs = this.running.get(peer.peerId) ?? new Set()
      jobs.add(gone)
      this.running.set(peer.peerId, jobs)
      const t0 = Date.now()
      let accepted = t0
      const timeKey = `${peer.peerId}\0${job.header.toolchain}`
      // read now: the view's entry for the peer changes once it has fetched the toolchain
      const fetchesToolchain = !peer.load.toolchains.includes(job.header.toolchain)
      const holdOff = () => this.backoff.set(peer.peerId, Date.now() + Math.min(MAX_BACKOFF_MS, Math.max(BACKOFF_MS, 2 * (Date.now() - t0))))
      try {
        const load = async (need: number[]) => {
          const data = await this.loadInputs(job.files, need)
          this.recordHeld(peer.peerId, job.files)
          this.transfer.jobs++
          this.transfer.pp_bytes += job.ppBytes ?? 0
          return data
        }
        const reply = await sendCompileJob(mesh.libp2p, mesh.meshId, peer.peerId, job.header, load, {
          signal: AbortSignal.any([gone.signal, AbortSignal.timeout((config.build.jobTimeout + 120) * 1000), ...(offer.signal ? [offer.signal] : [])]),
          onSent: (bytes) => { this.transfer.bytes_sent += bytes },
          onAccepted: () => {
            accepted = Date.now()
            offer.onAccepted?.(peer.peerId, hedgeAfterMs(this.jobTimes.get(timeKey)))
          }
        })
        if (reply.kind === 'done') {
          ps.done++
          if (reply.exitCode === 0) this.jobTimes.record(timeKey, Date.now() - accepted, fetchesToolchain)
          return { kind: 'done', outcome: { exitCode: reply.exitCode, stdout: reply.stdout, stderr: reply.stderr, obj: reply.obj, peer: peer.peerId, ...(reply.keep !== undefined ? { keep: reply.keep } : {}) } }
        }
        if (reply.kind === 'refused') {
          // a full builder is backpressure, not a failure: try another, or wait for room
          ps.refused++
          this.refusedAt.set(peer.peerId, Date.now())
          continue
        }
        ps.failed++
        holdOff()
        reason = `failed: ${reply.reason}`
      } catch (err) {
        // the caller's own result came first (a hedge): the builder did nothing wrong
        if (offer.signal?.aborted) return { kind: 'cancelled' }
        ps.failed++
        holdOff()
        reason = gone.signal.aborted ? 'peer error: it left the mesh view (no load message within the expiry)'
          : `peer error: ${(err as Error | null)?.name === 'TimeoutError' ? 'timed out' : firstLine(err, 120)}`
      } finally {
        jobs.delete(gone)
        if (jobs.size === 0) this.running.delete(peer.peerId)
        const rest = (this.inFlight.get(peer.peerId) ?? []).filter((x) => x !== mine)
        if (rest.length === 0) this.inFlight.delete(peer.peerId)
        else this.inFlight.set(peer.peerId, rest)
      }
      job.lastFailure = reasonClass(reason)
      stats.retry(job.lastFailure)
      log.info(`remote compile of ${job.input} on ${peer.load.name} (${peer.peerId.slice(-8)}) did not complete: ${reason}`)
      if (++job.failures >= MAX_ATTEMPTS) return { kind: 'failed', reason: job.lastFailure }
    }
    return { kind: 'no-room' }
  }

  /** Resolve when the view shows room for this job somewhere (or after `ms`). */
  async waitForRoom(job: PreparedJob, ms: number): Promise<void> {
    const deadline = Date.now() + ms
    while (Date.now() < deadline && this.pick(job.header.toolchain, new Set()) === null) {
      await new Promise((r) => setTimeout(r, 25 + Math.random() * 50)) // jitter: waiting clients do not wake in lockstep
    }
  }
}

/** A job of a family without a preprocessor check (compile-job v4): its outputs in the job's cwd, named by the family. */
function commandJob(job: CommandRemoteJob, cwd: string, toolchain: string, inputs: { files: JobFileRef[]; dirs: string[] }): PreparedJob {
  const { argv, env, outputs } = job.command(cwd)
  const header: JobHeader = {
    toolchain, compiler: job.req.compiler, argv, cwd, env,
    ppHash: '', ppArgv: [],
    // unused in v4 (outputs name the files); the protocol still wants a path inside cwd
    objPath: join(cwd, outputs[0]!),
    files: inputs.files, dirs: inputs.dirs, outputs
  }
  return { input: job.input, header, files: inputs.files, failures: 0, lastFailure: null }
}

class PeerGoneError extends Error {
  constructor() {
    super('the builder left the mesh view')
    this.name = 'PeerGoneError'
  }
}

/** Stats keep a handful of reason classes, not one entry per distinct message. */
function reasonClass(reason: string): string {
  if (reason.startsWith('refused: busy')) return 'peer busy'
  if (reason.startsWith('refused')) return 'peer refused'
  if (reason.includes('inputs mismatch')) return 'inputs mismatch'
  if (reason.includes('toolchain')) return 'toolchain unavailable'
  if (reason.includes('sandbox')) return 'sandbox failure'
  if (reason.includes('left the mesh view')) return 'peer left the view'
  if (reason.includes('timed out')) return 'timeout'
  if (reason.startsWith('peer error')) return 'peer connection error'
  return 'peer failure'
}
