// The daemons' own CPU per remote job, in a minute instead of bench:dist's seven: 2 builder
// daemons + 1 client daemon (local_slots = 0) on 127.0.0.1 as bench:dist starts them, and the
// kernel units that bench:dist's last build left in --linux (their .o.cmd files give the exact
// compile commands), compiled through the client N at a time. Prints each daemon's utime and
// stime (and minor faults) per remote job, without the preprocessors and compiles they ran,
// and then the CPU of what each ran (its reaped children: on a builder the reaper, bwrap and
// the compile of each job; on the client its preprocessors), per remote job too.
//
// The machine's speed drifts by more than most changes under test (other work, CPU frequency):
// compare two checkouts by running them AT THE SAME TIME, each with its own hard-linked copy of
// the tree, e.g.
//   cp -al /var/tmp/meshcc-bench-dist/linux /var/tmp/jobcpu-a   (and -b; the script removes
//   the copies' objects first, so the original tree is never written)
//   (cd ../base && node --import tsx scripts/bench-job-cpu.ts --linux /var/tmp/jobcpu-a) &
//   node --import tsx scripts/bench-job-cpu.ts --linux /var/tmp/jobcpu-b
// Two runs of one checkout side by side differ by about 5 %.
//
// --cpu-prof DIR writes V8 profiles of the client and builder1: wall-clock samples of the main
// thread, which on a loaded machine charge a descheduled thread's wait to whatever it was in,
// and never see the libuv pool (compression, hashing). --perf FILE records the client daemon
// with `perf record -e cpu-clock -g` over the same window instead: its CPU, every thread
// (`perf report -i FILE --no-children --sort sym`; JS frames show as V8 builtins or unknown).
import { spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { meshccTool } from './lib/dist-bench-tools.js'
import { fail, run } from './lib/proc.js'
import { MESHCC_MAIN } from './lib/tools.js'

const { values } = parseArgs({
  options: {
    linux: { type: 'string' },
    units: { type: 'string', default: '100' },
    jobs: { type: 'string', default: '4' },
    'cpu-prof': { type: 'string' },
    perf: { type: 'string' }
  }
})
if (!values.linux) fail('usage: bench-job-cpu.ts --linux DIR (a hard-linked copy of bench:dist\'s built tree) [--units N] [--jobs J] [--cpu-prof DIR] [--perf FILE]')
const linux = values.linux
const units = Number(values.units)
const jobs = Number(values.jobs)

/** The compile commands of kernel/ and lib/ from their .o.cmd files, each with meshcc as CC; their old objects removed. */
function kernelCommands(): string[] {
  const out: string[] = []
  for (const d of ['kernel', 'lib']) {
    for (const f of readdirSync(join(linux, d)).sort()) {
      if (!f.startsWith('.') || !f.endsWith('.o.cmd')) continue
      const m = /^(?:saved)?cmd_(\S+) := (?:\S+ )?gcc (.*)$/.exec(readFileSync(join(linux, d, f), 'utf8').split('\n')[0]!)
      if (!m) continue
      // unlink, never truncate: in a hard-linked copy that would write the original tree's object
      rmSync(join(linux, m[1]!), { force: true })
      rmSync(join(linux, d, `.${m[1]!.split('/').pop()}.d`), { force: true })
      out.push(`${MESHCC_MAIN} gcc ${m[2]}`)
    }
  }
  return out
}

/**
 * utime, stime (s) and minor faults of a process itself, then the utime and stime (s) of its
 * reaped children (a builder's reaper reaps bwrap, its init and the compile: all of a job).
 */
function ownUsage(pid: number): [number, number, number, number, number] {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  return [Number(f[11]) / 100, Number(f[12]) / 100, Number(f[7]), Number(f[13]) / 100, Number(f[14]) / 100]
}

const commands = kernelCommands().slice(0, units)
if (commands.length === 0) fail(`no kernel/ or lib/ .o.cmd files in ${linux}: build it once with npm run bench:dist`)
const tmp = mkdtempSync('/tmp/meshcc-bench-job-cpu-')
if (values['cpu-prof']) mkdirSync(values['cpu-prof'], { recursive: true })
const tool = meshccTool({ PATH: process.env.PATH!, HOME: process.env.HOME ?? '/root' }, tmp,
  { builders: 2, slotsPerBuilder: 2, logLevel: 'warn', cpuProfDir: values['cpu-prof'] }, (s) => console.log(s))
try {
  await tool.setup()
  const warm = join(tmp, 'warm')
  mkdirSync(warm)
  for (let round = 0; round < 5 && (await tool.toolchainEverywhere()) !== true; round++) {
    await Promise.all([0, 1, 2, 3].map((i) => {
      writeFileSync(join(warm, `w${round}_${i}.c`), `int f${i}(int x) { return x * ${round + i}; }\n`)
      return run(MESHCC_MAIN, ['gcc', '-O2', '-c', `w${round}_${i}.c`], { cwd: warm, env: tool.env, timeoutMs: 180_000 })
    }))
  }
  await tool.beforeBuild()
  const pids = tool.roots() // client first
  const before = pids.map(ownUsage)
  tool.profile?.(true)
  const perf = values.perf === undefined ? null : spawn('perf', ['record', '-q', '-e', 'cpu-clock', '-F', '999', '-g', '-p', String(pids[0]), '-o', values.perf], { stdio: 'inherit' })
  const t0 = Date.now()
  let next = 0
  let failed = 0
  await Promise.all(Array.from({ length: jobs }, async () => {
    while (next < commands.length) {
      const r = await run('sh', ['-c', commands[next++]!], { cwd: linux, env: tool.env, timeoutMs: 300_000 })
      if (r.code !== 0) { failed++; console.log(`FAILED: ${r.stderr.trim().split('\n').pop()}`) }
    }
  }))
  const wallMs = Date.now() - t0
  tool.profile?.(false)
  if (perf) {
    perf.kill('SIGINT')
    await new Promise((resolve) => perf.once('close', resolve))
  }
  const after = pids.map(ownUsage)
  const counts = await tool.counts('')
  const remote = Math.max(1, counts.remote)
  const per = (i: number, k: number, scale: number) => (((after[i]![k]! - before[i]![k]!) * scale) / remote).toFixed(0)
  console.log(`${commands.length} units, ${failed} failed, ${counts.remote} remote, ${(wallMs / 1000).toFixed(1)} s`)
  pids.forEach((_, i) => console.log(`${i === 0 ? 'client  ' : `builder${i}`} own CPU per remote job: ${per(i, 0, 1000)} ms user + ${per(i, 1, 1000)} ms sys, ${per(i, 2, 1)} minor faults`))
  const cpuMs = (i: number) => ((after[i]![0]! - before[i]![0]! + after[i]![1]! - before[i]![1]!) * 1000) / remote
  console.log(`own CPU per remote job: client ${cpuMs(0).toFixed(1)} ms, builders ${pids.slice(1).reduce((n, _, j) => n + cpuMs(j + 1), 0).toFixed(1)} ms`)
  pids.forEach((_, i) => console.log(`${i === 0 ? 'client  ' : `builder${i}`} children's CPU per remote job: ${per(i, 3, 1000)} ms user + ${per(i, 4, 1000)} ms sys`))
  const childMs = (i: number) => ((after[i]![3]! - before[i]![3]! + after[i]![4]! - before[i]![4]!) * 1000) / remote
  console.log(`jobs' CPU per remote job (sandbox + compile): builders ${pids.slice(1).reduce((n, _, j) => n + childMs(j + 1), 0).toFixed(1)} ms; builders in all ${pids.slice(1).reduce((n, _, j) => n + cpuMs(j + 1) + childMs(j + 1), 0).toFixed(1)} ms`)
  for (const [where, line] of tool.problems().slice(0, 10)) console.log(`${where}: ${line}`)
} finally {
  await tool.teardown()
  rmSync(tmp, { recursive: true, force: true })
}
