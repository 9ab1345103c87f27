// The C family (gcc and clang, C/C++/Objective-C/assembler): its argument parsing (gcc.ts)
// and its key recipes. Three ways to a key: direct (the command and the source's content,
// then a manifest of the headers seen), depend (compile here with -MD and key on the files
// the depfile lists) and preprocessed (the preprocessor's output, taken before compiling: the
// way for a miss that may go to a peer, who needs those files).
import { createHash } from 'node:crypto'
import { readFile, rename, rm } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import type { CacheEntry } from '../cache/entry-format.js'
import type { CompileRequest } from '../daemon/launcher-protocol.js'
import type { RemoteJob } from '../daemon/compile-service.js'
import { CompilerIdentity } from '../daemon/compiler-identity.js'
import { siblingTemp } from '../util/atomic-write.js'
import type { FileSet } from '../cache/manifest.js'
import { runProcess } from '../util/run-process.js'
import { depfilePrerequisites, relocateDepfile } from './depfile.js'
import { expandResponseFiles } from './response-file.js'
import { hashedInputs, type CompileJob, type CompilerFamily, type ContentKey, type FamilyContext, type OutputBlobs, type Restore, type RunPlan, type SharedReach } from './family.js'
import { compilerFamily, parseGccArgs } from './gcc.js'
import { PreprocessedOutput } from './pp-output.js'
import { keyForm, mapPath, maxClimb, relativeForm, relocator } from './path-forms.js'
import type { CompileSpec } from './types.js'

/** Bump when the key recipe changes, so old entries are never read with new meaning. */
// 2: the preprocessed text enters as its sha256 (one pass over megabytes, not two)
// 3: line-marker names and search paths enter by where they lie from the working directory (path-forms.ts)
const KEY_VERSION = 'meshcc-key-3'

/** A manifest fact that is no variable: the working directory, for a set whose compile wrote names into its outputs. */
const CWD_FACT = '\0cwd'

/** Environment variables that can change what the compiler writes (the preprocessed text covers the rest). */
export const KEY_ENV = ['LANG', 'LC_ALL', 'LC_CTYPE', 'LC_MESSAGES', 'LANGUAGE', 'GCC_EXEC_PREFIX', 'COMPILER_PATH',
  'GCC_COMPARE_DEBUG', 'CCC_OVERRIDE_OPTIONS', 'SOURCE_DATE_EPOCH', 'SDKROOT', 'MACOSX_DEPLOYMENT_TARGET',
  'MESHCC_CACHE_BUSTER']
/** Where the preprocessor looks for headers: the preprocessed text shows the outcome, a direct key needs the cause. */
/** Those after CPATH add system include directories, whose headers -MMD does not list. */
const SYSTEM_INCLUDE_ENV = ['C_INCLUDE_PATH', 'CPLUS_INCLUDE_PATH', 'OBJC_INCLUDE_PATH', 'OBJCPLUS_INCLUDE_PATH']
const INCLUDE_ENV = ['CPATH', ...SYSTEM_INCLUDE_ENV]
const DIRECT_KEY_VERSION = 'meshcc-direct-2' // 2: without the working directory (path-forms.ts)
/** Options whose value is a directory the preprocessor searches (joined or apart), or a file it reads (-include). */
const DIR_OPTIONS = ['-isystem-after', '-cxx-isystem', '-iframework', '-idirafter', '-isystem', '-isysroot', '--sysroot', '-iquote', '-I', '-F', '-B']
const FILE_OPTIONS = ['-include', '-imacros']
/** Files changed this recently before a request are not trusted into a manifest (timestamps are coarse). */
const TOO_NEW_MS = 1000
/**
 * A unit whose main input is empty (Kbuild's cc-option probes compile /dev/null) and whose
 * preprocessed text is at most this long is compiled here, never sent: its compile is the
 * compiler's start-up (40-55 ms of CPU for a kernel probe), while a remote one cost the builder
 * about 110 ms of its daemon's CPU and a sandbox, came back later, and spared the
 * client nothing but that compile: its daemon's own work per probe is about 75 ms either way
 * (A/B on one mesh, issue #18). An empty unit's -fdirectives-only text is gcc's predefined
 * macros, about 22 KiB; the smallest real kernel unit has 61 KiB of it. The bound leaves room
 * for other targets' macros while a probe that -include's real headers still goes remote.
 */
const EMPTY_UNIT_MAX_BYTES = 64 * 1024
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
    const { h, field } = this.keyHead(DIRECT_KEY_VERSION)
    for (const name of [...KEY_ENV, ...INCLUDE_ENV]) if (req.env[name] !== undefined) field(`${name}=${keyEnvValue(name, req.env[name]!, req.cwd)}`)
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
    const depDest = userDep && resolve(req.cwd, this.outputs.find((o) => o.name === 'dep')!.path)
    return {
      args: plan.args,
      temps: [objTemp, depPath],
      // the bytes collect() read are the files renamed: restore() would hand back the same for
      // a compile in this directory (a depfile names the user's target: userDepArgs)
      place: async () => {
        try {
          if (depDest) await rename(depPath, depDest)
          await rename(objTemp, this.objDest)
          return true
        } catch {
          return false
        }
      },
      collect: async () => {
        const obj = await readFile(objTemp).catch(() => null)
        const depText = await readFile(depPath).catch(() => null)
        if (obj === null) return { outputs: null, deps: null }
        this.object = obj
        const outputs: OutputBlobs = [{ name: 'obj', data: obj }]
        if (userDep && depText) outputs.push({ name: 'dep', data: depText })
        if (userDep && !depText) return { outputs: null, deps: null }
        const files = depText === null ? null : [...new Set([spec.input, ...depfilePrerequisites(depText.toString('utf8'))].map((p) => resolve(req.cwd, p)))].sort()
        this.readFiles = files
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
  async contentKey(recheck = false): Promise<CKey | 'failed' | { notCacheable: string }> {
    const { spec } = this
    let r: CKey | 'incbin' | 'full' | null = null
    if (spec.directivesOnly && this.ctx.remote && spec.remoteBlocker === null) r = await this.keyFrom(true)
    if (r !== null && r !== 'full' && r !== 'incbin' && !recheck) this.ctx.stats.inc('directives_only')
    if (r === null || r === 'full') r = (await this.keyFrom(false)) as CKey | 'incbin' | null
    if (r === 'incbin') return { notCacheable: '.incbin directive (reads a file the key cannot see)' }
    if (r === null) return 'failed'
    this.readFiles = r.inputs?.files ?? null
    // the depfile this checkout's compile writes: a hit stored elsewhere replays it, not the stored one
    if (this.depTemp) this.freshDep = await readFile(this.depTemp).catch(() => null)
    return r
  }

  private async keyFrom(directivesOnly: boolean): Promise<CKey | 'incbin' | 'full' | null> {
    const { req, spec, ctx } = this
    const { h, field } = this.keyHead(KEY_VERSION)
    for (const name of KEY_ENV) if (req.env[name] !== undefined) field(`${name}=${req.env[name]}`)
    field(directivesOnly ? '--directives-only--' : '--preprocessed--')

    // the builder re-preprocesses at the same paths and compares the text byte for byte; the
    // key's view of the text holds marker names as they can reach the outputs (nameForm)
    const out = new PreprocessedOutput({
      directivesOnly, remote: ctx.remote, cwd: req.cwd, mainInput: resolve(req.cwd, spec.input),
      nameForm: (name) => this.nameForm(name), macroNameForm: (raw, name) => this.macroNameForm(raw, name)
    })
    const ok = await ctx.pre.run(async () => {
      const r = await runProcess(req.compiler, spec.preprocessArgs(this.depTemp, directivesOnly), {
        cwd: req.cwd, env: req.env, stderr: false, onStdout: (chunk) => out.push(chunk)
      })
      return r.exitCode === 0
    })
    if (directivesOnly && (!ok || out.volatile)) {
      ctx.log.debug(`${spec.input}: preprocessed fully (${ok ? 'it names .incbin, __DATE__ or __TIME__, or has a digraph or trigraph "#"' : 'gcc refused -fdirectives-only'})`)
      return 'full'
    }
    if (ok && out.volatile) return 'incbin'
    if (!ok) return null
    const r = out.finish()
    field(r.keyText)
    if (spec.paths.namesInCode !== null || r.builtins) field(`names=${r.writtenNames}`)
    if (r.fileMacros) field(`file-macros=${r.macroNames!}`)
    return { key: h.digest('hex'), ppHash: r.ppHash, directivesOnly, ppBytes: r.ppBytes, inputs: r.inputs }
  }

  /**
   * A line marker's name as the key holds it: as debug info names it (after the build's prefix
   * maps) with -g, else by where it lies from the working directory (nothing else of it reaches
   * the object: __FILE__ is expanded in the text or its expansions keyed apart, builtins add the
   * names as written).
   */
  private nameForm(name: string): string {
    const { paths } = this.spec
    if (!paths.debug) return `k:${keyForm(name, this.req.cwd)}`
    const mapped = mapPath(name, paths.debugMaps)
    return mapped === null ? `r:${name}` : `m:${mapped}`
  }

  /**
   * A line marker's name as __FILE__ expands it: mapped, when every -fmacro-prefix-map that
   * matches maps it alike (a build that maps its checkout away keeps its hits across
   * checkouts); else as written, which with the maps the key holds decides the expansion.
   */
  private macroNameForm(raw: string, name: string): string {
    const mapped = mapPath(name, this.spec.paths.macroMaps)
    return mapped === null ? `r:${raw}` : `m:${mapped}`
  }

  /** The working directory as debug info holds it ('' without debug info; -fdebug-compilation-dir is in the arguments). */
  private compDirField(): string {
    const { paths } = this.spec
    if (!paths.debug || paths.debugCompDir !== null) return 'cwd-not-written'
    return `cwd=${mapPath(this.req.cwd, paths.debugMaps) ?? this.req.cwd}`
  }

  /**
   * Could the object hold names of files as they lie here: an option that writes them, debug
   * info with a file in the checkout that the prefix maps leave as it is, or (__FILE__, an
   * assert) an absolute path in the checkout's top-level directory anywhere in its bytes. A
   * manifest cannot tell from the files alone: libstdc++'s headers name __FILE__ in macros
   * most units never expand.
   */
  private namesReachObject(files: string[]): boolean {
    const { paths } = this.spec
    const cwd = this.req.cwd
    if (paths.namesInCode !== null) return true
    if (paths.debug && (mapPath(cwd, paths.debugMaps) === null || files.some((f) => relativeForm(f, cwd) !== null && mapPath(f, paths.debugMaps) === null))) return true
    const top = cwd.split('/').find((c) => c !== '')
    return this.object === null || top === undefined || this.object.includes(`/${top}/`)
  }

  /** Files relative to the working directory where they lie in its tree; the directory itself as a fact when names reach the object. */
  recordSet(files: Array<[string, string]>, env: Array<[string, string | null]>): Omit<FileSet, 'result'> {
    const cwd = this.req.cwd
    const reach = this.namesReachObject(files.map(([p]) => p))
    return {
      files: files.map(([p, h]) => [relativeForm(p, cwd) ?? p, h]),
      env: reach ? [...env, [CWD_FACT, cwd]] : env
    }
  }

  fact(name: string): string | null {
    return name === CWD_FACT ? this.req.cwd : this.req.env[name] ?? null
  }

  /**
   * What a unit's compile reads: the working directory, the source's directory, the directories
   * (and -include files' directories) its arguments name, the system headers and the
   * compiler's own install (its prefix's include and lib directories). Its only fact is the
   * working directory.
   */
  sharedReach(): SharedReach {
    const { req, spec } = this
    const abs = (p: string) => resolve(req.cwd, p)
    const prefix = resolve(dirname(this.compilerReal), '..')
    const roots = [req.cwd, dirname(abs(spec.input)), '/usr/include', '/usr/local/include',
      ...['include', 'lib/gcc', 'lib/clang', 'lib64/gcc', 'libexec/gcc'].map((d) => join(prefix, d))]
    let args = req.args
    try { args = expandResponseFiles(req.args, req.cwd) } catch { /* changed since planning: its directories are not roots */ }
    for (let i = 0; i < args.length; i++) {
      const a = args[i]
      const dirOpt = DIR_OPTIONS.find((o) => a.startsWith(o))
      const fileOpt = FILE_OPTIONS.find((o) => a.startsWith(o))
      const opt = fileOpt ?? dirOpt
      if (opt === undefined) continue
      const v = a === opt ? args[++i] : a.slice(a.startsWith(`${opt}=`) ? opt.length + 1 : opt.length)
      if (v) roots.push(fileOpt ? dirname(abs(v)) : abs(v))
    }
    return { roots, fact: (name) => name === CWD_FACT }
  }

  /** A plain compile writing the object to a temp file; the depfile came from the preprocessor. */
  compilePlan(opts: { objectOnly?: boolean } = {}): RunPlan {
    const objTemp = siblingTemp(this.objDest)
    this.temps.push(objTemp)
    return {
      args: this.spec.compileArgs(objTemp),
      temps: [objTemp],
      collect: async () => {
        const obj = await readFile(objTemp).catch(() => null)
        return { outputs: obj && (opts.objectOnly ? [{ name: 'obj', data: obj }] : await this.withDep(obj)), deps: null }
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

  async keepHere(k: ContentKey): Promise<string | null> {
    if ((k as CKey).ppBytes > EMPTY_UNIT_MAX_BYTES) return null
    const path = resolve(this.req.cwd, this.spec.input)
    if (path === '/dev/null') return 'compiler probe on /dev/null'
    const src = await this.ctx.hasher.hash(path)
    return src !== null && src.size === 0 ? 'empty source file' : null
  }

  remoteOutputs(obj: Buffer): Promise<OutputBlobs> {
    return this.withDep(obj)
  }

  /** The object and, when the compile asks for one, the depfile the preprocessor wrote. */
  private async withDep(obj: Buffer): Promise<OutputBlobs> {
    this.object = obj
    const outputs: OutputBlobs = [{ name: 'obj', data: obj }]
    if (this.depTemp) outputs.push({ name: 'dep', data: await readFile(this.depTemp) })
    return outputs
  }

  /**
   * A hit stored by a build in another directory: the object is this build's (the key holds
   * every name that reaches it); the depfile is the stored one with its names moved and its
   * lines wrapped as this build's compiler wraps them, when that reproduces the stored one's
   * form exactly, else the one this build's preprocessor writes; the diagnostics name this checkout's files (see
   * relocator): the key is taken before the compile says whether there are any, and keying
   * every unit with warnings by its path would lose exactly those units. Null when that
   * cannot be exact.
   */
  async restore(entry: CacheEntry): Promise<Restore | null> {
    const byName = new Map(entry.outputs.map((o) => [o.name, o.data]))
    if (this.outputs.some((o) => !byName.has(o.name))) return null
    this.object = byName.get('obj')!
    const from = entry.meta?.cwd
    const elsewhere = from !== undefined && from !== this.req.cwd
    const climb = Number(entry.meta?.climb ?? Infinity)
    const move = elsewhere ? relocator(from, this.req.cwd, Number.isInteger(climb) ? climb : Infinity) : (b: Buffer) => b
    const moved = (b: Buffer) => (b.length === 0 ? b : move?.(b) ?? null)
    const stdout = moved(entry.stdout)
    const stderr = moved(entry.stderr)
    if (stdout === null || stderr === null) return null
    const files: Restore['files'] = []
    for (const o of this.outputs) {
      let data: Buffer | null = byName.get(o.name)!
      if (o.name === 'dep' && (this.freshDep !== null || elsewhere)) data = this.freshDep ?? this.movedDepfile(data, move) ?? (await this.depfileHere())
      if (data === null) return null
      files.push({ path: resolve(this.req.cwd, o.path), data })
    }
    return { files, stdout, stderr }
  }

  /** What both keys (direct and preprocessed) start with: the compiler, the language, the arguments, where the build lies. */
  private keyHead(version: string): { h: ReturnType<typeof createHash>; field: (s: string) => void } {
    const { req, spec } = this
    const h = createHash('sha256')
    const field = (s: string) => { h.update(s); h.update('\0') }
    field(version)
    field(this.compilerHash)
    field(basename(req.compiler)) // g++ and gcc may share a binary but not a language default
    field(spec.family)
    field(spec.language)
    for (const a of spec.keyArgs) field(a)
    field('--')
    // where the build lies enters only as debug info holds it; a manifest set whose compile
    // wrote names otherwise records the working directory as a fact (recordSet)
    field(this.compDirField())
    if (spec.depTarget !== null) field(`deptarget=${spec.depTarget}`)
    return { h, field }
  }

  /**
   * The stored depfile with its names moved to this build's paths and wrapped again as this
   * build's compiler wraps them (depfile.ts), when that is exact; null: ask the preprocessor.
   */
  private movedDepfile(stored: Buffer, move: ((b: Buffer) => Buffer) | null): Buffer | null {
    if (move === null) return null
    const text = relocateDepfile(stored.toString('latin1'), this.spec.family, (name) => move(Buffer.from(name, 'latin1')).toString('latin1'))
    return text === null ? null : Buffer.from(text, 'latin1')
  }

  /**
   * The depfile this build's compile writes, from a preprocessor run (its text discarded): with
   * -fdirectives-only where gcc takes it (a third of the CPU; the content key's run writes its
   * depfile that way too); null when it fails.
   */
  private async depfileHere(): Promise<Buffer | null> {
    const { req, spec } = this
    const run = (directivesOnly: boolean) => this.ctx.pre.run(() => runProcess(req.compiler, spec.preprocessArgs(this.depTemp, directivesOnly), {
      cwd: req.cwd, env: req.env, stdout: false, stderr: false
    }))
    let r = spec.directivesOnly ? await run(true) : null
    if (r === null || r.exitCode !== 0) r = await run(false)
    return r.exitCode === 0 ? await readFile(this.depTemp!).catch(() => null) : null
  }

  /** Where the compile ran and how far above it the files it read lie: what restore needs to move its paths. */
  entryMeta(): Record<string, string> {
    const meta: Record<string, string> = { input: this.spec.input, compiler: this.req.compiler, cwd: this.req.cwd }
    if (this.readFiles !== null) meta.climb = String(maxClimb(this.readFiles, this.req.cwd))
    return meta
  }

  /** the files the compile read (line markers or its depfile), absolute */
  private readFiles: string[] | null = null
  /** the object this job produced or replayed: what a manifest set checks for names of this checkout */
  private object: Buffer | null = null
  /** the depfile this build's preprocessor wrote while keying the job */
  private freshDep: Buffer | null = null

  private readonly temps: string[] = []

  async dispose(): Promise<void> {
    await Promise.all([...this.temps, ...(this.depTemp ? [this.depTemp] : [])].map((t) => rm(t, { force: true })))
  }
}

/** An include-path variable's directories as the key holds them (path-forms.ts); any other variable as it is. */
function keyEnvValue(name: string, value: string, cwd: string): string {
  return INCLUDE_ENV.includes(name) ? value.split(':').map((p) => (p === '' ? p : keyForm(p, cwd))).join(':') : value
}
