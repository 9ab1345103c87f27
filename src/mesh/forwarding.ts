// Gossip forwarding only where it is needed.
//
// Load messages are flood-published: each goes once to every member we have a connection to,
// and in a mesh where every member dials every other that is all of them. Gossipsub's mesh
// (members forwarding every message to D peers) then only adds duplicates, and with every
// member publishing every 2 s each duplicate costs every idle daemon CPU. So the mesh degree
// is 0 while this member has a direct connection to every member it knows of.
//
// It turns forwarding on (degree FORWARD_D: it grafts peers, and they forward what they
// receive to it) while it is starting, when it knows only its bootstrap peers, and while
// any known member is not directly connected (behind NAT, on another segment, only relayed).
// Those members' messages then reach us through the peers we grafted, and ours reach them
// the same way, since the peers they grafted forward them. Turning it off leaves the mesh
// (unsubscribe + subscribe sends PRUNE), so an idle, fully connected mesh forwards nothing.
import type { GossipSub } from '@libp2p/gossipsub'
import type { Logger } from '../log.js'

export const FORWARD_D = 2
export const FORWARD_DLO = 1
/** how long a new member forwards regardless: until it has met the mesh */
export const STARTUP_FORWARD_MS = 20_000
const CHECK_EVERY_MS = 2000

/** The degrees gossipsub's heartbeat reads; they live on its options object. */
interface Degrees { D: number; Dlo: number }

export class ForwardingControl {
  private timer: NodeJS.Timeout | null = null
  private forwarding = true
  private readonly started = Date.now()

  constructor(
    private readonly pubsub: GossipSub,
    private readonly topic: string,
    /** true when some known member has no direct connection to us */
    private readonly someoneIndirect: () => boolean,
    private readonly log: Logger
  ) {}

  /** whether this member currently forwards (for status and tests) */
  get active(): boolean {
    return this.forwarding
  }

  start(): void {
    this.apply(true)
    this.timer = setInterval(() => this.check(), CHECK_EVERY_MS)
    this.timer.unref()
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
  }

  check(): void {
    const want = Date.now() - this.started < STARTUP_FORWARD_MS || this.someoneIndirect()
    if (want === this.forwarding) return
    this.forwarding = want
    this.apply(want)
    if (!want) {
      // leave the mesh we built: our PRUNE makes the peers stop forwarding to us
      this.pubsub.unsubscribe(this.topic)
      this.pubsub.subscribe(this.topic)
    }
    this.log.debug(`gossip forwarding ${want ? 'on: a member is not directly connected' : 'off: every member is directly connected'}`)
  }

  private apply(on: boolean): void {
    const opts = (this.pubsub as unknown as { opts?: Partial<Degrees> }).opts
    if (typeof opts?.D !== 'number' || typeof opts.Dlo !== 'number') return // not the gossipsub we know: keep its config
    opts.D = on ? FORWARD_D : 0
    opts.Dlo = on ? FORWARD_DLO : 0
  }
}
