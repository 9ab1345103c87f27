// Process, CPU and machine-load helpers for the distributed-build benchmark (bench-dist.ts):
// long-running daemons started by PID and stopped by PID, CPU of a process tree from /proc,
// waiting for a quiet machine, and a network-namespace lab for icecream (whose scheduler
// discovery broadcasts, so it must never run in the root namespace).
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs'
import { cpus, loadavg } from 'node:os'
import { cpuSecondsOf, fail, isAlive, machineBusySeconds, sleep } from './proc.js'
import { ip, killNamespaceProcesses, mustIp, pidsIn } from '../../test/helpers/netns.js'
import { parentPid } from '../../src/util/pid-lock.js'

// ---------------------------------------------------------------------------------------------
// Daemons started in the background (not awaited like proc.ts's run()).

export interface Daemon {
  name: string
  pid: number
  child: ChildProcess
  exited: boolean
  exitCode: number | null
  logFile: string
}

/** Every daemon this process started and has not seen exit: killed by PID on Ctrl-C / exit. */
const liveDaemons = new Set<Daemon>()

/**
 * Start a long-running program with stdout+stderr appended to `logFile`. It leads its own
 * process group (detached) so a terminal Ctrl-C does not reach it before our cleanup does.
 */
export function startDaemon(name: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; logFile: string }): Daemon {
  const fd = openSync(opts.logFile, 'a')
  let child: ChildProcess
  try {
    child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['ignore', fd, fd], detached: true })
  } finally {
    closeSync(fd)
  }
  if (!child.pid) fail(`cannot start ${name} (${cmd})`)
  const d: Daemon = { name, pid: child.pid, child, exited: false, exitCode: null, logFile: opts.logFile }
  liveDaemons.add(d)
  child.on('error', () => {
    d.exited = true
    liveDaemons.delete(d)
  })
  child.on('exit', (code) => {
    d.exited = true
    d.exitCode = code
    liveDaemons.delete(d)
  })
  return d
}

/** SIGTERM the daemon's PID (and its process group, which only it and its children are in), then SIGKILL. */
export async function stopDaemon(d: Daemon, graceMs = 5000): Promise<void> {
  if (d.exited) return
  signalGroup(d.pid, 'SIGTERM')
  const end = Date.now() + graceMs
  while (!d.exited && Date.now() < end) await sleep(50)
  if (!d.exited) {
    signalGroup(d.pid, 'SIGKILL')
    const end2 = Date.now() + 3000
    while (!d.exited && Date.now() < end2) await sleep(50)
  }
}

function signalGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig)
  } catch {
    try {
      process.kill(pid, sig)
    } catch {
      // gone
    }
  }
}

/** Synchronous last resort (process 'exit' hook, Ctrl-C): SIGKILL every daemon still running. */
export function killAllDaemonsNow(): void {
  for (const d of liveDaemons) signalGroup(d.pid, 'SIGKILL')
}

// ---------------------------------------------------------------------------------------------
// CPU of a process tree.

/** The pid and every live descendant of it. */
export function descendants(root: number): number[] {
  const kids = new Map<number, number[]>()
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue
    const pid = Number(e)
    const pp = parentPid(pid)
    if (pp === null) continue
    const list = kids.get(pp) ?? []
    list.push(pid)
    kids.set(pp, list)
  }
  const out: number[] = []
  const stack = [root]
  while (stack.length && out.length < 100_000) {
    const p = stack.pop()!
    out.push(p)
    for (const c of kids.get(p) ?? []) stack.push(c)
  }
  return out
}

/**
 * CPU seconds of a process tree: for the root and each live descendant, its own time plus
 * that of the children it reaped. A descendant that exits and is reaped moves its total into
 * its parent's reaped-children time, so differences of two snapshots count it exactly once.
 */
export function treeCpuSeconds(root: number | undefined): number {
  if (root === undefined || !isAlive(root)) return 0
  let sum = 0
  for (const p of descendants(root)) sum += cpuSecondsOf(p) ?? 0
  return sum
}

/**
 * CPU seconds (own plus reaped children) of every process now, by pid, with its name. Two
 * snapshots show which long-lived processes used the machine in between: kernel threads
 * (kworker, ksoftirqd, jbd2), a reaper of orphans (init), stray daemons. Processes that start
 * and end in between are not in it, except through the parent that reaped them.
 */
export function allProcessCpu(): Map<number, { comm: string; cpuS: number }> {
  const out = new Map<number, { comm: string; cpuS: number }>()
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8')
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
      const cpuS = cpuSecondsOf(Number(e))
      if (cpuS !== undefined) out.set(Number(e), { comm, cpuS })
    } catch {
      // gone meanwhile
    }
  }
  return out
}

/** The biggest CPU users between two snapshots among processes outside `exclude`, as "name pid: N s". */
export function topOtherProcesses(before: Map<number, { comm: string; cpuS: number }>, after: Map<number, { comm: string; cpuS: number }>, exclude: Set<number>, n = 6): string[] {
  const rows: Array<{ label: string; s: number }> = []
  for (const [pid, a] of after) {
    if (exclude.has(pid)) continue
    const s = a.cpuS - (before.get(pid)?.comm === a.comm ? before.get(pid)!.cpuS : 0)
    if (s >= 0.5) rows.push({ label: `${a.comm} ${pid}`, s })
  }
  return rows.sort((x, y) => y.s - x.s).slice(0, n).map((r) => `${r.label}: ${r.s.toFixed(1)} s`)
}

// ---------------------------------------------------------------------------------------------
// A quiet machine before measuring.

export function load1(): number {
  return loadavg()[0]!
}

export function loadString(): string {
  return loadavg().map((x) => x.toFixed(2)).join(' ')
}

/**
 * Poll the 1-minute load average every `pollS` seconds until it is below `max`, for at most
 * `maxMin` minutes. Returns whether it got there and how long it waited.
 */
export async function waitForLoad(max: number, maxMin: number, pollS: number, say: (s: string) => void, aborted: () => boolean): Promise<{ ok: boolean; waitedS: number; load: number }> {
  const start = Date.now()
  const deadline = start + maxMin * 60_000
  for (let i = 0; ; i++) {
    const l = load1()
    if (l < max) return { ok: true, waitedS: (Date.now() - start) / 1000, load: l }
    if (Date.now() >= deadline || aborted()) return { ok: false, waitedS: (Date.now() - start) / 1000, load: l }
    if (i % 2 === 0) say(`load average ${loadString()} — waiting for the 1-minute load to drop below ${max} (up to ${maxMin.toFixed(0)} min; ${Math.round((deadline - Date.now()) / 60_000)} min left)`)
    const until = Math.min(deadline, Date.now() + pollS * 1000)
    while (Date.now() < until && !aborted()) await sleep(500)
  }
}

/** Cores busy on the whole machine over the next `ms` milliseconds (all processes). */
export async function machineBusyCores(ms: number): Promise<number | undefined> {
  const a = machineBusySeconds()
  await sleep(ms)
  const b = machineBusySeconds()
  return a !== undefined && b !== undefined ? (b - a) / (ms / 1000) : undefined
}

export const CORES = cpus().length

// ---------------------------------------------------------------------------------------------
// Network-namespace lab (adapted from test/helpers/netns.ts): a bridge in its own namespace and
// N host namespaces, each with one veth into the bridge. Nothing touches the root namespace.

export interface NsHost {
  ns: string
  ip: string
}

export interface NsLab {
  bridgeNs: string
  hosts: NsHost[]
  destroy(): Promise<void>
}

const allNamespaces = new Set<string>()

function deleteNs(ns: string): void {
  killNamespaceProcesses(ns, 'SIGKILL')
  ip(['netns', 'del', ns])
  allNamespaces.delete(ns)
}

/** Synchronous cleanup of every namespace still there (for the process 'exit' hook). */
export function deleteAllNamespacesNow(): void {
  for (const ns of [...allNamespaces]) deleteNs(ns)
}

/** Creates the lab or returns why it cannot ({ skip }). Addresses 10.<octet>.0.10+i/24. */
export function createNsLab(n: number, tag: string, octet = 233): { lab: NsLab } | { skip: string } {
  if (process.getuid?.() !== 0) return { skip: 'network namespaces need root' }
  const probe = ip(['-V'])
  if (probe.code === 'ENOENT') return { skip: 'the ip binary (iproute2) is not installed' }
  const id = `${tag}${process.pid}`
  const bridgeNs = `${id}-br`
  const first = ip(['netns', 'add', bridgeNs])
  if (!first.ok) return { skip: `ip netns add failed: ${first.err || 'unknown error'}` }
  allNamespaces.add(bridgeNs)
  const created = [bridgeNs]
  const hosts: NsHost[] = []
  try {
    mustIp(['-n', bridgeNs, 'link', 'set', 'lo', 'up'])
    mustIp(['-n', bridgeNs, 'link', 'add', 'br0', 'type', 'bridge'])
    mustIp(['-n', bridgeNs, 'link', 'set', 'br0', 'up'])
    for (let i = 0; i < n; i++) {
      const ns = `${id}-h${i}`
      mustIp(['netns', 'add', ns])
      allNamespaces.add(ns)
      created.push(ns)
      const addr = `10.${octet}.0.${10 + i}`
      mustIp(['-n', ns, 'link', 'set', 'lo', 'up'])
      // both ends are created inside the lab's namespaces, never in the root one
      mustIp(['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', `veth${i}`, 'netns', bridgeNs])
      mustIp(['-n', bridgeNs, 'link', 'set', `veth${i}`, 'master', 'br0'])
      mustIp(['-n', bridgeNs, 'link', 'set', `veth${i}`, 'up'])
      mustIp(['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0'])
      mustIp(['-n', ns, 'link', 'set', 'eth0', 'up'])
      hosts.push({ ns, ip: addr })
    }
  } catch (err) {
    for (const ns of created) deleteNs(ns)
    return { skip: (err as Error).message }
  }
  let destroyed = false
  return {
    lab: {
      bridgeNs,
      hosts,
      async destroy() {
        if (destroyed) return
        destroyed = true
        let left = 0
        for (const ns of created) left += killNamespaceProcesses(ns, 'SIGTERM')
        const end = Date.now() + 3000
        while (left > 0 && Date.now() < end) {
          await sleep(100)
          left = created.reduce((s, ns) => s + pidsIn(ns).length, 0)
        }
        for (const ns of created) deleteNs(ns)
      }
    }
  }
}

/** uid/gid of a system user, or undefined. */
export function userIds(name: string): { uid: number; gid: number } | undefined {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':')
      if (f[0] === name) return { uid: Number(f[2]), gid: Number(f[3]) }
    }
  } catch {
    // no passwd
  }
  return undefined
}
