// The builder side of distributed compilation: admits jobs from mesh peers (it has the last
// word, whatever the client read in the load view), fetches the toolchain when missing,
// rebuilds the client's files at their own paths and compiles in a bubblewrap sandbox.
//
// Each job runs in a tree from the WorkspacePool (job-workspace.ts): the toolchain and exactly
// the client's inputs at the client's own paths, kept between jobs of the same client and
// project so that only the files that differ are written and removed. Such a tree shows the
// compiler what the client's showed it, so the unit is re-preprocessed and compared with the
// client's only when its inputs could still tell the trees apart (job-view-check.ts).
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { copyFile, mkdir, rm } from 'node:fs/promises'
import { loadavg } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { execa } from 'execa'
import type { Config } from '../config.js'
import type { Logger } from '../log.js'
import { encodeJobOutputs, type JobFile, type JobHandler, type JobHeader, type JobReply } from '../mesh/protocols/compile-job.js'
import { checkBwrap, runSandboxed, type SandboxJob, type SandboxResult } from '../sandbox/bwrap.js'
import { describeJobMemory, jobMemoryMode, type JobMemoryMode } from '../sandbox/cgroup.js'
import { readJobFile, readJobFiles } from '../sandbox/job-output.js'
import type { ToolchainCache } from '../toolchain/cache.js'
import { JobViewCheck } from './job-view-check.js'
import { KeptJobs } from './kept-jobs.js'
import { fileTableClash, WorkspacePool, type Workspace, type WorkspaceStats } from './job-workspace.js'

const INPUTS_MISMATCH = 'inputs mismatch'
/** stdout plus stderr of a job, and its object (the protocol's own cap) */
const MAX_OUTPUT_BYTES = 256 * 1024 * 1024

export interface BuilderOptions {
  config: Config
  log: Logger
  toolchains: ToolchainCache
  /** fetch a toolchain archive from a peer that holds it (the client first) into a file whose sha256 is `hash` */
  fetchToolchain: (fromPeer: string, hash: string) => Promise<{ file: string; bytes: number }>
  /** providers of a toolchain besides the client (DHT, load view) */
  findToolchainHolders: (hash: string) => Promise<string[]>
  isAllowed: (peer: string) => boolean
  onLoadChange: () => void
  /** whether this member holds entries for others now: then a job's outputs are kept for its client's keep */
  keepOutputs?: () => boolean
}

export interface BuilderStatus {
  offer: string; sandbox: string; sandbox_ok: boolean; sandbox_note: string | null; job_memory: string; running: number; capacity: number; jobs_done: number; jobs_failed: number; jobs_refused: number; workspaces: WorkspaceStats
  /** jobs whose unit was re-preprocessed here and compared with the client's */
  jobs_checked: number
}

export class Builder implements JobHandler {
  running = 0
  private done = 0
  private failed = 0
  private refused = 0
  private checked = 0
  private readonly viewCheck = new JobViewCheck()
  private sandboxOk = false
  private sandboxNote: string | null = 'not checked yet'
  private memoryMode: JobMemoryMode | null = null
  private readonly fetching = new Map<string, Promise<void>>()
  private readonly workspaces: WorkspacePool
  /** the outputs of the last jobs, for their clients' keeps (mesh-cache.ts reads them) */
  readonly kept = new KeptJobs()

  constructor(private readonly opts: BuilderOptions) {
    const b = opts.config.build
    this.workspaces = new WorkspacePool({
      dir: this.jobsDir(),
      toolchainRoot: (hash) => opts.toolchains.rootOf(hash),
      chrooted: b.sandbox === 'none',
      maxIdle: Math.max(2, 2 * b.cores)
    })
  }

  /** Decide once at start whether remote jobs can be taken (bwrap present, or sandbox = "none"). */
  async init(): Promise<void> {
    const { config, log } = this.opts
    if (config.build.sandbox === 'none') {
      this.sandboxOk = true
      this.sandboxNote = 'sandbox = "none": remote jobs run without isolation'
      log.warn(`[build] sandbox = "none": jobs from mesh peers run without a sandbox (chroot only)`)
      return
    }
    const c = await checkBwrap()
    this.sandboxOk = c.ok
    this.sandboxNote = c.ok ? null : `${c.reason}; remote jobs refused (install bubblewrap, or set [build] sandbox = "none")`
    if (!c.ok) log.warn(`not accepting compile jobs from the mesh: ${this.sandboxNote}`)
    else log.info(`builder ready: bubblewrap ${c.version}, ${config.build.cores} cores offered (${config.build.offer})`)
    this.memoryMode = await jobMemoryMode()
    log.info(`job memory: ${describeJobMemory(this.memoryMode, config.build.jobMemory)}`)
  }

  get capacity(): number {
    const { offer, cores } = this.opts.config.build
    return this.sandboxOk && offer !== 'never' ? cores : 0
  }

  /** free slots for the load view */
  freeSlots(): number {
    if (this.opts.config.build.offer === 'idle' && loadavg()[0] > this.opts.config.build.cores / 2) return 0
    return Math.max(0, this.capacity - this.running)
  }

  acceptPolicy(): 'always' | 'idle' | 'never' {
    return this.capacity === 0 ? 'never' : this.opts.config.build.offer
  }

  status(): BuilderStatus {
    const b = this.opts.config.build
    const memory = b.sandbox === 'none' ? 'no limit (sandbox = "none")' : this.memoryMode ? describeJobMemory(this.memoryMode, b.jobMemory) : 'not checked yet'
    return { offer: b.offer, sandbox: b.sandbox, sandbox_ok: this.sandboxOk, sandbox_note: this.sandboxNote, job_memory: memory, running: this.running, capacity: this.capacity, jobs_done: this.done, jobs_failed: this.failed, jobs_refused: this.refused, jobs_checked: this.checked, workspaces: this.workspaces.status() }
  }

  admit(peer: string, header: Omit<JobHeader, 'files'>): string | (() => void) {
    const reason = this.refusal(peer)
    if (reason) {
      this.refused++
      this.opts.log.debug(`refused job from ${peer}: ${reason}`)
      return reason
    }
    this.running++
    this.opts.onLoadChange()
    this.opts.log.debug(`accepted job from ${peer}: ${header.argv.length} args`)
    let released = false
    return () => {
      if (released) return
      released = true
      this.running--
      this.opts.onLoadChange()
    }
  }

  private refusal(peer: string): string | null {
    const b = this.opts.config.build
    if (!this.opts.isAllowed(peer)) return 'not allowed by [mesh] allow/deny'
    if (b.offer === 'never') return 'not offering (offer = "never")'
    if (!this.sandboxOk) return `no sandbox: ${this.sandboxNote}`
    if (this.running >= b.cores) return 'busy'
    if (b.offer === 'idle' && loadavg()[0] > b.cores / 2) return 'busy (offers only when idle)'
    return null
  }

  async run(peer: string, header: JobHeader, files: JobFile[], signal?: AbortSignal): Promise<JobReply> {
    const { log } = this.opts
    // a table no tree can hold is the client's error, said before anything is fetched or written
    const clash = fileTableClash(header.files.map((f) => f.path), header.dirs, header.cwd)
    if (clash) {
      this.failed++
      log.debug(`job from ${peer} refused: ${clash}`)
      return { kind: 'failed', reason: clash }
    }
    try {
      await this.ensureToolchain(peer, header.toolchain)
    } catch (err) {
      this.failed++
      log.warn(`job from ${peer}: toolchain ${header.toolchain.slice(0, 12)} unavailable: ${(err as Error).message}`)
      return { kind: 'failed', reason: `toolchain unavailable: ${(err as Error).message}` }
    }
    const release = this.opts.toolchains.acquire(header.toolchain)
    try {
      const key = { peer, toolchain: header.toolchain, cwd: header.cwd }
      const data = files.map((f) => f.data)
      const why = this.viewCheck.reason(header, files)
      if (why) {
        this.checked++
        log.debug(`job from ${peer}: checking its preprocessed unit: ${why}`)
      }
      const check = why !== null
      let reply = await this.runInTree(peer, header, check, () => this.workspaces.acquire(key, header.files, data, header.dirs), signal)
      // a kept tree can hold a file the client no longer has: once more in a fresh one
      if (reply.reused && reply.reply.kind === 'failed' && reply.reply.reason.startsWith(INPUTS_MISMATCH)) {
        log.debug(`job from ${peer}: ${reply.reply.reason} in a kept tree; running it again in a fresh one`)
        reply = await this.runInTree(peer, header, check, () => this.workspaces.acquire(key, header.files, data, header.dirs, true), signal)
      }
      if (signal?.aborted) log.debug(`job from ${peer}: stopped, the client closed its stream (it had its result from elsewhere)`)
      else if (reply.reply.kind === 'done') this.done++
      else this.failed++
      const r = reply.reply
      if (r.kind === 'done' && r.exitCode === 0 && r.obj && !signal?.aborted && this.opts.keepOutputs?.()) {
        // exactly the bytes the reply carries: a keep can only name these
        const id = this.kept.keep(peer, [r.stdout, r.stderr, r.obj])
        if (id !== null) return { ...r, keep: id }
      }
      return r
    } finally {
      release()
    }
  }

  private async runInTree(peer: string, header: JobHeader, check: boolean, acquire: () => Promise<Workspace>, signal?: AbortSignal): Promise<{ reply: JobReply; reused: boolean }> {
    let clean = false
    let ws: Workspace | undefined
    try {
      ws = await acquire()
      const reply = await this.runIn(ws, header, check, signal)
      clean = reply.kind === 'done' && !signal?.aborted
      return { reply, reused: ws.jobsBefore > 0 }
    } catch (err) {
      this.opts.log.warn(`job from ${peer} failed on this builder: ${(err as Error).message}`)
      return { reply: { kind: 'failed', reason: `builder error: ${(err as Error).message}` }, reused: false }
    } finally {
      if (ws) await this.workspaces.release(ws, clean)
    }
  }

  private jobsDir(): string {
    return join(this.opts.config.cache.dir, 'jobs')
  }

  async cleanStaleJobs(): Promise<void> {
    await rm(this.jobsDir(), { recursive: true, force: true })
    await mkdir(this.jobsDir(), { recursive: true, mode: 0o700 })
  }

  private async ensureToolchain(peer: string, hash: string): Promise<void> {
    const tc = this.opts.toolchains
    if (tc.has(hash)) return
    let p = this.fetching.get(hash)
    if (!p) {
      p = (async () => {
        const holders = [peer, ...(await this.opts.findToolchainHolders(hash).catch(() => [])).filter((h) => h !== peer)]
        let lastErr: Error | null = null
        for (const h of holders.slice(0, 4)) {
          try {
            const t0 = Date.now()
            const got = await this.opts.fetchToolchain(h, hash)
            await tc.add(hash, got.file, { move: true }).finally(() => rm(got.file, { force: true }))
            this.opts.log.info(`received toolchain ${hash.slice(0, 12)} (${(got.bytes / 1048576).toFixed(1)} MiB) from ${h} in ${Date.now() - t0} ms`)
            this.opts.onLoadChange()
            return
          } catch (err) {
            lastErr = err as Error
          }
        }
        throw lastErr ?? new Error('no peer holds it')
      })().finally(() => this.fetching.delete(hash))
      this.fetching.set(hash, p)
    }
    await p
  }

  private async runIn(ws: Workspace, header: JobHeader, check: boolean, signal?: AbortSignal): Promise<JobReply> {
    const b = this.opts.config.build
    const { root, cwdDir } = ws
    const inputs = { dir: cwdDir, entries: ws.cwdEntries([...header.files.map((f) => f.path), ...header.dirs]) }
    const env = { ...header.env, PATH: '/usr/local/bin:/usr/bin:/bin' }
    const job = (argv: string[], collect?: string): SandboxJob => ({
      root, inputs, cwd: header.cwd, argv, env, collect, ...(header.outputs && collect === undefined ? { collectFiles: header.outputs } : {}),
      timeoutMs: b.jobTimeout * 1000, cpuSeconds: b.jobTimeout, maxOutputBytes: MAX_OUTPUT_BYTES,
      diskBytes: b.jobDisk, maxMemoryBytes: b.jobMemory, signal
    })
    const exec = (argv: string[], collect?: string) => (b.sandbox === 'none' ? runChrooted(root, header.cwd, argv, env, b.jobTimeout * 1000, signal) : runSandboxed(job(argv, collect)))

    if (header.outputs) return this.runWithOutputs(root, header, exec)
    // the builder must see exactly the client's translation unit, or the object could differ:
    // the tree guarantees it unless the inputs can tell trees apart (job-view-check.ts)
    if (check) {
      const pp = await exec([header.compiler, ...header.ppArgv])
      const infra = infraFailure(pp)
      if (infra) return { kind: 'failed', reason: `preprocessing: ${infra}` }
      if (pp.exitCode !== 0) {
        // the compiler's own words, enough of them to see why (a header the job lacks, say):
        // the whole reason fits the protocol's 1024 characters, the log line takes more
        this.opts.log.warn(`job for ${header.cwd}: preprocessing failed here: ${diagnosticLines(pp.stderr, MAX_LOGGED_DIAGNOSTIC)}`)
        return { kind: 'failed', reason: `preprocessing failed here: ${diagnosticLines(pp.stderr, MAX_REASON_DIAGNOSTIC)}` }
      }
      const ppHash = createHash('sha256').update(pp.stdout).digest('hex')
      if (ppHash !== header.ppHash) return { kind: 'failed', reason: `${INPUTS_MISMATCH}: the preprocessed unit differs from the client's` }
    }

    const r = await exec([header.compiler, ...header.argv], relative(header.cwd, header.objPath))
    const bad = infraFailure(r)
    if (bad) return { kind: 'failed', reason: bad }
    if (r.exitCode !== 0) return { kind: 'done', exitCode: r.exitCode ?? 1, stdout: r.stdout, stderr: r.stderr, obj: null }
    // never by a host path that the job could have made a link: the sandbox took it from inside;
    // under sandbox = "none", from the chroot's top without following any link
    const obj = b.sandbox === 'none' ? await readJobFile(root, header.objPath, MAX_OUTPUT_BYTES) : r.collected ?? { ok: false, reason: 'not collected' }
    if (!obj.ok) return { kind: 'failed', reason: `the compiler's object is not taken: ${obj.reason}` }
    return { kind: 'done', exitCode: 0, stdout: r.stdout, stderr: r.stderr, obj: obj.data }
  }

  /**
   * A job with several outputs and no preprocessor (rustc, compile-job v4): the client checks
   * what the compiler read; the outputs come back in one blob, each taken without following
   * a link, all of them within the output cap.
   */
  private async runWithOutputs(root: string, header: JobHeader, exec: (argv: string[]) => Promise<SandboxResult>): Promise<JobReply> {
    const r = await exec([header.compiler, ...header.argv])
    const bad = infraFailure(r)
    if (bad) return { kind: 'failed', reason: bad }
    if (r.exitCode !== 0) return { kind: 'done', exitCode: r.exitCode ?? 1, stdout: r.stdout, stderr: r.stderr, obj: null }
    const room = MAX_OUTPUT_BYTES - r.stdout.length - r.stderr.length
    // under sandbox = "none" from the chroot's top, as the object is: no component may be a link
    const got = this.opts.config.build.sandbox === 'none' ? await readJobFiles(root, header.outputs!.map((o) => join(header.cwd, o)), room) : r.collectedFiles ?? { ok: false, reason: 'not collected' }
    if (!got.ok) return { kind: 'failed', reason: `the compiler's outputs are not taken: ${got.reason}` }
    if (got.data.reduce((n, d) => n + d.length + 4, 0) > room) return { kind: 'failed', reason: 'output too large' }
    return { kind: 'done', exitCode: 0, stdout: r.stdout, stderr: r.stderr, obj: encodeJobOutputs(got.data) }
  }
}

/** How much of a failed preprocessor's stderr a job's failure reason carries (the reply allows 1024 characters). */
const MAX_REASON_DIAGNOSTIC = 900
const MAX_LOGGED_DIAGNOSTIC = 2048

/** A compiler's diagnostics on one line: its non-empty lines joined by " | ", clipped to `max` characters. */
export function diagnosticLines(stderr: Buffer, max: number): string {
  const text = stderr.toString('utf8').split(/\r?\n/).map((l) => l.trimEnd()).filter((l) => l.trim() !== '').join(' | ')
  if (text === '') return '(no diagnostics)'
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`
}

/** A sandbox or resource problem (retry elsewhere), as opposed to the compiler's own verdict. */
function infraFailure(r: SandboxResult): string | null {
  if (r.sandboxError) return `sandbox: ${r.sandboxError}`
  if (r.memoryLimitReached) return 'job memory limit reached ([build] job_memory)'
  if (r.timedOut) return 'timed out'
  if (r.outputTooLarge) return 'output too large'
  if (r.diskFull) return 'the job filled its disk space ([build] job_disk)'
  if (r.signal) return `compiler killed by ${r.signal}`
  if (r.exitCode === null) return 'compiler did not exit normally'
  return null
}

/**
 * sandbox = "none": the operator chose no isolation. chroot still gives the client's paths;
 * the host's coreutils `env -C` (copied into the job root) changes into the cwd there.
 */
async function runChrooted(root: string, cwd: string, argv: string[], env: Record<string, string>, timeoutMs: number, signal?: AbortSignal): Promise<SandboxResult> {
  const envBin = join(root, 'usr', 'bin', 'env')
  await mkdir(dirname(envBin), { recursive: true })
  await rm(envBin, { force: true })
  await copyFile('/usr/bin/env', envBin)
  // by absolute path: the job's PATH (the client's view of /usr/bin and /bin) has no sbin
  const chroot = ['/usr/sbin/chroot', '/sbin/chroot'].find((p) => existsSync(p)) ?? 'chroot'
  const r = await execa(chroot, [root, '/usr/bin/env', '-C', cwd, ...argv], {
    // the bytes exactly as the compiler wrote them: execa would drop a final newline
    env, extendEnv: false, reject: false, encoding: 'buffer', stripFinalNewline: false, timeout: timeoutMs, stdin: 'ignore', maxBuffer: 256 * 1024 * 1024,
    ...(signal ? { cancelSignal: signal, forceKillAfterDelay: 1000 } : {})
  })
  const setupFailed = r.exitCode === 125 || r.exitCode === 126 || r.exitCode === 127 || (r.failed && r.exitCode === undefined)
  return {
    exitCode: r.exitCode ?? null, signal: r.signal ?? null, stdout: Buffer.from(r.stdout as Uint8Array), stderr: Buffer.from(r.stderr as Uint8Array),
    timedOut: Boolean(r.timedOut), outputTooLarge: false, diskFull: false, collected: null,
    sandboxError: setupFailed ? `chroot: ${Buffer.from(r.stderr as Uint8Array).toString('utf8').split('\n')[0].slice(0, 200) || (r.exitCode === undefined ? (r.shortMessage ?? 'could not start').slice(0, 200) : `exit ${r.exitCode}`)}` : null
  }
}
