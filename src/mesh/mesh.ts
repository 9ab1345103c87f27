// The one object the daemon uses: starts the libp2p node, dials bootstrap and discovered peers,
// runs the gossip load view, measures RTTs and announces capabilities in the DHT.
import './patches/promise-with-resolvers.js' // before any libp2p code runs
import { hostname } from 'node:os'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { peerIdOf } from './peer-ids.js'
import type { Connection, Libp2p, PeerId, PeerInfo } from '@libp2p/interface'
import { DEFAULT_MESH_LISTEN, type Config } from '../config.js'
import { MAX_STORED_ADDRS, mergeStoredPeers, readListenPorts, readStoredPeers, writeListenPorts, writeStoredPeers, type StoredPeer } from './state-files.js'
import type { Logger } from '../log.js'
import { MeshError } from './errors.js'
import { readMeshKey, meshIdFromKey, loadOrCreateIdentity } from './keys.js'
import { createMeshNode, type MeshLibp2p, type MeshServices } from './node.js'
import { Connector, errText, hostOf, hostPort, isLoopbackAddr, type RefusedPeer } from './connector.js'
import { Advertiser, platformCapability } from './dht-ads.js'
import { ForwardingControl } from './forwarding.js'
import { GossipRepair } from './gossip-repair.js'
import { loadTopic } from './protocols/load-gossip.js'
import { exchangeMembers, memberExchangeProtocol, serveMemberExchange, type MemberInfo } from './protocols/member-exchange.js'
import { LoadView, DEFAULT_GOSSIP_INTERVAL_MS, MAX_GOSSIP_INTERVAL_MS, MIN_GOSSIP_INTERVAL_MS, defaultExpiryMs, type LoadInfo } from './load-view.js'
import { everyAligned } from '../util/aligned-timer.js'
import { KeepAlive } from './keepalive.js'
import { SETTLED_MAX_WAIT_MS, SETTLED_QUIET_MS } from './dht-startup.js'
import { isPublicAddr, isRelayedAddr, localSubnets, onSubnets, orderForOutsiders } from './addresses.js'
import { Reachability, type ReachabilityStatus } from './reachability.js'
import { serveDialBack } from './protocols/dial-back.js'
import { PortMapper } from './port-mapping.js'

export type { LoadInfo } from './load-view.js'
export { MeshError } from './errors.js'
export { platformCapability } from './dht-ads.js'

export interface MeshMember {
  peerId: string
  self: boolean
  addrs: string[]
  load: LoadInfo
  /** ms epoch, local clock; now for self */
  lastSeen: number
  rttMs: number | null
  connection: 'self' | 'direct' | 'relayed' | 'none'
  /** discovered via mDNS, or connected over a private/loopback address */
  lan: boolean
  /** with no connection: whether a dial is likely to work (no recent failure, an address to try); true when connected */
  dialable: boolean
  /** with no connection: why the last dial failed, while that failure holds it back */
  dialError: string | null
  /** for a relayed connection: the relay's peer id */
  relayVia: string | null
  /** a direct connection this node dialed to the member's port mapping (it says rc 'm') */
  mapped: boolean
}

export interface MeshOptions {
  config: Config
  log: Logger
  version: string
  getLoad: () => Omit<LoadInfo, 'version' | 'name'>
  /** the platform record is announced in the DHT once no new connection opened for this long (default SETTLED_QUIET_MS; tests shorten it) */
  dhtStartupMs?: number
  /** load gossip interval, default 2000, clamped to 100..2000 */
  gossipIntervalMs?: number
  /** a member silent this long leaves the view; default 3 intervals + 2 s */
  expiryMs?: number
  /** how often RTTs are read from the keep-alive's pings (keepalive.ts; connections it has not measured are pinged), default 5000 */
  rttIntervalMs?: number
  /** how often gossipsub's peers are checked against the open connections (gossip-repair.ts), default 5000 */
  repairIntervalMs?: number
  /** keep the listen ports and the members' addresses beside the config across restarts (state-files.ts); default true */
  persistState?: boolean
}

export type MembersListener = (members: MeshMember[]) => void

export interface Mesh {
  readonly peerId: string
  readonly meshId: string
  /** dialable multiaddrs ending in /p2p/<id> (real ports when listening on port 0) */
  addresses(): string[]
  /** live view including self, sorted by peerId */
  members(): MeshMember[]
  /** publish our load now (rate-limited to one extra message per 100 ms) */
  notifyLoadChanged(): void
  /**
   * Called with the full member list whenever it changes (join, leave, new load, RTT),
   * coalesced to at most one call per 100 ms. Returns a function that unsubscribes.
   */
  on(event: 'members', fn: MembersListener): () => void
  provideCapability(name: string): Promise<void>
  provideToolchain(hash: string): Promise<void>
  /** peer ids holding the toolchain: DHT providers plus members whose gossip lists it */
  findToolchainProviders(hash: string, timeoutMs?: number): Promise<string[]>
  findCapabilityProviders(name: string, timeoutMs?: number): Promise<string[]>
  /** whether our gossipsub mesh forwards messages now (forwarding.ts) */
  gossipForwarding(): boolean
  /** is this peer allowed to submit jobs / read the cache ([mesh] allow; empty = everyone) */
  isAllowed(peerId: string): boolean
  /** remote ends that failed the private-network handshake lately: probably another mesh key */
  refusedPeers(): RefusedPeer[]
  /** how other networks reach this node (reachability.ts) */
  reachability(): ReachabilityStatus
  /** addresses where a peer answered with this node's own identity (a cloned machine, a copied identity.key) */
  identityClashes(): string[]
  readonly libp2p: Libp2p<MeshServices>
  stop(): Promise<void>
}

const DEFAULT_FIND_TIMEOUT_MS = 5000
const EMIT_GAP_MS = 100
const ADDRESS_CACHE_MS = 5000
const PING_TIMEOUT_MS = 2000
const MAX_PINGS_PER_ROUND = 64
/** a member that went silent in the view is pinged on each connection with this timeout (keepalive.ts) */
const SILENT_PROBE_MS = 3000
/** a direct link this near counts as LAN (a switched LAN: well under 1 ms; Wi-Fi: a few ms) */
const LAN_RTT_MS = 3
const SUBNETS_REFRESH_MS = 30_000
/** mesh-peers.json is rewritten this long after the members' addresses changed, at most this often */
const PEERS_WRITE_DELAY_MS = 2000
const PEERS_WRITE_GAP_MS = 10_000
const MAX_IDENTITY_CLASHES = 16
/** both ends of a dial to ourselves show our identity within this long of each other */
const SELF_DIAL_PAIR_MS = 2000

export async function startMesh(opts: MeshOptions): Promise<Mesh> {
  const { config, version } = opts
  const log = opts.log
  const mc = config.mesh
  if (!mc.enabled) throw new MeshError('the mesh is disabled ([mesh] enabled = false)')

  const psk = readMeshKey(mc.keyFile)
  const meshId = meshIdFromKey(psk)
  const privateKey = await loadOrCreateIdentity(mc.identityFile)

  const deny = new Set(mc.deny.map((p) => checkPeerId(p, 'deny')))
  const allow = new Set(mc.allow.map((p) => checkPeerId(p, 'allow')))
  const isDenied = (id: string) => deny.has(id)
  const bootstrap: Multiaddr[] = mc.bootstrap.map((a) => {
    try { return multiaddr(a) } catch { throw new MeshError(`${where(config)}[mesh] bootstrap: "${a}" is not a valid multiaddr (expected e.g. /ip4/192.168.1.10/tcp/10650/p2p/12D3Koo...)`) }
  })
  if (mc.listen.length === 0) throw new MeshError(`${where(config)}[mesh] listen is empty: the mesh needs at least one address to listen on`)
  for (const a of mc.listen) {
    try { multiaddr(a) } catch { throw new MeshError(`${where(config)}[mesh] listen: "${a}" is not a valid multiaddr (expected e.g. /ip4/0.0.0.0/tcp/10650)`) }
  }

  const intervalMs = clamp(opts.gossipIntervalMs ?? DEFAULT_GOSSIP_INTERVAL_MS, MIN_GOSSIP_INTERVAL_MS, MAX_GOSSIP_INTERVAL_MS)
  const expiryMs = Math.max(intervalMs + 50, opts.expiryMs ?? defaultExpiryMs(intervalMs))
  const rttIntervalMs = Math.max(500, opts.rttIntervalMs ?? 5000)
  const repairIntervalMs = Math.max(500, opts.repairIntervalMs ?? 5000)

  const mdnsPeers = new Set<string>()
  let connector: Connector | null = null
  const clashes = new Set<string>()
  let ownAddrs = new Set<string>()
  const selfEnds: Array<{ direction: 'inbound' | 'outbound'; at: number; paired: boolean }> = []
  // A handshake that showed our own identity at the other end: a dial to one of our own
  // addresses (a bootstrap list naming every machine, a hairpin NAT), or another machine with
  // a copy of our identity.key. A dial to ourselves shows both ends here within moments; a
  // clone shows one.
  const onSelfIdentity = (addr: string, direction: 'inbound' | 'outbound') => {
    const host = direction === 'inbound' ? hostOf(addr) : addr
    if (direction === 'outbound' ? ownAddrs.has(hostPort(addr)) : ownHosts(ownAddrs).has(host)) return
    const now = Date.now()
    const other = selfEnds.find((e) => e.direction !== direction && !e.paired && now - e.at < SELF_DIAL_PAIR_MS)
    if (other) { other.paired = true; return }
    const end = { direction, at: now, paired: false }
    selfEnds.push(end)
    if (selfEnds.length > 64) selfEnds.shift()
    setTimeout(() => {
      if (end.paired || stopped || clashes.has(host) || clashes.size >= MAX_IDENTITY_CLASHES) return
      clashes.add(host)
      log.error(`peer at ${host} has this node's own identity: a cloned machine or a copied identity.key? delete identity.key on one of them (${mc.identityFile} here) and restart its daemon`)
    }, SELF_DIAL_PAIR_MS).unref()
  }
  const persist = opts.persistState ?? true
  const selfId = peerIdFromPrivateKey(privateKey).toString()
  const t0 = Date.now()
  const remembered = persist ? readListenPorts(config, selfId) : {}
  const node: MeshLibp2p = await startListening(mc.listen, remembered, log, (listen) => createMeshNode({
    privateKey,
    psk,
    meshId,
    listen,
    mdns: mc.mdns,
    dht: mc.dht,
    announce: mc.announce,
    relay: mc.relay && mc.relayMaxReservations > 0 ? { maxReservations: mc.relayMaxReservations, rate: mc.relayRate } : null,
    isDenied,
    log,
    onMdnsPeer: (id) => { if (mdnsPeers.size < 10_000) mdnsPeers.add(id) },
    onHandshakeFailure: (addr, dir, err) => connector?.reportHandshakeFailure(addr, dir, err),
    onSelfIdentity: (addr, dir) => onSelfIdentity(addr, dir)
  }))
  const self = node.peerId.toString()
  ownAddrs = new Set(node.getMultiaddrs().map((m) => hostPort(m.toString())))
  if (persist) rememberListenPorts(config, self, mc.listen, remembered, node, log)
  const stored = persist ? readStoredPeers(config) : []
  const repair = new GossipRepair(node, log, repairIntervalMs)
  const keepAlive = new KeepAlive(node, log)
  connector = new Connector({
    node, log, bootstrap, isDenied, stored,
    // gossipsub's stream may have run over the duplicate we closed: tell it of the one we kept
    // now rather than at the next repair round
    onDuplicateClosed: (peer, kept) => repair.connectionKept(peer, kept)
  })

  // libp2p recomputes its addresses on every call (a good part of a status request, which
  // `meshcc status --watch` and the benchmarks send often): kept until they change, or 5 s
  let addrCache: { at: number; list: string[] } | null = null
  const onSelfUpdate = () => { addrCache = null }
  node.addEventListener('self:peer:update', onSelfUpdate)
  const addresses = (): string[] => {
    if (addrCache && Date.now() - addrCache.at < ADDRESS_CACHE_MS) return [...addrCache.list]
    const all = node.getMultiaddrs().map((m) => m.toString())
    // what a member on another network can use first (member exchange passes on only four):
    // reached from outside or public, then relayed, then LAN; loopback only when alone
    const reached = new Set(reach?.publicAddresses() ?? [])
    addrCache = { at: Date.now(), list: orderForOutsiders(all, (a) => reached.has(a) || isPublicAddr(a)) }
    return [...addrCache.list]
  }

  const listeners = new Set<MembersListener>()
  let emitTimer: NodeJS.Timeout | null = null
  let stopped = false
  // mesh-peers.json (state-files.ts): the members' addresses as the mesh reports them, so that a
  // member that moved is found again at the next start, not only the invite's first contact
  let peersTimer: NodeJS.Timeout | null = null
  let peersWritten = { at: 0, key: '' }
  let peersOnDisk: StoredPeer[] = stored
  const storablePeers = (): StoredPeer[] => {
    const now = Date.now()
    return view.list().map((e) => {
      // a remote host's loopback address would name whatever listens on our own loopback:
      // kept only for a member we reach over loopback, which really is on this host
      const sameHost = node.getConnections(peerIdOf(e.peerId)).some((c) => isLoopbackAddr(c.remoteAddr))
      const addrs = e.addrs.filter((a) => a.length <= 256 && (sameHost || !isLoopback(a)))
      return { peerId: e.peerId, addrs: addrs.slice(0, MAX_STORED_ADDRS), seen: now }
    }).filter((p) => p.addrs.length > 0)
  }
  const writePeers = () => {
    peersTimer = null
    if (!persist) return
    const live = storablePeers()
    const key = JSON.stringify(live.map((p) => [p.peerId, p.addrs]).sort())
    if (live.length === 0 || (key === peersWritten.key && Date.now() - peersWritten.at < 3600_000)) return
    const next = mergeStoredPeers(live, peersOnDisk, self)
    peersWritten = { at: Date.now(), key }
    peersOnDisk = next
    writeStoredPeers(config, next).catch((err) => log.warn(`cannot write the members' addresses beside the config: ${errText(err)}`))
  }
  const peersChanged = () => {
    if (stopped || peersTimer || !persist) return
    peersTimer = setTimeout(writePeers, Math.max(PEERS_WRITE_DELAY_MS, peersWritten.at + PEERS_WRITE_GAP_MS - Date.now()))
    peersTimer.unref()
  }
  const changed = () => {
    peersChanged()
    if (stopped || emitTimer || listeners.size === 0) return
    emitTimer = setTimeout(() => {
      emitTimer = null
      const list = members()
      for (const fn of listeners) {
        try { fn(list) } catch (err) { log.error(`members listener threw: ${errText(err)}`) }
      }
    }, EMIT_GAP_MS)
  }

  // Some member we know of is reached only through others, or could not be dialed. For turning
  // our own forwarding on (ForwardingControl), a member we are about to connect to does not
  // count: while many members start at once nearly every member has such a dial pending, and
  // forwarding for all of them cost more CPU than the dials (npm run bench:mesh, convergence
  // phase). What our load messages ask of the members connected to us (fw) counts it, though: a
  // peer that stops forwarding prunes every member that does not ask, and if the dial then
  // fails, gossipsub's prune backoff keeps us from grafting that peer again for a minute.
  const someoneIndirect = (pendingCounts: boolean): boolean => {
    for (const e of view.list()) {
      if (connectionKind(e.peerId).kind === 'direct') continue
      if (pendingCounts || !(connector?.connecting(e.peerId) ?? false)) return true
    }
    return connector?.someoneUnreachable() ?? false
  }
  let reach: Reachability | null = null
  const view: LoadView = new LoadView({
    node,
    meshId,
    log,
    name: mc.name !== '' ? mc.name : hostname(),
    version,
    getLoad: () => {
      const code = reach?.code()
      return { ...opts.getLoad(), ...(code ? { reach: code } : {}), ...(node.services.relay && code === 'p' ? { relay: true } : {}) }
    },
    getAddrs: addresses,
    isDenied,
    intervalMs,
    expiryMs,
    onMessage: (id, addrs) => connector?.consider(id, addrs, 'gossip'),
    onChange: changed,
    wantsForwarding: () => someoneIndirect(true),
    // a member we are connecting to may not be forwarded to us meanwhile (see someoneIndirect):
    // its connection brings its load, or the failed dial lets it expire
    keepSilent: (id) => connector?.connecting(id) ?? false,
    // a member gone silent while connected: its link may have died without a FIN (power,
    // cable, Wi-Fi); a short ping tells, where the keep-alive would wait a minute and a half
    onSilent: (id) => keepAlive.probe(peerIdOf(id), SILENT_PROBE_MS)
  })

  const rtts = new Map<string, number>()
  // "LAN" is measured, not read off an address range: a member found by mDNS, connected from
  // one of this machine's own subnets, or near (a direct link with a LAN's round-trip time). A
  // 10.x address across a VPN or a provider's NAT is not a LAN.
  let subnets = { at: 0, list: localSubnets() }
  const nearConns = new WeakMap<Connection, boolean>()
  const nearConn = (c: Connection): boolean => {
    let p = nearConns.get(c)
    if (p === undefined) {
      if (Date.now() - subnets.at > SUBNETS_REFRESH_MS) subnets = { at: Date.now(), list: localSubnets() }
      p = onSubnets(c.remoteAddr, subnets.list)
      nearConns.set(c, p)
    }
    return p
  }
  const connectionKind = (id: string): { kind: MeshMember['connection']; lan: boolean } => {
    const conns = node.getConnections(peerIdOf(id)).filter((c) => c.status === 'open')
    const direct = (c: Connection) => c.limits == null && !isRelayedAddr(c.remoteAddr)
    const rtt = rtts.get(id)
    const lan = mdnsPeers.has(id) || conns.some((c) => direct(c) && nearConn(c)) || (rtt !== undefined && rtt < LAN_RTT_MS && conns.some(direct))
    if (conns.length === 0) return { kind: 'none', lan }
    return { kind: conns.some(direct) ? 'direct' : 'relayed', lan }
  }

  const relayOf = (id: string): string | null => {
    const c = node.getConnections(peerIdOf(id)).find((x) => isRelayedAddr(x.remoteAddr.toString()))
    return c ? /\/p2p\/([^/]+)\/p2p-circuit/.exec(c.remoteAddr.toString())?.[1] ?? null : null
  }
  // a direct connection we dialed to one of the member's public addresses (its mapped one, when it says it is mapped)
  const dialedPublic = (id: string, addrs: string[]): boolean => {
    const bare = new Set(addrs.map((a) => a.replace(/\/p2p\/[^/]+$/, '')).filter(isPublicAddr))
    return node.getConnections(peerIdOf(id)).some((c) => c.status === 'open' && c.direction === 'outbound' && c.limits == null && bare.has(c.remoteAddr.toString().replace(/\/p2p\/[^/]+$/, '')))
  }
  const members = (): MeshMember[] => {
    const now = Date.now()
    const list: MeshMember[] = [{
      peerId: self, self: true, addrs: addresses(), load: view.selfLoad(), lastSeen: now, rttMs: 0, connection: 'self', lan: true, dialable: true, dialError: null, relayVia: null, mapped: false
    }]
    for (const e of view.list()) {
      const { kind, lan } = connectionKind(e.peerId)
      const failed = kind === 'none' ? connector?.dialFailure(e.peerId) ?? null : null
      list.push({
        peerId: e.peerId, self: false, addrs: e.addrs, load: e.load, lastSeen: e.lastSeen, rttMs: rtts.get(e.peerId) ?? null, connection: kind, lan,
        dialable: kind !== 'none' || (failed === null && e.addrs.length > 0), dialError: failed,
        relayVia: kind === 'relayed' ? relayOf(e.peerId) : null,
        mapped: kind === 'direct' && e.load.reach === 'm' && dialedPublic(e.peerId, e.addrs)
      })
    }
    return list.sort((a, b) => (a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0))
  }

  // RTT: keepalive.ts pings every connection (yamux, one frame each way) when it opens and then
  // every 30 s. We ping (ping protocol) only connections it has not measured, so a new member
  // shows an RTT within a second.
  let pinging = false
  const pingRound = async () => {
    if (pinging || stopped) return
    pinging = true
    try {
      const live = new Set<string>()
      for (const e of view.list().slice(0, MAX_PINGS_PER_ROUND)) {
        if (stopped) break
        live.add(e.peerId)
        const conns = node.getConnections(peerIdOf(e.peerId)).filter((c) => c.status === 'open')
        if (conns.length === 0) { rtts.delete(e.peerId); continue }
        const measured = conns.map(rttOf).filter((r): r is number => r !== null)
        if (measured.length > 0) {
          rtts.set(e.peerId, Math.round(Math.min(...measured) * 10) / 10)
          continue
        }
        if (rtts.has(e.peerId)) continue
        try {
          const ms = await node.services.ping.ping(conns[0]!.remotePeer, { signal: AbortSignal.timeout(PING_TIMEOUT_MS) })
          rtts.set(e.peerId, Math.round(ms * 10) / 10)
        } catch (err) {
          log.debug(`ping ${e.peerId} failed: ${errText(err)}`)
        }
      }
      for (const id of rtts.keys()) if (!live.has(id)) rtts.delete(id)
      changed()
    } finally {
      pinging = false
    }
  }

  const onDiscovery = (evt: CustomEvent<PeerInfo>) => {
    const id = evt.detail.id.toString()
    connector?.consider(id, evt.detail.multiaddrs, mdnsPeers.has(id) ? 'mdns' : 'dht')
  }
  node.addEventListener('peer:discovery', onDiscovery)
  // Member exchange (protocols/member-exchange.ts): the dialer of each new connection swaps
  // "who I am, whom I know" with the other end, so a newcomer meets the whole mesh at once.
  const ourInfo = (): MemberInfo => ({ load: view.ownMessage(), members: view.list().map((e) => ({ peerId: e.peerId, addrs: e.addrs })) })
  const onInfo = (peer: string, info: MemberInfo) => {
    if (stopped || isDenied(peer)) return
    view.acceptDirect(peer, info.load)
    for (const m of info.members) connector?.consider(m.peerId, m.addrs, 'exchange')
  }
  await serveMemberExchange(node, meshId, ourInfo, onInfo, (peer, err) => log.debug(`member exchange with ${peer} failed: ${errText(err)}`))
  const onOpen = (evt: CustomEvent<Connection>) => {
    const conn = evt.detail
    if (conn.direction !== 'outbound' || stopped) return
    const peer = conn.remotePeer.toString()
    void (async () => {
      try {
        const stream = await conn.newStream(memberExchangeProtocol(meshId), { signal: AbortSignal.timeout(10_000) })
        onInfo(peer, await exchangeMembers(stream, ourInfo()))
      } catch (err) {
        if (!stopped) log.debug(`member exchange with ${peer} failed: ${errText(err)}`)
      }
    })()
  }
  node.addEventListener('connection:open', onOpen)
  const onDisconnect = (evt: CustomEvent<PeerId>) => {
    if (node.getConnections(evt.detail).length !== 0) return
    const id = evt.detail.toString()
    const last = view.get(id)?.addrs ?? []
    view.forget(id, 'disconnected')
    // It may be alive behind another path: a relayed link whose relay died, while both sides
    // hold a slot on another relay. Nobody would tell us: in a mesh where every member we know
    // is directly connected, nobody forwards its messages (forwarding.ts), so it would stay out
    // of this view for good. One dial to its last addresses finds out (a member that died
    // costs one refused dial).
    if (!stopped && last.length > 0) connector?.consider(id, last, 'lost')
  }
  node.addEventListener('peer:disconnect', onDisconnect)

  await serveDialBack(node, meshId, (peer, err) => log.debug(`dial-back for ${peer} failed: ${errText(err)}`))
  const reachChanged = () => { addrCache = null; view.notifyLoadChanged(); changed() }
  const portMapper = new PortMapper(node, log.child('portmap'), mc.portMapping, reachChanged)
  reach = new Reachability(node, meshId, log.child('reach'),
    () => view.list().map((e) => ({ peerId: e.peerId, reach: e.load.reach, relay: e.load.relay === true, addrs: e.addrs })),
    mc.relayClient, portMapper, reachChanged)
  const ads = new Advertiser(node, meshId, log)
  const forwarding = new ForwardingControl(node.services.pubsub, loadTopic(meshId), () => someoneIndirect(false),
    (id) => view.get(id)?.wantsForwarding ?? true, log)
  keepAlive.start()
  keepAlive.round() // connections opened before we listened
  view.start()
  forwarding.start()
  repair.start()
  connector.start()
  ads.start()
  reach.start()
  ads.provideWhenSettled(platformCapability(), opts.dhtStartupMs ?? SETTLED_QUIET_MS, SETTLED_MAX_WAIT_MS)
  const firstPing = setTimeout(() => { void pingRound() }, Math.min(1000, rttIntervalMs))
  const pingTimer = everyAligned(rttIntervalMs, () => { void pingRound() }, { unref: true })

  log.info(`mesh ${meshId} started as ${self} in ${Date.now() - t0} ms, listening on ${addresses().join(' ') || '(nothing)'}${mc.mdns ? ', mDNS on' : ''}${mc.dht ? ', DHT on' : ''}`)

  return {
    peerId: self,
    meshId,
    addresses,
    members,
    notifyLoadChanged: () => view.notifyLoadChanged(),
    on(event, fn) {
      if (event !== 'members') throw new TypeError(`unknown mesh event ${String(event)}`)
      listeners.add(fn)
      return () => { listeners.delete(fn) }
    },
    provideCapability: (name) => ads.provide(name),
    provideToolchain: (hash) => ads.provide(`toolchain:${hash}`),
    async findToolchainProviders(hash, timeoutMs = DEFAULT_FIND_TIMEOUT_MS) {
      const found = new Set(await ads.find(`toolchain:${hash}`, timeoutMs))
      for (const e of view.list()) if (e.load.toolchains.includes(hash)) found.add(e.peerId)
      if (view.selfLoad().toolchains.includes(hash)) found.add(self)
      return [...found].sort()
    },
    findCapabilityProviders: (name, timeoutMs = DEFAULT_FIND_TIMEOUT_MS) => ads.find(name, timeoutMs),
    gossipForwarding: () => forwarding.active,
    isAllowed: (id) => !deny.has(id) && (allow.size === 0 || allow.has(id) || id === self),
    refusedPeers: () => connector?.refusedPeers() ?? [],
    reachability: () => reach!.status(),
    identityClashes: () => [...clashes],
    libp2p: node,
    async stop() {
      if (stopped) return
      stopped = true
      listeners.clear()
      if (emitTimer) clearTimeout(emitTimer)
      if (peersTimer) { clearTimeout(peersTimer); writePeers() }
      clearTimeout(firstPing)
      pingTimer.stop()
      keepAlive.stop()
      forwarding.stop()
      repair.stop()
      node.removeEventListener('peer:discovery', onDiscovery)
      node.removeEventListener('peer:disconnect', onDisconnect)
      node.removeEventListener('connection:open', onOpen)
      node.removeEventListener('self:peer:update', onSelfUpdate)
      connector?.stop()
      reach?.stop()
      await portMapper.stop()
      ads.stop()
      await view.stop()
      await node.stop()
      log.info('mesh stopped')
    }
  }
}

function checkPeerId(text: string, key: string): string {
  try {
    return peerIdFromString(text).toString()
  } catch {
    throw new MeshError(`[mesh] ${key}: "${text}" is not a peer id (expected e.g. 12D3KooW...)`)
  }
}

function where(config: Config): string {
  return config.file ? `${config.file}: ` : ''
}

function clamp(n: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, Number.isFinite(n) ? n : lo))
}

/**
 * A connection's round-trip time in ms: the keep-alive's yamux ping (keepalive.ts; yamux sets
 * rtt to -1 until the first one returns), else one libp2p recorded on the connection, else null.
 */
export function rttOf(conn: Connection): number | null {
  const muxerRtt = (conn as unknown as { muxer?: { rtt?: unknown } }).muxer?.rtt
  if (typeof muxerRtt === 'number' && Number.isFinite(muxerRtt) && muxerRtt >= 0) return muxerRtt
  return typeof conn.rtt === 'number' && Number.isFinite(conn.rtt) ? conn.rtt : null
}


function isLoopback(addr: string): boolean {
  return addr.startsWith('/ip4/127.') || addr.startsWith('/ip6/::1/')
}

function ownHosts(own: Set<string>): Set<string> {
  return new Set([...own].map((hp) => hp.slice(0, hp.lastIndexOf(':'))))
}

function tcpPort(listen: string): number | null {
  const m = /\/tcp\/(\d+)(?:\/|$)/.exec(listen)
  return m ? Number(m[1]) : null
}

function withPort(listen: string, port: number): string {
  return listen.replace(/\/tcp\/\d+(\/|$)/, `/tcp/${port}$1`)
}

/**
 * Starts the node on the configured addresses, asking first for the ports this daemon had last
 * time where the config leaves the port open (tcp/0): the addresses other members stored then
 * stay good. A remembered port that is taken, or the default port (10650) taken by another
 * program, falls back to any free port; a port the config names explicitly never does.
 */
async function startListening(listen: string[], remembered: Record<string, number>, log: Logger, create: (listen: string[]) => Promise<MeshLibp2p>): Promise<MeshLibp2p> {
  const isDefault = JSON.stringify(listen) === JSON.stringify(DEFAULT_MESH_LISTEN)
  const open = (a: string) => tcpPort(a) === 0 || isDefault
  const attempts: string[][] = [
    listen.map((a) => (tcpPort(a) === 0 && remembered[a] ? withPort(a, remembered[a]) : a)),
    listen.map((a) => (open(a) && remembered[a] ? withPort(a, remembered[a]) : a)),
    listen.map((a) => (open(a) ? withPort(a, 0) : a))
  ].filter((l, i, all) => all.findIndex((x) => JSON.stringify(x) === JSON.stringify(l)) === i)
  for (const [i, attempt] of attempts.entries()) {
    try {
      return await create(attempt)
    } catch (err) {
      if (!(err instanceof MeshError) || err.code !== 'EADDRINUSE' || i === attempts.length - 1) throw err
      log.info(`${attempt.join(', ')}: ${err.message.split(': ').pop()}; trying ${attempts[i + 1].join(', ')}`)
    }
  }
  throw new MeshError('no listen address') // not reached: the last attempt throws or returns
}

/** Stores the ports bound for the listen addresses that may move (tcp/0, or the default), when they changed. */
function rememberListenPorts(config: Config, self: string, listen: string[], remembered: Record<string, number>, node: MeshLibp2p, log: Logger): void {
  const isDefault = JSON.stringify(listen) === JSON.stringify(DEFAULT_MESH_LISTEN)
  const bound = node.getMultiaddrs().map((m) => m.toString())
  const ports: Record<string, number> = {}
  for (const a of listen) {
    if (tcpPort(a) !== 0 && !isDefault) continue
    const [, family, host] = a.split('/')
    const wildcard = host === '0.0.0.0' || host === '::'
    const match = bound.find((b) => b.split('/')[1] === family && (wildcard || b.split('/')[2] === host))
    const port = match ? tcpPort(match) : null
    if (port) ports[a] = port
  }
  if (Object.keys(ports).length === 0 || JSON.stringify(ports) === JSON.stringify(remembered)) return
  try {
    writeListenPorts(config, self, ports)
  } catch (err) {
    log.warn(`cannot remember the listen port beside the config: ${errText(err)}`)
  }
}
