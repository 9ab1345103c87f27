// The distributed compilers compared by bench-dist.ts, all on this one machine:
//   meshcc   — N builder daemons + 1 client daemon (local_slots = 0), loopback only, no mDNS
//   distcc   — N distccd on 127.0.0.1, DISTCC_HOSTS listing them
//   icecream — icecc-scheduler, N builder iceccd and the client iceccd, each in its own network
//              namespace of a lab bridge (icecream broadcasts; nothing of it touches the root
//              namespace); the client build runs with `ip netns exec`
//   gcc      — plain local gcc, no distribution (optional reference)
// Each tool reports how many jobs ran remotely/locally in its own terms, the CPU of its
// client-side daemon (if any) and of its builders, and the WARN/ERROR lines of its logs.
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { createNsLab, startDaemon, stopDaemon, treeCpuSeconds, userIds, type Daemon, type NsLab } from './dist-bench-proc.js'
import { fail, freePort, isAlive, ownCpuSecondsOf, run, sleep, waitFor, type RunResult } from './proc.js'
import { MESHCC_MAIN, cleanEnv } from './tools.js'
import { adminStatus as sharedAdminStatus, meshInit, waitForFarm } from './mesh-bench-node.js'

export { MESHCC_MAIN }

export const ALL_TOOLS = ['gcc', 'distcc', 'icecream', 'meshcc'] as const
export type ToolName = (typeof ALL_TOOLS)[number]

export interface JobCounts {
  /** jobs compiled on a builder, as the tool itself reports them */
  remote: number
  /** compiles that ran on the client machine, when the tool counts them (undefined: it does not) */
  local?: number
  /** remote attempts that ended up compiled locally */
  fallbacks: number
  /** why jobs ran locally / fell back / were retried, with counts */
  reasons: Record<string, number>
  /** raw counters worth showing */
  raw: Record<string, number>
}

export interface DistTool {
  name: ToolName
  /** CC given to make */
  cc: string
  env: NodeJS.ProcessEnv
  /** prefix for commands that must run on the "client machine" (e.g. ip netns exec <ns>) */
  prefix: string[]
  /** compile slots the builders offer in total */
  slots: number
  /** what the setup looks like, one line */
  describe(): string
  setup(): Promise<void>
  /** true when every builder holds the toolchain; undefined when the tool ships none */
  toolchainEverywhere(): Promise<boolean | undefined>
  /** called right before the timed build (zero counters, remember log offsets) */
  beforeBuild(): Promise<void>
  counts(makeLog: string): Promise<JobCounts>
  /** cumulative CPU seconds of the client-side daemon tree (0 when the tool has none) */
  clientCpu(): number
  /** cumulative CPU seconds of the builders' process trees (and scheduler) */
  builderCpu(): number
  /** of builderCpu, the builder daemons' own processes (without the jobs they ran), if it can tell */
  builderOwnCpu?(): number
  /** of clientCpu, the client daemon's own process (without the preprocessors and compiles it ran), if it can tell */
  clientOwnCpu?(): number
  /** the pids whose trees clientCpu and builderCpu count */
  roots(): number[]
  /** start (true) or write (false) the CPU profiles asked for with --cpu-prof, if any */
  profile?(on: boolean): void
  /** WARN/ERROR lines of the tool's logs: [where, line] */
  problems(): Array<[string, string]>
  teardown(): Promise<void>
}

type Say = (s: string) => void

function lastLine(r: RunResult): string {
  return (r.stderr.trim() || r.stdout.trim()).split('\n').pop() ?? ''
}

function fileSize(p: string): number {
  try {
    return statSync(p).size
  } catch {
    return 0
  }
}

function readFrom(p: string, offset: number): string {
  try {
    return readFileSync(p).subarray(offset).toString('utf8')
  } catch {
    return ''
  }
}

/** Compiler names distcc/icecream/Kbuild print in warnings, trimmed for grouping. */
function bump(m: Record<string, number>, k: string, n = 1): void {
  m[k] = (m[k] ?? 0) + n
}

// =============================================================================================
// plain gcc (reference, nothing distributed)

export function gccTool(base: Record<string, string>): DistTool {
  return {
    name: 'gcc',
    cc: 'gcc',
    env: cleanEnv(base),
    prefix: [],
    slots: 0,
    describe: () => 'plain gcc on this machine (nothing distributed)',
    async setup() {},
    async toolchainEverywhere() {
      return undefined
    },
    async beforeBuild() {},
    async counts() {
      return { remote: 0, fallbacks: 0, reasons: {}, raw: {} }
    },
    clientCpu: () => 0,
    builderCpu: () => 0,
    roots: () => [],
    problems: () => [],
    async teardown() {}
  }
}

// =============================================================================================
// meshcc

interface MeshStatus {
  daemon: { pid: number }
  mesh: {
    peer_id: string
    addresses: string[]
    members: Array<{ peer_id: string; self: boolean; free_slots: number; accept: string; cores: number; toolchains: number }>
    builder: { capacity: number; sandbox: string; sandbox_note: string | null; jobs_done: number; jobs_failed: number; jobs_refused: number; jobs_checked?: number; workspaces: { files_written: number; files_removed?: number } }
    toolchain_transfers: Array<{ hash: string; direction: string; peer: string; bytes: number; ms: number }>
    jobs_per_peer: Record<string, { sent: number; done: number; failed?: number; refused?: number }>
    transfer?: Transfer
  } | null
  mesh_note: string | null
}

/** the client's remote jobs, what they sent, and their preprocessed units' size */
interface Transfer { jobs: number; bytes_sent: number; pp_bytes: number }

/** The first jobs of a build ship the headers every unit shares: bytes per job are reported after these. */
const TRANSFER_SKIP_JOBS = 10

interface MeshNode {
  name: string
  dir: string
  conf: string
  socket: string
  log: string
  pid?: number
}

const adminStatus = (socket: string, timeoutMs: number) => sharedAdminStatus<MeshStatus>(socket, timeoutMs)

export interface MeshccOptions {
  builders: number
  slotsPerBuilder: number
  logLevel: string
  /** write V8 CPU profiles of builder1 and the client daemon during the timed build here */
  cpuProfDir?: string
}

export function meshccTool(base: Record<string, string>, tmp: string, o: MeshccOptions, say: Say): DistTool {
  const root = join(tmp, 'meshcc')
  const keyFile = join(root, 'mesh.key')
  const mk = (name: string): MeshNode => {
    const dir = join(root, name)
    return { name, dir, conf: join(dir, 'meshcc.toml'), socket: join(dir, 'd.sock'), log: join(dir, 'cache', 'meshcc.log') }
  }
  const builders = Array.from({ length: o.builders }, (_, i) => mk(`builder${i + 1}`))
  const client = mk('client')
  const all = [...builders, client]
  const envOf = (n: MeshNode) => {
    const e = cleanEnv({ ...base, MESHCC_CONF: n.conf })
    delete e.NODE_OPTIONS
    return e
  }
  const cli = (n: MeshNode, args: string[], timeoutMs = 60_000) => run(MESHCC_MAIN, args, { env: envOf(n), timeoutMs })
  const writeConf = (n: MeshNode, localSlots: number, cores: number, bootstrap: string[]) => {
    mkdirSync(n.dir, { recursive: true, mode: 0o700 })
    for (const a of bootstrap) if (!a.startsWith('/ip4/127.0.0.1/tcp/')) fail(`refusing a non-loopback bootstrap address: ${a}`)
    const s = (x: string) => JSON.stringify(x)
    writeFileSync(n.conf, [
      '[daemon]', `socket = ${s(n.socket)}`, 'idle_timeout = 0',
      '[cache]', `dir = ${s(join(n.dir, 'cache'))}`,
      '[log]', `level = ${s(o.logLevel)}`,
      '[mesh]', 'listen = ["/ip4/127.0.0.1/tcp/0"]', 'mdns = false', `key_file = ${s(keyFile)}`, `bootstrap = [${bootstrap.map(s).join(', ')}]`,
      '[build]', `local_slots = ${localSlots}`, `cores = ${cores}`, ''
    ].join('\n'))
  }
  const readPid = (n: MeshNode) => {
    try {
      const p = Number(readFileSync(`${n.socket}.pid`, 'utf8').trim())
      return Number.isInteger(p) && p > 0 ? p : undefined
    } catch {
      return undefined
    }
  }
  const ownsPid = (n: MeshNode, pid: number) => {
    try {
      return readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').includes(`MESHCC_CONF=${n.conf}`)
    } catch {
      return false
    }
  }
  const profiled = (n: MeshNode) => o.cpuProfDir !== undefined && (n === client || n === builders[0])
  const start = async (n: MeshNode) => {
    // node refuses --cpu-prof in NODE_OPTIONS; the preload profiles between two SIGUSR2
    const prof = profiled(n) ? { NODE_OPTIONS: `--import=${pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), 'cpu-profile-preload.mjs')).href}`, MESHCC_BENCH_PROF_DIR: o.cpuProfDir! } : {}
    const r = await run(MESHCC_MAIN, ['--start-server'], { env: { ...envOf(n), ...prof }, timeoutMs: 45_000 })
    n.pid = readPid(n)
    if (r.timedOut || r.code !== 0) fail(`meshcc ${n.name}: --start-server failed (exit ${r.timedOut ? 'timeout' : r.code}): ${lastLine(r)}`)
    if (!n.pid) fail(`meshcc ${n.name}: started but ${n.socket}.pid is missing`)
    let note = ''
    return waitFor(`meshcc ${n.name}'s mesh to start`, 30_000, async () => {
      const s = await adminStatus(n.socket, 5000).catch(() => undefined)
      if (s) note = s.mesh_note ?? ''
      if (s && !s.mesh && s.mesh_note && s.mesh_note !== 'starting') fail(`meshcc ${n.name}: mesh not running: ${s.mesh_note}`)
      return s?.mesh ? s : undefined
    }, () => `(last mesh note: ${note || 'none'})`)
  }
  let startedAny = false
  let zeroBuilders: Array<{ done: number; failed: number; refused: number; written: number; checked: number; removed: number }> = []
  /** the client's transfer figures when the build's TRANSFER_SKIP_JOBS-th job had gone out */
  let transferFrom: Transfer | undefined
  let transferPoll: NodeJS.Timeout | undefined
  const slotsPer = o.slotsPerBuilder

  return {
    name: 'meshcc',
    cc: `${MESHCC_MAIN} gcc`,
    env: envOf(client),
    prefix: [],
    slots: o.builders * slotsPer,
    describe: () => `${o.builders} builder daemons (local_slots = ${slotsPer}, cores = ${slotsPer}) + 1 client daemon (local_slots = 0), 127.0.0.1, mdns = false, bubblewrap sandbox`,
    async setup() {
      mkdirSync(root, { recursive: true, mode: 0o700 })
      writeConf(builders[0]!, slotsPer, slotsPer, [])
      meshInit(keyFile)
      startedAny = true
      const s1 = await start(builders[0]!)
      const boot = s1.mesh!.addresses.filter((a) => a.startsWith('/ip4/127.0.0.1/tcp/'))
      if (boot.length === 0) fail(`meshcc builder1 has no 127.0.0.1 address: ${s1.mesh!.addresses.join(' ')}`)
      for (const b of builders.slice(1)) {
        writeConf(b, slotsPer, slotsPer, boot)
        await start(b)
      }
      writeConf(client, 0, slotsPer, boot)
      await start(client)
      await waitForFarm(builders.map((b) => ({ name: `meshcc ${b.name}`, socket: b.socket })), [{ name: 'the meshcc client', socket: client.socket }])
      say(`meshcc: ${o.builders} builders and the client are up; the client sees every builder with free slots`)
    },
    async toolchainEverywhere() {
      for (const b of builders) {
        const s = await adminStatus(b.socket, 5000).catch(() => undefined)
        if (!s?.mesh?.toolchain_transfers.some((t) => t.direction === 'received')) return false
      }
      return true
    },
    async beforeBuild() {
      const r = await cli(client, ['-z'])
      if (r.code !== 0) fail(`meshcc -z failed: ${lastLine(r)}`)
      zeroBuilders = []
      for (const b of builders) {
        const s = await adminStatus(b.socket, 5000)
        const ws = s.mesh!.builder.workspaces
        zeroBuilders.push({ done: s.mesh!.builder.jobs_done, failed: s.mesh!.builder.jobs_failed, refused: s.mesh!.builder.jobs_refused, written: ws.files_written, checked: s.mesh!.builder.jobs_checked ?? 0, removed: ws.files_removed ?? 0 })
      }
      // a few status calls on the admin socket until the build's first jobs are out
      const t0 = (await adminStatus(client.socket, 5000)).mesh?.transfer
      transferFrom = undefined
      if (t0) {
        let polling = false
        transferPoll = setInterval(() => {
          if (polling) return
          polling = true
          void adminStatus(client.socket, 5000).then((s) => {
            const t = s.mesh?.transfer
            if (t && t.jobs >= t0.jobs + TRANSFER_SKIP_JOBS) { transferFrom = t; clearInterval(transferPoll) }
          }).catch(() => undefined).finally(() => { polling = false })
        }, 250)
      }
    },
    async counts() {
      const r = await cli(client, ['-s', '--stats-format', 'json'])
      if (r.code !== 0) fail(`meshcc -s failed: ${lastLine(r)}`)
      const s = JSON.parse(r.stdout) as Record<string, unknown>
      const num = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : 0)
      const reasons: Record<string, number> = {}
      for (const [key, label] of [['fallback_reasons', 'fallback'], ['retry_reasons', 'retry'], ['non_cacheable_reasons', 'non-cacheable'], ['kept_here_reasons', 'kept here']] as const) {
        for (const [k, v] of Object.entries((s[key] ?? {}) as Record<string, number>)) bump(reasons, `${label}: ${k}`, v)
      }
      const raw: Record<string, number> = {}
      for (const k of ['compile_requests', 'cache_hits', 'cache_misses', 'non_cacheable', 'local_compiles', 'kept_here', 'remote_compiles', 'compile_failures', 'fallbacks', 'remote_retries', 'cache_errors']) raw[k] = num(k)
      clearInterval(transferPoll)
      const tEnd = (await adminStatus(client.socket, 5000).catch(() => undefined))?.mesh?.transfer
      if (transferFrom && tEnd && tEnd.jobs > transferFrom.jobs) {
        const jobs = tEnd.jobs - transferFrom.jobs
        const sent = (tEnd.bytes_sent - transferFrom.bytes_sent) / jobs
        const pp = (tEnd.pp_bytes - transferFrom.pp_bytes) / jobs
        raw[`bytes sent per remote job after the first ${TRANSFER_SKIP_JOBS} (${jobs} jobs)`] = Math.round(sent)
        raw['their preprocessed units, bytes per job'] = Math.round(pp)
        if (pp > 0) raw['sent / preprocessed, %'] = Math.round((1000 * sent) / pp) / 10
      }
      for (let i = 0; i < builders.length; i++) {
        const st = await adminStatus(builders[i]!.socket, 5000).catch(() => undefined)
        if (st?.mesh) {
          const z = zeroBuilders[i] ?? { done: 0, failed: 0, refused: 0, written: 0, checked: 0, removed: 0 }
          raw[`${builders[i]!.name} jobs done`] = st.mesh.builder.jobs_done - z.done
          raw[`${builders[i]!.name} input files written`] = st.mesh.builder.workspaces.files_written - z.written
          if (st.mesh.builder.workspaces.files_removed !== undefined) raw[`${builders[i]!.name} input files removed`] = st.mesh.builder.workspaces.files_removed - z.removed
          if (st.mesh.builder.jobs_checked !== undefined) raw[`${builders[i]!.name} jobs re-preprocessed`] = st.mesh.builder.jobs_checked - z.checked
          if (st.mesh.builder.jobs_failed - z.failed) raw[`${builders[i]!.name} jobs failed`] = st.mesh.builder.jobs_failed - z.failed
          if (st.mesh.builder.jobs_refused - z.refused) raw[`${builders[i]!.name} jobs refused`] = st.mesh.builder.jobs_refused - z.refused
        }
      }
      // local = compiles the client daemon ran here + calls passed through untouched (links, -S, probes)
      return { remote: num('remote_compiles'), local: num('local_compiles') + num('non_cacheable'), fallbacks: num('fallbacks'), reasons, raw }
    },
    clientCpu: () => treeCpuSeconds(client.pid),
    builderCpu: () => builders.reduce((n, b) => n + treeCpuSeconds(b.pid), 0),
    builderOwnCpu: () => builders.reduce((n, b) => n + (b.pid ? ownCpuSecondsOf(b.pid) ?? 0 : 0), 0),
    clientOwnCpu: () => (client.pid ? ownCpuSecondsOf(client.pid) ?? 0 : 0),
    roots: () => [client.pid, ...builders.map((b) => b.pid)].filter((p): p is number => p !== undefined),
    profile: () => { for (const n of all) if (profiled(n) && n.pid) process.kill(n.pid, 'SIGUSR2') },
    problems() {
      const out: Array<[string, string]> = []
      for (const n of all) {
        let text = ''
        try {
          text = readFileSync(n.log, 'utf8')
        } catch {
          continue
        }
        const lines = text.split('\n')
        lines.forEach((line, i) => {
          if (!/^\S+\s+(WARN|ERROR)\b/.test(line)) return
          // keep the first frames of a stack trace with its line
          const frames = lines.slice(i + 1, i + 3).filter((l) => /^\s+at /.test(l)).map((l) => l.trim())
          out.push([`meshcc ${n.name}`, frames.length ? `${line} [${frames.join(' ← ')}]` : line])
        })
      }
      return out
    },
    async teardown() {
      clearInterval(transferPoll)
      if (!startedAny) return
      for (const n of [client, ...builders]) {
        const pid = readPid(n) ?? n.pid
        if (pid === undefined || !isAlive(pid) || !ownsPid(n, pid)) continue
        await cli(n, ['--stop-server'], 20_000).catch(() => undefined)
        const end = Date.now() + 5000
        while (isAlive(pid) && ownsPid(n, pid) && Date.now() < end) await sleep(50)
        if (isAlive(pid) && ownsPid(n, pid)) {
          try {
            process.kill(pid, 'SIGKILL')
          } catch {
            // gone
          }
        }
      }
    },
    // not part of the interface: for the report
    ...{ nodes: all }
  } as DistTool
}

/** meshcc nodes of a tool made by meshccTool (for the report's log excerpts). */
export function meshccLogs(t: DistTool): Array<{ name: string; log: string }> {
  const nodes = (t as unknown as { nodes?: MeshNode[] }).nodes ?? []
  return nodes.map((n) => ({ name: n.name, log: n.log }))
}

// =============================================================================================
// distcc

export interface DistccOptions {
  builders: number
  slotsPerBuilder: number
}

export async function distccTool(base: Record<string, string>, tmp: string, o: DistccOptions, say: Say): Promise<DistTool> {
  const root = join(tmp, 'distcc')
  const ports: number[] = []
  for (let i = 0; i < o.builders; i++) {
    let p = await freePort()
    while (ports.includes(p)) p = await freePort()
    ports.push(p)
  }
  const logs = ports.map((_, i) => join(root, `distccd${i + 1}.log`))
  const hosts = ports.map((p) => `127.0.0.1:${p}/${o.slotsPerBuilder},lzo`).join(' ')
  const env = cleanEnv({ ...base, DISTCC_HOSTS: hosts, DISTCC_DIR: join(root, 'client') })
  for (const k of Object.keys(env)) if (k.startsWith('DISTCC_') && !['DISTCC_HOSTS', 'DISTCC_DIR'].includes(k)) delete env[k]
  const daemons: Daemon[] = []
  let offsets: number[] = []
  return {
    name: 'distcc',
    cc: 'distcc gcc',
    env,
    prefix: [],
    slots: o.builders * o.slotsPerBuilder,
    describe: () => `${o.builders} distccd on 127.0.0.1 (--jobs ${o.slotsPerBuilder}), DISTCC_HOSTS="${hosts}"`,
    async setup() {
      mkdirSync(join(root, 'client'), { recursive: true })
      const r = await run('distccd', ['--version'], { timeoutMs: 10_000 }).catch(() => undefined)
      if (!r || r.code !== 0) fail('distccd is not installed (apt-get install distcc)')
      // distccd started as root drops to the "distccd" user (else nobody): it must own its log
      const owner = userIds('distccd') ?? userIds('nobody')
      for (let i = 0; i < o.builders; i++) {
        writeFileSync(logs[i]!, '')
        if (owner && process.getuid?.() === 0) chownSync(logs[i]!, owner.uid, owner.gid)
        daemons.push(startDaemon(`distccd${i + 1}`, 'distccd', [
          '--daemon', '--no-detach', '--allow', '127.0.0.1', '--listen', '127.0.0.1', '--port', String(ports[i]),
          '--jobs', String(o.slotsPerBuilder), '--log-file', logs[i]!, '--log-level', 'info'
        ], { env: cleanEnv({}), logFile: join(root, `distccd${i + 1}.out`) }))
      }
      // ready when its log says so (a TCP probe would log "client did not provide distcc magic fairy dust")
      for (let i = 0; i < o.builders; i++) {
        await waitFor(`distccd${i + 1} to listen on 127.0.0.1:${ports[i]}`, 15_000, () => {
          if (daemons[i]!.exited) fail(`distccd${i + 1} exited: ${(readFrom(join(root, `distccd${i + 1}.out`), 0) + readFrom(logs[i]!, 0)).trim().split('\n').pop() ?? ''}`)
          return /preforking daemon started|listening on/.test(readFrom(logs[i]!, 0)) ? true : undefined
        }, 100)
      }
      say(`distcc: ${o.builders} distccd listening (${hosts})`)
    },
    async toolchainEverywhere() {
      return undefined // distcc ships no toolchain: the builders use their own gcc
    },
    async beforeBuild() {
      offsets = logs.map(fileSize)
    },
    async counts(makeLog: string) {
      let remote = 0
      const reasons: Record<string, number> = {}
      const raw: Record<string, number> = {}
      logs.forEach((l, i) => {
        const text = readFrom(l, offsets[i] ?? 0)
        const ok = (text.match(/COMPILE_OK/g) ?? []).length
        remote += ok
        raw[`distccd${i + 1} COMPILE_OK`] = ok
        for (const m of text.matchAll(/client: \S+ (COMPILE_\w+|\w+_ERROR|\w+_TIMEOUT)/g)) if (m[1] !== 'COMPILE_OK') bump(reasons, `distccd: ${m[1]}`)
      })
      let fallbacks = 0
      for (const line of makeLog.split('\n')) {
        if (/distcc\[\d+\]/.test(line) && /(failed to distribute|running locally instead|compile .* on .* failed)/i.test(line)) {
          fallbacks += /running locally instead/i.test(line) ? 1 : 0
          bump(reasons, `client: ${line.replace(/^.*?distcc\[\d+\]\s*/, '').replace(/\d+/g, 'N').slice(0, 100)}`)
        }
      }
      return { remote, fallbacks, reasons, raw }
    },
    clientCpu: () => 0, // no client daemon: the distcc client runs inside make's process tree
    builderCpu: () => daemons.reduce((n, d) => n + treeCpuSeconds(d.exited ? undefined : d.pid), 0),
    roots: () => daemons.filter((d) => !d.exited).map((d) => d.pid),
    problems() {
      const out: Array<[string, string]> = []
      logs.forEach((l, i) => {
        for (const line of readFrom(l, 0).split('\n')) if (/\b(ERROR|WARNING|CRITICAL)\b/.test(line)) out.push([`distccd${i + 1}`, line])
      })
      return out
    },
    async teardown() {
      for (const d of daemons) await stopDaemon(d)
    }
  }
}

// =============================================================================================
// icecream

export interface IcecreamOptions {
  builders: number
  slotsPerBuilder: number
}

/**
 * icecream in a namespace lab: h0 runs the scheduler, h1 the client iceccd (-m 0 --no-remote:
 * it compiles nothing for others and the scheduler never gives it a job), h2.. the builders.
 * Every iceccd is told the scheduler's address (-s) and a unique netname; its unix socket is
 * set with ICECC_TEST_SOCKET (the client `icecc` finds its daemon through the same variable),
 * because the filesystem is shared and the default socket path would clash.
 */
export async function icecreamTool(base: Record<string, string>, tmp: string, o: IcecreamOptions, say: Say): Promise<DistTool> {
  const root = join(tmp, 'icecream')
  const netname = `meshccbench${process.pid}`
  const PORT = '8765'
  let lab: NsLab | undefined
  let scheduler: Daemon | undefined
  let clientD: Daemon | undefined
  const builders: Daemon[] = []
  const schedLog = join(root, 'scheduler.log')
  const clientSock = join(root, 'client', 'iceccd.sock')
  const builderLog = (i: number) => join(root, `builder${i + 1}`, 'iceccd.log')
  const env = cleanEnv({ ...base, ICECC_TEST_SOCKET: clientSock })
  for (const k of Object.keys(env)) if (k.startsWith('ICECC') && k !== 'ICECC_TEST_SOCKET') delete env[k]
  let clientNs = ''
  let offset = 0
  const tool: DistTool = {
    name: 'icecream',
    cc: 'icecc gcc',
    env,
    prefix: [],
    slots: o.builders * o.slotsPerBuilder,
    describe: () => `icecc-scheduler + ${o.builders} builder iceccd (-m ${o.slotsPerBuilder}) + client iceccd (-m 0 --no-remote), each in its own network namespace; make runs in the client's`,
    async setup() {
      for (const bin of ['icecc', 'iceccd', 'icecc-scheduler']) {
        const r = await run('sh', ['-c', `command -v ${bin}`], { timeoutMs: 10_000 })
        if (r.code !== 0) fail(`${bin} is not installed (apt-get install icecc)`)
      }
      const ids = userIds('icecc')
      mkdirSync(root, { recursive: true })
      for (const d of ['client', ...Array.from({ length: o.builders }, (_, i) => `builder${i + 1}`)]) mkdirSync(join(root, d, 'env'), { recursive: true })
      // the daemons drop to the icecc user: it must own their dirs and logs
      if (ids && process.getuid?.() === 0) {
        const walk = (p: string) => {
          chownSync(p, ids.uid, ids.gid)
          if (statSync(p).isDirectory()) for (const e of readdirSync(p)) walk(join(p, e))
        }
        walk(root)
      }
      const r = createNsLab(o.builders + 2, 'mccice')
      if ('skip' in r) fail(`cannot create the network namespaces icecream must run in: ${r.skip}`)
      lab = r.lab
      const [hs, hc, ...hb] = lab.hosts
      clientNs = hc!.ns
      tool.prefix = ['ip', 'netns', 'exec', clientNs]
      const daemonEnv = (sock: string) => {
        const e = cleanEnv({ ICECC_TEST_SOCKET: sock })
        for (const k of Object.keys(e)) if (k.startsWith('ICECC') && k !== 'ICECC_TEST_SOCKET') delete e[k]
        return e
      }
      scheduler = startDaemon('icecc-scheduler', 'ip', ['netns', 'exec', hs!.ns, 'icecc-scheduler', '-p', PORT, '-n', netname, '-l', schedLog, '-vvv'],
        { env: daemonEnv(join(root, 'scheduler.sock')), logFile: join(root, 'scheduler.out') })
      await sleep(300)
      const sched = `${hs!.ip}:${PORT}`
      clientD = startDaemon('iceccd client', 'ip', ['netns', 'exec', hc!.ns, 'iceccd', '-n', netname, '-s', sched, '-m', '0', '--no-remote',
        '-b', join(root, 'client', 'env'), '-l', join(root, 'client', 'iceccd.log'), '-N', 'client'],
      { env: daemonEnv(clientSock), logFile: join(root, 'client', 'iceccd.out') })
      hb.forEach((h, i) => {
        builders.push(startDaemon(`iceccd builder${i + 1}`, 'ip', ['netns', 'exec', h.ns, 'iceccd', '-n', netname, '-s', sched, '-m', String(o.slotsPerBuilder),
          '-b', join(root, `builder${i + 1}`, 'env'), '-l', builderLog(i), '-vvv', '-N', `builder${i + 1}`],
        { env: daemonEnv(join(root, `builder${i + 1}`, 'iceccd.sock')), logFile: join(root, `builder${i + 1}`, 'iceccd.out') }))
      })
      const names = ['client', ...hb.map((_, i) => `builder${i + 1}`)]
      await waitFor('every iceccd to log in to the scheduler', 60_000, () => {
        for (const d of [scheduler!, clientD!, ...builders]) {
          if (d.exited) fail(`${d.name} exited (code ${d.exitCode}): ${readFrom(d.logFile, 0).trim().split('\n').pop() ?? ''}`)
        }
        const log = readFrom(schedLog, 0)
        return names.every((n) => new RegExp(`login ${n} `).test(log)) ? true : undefined
      }, 500)
      if (!existsSync(clientSock)) await waitFor('the client iceccd socket', 10_000, () => (existsSync(clientSock) ? true : undefined))
      say(`icecream: scheduler, client and ${o.builders} builders logged in (namespaces ${lab.hosts.map((h) => h.ns).join(' ')})`)
    },
    async toolchainEverywhere() {
      return Array.from({ length: o.builders }, (_, i) => readFrom(builderLog(i), 0)).every((t) => /installed \S+\/\S+ size/.test(t))
    },
    async beforeBuild() {
      offset = fileSize(schedLog)
    },
    async counts(makeLog: string) {
      const text = readFrom(schedLog, offset)
      const reasons: Record<string, number> = {}
      const raw: Record<string, number> = {}
      let remote = 0
      let local = 0
      for (const line of text.split('\n')) {
        const end = /END \d+ status=(-?\d+).* server=(\S+)/.exec(line)
        if (end) {
          if (end[1] === '0') remote++
          else bump(reasons, `remote job ended with status ${end[1]}`)
          bump(raw, `jobs on ${end[2]}`)
        } else if (/handle_local_job \S/.test(line)) local++
      }
      let fallbacks = 0
      for (const line of makeLog.split('\n')) {
        const m = /ICECC\[\d+\].*?(local build forced by remote exception: .*|building myself.*|local build forced.*|ran out of.*|Error \d+ - .*)$/i.exec(line)
        if (m) {
          if (/local build forced/i.test(m[1]!)) fallbacks++
          bump(reasons, `client: ${m[1]!.replace(/\d{2,}/g, 'N').slice(0, 120)}`)
        }
      }
      return { remote, local, fallbacks, reasons, raw }
    },
    clientCpu: () => treeCpuSeconds(clientD && !clientD.exited ? clientD.pid : undefined),
    builderCpu: () => [scheduler, ...builders].reduce((n, d) => n + treeCpuSeconds(d && !d.exited ? d.pid : undefined), 0),
    roots: () => [clientD, scheduler, ...builders].filter((d): d is Daemon => d !== undefined && d !== null && !d.exited).map((d) => d.pid),
    problems() {
      const out: Array<[string, string]> = []
      const files: Array<[string, string]> = [['icecc-scheduler', schedLog], ['iceccd client', join(root, 'client', 'iceccd.log')],
        ...builders.map((_, i) => [`iceccd builder${i + 1}`, builderLog(i)] as [string, string])]
      for (const [who, f] of files) {
        for (const line of readFrom(f, 0).split('\n')) {
          // the daemons' own lines only ("[pid] date: …"): the compilers' stderr of Kbuild's
          // option probes (gcc: error: unrecognized option …) is expected and not a problem
          if (!/^\[\d+\] \d{4}-/.test(line) || /arguments:|status=0/.test(line)) continue
          // (not inside a path such as boot/compressed/error.c)
          if (/(?<![\w./-])(error|warning|failed|failure|exception|refus\w*|broken|lost|timeout|timed out)(?![\w./-])/i.test(line)) out.push([who, line])
        }
      }
      return out
    },
    async teardown() {
      for (const d of [clientD, ...builders, scheduler]) if (d) await stopDaemon(d)
      await lab?.destroy()
    }
  }
  return tool
}
