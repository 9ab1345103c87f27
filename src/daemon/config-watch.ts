// A running daemon follows its config file. The file is stat'ed on the daemon's 2 s tick (a
// stat costs microseconds); when it changed, it is loaded again. Keys the daemon can apply as it
// runs are applied at once; the others (socket, cache directory, mesh, shim …) need a restart,
// which the daemon does itself when idle (daemon.ts). A file that no longer loads changes
// nothing: the daemon keeps its config and says why, in the log and in `meshcc status`.
import { statSync } from 'node:fs'
import { ConfigError, configFilePath, loadConfig, type Config, type ConfigSource } from '../config.js'

/** Keys a running daemon applies without a restart: "section.key". */
export const LIVE_KEYS = new Set(['daemon.idle_timeout', 'daemon.mesh_idle_timeout', 'cache.size', 'log.level', 'build.local_slots', 'build.offer', 'build.job_timeout', 'build.job_disk', 'build.job_memory',
  'cache.shared', 'cache.shared_size', 'cache.trust', 'cache.remote', 'cache.verify_rate'])

export type ConfigChange =
  | { kind: 'unchanged' }
  | { kind: 'invalid'; error: string }
  /** `live`: keys applied in place; `restart`: keys that need a new daemon */
  | { kind: 'changed'; next: Config; live: ConfigSource[]; restart: ConfigSource[] }

export class ConfigWatch {
  private stamp: string

  constructor(private current: Config, private readonly env: NodeJS.ProcessEnv = process.env) {
    this.stamp = this.fileStamp()
  }

  private fileStamp(): string {
    return stampOf(configFilePath(this.env))
  }

  /** Has the file changed since the last check? When it has, what changed (`force`: load it anyway). */
  check(force = false): ConfigChange {
    const stamp = this.fileStamp()
    if (!force && stamp === this.stamp) return { kind: 'unchanged' }
    this.stamp = stamp
    let next: Config
    try {
      next = loadConfig(this.env)
    } catch (err) {
      if (err instanceof ConfigError) return { kind: 'invalid', error: err.message }
      throw err
    }
    const before = new Map(this.current.sources.map((s) => [`${s.section}.${s.key}`, s.value]))
    const changed = next.sources.filter((s) => before.get(`${s.section}.${s.key}`) !== s.value)
    if (changed.length === 0) return { kind: 'unchanged' }
    const live = changed.filter((s) => LIVE_KEYS.has(`${s.section}.${s.key}`))
    const restart = changed.filter((s) => !LIVE_KEYS.has(`${s.section}.${s.key}`))
    this.current = next
    return { kind: 'changed', next, live, restart }
  }
}

function stampOf(file: string): string {
  try {
    const st = statSync(file)
    return `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`
  } catch {
    return 'absent'
  }
}

/** "[cache] size, [mesh] listen" */
export function describeKeys(keys: ConfigSource[]): string {
  return keys.map((s) => `[${s.section}] ${s.key}`).join(', ')
}
