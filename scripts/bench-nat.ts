// What a member's link costs remote compiles: the NAT lab of test/mesh-nat.test.ts (network
// namespaces: a wan bridge, two public relay members, two MASQUERADE routers, three hosts behind
// them; real daemons) and the same jobs over each kind of link a client can have to its builder:
//
//   LAN direct   h1a → h1b, both behind router 1 (mDNS, one bridge)
//   direct       p2 → h1a: a public client and a NATed builder; the builder dialed the client
//                (the connection a relayed one is replaced by, "reversed")
//   relayed      h2 → h1b, behind different routers, neither reachable: through p1 or p2
//   mapped       not measured: port mapping (UPnP/NAT-PMP) is not implemented yet
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
import { mkdirSync, writeFileSync, rmSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { createNatLab } from '../test/helpers/netns.js'
import { MESHCC, runCommand, type Instance } from '../test/helpers/meshcc.js'
import { startNatMesh, statusOf, until, type Name, type NatMesh } from '../test/helpers/nat-mesh.js'
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
  const stop = async () => {
    await lab.destroy()
    for (const i of instances) { rmSync(`${i.socket}.pid`, { force: true }); rmSync(i.dir, { recursive: true, force: true }) }
  }
  process.once('SIGINT', () => { void stop().then(() => process.exit(130)) })
  try {
    if (DELAY > 0) for (const ns of [lab.p1.ns, lab.p2.ns, lab.r1.ns, lab.r2.ns]) lab.run({ ns }, 'tc', ['qdisc', 'add', 'dev', 'eth0', 'root', 'netem', 'delay', `${DELAY}ms`])
    nm = await startNatMesh(lab, instances)
    const mesh = nm
    const t0 = Date.now()
    const ready = await until(120_000, async () => {
      const s = await Promise.all([...mesh.members.values()].map(statusOf))
      const ok = s.every((x) => x?.mesh?.members.length === 5) && s.slice(2).every((x) => x?.mesh?.reachability.relays.length === 2)
      return ok ? true : undefined
    })
    if (!ready) throw new Error(`the lab mesh did not converge within 120 s:\n${await mesh.summary()}`)
    say(`mesh converged, NATed members relayed, after ${Date.now() - t0} ms`)

    const rows: Row[] = []
    const scenarios: Array<{ link: string; client: Name; builder: Name; want: string }> = [
      { link: 'LAN direct', client: 'h1a', builder: 'h1b', want: 'direct' },
      { link: 'direct (reversed: the NATed builder dialed the public client)', client: 'p2', builder: 'h1a', want: 'direct' },
      { link: 'relayed (both behind NAT)', client: 'h2', builder: 'h1b', want: 'relayed' }
    ]
    for (const sc of scenarios) {
      await mesh.onlyBuilder(sc.builder, sc.client)
      const l = await until(30_000, async () => { const x = await mesh.link(sc.client, sc.builder); return x?.connection === sc.want ? x : undefined })
      if (!l) throw new Error(`${sc.client} → ${sc.builder} is not ${sc.want}: ${JSON.stringify(await mesh.link(sc.client, sc.builder))}`)
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
      const row: Row = {
        link: sc.link, client: sc.client, builder: sc.builder, rttMs: l.rtt_ms,
        jobsPerS, medianMs: median(times), mibPerS,
        relayCpuMsPerMiB: sc.want === 'relayed' ? (cpuS * 1000) / (BIG * MIB) : null
      }
      rows.push(row)
      say(`${sc.link}: ${jobsPerS.toFixed(2)} jobs/s (median ${row.medianMs} ms), ${mibPerS.toFixed(1)} input MiB/s${row.relayCpuMsPerMiB !== null ? `, relays' CPU ${row.relayCpuMsPerMiB.toFixed(0)} ms per MiB` : ''}`)
    }
    const lan = rows[0]!
    const table = markdownTable(
      ['link', 'client → builder', 'RTT', 'remote jobs/s', 'median job', 'vs LAN', `input MiB/s (${MIB} MiB units)`, 'vs LAN', 'relay CPU per relayed MiB'],
      [
        ...rows.map((x) => [x.link, `${x.client} → ${x.builder}`, x.rttMs === null ? '?' : `${x.rttMs.toFixed(1)} ms`, x.jobsPerS.toFixed(2), `${x.medianMs} ms`,
          `${Math.round((x.jobsPerS / lan.jobsPerS) * 100)} %`, x.mibPerS.toFixed(1), `${Math.round((x.mibPerS / lan.mibPerS) * 100)} %`,
          x.relayCpuMsPerMiB === null ? '-' : `${x.relayCpuMsPerMiB.toFixed(0)} ms`]),
        ['direct (mapped)', '-', '-', 'not measured: port mapping is not implemented', '', '', '', '', '']
      ])
    const report = `# bench:nat\n\n${new Date().toISOString()}, ${JOBS} small jobs and ${BIG} units with a ${MIB} MiB header per link, wan delay ${DELAY} ms, on 2 cores shared by all five daemons.\n\n${table}\n`
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
