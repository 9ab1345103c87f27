// Member exchange: when a connection between two members opens, the dialer opens one stream
// and both ends say who they are (their current load message) and which members they know
// (peer id and a few addresses each). A newcomer that only reached its bootstrap peer thus
// learns the whole mesh at once and dials it, and every member it dials has it in its view
// from that moment, instead of waiting for gossip to be forwarded to it.
//
//   dialer   → {v:1, load:"<load message JSON, as gossiped>", members:[[peerId, [addr, …]], …]}
//   listener → the same shape
//
// The load is trusted as the remote member's own because the stream is authenticated (noise,
// inside the mesh key); the member list is only a list of candidates to dial, and dialing
// proves each one (a wrong peer id fails the handshake).
import type { Libp2p, Stream } from '@libp2p/interface'
import { Framed, ProtocolViolation, int, str, strList, MAX_CONTROL_BYTES } from './framing.js'
import { decodeLoad, encodeLoad, MAX_LOAD_MESSAGE_BYTES, type LoadMessage } from './load-gossip.js'

export const memberExchangeProtocol = (meshId: string) => `/meshcc/${meshId}/members/1.0.0`

export const EXCHANGE_VERSION = 1
/** members listed per exchange; a larger mesh still converges through gossip and later exchanges */
export const MAX_EXCHANGE_MEMBERS = 1000
export const MAX_EXCHANGE_ADDRS = 4
const MAX_PEER_ID = 128
const MAX_ADDR = 256
const EXCHANGE_TIMEOUT_MS = 10_000

export interface KnownMember { peerId: string; addrs: string[] }

export interface MemberInfo {
  /** the sender's own load message, as it would gossip it */
  load: LoadMessage
  /** members the sender knows (not itself) */
  members: KnownMember[]
}

/** The exchange frame as a JSON-ready object, at most one control frame in size. */
export function exchangeDoc(info: MemberInfo): Record<string, unknown> {
  const members: Array<[string, string[]]> = []
  let size = 64 + MAX_LOAD_MESSAGE_BYTES * 2
  for (const m of info.members.slice(0, MAX_EXCHANGE_MEMBERS)) {
    const addrs = m.addrs.filter((a) => a.length > 0 && a.length <= MAX_ADDR).slice(0, MAX_EXCHANGE_ADDRS)
    const entry: [string, string[]] = [m.peerId, addrs]
    size += JSON.stringify(entry).length + 1
    if (size > MAX_CONTROL_BYTES) break // stay within one control frame
    members.push(entry)
  }
  return { v: EXCHANGE_VERSION, load: Buffer.from(encodeLoad(info.load)).toString('utf8'), members }
}

/** Validates an exchange frame already parsed as a JSON object; throws ProtocolViolation. */
export function decodeExchange(doc: Record<string, unknown>): MemberInfo {
  int(doc.v, 'v', EXCHANGE_VERSION, EXCHANGE_VERSION)
  let load: LoadMessage
  try {
    load = decodeLoad(Buffer.from(str(doc.load, 'load', MAX_LOAD_MESSAGE_BYTES), 'utf8'))
  } catch (err) {
    throw new ProtocolViolation(`field load: ${(err as Error).message}`)
  }
  if (!Array.isArray(doc.members) || doc.members.length > MAX_EXCHANGE_MEMBERS) {
    throw new ProtocolViolation(`field members: expected a list of at most ${MAX_EXCHANGE_MEMBERS} entries`)
  }
  const members = doc.members.map((e: unknown, i): KnownMember => {
    if (!Array.isArray(e) || e.length !== 2) throw new ProtocolViolation(`field members[${i}]: expected [peer id, addresses]`)
    return { peerId: str(e[0], `members[${i}][0]`, MAX_PEER_ID), addrs: strList(e[1], `members[${i}][1]`, MAX_EXCHANGE_ADDRS, MAX_ADDR) }
  })
  return { load, members }
}

/** Runs the dialer's side on a stream it opened; resolves with what the listener said. */
export async function exchangeMembers(stream: Stream, ours: MemberInfo): Promise<MemberInfo> {
  const signal = AbortSignal.timeout(EXCHANGE_TIMEOUT_MS)
  const f = new Framed(stream)
  try {
    await f.writeJson(exchangeDoc(ours), signal)
    return decodeExchange(await f.readJson(signal))
  } catch (err) {
    f.abort(err as Error)
    throw err
  } finally {
    await f.close()
  }
}

/**
 * Serves the listener's side. `ours` is called after the dialer's message was read and handed
 * to `onInfo`, so the answer already counts the dialer.
 */
export async function serveMemberExchange(
  node: Libp2p,
  meshId: string,
  ours: () => MemberInfo,
  onInfo: (peerId: string, info: MemberInfo) => void,
  onError: (peerId: string, err: Error) => void
): Promise<void> {
  await node.handle(memberExchangeProtocol(meshId), async (stream, connection) => {
    const peer = connection.remotePeer.toString()
    const signal = AbortSignal.timeout(EXCHANGE_TIMEOUT_MS)
    const f = new Framed(stream)
    try {
      onInfo(peer, decodeExchange(await f.readJson(signal)))
      await f.writeJson(exchangeDoc(ours()), signal)
    } catch (err) {
      onError(peer, err as Error)
      f.abort(err as Error)
    } finally {
      await f.close()
    }
  }, { maxInboundStreams: 8 })
}
