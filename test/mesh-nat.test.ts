// Members behind home and office routers, in a NAT lab of network namespaces (test/helpers/
// netns.ts createNatLab): a "wan" bridge with two public members (p1, p2), router 1
// (MASQUERADE, and Debian's miniupnpd serving UPnP-IGD and NAT-PMP) with two LAN hosts (h1a,
// which maps a port on it, and h1b, which has port_mapping = false), router 2 (MASQUERADE, no
// port mapping) with one (h2). h1a and h2 also have global IPv6 addresses (routed between the
// LANs without NAT). Real daemons
// run inside the namespaces (`meshcc daemon`), every compile is a real gcc run through the CLI
// in the client's namespace, and each object must be byte-identical to a plain gcc's and come
// from the builder the check names. One lab serves all checks, in order (the last ones kill
// members); everything is removed at the end, also on failure. mDNS runs only in the lab.
//
// Who builds is pinned with [build] offer, switched live (`meshcc --reload`) between checks, so
// each check's job has exactly one builder that takes it; p1 and p2 never build, only relay.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { MESHCC, runCommand, type Instance } from './helpers/meshcc.js'
import { createNatLab, liveNamespaces, startMiniupnpd, LAB_PUBLIC_WAN, type Miniupnpd, type NatHost, type NatLab } from './helpers/netns.js'
import { NAT_PORT, startNatMesh, statusOf, until, type Member, type Name, type NatMesh } from './helpers/nat-mesh.js'
import { linkText, reachabilityText } from '../src/cli/mesh-commands.js'

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms))
const instances: Instance[] = []
after(async () => { for (const i of instances) await i.stop() })

const SOURCE = '#include <stdio.h>\nstatic int sq(int x) { return x * x; }\nint main(void) { printf("%d\\n", sq(7)); return 0; }\n'

test('members behind NAT routers find, reach and compile for each other', { timeout: 600_000 }, async (t) => {
  const r = createNatLab()
  if ('skip' in r) {
    t.skip(`cannot build the NAT lab: ${r.skip}`)
    return
  }
  const lab: NatLab = r.lab
  let nm: NatMesh | null = null
  let upnp: Miniupnpd | null = null
  const upnpDir = mkdtempSync(join(tmpdir(), 'meshcc-upnp-'))
  let ok = false
  try {
    // the lab separates what it should: NATed hosts reach the wan, the wan does not reach them
    const tcpTo = (from: NatHost, ip: string) => lab.run(from, 'bash', ['-c', `timeout 2 bash -c 'echo > /dev/tcp/${ip}/9' 2>&1; true`]).stdout.includes('refused')
    assert.ok(tcpTo(lab.h1a, lab.p1.ip), 'h1a reaches p1 through router 1')
    assert.ok(!tcpTo(lab.p1, lab.h1a.ip), 'p1 cannot reach h1a')
    assert.ok(!tcpTo(lab.h2, lab.h1a.ip), 'h2 cannot reach h1a')

    upnp = await startMiniupnpd(lab, lab.r1, upnpDir)
    // h1a renews its mapping every 3 s here (an hour's lease is renewed every 20 min otherwise)
    nm = await startNatMesh(lab, instances, { env: { h1a: { MESHCC_TEST_PORT_MAPPING_RENEW_MS: '3000' } } })
    const { members, m, killDaemon, startDaemon, stopDaemon, link, onlyBuilder, summary } = nm
    const t0 = Date.now()
    const all = await until(90_000, async () => {
      const s = await Promise.all([...members.values()].map(statusOf))
      return s.every((x) => x?.mesh && x.mesh.members.length === 5) ? s : undefined
    })
    t.diagnostic(`views after ${Date.now() - t0} ms:\n${await summary()}`)
    assert.ok(all, 'every member lists all five within 90 s')

    // reachability: the public members are public, h1a through the port it mapped on router 1,
    // the other NATed ones relayed through p1 and p2
    const mappedAddr = `/ip4/${LAB_PUBLIC_WAN}/tcp/${NAT_PORT}`
    const reach = await until(60_000, async () => {
      const s = await Promise.all([...members.values()].map(statusOf))
      const st = s.map((x) => x?.mesh?.reachability)
      const [p1, p2, h1a, ...others] = st
      const good = p1?.state === 'public' && p2?.state === 'public' && h1a?.state === 'public' && h1a.mapped === mappedAddr &&
        others.every((x) => x?.state === 'relayed' && x.relays.length === 2)
      return good ? st : undefined
    })
    t.diagnostic(`reachability after ${Date.now() - t0} ms:\n${await summary()}`)
    assert.ok(reach, `p1 and p2 public, h1a public through its mapping ${mappedAddr}, h1b and h2 relayed through both within 60 s`)
    for (const x of [m('h1b'), m('h2')]) {
      const s = (await statusOf(x))!.mesh!
      assert.ok(s.addresses.some((a) => a.includes('/p2p-circuit')), `${x.name} advertises relayed addresses: ${s.addresses.join(' ')}`)
      assert.ok(!s.addresses.some((a) => a.startsWith('/ip4/127.')), `${x.name} advertises no loopback address`)
    }

    let units = 0
    /** Compiles hello.c in `client`'s namespace; returns the builder's name from the client's job counters. */
    const compileOn = async (client: Member, label: string): Promise<string> => {
      const dir = join(client.inst.dir, `w-${label}`)
      mkdirSync(dir, { recursive: true })
      // a unit of its own per compile: the same unit twice would be a shared-cache hit, no job
      writeFileSync(join(dir, 'hello.c'), SOURCE.replace('7', String(100 + ++units)))
      const plain = await runCommand('gcc', ['-c', 'hello.c', '-o', 'plain.o'], { cwd: dir })
      assert.equal(plain.code, 0, plain.stderr)
      const before = (await statusOf(client))!.mesh!.jobs_per_peer
      const res = await runCommand('ip', ['netns', 'exec', client.host.ns, MESHCC, 'gcc', '-c', 'hello.c', '-o', 'hello.o'], { cwd: dir, env: client.inst.env, timeoutMs: 180_000 })
      assert.equal(res.code, 0, res.stderr)
      assert.ok(readFileSync(join(dir, 'hello.o')).equals(readFileSync(join(dir, 'plain.o'))), `${label}: the object is what gcc makes`)
      const afterJobs = (await statusOf(client))!.mesh!.jobs_per_peer
      const done = [...members.values()].filter((x) => (afterJobs[x.id]?.done ?? 0) > (before[x.id]?.done ?? 0))
      return done.map((x) => x.name).join(',') || 'here'
    }
    // 0. port mapping: h1a asked router 1 (UPnP-IGD) for a port and advertises the mapped
    // address; h1b (port_mapping = false) asked nothing and is relayed (above)
    const h1aMesh = (await statusOf(m('h1a')))!.mesh!
    t.diagnostic(`h1a: ${reachabilityText(h1aMesh.reachability)}; router 1 leases: ${JSON.stringify(upnp.leases())}`)
    assert.ok(h1aMesh.addresses.some((a) => a.startsWith(`${mappedAddr}/p2p/`)), `h1a advertises ${mappedAddr}: ${h1aMesh.addresses.join(' ')}`)
    assert.equal(h1aMesh.reachability.port_mapping.state, 'mapped')
    assert.equal(h1aMesh.reachability.port_mapping.protocol, 'upnp')
    assert.match(reachabilityText(h1aMesh.reachability), /^public \(mapped: /)
    const lease0 = upnp.leases().find((l) => l.client === lab.h1a.ip)
    assert.ok(lease0 && lease0.proto === 'TCP' && lease0.extPort === NAT_PORT && lease0.intPort === NAT_PORT, `router 1 holds h1a's mapping: ${JSON.stringify(upnp.leases())}`)
    assert.match(upnp.dnatRules(), new RegExp(`dnat ip to ${lab.h1a.ip.replace(/\./g, '\\.')}:${NAT_PORT}`))
    assert.ok(!upnp.leases().some((l) => l.client === lab.h1b.ip), 'h1b mapped nothing')
    assert.equal((await statusOf(m('h1b')))!.mesh!.reachability.port_mapping.state, 'off')
    // renewed before it runs out: the lease's end moves on
    const renewed = await until(20_000, async () => { const l = upnp!.leases().find((x) => x.client === lab.h1a.ip); return l && l.expires > lease0.expires ? l : undefined })
    assert.ok(renewed, `h1a renews its lease (${lease0.expires} then ${JSON.stringify(upnp.leases())})`)
    // a router that does not answer a renewal for a while (router 1 drops h1a's UPnP control
    // connections): the lease still runs, so h1a keeps its mapping and renews once it answers
    const h1aLog = () => readFileSync(join(m('h1a').inst.cacheDir, 'meshcc.log'), 'utf8')
    const noControl = ['INPUT', '-s', lab.h1a.ip, '-p', 'tcp', '-m', 'comment', '--comment', 'meshcc-test-noupnp', '-j', 'DROP']
    lab.iptables(lab.r1.ns, ['-I', ...noControl])
    let unanswered: true | undefined
    try {
      unanswered = await until(30_000, async () => /port mapping: renewing \S+ failed/.test(h1aLog()) ? true : undefined)
    } finally {
      lab.iptables(lab.r1.ns, ['-D', ...noControl])
    }
    assert.ok(unanswered, 'a renewal went unanswered')
    const leaseBefore = upnp.leases().find((l) => l.client === lab.h1a.ip)?.expires ?? 0
    const renewedAgain = await until(30_000, async () => { const l = upnp!.leases().find((x) => x.client === lab.h1a.ip); return l && l.expires > leaseBefore ? l : undefined })
    assert.ok(renewedAgain, `h1a renews once the router answers again: ${JSON.stringify(upnp.leases())}`)
    const keptMapping = (await statusOf(m('h1a')))!.mesh!.reachability.port_mapping
    assert.equal(keptMapping.state, 'mapped', `h1a kept its mapping through the silence: ${keptMapping.detail}`)
    // an outside member dials h1a through the mapping: router 1 drops what h1a itself would dial
    // to p2, and p2 comes back from a restart
    const noDial = ['FORWARD', '-s', lab.h1a.ip, '-d', lab.p2.ip, '-m', 'conntrack', '--ctstate', 'NEW', '-m', 'comment', '--comment', 'meshcc-test-nodial', '-j', 'DROP']
    lab.iptables(lab.r1.ns, ['-I', ...noDial])
    killDaemon('p2')
    startDaemon('p2')
    const viaMapping = await until(60_000, async () => { const l = await link('p2', 'h1a'); return l && linkText(l) === 'direct (mapped)' ? l : undefined })
    t.diagnostic(`p2 → h1a: ${JSON.stringify(await link('p2', 'h1a'))}`)
    assert.ok(viaMapping, 'p2\'s LINK to h1a says direct (mapped)')
    await onlyBuilder('h1a', 'p2')
    assert.equal(await compileOn(m('p2'), 'mapped'), 'h1a', 'p2\'s job ran on h1a, through its mapping')
    lab.iptables(lab.r1.ns, ['-D', ...noDial])
    await onlyBuilder('h1b', 'h1a')

    // 1. the two LAN hosts behind router 1: mDNS, no bootstrap needed, a LAN direct link
    const lan = await link('h1a', 'h1b')
    assert.equal(lan?.connection, 'direct')
    assert.equal(lan?.lan, true, 'h1a sees h1b as LAN')
    await onlyBuilder('h1b', 'h1a')
    assert.equal(await compileOn(m('h1a'), 'lan'), 'h1b', 'h1a\'s job ran on h1b')

    // 2. behind different NATs, no mapping: through a relay, both ways
    const relayed = await until(30_000, async () => { const l = await link('h2', 'h1b'); return l?.connection === 'relayed' ? l : undefined })
    t.diagnostic(`h2 → h1b: ${JSON.stringify(await link('h2', 'h1b'))}`)
    assert.ok(relayed, 'h2 reaches h1b through a relay')
    assert.match(relayed.relay_via ?? '', /^p[12]$/)
    await onlyBuilder('h1b', 'h2')
    assert.equal(await compileOn(m('h2'), 'relay-a'), 'h1b', 'h2\'s job ran on h1b, relayed')
    await onlyBuilder('h2', 'h1b')
    assert.equal(await compileOn(m('h1b'), 'relay-b'), 'h2', 'h1b\'s job ran on h2, relayed')

    // 3. a public client and a NATed builder: a direct connection the NATed side dialed
    const rev = await until(20_000, async () => { const l = await link('p2', 'h1b'); return l?.connection === 'direct' ? l : undefined })
    assert.ok(rev, 'p2 has a direct connection to h1b')
    assert.equal(linkText(rev), 'direct', 'not through a mapping (h1b has none)')
    await onlyBuilder('h1b', 'p2')
    assert.equal(await compileOn(m('p2'), 'reversed'), 'h1b', 'p2\'s job ran on h1b')
    await onlyBuilder('h1b', 'h2')

    // a small make project in the client's directory; returns how long the build took
    let builds = 0
    const makeOn = async (client: Member, label: string, during?: () => Promise<void>): Promise<number> => {
      const dir = join(client.inst.dir, `p-${label}`)
      mkdirSync(dir, { recursive: true })
      const units = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']
      // units of their own per build: another build's units would be shared-cache hits, no jobs
      const nth = ++builds
      for (const u of units) writeFileSync(join(dir, `${u}.c`), `int ${u}_f(int x) { return x * ${u.charCodeAt(0)} + ${1000 + nth}; }\n`)
      writeFileSync(join(dir, 'Makefile'), `all: ${units.map((u) => `${u}.o`).join(' ')}\n%.o: %.c\n\t$(CC) -O2 -c $< -o $@\n`)
      const plain = await runCommand('make', ['-j2', 'CC=gcc'], { cwd: dir })
      assert.equal(plain.code, 0, plain.stderr)
      const expected = units.map((u) => readFileSync(join(dir, `${u}.o`)))
      for (const u of units) rmSync(join(dir, `${u}.o`))
      const t1 = Date.now()
      const build = runCommand('ip', ['netns', 'exec', client.host.ns, 'make', '-j2', `CC=${MESHCC} gcc`], { cwd: dir, env: client.inst.env, timeoutMs: 240_000 })
      if (during) await during()
      const res = await build
      const ms = Date.now() - t1
      assert.equal(res.code, 0, `${label}: the build stays green: ${res.stderr}`)
      units.forEach((u, i) => assert.ok(readFileSync(join(dir, `${u}.o`)).equals(expected[i]!), `${label}: ${u}.o is what gcc makes`))
      return ms
    }

    // 3b. a slow, lossy wan (50 ms, 1 % loss): builds stay green and byte-identical, relayed and direct
    const jobsDone = async (client: Name, builder: Name) => (await statusOf(m(client)))?.mesh?.jobs_per_peer[m(builder).id]?.done ?? 0
    t.diagnostic(`impaired wan: ${lab.impairWan(true)}`)
    try {
      for (const [client, label, want] of [['h2', 'lossy-relayed', 'relayed'], ['p2', 'lossy-direct', 'direct']] as const) {
        assert.equal((await link(client, 'h1b'))?.connection, want, `${client} → h1b is ${want}`)
        await onlyBuilder('h1b', client)
        const before = await jobsDone(client, 'h1b')
        const ms = await makeOn(m(client), label)
        const done = (await jobsDone(client, 'h1b')) - before
        t.diagnostic(`${label}: ${ms} ms, ${done} of 8 jobs on h1b`)
        assert.ok(done > 0, `${label}: jobs ran on h1b`)
      }
    } finally {
      lab.impairWan(false)
    }
    await onlyBuilder('h1b', 'h2')

    // 4. a builder's link cut without a FIN or RST (drop rules in its namespace): its client
    // loses seconds, not the keep-alive's minute and a half
    assert.equal((await link('h2', 'h1b'))?.connection, 'relayed')
    const cut = ['-m', 'comment', '--comment', 'meshcc-test-cut']
    lab.iptables(m('h1b').host.ns, ['-I', 'INPUT', '!', '-i', 'lo', ...cut, '-j', 'DROP'])
    lab.iptables(m('h1b').host.ns, ['-I', 'OUTPUT', '!', '-o', 'lo', ...cut, '-j', 'DROP'])
    const tc = Date.now()
    const where = await compileOn(m('h2'), 'cut')
    const cutMs = Date.now() - tc
    t.diagnostic(`compile with h1b's link cut: ${cutMs} ms, ran ${where}`)
    assert.notEqual(where, 'h1b')
    assert.ok(cutMs < 30_000, `a dead builder costs seconds (${cutMs} ms)`)
    lab.iptables(m('h1b').host.ns, ['-D', 'INPUT', '!', '-i', 'lo', ...cut, '-j', 'DROP'])
    lab.iptables(m('h1b').host.ns, ['-D', 'OUTPUT', '!', '-o', 'lo', ...cut, '-j', 'DROP'])
    const back = await until(60_000, async () => { const l = await link('h2', 'h1b'); return l?.connection === 'relayed' && l.free_slots > 0 ? l : undefined })
    assert.ok(back, 'h1b is back in h2\'s view, relayed, after the link returns')
    const whole = await until(60_000, async () => { const s = await statusOf(m('h1b')); return s?.mesh?.members.length === 5 && s.mesh.reachability.relays.length === 2 ? s : undefined })
    t.diagnostic(`after the cut:\n${await summary()}`)
    assert.ok(whole, 'h1b sees every member again and holds two relay slots')

    // 5. the relay of a running build is killed: the build stays green, the NATed members
    // keep (or move to) the other relay
    await onlyBuilder('h1b', 'h2')
    const via = (await link('h2', 'h1b'))!.relay_via as Name
    const other: Name = via === 'p1' ? 'p2' : 'p1'
    const sentBefore = (await statusOf(m('h2')))!.mesh!.jobs_per_peer[m('h1b').id]?.sent ?? 0
    const killMs = await makeOn(m('h2'), 'relay-killed', async () => {
      // the kill lands while jobs are on their way to h1b through it
      for (let i = 0; i < 200; i++) {
        if (((await statusOf(m('h2')))?.mesh?.jobs_per_peer[m('h1b').id]?.sent ?? 0) > sentBefore) break
        await sleep(50)
      }
      killDaemon(via)
    })
    const sentAfter = (await statusOf(m('h2')))!.mesh!.jobs_per_peer[m('h1b').id]?.sent ?? 0
    t.diagnostic(`build with relay ${via} killed: ${killMs} ms, ${sentAfter - sentBefore} jobs sent to h1b`)
    assert.ok(sentAfter > sentBefore, 'the build sent jobs to h1b through the relay')
    const moved = await until(40_000, async () => {
      const s = await Promise.all([m('h1b'), m('h2')].map(statusOf))
      return s.every((x) => x?.mesh?.reachability.state === 'relayed' && x.mesh.reachability.relays.join() === other) ? s : undefined
    })
    t.diagnostic(`after ${via} died:\n${await summary()}`)
    assert.ok(moved, `h1b and h2 hold their relay slot on ${other} only`)
    const again = await until(30_000, async () => { const l = await link('h2', 'h1b'); return l?.connection === 'relayed' && l.relay_via === other ? l : undefined })
    assert.ok(again, `h2 reaches h1b through ${other}`)
    await onlyBuilder('h1b', 'h2')
    assert.equal(await compileOn(m('h2'), 'relay-moved'), 'h1b', 'h2\'s job ran on h1b through the remaining relay')

    // 6. no reachable member at all: h2 says why, and builds here without a hang
    killDaemon(other)
    const alone = await until(40_000, async () => {
      const s = await statusOf(m('h2'))
      return s?.mesh?.reachability.state === 'unreachable' ? s : undefined
    })
    t.diagnostic(`h2 alone: ${alone?.mesh?.reachability.detail}`)
    assert.ok(alone, 'h2 knows it is unreachable')
    assert.match(alone.mesh!.reachability.detail, /no reachable member to relay through/)
    const tl = Date.now()
    assert.equal(await compileOn(m('h2'), 'alone'), 'here', 'h2 compiles locally')
    assert.ok(Date.now() - tl < 20_000, `no hang (${Date.now() - tl} ms)`)

    // 7. h1a's daemon stops: its mapping leaves router 1
    await stopDaemon('h1a')
    const unmapped = await until(10_000, async () => !upnp!.leases().some((l) => l.client === lab.h1a.ip) && !upnp!.dnatRules().includes(lab.h1a.ip) ? true : undefined)
    assert.ok(unmapped, `router 1 no longer forwards to h1a: ${JSON.stringify(upnp.leases())} ${upnp.dnatRules()}`)

    // 8. IPv6: h1a comes back without a port mapping; it and h2 are behind different IPv4 NATs,
    // no relay is left, but both have global IPv6 addresses: a direct link, both ways
    writeFileSync(m('h1a').inst.conf, readFileSync(m('h1a').inst.conf, 'utf8').replace('[mesh]\n', '[mesh]\nport_mapping = false\n'))
    startDaemon('h1a')
    const v6 = await until(60_000, async () => { const l = await link('h2', 'h1a'); return l?.connection === 'direct' ? l : undefined })
    t.diagnostic(`after h1a came back:\n${await summary()}`)
    assert.ok(v6, 'h2 has a direct link to h1a')
    assert.equal(linkText(v6), 'direct', 'no relay, no mapping')
    // (bounded: a daemon that just came back may not answer its first status request)
    const h1aAddrs = (await until(20_000, async () => (await statusOf(m('h1a')))?.mesh?.addresses))!
    assert.ok(h1aAddrs.some((a) => a.startsWith(`/ip6/${lab.h1a.ip6}/tcp/${NAT_PORT}/`)), `h1a advertises its IPv6 address: ${h1aAddrs.join(' ')}`)
    assert.ok(!h1aAddrs.some((a) => a.startsWith(mappedAddr)), 'and no mapped address any more')
    await onlyBuilder('h1a', 'h2')
    assert.equal(await compileOn(m('h2'), 'ipv6-a'), 'h1a', 'h2\'s job ran on h1a over IPv6')
    await onlyBuilder('h2', 'h1a')
    assert.equal(await compileOn(m('h1a'), 'ipv6-b'), 'h2', 'h1a\'s job ran on h2 over IPv6')

    ok = true
  } finally {
    if (!ok) {
      for (const x of nm?.members.values() ?? []) {
        try {
          const lines = readFileSync(join(x.inst.cacheDir, 'meshcc.log'), 'utf8').trimEnd().split('\n').filter((l) => !/ D /.test(l) || /reach|relay|dial/.test(l))
          t.diagnostic(`${x.name} meshcc.log (last 40 of ${lines.length}):\n${lines.slice(-40).join('\n')}`)
        } catch { /* no log */ }
      }
    }
    if (!ok && upnp) t.diagnostic(`miniupnpd output (last 30 lines):\n${upnp.output().trimEnd().split('\n').slice(-30).join('\n')}`)
    await upnp?.stop()
    await lab.destroy()
    rmSync(upnpDir, { recursive: true, force: true })
    for (const x of nm?.members.values() ?? []) rmSync(`${x.inst.socket}.pid`, { force: true })
    assert.deepEqual(liveNamespaces(), [], 'namespaces deleted')
  }
})
