// The set-up of the rows about a hostile member (mesh fuzzing, hostile jobs, intruders, crafted
// toolchains), made once and shared by them, inside the namespace lab (chaos-lab.ts):
//   - a real builder daemon (2 cores, job_timeout = 6 s, job_disk = 32 MiB, job_memory = 512 MiB,
//     bubblewrap), its own config dir with identity.key and the mesh key beside it;
//   - two members in this process, real libp2p nodes started with the project's startMesh and
//     the mesh key: "hostile", which turns against the builder, and "honest", which sends an
//     ordinary C unit (real gcc, shipped as a toolchain) and checks the object against gcc's;
//   - the host's bytes a job must not reach: the builder's identity.key, config and mesh key,
//     /etc/shadow, and canary files of this run, whose contents are looked for in every reply;
//   - a TCP listener on the builder's loopback and one on the lab's other host, which no job
//     may reach although the builder's host reaches both.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync, appendFileSync } from 'node:fs'
import { createServer, connect, type Server } from 'node:net'
import { dirname, isAbsolute, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { loadConfig } from '../../src/config.js'
import { silentLogger } from '../../src/log.js'
import { generateMeshKey, writeMeshKey } from '../../src/mesh/keys.js'
import { startMesh, type Mesh } from '../../src/mesh/mesh.js'
import { sendCompileJob, type JobFile, type JobHeader, type JobReply } from '../../src/mesh/protocols/compile-job.js'
import { serveToolchains } from '../../src/mesh/protocols/toolchain-fetch.js'
import { discoverToolchain } from '../../src/toolchain/discover.js'
import { packToolchain } from '../../src/toolchain/pack.js'
import { createInstance, type Instance } from '../../test/helpers/meshcc.js'
import { writeMeshConfig } from '../../test/helpers/mesh-proc.js'
import { HOSTILE_PP_TEXT, buildHostRoot, hostileCompiler } from '../../test/helpers/sandbox.js'
import { daemonStatus, pollFor, sleep, type RowEnv } from './chaos-common.js'
import { labFromEnv } from './chaos-lab.js'

export const JOB_TIMEOUT_S = 6
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')

/** The hostile "compiler" (test/helpers/sandbox.ts), with the modes of the hostile-jobs row; chaos-evil does the rest. */
const EVIL_CC = hostileCompiler({
  memory: 'exec /usr/local/bin/chaos-evil alloc 900000000 "$out"',
  fork: 'exec /usr/local/bin/chaos-evil forkbomb',
  sleep: 'sleep 3600; echo object > "$out"',
  evil: 'exec /usr/local/bin/chaos-evil all "$out"',
  setuid: 'cp /usr/local/bin/chaos-evil ./suid && chmod 4755 ./suid && exec ./suid all "$out"'
})
const EVIL_TOOLS = ['/bin/sh', '/bin/ln', '/usr/bin/mkfifo', '/usr/bin/head', '/usr/bin/tail', '/bin/cp', '/bin/chmod', '/bin/sleep', '/bin/cat', '/bin/mkdir', '/usr/bin/id']

/** An ordinary job: a C unit with a header, its inputs as a client sends them, and gcc's own object. */
export interface OrdinaryJob { header: JobHeader; files: JobFile[]; plain: Buffer }

export interface HostileLab {
  work: string
  builder: Instance
  builderPid: number
  builderPeer: string
  /** the builder's mesh address on 127.0.0.1 */
  builderAddr: string
  meshId: string
  keyFile: string
  hostile: Mesh
  honest: Mesh
  /** the toolchain of real gcc, which honest serves */
  gcc: { hash: string; archive: string }
  /** the hostile toolchain (a shell, coreutils, chaos-evil and the script above), which hostile serves */
  evil: { hash: string }
  /** hostile serves this archive from now on; its sha256 */
  serve(archive: string): string
  /** a job of hostile's: the evil toolchain's script in $MODE, its object at objPath */
  evilHeader(mode: string, env?: Record<string, string>, objPath?: string): { header: JobHeader; files: JobFile[] }
  /** the working directory of hostile's jobs */
  evilCwd: string
  /** payloads built from chaos-evil.c: the program and the gcc plugin */
  payloads: { bin: Buffer; plugin: Buffer }
  /** what chaos-evil is told to try: host files to read, host paths to write, addresses to reach */
  attempts: { read: string[]; write: string[]; connect: string[]; unix: string[] }
  /** one ordinary job from honest: null when the object came back byte-identical to gcc's, else why not */
  ordinaryJob(): Promise<string | null>
  ordinary: OrdinaryJob
  /** a job as `from` sends it: the reply, or the error that ended the stream */
  send(from: Mesh, header: JobHeader, files: JobFile[], timeoutMs?: number): Promise<JobReply | { kind: 'error'; reason: string }>
  /** the host's bytes a job must not get: name → bytes that would show they were read */
  secrets: Map<string, Buffer>
  /** the host files and paths a job must not change or create, as a comparable text */
  hostState(): string
  /** connections the two listeners accepted (beyond the control connection to the target) */
  reached(): { loopback: number; target: number }
  /** the lab's other host, or null outside a lab */
  target: { ip: string; port: number } | null
  loopbackPort: number
  builderRss(): Promise<number>
  /** the builder still runs (the same daemon) and answers its socket */
  builderAlive(): Promise<string | null>
  stop(): Promise<void>
}

let current: Promise<HostileLab> | null = null

/** The lab of this run, made by the first row that asks. */
export function hostileLab(env: RowEnv): Promise<HostileLab> {
  current ??= makeLab(env)
  return current
}

export async function stopHostileLab(): Promise<void> {
  const lab = await current?.catch(() => null)
  current = null
  await lab?.stop()
}

async function makeLab(env: RowEnv): Promise<HostileLab> {
  const stops: Array<() => Promise<void> | void> = []
  const stop = async () => { for (const s of stops.reverse()) { try { await s() } catch { /* going anyway */ } } }
  try {
    return await build(env, stops, stop)
  } catch (err) {
    await stop()
    throw err
  }
}

async function build(env: RowEnv, stops: Array<() => Promise<void> | void>, stop: () => Promise<void>): Promise<HostileLab> {
  const work = join(env.work, 'hostile')
  mkdirSync(work, { recursive: true })
  const keyFile = join(work, 'mesh.key')
  writeMeshKey(keyFile, generateMeshKey())

  env.log('starting the builder daemon')
  const builder = createInstance(`[build]\nlocal_slots = 1\ncores = 2\njob_timeout = ${JOB_TIMEOUT_S}\njob_disk = "32M"\njob_memory = "512M"\n`, 'chaos-builder',
    `listen = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\ndht = false\nkey_file = "${keyFile}"`)
  stops.push(() => builder.stop())
  const configCanary = `# chaos canary ${randomBytes(16).toString('hex')}`
  appendFileSync(builder.conf, `\n${configCanary}\n`)
  const started = await builder.run(['--start-server'])
  if (started.code !== 0) throw new Error(`the builder did not start: ${started.stderr.trim()}`)
  const status = await pollFor(30_000, async () => { const s = await daemonStatus(builder); return s.mesh ? s : undefined }, 250)
  if (!status?.mesh) throw new Error('the builder\'s mesh did not start within 30 s')
  if (!status.mesh.builder.sandbox_ok) throw new Error('the builder has no sandbox (bubblewrap) and takes no jobs')
  const builderPeer = status.mesh.peer_id
  const builderAddr = status.mesh.addresses.find((a) => a.includes('/127.0.0.1/'))!
  const identityFile = join(builder.dir, 'identity.key')

  // the two members of this process
  const member = async (name: string): Promise<Mesh> => {
    const file = writeMeshConfig(work, name, { keyFile, listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [builderAddr], mdns: false, dht: false, cores: 1 })
    const mesh = await startMesh({
      config: loadConfig({ MESHCC_CONF: file, HOME: work }), log: silentLogger, version: 'chaos',
      getLoad: () => ({ cores: 0, running: 0, queued: 0, freeSlots: 0, load1: 0, speed: 1, toolchains: [], accept: 'never', shim: false })
    })
    stops.push(() => mesh.stop())
    return mesh
  }
  const [hostile, honest] = [await member('hostile'), await member('honest')]
  const meshId = hostile.meshId
  const connected = await pollFor(20_000, () => (
    [hostile, honest].every((m) => m.libp2p.getConnections().some((c) => c.remotePeer.toString() === builderPeer)) ? true : undefined), 100)
  if (!connected) throw new Error('the members did not connect to the builder within 20 s')

  // toolchains: real gcc (honest's), the hostile one (hostile's), and whatever a row adds
  env.log('packing the gcc toolchain')
  const gcc = await packToolchain(await discoverToolchain('/usr/bin/gcc', 'gcc'), join(work, 'packed'))
  await serveToolchains(honest.libp2p, meshId, async (h) => (h === gcc.hash ? gcc.archive : null), () => {})
  const served = new Map<string, string>([[gcc.hash, gcc.archive]])
  await serveToolchains(hostile.libp2p, meshId, async (h) => served.get(h) ?? null, () => {})
  const serve = (archive: string): string => {
    const hash = sha256(readFileSync(archive))
    served.set(hash, archive)
    return hash
  }
  const payloads = buildPayloads(work)
  const evilRoot = join(work, 'evil-root')
  mkdirSync(join(evilRoot, 'usr', 'local', 'bin'), { recursive: true })
  buildHostRoot(evilRoot, EVIL_TOOLS)
  writeFileSync(join(evilRoot, 'usr', 'local', 'bin', 'evilcc'), EVIL_CC, { mode: 0o755 })
  writeFileSync(join(evilRoot, 'usr', 'local', 'bin', 'chaos-evil'), payloads.bin, { mode: 0o755 })
  const evilArchive = join(work, 'evil.tar.gz')
  execFileSync('tar', ['--owner=0', '--group=0', '-czf', evilArchive, '-C', evilRoot, '.'])
  const evil = { hash: serve(evilArchive) }

  // what the host has that a job must not reach
  const hostDir = join(work, 'host')
  mkdirSync(hostDir, { recursive: true })
  const canary = randomBytes(32).toString('hex')
  writeFileSync(join(hostDir, 'secret.txt'), `host canary ${canary}\n`, { mode: 0o600 })
  writeFileSync(join(hostDir, 'victim.txt'), 'the host\'s own file, which no job may change\n')
  const secrets = new Map<string, Buffer>([
    ['the canary file', Buffer.from(canary)],
    ['the builder\'s config', Buffer.from(configCanary)],
    ['the mesh key', Buffer.from(readFileSync(keyFile, 'utf8').trim().split('\n').pop()!)],
    ['the builder\'s identity.key', readFileSync(identityFile).subarray(0, 32)]
  ])
  const shadow = existsSync('/etc/shadow') ? readFileSync('/etc/shadow') : Buffer.alloc(0)
  if (shadow.length >= 24) secrets.set('/etc/shadow', shadow.subarray(0, 24))
  const created = [join(hostDir, 'created-by-job'), join(builder.cacheDir, 'written-by-job'), `/tmp/meshcc-chaos-written-by-job-${canary.slice(0, 12)}`]
  const guarded = [join(hostDir, 'victim.txt'), join(hostDir, 'secret.txt'), identityFile, builder.conf, keyFile]
  const hostState = () => [
    ...guarded.map((f) => `${f} ${existsSync(f) ? sha256(readFileSync(f)) : 'missing'}`),
    ...created.map((f) => `${f} ${existsSync(f) ? 'EXISTS' : 'absent'}`),
    `${builder.dir}: ${readdirSync(builder.dir).sort().join(',')}`
  ].join('\n')

  // where no job may connect: the builder's own loopback and the lab's other host
  const loopback = await listen('127.0.0.1')
  stops.push(() => new Promise<void>((r) => loopback.server.close(() => r())))
  const lab = labFromEnv()
  let target: HostileLab['target'] = null
  let targetCount = () => 0
  if (lab) {
    const t = await listenIn(lab.target.ns)
    stops.push(() => { t.child.kill('SIGKILL') })
    // the control: the builder's host itself does reach it
    if (!(await reaches(lab.target.ip, t.port))) throw new Error(`the builder's host cannot reach ${lab.target.ip}:${t.port} in the lab: the network check would prove nothing`)
    await pollFor(2000, () => (t.count() >= 1 ? true : undefined), 50)
    const control = t.count()
    targetCount = () => t.count() - control
    target = { ip: lab.target.ip, port: t.port }
  }
  const attempts = {
    read: [join(hostDir, 'secret.txt'), identityFile, builder.conf, keyFile, '/etc/shadow', `/proc/1/root${identityFile}`, `/proc/self/root${join(hostDir, 'secret.txt')}`,
      `../../../../../../../../..${join(hostDir, 'secret.txt')}`, join(builder.cacheDir, 'stats.json')],
    write: [join(hostDir, 'victim.txt'), ...created, identityFile, builder.conf],
    connect: [`127.0.0.1:${loopback.port}`, ...(target ? [`${target.ip}:${target.port}`] : [])],
    unix: [builder.socket]
  }

  const evilCwd = join(work, 'mallory', 'src')
  mkdirSync(evilCwd, { recursive: true })
  const evilHeader = (mode: string, extraEnv: Record<string, string> = {}, objPath = `${evilCwd}/x.o`) => {
    const src = Buffer.from('int x;\n')
    const header: JobHeader = {
      toolchain: evil.hash, compiler: '/usr/local/bin/evilcc', argv: ['-c', 'x.c', '-o', objPath], cwd: evilCwd,
      env: { MODE: mode, ...extraEnv }, ppHash: sha256(HOSTILE_PP_TEXT), ppArgv: ['-E', 'x.c'], objPath,
      files: [{ path: `${evilCwd}/x.c`, mode: 0o644, size: src.length, hash: sha256(src) }], dirs: []
    }
    return { header, files: [{ path: `${evilCwd}/x.c`, mode: 0o644, data: src }] }
  }

  const send = async (from: Mesh, header: JobHeader, files: JobFile[], timeoutMs = 120_000): Promise<JobReply | { kind: 'error'; reason: string }> => {
    const byPath = new Map(files.map((f) => [f.path, f.data]))
    try {
      return await sendCompileJob(from.libp2p, meshId, builderPeer, header, async (need) => need.map((i) => byPath.get(header.files[i]!.path) ?? Buffer.alloc(0)), { signal: AbortSignal.timeout(timeoutMs) })
    } catch (err) {
      return { kind: 'error', reason: (err as Error).message.split('\n')[0]! }
    }
  }
  const ordinary = ordinaryJob(join(work, 'honest-client'), gcc.hash)
  const ordinaryJobRun = async (): Promise<string | null> => {
    // a full builder refuses (a client would try another peer): here it is asked again
    for (let attempt = 0; ; attempt++) {
      const r = await send(honest, ordinary.header, ordinary.files)
      if (r.kind === 'refused' && attempt < 50) { await sleep(200); continue }
      if (r.kind !== 'done') return `${r.kind}: ${r.reason}`
      if (r.exitCode !== 0) return `exit ${r.exitCode}: ${r.stderr.toString().trim().slice(0, 200)}`
      return r.obj?.equals(ordinary.plain) ? null : 'the object differs from gcc\'s'
    }
  }
  env.log('first ordinary job (the builder fetches the gcc toolchain)')
  const first = await ordinaryJobRun()
  if (first) throw new Error(`the first ordinary job failed: ${first}`)

  return {
    work, builder, builderPid: status.daemon.pid, builderPeer, builderAddr, meshId, keyFile, hostile, honest, gcc, evil, serve,
    evilHeader, evilCwd, payloads, attempts, ordinaryJob: ordinaryJobRun, ordinary, send, secrets, hostState,
    reached: () => ({ loopback: loopback.count(), target: targetCount() }),
    target, loopbackPort: loopback.port,
    builderRss: async () => (await daemonStatus(builder)).daemon.memory.rss,
    builderAlive: async () => {
      try {
        const s = await daemonStatus(builder, 10_000)
        return s.daemon.pid === status.daemon.pid ? null : `the builder was replaced (pid ${status.daemon.pid} → ${s.daemon.pid})`
      } catch (err) {
        return `the builder does not answer: ${(err as Error).message}`
      }
    },
    stop
  }
}

/** chaos-evil.c built as a program and as a gcc plugin. */
function buildPayloads(work: string): { bin: Buffer; plugin: Buffer } {
  const src = resolve(import.meta.dirname, 'chaos-evil.c')
  const bin = join(work, 'chaos-evil')
  const plugin = join(work, 'chaos-evil.so')
  execFileSync('gcc', ['-O2', '-o', bin, src])
  execFileSync('gcc', ['-O2', '-shared', '-fPIC', '-DPLUGIN', '-o', plugin, src])
  return { bin: readFileSync(bin), plugin: readFileSync(plugin) }
}

/** A C unit with a header, sent as a client sends it: every file the preprocessor read, at its own path. */
function ordinaryJob(dir: string, toolchain: string): OrdinaryJob {
  mkdirSync(join(dir, 'include'), { recursive: true })
  writeFileSync(join(dir, 'include', 'twice.h'), '#include <string.h>\nstatic inline int twice(int x) { return 2 * x; }\n')
  writeFileSync(join(dir, 'unit.c'), '#include "twice.h"\nint unit(const char *s) { return twice((int)strlen(s)); }\n')
  const flags = ['-g', '-O2', '-Iinclude']
  execFileSync('gcc', [...flags, '-c', 'unit.c', '-o', 'plain.o'], { cwd: dir })
  return { ...clientJob(dir, 'unit.c', flags, toolchain), plain: readFileSync(join(dir, 'plain.o')) }
}

/**
 * The job a client makes of `gcc <flags> -c <unit>` in dir: the unit and every file its
 * preprocessor read (by the line markers), the preprocessed text's hash; `extra` files and
 * `extraFlags` (payloads) go into the job as well, but not into the preprocessing.
 */
export function clientJob(dir: string, unit: string, flags: string[], toolchain: string, extra: JobFile[] = [], extraFlags: string[] = []): { header: JobHeader; files: JobFile[] } {
  const pp = execFileSync('gcc', [...flags, '-E', unit], { cwd: dir })
  const paths = [...new Set([...pp.toString('utf8').matchAll(/^# \d+ "([^"<]+)"/gm)].map((m) => resolve(dir, m[1]!)))]
    .filter((p) => isAbsolute(p) && statSync(p, { throwIfNoEntry: false })?.isFile())
  const files: JobFile[] = [...paths.map((p) => ({ path: p, mode: statSync(p).mode & 0o777, data: readFileSync(p) })), ...extra]
  const objPath = `${dir}/.meshcc-remote-chaos.o`
  const header: JobHeader = {
    toolchain, compiler: '/usr/bin/gcc', argv: [...extraFlags, ...flags, '-c', unit, '-o', objPath], cwd: dir, env: {},
    ppHash: sha256(pp), ppArgv: [...flags, '-E', unit], objPath,
    files: files.map((f) => ({ path: f.path, mode: f.mode, size: f.data.length, hash: sha256(f.data) })),
    dirs: [...new Set(paths.map((p) => dirname(p)))]
  }
  return { header, files }
}

/** A TCP listener that counts the connections it accepts. */
function listen(host: string): Promise<{ server: Server; port: number; count: () => number }> {
  return new Promise((done, fail) => {
    let n = 0
    const server = createServer((s) => { n++; s.destroy() })
    server.once('error', fail)
    server.listen(0, host, () => done({ server, port: (server.address() as { port: number }).port, count: () => n }))
  })
}

/** The same in another namespace of the lab: a node process there, which prints its port and a line per connection. */
function listenIn(ns: string): Promise<{ child: ChildProcess; port: number; count: () => number }> {
  const script = 'const s=require("net").createServer(c=>{console.log("conn");c.destroy()});s.listen(0,"0.0.0.0",()=>console.log("port "+s.address().port))'
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  let n = 0
  return new Promise((done, fail) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); fail(new Error(`no listener in ${ns} within 10 s`)) }, 10_000)
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line === 'conn') n++
      const m = /^port (\d+)$/.exec(line)
      if (m) { clearTimeout(timer); done({ child, port: Number(m[1]), count: () => n }) }
    })
  })
}

/** Whether this process (the builder's host) can open a TCP connection there. */
function reaches(host: string, port: number): Promise<boolean> {
  return new Promise((done) => {
    const s = connect({ host, port, timeout: 3000 })
    s.once('connect', () => { s.destroy(); done(true) })
    s.once('error', () => done(false))
    s.once('timeout', () => { s.destroy(); done(false) })
  })
}

/** Processes of the user jobs run as (nobody, when the daemon is root): what a job could leave behind. */
export function jobUserProcesses(): number {
  const uid = process.getuid?.() === 0 ? 65534 : -1
  if (uid < 0) return 0
  let n = 0
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue
    try { if (new RegExp(`^Uid:\\s+${uid}\\s`, 'm').test(readFileSync(`/proc/${p}/status`, 'utf8'))) n++ } catch { /* gone */ }
  }
  return n
}
