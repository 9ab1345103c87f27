// Running the compiler on the miss path: the environment exactly as given, stdin closed.
// execa doubled the daemon's CPU per start (12 against 6 ms for /bin/true, 200 starts each,
// load 8 on 2 cores) for option handling and stream plumbing these calls do not use; a local
// miss starts two processes (the preprocessor, the compiler).
//
// The processes are started by dist/bin/meshcc-spawn (native/spawn.c), a small helper started
// once, not by node's spawn: that forks the daemon itself, copying the page tables of its heap
// and write-protecting every page, and each page the daemon then writes before the child has
// exec'd takes a fault. A Node process of 240 MiB doing work between starts paid about 13 ms
// of CPU per start that way (7.5 against 21 ms per round, /tmp/forkfault.mjs in the commit),
// and the client daemon starts a preprocessor for every remote job. The helper's fork copies
// next to nothing; the daemon reads the child's pipes through /proc/<helper>/fd/<n>. Without
// the helper (no C compiler at build time, or it died), node's spawn does it as before.
import { spawn, type ChildProcess } from 'node:child_process'
import { accessSync, constants as fsConstants, openSync } from 'node:fs'
import { Socket } from 'node:net'
import { constants as osConstants } from 'node:os'
import { fileURLToPath } from 'node:url'

export interface ProcessResult {
  /** undefined when the process could not start, was killed, or wrote more than maxBuffer */
  exitCode: number | undefined
  signal: NodeJS.Signals | null
  stdout: Buffer
  stderr: Buffer
}

export interface ProcessOptions {
  cwd: string
  env: Record<string, string>
  /** stdout chunks go here instead of into the result */
  onStdout?: (chunk: Buffer) => void
  /** keep stdout, stderr (default true); false discards the stream unread */
  stdout?: boolean
  stderr?: boolean
  /** a stream holding more than this many bytes kills the process (default 64 MiB) */
  maxBuffer?: number
  /** called with the pid as soon as the process exists */
  onSpawn?: (pid: number) => void
  /**
   * start it in a process group of its own (the pid is the group's id), so that a caller that
   * kills it can kill the group: a compiler driver's cc1 and as, which would run on and write
   */
  ownGroup?: boolean
}

/** What one run collects, whoever started the process. */
class Collector {
  private readonly out: Buffer[] = []
  private readonly err: Buffer[] = []
  private size = [0, 0]
  overflow = false

  constructor(private readonly opts: ProcessOptions, private readonly maxBuffer: number, private readonly kill: () => void) {}

  read(stream: NodeJS.ReadableStream | null, which: 0 | 1): void {
    const sink = which === 0 ? this.opts.onStdout : undefined
    const chunks = which === 0 ? this.out : this.err
    stream?.on('data', (b: Buffer) => {
      if (sink) return sink(b)
      this.size[which]! += b.length
      if (this.size[which]! > this.maxBuffer) {
        if (!this.overflow) this.kill()
        this.overflow = true
        return
      }
      chunks.push(b)
    })
  }

  result(code: number | null | undefined, signal: NodeJS.Signals | null): ProcessResult {
    return { exitCode: this.overflow || code === null ? undefined : code, signal, stdout: Buffer.concat(this.out), stderr: Buffer.concat(this.err) }
  }
}

const FAILED: ProcessResult = { exitCode: undefined, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) }

/** Run `cmd args` with stdin closed; never rejects. */
export function runProcess(cmd: string, args: string[], opts: ProcessOptions): Promise<ProcessResult> {
  const helper = spawner()
  return helper ? helper.run(cmd, args, opts) : nodeSpawn(cmd, args, opts)
}

function nodeSpawn(cmd: string, args: string[], opts: ProcessOptions): Promise<ProcessResult> {
  const keepStdout = opts.stdout ?? true
  const keepStderr = opts.stderr ?? true
  return new Promise((resolvePromise) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd, env: opts.env, detached: opts.ownGroup ?? false,
      stdio: ['ignore', keepStdout ? 'pipe' : 'ignore', keepStderr ? 'pipe' : 'ignore']
    })
    if (child.pid !== undefined) opts.onSpawn?.(child.pid)
    let failed = false
    const c = new Collector(opts, opts.maxBuffer ?? 64 * 1024 * 1024, () => child.kill('SIGKILL'))
    c.read(child.stdout, 0)
    c.read(child.stderr, 1)
    child.on('error', () => { failed = true })
    // 'close': the process has exited and both pipes are drained
    child.on('close', (code, signal) => resolvePromise(failed ? FAILED : c.result(code, signal)))
  })
}

const SPAWN_HELPER = fileURLToPath(new URL('../../dist/bin/meshcc-spawn', import.meta.url))
const RECORD = 17
// a number's first name, as node's spawn reports it (6 is SIGABRT, not its alias SIGIOT)
const SIGNAL_NAMES = new Map<number, NodeJS.Signals>()
for (const [name, n] of Object.entries(osConstants.signals)) if (!SIGNAL_NAMES.has(n)) SIGNAL_NAMES.set(n, name as NodeJS.Signals)

interface Run {
  opts: ProcessOptions
  c: Collector
  /** streams still open, and the exit not yet seen */
  open: number
  status: number | null
  resolve: (r: ProcessResult) => void
}

/** The helper process (native/spawn.c) and the runs it has started. */
class Spawner {
  private readonly proc: ChildProcess
  private readonly runs = new Map<number, Run>()
  private nextId = 1
  private pending: Buffer = Buffer.alloc(0)
  dead = false

  constructor() {
    this.proc = spawn(SPAWN_HELPER, [], { stdio: ['pipe', 'pipe', 'ignore'] })
    this.proc.on('error', () => this.die())
    this.proc.on('exit', () => this.die())
    this.proc.stdin!.on('error', () => this.die())
    this.proc.stdout!.on('data', (b: Buffer) => this.onRecords(b))
    // the helper never keeps the daemon (or a test) alive; a run in flight does (ref below)
    this.proc.unref()
    ;(this.proc.stdin as Socket).unref()
    ;(this.proc.stdout as Socket).unref()
  }

  run(cmd: string, args: string[], opts: ProcessOptions): Promise<ProcessResult> {
    const env = Object.entries(opts.env).map(([k, v]) => `${k}=${v}`)
    // the helper's strings end at NUL: such a string cannot be passed (node's spawn throws), so it cannot start
    if ([cmd, opts.cwd, ...args, ...env].some((s) => s.includes('\0'))) return Promise.resolve(FAILED)
    const id = this.nextId++
    const flags = ((opts.stdout ?? true) ? 1 : 0) | ((opts.stderr ?? true) ? 2 : 0) | (opts.ownGroup ? 4 : 0)
    const head = Buffer.allocUnsafe(10)
    head.write('S', 0, 'latin1')
    head.writeUInt32LE(id, 5)
    head[9] = flags
    const list = (items: string[]) => {
      const n = Buffer.allocUnsafe(4)
      n.writeUInt32LE(items.length)
      return [n, ...items.map((s) => Buffer.from(`${s}\0`))]
    }
    const body = Buffer.concat([head, Buffer.from(`${opts.cwd}\0`), ...list([cmd, ...args]), ...list(env)])
    body.writeUInt32LE(body.length - 5, 1)
    return new Promise((resolve) => {
      const c = new Collector(opts, opts.maxBuffer ?? 64 * 1024 * 1024, () => this.send(Buffer.from([0x4b, ...u32(id), ...u32(9)])))
      this.runs.set(id, { opts, c, open: 1, status: null, resolve })
      if (this.runs.size === 1) (this.proc.stdout as Socket).ref()
      this.send(body)
    })
  }

  private send(b: Buffer): void {
    if (!this.dead) this.proc.stdin!.write(b)
  }

  private onRecords(b: Buffer): void {
    let buf = this.pending.length > 0 ? Buffer.concat([this.pending, b]) : b
    let off = 0
    for (; buf.length - off >= RECORD; off += RECORD) {
      const type = String.fromCharCode(buf[off]!)
      const id = buf.readUInt32LE(off + 1)
      const a = buf.readInt32LE(off + 5)
      const run = this.runs.get(id)
      if (!run) continue
      if (type === 's') this.started(id, run, a, buf.readInt32LE(off + 9), buf.readInt32LE(off + 13))
      else if (type === 'f') this.finish(id, run, FAILED)
      else if (type === 'x') { run.status = a; this.settle(id, run) }
    }
    buf = buf.subarray(off)
    this.pending = buf.length > 0 ? Buffer.from(buf) : Buffer.alloc(0)
  }

  private started(id: number, run: Run, pid: number, outFd: number, errFd: number): void {
    // a throwing callback must not leave the run unsettled (its pipes unopened, never 'R')
    try { run.opts.onSpawn?.(pid) } catch { /* the caller's own failure; the run goes on */ }
    const streams: Socket[] = []
    try {
      for (const [fd, which] of [[outFd, 0], [errFd, 1]] as const) {
        if (fd < 0) continue
        const s = new Socket({ fd: openSync(`/proc/${this.proc.pid}/fd/${fd}`, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK), readable: true, writable: false })
        streams.push(s)
        run.open++
        run.c.read(s, which)
        s.on('error', () => {})
        s.on('close', () => { run.open--; this.settle(id, run) })
      }
    } catch {
      // no /proc view of the helper's descriptors: this run fails (the caller falls back), later ones use node's spawn
      for (const s of streams) s.destroy()
      this.send(Buffer.from([0x4b, ...u32(id), ...u32(9)]))
      this.dead = true
    }
    this.send(Buffer.from([0x52, ...u32(id)]))
  }

  private settle(id: number, run: Run): void {
    if (run.status !== null && run.open === 1) {
      const st = run.status
      const code = (st & 0x7f) === 0 ? (st >> 8) & 0xff : null
      const signal = (st & 0x7f) !== 0 ? SIGNAL_NAMES.get(st & 0x7f) ?? null : null
      this.finish(id, run, run.c.result(code, signal))
    }
  }

  private finish(id: number, run: Run, r: ProcessResult): void {
    if (!this.runs.delete(id)) return
    if (this.runs.size === 0) (this.proc.stdout as Socket).unref()
    run.resolve(r)
  }

  private die(): void {
    if (this.dead && this.runs.size === 0) return
    this.dead = true
    // their processes run on unobserved: each run fails, and its caller falls back
    for (const [id, run] of [...this.runs]) this.finish(id, run, FAILED)
  }
}

function u32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff]
}

let helper: Spawner | null | undefined

/** The helper, started on first use; null when it is missing or has died. */
function spawner(): Spawner | null {
  if (helper === undefined) {
    try {
      accessSync(SPAWN_HELPER, fsConstants.X_OK)
      helper = new Spawner()
    } catch {
      helper = null
    }
  }
  if (helper?.dead) helper = null
  return helper
}
