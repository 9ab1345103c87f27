// Cache benchmark: builds a real C project we did not write — the Linux kernel from Debian's
// linux-source package, `make tinyconfig` (an i386 kernel, ~450 C translation units) — with
// plain gcc, meshcc, ccache and sccache side by side, cold cache then warm cache, and measures
// the latency of a single cache hit for each tool.
//
//   npm run bench                      full run (about 30-40 min on 2 idle cores)
//   npm run bench -- --quick           only `make kernel/ lib/` (164 TUs, about 12 min), for development
//   npm run bench -- --tools gcc,ccache --reps 10
//   npm run bench -- --help
//
// Needs root for apt-get when packages are missing (linux-source and the build deps, ccache,
// sccache, time). The kernel is unpacked once into --work-dir (default /var/tmp/meshcc-bench)
// and reused; every tool's cache lives in its own temp dir that is removed at the end.
// meshcc is skipped with a clear message when dist/bin/meshcc is not built.
//
// Why tinyconfig: it is the smallest config that still builds a bootable kernel image and on
// x86 it compiles ~450 C translation units (plus ~25 assembler files, all through $(CC)),
// well above the 200 TUs the benchmark needs, in a few minutes per build on 2 cores.
import { cpus } from 'node:os'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import {
  CONFIG_NAME, KBUILD_FIXED_ENV, compiledObjects, ensureConfig, ensurePackages, ensureTree, hashObjects,
  kbuildCompileEnv, readKbuildCompileArgs
} from './lib/kernel.js'
import { BenchError, countOption, fail, killRunningChildren, machineBusySeconds, run, runOk } from './lib/proc.js'
import { fmtMs, fmtPct, fmtRatio, fmtSec, markdownTable, median, pairRatios, textTable } from './lib/stats.js'
import {
  MESHCC_MAIN, type CacheCounts, type Tool, ccacheTool, cleanEnv, meshccMissing, meshccTool, plainGcc, sccacheTool
} from './lib/tools.js'

const HERE = dirname(fileURLToPath(import.meta.url))
const ALL_TOOLS = ['gcc', 'meshcc', 'ccache', 'sccache'] as const
type ToolName = (typeof ALL_TOOLS)[number]

const TARGETS = {
  miss: 0.05, // meshcc cold build within 5 % of plain gcc's (issue 18)
  warmVsCcache: 1.5 // meshcc warm build no slower than 1.5x ccache
}

interface BuildResult {
  wallMs: number
  cpuS: number // user+sys of make and everything it waited for, plus the tool's server
  /** CPU seconds other processes on the machine used during the build (noise in the timing) */
  foreignCpuS?: number
  tus: number
  counts?: CacheCounts
  objects: Map<string, string>
  log: string
}

interface ToolResult {
  name: ToolName
  skipped?: string
  failed?: string
  /** the last cold build (its cache is the warm build's) */
  cold?: BuildResult
  /** every cold build, round by round (--cold-reps) */
  colds: BuildResult[]
  warm?: BuildResult
  hitMs?: number[]
  hitCounts?: CacheCounts
}

function usage(): string {
  return `usage: npm run bench -- [--quick] [--tools ${ALL_TOOLS.join(',')}] [--jobs N] [--reps N]
                        [--cold-reps N] [--work-dir DIR] [--tu OBJ] [--out FILE] [--no-install]
  --quick      build only kernel/ and lib/ (about a third of the TUs) instead of the whole kernel
  --tools      which tools to compare, in order (default: all; gcc is the baseline)
  --jobs       make -j (default: number of CPUs)
  --reps       single-TU hit latency repetitions (default 20)
  --cold-reps  cold builds per tool, alternated between the tools, each on an empty cache
               (default 1); the miss overhead is the median of each round's ratio to gcc's
  --work-dir   where the kernel tree is unpacked and reused (default /var/tmp/meshcc-bench)
  --tu         object whose compile is timed for the hit latency (default kernel/fork.o)
  --out        Markdown results file (default scripts/bench-results/cache.md, cache-quick.md with
               --quick); the raw figures go beside it as .json
  --no-install fail instead of running apt-get when packages are missing`
}

function say(s: string): void {
  process.stdout.write(`[bench] ${s}\n`)
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      tools: { type: 'string', default: ALL_TOOLS.join(',') },
      jobs: { type: 'string', default: String(cpus().length) },
      reps: { type: 'string', default: '20' },
      'cold-reps': { type: 'string', default: '1' },
      'work-dir': { type: 'string', default: '/var/tmp/meshcc-bench' },
      tu: { type: 'string', default: 'kernel/fork.o' },
      out: { type: 'string' },
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
  const toolNames = values.tools!.split(',').map((t) => t.trim()).filter(Boolean)
  for (const t of toolNames) if (!ALL_TOOLS.includes(t as ToolName)) fail(`unknown tool "${t}" (known: ${ALL_TOOLS.join(', ')})`)
  const jobs = Number(values.jobs)
  const reps = Number(values.reps)
  if (!Number.isInteger(jobs) || jobs < 1) fail(`--jobs must be a positive integer`)
  if (!Number.isInteger(reps) || reps < 1 || reps > 1000) fail(`--reps must be between 1 and 1000`)
  const coldReps = countOption(values['cold-reps']!, '--cold-reps', 20)
  const workDir = resolve(values['work-dir']!)
  const tuObj = values.tu!
  const outFile = resolve(values.out ?? join(HERE, 'bench-results', quick ? 'cache-quick.md' : 'cache.md'))
  const makeTargets = quick ? ['kernel/', 'lib/'] : []
  const buildTimeout = (quick ? 20 : 60) * 60_000

  if (process.platform !== 'linux') fail('this benchmark needs Linux (it builds the Linux kernel)')
  if (values['no-install']) {
    for (const bin of ['make', 'gcc', 'ccache', 'sccache', '/usr/bin/time', 'bc', 'flex', 'bison']) {
      const r = await run('sh', ['-c', `command -v ${bin}`], { timeoutMs: 10_000 })
      if (r.code !== 0) fail(`${bin} is missing (run without --no-install, or apt-get install it)`)
    }
  } else {
    await ensurePackages(say)
  }
  const linux = await ensureTree(workDir, say)
  const baseEnv = cleanEnv(KBUILD_FIXED_ENV)
  await ensureConfig(linux, baseEnv, say)
  const kernelVersion = (await runOk('make', ['-s', 'kernelversion'], { cwd: linux, env: baseEnv, timeoutMs: 60_000 })).stdout.trim()
  const logDir = join(workDir, 'logs')
  mkdirSync(logDir, { recursive: true })
  const tmp = mkdtempSync('/tmp/meshcc-bench-')
  const base = KBUILD_FIXED_ENV

  say(`kernel ${kernelVersion}, ${CONFIG_NAME}${quick ? ', --quick: make kernel/ lib/' : ''}, make -j${jobs}, tools: ${toolNames.join(' ')}`)
  say(`tree ${linux}, logs ${logDir}, caches under ${tmp}`)

  const results: ToolResult[] = []
  let interrupted = false
  // Ctrl-C / SIGTERM: kill the running make (its own process group), then the normal
  // finally blocks below stop the server that was started and remove the temp dir.
  const onSignal = () => {
    interrupted = true
    killRunningChildren()
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  /** One tool on a fresh cache under `dir`: a cold build, and when `last` the warm build and the hit latency too. */
  const runTool = async (name: ToolName, res: ToolResult, dir: string, last: boolean): Promise<void> => {
    mkdirSync(dir, { recursive: true })
    let tool: Tool
    if (name === 'meshcc') tool = meshccTool(base, dir, MESHCC_MAIN)
    else if (name === 'ccache') tool = ccacheTool(base, dir)
    else if (name === 'sccache') tool = await sccacheTool(base, dir)
    else tool = plainGcc(base)
    try {
      await tool.start()
      await probe(tool, dir)
      for (const phase of last ? (['cold', 'warm'] as const) : (['cold'] as const)) {
        say(`${name}: make clean`)
        await runOk('make', ['clean'], { cwd: linux, env: baseEnv, timeoutMs: 10 * 60_000, logFile: join(logDir, `${name}-${phase}-clean.log`) }, 'make clean')
        await tool.zero()
        say(`${name}: ${phase} build${phase === 'cold' && coldReps > 1 ? ` #${res.colds.length + 1}` : ''}…`)
        const b = await timedBuild(tool, linux, jobs, makeTargets, buildTimeout, join(logDir, `${name}-${phase}.log`))
        if (phase === 'cold') res.colds.push(b)
        res[phase] = b
        say(`${name}: ${phase} build ${fmtSec(b.wallMs)} wall, ${b.cpuS.toFixed(0)} s CPU, ${b.tus} TUs${b.counts ? `, ${countsLine(b.counts)}` : ''}`)
        if (noisy(b)) say(`${name}: WARNING: other processes used ${b.foreignCpuS!.toFixed(0)} CPU s during this build; its wall time is not trustworthy`)
      }
      if (!last) return
      // single-TU hit latency: the exact command Kbuild used, now cached
      const args = readKbuildCompileArgs(linux, tuObj, tool.cc)
      await tool.zero()
      const times: number[] = []
      for (let i = 0; i < reps; i++) {
        if (interrupted) fail('interrupted')
        const r = await run('sh', ['-c', `exec ${tool.cc} ${args}`], { cwd: linux, env: kbuildCompileEnv(tool.env), timeoutMs: 120_000 })
        if (r.timedOut || r.code !== 0) fail(`${name}: single compile of ${tuObj} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim().split('\n').pop()}`)
        times.push(r.wallMs)
      }
      res.hitMs = times
      res.hitCounts = await tool.counts()
      say(`${name}: ${tuObj} x${reps}: median ${fmtMs(median(times))} (min ${fmtMs(Math.min(...times))}, max ${fmtMs(Math.max(...times))})${res.hitCounts ? `, ${countsLine(res.hitCounts)}` : ''}`)
    } finally {
      await tool.stop()
      rmSync(dir, { recursive: true, force: true })
    }
  }

  try {
    for (const name of toolNames as ToolName[]) {
      const res: ToolResult = { name, colds: [] }
      results.push(res)
      const missing = name === 'meshcc' ? meshccMissing(MESHCC_MAIN) : undefined
      if (missing) {
        res.skipped = missing
        say(`meshcc: SKIPPED — ${missing}`)
      }
    }
    // round after round, each tool's cold build on an empty cache, alternated between the tools
    // so that a slow spell of the machine does not land on one tool alone; the last round's
    // cache is the warm build's. Each cold build is the first with its CC, so Kbuild syncs its
    // configuration again (Kconfig's compiler probes) in every one of them alike.
    for (let round = 0; round < coldReps; round++) {
      for (const res of results) {
        if (interrupted) fail('interrupted')
        if (res.skipped || res.failed) continue
        try {
          await runTool(res.name, res, join(tmp, `${res.name}-${round}`), round === coldReps - 1)
        } catch (err) {
          if (!(err instanceof BenchError) || interrupted) throw err
          res.failed = err.message
          say(`${res.name}: FAILED — ${err.message}`)
        }
      }
    }
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    rmSync(tmp, { recursive: true, force: true })
  }

  const report = buildReport(results, { quick, jobs, reps, coldReps, kernelVersion, tuObj, makeTargets })
  process.stdout.write('\n' + report.text + '\n')
  mkdirSync(dirname(outFile), { recursive: true })
  writeFileSync(outFile, report.markdown)
  const raw = results.map((r) => ({
    ...r,
    cold: r.cold && { ...r.cold, objects: r.cold.objects.size },
    colds: r.colds.map((b) => ({ wallMs: b.wallMs, cpuS: b.cpuS, foreignCpuS: b.foreignCpuS })),
    warm: r.warm && { ...r.warm, objects: r.warm.objects.size }
  }))
  writeFileSync(outFile.replace(/\.md$/, '') + '.json', JSON.stringify({ quick, jobs, reps, coldReps, kernelVersion, config: CONFIG_NAME, tu: tuObj, results: raw }, null, 2) + '\n')
  process.stdout.write(`\nMarkdown (also written to ${outFile}):\n\n${report.markdown}\n`)
  return results.some((r) => r.failed) ? 1 : 0
}

/** One trivial compile through the tool before timing anything, to fail early and clearly. */
async function probe(tool: Tool, tmp: string): Promise<void> {
  const dir = join(tmp, `probe-${tool.name}`)
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'probe.c'), 'int meshcc_bench_probe(int x) { return x * 3; }\n')
  const r = await run('sh', ['-c', `exec ${tool.cc} -O2 -c probe.c -o probe.o`], { cwd: dir, env: tool.env, timeoutMs: 60_000 })
  if (r.timedOut) fail(`a trivial compile through ${tool.name} timed out`)
  if (r.code !== 0) fail(`a trivial compile through ${tool.name} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim().split('\n').pop()}`)
}

async function timedBuild(
  tool: Tool, linux: string, jobs: number, targets: string[], timeoutMs: number, log: string
): Promise<BuildResult> {
  rmSync(log, { force: true })
  const timeFile = `${log}.time`
  rmSync(timeFile, { force: true })
  const cpu0 = tool.serverCpu()
  const busy0 = machineBusySeconds()
  const r = await run('/usr/bin/time', ['-f', '%e %U %S', '-o', timeFile, 'make', `-j${jobs}`, `CC=${tool.cc}`, ...targets], {
    cwd: linux, env: tool.env, timeoutMs, logFile: log
  })
  if (r.timedOut) fail(`${tool.name} build timed out after ${Math.round(timeoutMs / 60_000)} min (log: ${log})`)
  const out = readFileSync(log, 'utf8')
  if (r.code !== 0) {
    const err = out.split('\n').filter((l) => /error|Error/.test(l)).slice(-1)[0] ?? out.trim().split('\n').pop()
    fail(`${tool.name} build failed (exit ${r.code}): ${err?.trim()} (log: ${log})`)
  }
  const cpu1 = tool.serverCpu()
  const busy1 = machineBusySeconds()
  const [, user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number)
  const serverCpu = cpu0 !== undefined && cpu1 !== undefined ? cpu1 - cpu0 : 0
  const cpuS = (user ?? 0) + (sys ?? 0) + serverCpu
  const objs = compiledObjects(out)
  return {
    wallMs: r.wallMs,
    cpuS,
    foreignCpuS: busy0 !== undefined && busy1 !== undefined ? Math.max(0, busy1 - busy0 - cpuS) : undefined,
    tus: objs.length,
    counts: await tool.counts(),
    objects: hashObjects(linux, objs),
    log
  }
}

/** True when other processes took more than 5 % of the machine's CPU capacity during a build. */
function noisy(b: BuildResult, cores = cpus().length): boolean {
  return b.foreignCpuS !== undefined && b.foreignCpuS > 0.05 * cores * (b.wallMs / 1000)
}

function fmtForeign(b?: BuildResult): string {
  return b?.foreignCpuS === undefined ? '-' : `${b.foreignCpuS.toFixed(0)} s${noisy(b) ? ' (!)' : ''}`
}

function countsLine(c: CacheCounts): string {
  const extra = Object.entries(c.extra).map(([k, v]) => `${k}=${v}`).join(', ')
  return `requests ${c.requests}, hits ${c.hits}, misses ${c.misses}, uncacheable ${c.uncacheable}${extra ? ` (${extra})` : ''}`
}

/** Objects whose bytes differ from the reference build (only those both builds produced). */
function diffObjects(ref: Map<string, string>, other: Map<string, string>): string[] {
  const out: string[] = []
  for (const [k, v] of other) if (ref.has(k) && ref.get(k) !== v) out.push(k)
  for (const k of ref.keys()) if (!other.has(k)) out.push(`${k} (not built)`)
  return out.sort()
}

function buildReport(
  results: ToolResult[],
  o: { quick: boolean; jobs: number; reps: number; coldReps: number; kernelVersion: string; tuObj: string; makeTargets: string[] }
): { text: string; markdown: string } {
  const by = (n: ToolName) => results.find((r) => r.name === n && r.cold && r.warm && !r.failed)
  const gcc = by('gcc')
  // against gcc's cold build of the same round, never its warm one: a cold build is the first
  // with its CC, so Kbuild syncs the configuration again (SYNC include/config/auto.conf.cmd,
  // Kconfig's compiler probes: about 3 s of wall here), which the warm builds skip
  const ratios = (r: ToolResult | undefined, field: 'wallMs' | 'cpuS') =>
    r && gcc ? pairRatios(r.colds.map((b) => b[field]), gcc.colds.map((b) => b[field])) : []
  const overhead = (r?: ToolResult, field: 'wallMs' | 'cpuS' = 'wallMs') => {
    const x = ratios(r, field)
    return x.length ? median(x) : undefined
  }
  const coldMedian = (r: ToolResult, field: 'wallMs' | 'cpuS') => median(r.colds.map((b) => b[field]))
  const refObjects = gcc?.cold?.objects

  const header = ['tool', 'TUs', 'cold build', 'cold CPU', 'miss overhead vs gcc', 'warm build', 'warm CPU', 'warm hits / misses / uncacheable', `hit latency (median of ${o.reps})`, 'objects = gcc', 'other procs CPU cold / warm']
  const rows: string[][] = []
  for (const r of results) {
    if (r.skipped || r.failed || !r.cold || !r.warm) {
      const why = r.skipped ? `skipped: ${r.skipped}` : `failed: ${r.failed ?? '?'}`
      rows.push([r.name, '-', '-', '-', '-', '-', '-', '-', '-', why.length > 70 ? `${why.slice(0, 67)}… (see below)` : why, '-'])
      continue
    }
    const isGcc = r.name === 'gcc'
    let same = '-'
    if (refObjects) {
      const d = [...diffObjects(refObjects, r.cold.objects), ...diffObjects(refObjects, r.warm.objects)]
      same = d.length === 0 ? `yes (${r.warm.objects.size})` : `NO: ${[...new Set(d)].slice(0, 3).join(', ')}${d.length > 3 ? ` +${d.length - 3}` : ''}`
    }
    rows.push([
      r.name,
      String(r.cold.tus),
      fmtSec(coldMedian(r, 'wallMs')),
      `${coldMedian(r, 'cpuS').toFixed(0)} s`,
      isGcc ? '(baseline)' : fmtPct(overhead(r)),
      fmtSec(r.warm.wallMs),
      `${r.warm.cpuS.toFixed(0)} s`,
      r.warm.counts ? `${r.warm.counts.hits} / ${r.warm.counts.misses} / ${r.warm.counts.uncacheable}` : isGcc ? '(no cache)' : '-',
      r.hitMs ? fmtMs(median(r.hitMs)) + (isGcc ? ' (compile)' : '') : '-',
      same,
      `${fmtForeign(r.cold)} / ${fmtForeign(r.warm)}`
    ])
  }

  const mesh = by('meshcc')
  const ccache = by('ccache')
  const sccache = by('sccache')
  const missOv = overhead(mesh)
  const warmVsCcache = mesh && ccache ? mesh.warm!.wallMs / ccache.warm!.wallMs : undefined
  const warmVsSccache = mesh && sccache ? mesh.warm!.wallMs / sccache.warm!.wallMs : undefined
  const cpuOverhead = overhead(mesh, 'cpuS')
  const verdict = (ok: boolean | undefined) => (ok === undefined ? 'not measured' : ok ? 'MET' : 'NOT MET')
  const ratioRows: string[][] = [
    ['meshcc miss overhead ((meshcc cold - gcc) / gcc)', fmtPct(missOv), `<= +${TARGETS.miss * 100} %`, verdict(missOv === undefined ? undefined : missOv <= TARGETS.miss)],
    ['warm build meshcc / ccache', fmtRatio(warmVsCcache), `<= ${TARGETS.warmVsCcache}x`, verdict(warmVsCcache === undefined ? undefined : warmVsCcache <= TARGETS.warmVsCcache)],
    ['warm build meshcc / sccache', fmtRatio(warmVsSccache), '-', '-'],
    // CPU seconds barely move when other processes compete for the cores; wall times do
    ['meshcc miss overhead by CPU ((meshcc cold CPU - gcc CPU) / gcc CPU)', fmtPct(cpuOverhead), '-', '-'],
    ['warm build CPU meshcc / ccache', fmtRatio(mesh && ccache ? mesh.warm!.cpuS / ccache.warm!.cpuS : undefined), '-', '-'],
    ['warm build CPU meshcc / sccache', fmtRatio(mesh && sccache ? mesh.warm!.cpuS / sccache.warm!.cpuS : undefined), '-', '-']
  ]
  for (const r of results) {
    if (r.hitMs) ratioRows.push([`${r.name} ${r.name === 'gcc' ? 'compile' : 'hit'} latency, ${o.tuObj} (median / min / max)`, `${fmtMs(median(r.hitMs))} / ${fmtMs(Math.min(...r.hitMs))} / ${fmtMs(Math.max(...r.hitMs))}`, '-', '-'])
  }

  const notes: string[] = []
  const cpuModel = cpus()[0]?.model.trim() ?? '?'
  notes.push(`Linux ${o.kernelVersion} from Debian's linux-source, \`make ${CONFIG_NAME}\` (i386), ${o.makeTargets.length ? `\`make ${o.makeTargets.join(' ')}\` only (--quick)` : 'full `make` (bzImage)'}, \`make -j${o.jobs}\` on ${cpus().length} × ${cpuModel}.`)
  notes.push(`Each tool: \`make clean\`, cold build with an empty cache${o.coldReps > 1 ? ` (${o.coldReps} rounds, the tools alternated, each round on a fresh cache; cold figures are medians)` : ''}, then \`make clean\`, warm build with the last cold build's cache. TUs = C files compiled (Kbuild \`CC\` lines). CPU = user+sys of make and its children plus the tool's server.`)
  notes.push(`Miss overhead = a tool's cold build over plain gcc's cold build of the same round (the median over the rounds). Both are the first build with their CC, so both include Kbuild's configuration sync, which a warm build skips: gcc's warm build is no baseline for a cold one. Hit latency = the exact Kbuild command for ${o.tuObj}, run ${o.reps} times after the warm build; for gcc it is the plain compile.`)
  if (o.coldReps > 1) {
    for (const r of results) {
      if (!r.colds.length) continue
      const vs = r !== gcc && gcc ? `; vs gcc ${ratios(r, 'wallMs').map(fmtPct).join(', ')} (wall), ${ratios(r, 'cpuS').map(fmtPct).join(', ')} (CPU)` : ''
      notes.push(`${r.name} cold builds in order (wall / CPU): ${r.colds.map((b) => `${fmtSec(b.wallMs)} / ${b.cpuS.toFixed(1)} s`).join(', ')}${vs}.`)
    }
  }
  for (const r of results) {
    if (r.warm?.counts && r.name !== 'gcc') notes.push(`${r.name} warm-build counters: ${countsLine(r.warm.counts)}.`)
    if (r.cold?.counts && r.name !== 'gcc') notes.push(`${r.name} cold-build counters: ${countsLine(r.cold.counts)}.`)
    if (r.hitCounts) notes.push(`${r.name} counters during the ${o.reps} single compiles: ${countsLine(r.hitCounts)}.`)
    if (r.skipped) notes.push(`${r.name} skipped: ${r.skipped}.`)
    if (r.failed) notes.push(`${r.name} failed: ${r.failed}.`)
  }
  const noisyBuilds = results.flatMap((r) => (['cold', 'warm'] as const).filter((p) => r[p] && noisy(r[p]!)).map((p) => `${r.name} ${p}`))
  if (noisyBuilds.length) notes.push(`WARNING: other processes used more than 5 % of the machine's CPU during: ${noisyBuilds.join(', ')} (see the last column); those wall times are inflated — rerun on an idle machine.`)
  if (gcc) {
    const d = diffObjects(gcc.cold!.objects, gcc.warm!.objects)
    if (d.length) notes.push(`Note: plain gcc's two builds already differ in ${d.length} object(s) (${d.slice(0, 3).join(', ')}), so those are not a cache fault.`)
  }

  const when = new Date().toISOString().replace(/\.\d+Z$/, 'Z')
  const text = [
    `Cache benchmark (${when})${o.quick ? ' — QUICK MODE' : ''}`,
    '',
    textTable(header, rows),
    '',
    textTable(['ratio', 'measured', 'target', 'verdict'], ratioRows),
    '',
    ...notes.map((n) => `- ${n}`)
  ].join('\n')
  const markdown = [
    `### Cache benchmark${o.quick ? ' (quick mode)' : ''}`,
    '',
    `Measured ${when} with \`npm run bench${o.quick ? ' -- --quick' : ''}\`.`,
    '',
    markdownTable(header, rows),
    '',
    markdownTable(['ratio', 'measured', 'target', 'verdict'], ratioRows),
    '',
    ...notes.map((n) => `- ${n}`),
    ''
  ].join('\n')
  return { text, markdown }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof BenchError) {
      process.stderr.write(`bench: ${err.message}\n`)
      process.exit(err.message === 'interrupted' ? 130 : 1)
    }
    process.stderr.write(`bench: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`)
    process.exit(1)
  }
)
