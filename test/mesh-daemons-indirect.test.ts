// Three real daemons on two LAN segments: A on segment 1, C on segment 2, B on both (IP
// forwarding off, no routes between the segments). A and C bootstrap to B and can never open a
// connection to each other; each must still see the other, through B: flood publishing reaches
// directly connected peers only, so A's messages reach C only because B forwards them. B is
// directly connected to everyone and needs no forwarding itself; when it leaves the gossipsub
// mesh it keeps A and C, which ask for forwarding in their load messages (src/mesh/forwarding.ts).
// mDNS is off; all traffic stays inside the namespaces this test creates.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createInstance, MESHCC, type Instance } from './helpers/meshcc.js'
import { createTwoSegmentLab, liveNamespaces } from './helpers/netns.js'
import type { DaemonStatus } from '../src/cli/mesh-commands.js'
import { adminRequest } from '../src/launcher/client.js'
import { loadConfig } from '../src/config.js'
import { generateMeshKey, writeMeshKey } from '../src/mesh/keys.js'

const instances: Instance[] = []
after(async () => { for (const i of instances) await i.stop() })

/** B's listen port; each namespace has its own port space, so a fixed port cannot clash */
const B_PORT = 40123
const VIEW_DEADLINE_MS = 40_000

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms))

function meshToml(listen: string, bootstrap: string[], keyFile: string): string {
  return `listen = ["${listen}"]\nmdns = false\nbootstrap = [${bootstrap.map((b) => `"${b}"`).join(', ')}]\nkey_file = "${keyFile}"`
}

/** one line per member: short id, cores, connection kind, last seen */
function summary(v: DaemonStatus | undefined): string {
  if (!v) return 'no answer'
  if (!v.mesh) return `no mesh (${v.mesh_note ?? '?'})`
  return v.mesh.members.map((m) => `${m.peer_id.slice(-6)}${m.self ? '*' : ''} cores=${m.cores} ${m.connection} seen ${m.last_seen_ms_ago} ms ago`).join('; ')
}

test('a member that cannot connect to another still sees it, through a peer that keeps forwarding to it', { timeout: 150_000 }, async (t) => {
  const r = createTwoSegmentLab()
  if ('skip' in r) {
    t.skip(`cannot create network namespaces: ${r.skip}`)
    return
  }
  const { lab } = r
  const nodes: Instance[] = []
  let ok = false
  try {
    // the lab really separates A and C: no route either way, B forwards nothing
    assert.notEqual(lab.run(lab.a, 'ip', ['route', 'get', lab.c.ip]).status, 0, 'A has no route to C')
    assert.notEqual(lab.run(lab.c, 'ip', ['route', 'get', lab.a.ip]).status, 0, 'C has no route to A')
    assert.equal(lab.run(lab.a, 'ip', ['route', 'get', lab.b.ips[0]]).status, 0, 'A reaches B on segment 1')
    assert.equal(lab.run(lab.c, 'ip', ['route', 'get', lab.b.ips[1]]).status, 0, 'C reaches B on segment 2')
    assert.equal(lab.run(lab.b, 'cat', ['/proc/sys/net/ipv4/ip_forward']).stdout.trim(), '0', 'B does not forward')

    const b = createInstance('[build]\ncores = 2\n', 'indirB', meshToml(`/ip4/0.0.0.0/tcp/${B_PORT}`, [], 'KEY'))
    nodes.push(b)
    instances.push(b)
    const keyFile = join(b.dir, 'mesh.key')
    writeFileSync(b.conf, readFileSync(b.conf, 'utf8').replace('key_file = "KEY"', `key_file = "${keyFile}"`))
    // the key only: `mesh init` would also start B's daemon, here in the root namespace
    writeMeshKey(keyFile, generateMeshKey())

    // asked on the socket without autostart: a poll that started a daemon here would start it
    // in the root namespace, outside the lab
    const status = async (n: Instance): Promise<DaemonStatus | undefined> => {
      try {
        return JSON.parse(await adminRequest(loadConfig({ MESHCC_CONF: n.conf }), 'status', { autostart: false, timeoutMs: 10_000 })) as DaemonStatus
      } catch {
        return undefined
      }
    }

    // B first (foreground, inside its namespace), then its peer id from its own status
    lab.spawn(lab.b, MESHCC, ['daemon'], { env: b.env, stdio: 'ignore' })
    let bId: string | undefined
    const tb = Date.now()
    for (let i = 0; i < 150 && Date.now() - tb < 30_000 && bId === undefined; i++) {
      bId = (await status(b))?.mesh?.peer_id
      if (bId === undefined) await sleep(200)
    }
    assert.ok(bId, 'B is up and in the mesh within 30 s')
    t.diagnostic(`B (${bId}) up after ${Date.now() - tb} ms`)

    const a = createInstance('[build]\ncores = 1\n', 'indirA', meshToml('/ip4/0.0.0.0/tcp/0', [`/ip4/${lab.b.ips[0]}/tcp/${B_PORT}/p2p/${bId}`], keyFile))
    const c = createInstance('[build]\ncores = 3\n', 'indirC', meshToml('/ip4/0.0.0.0/tcp/0', [`/ip4/${lab.b.ips[1]}/tcp/${B_PORT}/p2p/${bId}`], keyFile))
    nodes.unshift(a)
    nodes.push(c)
    instances.push(a, c)
    lab.spawn(lab.a, MESHCC, ['daemon'], { env: a.env, stdio: 'ignore' })
    lab.spawn(lab.c, MESHCC, ['daemon'], { env: c.env, stdio: 'ignore' })

    // nodes = [A, B, C]
    const t0 = Date.now()
    let views: Array<DaemonStatus | undefined> = []
    let complete = false
    for (let i = 0; i < 200 && Date.now() - t0 < VIEW_DEADLINE_MS; i++) {
      views = await Promise.all(nodes.map(status))
      complete = views.every((v) => v?.mesh && v.mesh.members.length === 3)
      if (complete) break
      await sleep(300)
    }
    const elapsed = Date.now() - t0
    t.diagnostic(`views after ${elapsed} ms: ${['A', 'B', 'C'].map((n, i) => `${n}: ${summary(views[i])}`).join(' | ')}`)
    assert.ok(complete, `all three daemons list all three members within ${VIEW_DEADLINE_MS / 1000} s`)

    const [va, vb, vc] = views.map((v) => v!.mesh!)
    const [aId, cId] = [va!.peer_id, vc!.peer_id]
    const entry = (v: NonNullable<DaemonStatus['mesh']>, id: string) => v.members.find((m) => m.peer_id === id)
    for (const [name, v] of [['A', va], ['B', vb], ['C', vc]] as const) {
      assert.deepEqual(v!.members.map((m) => m.peer_id).sort(), [aId, bId, cId].sort(), `${name} lists A, B and C`)
      assert.deepEqual(v!.members.map((m) => m.cores).sort(), [1, 2, 3], `${name} has each member's own load message`)
    }
    // A and C: no connection to each other (they cannot have one), a direct one to B
    assert.equal(entry(va!, cId)?.connection, 'none', "A's entry for C: no connection")
    assert.equal(entry(vc!, aId)?.connection, 'none', "C's entry for A: no connection")
    assert.equal(entry(va!, bId!)?.connection, 'direct', "A's entry for B: direct")
    assert.equal(entry(vc!, bId!)?.connection, 'direct', "C's entry for B: direct")
    // B: direct to both
    assert.equal(entry(vb!, aId)?.connection, 'direct', "B's entry for A: direct")
    assert.equal(entry(vb!, cId)?.connection, 'direct', "B's entry for C: direct")

    // Not a one-off, and not only while everyone is starting: a member needs forwarding
    // (gossipsub mesh degree > 0) during its first 5 s and then only while some member is not
    // directly connected (src/mesh/forwarding.ts). A and C each know a member they cannot
    // reach, so they keep forwarding and ask for it; B is directly connected to both, so it
    // stops, and leaves the gossipsub mesh except for A and C. Had it pruned them, gossipsub's
    // backoff would keep them from grafting B again for a while, and they would lose each other.
    // (A daemon without gossip_forwarding in its status never forwards.)
    const forwarding = (v: DaemonStatus | undefined) => (v?.mesh as { gossip_forwarding?: boolean } | undefined)?.gossip_forwarding
    const tf = Date.now()
    let bForwards: boolean | undefined = true
    for (let i = 0; i < 100 && Date.now() - tf < 40_000 && bForwards === true; i++) {
      const sb = await status(b)
      bForwards = sb?.mesh ? forwarding(sb) : true // no answer: ask again
      if (bForwards === true) await sleep(500)
    }
    assert.notEqual(bForwards, true, 'B stops needing forwarding within 40 s (it is directly connected to every member)')
    const fw = await Promise.all(nodes.map(status))
    t.diagnostic(`forwarding ${Date.now() - tf} ms after the views were complete: A ${forwarding(fw[0])}, B ${forwarding(fw[1])}, C ${forwarding(fw[2])}`)
    assert.equal(forwarding(fw[0]), true, 'A forwards: it cannot reach C')
    assert.equal(forwarding(fw[2]), true, 'C forwards: it cannot reach A')
    // then past one expiry period (3 intervals + 2 s = 8 s) A and C must still see each other at
    // every sample: each sample also shows how much later than B they had the other's message
    const lags: number[] = []
    for (let i = 0; i < 12; i++) {
      await sleep(1000)
      const [sa, sb, sc] = await Promise.all(nodes.map(status))
      const [ca, ba, bc, ac] = [sa?.mesh && entry(sa.mesh, cId), sb?.mesh && entry(sb.mesh, aId), sb?.mesh && entry(sb.mesh, cId), sc?.mesh && entry(sc.mesh, aId)]
      if (i === 0 || i === 11) t.diagnostic(`sample ${i}: A (forwarding ${forwarding(sa)}): ${summary(sa)} | B (forwarding ${forwarding(sb)}): ${summary(sb)} | C (forwarding ${forwarding(sc)}): ${summary(sc)}`)
      assert.ok(ca && ca.connection === 'none' && ca.last_seen_ms_ago < 8000, `sample ${i}: A still sees C, without a connection: ${summary(sa)}`)
      assert.ok(ac && ac.connection === 'none' && ac.last_seen_ms_ago < 8000, `sample ${i}: C still sees A, without a connection: ${summary(sc)}`)
      if (bc) lags.push(bc.last_seen_ms_ago - ca.last_seen_ms_ago)
      if (ba) lags.push(ba.last_seen_ms_ago - ac.last_seen_ms_ago)
    }
    t.diagnostic(`A/C had each other's latest message this much later than B (ms, sorted): ${lags.sort((x, y) => x - y).join(' ')}`)
    ok = true
  } finally {
    if (!ok) {
      // the logs go with the instance directories: show the tail of each one first
      for (const [i, n] of nodes.entries()) {
        try {
          const lines = readFileSync(join(n.cacheDir, 'meshcc.log'), 'utf8').trimEnd().split('\n')
          t.diagnostic(`${n.dir} meshcc.log (last 40 of ${lines.length} lines, node ${i}):\n${lines.slice(-40).join('\n')}`)
        } catch { /* no log */ }
      }
    }
    await lab.destroy()
    // destroy killed every daemon (all run inside the lab): a pid lock left by a SIGKILLed one
    // must not make stop() signal a pid that may since belong to someone else
    for (const n of nodes) rmSync(`${n.socket}.pid`, { force: true })
    assert.deepEqual(liveNamespaces(), [], 'namespaces deleted')
  }
})
