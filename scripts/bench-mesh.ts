// Mesh benchmark: starts N meshcc daemons on this machine (loopback only, no mDNS), all joined
// to the first one by a bootstrap address, and measures how fast every daemon's gossip view
// holds all N members, then what an idle converged daemon costs: CPU, RSS and TCP traffic.
//
//   node --import tsx scripts/bench-mesh.ts                 sizes 10 and 30 (about 3 min on 2 cores)
//   node --import tsx scripts/bench-mesh.ts --sizes 10 --window 10
//   node --import tsx scripts/bench-mesh.ts --help
//
// Every daemon gets its own dir, config (MESHCC_CONF), socket, cache and identity under one
// temp dir; all share one mesh key. Daemons are started and stopped with the real CLI
// (`meshcc --start-server` / `--stop-server`); views are polled on each daemon's admin socket
// with the same request `meshcc status --json` sends (a Node CLI per poll would cost more CPU
// than the daemons being measured). Everything is stopped and removed at the end of each size,
// also on Ctrl-C; a daemon that does not stop is SIGKILLed by its pid.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, release, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { summarizeLogs, type LogSummary } from './lib/mesh-bench-logs.js'
import {
  MESHCC_MAIN, adminStatus, logTail, makeNode, meshInit, ownsPid, processesUnder, readPidFile, startNode, stopNode,
  writeConfig, type BenchNode, type StopOutcome
} from './lib/mesh-bench-node.js'
import { coresBusy, cpuTimes, machineTicks, rssBytes, ssSnapshot, trafficDelta } from './lib/mesh-bench-sample.js'
import { BenchError, fail, isAlive, killRunningChildren, run } from './lib/proc.js'
import { markdownTable, median, textTable } from './lib/stats.js'
import { meshccMissing } from './lib/tools.js'

const HERE = dirname(fileURLToPath(import.meta.url))

const TARGETS = {
  convergeS: 5, // 30 daemons: every view complete within 5 s of the last start
  rssMiB: 120, // an idle daemon under 120 MiB RSS
  cpuPct: 2 // and under 2 % of a core
}
const START_TIMEOUT_MS = 45_000 // the CLI itself gives up after 15 s of waiting for the daemon
const STATUS_TIMEOUT_MS = 5000
const POLL_MS = 250 // each daemon's status at most every 250 ms
const POLL_PARALLEL = 8

function usage(): string {
  return `usage: node --import tsx scripts/bench-mesh.ts [--sizes 10,30] [--window S] [--settle S]
                        [--timeout S] [--concurrency N] [--out FILE] [--keep] [--log-level L] [--no-dht]
                        [--cpu-prof DIR] [--cpu-prof-phase idle|converge]
  --sizes        mesh sizes to run, one after the other (default 10,30)
  --window       idle measurement window in seconds (default 20)
  --settle       pause between convergence and the idle window, in seconds (default 30: past a
                 member's 20 s of start-up gossip forwarding, and JIT warm-up)
  --timeout      give up on convergence this many seconds after the last start (default 120)
  --concurrency  daemons started at once after the first (default 3)
  --out          Markdown results file (default scripts/bench-results/mesh.md)
  --keep         keep each size's temp dir (configs, logs) instead of removing it
  --log-level    the daemons' [log] level (default warn; the report lists WARN/ERROR lines)
  --no-dht       run the daemons with [mesh] dht = false (what the DHT costs)
  --cpu-prof     write a V8 CPU profile of daemon 1 of each size into DIR (for finding idle cost)
  --cpu-prof-phase  idle (default: daemon 1 during the idle window) or converge (daemons 0, 1
                 and the last one, from the last start until the views are complete)`
}

function say(s: string): void {
  process.stdout.write(`[bench-mesh] ${s}\n`)
}

interface SizeResult {
  n: number
  error?: string
  started: number
  startPhaseMs?: number
  startMs: number[]
  converged?: boolean
  fromLastMs?: number
  fromFirstMs?: number
  /** members per daemon at the last poll (when the views did not converge) */
  lastCounts?: number[]
  /** the largest view each daemon reported while polling for convergence */
  peakCounts?: number[]
  windowS?: number
  /** cores busy on the whole machine during the window, and during the convergence wait */
  machineBusy?: number
  convergeBusy?: number
  /** each daemon's CPU (user + sys, s) from its start until the views were complete */
  joinCpuS?: number[]
  /** all daemons' CPU (s) during the convergence wait, and the part of the last 3 started */
  waitCpuS?: { all: number; last3: number }
  cpuPct?: number[]
  /** of cpuPct, the part spent in the kernel (stime): on loopback that includes the receiving side's TCP stack */
  sysPct?: number[]
  rssMiB?: number[]
  /** V8 heap (committed) per daemon after the window, from its status */
  heapMiB?: number[]
  /** daemons whose gossipsub mesh forwarded just after the window */
  forwardingAfter?: number
  traffic?: { perNodeBps: number[]; sentBps: number[]; meshBps: number; sockets: number[]; opened: number; closed: number }
  trafficProblem?: string
  membersAfter?: number[]
  died: number[]
  stop?: Record<StopOutcome | 'leftover', number>
  logs?: LogSummary
}

// ---- interruption -------------------------------------------------------------------------

const abort = new AbortController()
let interrupted = false
/** what a second Ctrl-C must kill at once */
const live: { root?: string; nodes: BenchNode[] } = { nodes: [] }

function checkInterrupted(): void {
  if (interrupted) fail('interrupted')
}

async function isleep(ms: number): Promise<void> {
  checkInterrupted()
  try {
    await delay(Math.max(0, ms), undefined, { signal: abort.signal })
  } catch {
    fail('interrupted')
  }
}

function onSignal(sig: NodeJS.Signals): void {
  if (!interrupted) {
    interrupted = true
    process.stderr.write(`\n[bench-mesh] ${sig}: stopping the daemons (again to kill them at once)…\n`)
    killRunningChildren()
    abort.abort()
    return
  }
  // second signal: SIGKILL everything of this run now, remove the temp dir, leave
  for (const nd of live.nodes) {
    const pid = readPidFile(nd) ?? nd.pid
    if (pid && isAlive(pid) && ownsPid(nd, pid)) try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
  }
  if (live.root) {
    for (const pid of processesUnder(live.root)) try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
    rmSync(live.root, { recursive: true, force: true })
  }
  process.exit(130)
}

// ---- helpers -------------------------------------------------------------------------------

/** Run fn over items with at most `limit` at once; the first error stops new items and is thrown. */
async function pool<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  let failed: unknown
  const worker = async () => {
    while (failed === undefined && next < items.length) {
      const i = next++
      try {
        out[i] = await fn(items[i]!)
      } catch (err) {
        failed ??= err
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  if (failed !== undefined) throw failed
  return out
}

const now = () => performance.now()

async function pollAll(nodes: BenchNode[]): Promise<Array<{ count: number; at: number; pid?: number; heapMiB?: number; forwarding?: boolean; err?: string }>> {
  return pool(nodes, POLL_PARALLEL, async (nd) => {
    try {
      const s = await adminStatus(nd.socket, STATUS_TIMEOUT_MS)
      const heap = s.daemon.memory?.heap_total
      return { count: s.mesh?.members.length ?? 0, at: now(), pid: s.daemon.pid, heapMiB: heap === undefined ? undefined : heap / 1024 / 1024, forwarding: s.mesh?.gossip_forwarding }
    } catch (err) {
      return { count: -1, at: now(), err: (err as Error).message }
    }
  })
}

function checkAlive(nodes: BenchNode[], res: SizeResult, what: string): void {
  for (const nd of nodes) {
    if (nd.pid && !isAlive(nd.pid) && !res.died.includes(nd.index)) {
      res.died.push(nd.index)
      fail(`daemon ${nd.index} (pid ${nd.pid}) died ${what}${logTail(nd, 10)}`)
    }
  }
}

// ---- one mesh size -------------------------------------------------------------------------

async function runSize(n: number, o: Options): Promise<SizeResult> {
  const res: SizeResult = { n, started: 0, startMs: [], died: [] }
  const root = mkdtempSync(join(tmpdir(), 'meshcc-mesh-'))
  const nodes = Array.from({ length: n }, (_, i) => makeNode(root, i))
  if (o.cpuProfDir) {
    mkdirSync(o.cpuProfDir, { recursive: true })
    // idle: one ordinary member; converge: the bootstrap hub, an early member and the last one
    for (const i of o.cpuProfPhase === 'converge' ? [0, 1, n - 1] : [1]) nodes[i]!.cpuProfDir = o.cpuProfDir
  }
  live.root = root
  live.nodes = nodes
  let stopAt: Date | undefined
  say(`N=${n}: starting ${n} daemons under ${root}`)
  try {
    const keyFile = join(root, 'mesh.key')
    const first = nodes[0]!
    writeConfig(first, keyFile, [], o.logLevel, o.dht)
    meshInit(keyFile)
    const t0 = now()
    await startNode(first, START_TIMEOUT_MS)
    res.started = 1
    // node 0's loopback address, once its mesh is up
    let addr: string | undefined
    const addrDeadline = now() + 30_000
    while (!addr) {
      const s = await adminStatus(first.socket, STATUS_TIMEOUT_MS).catch(() => undefined)
      addr = s?.mesh?.addresses.find((a) => a.startsWith('/ip4/127.0.0.1/tcp/'))
      if (addr) break
      if (now() > addrDeadline) fail(`daemon 0 has no mesh address after 30 s (mesh_note: ${s?.mesh_note ?? 'no status'})${logTail(first)}`)
      await isleep(100)
    }
    for (const nd of nodes.slice(1)) writeConfig(nd, keyFile, [addr], o.logLevel, o.dht)
    await pool(nodes.slice(1), o.concurrency, async (nd) => {
      checkInterrupted()
      await startNode(nd, START_TIMEOUT_MS)
      res.started++
      if (res.started % 10 === 0 || res.started === n) say(`N=${n}: ${res.started}/${n} daemons started (${((now() - t0) / 1000).toFixed(1)} s)`)
    })
    const tFirst = first.startedAt!
    const tLast = Math.max(...nodes.map((nd) => nd.startedAt!))
    res.startPhaseMs = tLast - t0
    res.startMs = nodes.map((nd) => nd.startMs!)

    // 1. convergence: the first poll round in which every daemon's view holds all n
    const deadline = tLast + o.timeoutS * 1000
    res.peakCounts = nodes.map(() => 0)
    const convergeProfiled = o.cpuProfPhase === 'converge' ? nodes.filter((nd) => nd.cpuProfDir && nd.pid) : []
    for (const nd of convergeProfiled) process.kill(nd.pid!, 'SIGUSR2') // profile start (cpu-profile-preload.mjs)
    const convTicks0 = machineTicks()
    const byStart = [...nodes].sort((a, b) => a.startedAt! - b.startedAt!)
    const cpuSum = (nd: BenchNode) => { const c = nd.pid ? cpuTimes(nd.pid) : undefined; return c ? c.user + c.sys : 0 }
    const waitCpu0 = nodes.map(cpuSum)
    // Status requests cost the daemons CPU too, so a daemon whose view is complete is not asked
    // again until every view was complete once; then one round over all of them confirms it.
    const complete = new Set<number>()
    for (;;) {
      checkInterrupted()
      const round = now()
      const confirming = complete.size === n
      const asked = confirming ? nodes : nodes.filter((nd) => !complete.has(nd.index))
      const replies = await pollAll(asked)
      replies.forEach((r, i) => {
        const nd = asked[i]!
        if (r.pid && r.pid !== nd.pid && ownsPid(nd, r.pid)) nd.pid = r.pid // status.daemon.pid is authoritative
        res.peakCounts![nd.index] = Math.max(res.peakCounts![nd.index]!, r.count)
        if (r.count >= n) complete.add(nd.index)
        else complete.delete(nd.index)
      })
      checkAlive(nodes, res, 'before the views converged')
      if (confirming && replies.every((r) => r.count >= n)) {
        const at = Math.max(...replies.map((r) => r.at))
        res.converged = true
        res.fromLastMs = at - tLast
        res.fromFirstMs = at - tFirst
        break
      }
      if (now() > deadline) {
        res.converged = false
        res.lastCounts = (await pollAll(nodes)).map((r) => r.count)
        const errs = replies.filter((r) => r.err).map((r) => r.err)
        say(`N=${n}: views NOT complete ${o.timeoutS} s after the last start: members per daemon ${res.lastCounts.join(' ')} (largest seen: ${res.peakCounts.join(' ')})${errs.length ? `; status errors: ${errs[0]}` : ''}`)
        break
      }
      await isleep(POLL_MS - (now() - round))
    }
    for (const nd of convergeProfiled) process.kill(nd.pid!, 'SIGUSR2') // profile written
    res.convergeBusy = coresBusy(convTicks0, machineTicks(), cpus().length)
    const waitCpu1 = nodes.map(cpuSum)
    res.joinCpuS = waitCpu1
    const last3 = new Set(byStart.slice(-3).map((nd) => nd.index))
    res.waitCpuS = {
      all: waitCpu1.reduce((a, c, i) => a + c - waitCpu0[i]!, 0),
      last3: waitCpu1.reduce((a, c, i) => a + (last3.has(i) ? c - waitCpu0[i]! : 0), 0)
    }
    if (res.converged) say(`N=${n}: all ${n} views complete ${(res.fromLastMs! / 1000).toFixed(2)} s after the last start (${(res.fromFirstMs! / 1000).toFixed(2)} s after the first)`)

    // 2. idle cost over the window (no polling meanwhile)
    if (o.settleS > 0) await isleep(o.settleS * 1000)
    const pids = nodes.map((nd) => nd.pid!)
    const pidSet = new Set(pids)
    const ssT0 = now()
    const ss0 = await ssSnapshot(pidSet)
    const cpu0 = pids.map(cpuTimes)
    const m0 = machineTicks()
    const w0 = now()
    say(`N=${n}: idle window of ${o.windowS} s…`)
    const profiled = o.cpuProfPhase === 'idle' ? nodes.filter((nd) => nd.cpuProfDir && nd.pid) : []
    for (const nd of profiled) process.kill(nd.pid!, 'SIGUSR2') // profile start (cpu-profile-preload.mjs)
    await isleep(o.windowS * 1000)
    for (const nd of profiled) process.kill(nd.pid!, 'SIGUSR2') // profile written
    const cpu1 = pids.map(cpuTimes)
    const m1 = machineTicks()
    const w1 = now()
    const ssT1 = now()
    const ss1 = await ssSnapshot(pidSet)
    const rss = pids.map(rssBytes)
    checkAlive(nodes, res, 'during the idle window')
    const windowS = (w1 - w0) / 1000
    res.windowS = windowS
    res.cpuPct = pids.map((_, i) => ((cpu1[i]!.user + cpu1[i]!.sys - cpu0[i]!.user - cpu0[i]!.sys) / windowS) * 100)
    res.sysPct = pids.map((_, i) => ((cpu1[i]!.sys - cpu0[i]!.sys) / windowS) * 100)
    res.rssMiB = rss.map((b) => b! / 1024 / 1024)
    res.machineBusy = coresBusy(m0, m1, cpus().length)
    if (ss0.problem || ss1.problem) {
      res.trafficProblem = ss0.problem ?? ss1.problem
    } else {
      const ssS = (ssT1 - ssT0) / 1000
      const d = trafficDelta(ss0, ss1, pids)
      res.traffic = {
        perNodeBps: pids.map((p) => ((d.sent.get(p) ?? 0) + (d.received.get(p) ?? 0)) / ssS),
        sentBps: pids.map((p) => (d.sent.get(p) ?? 0) / ssS),
        meshBps: pids.reduce((sum, p) => sum + (d.sent.get(p) ?? 0), 0) / ssS,
        sockets: pids.map((p) => d.socketsAtEnd.get(p) ?? 0),
        opened: d.opened,
        closed: d.closed
      }
    }
    const after = await pollAll(nodes)
    res.membersAfter = after.map((r) => r.count)
    if (after.every((r) => r.heapMiB !== undefined)) res.heapMiB = after.map((r) => r.heapMiB!)
    res.forwardingAfter = after.filter((r) => r.forwarding === true).length
    say(`N=${n}: CPU median ${median(res.cpuPct).toFixed(2)} % max ${Math.max(...res.cpuPct).toFixed(2)} %, RSS median ${median(res.rssMiB).toFixed(0)} MiB max ${Math.max(...res.rssMiB).toFixed(0)} MiB` +
      (res.traffic ? `, traffic median ${fmtRate(median(res.traffic.perNodeBps))} per daemon` : `, traffic: ${res.trafficProblem}`))
  } catch (err) {
    if (interrupted) {
      res.error = 'interrupted'
    } else {
      if (!(err instanceof BenchError)) throw err
      res.error = err.message
      say(`N=${n}: FAILED — ${err.message}`)
    }
  } finally {
    stopAt = new Date()
    res.stop = await stopAll(nodes, root, interrupted)
    res.logs = summarizeLogs(nodes, stopAt)
    const s = res.stop
    say(`N=${n}: daemons stopped (${s.stopped} by --stop-server, ${s['not running']} not running, ${s.killed} SIGKILLed, ${s.leftover} stray processes killed)`)
    if (o.keep) say(`N=${n}: kept ${root}`)
    else rmSync(root, { recursive: true, force: true })
    live.root = undefined
    live.nodes = []
  }
  return res
}

/** --stop-server for every daemon (node 0 last: it is the others' bootstrap peer), bounded. */
async function stopAll(nodes: BenchNode[], root: string, hurry: boolean): Promise<Record<StopOutcome | 'leftover', number>> {
  const outcome = new Map<number, StopOutcome>() // the last outcome per node
  const timeout = hurry ? 10_000 : 45_000
  const stop = async (nd: BenchNode) => {
    try {
      outcome.set(nd.index, await stopNode(nd, timeout))
    } catch {
      // cannot happen (run() never rejects for a started process); the stray scan below still runs
    }
  }
  // stop() never throws, so pool() visits every node
  await pool(nodes.slice(1), 4, stop)
  if (nodes[0]) await stop(nodes[0])
  // a daemon whose --start-server was cut short can come up after we looked: stop it too
  await delay(500)
  for (const nd of nodes) {
    const pid = readPidFile(nd)
    if (pid && isAlive(pid) && ownsPid(nd, pid)) await stop(nd)
  }
  const counts: Record<StopOutcome | 'leftover', number> = { stopped: 0, killed: 0, 'not running': 0, leftover: 0 }
  for (const o of outcome.values()) counts[o]++
  // then anything still running with a config of this run (a CLI or daemon we lost track of)
  for (let pass = 0; pass < 2; pass++) {
    if (pass) await delay(1000)
    for (const pid of processesUnder(root)) {
      try {
        process.kill(pid, 'SIGKILL')
        counts.leftover++
      } catch {
        // gone meanwhile
      }
    }
  }
  return counts
}

// ---- report --------------------------------------------------------------------------------

function fmtRate(bps: number): string {
  if (!Number.isFinite(bps)) return '-'
  return bps < 1024 ? `${bps.toFixed(0)} B/s` : `${(bps / 1024).toFixed(1)} KiB/s`
}

function fmtS(ms: number | undefined): string {
  return ms === undefined || !Number.isFinite(ms) ? '-' : `${(ms / 1000).toFixed(2)} s`
}

function trio(xs: number[] | undefined, f: (x: number) => string): string {
  if (!xs || xs.length === 0) return '-'
  return `${f(Math.min(...xs))} / ${f(median(xs))} / ${f(Math.max(...xs))}`
}

const mark = (ok: boolean) => (ok ? 'ok' : 'MISSED')

function report(results: SizeResult[], o: Options, machine: string): { text: string; markdown: string } {
  const header = ['', ...results.map((r) => `N=${r.n}`), 'target']
  const col = (f: (r: SizeResult) => string) => results.map(f)
  const startedCell = (r: SizeResult) => (r.startPhaseMs === undefined ? `${r.started}/${r.n} (${r.error === 'interrupted' ? 'interrupted' : 'failed'})` : `${r.n} in ${fmtS(r.startPhaseMs)}`)
  const conv = (r: SizeResult) => {
    if (r.converged === undefined) return '-'
    if (!r.converged) return `not within ${o.timeoutS} s (views ${Math.min(...r.lastCounts!)}..${Math.max(...r.lastCounts!)} of ${r.n} at the end, largest ${Math.max(...r.peakCounts!)}) MISSED`
    return `${fmtS(r.fromLastMs)} ${mark(r.fromLastMs! <= TARGETS.convergeS * 1000)}`
  }
  const rows: string[][] = [
    ['daemons started (first start → last --start-server returned)', ...col(startedCell), '-'],
    ['--start-server wall per daemon, min / median / max', ...col((r) => trio(r.startMs.length ? r.startMs : undefined, (x) => `${(x / 1000).toFixed(2)}`) + (r.startMs.length ? ' s' : '')), '-'],
    ['all views hold all N, after the last start', ...col(conv), `≤ ${TARGETS.convergeS} s (30 daemons)`],
    ['all views hold all N, after the first start', ...col((r) => (r.converged ? fmtS(r.fromFirstMs) : '-')), '-'],
    [`idle CPU per daemon, % of one core, min / median / max (${o.windowS} s)`, ...col((r) => r.cpuPct ? `${trio(r.cpuPct, (x) => x.toFixed(2))} % ${mark(Math.max(...r.cpuPct) < TARGETS.cpuPct)}` : '-'), `< ${TARGETS.cpuPct} % (every daemon)`],
    ['of which in the kernel (stime; on loopback it includes the receiver\'s TCP stack), min / median / max', ...col((r) => r.sysPct ? `${trio(r.sysPct, (x) => x.toFixed(2))} %` : '-'), '-'],
    ['idle RSS per daemon, MiB, min / median / max', ...col((r) => r.rssMiB ? `${trio(r.rssMiB, (x) => x.toFixed(0))} ${mark(Math.max(...r.rssMiB) < TARGETS.rssMiB)}` : '-'), `< ${TARGETS.rssMiB} MiB (every daemon)`],
    ['of which V8 heap (committed, just after the window), MiB, min / median / max', ...col((r) => r.heapMiB ? trio(r.heapMiB, (x) => x.toFixed(0)) : '-'), '-'],
    ['idle mesh TCP traffic per daemon (sent + received), min / median / max', ...col((r) => r.traffic ? trio(r.traffic.perNodeBps, fmtRate) : r.trafficProblem ? 'n/a' : '-'), '-'],
    ['idle mesh TCP traffic, whole mesh (each byte once)', ...col((r) => (r.traffic ? fmtRate(r.traffic.meshBps) : '-')), '-'],
    ['TCP connections per daemon, min / median / max', ...col((r) => (r.traffic ? trio(r.traffic.sockets, (x) => x.toFixed(0)) : '-')), '-'],
    ['CPU per daemon from its start until every view was complete, s, min / median / max', ...col((r) => (r.joinCpuS ? trio(r.joinCpuS, (x) => x.toFixed(2)) : '-')), '-'],
    ['all daemons\' CPU while waiting for convergence, s (of it: the last 3 started)', ...col((r) => (r.waitCpuS ? `${r.waitCpuS.all.toFixed(1)} (${r.waitCpuS.last3.toFixed(1)})` : '-')), '-'],
    ['machine CPU busy while waiting for convergence / during the window, cores of ' + cpus().length, ...col((r) => `${r.convergeBusy === undefined ? '-' : r.convergeBusy.toFixed(2)} / ${r.machineBusy === undefined ? '-' : r.machineBusy.toFixed(2)}` + (r.cpuPct ? ` (daemons ${(r.cpuPct.reduce((a, b) => a + b, 0) / 100).toFixed(2)})` : '')), '-'],
    ['daemons forwarding gossip just after the window (a member asks, or one is unreachable)', ...col((r) => r.forwardingAfter === undefined ? '-' : `${r.forwardingAfter} of ${r.n}`), '-'],
    ['views still complete after the window', ...col((r) => r.membersAfter ? (r.membersAfter.every((c) => c >= r.n) ? 'yes' : `no (${Math.min(...r.membersAfter)}..${Math.max(...r.membersAfter)} of ${r.n})`) : '-'), '-'],
    ['WARN/ERROR lines in the daemons\' logs', ...results.map((r) => r.logs ? `${r.logs.lines}${r.logs.groups.length ? ` (${r.logs.groups.length} kinds)` : ''}` : '-'), '0']
  ]
  const notes: string[] = [
    `${machine}; daemons share the machine with each other and with this script (polling stops during the idle window).`,
    `Every daemon: own config/socket/cache/identity, \`[mesh] listen = ["/ip4/127.0.0.1/tcp/0"]\`, \`mdns = false\`, ${o.dht ? 'DHT on (default)' : '\`dht = false\` (--no-dht)'}, \`[build] cores = 4\`, log level warn; one shared mesh key. Node 0 starts first; the others get node 0's loopback address as their only bootstrap peer and are started ${o.concurrency} at a time with \`meshcc --start-server\`.`,
    `Convergence: every daemon's status (the admin request behind \`meshcc status --json\`, sent on its socket) is polled in rounds at most every ${POLL_MS} ms, skipping daemons whose view already held all N (status requests cost the daemons CPU too); once every view did, a round over all daemons confirms it, and the time is that of the last reply of the first confirming round in which every \`mesh.members\` holds all N, measured from when the last (first) \`--start-server\` returned. Resolution is one to two rounds (≥ ${POLL_MS} ms each).`,
    `Idle cost: ${o.settleS} s after convergence, a ${o.windowS} s window. CPU = utime+stime from /proc/<pid>/stat (daemon pid from status.daemon.pid) over the window; RSS = VmRSS at its end. Traffic = tcp_info bytes_sent + bytes_received (\`ss -tinp\`) summed over each daemon's TCP sockets, end minus start: real payload bytes of all mesh protocols (gossipsub, ping, identify, DHT) including pnet/noise/yamux framing, not just the load gossip; "whole mesh" counts each byte once (sum of bytes sent). All traffic is loopback.`
  ]
  for (const r of results) {
    if (r.traffic && (r.traffic.opened || r.traffic.closed)) notes.push(`N=${r.n}: ${r.traffic.opened} TCP sockets opened and ${r.traffic.closed} closed during the window (a closed socket's last bytes are not counted).`)
    if (r.converged === false && r.cpuPct) notes.push(`N=${r.n}: the views never held all ${r.n} members, so its idle figures describe a mesh whose gossip is not working, not a converged one.`)
    if (r.trafficProblem) notes.push(`N=${r.n}: traffic not measured: ${r.trafficProblem}.`)
    if (r.error) notes.push(r.error === 'interrupted' ? `N=${r.n}: interrupted (Ctrl-C); figures are partial.` : `N=${r.n}: FAILED — ${r.error.split('\n')[0]}`)
    if (r.died.length) notes.push(`N=${r.n}: daemon(s) ${r.died.join(', ')} died.`)
    if (r.stop && (r.stop.killed || r.stop.leftover)) notes.push(`N=${r.n}: ${r.stop.killed} daemon(s) did not stop on --stop-server and were SIGKILLed; ${r.stop.leftover} stray process(es) killed.`)
  }
  const logSections: string[] = []
  for (const r of results) {
    if (!r.logs || r.logs.groups.length === 0) continue
    logSections.push(`N=${r.n}: ${r.logs.lines} WARN/ERROR lines in the daemons' meshcc.log:`)
    for (const g of r.logs.groups.slice(0, 12)) {
      logSections.push(`  ${g.count}× on ${g.nodes.size} daemon(s)${g.duringStop ? ` (${g.duringStop} while stopping)` : ''}: ${g.level} ${g.pattern}`)
      logSections.push(`      e.g. ${g.example.split('\n').slice(0, 4).join('\n           ')}`)
    }
    if (r.logs.groups.length > 12) logSections.push(`  … and ${r.logs.groups.length - 12} more kinds`)
  }
  const text = [textTable(header, rows), '', ...notes.map((n) => `- ${n}`), ...(logSections.length ? ['', ...logSections] : [])].join('\n')
  const markdown = [
    '# meshcc mesh benchmark',
    '',
    `Run ${new Date().toISOString()} with \`node --import tsx scripts/bench-mesh.ts --sizes ${results.map((r) => r.n).join(',')} --window ${o.windowS} --settle ${o.settleS}\`.`,
    '',
    markdownTable(header, rows),
    '',
    ...notes.map((n) => `- ${n}`),
    '',
    ...(logSections.length ? ['## Daemon log lines (WARN/ERROR)', '', '```', ...logSections, '```', ''] : [])
  ].join('\n')
  return { text, markdown }
}

// ---- main ----------------------------------------------------------------------------------

interface Options {
  sizes: number[]
  windowS: number
  settleS: number
  timeoutS: number
  concurrency: number
  out: string
  keep: boolean
  logLevel: string
  dht: boolean
  cpuProfDir?: string
  cpuProfPhase: 'idle' | 'converge'
}

function parseOptions(): Options | null {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '10,30' },
      window: { type: 'string', default: '20' },
      settle: { type: 'string', default: '30' },
      timeout: { type: 'string', default: '120' },
      concurrency: { type: 'string', default: '3' },
      out: { type: 'string' },
      keep: { type: 'boolean', default: false },
      'log-level': { type: 'string', default: 'warn' },
      'no-dht': { type: 'boolean', default: false },
      'cpu-prof': { type: 'string' },
      'cpu-prof-phase': { type: 'string', default: 'idle' },
      help: { type: 'boolean', short: 'h', default: false }
    },
    strict: true
  })
  if (values.help) return null
  const num = (name: string, text: string, min: number, max: number) => {
    const v = Number(text)
    if (!Number.isFinite(v) || v < min || v > max) fail(`--${name} must be a number from ${min} to ${max}`)
    return v
  }
  if (!['error', 'warn', 'info', 'debug'].includes(values['log-level']!)) fail('--log-level must be error, warn, info or debug')
  const sizes = values.sizes!.split(',').map((s) => s.trim()).filter(Boolean).map((s) => num('sizes', s, 2, 100))
  if (sizes.length === 0 || sizes.some((s) => !Number.isInteger(s))) fail('--sizes must be whole numbers from 2 to 100, e.g. 10,30')
  return {
    sizes,
    windowS: num('window', values.window!, 1, 600),
    settleS: num('settle', values.settle!, 0, 600),
    timeoutS: num('timeout', values.timeout!, 5, 600),
    concurrency: Math.floor(num('concurrency', values.concurrency!, 1, 16)),
    out: resolve(values.out ?? join(HERE, 'bench-results', 'mesh.md')),
    keep: values.keep!,
    logLevel: values['log-level']!,
    dht: !values['no-dht'],
    cpuProfDir: values['cpu-prof'] === undefined ? undefined : resolve(values['cpu-prof']),
    cpuProfPhase: profPhase(values['cpu-prof-phase'])
  }
}

async function main(): Promise<number> {
  const o = parseOptions()
  if (!o) {
    process.stdout.write(usage() + '\n')
    return 0
  }
  if (process.platform !== 'linux') fail('this benchmark reads /proc: Linux only')
  const missing = meshccMissing(MESHCC_MAIN)
  if (missing) fail(missing)
  const kernel = await run('uname', ['-r'], { timeoutMs: 5000 }).then((r) => r.stdout.trim(), () => release())
  const commit = await run('git', ['-C', resolve(HERE, '..'), 'rev-parse', '--short', 'HEAD'], { timeoutMs: 5000 }).then((r) => r.stdout.trim(), () => '')
  const dirty = await run('git', ['-C', resolve(HERE, '..'), 'status', '--porcelain', '--', 'src'], { timeoutMs: 5000 }).then((r) => r.stdout.trim() !== '', () => false)
  const machine = `${cpus().length} CPUs (${cpus()[0]?.model.trim() ?? '?'}), Linux ${kernel}, Node ${process.versions.node}, meshcc ${commit || '?'}${dirty ? ' + uncommitted changes in src/' : ''}`
  say(`${machine}; sizes ${o.sizes.join(', ')}, window ${o.windowS} s, settle ${o.settleS} s`)

  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  const results: SizeResult[] = []
  try {
    for (const n of o.sizes) {
      if (interrupted) break
      results.push(await runSize(n, o))
    }
  } finally {
    if (results.length) {
      const { text, markdown } = report(results, o, machine)
      process.stdout.write(`\n${text}\n\n`)
      mkdirSync(dirname(o.out), { recursive: true })
      writeFileSync(o.out, markdown)
      say(`results written to ${o.out}${interrupted ? ' (interrupted: partial)' : ''}`)
    }
  }
  if (interrupted) return 130
  return results.every((r) => !r.error) ? 0 : 1
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof BenchError) {
      process.stderr.write(`bench-mesh: ${err.message}\n`)
      process.exit(err.message === 'interrupted' ? 130 : 1)
    }
    process.stderr.write(`bench-mesh: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`)
    process.exit(1)
  }
)

function profPhase(v: string | undefined): 'idle' | 'converge' {
  if (v === 'idle' || v === 'converge') return v
  fail(`--cpu-prof-phase: expected idle or converge, got ${v}`)
}
