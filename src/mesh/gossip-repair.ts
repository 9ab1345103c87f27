// Keeps gossipsub's table of peers in step with libp2p's connections.
//
// Gossipsub (17.x) opens its outbound stream to a peer only when told of a new connection, and
// keeps a stream in its table after it closed if it closed before gossipsub listened for its
// close event (the other side closed it at once). Libp2p then reports no new connection, so
// nothing brings the stream back: the two members stop hearing each other while connected, and
// each drops out of the other's view (bench:mesh saw views lose a member after convergence, and
// caught both sides of a pair holding a closed stream). Every few seconds, each open connection
// whose peer gossipsub has forgotten, or has no outbound stream to, or only a closed one, is
// handed to gossipsub again, as the registrar does for a new connection: it opens a stream and
// sends its subscriptions, and the other side, given a new inbound stream, adds us back.
//
// This drives gossipsub's internals (peers, streamsOutbound, onPeerConnected) but changes none
// of its code: the patch that keeps a connected peer when one of its read streams fails is
// patches/gossip-read-error.ts. Both rely on @libp2p/gossipsub at the version pinned there.
import type { Connection, PeerId } from '@libp2p/interface'
import type { Logger } from '../log.js'
import type { MeshLibp2p } from './node.js'
import { everyAligned, type AlignedTimer } from '../util/aligned-timer.js'

/** a connection younger than this is still being set up: the registrar tells gossipsub of it */
const SETTLE_MS = 3000
/** tries per connection while it stays broken: a peer whose gossipsub keeps failing is not retried forever */
const MAX_TRIES = 3

/**
 * Whether gossipsub's outbound stream can still carry messages. A stream that closed before
 * gossipsub listened for its close event (the other side closed it at once) stays in its table
 * for good, and every message to that peer is dropped.
 */
function isWritable(out: unknown): boolean {
  const raw = (out as { rawStream?: { status?: unknown; writeStatus?: unknown } } | null)?.rawStream
  if (raw === undefined || raw === null) return true // not the stream we know: leave it alone
  return raw.status === 'open' && raw.writeStatus === 'writable'
}

/** The parts of gossipsub this uses (what its registrar topology does on a new connection). */
interface GossipInternals {
  peers: Map<string, unknown>
  streamsOutbound: Map<string, unknown>
  protocols: string[]
  onPeerConnected(peer: PeerId, connection: Connection): void
}

export class GossipRepair {
  private readonly tries = new WeakMap<Connection, number>()
  private timer: AlignedTimer | null = null
  private running = false

  constructor(private readonly node: MeshLibp2p, private readonly log: Logger, private readonly everyMs: number) {}

  start(): void {
    this.timer = everyAligned(this.everyMs, () => { void this.check() }, { unref: true }) // one wake-up with the other timers (util/aligned-timer.ts)
  }

  stop(): void {
    this.timer?.stop()
    this.timer = null
  }

  /**
   * The connector closed a duplicate connection to `peer` and kept `kept`: gossipsub's stream
   * may have run over the closed one, and gossipsub only opens one when told of a connection.
   * (A kept connection younger than SETTLE_MS would wait for a later round.)
   */
  connectionKept(peer: PeerId, kept: Connection): void {
    const gs = this.node.services.pubsub as unknown as Partial<GossipInternals>
    if (typeof gs.onPeerConnected === 'function') gs.onPeerConnected.call(gs, peer, kept)
  }

  async check(): Promise<void> {
    const gs = this.node.services.pubsub as unknown as Partial<GossipInternals>
    if (!(gs.peers instanceof Map) || !(gs.streamsOutbound instanceof Map) || typeof gs.onPeerConnected !== 'function' || !Array.isArray(gs.protocols)) return // not the gossipsub we know
    if (this.running) return
    this.running = true
    try {
      const now = Date.now()
      for (const conn of this.node.getConnections()) {
        const id = conn.remotePeer.toString()
        if (conn.status !== 'open' || conn.limits != null || now - conn.timeline.open < SETTLE_MS) continue
        const out = gs.streamsOutbound.get(id)
        const dead = out !== undefined && !isWritable(out)
        if (gs.peers.has(id) && out !== undefined && !dead) { this.tries.delete(conn); continue }
        const tries = this.tries.get(conn) ?? 0
        if (tries >= MAX_TRIES) continue
        // only members that speak gossipsub (identify recorded their protocols)
        const protocols = await this.node.peerStore.get(conn.remotePeer).then((p) => p.protocols, () => [] as string[])
        if (!protocols.some((p) => gs.protocols!.includes(p))) continue
        // the connection may have moved on while the peer store answered
        if (conn.status !== 'open' || gs.streamsOutbound.get(id) !== out) continue
        this.tries.set(conn, tries + 1)
        const had = !gs.peers.has(id) ? 'forgotten it' : dead ? 'a closed stream to it' : 'no stream to it'
        this.log.debug(`gossip: ${id} is connected but gossipsub had ${had}; telling it of the connection again`)
        if (dead) gs.streamsOutbound.delete(id)
        gs.onPeerConnected.call(gs, conn.remotePeer, conn)
      }
    } finally {
      this.running = false
    }
  }
}
