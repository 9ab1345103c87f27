// Three mesh processes, each in its own network namespace on one lab bridge, no bootstrap:
// they must find each other by mDNS alone. mDNS runs only inside the lab namespaces.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateMeshKey, writeMeshKey } from '../src/mesh/keys.js'
import { MeshProc, writeMeshConfig, killAllMeshProcs, waitFor } from './helpers/mesh-proc.js'
import { createNetnsLab, liveNamespaces } from './helpers/netns.js'

const dir = mkdtempSync(join(tmpdir(), 'meshcc-mdns-'))
after(async () => {
  await killAllMeshProcs()
  rmSync(dir, { recursive: true, force: true })
})

test('three namespaces discover each other by mDNS alone', { timeout: 90_000 }, async (t) => {
  const r = createNetnsLab(3)
  if ('skip' in r) {
    t.skip(`cannot create network namespaces: ${r.skip}`)
    return
  }
  const { lab } = r
  try {
    const key = join(dir, 'mesh.key')
    writeMeshKey(key, generateMeshKey())
    const env = { MESHCC_TEST_GOSSIP_MS: '500', MESHCC_TEST_EXPIRY_MS: '2500' }
    const t0 = Date.now()
    // host 0 runs without the DHT: discovery and the view must not depend on it
    const procs = await Promise.all(lab.hosts.map((h, i) => MeshProc.start({
      label: `H${i}`,
      env,
      prefix: lab.prefix(h),
      config: writeMeshConfig(dir, `H${i}`, { keyFile: key, listen: ['/ip4/0.0.0.0/tcp/0'], bootstrap: [], mdns: true, dht: i !== 0, cores: i + 1 })
    })))
    t.diagnostic(`3 processes ready in ${Date.now() - t0} ms`)
    for (const [i, p] of procs.entries()) {
      assert.ok(p.addrs.some((a) => a.startsWith(`/ip4/${lab.hosts[i].ip}/tcp/`)), `H${i} listens on its lab address: ${p.addrs.join(' ')}`)
    }
    const want = procs.map((p) => p.peerId).sort()
    const t1 = Date.now()
    await waitFor('every view to list all three', async () => {
      for (const p of procs) {
        const ms = await p.members()
        if (JSON.stringify(ms.map((m) => m.peerId)) !== JSON.stringify(want)) return undefined
      }
      return true
    }, 20_000, 200)
    t.diagnostic(`views complete ${Date.now() - t1} ms after all were ready`)
    const v0 = await procs[0].members()
    for (const m of v0.filter((x) => !x.self)) {
      assert.equal(m.lan, true, 'found on the LAN')
      assert.equal(m.connection, 'direct')
      assert.equal(m.load.cores, procs.findIndex((p) => p.peerId === m.peerId) + 1)
      assert.ok(m.addrs.some((a) => a.startsWith('/ip4/10.231.0.')), m.addrs.join(' '))
    }
    for (const p of procs) assert.ok(!/different mesh key/.test(p.stderr()), `${p.label}: no handshake failures`)
  } finally {
    await killAllMeshProcs()
    await lab.destroy()
    assert.deepEqual(liveNamespaces(), [], 'namespaces deleted')
  }
})
