// The `sccache --dist-status` line for a connected scheduler, so meshcc can print the same
// thing a stock client shows (docs/sccache-protocol.md section 2).
import type { SchedulerStatus } from './bincode.js'

/**
 * `{"SchedulerStatus":["<name>",{"num_servers":N,"num_cpus":C,"in_progress":P}]}` —
 * compact serde_json, no spaces, no trailing newline (sccache >= 0.16 prints one after it,
 * older versions none; the caller decides). `name` is JSON-escaped.
 */
export function formatDistStatus(name: string, s: SchedulerStatus): string {
  for (const [k, v] of Object.entries(s)) {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${k}: expected a whole number >= 0, got ${String(v)}`)
  }
  return `{"SchedulerStatus":[${JSON.stringify(name)},{"num_servers":${s.numServers},"num_cpus":${s.numCpus},"in_progress":${s.inProgress}}]}`
}

/**
 * The name a stock client shows for a shim at `address` ("host:port"): its scheduler_url
 * after URL normalisation, which always ends in "/".
 */
export function shimSchedulerUrl(address: string): string {
  return `http://${address}/`
}
