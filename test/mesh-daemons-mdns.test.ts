// Three real daemons, each in its own network namespace on one lab bridge, no bootstrap
// addresses: they find each other by mDNS alone, as machines on an office LAN would.
// mDNS runs only inside the namespaces this test creates.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { createInstance, MESHCC, type Instance } from './helpers/meshcc.js'
import { createNetnsLab, liveNamespaces } from './helpers/netns.js'
import type { DaemonStatus } from '../src/cli/mesh-commands.js'
import { adminRequest } from '../src/launcher/client.js'
import { loadConfig } from '../src/config.js'
import { generateMeshKey, writeMeshKey } from '../src/mesh/keys.js'

const instances: Instance[] = []
after(async () => { for (const i of instances) await i.stop() })

test('three daemons in separate network namespaces find each other by mDNS alone', { timeout: 120_000 }, async (t) => {
  const r = createNetnsLab(3)
  if ('skip' in r) {
    t.skip(`cannot create network namespaces: ${r.skip}`)
    return
  }
  const { lab } = r
  try {
    const first = createInstance('[build]\ncores = 1\n', 'mdns0', 'listen = ["/ip4/0.0.0.0/tcp/0"]\nmdns = true\nbootstrap = []\nkey_file = "KEY"')
    const keyFile = join(first.dir, 'mesh.key')
    const nodes = [first, ...[1, 2].map((i) => createInstance(`[build]\ncores = ${i + 1}\n`, `mdns${i}`, `listen = ["/ip4/0.0.0.0/tcp/0"]\nmdns = true\nbootstrap = []\nkey_file = "${keyFile}"`))]
    instances.push(...nodes)
    const { readFileSync, writeFileSync } = await import('node:fs')
    writeFileSync(first.conf, readFileSync(first.conf, 'utf8').replace('key_file = "KEY"', `key_file = "${keyFile}"`))
    // the key only: `mesh init` would also start a daemon, here in the root namespace with mDNS on
    writeMeshKey(keyFile, generateMeshKey())

    // each daemon runs in the foreground inside its namespace; the unix socket is reachable from here
    nodes.forEach((n, i) => lab.spawn(lab.hosts[i], MESHCC, ['daemon'], { env: n.env, stdio: 'ignore' }))
    // asked on the socket without autostart: a poll that started a daemon here would start it
    // in the root namespace, with mDNS on
    const status = async (n: Instance): Promise<DaemonStatus | undefined> => {
      try {
        return JSON.parse(await adminRequest(loadConfig({ MESHCC_CONF: n.conf }), 'status', { autostart: false, timeoutMs: 10_000 })) as DaemonStatus
      } catch {
        return undefined
      }
    }
    const t0 = Date.now()
    let views: DaemonStatus[] = []
    while (Date.now() - t0 < 60_000) {
      views = (await Promise.all(nodes.map(status))).filter((s): s is DaemonStatus => s !== undefined)
      if (views.length === 3 && views.every((v) => v.mesh && v.mesh.members.length === 3)) break
      await new Promise((res) => setTimeout(res, 300))
    }
    t.diagnostic(`views complete after ${Date.now() - t0} ms`)
    assert.equal(views.length, 3, 'all three daemons answer')
    for (const [i, v] of views.entries()) {
      assert.ok(v.mesh, `daemon ${i} is in the mesh`)
      assert.equal(v.mesh.members.length, 3, `daemon ${i} sees all three`)
      assert.deepEqual(v.mesh.members.map((m) => m.cores).sort(), [1, 2, 3])
      for (const m of v.mesh.members.filter((x) => !x.self)) {
        assert.equal(m.lan, true, 'found on the LAN')
        assert.ok(m.addrs.some((a) => a.startsWith('/ip4/10.231.0.')), m.addrs.join(' '))
      }
    }
  } finally {
    await lab.destroy()
    assert.deepEqual(liveNamespaces(), [], 'namespaces deleted')
  }
})
