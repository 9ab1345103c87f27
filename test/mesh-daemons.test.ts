// Real daemon processes forming a mesh on loopback (mDNS off: multicast is for namespaces
// only): convergence, `status`, `--dist-status`, `jobs`, a SIGKILLed member leaving the
// views, a wrong mesh key refused (and shown in status), the sccache shim served by one elected node and taken
// over when it dies, and `mesh invite` / `mesh join` bringing in a fresh daemon.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { request } from 'node:http'
import { join } from 'node:path'
import { createInstance, type Instance } from './helpers/meshcc.js'
import { encodeSchedulerStatus } from '../src/shim/bincode.js'
import { status, startMeshDaemon, waitFor } from './helpers/mesh-daemons.js'

const all: Instance[] = []
after(async () => { for (const i of all) await i.stop() })

function node(name: string, keyFile: string, opts: { cores: number; bootstrap?: string[]; shim?: boolean }): Instance {
  const mesh = [
    'listen = ["/ip4/127.0.0.1/tcp/0"]', 'mdns = false', `key_file = "${keyFile}"`,
    `bootstrap = ${JSON.stringify(opts.bootstrap ?? [])}`
  ].join('\n')
  const extra = `[build]\ncores = ${opts.cores}\n` + (opts.shim ? '[shim]\nenabled = true\nlisten = "127.0.0.1:0"\n' : '')
  const i = createInstance(extra, name, mesh)
  all.push(i)
  return i
}

async function memberIds(i: Instance): Promise<string[]> {
  const s = await status(i)
  return (s.mesh?.members ?? []).map((m) => m.peer_id).sort()
}

function httpGet(address: string, path: string): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))]
    const req = request({ host, port, path, timeout: 5000 }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }))
    })
    req.on('error', reject)
    req.end()
  })
}

test('daemons joined by bootstrap converge; status, dist-status, jobs; a killed member leaves; a wrong key is refused; the shim fails over; invite/join', { timeout: 240_000 }, async (t) => {
  // node A creates the mesh
  const a = node('meshA', '', { cores: 1, shim: true })
  const keyFile = join(a.dir, 'mesh.key')
  writeKeyPath(a, keyFile)
  const init = await a.run(['mesh', 'init'])
  assert.equal(init.code, 0, init.stderr)
  assert.equal((readFileSync(keyFile).length > 0), true)
  const sa = await startMeshDaemon(a)
  const bootstrap = sa.mesh!.addresses.filter((x) => x.includes('/127.0.0.1/'))
  assert.ok(bootstrap.length > 0, 'A has a loopback address')

  const b = node('meshB', keyFile, { cores: 2, bootstrap, shim: true })
  const c = node('meshC', keyFile, { cores: 3, bootstrap, shim: true })
  const d = node('meshD', keyFile, { cores: 4, bootstrap })
  const started = Date.now()
  const ids = [sa.mesh!.peer_id, ...(await Promise.all([b, c, d].map(startMeshDaemon))).map((s) => s.mesh!.peer_id)].sort()
  for (const i of [a, b, c, d]) await waitFor(`${i.dir} to see all four`, async () => (JSON.stringify(await memberIds(i)) === JSON.stringify(ids) ? true : undefined))
  t.diagnostic(`4 daemons converged ${Date.now() - started} ms after the last three were started`)

  // status: every member with its cores; dist-status and jobs from the mesh-wide numbers
  const sb = await status(b)
  assert.deepEqual(sb.mesh!.members.map((m) => m.cores).sort(), [1, 2, 3, 4])
  assert.equal(sb.mesh!.totals.cores, 10)
  const human = await b.run(['status'])
  assert.match(human.stdout, /total\s+4 nodes\s+10/)
  const dist = await b.run(['--dist-status'])
  assert.equal(dist.stdout.trim(), `{"SchedulerStatus":["meshcc-${sb.mesh!.mesh_id}",{"num_servers":4,"num_cpus":10,"in_progress":0}]}`)
  assert.equal((await b.run(['jobs'])).stdout.trim(), '10')

  // exactly one shim-capable node serves the sccache scheduler API: the lowest peer id of A, B, C
  const capable = [sa.mesh!.peer_id, sb.mesh!.peer_id, (await status(c)).mesh!.peer_id].sort()
  const serving = await waitFor('one shim server', async () => {
    const ss = await Promise.all([a, b, c].map(status))
    const here = ss.filter((s) => s.mesh!.shim.serving_here)
    return here.length === 1 && ss.every((s) => s.mesh!.shim.serving_peer === capable[0]) ? here[0] : undefined
  })
  assert.equal(serving.mesh!.peer_id, capable[0])
  const body = await httpGet(serving.mesh!.shim.listen!, '/api/v1/scheduler/status')
  assert.equal(body.status, 200)
  assert.ok(body.body.equals(encodeSchedulerStatus({ numServers: 4, numCpus: 10, inProgress: 0 })), 'bincode status with mesh-wide numbers')

  // every member is directly connected: once past its start, none forwards gossip any more
  // (flood publishing alone reaches everyone), and the views stay complete
  for (const i of [a, b, c, d]) await waitFor(`${i.dir} to stop forwarding gossip`, async () => ((await status(i)).mesh?.gossip_forwarding === false ? true : undefined), 40_000)
  await new Promise((r) => setTimeout(r, 5000))
  for (const i of [a, b, c, d]) assert.deepEqual(await memberIds(i), ids, `${i.dir} still sees all four without forwarding`)

  // SIGKILL D: it leaves every other view within the expiry (5 s by default)
  const dPid = d.daemonPid()!
  process.kill(dPid, 'SIGKILL')
  const killedAt = Date.now()
  for (const i of [a, b, c]) await waitFor('D to leave', async () => ((await memberIds(i)).length === 3 ? true : undefined), 15_000)
  const gone = Date.now() - killedAt
  t.diagnostic(`killed member left all views after ${gone} ms`)
  assert.ok(gone < 10_000, `left within the expiry (took ${gone} ms)`)

  // a daemon with another mesh key cannot join, and the others keep working
  const otherKey = join(a.dir, 'other.key')
  const e = node('meshE', otherKey, { cores: 8, bootstrap })
  const initE = await e.run(['mesh', 'init'])
  assert.equal(initE.code, 0, initE.stderr)
  await startMeshDaemon(e)
  await new Promise((r) => setTimeout(r, 4000))
  assert.equal((await memberIds(e)).length, 1, 'E sees only itself')
  assert.equal((await memberIds(a)).length, 3, 'A does not see E')
  const eLog = await waitFor('the wrong-key hint in E\'s log', async () => {
    const text = readFileSync(join(e.cacheDir, 'meshcc.log'), 'utf8')
    return /different mesh key/.test(text) ? text : undefined
  }, 20_000)
  assert.match(eLog, /private-network handshake/)
  // and E's status says so, not only its log
  const eRefused = await waitFor("the refusal in E's status", async () => {
    const s = await status(e)
    return (s.mesh?.refused_peers.length ?? 0) > 0 ? s.mesh!.refused_peers : undefined
  }, 60_000) // the next dial to the bootstrap peer records it: at the reconnect interval, slower on a loaded machine
  assert.deepEqual(eRefused.map((r) => r.addr), bootstrap.map((x) => x.replace(/\/p2p\/.*$/, '')))
  assert.match((await e.run(['status'])).stdout, /\n {2}1 peer refused: different mesh key \(\/ip4\/127\.0\.0\.1\/tcp\/\d+\)\n/)
  await e.run(['--stop-server'])

  // the serving shim node dies: another capable node serves within seconds
  const servingInst = [a, b, c].find((i) => i.daemonPid() === serving.daemon.pid)!
  process.kill(serving.daemon.pid, 'SIGKILL')
  const shimKilledAt = Date.now()
  const survivors = [a, b, c].filter((i) => i !== servingInst)
  const next = await waitFor('another node to serve the shim', async () => {
    const ss = await Promise.all(survivors.map(status))
    const here = ss.filter((s) => s.mesh!.shim.serving_here)
    return here.length === 1 ? here[0] : undefined
  }, 20_000)
  t.diagnostic(`shim taken over after ${Date.now() - shimKilledAt} ms`)
  assert.equal(next.mesh!.peer_id, capable[1])
  const body2 = await httpGet(next.mesh!.shim.listen!, '/api/v1/scheduler/status')
  assert.ok(body2.body.equals(encodeSchedulerStatus({ numServers: 2, numCpus: 10 - 4 - (servingInst === a ? 1 : servingInst === b ? 2 : 3), inProgress: 0 })))

  // invite / join: a fresh daemon without a key joins from one line
  const inviter = survivors[0]
  const inv = await inviter.run(['mesh', 'invite'])
  assert.equal(inv.code, 0, inv.stderr)
  assert.match(inv.stdout, /^meshcc1:\S+\n$/)
  const f = node('meshF', join(mkdtempSync(join(tmpdir(), 'meshF-key-')), 'mesh.key'), { cores: 5 })
  const fresh = await f.run(['status', '--json'])
  assert.equal(fresh.code, 1, 'no daemon before joining, and status starts none')
  assert.equal(f.daemonPid(), null)
  const join1 = await f.run(['mesh', 'join', inv.stdout.trim()])
  assert.equal(join1.code, 0, join1.stderr)
  await waitFor('F to join', async () => ((await memberIds(inviter)).length === 3 ? true : undefined), 30_000)
  // F hears of the third member from the inviter's member exchange and meets it a moment later
  await waitFor('F to see the whole mesh', async () => ((await memberIds(f)).length === 3 ? true : undefined), 10_000)
  const sf = await status(f)
  assert.equal(sf.mesh!.members.length, 3)
})

/** Point an instance's [mesh] key_file somewhere (the first node, before its key exists). */
function writeKeyPath(i: Instance, keyFile: string): void {
  writeFileSync(i.conf, readFileSync(i.conf, 'utf8').replace('key_file = ""', `key_file = "${keyFile}"`))
}
