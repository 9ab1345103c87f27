// Talking to the local daemon: one request per connection, starting the daemon on demand.
import type { ChildProcess } from 'node:child_process'
import { connect, type Socket } from 'node:net'
import type { Config } from '../config.js'
import { currentLogFile } from '../log.js'
import { lockHolder, processAlive } from '../util/pid-lock.js'
import { FrameReader, MsgType, encodeFrame, type Frame } from '../daemon/launcher-protocol.js'
import { spawnDaemon } from '../daemon/spawn.js'

export { spawnDaemon } from '../daemon/spawn.js'

export class DaemonUnreachable extends Error {}

function tryConnect(socketPath: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath)
    sock.once('connect', () => {
      sock.off('error', reject)
      resolve(sock)
    })
    sock.once('error', reject)
  })
}

function sendAndReceive(sock: Socket, request: Buffer, timeoutMs: number): Promise<Frame> {
  return new Promise((resolve, reject) => {
    const reader = new FrameReader()
    let done = false
    const finish = (err: Error | null, frame?: Frame) => {
      if (done) return
      done = true
      clearTimeout(timer)
      sock.destroy()
      if (err) reject(err)
      else resolve(frame!)
    }
    const timer = timeoutMs > 0 ? setTimeout(() => finish(new DaemonUnreachable('daemon did not answer in time')), timeoutMs) : undefined
    sock.on('data', (chunk) => {
      try {
        const frames = reader.push(chunk)
        if (frames.length > 0) finish(null, frames[0])
      } catch (err) {
        finish(new DaemonUnreachable(`bad reply from daemon: ${(err as Error).message}`))
      }
    })
    sock.on('error', (err) => finish(new DaemonUnreachable(`daemon connection failed: ${(err as NodeJS.ErrnoException).code ?? err.message}`)))
    sock.on('close', () => finish(new DaemonUnreachable('daemon closed the connection without answering')))
    sock.write(request)
  })
}

export interface RequestOptions {
  /** start the daemon when nobody listens */
  autostart: boolean
  /** 0 = wait as long as it takes (compiles queue in the daemon) */
  timeoutMs: number
}

/** Send one frame to the daemon and wait for its reply. */
export async function requestDaemon(config: Config, request: Buffer, opts: RequestOptions): Promise<Frame> {
  let sock: Socket
  try {
    sock = await connectBusy(config.daemon.socket)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (!opts.autostart || (code !== 'ENOENT' && code !== 'ECONNREFUSED')) {
      throw new DaemonUnreachable(`cannot connect to ${config.daemon.socket}: ${code ?? (err as Error).message}`)
    }
    sock = await startAndConnect(config)
  }
  return sendAndReceive(sock, request, opts.timeoutMs)
}

/** Connect, waiting while the daemon's accept queue is full (EAGAIN when a burst of launchers arrives). */
async function connectBusy(socketPath: string): Promise<Socket> {
  const deadline = Date.now() + 30_000
  let delay = 5
  for (;;) {
    try {
      return await tryConnect(socketPath)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN' || Date.now() > deadline) throw err
      await new Promise((r) => setTimeout(r, delay + Math.random() * delay))
      delay = Math.min(delay * 2, 200)
    }
  }
}

/** Whether the daemon that holds the socket's pid lock is alive (it may be slow to listen on a loaded machine). */
function daemonStarting(config: Config): boolean {
  const pid = lockHolder(`${config.daemon.socket}.pid`)
  return pid !== null && processAlive(pid)
}

// A daemon normally listens within a second. Give up after SOFT_START_MS unless a daemon
// process is visibly alive and starting: then wait up to HARD_START_MS, because a build that
// launches hundreds of compilers at once can starve the daemon's start for many seconds, and
// each launcher that gives up early compiles without the cache.
const SOFT_START_MS = 10_000
const HARD_START_MS = 60_000

async function startAndConnect(config: Config): Promise<Socket> {
  let failed: string | null = null
  const watch = (child: ChildProcess | null) => child?.once('exit', (code) => {
    // exit 0 means another daemon won the race; anything else means it cannot start
    if (code !== 0) failed = `daemon exited with status ${code} at start (see ${currentLogFile(config.cache.dir, config.daemon.socket)})`
  })
  watch(spawnDaemon(config))
  const started = Date.now()
  let delay = 20
  for (;;) {
    await new Promise((r) => setTimeout(r, delay))
    if (failed) throw new DaemonUnreachable(failed)
    try {
      return await connectBusy(config.daemon.socket)
    } catch (err) {
      const waited = Date.now() - started
      if (waited > HARD_START_MS || (waited > SOFT_START_MS && !daemonStarting(config))) {
        throw new DaemonUnreachable(`daemon did not start within ${Math.round(waited / 1000)} s (${(err as NodeJS.ErrnoException).code})`)
      }
      delay = Math.min(delay * 2, 250)
      // a marker from a launcher that died before spawning must not block us forever
      if (waited > SOFT_START_MS / 2 && !daemonStarting(config)) watch(spawnDaemon(config))
    }
  }
}

export async function adminRequest(config: Config, command: string, opts: RequestOptions): Promise<string> {
  const frame = await requestDaemon(config, encodeFrame(MsgType.ADMIN, [command, '']), opts)
  const text = frame.fields[0]?.toString('utf8') ?? ''
  if (frame.type !== MsgType.ADMIN_REPLY) throw new Error(text || 'daemon refused the request')
  return text
}
