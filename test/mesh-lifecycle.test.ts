// The first hour with a mesh (issue 13), with real daemons on loopback (mDNS off):
// - `status`, `jobs` and `--dist-status` without a daemon say so and start none;
// - a daemon without a mesh exits when idle, a daemon in a mesh stays up (same idle_timeout);
// - `mesh init` starts the daemon and `mesh invite` right after it waits for the mesh;
// - a second daemon with an identity that a running daemon holds refuses to start;
// - a daemon restarted with listen tcp/0 comes back on the same port, and one that had to move
//   is found again through the members' addresses stored beside the config;
// - `mesh join` twice replaces the first invite's addresses, and refuses an invite that names
//   this node's own peer ID;
// - a machine with a copy of this node's identity shows in its status.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { join } from 'node:path'
import { createInstance, MESHCC, type Instance } from './helpers/meshcc.js'
import { createNetnsLab, type NetnsHost } from './helpers/netns.js'
import { status, startMeshDaemon, waitFor } from './helpers/mesh-daemons.js'
import { decodeInvite, encodeInvite, generateMeshKey, writeMeshKey } from '../src/mesh/keys.js'
import { formatStatus } from '../src/cli/mesh-commands.js'
import { processAlive } from '../src/util/pid-lock.js'

const all: Instance[] = []
const servers: Server[] = []
after(async () => {
  for (const s of servers) s.close()
  for (const i of all) await i.stop()
})

function node(name: string, mesh: { keyFile: string; bootstrap?: string[]; identityFile?: string } | null, idleTimeout = 0): Instance {
  const meshToml = mesh === null ? null : [
    'listen = ["/ip4/127.0.0.1/tcp/0"]', 'mdns = false', `key_file = "${mesh.keyFile}"`,
    `bootstrap = ${JSON.stringify(mesh.bootstrap ?? [])}`,
    ...(mesh.identityFile ? [`identity_file = "${mesh.identityFile}"`] : [])
  ].join('\n')
  const i = createInstance('[build]\ncores = 1\n', name, meshToml)
  if (idleTimeout !== 0) writeFileSync(i.conf, readFileSync(i.conf, 'utf8').replace('idle_timeout = 0\n', `idle_timeout = ${idleTimeout}\n`))
  all.push(i)
  return i
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const portOf = (addr: string) => Number(/\/tcp\/(\d+)/.exec(addr)![1])
const loopbackAddrs = (s: { mesh: { addresses: string[] } | null }) => s.mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))

async function stopDaemon(i: Instance): Promise<void> {
  const r = await i.run(['--stop-server'])
  assert.equal(r.code, 0, r.stderr)
}

test('status without a daemon, idle exit only without a mesh, invite right after init, one identity per daemon', { timeout: 120_000 }, async () => {
  // no daemon: status, jobs and --dist-status say so, exit non-zero, and start none
  const a = node('lifeA', { keyFile: '' }, 2)
  const keyFile = join(a.dir, 'mesh.key')
  writeFileSync(a.conf, readFileSync(a.conf, 'utf8').replace('key_file = ""', `key_file = "${keyFile}"`))
  for (const args of [['status'], ['status', '--json'], ['jobs'], ['--dist-status']]) {
    const r = await a.run(args)
    assert.notEqual(r.code, 0, `${args.join(' ')} without a daemon fails`)
    assert.equal(r.stderr, `meshcc: no daemon running on ${a.socket}; start one with \`meshcc --start-server\` (or \`meshcc daemon\` in the foreground)\n`)
  }
  await sleep(300)
  assert.equal(a.daemonPid(), null, 'no daemon was started')
  assert.equal(existsSync(a.socket), false, 'no socket')

  // init starts the daemon; invite right after it waits for the mesh instead of giving up
  const init = await a.run(['mesh', 'init'])
  assert.equal(init.code, 0, init.stderr)
  const inv = await a.run(['mesh', 'invite'])
  assert.equal(inv.code, 0, inv.stderr)
  assert.match(inv.stdout, /^meshcc1:\S+\n$/)
  const sa = await status(a)
  assert.ok(sa.mesh, 'A is in the mesh')
  // what status prints in the moment before a daemon's mesh is up (too short to catch reliably here)
  assert.match(formatStatus({ ...sa, mesh: null, mesh_note: 'starting' }), /\nmesh: starting \(ask again in a moment\)\n$/)
  // which memory limit its jobs get, said once in the log and in status
  await waitFor('the builder check', async () => ((await status(a)).mesh!.builder.job_memory !== 'not checked yet' ? true : undefined))
  const memory = /\n {2}job memory: (cgroup v[12], [\d.]+ [KMG]iB per job|per-process address-space limit of [\d.]+ [KMG]iB \(no writable cgroup: .+\))\n/
  assert.match((await a.run(['status'])).stdout, memory)
  assert.equal(readFileSync(join(a.cacheDir, 'meshcc.log'), 'utf8').match(/job memory: /g)?.length, 1)

  // the same idle_timeout (2 s): the daemon without a mesh exits, the one in a mesh stays up
  const solo = node('lifeSolo', null, 2)
  assert.equal((await solo.run(['--start-server'])).code, 0)
  const soloPid = solo.daemonPid()!
  const aPid = a.daemonPid()!
  await waitFor('the daemon without a mesh to exit idle', async () => (processAlive(soloPid) ? undefined : true), 20_000)
  await sleep(3000) // past A's idle_timeout once more, without a request to A meanwhile
  assert.ok(processAlive(aPid), 'the daemon in a mesh is still running')
  assert.match(readFileSync(join(a.cacheDir, 'meshcc.log'), 'utf8'), /stays up while idle \(in a mesh/)

  // a second config using A's identity file: its daemon refuses to start, naming A's daemon
  const twin = node('lifeTwin', { keyFile, identityFile: join(a.dir, 'identity.key') })
  const r = await twin.run(['daemon'], { timeoutMs: 20_000 })
  assert.equal(r.code, 1, `the twin's daemon exits at once (stderr: ${r.stderr})`)
  assert.equal(r.stderr.split('\n').filter(Boolean).length, 1, 'one line')
  assert.match(r.stderr, new RegExp(`identity ${join(a.dir, 'identity.key')} is in use by the meshcc daemon with pid ${aPid} \\(config ${a.conf}, socket ${a.socket}\\)`))
  assert.ok(processAlive(aPid), 'A is untouched')
})

test('stable port across restarts, a moved member found through stored addresses, join twice, own identity, a clone', { timeout: 180_000 }, async () => {
  const a = node('portA', { keyFile: '' })
  const keyFile = join(a.dir, 'mesh.key')
  writeFileSync(a.conf, readFileSync(a.conf, 'utf8').replace('key_file = ""', `key_file = "${keyFile}"`))
  assert.equal((await a.run(['mesh', 'init'])).code, 0)
  const sa = await startMeshDaemon(a) // init started it; wait for its mesh
  const aId = sa.mesh!.peer_id
  const port1 = portOf(loopbackAddrs(sa)[0])

  // listen tcp/0: the restarted daemon asks for the port it had
  await stopDaemon(a)
  const sa2 = await startMeshDaemon(a)
  assert.equal(portOf(loopbackAddrs(sa2)[0]), port1, 'same port after a restart')

  // B bootstraps to A's address; both store the other's addresses beside their configs
  const b = node('portB', { keyFile, bootstrap: loopbackAddrs(sa2) })
  const sb = await startMeshDaemon(b)
  const bId = sb.mesh!.peer_id
  const sees = (i: Instance, n: number) => async () => ((await status(i)).mesh?.members.length === n ? true : undefined)
  await waitFor('A and B to see each other', async () => ((await sees(a, 2)()) && (await sees(b, 2)())) || undefined)
  const storedBy = (i: Instance, id: string): string[] => {
    try {
      const doc = JSON.parse(readFileSync(join(i.dir, 'mesh-peers.json'), 'utf8')) as { peers: Array<{ peerId: string; addrs: string[] }> }
      return doc.peers.find((p) => p.peerId === id)?.addrs ?? []
    } catch { return [] }
  }
  await waitFor("A to store B's address", async () => (storedBy(a, bId).length > 0 ? true : undefined), 20_000)

  // A restarts while another program holds its port: it moves, B's bootstrap address is dead,
  // and A finds B again from its stored addresses (then B stores A's new address)
  const aPid = a.daemonPid()!
  await stopDaemon(a)
  await waitFor('A to exit', async () => (processAlive(aPid) ? undefined : true), 20_000)
  const squatter = createServer()
  servers.push(squatter)
  await waitFor(`port ${port1} for the squatter`, () => new Promise<true | undefined>((res) => {
    squatter.once('error', () => res(undefined))
    squatter.listen(port1, '127.0.0.1', () => { squatter.removeAllListeners('error'); res(true) })
  }), 10_000)
  const sa3 = await startMeshDaemon(a)
  const port2 = portOf(loopbackAddrs(sa3)[0])
  assert.notEqual(port2, port1, 'A had to move')
  await waitFor('B to see A again', sees(b, 2), 30_000)
  await waitFor("B to store A's new address", async () => (storedBy(b, aId).some((x) => portOf(x) === port2) ? true : undefined), 30_000)

  // join twice: the second invite's addresses replace the first's
  const f = node('portF', { keyFile: join(a.dir, 'f-mesh.key') })
  const key = readFileSync(keyFile, 'utf8')
  const stale = encodeInvite({ key, addrs: [`/ip4/127.0.0.1/tcp/${port1}/p2p/${aId}`] })
  const fresh = encodeInvite({ key, addrs: loopbackAddrs(sa3) })
  assert.equal((await f.run(['mesh', 'join', stale])).code, 0)
  const j2 = await f.run(['mesh', 'join', fresh])
  assert.equal(j2.code, 0, j2.stderr)
  const joined = readFileSync(join(f.dir, 'mesh-bootstrap.txt'), 'utf8').split('\n').filter((l) => l && !l.startsWith('#'))
  assert.deepEqual(joined, loopbackAddrs(sa3), 'only the second invite\'s addresses')
  await waitFor('F (started by join) to see A and B', sees(f, 3), 30_000)
  const fId = (await status(f)).mesh!.peer_id
  // an invite naming this node's own peer ID: made here, or on a clone
  const own = await f.run(['mesh', 'join', encodeInvite({ key, addrs: [`/ip4/127.0.0.1/tcp/9/p2p/${fId}`] })])
  assert.equal(own.code, 1)
  assert.match(own.stderr, /names this node's own peer ID/)

  // a clone: G has a copy of B's identity.key and B's address in its bootstrap list
  const gDir = node('portG', { keyFile, bootstrap: loopbackAddrs(await status(b)) })
  copyFileSync(join(b.dir, 'identity.key'), join(gDir.dir, 'identity.key'))
  await startMeshDaemon(gDir)
  const g = await waitFor('G to see the clone', async () => {
    const s = await status(gDir)
    return (s.mesh?.identity_clashes.length ?? 0) > 0 ? s : undefined
  }, 20_000)
  assert.equal(g.mesh!.peer_id, bId, 'G runs with B\'s identity')
  assert.deepEqual(g.mesh!.identity_clashes.map(portOf), [portOf(loopbackAddrs(await status(b))[0])])
  assert.match((await gDir.run(['status'])).stdout, /WARNING: the peer at \S+ has this node's own identity: a cloned machine or a copied identity\.key\?/)
})

test('default listen is IPv4 and IPv6: global IPv6 advertised, link-local not; no IPv6 still starts; the default port taken moves both and they are remembered; an announce address in the invite, dialable; an invite that nobody answers', { timeout: 150_000 }, async (t) => {
  const r = createNetnsLab(2)
  if ('skip' in r) {
    t.skip(`cannot create network namespaces: ${r.skip}`)
    return
  }
  const lab = r.lab
  try {
    const [noV6, taken] = lab.hosts as [NetnsHost, NetnsHost]
    for (const k of ['all', 'default', 'lo', 'eth0']) lab.run(noV6, 'sysctl', ['-q', '-w', `net.ipv6.conf.${k}.disable_ipv6=1`])
    assert.equal(lab.run(taken, 'ip', ['-6', 'addr', 'add', '2001:db8:99::11/64', 'dev', 'eth0', 'nodad']).status, 0)
    // another program holds the default port on IPv4
    lab.spawn(taken, process.execPath, ['-e', "require('net').createServer().listen(10650, '0.0.0.0')"], { stdio: 'ignore' })
    await waitFor('the squatter on 10650', async () => (lab.run(taken, 'ss', ['-Hltn', 'sport = :10650']).stdout.includes('0.0.0.0:10650') ? true : undefined), 10_000)

    const keyHolder = node('v6key', { keyFile: '' })
    const keyFile = join(keyHolder.dir, 'mesh.key')
    writeMeshKey(keyFile, generateMeshKey())
    // the default listen: no listen line; mDNS off (the lab's bridge would carry it, but nothing here needs it)
    const daemon = (name: string) => {
      const i = createInstance('[build]\ncores = 1\n', name, ['mdns = false', `key_file = "${keyFile}"`].join('\n'))
      all.push(i)
      return i
    }
    const a = daemon('v6none')
    const b = daemon('v6taken')
    // a port forward in front of A (20650 → 10650, as a router would do it) that A announces
    const forwarded = `/ip4/${noV6.ip}/tcp/20650`
    writeFileSync(a.conf, readFileSync(a.conf, 'utf8').replace('mdns = false', `mdns = false\nannounce = ["${forwarded}"]`))
    assert.equal(lab.run(noV6, 'iptables', ['-t', 'nat', '-A', 'PREROUTING', '-p', 'tcp', '--dport', '20650', '-j', 'DNAT', '--to-destination', `${noV6.ip}:10650`]).status, 0)
    const start = (i: Instance, h: NetnsHost) => lab.spawn(h, MESHCC, ['daemon'], { env: i.env, stdio: 'ignore' })
    const up = (i: Instance) => waitFor(`${i.dir}'s mesh`, async () => { const s = await status(i).catch(() => undefined); return s?.mesh ? s : undefined }, 30_000)
    start(a, noV6)
    start(b, taken)
    const sa = await up(a)
    assert.ok(sa.mesh!.addresses.some((x) => x.startsWith(`/ip4/${noV6.ip}/tcp/10650/`)), `without IPv6: IPv4 on the default port (${sa.mesh!.addresses.join(' ')})`)
    assert.ok(!sa.mesh!.addresses.some((x) => x.startsWith('/ip6/')), 'and no IPv6 address')

    const sb = await up(b)
    const v4 = sb.mesh!.addresses.find((x) => x.startsWith(`/ip4/${taken.ip}/tcp/`))
    const v6 = sb.mesh!.addresses.find((x) => x.startsWith('/ip6/2001:db8:99::11/tcp/'))
    assert.ok(v4 && portOf(v4) !== 10650, `IPv4 moved off the taken default port: ${sb.mesh!.addresses.join(' ')}`)
    assert.ok(v6, `the global IPv6 address is advertised: ${sb.mesh!.addresses.join(' ')}`)
    assert.ok(!sb.mesh!.addresses.some((x) => /^\/ip6\/fe80/i.test(x)), 'no link-local address')
    const remembered = () => (JSON.parse(readFileSync(join(b.dir, 'mesh-listen.json'), 'utf8')) as { ports: Record<string, number> }).ports
    assert.deepEqual(remembered(), { '/ip4/0.0.0.0/tcp/10650': portOf(v4), '/ip6/::/tcp/10650': portOf(v6) }, 'both ports remembered')

    // restarted with the port still taken: back on the same two ports
    await stopDaemon(b)
    start(b, taken)
    const sb2 = await up(b)
    assert.ok(sb2.mesh!.addresses.includes(v4) && sb2.mesh!.addresses.includes(v6), `same addresses after a restart: ${sb2.mesh!.addresses.join(' ')}`)

    // A's invite names the announced address; B never met A (no bootstrap, no mDNS)
    const inv = await a.run(['mesh', 'invite'])
    assert.equal(inv.code, 0, inv.stderr)
    const invite = decodeInvite(inv.stdout.trim())
    assert.ok(invite.addrs.includes(`${forwarded}/p2p/${sa.mesh!.peer_id}`), `the invite names ${forwarded}: ${invite.addrs.join(' ')}`)
    assert.equal((await status(b)).mesh!.members.length, 1, 'B knows nobody yet')
    const joinB = (addrs: string[]) => lab.run(taken, 'env', [`MESHCC_CONF=${b.conf}`, MESHCC, 'mesh', 'join', encodeInvite({ key: readFileSync(keyFile, 'utf8'), addrs })], 60_000)
    // an invite none of whose addresses answers: one line, and the join still done
    const dead = joinB([`/ip4/${noV6.ip}/tcp/20651/p2p/${sa.mesh!.peer_id}`])
    assert.equal(dead.status, 0, dead.stderr)
    const lines = dead.stderr.split('\n').filter(Boolean)
    assert.equal(lines.length, 1, `one line: ${dead.stderr}`)
    assert.match(lines[0]!, /^meshcc: none of the invite's addresses answered within 3 s \(\/ip4\/10\.231\.0\.10\/tcp\/20651\/p2p\/\S+\): ask a member that other networks can reach/)
    // the announced address only: B comes in through the port forward
    const good = joinB([`${forwarded}/p2p/${sa.mesh!.peer_id}`])
    assert.equal(good.status, 0, good.stderr)
    assert.equal(good.stderr, '', 'the announced address answered')
    await waitFor('A and B to meet through the announced address', async () => ((await status(b).catch(() => undefined))?.mesh?.members.length === 2 ? true : undefined), 30_000)
    await stopDaemon(a)
    await stopDaemon(b)
  } finally {
    await lab.destroy()
  }
})
