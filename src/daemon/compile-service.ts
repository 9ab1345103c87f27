// One compile request, end to end: parse, key, cache lookup, compile on a miss, store.
// Every outcome is one of: a result to replay, "run it yourself" (not cacheable) or
// "run it yourself" (we failed). The build never depends on this code being right about
// anything but cache keys.
import { createHash } from 'node:crypto'
import { readFile, rename, rm } from 'node:fs/promises'
import { basename, resolve } from 'node:path'
import { execa } from 'execa'
import { compilerFamily, parseGccArgs } from '../compiler/gcc.js'
import type { CompileSpec, OutputFile } from '../compiler/types.js'
import type { CacheEntry, LocalStore } from '../cache/local-store.js'
import type { Logger } from '../log.js'
import { Semaphore } from '../util/semaphore.js'
import { siblingTemp, writeFileAtomic } from '../util/atomic-write.js'
import type { CompileRequest } from './launcher-protocol.js'
import { CompilerIdentity } from './compiler-identity.js'
import type { Stats } from './stats.js'

export type CompileReply =
  | { kind: 'result'; exitCode: number; stdout: Buffer; stderr: Buffer }
  | { kind: 'passthrough'; reason: string }
  | { kind: 'fallback'; reason: string }

/** Bump when the key recipe changes, so old entries are never read with new meaning. */
const KEY_VERSION = 'meshcc-key-1'

/** Environment variables that can change what the compiler writes (the preprocessed text covers the rest). */
const KEY_ENV = ['LANG', 'LC_ALL', 'LC_CTYPE', 'LC_MESSAGES', 'LANGUAGE', 'GCC_EXEC_PREFIX', 'COMPILER_PATH',
  'GCC_COMPARE_DEBUG', 'CCC_OVERRIDE_OPTIONS', 'SOURCE_DATE_EPOCH', 'SDKROOT', 'MACOSX_DEPLOYMENT_TARGET',
  'MESHCC_CACHE_BUSTER']
/** These make the compiler write files we cannot see. */
const UNCACHEABLE_ENV = ['DEPENDENCIES_OUTPUT', 'SUNPRO_DEPENDENCIES', 'GCC_COMPARE_DEBUG_FILE']

export interface CompileServiceOptions {
  store: LocalStore
  stats: Stats
  log: Logger
  /** compilers run at once (preprocessing and compiling) */
  slots: number
}

export class CompileService {
  private readonly identity = new CompilerIdentity()
  readonly cpu: Semaphore
  private readonly pendingWrites = new Set<Promise<void>>()

  constructor(private readonly opts: CompileServiceOptions) {
    this.cpu = new Semaphore(Math.max(1, opts.slots))
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

    try {
      const key = await this.computeKey(req, spec, compilerHash)
      if (key === null) return this.notCacheable('preprocessor failed')
      const started = performance.now()
      const got = await this.opts.store.get(key)
      if (got.status === 'corrupt') {
        stats.inc('cache_errors')
        log.warn(`cache entry ${key} was corrupt and has been removed: ${got.reason}`)
      }
      if (got.status === 'hit') {
        const ok = await this.writeOutputs(req.cwd, spec.outputs, got.entry)
        if (ok) {
          stats.inc('cache_hits')
          stats.hitTime(performance.now() - started)
          log.debug(`hit ${key.slice(0, 16)} ${spec.input}`)
          return { kind: 'result', exitCode: 0, stdout: got.entry.stdout, stderr: got.entry.stderr }
        }
        // outputs could not be written (e.g. missing directory): the compiler reports that best
        return this.notCacheable('output not writable')
      }
      stats.inc('cache_misses')
      log.debug(`miss ${key.slice(0, 16)} ${spec.input}`)
      return await this.compileAndStore(req, spec, key)
    } catch (err) {
      stats.fallback('daemon error')
      log.error(`compile of ${spec.input} in ${req.cwd} failed inside the daemon: ${(err as Error).message}`)
      return { kind: 'fallback', reason: 'daemon error' }
    }
  }

  private notCacheable(reason: string): CompileReply {
    this.opts.stats.nonCacheable(reason)
    this.opts.log.debug(`not cacheable: ${reason}`)
    return { kind: 'passthrough', reason }
  }

  /** The cache key, or null when the preprocessor fails (the real compile will say why). */
  private async computeKey(req: CompileRequest, spec: CompileSpec, compilerHash: string): Promise<string | null> {
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
    field('--preprocessed--')

    const ok = await this.cpu.run(async () => {
      const sub = execa(req.compiler, spec.preprocessArgs, {
        cwd: req.cwd, env: req.env, extendEnv: false, stdin: 'ignore', reject: false,
        buffer: { stdout: false, stderr: true }, encoding: 'buffer', stripFinalNewline: false
      })
      sub.stdout.on('data', (chunk: Buffer) => h.update(chunk))
      const r = await sub
      return r.exitCode === 0
    })
    return ok ? h.digest('hex') : null
  }

  private async compileAndStore(req: CompileRequest, spec: CompileSpec, key: string): Promise<CompileReply> {
    const { stats, log } = this.opts
    const dests = spec.outputs.map((o) => ({ ...o, abs: resolve(req.cwd, o.path) }))
    const temps = Object.fromEntries(dests.map((o) => [o.name, siblingTemp(o.abs)])) as Record<OutputFile['name'], string>
    const args = spec.compileArgs(temps)
    const r = await this.cpu.run(() => execa(req.compiler, args, {
      cwd: req.cwd, env: req.env, extendEnv: false, stdin: 'ignore', reject: false,
      encoding: 'buffer', stripFinalNewline: false, maxBuffer: 64 * 1024 * 1024
    }))
    stats.inc('local_compiles')
    const stdout = Buffer.from(r.stdout as Uint8Array)
    const stderr = Buffer.from(r.stderr as Uint8Array)
    const cleanup = () => Promise.all(Object.values(temps).map((t) => rm(t, { force: true })))

    const mentionsTemp = Object.values(temps).some((t) => stderr.includes(t) || stdout.includes(t))
    if (r.exitCode !== 0 || r.signal) {
      await cleanup()
      stats.inc('compile_failures')
      // a diagnostic naming our temp file would differ from the plain compiler's: let the launcher rerun it
      if (mentionsTemp || r.exitCode === undefined) return { kind: 'passthrough', reason: 'compile failed' }
      return { kind: 'result', exitCode: r.exitCode ?? 1, stdout, stderr }
    }
    if (mentionsTemp) {
      await cleanup()
      return this.notCacheable('compiler output names the output file')
    }

    // read before renaming: the entry must hold exactly what we hand to the user
    const outputs: CacheEntry['outputs'] = []
    try {
      for (const o of dests) outputs.push({ name: o.name, data: await readFile(temps[o.name]) })
      for (const o of dests) await rename(temps[o.name], o.abs)
    } catch (err) {
      await cleanup()
      log.warn(`compile of ${spec.input} succeeded but an output is missing (${(err as Error).message}); passing through`)
      return this.notCacheable('expected output missing')
    }
    const entry: CacheEntry = { exitCode: 0, stdout, stderr, outputs, meta: { input: spec.input, compiler: req.compiler } }
    const write = this.opts.store.put(key, entry).then(
      () => { stats.inc('cache_writes') },
      (err: Error) => { stats.inc('cache_errors'); log.warn(`could not store cache entry ${key}: ${err.message}`) }
    )
    this.pendingWrites.add(write)
    void write.finally(() => this.pendingWrites.delete(write))
    return { kind: 'result', exitCode: 0, stdout, stderr }
  }

  /** Place a hit's outputs where the compiler would have written them. */
  private async writeOutputs(cwd: string, outputs: OutputFile[], entry: CacheEntry): Promise<boolean> {
    const byName = new Map(entry.outputs.map((o) => [o.name, o.data]))
    if (outputs.some((o) => !byName.has(o.name))) return false
    try {
      for (const o of outputs) await writeFileAtomic(resolve(cwd, o.path), byName.get(o.name)!)
      return true
    } catch {
      return false
    }
  }

  /** Wait for cache writes still in flight (shutdown, tests). */
  async drain(): Promise<void> {
    await Promise.all([...this.pendingWrites])
  }
}
