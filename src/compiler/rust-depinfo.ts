// What rustc's dep-info (--emit=dep-info) says a crate read: the prerequisites of its first
// rule (every source file, include_str!/include_bytes! files too) and the environment
// variables env!/option_env! looked up, from its "# env-dep:NAME=VALUE" lines ("# env-dep:NAME"
// when unset). rustc escapes a blank in a file name as "\ " (as gcc does, see depfile.ts) and
// "\", newline and CR in an env-dep name or value as "\\", "\n", "\r".
import { depfilePrerequisites } from './depfile.js'

export interface DepInfo {
  /** as written: relative to the compile's working directory, or absolute */
  files: string[]
  env: Array<[string, string | null]>
}

const ENV_DEP = '# env-dep:'

function unescapeEnv(s: string): string {
  return s.replace(/\\(.)/g, (m, c: string) => (c === 'n' ? '\n' : c === 'r' ? '\r' : c === '\\' ? '\\' : m))
}

export function parseDepInfo(text: string): DepInfo {
  const env = new Map<string, string | null>()
  for (const line of text.split('\n')) {
    if (!line.startsWith(ENV_DEP)) continue
    const body = line.slice(ENV_DEP.length)
    const eq = body.indexOf('=')
    if (eq === -1) env.set(unescapeEnv(body), null)
    else env.set(unescapeEnv(body.slice(0, eq)), unescapeEnv(body.slice(eq + 1)))
  }
  return { files: depfilePrerequisites(text), env: [...env].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)) }
}
