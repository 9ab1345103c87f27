// The toolchain-fetch protocol: any member serves the toolchain archives it holds, by content
// hash, so a builder that lacks one fetches it from the client or from any other holder.
//
//   client → {v:1, hash}
//   holder → {ok:true} + blob (the archive)   |   {ok:false, reason}
import type { Libp2p } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { Framed, ProtocolViolation, str } from './framing.js'

export const toolchainFetchProtocol = (meshId: string) => `/meshcc/${meshId}/toolchain/1.0.0`

export async function fetchToolchain(node: Libp2p, meshId: string, peer: string, hash: string, limit: number, signal: AbortSignal): Promise<Buffer> {
  const stream = await node.dialProtocol(peerIdFromString(peer), toolchainFetchProtocol(meshId), { signal })
  const f = new Framed(stream)
  try {
    await f.writeJson({ v: 1, hash }, signal)
    const head = await f.readJson<{ ok?: unknown; reason?: unknown }>(signal)
    if (head.ok !== true) throw new ProtocolViolation(`peer has no toolchain ${hash.slice(0, 12)}: ${typeof head.reason === 'string' ? head.reason.slice(0, 200) : 'no reason'}`)
    return await f.readBlob(limit, signal)
  } finally {
    await f.close()
  }
}

/** What a served transfer took, for the sender's status. */
export interface ServedToolchain { hash: string; peer: string; bytes: number; ms: number }

/** `archiveOf` returns the archive bytes for a hash this node holds, or null; `onSent` hears of each archive sent whole. */
export async function serveToolchains(node: Libp2p, meshId: string, archiveOf: (hash: string) => Promise<Buffer | null>, onError: (peer: string, err: Error) => void,
  onSent?: (sent: ServedToolchain) => void): Promise<void> {
  await node.handle(toolchainFetchProtocol(meshId), async (stream, connection) => {
    const f = new Framed(stream)
    const t0 = Date.now()
    try {
      const req = await f.readJson<{ v?: unknown; hash?: unknown }>()
      const hash = str(req.hash, 'hash', 128)
      if (!/^[0-9a-f]{64}$/.test(hash)) throw new ProtocolViolation('bad toolchain hash')
      const data = await archiveOf(hash)
      if (!data) {
        await f.writeJson({ ok: false, reason: 'not held here' })
        return
      }
      await f.writeJson({ ok: true })
      await f.writeBlob(data)
      onSent?.({ hash, peer: connection.remotePeer.toString(), bytes: data.length, ms: Date.now() - t0 })
    } catch (err) {
      onError(connection.remotePeer.toString(), err as Error)
      f.abort(err as Error)
    } finally {
      await f.close()
    }
  }, { maxInboundStreams: 32 })
}
