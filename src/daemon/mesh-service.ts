// The daemon's mesh membership: starts the libp2p mesh when a mesh key exists, publishes
// this machine's load, keeps the legacy sccache shim on exactly one elected node, and
// turns the live view into the status that `meshcc status` and `--dist-status` print.
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { loadavg } from 'node:os'
import type { Config } from '../config.js'
import type { Logger } from '../log.js'
import type { Mesh, MeshMember } from '../mesh/index.js'
import type { ToolchainCache } from '../toolchain/cache.js'
import { electShimServer } from '../shim/election.js'
import type { ShimServer } from '../shim/server.js'
import type { Stats } from './stats.js'
import { Builder, type BuilderStatus } from './builder.js'
import { MeshRemoteRunner, type PeerJobStats, type TransferStats } from './remote-runner.js'
import { MemoryInputCache, type InputCacheStatus } from './input-cache.js'
import { everyAligned } from '../util/aligned-timer.js'
import { readJoinedBootstrap } from '../mesh/state-files.js'
import type { MeshCache } from './mesh-cache.js'
import type { ReachabilityStatus, ReachState } from '../mesh/reachability.js'

function reachOf(s: ReachState): MemberStatus['reach'] {
  return s === 'unknown' ? null : s
}

/** What the daemon reports about its own work, for the load gossip. */
export interface LocalLoad { running: number; queued: number }

export interface MemberStatus {
  peer_id: string
  name: string
  self: boolean
  version: string
  cores: number
  running: number
  queued: number
  free_slots: number
  load1: number
  speed: number
  toolchains: number
  accept: string
  shim: boolean
  rtt_ms: number | null
  connection: string
  lan: boolean
  /** with no connection: why the last dial failed (while it holds the member out of placement) */
  dial_error: string | null
  /** for a relayed connection: the relay's name (or peer id) */
  relay_via: string | null
  /** a direct connection this node dialed to the member's port mapping on its router */
  mapped: boolean
  /** how other networks reach the member, as it says: public, relayed, unreachable (null: unknown) */
  reach: 'public' | 'relayed' | 'unreachable' | null
  /** it serves as a relay */
  relay: boolean
  /** how long this node keeps sending it no jobs after one failed there */
  held_back_ms: number
  addrs: string[]
  last_seen_ms_ago: number
}

export interface MeshStatus {
  peer_id: string
  mesh_id: string
  name: string
  addresses: string[]
  /** this member's gossipsub mesh forwards messages (while starting or while a member is not directly connected) */
  gossip_forwarding: boolean
  members: MemberStatus[]
  totals: { members: number; cores: number; running: number; queued: number; free_slots: number }
  shim: { capable: boolean; serving_peer: string | null; serving_here: boolean; listen: string | null }
  builder: BuilderStatus
  /** inputs this builder holds by content hash, and the input bytes it has received */
  input_cache: InputCacheStatus
  /** jobs this node sent to each peer */
  jobs_per_peer: Record<string, PeerJobStats>
  /** what this client's remote jobs sent, against their preprocessed size */
  transfer: TransferStats
  toolchain_transfers: ToolchainTransfer[]
  /** remote ends that failed the private-network handshake in the last 10 minutes: probably another mesh key */
  refused_peers: Array<{ addr: string; direction: 'inbound' | 'outbound'; count: number; last: string }>
  /** addresses where a peer answered with this node's own identity (a cloned machine, a copied identity.key) */
  identity_clashes: string[]
  /** how other networks reach this node, with the relays it holds a slot on (by name) */
  reachability: ReachabilityStatus
}

export interface ToolchainTransfer { hash: string; peer: string; direction: 'sent' | 'received'; bytes: number; ms: number; at: string }

/**
 * MESHCC_SHARED_LINK_MS and MESHCC_SHARED_BUDGET_MS: the RTT above which the shared cache asks no
 * member (default 50 ms) and the longest a lookup waits for an answer (default 400 ms). A loaded
 * machine measures 100 ms and more on loopback, so tests of daemons on one host raise both.
 */
function linkTuning(log: Logger): { goodLinkRttMs?: number; maxBudgetMs?: number } {
  const ms = (name: string): number | undefined => {
    const text = process.env[name]
    if (text === undefined) return undefined
    const n = Number(text)
    if (Number.isFinite(n) && n > 0) return n
    log.warn(`${name}="${text.slice(0, 40)}" is not a positive number of milliseconds; ignored`)
    return undefined
  }
  const goodLinkRttMs = ms('MESHCC_SHARED_LINK_MS')
  const maxBudgetMs = ms('MESHCC_SHARED_BUDGET_MS')
  return { ...(goodLinkRttMs ? { goodLinkRttMs } : {}), ...(maxBudgetMs ? { maxBudgetMs } : {}) }
}

/** A relative CPU speed figure: how fast this machine hashes a fixed buffer (higher is faster). */
function measureSpeed(): number {
  const buf = Buffer.alloc(4 * 1024 * 1024, 7)
  const t0 = performance.now()
  for (let i = 0; i < 4; i++) createHash('sha256').update(buf).digest()
  const ms = Math.max(0.1, performance.now() - t0)
  return Math.round((16 / ms) * 1000) / 10 // MiB per ms ×100, one decimal
}

export class MeshService {
  private shimServer: ShimServer | null = null
  private shimStarting: Promise<void> | null = null
  private servingPeer: string | null = null
  private unsubscribe: (() => void) | null = null
  private readonly stopTimers: Array<() => void> = []

  private readonly transfers: ToolchainTransfer[] = []
  /** the mesh as a shared cache ([cache] shared), for the compile pipeline: lookup, publish, stats */
  meshCache: MeshCache | null = null

  private constructor(private readonly mesh: Mesh, private readonly config: Config, private readonly log: Logger,
    readonly builder: Builder, readonly runner: MeshRemoteRunner, private readonly toolchains: ToolchainCache, private readonly inputs: MemoryInputCache) {}

  private recordTransfer(t: Omit<ToolchainTransfer, 'at'>): void {
    this.transfers.push({ ...t, at: new Date().toISOString() })
    if (this.transfers.length > 20) this.transfers.shift()
  }

  /** Start the mesh, or return null (logged) when it is disabled or has no key yet. */
  static async start(config: Config, log: Logger, version: string, local: () => LocalLoad, stats: Stats): Promise<MeshService | null> {
    if (!config.mesh.enabled) {
      log.info('mesh disabled in config ([mesh] enabled = false): local cache only')
      return null
    }
    if (!existsSync(config.mesh.keyFile)) {
      log.info(`no mesh key at ${config.mesh.keyFile}: local cache only (create a mesh with "meshcc mesh init", or join one with "meshcc mesh join <invite>")`)
      return null
    }
    const { startMesh } = await import('../mesh/index.js')
    const { ToolchainCache } = await import('../toolchain/cache.js')
    const { serveCompileJobs } = await import('../mesh/protocols/compile-job.js')
    const { fetchToolchain, serveToolchains } = await import('../mesh/protocols/toolchain-fetch.js')
    const speed = config.build.speed > 0 ? config.build.speed : measureSpeed()
    const cores = config.build.cores
    const toolchains = new ToolchainCache({ dir: join(config.cache.dir, 'toolchains'), maxBytes: config.build.toolchainCacheSize, log: log.child('toolchains') })
    await toolchains.open()
    // the builder and runner need the mesh, and the mesh's load gossip needs them: filled in below
    let builder: Builder | null = null
    let runner: MeshRemoteRunner | null = null
    let packed: string[] = []
    const meshConfig: Config = { ...config, mesh: { ...config.mesh, bootstrap: [...new Set([...config.mesh.bootstrap, ...readJoinedBootstrap(config)])] } }
    const mesh = await startMesh({
      config: meshConfig,
      log: log.child('mesh'),
      version,
      getLoad: () => {
        const l = local()
        return {
          cores, running: l.running + (builder?.running ?? 0), queued: l.queued, freeSlots: builder?.freeSlots() ?? 0,
          load1: Math.round(loadavg()[0] * 100) / 100, speed, toolchains: [...new Set([...toolchains.list(), ...packed])].slice(0, 32),
          accept: builder?.acceptPolicy() ?? 'never', shim: config.shim.enabled,
          sharesCache: config.cache.shared && config.cache.sharedSize > 0
        }
      }
    })
    const fetchLimit = Math.min(config.build.toolchainCacheSize, 4 * 1024 ** 3)
    let svc: MeshService | null = null
    builder = new Builder({
      config, log: log.child('builder'), toolchains,
      fetchToolchain: async (peer, hash) => {
        const t0 = Date.now()
        const file = toolchains.receivePath()
        const bytes = await fetchToolchain(mesh.libp2p, mesh.meshId, peer, hash, fetchLimit, file, AbortSignal.timeout(600_000))
        svc?.recordTransfer({ hash, peer, direction: 'received', bytes, ms: Date.now() - t0 })
        return { file, bytes }
      },
      findToolchainHolders: (hash) => mesh.findToolchainProviders(hash, 3000),
      isAllowed: (peer) => mesh.isAllowed(peer),
      onLoadChange: () => mesh.notifyLoadChanged(),
      keepOutputs: () => svc?.meshCache?.holdsForOthers === true
    })
    await builder.cleanStaleJobs()
    await builder.init()
    runner = new MeshRemoteRunner({ mesh, config, log: log.child('remote'), stats, toolchainDir: join(config.cache.dir, 'toolchains-packed') })
    const r = runner
    const onProtocolError = (what: string) => (peer: string, err: Error) => log.warn(`${what} with ${peer}: ${err.message.split('\n')[0]}`)
    const inputs = new MemoryInputCache()
    await serveCompileJobs(mesh.libp2p, mesh.meshId, builder, inputs, onProtocolError('compile job'), { maxStreamsPerPeer: 2 * cores + 2 })
    await serveToolchains(mesh.libp2p, mesh.meshId, async (hash) => {
      const path = (await r.archivePath(hash)) ?? toolchains.archivePath(hash)
      if (path) log.info(`sending toolchain ${hash.slice(0, 12)}`)
      return path
    }, onProtocolError('toolchain transfer'), (sent) => svc?.recordTransfer({ ...sent, direction: 'sent' }))
    const refreshPacked = everyAligned(2000, () => { void r.heldToolchains().then((h) => { packed = h }) }, { unref: true })
    svc = new MeshService(mesh, config, log, builder, runner, toolchains, inputs)
    await svc.restartMeshCache()
    svc.stopTimers.push(() => refreshPacked.stop(), () => inputs.stop(), () => r.stop())
    log.info(`mesh ${mesh.meshId}: peer ${mesh.peerId} listening on ${mesh.addresses().join(' ')}`)
    if (config.shim.enabled) {
      svc.unsubscribe = mesh.on('members', (m) => svc.electShim(m))
      svc.electShim(mesh.members())
    }
    return svc
  }

  /**
   * (Re)start the mesh as a shared cache from the config as it is now ([cache] shared,
   * shared_size, trust; a reload changes them): the old one stops serving first.
   */
  async restartMeshCache(): Promise<void> {
    const old = this.meshCache
    this.meshCache = null
    await old?.stop()
    if (this.config.cache.shared) {
      // a bad [cache] trust entry costs the shared cache, not the mesh
      this.meshCache = await (await import('./mesh-cache.js')).startMeshCache(this.config, this.mesh, this.log.child('shared'), { ...linkTuning(this.log), kept: this.builder.kept })
        .catch((err: Error) => { this.log.error(`shared cache not started: ${err.message}`); return null })
    }
    this.mesh.notifyLoadChanged()
  }

  /** The daemon's load changed (a job started or ended): tell the mesh now. */
  loadChanged(): void {
    this.mesh.notifyLoadChanged()
  }

  private electShim(members: MeshMember[]): void {
    const winner = electShimServer(members.filter((m) => m.load.shim).map((m) => ({ peerId: m.peerId, shim: true, lastSeen: m.lastSeen })))
    if (winner !== this.servingPeer) this.log.info(`sccache shim served by ${winner === this.mesh.peerId ? 'this node' : winner ?? 'nobody'}`)
    this.servingPeer = winner
    if (winner === this.mesh.peerId) void this.startShim()
    else void this.stopShim()
  }

  private async startShim(): Promise<void> {
    if (this.shimServer || this.shimStarting) return
    this.shimStarting = (async () => {
      const { startShimServer } = await import('../shim/server.js')
      try {
        this.shimServer = await startShimServer({ listen: this.config.shim.listen, log: this.log.child('shim'), getStatus: () => this.schedulerStatus() })
        this.log.info(`sccache scheduler shim listening on http://${this.shimServer.address}/`)
      } catch (err) {
        this.log.error(`cannot serve the sccache shim on ${this.config.shim.listen}: ${(err as Error).message}`)
      }
    })().finally(() => { this.shimStarting = null })
  }

  private async stopShim(): Promise<void> {
    await this.shimStarting
    const s = this.shimServer
    this.shimServer = null
    if (s) {
      await s.close()
      this.log.info('sccache shim stopped: another node serves it')
    }
  }

  /** Mesh-wide numbers in the shape of sccache's scheduler status. */
  schedulerStatus(): { numServers: number; numCpus: number; inProgress: number } {
    const t = this.status().totals
    return { numServers: t.members, numCpus: t.cores, inProgress: t.running }
  }

  addresses(): string[] {
    return this.mesh.addresses()
  }

  status(): MeshStatus {
    const now = Date.now()
    const list = this.mesh.members()
    const names = new Map(list.map((m) => [m.peerId, m.load.name || m.peerId]))
    const members: MemberStatus[] = list.map((m) => ({
      peer_id: m.peerId, name: m.load.name, self: m.self, version: m.load.version,
      cores: m.load.cores, running: m.load.running, queued: m.load.queued, free_slots: m.load.freeSlots,
      load1: m.load.load1, speed: m.load.speed, toolchains: m.load.toolchains.length, accept: m.load.accept,
      shim: m.load.shim, rtt_ms: m.rttMs, connection: m.connection, lan: m.lan, dial_error: m.dialError,
      relay_via: m.relayVia === null ? null : names.get(m.relayVia) ?? m.relayVia, mapped: m.mapped,
      reach: m.self ? reachOf(this.mesh.reachability().state) : m.load.reach === 'p' || m.load.reach === 'm' ? 'public' : m.load.reach === 'r' ? 'relayed' : m.load.reach === 'u' ? 'unreachable' : null,
      relay: m.load.relay === true, held_back_ms: this.runner.heldBackMs(m.peerId), addrs: m.addrs,
      last_seen_ms_ago: Math.max(0, now - m.lastSeen)
    }))
    const sum = (f: (m: MemberStatus) => number) => members.reduce((n, m) => n + f(m), 0)
    const self = members.find((m) => m.self)
    return {
      peer_id: this.mesh.peerId,
      mesh_id: this.mesh.meshId,
      name: self?.name ?? '',
      addresses: this.mesh.addresses(),
      gossip_forwarding: this.mesh.gossipForwarding(),
      members,
      totals: { members: members.length, cores: sum((m) => m.cores), running: sum((m) => m.running), queued: sum((m) => m.queued), free_slots: sum((m) => m.free_slots) },
      shim: { capable: this.config.shim.enabled, serving_peer: this.servingPeer, serving_here: this.shimServer !== null, listen: this.shimServer?.address ?? null },
      builder: this.builder.status(),
      input_cache: this.inputs.status(),
      jobs_per_peer: this.runner.jobsPerPeer(),
      transfer: this.runner.transferStats(),
      toolchain_transfers: [...this.transfers],
      refused_peers: this.mesh.refusedPeers().map((r) => ({ addr: r.addr, direction: r.direction, count: r.count, last: new Date(r.last).toISOString() })),
      identity_clashes: this.mesh.identityClashes(),
      reachability: (() => { const r = this.mesh.reachability(); return { ...r, relays: r.relays.map((id) => names.get(id) ?? id) } })()
    }
  }

  async stop(): Promise<void> {
    for (const t of this.stopTimers) t()
    this.unsubscribe?.()
    await this.stopShim()
    await this.meshCache?.stop()
    await this.mesh.stop()
    await this.toolchains.close()
  }
}
