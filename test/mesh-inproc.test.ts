// In-process meshes on 127.0.0.1 (mdns off): the 'members' event, notifyLoadChanged latency,
// the deny list, and addresses() with real ports.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer } from 'node:net'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import { generateMeshKey, writeMeshKey, loadOrCreateIdentity } from '../src/mesh/keys.js'
import { startMesh, type Mesh, type MeshMember, type LoadInfo } from '../src/mesh/mesh.js'
import { loadConfig } from '../src/config.js'
import { createLogger, type Logger } from '../src/log.js'
import { waitFor } from './helpers/mesh-proc.js'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { createMeshNode, type MeshLibp2p } from '../src/mesh/node.js'
import { meshIdFromKey } from '../src/mesh/keys.js'
import { captureLog, freshPsk } from './helpers/mesh-node.js'

const dir = mkdtempSync(join(tmpdir(), 'meshcc-inproc-'))
const meshes: Mesh[] = []
const nodes: MeshLibp2p[] = []
after(async () => {
  await Promise.all(meshes.map((m) => m.stop()))
  await Promise.all(nodes.map((n) => n.stop()))
  rmSync(dir, { recursive: true, force: true })
})

interface Captured { log: Logger; lines: string[] }
function capture(): Captured {
  const lines: string[] = []
  const mk = (prefix: string): Logger => ({
    error: (m) => lines.push(`E ${prefix}${m}`), warn: (m) => lines.push(`W ${prefix}${m}`),
    info: (m) => lines.push(`I ${prefix}${m}`), debug: (m) => lines.push(`D ${prefix}${m}`),
    child: (c) => mk(`${prefix}${c}: `), enabled: () => true
  })
  return { log: process.env.MESHCC_TEST_VERBOSE ? createLogger({ level: 'debug', file: null, stderr: true }) : mk(''), lines }
}

async function start(name: string, key: string, o: { bootstrap?: string[]; deny?: string[]; load: () => Omit<LoadInfo, 'version' | 'name'>; gossipIntervalMs?: number; listen?: string; repairIntervalMs?: number }) {
  const home = join(dir, name)
  mkdirSync(home, { recursive: true })
  const list = (a: string[]) => `[${a.map((x) => JSON.stringify(x)).join(', ')}]`
  writeFileSync(join(home, 'config.toml'), [
    '[mesh]', `listen = ["${o.listen ?? '/ip4/127.0.0.1/tcp/0'}"]`, 'mdns = false', 'dht = false',
    `bootstrap = ${list(o.bootstrap ?? [])}`, `deny = ${list(o.deny ?? [])}`, `name = "${name}"`,
    `key_file = ${JSON.stringify(key)}`, `identity_file = ${JSON.stringify(join(home, 'id.key'))}`, ''
  ].join('\n'))
  const cap = capture()
  const m = await startMesh({ config: loadConfig({ MESHCC_CONF: join(home, 'config.toml'), HOME: dir }), log: cap.log, version: '9.9.9', getLoad: o.load, gossipIntervalMs: o.gossipIntervalMs, expiryMs: 6000, repairIntervalMs: o.repairIntervalMs })
  meshes.push(m)
  return { m, lines: cap.lines }
}

const load = (cores: number, running = 0): Omit<LoadInfo, 'version' | 'name'> => ({ cores, running, queued: 0, freeSlots: cores - running, load1: 0.5, speed: 2, toolchains: ['tc1'], accept: 'always', shim: true })

test('members event, notifyLoadChanged, deny list', { timeout: 60_000 }, async (t) => {
  const key = join(dir, 'mesh.key')
  writeMeshKey(key, generateMeshKey())
  // C's peer id must be known before A starts, to deny it
  mkdirSync(join(dir, 'C'), { recursive: true })
  const cId = peerIdFromPrivateKey(await loadOrCreateIdentity(join(dir, 'C', 'id.key'))).toString()

  let aRunning = 0
  let aQueued = 0
  // a long interval, so a fast update can only come from notifyLoadChanged
  const A = await start('A', key, { deny: [cId], load: () => ({ ...load(4, aRunning), queued: aQueued }), gossipIntervalMs: 2000 })
  assert.ok(A.m.addresses().every((a) => /\/tcp\/[1-9]\d*\/p2p\//.test(a)), `real ports: ${A.m.addresses().join(' ')}`)
  const events: MeshMember[][] = []
  const off = A.m.on('members', (ms) => events.push(ms))

  const B = await start('B', key, { bootstrap: [A.m.addresses()[0]], load: () => load(2) })
  const C = await start('C', key, { bootstrap: [B.m.addresses()[0]], load: () => load(8) })

  await waitFor('B to see A and C', () => (B.m.members().length === 3 ? true : undefined), 15_000)
  await waitFor('A to see B', () => (A.m.members().some((m) => m.peerId === B.m.peerId) ? true : undefined), 15_000)
  await waitFor('members event listing B', () => (events.some((ms) => ms.some((m) => m.peerId === B.m.peerId)) ? true : undefined), 5000)
  off()

  // deny: C never enters A's view (not even through B's forwarding) and never connects to A
  await new Promise((r) => setTimeout(r, 2500))
  assert.ok(!A.m.members().some((m) => m.peerId === cId), 'A must not list denied C')
  assert.equal(A.m.libp2p.getConnections().filter((c) => c.remotePeer.toString() === cId).length, 0)
  assert.equal(A.m.isAllowed(cId), false)
  assert.equal(A.m.isAllowed(B.m.peerId), true)
  assert.ok(!A.lines.concat(C.lines).some((l) => /different mesh key/.test(l)), 'a denied peer is not reported as a key mismatch')

  // the gossip carries the load fields
  const aInB = B.m.members().find((m) => m.peerId === A.m.peerId)!
  assert.deepEqual(aInB.load, { ...load(4), version: '9.9.9', name: 'A' })

  // notifyLoadChanged: B sees the new running count long before the next periodic publish
  await new Promise((r) => setTimeout(r, 300))
  aRunning = 3
  const t0 = Date.now()
  A.m.notifyLoadChanged()
  A.m.notifyLoadChanged() // coalesced with the first
  await waitFor('B to see A running 3', () => (B.m.members().find((m) => m.peerId === A.m.peerId)?.load.running === 3 ? true : undefined), 1500, 10)
  t.diagnostic(`load change visible on B after ${Date.now() - t0} ms`)

  // a change placement does not read (jobs queued) waits for the interval: a client starting and
  // ending hundreds of jobs must not send every member a message per job
  const pubsub = A.m.libp2p.services.pubsub
  const publish = pubsub.publish.bind(pubsub)
  let published = 0
  pubsub.publish = ((...args: Parameters<typeof publish>) => { published++; return publish(...args) }) as typeof pubsub.publish
  for (let i = 1; i <= 5; i++) {
    aQueued = i
    A.m.notifyLoadChanged()
    await new Promise((r) => setTimeout(r, 150))
  }
  assert.ok(published <= 1, `queued changes alone published ${published} messages in 750 ms (the 2 s interval allows 1)`)
  // free slots do change placement: published at once
  const before = published
  aRunning = 1
  A.m.notifyLoadChanged()
  await waitFor('B to see A running 1', () => (B.m.members().find((m) => m.peerId === A.m.peerId)?.load.freeSlots === 3 ? true : undefined), 1500, 10)
  assert.ok(published > before)

  // gossip view holders count as toolchain providers even without the DHT
  assert.deepEqual(await B.m.findToolchainProviders('tc1', 500), [A.m.peerId, B.m.peerId, C.m.peerId].sort())
})

test('bootstrap peers are redialed until they come up', { timeout: 60_000 }, async (t) => {
  const key = join(dir, 'mesh2.key')
  writeMeshKey(key, generateMeshKey())
  const port = await new Promise<number>((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as { port: number }).port
      srv.close(() => resolve(p))
    })
  })
  // learn A's peer id and address, then take A down
  const first = await start('R-A', key, { load: () => load(1), listen: `/ip4/127.0.0.1/tcp/${port}` })
  const addr = first.m.addresses()[0]
  await first.m.stop()
  meshes.splice(meshes.indexOf(first.m), 1)

  const B = await start('R-B', key, { bootstrap: [addr], load: () => load(1) })
  await new Promise((r) => setTimeout(r, 2500)) // a few failed attempts
  assert.ok(B.lines.some((l) => /^W .*cannot reach bootstrap peer .*retrying in/.test(l)), B.lines.join('\n'))
  assert.equal(B.lines.filter((l) => /^W .*cannot reach bootstrap peer/.test(l)).length, 1, 'warned once, then quiet')
  const t0 = Date.now()
  const A = await start('R-A', key, { load: () => load(1), listen: `/ip4/127.0.0.1/tcp/${port}` })
  assert.equal(A.m.addresses()[0], addr, 'same identity and port')
  await waitFor('B to reconnect to A', () => (B.m.members().some((m) => m.peerId === A.m.peerId) ? true : undefined), 20_000, 100)
  t.diagnostic(`B reached A ${Date.now() - t0} ms after A came back`)
  assert.ok(B.lines.some((l) => /^I .*connected to bootstrap peer/.test(l)))
})

test('a newcomer that knows only its bootstrap peer meets the rest by member exchange', { timeout: 60_000 }, async (t) => {
  const key = join(dir, 'mesh3.key')
  writeMeshKey(key, generateMeshKey())
  const A = await start('X-A', key, { load: () => load(2) })
  const addrA = A.m.addresses()[0]!
  const B = await start('X-B', key, { bootstrap: [addrA], load: () => load(3) })
  const sees = (m: Mesh, id: string, kind?: MeshMember['connection']) => m.members().some((x) => x.peerId === id && (kind === undefined || x.connection === kind))
  await waitFor('A and B to see each other', () => (sees(A.m, B.m.peerId) && sees(B.m, A.m.peerId) ? true : undefined), 20_000, 100)

  const t0 = Date.now()
  const C = await start('X-C', key, { bootstrap: [addrA], load: () => load(5) })
  await waitFor('C and B to be connected and in each other\'s view', () =>
    (sees(C.m, B.m.peerId, 'direct') && sees(B.m, C.m.peerId, 'direct') ? true : undefined), 20_000, 100)
  t.diagnostic(`C and B met ${Date.now() - t0} ms after C started`)
  // C heard of B from A in the exchange on their new connection, not from gossip
  assert.ok(C.lines.some((l) => l.startsWith(`D connected to ${B.m.peerId} (found by exchange)`)), C.lines.filter((l) => l.includes('connected to')).join('\n'))
  // and the exchange on C's connection to B gave each its load at once
  assert.equal(B.m.members().find((x) => x.peerId === C.m.peerId)?.load.cores, 5)
  assert.equal(C.m.members().find((x) => x.peerId === B.m.peerId)?.load.cores, 3)
})

// A member whose last connection closed while it is alive (a relay died, a NAT forgot the
// mapping) leaves the view; when every member we know is directly connected nobody forwards
// gossip (forwarding.ts), so nothing would bring it back: one redial of its last addresses does.
test('a member whose connection closed while it lives is redialed and back in the view', { timeout: 60_000 }, async (t) => {
  const key = join(dir, 'mesh-lost.key')
  writeMeshKey(key, generateMeshKey())
  const H = await start('L-H', key, { load: () => load(1) })
  const addrH = H.m.addresses()[0]!
  // A and B know only H, and meet each other by member exchange
  const A = await start('L-A', key, { bootstrap: [addrH], load: () => load(2) })
  const B = await start('L-B', key, { bootstrap: [addrH], load: () => load(3) })
  const sees = (m: Mesh, id: string) => m.members().some((x) => x.peerId === id && x.connection === 'direct')
  await waitFor('A and B directly connected, in each other\'s view', () => (sees(A.m, B.m.peerId) && sees(B.m, A.m.peerId) ? true : undefined), 20_000, 100)
  await waitFor('all three to stop forwarding', () => ([H, A, B].every((x) => !x.m.gossipForwarding()) ? true : undefined), 30_000, 200)
  // A drops its connection to B (as a dead relay or a NAT would): both forget each other
  const t0 = Date.now()
  await A.m.libp2p.hangUp(B.m.libp2p.peerId)
  const back = await waitFor('A and B back in each other\'s view', () => (sees(A.m, B.m.peerId) && sees(B.m, A.m.peerId) ? true : undefined), 15_000, 100).catch(() => undefined)
  t.diagnostic(`back after ${Date.now() - t0} ms; A: ${A.lines.filter((l) => /L-B|disconnected|redialed/.test(l) || l.includes(B.m.peerId)).slice(-4).join(' | ')}`)
  assert.ok(back, 'A and B find each other again within 15 s, without forwarding or a bootstrap between them')
  assert.ok(A.lines.concat(B.lines).some((l) => l.includes('(redialed: its connection closed)')), 'by the redial of a lost member')
})

// Crossing dials leave two connections, and the connector closes the one the larger peer id
// dialed (both sides agree). Gossipsub runs one long-lived stream per peer and direction over
// whichever connection it met first; closing that one must not leave the pair unable to
// gossip. (The connector also tells gossipsub about the connection it kept, since gossipsub
// opens its outbound stream only when told of a connection or when the peer opens one; in
// our runs it recovered here even without that.)
test('a duplicate connection closed under gossipsub does not silence the pair', { timeout: 60_000 }, async (t) => {
  const key = join(dir, 'mesh4.key')
  writeMeshKey(key, generateMeshKey())
  // know the peer ids first: the smaller one's connection is kept when dials cross
  const ids: Array<{ name: string; id: string }> = []
  for (const name of ['D-1', 'D-2']) {
    mkdirSync(join(dir, name), { recursive: true })
    ids.push({ name, id: peerIdFromPrivateKey(await loadOrCreateIdentity(join(dir, name, 'id.key'))).toString() })
  }
  ids.sort((a, b) => (a.id < b.id ? -1 : 1))
  const S = await start(ids[0]!.name, key, { load: () => load(1) })
  // the larger one dials first: gossipsub opens its streams on that connection
  const L = await start(ids[1]!.name, key, { bootstrap: [S.m.addresses()[0]!], load: () => load(2) })
  const sees = (m: Mesh, id: string) => m.members().find((x) => x.peerId === id)
  await waitFor('S and L to see each other', () => (sees(S.m, L.m.peerId) && sees(L.m, S.m.peerId) ? true : undefined), 20_000, 100)
  // then the smaller one opens a second connection, as a crossing dial would: the first one,
  // which carries gossipsub's streams, is the one both sides close
  const { peerIdFromString } = await import('@libp2p/peer-id')
  await S.m.libp2p.dial(peerIdFromString(L.m.peerId), { force: true })
  await waitFor('the duplicate to be closed', () => (S.m.libp2p.getConnections(peerIdFromString(L.m.peerId)).length === 1 ? true : undefined), 10_000, 100)
  // past the expiry (6 s here), both still hear from each other
  const t0 = Date.now()
  while (Date.now() - t0 < 9000) {
    await new Promise((r) => setTimeout(r, 1000))
    const ls = sees(S.m, L.m.peerId)
    const sl = sees(L.m, S.m.peerId)
    assert.ok(ls && Date.now() - ls.lastSeen < 4000, `S still hears from L (${ls ? `${Date.now() - ls.lastSeen} ms since its last message` : 'gone from the view'})`)
    assert.ok(sl && Date.now() - sl.lastSeen < 4000, `L still hears from S (${sl ? `${Date.now() - sl.lastSeen} ms since its last message` : 'gone from the view'})`)
  }
  t.diagnostic(`one connection left: ${S.m.libp2p.getConnections(peerIdFromString(L.m.peerId))[0]?.direction} from S`)
})

test('gossipsub keeps a connected peer when a read stream fails, and gets a lost stream back', { timeout: 60_000 }, async (t) => {
  const key = join(dir, 'mesh5.key')
  writeMeshKey(key, generateMeshKey())
  const P = await start('R-1', key, { load: () => load(1), repairIntervalMs: 1000 })
  const Q = await start('R-2', key, { bootstrap: [P.m.addresses()[0]!], load: () => load(2), repairIntervalMs: 1000 })
  const sees = (m: Mesh, id: string) => m.members().find((x) => x.peerId === id)
  await waitFor('P and Q to see each other', () => (sees(P.m, Q.m.peerId) && sees(Q.m, P.m.peerId) ? true : undefined), 20_000, 100)
  const { peerIdFromString } = await import('@libp2p/peer-id')
  type Internals = { handlePeerReadStreamError(e: Error, p: PeerId): void; peers: Map<string, unknown>; streamsOutbound: Map<string, { rawStream: { abort(e: Error): void } }> }
  const gsP = P.m.libp2p.services.pubsub as unknown as Internals
  const qId = peerIdFromString(Q.m.peerId)
  const bothHear = async (what: string) => {
    // past the expiry (6 s here), both still hear from each other
    const t0 = Date.now()
    while (Date.now() - t0 < 8000) {
      await new Promise((r) => setTimeout(r, 1000))
      const pq = sees(P.m, Q.m.peerId)
      const qp = sees(Q.m, P.m.peerId)
      assert.ok(pq && Date.now() - pq.lastSeen < 4500, `${what}: P still hears from Q (${pq ? `${Date.now() - pq.lastSeen} ms since its last message` : 'gone from the view'})`)
      assert.ok(qp && Date.now() - qp.lastSeen < 4500, `${what}: Q still hears from P (${qp ? `${Date.now() - qp.lastSeen} ms since its last message` : 'gone from the view'})`)
    }
  }
  // 1. what gossipsub calls when a read stream from Q fails, as a stale one left by a closed
  // duplicate connection does: stock gossipsub forgets Q although the connection stays open
  gsP.handlePeerReadStreamError(new Error('stream reset'), qId)
  assert.equal(gsP.peers.has(Q.m.peerId), true, 'P keeps Q while connected')
  await bothHear('after a failed read stream')
  // 2. P's outbound stream to Q dies on an open connection: P gets a new one from the repair
  gsP.streamsOutbound.get(Q.m.peerId)!.rawStream.abort(new Error('test: stream reset'))
  await waitFor('the stream to be gone', () => (gsP.streamsOutbound.has(Q.m.peerId) ? undefined : true), 5000, 50)
  assert.equal(P.m.libp2p.getConnections(qId).length, 1, 'the connection stays')
  await bothHear('after a lost outbound stream')
  assert.ok(P.lines.some((l) => l.includes('had no stream to it; telling it of the connection again')), 'P repaired its stream to Q')
  // 3. a closed stream left in gossipsub's table, as when the other side closes a new stream
  // before gossipsub listens for its close event: every message to Q would be dropped
  const stale = gsP.streamsOutbound.get(Q.m.peerId)!
  stale.rawStream.abort(new Error('test: stream reset'))
  await waitFor('the stream to be gone', () => (gsP.streamsOutbound.has(Q.m.peerId) ? undefined : true), 5000, 50)
  gsP.streamsOutbound.set(Q.m.peerId, stale)
  await bothHear('after a closed stream was kept')
  assert.ok(P.lines.some((l) => l.includes('had a closed stream to it')), 'P replaced the closed stream')
  t.diagnostic(P.lines.filter((l) => l.includes('gossip:')).join(' | '))
})

test('a gossipsub mesh link left over from a graft is pruned once neither side asks for forwarding', { timeout: 60_000 }, async () => {
  const key = join(dir, 'mesh6.key')
  writeMeshKey(key, generateMeshKey())
  const P = await start('G-1', key, { load: () => load(1) })
  const Q = await start('G-2', key, { bootstrap: [P.m.addresses()[0]!], load: () => load(2) })
  const sees = (m: Mesh, id: string) => m.members().find((x) => x.peerId === id)
  await waitFor('P and Q to see each other', () => (sees(P.m, Q.m.peerId) && sees(Q.m, P.m.peerId) ? true : undefined), 20_000, 100)
  // past their first seconds both are directly connected to every member: no forwarding
  await waitFor('both to stop forwarding', () => (!P.m.gossipForwarding() && !Q.m.gossipForwarding() ? true : undefined), 20_000, 200)
  const { loadTopic } = await import('../src/mesh/index.js')
  const topic = loadTopic(P.m.meshId)
  type Internals = { mesh: Map<string, Set<string>>; backoff: Map<string, Map<string, number>>; sendGraft(id: string, topics: string[]): void }
  const gsP = P.m.libp2p.services.pubsub as unknown as Internals
  const gsQ = Q.m.libp2p.services.pubsub as unknown as Internals
  // Q grafts P, as a member does while it starts or cannot reach someone; P (below Dhi) accepts.
  // Neither then changes its own forwarding, so only pruning at every check undoes the link:
  // left alone, each would forward every message of the mesh to the other for good.
  // (their first seconds may have ended in a PRUNE: let its backoff be over, as after a minute)
  gsP.backoff.get(topic)?.delete(Q.m.peerId)
  gsQ.backoff.get(topic)?.delete(P.m.peerId)
  gsQ.mesh.get(topic)!.add(P.m.peerId)
  gsQ.sendGraft(P.m.peerId, [topic])
  await waitFor('P to accept the graft', () => (gsP.mesh.get(topic)?.has(Q.m.peerId) ? true : undefined), 5000, 20)
  await waitFor('the link to be pruned on both sides', () =>
    (!gsP.mesh.get(topic)?.has(Q.m.peerId) && !gsQ.mesh.get(topic)?.has(P.m.peerId) ? true : undefined), 8000, 100)
  assert.equal(P.m.gossipForwarding(), false)
  assert.ok(sees(P.m, Q.m.peerId) && sees(Q.m, P.m.peerId), 'both still in each other\'s view')
})

test('a relay bounds what one member pushes through it, both ways ([mesh] relay_rate)', { timeout: 90_000 }, async () => {
  const psk = freshPsk()
  const lines: string[] = []
  const node = async (relay: { maxReservations: number; rate?: number } | null) => {
    const n = await createMeshNode({ privateKey: await generateKeyPair('Ed25519'), psk, meshId: meshIdFromKey(psk), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, dht: false, relay, isDenied: () => false, log: captureLog(lines) })
    nodes.push(n)
    return n
  }
  const RATE = 256 * 1024
  const limited = await node({ maxReservations: 4, rate: RATE })
  const open = await node({ maxReservations: 4 })
  const a = await node(null) // holds slots on both relays (as a member behind NAT would)
  const b = await node(null) // comes to a through them
  const PROTO = '/meshcc-test/sink/1.0.0'
  // a and b each read what comes until the end and answer with the byte count
  const serve = (n: MeshLibp2p) => n.handle(PROTO, async (stream) => {
    let got = 0
    for await (const chunk of stream) got += chunk.byteLength
    stream.send(new TextEncoder().encode(String(got)))
    await stream.close()
  }, { runOnLimitedConnection: true })
  await serve(a)
  const tm = (n: MeshLibp2p) => (n as unknown as { components: { transportManager: { listen(a: Multiaddr[]): Promise<void> } } }).components.transportManager
  const circuits: Record<string, string> = {}
  for (const [name, relay] of [['limited', limited], ['open', open]] as const) {
    const addr = relay.getMultiaddrs()[0]!
    await a.dial(addr)
    await tm(a).listen([multiaddr(`${addr.toString()}/p2p-circuit`)])
    circuits[name] = `${addr.toString()}/p2p-circuit/p2p/${a.peerId.toString()}`
  }
  const MiB = 1024 * 1024
  const relayed = (c: { remoteAddr: Multiaddr }) => c.remoteAddr.toString().includes('/p2p-circuit')
  /** b dials a through `via`; then `from` (b, or a on that same relayed connection) sends the other
   *  1 MiB; ms until the other side has counted it all */
  const push = async (from: MeshLibp2p, via: string): Promise<number> => {
    const conn = await b.dial(multiaddr(via))
    assert.ok(relayed(conn), `relayed: ${conn.remoteAddr.toString()}`)
    const fromConn = from === b ? conn : await waitFor('a sees the relayed connection', () => a.getConnections(b.peerId).find(relayed), 10_000, 50)
    const stream = await fromConn.newStream(PROTO, { runOnLimitedConnection: true })
    const t0 = Date.now()
    const chunk = new Uint8Array(16 * 1024)
    for (let sent = 0; sent < MiB; sent += chunk.byteLength) {
      if (!stream.send(chunk)) await new Promise((r) => stream.addEventListener('drain', r, { once: true }))
    }
    await stream.close()
    let answer = ''
    for await (const c of stream) answer += new TextDecoder().decode(c.subarray())
    assert.equal(Number(answer), MiB, 'every byte arrived')
    const ms = Date.now() - t0
    await conn.close()
    return ms
  }
  const fast = await push(b, circuits.open!)
  const slow = await push(b, circuits.limited!)
  // 1 MiB at 256 KiB/s after a 256 KiB burst: about 3 s
  // (a lower bound: load on the machine only makes it slower; the unlimited relay is the control)
  assert.ok(slow >= 2700, `the limited relay held b back: ${slow} ms for 1 MiB (unlimited: ${fast} ms)`)
  assert.ok(slow < 30_000, `but let it through: ${slow} ms`)

  // the other way: what a (the member holding the reservation) sends to b comes through its stop stream
  await serve(b)
  const slowBack = await push(a, circuits.limited!)
  assert.ok(slowBack >= 2700, `the limited relay held a back too: ${slowBack} ms for 1 MiB`)
  assert.deepEqual(lines.filter((l) => l.startsWith('E ')), [], 'no errors')
})
