// Process helpers for the benchmarks: bounded child processes (own process group, killed as a
// group on timeout), wall-clock timing, and CPU accounting of long-lived servers via /proc.
import { spawn } from 'node:child_process'
import { createWriteStream, readdirSync, readFileSync, readlinkSync, type WriteStream } from 'node:fs'
import { createServer } from 'node:net'
import { basename } from 'node:path'

export class BenchError extends Error {}

/** Fail with one clear line (the main script prints only the message). */
export function fail(message: string): never {
  throw new BenchError(message)
}

export interface RunOptions {
  cwd?: string
  env?: NodeJS.ProcessEnv
  /** hard limit; the whole process group is killed when it is reached */
  timeoutMs: number
  /** append stdout+stderr to this file instead of capturing them */
  logFile?: string
  /** keep at most this many characters of captured output (default 1 MiB) */
  captureLimit?: number
}

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  timedOut: boolean
  wallMs: number
  stdout: string
  stderr: string
}

/** Run a program (no shell) with a hard time limit; never rejects for a non-zero exit. */
export function run(cmd: string, args: string[], opts: RunOptions): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const limit = opts.captureLimit ?? 1 << 20
    let log: WriteStream | undefined
    if (opts.logFile) log = createWriteStream(opts.logFile, { flags: 'a' })
    const start = process.hrtime.bigint()
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true // own process group, so a timeout can kill make and everything below it
    })
    let stdout = ''
    let stderr = ''
    let timedOut = false
    if (child.pid) liveGroups.add(child.pid)
    child.stdout.on('data', (d: Buffer) => {
      if (log) log.write(d)
      else if (stdout.length < limit) stdout += d.toString()
    })
    child.stderr.on('data', (d: Buffer) => {
      if (log) log.write(d)
      else if (stderr.length < limit) stderr += d.toString()
    })
    const timer = setTimeout(() => {
      timedOut = true
      killGroup(child.pid, 'SIGTERM')
      setTimeout(() => killGroup(child.pid, 'SIGKILL'), 5000).unref()
    }, opts.timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      if (child.pid) liveGroups.delete(child.pid)
      log?.end()
      reject(new BenchError(`cannot run ${cmd}: ${err.message}`))
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (child.pid) liveGroups.delete(child.pid)
      const wallMs = Number(process.hrtime.bigint() - start) / 1e6
      const done = () => resolve({ code, signal, timedOut, wallMs, stdout, stderr })
      if (log) log.end(done)
      else done()
    })
  })
}

/** Process groups of children still running (each child leads its own group). */
const liveGroups = new Set<number>()

/** Kill every child process group this module started that is still running (on Ctrl-C). */
export function killRunningChildren(): void {
  for (const pid of liveGroups) killGroup(pid, 'SIGTERM')
}

function killGroup(pid: number | undefined, sig: NodeJS.Signals): void {
  if (!pid) return
  try {
    process.kill(-pid, sig)
  } catch {
    // already gone
  }
}

/** Like run() but throws one clear line when the command fails or times out. */
export async function runOk(cmd: string, args: string[], opts: RunOptions, what?: string): Promise<RunResult> {
  const r = await run(cmd, args, opts)
  if (r.timedOut) fail(`${what ?? cmd} timed out after ${Math.round(opts.timeoutMs / 1000)} s`)
  if (r.code !== 0) {
    const tail = (r.stderr || r.stdout).trim().split('\n').slice(-1)[0] ?? ''
    fail(`${what ?? `${cmd} ${args.join(' ')}`} failed (exit ${r.code ?? r.signal})${tail ? `: ${tail}` : ''}${opts.logFile ? ` (log: ${opts.logFile})` : ''}`)
  }
  return r
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      const port = typeof addr === 'object' && addr ? addr.port : 0
      srv.close(() => resolve(port))
    })
  })
}

let clkTck = 100
try {
  // Linux reports times in clock ticks; 100 on every mainstream build, read it anyway.
  const auxv = readFileSync('/proc/self/auxv')
  for (let i = 0; i + 16 <= auxv.length; i += 16) {
    if (Number(auxv.readBigUInt64LE(i)) === 17 /* AT_CLKTCK */) clkTck = Number(auxv.readBigUInt64LE(i + 8)) || 100
  }
} catch {
  // keep 100
}

/**
 * CPU seconds used by a process and its reaped children (utime+stime+cutime+cstime),
 * or undefined when the process is gone.
 */
export function cpuSecondsOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // the command name is in parentheses and may contain spaces: fields start after the last ')'
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // fields[0] is field 3 (state); utime is field 14 → index 11
    const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i] ?? 0), 0)
    return ticks / clkTck
  } catch {
    return undefined
  }
}

/** CPU seconds of the process itself (all its threads), without the children it reaped. */
export function ownCpuSecondsOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11] ?? 0) + Number(fields[12] ?? 0)) / clkTck
  } catch {
    return undefined
  }
}

/**
 * Processes whose environment holds exactly `key=value` and whose executable (or argv[0]) has
 * one of the given base names. The value is a unique temp path of this run, so the match
 * only ever finds processes this benchmark started.
 */
export function findPidsByEnv(key: string, value: string, exeNames: string[]): number[] {
  const want = `${key}=${value}`
  const pids: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const pid = Number(entry)
    if (pid === process.pid) continue
    try {
      const env = readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0')
      if (!env.includes(want)) continue
      const argv0 = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0')
      let exe = ''
      try {
        exe = basename(readlinkSync(`/proc/${pid}/exe`))
      } catch {
        // no access
      }
      const names = [exe, basename(argv0[0] ?? ''), basename(argv0[1] ?? '')]
      if (names.some((n) => exeNames.includes(n))) pids.push(pid)
    } catch {
      // exited meanwhile or not readable
    }
  }
  return pids
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** Busy CPU seconds of the whole machine so far (all cores, from /proc/stat), or undefined. */
export function machineBusySeconds(): number | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? ''
    const f = line.trim().split(/\s+/).slice(1).map(Number)
    // user nice system idle iowait irq softirq steal guest guest_nice; guest is already in user
    const busy = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0)
    return busy / clkTck
  } catch {
    return undefined
  }
}

/** Poll `fn` until it gives a value; fail with one line naming `what` (and `detail()`) at the deadline. */
export async function waitFor<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined> | T | undefined, pollMs: number | (() => string) = 250, detail?: () => string): Promise<T> {
  if (typeof pollMs === 'function') {
    detail = pollMs
    pollMs = 250
  }
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v !== undefined) return v
    if (Date.now() > deadline) fail(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}${detail ? ` ${detail()}` : ''}`)
    await sleep(pollMs)
  }
}

/** A --tools list, each name checked against the known ones. */
export function toolList<T extends string>(spec: string, all: readonly T[]): T[] {
  const names = spec.split(',').map((t) => t.trim()).filter(Boolean)
  for (const t of names) if (!all.includes(t as T)) fail(`unknown tool "${t}" (known: ${all.join(', ')})`)
  return names as T[]
}

/** A whole-number option between 1 and `max`, or a one-line error naming the flag. */
export function countOption(value: string, flag: string, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1 || n > max) fail(`${flag} must be a whole number from 1 to ${max}`)
  return n
}

/** The options every benchmark takes: where results go, no apt-get, help. */
export const COMMON_BENCH_OPTIONS = {
  out: { type: 'string' },
  'no-install': { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false }
} as const
