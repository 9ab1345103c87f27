// The native launcher reads only the socket path from the config, so a config broken after the
// daemon started would go unnoticed. The daemon checks the config each launcher names (file
// and MESHCC_* variables, re-read only when the file changes) and, when it is bad, has the
// launcher print the same one line the Node launcher prints and compile without meshcc.
import { statSync } from 'node:fs'
import { ConfigError, configFilePath, loadConfig } from '../config.js'

export class LauncherConfigCheck {
  private readonly seen = new Map<string, { stamp: string; error: string | null }>()

  /** The one-line problem with the launcher's config, or null when it loads. */
  check(env: Record<string, string>): string | null {
    const file = configFilePath(env)
    const vars = Object.keys(env).filter((k) => k.startsWith('MESHCC_')).sort().map((k) => `${k}=${env[k]}`)
    const id = [file, ...vars].join('\0')
    let stamp = 'absent'
    try {
      const st = statSync(file)
      stamp = `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`
    } catch { /* no file: the defaults (or MESHCC_CONF naming a missing file, which loadConfig reports) */ }
    const known = this.seen.get(id)
    if (known && known.stamp === stamp) return known.error
    let error: string | null = null
    try {
      loadConfig(env)
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err
      error = err.message
    }
    if (this.seen.size > 64) this.seen.clear()
    this.seen.set(id, { stamp, error })
    return error
  }
}
