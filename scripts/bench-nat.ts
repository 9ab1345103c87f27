// What a member's link costs remote compiles: the NAT lab of test/mesh-nat.test.ts (network
// namespaces: a wan bridge, two public relay members, two MASQUERADE routers, three hosts behind
// them, router 1 running miniupnpd; real daemons) and the same jobs over each kind of link a
// client can have to its builder:
//
//   LAN direct        h1a → h1b, both behind router 1 (mDNS, one bridge)
//   direct (mapped)   p2 → h1a: a public client dialed the NATed builder at the port h1a mapped
//                     on router 1 (UPnP-IGD); as in test/mesh-nat.test.ts, router 1 drops new
//                     connections from h1a to p2 and p2 restarts, so p2 is the one that dials.
//                     Measured last (the restart costs h1b and h2 a relay slot on p2).
//   direct (reversed) p2 → h1b: h1b has port_mapping = false, so only h1b can open the
//                     connection (the one a relayed link is replaced by)
//   relayed           h2 → h1b, behind different routers, neither reachable: through p1 or p2
//
// Each row checks the client's LINK to the builder (meshcc --mesh wording) before and after
// its jobs, so a row never silently measures another kind of link.
//
// Per link: remote jobs per second (small units, one at a time, so this is latency bound), and
// input bytes per second (units that include a fresh header of --mib MiB each, so the bytes
// cross the link every time; gzip level 1 on the wire, the header is random text that packs to
// about 75 %). For the relayed link also the relay member's CPU per relayed MiB. --wan-delay-ms
// adds a netem delay on every wan link (each crossing of the wan then costs it once per way).
//
//   npm run bench:nat [-- --jobs 20 --big 6 --mib 4 --wan-delay-ms 0 --out scripts/bench-results/nat.md]
//
// Needs root (network namespaces, iptables), gcc and bubblewrap, like the NAT test.
import { mkdirSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { tmpdir, loadavg } from 'node:os'
import { createNatLab, startMiniupnpd, LAB_PUBLIC_WAN, type Miniupnpd } from '../test/helpers/netns.js'
import { MESHCC, runCommand, type Instance } from '../test/helpers/meshcc.js'
import { NAT_PORT, startNatMesh, statusOf, until, type Name, type NatMesh } from '../test/helpers/nat-mesh.js'
import { linkText } from '../src/cli/mesh-commands.js'
import type { MemberStatus } from '../src/daemon/mesh-service.js'
import { cpuTimes } from './lib/mesh-bench-sample.js'
import { markdownTable, median } from './lib/stats.js'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const { values: opt } = parseArgs({
  options: {
    jobs: { type: 'string', default: '20' },
    big: { type: 'string', default: '6' },
    mib: { type: 'string', default: '4' },
    'wan-delay-ms': { type: 'string', default: '0' },
    out: { type: 'string', default: join(ROOT, 'scripts', 'bench-results', 'nat.md') }
  }
})
const JOBS = Number(opt.jobs)
const BIG = Number(opt.big)
const MIB = Number(opt.mib)
const DELAY = Number(opt['wan-delay-ms'])
const say = (s: string) => process.stdout.write(`[bench-nat] ${s}\n`)

interface Row { link: string; client: Name; builder: Name; rttMs: number | null; jobsPerS: number; medianMs: number; mibPerS: number; relayCpuMsPerMiB: number | null }

async function main(): Promise<void> {
  const r = createNatLab()
  if ('skip' in r) throw new Error(`cannot build the NAT lab: ${r.skip}`)
  const lab = r.lab
  const instances: Instance[] = []
  let nm: NatMesh | null = null
  let upnp: Miniupnpd | null = null
  const upnpDir = mkdtempSync(join(tmpdir(), 'meshcc-bench-upnp-'))
  const stop = async () => {
    await upnp?.stop()
    await lab.destroy()
    rmSync(upnpDir, { recursive: true, force: true })
    for (const i of instances) { rmSync(`${i.socket}.pid`, { force: true }); rmSync(i.dir, { recursive: true, force: true }) }
  }
  process.once('SIGINT', () => { void stop().then(() => process.exit(130)) })
  const load0 = loadavg().map((x) => x.toFixed(2)).join(' ')
  try {
    if (DELAY > 0) for (const ns of [lab.p1.ns, lab.p2.ns, lab.r1.ns, lab.r2.ns]) lab.run({ ns }, 'tc', ['qdisc', 'add', 'dev', 'eth0', 'root', 'netem', 'delay', `${DELAY}ms`])
    upnp = await startMiniupnpd(lab, lab.r1, upnpDir)
    nm = await startNatMesh(lab, instances)
    const mesh = nm
    const t0 = Date.now()
    const mappedAddr = `/ip4/${LAB_PUBLIC_WAN}/tcp/${NAT_PORT}`
    const ready = await until(120_000, async () => {
      const s = await Promise.all([...mesh.members.values()].map(statusOf))
      const [, , h1a, h1b, h2] = s.map((x) => x?.mesh?.reachability)
      const ok = s.every((x) => x?.mesh?.members.length === 5) && h1a?.state === 'public' && h1a.mapped === mappedAddr &&
        [h1b, h2].every((x) => x?.state === 'relayed' && x.relays.length === 2)
      return ok ? true : undefined
    })
    if (!ready) throw new Error(`the lab mesh did not converge within 120 s (h1a mapped ${mappedAddr}, h1b and h2 relayed through both):\n${await mesh.summary()}\nrouter 1 leases: ${JSON.stringify(upnp.leases())}`)
    say(`mesh converged, h1a mapped ${mappedAddr} on router 1, h1b and h2 relayed, after ${Date.now() - t0} ms`)

    // router 1 drops what h1a itself would dial to p2, and p2 restarts: p2 dials h1a's mapping
    const noDial = ['FORWARD', '-s', lab.h1a.ip, '-d', lab.p2.ip, '-m', 'conntrack', '--ctstate', 'NEW', '-m', 'comment', '--comment', 'meshcc-bench-nodial', '-j', 'DROP']
    const dialedByP2 = async () => {
      lab.iptables(lab.r1.ns, ['-I', ...noDial])
      mesh.killDaemon('p2')
      mesh.startDaemon('p2')
    }
    const rows: Row[] = []
    const scenarios: Array<{ link: string; client: Name; builder: Name; want: (l: MemberStatus) => boolean; before?: () => Promise<void> }> = [
      { link: 'LAN direct', client: 'h1a', builder: 'h1b', want: (l) => linkText(l) === 'LAN direct' },
      { link: 'direct (reversed: h1b has port_mapping = false and dialed the public client)', client: 'p2', builder: 'h1b', want: (l) => linkText(l) === 'direct' },
      { link: 'relayed (both behind NAT)', client: 'h2', builder: 'h1b', want: (l) => l.connection === 'relayed' },
      { link: 'direct (mapped: the public client dialed the port h1a mapped on router 1)', client: 'p2', builder: 'h1a', want: (l) => linkText(l) === 'direct (mapped)', before: dialedByP2 }
    ]
    for (const sc of scenarios) {
      await sc.before?.()
      const linkOk = async () => { const x = await mesh.link(sc.client, sc.builder); return x && sc.want(x) ? x : undefined }
      const l = await until(60_000, linkOk)
      if (!l) throw new Error(`${sc.client} → ${sc.builder} is not ${sc.link}: ${JSON.stringify(await mesh.link(sc.client, sc.builder))}\n${await mesh.summary()}`)
      say(`${sc.client} → ${sc.builder}: ${linkText(l)}`)
      await mesh.onlyBuilder(sc.builder, sc.client)
      const client = mesh.m(sc.client)
      const dir = join(client.inst.dir, `bench-${sc.client}-${sc.builder}`)
      mkdirSync(dir, { recursive: true })
      const cc = async (file: string) => {
        const res = await runCommand('ip', ['netns', 'exec', client.host.ns, MESHCC, 'gcc', '-O1', '-c', file, '-o', `${file}.o`], { cwd: dir, env: client.inst.env, timeoutMs: 300_000 })
        if (res.code !== 0) throw new Error(`compile of ${file} failed: ${res.stderr}`)
      }
      const doneOn = async () => (await statusOf(client))?.mesh?.jobs_per_peer[mesh.m(sc.builder).id]?.done ?? 0
      // warm-up: the toolchain crosses once
      writeFileSync(join(dir, 'warm.c'), 'int warm(void) { return 1; }\n')
      await cc('warm.c')
      const d0 = await doneOn()
      const times: number[] = []
      const tj = Date.now()
      for (let i = 0; i < JOBS; i++) {
        writeFileSync(join(dir, `s${i}.c`), `int f${i}(int x) { return x * ${i + 3} + ${randomBytes(4).readUInt32BE()}; }\n`)
        const t = Date.now()
        await cc(`s${i}.c`)
        times.push(Date.now() - t)
      }
      const jobsPerS = JOBS / ((Date.now() - tj) / 1000)
      // bytes: each unit includes a header of its own, MIB MiB of comment text
      const relays: Array<number | null> = ['p1', 'p2'].map((n) => mesh.m(n as Name).inst.daemonPid())
      const cpu = () => relays.reduce<number>((s, pid) => { const c = pid ? cpuTimes(pid) : undefined; return s + (c ? c.user + c.sys : 0) }, 0)
      const cpu0 = cpu()
      const tb = Date.now()
      for (let i = 0; i < BIG; i++) {
        const text = randomBytes(Math.ceil(MIB * 1048576 * 3 / 4)).toString('base64').replace(/(.{100})/g, '$1\n')
        writeFileSync(join(dir, `big${i}.h`), `/*\n${text}\n*/\n#define BIG${i} ${i}\n`)
        writeFileSync(join(dir, `b${i}.c`), `#include "big${i}.h"\nint g${i}(void) { return BIG${i}; }\n`)
        await cc(`b${i}.c`)
      }
      const mibPerS = (BIG * MIB) / ((Date.now() - tb) / 1000)
      const cpuS = cpu() - cpu0
      const done = (await doneOn()) - d0
      if (done !== JOBS + BIG) throw new Error(`${sc.link}: ${done} of ${JOBS + BIG} jobs ran on ${sc.builder} (see the client's meshcc -s)`)
      const after = await mesh.link(sc.client, sc.builder)
      if (!after || !sc.want(after)) throw new Error(`${sc.link}: the link changed during the jobs: ${after ? linkText(after) : 'gone'}`)
      const row: Row = {
        link: sc.link, client: sc.client, builder: sc.builder, rttMs: l.rtt_ms,
        jobsPerS, medianMs: median(times), mibPerS,
        relayCpuMsPerMiB: l.connection === 'relayed' ? (cpuS * 1000) / (BIG * MIB) : null
      }
      rows.push(row)
      say(`${sc.link}: ${jobsPerS.toFixed(2)} jobs/s (median ${row.medianMs} ms), ${mibPerS.toFixed(1)} input MiB/s${row.relayCpuMsPerMiB !== null ? `, relays' CPU ${row.relayCpuMsPerMiB.toFixed(0)} ms per MiB` : ''}`)
    }
    const lan = rows[0]!
    // shown in the order of the issue's table: LAN, mapped, reversed, relayed
    const shown = [rows[0]!, rows[3]!, rows[1]!, rows[2]!]
    const table = markdownTable(
      ['link', 'client → builder', 'RTT', 'remote jobs/s', 'median job', 'vs LAN', `input MiB/s (${MIB} MiB units)`, 'vs LAN', 'relay CPU per relayed MiB'],
      [
        ...shown.map((x) => [x.link, `${x.client} → ${x.builder}`, x.rttMs === null ? '?' : `${x.rttMs.toFixed(1)} ms`, x.jobsPerS.toFixed(2), `${x.medianMs} ms`,
          `${Math.round((x.jobsPerS / lan.jobsPerS) * 100)} %`, x.mibPerS.toFixed(1), `${Math.round((x.mibPerS / lan.mibPerS) * 100)} %`,
          x.relayCpuMsPerMiB === null ? '-' : `${x.relayCpuMsPerMiB.toFixed(0)} ms`])
      ])
    const load = loadavg().map((x) => x.toFixed(2)).join(' ')
    const report = `# bench:nat\n\n${new Date().toISOString()}, ${JOBS} small jobs and ${BIG} units with a ${MIB} MiB header per link, wan delay ${DELAY} ms, on 2 cores shared by all five daemons (and whatever else runs: load average ${load0} at the start, ${load} at the end). Router 1 runs miniupnpd; h1a maps its port there, h1b has port_mapping = false.\n\n${table}\n`
    mkdirSync(dirname(opt.out!), { recursive: true })
    writeFileSync(opt.out!, report)
    process.stdout.write(`\n${report}\n`)
    say(`written to ${opt.out}`)
  } catch (err) {
    if (nm) say(`state at the failure:\n${await nm.summary().catch(() => '?')}`)
    throw err
  } finally {
    await stop()
  }
}

main().catch((err) => {
  process.stderr.write(`[bench-nat] ${(err as Error).message}\n`)
  process.exitCode = 1
})
