// The toolchain-fetch protocol: any member serves the toolchain archives it holds, by content
// hash, so a builder that lacks one fetches it from the client or from any other holder.
//
//   client → {v:2, hash}
//   holder → {ok:true, window} + blob (the archive)   |   {ok:false, reason}
//   client → {ack: bytes} as it stores the archive: the holder sends at most `window` bytes
//            beyond the last ack, so the client acks until it has stored all but the last
//            window. A v 1 client is sent {ok:true} and the archive unpaced; from a holder
//            that names no window (v 1), nothing is acked.
//
// Archives are tens of MiB (up to the toolchain cache's size): neither side ever holds one in
// memory. The holder sends from its file; the client writes to a file as the bytes arrive,
// hashing them and counting them against its limit, and keeps the file only when the sha256 is
// the one it asked for.
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { open, rm, type FileHandle } from 'node:fs/promises'
import { pipeline } from 'node:stream/promises'
import type { Libp2p } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { clip } from '../../log.js'
import { CHUNK_BYTES, Framed, int, ProtocolViolation, str } from './framing.js'

export const toolchainFetchProtocol = (meshId: string) => `/meshcc/${meshId}/toolchain/1.0.0`

/** a holder waits this long for a request, a client this long for each piece of the archive */
const STALL_MS = 60_000
const WRITE_AHEAD = 8 * 1024 * 1024
/**
 * Bytes a holder sends ahead of the client's last ack. yamux grants window as data arrives,
 * not as it is read, so without this a client whose disk or CPU falls behind the link (a
 * loaded builder) had its fetch dropped by libp2p ("Read buffer overflow") and the job that
 * waited for the toolchain failed; below the client's read buffer (2 * WRITE_AHEAD).
 */
const WINDOW = WRITE_AHEAD

/**
 * Fetch the archive `hash` from `peer` into `dest` (created here, never overwritten). Resolves to
 * its size once its sha256 is `hash`; otherwise throws and leaves no file.
 */
export async function fetchToolchain(node: Libp2p, meshId: string, peer: string, hash: string, limit: number, dest: string, signal: AbortSignal): Promise<number> {
  const stream = await node.dialProtocol(peerIdFromString(peer), toolchainFetchProtocol(meshId), { signal })
  const f = new Framed(stream, { stallMs: STALL_MS, maxBufferSize: 2 * WRITE_AHEAD })
  let created = false
  let kept = false
  try {
    await f.writeJson({ v: 2, hash }, signal)
    const head = await f.readJson<{ ok?: unknown; reason?: unknown; window?: unknown }>(signal)
    if (head.ok !== true) throw new ProtocolViolation(`peer has no toolchain ${hash.slice(0, 12)}: ${typeof head.reason === 'string' ? clip(head.reason) : 'no reason'}`)
    const window = head.window === undefined ? null : int(head.window, 'window', 1)
    const size = await f.readBlobSize(limit, signal)
    const sha = createHash('sha256')
    // the stream must be read about as fast as it arrives (see FramedOptions.maxBufferSize), so
    // writes queue up to WRITE_AHEAD rather than wait on the disk one by one
    const out = createWriteStream(dest, { flags: 'wx', mode: 0o600, highWaterMark: WRITE_AHEAD }).once('open', () => { created = true })
    let stored = 0
    await pipeline(f.readBlobChunks(size, signal), async function * (chunks) {
      for await (const chunk of chunks) {
        sha.update(chunk)
        yield chunk
        // taken by the file's write queue: the holder may send this much more (it waits for
        // no ack past size - window, and reads none after its last byte)
        stored += chunk.length
        if (window !== null && stored - chunk.length < size - window) await f.writeJson({ ack: stored }, signal)
      }
    }, out)
    const actual = sha.digest('hex')
    if (actual !== hash) throw new ProtocolViolation(`toolchain from ${peer} has sha256 ${actual}, not ${hash}`)
    kept = true
    return size
  } finally {
    if (created && !kept) await rm(dest, { force: true })
    await f.close()
  }
}

/** What a served transfer took, for the sender's status. */
export interface ServedToolchain { hash: string; peer: string; bytes: number; ms: number }

/** `archiveOf` returns the path of the archive for a hash this node holds, or null; `onSent` hears of each archive sent whole. */
export async function serveToolchains(node: Libp2p, meshId: string, archiveOf: (hash: string) => Promise<string | null>, onError: (peer: string, err: Error) => void,
  onSent?: (sent: ServedToolchain) => void): Promise<void> {
  await node.handle(toolchainFetchProtocol(meshId), async (stream, connection) => {
    const f = new Framed(stream, { stallMs: STALL_MS })
    const t0 = Date.now()
    let archive: FileHandle | null = null
    try {
      const req = await f.readJson<{ v?: unknown; hash?: unknown }>()
      const hash = str(req.hash, 'hash', 128)
      const paced = typeof req.v === 'number' && req.v >= 2
      if (!/^[0-9a-f]{64}$/.test(hash)) throw new ProtocolViolation('bad toolchain hash')
      const path = await archiveOf(hash)
      // opened once: the size sent is the size of the file read, even if the path is replaced meanwhile
      archive = path === null ? null : await open(path, 'r').catch(() => null)
      if (archive === null) {
        await f.writeJson({ ok: false, reason: 'not held here' })
        return
      }
      const { size } = await archive.stat()
      await f.writeJson(paced ? { ok: true, window: WINDOW } : { ok: true })
      await f.writeBlobFrom(size, archive.createReadStream({ highWaterMark: CHUNK_BYTES, autoClose: false }), undefined, paced ? WINDOW : undefined)
      onSent?.({ hash, peer: connection.remotePeer.toString(), bytes: size, ms: Date.now() - t0 })
    } catch (err) {
      onError(connection.remotePeer.toString(), err as Error)
      f.abort(err as Error)
    } finally {
      await archive?.close()
      await f.close()
    }
  }, { maxInboundStreams: 32 })
}
