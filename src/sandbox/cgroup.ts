// A memory limit per job rather than per process: each sandboxed job gets a cgroup of its own
// with the job's memory (and, when the controller is there, process) limit, which the reaper
// (native/reap.c, cgroup=DIR) joins before it starts anything of the job. RLIMIT_AS, the
// fallback, counts address space per process: a job of 16 processes could hold 16 times
// job_memory, and a process that maps much and touches little is refused for nothing.
//
// Where the job cgroups go:
// - cgroup v1 (a `memory` hierarchy): below the daemon's own memory cgroup (and its own pids
//   cgroup), which must be writable: a root daemon, as in most containers.
// - cgroup v2: below the daemon's own cgroup when it is delegated to the daemon (a systemd unit
//   with Delegate=yes, examples/meshcc.service) and holds no process but the daemon's: the
//   daemon moves itself into a leaf `meshcc-daemon` beside the jobs (v2 allows processes only
//   in leaves once controllers are enabled for the children), never anyone else's processes.
// Job cgroups are named meshcc-job.<daemon pid>.<n>: a daemon that starts removes those of
// daemons that are gone (a crash leaves them), and its own pid's (a pid reused after a restart).
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs'
import { mkdir, readdir, readFile, rmdir, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { formatSize } from '../config.js'
import { parentPid, processAlive } from '../util/pid-lock.js'

const JOB_PREFIX = 'meshcc-job.'
const JOB_NAME = /^meshcc-job\.(\d+)\.[0-9a-z]+$/
/** cgroup v2: where the daemon itself goes so that its cgroup can have controllers for children */
const DAEMON_LEAF = 'meshcc-daemon'
/** an emptied cgroup may stay busy a moment while its last tasks are torn down */
const REMOVE_TRIES = 40
const REMOVE_WAIT_MS = 25

/** One job's cgroup. */
export interface JobCgroup {
  /** the directories the job's reaper joins (v1: one per hierarchy; v2: one) */
  readonly dirs: string[]
  /** whether the kernel killed a process of the job for reaching the memory limit */
  memoryLimitReached(): Promise<boolean>
  /** removes the cgroup (SIGKILL to whatever is still in it first) */
  remove(): Promise<void>
}

/** How jobs' memory is limited on this machine: by cgroups, or why not. */
export type JobMemoryMode = { cgroups: JobCgroups } | { cgroups: null; reason: string }

export class JobCgroups {
  private seq = 0

  constructor(
    readonly version: 1 | 2,
    /** v1: the daemon's memory cgroup; v2: the delegated cgroup the job cgroups go in */
    readonly memoryBase: string,
    /** v1: the daemon's pids cgroup, when there is a pids hierarchy (v2: the same as memoryBase) */
    readonly pidsBase: string | null,
    /** memory.memsw.limit_in_bytes (v1) or memory.swap.max (v2) exists: swap is accounted */
    private readonly swapLimit: boolean
  ) {}

  /** e.g. "cgroup v1" */
  describe(): string {
    return `cgroup v${this.version}`
  }

  /**
   * A fresh cgroup whose memory (swap included) is `memoryBytes` and whose tasks are at most
   * `tasks`. Direct calls, as remove() and memoryLimitReached() make them: cgroupfs files are
   * kernel counters, never a disk, and each of the job's eleven or so trips through the thread
   * pool (a promise's open, write and close for every file written) cost more than the call.
   */
  async create(memoryBytes: number, tasks: number): Promise<JobCgroup> {
    const name = `${JOB_PREFIX}${process.pid}.${(this.seq++).toString(36)}`
    const bytes = String(Math.max(1, Math.floor(memoryBytes)))
    const memory = join(this.memoryBase, name)
    const pids = this.pidsBase && this.pidsBase !== this.memoryBase ? join(this.pidsBase, name) : null
    const made: string[] = []
    const cg = new Cgroup(this.version, made, memory)
    try {
      mkdirSync(memory)
      made.push(memory)
      if (this.version === 1) {
        // memsw (memory + swap) may not be set below the plain limit, so the plain limit first
        writeFileSync(join(memory, 'memory.limit_in_bytes'), bytes)
        if (this.swapLimit) writeFileSync(join(memory, 'memory.memsw.limit_in_bytes'), bytes)
        if (pids) {
          mkdirSync(pids)
          made.push(pids)
          writeFileSync(join(pids, 'pids.max'), String(tasks))
        }
      } else {
        writeFileSync(join(memory, 'memory.max'), bytes)
        if (this.swapLimit) writeFileSync(join(memory, 'memory.swap.max'), '0')
        // an OOM kill ends the whole job, not one of its processes
        try { writeFileSync(join(memory, 'memory.oom.group'), '1') } catch { /* an older kernel */ }
        if (this.pidsBase) writeFileSync(join(memory, 'pids.max'), String(tasks))
      }
    } catch (e) {
      await cg.remove().catch(() => undefined)
      throw new Error(`cannot set up the job's cgroup ${memory}: ${(e as Error).message}`)
    }
    return cg
  }

  /** Removes the job cgroups of daemons that are gone (and of this pid, from before it was ours). */
  async removeStale(): Promise<number> {
    let removed = 0
    for (const base of new Set([this.memoryBase, this.pidsBase].filter((b): b is string => b !== null))) {
      const names = await readdir(base).catch(() => [] as string[])
      for (const name of names) {
        const m = JOB_NAME.exec(name)
        if (!m || (Number(m[1]) !== process.pid && processAlive(Number(m[1])))) continue
        await removeCgroup(join(base, name)).then(() => removed++, () => undefined)
      }
    }
    return removed
  }
}

class Cgroup implements JobCgroup {
  constructor(private readonly version: 1 | 2, readonly dirs: string[], private readonly memory: string) {}

  async memoryLimitReached(): Promise<boolean> {
    // v1: memory.oom_control's oom_kill; v2: memory.events's oom_kill (and oom_group_kill)
    const file = join(this.memory, this.version === 1 ? 'memory.oom_control' : 'memory.events')
    let text = ''
    try { text = readFileSync(file, 'utf8') } catch { /* gone: nothing to tell */ }
    return /^oom_(group_)?kill [1-9]/m.test(text)
  }

  async remove(): Promise<void> {
    // the pids cgroup before the memory one: the reverse of making them
    for (const dir of [...this.dirs].reverse()) await removeCgroup(dir)
  }
}

/** rmdir a cgroup, killing whatever is still in it (a job that outlived its reaper cannot stay). */
async function removeCgroup(dir: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      rmdirSync(dir)
      return
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      if (code === 'ENOENT') return
      if (code !== 'EBUSY' || i >= REMOVE_TRIES) throw new Error(`cannot remove the job cgroup ${dir}: ${(e as Error).message}`)
    }
    // cgroup v2 (5.14 on) kills it whole; else each process listed
    const pids = (await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => '')).split('\n').filter(Boolean)
    await writeFile(join(dir, 'cgroup.kill'), '1').catch(() => {
      for (const pid of pids) { try { process.kill(Number(pid), 'SIGKILL') } catch { /* gone */ } }
    })
    await new Promise((r) => setTimeout(r, REMOVE_WAIT_MS))
  }
}

interface Mount { root: string; point: string; type: string; options: string[] }

/** cgroup mounts from /proc/self/mountinfo: "id parent dev root point opts [tags] - type source superopts" */
function cgroupMounts(mountinfo: string): Mount[] {
  const mounts: Mount[] = []
  for (const line of mountinfo.split('\n')) {
    const [left, right] = line.split(' - ')
    if (!left || !right) continue
    const f = left.split(' ')
    const [type, , superopts] = right.split(' ')
    if (type !== 'cgroup' && type !== 'cgroup2') continue
    mounts.push({ root: unescape(f[3]!), point: unescape(f[4]!), type, options: (superopts ?? '').split(',') })
  }
  return mounts
}

/** mountinfo writes spaces and the like as \040 */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

/** The host directory of cgroup `path` in a hierarchy mounted at `m`, or null when the mount does not show it. */
function dirOf(m: Mount, path: string): string | null {
  if (m.root === '/') return join(m.point, path)
  if (path === m.root || path.startsWith(`${m.root}/`)) return join(m.point, path.slice(m.root.length))
  return null
}

/** The daemon's cgroup for a v1 controller (or the v2 path, controller ''), from /proc/self/cgroup. */
function ownPath(procCgroup: string, controller: string): string | null {
  for (const line of procCgroup.split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line)
    if (!m) continue
    if (controller === '' ? m[1] === '0' && m[2] === '' : m[2]!.split(',').includes(controller)) return m[3]!
  }
  return null
}

/** A job cgroup can be made below base, limited, and joined by a child of the daemon's (as the reaper will). */
async function writable(base: string, probeFile: string, value: string): Promise<void> {
  const probe = join(base, `${JOB_PREFIX}${process.pid}.probe`)
  await rmdir(probe).catch(() => undefined)
  await mkdir(probe)
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 10000)'], { stdio: 'ignore' })
  const exited = new Promise((r) => { child.once('exit', r); child.once('error', r) })
  try {
    await writeFile(join(probe, probeFile), value)
    if (child.pid === undefined) throw new Error('cannot start a process to move')
    await writeFile(join(probe, 'cgroup.procs'), String(child.pid))
  } finally {
    child.kill('SIGKILL')
    await exited
    await removeCgroup(probe).catch(() => undefined)
  }
}

async function v1(mounts: Mount[], procCgroup: string): Promise<JobCgroups | string> {
  const hierarchy = (c: string): string | null => {
    const m = mounts.find((x) => x.type === 'cgroup' && x.options.includes(c))
    const path = ownPath(procCgroup, c)
    return m && path !== null ? dirOf(m, path) : null
  }
  const memory = hierarchy('memory')
  if (!memory || !existsSync(join(memory, 'memory.limit_in_bytes'))) return 'no cgroup v1 memory hierarchy'
  try {
    await writable(memory, 'memory.limit_in_bytes', String(256 * 1024 * 1024))
  } catch (e) {
    return `the daemon's memory cgroup ${memory} is not writable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`
  }
  let pids = hierarchy('pids')
  if (pids) await writable(pids, 'pids.max', '16').catch(() => { pids = null })
  return new JobCgroups(1, memory, pids, existsSync(join(memory, 'memory.memsw.limit_in_bytes')))
}

async function v2(mounts: Mount[], procCgroup: string): Promise<JobCgroups | string> {
  const m = mounts.find((x) => x.type === 'cgroup2')
  const path = ownPath(procCgroup, '')
  const own = m && path !== null ? dirOf(m, path) : null
  if (!own) return 'no cgroup v2 hierarchy'
  // a restarted daemon may already sit in its leaf
  const base = basename(own) === DAEMON_LEAF ? dirname(own) : own
  const controllers = (await readFile(join(base, 'cgroup.controllers'), 'utf8').catch(() => '')).split(/\s+/)
  if (!controllers.includes('memory')) return `cgroup v2 without the memory controller at ${base}`
  const enable = ['memory', ...(controllers.includes('pids') ? ['pids'] : [])]
  try {
    const enabled = (await readFile(join(base, 'cgroup.subtree_control'), 'utf8')).split(/\s+/)
    if (!enable.every((c) => enabled.includes(c))) {
      if (base === own) {
        const procs = (await readFile(join(own, 'cgroup.procs'), 'utf8')).split('\n').filter(Boolean).map(Number)
        if (procs.some((p) => p !== process.pid && parentPid(p) !== process.pid)) return `the daemon's cgroup ${own} holds other processes (run the daemon as a systemd unit with Delegate=yes)`
        await mkdir(join(base, DAEMON_LEAF)).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'EEXIST') throw e })
        // the daemon and its children of the moment (a compile, a probe)
        for (const p of procs) await writeFile(join(base, DAEMON_LEAF, 'cgroup.procs'), String(p)).catch(() => undefined)
      }
      await writeFile(join(base, 'cgroup.subtree_control'), enable.map((c) => `+${c}`).join(' '))
    }
    await writable(base, 'memory.max', String(256 * 1024 * 1024))
  } catch (e) {
    return `the daemon's cgroup ${base} is not delegated to it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`
  }
  return new JobCgroups(2, base, enable.includes('pids') ? base : null, existsSync(join(base, 'memory.swap.max')))
}

let opened: Promise<JobMemoryMode> | null = null

/** detectJobMemory, once: the first caller (the builder's start) pays for the probe. */
export function jobMemoryMode(): Promise<JobMemoryMode> {
  opened ??= detectJobMemory()
  return opened
}

/**
 * Whether this daemon can give jobs cgroups (v2 first, then v1), with the stale job cgroups of
 * daemons that are gone removed.
 */
export async function detectJobMemory(): Promise<JobMemoryMode> {
  let procCgroup: string
  let mounts: Mount[]
  try {
    procCgroup = readFileSync('/proc/self/cgroup', 'utf8')
    mounts = cgroupMounts(readFileSync('/proc/self/mountinfo', 'utf8'))
  } catch {
    return { cgroups: null, reason: 'no cgroups (/proc/self/cgroup unreadable)' }
  }
  const unified = await v2(mounts, procCgroup)
  const found = typeof unified === 'string' ? await v1(mounts, procCgroup) : unified
  if (typeof found === 'string') {
    // the reason of the hierarchy that has the memory controller, when one has
    const v1Memory = mounts.some((x) => x.type === 'cgroup' && x.options.includes('memory'))
    return { cgroups: null, reason: v1Memory ? found : unified as string }
  }
  await found.removeStale()
  return { cgroups: found }
}

/** What `meshcc status` and the builder's log say about the limit jobs get. */
export function describeJobMemory(mode: JobMemoryMode, bytes: number): string {
  return mode.cgroups
    ? `${mode.cgroups.describe()}, ${formatSize(bytes)} per job`
    : `per-process address-space limit of ${formatSize(bytes)} (no writable cgroup: ${mode.reason})`
}
