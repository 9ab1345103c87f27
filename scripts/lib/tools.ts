// The compilers/caches compared by the cache benchmark, each isolated in its own temp dir:
// plain gcc, meshcc (launcher + daemon), ccache, sccache (client + server).
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { cpuSecondsOf, fail, ownCpuSecondsOf, findPidsByEnv, freePort, isAlive, run, sleep } from './proc.js'
import { processAlive } from '../../src/util/pid-lock.js'
import { treeCpuSeconds } from './dist-bench-proc.js'

/** Hit/miss counts in one shape for every tool. */
export interface CacheCounts {
  requests: number
  hits: number
  misses: number
  /** calls the tool did not try to cache (links, preprocess-only, conftest probes, …) */
  uncacheable: number
  /** anything else worth showing (fallbacks, errors, reasons) */
  extra: Record<string, number>
}

export interface Tool {
  name: string
  /** the CC value given to make, e.g. `ccache gcc` */
  cc: string
  /** environment for make and for single compiles */
  env: NodeJS.ProcessEnv
  /** start the server if any; throws a one-line reason when the tool cannot run */
  start(): Promise<void>
  zero(): Promise<void>
  counts(): Promise<CacheCounts | undefined>
  /** CPU seconds of the tool's server (with its reaped children: the compilers it ran) */
  serverCpu(): number | undefined
  /** CPU seconds of the server process itself, without the compilers it ran (where known) */
  serverOwnCpu?(): number | undefined
  /** stop the server if it was started; never throws */
  stop(): Promise<void>
}

/** Environment with every cache tool's own variables removed, plus the given ones. */
export function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(CCACHE_|SCCACHE_|MESHCC_|RUSTC_WRAPPER)/.test(k)) continue
    if (['CC', 'CXX', 'CFLAGS', 'MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'ARCH', 'CROSS_COMPILE', 'O', 'KBUILD_OUTPUT'].includes(k)) continue
    env[k] = v
  }
  return { ...env, ...extra }
}

const CMD_TIMEOUT = 60_000

export function plainGcc(base: Record<string, string>): Tool {
  return {
    name: 'gcc',
    cc: 'gcc',
    env: cleanEnv(base),
    async start() {},
    async zero() {},
    async counts() {
      return undefined
    },
    serverCpu: () => 0,
    async stop() {}
  }
}

export function ccacheTool(base: Record<string, string>, tmp: string): Tool {
  const dir = join(tmp, 'ccache')
  const env = cleanEnv({ ...base, CCACHE_DIR: dir, CCACHE_MAXSIZE: '10G', CCACHE_CONFIGPATH: join(tmp, 'ccache.conf') })
  const ccache = async (...args: string[]) => {
    const r = await run('ccache', args, { env, timeoutMs: CMD_TIMEOUT })
    if (r.code !== 0) fail(`ccache ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim().split('\n')[0]}`)
    return r.stdout
  }
  const UNCACHEABLE = [
    'autoconf_test', 'bad_compiler_arguments', 'called_for_link', 'called_for_preprocessing', 'compile_failed',
    'compiler_produced_empty_output', 'compiler_produced_no_output', 'compiler_produced_stdout', 'could_not_find_compiler',
    'could_not_use_modules', 'could_not_use_precompiled_header', 'multiple_source_files', 'no_input_file',
    'output_to_stdout', 'preprocessor_error', 'unsupported_code_directive', 'unsupported_compiler_option',
    'unsupported_environment_variable', 'unsupported_source_language', 'bad_output_file', 'internal_error',
    'missing_cache_file', 'recache', 'error_hashing_extra_file', 'compiler_check_failed', 'disabled', 'modified_input_file'
  ]
  return {
    name: 'ccache',
    cc: 'ccache gcc',
    env,
    async start() {
      mkdirSync(dir, { recursive: true })
      writeFileSync(join(tmp, 'ccache.conf'), '') // no user/system config leaks in
      await ccache('--version')
    },
    async zero() {
      await ccache('-z')
    },
    async counts() {
      const out = await ccache('--print-stats')
      const s: Record<string, number> = {}
      for (const line of out.split('\n')) {
        const [k, v] = line.split('\t')
        if (k && v !== undefined && /^\d+$/.test(v.trim())) s[k] = Number(v)
      }
      const hits = (s.direct_cache_hit ?? 0) + (s.preprocessed_cache_hit ?? 0)
      const misses = s.cache_miss ?? 0
      const extra: Record<string, number> = {}
      let uncacheable = 0
      for (const k of UNCACHEABLE) {
        if (s[k]) {
          uncacheable += s[k]!
          extra[k] = s[k]!
        }
      }
      if (s.direct_cache_hit) extra.direct_cache_hit = s.direct_cache_hit
      if (s.preprocessed_cache_hit) extra.preprocessed_cache_hit = s.preprocessed_cache_hit
      for (const k of ['remote_storage_hit', 'remote_storage_miss', 'remote_storage_error', 'remote_storage_timeout']) if (s[k]) extra[k] = s[k]!
      return { requests: hits + misses + uncacheable, hits, misses, uncacheable, extra }
    },
    serverCpu: () => 0,
    async stop() {}
  }
}

/** Sum a sccache counter that is either a number or {counts: {lang: n}}. */
function sccacheCount(v: unknown): number {
  if (typeof v === 'number') return v
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>
    const inner = (o.counts ?? o) as Record<string, unknown>
    return Object.values(inner).reduce<number>((a, x) => a + (typeof x === 'number' ? x : 0), 0)
  }
  return 0
}

export async function sccacheTool(base: Record<string, string>, tmp: string): Promise<Tool> {
  const dir = join(tmp, 'sccache')
  const port = await freePort()
  const env = cleanEnv({
    ...base,
    SCCACHE_DIR: dir,
    SCCACHE_CACHE_SIZE: '10G',
    SCCACHE_SERVER_PORT: String(port),
    SCCACHE_IDLE_TIMEOUT: '0',
    SCCACHE_CONF: join(tmp, 'sccache.toml') // does not exist: no user config leaks in
  })
  let started = false
  let serverPid: number | undefined
  const sccache = (...args: string[]) => run('sccache', args, { env, timeoutMs: CMD_TIMEOUT })
  return {
    name: 'sccache',
    cc: 'sccache gcc',
    env,
    async start() {
      mkdirSync(dir, { recursive: true })
      const r = await sccache('--start-server')
      if (r.code !== 0) fail(`sccache --start-server failed: ${(r.stderr || r.stdout).trim().split('\n').pop()}`)
      started = true
      for (let i = 0; i < 20 && !(serverPid && holdsListener(serverPid, port)); i++) {
        serverPid = findPidsByEnv('SCCACHE_DIR', dir, ['sccache'])[0]
        if (!(serverPid && holdsListener(serverPid, port))) await sleep(100)
      }
      if (!serverPid || !holdsListener(serverPid, port)) fail(`sccache: after --start-server no sccache process with SCCACHE_DIR=${dir} listens on port ${port}`)
    },
    async zero() {
      const r = await sccache('-z')
      if (r.code !== 0) fail(`sccache -z failed: ${r.stderr.trim()}`)
    },
    async counts() {
      const r = await sccache('--show-stats', '--stats-format', 'json')
      if (r.code !== 0) fail(`sccache --show-stats failed: ${r.stderr.trim()}`)
      const s = (JSON.parse(r.stdout) as { stats: Record<string, unknown> }).stats
      const hits = sccacheCount(s.cache_hits)
      const misses = sccacheCount(s.cache_misses)
      const requests = sccacheCount(s.compile_requests)
      const extra: Record<string, number> = {}
      for (const k of ['requests_unsupported_compiler', 'requests_not_compile', 'requests_not_cacheable', 'non_cacheable_compilations', 'compile_fails', 'cache_errors', 'cache_read_errors', 'cache_write_errors', 'cache_timeouts', 'forced_recaches']) {
        const n = sccacheCount(s[k])
        if (n) extra[k] = n
      }
      for (const [reason, n] of Object.entries((s.not_cached ?? {}) as Record<string, number>)) extra[`not_cached: ${reason}`] = n
      return { requests, hits, misses, uncacheable: requests - hits - misses, extra }
    },
    serverCpu: () => {
      if (!serverPid) return undefined
      // A server that died is started again by the next `sccache gcc` (a new pid, its CPU from
      // zero), or not at all: either way the build's figure would lack the compiles it ran.
      if (!processAlive(serverPid) || !holdsListener(serverPid, port)) {
        fail(`sccache: the server (pid ${serverPid}) ${processAlive(serverPid) ? 'no longer listens on' : 'is gone from'} port ${port}: the compiles it ran cannot be counted in the build's CPU`)
      }
      return cpuSecondsOf(serverPid)
    },
    async stop() {
      if (!started) return
      started = false
      await sccache('--stop-server').catch(() => undefined)
      if (serverPid && isAlive(serverPid)) {
        await sleep(1000)
        if (isAlive(serverPid)) process.kill(serverPid, 'SIGKILL')
      }
    }
  }
}

/** The `meshcc` users run: the native launcher, or a link to the Node CLI where no C compiler built it. */
export const MESHCC_MAIN = fileURLToPath(new URL('../../dist/bin/meshcc', import.meta.url))

/**
 * meshcc through its launcher `dist/bin/meshcc`, daemon config in a temp TOML.
 * `meshBin` is the launcher path; the caller checks that it exists.
 */
export function meshccTool(base: Record<string, string>, tmp: string, meshBin: string): Tool {
  const conf = join(tmp, 'meshcc.toml')
  const cacheDir = join(tmp, 'meshcc-cache')
  const socket = join(tmp, 'd.sock')
  const env = cleanEnv({ ...base, MESHCC_CONF: conf })
  let started = false
  let daemonPid: number | undefined
  const meshcc = (...args: string[]) => run(meshBin, args, { env, timeoutMs: CMD_TIMEOUT })
  const lastLine = (r: { stdout: string; stderr: string }) => (r.stderr.trim() || r.stdout.trim()).split('\n').pop() ?? ''
  return {
    name: 'meshcc',
    cc: `${meshBin} gcc`,
    env,
    async start() {
      writeFileSync(
        conf,
        [
          '[daemon]', `socket = "${socket}"`, 'idle_timeout = 0',
          '[cache]', `dir = "${cacheDir}"`, 'size = "10G"',
          '[log]', 'level = "warn"',
          '[mesh]', 'enabled = false', ''
        ].join('\n')
      )
      const r = await meshcc('--start-server')
      if (r.code !== 0) fail(`meshcc --start-server failed (exit ${r.code}): ${lastLine(r)}`)
      started = true
      for (let i = 0; i < 20 && !daemonPid; i++) {
        daemonPid = findPidsByEnv('MESHCC_CONF', conf, ['node', 'main.js', 'meshcc'])[0]
        if (!daemonPid) await sleep(100)
      }
    },
    async zero() {
      const r = await meshcc('-z')
      if (r.code !== 0) fail(`meshcc -z failed (exit ${r.code}): ${lastLine(r)}`)
    },
    async counts() {
      const r = await meshcc('-s', '--stats-format', 'json')
      if (r.code !== 0) fail(`meshcc -s failed (exit ${r.code}): ${lastLine(r)}`)
      let s: Record<string, unknown>
      try {
        s = JSON.parse(r.stdout) as Record<string, unknown>
      } catch {
        fail(`meshcc -s --stats-format json printed no JSON: ${r.stdout.slice(0, 200)}`)
      }
      const num = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : 0)
      const extra: Record<string, number> = {}
      for (const k of ['local_compiles', 'remote_compiles', 'compile_failures', 'fallbacks', 'cache_errors', 'cache_writes']) if (num(k)) extra[k] = num(k)
      for (const [key, label] of [['non_cacheable_reasons', 'non-cacheable'], ['fallback_reasons', 'fallback']] as const) {
        for (const [reason, n] of Object.entries((s[key] ?? {}) as Record<string, number>)) extra[`${label}: ${reason}`] = n
      }
      return { requests: num('compile_requests'), hits: num('cache_hits'), misses: num('cache_misses'), uncacheable: num('non_cacheable'), extra }
    },
    serverCpu: () => {
      if (!daemonPid) return undefined
      // A daemon that died and was started again by a launcher would take its CPU with it: the
      // build's figure would silently lack the compiles (stats.json keeps the counters whole).
      const holder = readPidLock(`${socket}.pid`)
      if (!processAlive(daemonPid) || holder !== daemonPid) {
        fail(`meshcc: the daemon (pid ${daemonPid}) is gone, the socket's lock names ${holder ?? 'nobody'}; its log says: ${logProblems(join(cacheDir, 'meshcc.log'))}`)
      }
      // the whole tree: the daemon starts compilers through dist/bin/meshcc-spawn, which reaps
      // them, so their CPU sits in that live helper's counters, not in the daemon's own
      return treeCpuSeconds(daemonPid)
    },
    serverOwnCpu: () => (daemonPid ? ownCpuSecondsOf(daemonPid) : undefined),
    async stop() {
      if (!started) return
      started = false
      await meshcc('--stop-server').catch(() => undefined)
      if (daemonPid) {
        for (let i = 0; i < 50 && isAlive(daemonPid); i++) await sleep(100)
        if (isAlive(daemonPid)) process.kill(daemonPid, 'SIGKILL')
      }
    }
  }
}

/** Why meshcc cannot be benchmarked, or undefined when its launcher is there. */
export function meshccMissing(meshBin: string): string | undefined {
  if (!existsSync(meshBin)) return `${meshBin} is missing (run \`npm run build\` first)`
  for (const f of ['launcher/launcher.js', 'daemon/daemon.js']) {
    if (!existsSync(join(meshBin, '..', '..', f))) return `dist/${f} is missing (run \`npm run build\` first)`
  }
  return undefined
}

/** Whether process `pid` holds the TCP socket listening on `port` (IPv4 or IPv6). */
function holdsListener(pid: number, port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, '0')
  const inodes = new Set<string>()
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = ''
    try { text = readFileSync(table, 'utf8') } catch { continue }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st … inode: local "ADDR:PORT", state 0A is LISTEN
      const f = line.trim().split(/\s+/)
      if (f[1]?.endsWith(`:${hex}`) && f[3] === '0A' && f[9]) inodes.add(f[9])
    }
  }
  if (inodes.size === 0) return false
  try {
    return readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try { return inodes.has(/^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1] ?? '') } catch { return false }
    })
  } catch {
    return false
  }
}

/** The pid a pid lock file names, or null. */
export function readPidLock(file: string): number | null {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim().split(/\s+/)[0])
    return Number.isInteger(pid) && pid > 0 ? pid : null
  } catch {
    return null
  }
}

/** The last WARN/ERROR lines of a daemon log, one line. */
function logProblems(file: string): string {
  try {
    const lines = readFileSync(file, 'utf8').split('\n').filter((l) => /\b(WARN|ERROR)\b/i.test(l))
    return lines.slice(-5).join(' | ') || 'no WARN/ERROR line'
  } catch {
    return `no log at ${file}`
  }
}
