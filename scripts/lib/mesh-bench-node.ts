// One meshcc daemon of the mesh benchmark: its private dir and config, start/stop through the
// CLI, status through the daemon's admin socket, and finding daemons of this run that outlived
// their CLI (matched by the MESHCC_CONF path, a unique temp path of this run).
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { FrameReader, MsgType, encodeFrame } from '../../src/daemon/launcher-protocol.js'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { fail, isAlive, run, sleep, waitFor, type RunResult } from './proc.js'
import { MESHCC_MAIN, cleanEnv } from './tools.js'
import { generateMeshKey, writeMeshKey } from '../../src/mesh/keys.js'

export { MESHCC_MAIN }

const HERE = dirname(fileURLToPath(import.meta.url))

/** The parts of `meshcc status --json` the benchmark reads. */
export interface DaemonStatus {
  daemon: { pid: number; version: string; socket: string; memory?: { rss: number; heap_used: number; heap_total: number } }
  mesh: {
    peer_id: string
    mesh_id: string
    addresses: string[]
    members: Array<{ peer_id: string; self: boolean; connection: string; rtt_ms: number | null }>
    totals: { members: number }
    gossip_forwarding?: boolean
  } | null
  mesh_note: string | null
}

export interface BenchNode {
  index: number
  dir: string
  conf: string
  socket: string
  log: string
  /** daemon pid, from <socket>.pid once the daemon is up */
  pid?: number
  /** performance.now() when its --start-server returned */
  startedAt?: number
  /** wall time of its --start-server */
  startMs?: number
  /** write a V8 CPU profile of this daemon into this dir when it stops (--cpu-prof) */
  cpuProfDir?: string
}

export function makeNode(root: string, index: number): BenchNode {
  const dir = join(root, `n${String(index).padStart(2, '0')}`)
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  return { index, dir, conf: join(dir, 'meshcc.toml'), socket: join(dir, 'd.sock'), log: join(dir, 'cache', 'meshcc.log') }
}

const tomlString = (s: string) => JSON.stringify(s) // TOML basic strings accept JSON escapes for our paths

/** Loopback only, no mDNS (multicast is not allowed here): the only addresses a daemon may use. */
export function writeConfig(node: BenchNode, keyFile: string, bootstrap: string[], logLevel = 'warn', dht = true, build: string[] = ['cores = 4'], cache: string[] = []): void {
  for (const a of bootstrap) if (!a.startsWith('/ip4/127.0.0.1/tcp/')) fail(`refusing a non-loopback bootstrap address: ${a}`)
  writeFileSync(node.conf, [
    '[daemon]',
    `socket = ${tomlString(node.socket)}`,
    'idle_timeout = 0',
    '[cache]',
    `dir = ${tomlString(join(node.dir, 'cache'))}`,
    ...cache,
    '[log]',
    `level = ${tomlString(logLevel)}`,
    '[mesh]',
    'listen = ["/ip4/127.0.0.1/tcp/0"]',
    'mdns = false',
    `dht = ${dht}`,
    `key_file = ${tomlString(keyFile)}`,
    `bootstrap = [${bootstrap.map(tomlString).join(', ')}]`,
    '[build]',
    ...build,
    ''
  ].join('\n'))
}

/** The CLI's (and so the daemon's) environment: no inherited MESHCC_* or NODE_OPTIONS. */
export function nodeEnv(node: BenchNode): NodeJS.ProcessEnv {
  const env = cleanEnv({ MESHCC_CONF: node.conf })
  delete env.NODE_OPTIONS
  if (node.cpuProfDir) {
    // node refuses --cpu-prof in NODE_OPTIONS; the preload profiles between two SIGUSR2
    env.NODE_OPTIONS = `--import=${pathToFileURL(join(HERE, 'cpu-profile-preload.mjs')).href}`
    env.MESHCC_BENCH_PROF_DIR = node.cpuProfDir
  }
  return env
}

export function meshcc(node: BenchNode, args: string[], timeoutMs: number): Promise<RunResult> {
  return run(MESHCC_MAIN, args, { env: nodeEnv(node), timeoutMs })
}

function lastLine(r: RunResult): string {
  return (r.stderr || r.stdout).trim().split('\n').pop() ?? ''
}

/** A new mesh key (what `meshcc mesh init` writes, without the daemon start that comes with it). */
export function meshInit(keyFile: string): void {
  writeMeshKey(keyFile, generateMeshKey())
}

export function readPidFile(node: BenchNode): number | undefined {
  try {
    const pid = Number(readFileSync(`${node.socket}.pid`, 'utf8').trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/** `meshcc --start-server`; records the pid and when it returned. Throws one line with the log tail. */
export async function startNode(node: BenchNode, timeoutMs: number): Promise<void> {
  const r = await meshcc(node, ['--start-server'], timeoutMs)
  node.pid = readPidFile(node) ?? node.pid
  if (r.timedOut || r.code !== 0) {
    fail(`daemon ${node.index}: --start-server failed (exit ${r.timedOut ? 'timeout' : r.code}): ${lastLine(r)}${logTail(node)}`)
  }
  node.startedAt = performance.now()
  node.startMs = r.wallMs
  if (!node.pid) fail(`daemon ${node.index}: started but ${node.socket}.pid is missing`)
}

export function logTail(node: BenchNode, lines = 5): string {
  try {
    const tail = readFileSync(node.log, 'utf8').trim().split('\n').slice(-lines)
    return tail.length && tail[0] ? `\n  last lines of ${node.log}:\n    ${tail.join('\n    ')}` : ''
  } catch {
    return ''
  }
}

/**
 * The daemon's status, asked on its admin socket exactly as `meshcc status --json` does
 * (one ADMIN "status" frame), but without spawning a Node CLI per poll and without the CLI's
 * autostart (a status of a dead daemon must not start a new one).
 */
export function adminStatus<T = DaemonStatus>(socket: string, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const sock = connect(socket)
    const reader = new FrameReader()
    let done = false
    const finish = (err: Error | null, value?: T) => {
      if (done) return
      done = true
      clearTimeout(timer)
      sock.destroy()
      if (err) reject(err)
      else resolve(value!)
    }
    const timer = setTimeout(() => finish(new Error('status timed out')), timeoutMs)
    sock.on('connect', () => sock.write(encodeFrame(MsgType.ADMIN, ['status', ''])))
    sock.on('data', (d: Buffer) => {
      let frames
      try { frames = reader.push(d) } catch (err) { return finish(err as Error) }
      if (frames.length === 0) return
      const text = frames[0].fields[0]?.toString('utf8') ?? ''
      if (frames[0].type !== MsgType.ADMIN_REPLY) return finish(new Error(`daemon refused status: ${text}`))
      try {
        finish(null, JSON.parse(text) as T)
      } catch (err) {
        finish(new Error(`bad status JSON: ${(err as Error).message}`))
      }
    })
    sock.on('error', (err: NodeJS.ErrnoException) => finish(new Error(`cannot reach daemon: ${err.code ?? err.message}`)))
    sock.on('close', () => finish(new Error('daemon closed the connection without answering')))
  })
}

/** Is `pid` a process started with this node's MESHCC_CONF (guards against pid reuse)? */
export function ownsPid(node: BenchNode, pid: number): boolean {
  return envOf(pid)?.includes(`MESHCC_CONF=${node.conf}`) ?? false
}

function envOf(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0')
  } catch {
    return undefined
  }
}

/** Every process whose MESHCC_CONF lies under `root` (this run's temp dir): only ours can. */
export function processesUnder(root: string): number[] {
  const prefix = `MESHCC_CONF=${root}/`
  const pids: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
    if (envOf(Number(entry))?.some((kv) => kv.startsWith(prefix))) pids.push(Number(entry))
  }
  return pids
}

export type StopOutcome = 'stopped' | 'killed' | 'not running'

/**
 * `meshcc --stop-server` with the node's config, then SIGKILL of its pid (checked to be ours)
 * if it is still alive a few seconds later.
 */
export async function stopNode(node: BenchNode, timeoutMs: number): Promise<StopOutcome> {
  const pid = readPidFile(node) ?? node.pid
  const alive = pid !== undefined && isAlive(pid) && ownsPid(node, pid)
  if (!alive && !existsSync(node.socket)) return 'not running'
  if (timeoutMs > 0) await meshcc(node, ['--stop-server'], timeoutMs)
  if (pid === undefined) return 'stopped'
  const deadline = Date.now() + 3000
  while (isAlive(pid) && ownsPid(node, pid) && Date.now() < deadline) await sleep(50)
  if (isAlive(pid) && ownsPid(node, pid)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // gone meanwhile
    }
    return 'killed'
  }
  return 'stopped'
}

interface FarmStatus {
  mesh: {
    peer_id: string
    members: Array<{ peer_id: string; self: boolean; free_slots: number; accept: string }>
    builder: { capacity: number; sandbox_note: string | null }
  } | null
}

/**
 * Ready to build: every builder has checked its sandbox and takes jobs, and every client sees
 * all of them with free slots. Fails with one line naming the daemon that is not.
 */
export async function waitForFarm(builders: ReadonlyArray<{ name: string; socket: string }>, clients: ReadonlyArray<{ name: string; socket: string }>, timeoutMs = 90_000): Promise<void> {
  const ids = new Set<string>()
  for (const b of builders) {
    const s = await waitFor(`${b.name}'s sandbox check`, 60_000, async () => {
      const x = await adminStatus<FarmStatus>(b.socket, 5000).catch(() => undefined)
      return x?.mesh && x.mesh.builder.sandbox_note !== 'not checked yet' ? x : undefined
    })
    if (s.mesh!.builder.capacity <= 0) fail(`${b.name} takes no jobs: ${s.mesh!.builder.sandbox_note ?? 'capacity 0'}`)
    ids.add(s.mesh!.peer_id)
  }
  for (const c of clients) {
    await waitFor(`${c.name} to see all ${ids.size} builders with free slots`, timeoutMs, async () => {
      const s = await adminStatus<FarmStatus>(c.socket, 5000).catch(() => undefined)
      const ready = s?.mesh?.members.filter((m) => !m.self && ids.has(m.peer_id) && m.free_slots > 0 && m.accept !== 'never') ?? []
      return ready.length === ids.size ? true : undefined
    }, 500)
  }
}
