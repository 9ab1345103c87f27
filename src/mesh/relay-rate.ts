// [mesh] relay_rate: what one member may push through this node's relay, in bytes per second.
// Any member holding the mesh key may reserve a slot here; without a bound one of them could
// take the relay's whole uplink. Every byte a member sends into a relayed connection (as the
// dialing side, on the circuit's hop stream, or as the reserving side, on its stop stream)
// draws on that member's token bucket; when it runs dry, the member's relayed streams are
// paused until it refills. A paused stream stops yamux's window updates, so the member's own
// node waits: nothing piles up here. The circuit-relay library has no rate limit of its own
// (only a byte or time limit per relayed connection, which cuts a compile job off mid-way).
//
// Hooked in through the registrar: the relay's hop handler is wrapped (the streams a CONNECT
// opens are found on the connections right after it), no library code is changed.
import type { Connection, Stream, StreamHandler, StreamHandlerOptions } from '@libp2p/interface'
import type { Logger } from '../log.js'
import type { MeshLibp2p } from './node.js'

export const RELAY_HOP_PROTOCOL = '/libp2p/circuit/relay/0.2.0/hop'
export const RELAY_STOP_PROTOCOL = '/libp2p/circuit/relay/0.2.0/stop'
/** yamux's largest stream window (16 MiB) and some room */
const MAX_PAUSED_BUFFER = 17 * 1024 * 1024

interface RegistrarLike {
  getHandler(protocol: string): { handler: StreamHandler; options: StreamHandlerOptions }
  handle(protocol: string, handler: StreamHandler, options?: StreamHandlerOptions & { force?: boolean }): Promise<void>
}

/** One member's budget: tokens (bytes) refilled at `rate`, at most `burst`, allowed into debt. */
class Bucket {
  private tokens: number
  private at = Date.now()
  readonly paused = new Set<Stream>()
  timer: NodeJS.Timeout | null = null

  constructor(private readonly rate: number, private readonly burst: number) {
    this.tokens = burst
  }

  /** takes n bytes; returns how long the member must wait before the balance is back at zero (ms), 0 if none */
  take(n: number): number {
    const now = Date.now()
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) * this.rate) / 1000)
    this.at = now
    this.tokens -= n
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens * 1000) / this.rate)
  }
}

/**
 * Bounds each member's relayed bytes per second on this node's relay (`rate` > 0). Call after
 * the node started (its relay service registered the hop handler).
 */
export async function limitRelayRate(node: MeshLibp2p, rate: number, log: Logger): Promise<void> {
  const registrar = (node as unknown as { components?: { registrar?: RegistrarLike } }).components?.registrar
  if (!registrar) throw new Error('no registrar to hook the relay into')
  const original = registrar.getHandler(RELAY_HOP_PROTOCOL)
  // one second's worth, and at least one yamux window, may pass at once
  const burst = Math.max(rate, 256 * 1024)
  const buckets = new Map<string, Bucket>()
  const watched = new WeakSet<Stream>()

  const bucketOf = (peer: string): Bucket => {
    let b = buckets.get(peer)
    if (!b) {
      b = new Bucket(rate, burst)
      buckets.set(peer, b)
      if (buckets.size > 4096) buckets.delete(buckets.keys().next().value!)
    }
    return b
  }

  /** Counts what `sender` pushes into this relayed stream, and pauses it while the sender is over its rate. */
  const watch = (stream: Stream, sender: string) => {
    if (watched.has(stream)) return
    watched.add(stream)
    // paused, the stream still takes what the sender's yamux window allows (it grows up to
    // 16 MiB): buffer that rather than abort the stream at the default 4 MiB
    stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, MAX_PAUSED_BUFFER)
    stream.addEventListener('message', (evt) => {
      const b = bucketOf(sender)
      const wait = b.take(evt.data.byteLength)
      if (wait === 0) return
      for (const s of [stream, ...b.paused]) {
        if (s.readStatus !== 'readable') continue
        try { s.pause(); b.paused.add(s) } catch { /* closing */ }
      }
      if (b.timer) return
      log.debug(`relay: ${sender} over relay_rate, its relayed streams wait ${wait} ms`)
      b.timer = setTimeout(() => {
        b.timer = null
        // resume() hands out what was buffered at once, which may pause a stream again (and set
        // a new timer): empty the set before, or that stream would never be resumed
        const waiting = [...b.paused]
        b.paused.clear()
        for (const s of waiting) {
          try { if (s.readStatus === 'paused') s.resume() } catch { /* closed meanwhile */ }
        }
      }, wait)
      b.timer.unref()
    })
    stream.addEventListener('close', () => { for (const b of buckets.values()) b.paused.delete(stream) }, { once: true })
  }

  const wrapped: StreamHandler = async (stream: Stream, connection: Connection) => {
    await original.handler(stream, connection)
    // the handler returns once the HOP exchange is over (a CONNECT's streams are joined by
    // then); watching only now leaves the library's own reading of the HOP message alone
    if (stream.readStatus !== 'readable') return
    watch(stream, connection.remotePeer.toString())
    // a CONNECT has opened its stop stream to the reserving member by now
    for (const c of node.getConnections()) {
      for (const s of c.streams) {
        if (s.protocol === RELAY_STOP_PROTOCOL && s.direction === 'outbound') watch(s, c.remotePeer.toString())
      }
    }
  }
  await registrar.handle(RELAY_HOP_PROTOCOL, wrapped, { ...original.options, force: true })
}
