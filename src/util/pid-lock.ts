// Pid locks: a file holding the pid of the process that owns something (the daemon's socket,
// <socket>.pid; a mesh identity, identity.key.lock), taken with O_EXCL and taken over when its
// holder is dead. Shared by the daemon (taking the locks) and the launcher (waiting for a slow start).
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs'

/**
 * The fields of /proc/<pid>/stat after "pid (comm)": [state, ppid, …]; null when the process is
 * gone or /proc is not there. comm may hold spaces and parentheses, so from the last ')'.
 */
function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  } catch {
    return null
  }
}

/** The parent of a running process, from /proc; null when it is gone. */
export function parentPid(pid: number): number | null {
  const f = statFields(pid)
  return f ? Number(f[1]) : null
}

/** The state letter (R, S, D, Z, …), or null when the process is gone or /proc is not there. */
function procState(pid: number): string | null {
  return statFields(pid)?.[0] || null
}

/**
 * Whether the process runs. A zombie does not: a daemon killed by SIGKILL (or the OOM killer)
 * stays one until its parent reaps it, which is init's periodic sweep in many containers and
 * VMs (about 2 s here) and never under a parent that does not wait. kill(pid, 0) succeeds on a
 * zombie, so a lock it holds would keep a new daemon from starting for that long.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
  const state = procState(pid)
  return state !== 'Z' && state !== 'X'
}

/** The pid on the lock file's first line, or null when there is none or it is not a pid. */
export function lockHolder(lockFile: string): number | null {
  try {
    const pid = Number(readFileSync(lockFile, 'utf8').split('\n')[0].trim())
    return Number.isInteger(pid) && pid > 0 ? pid : null
  } catch {
    return null
  }
}

/** The lines after the pid (what the holder wrote about itself), or [] when unreadable. */
export function lockDetails(lockFile: string): string[] {
  try {
    return readFileSync(lockFile, 'utf8').split('\n').slice(1).filter((l) => l !== '')
  } catch {
    return []
  }
}

/**
 * Take the lock: our pid on the first line, then `details`. Returns the pid of the live
 * process that holds it instead, or null when we took it. A lock left by a dead process is taken over.
 */
export function takePidLock(lockFile: string, details: string[] = []): number | null {
  let holder: number | null = null
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(lockFile, 'wx', 0o600)
      try { writeSync(fd, [String(process.pid), ...details].join('\n') + '\n') } finally { closeSync(fd) }
      return null
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      holder = lockHolder(lockFile)
      if (holder !== null && holder !== process.pid && processAlive(holder)) return holder
      rmSync(lockFile, { force: true }) // left by a crashed process
    }
  }
  return holder ?? -1
}
