// The C family (gcc and clang, C/C++/Objective-C/assembler): its argument parsing (gcc.ts)
// and its key recipes. Three ways to a key: direct (the command and the source's content,
// then a manifest of the headers seen), depend (compile here with -MD and key on the files
// the depfile lists) and preprocessed (the preprocessor's output, taken before compiling: the
// way for a miss that may go to a peer, who needs those files).
import { createHash } from 'node:crypto'
import { readFile, rm } from 'node:fs/promises'
import { basename, resolve } from 'node:path'
import { execa } from 'execa'
import type { CacheEntry } from '../cache/entry-format.js'
import type { CompileRequest } from '../daemon/launcher-protocol.js'
import type { RemoteJob } from '../daemon/compile-service.js'
import { CompilerIdentity } from '../daemon/compiler-identity.js'
import { siblingTemp } from '../util/atomic-write.js'
import { StreamSearchAny } from '../util/stream-search.js'
import { depfilePrerequisites } from './depfile.js'
import { hashedInputs, type CompileJob, type CompilerFamily, type ContentKey, type FamilyContext, type OutputBlobs, type Restore, type RunPlan } from './family.js'
import { compilerFamily, parseGccArgs } from './gcc.js'
import { InputScanner } from './inputs.js'
import type { CompileSpec } from './types.js'

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
/** Files changed this recently before a request are not trusted into a manifest (timestamps are coarse). */
const TOO_NEW_MS = 1000
/** These make the compiler write files we cannot see. */
const UNCACHEABLE_ENV = ['DEPENDENCIES_OUTPUT', 'SUNPRO_DEPENDENCIES', 'GCC_COMPARE_DEBUG_FILE']

/** The C key from preprocessed text, with what a peer needs to check it. */
interface CKey extends ContentKey {
  /** the sha256 of the preprocessed TU: the builder re-preprocesses and must get the same */
  ppHash: string
  /** it was preprocessed with -fdirectives-only (so must the builder's check be) */
  directivesOnly: boolean
  /** bytes of the preprocessed TU */
  ppBytes: number
}

export class CFamily implements CompilerFamily {
  readonly name = 'c'
  private readonly identity = new CompilerIdentity()

  /** Every compiler no other family claims: gcc, clang and what a masquerade link calls them. */
  claims(): boolean {
    return true
  }

  async plan(req: CompileRequest, ctx: FamilyContext): Promise<CompileJob | { notCacheable: string }> {
    const bad = UNCACHEABLE_ENV.find((v) => req.env[v] !== undefined)
    if (bad) return { notCacheable: `environment variable ${bad}` }
    let real: string
    let compilerHash: string
    try {
      ;({ hash: compilerHash, real } = await this.identity.of(req.compiler))
    } catch (err) {
      return { notCacheable: `compiler not readable (${(err as NodeJS.ErrnoException).code ?? 'error'})` }
    }
    const parsed = parseGccArgs(req.args, req.cwd, compilerFamily(real))
    if (!parsed.cacheable) return { notCacheable: parsed.reason }
    return new CJob(req, parsed.spec, real, compilerHash, ctx)
  }
}

class CJob implements CompileJob {
  readonly family = 'c'
  readonly input: string
  readonly outputs: CompileSpec['outputs']
  readonly remoteBlocker: string | null
  readonly tooNewMs = TOO_NEW_MS
  /** where the preprocessor writes the user's depfile (the compile's own is not asked for) */
  private readonly depTemp: string | null
  private readonly objDest: string

  constructor(private readonly req: CompileRequest, private readonly spec: CompileSpec, private readonly compilerReal: string,
    private readonly compilerHash: string, private readonly ctx: FamilyContext) {
    this.input = spec.input
    this.outputs = spec.outputs
    this.remoteBlocker = spec.remoteBlocker
    const depOut = spec.outputs.find((o) => o.name === 'dep')
    this.depTemp = depOut ? siblingTemp(resolve(req.cwd, depOut.path)) : null
    this.objDest = resolve(req.cwd, spec.outputs[0].path)
  }

  /**
   * The direct-mode key: everything the preprocessed key covers except the included files,
   * plus what decides which files get included (working directory, include-path variables)
   * and the source's content. Null when the source cannot be used (unreadable, __TIME__ …).
   */
  async directKey(requestStart: number): Promise<{ key: string; sourceFresh: boolean } | null> {
    const { req, spec } = this
    const src = await this.ctx.hasher.hash(resolve(req.cwd, spec.input))
    if (src === null || src.volatile) return null
    const h = createHash('sha256')
    const field = (s: string) => { h.update(s); h.update('\0') }
    field(DIRECT_KEY_VERSION)
    field(this.compilerHash)
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

  /**
   * Depend mode: the compiler writes a dependency file listing every file it read. Null when
   * that list could miss files (system include directories from the environment, -MMD).
   */
  dependPlan(): RunPlan | null {
    const { req, spec } = this
    if (SYSTEM_INCLUDE_ENV.some((v) => req.env[v] !== undefined)) return null
    const userDep = this.depTemp
    const objTemp = siblingTemp(this.objDest)
    const depPath = userDep ?? `${objTemp}.d`
    const plan = spec.dependCompileArgs(objTemp, depPath)
    if (plan === null) return null
    this.temps.push(objTemp, depPath)
    return {
      args: plan.args,
      temps: [objTemp, depPath],
      collect: async () => {
        const obj = await readFile(objTemp).catch(() => null)
        const depText = await readFile(depPath).catch(() => null)
        if (obj === null) return { outputs: null, deps: null }
        const outputs: OutputBlobs = [{ name: 'obj', data: obj }]
        if (userDep && depText) outputs.push({ name: 'dep', data: depText })
        if (userDep && !depText) return { outputs: null, deps: null }
        const files = depText === null ? null : [...new Set([spec.input, ...depfilePrerequisites(depText.toString('utf8'))].map((p) => resolve(req.cwd, p)))].sort()
        return { outputs, deps: files && { files, env: [], userHeadersOnly: plan.userHeadersOnly } }
      }
    }
  }

  /**
   * The cache key, or 'failed' when the preprocessor fails (the real compile will say why). A
   * gcc unit that may be shipped to a peer is keyed on -fdirectives-only output: the same
   * files, for about a third of the CPU, here and in the builder's check. Its comments and
   * unused macros are in the key, so an edit to a comment misses where full preprocessing would
   * hit; a unit naming __DATE__ or __TIME__ (unexpanded there) or .incbin, or that gcc refuses
   * in that mode (__COUNTER__ in a directive), is preprocessed fully instead.
   */
  async contentKey(): Promise<CKey | 'failed' | { notCacheable: string }> {
    const { spec } = this
    let r: CKey | 'incbin' | 'full' | null = null
    if (spec.directivesOnly && this.ctx.remote && spec.remoteBlocker === null) r = await this.keyFrom(true)
    if (r === null || r === 'full') r = (await this.keyFrom(false)) as CKey | 'incbin' | null
    if (r === 'incbin') return { notCacheable: '.incbin directive (reads a file the key cannot see)' }
    return r ?? 'failed'
  }

  private async keyFrom(directivesOnly: boolean): Promise<CKey | 'incbin' | 'full' | null> {
    const { req, spec, ctx } = this
    const h = createHash('sha256')
    const field = (s: string) => { h.update(s); h.update('\0') }
    field(KEY_VERSION)
    field(this.compilerHash)
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
    let ppBytes = 0
    // a peer needs the unit's files, direct mode records them: read off the markers as they stream
    const scanner = ctx.remote || ctx.direct ? new InputScanner(req.cwd, resolve(req.cwd, spec.input)) : null
    // An assembler .incbin (in a .S file or inline asm) reads a file the preprocessed text does
    // not contain: a change there would leave the key unchanged and a hit would be stale. In
    // directives-only text (comments kept, __DATE__ unexpanded) it, or a date or time macro,
    // sends the unit to full preprocessing, which decides; so does a "%:" or "??=".
    const search = new StreamSearchAny(directivesOnly ? [INCBIN, ...DATE_TIME_MACROS, ...ALTERNATIVE_HASH] : [INCBIN])
    const ok = await ctx.pre.run(async () => {
      const sub = execa(req.compiler, spec.preprocessArgs(this.depTemp, directivesOnly), {
        cwd: req.cwd, env: req.env, extendEnv: false, stdin: 'ignore', reject: false,
        buffer: { stdout: false, stderr: true }, encoding: 'buffer', stripFinalNewline: false
      })
      sub.stdout.on('data', (chunk: Buffer) => {
        ppHash.update(chunk)
        ppBytes += chunk.length
        search.push(chunk)
        scanner?.push(chunk)
      })
      const r = await sub
      return r.exitCode === 0
    })
    if (directivesOnly && (!ok || search.found)) {
      ctx.log.debug(`${spec.input}: preprocessed fully (${ok ? 'it names .incbin, __DATE__ or __TIME__, or has a digraph or trigraph "#"' : 'gcc refused -fdirectives-only'})`)
      return 'full'
    }
    if (directivesOnly) ctx.stats.inc('directives_only')
    if (ok && search.found) return 'incbin'
    if (!ok) return null
    const pp = ppHash.digest('hex')
    field(pp)
    return { key: h.digest('hex'), ppHash: pp, directivesOnly, ppBytes, inputs: scanner?.finish() ?? null }
  }

  /** A plain compile writing the object to a temp file; the depfile came from the preprocessor. */
  compilePlan(): RunPlan {
    const objTemp = siblingTemp(this.objDest)
    this.temps.push(objTemp)
    return {
      args: this.spec.compileArgs(objTemp),
      temps: [objTemp],
      collect: async () => {
        const obj = await readFile(objTemp).catch(() => null)
        return { outputs: obj && (await this.withDep(obj)), deps: null }
      }
    }
  }

  remoteJob(k: ContentKey): RemoteJob {
    const ck = k as CKey
    return {
      req: this.req, spec: this.spec, compilerReal: this.compilerReal, compilerHash: this.compilerHash,
      ppHash: ck.ppHash, directivesOnly: ck.directivesOnly, ppBytes: ck.ppBytes,
      inputs: () => hashedInputs(k, this.ctx.hasher)
    }
  }

  remoteOutputs(obj: Buffer): Promise<OutputBlobs> {
    return this.withDep(obj)
  }

  /** The object and, when the compile asks for one, the depfile the preprocessor wrote. */
  private async withDep(obj: Buffer): Promise<OutputBlobs> {
    const outputs: OutputBlobs = [{ name: 'obj', data: obj }]
    if (this.depTemp) outputs.push({ name: 'dep', data: await readFile(this.depTemp) })
    return outputs
  }

  restore(entry: CacheEntry): Restore | null {
    const byName = new Map(entry.outputs.map((o) => [o.name, o.data]))
    if (this.outputs.some((o) => !byName.has(o.name))) return null
    return { files: this.outputs.map((o) => ({ path: resolve(this.req.cwd, o.path), data: byName.get(o.name)! })), stdout: entry.stdout, stderr: entry.stderr }
  }

  entryMeta(): Record<string, string> {
    return { input: this.spec.input, compiler: this.req.compiler }
  }

  private readonly temps: string[] = []

  async dispose(): Promise<void> {
    await Promise.all([...this.temps, ...(this.depTemp ? [this.depTemp] : [])].map((t) => rm(t, { force: true })))
  }
}
