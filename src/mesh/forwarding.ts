// Gossip forwarding only where it is needed.
//
// Load messages are flood-published: each goes once to every member we have a connection to,
// and in a mesh where every member dials every other that is all of them. Gossipsub's mesh
// (members forwarding every message to D peers) then only adds duplicates, and with every
// member publishing every 2 s each duplicate costs every idle daemon CPU. So the mesh degree
// is 0 while this member has a direct connection to every member it knows of.
//
// A member needs forwarding for its first few seconds, and while some member it knows of is
// not directly connected: a member in its view reached only through others (behind NAT, on
// another segment, relayed), or a member that a peer named in a member exchange and that it
// failed to dial. It then uses degree FORWARD_D (it grafts peers, and they forward what they
// receive to it, as it forwards to them) and lazy gossip (IHAVE to FORWARD_DLAZY peers each
// heartbeat), and says so in its load messages (field fw).
//
// When it no longer needs forwarding it sets the degrees to 0 and leaves the gossipsub mesh:
// it PRUNEs its mesh peers, so they stop forwarding to it and it to them, and an idle, fully
// connected mesh sends each message once to each member and nothing else (over TCP a direct
// message is not lost, and the next one follows within the interval). It keeps the mesh
// peers that ask for forwarding: they grafted it because they cannot reach some member (or
// are still connecting to members), and a PRUNE would keep them from grafting it again for
// gossipsub's backoff. It goes on pruning at every check: a peer kept because it asked, or
// one that grafted it later, stays in gossipsub's mesh after it stops asking (gossipsub only
// trims a mesh above Dhi), and each such pair forwarded every message of the mesh to each
// other for good.
//
// A PRUNE can still be wrong: the peer's latest message may predate its need (it learned of a
// member it cannot reach a moment before our check; on a loaded machine its next message comes
// late). So the PRUNEs carry a backoff of FORWARD_PRUNE_BACKOFF_MS, not gossipsub's 10 s, and a
// member that needs forwarding drops expired backoffs at each check instead of at gossipsub's
// own sweep (every 15 heartbeats plus slack): it grafts the peer again within a few seconds,
// well inside the view's expiry, instead of losing the members it hears of only through that
// peer for 10 to 25 s. The pruning side set its backoff first, so it has expired by then too.
import type { GossipSub } from '@libp2p/gossipsub'
import type { Logger } from '../log.js'
import { everyAligned, type AlignedTimer } from '../util/aligned-timer.js'

export const FORWARD_D = 2
export const FORWARD_DLO = 1
export const FORWARD_DLAZY = 3
export const FORWARD_GOSSIP_FACTOR = 0.1
/**
 * How long a new member forwards regardless. The member exchange on its first connection
 * names the whole mesh, and unreachable members then keep forwarding on; this is the safety
 * net for a first peer that does not answer the exchange. It is short because every member
 * it grafts forwards the whole mesh's gossip to it meanwhile, which on a large mesh's
 * bootstrap peer adds up when many members start at once.
 */
export const STARTUP_FORWARD_MS = 5000
/** the backoff our PRUNEs ask for (gossipsub's unsubcribeBackoff, which only leave() and leaveMesh use) */
export const FORWARD_PRUNE_BACKOFF_MS = 1000
const CHECK_EVERY_MS = 2000

/** The degrees gossipsub's heartbeat reads; they live on its options object. */
interface Degrees { D: number; Dlo: number; Dlazy: number; gossipFactor: number }

/** The parts of gossipsub that leaving the mesh peer by peer needs (what its own leave() uses). */
interface MeshInternals {
  mesh: Map<string, Set<string>>
  sendPrune(id: string, topic: string): Promise<void>
  /** topic → peer → ms epoch until which we do not graft it */
  backoff: Map<string, Map<string, number>>
}

export class ForwardingControl {
  private timer: AlignedTimer | null = null
  private forwarding = true
  private readonly started = Date.now()

  constructor(
    private readonly pubsub: GossipSub,
    private readonly topic: string,
    /** true when some known member has no direct connection to us (see the header) */
    private readonly someoneIndirect: () => boolean,
    /** whether to stay in the gossipsub mesh with this peer: it asks for forwarding (its fw field), or has not said yet */
    private readonly keeps: (peerId: string) => boolean,
    private readonly log: Logger
  ) {}

  /** whether this member currently forwards (for status and tests) */
  get active(): boolean {
    return this.forwarding
  }

  start(): void {
    this.apply(true)
    this.timer = everyAligned(CHECK_EVERY_MS, () => this.check(), { unref: true }) // one wake-up with the other timers (util/aligned-timer.ts)
  }

  stop(): void {
    this.timer?.stop()
    this.timer = null
  }

  check(): void {
    const why = Date.now() - this.started < STARTUP_FORWARD_MS ? 'starting'
      : this.someoneIndirect() ? 'a member is not directly connected'
        : null
    const want = why !== null
    if (want) this.dropExpiredBackoffs()
    if (want === this.forwarding) {
      if (!want) this.leaveMesh(false)
      return
    }
    this.forwarding = want
    this.apply(want)
    if (!want) this.leaveMesh(true)
    this.log.debug(`gossip forwarding ${why !== null ? `on: ${why}` : 'off: every member is directly connected'}`)
  }

  private apply(on: boolean): void {
    const opts = (this.pubsub as unknown as { opts?: Partial<Degrees> }).opts
    if (typeof opts?.D !== 'number' || typeof opts.Dlo !== 'number' || typeof opts.Dlazy !== 'number' || typeof opts.gossipFactor !== 'number') return // not the gossipsub we know: keep its config
    opts.D = on ? FORWARD_D : 0
    opts.Dlo = on ? FORWARD_DLO : 0
    opts.Dlazy = on ? FORWARD_DLAZY : 0
    opts.gossipFactor = on ? FORWARD_GOSSIP_FACTOR : 0
  }

  /** Lets gossipsub's next heartbeat graft the peers whose backoff is over (see the header). */
  private dropExpiredBackoffs(): void {
    const backoffs = (this.pubsub as unknown as Partial<MeshInternals>).backoff
    const forTopic = backoffs instanceof Map ? backoffs.get(this.topic) : undefined
    if (!(forTopic instanceof Map)) return
    const now = Date.now()
    for (const [id, until] of forTopic) if (until <= now) forTopic.delete(id)
  }

  /** PRUNE every mesh peer that does not ask for forwarding (see the header); `switchingOff`: forwarding was just turned off. */
  private leaveMesh(switchingOff: boolean): void {
    const gs = this.pubsub as unknown as Partial<MeshInternals>
    const peers = gs.mesh instanceof Map ? gs.mesh.get(this.topic) : undefined
    if (!(peers instanceof Set) || typeof gs.sendPrune !== 'function') {
      if (!switchingOff) return
      // not the gossipsub we know: leave the whole mesh through the public API, once
      this.pubsub.unsubscribe(this.topic)
      this.pubsub.subscribe(this.topic)
      return
    }
    for (const id of [...peers]) {
      if (this.keeps(id)) continue
      peers.delete(id)
      gs.sendPrune.call(this.pubsub, id, this.topic).catch(() => { /* the peer went away */ })
    }
  }
}
