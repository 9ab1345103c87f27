// Runs one compile job from another mesh member under bubblewrap: the unpacked toolchain is
// the (read-only) root, the job's private directory is the only writable host path, and the
// network, pid, ipc and uts namespaces are fresh. The caller needs to tell "the job failed"
// (a compile error: final) from "the sandbox could not be set up" (retry elsewhere), so bwrap's
// own failures come back as `sandboxError`, never as an exit code.
import { spawn } from 'node:child_process'
import { constants as osConstants } from 'node:os'
import { accessSync, constants as fsConstants, existsSync, lstatSync, readdirSync, readlinkSync, type Dirent } from 'node:fs'
import { delimiter, isAbsolute, join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'

export interface SandboxJob {
  /** toolchain root, mounted read-only as / */
  root: string
  /** private writable job directory on the host, mounted at `cwd` inside */
  jobDir: string
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
  /** cap on stdout+stderr captured, and (separately) on the total size of the files left in jobDir */
  maxOutputBytes: number
  /** host paths of the files in jobDir that the caller put there (the job's inputs): not
   *  counted as output, and not stat'ed one by one after every job */
  inputs?: ReadonlySet<string>
  /** optional RLIMIT_AS */
  maxMemoryBytes?: number
  /** size of the job's private /tmp (tmpfs, i.e. host memory); also the largest file the job may
   *  write anywhere (RLIMIT_FSIZE). Default: 4 × maxOutputBytes, at least 16 MiB. */
  tmpBytes?: number
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
  /** bwrap itself failed (setup), as opposed to the job failing: means "retry elsewhere" */
  sandboxError: string | null
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

// The host's shell sets the rlimits and then execs bwrap, so the limits cover the job without
// meshcc itself being limited; sh is always there even where prlimit(1) is not.
const HOST_SH = '/bin/sh'
/**
 * dist/bin/meshcc-reap (native/reap.c): the sandbox runs as its child, so bwrap's namespace
 * init, which bwrap leaves behind when it exits, is reaped there and not by PID 1, and the
 * job's CPU (the compile itself) counts among the daemon's children. The same path from
 * src/sandbox/ and from the bundled dist/cli/; without the binary the sandbox runs directly.
 */
const REAPER = fileURLToPath(new URL('../../dist/bin/meshcc-reap', import.meta.url))
let reaperFound: boolean | undefined
// Mounted by us, whatever the toolchain has there.
const RESERVED_TOP = new Set(['proc', 'dev'])
/**
 * The job's private scratch space (TMPDIR). Not /tmp: a client's sources and headers may live
 * under /tmp, and they must stay visible at their own paths.
 */
export const SCRATCH_DIR = '/.meshcc-tmp'
const MIN_TMP_BYTES = 16 * 1024 * 1024
// After the sandbox's bwrap has exited, give the pipes this long to drain before giving up.
const DRAIN_MS = 2000

// Flags every job gets. Notes from bubblewrap 0.8.0 running as root:
// - --cap-drop ALL: as root bwrap would otherwise leave the job all capabilities.
// - --remount-ro /proc (below): without it a job run by root could write /proc/sys/* (the
//   host's real sysctls: kernel.core_pattern was writable in testing, with or without a user
//   namespace); bwrap's own read-only cover of /proc/sys did not take effect, and the job is
//   still uid 0 on the host as far as file permissions go.
// - --unshare-user --disable-userns: the job cannot create user namespaces of its own (the
//   usual kernel attack surface); dropped when the probe shows they are unavailable.
const BASE_FLAGS = ['--unshare-all', '--die-with-parent', '--new-session', '--cap-drop', 'ALL', '--hostname', 'meshcc']
const USERNS_FLAGS = ['--unshare-user', '--disable-userns']

interface BwrapInfo { path: string; version: string; userns: boolean }

let checked: Promise<BwrapInfo | string> | null = null

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
    // The same features a job uses, on the host's own root (read-only) so no toolchain is needed.
    const trial = (extra: string[]) => runQuiet(path, [
      ...BASE_FLAGS, ...extra, '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev',
      '--size', String(MIN_TMP_BYTES), '--tmpfs', '/tmp', '--remount-ro', '/proc', '--remount-ro', '/',
      '--json-status-fd', '1', '--clearenv', '--', HOST_SH, '-c', 'exit 0'
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
  const tmpBytes = Math.max(1, Math.floor(job.tmpBytes ?? Math.max(MIN_TMP_BYTES, 4 * job.maxOutputBytes)))
  const args = [
    ...BASE_FLAGS, ...(info.userns ? USERNS_FLAGS : []),
    '--json-status-fd', '3',
    ...mounts,
    '--proc', '/proc', '--dev', '/dev',
    '--size', String(tmpBytes), '--tmpfs', SCRATCH_DIR,
    '--bind', job.jobDir, cwd,
    '--remount-ro', '/proc', '--remount-ro', '/',
    '--chdir', cwd,
    '--clearenv',
    ...Object.entries({ ...job.env, TMPDIR: SCRATCH_DIR }).flatMap(([k, v]) => ['--setenv', k, v]),
    '--', ...job.argv
  ]
  const cpu = Math.max(1, Math.ceil(job.cpuSeconds))
  // ulimit -f counts 512-byte blocks, -v KiB. Core dumps off: a SIGXCPU'd compiler would
  // otherwise drop a core file into the job directory.
  const limits = [
    'ulimit -c 0',
    // Hard limit one second above the soft one: at the soft limit the job gets SIGXCPU (so the
    // result says why it died); with both equal the kernel sends a bare SIGKILL instead.
    // (soft first: a hard limit below the current soft one is EINVAL)
    `ulimit -S -t ${cpu}`,
    `ulimit -H -t ${cpu + 1}`,
    `ulimit -f ${Math.max(1, Math.floor(tmpBytes / 512))}`,
    ...(job.maxMemoryBytes !== undefined ? [`ulimit -v ${Math.max(1, Math.floor(job.maxMemoryBytes / 1024))}`] : [])
  ]
  const script = `${limits.join(' && ')} && exec "$@"`

  return new Promise<SandboxResult>((resolve) => {
    let child: ReturnType<typeof spawn>
    try {
      // detached: the reaper, sh and bwrap lead a process group of their own, so the timeout
      // can kill it whole. bwrap's children are in a fresh session (--new-session) but also in
      // bwrap's pid namespace, whose init dies with bwrap (--die-with-parent).
      reaperFound ??= existsSync(REAPER)
      const argv = [HOST_SH, '-c', script, 'meshcc-sandbox', info.path, ...args]
      child = spawn(reaperFound ? REAPER : argv[0]!, reaperFound ? argv : argv.slice(1), {
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
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

    // setTimeout fires at once for delays beyond 2^31-1 ms
    const timer = setTimeout(() => { timedOut = true; killGroup() }, Math.min(job.timeoutMs, 2 ** 31 - 1))
    let drainTimer: NodeJS.Timeout | undefined
    child.on('error', (e) => { spawnError = e.message })
    child.on('exit', (code, signal) => {
      exited = true
      exitCode = code
      exitSignal = signal
      clearTimeout(timer)
      // Nothing in the sandbox outlives bwrap, but never hang on a pipe someone kept open.
      drainTimer = setTimeout(() => {
        child.stdout!.destroy(); child.stderr!.destroy(); child.stdio[3]!.destroy()
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
      const base = { stdout, stderr, timedOut, outputTooLarge }
      // bwrap writes {"exit-code": N} only when the job itself ran and exited; without it
      // the sandbox never got as far as the job (or we killed it first).
      const jobStatus = parseExitCode(Buffer.concat(status).toString('utf8'))
      if (timedOut || (outputTooLarge && jobStatus === null)) {
        return { ...base, exitCode: null, signal: 'SIGKILL', sandboxError: null, outputTooLarge: outputTooLarge || dirTooLarge(job) }
      }
      if (jobStatus === null) {
        const why = spawnError ?? bwrapMessage(stderr)
          ?? (exitSignal ? `bwrap killed by ${exitSignal}` : `bwrap exited with code ${exitCode} before the job ran`)
        return { ...base, exitCode: null, signal: null, sandboxError: why }
      }
      // bwrap folds "killed by signal N" into exit status 128+N, like a shell does.
      const sig = jobStatus > 128 ? signalName(jobStatus - 128) : null
      const tooLarge = outputTooLarge || sig === 'SIGXFSZ' || dirTooLarge(job)
      return { ...base, outputTooLarge: tooLarge, exitCode: sig ? null : jobStatus, signal: sig, sandboxError: null }
    }
  })
}

// Mount layout. bwrap 0.8 cannot overlay, and `--ro-bind <root> /` leaves a read-only root in
// which bwrap cannot create the mount point for `cwd` (nor /proc, /dev, /tmp when the toolchain
// lacks them: "Can't mkdir …: Read-only file system"). So / stays bwrap's own tmpfs and the
// toolchain is bound into it entry by entry. Along the path to `cwd`, every directory the root
// has is rebuilt the same way one level down (its other entries bound, the one on the path
// recursed into); from the first component the root lacks (or has as a symlink or file, which
// the client's real directory shadows) bwrap creates the directories itself in the tmpfs. The
// job directory is bound at `cwd` last, then / is remounted read-only. Cost: one mount per entry
// of each directory on the path, usually a few dozen.
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
      else if (st.isDirectory() || st.isFile()) ops.push('--ro-bind', src, dest)
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
  if (!isAbsolute(job.jobDir)) bad(`jobDir must be absolute: ${job.jobDir}`)
  if (!job.cwd.startsWith('/')) bad(`cwd must be absolute: ${job.cwd}`)
  const cwd = posix.normalize(job.cwd).replace(/\/+$/, '') || '/'
  if (job.cwd.split('/').includes('..')) bad(`cwd must not contain '..': ${job.cwd}`)
  if (cwd === '/') bad('cwd must not be /')
  if (/^\/(proc|dev)(\/|$)/.test(cwd)) bad(`cwd must not be under /proc or /dev: ${cwd}`)
  if (job.argv.length === 0 || !job.argv[0]!.startsWith('/')) bad(`argv[0] must be an absolute path inside the root: ${job.argv[0] ?? '(none)'}`)
  for (const k of Object.keys(job.env)) {
    if (k === '' || k.includes('=')) bad(`invalid environment variable name: ${JSON.stringify(k)}`)
  }
  const strings = [job.root, job.jobDir, cwd, ...job.argv, ...Object.entries(job.env).flat()]
  if (strings.some((s) => s.includes('\0'))) bad('NUL byte in job paths, argv or env')
  for (const [n, v] of [['timeoutMs', job.timeoutMs], ['cpuSeconds', job.cpuSeconds], ['maxOutputBytes', job.maxOutputBytes]] as const) {
    if (!Number.isFinite(v) || v <= 0) bad(`${n} must be a positive number`)
  }
  return cwd
}

/**
 * Total apparent size of the files in jobDir (inputs included); stops counting past the cap.
 * Synchronous: a kept kernel tree has a hundred directories, and a readdir through the thread
 * pool costs several times the syscall; after every job.
 */
function dirTooLarge(job: SandboxJob): boolean {
  let total = 0
  const walk = (dir: string): boolean => {
    let entries: Dirent[]
    try { entries = readdirSync(dir, { withFileTypes: true }) } catch { return false }
    for (const e of entries) {
      const p = `${dir}/${e.name}` // dir is absolute and normal: path.join's normalising showed in the builder's profile
      if (e.isDirectory()) {
        if (walk(p)) return true
        continue
      }
      if (e.isFile() && job.inputs?.has(p)) continue
      try { total += lstatSync(p).size } catch { continue }
      if (total > job.maxOutputBytes) return true
    }
    return false
  }
  return walk(posix.normalize(job.jobDir).replace(/(.)\/+$/, '$1'))
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
  const lines = stderr.toString('utf8').split('\n').filter((l) => l.startsWith('bwrap:') || l.startsWith('meshcc-sandbox:'))
  return lines.length > 0 ? lines.join('; ').slice(0, 500) : null
}

const SIGNAL_NAMES = new Map(Object.entries(osConstants.signals).map(([name, n]) => [n as number, name]))
function signalName(n: number): string | null {
  return SIGNAL_NAMES.get(n) ?? null
}

function failed(reason: string): SandboxResult {
  return { exitCode: null, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), timedOut: false, outputTooLarge: false, sandboxError: reason }
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
