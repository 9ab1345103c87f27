// The build's jobserver for the rustc the daemon runs in place of the one cargo started.
//
// cargo hands each rustc its jobserver as inherited descriptors (CARGO_MAKEFLAGS
// `--jobserver-auth=R,W`), and rustc takes one of its tokens per codegen thread beyond its
// first. The daemon's rustc does not inherit them: without a jobserver it makes its own of 32
// tokens, and at -j2 two such rustcs run their LLVM threads side by side on two cores (+4.6 %
// CPU, the median over pairs of crates compiled at once, against sharing two tokens). The native
// launcher, the process cargo started as rustc, holds those descriptors while it waits for the
// daemon and sends its pid: rustc opens the same pipe as /proc/PID/fd/R, in the `fifo:PATH`
// form of GNU make 4.4, which rustc's jobserver crate reads.
import { readlinkSync } from 'node:fs'
import type { CompileRequest } from '../daemon/launcher-protocol.js'

/** The variables a jobserver is described by, in the order rustc's jobserver crate reads them. */
export const JOBSERVER_ENV = ['CARGO_MAKEFLAGS', 'MAKEFLAGS', 'MFLAGS']

/**
 * The path a rustc run here opens to join the build's jobserver (pass it as
 * `--jobserver-auth=fifo:PATH`), or null (it runs with none, as before): no launcher pid (the
 * Node launcher), no descriptor form (`fifo:` already, or none), or descriptors that are not
 * the two ends of one pipe in a process at the request's working directory now.
 */
export function buildJobserver(req: CompileRequest): string | null {
  const pid = req.launcherPid
  if (pid === undefined) return null
  const name = JOBSERVER_ENV.find((k) => req.env[k] !== undefined)
  if (name === undefined) return null
  const fds = authFds(req.env[name]!)
  if (fds === null) return null
  const [r, w] = fds.map((fd) => pipeOf(`/proc/${pid}/fd/${fd}`))
  if (r === null || r !== w) return null
  // the launcher's, not another process's: a launcher in another pid namespace sends a pid that names another one here
  if (linkOf(`/proc/${pid}/cwd`) !== req.cwd) return null
  return `/proc/${pid}/fd/${fds[0]}`
}

/** R and W of the last --jobserver-auth= or --jobserver-fds= (the one the jobserver crate takes), or null. */
function authFds(flags: string): [number, number] | null {
  const at = Math.max(flags.lastIndexOf('--jobserver-auth='), flags.lastIndexOf('--jobserver-fds='))
  if (at < 0) return null
  const value = flags.slice(flags.indexOf('=', at) + 1).split(/\s/)[0]!
  const m = /^(\d+),(\d+)$/.exec(value)
  return m ? [Number(m[1]), Number(m[2])] : null
}

/** The pipe a /proc descriptor link names ('pipe:[inode]'), or null. */
function pipeOf(link: string): string | null {
  return /^pipe:\[\d+\]$/.exec(linkOf(link) ?? '')?.[0] ?? null
}

function linkOf(link: string): string | null {
  try {
    return readlinkSync(link)
  } catch {
    return null
  }
}
