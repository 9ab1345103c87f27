// Rust benchmark: `cargo build` of a real crate graph — a program depending on 33 widely used
// crates (tokio, hyper, clap with derive, serde with derive, rayon, regex, ignore, grep,
// tracing, chrono, …), 140-odd crates in all, every one from Debian's librust-*-dev packages,
// built offline from /usr/share/cargo/registry — through plain cargo, sccache
// (RUSTC_WRAPPER=sccache, Debian's) and meshcc (RUSTC_WRAPPER=meshcc), in one run:
//   cold: an empty cache, `cargo build` from a clean target directory
//   warm: `cargo clean && cargo build` with the cache the cold build filled (--reps times)
//
//   npm run bench:rust                 full run (about 40 min on 2 cores)
//   npm run bench:rust -- --quick      a dozen direct dependencies (about 40 crates), for development
//   npm run bench:rust -- --tools cargo,meshcc --reps 1
//   npm run bench:rust -- --quick --tools cargo,meshcc --reps 1 --cold-reps 5
//                                      five cold builds per tool, alternated (cargo, meshcc,
//                                      cargo, …), each on an empty cache: medians and the median
//                                      of the per-pair ratios, steadier than one cold build each
//   npm run bench:rust -- --quick --tools cargo,meshcc,meshcc-base --baseline /work/main --reps 1 --cold-reps 3
//                                      meshcc-base: another checkout's build (its dist/bin/meshcc),
//                                      alternated with this one: an A/B of two versions in one run
//   npm run bench:rust -- --quick --tools cargo,meshcc --reps 1 --cpu-prof DIR
//                                      a V8 CPU profile of meshcc's daemon over each cold build
//   npm run bench:rust -- --quick --toolchain-known …
//                                      each cold daemon starts knowing the toolchain's file hashes
//                                      (compiler-hashes.json): a new crate graph, not a new toolchain
//   npm run bench:rust -- --quick --tools cargo,meshcc-dist --reps 1
//                                      the same cold build over two builder daemons on loopback
//                                      (each its own config dir, bubblewrap sandbox) and a client
//                                      daemon with local_slots = 0, as bench-dist sets them up
//
// Needs root for apt-get when packages are missing (the librust-*-dev crates, sccache, time).
// Everything lives in --work-dir (default /var/tmp/meshcc-bench-rust): the workspace, a
// CARGO_HOME of its own (never ~/.cargo) and each tool's cache, removed at the end. The
// builds use CARGO_INCREMENTAL=0, as the README tells meshcc and sccache users to.
import { cpus } from 'node:os'
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { BenchError, COMMON_BENCH_OPTIONS, countOption, fail, killRunningChildren, machineBusySeconds, run, runOk, toolList } from './lib/proc.js'
import { fmtPct, fmtRatio, fmtSec, markdownTable, median, pairRatios as ratiosOf, textTable } from './lib/stats.js'
import { MESHCC_MAIN, type CacheCounts, type Tool, cleanEnv, meshccMissing, meshccTool, readPidLock, sccacheTool } from './lib/tools.js'
import { meshccTool as meshccFarmTool } from './lib/dist-bench-tools.js'

const HERE = dirname(fileURLToPath(import.meta.url))
const REGISTRY = '/usr/share/cargo/registry'
const ALL_TOOLS = ['cargo', 'sccache', 'meshcc', 'meshcc-base', 'meshcc-dist'] as const
const DEFAULT_TOOLS = ['cargo', 'sccache', 'meshcc']
type ToolName = (typeof ALL_TOOLS)[number]
/** meshcc-dist: builder daemons on loopback, slots each (the machine's cores shared between them) */
const DIST_BUILDERS = 2
const TARGETS = { coldOverhead: 0.05, warmVsSccache: 0.8 }

/** The program's direct dependencies: [crate, version, features, Debian package]. */
const DEPS: Array<[string, string, string[], string]> = [
  ['regex', '1', [], 'librust-regex-dev'], ['serde', '1', ['derive'], 'librust-serde-derive-dev'], ['serde_json', '1', [], 'librust-serde-json-dev'],
  ['log', '0.4', [], 'librust-log-dev'], ['anyhow', '1', [], 'librust-anyhow-dev'], ['itertools', '0.10', [], 'librust-itertools-dev'],
  ['smallvec', '1', [], 'librust-smallvec-dev'], ['once_cell', '1', [], 'librust-once-cell-dev'], ['bitflags', '1', [], 'librust-bitflags-dev'],
  ['rand', '0.8', [], 'librust-rand-dev'], ['rayon', '1', [], 'librust-rayon-dev'], ['walkdir', '2', [], 'librust-walkdir-dev'],
  ['tokio', '1', ['full'], 'librust-tokio-dev librust-tokio-macros-dev'], ['futures', '0.3', [], 'librust-futures-dev'],
  ['clap', '4', ['derive'], 'librust-clap-dev librust-clap-derive-dev'], ['toml', '0.5', [], 'librust-toml-dev'], ['chrono', '0.4', [], 'librust-chrono-dev'],
  ['env_logger', '0.9', [], 'librust-env-logger-dev'], ['thiserror', '1', [], 'librust-thiserror-dev'], ['ignore', '0.4', [], 'librust-ignore-dev'],
  ['grep', '0.2', [], 'librust-grep-dev'], ['tracing', '0.1', [], 'librust-tracing-dev'], ['tracing-subscriber', '0.3', [], 'librust-tracing-subscriber-dev'],
  ['url', '2', [], 'librust-url-dev'], ['flate2', '1', [], 'librust-flate2-dev'], ['tempfile', '3', [], 'librust-tempfile-dev'],
  ['crossbeam', '0.8', [], 'librust-crossbeam-dev'], ['parking_lot', '0.12', [], 'librust-parking-lot-dev'], ['base64', '0.13', [], 'librust-base64-dev'],
  ['sha2', '0.10', [], 'librust-sha2-dev'], ['hex', '0.4', [], 'librust-hex-dev'], ['semver', '1', [], 'librust-semver-dev'],
  ['hyper', '0.14', ['full'], 'librust-hyper-dev']
]
const QUICK_DEPS = 12

interface BuildResult {
  wallMs: number
  /** user+sys of cargo and everything it waited for, plus the tool's server and its compilers */
  cpuS: number
  /** the part of cpuS the tool's server (daemon) used, with the compilers it ran itself */
  serverCpuS?: number
  /** of that, the server process's own CPU (meshcc's daemon without its rustc children) */
  serverOwnCpuS?: number
  /** CPU seconds other processes on the machine used meanwhile (noise in the wall time) */
  foreignCpuS?: number
  crates: number
  counts?: CacheCounts
  /** sha256 of each rlib/rmeta in target/debug/deps */
  outputs: Map<string, string>
  /** in a report read back from JSON: how many outputs there were, and how many matched plain cargo's */
  outputCount?: number
  identical?: number
}

/** `cold` is the last cold build (its cache is the warm builds'); `colds` all of them, in order (--cold-reps) */
interface ToolResult { name: ToolName; skipped?: string; failed?: string; cold?: BuildResult; colds?: BuildResult[]; warm: BuildResult[] }
interface RunInfo { rustc: string; sccache: string; jobs: number; quick: boolean; reps: number; coldReps?: number; toolchainKnown?: boolean; baseline?: string }

function usage(): string {
  return `usage: npm run bench:rust -- [--quick] [--tools ${ALL_TOOLS.join(',')}] [--reps N] [--cold-reps N] [--jobs N] [--work-dir DIR] [--out FILE] [--baseline DIR] [--toolchain-known] [--cpu-prof DIR] [--no-install]
  --quick      the first ${QUICK_DEPS} direct dependencies only (about 40 crates)
  --tools      which tools to compare, in order (default: ${DEFAULT_TOOLS.join(',')}; cargo alone is the baseline;
               meshcc-dist: ${DIST_BUILDERS} builder daemons on 127.0.0.1 and a client with local_slots = 0)
  --reps       warm builds per caching tool (default 3; the median counts)
  --cold-reps  cold builds per tool, alternated between the tools, each on an empty cache (default 1);
               above 1 the cold figures are medians and the overheads medians of the per-pair ratios
  --jobs       cargo -j (default: number of CPUs)
  --work-dir   workspace, CARGO_HOME and caches (default /var/tmp/meshcc-bench-rust)
  --out        Markdown results (default scripts/bench-results/rust.md, rust-quick.md with --quick); JSON beside it
  --baseline   a checkout whose build (DIR/dist/bin/meshcc) is the tool meshcc-base, for an A/B against this one
  --toolchain-known  meshcc's cold builds start with the toolchain's file hashes in the cache dir, as a daemon
               that has compiled with this toolchain before keeps them (without it, the 500 MB toolchain is
               hashed in every cold build: a first use's cost, paid once per cache dir)
  --cpu-prof   write a V8 CPU profile of each meshcc daemon over each cold build into DIR (skews its CPU figures)
  --no-install fail instead of running apt-get when packages are missing
  --report-from FILE.json   write the Markdown report again from a run's JSON, without building`
}

function say(s: string): void {
  process.stdout.write(`[bench:rust] ${s}\n`)
}

function findCargo(): string {
  const home = process.env.HOME ?? '/root'
  for (const dir of [join(home, '.cargo', 'bin'), ...(process.env.PATH ?? '').split(':')]) if (dir && existsSync(join(dir, 'cargo'))) return join(dir, 'cargo')
  fail('cargo not found in ~/.cargo/bin or on PATH')
}

async function ensurePackages(deps: typeof DEPS, noInstall: boolean): Promise<void> {
  const want = new Set(['sccache', 'time', ...deps.flatMap((d) => d[3].split(' '))])
  const missing: string[] = []
  for (const p of want) if ((await run('dpkg', ['-s', p], { timeoutMs: 30_000 })).code !== 0) missing.push(p)
  if (missing.length === 0) return
  if (noInstall) fail(`missing packages: ${missing.join(' ')} (apt-get install them, or drop --no-install)`)
  say(`installing ${missing.join(' ')}`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  await runOk('apt-get', ['update', '-qq'], { env, timeoutMs: 600_000 })
  await runOk('apt-get', ['install', '-y', '-qq', ...missing], { env, timeoutMs: 1_800_000 })
}

function writeWorkspace(dir: string, deps: typeof DEPS, cargoHome: string): void {
  mkdirSync(join(dir, 'src'), { recursive: true })
  const lines = deps.map(([c, v, f]) => `${c} = { version = "${v}"${f.length ? `, features = [${f.map((x) => `"${x}"`).join(', ')}]` : ''} }`)
  writeFileSync(join(dir, 'Cargo.toml'), `[package]\nname = "benchapp"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n${lines.join('\n')}\n`)
  writeFileSync(join(dir, 'src', 'main.rs'), 'fn main() { println!("{}", serde_json::json!({ "built": true })); }\n')
  mkdirSync(cargoHome, { recursive: true })
  writeFileSync(join(cargoHome, 'config.toml'), `[source.crates-io]\nreplace-with = "debian"\n[source.debian]\ndirectory = "${REGISTRY}"\n[net]\noffline = true\n`)
}

function hashOutputs(deps: string): Map<string, string> {
  const out = new Map<string, string>()
  if (!existsSync(deps)) return out
  for (const n of readdirSync(deps).sort()) {
    if (!n.endsWith('.rlib') && !n.endsWith('.rmeta')) continue
    out.set(n, createHash('sha256').update(readFileSync(join(deps, n))).digest('hex'))
  }
  return out
}

/** `profileOf`: the directory of a daemon started with cpu-profile-preload.mjs, profiled over the build */
async function build(tool: Tool, cargo: string, ws: string, jobs: number, logFile: string, timeFile: string, profileOf?: string): Promise<BuildResult> {
  rmSync(join(ws, 'target'), { recursive: true, force: true }) // cargo clean, without asking cargo
  await tool.zero()
  // the preload starts a profile on the first SIGUSR2 and writes it on the second
  const profiled = profileOf === undefined ? undefined : readPidLock(join(profileOf, 'd.sock.pid')) ?? undefined // meshccTool's socket
  if (profiled !== undefined) process.kill(profiled, 'SIGUSR2')
  const server0 = tool.serverCpu() ?? 0
  const own0 = tool.serverOwnCpu?.()
  const busy0 = machineBusySeconds()
  writeFileSync(logFile, '')
  const r = await run('/usr/bin/time', ['-f', '%e %U %S', '-o', timeFile, cargo, 'build', '--offline', `-j${jobs}`], {
    cwd: ws, env: tool.env, timeoutMs: 3_600_000, logFile
  })
  const busy1 = machineBusySeconds()
  if (profiled !== undefined) {
    process.kill(profiled, 'SIGUSR2')
    await new Promise((r) => setTimeout(r, 3000)) // the profile is written after the counters below
  }
  const log = readFileSync(logFile, 'utf8')
  if (r.code !== 0) fail(`${tool.name}: cargo build failed (exit ${r.code}); see ${logFile}: ${log.trim().split('\n').slice(-3).join(' | ')}`)
  const [, user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(' ').map(Number)
  const serverCpuS = Math.max(0, (tool.serverCpu() ?? 0) - server0)
  const own1 = tool.serverOwnCpu?.()
  const cpuS = (user ?? 0) + (sys ?? 0) + serverCpuS
  return {
    wallMs: r.wallMs, cpuS, serverCpuS, serverOwnCpuS: own0 !== undefined && own1 !== undefined ? own1 - own0 : undefined,
    foreignCpuS: busy0 !== undefined && busy1 !== undefined ? Math.max(0, busy1 - busy0 - cpuS) : undefined,
    crates: (log.match(/^\s+Compiling /gm) ?? []).length,
    counts: await tool.counts(),
    outputs: hashOutputs(join(ws, 'target', 'debug', 'deps'))
  }
}

/** where a daemon keeps the compilers' file hashes, in its cache dir (compile-service.ts) */
const COMPILER_HASHES_FILE = 'compiler-hashes.json'

/** The compiler-hashes.json a daemon writes on compiling one small crate with this toolchain (--toolchain-known). */
async function toolchainMemo(base: Record<string, string>, cargo: string, dir: string): Promise<Buffer> {
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(join(dir, 'crate', 'src'), { recursive: true })
  writeFileSync(join(dir, 'crate', 'Cargo.toml'), '[package]\nname = "tcmemo"\nversion = "0.1.0"\nedition = "2021"\n')
  writeFileSync(join(dir, 'crate', 'src', 'lib.rs'), 'pub fn f() -> u32 { 1 }\n')
  const t = meshccTool(base, dir, MESHCC_MAIN)
  t.env.RUSTC_WRAPPER = MESHCC_MAIN
  try {
    await t.start()
    const r = await run(cargo, ['build', '--offline'], { cwd: join(dir, 'crate'), env: t.env, timeoutMs: 600_000 })
    if (r.code !== 0) fail(`--toolchain-known: cargo build of a one-line crate failed (exit ${r.code}): ${r.stderr.trim().split('\n').pop() ?? ''}`)
  } finally {
    await t.stop()
  }
  const file = join(dir, 'meshcc-cache', COMPILER_HASHES_FILE)
  if (!existsSync(file)) fail(`--toolchain-known: the daemon wrote no ${file}`)
  const memo = readFileSync(file)
  rmSync(dir, { recursive: true, force: true })
  say(`toolchain known: ${JSON.parse(memo.toString('utf8')).entries.length} file hashes from a one-line crate's build`)
  return memo
}

function plainCargo(base: Record<string, string>): Tool {
  return { name: 'cargo', cc: '', env: cleanEnv(base), start: async () => {}, zero: async () => {}, counts: async () => undefined, serverCpu: () => 0, stop: async () => {} }
}

/**
 * meshcc over DIST_BUILDERS builder daemons and a client daemon with local_slots = 0, each its
 * own config dir, on 127.0.0.1 (bench-dist's farm): every crate that can go to a builder does.
 * Its CPU is the client's and the builders' process trees (the rustc jobs included).
 */
function meshccDistTool(base: Record<string, string>, caches: string, slotsPerBuilder: number): Tool {
  const farm = meshccFarmTool(base, join(caches, 'meshcc-dist'), { builders: DIST_BUILDERS, slotsPerBuilder, logLevel: 'info' }, say)
  return {
    name: 'meshcc-dist', cc: '', env: { ...farm.env, RUSTC_WRAPPER: MESHCC_MAIN },
    start: () => farm.setup(),
    zero: () => farm.beforeBuild(),
    async counts() {
      const c = await farm.counts('')
      const extra: Record<string, number> = { remote_compiles: c.remote, fallbacks: c.fallbacks, ...c.reasons }
      for (const [k, v] of Object.entries(c.raw)) if (/ jobs (done|failed|refused)$/.test(k)) extra[k] = v
      return { requests: c.raw.compile_requests ?? 0, hits: c.raw.cache_hits ?? 0, misses: c.raw.cache_misses ?? 0, uncacheable: c.raw.non_cacheable ?? 0, extra }
    },
    serverCpu: () => farm.clientCpu() + farm.builderCpu(),
    stop: () => farm.teardown()
  }
}

function countsLine(c: CacheCounts): string {
  return `${c.requests} calls, ${c.hits} hits, ${c.misses} misses, ${c.uncacheable} not cacheable`
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      ...COMMON_BENCH_OPTIONS,
      quick: { type: 'boolean', default: false },
      tools: { type: 'string', default: DEFAULT_TOOLS.join(',') },
      reps: { type: 'string', default: '3' },
      'cold-reps': { type: 'string', default: '1' },
      jobs: { type: 'string', default: String(cpus().length) },
      'work-dir': { type: 'string', default: '/var/tmp/meshcc-bench-rust' },
      'report-from': { type: 'string' },
      baseline: { type: 'string' },
      'cpu-prof': { type: 'string' },
      'toolchain-known': { type: 'boolean', default: false }
    },
    strict: true
  })
  if (values.help) {
    process.stdout.write(usage() + '\n')
    return 0
  }
  if (values['report-from']) {
    // the report again from a run's JSON (after a change to how it is written)
    const saved = JSON.parse(readFileSync(values['report-from'], 'utf8')) as { info: RunInfo; results: ToolResult[] }
    for (const r of saved.results) for (const b of [r.cold, ...(r.colds ?? []), ...r.warm]) if (b) b.outputs = new Map()
    const md = render(saved.results, saved.info)
    writeFileSync(values['report-from'].replace(/\.json$/, '.md'), md)
    process.stdout.write(md)
    return 0
  }
  const quick = values.quick!
  const names = toolList(values.tools!, ALL_TOOLS)
  const reps = countOption(values.reps!, '--reps', 20)
  const coldReps = countOption(values['cold-reps']!, '--cold-reps', 20)
  const jobs = countOption(values.jobs!, '--jobs')
  const workDir = resolve(values['work-dir']!)
  const outFile = resolve(values.out ?? join(HERE, 'bench-results', quick ? 'rust-quick.md' : 'rust.md'))
  const deps = quick ? DEPS.slice(0, QUICK_DEPS) : DEPS
  const baselineBin = values.baseline === undefined ? undefined : join(resolve(values.baseline), 'dist', 'bin', 'meshcc')
  if (names.includes('meshcc-base') && baselineBin === undefined) fail('--tools meshcc-base needs --baseline DIR (a checkout with its build)')
  const cpuProf = values['cpu-prof'] === undefined ? undefined : resolve(values['cpu-prof'])
  if (cpuProf) mkdirSync(cpuProf, { recursive: true })
  const binOf = (name: ToolName) => (name === 'meshcc-base' ? baselineBin! : MESHCC_MAIN)

  await ensurePackages(deps, values['no-install']!)
  const cargo = findCargo()
  const ws = join(workDir, 'ws')
  const cargoHome = join(workDir, 'cargo-home')
  const caches = join(workDir, 'caches')
  rmSync(caches, { recursive: true, force: true })
  mkdirSync(caches, { recursive: true })
  writeWorkspace(ws, deps, cargoHome)
  const rustc = (await runOk(join(dirname(cargo), 'rustc'), ['-V'], { timeoutMs: 60_000 })).stdout.trim()
  const sccacheV = (await run('sccache', ['--version'], { timeoutMs: 60_000 })).stdout.trim()
  const base = { CARGO_HOME: cargoHome, CARGO_INCREMENTAL: '0', CARGO_TERM_COLOR: 'never' }
  say(`${rustc}, ${sccacheV || 'no sccache'}, ${cpus().length} CPUs, cargo -j${jobs}, workspace ${ws}`)

  const tcMemo = values['toolchain-known'] && names.some((n) => n === 'meshcc' || n === 'meshcc-base') ? await toolchainMemo(base, cargo, join(workDir, 'tc-memo')) : undefined
  /** the tool `name` with its caches (and server's files) under `dir` */
  const makeTool = async (name: ToolName, dir: string): Promise<Tool> => {
    if (name === 'cargo') return plainCargo(base)
    if (name === 'sccache') {
      const t = await sccacheTool(base, dir)
      t.env.RUSTC_WRAPPER = 'sccache'
      return t
    }
    if (name === 'meshcc' || name === 'meshcc-base') {
      const own = join(dir, name) // each version its own socket and cache
      mkdirSync(own, { recursive: true })
      const t = meshccTool(base, own, binOf(name))
      t.env.RUSTC_WRAPPER = binOf(name)
      // the launcher is native: only the daemon it starts reads NODE_OPTIONS
      if (tcMemo) {
        const start = t.start.bind(t)
        t.start = async () => {
          mkdirSync(join(own, 'meshcc-cache'), { recursive: true })
          writeFileSync(join(own, 'meshcc-cache', COMPILER_HASHES_FILE), tcMemo)
          await start()
        }
      }
      if (cpuProf) Object.assign(t.env, { NODE_OPTIONS: `--import=${pathToFileURL(join(HERE, 'lib', 'cpu-profile-preload.mjs')).href}`, MESHCC_BENCH_PROF_DIR: cpuProf })
      return t
    }
    return meshccDistTool(base, dir, Math.max(1, Math.floor(cpus().length / DIST_BUILDERS)))
  }
  const results: ToolResult[] = []
  const tools: Array<{ name: ToolName; tool: Tool }> = []
  /** a cold build's tool that is not kept for the warm builds (--cold-reps), stopped at the end if a build fails */
  let passing: Tool | undefined
  try {
    for (const name of names) {
      const missing = name === 'meshcc' || name === 'meshcc-dist' || name === 'meshcc-base' ? meshccMissing(binOf(name)) : undefined
      if (missing) {
        results.push({ name, skipped: missing, warm: [] })
        continue
      }
      tools.push({ name, tool: await makeTool(name, caches) })
      results.push({ name, warm: [], colds: [] })
    }
    // cold builds one tool after the other (with --cold-reps, round after round: each tool's
    // cold builds before the last on a fresh cache of their own, removed after it), then the
    // warm ones interleaved, so a slow spell of the machine does not land on one tool alone
    for (let round = 0; round < coldReps; round++) {
      const last = round === coldReps - 1
      for (const { name, tool: kept } of tools) {
        const res = results.find((r) => r.name === name)!
        if (res.failed) continue
        const dir = join(caches, `cold-${round + 1}`)
        try {
          if (!last) mkdirSync(dir, { recursive: true })
          const tool = last ? kept : (passing = await makeTool(name, dir))
          await tool.start()
          const profileOf = cpuProf && (name === 'meshcc' || name === 'meshcc-base') ? join(last ? caches : dir, name) : undefined
          const b = await build(tool, cargo, ws, jobs, join(workDir, `${name}-cold.log`), join(workDir, 'time.txt'), profileOf)
          res.colds!.push(b)
          if (last) res.cold = b
          say(`${name}: cold${coldReps > 1 ? ` #${round + 1}` : ''} ${fmtSec(b.wallMs)} wall, ${b.cpuS.toFixed(0)} s CPU${b.serverCpuS ? ` (server ${b.serverCpuS.toFixed(1)} s${b.serverOwnCpuS !== undefined ? `, its own ${b.serverOwnCpuS.toFixed(1)} s` : ''})` : ''}, ${b.crates} crates${b.counts ? `, ${countsLine(b.counts)}` : ''}${b.foreignCpuS !== undefined ? `, ${b.foreignCpuS.toFixed(0)} s foreign CPU` : ''}`)
        } catch (err) {
          if (!(err instanceof BenchError)) throw err
          res.failed = err.message
          say(`${name}: ${err.message}`)
        } finally {
          if (passing) {
            await passing.stop()
            passing = undefined
            rmSync(dir, { recursive: true, force: true })
          }
        }
      }
    }
    for (let rep = 0; rep < reps; rep++) {
      for (const { name, tool } of tools) {
        const res = results.find((r) => r.name === name)!
        if (name === 'cargo' || res.failed) continue
        try {
          const b = await build(tool, cargo, ws, jobs, join(workDir, `${name}-warm.log`), join(workDir, 'time.txt'))
          res.warm.push(b)
          say(`${name}: warm #${rep + 1} ${fmtSec(b.wallMs)} wall, ${b.cpuS.toFixed(0)} s CPU${b.counts ? `, ${countsLine(b.counts)}` : ''}`)
        } catch (err) {
          if (!(err instanceof BenchError)) throw err
          res.failed = err.message
        }
      }
    }
  } finally {
    await passing?.stop()
    for (const { tool } of tools) await tool.stop()
    rmSync(caches, { recursive: true, force: true })
  }

  const info: RunInfo = { rustc, sccache: sccacheV, jobs, quick, reps, coldReps, toolchainKnown: values['toolchain-known'], baseline: values.baseline }
  const plainOutputs = results.find((r) => r.name === 'cargo')?.cold?.outputs
  const forJson = (b: BuildResult) => ({
    ...b, outputs: undefined, outputCount: b.outputs.size,
    identical: plainOutputs ? [...plainOutputs].filter(([n, h]) => b.outputs.get(n) === h).length : undefined
  })
  const report = render(results, info)
  mkdirSync(dirname(outFile), { recursive: true })
  writeFileSync(outFile, report)
  writeFileSync(outFile.replace(/\.md$/, '.json'), JSON.stringify({ info, results: results.map((r) => ({ ...r, cold: r.cold && forJson(r.cold), colds: r.colds?.map(forJson), warm: r.warm.map(forJson) })) }, null, 2) + '\n')
  process.stdout.write('\n' + report)
  say(`written to ${outFile}`)
  return 0
}

/** a tool's cold builds (one, in a report of a run before --cold-reps) */
const coldsOf = (r: ToolResult): BuildResult[] => (r.colds?.length ? r.colds : r.cold ? [r.cold] : [])
const coldWall = (r: ToolResult) => median(coldsOf(r).map((b) => b.wallMs))
const coldCpu = (r: ToolResult) => median(coldsOf(r).map((b) => b.cpuS))
/** `of`'s cold builds over `base`'s, pair by pair (the n-th of each, built one after the other) */
function pairRatios(of: ToolResult, base: ToolResult, field: 'wallMs' | 'cpuS'): number[] {
  return ratiosOf(coldsOf(of).map((b) => b[field]), coldsOf(base).map((b) => b[field]))
}

function render(results: ToolResult[], info: RunInfo): string {
  const by = (n: ToolName) => results.find((r) => r.name === n && r.cold)
  const plainRes = by('cargo')
  const plain = plainRes?.cold
  const coldReps = info.coldReps ?? 1
  const coldVs = (r: ToolResult, field: 'wallMs' | 'cpuS') => (plainRes ? median(pairRatios(r, plainRes, field)) : undefined)
  const warmOf = (r: ToolResult | undefined) => (r && r.warm.length ? median(r.warm.map((w) => w.wallMs)) : undefined)
  const warmCpuOf = (r: ToolResult | undefined) => (r && r.warm.length ? median(r.warm.map((w) => w.cpuS)) : undefined)
  const rows = results.map((r) => {
    if (!r.cold) return [r.name, r.skipped ?? r.failed ?? '-', '', '', '', '', '', '']
    const w = r.warm.at(-1)
    const foreign = coldsOf(r).map((b) => b.foreignCpuS).filter((x) => x !== undefined)
    return [
      r.name, fmtSec(coldWall(r)), plain ? fmtPct(coldVs(r, 'wallMs')) : '-', `${coldCpu(r).toFixed(0)} s`,
      r.name === 'cargo' ? '-' : fmtSec(warmOf(r)), r.name === 'cargo' ? '-' : `${warmCpuOf(r)?.toFixed(0) ?? '-'} s`,
      w?.counts ? `${w.counts.hits}/${w.counts.misses}/${w.counts.uncacheable}` : '-',
      foreign.length ? `${median(foreign).toFixed(0)} s` : '-'
    ]
  })
  const header = ['tool', 'cold build', 'cold vs cargo', 'cold CPU', 'warm build (median)', 'warm CPU', 'warm hits/misses/not cacheable', 'foreign CPU (cold)']
  const mesh = by('meshcc')
  const sc = by('sccache')
  const coldOverhead = mesh?.cold && plain ? coldVs(mesh, 'wallMs') : undefined
  const warmRatio = warmOf(mesh) !== undefined && warmOf(sc) !== undefined ? warmOf(mesh)! / warmOf(sc)! : undefined
  const meshWarm = mesh?.warm.at(-1)
  const same = meshWarm && plain ? meshWarm.identical ?? [...plain.outputs].filter(([n, h]) => meshWarm.outputs.get(n) === h).length : undefined
  // CPU seconds (cargo, rustc, the tool's server) do not depend on what else the machine runs
  const coldCpuOverhead = mesh?.cold && plain ? coldVs(mesh, 'cpuS') : undefined
  const warmCpuRatio = warmCpuOf(mesh) !== undefined && warmCpuOf(sc) !== undefined ? warmCpuOf(mesh)! / warmCpuOf(sc)! : undefined
  const verdict = (x: number | undefined, limit: number) => (x === undefined ? '-' : x <= limit ? 'met' : 'missed')
  const targets = [
    ['cold build overhead, meshcc over plain cargo (wall)', fmtPct(coldOverhead), `at most ${fmtPct(TARGETS.coldOverhead)}`, verdict(coldOverhead, TARGETS.coldOverhead)],
    ['cold build overhead, meshcc over plain cargo (CPU)', fmtPct(coldCpuOverhead), `at most ${fmtPct(TARGETS.coldOverhead)}`, verdict(coldCpuOverhead, TARGETS.coldOverhead)],
    ['warm `cargo clean && cargo build`, meshcc / sccache (wall)', fmtRatio(warmRatio), `at most ${fmtRatio(TARGETS.warmVsSccache)}`, verdict(warmRatio, TARGETS.warmVsSccache)],
    ['warm `cargo clean && cargo build`, meshcc / sccache (CPU)', fmtRatio(warmCpuRatio), `at most ${fmtRatio(TARGETS.warmVsSccache)}`, verdict(warmCpuRatio, TARGETS.warmVsSccache)]
  ]
  const dist = by('meshcc-dist')
  if (dist?.cold && plain) {
    const r = dist.cold.wallMs / plain.wallMs
    targets.push([`cold build over ${DIST_BUILDERS} builder daemons (meshcc-dist) / plain cargo (wall)`, fmtRatio(r), 'no target (one machine)', '-'])
  }
  const crates = plain?.crates ?? mesh?.cold?.crates
  let md = `# Rust benchmark${info.quick ? ' (quick)' : ''}\n\n`
  md += `\`npm run bench:rust${info.quick ? ' -- --quick' : ''}\`: \`cargo build\` of a program with ${info.quick ? QUICK_DEPS : DEPS.length} direct dependencies, ${crates ?? '?'} crates compiled in all (Debian's librust-*-dev crates, offline), debug profile, CARGO_INCREMENTAL=0, cargo -j${info.jobs}; ${info.rustc}; ${info.sccache}. Cold: empty cache, clean target directory${coldReps > 1 ? `; ${coldReps} cold builds per tool, alternated between the tools, the median of each, and \`cold vs cargo\` the median of the per-pair ratios` : ''}. Warm: \`cargo clean && cargo build\` with the cache the cold build filled, median of ${info.reps}.${info.toolchainKnown ? ' Each meshcc cold build\'s daemon started knowing the toolchain\'s file hashes (--toolchain-known).' : ''}${info.baseline ? ` meshcc-base: the build in ${info.baseline}.` : ''}\n\n`
  md += markdownTable(header, rows) + '\n\n'
  md += markdownTable(['figure', 'measured', 'target', ''], targets) + '\n\n'
  if (coldReps > 1) {
    md += `Cold builds in the order they ran (wall, CPU, foreign CPU), and each pair's ratio to plain cargo's (wall, CPU):\n\n`
    for (const r of results.filter((x) => x.cold)) {
      const builds = coldsOf(r).map((b) => `${fmtSec(b.wallMs)} / ${b.cpuS.toFixed(1)} s${b.serverOwnCpuS !== undefined ? ` (daemon's own ${b.serverOwnCpuS.toFixed(1)} s)` : ''} / ${b.foreignCpuS?.toFixed(0) ?? '-'} s`).join(', ')
      const ratios = plainRes && r !== plainRes ? `; vs cargo ${pairRatios(r, plainRes, 'wallMs').map(fmtPct).join(', ')} (wall), ${pairRatios(r, plainRes, 'cpuS').map(fmtPct).join(', ')} (CPU)` : ''
      md += `- ${r.name}: ${builds}${ratios}\n`
    }
    md += '\n'
  }
  if (same !== undefined) md += `Outputs: ${same} of ${plain!.outputCount ?? plain!.outputs.size} rlib/rmeta files of meshcc's warm build are byte-identical to plain cargo's.\n\n`
  if (dist?.cold && plain) {
    const distSame = dist.cold.identical ?? [...plain.outputs].filter(([n, h]) => dist.cold!.outputs.get(n) === h).length
    md += `meshcc-dist: ${DIST_BUILDERS} builder daemons on 127.0.0.1, each its own config dir and bubblewrap sandbox, sharing this machine's ${cpus().length} cores, and a client daemon with local_slots = 0 (bench-dist's farm); its CPU counts the builders' trees (the rustc jobs). Its cold build's outputs: ${distSame} of ${plain.outputCount ?? plain.outputs.size} rlib/rmeta files byte-identical to plain cargo's. Counters of its cold build: ${dist.cold.counts ? `${countsLine(dist.cold.counts)}; ${Object.entries(dist.cold.counts.extra).map(([k, v]) => `${k} ${v}`).join(', ')}` : '-'}.\n\n`
  }
  md += 'Hits/misses/not cacheable are each tool\'s own counters for the last warm build (rustc calls: bin, proc-macro and build-script crates and cargo\'s queries are not cacheable for either tool). Foreign CPU is what other processes on the machine used during the cold build: a large figure makes that wall time untrustworthy.\n\n'
  md += '```\n' + textTable(header, rows) + '\n```\n'
  return md
}

process.on('SIGINT', () => {
  killRunningChildren()
  process.exit(130)
})
main().then((code) => process.exit(code), (err: unknown) => {
  process.stderr.write(`[bench:rust] ${err instanceof BenchError ? err.message : (err as Error).stack ?? String(err)}\n`)
  killRunningChildren()
  process.exit(1)
})
