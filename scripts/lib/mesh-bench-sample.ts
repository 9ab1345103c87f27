// Idle-cost sampling for the mesh benchmark: CPU ticks and RSS from /proc, and TCP payload
// byte counters per socket from `ss -tinp` (tcp_info bytes_sent / bytes_received).
import { readFileSync } from 'node:fs'
import { run } from './proc.js'

let clkTck = 100
try {
  // Linux reports times in clock ticks (AT_CLKTCK in the aux vector; 100 almost everywhere)
  const auxv = readFileSync('/proc/self/auxv')
  for (let i = 0; i + 16 <= auxv.length; i += 16) {
    if (Number(auxv.readBigUInt64LE(i)) === 17) clkTck = Number(auxv.readBigUInt64LE(i + 8)) || 100
  }
} catch {
  // keep 100
}

/** utime and stime of the process itself in seconds (no children), or undefined when it is gone. */
export function cpuTimes(pid: number): { user: number; sys: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return { user: Number(f[11]) / clkTck, sys: Number(f[12]) / clkTck } // fields 14 and 15
  } catch {
    return undefined
  }
}

/** VmRSS in bytes, or undefined when the process is gone. */
export function rssBytes(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : undefined
  } catch {
    return undefined
  }
}

export interface SocketCounters {
  pid: number
  local: string
  peer: string
  sent: number
  received: number
}

export interface SsSnapshot {
  /** key "pid local peer" */
  sockets: Map<string, SocketCounters>
  /** why counters are missing, if they are */
  problem?: string
}

/**
 * One `ss -tinpH` over all TCP sockets, keeping those owned by `pids`. Each socket is one line
 * (state, queues, addresses, users:(("node",pid=…,fd=…))) followed by an indented tcp_info line.
 */
export async function ssSnapshot(pids: Set<number>): Promise<SsSnapshot> {
  const sockets = new Map<string, SocketCounters>()
  let r
  try {
    r = await run('ss', ['-tinpH'], { timeoutMs: 20_000, captureLimit: 64 << 20 })
  } catch (err) {
    return { sockets, problem: `ss could not run: ${(err as Error).message}` }
  }
  if (r.timedOut || r.code !== 0) return { sockets, problem: `ss failed (exit ${r.timedOut ? 'timeout' : r.code}): ${r.stderr.trim().split('\n')[0]}` }
  let current: Omit<SocketCounters, 'sent' | 'received'>[] = []
  let sawCounters = false
  for (const line of r.stdout.split('\n')) {
    if (line.trim() === '') continue
    if (!/^\s/.test(line)) {
      // state recv-q send-q local peer [users:(...)]
      const cols = line.trim().split(/\s+/)
      const local = cols[3] ?? ''
      const peer = cols[4] ?? ''
      current = []
      for (const m of line.matchAll(/pid=(\d+)/g)) {
        const pid = Number(m[1])
        if (pids.has(pid)) current.push({ pid, local, peer })
      }
      continue
    }
    if (current.length === 0) continue
    const sent = /\bbytes_sent:(\d+)/.exec(line)
    const received = /\bbytes_received:(\d+)/.exec(line)
    if (sent || received) sawCounters = true
    for (const c of current) {
      sockets.set(`${c.pid} ${c.local} ${c.peer}`, { ...c, sent: Number(sent?.[1] ?? 0), received: Number(received?.[1] ?? 0) })
    }
    current = []
  }
  if (sockets.size > 0 && !sawCounters) return { sockets: new Map(), problem: 'ss shows no bytes_sent/bytes_received (kernel too old?)' }
  if (sockets.size === 0) return { sockets, problem: 'ss shows no TCP sockets of the daemons (no permission to see their processes?)' }
  return { sockets }
}

export interface TrafficDelta {
  /** per pid: bytes sent / received during the window */
  sent: Map<number, number>
  received: Map<number, number>
  /** open sockets per pid at the end */
  socketsAtEnd: Map<number, number>
  /** sockets that appeared / disappeared during the window (a closed socket's last bytes are lost) */
  opened: number
  closed: number
}

export function trafficDelta(a: SsSnapshot, b: SsSnapshot, pids: number[]): TrafficDelta {
  const sent = new Map(pids.map((p) => [p, 0]))
  const received = new Map(pids.map((p) => [p, 0]))
  const socketsAtEnd = new Map(pids.map((p) => [p, 0]))
  let opened = 0
  let closed = 0
  for (const [key, end] of b.sockets) {
    const start = a.sockets.get(key)
    if (!start) opened++
    // a new socket (or a counter that went backwards: a reused 4-tuple) counts from zero
    const ds = start && end.sent >= start.sent ? end.sent - start.sent : end.sent
    const dr = start && end.received >= start.received ? end.received - start.received : end.received
    sent.set(end.pid, (sent.get(end.pid) ?? 0) + ds)
    received.set(end.pid, (received.get(end.pid) ?? 0) + dr)
    socketsAtEnd.set(end.pid, (socketsAtEnd.get(end.pid) ?? 0) + 1)
  }
  for (const key of a.sockets.keys()) if (!b.sockets.has(key)) closed++
  return { sent, received, socketsAtEnd, opened, closed }
}

/** Machine-wide CPU ticks from /proc/stat (all cores): busy = everything but idle and iowait. */
export function machineTicks(): { busy: number; total: number } | undefined {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number)
    const total = f.reduce((a, b) => a + b, 0)
    return { busy: total - f[3]! - f[4]!, total }
  } catch {
    return undefined
  }
}

/** Cores busy on average between two machineTicks() readings, e.g. 1.4 of 2. */
export function coresBusy(a: { busy: number; total: number } | undefined, b: { busy: number; total: number } | undefined, cores: number): number | undefined {
  if (!a || !b || b.total <= a.total) return undefined
  return ((b.busy - a.busy) / (b.total - a.total)) * cores
}
