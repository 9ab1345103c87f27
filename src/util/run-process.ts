// Running the compiler on the miss path: node's own spawn, the environment exactly as given.
// execa doubled the daemon's CPU per start (12 against 6 ms for /bin/true, 200 starts each,
// load 8 on 2 cores) for option handling and stream plumbing these calls do not use; a local
// miss starts two processes (the preprocessor, the compiler).
import { spawn } from 'node:child_process'

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

/** Run `cmd args` with stdin closed; never rejects. */
export function runProcess(cmd: string, args: string[], opts: ProcessOptions): Promise<ProcessResult> {
  const maxBuffer = opts.maxBuffer ?? 64 * 1024 * 1024
  const keepStdout = opts.stdout ?? true
  const keepStderr = opts.stderr ?? true
  return new Promise((resolvePromise) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd, env: opts.env, detached: opts.ownGroup ?? false,
      stdio: ['ignore', keepStdout ? 'pipe' : 'ignore', keepStderr ? 'pipe' : 'ignore']
    })
    if (child.pid !== undefined) opts.onSpawn?.(child.pid)
    let overflow = false
    let failed = false
    const collect = (stream: NodeJS.ReadableStream | null, sink?: (b: Buffer) => void): Buffer[] => {
      const chunks: Buffer[] = []
      let size = 0
      stream?.on('data', (b: Buffer) => {
        if (sink) return sink(b)
        size += b.length
        if (size > maxBuffer) {
          if (!overflow) child.kill('SIGKILL')
          overflow = true
          return
        }
        chunks.push(b)
      })
      return chunks
    }
    const out = collect(child.stdout, opts.onStdout)
    const err = collect(child.stderr)
    child.on('error', () => { failed = true })
    // 'close': the process has exited and both pipes are drained
    child.on('close', (code, signal) => {
      resolvePromise({
        exitCode: failed || overflow || code === null ? undefined : code,
        signal,
        stdout: Buffer.concat(out),
        stderr: Buffer.concat(err)
      })
    })
  })
}
