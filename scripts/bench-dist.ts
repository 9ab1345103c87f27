// Distributed-build benchmark: the same real project as the cache benchmark (the Linux kernel
// from Debian's linux-source package, `make tinyconfig`) built through a mesh of meshcc daemons
// on this machine, beside distcc and icecream doing the same build, in one run.
//
//   node --import tsx scripts/bench-dist.ts              full kernel (about 30-40 min on 2 cores)
//   node --import tsx scripts/bench-dist.ts --quick      only `make kernel/ lib/`, for development
//   node --import tsx scripts/bench-dist.ts --tools meshcc,distcc --builders 2
//   node --import tsx scripts/bench-dist.ts --help
//
// Every "machine" is on this one: N builders (default 2, 2 slots each) and one client.
//   meshcc    N builder daemons (local_slots = 2, cores = 2) and a client daemon with
//             local_slots = 0 (every miss goes to the mesh), all on 127.0.0.1, mdns = false,
//             fresh cache dirs (so every compile is a miss), mesh key made with `mesh init`.
//   distcc    N distccd on 127.0.0.1 ports, DISTCC_HOSTS="127.0.0.1:PORT/2,lzo …".
//   icecream  icecc-scheduler, the client iceccd and N builder iceccd each in their own network
//             namespace of a bridge lab (icecream broadcasts, so none of it runs in the root
//             namespace); the client build runs under `ip netns exec`.
// The machine has 2 cores, so distributing cannot make the build faster here: the benchmark
// measures overhead. For each tool: (1) wall time of the build, (2) CPU spent on the submitting
// side — user+sys of make's whole process tree (launchers, preprocessing, distcc/icecc clients,
// links) plus the client daemon's process tree (meshcc daemon, client iceccd) — divided by the
// jobs that ran remotely, (3) how many jobs ran remotely and locally, with the reasons.
// Before timing, a warm-up compiles a few probe files so toolchains are shipped (meshcc ~43 MiB,
// icecream's environment tarball) and the first-job delay is reported separately.
//
// Network: traffic only on 127.0.0.0/8 and inside namespaces this script creates; processes,
// namespaces and temp dirs are removed at the end and on Ctrl-C. Kills only what it started,
// by PID. The kernel tree is unpacked once into --work-dir (default /var/tmp/meshcc-bench-dist,
// separate from the cache benchmark's tree so the two can run at the same time).
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { cpus, release } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { CORES, allProcessCpu, deleteAllNamespacesNow, descendants, killAllDaemonsNow, loadString, machineBusyCores, topOtherProcesses, waitForLoad } from './lib/dist-bench-proc.js'
import {
  ALL_TOOLS, MESHCC_MAIN, distccTool, gccTool, icecreamTool, meshccTool, type DistTool, type JobCounts, type ToolName
} from './lib/dist-bench-tools.js'
import { compiledObjects, hashObjects } from './lib/kernel.js'
import { CONFIG_NAME, KBUILD_FIXED_ENV, ensureConfig, ensurePackages, ensureTree } from './lib/kernel.js'
import { BenchError, fail, killRunningChildren, machineBusySeconds, run, runOk } from './lib/proc.js'
import { fmtRatio, fmtSec, markdownTable, textTable } from './lib/stats.js'
import { cleanEnv, meshccMissing } from './lib/tools.js'

const HERE = dirname(fileURLToPath(import.meta.url))
const DEFAULT_TOOLS: ToolName[] = ['distcc', 'icecream', 'meshcc']
/** Target from the issue: meshcc's per-job distribution overhead no worse than distcc's. */
const TARGET_RATIO = 1.0
/**
 * Built (untimed) before each timed full build, through the tool's own CC so Kbuild does not
 * rebuild it, with meshcc passed through (MESHCC_DISABLE=1): arch/x86/realmode/rmpiggy.S pulls
 * realmode.bin in with the assembler's `.incbin`, which the preprocessor does not see, so
 * meshcc sends it to a builder without that file and the build stops with
 * "Error: file not found: arch/x86/realmode/rm/realmode.bin". distcc and icecream compile that
 * assembler file locally.
 */
const PREBUILD_DEFAULT = 'arch/x86/realmode/'

function usage(): string {
  return `usage: node --import tsx scripts/bench-dist.ts [--quick] [--tools ${DEFAULT_TOOLS.join(',')}] [--builders N]
                        [--slots N] [--jobs N] [--work-dir DIR] [--out FILE] [--max-load L] [--load-wait MIN]
                        [--meshcc-log-level L] [--cpu-prof DIR] [--keep] [--no-install]
  --quick        build only kernel/ and lib/ instead of the whole kernel (development)
  --tools        which tools, in order (default ${DEFAULT_TOOLS.join(',')}; also: gcc = plain local build, for reference)
  --builders     builder machines per tool (default 2), plus one client
  --slots        compile slots per builder (default 2)
  --jobs         make -j (default: builders x slots)
  --work-dir     where the kernel tree is unpacked and reused (default /var/tmp/meshcc-bench-dist)
  --out          Markdown results file (default scripts/bench-results/dist.md, dist-quick.md with --quick)
  --max-load     before each timed build wait until the 1-minute load average is below this
                 (default 1.0 for a full run, 0 = do not wait, the default with --quick)
  --load-wait    give up waiting for the load after this many minutes and measure anyway (default 20)
  --meshcc-log-level  [log] level of the meshcc daemons (default warn)
  --cpu-prof     write V8 CPU profiles of meshcc's builder1 and client daemons, over the timed
                 build, into DIR (profiling costs them CPU: not for the figures)
  --prebuild     make targets built untimed before each full build, through the tool with meshcc
                 passed through (default ${PREBUILD_DEFAULT}: meshcc fails on its .incbin; "" = none)
  --keep         keep the temp dir (configs, daemon logs) instead of removing it
  --no-install   fail instead of running apt-get when packages are missing`
}

function say(s: string): void {
  process.stdout.write(`[bench-dist] ${s}\n`)
}

interface Warmup {
  firstMs?: number
  roundsMs: number[]
  everywhere?: boolean
}

interface BuildResult {
  wallMs: number
  makeCpuS: number
  clientDaemonCpuS: number
  builderCpuS: number
  /** of builderCpuS, the builder daemons' own processes (undefined when the tool cannot tell) */
  builderOwnCpuS?: number
  /** of clientDaemonCpuS, the client daemon's own process (undefined when the tool cannot tell) */
  clientOwnCpuS?: number
  machineCpuS?: number
  /** CPU used by processes outside this benchmark during the build (noise) */
  foreignCpuS?: number
  /** the long-lived processes outside the measured trees that used the most CPU during the build */
  foreignTop: string[]
  tus: number
  counts: JobCounts
  objects: Map<string, string>
  loadBefore: string
  loadAfter: string
  busyBefore?: number
  log: string
}

interface ToolResult {
  name: ToolName
  describe?: string
  skipped?: string
  failed?: string
  warmup?: Warmup
  build?: BuildResult
  problems: Array<[string, string]>
  loadWait?: { ok: boolean; waitedS: number; load: number }
  /** meshcc's dist/ changed while this tool ran (someone rebuilt it): its result is suspect */
  distChanged?: boolean
}

/** Newest mtime of any file under meshcc's dist/ (a rebuild during a run makes launchers fail). */
function distStamp(): number {
  let newest = 0
  const walk = (d: string, depth: number) => {
    if (depth > 6) return
    let entries: string[] = []
    try {
      entries = readdirSync(d)
    } catch {
      return
    }
    for (const e of entries) {
      const p = join(d, e)
      const st = statSync(p, { throwIfNoEntry: false })
      if (!st) continue
      if (st.isDirectory()) walk(p, depth + 1)
      else newest = Math.max(newest, st.mtimeMs)
    }
  }
  walk(join(dirname(MESHCC_MAIN), '..'), 0)
  return newest
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      tools: { type: 'string', default: DEFAULT_TOOLS.join(',') },
      builders: { type: 'string', default: '2' },
      slots: { type: 'string', default: '2' },
      jobs: { type: 'string' },
      'work-dir': { type: 'string', default: '/var/tmp/meshcc-bench-dist' },
      out: { type: 'string' },
      'max-load': { type: 'string' },
      'load-wait': { type: 'string', default: '20' },
      'meshcc-log-level': { type: 'string', default: 'warn' },
      'cpu-prof': { type: 'string' },
      prebuild: { type: 'string' },
      keep: { type: 'boolean', default: false },
      'no-install': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false }
    },
    strict: true
  })
  if (values.help) {
    process.stdout.write(usage() + '\n')
    return 0
  }
  const quick = values.quick!
  const toolNames = values.tools!.split(',').map((t) => t.trim()).filter(Boolean) as ToolName[]
  for (const t of toolNames) if (!ALL_TOOLS.includes(t)) fail(`unknown tool "${t}" (known: ${ALL_TOOLS.join(', ')})`)
  const builders = Number(values.builders)
  const slots = Number(values.slots)
  if (!Number.isInteger(builders) || builders < 1 || builders > 16) fail('--builders must be between 1 and 16')
  if (!Number.isInteger(slots) || slots < 1 || slots > 64) fail('--slots must be between 1 and 64')
  const jobs = values.jobs ? Number(values.jobs) : builders * slots
  if (!Number.isInteger(jobs) || jobs < 1) fail('--jobs must be a positive integer')
  const maxLoad = values['max-load'] !== undefined ? Number(values['max-load']) : quick ? 0 : 1.0
  const loadWaitMin = Number(values['load-wait'])
  if (!Number.isFinite(maxLoad) || maxLoad < 0) fail('--max-load must be a number >= 0')
  if (!Number.isFinite(loadWaitMin) || loadWaitMin < 0 || loadWaitMin > 120) fail('--load-wait must be between 0 and 120 minutes')
  if (!['error', 'warn', 'info', 'debug'].includes(values['meshcc-log-level']!)) fail('--meshcc-log-level must be error, warn, info or debug')
  const workDir = resolve(values['work-dir']!)
  const outFile = resolve(values.out ?? join(HERE, 'bench-results', values.quick ? 'dist-quick.md' : 'dist.md'))
  const makeTargets = quick ? ['kernel/', 'lib/'] : []
  const buildTimeout = (quick ? 20 : 60) * 60_000
  const prebuild = (values.prebuild ?? (quick ? '' : PREBUILD_DEFAULT)).split(',').map((t) => t.trim()).filter(Boolean)

  if (process.platform !== 'linux') fail('this benchmark needs Linux')
  if (process.getuid?.() !== 0) fail('run as root: icecream needs network namespaces, distccd/iceccd drop to their own users')
  if (values['no-install']) {
    for (const bin of ['make', 'gcc', '/usr/bin/time', 'bc', 'flex', 'bison', 'distcc', 'distccd', 'icecc', 'iceccd', 'icecc-scheduler', 'bwrap', 'ip']) {
      const r = await run('sh', ['-c', `command -v ${bin}`], { timeoutMs: 10_000 })
      if (r.code !== 0) fail(`${bin} is missing (run without --no-install, or apt-get install it)`)
    }
  } else {
    await ensurePackages(say)
    await ensureDistPackages(toolNames)
  }
  const linux = await ensureTree(workDir, say)
  const baseEnv = cleanEnv(KBUILD_FIXED_ENV)
  delete baseEnv.NODE_OPTIONS
  await ensureConfig(linux, baseEnv, say)
  const kernelVersion = (await runOk('make', ['-s', 'kernelversion'], { cwd: linux, env: baseEnv, timeoutMs: 60_000 })).stdout.trim()
  const logDir = join(workDir, 'logs')
  mkdirSync(logDir, { recursive: true })
  const tmp = mkdtempSync('/tmp/meshcc-bench-dist-')
  chmodSync(tmp, 0o755) // distccd and iceccd drop to their own users and must reach their logs below
  const base = { ...KBUILD_FIXED_ENV }
  const nonce = `${process.pid}-${Date.now()}`

  say(`kernel ${kernelVersion}, ${CONFIG_NAME}${quick ? ', --quick: make kernel/ lib/' : ''}; ${builders} builders x ${slots} slots + 1 client; make -j${jobs}; tools: ${toolNames.join(' ')}`)
  say(`machine: ${CORES} cores, load ${loadString()}; tree ${linux}; logs ${logDir}; temp ${tmp}`)

  const results: ToolResult[] = []
  let interrupted = false
  let current: DistTool | undefined
  let loadWaitedS = 0
  const onSignal = () => {
    if (interrupted) return
    interrupted = true
    say('interrupted: stopping builds and daemons…')
    killRunningChildren()
  }
  const onExit = () => {
    killAllDaemonsNow()
    deleteAllNamespacesNow()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('exit', onExit)

  try {
    for (const name of toolNames) {
      if (interrupted) fail('interrupted')
      const res: ToolResult = { name, problems: [] }
      results.push(res)
      let tool: DistTool
      if (name === 'meshcc') {
        const missing = meshccMissing(MESHCC_MAIN)
        if (missing) {
          res.skipped = missing
          say(`meshcc: SKIPPED — ${missing}`)
          continue
        }
        tool = meshccTool(base, tmp, { builders, slotsPerBuilder: slots, logLevel: values['meshcc-log-level']!, cpuProfDir: values['cpu-prof'] === undefined ? undefined : resolve(values['cpu-prof']) }, say)
        if (values['cpu-prof'] !== undefined) mkdirSync(resolve(values['cpu-prof']), { recursive: true })
      } else if (name === 'distcc') tool = await distccTool(base, tmp, { builders, slotsPerBuilder: slots }, say)
      else if (name === 'icecream') tool = await icecreamTool(base, tmp, { builders, slotsPerBuilder: slots }, say)
      else tool = gccTool(base)
      current = tool
      res.describe = tool.describe()
      const stamp0 = name === 'meshcc' ? distStamp() : 0
      try {
        say(`${name}: ${res.describe}`)
        await tool.setup()
        if (interrupted) fail('interrupted')
        if (name !== 'gcc') res.warmup = await warmup(tool, tmp, jobs, nonce)
        if (res.warmup) {
          say(`${name}: warm-up: first job ${fmtSec(res.warmup.firstMs)}, then ${res.warmup.roundsMs.map((m) => fmtSec(m)).join(' + ')} for rounds of ${2 * jobs} probe files` +
            (res.warmup.everywhere === undefined ? '' : res.warmup.everywhere ? '; every builder holds the toolchain' : '; NOT every builder received the toolchain'))
        }
        say(`${name}: make clean`)
        await runOk('make', ['clean'], { cwd: linux, env: baseEnv, timeoutMs: 10 * 60_000, logFile: join(logDir, `dist-${name}-clean.log`) }, 'make clean')
        if (prebuild.length) {
          say(`${name}: untimed pre-build of ${prebuild.join(' ')}${name === 'meshcc' ? ' (MESHCC_DISABLE=1)' : ''}`)
          const env = name === 'meshcc' ? { ...tool.env, MESHCC_DISABLE: '1' } : tool.env
          const r = await onClient(tool, 'make', [`-j${jobs}`, `CC=${tool.cc}`, ...prebuild], { cwd: linux, env, timeoutMs: buildTimeout, logFile: join(logDir, `dist-${name}-prebuild.log`) })
          if (r.timedOut || r.code !== 0) fail(`pre-build of ${prebuild.join(' ')} failed (exit ${r.timedOut ? 'timeout' : r.code}; log ${join(logDir, `dist-${name}-prebuild.log`)})`)
        }
        if (maxLoad > 0) {
          // one budget for the whole run (the first wait may use all of it), at least 3 min per tool
          const budget = Math.max(3, loadWaitMin - loadWaitedS / 60)
          res.loadWait = await waitForLoad(maxLoad, budget, 30, say, () => interrupted)
          loadWaitedS += res.loadWait.waitedS
          if (interrupted) fail('interrupted')
          if (!res.loadWait.ok) say(`${name}: WARNING: the load average is still ${res.loadWait.load.toFixed(2)} after ${budget.toFixed(0)} min; measuring anyway`)
          else if (res.loadWait.waitedS > 1) say(`${name}: load average below ${maxLoad} after ${res.loadWait.waitedS.toFixed(0)} s of waiting`)
        }
        await tool.beforeBuild()
        say(`${name}: timed build (make -j${jobs}), load ${loadString()}…`)
        res.build = await timedBuild(tool, linux, jobs, makeTargets, buildTimeout, join(logDir, `dist-${name}.log`))
        const b = res.build
        say(`${name}: ${fmtSec(b.wallMs)} wall; ${b.tus} TUs; remote ${b.counts.remote}, local ${b.counts.local ?? '?'}, fallbacks ${b.counts.fallbacks}; ` +
          `client CPU ${(b.makeCpuS + b.clientDaemonCpuS).toFixed(1)} s (make tree ${b.makeCpuS.toFixed(1)} + daemon ${b.clientDaemonCpuS.toFixed(1)}); builders ${b.builderCpuS.toFixed(1)} s` +
          (b.foreignCpuS !== undefined ? `; other processes ${b.foreignCpuS.toFixed(0)} CPU s` : ''))
        if (Object.keys(b.counts.reasons).length) say(`${name}: reasons: ${JSON.stringify(b.counts.reasons)}`)
      } catch (err) {
        if (!(err instanceof BenchError) || interrupted) throw err
        res.failed = err.message
        say(`${name}: FAILED — ${err.message}`)
      } finally {
        if (name === 'meshcc' && distStamp() !== stamp0) {
          res.distChanged = true
          say('meshcc: WARNING: dist/ was rebuilt while meshcc was being measured; launchers may have failed and the result is suspect')
        }
        try {
          res.problems = tool.problems()
        } catch {
          // logs gone
        }
        await tool.teardown()
        current = undefined
      }
    }
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    if (current) await current.teardown().catch(() => undefined)
    onExit()
    process.off('exit', onExit)
    if (values.keep) say(`kept ${tmp}`)
    else rmSync(tmp, { recursive: true, force: true })
  }

  // raw figures first, so a problem in the report below never loses a long run
  writeFileSync(join(logDir, 'dist-results.json'), JSON.stringify(results, (k, v) => (k === 'objects' ? undefined : v), 2))
  const report = buildReport(results, { quick, jobs, builders, slots, kernelVersion, makeTargets, maxLoad, loadWaitMin, prebuild })
  process.stdout.write('\n' + report.text + '\n')
  mkdirSync(dirname(outFile), { recursive: true })
  writeFileSync(outFile, report.markdown)
  process.stdout.write(`\nMarkdown (also written to ${outFile}):\n\n${report.markdown}\n`)
  return results.some((r) => r.failed) ? 1 : 0
}

async function ensureDistPackages(tools: ToolName[]): Promise<void> {
  const want: string[] = []
  if (tools.includes('distcc')) want.push('distcc')
  if (tools.includes('icecream')) want.push('icecc')
  if (tools.includes('meshcc')) want.push('bubblewrap')
  want.push('iproute2')
  const missing: string[] = []
  for (const p of want) {
    const r = await run('dpkg-query', ['-W', '-f=${Status}', p], { timeoutMs: 30_000 })
    if (!(r.code === 0 && r.stdout.includes('install ok installed'))) missing.push(p)
  }
  if (missing.length === 0) return
  say(`installing ${missing.join(' ')} (apt-get)…`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  await runOk('apt-get', ['update', '-qq'], { env, timeoutMs: 10 * 60_000 }, 'apt-get update')
  // the packages' own services are not wanted (and policy-rc.d usually stops them from starting)
  await runOk('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env, timeoutMs: 30 * 60_000 }, 'apt-get install')
}

/** Run a command on the tool's client machine (its namespace prefix, if any). */
function onClient(tool: DistTool, cmd: string, args: string[], opts: { cwd: string; timeoutMs: number; logFile?: string; env?: NodeJS.ProcessEnv }) {
  const [p0, ...pr] = tool.prefix
  return p0 ? run(p0, [...pr, cmd, ...args], { ...opts, env: opts.env ?? tool.env }) : run(cmd, args, { ...opts, env: opts.env ?? tool.env })
}

/**
 * A few probe compiles before timing: the first alone (its wall time is the first-job delay:
 * toolchain packing and shipping for meshcc, environment creation and transfer for icecream),
 * then rounds of 2 x -j files in parallel until every builder holds the toolchain (at most 3).
 */
async function warmup(tool: DistTool, tmp: string, jobs: number, nonce: string): Promise<Warmup> {
  const dir = join(tmp, `warmup-${tool.name}`)
  mkdirSync(dir, { recursive: true })
  const src = (n: string) => `/* ${nonce} ${n} */\nint probe_${n}(int x) { int s = 0; for (int i = 0; i < x; i++) s += i * ${n.length}; return s; }\n`
  const [ccBin, ...ccArgs] = tool.cc.split(' ')
  writeFileSync(join(dir, 'first.c'), src('first'))
  const first = await onClient(tool, ccBin!, [...ccArgs, '-O2', '-c', 'first.c', '-o', 'first.o'], { cwd: dir, timeoutMs: 180_000 })
  if (first.timedOut) fail(`${tool.name}: the first probe compile timed out`)
  if (first.code !== 0) fail(`${tool.name}: the first probe compile failed (exit ${first.code}): ${(first.stderr || first.stdout).trim().split('\n').pop()}`)
  const w: Warmup = { firstMs: first.wallMs, roundsMs: [] }
  for (let round = 1; round <= 3; round++) {
    const names = Array.from({ length: 2 * jobs }, (_, i) => `r${round}_${i}`)
    for (const n of names) writeFileSync(join(dir, `${n}.c`), src(n))
    writeFileSync(join(dir, 'Makefile'), `all: ${names.map((n) => `${n}.o`).join(' ')}\n%.o: %.c\n\t$(CC) -O2 -c $< -o $@\n`)
    const r = await onClient(tool, 'make', [`-j${jobs}`, `CC=${tool.cc}`], { cwd: dir, timeoutMs: 300_000 })
    if (r.timedOut || r.code !== 0) fail(`${tool.name}: warm-up make failed (exit ${r.timedOut ? 'timeout' : r.code}): ${(r.stderr || r.stdout).trim().split('\n').pop()}`)
    w.roundsMs.push(r.wallMs)
    w.everywhere = await tool.toolchainEverywhere()
    if (w.everywhere !== false) break
  }
  return w
}

async function timedBuild(
  tool: DistTool, linux: string, jobs: number, targets: string[], timeoutMs: number, log: string
): Promise<BuildResult> {
  rmSync(log, { force: true })
  const timeFile = `${log}.time`
  rmSync(timeFile, { force: true })
  const busyBefore = await machineBusyCores(3000)
  const loadBefore = loadString()
  const client0 = tool.clientCpu()
  const builders0 = tool.builderCpu()
  const own0 = tool.builderOwnCpu?.()
  const clientOwn0 = tool.clientOwnCpu?.()
  const procs0 = allProcessCpu()
  tool.profile?.(true)
  const machine0 = machineBusySeconds()
  const r = await onClient(tool, '/usr/bin/time', ['-f', '%e %U %S', '-o', timeFile, 'make', `-j${jobs}`, `CC=${tool.cc}`, ...targets], { cwd: linux, timeoutMs, logFile: log })
  const machine1 = machineBusySeconds()
  tool.profile?.(false)
  const procs1 = allProcessCpu()
  const tracked = new Set([...tool.roots(), process.pid].flatMap((p) => descendants(p)))
  const client1 = tool.clientCpu()
  const builders1 = tool.builderCpu()
  const own1 = tool.builderOwnCpu?.()
  const clientOwn1 = tool.clientOwnCpu?.()
  const loadAfter = loadString()
  if (r.timedOut) fail(`${tool.name} build timed out after ${Math.round(timeoutMs / 60_000)} min (log: ${log})`)
  const out = readFileSync(log, 'utf8')
  if (r.code !== 0) {
    const err = out.split('\n').filter((l) => /error|Error/.test(l)).slice(-1)[0] ?? out.trim().split('\n').pop()
    fail(`${tool.name} build failed (exit ${r.code}): ${err?.trim()} (log: ${log})`)
  }
  const [, user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number)
  const makeCpuS = (user ?? 0) + (sys ?? 0)
  const clientDaemonCpuS = Math.max(0, client1 - client0)
  const builderCpuS = Math.max(0, builders1 - builders0)
  const machineCpuS = machine0 !== undefined && machine1 !== undefined ? machine1 - machine0 : undefined
  const objs = compiledObjects(out, { assembler: true })
  return {
    wallMs: r.wallMs,
    makeCpuS,
    clientDaemonCpuS,
    builderCpuS,
    builderOwnCpuS: own0 !== undefined && own1 !== undefined ? Math.max(0, own1 - own0) : undefined,
    clientOwnCpuS: clientOwn0 !== undefined && clientOwn1 !== undefined ? Math.max(0, clientOwn1 - clientOwn0) : undefined,
    machineCpuS,
    foreignCpuS: machineCpuS !== undefined ? Math.max(0, machineCpuS - makeCpuS - clientDaemonCpuS - builderCpuS) : undefined,
    foreignTop: topOtherProcesses(procs0, procs1, tracked),
    tus: objs.length,
    counts: await tool.counts(out),
    objects: hashObjects(linux, objs),
    loadBefore,
    loadAfter,
    busyBefore,
    log
  }
}

function noisy(b: BuildResult): boolean {
  return b.foreignCpuS !== undefined && b.foreignCpuS > 0.05 * CORES * (b.wallMs / 1000)
}

function clientCpu(b: BuildResult): number {
  return b.makeCpuS + b.clientDaemonCpuS
}

function perRemoteMs(b: BuildResult): number | undefined {
  return b.counts.remote > 0 ? (clientCpu(b) / b.counts.remote) * 1000 : undefined
}

function diffObjects(ref: Map<string, string>, other: Map<string, string>): string[] {
  const out: string[] = []
  for (const [k, v] of other) if (ref.has(k) && ref.get(k) !== v) out.push(k)
  for (const k of ref.keys()) if (!other.has(k)) out.push(`${k} (missing)`)
  return out.sort()
}

function buildReport(
  results: ToolResult[],
  o: { quick: boolean; jobs: number; builders: number; slots: number; kernelVersion: string; makeTargets: string[]; maxLoad: number; loadWaitMin: number; prebuild: string[] }
): { text: string; markdown: string } {
  const ok = (n: ToolName) => results.find((r) => r.name === n && r.build && !r.failed)
  const distcc = ok('distcc')
  const meshcc = ok('meshcc')
  const ref = results.find((r) => r.build && !r.failed)
  const header = ['tool', 'jobs remote / local', 'fallbacks', 'wall time', 'wall vs distcc', 'client CPU', 'client CPU per remote job', 'per job vs distcc',
    'client CPU per TU', 'builders CPU', 'first job (toolchain)', `objects = ${ref?.name ?? '-'}`, 'load before → after', 'other procs CPU']
  const rows: string[][] = []
  for (const r of results) {
    if (!r.build) {
      const why = r.skipped ? `skipped: ${r.skipped}` : `failed: ${r.failed ?? '?'}`
      rows.push([r.name, why.length > 90 ? `${why.slice(0, 87)}… (see below)` : why, ...Array(header.length - 2).fill('-')])
      continue
    }
    const b = r.build
    let same = '-'
    if (ref?.build && ref !== r) {
      const d = diffObjects(ref.build.objects, b.objects)
      same = d.length === 0 ? `yes (${b.objects.size})` : `NO: ${d.slice(0, 3).join(', ')}${d.length > 3 ? ` +${d.length - 3}` : ''}`
    } else if (ref === r) same = `(reference, ${b.objects.size})`
    const pj = perRemoteMs(b)
    const dpj = distcc?.build ? perRemoteMs(distcc.build) : undefined
    rows.push([
      r.name,
      `${b.counts.remote} / ${b.counts.local ?? `≈${Math.max(0, b.tus - b.counts.remote)}`} (of ${b.tus} TUs)`,
      String(b.counts.fallbacks),
      fmtSec(b.wallMs),
      distcc?.build ? fmtRatio(b.wallMs / distcc.build.wallMs) : '-',
      `${clientCpu(b).toFixed(1)} s (make ${b.makeCpuS.toFixed(1)} + daemon ${b.clientDaemonCpuS.toFixed(1)})`,
      pj === undefined ? '- (nothing remote)' : `${pj.toFixed(0)} ms`,
      pj !== undefined && dpj !== undefined ? fmtRatio(pj / dpj) : '-',
      b.tus > 0 ? `${((clientCpu(b) / b.tus) * 1000).toFixed(0)} ms` : '-',
      `${b.builderCpuS.toFixed(1)} s`,
      r.warmup?.firstMs !== undefined ? fmtSec(r.warmup.firstMs) : '-',
      same,
      `${b.loadBefore.split(' ')[0]} → ${b.loadAfter.split(' ')[0]}`,
      b.foreignCpuS === undefined ? '-' : `${b.foreignCpuS.toFixed(0)} s${noisy(b) ? ' (!)' : ''}`
    ])
  }

  // verdict
  let verdict: string
  if (!meshcc?.build || !distcc?.build) verdict = `no verdict: ${!meshcc?.build ? 'meshcc' : 'distcc'} has no result`
  else {
    const m = perRemoteMs(meshcc.build)
    const d = perRemoteMs(distcc.build)
    if (m === undefined) verdict = 'NOT MET: meshcc compiled nothing remotely'
    else if (d === undefined) verdict = 'no verdict: distcc compiled nothing remotely'
    else {
      const ratio = m / d
      verdict = `${ratio <= TARGET_RATIO ? 'MET' : 'NOT MET'}: meshcc's client CPU per remote job is ${m.toFixed(0)} ms vs distcc's ${d.toFixed(0)} ms (${fmtRatio(ratio)}, target ≤ ${fmtRatio(TARGET_RATIO)}); ` +
        `wall time ${fmtSec(meshcc.build.wallMs)} vs ${fmtSec(distcc.build.wallMs)} (${fmtRatio(meshcc.build.wallMs / distcc.build.wallMs)})`
    }
  }

  const notes: string[] = []
  const scope = o.quick ? `\`make ${o.makeTargets.join(' ')}\` (--quick)` : 'the whole kernel (`make`)'
  notes.push(`Linux ${o.kernelVersion} ${CONFIG_NAME}, ${scope}, make -j${o.jobs}; ${o.builders} builders x ${o.slots} slots + 1 client, all on this ${CORES}-core machine (kernel ${release()}, ${cpus()[0]?.model ?? '?'}).`)
  for (const r of results) if (r.describe) notes.push(`${r.name}: ${r.describe}.`)
  if (o.prebuild.length) {
    notes.push(`\`${o.prebuild.join(' ')}\` (with Kbuild's prepare steps) is built before each timed build, untimed, through the same CC (meshcc with MESHCC_DISABLE=1), so the timed build skips it for every tool. Reason: meshcc cannot build arch/x86/realmode/rmpiggy.S remotely — it \`.incbin\`s arch/x86/realmode/rm/realmode.bin, which the preprocessed input does not reveal, so the builder's assembler fails with "Error: file not found: arch/x86/realmode/rm/realmode.bin" and meshcc returns that error instead of compiling locally; the build stops (distcc and icecream compile this assembler file on the client).`)
  }
  notes.push('jobs remote / local: as each tool reports them. meshcc: `remote_compiles` / `local_compiles + non_cacheable` from `meshcc -s` (non-cacheable calls — links, `-S`, Kbuild\'s compiler probes — run on the client untouched); distcc: COMPILE_OK lines in the distccd logs / TUs not sent (≈); icecream: the scheduler\'s `END … status=0` / `handle_local_job` lines. TUs = Kbuild `CC` + `AS` lines.')
  notes.push('client CPU: user+sys of make\'s whole process tree (/usr/bin/time: every launcher, the distcc/icecc client with its preprocessing, links, Kbuild scripts — the same non-compile work for every tool) plus the client daemon\'s process tree (meshcc client daemon and the preprocessors it ran; the client iceccd). Divided by the remote jobs (each tool counts its own: Kbuild\'s compiler probes are remote jobs for icecream, local for meshcc), and, for a common denominator, by the Kbuild TUs. builders CPU: the builder daemons\' process trees (compiles included; for icecream also the scheduler).')
  notes.push('first job: wall time of the first probe compile through the tool, before timing (meshcc packs and ships its toolchain, ~43 MiB; icecream creates and ships its environment tarball). The timed build starts after every builder holds the toolchain.')
  notes.push(`other procs CPU: machine CPU during the build not used by the benchmark's processes; (!) = above 5 % of the machine, the timing is suspect. ${o.maxLoad > 0 ? `Each timed build waited for the 1-minute load average to drop below ${o.maxLoad} (polled every 30 s; ${o.loadWaitMin} min budget for the run, at least 3 min per tool).` : 'No load-average wait (--quick or --max-load 0).'}`)
  if (meshcc?.build && (meshcc.build.counts.raw.local_compiles ?? 0) > meshcc.build.counts.fallbacks) {
    const c = meshcc.build.counts.raw
    notes.push(`meshcc compiled ${c.local_compiles} misses on the client although local_slots = 0 (${meshcc.build.counts.fallbacks} of them counted as fallbacks); their compiler CPU is inside the client daemon's figure, which therefore overstates the per-remote-job overhead — the per-TU column is the fairer comparison for meshcc here.`)
  }
  for (const r of results) {
    if (r.build?.builderOwnCpuS !== undefined) {
      const b = r.build
      const jobs = b.counts.remote || 1
      notes.push(`${r.name}: of the builders' ${b.builderCpuS.toFixed(1)} s, the builder daemons themselves used ${b.builderOwnCpuS!.toFixed(1)} s (${(1000 * b.builderOwnCpuS! / jobs).toFixed(0)} ms per remote job) and the jobs they ran (sandbox, compile, and the preprocessing check where one runs) ${(b.builderCpuS - b.builderOwnCpuS!).toFixed(1)} s (${(1000 * (b.builderCpuS - b.builderOwnCpuS!) / jobs).toFixed(0)} ms per remote job).`)
    }
    if (r.build?.clientOwnCpuS !== undefined) {
      const b = r.build
      const jobs = b.counts.remote || 1
      notes.push(`${r.name}: of the client daemon's ${b.clientDaemonCpuS.toFixed(1)} s, the daemon itself used ${b.clientOwnCpuS!.toFixed(1)} s (${(1000 * b.clientOwnCpuS! / jobs).toFixed(0)} ms per remote job) and the preprocessors and compiles it ran ${(b.clientDaemonCpuS - b.clientOwnCpuS!).toFixed(1)} s (${(1000 * (b.clientDaemonCpuS - b.clientOwnCpuS!) / jobs).toFixed(0)} ms per remote job).`)
    }
    if (r.build && r.build.foreignTop.length) notes.push(`${r.name}: the long-lived processes outside the measured trees that used the most CPU during its build (kernel threads included; processes that started and ended in between count only through whoever reaped them): ${r.build.foreignTop.join(', ')}.`)
  }
  for (const r of results) {
    if (r.loadWait && !r.loadWait.ok) notes.push(`${r.name}: the 1-minute load average was still ${r.loadWait.load.toFixed(2)} after ${(r.loadWait.waitedS / 60).toFixed(0)} min of waiting; measured anyway (see "other procs CPU").`)
    if (r.distChanged) notes.push(`${r.name}: meshcc's dist/ was rebuilt while it was being measured (launchers of two builds may have mixed); its figures are suspect.`)
    if (r.warmup && r.warmup.everywhere === false) notes.push(`${r.name}: after 3 warm-up rounds not every builder held the toolchain; the timed build includes shipping it.`)
  }
  for (const r of results) if (r.failed || r.skipped) notes.push(`${r.name} ${r.failed ? 'FAILED' : 'SKIPPED'}: ${r.failed ?? r.skipped}`)

  const reasonLines: string[] = []
  for (const r of results) {
    if (!r.build) continue
    const c = r.build.counts
    const raw = Object.entries(c.raw).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ')
    const reasons = Object.entries(c.reasons).map(([k, v]) => `${k} ×${v}`).join('; ')
    reasonLines.push(`${r.name}: ${raw || '-'}${reasons ? ` — reasons: ${reasons}` : ''}`)
  }
  const problemLines: string[] = []
  for (const r of results) {
    const groups = new Map<string, { who: Set<string>; n: number; example: string }>()
    for (const [who, line] of r.problems) {
      const key = line.replace(/^\S+\s+/, '').replace(/\[\d+\]/g, '').replace(/12D3KooW\w+/g, '<peer>').replace(/\d+/g, 'N').slice(0, 160)
      const g = groups.get(key) ?? { who: new Set<string>(), n: 0, example: line }
      g.who.add(who)
      g.n++
      groups.set(key, g)
    }
    for (const g of [...groups.values()].sort((a, b) => b.n - a.n).slice(0, 12)) problemLines.push(`${r.name} (${[...g.who].join(', ')}) ×${g.n}: ${g.example.slice(0, 300)}`)
  }

  const text = [
    textTable(header, rows),
    '',
    `Target (per-job distribution overhead no worse than distcc's): ${verdict}`,
    '',
    ...notes.map((n) => `- ${n}`),
    '',
    'Job counters:',
    ...reasonLines.map((l) => `  ${l}`),
    '',
    problemLines.length ? 'WARN/ERROR lines in the daemons\' logs:' : 'No WARN/ERROR lines in the daemons\' logs.',
    ...problemLines.map((l) => `  ${l}`)
  ].join('\n')
  const markdown = [
    `# Distributed build: meshcc vs distcc vs icecream`,
    '',
    `Generated by \`node --import tsx scripts/bench-dist.ts${o.quick ? ' --quick' : ''}\` on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC.`,
    '',
    markdownTable(header, rows),
    '',
    `**Target** (meshcc's per-job distribution overhead no worse than distcc's on the same machine): ${verdict}`,
    '',
    ...notes.map((n) => `- ${n}`),
    '',
    '## Job counters',
    '',
    ...reasonLines.map((l) => `- ${l}`),
    '',
    '## WARN/ERROR lines in the daemons\' logs',
    '',
    ...(problemLines.length ? problemLines.map((l) => `- \`${l.replace(/`/g, "'")}\``) : ['none']),
    ''
  ].join('\n')
  return { text, markdown }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    if (err instanceof BenchError) {
      process.stderr.write(`[bench-dist] error: ${err.message}\n`)
      process.exit(1)
    }
    process.stderr.write(`[bench-dist] ${(err as Error).stack ?? String(err)}\n`)
    process.exit(2)
  }
)
