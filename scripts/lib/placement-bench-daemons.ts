// Placement benchmark on real daemons (bench:placement --daemons): one workload of the
// simulation (placement-bench-workload.ts) played by real meshcc daemons on this machine.
// Builders declare the workload's slots ([build] cores) and one common speed; clients
// (local_slots = 0, offering nothing) submit each job through the real launcher, with the
// workload's -j, phases and start times. The compiler is a stand-in (standin-cc.c) that sleeps
// the job's duration, so the figure is placement (and meshcc's own dispatch), not this
// machine's CPU. Loopback only, no mDNS; every daemon is stopped (by PID, checked to be ours).
import { spawn } from 'node:child_process'
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { adminStatus, makeNode, meshInit, processesUnder, startNode, stopNode, waitForFarm, writeConfig, type BenchNode } from './mesh-bench-node.js'
import { fail, isAlive, runOk, sleep, waitFor } from './proc.js'
import { MESHCC_MAIN, cleanEnv } from './tools.js'
import type { Workload } from './placement-bench-workload.js'

const HERE = dirname(fileURLToPath(import.meta.url))

/** The parts of a daemon's status this benchmark reads. */
interface LiveStatus {
  mesh: { addresses: string[]; builder: { jobs_done: number; jobs_refused: number } } | null
}

export interface DaemonRunResult {
  makespanMs: number
  jobs: number
  /** per client: compiles sent to builders, compiled here, and fallback / retry reasons */
  remote: number
  local: number
  fallbacks: Record<string, number>
  retries: Record<string, number>
  /** jobs each builder ran, and offers it refused */
  builderJobs: number[]
  refused: number
  /** a job's wall time through the launcher beyond its sleep (waiting for a slot included), ms */
  overheadMinMs: number
  overheadMedianMs: number
  overheadMaxMs: number
}

type Say = (s: string) => void

/** The stand-in compiler as bin/gcc with bin/cc1 and bin/as beside it (what it reports). */
async function buildStandin(root: string): Promise<string> {
  const bin = join(root, 'standin', 'bin')
  mkdirSync(bin, { recursive: true })
  const gcc = join(bin, 'gcc')
  await runOk('gcc', ['-O2', '-Wall', '-o', gcc, join(HERE, 'standin-cc.c')], { timeoutMs: 60_000 }, 'building the stand-in compiler')
  for (const name of ['cc1', 'as']) copyFileSync(gcc, join(bin, name))
  return gcc
}

const status = (n: BenchNode) => adminStatus<LiveStatus>(n.socket, 5000).catch(() => undefined)

/** One job through the launcher: resolves with its wall time, rejects on a wrong result. */
function submit(client: BenchNode, gcc: string, dir: string, id: string, ms: number): Promise<number> {
  const src = join(dir, `${id}.c`)
  // a random line: a rerun of the benchmark must not be a cache hit
  writeFileSync(src, `// sleep_ms ${Math.round(ms)}\n// ${id} ${Math.random()}\n`)
  const t0 = performance.now()
  return new Promise((resolve, reject) => {
    const child = spawn(MESHCC_MAIN, [gcc, '-c', `${id}.c`, '-o', `${id}.o`], {
      cwd: dir, env: cleanEnv({ MESHCC_CONF: client.conf }), stdio: ['ignore', 'ignore', 'pipe']
    })
    let err = ''
    child.stderr!.on('data', (d: Buffer) => { if (err.length < 2000) err += d.toString('utf8') })
    child.on('error', reject)
    child.on('close', (code) => {
      const took = performance.now() - t0
      let obj = ''
      try { obj = readFileSync(join(dir, `${id}.o`), 'utf8') } catch { /* checked below */ }
      if (code !== 0 || !obj.startsWith(`stand-in object of ${id}.c`)) reject(new Error(`job ${id} failed (exit ${code}): ${err.trim().split('\n').pop() ?? ''}`))
      else resolve(took)
    })
  })
}

/** Run jobs with at most j in flight (make -j). */
async function runPhase(jobs: Array<() => Promise<number>>, j: number, overheads: number[], durations: number[]): Promise<void> {
  let next = 0
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++
      const took = await jobs[i]!()
      overheads.push(took - durations[i]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(j, jobs.length) }, worker))
}

export async function runOnDaemons(w: Workload, root: string, say: Say, timeoutMs: number): Promise<DaemonRunResult> {
  if (w.builders.some((b) => b.speed !== 1)) fail('--daemons plays workloads of one speed only: the stand-in cannot tell a fast builder from a slow one')
  if (w.clients.some((c) => c.localSlots !== 0)) fail('--daemons plays workloads without local slots')
  const gcc = await buildStandin(root)
  const keyFile = join(root, 'mesh.key')
  const builders = w.builders.map((_, i) => makeNode(root, i))
  const clients = w.clients.map((_, i) => makeNode(root, 50 + i))
  const all = [...builders, ...clients]
  // one declared speed for all: a measured one would split equal builders into tiers by noise
  const buildConf = (cores: number, offer: string) => [`cores = ${cores}`, 'local_slots = 0', 'speed = 100', `offer = "${offer}"`]
  try {
    writeConfig(builders[0]!, keyFile, [], 'warn', true, buildConf(w.builders[0]!.slots, 'always'))
    meshInit(keyFile)
    await startNode(builders[0]!, 45_000)
    const first = await waitFor('the first daemon\'s mesh', 30_000, async () => ((await status(builders[0]!))?.mesh ?? undefined))
    const boot = first.addresses.filter((a) => a.startsWith('/ip4/127.0.0.1/tcp/'))
    w.builders.forEach((b, i) => { if (i > 0) writeConfig(builders[i]!, keyFile, boot, 'warn', true, buildConf(b.slots, 'always')) })
    clients.forEach((c) => writeConfig(c, keyFile, boot, 'warn', true, buildConf(0, 'never')))
    // a few at a time: 20-odd Node start-ups at once would take the 2 cores for a while
    const rest = all.slice(1)
    for (let i = 0; i < rest.length; i += 4) await Promise.all(rest.slice(i, i + 4).map((n) => startNode(n, 60_000)))
    say(`placement --daemons: ${builders.length} builders (${w.builders.reduce((n, b) => n + b.slots, 0)} slots) and ${clients.length} clients started; waiting for every client to see every builder with room`)
    await waitForFarm(builders.map((b, i) => ({ name: `builder ${i}`, socket: b.socket })), clients.map((c, i) => ({ name: `client ${i}`, socket: c.socket })), 120_000)
    // ship the stand-in toolchain to every builder before timing: one job per builder slot
    say('placement --daemons: warming up (the stand-in toolchain reaches the builders)')
    const warmDir = join(clients[0]!.dir, 'warm')
    mkdirSync(warmDir, { recursive: true })
    const slots = w.builders.reduce((n, b) => n + b.slots, 0)
    await runPhase(Array.from({ length: slots }, (_, i) => () => submit(clients[0]!, gcc, warmDir, `w${i}`, 1500)), slots, [], Array(slots).fill(1500))
    const done0 = await Promise.all(builders.map(async (b) => (await status(b))?.mesh?.builder ?? { jobs_done: 0, jobs_refused: 0 }))
    for (const c of clients) await runOk(MESHCC_MAIN, ['-z'], { env: cleanEnv({ MESHCC_CONF: c.conf }), timeoutMs: 30_000 })
    await sleep(3000) // let every load message settle

    say(`placement --daemons: ${w.clients.reduce((n, c) => n + c.phases.reduce((k, p) => k + p.jobs.length, 0), 0)} jobs from ${clients.length} clients`)
    const overheads: number[] = []
    const t0 = performance.now()
    let deadlineHit = false
    const timer = setTimeout(() => { deadlineHit = true }, timeoutMs)
    await Promise.all(w.clients.map(async (spec, ci) => {
      const c = clients[ci]!
      const dir = join(c.dir, 'work')
      mkdirSync(dir, { recursive: true })
      await sleep(spec.startMs)
      for (const [pi, phase] of spec.phases.entries()) {
        if (deadlineHit) fail(`the run took longer than ${Math.round(timeoutMs / 1000)} s`)
        const jobs = phase.jobs.map((ms, k) => () => submit(c, gcc, dir, `c${ci}p${pi}j${k}`, ms))
        await runPhase(jobs, spec.j, overheads, phase.jobs)
        await sleep(phase.pauseAfterMs)
      }
    }))
    clearTimeout(timer)
    const makespanMs = performance.now() - t0

    const fallbacks: Record<string, number> = {}
    const retries: Record<string, number> = {}
    let remote = 0
    let local = 0
    for (const c of clients) {
      const r = await runOk(MESHCC_MAIN, ['-s', '--stats-format', 'json'], { env: cleanEnv({ MESHCC_CONF: c.conf }), timeoutMs: 30_000 })
      const s = JSON.parse(r.stdout) as Record<string, unknown>
      remote += Number(s.remote_compiles ?? 0)
      local += Number(s.local_compiles ?? 0)
      for (const [key, into] of [['fallback_reasons', fallbacks], ['retry_reasons', retries]] as const) {
        for (const [k, v] of Object.entries((s[key] ?? {}) as Record<string, number>)) into[k] = (into[k] ?? 0) + v
      }
    }
    const after = await Promise.all(builders.map(async (b) => (await status(b))?.mesh?.builder ?? { jobs_done: 0, jobs_refused: 0 }))
    const sorted = [...overheads].sort((a, b) => a - b)
    return {
      makespanMs,
      jobs: overheads.length,
      remote, local, fallbacks, retries,
      builderJobs: after.map((a, i) => a.jobs_done - done0[i]!.jobs_done),
      refused: after.reduce((n, a, i) => n + a.jobs_refused - done0[i]!.jobs_refused, 0),
      overheadMinMs: sorted[0] ?? 0,
      overheadMedianMs: sorted[Math.floor(sorted.length / 2)] ?? 0,
      overheadMaxMs: sorted[sorted.length - 1] ?? 0
    }
  } finally {
    await Promise.all(all.map((n) => stopNode(n, 10_000).catch(() => undefined)))
    for (const pid of processesUnder(root)) if (isAlive(pid)) try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
  }
}
