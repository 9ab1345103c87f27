// The daemon's pid lock (<socket>.pid): who holds it, and whether that process is alive.
// Shared by the daemon (taking the lock) and the launcher (waiting for a slow start).
import { readFileSync } from 'node:fs'

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** The pid written in the lock file, or null when there is none or it is not a pid. */
export function lockHolder(lockFile: string): number | null {
  try {
    const pid = Number(readFileSync(lockFile, 'utf8').trim())
    return Number.isInteger(pid) && pid > 0 ? pid : null
  } catch {
    return null
  }
}
