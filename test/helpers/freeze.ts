// Making a builder slow by a real cause: the compiler process it runs for a job (inside its
// sandbox) is frozen with SIGSTOP, so the builder daemon stays alive, keeps the job's stream
// going with heartbeats and stays in the view, and the job simply does not finish. Every
// process frozen here is thawed again by thaw(), which a test calls however it ends.
import { readFileSync, readdirSync } from 'node:fs'

export interface Proc { comm: string; ppid: number; state: string }

/** pid → [command name, parent pid, state] of every process, from /proc */
export function processes(): Map<number, Proc> {
  const out = new Map<number, Proc>()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    let stat: string
    try { stat = readFileSync(`/proc/${name}/stat`, 'utf8') } catch { continue }
    // "pid (comm) state ppid …"; comm may hold spaces and parentheses
    const close = stat.lastIndexOf(')')
    const [state, ppid] = stat.slice(close + 2).split(' ')
    out.set(Number(name), { comm: stat.slice(stat.indexOf('(') + 1, close), ppid: Number(ppid), state: state! })
  }
  return out
}

/** Whether `pid` has exited (gone, or a zombie not yet reaped). */
export function ended(pid: number): boolean {
  const state = processes().get(pid)?.state
  return state === undefined || state === 'Z'
}

export class Freezer {
  private readonly frozen = new Set<number>()

  /** Freeze the first process named `comm` that runs under `root` (a builder daemon); its pid. Bounded to 120 s. */
  async freezeUnder(root: number, comm: string): Promise<number> {
    const deadline = Date.now() + 120_000
    while (Date.now() < deadline) {
      const procs = processes()
      for (const [pid, p] of procs) {
        if (p.comm !== comm) continue
        let up = p.ppid
        for (let hops = 0; up > 1 && up !== root && hops < 32; hops++) up = procs.get(up)?.ppid ?? 0
        if (up !== root) continue
        process.kill(pid, 'SIGSTOP')
        this.frozen.add(pid)
        return pid
      }
      await new Promise((r) => setTimeout(r, 5))
    }
    throw new Error(`no ${comm} ran under process ${root} within 120 s`)
  }

  /** SIGCONT to every process frozen here. */
  thaw(): void {
    for (const pid of this.frozen) try { process.kill(pid, 'SIGCONT') } catch { /* gone */ }
    this.frozen.clear()
  }
}
