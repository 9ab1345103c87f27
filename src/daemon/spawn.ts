// Starting a daemon in the background: by the first launcher of a build, by admin commands,
// and by a daemon that restarts itself (a changed config, an upgrade).
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, mkdirSync, openSync, rmSync, statSync } from 'node:fs'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Config } from '../config.js'

const MAIN_SCRIPT = fileURLToPath(new URL('../cli/main.js', import.meta.url))

/**
 * Node flags for the daemon process (native/launcher.c passes the same). V8 grows the young
 * generation to 16 MiB per semi-space under steady message traffic; the daemon's big data
 * (sources, objects) lives in Buffers outside the heap, so 4 MiB costs nothing measurable
 * and keeps an idle mesh daemon about 20 MiB smaller.
 */
export const DAEMON_NODE_FLAGS = ['--max-semi-space-size=4']

/**
 * Environment for the daemon process (native/launcher.c sets the same unless the user has):
 * glibc gives each thread that allocates its own malloc arena; two arenas kept an idle
 * 30-member mesh daemon about 4 MiB smaller (npm run bench:mesh), at no measurable CPU.
 */
export const DAEMON_ENV = { MALLOC_ARENA_MAX: '2' }

/** Start a detached daemon that holds none of our file descriptors (ninja waits on our pipes). */
export function spawnDaemon(config: Config): ChildProcess | null {
  // Only one launcher of a burst spawns; the others wait for the socket.
  const marker = `${config.daemon.socket}.starting`
  try {
    if (Date.now() - statSync(marker).mtimeMs < 10_000) return null
    rmSync(marker, { force: true })
  } catch { /* no marker */ }
  try {
    mkdirSync(dirname(config.daemon.socket), { recursive: true, mode: 0o700 })
    closeSync(openSync(marker, 'wx', 0o600))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return null // another launcher is spawning
    // the daemon will report why it cannot use the directory; spawn it anyway
  }
  const child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, MAIN_SCRIPT, 'daemon', '--background'], {
    detached: true,
    stdio: 'ignore',
    env: { ...DAEMON_ENV, ...process.env }
  })
  child.on('error', () => {})
  child.unref()
  return child
}

