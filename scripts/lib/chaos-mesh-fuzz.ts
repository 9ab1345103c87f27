// Every mesh protocol fuzzed by a member holding the mesh key: compile job, toolchain fetch,
// member exchange, load gossip and keep-alive (yamux pings, and the ping protocol that measures
// RTTs). The fuzzer is the lab's "hostile" member (a real libp2p node of the project's own
// startMesh); it writes the wire formats by hand, mutating valid messages and adding junk. After
// each protocol the builder must be the same daemon, compile an ordinary job byte-identically,
// and its memory must stay bounded. Every address a fuzzed message names is on 127.0.0.1 (the
// builder's own namespace): the dials it provokes go nowhere else.
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import type { Connection, Stream } from '@libp2p/interface'
import { byteStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import { createHash } from 'node:crypto'
import { gzipSync } from 'node:zlib'
import { compileJobProtocol, encodeFileTable, type JobFileRef } from '../../src/mesh/protocols/compile-job.js'
import { toolchainFetchProtocol } from '../../src/mesh/protocols/toolchain-fetch.js'
import { memberExchangeProtocol } from '../../src/mesh/protocols/member-exchange.js'
import { encodeLoad, loadTopic, type LoadMessage } from '../../src/mesh/protocols/load-gossip.js'
import { fmtMiB, inParallel, pollFor, sleep, type Rand, type Row, type RowEnv, type RowRecorder } from './chaos-common.js'
import { hostileLab, type HostileLab } from './chaos-hostile-lab.js'

const MiB = 1024 * 1024
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')

/** An unsigned varint, as libp2p's length prefix. */
function varint(n: number): Buffer {
  const out: number[] = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    out.push(b)
  } while (n > 0)
  return Buffer.from(out)
}
const frame = (b: Buffer) => Buffer.concat([varint(b.length), b])
const jsonFrame = (v: unknown) => frame(Buffer.from(JSON.stringify(v)))

/** Values a mutated field may take. */
function oddValue(r: Rand): unknown {
  return r.pick<() => unknown>([
    () => null, () => -1, () => 1e308, () => 2 ** 53, () => '', () => 'x'.repeat(r.range(5000, 300_000)), () => [], () => ({}), () => true,
    () => '../../../../etc', () => r.bytes(r.int(40)).toString('latin1'), () => Array.from({ length: r.int(5000) }, () => 'a'), () => ({ __proto__: { x: 1 } })
  ])()
}

/** A valid object with one to three fields set to odd values, removed or added. */
function mutate(r: Rand, doc: Record<string, unknown>): Record<string, unknown> {
  const out = { ...doc }
  for (let i = r.range(1, 3); i > 0; i--) {
    const keys = Object.keys(out)
    const k = r.chance(0.8) && keys.length > 0 ? r.pick(keys) : r.pick(['extra', '__proto__', 'constructor', 'type'])
    if (r.chance(0.15)) delete out[k]
    else out[k] = oddValue(r)
  }
  return out
}

/** Loopback addresses and junk: all a fuzzed message may name. */
function addrs(r: Rand): string[] {
  return Array.from({ length: r.int(6) }, () => r.pick([`/ip4/127.0.0.1/tcp/${r.range(1, 65535)}`, `/ip4/127.0.0.1/tcp/${r.range(1, 65535)}/p2p/12D3KooWBadPeer`, 'not a multiaddr', '', `/ip4/127.0.0.1/udp/${r.range(1, 65535)}`]))
}

/** Reads what the builder says for at most `ms`, then the stream is dropped. */
async function drain(stream: Stream, ms: number): Promise<number> {
  const bs = byteStream(stream)
  const signal = AbortSignal.timeout(ms)
  let n = 0
  try {
    for (;;) {
      const got = await bs.read({ signal })
      if (got === null) break
      n += got.byteLength
    }
  } catch { /* reset, closed, or our time is up */ }
  return n
}

type Action = (lab: HostileLab, r: Rand, peers: string[]) => Promise<string | null>

/** Opens a stream of `protocol` to the builder, writes `bytes` (in pieces when asked), reads its answer briefly, drops the stream. */
async function onStream(lab: HostileLab, protocol: string, bytes: Buffer[], readMs = 200): Promise<string | null> {
  let stream: Stream
  try {
    stream = await lab.hostile.libp2p.dialProtocol(peerIdFromString(lab.builderPeer), protocol, { signal: AbortSignal.timeout(10_000) })
  } catch (err) {
    return `could not open a stream: ${(err as Error).message.split('\n')[0]}`
  }
  try {
    const bs = byteStream(stream)
    for (const b of bytes) await bs.write(b, { signal: AbortSignal.timeout(5000) })
  } catch { /* the builder reset it: what it should do with most of these */ }
  await drain(stream, readMs)
  stream.abort(new Error('fuzz over'))
  return null
}

function validJobHeader(r: Rand, files: number): Record<string, unknown> {
  return {
    v: 3, toolchain: r.chance(0.5) ? 'a'.repeat(64) : sha256(r.bytes(8)), compiler: '/usr/bin/gcc', argv: ['-c', 'x.c', '-o', '/w/x.o'], cwd: '/w', env: {},
    ppHash: '0'.repeat(64), ppArgv: ['-E', 'x.c'], objPath: '/w/x.o', files, dirs: []
  }
}

const compileJob: Action = (lab, r) => {
  const proto = compileJobProtocol(lab.meshId)
  const src = r.bytes(r.int(200))
  const ref: JobFileRef = { path: '/w/x.c', mode: 0o644, size: src.length, hash: sha256(src) }
  const table = encodeFileTable([ref])
  const blob = (b: Buffer) => [jsonFrame({ blob: b.length }), ...(b.length ? [frame(b)] : [])]
  const variant = r.int(10)
  switch (variant) {
    case 0: return onStream(lab, proto, [r.bytes(r.int(2048))]) // not even frames
    case 1: return onStream(lab, proto, [frame(r.bytes(r.int(4096)))]) // a frame that is not JSON
    case 2: return onStream(lab, proto, [jsonFrame(mutate(r, validJobHeader(r, 1))), ...blob(table)]) // an odd header
    case 3: return onStream(lab, proto, [jsonFrame(validJobHeader(r, r.int(20_001))), jsonFrame({ blob: r.pick([-1, 1e12, 16 * MiB, 'x', null]) })]) // an odd table size
    case 4: return onStream(lab, proto, [jsonFrame(validJobHeader(r, 1)), ...blob(r.bytes(r.range(1, 600)))]) // a table of junk
    case 5: { // a table, then inputs that are not gzip, or gzip of the wrong bytes
      const inputs = r.chance(0.5) ? r.bytes(r.int(4096)) : gzipSync(r.bytes(src.length + r.int(3)))
      return onStream(lab, proto, [jsonFrame(validJobHeader(r, 1)), ...blob(table), ...blob(inputs)], 1500)
    }
    case 6: return onStream(lab, proto, [Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7f])]) // a length prefix of 34 GB
    case 7: return onStream(lab, proto, [jsonFrame(validJobHeader(r, 20_000)), jsonFrame({ blob: 16 * MiB }), frame(Buffer.alloc(r.range(1, 256) * 1024))]) // a big table, started, dropped
    case 8: return onStream(lab, proto, []) // opened and dropped
    default: return onStream(lab, proto, [jsonFrame(validJobHeader(r, 1)), ...blob(table).slice(0, 1)]) // a table announced, never sent
  }
}

const toolchainFetch: Action = (lab, r) => {
  const proto = toolchainFetchProtocol(lab.meshId)
  const variant = r.int(8)
  switch (variant) {
    case 0: return onStream(lab, proto, [r.bytes(r.int(2048))])
    case 1: return onStream(lab, proto, [frame(r.bytes(r.int(2048)))])
    case 2: return onStream(lab, proto, [jsonFrame(mutate(r, { v: 1, hash: sha256(r.bytes(4)) }))])
    case 3: return onStream(lab, proto, [jsonFrame({ v: 1, hash: sha256(r.bytes(4)) })]) // one it does not hold
    case 4: return onStream(lab, proto, [jsonFrame({ v: r.int(3), hash: r.pick(['', 'G'.repeat(64), '0'.repeat(63), 'a'.repeat(129), '../../etc/passwd']) })])
    case 5: return onStream(lab, proto, [Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7f])])
    case 6: return onStream(lab, proto, [])
    // one it holds (gcc, 43 MiB): read a little, then drop the transfer
    default: return onStream(lab, proto, [jsonFrame({ v: 1, hash: r.chance(0.2) ? lab.gcc.hash : sha256(r.bytes(4)) })], 100)
  }
}

function loadDoc(r: Rand): Record<string, unknown> {
  const m: LoadMessage = {
    cores: r.int(64), running: r.int(8), queued: r.int(8), freeSlots: r.int(8), load1: r.int(100) / 10, speed: r.int(1000), toolchains: [], accept: r.pick(['always', 'idle', 'never'] as const),
    version: 'fuzz', shim: r.chance(0.5), name: 'fuzz', addrs: addrs(r).filter((a) => a.startsWith('/ip4/127.0.0.1/tcp/')), seq: r.int(1e9), timestamp: Date.now() + r.range(-1e9, 1e9)
  }
  return JSON.parse(Buffer.from(encodeLoad(m)).toString('utf8')) as Record<string, unknown>
}

const memberExchange: Action = (lab, r, peers) => {
  const proto = memberExchangeProtocol(lab.meshId)
  const members = () => Array.from({ length: r.chance(0.1) ? r.int(1001) : r.int(20) }, () => [r.chance(0.8) ? r.pick(peers) : r.bytes(r.int(60)).toString('latin1'), addrs(r)])
  const variant = r.int(6)
  switch (variant) {
    case 0: return onStream(lab, proto, [r.bytes(r.int(2048))])
    case 1: return onStream(lab, proto, [frame(r.bytes(r.int(2048)))])
    case 2: return onStream(lab, proto, [jsonFrame(mutate(r, { v: 1, load: JSON.stringify(loadDoc(r)), members: members() }))])
    case 3: return onStream(lab, proto, [jsonFrame({ v: 1, load: JSON.stringify(mutate(r, loadDoc(r))), members: members() })])
    case 4: return onStream(lab, proto, [Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7f])])
    default: return onStream(lab, proto, [jsonFrame({ v: 1, load: JSON.stringify(loadDoc(r)), members: members() })]) // valid, candidates on 127.0.0.1
  }
}

const loadGossip: Action = async (lab, r) => {
  const topic = loadTopic(lab.meshId)
  const variant = r.int(5)
  let data: Buffer
  switch (variant) {
    case 0: data = r.bytes(r.int(r.chance(0.1) ? 200_000 : 8192)); break
    case 1: data = Buffer.from(JSON.stringify(mutate(r, loadDoc(r)))); break
    case 2: data = Buffer.from(JSON.stringify(loadDoc(r))); break
    case 3: data = Buffer.from(JSON.stringify({ ...loadDoc(r), t: Array.from({ length: r.int(100) }, () => sha256(r.bytes(4))), n: 'n'.repeat(r.int(9000)) })); break
    // gossipsub itself: a stream of junk RPCs
    default: return onStream(lab, '/meshsub/1.1.0', [frame(r.bytes(r.int(4096))), r.bytes(r.int(64))])
  }
  try {
    await lab.hostile.libp2p.services.pubsub.publish(topic, data)
  } catch { /* too large for our own gossipsub, or no peers for a moment: not the builder's doing */ }
  return null
}

/**
 * The muxer of hostile's connection to the builder. The answers to our own pings would be answers
 * nobody asked for, which yamux takes for a protocol error: its handler passes on only the answer
 * to the ping its keep-alive is waiting for (without that, the keep-alive closes the connection a
 * minute later).
 */
interface RawMuxer { sendFrame(header: { type: number; flag: number; streamID: number; length: number }): void; handlePingResponse(id: number): void; activePing?: { id: number } }
const patched = new WeakSet<RawMuxer>()
const PING = 2
const SYN = 1
const ACK = 2

async function builderConnection(lab: HostileLab): Promise<{ conn: Connection; muxer: RawMuxer } | null> {
  const peer = peerIdFromString(lab.builderPeer)
  let conn = lab.hostile.libp2p.getConnections(peer).find((c) => c.status === 'open')
  if (!conn) {
    try { conn = await lab.hostile.libp2p.dial(multiaddr(lab.builderAddr), { signal: AbortSignal.timeout(10_000) }) } catch { return null }
  }
  const muxer = (conn as unknown as { muxer?: RawMuxer }).muxer
  if (!muxer || typeof muxer.sendFrame !== 'function') return null
  if (!patched.has(muxer)) {
    const answer = muxer.handlePingResponse.bind(muxer)
    muxer.handlePingResponse = (id) => { if (muxer.activePing?.id === id) answer(id) }
    patched.add(muxer)
  }
  return { conn, muxer }
}

let pingSent = 0
let connectionsDropped = 0
const keepAlive: Action = async (lab, r) => {
  const c = await builderConnection(lab)
  if (!c) return 'no connection to the builder, and none could be made'
  const variant = r.int(100)
  const id = r.next()
  if (variant < 92) {
    c.muxer.sendFrame({ type: PING, flag: SYN, streamID: 0, length: id }) // a ping the builder answers
    pingSent++
  } else if (variant < 99) {
    // what yamux must treat as a protocol error (an answer nobody asked for, a flag or stream a ping never has): the builder closes this connection
    c.muxer.sendFrame(r.pick([{ type: PING, flag: ACK, streamID: 0, length: id }, { type: PING, flag: r.pick([0, 4, 8, 3]), streamID: 0, length: id }, { type: PING, flag: SYN, streamID: r.range(1, 1000), length: id }]))
    const closed = await pollFor(5000, () => (c.conn.status !== 'open' ? true : undefined), 20)
    if (closed) connectionsDropped++
    await builderConnection(lab) // dialed again at once: the next message has a connection to go on
  } else {
    // the ping protocol, with a payload of the wrong size; a stream opened on a connection the
    // builder has just closed (our last protocol error) fails: once more on a fresh one
    const payload = r.bytes(r.pick([0, 1, 31, 33, 64, 4096]))
    const first = await onStream(lab, '/ipfs/ping/1.0.0', [payload], 300)
    if (first === null) return null
    await builderConnection(lab)
    return onStream(lab, '/ipfs/ping/1.0.0', [payload], 300)
  }
  if (r.chance(0.05)) await sleep(0) // let the builder's answers in
  return null
}

interface Protocol { name: string; action: Action; concurrency: number }
const PROTOCOLS: Protocol[] = [
  { name: 'compile job', action: compileJob, concurrency: 4 },
  { name: 'toolchain fetch', action: toolchainFetch, concurrency: 4 },
  { name: 'member exchange', action: memberExchange, concurrency: 4 },
  { name: 'load gossip', action: loadGossip, concurrency: 4 },
  { name: 'keep-alive', action: keepAlive, concurrency: 1 }
]

async function fuzzProtocol(env: RowEnv, rec: RowRecorder, lab: HostileLab, p: Protocol, peers: string[]): Promise<string> {
  const before = await lab.builderRss()
  let peak = before
  const sampler = setInterval(() => { void lab.builderRss().then((rss) => { peak = Math.max(peak, rss) }, () => {}) }, 500)
  const t0 = Date.now()
  try {
    await inParallel(Array.from({ length: env.trials }, (_, i) => i), p.concurrency, async (i) => {
      await rec.trial(`${p.name} ${i}`, () => p.action(lab, env.rand.derive(`${p.name} ${i}`), peers))
    })
  } finally {
    clearInterval(sampler)
  }
  await sleep(2000)
  const after = await lab.builderRss()
  peak = Math.max(peak, after)
  const alive = await lab.builderAlive()
  if (alive) rec.fail(`after ${p.name}`, alive)
  const ordinary = await lab.ordinaryJob()
  if (ordinary) rec.fail(`the ordinary job after ${p.name}`, ordinary)
  // bounded: what a member may make a builder hold is capped far below this, and the fuzz sends little
  if (peak - before > 256 * MiB) rec.fail(`memory during ${p.name}`, `RSS grew from ${fmtMiB(before)} to ${fmtMiB(peak)}`)
  if (after - before > 64 * MiB) rec.fail(`memory after ${p.name}`, `RSS ${fmtMiB(before)} before, ${fmtMiB(after)} 2 s after`)
  env.log(`${p.name}: ${env.trials} in ${((Date.now() - t0) / 1000).toFixed(0)} s, RSS ${fmtMiB(before)} → peak ${fmtMiB(peak)} → ${fmtMiB(after)}`)
  return `${p.name} ${fmtMiB(before)} → ${fmtMiB(peak)} → ${fmtMiB(after)}`
}

export const meshFuzz: Row = {
  id: 'mesh-fuzz',
  title: 'every mesh protocol (compile job, toolchain fetch, member exchange, load gossip, keep-alive), fuzzed as an authorised member',
  mustShow: 'builder alive and serving, memory bounded',
  trials: { full: 10_000, quick: 100 },
  unit: 'messages over 5 protocols',
  async run(env, rec) {
    const lab = await hostileLab(env)
    // peer ids that exist (the builder can dial them on 127.0.0.1 and find nobody there)
    const peers = await Promise.all(Array.from({ length: 20 }, async () => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()))
    const rss: string[] = []
    for (const p of PROTOCOLS) rss.push(await fuzzProtocol(env, rec, lab, p, peers))
    rec.figure(`builder alive (the same daemon) and compiling an ordinary job byte-identically after each protocol; RSS before → peak → after: ${rss.join('; ')}`)
    rec.note(`${env.trials} messages per protocol from a member holding the mesh key, each on a stream of its own (keep-alive: on the connection), mixing junk with valid messages mutated field by field:`,
      'compile job (bytes that are not frames, frames that are not JSON, odd headers, odd or junk file tables, inputs that are not gzip or not the bytes announced, a 34 GB length prefix, a 16 MiB table started and dropped, streams opened and dropped);',
      'toolchain fetch (junk, odd requests and hashes, hashes it does not hold, the 43 MiB gcc toolchain it holds, read a little and dropped); member exchange (junk, odd documents and load messages, up to 1000 candidate members on 127.0.0.1);',
      `load gossip (published on the load topic: random bytes up to 200 KB, mutated and valid load messages, oversized names and toolchain lists; and junk RPCs on gossipsub's own stream);`,
      `keep-alive (${pingSent} yamux pings with random ids, and yamux protocol errors, after each of which the builder closed the connection (${connectionsDropped} times) and the member dialed again; the ping protocol with payloads of the wrong size).`,
      'After each protocol: the same builder daemon, an ordinary job compiled byte-identically, RSS (the daemon\'s own status, sampled every 500 ms) at most 256 MiB above where it started and at most 64 MiB above it 2 s after.')
  }
}
