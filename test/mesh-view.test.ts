// Real mesh processes on 127.0.0.1 (mdns off): bootstrap, gossip view convergence, expiry after
// SIGKILL, goodbye on clean stop, wrong-key refusal, DHT toolchain providers, RTT.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateMeshKey, writeMeshKey } from '../src/mesh/keys.js'
import { MeshProc, writeMeshConfig, killAllMeshProcs, waitFor } from './helpers/mesh-proc.js'
import type { MeshMember } from '../src/mesh/mesh.js'

const GOSSIP_MS = 500
const EXPIRY_MS = 2500
// the platform record is announced once no new connection opened for 3 s here, not 15 (dht-startup.ts)
const env = { MESHCC_TEST_GOSSIP_MS: String(GOSSIP_MS), MESHCC_TEST_EXPIRY_MS: String(EXPIRY_MS), MESHCC_TEST_DHT_STARTUP_MS: '3000' }
const dir = mkdtempSync(join(tmpdir(), 'meshcc-view-'))
after(async () => {
  await killAllMeshProcs()
  rmSync(dir, { recursive: true, force: true })
})

const ids = (ms: MeshMember[]) => ms.map((m) => m.peerId).sort()

test('three meshes converge; wrong key refused; DHT providers; expiry after SIGKILL', { timeout: 90_000 }, async (t) => {
  const key = join(dir, 'mesh.key')
  const otherKey = join(dir, 'other.key')
  writeMeshKey(key, generateMeshKey())
  writeMeshKey(otherKey, generateMeshKey())
  const listen = ['/ip4/127.0.0.1/tcp/0']
  const base = { listen, mdns: false, dht: true }

  const t0 = Date.now()
  const a = await MeshProc.start({ label: 'A', env, config: writeMeshConfig(dir, 'A', { ...base, keyFile: key, cores: 2 }) })
  const boot = [a.addrs.find((x) => x.includes('/127.0.0.1/'))!]
  assert.ok(boot[0].includes(`/p2p/${a.peerId}`), `dialable address with peer id: ${boot[0]}`)
  const [b, c, d] = await Promise.all([
    MeshProc.start({ label: 'B', env, config: writeMeshConfig(dir, 'B', { ...base, keyFile: key, cores: 3, bootstrap: boot }) }),
    MeshProc.start({ label: 'C', env, config: writeMeshConfig(dir, 'C', { ...base, keyFile: key, cores: 4, bootstrap: boot }) }),
    MeshProc.start({ label: 'D (other key)', env, config: writeMeshConfig(dir, 'D', { ...base, keyFile: otherKey, cores: 5, bootstrap: boot }) })
  ])
  t.diagnostic(`4 processes ready in ${Date.now() - t0} ms`)
  assert.equal(a.meshId, b.meshId)
  assert.notEqual(a.meshId, d.meshId)

  const good = [a, b, c]
  const want = ids(good.map((p) => ({ peerId: p.peerId }) as MeshMember))
  const cores = new Map([[a.peerId, 2], [b.peerId, 3], [c.peerId, 4]])
  const t1 = Date.now()
  await waitFor('every view to hold A, B, C with their cores', async () => {
    for (const p of good) {
      const ms = await p.members()
      if (JSON.stringify(ids(ms)) !== JSON.stringify(want)) return undefined
      for (const m of ms) if (m.load.cores !== cores.get(m.peerId)) return undefined
    }
    return true
  }, 20_000)
  t.diagnostic(`views converged ${Date.now() - t1} ms after start`)

  // shape of a member as the daemon sees it
  const viewA = await a.members()
  const selfA = viewA.find((m) => m.self)!
  assert.equal(selfA.peerId, a.peerId)
  assert.equal(selfA.connection, 'self')
  assert.equal(selfA.load.name, 'A')
  assert.equal(selfA.load.version, 'test-0.0.0')
  const bInA = viewA.find((m) => m.peerId === b.peerId)!
  assert.equal(bInA.load.name, 'B')
  assert.equal(bInA.load.freeSlots, 3)
  assert.equal(bInA.load.accept, 'always')
  assert.ok(bInA.addrs.some((x) => x.endsWith(`/p2p/${b.peerId}`)))
  assert.ok(Date.now() - bInA.lastSeen < EXPIRY_MS)
  assert.equal(bInA.lan, true)

  // B and C learned each other through gossip and connected directly
  await waitFor('B and C directly connected with an RTT', async () => {
    const m = (await b.members()).find((x) => x.peerId === c.peerId)
    return m && m.connection === 'direct' && m.rttMs !== null ? m : undefined
  }, 10_000)

  // one connection per pair: only the smaller peer id dials on discovery, and a crossed dial
  // (bootstrap meeting discovery) is closed within a second by both ends' common rule
  const duplicates = async () => {
    const found: string[] = []
    for (const p of good) {
      const conns = await p.request<Array<{ peer: string }>>('connections')
      const per = new Map<string, number>()
      for (const x of conns) per.set(x.peer, (per.get(x.peer) ?? 0) + 1)
      for (const [peer, n] of per) if (n > 1) found.push(`${p.label} has ${n} connections to ${peer}`)
    }
    return found
  }
  const left = await waitFor('duplicate connections to close', async () => ((await duplicates()).length === 0 ? [] : undefined), 5000, 250).catch(async () => duplicates())
  assert.deepEqual(left, [])

  // the other mesh never shows up, and says why
  for (const p of good) assert.ok(!ids(await p.members()).includes(d.peerId), `${p.label} must not list D`)
  assert.deepEqual(ids(await d.members()), [d.peerId])
  // a garbled handshake can also stall until the dial timeout (10 s) before it fails
  await waitFor('D to log the mesh key hint', () => (/different mesh key/.test(d.stderr()) ? true : undefined), 20_000)
  await waitFor('A to log the inbound mesh key hint', () => (/connection from 127\.0\.0\.1 failed during the private-network handshake/.test(a.stderr()) ? true : undefined), 20_000)
  assert.deepEqual((await d.request<unknown[]>('connections')), [])

  // DHT: a toolchain provided by B is found by C, and the platform capability by everyone
  const hash = 'f00dfeed'.repeat(8)
  const tp = Date.now()
  await b.request('provide', { hash })
  t.diagnostic(`provide took ${Date.now() - tp} ms`)
  const tf = Date.now()
  const found = await c.request<string[]>('find', { hash, timeoutMs: 5000 })
  t.diagnostic(`findToolchainProviders took ${Date.now() - tf} ms: ${found.length} provider(s)`)
  assert.deepEqual(found, [b.peerId], 'C finds B through the DHT (gossip toolchain lists are empty here)')
  assert.deepEqual(await a.request<string[]>('find', { hash: 'nobody'.padEnd(64, '0'), timeoutMs: 3000 }), [])
  const platform = `platform:${process.arch}-${process.platform}`
  await waitFor('platform capability of all three', async () => {
    const got = await a.request<string[]>('findCap', { name: platform, timeoutMs: 3000 })
    return want.every((id) => got.includes(id)) ? got : undefined
  }, 20_000, 500)
  assert.ok(!(await a.request<string[]>('findCap', { name: platform, timeoutMs: 3000 })).includes(d.peerId))

  // SIGKILL: C's connections close at once, so it leaves the others' views at once (the expiry
  // is the bound for members reached only through others)
  c.kill('SIGKILL')
  const tk = Date.now()
  await waitFor('C to leave the views of A and B', async () => {
    for (const p of [a, b]) if (ids(await p.members()).includes(c.peerId)) return undefined
    return true
  }, EXPIRY_MS + 3000, 100)
  const gone = Date.now() - tk
  t.diagnostic(`C dropped ${gone} ms after SIGKILL (expiry ${EXPIRY_MS} ms)`)
  assert.ok(gone < EXPIRY_MS + 3000, `within the expiry: ${gone} ms`)

  // clean stop: B says goodbye, A drops it at once
  const ts = Date.now()
  await b.stop()
  await waitFor('B to leave the view of A', async () => (ids(await a.members()).includes(b.peerId) ? undefined : true), EXPIRY_MS, 50)
  t.diagnostic(`B dropped ${Date.now() - ts} ms after SIGTERM (goodbye message)`)
  assert.deepEqual(ids(await a.members()), [a.peerId])
})
