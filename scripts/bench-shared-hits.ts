// The CPU a mesh hit costs, small scale: two daemons on 127.0.0.1 (own config dirs, mdns =
// false, bootstrap by address, offer = "never"), a "CI" member that holds entries for the mesh
// and a "workstation" that holds none. The CI member compiles N generated C units (each
// including H of a pool of headers, kernel-style relative paths) at one path; the workstation,
// with an empty cache, compiles the same units from a copy at another path: every unit a mesh
// hit. Prints each daemon's CPU (utime+stime from /proc) per workstation request, and the
// lookup counters.
//
//   node --import tsx scripts/bench-shared-hits.ts [--units N] [--headers H] [--profile DIR]
//
// --profile writes V8 CPU profiles of both daemons for the workstation's build only
// (scripts/lib/cpu-profile-preload.mjs, started and stopped by SIGUSR2).
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { adminStatus, logTail, makeNode, meshInit, meshcc, startNode, stopNode, writeConfig, MESHCC_MAIN, type BenchNode } from './lib/mesh-bench-node.js'
import { cpuSecondsOf, fail, ownCpuSecondsOf, run, sleep, waitFor } from './lib/proc.js'
import { cleanEnv } from './lib/tools.js'

const { values: a } = parseArgs({ options: { units: { type: 'string', default: '120' }, headers: { type: 'string', default: '60' }, profile: { type: 'string' } } })
const UNITS = Number(a.units)
const HEADERS = Number(a.headers)

interface Shared { shared: { mesh: { lookups: number; lookups_unasked: number; members_skipped: number; remote_hits: number; followed_hits?: number; remote_misses: number; shared_lookup_ms: number; shared_entries: number; entries_served: number; failures: Record<string, number> } | null } | null }

function project(dir: string): void {
  mkdirSync(join(dir, 'include'), { recursive: true })
  mkdirSync(join(dir, 'src'), { recursive: true })
  mkdirSync(join(dir, 'out'), { recursive: true })
  for (let h = 0; h < HEADERS * 3; h++) {
    const decls = Array.from({ length: 40 }, (_, i) => `extern int h${h}_f${i}(int x, long y);\nstatic inline int h${h}_g${i}(int x) { return x * ${i + 1} + ${h}; }`).join('\n')
    writeFileSync(join(dir, 'include', `h${h}.h`), `#ifndef H${h}\n#define H${h}\n${decls}\n#endif\n`)
  }
  for (let u = 0; u < UNITS; u++) {
    const inc = Array.from({ length: HEADERS }, (_, i) => `#include "h${(u * 7 + i) % (HEADERS * 3)}.h"`).join('\n')
    const body = Array.from({ length: 30 }, (_, i) => `int u${u}_f${i}(int x) { int s = 0; for (int k = 0; k < x; k++) s += k * ${i + u}; return s; }`).join('\n')
    writeFileSync(join(dir, 'src', `u${u}.c`), `${inc}\n${body}\n`)
  }
}

/** the daemon's own CPU seconds, and with the children it reaped (compilers of misses) */
function cpu(n: BenchNode): { own: number; tree: number } {
  const own = ownCpuSecondsOf(n.pid!)
  const tree = cpuSecondsOf(n.pid!)
  if (own === undefined || tree === undefined) fail(`daemon ${n.index} is gone${logTail(n)}`)
  return { own, tree }
}

async function build(n: BenchNode, dir: string): Promise<number> {
  const env = cleanEnv({ MESHCC_CONF: n.conf })
  delete env.NODE_OPTIONS
  const t0 = performance.now()
  // two at a time, as make -j2
  let next = 0
  const worker = async () => {
    while (next < UNITS) {
      const u = next++
      const r = await run(MESHCC_MAIN, ['gcc', '-O2', '-Iinclude', '-c', `src/u${u}.c`, '-o', `out/u${u}.o`], { cwd: dir, env, timeoutMs: 120_000 })
      if (r.code !== 0) fail(`u${u}.c failed in ${dir}: ${(r.stderr || r.stdout).trim().split('\n').pop()}`)
    }
  }
  await Promise.all([worker(), worker()])
  return performance.now() - t0
}

const root = mkdtempSync(join(tmpdir(), 'meshcc-shared-hits-'))
const nodes: BenchNode[] = []
try {
  const p1 = join(root, 'ci', 'builds', 'proj')
  const p2 = join(root, 'home', 'dev', 'src', 'proj')
  project(p1)
  cpSync(p1, p2, { recursive: true })
  const keyFile = join(root, 'mesh.key')
  meshInit(keyFile)
  const ci = makeNode(root, 1)
  const ws = makeNode(root, 2)
  if (a.profile) {
    mkdirSync(a.profile, { recursive: true })
    ci.cpuProfDir = ws.cpuProfDir = a.profile
  }
  const buildCfg = ['local_slots = 2', 'cores = 2', 'offer = "never"']
  writeConfig(ci, keyFile, [], 'warn', true, buildCfg)
  nodes.push(ci)
  await startNode(ci, 45_000)
  const up = await waitFor('the CI daemon\'s mesh', 30_000, async () => (await adminStatus(ci.socket, 5000).catch(() => undefined))?.mesh ?? undefined)
  writeConfig(ws, keyFile, up.addresses.filter((x) => x.startsWith('/ip4/127.0.0.1/tcp/')), 'warn', true, buildCfg, ['shared_size = 0'])
  nodes.push(ws)
  await startNode(ws, 45_000)
  await waitFor('a direct link', 60_000, async () => {
    const s = await adminStatus(ws.socket, 5000).catch(() => undefined)
    const m = s?.mesh?.members.find((x) => !x.self)
    return m && m.connection === 'direct' && m.rtt_ms !== null ? true : undefined
  }, 500)
  const fillMs = await build(ci, p1)
  // the CI member signs and keeps its results in the background
  let last = -1
  for (let stable = 0, i = 0; stable < 3 && i < 120; i++) {
    const held = (await adminStatus<Shared>(ci.socket, 5000)).shared?.mesh?.shared_entries ?? -1
    stable = held === last ? stable + 1 : 0
    last = held
    await sleep(500)
  }
  console.log(`CI fill: ${UNITS} units in ${(fillMs / 1000).toFixed(1)} s, ${last} entries held for the mesh`)
  // the shared cache asks only members with a good link (RTT <= 50 ms): on a loaded machine a
  // sample can be above that, and the next one comes tens of seconds later
  await waitFor('a round trip under 50 ms to the CI member', 120_000, async () => {
    const m = (await adminStatus(ws.socket, 5000).catch(() => undefined))?.mesh?.members.find((x) => !x.self)
    return m && m.connection === 'direct' && m.rtt_ms !== null && m.rtt_ms <= 40 ? true : undefined
  }, 1000)
  if (a.profile) for (const n of nodes) process.kill(n.pid!, 'SIGUSR2')
  const c0 = { ci: cpu(ci), ws: cpu(ws) }
  const before = (await adminStatus<Shared>(ws.socket, 5000)).shared!.mesh!
  const ms = await build(ws, p2)
  const c1 = { ci: cpu(ci), ws: cpu(ws) }
  if (a.profile) {
    for (const n of nodes) process.kill(n.pid!, 'SIGUSR2')
    await sleep(2000)
  }
  const after = (await adminStatus<Shared>(ws.socket, 5000)).shared!.mesh!
  const s = JSON.parse((await meshcc(ws, ['-s', '--stats-format', 'json'], 30_000)).stdout) as Record<string, number>
  const hits = after.remote_hits - before.remote_hits
  const lookups = after.lookups - before.lookups
  console.log(`workstation: ${UNITS} units in ${(ms / 1000).toFixed(2)} s; mesh_hits ${s.mesh_hits}, misses ${s.cache_misses}, lookups ${lookups} (${after.remote_misses - before.remote_misses} answered miss), remote hits ${hits} (sent along with their manifest set ${(after.followed_hits ?? 0) - (before.followed_hits ?? 0)}), lookup ms ${(after.shared_lookup_ms - before.shared_lookup_ms).toFixed(0)}`)
  const per = (x: number) => `${(x * 1000).toFixed(0)} ms = ${(x * 1000 / UNITS).toFixed(1)} ms per request`
  console.log(`workstation daemon's own CPU ${per(c1.ws.own - c0.ws.own)} (with its compilers ${per(c1.ws.tree - c0.ws.tree)})`)
  console.log(`CI daemon's own CPU (serving) ${per(c1.ci.own - c0.ci.own)}`)
  console.log(`lookups with nobody asked ${after.lookups_unasked - before.lookups_unasked}, members skipped now ${after.members_skipped}`)
  const failures = Object.entries(after.failures).filter(([, v]) => v > 0)
  if (failures.length) console.log(`lookup failures: ${failures.map(([k, v]) => `${k} ${v}`).join(', ')}`)
  if (a.profile) console.log(`profiles: ${readdirSync(a.profile).filter((f) => f.endsWith('.cpuprofile')).map((f) => join(a.profile!, f)).join(' ')} (ci pid ${ci.pid}, ws pid ${ws.pid})`)
} finally {
  for (const n of nodes.reverse()) await stopNode(n, 20_000).catch(() => undefined)
  rmSync(root, { recursive: true, force: true })
}
