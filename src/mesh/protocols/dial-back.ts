// Dial-back: "can a member on another network reach me?" One request per stream:
//
//   asker    → {v:1, addrs:[multiaddr, …]}          its own direct listen addresses (≤ 8)
//   helper   → {v:1, ok:[addr, …], why:"…"}          the ones where a libp2p node answered
//
// The helper tries only addresses on the IP this very connection comes from (as AutoNAT
// does): a member cannot make a helper dial a third party, and an address behind the asker's
// NAT fails with the reason said ("your connection comes from X"). A try is a TCP connection
// that must bring the 24-byte nonce a private-network (pnet) node sends first; it is closed
// right after, before any handshake, so it leaves no libp2p connection behind on either side.
// Members are trusted here (they hold the mesh key); the bounds are for mistakes and floods.
import { connect } from 'node:net'
import type { Libp2p, Stream } from '@libp2p/interface'
import { Framed, ProtocolViolation, int, strList } from './framing.js'
import { toMultiaddr } from '../addresses.js'

export const dialBackProtocol = (meshId: string) => `/meshcc/${meshId}/dialback/1.0.0`

const VERSION = 1
const MAX_ADDRS = 8
const MAX_ADDR = 256
/** pnet's nonce: what a meshcc node sends as soon as a TCP connection opens */
const NONCE_BYTES = 24
const TRY_TIMEOUT_MS = 4000
const REQUEST_TIMEOUT_MS = 15_000
/** a peer asks at most this often; more requests are answered with an empty list */
const MIN_GAP_PER_PEER_MS = 5_000

export interface DialBackResult { ok: string[]; why: string }

/** Asker: on a stream it opened to the helper. */
export async function askDialBack(stream: Stream, addrs: string[]): Promise<DialBackResult> {
  const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS)
  const f = new Framed(stream)
  try {
    await f.writeJson({ v: VERSION, addrs: addrs.slice(0, MAX_ADDRS) }, signal)
    const r = await f.readJson(signal)
    int(r.v, 'v', VERSION, VERSION)
    return { ok: strList(r.ok, 'ok', MAX_ADDRS, MAX_ADDR), why: typeof r.why === 'string' ? r.why.slice(0, 200) : '' }
  } catch (err) {
    f.abort(err as Error)
    throw err
  } finally {
    await f.close()
  }
}

/** host and port of a direct TCP address, or null */
function tcpTarget(addr: string): { ip: string; port: number } | null {
  if (addr.includes('/p2p-circuit')) return null
  const c = toMultiaddr(addr)?.getComponents() ?? []
  const port = Number(c.find((x) => x.name === 'tcp')?.value)
  if ((c[0]?.name !== 'ip4' && c[0]?.name !== 'ip6') || !(port > 0 && port < 65536)) return null
  return { ip: c[0].value ?? '', port }
}

/** Whether a pnet node answers at ip:port within the timeout. */
export function pnetAnswers(ip: string, port: number, timeoutMs = TRY_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: ip, port })
    let got = 0
    const done = (ok: boolean) => { clearTimeout(timer); sock.destroy(); resolve(ok) }
    const timer = setTimeout(() => done(false), timeoutMs)
    sock.on('data', (d: Buffer) => { got += d.length; if (got >= NONCE_BYTES) done(true) })
    sock.once('error', () => done(false))
    sock.once('close', () => done(false))
  })
}

/** Helper side: answers dial-back requests from members. */
export async function serveDialBack(node: Libp2p, meshId: string, onError: (peer: string, err: Error) => void): Promise<void> {
  const last = new Map<string, number>()
  let busy = 0
  await node.handle(dialBackProtocol(meshId), async (stream, connection) => {
    const peer = connection.remotePeer.toString()
    const f = new Framed(stream, { stallMs: REQUEST_TIMEOUT_MS })
    try {
      const req = await f.readJson()
      int(req.v, 'v', VERSION, VERSION)
      const addrs = strList(req.addrs, 'addrs', MAX_ADDRS, MAX_ADDR)
      const from = tcpTarget(connection.remoteAddr.toString())
      const now = Date.now()
      if (last.size > 1000) last.clear()
      if (now - (last.get(peer) ?? 0) < MIN_GAP_PER_PEER_MS || busy >= 4) {
        await f.writeJson({ v: VERSION, ok: [], why: 'busy: ask again later' })
        return
      }
      last.set(peer, now)
      if (!from) {
        await f.writeJson({ v: VERSION, ok: [], why: 'asked over a relayed connection' })
        return
      }
      const mine = addrs.map((a) => ({ a, t: tcpTarget(a) })).filter((x) => x.t !== null && x.t.ip === from.ip)
      if (mine.length === 0) {
        await f.writeJson({ v: VERSION, ok: [], why: `behind NAT: your connection comes from ${from.ip}, an address you do not listen on` })
        return
      }
      busy++
      try {
        const results = await Promise.all(mine.map(async (x) => ((await pnetAnswers(x.t!.ip, x.t!.port)) ? x.a : null)))
        const ok = results.filter((a): a is string => a !== null)
        await f.writeJson({ v: VERSION, ok, why: ok.length > 0 ? '' : `nothing answered at ${mine.map((x) => `${x.t!.ip}:${x.t!.port}`).join(', ')} (a firewall, or a NAT without a port mapping)` })
      } finally {
        busy--
      }
    } catch (err) {
      if (!(err instanceof ProtocolViolation)) onError(peer, err as Error)
      f.abort(err as Error)
    } finally {
      await f.close()
    }
  }, { maxInboundStreams: 2 })
}
