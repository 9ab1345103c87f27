// One typed configuration for every part of meshcc: defaults, then the TOML file
// (~/.config/meshcc/config.toml or MESHCC_CONF), then environment variables.
// Kept free of heavy imports: the per-compile launcher loads it too.
import { existsSync, readFileSync } from 'node:fs'
import { homedir, availableParallelism, totalmem, userInfo } from 'node:os'
import { join, resolve, dirname } from 'node:path'
import { parse as parseToml } from 'smol-toml'
import { checkRemoteUrl } from './cache/tiers/remote-url.js'

export type LogLevel = 'error' | 'warn' | 'info' | 'debug'
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug']

export interface Config {
  /** the file the settings came from, or null when none exists (defaults only) */
  file: string | null
  /** every key's effective value and where it came from (`meshcc -p`, reloads) */
  sources: ConfigSource[]
  /** directory of the config file: identity and mesh key live beside it by default */
  configDir: string
  daemon: {
    socket: string
    /** seconds without a request before a daemon that is not in a mesh exits; 0 = never */
    idleTimeout: number
    /**
     * the same for a daemon in a mesh; 0 (the default) = stay up: the other members count on it
     * as a builder, and nothing would start it again
     */
    meshIdleTimeout: number
  }
  cache: {
    dir: string
    /** bytes */
    size: number
    /** direct mode: find hits from the included files' hashes, without running the preprocessor */
    direct: boolean
    /** use the mesh as one shared cache: misses are looked up at the members, results published to them */
    shared: boolean
    /** bytes of entries this member holds for the others (<cache dir>/shared); 0 = it holds none */
    sharedSize: number
    /** whose entries this machine accepts: any member ("mesh"), only its own ("self"), or these peer IDs (and its own) */
    trust: 'mesh' | 'self' | string[]
    /** the share (0 to 1) of remote hits and remote compiles recompiled here in the background and compared */
    verifyRate: number
    /** a second tier behind the mesh: "redis://…" or "http(s)://…" (ccache's HTTP storage layout); "" = none */
    remote: string
  }
  log: { level: LogLevel }
  build: {
    /** compiles this machine runs for itself at once; 0 = every miss to the mesh when a peer can take it */
    localSlots: number
    /** cores offered to the mesh */
    cores: number
    /** whether this machine compiles for others */
    offer: 'always' | 'idle' | 'never'
    /** how remote jobs are isolated; "none" must be chosen explicitly */
    sandbox: 'bwrap' | 'none'
    /** bytes of received toolchains kept */
    toolchainCacheSize: number
    /** compiler path → toolchain archive to ship instead of discovering one (cross/custom toolchains) */
    toolchainArchives: Record<string, string>
    /** wall-clock limit of one remote job, seconds */
    jobTimeout: number
    /** bytes one remote job may write: its working directory and TMPDIR together (a tmpfs, so memory) */
    jobDisk: number
    /** address space of each of one remote job's processes, bytes (RLIMIT_AS) */
    jobMemory: number
    /** the speed score this machine advertises; 0 = measure it at start */
    speed: number
  }
  mesh: {
    enabled: boolean
    listen: string[]
    bootstrap: string[]
    mdns: boolean
    dht: boolean
    keyFile: string
    identityFile: string
    allow: string[]
    deny: string[]
    name: string
    /** addresses to advertise that this node cannot see on its interfaces (1:1 NAT, a port forward) */
    announce: string[]
    /** serve as a circuit relay for members that cannot be reached (only asked of when this node is reachable) */
    relay: boolean
    /** members one relay serves at once */
    relayMaxReservations: number
    /** bytes per second one member may push through this node's relay; 0 = no bound */
    relayRate: number
    /** reserve relay slots on reachable members when this node cannot be reached from other networks */
    relayClient: boolean
    /** when other networks cannot reach this node, ask the router (UPnP-IGD, NAT-PMP) to forward a port to it */
    portMapping: boolean
  }
  shim: {
    enabled: boolean
    listen: string
  }
}

/** One key's effective value and its origin: "default", the config file's path, or an environment variable's name. */
export interface ConfigSource { section: string; key: string; value: string; origin: string }

/** One clear line for the user: which file, which key, what is wrong. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ConfigError'
  }
}

export const DEFAULT_MESH_PORT = 10650
/** the smallest cache or toolchain cache: zero or a few bytes is a mistake (tests use a few hundred KiB) */
export const MIN_CACHE_BYTES = 64 * 1024
/** [cache] shared_size: room for the entries this member holds for the others */
export const DEFAULT_SHARED_SIZE = 2 * 1024 ** 3
/** [cache] verify_rate: one remote result in a hundred is recompiled here and compared */
export const DEFAULT_VERIFY_RATE = 0.01
/** IPv4 and IPv6 (a machine without IPv6 starts on IPv4 alone: libp2p lets the IPv6 listener fail) */
export const DEFAULT_MESH_LISTEN = [`/ip4/0.0.0.0/tcp/${DEFAULT_MESH_PORT}`, `/ip6/::/tcp/${DEFAULT_MESH_PORT}`]
/** [mesh] relay_rate: bytes per second one member may push through a relay (a compile job is rarely above 1 MiB) */
export const DEFAULT_RELAY_RATE = 4 * 1024 ** 2
/** seconds: a daemon without a mesh exits after this long without a request */
export const DEFAULT_IDLE_TIMEOUT = 600
export const DEFAULT_SHIM_LISTEN = '127.0.0.1:10600'
/** [build] job_disk: room for a compile's own writes (its object, at most 256 MiB, and an assembler temp file) */
export const DEFAULT_JOB_DISK = 1024 ** 3
const GIB = 1024 ** 3
/**
 * [build] job_memory: one and a half shares of the machine's memory per offered core (the jobs
 * seldom peak at once), at least 1 GiB (ordinary -O2 -g C++ units need that), at most 4 GiB
 * (the heaviest common units peak at 2-3 GiB; one that needs more is compiled by its client).
 */
export function defaultJobMemory(cores: number, memory = totalmem()): number {
  const share = Math.floor((memory * 1.5) / Math.max(1, cores) / 1048576) * 1048576
  return Math.min(4 * GIB, Math.max(GIB, share))
}

export function expandHome(p: string): string {
  if (p === '~') return homedir()
  if (p.startsWith('~/')) return join(homedir(), p.slice(2))
  return p
}

function defaultConfigDir(env: NodeJS.ProcessEnv): string {
  const base = env.XDG_CONFIG_HOME && env.XDG_CONFIG_HOME !== '' ? env.XDG_CONFIG_HOME : join(homedir(), '.config')
  return join(base, 'meshcc')
}

function defaultCacheDir(env: NodeJS.ProcessEnv): string {
  const base = env.XDG_CACHE_HOME && env.XDG_CACHE_HOME !== '' ? env.XDG_CACHE_HOME : join(homedir(), '.cache')
  return join(base, 'meshcc')
}

function defaultSocket(env: NodeJS.ProcessEnv): string {
  const runtime = env.XDG_RUNTIME_DIR
  if (runtime && runtime !== '') return join(runtime, 'meshcc', 'daemon.sock')
  return join('/tmp', `meshcc-${userInfo().uid}`, 'daemon.sock')
}

/**
 * Sizes are binary whatever the spelling: "10G", "10GB" and "10GiB" are all 10 × 1024³ bytes.
 * (Two conventions, where "10 GB" meant 9.3 GiB and "10G" 10 GiB, surprised users.)
 */
const SIZE_UNITS: Record<string, number> = {
  K: 1024, KB: 1024, KIB: 1024,
  M: 1024 ** 2, MB: 1024 ** 2, MIB: 1024 ** 2,
  G: 1024 ** 3, GB: 1024 ** 3, GIB: 1024 ** 3,
  T: 1024 ** 4, TB: 1024 ** 4, TIB: 1024 ** 4
}

/**
 * "10G", "500M", "1.5GiB", "4096" (bytes) → bytes; null when the text is not a size. A
 * fraction needs a unit: "1.5" bytes is a mistake, not a size.
 */
export function parseSize(text: string | number): number | null {
  if (typeof text === 'number') return Number.isSafeInteger(text) && text >= 0 ? text : null
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text)
  if (!m) return null
  const unitText = m[2].toUpperCase()
  if (unitText === '' || unitText === 'B') return /^\d+$/.test(m[1]) ? Number(m[1]) : null
  const unit = SIZE_UNITS[unitText]
  if (unit === undefined) return null
  return Math.floor(Number(m[1]) * unit)
}

export function formatSize(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = bytes
  let i = 0
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return i === 0 ? `${bytes} bytes` : `${v.toFixed(1)} ${units[i]}`
}

type Table = Record<string, unknown>

/** Reads typed values out of one TOML table, reporting wrong types and unknown keys. */
class Section {
  private readonly seen = new Set<string>()
  constructor(private readonly file: string, private readonly name: string, private readonly table: Table, private readonly sources: ConfigSource[]) {}

  private where(key: string): string { return `${this.file}: [${this.name}] ${key}` }

  private take(key: string): unknown {
    this.seen.add(key)
    return this.table[key]
  }

  /** Remember the key's effective value and whether the file set it. */
  private note<T>(key: string, value: T, fromFile: boolean, shown: string = showValue(value)): T {
    this.sources.push({ section: this.name, key, value: shown, origin: fromFile ? this.file : 'default' })
    return value
  }

  string(key: string, fallback: string): string {
    const v = this.take(key)
    if (v === undefined) return this.note(key, fallback, false)
    if (typeof v !== 'string') throw new ConfigError(`${this.where(key)}: expected a string, got ${describe(v)}`)
    return this.note(key, v, true)
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.take(key)
    if (v === undefined) return this.note(key, fallback, false)
    if (typeof v !== 'boolean') throw new ConfigError(`${this.where(key)}: expected true or false, got ${describe(v)}`)
    return this.note(key, v, true)
  }

  int(key: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
    const v = this.take(key)
    if (v === undefined) return this.note(key, fallback, false)
    const n = typeof v === 'bigint' ? Number(v) : v
    if (typeof n !== 'number' || !Number.isInteger(n)) throw new ConfigError(`${this.where(key)}: expected a whole number, got ${describe(v)}`)
    if (n < min || n > max) throw new ConfigError(`${this.where(key)}: ${n} is out of range (${min} to ${max})`)
    return this.note(key, n, true)
  }

  /** A size in bytes (see parseSize), at least `min`. */
  size(key: string, fallback: number, min = 1): number {
    const v = this.take(key)
    if (v === undefined) return this.note(key, fallback, false, formatSize(fallback))
    const n = typeof v === 'bigint' ? Number(v) : v
    const bytes = typeof n === 'string' || typeof n === 'number' ? parseSize(n) : null
    if (bytes === null) {
      const fraction = (typeof n === 'number' && !Number.isInteger(n)) || (typeof n === 'string' && /^\s*\d+\.\d*\s*b?\s*$/i.test(n))
      throw new ConfigError(`${this.where(key)}: ${fraction ? `${describe(v)} has no unit (a fraction of a byte?); write e.g. "1.5G"` : `expected a size such as "10G" or "500M", got ${describe(v)}`}`)
    }
    if (bytes < min) throw new ConfigError(`${this.where(key)}: ${describe(v)} is too small (at least ${formatSize(min)})`)
    return this.note(key, bytes, true, `${formatSize(bytes)} (${typeof v === 'string' ? JSON.stringify(v) : String(v)})`)
  }

  stringList(key: string, fallback: string[]): string[] {
    const v = this.take(key)
    if (v === undefined) return this.note(key, fallback, false)
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw new ConfigError(`${this.where(key)}: expected a list of strings, got ${describe(v)}`)
    return this.note(key, v as string[], true)
  }

  /** a sub-table of strings, e.g. toolchain_archives = { "/opt/x/bin/gcc" = "/opt/x/gcc.tar.gz" } */
  stringTable(key: string): Record<string, string> {
    const v = this.take(key)
    if (v === undefined) return this.note(key, {}, false)
    if (v === null || typeof v !== 'object' || Array.isArray(v) || Object.values(v).some((x) => typeof x !== 'string')) {
      throw new ConfigError(`${this.where(key)}: expected a table of strings such as { "/opt/cross/bin/gcc" = "/opt/cross/gcc.tar.gz" }, got ${describe(v)}`)
    }
    return this.note(key, v as Record<string, string>, true)
  }

  /** a number from 0 to 1 (a share, a rate) */
  fraction(key: string, fallback: number): number {
    const v = this.take(key)
    if (v === undefined) return this.note(key, fallback, false)
    const n = typeof v === 'bigint' ? Number(v) : v
    if (typeof n !== 'number' || !Number.isFinite(n)) throw new ConfigError(`${this.where(key)}: expected a number from 0 to 1, got ${describe(v)}`)
    if (n < 0 || n > 1) throw new ConfigError(`${this.where(key)}: ${n} is out of range (0 to 1; 0.01 is one in a hundred)`)
    return this.note(key, n, true)
  }

  /** one of `words`, or a list of strings (e.g. trust = "mesh" or trust = ["12D3Koo…"]) */
  wordOrList<T extends string>(key: string, fallback: T, words: readonly T[]): T | string[] {
    const v = this.take(key)
    if (v === undefined) return this.note(key, fallback, false)
    if (typeof v === 'string') {
      if (!(words as readonly string[]).includes(v)) throw new ConfigError(`${this.where(key)}: "${v}" is not one of ${words.join(', ')}, nor a list of peer IDs`)
      return this.note(key, v as T, true)
    }
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw new ConfigError(`${this.where(key)}: expected ${words.map((w) => `"${w}"`).join(' or ')} or a list of peer IDs, got ${describe(v)}`)
    return this.note(key, v as string[], true)
  }

  oneOf<T extends string>(key: string, fallback: T, allowed: readonly T[]): T {
    const v = this.string(key, fallback)
    if (!(allowed as readonly string[]).includes(v)) throw new ConfigError(`${this.where(key)}: "${v}" is not one of ${allowed.join(', ')}`)
    return v as T
  }

  /** Call after reading every known key: any key left over is a mistake worth reporting. */
  done(): void {
    for (const key of Object.keys(this.table)) {
      if (!this.seen.has(key)) throw new ConfigError(`${this.file}: unknown key [${this.name}] ${key}`)
    }
  }
}

/** A value as `meshcc -p` shows it: TOML-like. */
function showValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v)
  if (Array.isArray(v)) return `[${v.map(showValue).join(', ')}]`
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v)
    return entries.length === 0 ? '{}' : `{ ${entries.map(([k, x]) => `${JSON.stringify(k)} = ${showValue(x)}`).join(', ')} }`
  }
  return String(v)
}

/** An environment variable replaced a key's value: say so in its source. */
function overridden(sources: ConfigSource[], section: string, key: string, value: unknown, envName: string, shown = showValue(value)): void {
  const s = sources.find((x) => x.section === section && x.key === key)
  if (s) { s.value = shown; s.origin = envName }
}

function describe(v: unknown): string {
  if (Array.isArray(v)) return 'a list'
  if (v === null) return 'null'
  if (typeof v === 'object') return 'a table'
  if (typeof v === 'string') return `"${v}"`
  return `${typeof v} ${String(v)}`
}

const KNOWN_SECTIONS = ['daemon', 'cache', 'log', 'build', 'mesh', 'shim'] as const

function readToml(file: string): Table {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'ENOENT') return {}
    throw new ConfigError(`${file}: cannot read config (${e.code ?? e.message})`)
  }
  try {
    return parseToml(text) as Table
  } catch (err) {
    const e = err as Error & { line?: number; column?: number }
    const firstLine = String(e.message).split('\n')[0]
    const where = e.line !== undefined ? `line ${e.line}` : 'syntax'
    throw new ConfigError(`${file}: ${where}: ${firstLine.replace(/^Invalid TOML document:\s*/i, '')}`)
  }
}

function envInt(env: NodeJS.ProcessEnv, name: string): number | undefined {
  const v = env[name]
  if (v === undefined || v === '') return undefined
  if (!/^\d+$/.test(v.trim())) throw new ConfigError(`environment ${name}: expected a whole number, got "${v}"`)
  return Number(v.trim())
}

function explicitConfigFile(env: NodeJS.ProcessEnv): string | null {
  return env.MESHCC_CONF && env.MESHCC_CONF !== '' ? resolve(expandHome(env.MESHCC_CONF)) : null
}

/** The config file loadConfig(env) reads. */
export function configFilePath(env: NodeJS.ProcessEnv = process.env): string {
  return explicitConfigFile(env) ?? join(defaultConfigDir(env), 'config.toml')
}

/**
 * Load the configuration. `env` defaults to process.env; tests pass their own.
 * Throws ConfigError with a one-line message on any problem.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const explicit = explicitConfigFile(env)
  const file = configFilePath(env)
  if (explicit !== null && !existsSync(explicit)) {
    throw new ConfigError(`MESHCC_CONF names ${explicit}, which does not exist (unset MESHCC_CONF for the default ${join(defaultConfigDir(env), 'config.toml')}, or create the file)`)
  }
  const doc = readToml(file)
  const exists = Object.keys(doc).length > 0 || explicit !== null
  const configDir = explicit ? dirname(explicit) : defaultConfigDir(env)

  for (const key of Object.keys(doc)) {
    if (!(KNOWN_SECTIONS as readonly string[]).includes(key)) {
      throw new ConfigError(typeof doc[key] === 'object' && !Array.isArray(doc[key])
        ? `${file}: unknown section [${key}]`
        : `${file}: unknown key ${key} (keys belong in a section such as [daemon] or [cache])`)
    }
    if (typeof doc[key] !== 'object' || Array.isArray(doc[key])) throw new ConfigError(`${file}: ${key} must be a section ([${key}])`)
  }
  const sources: ConfigSource[] = []
  const section = (name: string) => new Section(file, name, (doc[name] as Table | undefined) ?? {}, sources)

  const cores = availableParallelism()
  const daemon = section('daemon')
  const cache = section('cache')
  const log = section('log')
  const build = section('build')
  const mesh = section('mesh')
  const shim = section('shim')

  const offered = build.int('cores', cores, 0, 4096)
  const cfg: Config = {
    file: exists ? file : null,
    sources,
    configDir,
    daemon: {
      socket: expandHome(daemon.string('socket', defaultSocket(env))),
      idleTimeout: daemon.int('idle_timeout', DEFAULT_IDLE_TIMEOUT, 0),
      meshIdleTimeout: daemon.int('mesh_idle_timeout', 0, 0)
    },
    cache: {
      dir: expandHome(cache.string('dir', defaultCacheDir(env))),
      size: cache.size('size', 10 * 1024 ** 3, MIN_CACHE_BYTES),
      direct: cache.bool('direct', true),
      shared: cache.bool('shared', true),
      sharedSize: cache.size('shared_size', DEFAULT_SHARED_SIZE, 0),
      trust: cache.wordOrList('trust', 'mesh', ['mesh', 'self'] as const),
      verifyRate: cache.fraction('verify_rate', DEFAULT_VERIFY_RATE),
      remote: cache.string('remote', '')
    },
    log: { level: log.oneOf('level', 'info', LOG_LEVELS) },
    build: {
      localSlots: build.int('local_slots', cores, 0, 4096),
      cores: offered,
      offer: build.oneOf('offer', 'always', ['always', 'idle', 'never'] as const),
      sandbox: build.oneOf('sandbox', 'bwrap', ['bwrap', 'none'] as const),
      toolchainCacheSize: build.size('toolchain_cache_size', 10 * 1024 ** 3, MIN_CACHE_BYTES),
      toolchainArchives: Object.fromEntries(Object.entries(build.stringTable('toolchain_archives')).map(([k, v]) => [expandHome(k), expandHome(v)])),
      jobTimeout: build.int('job_timeout', 600, 1, 86_400),
      jobDisk: build.size('job_disk', DEFAULT_JOB_DISK, 1024 ** 2),
      jobMemory: build.size('job_memory', defaultJobMemory(offered), 16 * 1024 ** 2),
      speed: build.int('speed', 0, 0, 1_000_000)
    },
    mesh: {
      enabled: mesh.bool('enabled', true),
      listen: mesh.stringList('listen', [...DEFAULT_MESH_LISTEN]),
      bootstrap: mesh.stringList('bootstrap', []),
      mdns: mesh.bool('mdns', true),
      dht: mesh.bool('dht', true),
      keyFile: expandHome(mesh.string('key_file', join(configDir, 'mesh.key'))),
      identityFile: expandHome(mesh.string('identity_file', join(configDir, 'identity.key'))),
      allow: mesh.stringList('allow', []),
      deny: mesh.stringList('deny', []),
      name: mesh.string('name', ''),
      announce: mesh.stringList('announce', []),
      relay: mesh.bool('relay', true),
      relayMaxReservations: mesh.int('relay_max_reservations', 32, 0, 1024),
      relayRate: mesh.size('relay_rate', DEFAULT_RELAY_RATE, 0),
      relayClient: mesh.bool('relay_client', true),
      portMapping: mesh.bool('port_mapping', true)
    },
    shim: {
      enabled: shim.bool('enabled', false),
      listen: shim.string('listen', DEFAULT_SHIM_LISTEN)
    }
  }
  for (const s of [daemon, cache, log, build, mesh, shim]) s.done()

  // Environment variables override the file.
  if (env.MESHCC_SOCKET) {
    cfg.daemon.socket = resolve(expandHome(env.MESHCC_SOCKET))
    overridden(sources, 'daemon', 'socket', cfg.daemon.socket, 'MESHCC_SOCKET')
  }
  if (env.MESHCC_DIR) {
    cfg.cache.dir = resolve(expandHome(env.MESHCC_DIR))
    overridden(sources, 'cache', 'dir', cfg.cache.dir, 'MESHCC_DIR')
  }
  if (env.MESHCC_CACHE_SIZE) {
    const bytes = parseSize(env.MESHCC_CACHE_SIZE)
    if (bytes === null) throw new ConfigError(`environment MESHCC_CACHE_SIZE: expected a size such as "10G", got "${env.MESHCC_CACHE_SIZE}"`)
    if (bytes < MIN_CACHE_BYTES) throw new ConfigError(`environment MESHCC_CACHE_SIZE: "${env.MESHCC_CACHE_SIZE}" is too small (at least ${formatSize(MIN_CACHE_BYTES)})`)
    cfg.cache.size = bytes
    overridden(sources, 'cache', 'size', bytes, 'MESHCC_CACHE_SIZE', `${formatSize(bytes)} (${JSON.stringify(env.MESHCC_CACHE_SIZE)})`)
  }
  if (env.MESHCC_DIRECT) {
    const v = env.MESHCC_DIRECT.trim().toLowerCase()
    if (!['0', '1', 'true', 'false'].includes(v)) throw new ConfigError(`environment MESHCC_DIRECT: expected 0 or 1, got "${env.MESHCC_DIRECT}"`)
    cfg.cache.direct = v === '1' || v === 'true'
    overridden(sources, 'cache', 'direct', cfg.cache.direct, 'MESHCC_DIRECT')
  }
  if (env.MESHCC_LOG) {
    const level = env.MESHCC_LOG.toLowerCase()
    if (!(LOG_LEVELS as readonly string[]).includes(level)) throw new ConfigError(`environment MESHCC_LOG: "${env.MESHCC_LOG}" is not one of ${LOG_LEVELS.join(', ')}`)
    cfg.log.level = level as LogLevel
    overridden(sources, 'log', 'level', cfg.log.level, 'MESHCC_LOG')
  }
  const idle = envInt(env, 'MESHCC_IDLE_TIMEOUT')
  if (idle !== undefined) {
    cfg.daemon.idleTimeout = idle
    overridden(sources, 'daemon', 'idle_timeout', idle, 'MESHCC_IDLE_TIMEOUT')
  }
  const meshIdle = envInt(env, 'MESHCC_MESH_IDLE_TIMEOUT')
  if (meshIdle !== undefined) {
    cfg.daemon.meshIdleTimeout = meshIdle
    overridden(sources, 'daemon', 'mesh_idle_timeout', meshIdle, 'MESHCC_MESH_IDLE_TIMEOUT')
  }
  const slots = envInt(env, 'MESHCC_LOCAL_SLOTS')
  if (slots !== undefined) {
    cfg.build.localSlots = slots
    overridden(sources, 'build', 'local_slots', slots, 'MESHCC_LOCAL_SLOTS')
  }

  if (cfg.cache.sharedSize > 0 && cfg.cache.sharedSize < MIN_CACHE_BYTES) {
    throw new ConfigError(`${file}: [cache] shared_size: ${formatSize(cfg.cache.sharedSize)} is too small (0 to hold no entries for others, or at least ${formatSize(MIN_CACHE_BYTES)})`)
  }
  if (cfg.cache.remote !== '') {
    try { checkRemoteUrl(cfg.cache.remote, env) } catch (err) { throw new ConfigError(`${file}: [cache] remote: ${(err as Error).message}`) }
  }
  if (Buffer.byteLength(cfg.daemon.socket) > 100) {
    throw new ConfigError(`${file}: [daemon] socket: path is too long for a unix socket (${Buffer.byteLength(cfg.daemon.socket)} bytes, at most 100): ${cfg.daemon.socket}`)
  }
  return cfg
}
