// The library patches (src/mesh/patches/): every patch in the registry applies to the pinned
// libraries, every package a patch names is pinned in package.json and installed at exactly the
// version the patch was written against (a version bump fails here until the patch is
// re-checked), and on two real nodes (127.0.0.1, pnet, noise, yamux, gossipsub; A with the DHT,
// B without) each node patch does what it is for, so that each of these tests fails when its
// patch stops applying. The process patches have their own behaviour tests: patch-*.test.ts.
import { test, after, before } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { PeerId } from '@libp2p/interface'
import { ALL_PATCHES, NODE_PATCHES, PROCESS_PATCHES, applyProcessPatches, patchReport, patchWarning } from '../src/mesh/patches/index.js'
import { gossipHeartbeatPatch } from '../src/mesh/patches/gossip-heartbeat.js'
import type { MeshLibp2p } from '../src/mesh/node.js'
import { waitFor } from './helpers/mesh-proc.js'
import { captureLog, freshPsk, startMeshNode } from './helpers/mesh-node.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
/** Node 22 has Promise.withResolvers: the polyfill is then 'not needed' */
const NATIVE_WITH_RESOLVERS = Number(process.versions.node.split('.')[0]) >= 22
const nodes: MeshLibp2p[] = []
after(async () => { await Promise.all(nodes.map((n) => n.stop())) })

/** The version of `pkg` that this checkout resolves (its package.json, found above its entry point). */
function installedVersion(pkg: string): string {
  let dir = dirname(fileURLToPath(import.meta.resolve(pkg)))
  for (;;) {
    try {
      const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string }
      if (manifest.name === pkg) return manifest.version ?? '?'
    } catch { /* no package.json here */ }
    const up = dirname(dir)
    if (up === dir) throw new Error(`no package.json for ${pkg} above ${fileURLToPath(import.meta.resolve(pkg))}`)
    dir = up
  }
}

test('every process patch applies (the polyfill only where Node lacks the function)', () => {
  for (const s of applyProcessPatches()) {
    const want = s.name === 'promise-with-resolvers' && NATIVE_WITH_RESOLVERS ? 'not needed' : 'applied'
    assert.equal(s.state, want, `${s.name}: ${s.state} (${s.detail})`)
  }
  assert.equal(PROCESS_PATCHES.length + NODE_PATCHES.length, ALL_PATCHES.length)
  assert.equal(new Set(ALL_PATCHES.map((p) => p.name)).size, ALL_PATCHES.length, 'patch names are unique')
})

test('every package a patch names is pinned in package.json, and installed, at exactly that version', () => {
  // every library is bundled into the CLI, so package.json lists them as devDependencies
  const deps = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> }).devDependencies
  let checked = 0
  for (const p of ALL_PATCHES) {
    for (const [pkg, version] of Object.entries(p.packages)) {
      assert.equal(deps[pkg], version, `package.json pins ${pkg} at ${deps[pkg]}, patch ${p.name} was written for ${version}: re-check src/mesh/patches/${p.name}.ts, then update its version`)
      assert.equal(installedVersion(pkg), version, `${pkg} ${installedVersion(pkg)} is installed, patch ${p.name} was written for ${version}: run npm ci`)
      checked++
    }
  }
  assert.ok(checked >= 6, `${checked} packages checked`)
})

let A: MeshLibp2p
let B: MeshLibp2p
const linesA: string[] = []
before(async () => {
  const psk = freshPsk()
  A = await startMeshNode({ psk, dht: true, log: captureLog(linesA) })
  nodes.push(A)
  B = await startMeshNode({ psk, dht: false, log: captureLog([]) })
  nodes.push(B)
  await A.dial(B.getMultiaddrs()[0]!)
})

test('a node gets every patch, and logs no warning', () => {
  const report = patchReport(A)
  assert.deepEqual(report.map((s) => s.name).sort(), ALL_PATCHES.map((p) => p.name).sort())
  for (const s of report) assert.notEqual(s.state, 'not applied', `${s.name}: ${s.detail}`)
  assert.deepEqual(report.filter((s) => s.state !== 'applied').map((s) => s.name), NATIVE_WITH_RESOLVERS ? ['promise-with-resolvers'] : [])
  assert.deepEqual(linesA.filter((l) => l.startsWith('W ')), [])
  // without the DHT, its patch has nothing to do
  assert.equal(patchReport(B).find((s) => s.name === 'dht-connected-contacts')?.state, 'not needed')
})

test('gossip-read-error: a failed read stream from a connected peer does not make gossipsub forget it', async () => {
  type Gossip = { peers: Map<string, unknown>; handlePeerReadStreamError(err: unknown, peer: PeerId): void }
  const gs = A.services.pubsub as unknown as Gossip
  await waitFor('gossipsub on A to know B', () => (gs.peers.has(B.peerId.toString()) ? true : undefined), 10_000, 50)
  // what gossipsub calls when a read stream fails (stock: onPeerDisconnected, the peer is gone)
  gs.handlePeerReadStreamError(new Error('test: stream reset'), B.peerId)
  assert.equal(gs.peers.has(B.peerId.toString()), true, 'A\'s gossipsub still has B while connected')
})

test('gossip-heartbeat: gossipsub\'s heartbeat runs on the wall clock\'s whole seconds', async () => {
  const pubsub = A.services.pubsub
  const beats: number[] = []
  await new Promise<void>((resolve) => {
    const on = () => { beats.push(Date.now()); if (beats.length === 3) { pubsub.removeEventListener('gossipsub:heartbeat', on); resolve() } }
    pubsub.addEventListener('gossipsub:heartbeat', on)
  })
  // the first may be the one scheduled when the node started; from the next on, whole seconds
  // (stock: every second after the node started, whatever phase that had)
  assert.ok(beats.slice(1).every((t) => t % 1000 < 150), `heartbeats at ${beats.map((t) => t % 1000).join(', ')} ms past the second`)
})

test('dht-connected-contacts: a connected peer passes the routing table\'s new-contact check without a ping', async () => {
  const kb = (A.services.dht as unknown as { routingTable: { kb: { verify(c: { peerId: PeerId }): Promise<boolean> } } }).routingTable.kb
  // B runs no DHT: the stock check pings it over the DHT protocol, which fails (false)
  assert.equal(await kb.verify({ peerId: B.peerId }), true)
})

test('a patch that finds no internal to patch reports it, and its warning line names it', async () => {
  // a stopped gossipsub has no heartbeat start to move: the real 'not applied' path
  const psk = freshPsk()
  const C = await startMeshNode({ psk, dht: false, log: captureLog([]) })
  await C.stop()
  const outcome = gossipHeartbeatPatch.apply(C, captureLog([]))
  assert.equal(outcome.state, 'not applied')
  const line = patchWarning({ name: gossipHeartbeatPatch.name, packages: gossipHeartbeatPatch.packages, upstream: gossipHeartbeatPatch.upstream, ...outcome })
  assert.match(line ?? '', /^library patch gossip-heartbeat did not apply: .*hearbeatStartMs.*@libp2p\/gossipsub 17\.1\.1.*src\/mesh\/patches\/gossip-heartbeat\.ts/)
  assert.equal(patchWarning({ ...patchReport(A)[0]!, state: 'applied' }), null)
})
