// One compile request, end to end: parse, key, cache lookup, compile on a miss (here or on
// a mesh peer), store. Every outcome is one of: a result to replay, "run it yourself" (not
// cacheable) or "run it yourself" (we failed). The build never depends on this code being
// right about anything but cache keys.
import { createHash } from 'node:crypto'
import { lstat, readFile, rm } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { basename, resolve } from 'node:path'
import { execa } from 'execa'
import { compilerFamily, parseGccArgs } from '../compiler/gcc.js'
import type { CompileSpec } from '../compiler/types.js'
import type { CacheEntry, LocalStore } from '../cache/local-store.js'
import { FileHasher, type FileHash } from '../cache/file-hashes.js'
import type { ManifestStore } from '../cache/manifest.js'
import { InputScanner, type InputSet } from '../compiler/inputs.js'
import { depfilePrerequisites } from '../compiler/depfile.js'
import type { Logger } from '../log.js'
import { Semaphore } from '../util/semaphore.js'
import { siblingTemp, writeFileAtomic } from '../util/atomic-write.js'
import { StreamSearchAny } from '../util/stream-search.js'
import type { CompileRequest } from './launcher-protocol.js'
import { CompilerIdentity } from './compiler-identity.js'
import type { Stats } from './stats.js'

export type CompileReply =
  | { kind: 'result'; exitCode: number; stdout: Buffer; stderr: Buffer }
  | { kind: 'passthrough'; reason: string }
  | { kind: 'fallback'; reason: string }

/** Bump when the key recipe changes, so old entries are never read with new meaning. */
const KEY_VERSION = 'meshcc-key-2' // 2: the preprocessed text enters as its sha256 (one pass over megabytes, not two)

const INCBIN = Buffer.from('.incbin')
/**
 * __DATE__, __TIME__ and __TIMESTAMP__, left unexpanded by -fdirectives-only: such a unit is
 * keyed on its fully preprocessed text. Searched by their tails: a needle that starts with "__"
 * takes several times as long in C code, and an identifier that merely ends alike only costs a
 * full preprocessing run.
 */
const DATE_TIME_MACROS = ['DATE__', 'TIME__', 'STAMP__'].map((m) => Buffer.from(m))
/**
 * gcc -fdirectives-only leaves a directive spelled with a digraph or trigraph ("%:include",
 * "??=include") as text, so the header it includes would be missing from the key while the
 * real compile reads it: such a unit is preprocessed fully too.
 */
const ALTERNATIVE_HASH = ['%:', '??='].map((m) => Buffer.from(m))

/** Environment variables that can change what the compiler writes (the preprocessed text covers the rest). */
export const KEY_ENV = ['LANG', 'LC_ALL', 'LC_CTYPE', 'LC_MESSAGES', 'LANGUAGE', 'GCC_EXEC_PREFIX', 'COMPILER_PATH',
  'GCC_COMPARE_DEBUG', 'CCC_OVERRIDE_OPTIONS', 'SOURCE_DATE_EPOCH', 'SDKROOT', 'MACOSX_DEPLOYMENT_TARGET',
  'MESHCC_CACHE_BUSTER']
/** Where the preprocessor looks for headers: the preprocessed text shows the outcome, a direct key needs the cause. */
/** Those after CPATH add system include directories, whose headers -MMD does not list. */
const SYSTEM_INCLUDE_ENV = ['C_INCLUDE_PATH', 'CPLUS_INCLUDE_PATH', 'OBJC_INCLUDE_PATH', 'OBJCPLUS_INCLUDE_PATH']
const INCLUDE_ENV = ['CPATH', ...SYSTEM_INCLUDE_ENV]
const DIRECT_KEY_VERSION = 'meshcc-direct-1'
const DEPEND_KEY_VERSION = 'meshcc-depend-1'
/** Files changed this recently before a request are not trusted into a manifest (timestamps are coarse). */
const TOO_NEW_MS = 1000
/** These make the compiler write files we cannot see. */
const UNCACHEABLE_ENV = ['DEPENDENCIES_OUTPUT', 'SUNPRO_DEPENDENCIES', 'GCC_COMPARE_DEBUG_FILE']

/** A miss that may be compiled on a mesh peer. */
export interface RemoteJob {
  req: CompileRequest
  spec: CompileSpec
  /** the compiler's real path and content hash */
  compilerReal: string
  compilerHash: string
  /** the sha256 of the preprocessed TU: the builder re-preprocesses and must get the same */
  ppHash: string
  /** it was preprocessed with -fdirectives-only (so must the builder's check be) */
  directivesOnly: boolean
  /** the files the TU read, each with its hash (null: not a readable regular file) */
  inputs: () => Promise<HashedInputs>
}

export interface RemoteOutcome { exitCode: number; stdout: Buffer; stderr: Buffer; obj: Buffer | null; peer: string }

/** A job made ready to ship (toolchain packed, inputs read), offered to peers until one runs it. */
export interface PreparedJob {
  input: string
  header: import('../mesh/protocols/compile-job.js').JobHeader
  files: import('../mesh/protocols/compile-job.js').JobFileRef[]
  /** failed peer attempts so far (refusals by full peers do not count) */
  failures: number
  /** the class of the last failure, for the fallback's reason */
  lastFailure: string | null
}

/** 'failed': too many peer failures, compile here; `reason` is the last one's class. */
export type RemoteAttempt = { kind: 'done'; outcome: RemoteOutcome } | { kind: 'no-room' } | { kind: 'failed'; reason: string }

/** Where misses can go besides this machine (the mesh); absent without a mesh. */
export interface RemoteRunner {
  /** should this miss try the mesh? `localFree` says whether a local slot is free now */
  wants(localFree: boolean): boolean
  /** the job ready to offer, or why it cannot be shipped */
  prepare(job: RemoteJob): Promise<PreparedJob | { unshippable: string }>
  tryPeers(job: PreparedJob): Promise<RemoteAttempt>
  /** resolves when the load view shows room for the job (or after `ms`) */
  waitForRoom(job: PreparedJob, ms: number): Promise<void>
}

export interface CompileServiceOptions {
  store: LocalStore
  stats: Stats
  log: Logger
  /** compiles this machine runs for itself at once; 0 = every miss to the mesh when a peer can take it */
  slots: number
  /** direct mode's manifests; null = always run the preprocessor */
  direct?: ManifestStore | null
}

/** The files a preprocessed unit read (its line markers) and their hashes: taken once per miss for the job's inputs and the manifest. */
export interface HashedInputs { set: InputSet; hashes: Array<FileHash | null> }
interface KeyResult { key: string; ppHash: string; directivesOnly: boolean; inputs: InputSet | null; hashed?: Promise<HashedInputs> }
/** A manifest entry to write once the result it points at is stored. */
interface ManifestUpdate { direct: string; write: () => Promise<void> }
interface LocalResult { exitCode: number; stdout: Buffer; stderr: Buffer; obj: Buffer | null }

export class CompileService {
  private readonly identity = new CompilerIdentity()
  /** file content hashes, memoised by stat: direct mode's checks, manifests and the inputs of jobs sent to peers */
  readonly hasher = new FileHasher()
  /** local compiles: `slots` of them (at least one, for depend-mode probes and the like) */
  readonly cpu: Semaphore
  /**
   * With local_slots = 0, the compiles that were meant for the mesh and fall back to this
   * machine: they use its cores as a plain build would, not one slot (a build's -j waits on them).
   */
  readonly fallbackCpu = new Semaphore(availableParallelism())
  /** local preprocessing: bounded separately, so distributing misses cannot thrash this machine */
  private readonly pre = new Semaphore(availableParallelism())
  private readonly pendingWrites = new Set<Promise<void>>()
  /** manifest updates in flight, by direct key */
  private readonly manifestWrites = new Map<string, Promise<void>>()
  /** how the cache's writes fail now (ENOSPC on a full disk), so the log says it once, not once per compile */
  private writesFailing: string | null = null
  remote: RemoteRunner | null = null

  constructor(private readonly opts: CompileServiceOptions) {
    this.cpu = new Semaphore(Math.max(1, opts.slots))
  }

  /** A reloaded config's local_slots. */
  setSlots(slots: number): void {
    this.opts.slots = slots
    this.cpu.setLimit(Math.max(1, slots))
  }

  async handle(req: CompileRequest): Promise<CompileReply> {
    const { stats, log } = this.opts
    stats.inc('compile_requests')
    const bad = UNCACHEABLE_ENV.find((v) => req.env[v] !== undefined)
    if (bad) return this.notCacheable(`environment variable ${bad}`)
    let real: string
    let compilerHash: string
    try {
      ;({ hash: compilerHash, real } = await this.identity.of(req.compiler))
    } catch (err) {
      return this.notCacheable(`compiler not readable (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    }
    const parsed = parseGccArgs(req.args, req.cwd, compilerFamily(real))
    if (!parsed.cacheable) return this.notCacheable(parsed.reason)
    const spec = parsed.spec
    // `-o /dev/null` (configure probes) or any other non-file output: an atomic rename would
    // replace the device itself, so the compiler writes it as it would without us
    for (const o of spec.outputs) {
      const st = await lstat(resolve(req.cwd, o.path)).catch(() => null)
      if (st && !st.isFile()) return this.notCacheable(`output ${o.path} is not a regular file`)
    }
    const depOut = spec.outputs.find((o) => o.name === 'dep')
    const depTemp = depOut ? siblingTemp(resolve(req.cwd, depOut.path)) : null

    try {
      const started = performance.now()
      const requestStart = Date.now()
      const dk = this.opts.direct ? await this.directKey(req, spec, compilerHash, requestStart) : null
      const direct = dk?.key ?? null
      let preferPreprocessed = false
      if (direct) {
        const { hit, preprocess } = await this.directLookup(req.cwd, spec, direct)
        preferPreprocessed = preprocess
        if (hit) {
          stats.inc('cache_hits')
          stats.inc('direct_hits')
          stats.hitTime(performance.now() - started)
          log.debug(`direct hit ${direct.slice(0, 16)} ${spec.input}`)
          return hit
        }
      }
      // A miss compiled here needs no preprocessor run at all; one that may go to a peer does (its
      // inputs). A source saved a moment ago (the edit-compile loop) goes the preprocessed way,
      // which can store its result where depend mode could not key it safely.
      const distributable = this.remote !== null && spec.remoteBlocker === null
      if (direct && !dk!.sourceFresh && !preferPreprocessed && !distributable) {
        const r = await this.compileDepend(req, spec, direct, depTemp, requestStart)
        if (r) return r
      }
      const k = await this.computeKey(req, spec, compilerHash, depTemp)
      if (k === null) {
        // a missing source, a syntax error in a directive: the compile fails the same way, and
        // the compiler run by the launcher says exactly how
        stats.inc('compile_failures')
        log.debug(`preprocessing ${spec.input} failed: the compiler reports it`)
        return { kind: 'passthrough', reason: 'compile failed' }
      }
      if (k === 'incbin') return this.notCacheable('.incbin directive (reads a file the key cannot see)')
      // once the result is in the cache, the next identical command can find it without -E
      const record: ManifestUpdate | null = direct ? { direct, write: () => this.recordManifest(direct, k, requestStart) } : null
      const got = await this.storeGet(k.key)
      if (got) {
        const ok = await this.writeOutputs(req.cwd, spec, got)
        if (ok) {
          stats.inc('cache_hits')
          stats.hitTime(performance.now() - started)
          log.debug(`hit ${k.key.slice(0, 16)} ${spec.input}`)
          if (record) this.track(record.write(), record.direct)
          return { kind: 'result', exitCode: 0, stdout: got.stdout, stderr: got.stderr }
        }
        // outputs could not be written (e.g. missing directory): the compiler reports that best
        return this.notCacheable('output not writable')
      }
      stats.inc('cache_misses')
      log.debug(`miss ${k.key.slice(0, 16)} ${spec.input}`)
      return await this.compileAndStore(req, spec, k, depTemp, { compilerReal: real, compilerHash }, record)
    } catch (err) {
      stats.fallback('daemon error')
      log.error(`compile of ${spec.input} in ${req.cwd} failed inside the daemon: ${(err as Error).message}`)
      return { kind: 'fallback', reason: 'daemon error' }
    } finally {
      if (depTemp) await rm(depTemp, { force: true })
    }
  }

  private notCacheable(reason: string): CompileReply {
    this.opts.stats.nonCacheable(reason)
    this.opts.log.debug(`not cacheable: ${reason}`)
    return { kind: 'passthrough', reason }
  }

  /**
   * The cache key, or null when the preprocessor fails (the real compile will say why). A gcc
   * unit that may be shipped to a peer is keyed on -fdirectives-only output: the same files,
   * for about a third of the CPU, here and in the builder's check. Its comments and unused
   * macros are in the key, so an edit to a comment misses where full preprocessing would hit;
   * a unit naming __DATE__ or __TIME__ (unexpanded there) or .incbin, or that gcc refuses in
   * that mode (__COUNTER__ in a directive), is preprocessed fully instead.
   */
  private async computeKey(req: CompileRequest, spec: CompileSpec, compilerHash: string, depTemp: string | null): Promise<KeyResult | 'incbin' | null> {
    if (spec.directivesOnly && this.remote && spec.remoteBlocker === null) {
      const r = await this.keyFrom(req, spec, compilerHash, depTemp, true)
      if (r !== 'full') return r
    }
    return (await this.keyFrom(req, spec, compilerHash, depTemp, false)) as KeyResult | 'incbin' | null
  }

  private async keyFrom(req: CompileRequest, spec: CompileSpec, compilerHash: string, depTemp: string | null, directivesOnly: boolean): Promise<KeyResult | 'incbin' | 'full' | null> {
    const h = createHash('sha256')
    const field = (s: string) => { h.update(s); h.update('\0') }
    field(KEY_VERSION)
    field(compilerHash)
    field(basename(req.compiler)) // g++ and gcc may share a binary but not a language default
    field(spec.family)
    field(spec.language)
    for (const a of spec.keyArgs) field(a)
    field('--')
    if (spec.cwdInKey) field(`cwd=${req.cwd}`)
    if (spec.depTarget !== null) field(`deptarget=${spec.depTarget}`)
    for (const name of KEY_ENV) if (req.env[name] !== undefined) field(`${name}=${req.env[name]}`)
    field(directivesOnly ? '--directives-only--' : '--preprocessed--')

    const ppHash = createHash('sha256')
    // a peer needs the unit's files, direct mode records them: read off the markers as they stream
    const scanner = this.remote || this.opts.direct ? new InputScanner(req.cwd, resolve(req.cwd, spec.input)) : null
    // An assembler .incbin (in a .S file or inline asm) reads a file the preprocessed text does
    // not contain: a change there would leave the key unchanged and a hit would be stale. In
    // directives-only text (comments kept, __DATE__ unexpanded) it, or a date or time macro,
    // sends the unit to full preprocessing, which decides; so does a "%:" or "??=".
    const search = new StreamSearchAny(directivesOnly ? [INCBIN, ...DATE_TIME_MACROS, ...ALTERNATIVE_HASH] : [INCBIN])
    const ok = await this.pre.run(async () => {
      const sub = execa(req.compiler, spec.preprocessArgs(depTemp, directivesOnly), {
        cwd: req.cwd, env: req.env, extendEnv: false, stdin: 'ignore', reject: false,
        buffer: { stdout: false, stderr: true }, encoding: 'buffer', stripFinalNewline: false
      })
      sub.stdout.on('data', (chunk: Buffer) => {
        ppHash.update(chunk)
        search.push(chunk)
        scanner?.push(chunk)
      })
      const r = await sub
      return r.exitCode === 0
    })
    if (directivesOnly && (!ok || search.found)) {
      this.opts.log.debug(`${spec.input}: preprocessed fully (${ok ? 'it names .incbin, __DATE__ or __TIME__, or has a digraph or trigraph "#"' : 'gcc refused -fdirectives-only'})`)
      return 'full'
    }
    if (directivesOnly) this.opts.stats.inc('directives_only')
    if (ok && search.found) return 'incbin'
    if (!ok) return null
    const pp = ppHash.digest('hex')
    field(pp)
    return { key: h.digest('hex'), ppHash: pp, directivesOnly, inputs: scanner?.finish() ?? null }
  }

  private async compileAndStore(req: CompileRequest, spec: CompileSpec, k: KeyResult, depTemp: string | null,
    compiler: { compilerReal: string; compilerHash: string }, afterStore: ManifestUpdate | null): Promise<CompileReply> {
    const { stats, log } = this.opts
    const objDest = resolve(req.cwd, spec.outputs[0].path)

    // Here when a local slot is free (unless a peer with room is clearly faster); else a peer
    // with room; with neither, wait for whichever comes first (a queued job never commits to
    // one side while the other frees up).
    let result: LocalResult | null = null
    /** why a miss meant for the mesh is compiled here after all (counted as a fallback) */
    let fallback: string | null = null
    const remote = this.remote
    if (!remote || spec.remoteBlocker !== null) {
      fallback = this.unsentReason(spec)
    } else if (remote.wants(this.cpu.running < this.opts.slots)) {
      const prepared = await remote.prepare({ req, spec, ...compiler, ppHash: k.ppHash, directivesOnly: k.directivesOnly, inputs: () => this.hashedInputs(k) })
      if ('unshippable' in prepared) fallback = `job not shippable (${prepared.unshippable})`
      while (!('unshippable' in prepared) && result === null) {
        const a = await remote.tryPeers(prepared)
        if (a.kind === 'done' && a.outcome.exitCode !== 0) {
          // A failure may be a file the compiler read that no line marker named (an assembler
          // .incbin, say): the local compile below gives the verdict the user sees.
          stats.retry('remote compile failed, rechecked here')
          log.info(`compile of ${spec.input} failed on ${a.outcome.peer}; rechecking it here`)
          break
        }
        if (a.kind === 'done') {
          stats.inc('remote_compiles')
          log.debug(`compiled ${spec.input} on ${a.outcome.peer}`)
          result = a.outcome
          break
        }
        if (a.kind === 'failed') { fallback = `all attempts failed: ${a.reason}`; break }
        if (!remote.wants(false)) {
          fallback = prepared.lastFailure ? `all attempts failed: ${prepared.lastFailure}` : 'no peer with room'
          break
        }
        if (this.opts.slots > 0 && this.cpu.running < this.opts.slots) break
        await Promise.race([remote.waitForRoom(prepared, 1000), this.opts.slots > 0 ? this.cpu.whenFree() : new Promise(() => {})])
        if (this.opts.slots > 0 && this.cpu.running < this.opts.slots) break
      }
    } else if (this.opts.slots === 0) {
      fallback = 'no peer takes jobs'
    }
    if (result === null) {
      if (fallback !== null) {
        stats.fallback(fallback)
        log.info(`compiling ${spec.input} here: ${fallback}`)
      }
      const objTemp = siblingTemp(objDest)
      const r = await this.localCompile(req, spec.compileArgs(objTemp), objTemp, [], fallback !== null)
      if ('kind' in r) return r
      result = r
    }

    const dep = depTemp ? await readFile(depTemp) : null
    return this.storeResult(req, spec, k.key, result, dep, afterStore)
  }

  /**
   * With local_slots = 0 every miss is meant for the mesh: why this one cannot go there (no
   * mesh, an option that keeps it here). Null when local compiles are normal.
   */
  private unsentReason(spec: CompileSpec): string | null {
    if (this.opts.slots > 0) return null
    return this.remote ? `not distributable (${spec.remoteBlocker})` : 'no mesh'
  }

  /**
   * Run the compiler here; `temps` are our temp paths that must not show in its output. A
   * fallback (a miss meant for the mesh) runs beside the local slots, as a plain build would.
   */
  private async localCompile(req: CompileRequest, args: string[], objTemp: string, temps: string[], fallback = false): Promise<LocalResult | CompileReply> {
    const sem = fallback && this.opts.slots === 0 ? this.fallbackCpu : this.cpu
    const r = await sem.run(() => execa(req.compiler, args, {
      cwd: req.cwd, env: req.env, extendEnv: false, stdin: 'ignore', reject: false,
      encoding: 'buffer', stripFinalNewline: false, maxBuffer: 64 * 1024 * 1024
    }))
    this.opts.stats.inc('local_compiles')
    const stdout = Buffer.from(r.stdout as Uint8Array)
    const stderr = Buffer.from(r.stderr as Uint8Array)
    let obj: Buffer | null = null
    if (r.exitCode === 0 && !r.signal) obj = await readFile(objTemp).catch(() => null)
    await rm(objTemp, { force: true })
    // a diagnostic naming our temp file would differ from the plain compiler's: let the launcher rerun it
    if ([objTemp, ...temps].some((t) => stderr.includes(t) || stdout.includes(t))) {
      return r.exitCode === 0 ? this.notCacheable('compiler output names the output file') : { kind: 'passthrough', reason: 'compile failed' }
    }
    if (r.exitCode === undefined || r.signal) return { kind: 'passthrough', reason: 'compiler killed' }
    return { exitCode: r.exitCode, stdout, stderr, obj }
  }

  /** Hand a finished compile to the user and, when it succeeded, to the cache under `key`. */
  private async storeResult(req: CompileRequest, spec: CompileSpec, key: string | null, result: LocalResult, dep: Buffer | null,
    afterStore: ManifestUpdate | null): Promise<CompileReply> {
    const { stats, log } = this.opts
    if (result.exitCode !== 0) {
      stats.inc('compile_failures')
      return { kind: 'result', exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr }
    }
    if (result.obj === null) {
      log.info(`${basename(req.compiler)} ${req.args.join(' ').slice(0, 300)} (in ${req.cwd}) exited 0 but wrote no object; passing through`)
      return this.notCacheable('expected output missing')
    }
    const outputs: CacheEntry['outputs'] = [{ name: 'obj', data: result.obj }]
    if (dep) outputs.push({ name: 'dep', data: dep })
    const entry: CacheEntry = { exitCode: 0, stdout: result.stdout, stderr: result.stderr, outputs, meta: { input: spec.input, compiler: req.compiler } }
    if (!(await this.writeOutputs(req.cwd, spec, entry))) return this.notCacheable('output not writable')
    if (key !== null) {
      this.track(this.opts.store.put(key, entry).then(
        async () => {
          stats.inc('cache_writes')
          this.writeWorked()
          if (afterStore) await afterStore.write()
        },
        (err: Error) => { stats.inc('cache_errors'); this.writeFailed(`cache entry ${key}`, err) }
      ), afterStore?.direct)
    }
    return { kind: 'result', exitCode: 0, stdout: result.stdout, stderr: result.stderr }
  }

  /**
   * Depend mode, for a miss this machine compiles anyway: no preprocessor run. The compiler
   * writes a dependency file listing every file it read; their hashes and the direct key make
   * the result key, recorded in the manifest for the next lookup. Null when the compile does
   * not qualify (its depfile could miss files): the caller takes the preprocessed path.
   */
  private async compileDepend(req: CompileRequest, spec: CompileSpec, direct: string, userDep: string | null, requestStart: number): Promise<CompileReply | null> {
    if (SYSTEM_INCLUDE_ENV.some((v) => req.env[v] !== undefined)) return null
    const objTemp = siblingTemp(resolve(req.cwd, spec.outputs[0].path))
    const depPath = userDep ?? `${objTemp}.d`
    const plan = spec.dependCompileArgs(objTemp, depPath)
    if (plan === null) return null
    this.opts.stats.inc('cache_misses')
    this.opts.log.debug(`miss (depend mode) ${direct.slice(0, 16)} ${spec.input}`)
    const fallback = this.unsentReason(spec)
    if (fallback !== null) this.opts.stats.fallback(fallback)
    try {
      const r = await this.localCompile(req, plan.args, objTemp, [depPath], fallback !== null)
      if ('kind' in r) return r
      const depText = r.exitCode === 0 ? await readFile(depPath).catch(() => null) : null
      let key: string | null = null
      let record: ManifestUpdate | null = null
      if (depText !== null) {
        const paths = [...new Set([spec.input, ...depfilePrerequisites(depText.toString('utf8'))].map((p) => resolve(req.cwd, p)))].sort()
        const files = await this.trustedFiles(paths, requestStart, plan.userHeadersOnly)
        if (files) {
          const h = createHash('sha256').update(`${DEPEND_KEY_VERSION}\0${direct}\0`)
          for (const [p, fh] of files) h.update(`${p}\0${fh}\0`)
          const result = h.digest('hex')
          key = result
          record = { direct, write: () => this.manifestWrite(direct, this.opts.direct!.add(direct, { files, result })) }
        }
      }
      return await this.storeResult(req, spec, key, r, userDep ? depText : null, record)
    } finally {
      if (!userDep) await rm(depPath, { force: true })
    }
  }

  /** Place an entry's outputs where the compiler would have written them, each atomically. */
  private async writeOutputs(cwd: string, spec: CompileSpec, entry: CacheEntry): Promise<boolean> {
    const byName = new Map(entry.outputs.map((o) => [o.name, o.data]))
    if (spec.outputs.some((o) => !byName.has(o.name))) return false
    try {
      for (const o of spec.outputs) await writeFileAtomic(resolve(cwd, o.path), byName.get(o.name)!)
      return true
    } catch {
      return false
    }
  }

  /**
   * Keep a background write (entry, manifest) in the set that drain() waits for; with a direct
   * key, a lookup of that key waits for it too (the same command right after its miss hits).
   */
  private track(write: Promise<void>, direct?: string): void {
    this.pendingWrites.add(write)
    if (direct) this.manifestWrites.set(direct, write)
    void write.finally(() => {
      this.pendingWrites.delete(write)
      if (direct && this.manifestWrites.get(direct) === write) this.manifestWrites.delete(direct)
    })
  }

  /**
   * The direct-mode key: everything the preprocessed key covers except the included files,
   * plus what decides which files get included (working directory, include-path variables)
   * and the source's content. Null when the source cannot be used (unreadable, __TIME__ …).
   */
  private async directKey(req: CompileRequest, spec: CompileSpec, compilerHash: string, requestStart: number): Promise<{ key: string; sourceFresh: boolean } | null> {
    const src = await this.hasher.hash(resolve(req.cwd, spec.input))
    if (src === null || src.volatile) return null
    const h = createHash('sha256')
    const field = (s: string) => { h.update(s); h.update('\0') }
    field(DIRECT_KEY_VERSION)
    field(compilerHash)
    field(basename(req.compiler))
    field(spec.family)
    field(spec.language)
    for (const a of spec.keyArgs) field(a)
    field('--')
    field(`cwd=${req.cwd}`)
    if (spec.depTarget !== null) field(`deptarget=${spec.depTarget}`)
    for (const name of [...KEY_ENV, ...INCLUDE_ENV]) if (req.env[name] !== undefined) field(`${name}=${req.env[name]}`)
    field(`source=${src.hash}`)
    return { key: h.digest('hex'), sourceFresh: src.newerThan(requestStart - TOO_NEW_MS) }
  }

  /** A hit found through the manifest: every recorded file still has its recorded hash. */
  private async directLookup(cwd: string, spec: CompileSpec, direct: string): Promise<{ hit: CompileReply | null; preprocess: boolean }> {
    await this.manifestWrites.get(direct)
    const manifest = await this.opts.direct!.get(direct)
    if (manifest.damaged !== null) {
      this.opts.stats.inc('cache_errors')
      this.opts.log.warn(`manifest ${direct} was damaged and has been removed: ${manifest.damaged}`)
    }
    for (const set of manifest.sets) {
      const now = await Promise.all(set.files.map(([p]) => this.hasher.hash(p)))
      if (!now.every((f, i) => f !== null && f.hash === set.files[i][1])) continue
      const got = await this.storeGet(set.result)
      if (got === null) continue
      if (!(await this.writeOutputs(cwd, spec, got))) break
      return { hit: { kind: 'result', exitCode: 0, stdout: got.stdout, stderr: got.stderr }, preprocess: false }
    }
    return { hit: null, preprocess: manifest.preprocess }
  }

  /** A cache entry, or null; a corrupt one is counted, logged and (by the store) removed. */
  private async storeGet(key: string): Promise<CacheEntry | null> {
    const got = await this.opts.store.get(key)
    if (got.status === 'corrupt') {
      this.opts.stats.inc('cache_errors')
      this.opts.log.warn(`cache entry ${key} was corrupt and has been removed: ${got.reason}`)
    }
    return got.status === 'hit' ? got.entry : null
  }

  /**
   * [path, hash] of each file, or null when one cannot go into a manifest: unreadable, using
   * __TIME__ and the like, changed while we looked, or (for a -MMD list) a self-declared system
   * header whose own includes the list leaves out.
   */
  private async trustedFiles(paths: string[], requestStart: number, userHeadersOnly: boolean): Promise<Array<[string, string]> | null> {
    return trusted(paths, await Promise.all(paths.map((p) => this.hasher.hash(p))), requestStart, userHeadersOnly)
  }

  /** The unit's files with their hashes, hashed once however many ask (the job's inputs, the manifest). */
  private hashedInputs(k: KeyResult): Promise<HashedInputs> {
    const set = k.inputs
    if (set === null) return Promise.reject(new Error('no input set: the preprocessed output was not scanned'))
    k.hashed ??= Promise.all(set.files.map((p) => this.hasher.hash(p))).then((hashes) => ({ set, hashes }))
    return k.hashed
  }

  /**
   * Remember which files produced `k` (from the preprocessor's line markers); when they are too
   * new to trust, at least that the result is under its preprocessed key.
   */
  private async recordManifest(direct: string, k: KeyResult, requestStart: number): Promise<void> {
    const { set, hashes } = await this.hashedInputs(k)
    const files = trusted(set.files, hashes, requestStart, false)
    await this.manifestWrite(direct, files ? this.opts.direct!.add(direct, { files, result: k.key }) : this.opts.direct!.markPreprocess(direct))
  }

  /** A manifest that cannot be written costs a later hit, never the compile. */
  private async manifestWrite(direct: string, op: Promise<void>): Promise<void> {
    await op.then(() => this.writeWorked(), (err: Error) => this.writeFailed(`manifest ${direct}`, err))
  }

  /** A cache write failed: a warning when it starts failing this way, then debug lines while it goes on. */
  private writeFailed(what: string, err: Error): void {
    const how = (err as NodeJS.ErrnoException).code ?? err.message
    if (this.writesFailing === how) {
      this.opts.log.debug(`could not store ${what}: ${err.message}`)
      return
    }
    this.writesFailing = how
    this.opts.log.warn(`could not store ${what}: ${err.message}; compiles go on without storing their results while this lasts (counted in cache_errors)`)
  }

  private writeWorked(): void {
    if (this.writesFailing === null) return
    this.opts.log.info(`cache writes work again (they failed with ${this.writesFailing})`)
    this.writesFailing = null
  }

  /** Wait for cache writes still in flight (shutdown, tests). */
  async drain(): Promise<void> {
    await Promise.all([...this.pendingWrites])
  }
}

/**
 * [path, hash] of each file, or null when one cannot go into a manifest: unreadable, using
 * __TIME__ and the like, changed while we looked, or (for a -MMD list) a self-declared system
 * header whose own includes the list leaves out.
 */
function trusted(paths: string[], hashes: Array<FileHash | null>, requestStart: number, userHeadersOnly: boolean): Array<[string, string]> | null {
  const ok = hashes.every((f) => f !== null && !f.volatile && !(userHeadersOnly && f.systemHeader) && !f.newerThan(requestStart - TOO_NEW_MS))
  return ok ? paths.map((p, i) => [p, hashes[i]!.hash]) : null
}
