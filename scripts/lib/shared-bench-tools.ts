// The shared caches compared by bench-shared.ts, each as two members of a team on this machine:
// a "CI" member that fills the cache and a "workstation" member that starts empty.
//   meshcc   two daemons in one mesh on 127.0.0.1 (own config dirs, one mesh key written
//            directly, bootstrap by loopback address, mdns = false, offer = "never": a cache mesh,
//            no remote compiles). The workstation holds nothing for others (shared_size = 0), so
//            every hit it gets travels from the CI member over the mesh.
//   ccache   two local cache dirs, `remote_storage = redis://127.0.0.1:PORT`, base_dir = each
//            member's checkout.
//   sccache  two servers (own dirs and ports), SCCACHE_REDIS=redis://127.0.0.1:PORT.
// Redis: one redis-server per tool on 127.0.0.1 and a free port, no persistence, stopped by PID.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { startDaemon, stopDaemon, treeCpuSeconds, type Daemon } from './dist-bench-proc.js'
import { adminStatus, logTail, makeNode, meshInit, meshcc, startNode, stopNode, writeConfig, type BenchNode } from './mesh-bench-node.js'
import { fail, freePort, run, sleep, waitFor } from './proc.js'
import { MESHCC_MAIN, ccacheTool, cleanEnv, sccacheTool, type CacheCounts, type Tool } from './tools.js'

/** The compiler wrapper of a tool ("" for plain gcc): `make CC="<wrap> gcc"`, CMake's compiler launcher. */
export function wrapperOf(t: Tool): string {
  return t.cc.replace(/\s*gcc$/, '')
}

/** Hits that came from the shared store (Redis, the mesh), from a tool's counters. */
export function sharedHits(c: CacheCounts | undefined): number | undefined {
  if (!c) return undefined
  return c.extra.mesh_hits ?? c.extra.remote_storage_hit ?? 0
}

// ---------------------------------------------------------------------------------------------
// Redis

export interface Redis {
  url: string
  port: number
  daemon: Daemon
  /** keys and used memory now */
  info(): Promise<{ keys: number; bytes: number }>
  stop(): Promise<void>
}

export async function startRedis(dir: string): Promise<Redis> {
  mkdirSync(dir, { recursive: true })
  const port = await freePort()
  const daemon = startDaemon('redis-server', 'redis-server', [
    '--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--protected-mode', 'yes', '--dir', dir
  ], { logFile: join(dir, 'redis.log') })
  const cli = (...args: string[]) => run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeoutMs: 10_000 })
  await waitFor(`redis-server on 127.0.0.1:${port}`, 20_000, async () => {
    if (daemon.exited) fail(`redis-server exited (code ${daemon.exitCode}): ${readFileSync(daemon.logFile, 'utf8').trim().split('\n').pop() ?? ''}`)
    const r = await cli('ping')
    return r.stdout.trim() === 'PONG' ? true : undefined
  })
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    daemon,
    async info() {
      const keys = Number((await cli('dbsize')).stdout.trim()) || 0
      const mem = /used_memory:(\d+)/.exec((await cli('info', 'memory')).stdout)
      return { keys, bytes: mem ? Number(mem[1]) : 0 }
    },
    stop: () => stopDaemon(daemon)
  }
}

// ---------------------------------------------------------------------------------------------
// The team: a CI member and a workstation member of one tool.

export interface Team {
  name: string
  describe: string
  ci: Tool
  ws: Tool
  /** after the CI build: until its results are where the workstation looks; what the store holds */
  afterFill(): Promise<Record<string, number>>
  /** pids whose process trees are this team's servers (for the "other processes" figure) */
  roots(): number[]
  /** WARN/ERROR lines of the servers' logs */
  problems(): string[]
  stop(): Promise<void>
}

/** The parts of a team whose shared store is Redis. */
function redisSide(redis: Redis): Pick<Team, 'afterFill' | 'roots' | 'problems'> {
  return {
    async afterFill() {
      const i = await redis.info()
      return { 'Redis keys': i.keys, 'Redis used_memory bytes': i.bytes }
    },
    roots: () => [redis.daemon.pid],
    problems: () => []
  }
}

/** ccache, each member with its own local dir and base_dir, both on one Redis. */
export async function ccacheTeam(base: Record<string, string>, tmp: string, checkouts: { ci: string; ws: string }): Promise<Team> {
  const redis = await startRedis(join(tmp, 'redis'))
  const member = (role: 'ci' | 'ws') => {
    const dir = join(tmp, role)
    mkdirSync(dir, { recursive: true })
    const t = ccacheTool(base, dir)
    Object.assign(t.env, { CCACHE_REMOTE_STORAGE: redis.url, CCACHE_BASEDIR: checkouts[role] })
    return t
  }
  const ci = member('ci')
  const ws = member('ws')
  try {
    await ci.start()
    await ws.start()
  } catch (err) {
    await redis.stop()
    throw err
  }
  return {
    name: 'ccache',
    describe: `ccache ${await versionOf('ccache')}, a local cache dir per member, remote_storage = redis://127.0.0.1:${redis.port} (redis-server ${await versionOf('redis-server')}), base_dir = the member's checkout`,
    ci,
    ws,
    ...redisSide(redis),
    stop: () => redis.stop()
  }
}

/**
 * sccache, a server per member, both on one Redis. Throws one line when this sccache cannot use
 * Redis (Debian's 0.4 is built without the redis feature: "cache type is not enabled").
 */
export async function sccacheTeam(base: Record<string, string>, tmp: string): Promise<Team> {
  const redis = await startRedis(join(tmp, 'redis'))
  const ci = await sccacheTool(base, join(tmp, 'ci'))
  const ws = await sccacheTool(base, join(tmp, 'ws'))
  for (const [t, d] of [[ci, 'ci'], [ws, 'ws']] as const) {
    mkdirSync(join(tmp, d), { recursive: true })
    t.env.SCCACHE_REDIS = redis.url
  }
  try {
    await ci.start()
    await ws.start()
  } catch (err) {
    await ci.stop()
    await ws.stop()
    await redis.stop()
    throw err
  }
  return {
    name: 'sccache',
    describe: `sccache ${await versionOf('sccache')}, a server per member, SCCACHE_REDIS=redis://127.0.0.1:${redis.port}`,
    ci,
    ws,
    ...redisSide(redis),
    async stop() {
      await ci.stop()
      await ws.stop()
      await redis.stop()
    }
  }
}

/** Whether this sccache binary knows SCCACHE_BASEDIR (it reads its variables by name). */
export function sccacheHasBasedir(): boolean {
  try {
    return readFileSync('/usr/bin/sccache').includes('SCCACHE_BASEDIR')
  } catch {
    return false
  }
}

async function versionOf(bin: string): Promise<string> {
  const r = await run(bin, ['--version'], { timeoutMs: 10_000 }).catch(() => undefined)
  return /\d+\.\d+[\w.~+-]*/.exec(r?.stdout ?? '')?.[0] ?? '?'
}

/** The shared-cache part of a daemon's status. */
interface MeshShared {
  shared: { mesh: { lookups: number; lookups_unasked: number; remote_misses: number; shared_lookup_ms: number; entries_published: number; publish_dropped: number; shared_entries: number; failures: Record<string, number> } | null } | null
}

export interface MeshTeamOptions {
  /** [cache] shared: false on both members turns the shared cache off */
  shared: boolean
  logLevel: string
  /** compiles each member runs at once */
  slots: number
}

/** Two meshcc daemons in one mesh on 127.0.0.1: "ci" (holds entries for the mesh) and "ws" (holds none). */
export async function meshccTeam(base: Record<string, string>, root: string, o: MeshTeamOptions, say: (s: string) => void): Promise<Team> {
  mkdirSync(root, { recursive: true, mode: 0o700 })
  const keyFile = join(root, 'mesh.key')
  meshInit(keyFile)
  const ciNode = makeNode(root, 1)
  const wsNode = makeNode(root, 2)
  const build = [`local_slots = ${o.slots}`, `cores = ${o.slots}`, 'offer = "never"']
  writeConfig(ciNode, keyFile, [], o.logLevel, true, build, o.shared ? [] : ['shared = false'])
  const nodes: BenchNode[] = []
  const stopAll = async () => {
    for (const n of nodes.reverse()) await stopNode(n, 20_000).catch(() => undefined)
  }
  try {
    nodes.push(ciNode)
    await startNode(ciNode, 45_000)
    const ciUp = await waitFor('the CI daemon\'s mesh to start', 30_000, async () => {
      const s = await adminStatus(ciNode.socket, 5000).catch(() => undefined)
      return s?.mesh ? s.mesh : undefined
    }, () => logTail(ciNode))
    const boot = ciUp.addresses.filter((a) => a.startsWith('/ip4/127.0.0.1/tcp/'))
    if (boot.length === 0) fail(`the CI daemon has no 127.0.0.1 address: ${ciUp.addresses.join(' ')}`)
    writeConfig(wsNode, keyFile, boot, o.logLevel, true, build, o.shared ? ['shared_size = 0'] : ['shared = false'])
    nodes.push(wsNode)
    await startNode(wsNode, 45_000)
    // a direct link with a measured round trip: the shared cache asks only such members
    await waitFor('the two daemons to see each other directly', 60_000, async () => {
      for (const [n, other] of [[wsNode, ciUp.peer_id], [ciNode, undefined]] as const) {
        const s = await adminStatus(n.socket, 5000).catch(() => undefined)
        const peer = s?.mesh?.members.find((m) => !m.self && (other === undefined || m.peer_id === other))
        if (!peer || peer.connection !== 'direct' || peer.rtt_ms === null) return undefined
      }
      return true
    }, 500, () => logTail(wsNode))
  } catch (err) {
    await stopAll()
    throw err
  }
  const member = (n: BenchNode, name: string): Tool => {
    const env = cleanEnv({ ...base, MESHCC_CONF: n.conf })
    delete env.NODE_OPTIONS
    const cli = async (args: string[]) => {
      const r = await meshcc(n, args, 60_000)
      if (r.timedOut || r.code !== 0) fail(`meshcc ${args.join(' ')} (${name}) failed: ${(r.stderr || r.stdout).trim().split('\n').pop()}`)
      return r.stdout
    }
    return {
      name,
      cc: `${MESHCC_MAIN} gcc`,
      env,
      async start() {},
      async zero() {
        await cli(['-z'])
      },
      async counts() {
        const s = JSON.parse(await cli(['-s', '--stats-format', 'json'])) as Record<string, unknown>
        const num = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : 0)
        const extra: Record<string, number> = {}
        for (const k of ['mesh_hits', 'tier_hits', 'direct_hits', 'local_compiles', 'remote_compiles', 'fallbacks', 'cache_errors', 'compile_failures']) extra[k] = num(k)
        for (const [reason, v] of Object.entries((s.non_cacheable_reasons ?? {}) as Record<string, number>)) extra[`non-cacheable: ${reason}`] = v
        // why a miss did not ask the mesh: a member that answered late is skipped for a while
        const st = await adminStatus<MeshShared>(n.socket, 5000).catch(() => undefined)
        const m = st?.shared?.mesh
        if (m) {
          Object.assign(extra, { 'mesh lookups (since start)': m.lookups, 'lookups with nobody asked': m.lookups_unasked, 'lookups answered miss': m.remote_misses, 'lookup ms (sum)': Math.round(m.shared_lookup_ms) })
          for (const [k, v] of Object.entries(m.failures)) if (v) extra[`lookup failures: ${k}`] = v
        }
        return { requests: num('compile_requests'), hits: num('cache_hits'), misses: num('cache_misses'), uncacheable: num('non_cacheable'), extra }
      },
      serverCpu: () => treeCpuSeconds(n.pid),
      async stop() {}
    }
  }
  const ci = member(ciNode, 'meshcc CI')
  const ws = member(wsNode, 'meshcc workstation')
  if (o.shared) {
    // proof that sharing works before timing: a unit the CI member compiles is a mesh hit on
    // the workstation (a new unit per try, since a miss there is then a local hit)
    const probeDir = (who: string) => {
      const d = join(root, `probe-${who}`)
      mkdirSync(d, { recursive: true })
      return d
    }
    const ciDir = probeDir('ci')
    const wsDir = probeDir('ws')
    let ok = false
    for (let i = 0; i < 10 && !ok; i++) {
      const src = `int meshcc_shared_probe_${process.pid}_${i}(int x) { return x * ${i + 3}; }\n`
      writeFileSync(join(ciDir, 'probe.c'), src)
      writeFileSync(join(wsDir, 'probe.c'), src)
      const a = await run(MESHCC_MAIN, ['gcc', '-O2', '-c', 'probe.c', '-o', 'probe.o'], { cwd: ciDir, env: ci.env, timeoutMs: 60_000 })
      if (a.code !== 0) fail(`a probe compile on the CI daemon failed: ${(a.stderr || a.stdout).trim().split('\n').pop()}`)
      await sleep(1000 + 500 * i)
      const before = (await ws.counts())!.extra.mesh_hits ?? 0
      const b = await run(MESHCC_MAIN, ['gcc', '-O2', '-c', 'probe.c', '-o', 'probe.o'], { cwd: wsDir, env: ws.env, timeoutMs: 60_000 })
      if (b.code !== 0) fail(`a probe compile on the workstation daemon failed: ${(b.stderr || b.stdout).trim().split('\n').pop()}`)
      ok = ((await ws.counts())!.extra.mesh_hits ?? 0) > before
    }
    if (!ok) {
      await stopAll()
      fail(`the workstation daemon got no mesh hit for 10 probe units the CI daemon had compiled${logTail(wsNode)}`)
    }
    say('meshcc: the workstation gets mesh hits from the CI member (probe unit)')
  }
  return {
    name: o.shared ? 'meshcc' : 'meshcc (shared = false)',
    describe: `meshcc: CI and workstation daemons in one mesh on 127.0.0.1 (mdns = false, bootstrap by address), local_slots = ${o.slots}, offer = "never" (no remote compiles), ` +
      (o.shared ? 'the workstation with shared_size = 0 (holds nothing for others: its hits come from the CI member)' : '[cache] shared = false on both'),
    ci,
    ws,
    async afterFill() {
      // the CI member signs and keeps its results in the background: wait until that settles
      let last = -1
      let stable = 0
      let s: MeshShared | undefined
      for (let i = 0; i < 120 && stable < 3; i++) {
        s = await adminStatus<MeshShared>(ciNode.socket, 5000).catch(() => undefined)
        const held = s?.shared?.mesh?.shared_entries ?? -1
        stable = held === last ? stable + 1 : 0
        last = held
        await sleep(500)
      }
      const m = s?.shared?.mesh
      const out: Record<string, number> = {}
      return m ? { 'CI entries published': m.entries_published, 'CI publish dropped': m.publish_dropped, 'CI entries held for the mesh': m.shared_entries } : out
    },
    roots: () => nodes.map((n) => n.pid).filter((p): p is number => p !== undefined),
    problems() {
      const out: string[] = []
      for (const [n, who] of [[ciNode, 'CI'], [wsNode, 'workstation']] as const) {
        let text = ''
        try {
          text = readFileSync(n.log, 'utf8')
        } catch {
          continue
        }
        for (const line of text.split('\n')) if (/^\S+\s+(WARN|ERROR)\b/.test(line)) out.push(`${who}: ${line}`)
      }
      return out
    },
    stop: stopAll
  }
}
