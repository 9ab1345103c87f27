// How other networks reach this node, and what it does about it.
//
// Reachability is asked of members on another network (a direct connection that does not come
// from one of this machine's subnets): each is asked to dial this node's listen addresses back
// (protocols/dial-back.ts). A member on the same LAN proves nothing about a router, and in a
// mesh where every member is on one network nobody is asked: a LAN mesh pays nothing for this.
//
//   public       a member on another network reached a listen address (a server, a port
//                forward, a [mesh] announce address, or a port mapped on the router by
//                port-mapping.ts: then "mapped")
//   relayed      not reachable from outside, and holding reservations on relay members: the
//                relayed addresses are advertised like any other (gossip, member exchange,
//                identify and so the DHT), and members that cannot dial it directly come through
//   unreachable  not reachable, and no relay (said why)
//   unknown      no member on another network to ask (yet)
//
// A node that is not reachable asks its router for a port mapping (port-mapping.ts) and
// reserves slots on RELAYS_WANTED members that say in their load
// messages that they are public and relay (field rc 'p', rl 1), and moves to another when a
// relay leaves. A relayed connection that opens is followed by a direct dial to the other
// side's direct addresses (both sides try): when either side is reachable the job traffic then
// takes the direct connection and the relayed one is closed — the "connection reversal" that
// DCUtR does, without its hole punching, which does not work on Node (README).
import type { Connection, PeerId } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { Logger } from '../log.js'
import type { MeshLibp2p } from './node.js'
import { everyAligned, type AlignedTimer } from '../util/aligned-timer.js'
import { askDialBack, dialBackProtocol } from './protocols/dial-back.js'
import { isIPv6Addr, isLoopbackAddr, isRelayedAddr, localSubnets, onSubnets, withoutLoopback } from './addresses.js'
import { errText } from './connector.js'
import type { PortMapper, PortMappingStatus } from './port-mapping.js'

export type ReachState = 'unknown' | 'public' | 'relayed' | 'unreachable'
/** what a load message says (field rc): public, public through a port mapping, relayed, unreachable */
export type ReachCode = 'p' | 'm' | 'r' | 'u'

export interface ReachabilityStatus {
  state: ReachState
  /** one line: why this state */
  detail: string
  /** listen addresses a member on another network reached */
  public_addresses: string[]
  /** the relay members this node holds a reservation on */
  relays: string[]
  /** relayed connections this node replaced by a direct one it dialed */
  upgraded: number
  /** public through a port mapping on the router: the mapped address, which a member on another network reached */
  mapped: string | null
  /** the port mapping on the router (port-mapping.ts) */
  port_mapping: PortMappingStatus
}

/** What reachability needs to know about the other members (mesh.ts, from the load view). */
export interface ReachMember { peerId: string; reach: ReachCode | undefined; relay: boolean; addrs: string[] }

const TICK_MS = 2000
const RECHECK_MS = 10 * 60_000
/** not reachable: asked again this often (a port forward or mapping may start working later) */
const RECHECK_PRIVATE_MS = 60_000
const RETRY_UNKNOWN_MS = 30_000
/** a check some helper did not answer (busy, failed) and that found nothing public: asked again this soon */
const RETRY_INCOMPLETE_MS = 6_000
const MAX_INCOMPLETE_RETRIES = 3
/** a helper answers one request per peer per 5 s (dial-back.ts MIN_GAP_PER_PEER_MS), "busy" before */
const HELPER_GAP_MS = 5_500
export const RELAYS_WANTED = 2
/** a relay that failed a reservation is not tried again for this long */
const RELAY_FAILURE_HOLD_MS = 20_000
const RESERVE_TIMEOUT_MS = 15_000
const UPGRADE_DELAY_MS = 300
const UPGRADE_DIAL_MS = 4000
const MAX_UPGRADE_ADDRS = 4
/** a relayed connection to a member that says it is reachable is tried directly again this often */
const UPGRADE_RETRY_MS = 15_000

interface TransportManagerLike { listen(addrs: Multiaddr[]): Promise<void> }

export class Reachability {
  private state: 'unknown' | 'public' | 'private' = 'unknown'
  private why = 'not checked yet: no member on another network'
  private publicAddrs: string[] = []
  private checkedAt = 0
  private checkedFor = ''
  /** a check that some helper did not answer is repeated at this time (0: none due) */
  private retryAt = 0
  /** incomplete checks in a row: retried soon at most MAX_INCOMPLETE_RETRIES times, then on the usual schedule */
  private incomplete = 0
  private checking = false
  /** helper -> when it was last asked: asking again within its gap only earns "busy" */
  private readonly askedAt = new Map<string, number>()
  private upgraded = 0
  private readonly relayFailures = new Map<string, number>()
  private readonly reserving = new Set<string>()
  /** peer -> when a direct dial may replace its relayed connection again (retryUpgrades) */
  private readonly upgradeHold = new Map<string, number>()
  private readonly upgrading = new Set<string>()
  private timer: AlignedTimer | null = null
  private stopped = false
  private subnets = { at: 0, list: localSubnets() }

  constructor(
    private readonly node: MeshLibp2p,
    private readonly meshId: string,
    private readonly log: Logger,
    private readonly members: () => ReachMember[],
    /** reserve relay slots when not reachable ([mesh] relay_client) */
    private readonly useRelays: boolean,
    private readonly portMapper: PortMapper,
    private readonly onChange: () => void
  ) {}

  start(): void {
    this.timer = everyAligned(TICK_MS, () => this.tick(), { unref: true })
    this.node.addEventListener('connection:open', this.onOpen)
  }

  stop(): void {
    this.stopped = true
    this.timer?.stop()
    this.node.removeEventListener('connection:open', this.onOpen)
  }

  /** what our load messages say */
  code(): ReachCode | undefined {
    if (this.state === 'public') return this.mappedReached() ? 'm' : 'p'
    if (this.state === 'private') return this.relays().length > 0 ? 'r' : 'u'
    return undefined
  }

  /** the port-mapped address, when a member on another network reached it */
  private mappedReached(): string | null {
    const a = this.portMapper.address()
    return a !== null && this.publicAddrs.some((r) => r.replace(/\/p2p\/[^/]+$/, '') === a) ? a : null
  }

  /** listen addresses that a member on another network reached */
  publicAddresses(): string[] {
    return [...this.publicAddrs]
  }

  status(): ReachabilityStatus {
    const relays = this.relays()
    const state: ReachState = this.state === 'public' ? 'public' : this.state === 'unknown' ? 'unknown' : relays.length > 0 ? 'relayed' : 'unreachable'
    let detail = this.why
    if (this.state === 'private' && relays.length === 0) {
      detail = `${this.why}; ${!this.useRelays ? 'relays are off ([mesh] relay_client = false)' : this.relayCandidates().length === 0 ? 'no reachable member to relay through' : 'reserving a relay slot'}`
    }
    const pm = this.portMapper.status()
    if (this.state === 'private' && (pm.state === 'failed' || pm.state === 'searching')) detail += `; port mapping: ${pm.detail}`
    return { state, detail, public_addresses: this.publicAddresses(), relays, upgraded: this.upgraded, mapped: this.state === 'public' ? this.mappedReached() : null, port_mapping: this.portMapper.status() }
  }

  /** the relays this node holds a reservation on (its advertised relayed addresses name them) */
  relays(): string[] {
    const out = new Set<string>()
    for (const m of this.node.getMultiaddrs()) {
      const s = m.toString()
      if (!isRelayedAddr(s)) continue
      const relay = /\/p2p\/([^/]+)\/p2p-circuit/.exec(s)?.[1]
      if (relay) out.add(relay)
    }
    return [...out]
  }

  private near(addr: Multiaddr): boolean {
    if (Date.now() - this.subnets.at > 30_000) this.subnets = { at: Date.now(), list: localSubnets() }
    return onSubnets(addr, this.subnets.list)
  }

  private directConn(peer: string): Connection | undefined {
    return this.node.getConnections().find((c) => c.remotePeer.toString() === peer && c.status === 'open' && c.limits == null && !isRelayedAddr(c.remoteAddr.toString()))
  }

  /** this node's own direct listen addresses, as a helper would dial them */
  private ownDirectAddrs(): string[] {
    return withoutLoopback(this.node.getMultiaddrs().map((m) => m.toString()).filter((a) => !isRelayedAddr(a)))
  }

  private tick(): void {
    if (this.stopped) return
    const own = this.ownDirectAddrs().filter((a) => !isLoopbackAddr(a))
    const key = own.join(' ')
    const now = Date.now()
    const due = this.state === 'unknown'
      ? now - this.checkedAt > RETRY_UNKNOWN_MS || this.checkedAt === 0
      : now - this.checkedAt > (this.state === 'private' ? RECHECK_PRIVATE_MS : RECHECK_MS) || (this.retryAt > 0 && now >= this.retryAt)
    if (!this.checking && own.length > 0 && (due || key !== this.checkedFor)) void this.check(own, key)
    if (this.state === 'private') {
      this.portMapper.wanted()
      if (this.useRelays) this.keepRelays()
    }
    this.retryUpgrades()
  }

  /**
   * The dial that follows a relayed connection's opening finds nothing to dial when the other
   * side's addresses are not known yet (it joined this node's view a moment later: seen in the
   * NAT lab under load, a NATed member then stayed relayed to a public one for good, and took
   * no relay slot on it). So a member that says it is reachable and is linked only through a
   * relay is dialed directly again, at most every UPGRADE_RETRY_MS.
   */
  private retryUpgrades(): void {
    const now = Date.now()
    const reachable = new Set(this.members().filter((m) => m.reach === 'p' || m.reach === 'm').map((m) => m.peerId))
    for (const c of this.node.getConnections()) {
      const id = c.remotePeer.toString()
      if (!reachable.has(id) || !isRelayedAddr(c.remoteAddr.toString()) || (this.upgradeHold.get(id) ?? 0) > now) continue
      if (this.directConn(id)) { this.upgradeHold.delete(id); continue }
      this.upgradeHold.set(id, now + UPGRADE_RETRY_MS)
      void this.upgrade(c.remotePeer)
    }
    if (this.upgradeHold.size > 1024) this.upgradeHold.clear()
  }

  /** members on another network with a direct connection to us, reachable ones first */
  private helpers(): string[] {
    const out: Array<{ id: string; rank: number }> = []
    for (const m of this.members()) {
      const c = this.directConn(m.peerId)
      if (!c || this.near(c.remoteAddr)) continue
      out.push({ id: m.peerId, rank: m.reach === 'p' ? 0 : 1 })
    }
    return out.sort((a, b) => a.rank - b.rank).slice(0, 2).map((x) => x.id)
  }

  private async check(own: string[], key: string): Promise<void> {
    const helpers = this.helpers()
    if (helpers.length === 0) {
      if (this.checkedAt === 0 || this.state === 'unknown') this.checkedAt = Date.now()
      return
    }
    // A helper asked a moment ago would only say "busy", and a check answered by the others
    // alone can be wrong for good: seen in the NAT lab, a node whose port mapping came up 2 s
    // after its first check asked again at once, its IPv4 helper was busy, an IPv6-only helper
    // answered, and the node stayed "not reachable over IPv4" for the 10 min to the next check.
    // So the check waits (ticks are 2 s) until every chosen helper can answer.
    const now = Date.now()
    if (helpers.some((id) => now - (this.askedAt.get(id) ?? 0) < HELPER_GAP_MS)) return
    for (const id of helpers) this.askedAt.set(id, now)
    if (this.askedAt.size > 1024) this.askedAt.clear()
    this.checking = true
    try {
      const results = await Promise.all(helpers.map(async (id) => {
        try {
          const conn = this.directConn(id)
          if (!conn) return null
          const stream = await conn.newStream(dialBackProtocol(this.meshId), { signal: AbortSignal.timeout(5000) })
          return await askDialBack(stream, own)
        } catch (err) {
          this.log.debug(`dial-back request to ${id} failed: ${errText(err)}`)
          return null
        }
      }))
      if (this.stopped) return
      // a helper that was asked a moment ago says "busy": no answer, asked again at a later tick
      const answered = results.filter((r): r is NonNullable<typeof r> => r !== null && !r.why.startsWith('busy'))
      if (answered.length === 0) return
      this.checkedAt = Date.now()
      this.checkedFor = key
      this.retryAt = 0
      const ok = [...new Set(answered.flatMap((r) => r.ok))]
      const before = `${this.state} ${this.publicAddrs.join(',')}`
      // Reached over IPv6 alone is not public: members with IPv4 only (most, behind their own
      // NATs) still need a relay to come in. Those with IPv6 dial the reached address directly.
      const v6 = ok.filter(isIPv6Addr)
      const v4Listen = own.some((a) => !isIPv6Addr(a))
      if (ok.length > v6.length || (v6.length > 0 && !v4Listen)) {
        this.state = 'public'
        this.publicAddrs = ok
        this.why = `a member on another network reached ${ok.join(' ')}`
      } else {
        this.state = 'private'
        this.publicAddrs = v6
        const why = answered.map((r) => r.why).find((w) => w !== '') ?? 'no member on another network could reach this node'
        this.why = v6.length > 0 ? `reachable over IPv6 at ${v6.join(' ')}, not over IPv4: ${why}` : why
        // a helper that did not answer might have reached us: ask again soon, not in a minute
        if (answered.length < helpers.length && this.incomplete < MAX_INCOMPLETE_RETRIES) {
          this.incomplete++
          this.retryAt = this.checkedAt + RETRY_INCOMPLETE_MS
        } else this.incomplete = 0
      }
      if (this.state === 'public') this.incomplete = 0
      if (`${this.state} ${this.publicAddrs.join(',')}` !== before) {
        this.log.info(`reachability: ${this.state === 'public' ? 'public' : 'not reachable from other networks'} (${this.why})`)
        this.onChange()
      }
    } finally {
      this.checking = false
    }
  }

  private relayCandidates(): ReachMember[] {
    const now = Date.now()
    return this.members().filter((m) => m.reach === 'p' && m.relay && (this.relayFailures.get(m.peerId) ?? 0) < now && this.directConn(m.peerId) !== undefined)
  }

  /** Holds RELAYS_WANTED reservations: a relay that left is replaced by another member. */
  private keepRelays(): void {
    // one reservation at a time: two circuit listeners started together left the second
    // waiting for good in the relay transport's queue (measured in the NAT lab)
    if (this.reserving.size > 0) return
    const held = new Set(this.relays())
    let missing = RELAYS_WANTED - held.size
    for (const m of this.relayCandidates()) {
      if (missing <= 0) return
      if (held.has(m.peerId) || this.reserving.has(m.peerId)) continue
      const conn = this.directConn(m.peerId)
      if (!conn) continue
      missing = 0
      this.log.debug(`reserving a relay slot on ${m.peerId} (holding ${held.size})`)
      void this.reserve(m.peerId, conn)
    }
  }

  private async reserve(relay: string, conn: Connection): Promise<void> {
    const tm = (this.node as unknown as { components?: { transportManager?: TransportManagerLike } }).components?.transportManager
    if (!tm) return
    this.reserving.add(relay)
    try {
      const base = conn.remoteAddr.toString().replace(/\/p2p\/[^/]+$/, '')
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no reservation within ${RESERVE_TIMEOUT_MS / 1000} s`)), RESERVE_TIMEOUT_MS) })
      await Promise.race([tm.listen([multiaddr(`${base}/p2p/${relay}/p2p-circuit`)]), timeout]).finally(() => clearTimeout(timer))
      this.log.info(`holding a relay slot on ${relay}`)
      this.onChange()
    } catch (err) {
      this.relayFailures.set(relay, Date.now() + RELAY_FAILURE_HOLD_MS)
      this.log.info(`cannot reserve a relay slot on ${relay}: ${errText(err)}`)
    } finally {
      this.reserving.delete(relay)
    }
  }

  /** A relayed connection opened: try the other side's direct addresses (see the header). */
  private readonly onOpen = (evt: CustomEvent<Connection>): void => {
    const conn = evt.detail
    if (!isRelayedAddr(conn.remoteAddr.toString()) || this.stopped) return
    setTimeout(() => { void this.upgrade(conn.remotePeer) }, UPGRADE_DELAY_MS).unref()
  }

  private async upgrade(peer: PeerId): Promise<void> {
    const id = peer.toString()
    if (this.stopped || this.directConn(id) || this.upgrading.has(id)) return
    this.upgrading.add(id)
    try {
      await this.dialDirect(peer, id)
    } finally {
      this.upgrading.delete(id)
    }
  }

  private async dialDirect(peer: PeerId, id: string): Promise<void> {
    const known = this.members().find((m) => m.peerId === id)?.addrs ?? []
    const stored = (await this.node.peerStore.get(peer).catch(() => null))?.addresses.map((a) => a.multiaddr.toString()) ?? []
    // bare addresses: with a peer id libp2p may pick any of the peer's addresses, relayed ones too
    const bare = (a: string) => a.replace(/\/p2p\/[^/]+$/, '')
    const addrs = [...new Set([...known, ...stored].filter((a) => !isRelayedAddr(a) && !isLoopbackAddr(a)).map(bare))].slice(0, MAX_UPGRADE_ADDRS)
    for (const a of addrs) {
      if (this.stopped || this.directConn(id)) break
      try {
        const conn = await this.node.dial(multiaddr(a), { force: true, signal: AbortSignal.timeout(UPGRADE_DIAL_MS) })
        if (!conn.remotePeer.equals(peer) || isRelayedAddr(conn.remoteAddr.toString())) {
          if (!conn.remotePeer.equals(peer)) void conn.close().catch(() => {})
          continue
        }
        this.upgraded++
        this.log.info(`relayed connection to ${id} replaced by a direct one (dialed ${a})`)
        for (const c of this.node.getConnections(peer)) {
          if (isRelayedAddr(c.remoteAddr.toString())) void c.close().catch(() => {})
        }
        this.onChange()
        return
      } catch (err) {
        this.log.debug(`direct dial to ${a} (to replace a relayed connection) failed: ${errText(err)}`)
      }
    }
  }
}
