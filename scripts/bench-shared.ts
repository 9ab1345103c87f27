// Shared-cache benchmark (issue #17): a workstation with an empty cache builds what a CI member
// already built at another path, through meshcc's mesh, ccache on Redis and sccache on Redis,
// filled the same way, in one run; and what sharing costs a build that finds nothing anywhere.
//
//   npm run bench:shared                 Linux tinyconfig (whole kernel) + googletest with its tests
//   npm run bench:shared -- --quick      `make kernel/ lib/` + the googletest libraries and samples
//   npm run bench:shared -- --help
//
// The checkout (the kernel from Debian's linux-source with `make tinyconfig`, and Debian's
// googletest source) lies at P1 (the CI member's path) for the fills and is renamed to P2 (the
// workstation's, another absolute path) for everything else. Per tool: the CI member builds at
// P1 with its own empty cache, then the workstation member builds at P2 with an empty local
// cache: the timed build. Reference: plain gcc at P2, whose objects every workstation build must
// match byte for byte. Miss rows: fresh meshcc daemons (nothing anywhere) with sharing on, and
// with `[cache] shared = false`, building at P2.
// Every build: `make -jN` of the kernel then `make -jN` of googletest's CMake tree (configured
// untimed), N = --jobs (2). Only 127.0.0.1: meshcc with mdns = false and bootstrap by address,
// redis-server on a free loopback port. Processes are stopped by PID, temp dirs removed.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, release } from 'node:os'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { CORES, allProcessCpu, descendants, killAllDaemonsNow, loadString, topOtherProcesses } from './lib/dist-bench-proc.js'
import { CONFIG_NAME, KBUILD_FIXED_ENV, compiledObjects, ensureConfig, ensurePackages, ensureTree, hashObjects } from './lib/kernel.js'
import { BenchError, COMMON_BENCH_OPTIONS, countOption, fail, killRunningChildren, machineBusySeconds, run, runOk, toolList } from './lib/proc.js'
import { fmtPct, fmtRatio, fmtSec, markdownTable, textTable } from './lib/stats.js'
import { ccacheTeam, meshccTeam, sccacheHasBasedir, sccacheTeam, sharedHits, wrapperOf, type Team } from './lib/shared-bench-tools.js'
import { MESHCC_MAIN, cleanEnv, meshccMissing, plainGcc, type CacheCounts, type Tool } from './lib/tools.js'

const HERE = dirname(fileURLToPath(import.meta.url))
const ALL_TOOLS = ['meshcc', 'ccache', 'sccache'] as const
const TARGETS = {
  /** meshcc's workstation build at most this times the faster of ccache's and sccache's */
  hitRatio: 0.9,
  /** a build that finds nothing anywhere at most this much slower with sharing on than off */
  missOverhead: 0.02
}
const GTEST_SRC = '/usr/src/googletest'

function usage(): string {
  return `usage: npm run bench:shared -- [--quick] [--tools ${ALL_TOOLS.join(',')}] [--jobs N] [--miss-reps N]
                        [--work-dir DIR] [--out FILE] [--meshcc-log-level L] [--no-miss] [--no-install]
  --quick       kernel/ and lib/ of the kernel and googletest's libraries and samples (a few minutes)
                instead of the whole kernel and googletest with its own tests
  --tools       shared caches to compare (default ${ALL_TOOLS.join(',')})
  --jobs        make -j (default 2)
  --miss-reps   pairs of miss builds, sharing on/off, alternated (default 1 with --quick, else 2)
  --no-miss     skip the miss rows
  --work-dir    where the checkout lies, at P1 and P2 below it (default /var/tmp/meshcc-bench-shared)
  --out         Markdown results (default scripts/bench-results/shared.md, shared-quick.md with --quick)
  --meshcc-log-level  [log] level of the meshcc daemons (default warn)
  --no-install  fail instead of running apt-get when packages are missing`
}

function say(s: string): void {
  process.stdout.write(`[bench-shared] ${s}\n`)
}

interface BuildResult {
  wallMs: number
  kernelMs: number
  gtestMs: number
  /** user+sys of both make trees (launchers, Kbuild, links; the compilers for ccache and gcc) */
  makeCpuS: number
  /** CPU of the member's own server tree (meshcc daemon with its compiles, sccache server) */
  serverCpuS: number
  /** CPU of the other member's server during this build (the CI daemon answering the mesh) */
  peerCpuS: number
  foreignCpuS?: number
  foreignTop: string[]
  units: number
  counts?: CacheCounts
  objects: Map<string, string>
  loadBefore: string
  loadAfter: string
}

interface Row {
  name: string
  describe?: string
  skipped?: string
  failed?: string
  fill?: BuildResult
  fillStore?: Record<string, number>
  ws?: BuildResult
  problems: string[]
}

interface Paths {
  work: string
  /** the CI member's checkout */
  p1: string
  /** the workstation's checkout */
  p2: string
}

/** Put the checkout at `to` (renaming it from the other path; unpacking it the first time). */
async function checkoutAt(p: Paths, to: string): Promise<{ linux: string; gtest: string; gtestBuild: string }> {
  const other = to === p.p1 ? p.p2 : p.p1
  if (!existsSync(join(to, 'linux', 'Makefile'))) {
    if (existsSync(join(other, 'linux', 'Makefile'))) {
      mkdirSync(dirname(to), { recursive: true })
      rmSync(to, { recursive: true, force: true })
      renameSync(other, to)
    } else {
      mkdirSync(to, { recursive: true })
      await ensureTree(to, say)
    }
  }
  const gtest = join(to, 'googletest')
  if (!existsSync(join(gtest, 'CMakeLists.txt'))) {
    rmSync(gtest, { recursive: true, force: true })
    cpSync(GTEST_SRC, gtest, { recursive: true })
  }
  return { linux: join(to, 'linux'), gtest, gtestBuild: join(to, 'build-gtest') }
}

function walkObjects(dir: string, rel = ''): string[] {
  const out: string[] = []
  for (const e of readdirSync(join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name
    if (e.isDirectory()) out.push(...walkObjects(dir, r))
    else if (e.name.endsWith('.o')) out.push(r)
  }
  return out
}

interface BuildOpts {
  paths: Paths
  at: string
  jobs: number
  quick: boolean
  logDir: string
  tag: string
  timeoutMs: number
  /** the other member's server, whose CPU during this build is counted apart */
  peer?: Tool
  roots: number[]
}

/** One member's build at `at`: kernel then googletest, both timed, objects hashed. */
async function memberBuild(tool: Tool, o: BuildOpts): Promise<BuildResult> {
  const co = await checkoutAt(o.paths, o.at)
  const env = tool.env
  const plain = cleanEnv(KBUILD_FIXED_ENV)
  await runOk('make', ['clean'], { cwd: co.linux, env: plain, timeoutMs: 10 * 60_000, logFile: join(o.logDir, `${o.tag}-clean.log`) }, 'make clean')
  // Kconfig re-runs its compiler probes when CC changes: done here, untimed, for every tool alike
  await runOk('make', [`CC=${tool.cc}`, 'syncconfig'], { cwd: co.linux, env, timeoutMs: 10 * 60_000, logFile: join(o.logDir, `${o.tag}-syncconfig.log`) }, 'make syncconfig')
  rmSync(co.gtestBuild, { recursive: true, force: true })
  const wrap = wrapperOf(tool)
  // the checkout mapped away, as the README tells builds whose units hold __FILE__ (gtest's do)
  const flags = `-ffile-prefix-map=${o.at}=.`
  await runOk('cmake', ['-S', co.gtest, '-B', co.gtestBuild, '-G', 'Unix Makefiles', '-DCMAKE_C_COMPILER=gcc', '-DCMAKE_CXX_COMPILER=g++',
    `-DCMAKE_C_FLAGS=${flags}`, `-DCMAKE_CXX_FLAGS=${flags}`, ...(wrap ? [`-DCMAKE_C_COMPILER_LAUNCHER=${wrap}`, `-DCMAKE_CXX_COMPILER_LAUNCHER=${wrap}`] : []),
    '-Dgtest_build_samples=ON', `-Dgtest_build_tests=${o.quick ? 'OFF' : 'ON'}`, '-DINSTALL_GTEST=OFF'],
  { env, timeoutMs: 5 * 60_000, logFile: join(o.logDir, `${o.tag}-cmake.log`) }, 'cmake (googletest)')
  await tool.zero()
  const kLog = join(o.logDir, `${o.tag}-kernel.log`)
  const gLog = join(o.logDir, `${o.tag}-gtest.log`)
  for (const f of [kLog, gLog, `${kLog}.time`, `${gLog}.time`]) rmSync(f, { force: true })
  const loadBefore = loadString()
  const procs0 = allProcessCpu()
  const busy0 = machineBusySeconds()
  const server0 = tool.serverCpu() ?? 0
  const peer0 = o.peer?.serverCpu() ?? 0
  const timed = async (cwd: string, args: string[], log: string, what: string) => {
    const r = await run('/usr/bin/time', ['-f', '%e %U %S', '-o', `${log}.time`, 'make', `-j${o.jobs}`, ...args], { cwd, env, timeoutMs: o.timeoutMs, logFile: log })
    if (r.timedOut) fail(`${o.tag}: ${what} timed out (log: ${log})`)
    if (r.code !== 0) {
      const err = readFileSync(log, 'utf8').split('\n').filter((l) => /error|Error/.test(l)).slice(-1)[0]
      fail(`${o.tag}: ${what} failed (exit ${r.code}): ${err?.trim() ?? '?'} (log: ${log})`)
    }
    const [, u, s] = readFileSync(`${log}.time`, 'utf8').trim().split('\n').pop()!.split(' ').map(Number)
    return { ms: r.wallMs, cpu: (u ?? 0) + (s ?? 0) }
  }
  const k = await timed(co.linux, [`CC=${tool.cc}`, ...(o.quick ? ['kernel/', 'lib/'] : [])], kLog, 'kernel build')
  const g = await timed(co.gtestBuild, [], gLog, 'googletest build')
  const busy1 = machineBusySeconds()
  const serverCpuS = Math.max(0, (tool.serverCpu() ?? 0) - server0)
  const peerCpuS = Math.max(0, (o.peer?.serverCpu() ?? 0) - peer0)
  const procs1 = allProcessCpu()
  const tracked = new Set([process.pid, ...o.roots].flatMap((p) => descendants(p)))
  const makeCpuS = k.cpu + g.cpu
  const kObjs = compiledObjects(readFileSync(kLog, 'utf8'), { assembler: true })
  const objects = new Map<string, string>()
  for (const [rel, h] of hashObjects(co.linux, kObjs)) objects.set(`linux/${rel}`, h)
  const gObjs = walkObjects(co.gtestBuild)
  for (const [rel, h] of hashObjects(co.gtestBuild, gObjs)) objects.set(`googletest/${rel}`, h)
  return {
    wallMs: k.ms + g.ms,
    kernelMs: k.ms,
    gtestMs: g.ms,
    makeCpuS,
    serverCpuS,
    peerCpuS,
    foreignCpuS: busy0 !== undefined && busy1 !== undefined ? Math.max(0, busy1 - busy0 - makeCpuS - serverCpuS - peerCpuS) : undefined,
    foreignTop: topOtherProcesses(procs0, procs1, tracked),
    units: kObjs.length + gObjs.length,
    counts: await tool.counts(),
    objects,
    loadBefore,
    loadAfter: loadString()
  }
}

function cpuOf(b: BuildResult): number {
  return b.makeCpuS + b.serverCpuS
}

function diffObjects(ref: Map<string, string>, other: Map<string, string>): string[] {
  const out: string[] = []
  for (const [k, v] of other) if (ref.has(k) && ref.get(k) !== v) out.push(k)
  for (const k of ref.keys()) if (!other.has(k)) out.push(`${k} (missing)`)
  return out.sort()
}

function noisy(b: BuildResult): boolean {
  return b.foreignCpuS !== undefined && b.foreignCpuS > 0.05 * CORES * (b.wallMs / 1000)
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      tools: { type: 'string', default: ALL_TOOLS.join(',') },
      jobs: { type: 'string', default: '2' },
      'miss-reps': { type: 'string' },
      'no-miss': { type: 'boolean', default: false },
      'work-dir': { type: 'string', default: '/var/tmp/meshcc-bench-shared' },
      'meshcc-log-level': { type: 'string', default: 'warn' },
      ...COMMON_BENCH_OPTIONS
    },
    strict: true
  })
  if (values.help) {
    process.stdout.write(usage() + '\n')
    return 0
  }
  const quick = values.quick!
  const toolNames = toolList(values.tools!, ALL_TOOLS)
  const jobs = countOption(values.jobs!, '--jobs', 64)
  const missReps = values['no-miss'] ? 0 : Number(values['miss-reps'] ?? (quick ? 1 : 2))
  if (!Number.isInteger(missReps) || missReps < 0 || missReps > 10) fail('--miss-reps must be a whole number from 0 to 10')
  if (!['error', 'warn', 'info', 'debug'].includes(values['meshcc-log-level']!)) fail('--meshcc-log-level must be error, warn, info or debug')
  const work = resolve(values['work-dir']!)
  const paths: Paths = { work, p1: join(work, 'ci', 'builds', 'runner-7', 'proj'), p2: join(work, 'home', 'dev', 'src', 'proj') }
  const outFile = resolve(values.out ?? join(HERE, 'bench-results', quick ? 'shared-quick.md' : 'shared.md'))
  const timeoutMs = (quick ? 20 : 60) * 60_000
  if (process.platform !== 'linux') fail('this benchmark needs Linux')
  if (values['no-install']) {
    for (const bin of ['make', 'gcc', 'g++', 'cmake', 'ccache', 'sccache', 'redis-server', 'redis-cli', '/usr/bin/time']) {
      const r = await run('sh', ['-c', `command -v ${bin}`], { timeoutMs: 10_000 })
      if (r.code !== 0) fail(`${bin} is missing (run without --no-install, or apt-get install it)`)
    }
    if (!existsSync(join(GTEST_SRC, 'CMakeLists.txt'))) fail(`${GTEST_SRC} is missing (apt-get install googletest)`)
  } else {
    await ensurePackages(say, ['redis-server', 'redis-tools', 'googletest', 'cmake', 'g++'])
  }
  const logDir = join(work, 'logs')
  mkdirSync(logDir, { recursive: true })
  const first = await checkoutAt(paths, paths.p2)
  const plainEnv = cleanEnv(KBUILD_FIXED_ENV)
  await ensureConfig(first.linux, plainEnv, say)
  const kernelVersion = (await runOk('make', ['-s', 'kernelversion'], { cwd: first.linux, env: plainEnv, timeoutMs: 60_000 })).stdout.trim()
  const tmp = mkdtempSync('/tmp/meshcc-bench-shared-')
  const base = { ...KBUILD_FIXED_ENV }
  say(`kernel ${kernelVersion} ${CONFIG_NAME}${quick ? ' (kernel/ lib/)' : ''} + googletest ${quick ? 'libraries and samples' : 'with its tests'}; make -j${jobs}; P1 ${paths.p1}, P2 ${paths.p2}; load ${loadString()}`)

  const rows: Row[] = []
  const miss: Array<{ shared: boolean; b?: BuildResult; failed?: string }> = []
  let interrupted = false
  const onSignal = () => {
    interrupted = true
    killRunningChildren()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('exit', () => killAllDaemonsNow())
  const meshMissing = meshccMissing(MESHCC_MAIN)
  // the results file is rewritten after every build, so a run cut short still leaves its figures
  const save = () => {
    const report = buildReport(rows, miss, { quick, jobs, kernelVersion, paths, partial: true })
    mkdirSync(dirname(outFile), { recursive: true })
    writeFileSync(outFile, report.markdown)
  }
  const build = async (tool: Tool, at: string, tag: string, extra: Partial<BuildOpts> = {}) => {
    const b = await memberBuild(tool, { paths, at, jobs, quick, logDir, tag, timeoutMs, roots: [], ...extra })
    setImmediate(save)
    return b
  }
  try {
    // reference: plain gcc at P2
    const ref: Row = { name: 'gcc (no cache)', describe: 'plain gcc/g++ at P2: the reference objects', problems: [] }
    rows.push(ref)
    say('gcc: reference build at P2…')
    ref.ws = await build(plainGcc(base), paths.p2, 'gcc-p2')
    say(`gcc: ${fmtSec(ref.ws.wallMs)}, ${cpuOf(ref.ws).toFixed(0)} CPU s, ${ref.ws.units} units`)

    for (const name of toolNames) {
      if (interrupted) fail('interrupted')
      const row: Row = { name, problems: [] }
      rows.push(row)
      let team: Team | undefined
      try {
        const dir = join(tmp, name)
        if (name === 'meshcc') {
          if (meshMissing) fail(meshMissing)
          team = await meshccTeam(base, dir, { shared: true, logLevel: values['meshcc-log-level']!, slots: jobs }, say)
        } else if (name === 'ccache') team = await ccacheTeam(base, dir, { ci: paths.p1, ws: paths.p2 })
        else team = await sccacheTeam(base, dir)
        row.describe = team.describe
        say(`${name}: CI member fills at P1…`)
        row.fill = await build(team.ci, paths.p1, `${name}-ci-p1`, { roots: team.roots() })
        row.fillStore = await team.afterFill()
        say(`${name}: fill ${fmtSec(row.fill.wallMs)}; ${Object.entries(row.fillStore).map(([k, v]) => `${k} ${v}`).join(', ')}`)
        say(`${name}: workstation builds at P2 with an empty local cache…`)
        row.ws = await build(team.ws, paths.p2, `${name}-ws-p2`, { peer: team.ci, roots: team.roots() })
        say(`${name}: workstation ${fmtSec(row.ws.wallMs)}, ${cpuOf(row.ws).toFixed(0)} CPU s, shared hits ${sharedHits(row.ws.counts)} of ${row.ws.counts?.requests}`)
      } catch (err) {
        if (!(err instanceof BenchError) || interrupted) throw err
        row.failed = err.message
        say(`${name}: ${row.ws || row.fill ? 'FAILED' : 'NOT RUN'} — ${err.message}`)
      } finally {
        row.problems = team?.problems() ?? []
        await team?.stop()
      }
    }

    // miss rows: fresh daemons, nothing anywhere; on/off alternated (ABBA) so drift hits both
    if (!meshMissing) {
      const order: boolean[] = []
      for (let i = 0; i < missReps; i++) order.push(...(i % 2 === 0 ? [true, false] : [false, true]))
      for (const [i, shared] of order.entries()) {
        if (interrupted) fail('interrupted')
        const m: { shared: boolean; b?: BuildResult; failed?: string } = { shared }
        miss.push(m)
        let team: Team | undefined
        try {
          team = await meshccTeam(base, join(tmp, `miss-${i}`), { shared, logLevel: values['meshcc-log-level']!, slots: jobs }, say)
          say(`meshcc miss, sharing ${shared ? 'on' : 'off'}: build at P2 with nothing anywhere…`)
          m.b = await build(team.ws, paths.p2, `meshcc-miss-${shared ? 'on' : 'off'}-${i}`, { peer: team.ci, roots: team.roots() })
          say(`meshcc miss, sharing ${shared ? 'on' : 'off'}: ${fmtSec(m.b.wallMs)}, ${cpuOf(m.b).toFixed(0)} CPU s`)
        } catch (err) {
          if (!(err instanceof BenchError) || interrupted) throw err
          m.failed = err.message
          say(`meshcc miss (${shared ? 'on' : 'off'}): FAILED — ${err.message}`)
        } finally {
          await team?.stop()
        }
      }
    }
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    rmSync(tmp, { recursive: true, force: true })
  }

  const report = buildReport(rows, miss, { quick, jobs, kernelVersion, paths, partial: false })
  process.stdout.write('\n' + report.text + '\n')
  mkdirSync(dirname(outFile), { recursive: true })
  writeFileSync(outFile, report.markdown)
  say(`written ${relative(process.cwd(), outFile)}`)
  return rows.some((r) => r.failed && r.name !== 'sccache') || miss.some((m) => m.failed) ? 1 : 0
}

function buildReport(
  rows: Row[], miss: Array<{ shared: boolean; b?: BuildResult; failed?: string }>,
  o: { quick: boolean; jobs: number; kernelVersion: string; paths: Paths; partial: boolean }
): { text: string; markdown: string } {
  const ref = rows[0]?.ws
  const header = ['tool', 'CI fill at P1', 'workstation build at P2', 'vs gcc', 'CPU (make + own daemon/server)', 'CI member CPU meanwhile', 'hits from the shared store / cacheable', 'local misses', `objects = gcc at P2`, 'load before → after', 'other procs CPU']
  const sameAs = (b: BuildResult) => {
    if (!ref || b === ref) return ref ? `(reference, ${ref.objects.size})` : '-'
    const d = diffObjects(ref.objects, b.objects)
    return d.length === 0 ? `yes (${b.objects.size})` : `NO: ${d.slice(0, 3).join(', ')}${d.length > 3 ? ` +${d.length - 3}` : ''}`
  }
  const fmtForeign = (b: BuildResult) => (b.foreignCpuS === undefined ? '-' : `${b.foreignCpuS.toFixed(0)} s${noisy(b) ? ' (!)' : ''}`)
  const line = (name: string, b: BuildResult, fill?: BuildResult): string[] => {
    const c = b.counts
    const cacheable = c ? c.hits + c.misses : undefined
    const sh = sharedHits(c)
    return [
      name,
      fill ? fmtSec(fill.wallMs) : '-',
      `${fmtSec(b.wallMs)} (kernel ${fmtSec(b.kernelMs)} + gtest ${fmtSec(b.gtestMs)})`,
      ref && b !== ref ? fmtRatio(b.wallMs / ref.wallMs) : '-',
      `${cpuOf(b).toFixed(1)} s (${b.makeCpuS.toFixed(1)} + ${b.serverCpuS.toFixed(1)})`,
      b.peerCpuS ? `${b.peerCpuS.toFixed(1)} s` : '-',
      c && cacheable ? `${sh} / ${cacheable} (${((100 * (sh ?? 0)) / cacheable).toFixed(1)} %)` : '-',
      c ? String(c.misses) : '-',
      sameAs(b),
      `${b.loadBefore.split(' ')[0]} → ${b.loadAfter.split(' ')[0]}`,
      fmtForeign(b)
    ]
  }
  const table: string[][] = []
  for (const r of rows) {
    if (r.ws) table.push(line(r.name, r.ws, r.fill))
    else table.push([r.name, `${r.failed ? 'not run' : 'skipped'}: ${(r.failed ?? r.skipped ?? '?').slice(0, 110)}`, ...Array(header.length - 2).fill('-')])
  }
  for (const m of miss) {
    const name = `meshcc miss, sharing ${m.shared ? 'on' : 'off (shared = false)'}`
    if (m.b) table.push(line(name, m.b))
    else table.push([name, `failed: ${(m.failed ?? '?').slice(0, 110)}`, ...Array(header.length - 2).fill('-')])
  }

  // targets
  const ok = (n: string) => rows.find((r) => r.name === n && r.ws && !r.failed)?.ws
  const mesh = ok('meshcc')
  const others = (['ccache', 'sccache'] as const).map((n) => [n, ok(n)] as const).filter((x): x is readonly [typeof x[0], BuildResult] => x[1] !== undefined)
  const fastest = others.sort((a, b) => a[1].wallMs - b[1].wallMs)[0]
  let hitVerdict: string
  if (!mesh) hitVerdict = 'no verdict: meshcc has no workstation build'
  else if (!fastest) hitVerdict = 'no verdict: neither ccache nor sccache has a workstation build'
  else {
    const r = mesh.wallMs / fastest[1].wallMs
    const rc = cpuOf(mesh) / cpuOf(fastest[1])
    hitVerdict = `${r <= TARGETS.hitRatio ? 'MET' : 'NOT MET'}: meshcc ${fmtSec(mesh.wallMs)} vs ${fastest[0]} ${fmtSec(fastest[1].wallMs)} = ${fmtRatio(r)} (target ≤ ${fmtRatio(TARGETS.hitRatio)}); CPU ${fmtRatio(rc)}`
  }
  const on = miss.filter((m) => m.shared && m.b).map((m) => m.b!)
  const off = miss.filter((m) => !m.shared && m.b).map((m) => m.b!)
  let missVerdict: string
  if (on.length === 0 || off.length === 0) missVerdict = 'no verdict: a miss build is missing'
  else {
    const minW = (bs: BuildResult[]) => Math.min(...bs.map((b) => b.wallMs))
    const minC = (bs: BuildResult[]) => Math.min(...bs.map(cpuOf))
    const ov = minW(on) / minW(off) - 1
    const ovCpu = minC(on) / minC(off) - 1
    missVerdict = `${ov <= TARGETS.missOverhead ? 'MET' : 'NOT MET'}: sharing on ${fmtSec(minW(on))} vs off ${fmtSec(minW(off))} = ${fmtPct(ov)} wall (target ≤ +${TARGETS.missOverhead * 100} %); CPU ${fmtPct(ovCpu)} (faster of ${on.length} / ${off.length} builds each)`
  }

  const notes: string[] = []
  notes.push(`Linux ${o.kernelVersion} ${CONFIG_NAME} from Debian's linux-source (${o.quick ? '`make kernel/ lib/`' : 'the whole kernel'}) and googletest ${o.quick ? '(libraries and samples)' : '(libraries, samples and its own tests)'} from Debian's googletest source, built with CMake's Makefiles; make -j${o.jobs} for both, on this ${CORES}-core machine (kernel ${release()}, ${cpus()[0]?.model.trim() ?? '?'}).`)
  notes.push(`Paths: the CI member builds at P1 = \`${o.paths.p1}\`, the workstation at P2 = \`${o.paths.p2}\` (the same checkout renamed: a different absolute path, a different length). Each build starts with \`make clean\`, \`make CC=<tool> syncconfig\` (Kconfig re-runs its compiler probes when CC changes: untimed, for every tool) and a fresh googletest build dir; only the two \`make\` runs are timed (CMake's configure is not).`)
  notes.push('googletest is configured with `-ffile-prefix-map=<checkout>=.` for every tool (CMAKE_C/CXX_FLAGS), as the README tells builds whose units hold `__FILE__` (gtest\'s macros do): without it their objects differ per checkout and meshcc, correctly, does not share them. The kernel needs nothing: tinyconfig has no debug info and Kbuild compiles with relative paths.')
  notes.push('Byte-identity rule: every object the workstation build produced (kernel `CC`/`AS` objects and every `.o` of the googletest tree) is compared with plain gcc\'s build at P2; all of them are built without `-g`, so all are compared.')
  notes.push('CPU: user+sys of the two `make` trees (launchers, Kbuild and CMake steps, links; the compilers themselves for gcc, ccache and sccache\'s client) plus the member\'s own daemon or server tree (meshcc: the daemon and the compilers it runs; sccache: its server). "CI member CPU meanwhile": the CI daemon serving the workstation\'s lookups (meshcc) or the CI sccache server (idle); Redis is counted under other processes\' CPU only through its own PID (not ours).')
  notes.push('hits from the shared store: meshcc `mesh_hits`, ccache `remote_storage_hit`, sccache hits (its only store is Redis). cacheable = hits + misses as the tool counts them.')
  notes.push(`Miss rows: new daemons with empty caches each time (CI member idle, nothing anywhere), the workstation build at P2, alternated on/off${miss.length > 2 ? '/off/on' : ''}; the verdict takes the faster build of each kind. Sharing on: every miss asks the CI member (a lookup within its time budget), then compiles and publishes the result to it in the background.`)
  for (const r of rows) {
    if (r.describe) notes.push(`${r.name}: ${r.describe}.`)
    if (r.fillStore && Object.keys(r.fillStore).length) notes.push(`${r.name}: after the CI fill: ${Object.entries(r.fillStore).map(([k, v]) => `${k} ${v}`).join(', ')}.`)
    if (r.fill?.counts) notes.push(`${r.name} CI fill counters: ${countsLine(r.fill.counts)}.`)
    if (r.ws?.counts) notes.push(`${r.name} workstation counters: ${countsLine(r.ws.counts)}.`)
    if (r.failed) notes.push(`${r.name} ${r.ws || r.fill ? 'FAILED' : 'could not run'}: ${r.failed}`)
  }
  const cc = rows.find((r) => r.name === 'ccache')?.ws
  if (cc && ref && diffObjects(ref.objects, cc.objects).length) {
    notes.push('ccache\'s objects that differ from plain gcc\'s: base_dir rewrites the absolute paths of a command to relative ones for the compile itself, so `__FILE__` in a unit given as `/…/proj/googletest/src/x.cc` from the build dir expands to `../googletest/src/x.cc` instead of `./googletest/src/x.cc` (after -ffile-prefix-map): the same object at both checkouts, but not the one the build makes without ccache (checked by hand with a one-line file; `strings` shows `../src/a.c` under ccache, `./src/a.c` under gcc). meshcc leaves the command alone.')
  }
  if (rows.some((r) => r.name === 'sccache')) {
    notes.push(`sccache ${sccacheHasBasedir() ? 'knows' : 'does not know'} SCCACHE_BASEDIR (searched for in /usr/bin/sccache); ${sccacheHasBasedir() ? '' : 'without it its keys hold absolute paths, so a second checkout would miss wherever a command line names one (googletest\'s CMake does).'}`)
  }
  for (const m of miss) if (m.b?.counts) notes.push(`meshcc miss, sharing ${m.shared ? 'on' : 'off'}: ${countsLine(m.b.counts)}.`)
  const all = [...rows.flatMap((r) => [r.fill, r.ws]), ...miss.map((m) => m.b)].filter((b): b is BuildResult => b !== undefined)
  const loads = all.map((b) => Number(b.loadBefore.split(' ')[0]))
  if (loads.length) notes.push(`Machine load: the 1-minute load average before the builds ranged ${Math.min(...loads).toFixed(1)} to ${Math.max(...loads).toFixed(1)} on ${CORES} cores (the machine is shared with other work); "other procs CPU" is the machine's CPU during a build not used by the benchmark's processes, (!) above 5 % of the machine. Wall times are inflated and noisy under this load; the CPU columns move less.`)
  const noisyOnes = all.filter(noisy).length
  if (noisyOnes) notes.push(`${noisyOnes} of ${all.length} builds ran with other processes above 5 % of the machine.`)
  const tops = new Map<string, number>()
  for (const b of all) for (const t of b.foreignTop) {
    const m = /^(.*) \d+: ([\d.]+) s$/.exec(t)
    if (m) tops.set(m[1]!, (tops.get(m[1]!) ?? 0) + Number(m[2]))
  }
  if (tops.size) notes.push(`Busiest long-lived processes outside the benchmark over all builds: ${[...tops.entries()].sort((a, b) => b[1] - a[1]).slice(0, 6).map(([k, v]) => `${k} ${v.toFixed(0)} s`).join(', ')}.`)
  const problems = rows.flatMap((r) => r.problems.map((p) => `${r.name}: ${p}`))

  const targetLines = [
    `Workstation build with the CI member's results (meshcc ≤ ${TARGETS.hitRatio}x the faster of ccache and sccache): ${hitVerdict}`,
    `A miss (nothing anywhere) with sharing on vs [cache] shared = false (≤ +${TARGETS.missOverhead * 100} %): ${missVerdict}`
  ]
  const text = [textTable(header, table), '', ...targetLines, '', ...notes.map((n) => `- ${n}`)].join('\n')
  const markdown = [
    `# Shared cache across checkouts: meshcc vs ccache and sccache on Redis${o.quick ? ' (quick)' : ''}`,
    '',
    `Generated by \`npm run bench:shared${o.quick ? ' -- --quick' : ''}\` on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC.${o.partial ? ' **Partial: the run was still going (or was cut short) when this was written.**' : ''}`,
    '',
    markdownTable(header, table),
    '',
    ...targetLines.map((l) => `**Target** ${l}`).flatMap((l) => [l, '']),
    ...notes.map((n) => `- ${n}`),
    '',
    '## WARN/ERROR lines in the meshcc daemons\' logs',
    '',
    ...(problems.length ? problems.slice(0, 20).map((l) => `- \`${l.replace(/`/g, "'").slice(0, 300)}\``) : ['none']),
    ''
  ].join('\n')
  return { text, markdown }
}

function countsLine(c: CacheCounts): string {
  const extra = Object.entries(c.extra).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ')
  return `requests ${c.requests}, hits ${c.hits}, misses ${c.misses}, uncacheable ${c.uncacheable}${extra ? ` (${extra})` : ''}`
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof BenchError) {
      process.stderr.write(`[bench-shared] error: ${err.message}\n`)
      process.exit(err.message === 'interrupted' ? 130 : 1)
    }
    process.stderr.write(`[bench-shared] ${(err as Error)?.stack ?? String(err)}\n`)
    process.exit(2)
  }
)
