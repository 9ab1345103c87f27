// Runs one compile job from another mesh member under bubblewrap: the unpacked toolchain is
// the (read-only) root, the client's inputs appear read-only at their paths, the job can write
// only a size-capped tmpfs, and the network, pid, ipc and uts namespaces are fresh. The caller
// needs to tell "the job failed" (a compile error: final) from "the sandbox could not be set
// up" (retry elsewhere), so bwrap's own failures come back as `sandboxError`, never as an exit
// code.
//
// A member holding the mesh key controls everything inside the sandbox (the toolchain and
// flags come from the client); nothing outside may be within its reach. The layout, built by
// dist/bin/meshcc-reap (native/reap.c) before bwrap starts:
// - The job runs as an unprivileged user: the daemon's own, or `nobody` (65534) when the daemon
//   is root; bwrap then runs as that user too, in a user namespace of its own per job.
// - What it may write is one tmpfs of `diskBytes` (nosuid, nodev), the job's working directory
//   and its TMPDIR both, so a job fills its own tmpfs and never the builder's disk. The
//   builder's kept tree of the client's inputs is bound read-only, entry by entry, into that
//   working directory: jobs cannot change it.
// - After the job, the reaper keeps its mount namespace (and so the tmpfs) until the daemon
//   has taken the object out through /proc/<reaper>/root with ./job-output.ts, never through a
//   host path: whatever links the job left there lead nowhere but into the sandbox.
// - The mount table inside still names the host directories the read-only binds come from
//   (/proc/self/mountinfo); the defence is that nothing outside those binds is reachable.
import { spawn } from 'node:child_process'
import { constants as osConstants } from 'node:os'
import { accessSync, constants as fsConstants, lstatSync, readdirSync, readlinkSync } from 'node:fs'
import { statfs } from 'node:fs/promises'
import type { Socket } from 'node:net'
import { delimiter, isAbsolute, join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'
import { jobMemoryMode, type JobCgroup } from './cgroup.js'
import { readJobFile, readJobFiles, type JobFile, type JobFiles } from './job-output.js'

export interface SandboxJob {
  /** toolchain root, mounted read-only as / */
  root: string
  /** a host directory whose named entries appear, read-only, in the job's working directory */
  inputs?: { dir: string; entries: readonly string[] }
  /** absolute path the job sees as its working directory (the client's own cwd, so debug info matches) */
  cwd: string
  /** argv[0] is an absolute path inside the root */
  argv: string[]
  /** the only environment the job gets (clean env) */
  env: Record<string, string>
  /** wall clock; the whole sandbox is killed when exceeded */
  timeoutMs: number
  /** RLIMIT_CPU for the job (per process) */
  cpuSeconds: number
  /** cap on stdout+stderr captured, and on the collected file */
  maxOutputBytes: number
  /** all the job may write, in its working directory and TMPDIR together (a tmpfs: memory);
   *  also the largest file (RLIMIT_FSIZE) */
  diskBytes: number
  /** the job's memory: its cgroup's limit (./cgroup.ts), or RLIMIT_AS of each of its processes where no cgroup can be had */
  maxMemoryBytes?: number
  /** a file the job leaves in its working directory (relative path) to take out: the object */
  collect?: string
  /** several such files (a job with more than one output), taken within maxOutputBytes together */
  collectFiles?: string[]
  /** abort: kill the whole sandbox (the job's client no longer wants its result) */
  signal?: AbortSignal
}

export interface SandboxResult {
  /** the job's exit status; null when it was killed by a signal (or never ran) */
  exitCode: number | null
  /** e.g. 'SIGKILL' (timeout / output cap), 'SIGXCPU' (CPU limit), 'SIGXFSZ' (file too large) */
  signal: string | null
  stdout: Buffer
  stderr: Buffer
  timedOut: boolean
  outputTooLarge: boolean
  /** the job filled its tmpfs (diskBytes), or a file reached it (SIGXFSZ) */
  diskFull: boolean
  /** the file named by `collect`, or why it was not taken; null when not asked for or the job never ended */
  collected: JobFile | null
  /** the files named by `collectFiles`, or why they were not taken; null as for `collected` */
  collectedFiles?: JobFiles | null
  /** bwrap itself failed (setup), as opposed to the job failing: means "retry elsewhere" */
  sandboxError: string | null
  /** the kernel killed a process of the job at its cgroup's memory limit (maxMemoryBytes) */
  memoryLimitReached?: boolean
}

export type BwrapCheck =
  | { ok: true; path: string; version: string }
  | { ok: false; reason: string }

/** A job that cannot be run anywhere as given (relative paths, bad env names…): a caller bug or
 *  a hostile request, so it is neither a job failure nor a reason to retry elsewhere. */
export class SandboxJobError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'SandboxJobError'
  }
}

/**
 * dist/bin/meshcc-reap (native/reap.c) builds the jail the sandbox runs in (see the top of this
 * file), sets the job's resource limits, and reaps: bwrap's namespace init, which bwrap leaves
 * behind when it exits, is reaped there and not by PID 1, so the job's CPU (the compile
 * itself) counts among the daemon's children. The same path from src/sandbox/ and from the
 * bundled dist/cli/. Without it (no C compiler at build time) there is no jail and no job runs.
 */
const REAPER = fileURLToPath(new URL('../../dist/bin/meshcc-reap', import.meta.url))
/** where the reaper binds the bind sources (src=… in order) and mounts the job's tmpfs; its /tmp, never the host's */
const JAIL_IN = '/tmp/in'
const JAIL_OUT = '/tmp/out'
/** the user a root daemon's jobs run as */
const NOBODY = 65534
/**
 * RLIMIT_NPROC (threads included), counted per job: the reaper's own user namespace makes the
 * count the job's alone. A compile is a driver, cc1 and as (gcc -pipe: all three at once)
 * beside bwrap, its init and the reaper; a fork bomb stops here, and with it the number of
 * processes each allowed maxMemoryBytes.
 */
export const JOB_PROCESSES = 16
/**
 * The job's private scratch space (TMPDIR). Not /tmp: a client's sources and headers may live
 * under /tmp, and they must stay visible at their own paths.
 */
export const SCRATCH_DIR = '/.meshcc-tmp'
// Mounted by us, whatever the toolchain has there.
const RESERVED_TOP = new Set(['proc', 'dev', SCRATCH_DIR.slice(1)])
const PROBE_DISK_BYTES = 1024 * 1024
// After the sandbox's bwrap has exited, give the pipes this long to drain before giving up.
const DRAIN_MS = 2000

// Flags every job gets. Notes from bubblewrap 0.8.0:
// - --cap-drop ALL: bwrap run by root would otherwise leave the job all capabilities (it runs
//   as an unprivileged user now, where this changes nothing).
// - --remount-ro /proc (below): without it a job run by root could write /proc/sys/* (the
//   host's real sysctls: kernel.core_pattern was writable in testing, with or without a user
//   namespace); bwrap's own read-only cover of /proc/sys did not take effect.
// - --remount-ro /dev (below): --dev is a tmpfs without a size, which the job could fill.
// - --unshare-user --disable-userns: the job cannot create user namespaces of its own (the
//   usual kernel attack surface); dropped when the probe shows they are unavailable.
const BASE_FLAGS = ['--unshare-all', '--die-with-parent', '--new-session', '--cap-drop', 'ALL', '--hostname', 'meshcc']
const USERNS_FLAGS = ['--unshare-user', '--disable-userns']

interface BwrapInfo { path: string; version: string; userns: boolean }

let checked: Promise<BwrapInfo | string> | null = null

/** The user jobs run as: the daemon's own, or nobody when the daemon is root. */
function jobUser(): { uid: number; gid: number } {
  const uid = process.getuid?.() ?? NOBODY
  return uid === 0 ? { uid: NOBODY, gid: NOBODY } : { uid, gid: process.getgid?.() ?? NOBODY }
}

/** The reaper's arguments that build the jail. */
function jailArgs(diskBytes: number, limits: string[], srcs: string[]): string[] {
  const { uid, gid } = jobUser()
  return ['--jail', `disk=${diskBytes}`, `uid=${uid}`, `gid=${gid}`, ...limits, ...srcs.map((s) => `src=${s}`), '--']
}

/** Finds bwrap on PATH and proves it can build the kind of sandbox runSandboxed uses. Memoised. */
export async function checkBwrap(): Promise<BwrapCheck> {
  const r = await probe()
  return typeof r === 'string' ? { ok: false, reason: r } : { ok: true, path: r.path, version: r.version }
}

function probe(): Promise<BwrapInfo | string> {
  checked ??= (async () => {
    // MESHCC_BWRAP names the binary explicitly (a custom install; empty = treat as absent)
    const explicit = process.env.MESHCC_BWRAP
    const path = explicit !== undefined ? (explicit !== '' && isExecutable(explicit) ? explicit : null) : findOnPath('bwrap')
    if (!path) return explicit !== undefined ? `MESHCC_BWRAP="${explicit}" is not an executable bwrap` : 'bwrap (bubblewrap) not found on PATH'
    const v = await runQuiet(path, ['--version'], 5000)
    const m = /bubblewrap\s+(\S+)/.exec(v.stdout)
    if (v.code !== 0 || !m) return `${path} --version failed: ${oneLine(v.stderr || v.stdout) || `exit ${v.code}`}`
    if (!isExecutable(REAPER)) return `${REAPER} is missing (native/reap.c is built by npm run build with a C compiler)`
    // The same jail and features a job uses, on the host's own root (read-only) so no toolchain is needed.
    const trial = (extra: string[]) => runQuiet(REAPER, [
      ...jailArgs(PROBE_DISK_BYTES, [`nproc=${JOB_PROCESSES}`], []), path,
      ...BASE_FLAGS, ...extra, '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev',
      '--bind', `${JAIL_OUT}/tmp`, '/tmp', '--remount-ro', '/proc', '--remount-ro', '/dev', '--remount-ro', '/',
      '--json-status-fd', '1', '--clearenv', '--', '/bin/sh', '-c', 'exit 0'
    ], 10_000)
    let t = await trial(USERNS_FLAGS)
    if (/"exit-code": 0\b/.test(t.stdout)) return { path, version: m[1]!, userns: true }
    t = await trial([])
    if (/"exit-code": 0\b/.test(t.stdout)) return { path, version: m[1]!, userns: false }
    return `bwrap ${m[1]} cannot create a sandbox here: ${oneLine(t.stderr) || `exit ${t.code}`}`
  })()
  return checked
}

export async function runSandboxed(job: SandboxJob): Promise<SandboxResult> {
  const cwd = validate(job)
  const info = await probe()
  if (typeof info === 'string') return failed(info)

  let mounts: string[]
  try {
    mounts = mountPlan(job.root, cwd)
  } catch (e) {
    // Unreadable or missing root: this machine's toolchain copy is broken, not the job.
    return failed(`cannot read toolchain root ${job.root}: ${(e as Error).message}`)
  }
  const diskBytes = Math.floor(job.diskBytes)
  const args = [
    ...BASE_FLAGS, ...(info.userns ? USERNS_FLAGS : []),
    '--json-status-fd', '3',
    ...mounts,
    '--proc', '/proc', '--dev', '/dev',
    '--bind', `${JAIL_OUT}/tmp`, SCRATCH_DIR,
    '--bind', `${JAIL_OUT}/cwd`, cwd,
    ...(job.inputs?.entries ?? []).flatMap((e) => ['--ro-bind', `${JAIL_IN}/1/${e}`, `${cwd}/${e}`]),
    '--remount-ro', '/proc', '--remount-ro', '/dev', '--remount-ro', '/',
    '--chdir', cwd,
    '--clearenv',
    ...Object.entries({ ...job.env, TMPDIR: SCRATCH_DIR }).flatMap(([k, v]) => ['--setenv', k, v]),
    '--', ...job.argv
  ]
  // The tmpfs's pages are charged to the cgroup too: job_disk and job_memory stay two limits.
  const cgroup = await jobCgroup(job.maxMemoryBytes === undefined ? undefined : job.maxMemoryBytes + diskBytes)
  if (typeof cgroup === 'string') return failed(cgroup)
  const limits = [
    `cpu=${Math.max(1, Math.ceil(job.cpuSeconds))}`, `fsize=${diskBytes}`, `nproc=${JOB_PROCESSES}`,
    ...(cgroup ? cgroup.dirs.map((d) => `cgroup=${d}`) : job.maxMemoryBytes !== undefined ? [`as=${Math.max(1, Math.floor(job.maxMemoryBytes))}`] : [])
  ]
  const reaperArgs = [...jailArgs(diskBytes, limits, [job.root, ...(job.inputs ? [job.inputs.dir] : [])]), info.path, ...args]

  const result = new Promise<SandboxResult>((resolve) => {
    let child: ReturnType<typeof spawn>
    try {
      // detached: the reaper and bwrap lead a process group of their own, so the timeout can
      // kill it whole. bwrap's children are in a fresh session (--new-session) but also in
      // bwrap's pid namespace, whose init dies with bwrap (--die-with-parent).
      // fd 4: the reaper's hold socket (native/reap.c)
      child = spawn(REAPER, reaperArgs, {
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe'],
        env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }
      })
    } catch (e) {
      resolve(failed(`cannot start bwrap: ${(e as Error).message}`))
      return
    }
    const out: Buffer[] = []
    const err: Buffer[] = []
    const status: Buffer[] = []
    let captured = 0
    let timedOut = false
    let outputTooLarge = false
    let diskFull = false
    let collected: JobFile | null = null
    let collectedFiles: JobFiles | null = null
    let killed = false
    let exited = false
    let spawnError: string | null = null
    let exitCode: number | null = null
    let exitSignal: string | null = null

    const killGroup = () => {
      if (killed || exited || child.pid === undefined) return
      killed = true
      try { process.kill(-child.pid, 'SIGKILL') } catch { /* already gone */ }
    }
    const take = (into: Buffer[]) => (chunk: Buffer) => {
      const room = job.maxOutputBytes - captured
      if (chunk.length > room) {
        if (room > 0) into.push(chunk.subarray(0, room))
        captured = job.maxOutputBytes
        outputTooLarge = true
        killGroup()
        return
      }
      captured += chunk.length
      into.push(chunk)
    }
    child.stdout!.on('data', take(out))
    child.stderr!.on('data', take(err))
    child.stdio[3]!.on('data', (c: Buffer) => { if (status.length < 64) status.push(c) })
    // Everything in the sandbox has ended and the reaper holds its tmpfs: look at it and take
    // the object through the reaper's root, then let it go.
    const hold = child.stdio[4] as Socket
    hold.once('data', () => {
      const jailOut = `/proc/${child.pid}/root${JAIL_OUT}`
      void (async () => {
        try {
          const st = await statfs(jailOut)
          diskFull = st.bfree === 0 || st.ffree === 0
        } catch { /* gone: killed meanwhile */ }
        if (job.collect !== undefined) collected = await readJobFile(`${jailOut}/cwd`, job.collect, job.maxOutputBytes)
        if (job.collectFiles !== undefined) collectedFiles = await readJobFiles(`${jailOut}/cwd`, job.collectFiles, job.maxOutputBytes)
      })().finally(() => hold.end())
    })
    hold.on('error', () => undefined)

    // setTimeout fires at once for delays beyond 2^31-1 ms
    const timer = setTimeout(() => { timedOut = true; killGroup() }, Math.min(job.timeoutMs, 2 ** 31 - 1))
    if (job.signal?.aborted) killGroup()
    job.signal?.addEventListener('abort', killGroup, { once: true })
    let drainTimer: NodeJS.Timeout | undefined
    child.on('error', (e) => { spawnError = e.message })
    child.on('exit', (code, signal) => {
      job.signal?.removeEventListener('abort', killGroup)
      exited = true
      exitCode = code
      exitSignal = signal
      clearTimeout(timer)
      // Nothing in the sandbox outlives bwrap, but never hang on a pipe someone kept open.
      drainTimer = setTimeout(() => {
        child.stdout!.destroy(); child.stderr!.destroy(); child.stdio[3]!.destroy(); hold.destroy()
      }, DRAIN_MS)
    })
    let done = false
    const finish = () => {
      if (done) return
      done = true
      clearTimeout(timer)
      if (drainTimer) clearTimeout(drainTimer)
      void settle().then(resolve, (e: Error) => resolve(failed(`sandbox bookkeeping failed: ${e.message}`)))
    }
    child.on('close', finish)
    if (child.pid === undefined) child.once('error', finish)

    const settle = async (): Promise<SandboxResult> => {
      const stdout = Buffer.concat(out)
      const stderr = Buffer.concat(err)
      const base = { stdout, stderr, timedOut, outputTooLarge, diskFull, collected, collectedFiles }
      // bwrap writes {"exit-code": N} only when the job itself ran and exited; without it
      // the sandbox never got as far as the job (or we killed it first).
      const jobStatus = parseExitCode(Buffer.concat(status).toString('utf8'))
      if (timedOut || (outputTooLarge && jobStatus === null)) {
        return { ...base, exitCode: null, signal: 'SIGKILL', sandboxError: null }
      }
      if (jobStatus === null) {
        const why = spawnError ?? bwrapMessage(stderr)
          ?? (exitSignal ? `bwrap killed by ${exitSignal}` : `bwrap exited with code ${exitCode} before the job ran`)
        return { ...base, exitCode: null, signal: null, sandboxError: why }
      }
      // bwrap folds "killed by signal N" into exit status 128+N, like a shell does.
      const sig = jobStatus > 128 ? signalName(jobStatus - 128) : null
      return { ...base, diskFull: diskFull || sig === 'SIGXFSZ', exitCode: sig ? null : jobStatus, signal: sig, sandboxError: null }
    }
  })
  if (!cgroup) return result
  // the reaper has reaped everything in the cgroup by now: removed whatever happened
  try {
    return { ...(await result), memoryLimitReached: await cgroup.memoryLimitReached() }
  } finally {
    await cgroup.remove().catch(() => undefined)
  }
}

/**
 * The job's cgroup with its memory limit, null where this daemon has none to give (RLIMIT_AS
 * then), or why one could not be made (the sandbox's failure: retry elsewhere). The process
 * limit leaves room for the reaper, bwrap and its init beside the job's own JOB_PROCESSES.
 */
async function jobCgroup(maxMemoryBytes: number | undefined): Promise<JobCgroup | null | string> {
  if (maxMemoryBytes === undefined) return null
  const mode = await jobMemoryMode()
  if (!mode.cgroups) return null
  try {
    return await mode.cgroups.create(maxMemoryBytes, JOB_PROCESSES + 4)
  } catch (e) {
    return (e as Error).message
  }
}

// Mount layout. bwrap 0.8 cannot overlay, and `--ro-bind <root> /` leaves a read-only root in
// which bwrap cannot create the mount point for `cwd` (nor /proc, /dev, /tmp when the toolchain
// lacks them: "Can't mkdir …: Read-only file system"). So / stays bwrap's own tmpfs and the
// toolchain is bound into it entry by entry. Along the path to `cwd`, every directory the root
// has is rebuilt the same way one level down (its other entries bound, the one on the path
// recursed into); from the first component the root lacks (or has as a symlink or file, which
// the client's real directory shadows) bwrap creates the directories itself in the tmpfs. The
// job's tmpfs is bound at `cwd` last, the inputs into it, then / is remounted read-only. Cost:
// one mount per entry of each directory on the path, usually a few dozen. The root is read on
// the host and bound from where the reaper put it (JAIL_IN/0).
function mountPlan(root: string, cwd: string): string[] {
  const parts = cwd.split('/').filter(Boolean)
  const ops: string[] = []
  let host = root
  let inside = '/'
  for (let i = 0; ; i++) {
    const next = parts[i]
    let descend = false
    for (const name of readdirSync(host).sort()) {
      if (inside === '/' && RESERVED_TOP.has(name)) continue
      const src = join(host, name)
      const dest = posix.join(inside, name)
      const st = lstatSync(src)
      if (name === next) {
        // The last component is the job dir itself; earlier ones are rebuilt if directories.
        descend = st.isDirectory() && i < parts.length - 1
        continue
      }
      if (st.isSymbolicLink()) ops.push('--symlink', readlinkSync(src), dest)
      else if (st.isDirectory() || st.isFile()) ops.push('--ro-bind', `${JAIL_IN}/0${dest}`, dest)
      // sockets, fifos and device nodes in a toolchain are never wanted
    }
    if (!descend || (i === 0 && RESERVED_TOP.has(next!))) break
    host = join(host, next!)
    inside = posix.join(inside, next!)
  }
  return ops
}

function validate(job: SandboxJob): string {
  const bad = (m: string): never => { throw new SandboxJobError(m) }
  if (!isAbsolute(job.root)) bad(`root must be absolute: ${job.root}`)
  if (job.inputs && !isAbsolute(job.inputs.dir)) bad(`inputs.dir must be absolute: ${job.inputs.dir}`)
  for (const e of job.inputs?.entries ?? []) {
    if (e === '' || e === '.' || e === '..' || e.includes('/')) bad(`inputs entry must be one name: ${JSON.stringify(e)}`)
  }
  if (!job.cwd.startsWith('/')) bad(`cwd must be absolute: ${job.cwd}`)
  const cwd = posix.normalize(job.cwd).replace(/\/+$/, '') || '/'
  if (job.cwd.split('/').includes('..')) bad(`cwd must not contain '..': ${job.cwd}`)
  if (cwd === '/') bad('cwd must not be /')
  if (/^\/(proc|dev|\.meshcc-tmp)(\/|$)/.test(cwd)) bad(`cwd must not be under /proc, /dev or ${SCRATCH_DIR}: ${cwd}`)
  if (job.argv.length === 0 || !job.argv[0]!.startsWith('/')) bad(`argv[0] must be an absolute path inside the root: ${job.argv[0] ?? '(none)'}`)
  for (const k of Object.keys(job.env)) {
    if (k === '' || k.includes('=')) bad(`invalid environment variable name: ${JSON.stringify(k)}`)
  }
  const strings = [job.root, ...(job.inputs ? [job.inputs.dir, ...job.inputs.entries] : []), cwd, ...job.argv, ...Object.entries(job.env).flat(), job.collect ?? '', ...(job.collectFiles ?? [])]
  if (strings.some((s) => s.includes('\0'))) bad('NUL byte in job paths, argv or env')
  for (const [n, v] of [['timeoutMs', job.timeoutMs], ['cpuSeconds', job.cpuSeconds], ['maxOutputBytes', job.maxOutputBytes], ['diskBytes', job.diskBytes], ['maxMemoryBytes', job.maxMemoryBytes ?? 1]] as const) {
    if (!Number.isFinite(v) || v <= 0) bad(`${n} must be a positive number`)
  }
  return cwd
}

function parseExitCode(text: string): number | null {
  // One JSON document per line; the job's status is the one with "exit-code".
  for (const line of text.split('\n')) {
    if (!line.includes('exit-code')) continue
    try {
      const doc = JSON.parse(line) as { 'exit-code'?: unknown }
      if (typeof doc['exit-code'] === 'number') return doc['exit-code']
    } catch { /* partial line */ }
  }
  return null
}

function bwrapMessage(stderr: Buffer): string | null {
  const lines = stderr.toString('utf8').split('\n').filter((l) => l.startsWith('bwrap:') || l.startsWith('meshcc-reap:'))
  return lines.length > 0 ? lines.join('; ').slice(0, 500) : null
}

const SIGNAL_NAMES = new Map(Object.entries(osConstants.signals).map(([name, n]) => [n as number, name]))
function signalName(n: number): string | null {
  return SIGNAL_NAMES.get(n) ?? null
}

function failed(reason: string): SandboxResult {
  return { exitCode: null, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), timedOut: false, outputTooLarge: false, diskFull: false, collected: null, sandboxError: reason }
}

function isExecutable(p: string): boolean {
  try { accessSync(p, fsConstants.X_OK); return true } catch { return false }
}

function findOnPath(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(delimiter)) {
    if (!dir) continue
    const p = join(dir, cmd)
    try { accessSync(p, fsConstants.X_OK); return p } catch { /* next */ }
  }
  return null
}

function oneLine(s: string): string {
  return s.trim().split('\n').join('; ').slice(0, 300)
}

function runQuiet(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, killSignal: 'SIGKILL' })
    let stdout = ''
    let stderr = ''
    c.stdout.on('data', (d: Buffer) => { if (stdout.length < 10_000) stdout += d.toString('utf8') })
    c.stderr.on('data', (d: Buffer) => { if (stderr.length < 10_000) stderr += d.toString('utf8') })
    c.on('error', (e) => resolve({ code: null, stdout, stderr: e.message }))
    c.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}
