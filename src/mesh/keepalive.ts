// One keep-alive for all of a node's connections: a yamux ping on every connection at the wall
// clock's multiples of KEEPALIVE_MS (util/aligned-timer.ts), and a connection whose ping goes
// unanswered for KEEPALIVE_TIMEOUT_MS is closed.
//
// It replaces two timers libp2p and yamux run per node or per connection, each at its own
// phase: yamux's keep-alive (a timer per connection; with 29 members about one ping a second
// to send and two frames a second to receive, each a wake-up) and libp2p's connection monitor
// (a ping *stream* per connection a minute: protocol negotiation both ways and a peer-store
// write). A yamux ping is one frame each way; here all of them leave in one wake-up, and
// members whose clocks agree send theirs in the same moment, so pongs and the peers' pings
// arrive together. What the monitor was for stays: a member that vanished without closing its
// connections (power cut, cable) is found and dropped within KEEPALIVE_MS + KEEPALIVE_TIMEOUT_MS.
// The ping also keeps NAT mappings open and gives each connection its RTT (rttOf in mesh.ts).
import type { Connection, PeerId } from '@libp2p/interface'
import type { Logger } from '../log.js'
import { everyAligned, type AlignedTimer } from '../util/aligned-timer.js'
import type { MeshLibp2p } from './node.js'

export const KEEPALIVE_MS = 30_000
/** an overloaded machine can take many seconds to answer; a dead one never does */
export const KEEPALIVE_TIMEOUT_MS = 60_000

interface PingingMuxer { ping(options?: { signal?: AbortSignal }): Promise<number> }

function muxerOf(conn: Connection): PingingMuxer | null {
  const m = (conn as unknown as { muxer?: Partial<PingingMuxer> }).muxer
  return m && typeof m.ping === 'function' ? m as PingingMuxer : null
}

export class KeepAlive {
  private timer: AlignedTimer | null = null
  private stopped = false
  private readonly onOpen = (evt: CustomEvent<Connection>) => this.ping(evt.detail) // an RTT at once

  constructor (
    private readonly node: MeshLibp2p,
    private readonly log: Logger,
    private readonly everyMs = KEEPALIVE_MS,
    private readonly timeoutMs = KEEPALIVE_TIMEOUT_MS
  ) {}

  start(): void {
    this.node.addEventListener('connection:open', this.onOpen)
    this.timer = everyAligned(this.everyMs, () => this.round(), { unref: true })
  }

  stop(): void {
    this.stopped = true
    this.timer?.stop()
    this.node.removeEventListener('connection:open', this.onOpen)
  }

  /** Pings every open connection now (also what the timer does). */
  round(): void {
    for (const conn of this.node.getConnections()) this.ping(conn)
  }

  /**
   * Pings the peer's connections now with a short timeout: a member that went silent in the
   * view (mesh.ts) is checked in seconds rather than at the next round. A slow answer from an
   * overloaded member costs it its connection, which the connector opens again.
   */
  probe(peer: PeerId, timeoutMs: number): void {
    for (const conn of this.node.getConnections(peer)) this.ping(conn, timeoutMs)
  }

  private ping(conn: Connection, timeoutMs = this.timeoutMs): void {
    const muxer = muxerOf(conn)
    if (!muxer || conn.status !== 'open' || this.stopped) return
    // a ping still unanswered from the last round is joined, not repeated (yamux does that)
    muxer.ping({ signal: AbortSignal.timeout(timeoutMs) }).catch((err: Error) => {
      if (this.stopped || conn.status !== 'open') return // closed meanwhile: nothing to do
      if (err.name !== 'TimeoutError' && err.name !== 'AbortError') return // muxer closing
      this.log.info(`closing the connection to ${conn.remotePeer.toString()}: no answer to a keep-alive ping in ${Math.round(timeoutMs / 1000)} s`)
      conn.abort(new Error(`no answer to a keep-alive ping in ${timeoutMs} ms`))
    })
  }
}
