// Who we dial and when. libp2p 3 has no auto-dialer: discovery (mDNS, DHT) and gossip only tell
// us about peers, so we dial them here, plus the configured bootstrap addresses, which are
// redialed with bounded backoff whenever we are not connected to them.
import type { Multiaddr } from '@multiformats/multiaddr'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdOf } from './peer-ids.js'
import type { Connection, PeerId } from '@libp2p/interface'
import type { Logger } from '../log.js'
import type { MeshLibp2p } from './node.js'
import { everyAligned, type AlignedTimer } from '../util/aligned-timer.js'
import { isOwnAddr, tcpPorts, toMultiaddr, withoutLoopback } from './addresses.js'

export { isLoopbackAddr } from './addresses.js'

const TICK_MS = 1000
const DIAL_TIMEOUT_MS = 10_000
const BOOTSTRAP_MAX_BACKOFF_MS = 60_000
/** stored members' addresses (mesh-peers.json) may be long gone: redialed more slowly */
const STORED_MAX_BACKOFF_MS = 5 * 60_000
const STORED_FIRST_DIAL_DELAY_MS = 3000
const STORED_DIAL_SPACING_MS = 100
const BOOTSTRAP_CHECK_MS = 5000
const PEER_MAX_BACKOFF_MS = 120_000
/**
 * The larger peer id waits this long before dialing, so both sides rarely dial at once: they
 * often learn of each other together (mDNS, gossip). A member named in a member exchange
 * usually does not know of us yet, so that wait is short.
 */
const TIE_BREAK_DELAY_MS = 3000
const EXCHANGE_TIE_BREAK_DELAY_MS = 500
const MAX_PARALLEL_DIALS = 8
/** stop dialing discovered peers beyond this many connections */
const MAX_CONNECTIONS = 200
const FAILURE_WARN_EVERY_MS = 5 * 60_000
const MDNS_RETRY_AFTER_MS = 5000

interface BootstrapEntry {
  addr: Multiaddr
  text: string
  peerId: string | null
  failures: number
  nextAt: number
  busy: boolean
  connected: boolean
  warned: boolean
  /** from mesh-peers.json, not from the config or an invite: failures are expected, said at debug level */
  stored: boolean
}

/** A remote end that failed the private-network handshake: it probably has another mesh key. */
export interface RefusedPeer {
  /** the address we dialed, or the host a connection came from */
  addr: string
  direction: 'inbound' | 'outbound'
  /** ms epoch of the last failure */
  last: number
  count: number
}

/** refused peers are listed this long after their last failure */
const REFUSED_MEMORY_MS = 10 * 60_000
const MAX_REFUSED = 64

/** tried: the addresses failed dials had since the last success; one they lacked is worth a dial at once */
interface PeerDialState { failures: number; nextAt: number; lastFailure: number; error: string; tried: Set<string> }

/** a member we could not dial counts as out of reach this long after someone last named it */
const UNREACHABLE_MEMORY_MS = 30_000

/** how we heard of a peer; 'lost': it was in the view and its last connection closed */
export type DiscoverySource = 'mdns' | 'dht' | 'gossip' | 'exchange' | 'lost'
const sourceText = (s: DiscoverySource) => s === 'lost' ? 'redialed: its connection closed' : `found by ${s}`

export interface ConnectorInit {
  node: MeshLibp2p
  log: Logger
  bootstrap: Multiaddr[]
  /** members' addresses the mesh reported before this start (state-files.ts), dialed like bootstrap addresses */
  stored?: Array<{ peerId: string; addrs: string[] }>
  isDenied: (peerId: string) => boolean
  /**
   * A duplicate connection to this peer was closed and `kept` remains. Long-lived streams that
   * happened to run over the closed one (gossipsub's) must be reopened on `kept`.
   */
  onDuplicateClosed?: (peer: PeerId, kept: Connection) => void
}

export class Connector {
  private readonly node: MeshLibp2p
  private readonly log: Logger
  private readonly isDenied: (peerId: string) => boolean
  private readonly onDuplicateClosed?: (peer: PeerId, kept: Connection) => void
  private readonly self: string
  private readonly bootstrap: BootstrapEntry[]
  private readonly dialing = new Set<string>()
  /** peers waiting for one of the MAX_PARALLEL_DIALS dial slots, in the order they came */
  private readonly queued = new Map<string, { peer: PeerId; addrs: Multiaddr[]; source: DiscoverySource }>()
  private readonly peerState = new Map<string, PeerDialState>()
  private readonly delayed = new Map<string, NodeJS.Timeout>()
  private readonly lastWarned = new Map<string, number>()
  /** when we last heard of each peer we were not connected to (any discovery source) */
  private readonly heard = new Map<string, number>()
  private readonly refused = new Map<string, RefusedPeer>()
  /** bootstrap addresses that name this node's own peer id: ours, or a machine with a copy of our identity */
  private readonly selfNamed: Multiaddr[]
  private timer: AlignedTimer | null = null
  private stopped = false

  constructor(init: ConnectorInit) {
    this.node = init.node
    this.log = init.log
    this.isDenied = init.isDenied
    this.onDuplicateClosed = init.onDuplicateClosed
    this.self = init.node.peerId.toString()
    const entry = (addr: Multiaddr, stored: boolean): BootstrapEntry =>
      ({ addr, text: addr.toString(), peerId: peerIdInAddr(addr), failures: 0, nextAt: 0, busy: false, connected: false, warned: false, stored })
    const configured = init.bootstrap.map((addr) => entry(addr, false))
    const known = new Set(configured.map((e) => e.text))
    const stored: BootstrapEntry[] = []
    for (const p of init.stored ?? []) {
      if (p.peerId === this.self || this.isDenied(p.peerId)) continue
      const mas = withoutLoopback(p.addrs.map(toMultiaddr).filter((m): m is Multiaddr => m !== null))
      for (const m of mas) {
        const ma = peerIdInAddr(m) === null ? toMultiaddr(`${m.toString()}/p2p/${p.peerId}`) : m
        if (ma && peerIdInAddr(ma) === p.peerId && !known.has(ma.toString())) { known.add(ma.toString()); stored.push(entry(ma, true)) }
      }
    }
    // stored addresses are a fallback: the configured ones (and the member exchange they bring)
    // go first, and the stored ones follow one by one rather than all in the first second
    const first = configured.length > 0 ? STORED_FIRST_DIAL_DELAY_MS : 0
    stored.forEach((e, i) => { e.nextAt = Date.now() + first + i * STORED_DIAL_SPACING_MS })
    const all = [...configured, ...stored]
    // an address of this node's own (the invite it made, a bootstrap list naming every machine,
    // a stored loopback address) would only reach this node
    const ports = tcpPorts(init.node.getMultiaddrs())
    this.bootstrap = all.filter((e) => e.peerId !== this.self && !isOwnAddr(e.addr, ports))
    this.selfNamed = all.filter((e) => e.peerId === this.self).map((e) => e.addr)
  }

  start(): void {
    this.probeSelfNamed()
    this.tick()
    this.timer = everyAligned(TICK_MS, () => this.tick(), { unref: true }) // one wake-up with the other timers (util/aligned-timer.ts)
    this.node.addEventListener('connection:open', this.onOpen)
  }

  /**
   * Dials from both sides can cross (a bootstrap redial meeting a discovery dial) and leave two
   * connections. Both ends keep the one the smaller peer id dialed and close the other: the rule
   * gives the same answer on both sides, so they never close both.
   */
  private readonly onOpen = (evt: CustomEvent<Connection>): void => {
    const remote = evt.detail.remotePeer
    const addr = evt.detail.remoteAddr.toString()
    // the first connection after none at all: this node's network is back (Wi-Fi, a cable, a
    // link that died without a FIN); the members whose dials failed meanwhile are dialed again
    // at once, not when their backoffs (up to two minutes) run out
    if (this.node.getConnections().length === 1) {
      this.peerState.clear()
      for (const e of this.bootstrap) if (!e.busy && e.failures > 0) e.nextAt = Math.min(e.nextAt, Date.now())
    }
    this.forgetRefused(evt.detail.direction === 'inbound' ? hostOf(addr) : addr, evt.detail.direction)
    setTimeout(() => {
      if (this.stopped) return
      const conns = this.node.getConnections(remote)
      if (conns.length < 2) return
      const selfSmaller = this.node.peerId.toString() < remote.toString()
      // a direct connection always beats a relayed one (both sides see which is which);
      // among direct ones, the one the smaller peer id dialed
      const direct = conns.filter((c) => !c.remoteAddr.toString().includes('/p2p-circuit'))
      const pool = direct.length > 0 ? direct : conns
      const kept = pool.find((c) => (c.direction === 'outbound') === selfSmaller) ?? (direct.length === 1 ? direct[0] : undefined)
      if (!kept) return
      void Promise.allSettled(conns.filter((c) => c !== kept).map(async (c) => c.close())).then(() => {
        if (!this.stopped && kept.status === 'open') this.onDuplicateClosed?.(remote, kept)
      })
    }, 500).unref()
  }

  stop(): void {
    this.node.removeEventListener('connection:open', this.onOpen)
    this.stopped = true
    this.timer?.stop()
    for (const t of this.delayed.values()) clearTimeout(t)
    this.delayed.clear()
    this.queued.clear()
  }

  /** A peer was discovered (mDNS, DHT) or announced itself by gossip: connect if we are not. */
  consider(peerIdText: string, addrs: Array<Multiaddr | string>, source: DiscoverySource): void {
    if (this.stopped || peerIdText === this.self || this.isDenied(peerIdText)) return
    if (this.dialing.has(peerIdText) || this.delayed.has(peerIdText) || this.queued.has(peerIdText)) return
    let peer: PeerId
    try { peer = peerIdOf(peerIdText) } catch { return }
    if (this.node.getConnections(peer).length > 0) return
    if (this.heard.size > 10_000) this.heard.clear()
    this.heard.set(peerIdText, Date.now())
    // a remote host's loopback address would reach whatever listens on our own loopback
    const mas = withoutLoopback(addrs.map(toMultiaddr).filter((m): m is Multiaddr => m !== null))
    const st = this.peerState.get(peerIdText)
    // mDNS hears the member on this LAN now: that beats an old failure; so do addresses the
    // failed dials did not have (a member whose relay died and who took a slot on another
    // would otherwise wait out a backoff earned on the dead relay's circuit, up to two minutes)
    if (st && Date.now() < st.nextAt && !(source === 'mdns' && Date.now() - st.lastFailure > MDNS_RETRY_AFTER_MS) &&
      mas.every((a) => st.tried.has(a.toString()))) return
    if (this.node.getConnections().length >= MAX_CONNECTIONS) return
    const go = () => {
      this.delayed.delete(peerIdText)
      if (this.stopped || this.node.getConnections(peer).length > 0) return
      this.queued.set(peerIdText, { peer, addrs: mas, source })
      this.pump()
    }
    if (this.self < peerIdText) {
      go()
    } else {
      const t = setTimeout(go, source === 'exchange' ? EXCHANGE_TIE_BREAK_DELAY_MS : TIE_BREAK_DELAY_MS)
      t.unref()
      this.delayed.set(peerIdText, t)
    }
  }

  /** Starts queued dials while dial slots are free. */
  private pump(): void {
    for (const [id, q] of this.queued) {
      if (this.stopped || this.dialing.size >= MAX_PARALLEL_DIALS) return
      this.queued.delete(id)
      if (this.node.getConnections(q.peer).length > 0) continue
      void this.dialPeer(q.peer, q.addrs, q.source)
    }
  }

  private async dialPeer(peer: PeerId, addrs: Multiaddr[], source: DiscoverySource): Promise<void> {
    const id = peer.toString()
    if (this.dialing.has(id)) return
    this.dialing.add(id)
    const t0 = Date.now()
    try {
      if (addrs.length > 0) await this.node.peerStore.merge(peer, { multiaddrs: addrs })
      await this.node.dial(peer, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
      this.peerState.delete(id)
      this.log.debug(`connected to ${id} (${sourceText(source)})`)
    } catch (err) {
      const st = this.peerState.get(id) ?? { failures: 0, nextAt: 0, lastFailure: 0, error: '', tried: new Set<string>() }
      // bounded: each new address earns one dial, and a member advertises a handful
      if (st.tried.size < 64) for (const a of addrs) st.tried.add(a.toString())
      st.failures++
      st.lastFailure = Date.now()
      st.error = dialErrorText(err)
      // held back at least as long as the dial took (dialFailure: placement skips it meanwhile)
      st.nextAt = Date.now() + Math.max(Date.now() - t0, Math.min(PEER_MAX_BACKOFF_MS, 1000 * 2 ** st.failures))
      this.peerState.set(id, st)
      this.log.debug(`dial to ${id} (${sourceText(source)}) failed: ${errText(err)}`)
    } finally {
      this.dialing.delete(id)
      this.pump()
    }
  }

  /** Why the last dial to this peer failed, while that failure holds further dials back; else null. */
  dialFailure(peerIdText: string): string | null {
    const st = this.peerState.get(peerIdText)
    return st && Date.now() < st.nextAt ? st.error : null
  }

  /** Whether a dial to this peer is under way or about to start (queued, or waiting out the tie-break). */
  connecting(peerIdText: string): boolean {
    return this.dialing.has(peerIdText) || this.queued.has(peerIdText) || this.delayed.has(peerIdText)
  }

  /**
   * Whether some member that was named to us lately (member exchange, gossip, mDNS, DHT) could
   * not be dialed and is still not connected: its gossip can only reach us through forwarding.
   */
  someoneUnreachable(): boolean {
    const since = Date.now() - UNREACHABLE_MEMORY_MS
    for (const [id, st] of this.peerState) {
      if (st.lastFailure < since || (this.heard.get(id) ?? 0) < since) continue
      if (!this.connectedTo(id)) return true
    }
    return false
  }

  private tick(): void {
    if (this.stopped) return
    const now = Date.now()
    for (const e of this.bootstrap) {
      if (e.busy || now < e.nextAt) continue
      if (e.peerId && this.connectedTo(e.peerId)) {
        e.connected = true
        e.failures = 0
        e.nextAt = now + BOOTSTRAP_CHECK_MS
        continue
      }
      if (e.connected) {
        e.connected = false
        if (!e.stored) this.log.info(`lost connection to bootstrap peer ${e.text}; redialing`)
      }
      void this.dialBootstrap(e)
    }
    // forget backoff state of peers we have not heard of for a long time
    if (this.peerState.size > 1000) this.peerState.clear()
  }

  private async dialBootstrap(e: BootstrapEntry): Promise<void> {
    e.busy = true
    try {
      const conn = await this.node.dial(e.addr, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
      e.peerId = conn.remotePeer.toString()
      e.failures = 0
      e.connected = true
      e.warned = false
      e.nextAt = Date.now() + BOOTSTRAP_CHECK_MS
      this.log.info(`connected to ${e.stored ? 'stored member address' : 'bootstrap peer'} ${e.text}`)
    } catch (err) {
      e.failures++
      const delay = Math.min(e.stored ? STORED_MAX_BACKOFF_MS : BOOTSTRAP_MAX_BACKOFF_MS, 1000 * 2 ** Math.min(e.failures - 1, 16))
      e.nextAt = Date.now() + delay
      const name = (err as Error).name
      if (name === 'EncryptionFailedError' && !isTimeout(err as Error)) this.noteRefused(e.text, 'outbound')
      if (e.stored) {
        this.log.debug(`cannot reach stored member address ${e.text}: ${errText(err)}; retrying in ${Math.round(delay / 1000)} s`)
        return
      }
      // a wrong key garbles the handshake, which often stalls until the timeout; so does an
      // overloaded peer: say both
      const msg = name !== 'EncryptionFailedError'
        ? `cannot reach bootstrap peer ${e.text}: ${errText(err)}; retrying in ${Math.round(delay / 1000)} s`
        : isTimeout(err as Error)
          ? `connection to bootstrap peer ${e.text} timed out during the private-network handshake: the peer probably has a different mesh key, or is overloaded (${errText(err)}); retrying in ${Math.round(delay / 1000)} s`
          : `connection to bootstrap peer ${e.text} failed during the private-network handshake: the peer probably has a different mesh key (${errText(err)}); retrying in ${Math.round(delay / 1000)} s`
      if (!e.warned) { this.log.warn(msg); e.warned = true } else this.log.debug(msg)
    } finally {
      e.busy = false
    }
  }

  private connectedTo(peerIdText: string): boolean {
    try {
      return this.node.getConnections(peerIdOf(peerIdText)).length > 0
    } catch {
      return false
    }
  }

  /**
   * Dials each bootstrap address that names our own peer id without the id, unless it is one of
   * our own addresses: a machine there that answers with our identity is a clone of this one
   * (a copied identity.key), and the node reports it (onSelfIdentity) when the handshake shows it.
   */
  private probeSelfNamed(): void {
    const own = new Set(this.node.getMultiaddrs().map((m) => hostPort(m)))
    for (const addr of this.selfNamed) {
      if (own.has(hostPort(addr)) || isUnspecified(addr)) continue
      const bare = toMultiaddr(withoutPeerId(addr.toString()))
      if (!bare) continue
      void this.node.dial(bare, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
        .then((c) => { void c.close() }, (err) => this.log.debug(`probe of ${addr.toString()} (names this node's own peer id): ${errText(err)}`))
    }
  }

  /** Remote ends that failed the private-network handshake lately (a different mesh key, most likely), newest first. */
  refusedPeers(): RefusedPeer[] {
    const since = Date.now() - REFUSED_MEMORY_MS
    return [...this.refused.values()].filter((r) => r.last >= since).sort((a, b) => b.last - a.last)
  }

  private noteRefused(addrText: string, direction: 'inbound' | 'outbound'): void {
    const addr = withoutPeerId(addrText)
    const key = `${direction}:${addr}`
    const had = this.refused.get(key)
    if (!had && this.refused.size >= MAX_REFUSED) {
      const oldest = [...this.refused.entries()].sort((a, b) => a[1].last - b[1].last)[0]
      if (oldest) this.refused.delete(oldest[0])
    }
    this.refused.set(key, { addr, direction, last: Date.now(), count: (had?.count ?? 0) + 1 })
  }

  /**
   * A connection to this address (or from this host) completed: whatever refused it before has
   * the key now. Inbound entries go too, because an inbound reset during the handshake is also
   * what a duplicate dial the other side gave up looks like under load.
   */
  private forgetRefused(addr: string, direction: 'inbound' | 'outbound' = 'outbound'): void {
    if (this.refused.size > 0) this.refused.delete(`${direction}:${withoutPeerId(addr)}`)
  }

  /** Called by the node when a connection dies inside the pnet/noise handshake. */
  reportHandshakeFailure(remoteAddr: string, direction: 'inbound' | 'outbound', err: Error | undefined): void {
    if (!err || !isTimeout(err)) this.noteRefused(direction === 'inbound' ? hostOf(remoteAddr) : remoteAddr, direction)
    // the bootstrap loop reports its own dials, with the retry delay
    if (direction === 'outbound' && this.bootstrap.some((e) => remoteAddr === e.text || remoteAddr.startsWith(`${e.text}/p2p/`) || e.text.startsWith(`${remoteAddr}/p2p/`))) return
    // inbound ports are ephemeral: rate-limit per remote host, not per address
    const key = direction === 'inbound' ? `in:${hostOf(remoteAddr)}` : `out:${remoteAddr}`
    const now = Date.now()
    const last = this.lastWarned.get(key)
    const detail = err ? ` (${errText(err)})` : ''
    const who = direction === 'inbound' ? `connection from ${hostOf(remoteAddr)}` : `connection to ${remoteAddr}`
    // a timeout or abort is load or the network; a reset during the handshake is what a key mismatch looks like
    if (err && isTimeout(err)) {
      this.log.debug(`${who}: private-network handshake timed out${detail}`)
      return
    }
    const msg = `${who} failed during the private-network handshake: the peer probably has a different mesh key${detail}`
    if (last === undefined || now - last > FAILURE_WARN_EVERY_MS) {
      if (this.lastWarned.size > 1000) this.lastWarned.clear()
      this.lastWarned.set(key, now)
      // an inbound reset is also what a pruned duplicate dial looks like under load: info, not warn
      if (direction === 'inbound') this.log.info(msg)
      else this.log.warn(msg)
    } else {
      this.log.debug(msg)
    }
  }
}

function isTimeout(err: Error): boolean {
  return /timeout|timed out|abort/i.test(`${err.name} ${err.message}`)
}

function peerIdInAddr(ma: Multiaddr): string | null {
  const c = ma.getComponents().findLast((x) => x.name === 'p2p')
  return c?.value ?? null
}

/** "ip:port" of an address, for comparing a dialed address with our own listen addresses */
export function hostPort(addr: Multiaddr | string): string {
  const ma = toMultiaddr(addr)
  const c = ma?.getComponents() ?? []
  return `${c[0]?.value ?? ''}:${c.find((x) => x.name === 'tcp')?.value ?? ''}`
}

function isUnspecified(ma: Multiaddr): boolean {
  const v = ma.getComponents()[0]?.value
  return v === '0.0.0.0' || v === '::'
}

function withoutPeerId(addr: string): string {
  return addr.replace(/\/p2p\/[^/]+$/, '')
}

export function hostOf(addr: string): string {
  try {
    const c = multiaddr(addr).getComponents()
    return c.find((x) => x.name === 'ip4' || x.name === 'ip6' || x.name === 'dns' || x.name === 'dns4' || x.name === 'dns6')?.value ?? addr
  } catch {
    return addr
  }
}

export function errText(err: unknown): string {
  const e = err as Error
  return `${e?.name && e.name !== 'Error' ? e.name + ': ' : ''}${String(e?.message ?? err).split('\n')[0]}`
}


/** A dial error as a short reason for `meshcc status` (libp2p nests the per-address errors). */
function dialErrorText(err: unknown): string {
  const e = err as Error & { errors?: Error[] }
  const inner = Array.isArray(e?.errors) && e.errors.length > 0 ? e.errors[0]! : e
  const text = `${inner?.message ?? e?.message ?? String(err)}`.split('\n')[0]!
  if (/ECONNREFUSED/.test(text)) return 'connection refused'
  if (/EHOSTUNREACH|ENETUNREACH/.test(text)) return 'no route to its addresses'
  if (/timeout|timed out|abort/i.test(`${e?.name} ${text}`)) return 'dial timed out (behind NAT or a firewall?)'
  if (/no valid addresses|NoValidAddresses/i.test(`${e?.name} ${text}`)) return 'no address to dial'
  return text.slice(0, 100)
}
