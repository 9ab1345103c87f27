// Builds the libp2p node every meshcc daemon runs: tcp + pnet + noise + yamux, identify, ping,
// a private kad-dht, gossipsub and (LAN only) mDNS. Discovery and dialing policy live in
// connector.ts; this file only assembles libp2p and reports handshake failures. The library
// patches (patches/) are applied here.
import { applyNodePatches, applyProcessPatches, fastX25519Crypto, patchWarning, type PatchStatus } from './patches/index.js' // first: its polyfill
import { createLibp2p, type Libp2p, type ServiceFactoryMap } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify, identifyPush, type Identify, type IdentifyPush } from '@libp2p/identify'
import { ping, type Ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { kadDHT, passthroughMapper, type KadDHT } from '@libp2p/kad-dht'
import { gossipsub, type GossipSub } from '@libp2p/gossipsub'
import { mdns } from '@libp2p/mdns'
import type { ConnectionEncrypter, ConnectionProtector, MessageStream, MultiaddrConnection, PeerId, PrivateKey, StreamCloseEvent } from '@libp2p/interface'
import type { Logger } from '../log.js'
import { MeshError } from './errors.js'
import { FORWARD_D, FORWARD_DLAZY, FORWARD_DLO, FORWARD_GOSSIP_FACTOR, FORWARD_PRUNE_BACKOFF_MS } from './forwarding.js'
import { DHT_STARTUP_OPTIONS } from './dht-startup.js'
import { isLoopbackAddr, isOwnAddr, isPublicAddr, isRelayedAddr, localSubnets, onSubnets, tcpPorts, withoutLoopback } from './addresses.js'
import { circuitRelayServer, circuitRelayTransport, type CircuitRelayService } from '@libp2p/circuit-relay-v2'
import type { Multiaddr } from '@multiformats/multiaddr'
import { limitRelayRate } from './relay-rate.js'

export type MeshServices = {
  identify: Identify
  identifyPush: IdentifyPush
  ping: Ping
  pubsub: GossipSub
  /** absent when config.mesh.dht is false */
  dht?: KadDHT
  /** absent when config.mesh.relay is false */
  relay?: CircuitRelayService
}

export type MeshLibp2p = Libp2p<MeshServices>

export interface MeshNodeInit {
  privateKey: PrivateKey
  /** swarm key bytes as read by readMeshKey; required */
  psk: Uint8Array
  meshId: string
  listen: string[]
  /** addresses to advertise besides the ones libp2p sees ([mesh] announce) */
  announce?: string[]
  mdns: boolean
  dht: boolean
  /** serve as a circuit relay (only members that find this node reachable reserve on it); null: no relay server.
   *  rate: bytes per second one member may push through it (relay-rate.ts), 0 = no bound */
  relay?: { maxReservations: number; rate?: number } | null
  isDenied: (peerId: string) => boolean
  log: Logger
  /** a peer announced itself by mDNS (marks it as LAN) */
  onMdnsPeer?: (peerId: string) => void
  /** a connection died after the pnet nonce exchange but before it was usable */
  onHandshakeFailure?: (remoteAddr: string, direction: 'inbound' | 'outbound', err: Error | undefined) => void
  /** the other end proved this node's own identity (libp2p then drops the connection as a dial to self) */
  onSelfIdentity?: (remoteAddr: string, direction: 'inbound' | 'outbound') => void
}

export const MAX_DHT_RECORD_BYTES = 4096

/**
 * Gossipsub's defaults (mesh degree 6, gossip to 6+ more peers each heartbeat) suit a public
 * network of strangers. Here a load message is flood-published to every connected member, and
 * the mesh only forwards while some member is not directly connected (forwarding.ts switches
 * D and Dlo between these and 0). With the default degree a 30-member mesh on one machine
 * burned 5.5 % of a core per idle daemon, with forwarding off 3.7 % (npm run bench:mesh).
 * Dhi leaves room for the members that graft us because they need forwarding; the lazy gossip
 * (IHAVE to a few peers each heartbeat) repairs what a lost message would leave out, and is
 * switched off with forwarding.
 */
export const GOSSIP_DEGREES = {
  floodPublish: true,
  D: FORWARD_D,
  Dlo: FORWARD_DLO,
  Dhi: 8,
  Dout: 0,
  Dlazy: FORWARD_DLAZY,
  gossipFactor: FORWARD_GOSSIP_FACTOR,
  // (sic) the backoff of the PRUNEs forwarding.ts sends when it leaves the mesh peer by peer
  unsubcribeBackoff: FORWARD_PRUNE_BACKOFF_MS
} as const

export function dhtProtocol(meshId: string): string {
  return `/meshcc/${meshId}/kad/1.0.0`
}

export function mdnsServiceTag(meshId: string): string {
  return `_meshcc-${meshId}._udp.local`
}

/** DHT record keys look like '/meshcc/<meshid>/...'; values are small JSON with an optional ts. */
export function dhtRecordKey(meshId: string, name: string): Uint8Array {
  return new TextEncoder().encode(`/meshcc/${meshId}/${name}`)
}

export async function createMeshNode(init: MeshNodeInit): Promise<MeshLibp2p> {
  if (!(init.psk instanceof Uint8Array) || init.psk.length === 0) {
    throw new MeshError('refusing to start the mesh without a mesh key')
  }
  const upgraded = new WeakSet<object>()
  /** the ports this node listens on, once it does (filterMultiaddrForPeer) */
  const ownPorts = new Set<number>()
  const denied = new WeakSet<object>()
  const gate = (peer: PeerId, maConn?: MultiaddrConnection): boolean => {
    const no = init.isDenied(peer.toString())
    if (no && maConn) denied.add(maConn.timeline)
    return no
  }

  const services: ServiceFactoryMap<MeshServices> = {
    identify: identify(),
    identifyPush: identifyPush(),
    ping: ping(),
    pubsub: gossipsub({
      allowPublishToZeroTopicPeers: true,
      emitSelf: false,
      // load messages are < 8 KiB; nothing on our topics needs big messages
      maxInboundDataLength: 256 * 1024,
      // every member already proved the mesh key; many members behind one address (one host,
      // one NAT) is normal here, and the default colocation penalty silences them beyond 10
      scoreParams: { IPColocationFactorWeight: 0 },
      // A duplicate is recognised by sender and sequence number before its signature is
      // checked again: in a mesh of D peers each message arrives about D times.
      fastMsgIdFn: (msg) => fastMessageId(msg.from, msg.seqno),
      ...GOSSIP_DEGREES
    })
  }
  if (init.dht) {
    const prefix = `/meshcc/${init.meshId}/`
    services.dht = kadDHT({
      protocol: dhtProtocol(init.meshId),
      clientMode: false, // auto mode stays 'client' forever on private addresses
      peerInfoMapper: passthroughMapper, // the default strips LAN addresses and empties the table
      ...DHT_STARTUP_OPTIONS, // no start-up queries that member exchange already answered
      validators: {
        meshcc: async (key, value) => {
          const k = new TextDecoder().decode(key)
          if (!k.startsWith(prefix)) throw new Error(`record key outside this mesh: ${k.slice(0, 64)}`)
          if (value.length > MAX_DHT_RECORD_BYTES) throw new Error('record too large')
        }
      },
      selectors: { meshcc: (_key, records) => newestRecord(records) }
    })
  }

  if (init.relay) {
    services.relay = circuitRelayServer({
      reservations: {
        maxReservations: init.relay.maxReservations,
        // the library's default limit (2 min, 128 KiB per relayed connection) is for strangers'
        // signalling; here every member holds the mesh key and a relayed link carries compile
        // jobs: no limit per connection, and at most maxReservations members per relay
        applyDefaultLimit: false
      },
      maxInboundHopStreams: 64,
      maxOutboundStopStreams: 64
    })
  }

  const peerDiscovery = init.mdns
    ? [(components: Parameters<ReturnType<typeof mdns>>[0]) => {
        const d = mdns({ serviceTag: mdnsServiceTag(init.meshId) })(components)
        d.addEventListener('peer', (evt) => init.onMdnsPeer?.(evt.detail.id.toString()))
        return d
      }]
    : []

  const processPatches = applyProcessPatches() // before the first connection: pnet, yamux
  const protector = preSharedKey({ psk: init.psk })
  // protected stream -> raw connection timeline, so the encrypter wrapper can mark success
  const rawOf = new WeakMap<object, object>()
  const addrOf = new WeakMap<object, { addr: string; direction: 'inbound' | 'outbound' }>()
  const encrypted = new WeakSet<object>()
  const watchingProtector = (): ConnectionProtector => {
    const inner = protector()
    return {
      async protect(conn: MessageStream, opts) {
        const maConn = conn as MultiaddrConnection
        const out = await inner.protect(conn, opts)
        // A wrong key only shows after this point (multistream-select/noise read garbage and
        // the socket dies), so watch the raw connection until noise has succeeded.
        if (maConn.remoteAddr && maConn.timeline) {
          rawOf.set(out, maConn.timeline)
          addrOf.set(out, { addr: maConn.remoteAddr.toString(), direction: maConn.direction })
          const started = Date.now()
          maConn.addEventListener('close', (evt: Event) => {
            const tl = maConn.timeline
            if (encrypted.has(tl) || upgraded.has(tl) || denied.has(tl)) return
            if (Date.now() - started > 30_000) return
            const e = (evt as StreamCloseEvent).error
            if (e?.name === 'AbortError' && maConn.direction === 'outbound') return // dial cancelled by us
            init.onHandshakeFailure?.(maConn.remoteAddr.toString(), maConn.direction, e)
          }, { once: true })
        }
        return out
      }
    }
  }
  const markingNoise = (components: Parameters<ReturnType<typeof noise>>[0]): ConnectionEncrypter => {
    const inner = noise({ crypto: fastX25519Crypto })(components)
    const mark = <T extends { remotePeer: PeerId }>(conn: MessageStream, r: T): T => {
      const tl = rawOf.get(conn)
      if (tl) encrypted.add(tl)
      const where = addrOf.get(conn)
      if (where && r.remotePeer.equals(components.peerId)) init.onSelfIdentity?.(where.addr, where.direction)
      return r
    }
    return {
      protocol: inner.protocol,
      secureInbound: async (conn, opts) => mark(conn, await inner.secureInbound(conn, opts)),
      secureOutbound: async (conn, opts) => mark(conn, await inner.secureOutbound(conn, opts))
    }
  }

  let node: MeshLibp2p
  try {
    node = await createLibp2p<MeshServices>({
      privateKey: init.privateKey,
      addresses: {
        listen: init.listen,
        // [mesh] announce: addresses this node cannot see on its interfaces (1:1 NAT, a port forward)
        appendAnnounce: init.announce ?? [],
        // a loopback address only ever reaches the host that dials it: advertised (identify,
        // the DHT, gossip) only when there is nothing else, as in a same-host mesh
        announceFilter: (addrs) => withoutLoopback(addrs)
      },
      // the relay transport dials relayed addresses and holds the reservations reachability.ts
      // asks for; it looks for relays only while this node listens on one (never on a LAN mesh)
      transports: [tcp(), circuitRelayTransport({ reservationCompletionTimeout: 10_000, maxInboundStopStreams: 64, maxOutboundStopStreams: 64 })],
      connectionEncrypters: [markingNoise],
      // keep-alive and dead-connection detection: keepalive.ts, aligned for all connections
      streamMuxers: [yamux({ enableKeepAlive: false })],
      connectionProtector: watchingProtector,
      connectionMonitor: { enabled: false }, // replaced by keepalive.ts: one yamux frame, not a stream
      connectionManager: {
        // default is 5 inbound per second per IP: too few for a LAN behind one NAT or a test host
        inboundConnectionThreshold: 100,
        // per address: a member's LAN address seen from another network often just times out,
        // and the next address (its relayed one) should get its turn within the connector's 10 s
        addressDialTimeout: 4000,
        // addresses on our own subnets, then public ones, then relayed ones, then the other
        // private ones (a LAN address of another network is rarely reachable); loopback last
        addressSorter: (a, b) => Math.sign(dialRank(a.multiaddr) - dialRank(b.multiaddr)) as -1 | 0 | 1
      },
      connectionGater: {
        denyDialPeer: (peer) => init.isDenied(peer.toString()),
        // another peer at one of this node's own addresses is this node: never stored, never dialed
        filterMultiaddrForPeer: (_peer, ma) => !isOwnAddr(ma, ownPorts),
        denyOutboundConnection: (peer, maConn) => gate(peer, maConn),
        denyInboundEncryptedConnection: (peer, maConn) => gate(peer, maConn),
        denyOutboundEncryptedConnection: (peer, maConn) => gate(peer, maConn)
      },
      peerDiscovery,
      services
    })
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    // libp2p wraps the listen error in its own (UnsupportedListenAddressesError), with the code in the text
    const code = e.code ?? /\b(EADDRINUSE|EADDRNOTAVAIL)\b/.exec(String(e.message))?.[1]
    if (code === 'EADDRINUSE') throw new MeshError(`cannot listen on ${init.listen.join(', ')}: address already in use (is another meshcc daemon running?)`, code)
    if (code === 'EADDRNOTAVAIL') throw new MeshError(`cannot listen on ${init.listen.join(', ')}: address not available on this machine`, code)
    throw new MeshError(`cannot start the mesh node: ${e.message.split('\n')[0]}`)
  }
  node.addEventListener('connection:open', (evt) => { upgraded.add(evt.detail.timeline) })
  if (init.relay?.rate) await limitRelayRate(node, init.relay.rate, init.log)
  for (const p of tcpPorts(node.getMultiaddrs())) ownPorts.add(p)
  warnUnapplied([...processPatches, ...applyNodePatches(node, init.log)], init.log)
  return node
}

let subnetCache = { at: 0, list: localSubnets() }
function dialRank(ma: Multiaddr): number {
  if (isLoopbackAddr(ma)) return 5
  if (isRelayedAddr(ma.toString())) return 3
  if (Date.now() - subnetCache.at > 30_000) subnetCache = { at: Date.now(), list: localSubnets() }
  if (onSubnets(ma, subnetCache.list)) return 0
  return isPublicAddr(ma.toString()) ? 1 : 4
}

/** One warning line per library patch that no longer applies (patches/index.ts). */
function warnUnapplied(statuses: PatchStatus[], log: Logger): void {
  for (const s of statuses) {
    const line = patchWarning(s)
    if (line !== null) log.warn(line)
  }
}

/** The id gossipsub's default msgIdFn derives for signed messages (from + seqno), without decoding. */
export function fastMessageId(from: Uint8Array | undefined, seqno: Uint8Array | undefined): string {
  return `${from ? Buffer.from(from.buffer, from.byteOffset, from.byteLength).toString('base64') : ''}/${seqno ? Buffer.from(seqno.buffer, seqno.byteOffset, seqno.byteLength).toString('hex') : ''}`
}

function newestRecord(records: Uint8Array[]): number {
  let best = 0
  let bestTs = -Infinity
  records.forEach((r, i) => {
    try {
      const ts = Number((JSON.parse(new TextDecoder().decode(r)) as { ts?: unknown }).ts)
      if (Number.isFinite(ts) && ts > bestTs) { bestTs = ts; best = i }
    } catch { /* not ours: keep the default */ }
  })
  return best
}
