// The Rust family: rustc as cargo runs it through RUSTC_WRAPPER. rustc has no preprocessor
// to key a unit before compiling, so every crate goes the direct and depend way (as a C unit
// compiled here does): the direct key is the toolchain, the arguments that change the output,
// the --extern crates, bundled static libraries and a target JSON by content, the CARGO_*
// variables and the crate root's content; a miss compiles here with dep-info, whose files
// (include_str! ones too) and env!/option_env! variables key the result and go into the
// manifest the next lookup checks.
//
// Where the build lies: the output directory is no part of a key; a stored .d, rustc's
// artifact notices and any other mention of it are rewritten to this build's on a hit. The
// working directory is part of the key (rustc writes it into every rlib) unless a
// --remap-path-prefix covers it; files under it are recorded relative to it. So a hit also
// comes after `cargo clean`, and in another checkout at another path with the checkout
// remapped; see docs/how-it-works.md for when it does not.
import { createHash } from 'node:crypto'
import { readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, dirname, isAbsolute, join, resolve } from 'node:path'
import { execa } from 'execa'
import type { CacheEntry } from '../cache/entry-format.js'
import type { RemoteJob } from '../daemon/compile-service.js'
import type { CompileRequest } from '../daemon/launcher-protocol.js'
import { decodeJobOutputs } from '../mesh/protocols/compile-job.js'
import { siblingTemp } from '../util/atomic-write.js'
import type { CompileJob, CompilerFamily, ContentKey, Dependencies, DirectKey, FamilyContext, ListedInputs, OutputBlobs, Restore, RunPlan, SharedReach } from './family.js'
import { replaceAll } from './path-forms.js'
import { parseDepInfo } from './rust-depinfo.js'
import { buildJobserver, JOBSERVER_ENV } from './rust-jobserver.js'
import { RustToolchains, type RustToolchain } from './rust-toolchain.js'
import { parseRustcArgs, type RustSpec } from './rustc-args.js'

const RUST_KEY_VERSION = 'meshcc-rust-1'
/** rustc, rustc-1.63, x86_64-linux-gnu-rustc, rustc-web (Debian's) */
const RUSTC_NAME = /^(?:[\w.]+-)*rustc(?:-[\w.]+)?$/
/** Variables rustc itself reads (besides env! and option_env!, which dep-info lists). */
const RUSTC_ENV = ['RUSTC_BOOTSTRAP', 'RUSTC_FORCE_RUSTC_VERSION', 'RUSTC_LOG', 'RUST_TARGET_PATH', 'RUST_MIN_STACK',
  'LANG', 'LC_ALL', 'LC_MESSAGES', 'SOURCE_DATE_EPOCH', 'MESHCC_CACHE_BUSTER']
/**
 * Cargo's variables that say nothing about the crate (sccache leaves out the same): its own
 * settings, registry credentials and proxies. A secret in a key would be one more thing the
 * key's owner could test guesses against.
 */
const CARGO_ENV_IGNORED = /^CARGO_(?:MAKEFLAGS|BUILD_JOBS|ENCODED_RUSTFLAGS|REGISTRIES_.*|REGISTRY_.*|HTTP_.*|NET_.*|HOME|TARGET_DIR)$/
/** Cargo's variables that are paths: relative to the working directory in the key when only rustc reads them. */
const CARGO_PATH_ENV = new Set(['CARGO', 'CARGO_MANIFEST_DIR', 'CARGO_MANIFEST_PATH', 'CARGO_RUSTC_CURRENT_DIR'])
/** A directory this many native static libraries deep is a system one: only the -l named ones enter the key. */
const MAX_DIR_STATIC_LIBS = 64
/** A manifest fact that is no variable: the name a remap gives a file outside the working directory. */
const REMAP_FACT = '\0remap '
/**
 * The variables cargo sets for the crate it compiles (and OUT_DIR, its build script's output):
 * the env! names a manifest set from another member may record. Any other name (a secret in
 * this user's environment, CARGO_REGISTRY_TOKEN) would let that member test a guessed value.
 */
const CRATE_FACT = /^(?:CARGO|CARGO_PKG_[A-Z0-9_]+|CARGO_CRATE_NAME|CARGO_MANIFEST_(?:DIR|PATH|LINKS)|CARGO_PRIMARY_PACKAGE|CARGO_BIN_NAME|CARGO_BIN_EXE_[\w-]+|CARGO_TARGET_TMPDIR|CARGO_RUSTC_CURRENT_DIR|OUT_DIR)$/
/** how much a peer's text may grow when its paths are rewritten to this build's */
const MAX_REMOTE_GROWTH = 1024 * 1024
/** A compiled proc macro (a host dynamic library) */
const PROC_MACRO = /\.(so|dylib|dll)$/
/**
 * Proc macros known to read what rustc does not track (variables besides cargo's, files
 * outside the dep-info, git, a database): a crate loading one compiles here, where they see
 * what the local build sees. By crate name, as the library's file name has it.
 */
const UNTRACKED_PROC_MACROS = new Set(['sqlx_macros', 'dotenv_codegen_impl', 'dotenvy_macro', 'git_version_macro', 'include_dir_macros', 'graphql_query_derive'])
/** An out-dir spelled alike in a .d (Make), in JSON and in plain text can be rewritten by plain substitution. */
const RELOCATABLE_DIR = /^\/[^\s"\\#$%:]*$/

export class RustFamily implements CompilerFamily {
  readonly name = 'rust'
  private readonly toolchains: RustToolchains

  /** `memoFile`: where the toolchain's file hashes are kept across daemons (null: in memory only) */
  constructor(memoFile: string | null = null) {
    this.toolchains = new RustToolchains(memoFile)
  }

  claims(req: CompileRequest): boolean {
    return RUSTC_NAME.test(basename(req.compiler))
  }

  async plan(req: CompileRequest, ctx: FamilyContext): Promise<CompileJob | { notCacheable: string }> {
    const parsed = parseRustcArgs(req.args, req.cwd)
    if (!parsed.cacheable) return { notCacheable: parsed.reason }
    if (!ctx.direct) return { notCacheable: 'direct mode off (rustc is keyed through manifests)' }
    let tc: RustToolchain
    try {
      tc = await this.toolchains.of(req)
    } catch (err) {
      return { notCacheable: `rustc not identifiable (${(err as Error).message.split('\n')[0].slice(0, 120)})` }
    }
    return new RustJob(req, parsed.spec, tc, this.toolchains, ctx)
  }
}

class RustJob implements CompileJob {
  readonly family = 'rust'
  readonly input: string
  readonly outputs: RustSpec['outputs']
  /** why this crate is compiled here rather than on a peer (set again once its listing shows a proc macro), or null */
  remoteBlocker: string | null
  /**
   * rustc reads its sources tens of milliseconds after it starts (it loads a 100 MB driver
   * first), so a file older than the request was read as we hash it. Files a build script
   * wrote just before (OUT_DIR) can then be recorded; C's one-second margin would keep them out.
   */
  readonly tooNewMs = 0
  readonly relativeFiles = true
  private readonly outDirAbs: string
  private readonly temps: string[] = []
  /** what the listing named: the sources (absolute, sorted) and the variables looked up */
  private listed: { sources: string[]; env: Array<[string, string | null]> } | null = null

  constructor(private readonly req: CompileRequest, private readonly spec: RustSpec, private readonly tc: RustToolchain,
    private readonly toolchains: RustToolchains, private readonly ctx: FamilyContext) {
    this.input = spec.input
    this.outputs = spec.outputs
    this.outDirAbs = resolve(req.cwd, spec.outDir)
    this.remoteBlocker = this.staticBlocker()
  }

  /**
   * What keeps this crate off the mesh before its listing: the builder reproduces the client's
   * paths and has this rustc's host std only, and gets no native library. Proc macros go with
   * the job (see listInputs).
   */
  private staticBlocker(): string | null {
    const { spec, tc, req } = this
    if (resolve(dirname(tc.real), '..') !== tc.sysroot) return 'rustc outside its sysroot (a rustup proxy)'
    if (spec.targetJson !== null || (spec.target !== null && spec.target !== tc.host)) return 'rustc --target of another platform'
    if (spec.nativeCpu) return 'rustc -C target-cpu=native'
    if (spec.nativeDirs.length > 0 || spec.staticLibs.length > 0) return 'rustc with native libraries'
    if (!isAbsolute(spec.outDir) || !this.relocatable || !RELOCATABLE_DIR.test(resolve(req.cwd))) return 'rustc --out-dir not plainly spelled'
    if (spec.outputs.some((o) => o.path !== `${this.outDirAbs}/${basename(o.path)}`)) return 'rustc --emit with a path'
    return null
  }

  /** The out-dir is left out of the key and rewritten on a hit, unless its spelling could differ between a .d and JSON. */
  private get relocatable(): boolean {
    return RELOCATABLE_DIR.test(this.outDirAbs)
  }

  async directKey(): Promise<DirectKey | null> {
    const { req, spec, ctx } = this
    const src = await ctx.hasher.hash(resolve(req.cwd, spec.input))
    if (src === null || src.volatile) return null
    const h = createHash('sha256')
    const field = (s: string) => { h.update(s); h.update('\0') }
    field(RUST_KEY_VERSION)
    field(this.tc.hash)
    const target = spec.targetJson ? basename(spec.targetJson, '.json') : spec.target ?? this.tc.host
    field(`std=${await this.toolchains.target(this.tc, target)}`)
    if (spec.targetJson) field(`target-json=${(await this.contentOf(spec.targetJson)) ?? 'missing'}`)
    if (spec.nativeCpu) field(`cpu=${this.toolchains.cpuFingerprint()}`)
    for (const a of spec.keyArgs) field(a)
    field('--')
    // --extern crates by content (an rmeta changes with everything its crate exports)
    const externs = await Promise.all(spec.externs.map((e) => this.contentOf(resolve(req.cwd, e.path))))
    if (externs.includes(null)) return null
    externs.forEach((x, i) => field(`extern ${spec.externs[i].name}=${basename(spec.externs[i].path).replace(/^.*\./, '')}:${x}`))
    for (const lib of await this.staticLibs()) field(`static ${lib}`)
    // where the build lies, as rustc writes it into the crate
    const cwdMapped = remap(req.cwd, spec.remaps)
    field(cwdMapped === null ? `cwd=${req.cwd}` : `cwd-remapped=${cwdMapped}`)
    for (const [from, to] of spec.remaps) field(`remap ${relation(from, req.cwd)}=${to}`)
    if (!this.relocatable) field(`out-dir=${this.outDirAbs}`)
    // A proc macro may read any variable and file without rustc tracking it: with one among
    // the crate's dependencies, cargo's variables enter as they are
    const procMacro = spec.externs.some((e) => PROC_MACRO.test(e.path))
    for (const name of Object.keys(req.env).sort()) {
      if (!name.startsWith('CARGO_') && name !== 'CARGO' && !(procMacro && name === 'OUT_DIR')) continue
      if (CARGO_ENV_IGNORED.test(name)) continue
      const v = req.env[name]!
      field(`${name}=${!procMacro && CARGO_PATH_ENV.has(name) ? relativeTo(v, req.cwd) : v}`)
    }
    for (const name of RUSTC_ENV) if (req.env[name] !== undefined) field(`${name}=${req.env[name]}`)
    field(`source=${src.hash}`)
    return { key: h.digest('hex'), sourceFresh: false }
  }

  /** The content hash of a binary input (memoised by stat), or null when it cannot be read. */
  private async contentOf(path: string): Promise<string | null> {
    return (await this.ctx.hasher.hashBinary(path))?.hash ?? null
  }

  /**
   * Static libraries an rlib may bundle: those -l static= names, searched in the -L
   * directories, and every lib*.a in a -L native/all directory (a #[link(kind = "static")]
   * names one without any -l), unless the directory is a system one full of them.
   */
  private async staticLibs(): Promise<string[]> {
    const { spec, req } = this
    const out: string[] = []
    const files = new Set<string>()
    for (const dir of spec.nativeDirs) {
      const abs = resolve(req.cwd, dir)
      const names = (await readdir(abs).catch(() => [] as string[])).filter((n) => n.endsWith('.a')).sort()
      if (names.length <= MAX_DIR_STATIC_LIBS) for (const n of names) files.add(join(abs, n))
      for (const lib of spec.staticLibs) {
        const n = lib.verbatim ? lib.name : `lib${lib.name}.a`
        if (names.includes(n)) files.add(join(abs, n))
      }
    }
    for (const f of files) out.push(`${basename(f)}:${(await this.contentOf(f)) ?? 'unreadable'}`)
    for (const lib of spec.staticLibs) out.push(`-l static=${lib.name}`)
    return out
  }

  /**
   * The real compile with the outputs cargo asked for; rustc's dep-info lists what it read (a
   * temp one when cargo asked for none). The jobserver variables go (their descriptors are the
   * build's, and rustc would warn that it cannot open them), for the build's own jobserver
   * reached through the launcher where it can be (jobserver()).
   */
  dependPlan(): RunPlan {
    const { spec, req } = this
    let depPath = spec.depInfo?.path ?? null
    const args = [...req.args]
    const temps: string[] = []
    if (depPath === null) {
      depPath = siblingTemp(join(this.outDirAbs, `${spec.crateName}.d`))
      args.push(`--emit=dep-info=${depPath}`)
      temps.push(depPath)
      this.temps.push(depPath)
    }
    const dep = depPath
    return {
      args, ...this.jobserver(temps), inPlace: true,
      collect: async () => {
        const blobs = await this.readOutputs()
        if (blobs === null) return { outputs: null, deps: null }
        const text = await readFile(dep, 'utf8').catch(() => null)
        return { outputs: blobs, deps: text === null ? null : this.dependencies(text) }
      }
    }
  }

  /** The plain compile, for a listed miss compiled here after all. */
  compilePlan(): RunPlan {
    return {
      args: [...this.req.args], ...this.jobserver([]), inPlace: true,
      collect: async () => ({ outputs: await this.readOutputs(), deps: null })
    }
  }

  /**
   * A run here joins the build's jobserver through the launcher when it can (rust-jobserver.ts).
   * Should the launcher be gone before rustc opens it, rustc warns naming the path: as a temp,
   * that result is not stored, and the launcher (if any) runs rustc itself.
   */
  private jobserver(temps: string[]): Pick<RunPlan, 'temps' | 'dropEnv' | 'jobserverEnv'> {
    const path = buildJobserver(this.req)
    if (path === null) return { temps, dropEnv: JOBSERVER_ENV }
    return { temps: [...temps, `fifo:${path}`], dropEnv: JOBSERVER_ENV, jobserverEnv: { CARGO_MAKEFLAGS: `-j --jobserver-auth=fifo:${path}` } }
  }

  private async readOutputs(): Promise<OutputBlobs | null> {
    const blobs: OutputBlobs = []
    for (const o of this.spec.outputs) {
      const data = await readFile(o.path).catch(() => null)
      if (data === null) return null
      blobs.push({ name: o.name, data })
    }
    return blobs
  }

  /**
   * rustc lists what the crate reads before compiling it: dep-info alone (macro expansion, no
   * codegen), with the compiled crates it loads (-Z binary-dep-depinfo, allowed for this run by
   * RUSTC_BOOTSTRAP). The sources and variables key the result as a compile's own dep-info
   * would; the crates go to the peer only (their content is in the direct key, through the
   * --extern crates that name them).
   */
  async listInputs(): Promise<ListedInputs | 'failed' | { local: string }> {
    const { req, spec, tc, ctx } = this
    const depPath = siblingTemp(join(tmpdir(), `meshcc-list-${spec.crateName}.d`))
    this.temps.push(depPath)
    const env: Record<string, string> = { ...req.env, RUSTC_BOOTSTRAP: '1' }
    for (const k of JOBSERVER_ENV) delete env[k]
    const r = await ctx.pre.run(() => execa(req.compiler, [...withoutEmit(spec.args), `--emit=dep-info=${depPath}`, '-Zbinary-dep-depinfo'], {
      cwd: req.cwd, env, extendEnv: false, stdin: 'ignore', reject: false, encoding: 'buffer', maxBuffer: 64 * 1024 * 1024
    }))
    if (r.exitCode !== 0) {
      this.remoteBlocker = 'rustc refused the crate while listing its inputs'
      return 'failed'
    }
    const text = await readFile(depPath, 'utf8').catch(() => null)
    if (text === null) return { local: 'rustc listed no dep-info' }
    const all = [...new Set(parseDepInfo(text).files.map((f) => resolve(req.cwd, f)))]
    const searched = new Set([...spec.searchDirs.map((d) => resolve(req.cwd, d)), ...spec.externs.map((e) => dirname(resolve(req.cwd, e.path)))])
    const sysroot = `${tc.sysroot}/`
    const isCrate = (f: string) => /\.(rlib|rmeta|so)$/.test(f) && (f.startsWith(sysroot) || searched.has(dirname(f)))
    const crates = all.filter((f) => isCrate(f) && !f.startsWith(sysroot))
    const procMacros = crates.filter((f) => PROC_MACRO.test(f))
    const blocker = await this.procMacroBlocker(procMacros)
    if (blocker !== null) {
      this.remoteBlocker = blocker
      return { local: blocker }
    }
    const deps = this.dependencies(text, (f) => !isCrate(f))
    this.listed = { sources: deps.files, env: deps.env }
    const files = [...new Set([...deps.files, ...crates, ...await this.manifestFor(procMacros)])].sort()
    const dirs = [...new Set(spec.searchDirs.map((d) => resolve(req.cwd, d)))].sort()
    return { deps, ship: { files, dirs } }
  }

  /**
   * Why the proc macros this crate loads keep it here, or null. A proc macro is code the client
   * chose, run by rustc inside the builder's sandbox: so is the rustc the client ships, so the
   * sandbox is the boundary either way. It was built by this rustc for this host, so it runs
   * wherever the pack's rustc does (the same platform), with what the pack ships.
   * It may also read any variable and file without rustc tracking it. The cache already takes
   * that risk on the same terms (cargo's variables key such a crate as they are, see directKey),
   * and the remote compile sees those same variables (remoteEnv) and the shipped files at their
   * own paths; the proc macros known to read anything else stay here. One that reads a file that
   * was not shipped mostly fails, and a failed remote compile is compiled here again.
   */
  private async procMacroBlocker(procMacros: string[]): Promise<string | null> {
    for (const so of procMacros) {
      const crate = basename(so).replace(/^lib/, '').replace(/-[0-9a-f]+\.\w+$/, '')
      if (UNTRACKED_PROC_MACROS.has(crate)) return `rustc loading ${crate}, a proc macro reading what rustc does not track`
      const why = await this.toolchains.procMacroUnshippable(this.req.compiler, so)
      if (why !== null) {
        // the counted reason stays one class; the log says which library
        this.ctx.log.info(`${this.spec.input} compiles here: ${why}`)
        return 'rustc loading a proc macro the toolchain pack cannot run'
      }
    }
    return null
  }

  /**
   * The crate's Cargo.toml when a proc macro runs on it: the one file outside the dep-info that
   * derive crates commonly read (proc-macro-crate, through CARGO_MANIFEST_DIR, to find the name
   * a dependency goes by); shipped, it reads the same there.
   */
  private async manifestFor(procMacros: string[]): Promise<string[]> {
    const dir = this.req.env.CARGO_MANIFEST_DIR
    if (procMacros.length === 0 || dir === undefined) return []
    const manifest = this.req.env.CARGO_MANIFEST_PATH ?? join(dir, 'Cargo.toml')
    const abs = resolve(this.req.cwd, manifest)
    return (await this.contentOf(abs)) === null ? [] : [abs]
  }

  remoteJob(k: ContentKey): RemoteJob {
    const { req, spec, tc, ctx } = this
    const set = k.inputs!
    const crates = new Set(set.files.filter((f) => !this.listed!.sources.includes(f)))
    return {
      req, input: spec.input, toolchainFamily: 'rustc', compilerReal: tc.real, compilerHash: tc.hash,
      command: (outDir) => ({ argv: withOutDir(spec.args, outDir), env: this.remoteEnv(), outputs: spec.outputs.map((o) => basename(o.path)) }),
      inputs: async () => ({ set, hashes: await Promise.all(set.files.map((f) => (crates.has(f) ? ctx.hasher.hashBinary(f) : ctx.hasher.hash(f)))) })
    }
  }

  /** What rustc may read on the peer: cargo's variables, OUT_DIR, rustc's own and those the crate looked up (env!). */
  private remoteEnv(): Record<string, string> {
    const env: Record<string, string> = {}
    const names = new Set([...RUSTC_ENV, 'OUT_DIR', ...this.listed!.env.map(([n]) => n)])
    for (const [name, value] of Object.entries(this.req.env)) {
      if (value === undefined || JOBSERVER_ENV.includes(name)) continue
      if (name === 'CARGO' || name.startsWith('CARGO_') || names.has(name)) env[name] = value
    }
    return env
  }

  /**
   * The peer's outputs, written into its working directory under their own names: every
   * mention of those paths (the dep-info's rules, rustc's artifact notices) names this
   * build's. The peer's dep-info must list the very files the listing here did.
   */
  async remoteOutputs(obj: Buffer): Promise<OutputBlobs> {
    const data = decodeJobOutputs(obj, this.outputs.length)
    const blobs = this.outputs.map((o, i) => ({ name: o.name, data: o.name === 'dep-info' ? this.remoteText(data[i]!) : data[i]! }))
    const dep = blobs.find((b) => b.name === 'dep-info')
    if (dep) {
      const read = this.dependencies(dep.data.toString('utf8'), () => true)
      if (read.files.join('\0') !== this.listed!.sources.join('\0')) throw new Error('the peer\'s rustc read other files than the listing here named')
    }
    return blobs
  }

  /** Throws when the peer's text would grow past what a compile here could print (a hostile peer's blow-up). */
  remoteText(b: Buffer): Buffer {
    const cwd = resolve(this.req.cwd)
    let out = b
    for (const o of [...this.outputs].sort((x, y) => basename(y.path).length - basename(x.path).length)) {
      const from = Buffer.from(`${cwd}/${basename(o.path)}`)
      const to = Buffer.from(o.path)
      let n = 0
      for (let at = out.indexOf(from); at !== -1; at = out.indexOf(from, at + from.length)) n++
      if (out.length + n * Math.max(0, to.length - from.length) > b.length + MAX_REMOTE_GROWTH) throw new Error(`rewriting the peer's paths would grow ${b.length} bytes past the limit`)
      out = replaceAll(out, from, to)
    }
    return out
  }

  private dependencies(text: string, keep: (f: string) => boolean = () => true): Dependencies {
    const { req, spec } = this
    const info = parseDepInfo(text)
    const files = [...new Set(info.files.map((f) => resolve(req.cwd, f)))].filter(keep).sort()
    // A remap unrelated to the working directory is keyed without its FROM (it differs between
    // checkouts): each file outside the directory records the name rustc gave it instead
    const facts: Array<[string, string | null]> = []
    const cwd = req.cwd.endsWith('/') ? req.cwd : `${req.cwd}/`
    if (spec.remaps.some(([from]) => relation(from, req.cwd) === 'other')) {
      for (const f of files) if (!f.startsWith(cwd)) facts.push([`${REMAP_FACT}${f}`, remap(f, spec.remaps) ?? f])
    }
    return { files, env: [...info.env, ...facts], userHeadersOnly: false }
  }

  /** A manifest's recorded fact as this build sees it: a variable, or the name rustc gives a file. */
  fact(name: string): string | null {
    if (name.startsWith(REMAP_FACT)) {
      const f = name.slice(REMAP_FACT.length)
      return remap(f, this.spec.remaps) ?? f
    }
    return this.req.env[name] ?? null
  }

  /**
   * What a crate's compile reads: the working directory, the crate's own directory and OUT_DIR,
   * the toolchain's sysroot, the --extern and -L directories, and cargo's sources of registry
   * and git crates (not the rest of CARGO_HOME: credentials.toml lives there).
   */
  sharedReach(): SharedReach {
    const { req, spec, tc } = this
    const abs = (p: string) => resolve(req.cwd, p)
    const cargoHome = req.env.CARGO_HOME ? abs(req.env.CARGO_HOME) : req.env.HOME ? join(req.env.HOME, '.cargo') : null
    const roots = [req.cwd, dirname(abs(spec.input)), tc.sysroot, '/usr/share/cargo/registry',
      ...spec.searchDirs.map(abs), ...spec.externs.map((e) => dirname(abs(e.path)))]
    for (const name of ['CARGO_MANIFEST_DIR', 'OUT_DIR']) if (req.env[name]) roots.push(abs(req.env[name]))
    if (cargoHome) roots.push(join(cargoHome, 'registry'), join(cargoHome, 'git'))
    return { roots, fact: (name) => name.startsWith(REMAP_FACT) || CRATE_FACT.test(name) }
  }

  restore(entry: CacheEntry): Restore | null {
    const byName = new Map(entry.outputs.map((o) => [o.name, o.data]))
    if (this.outputs.some((o) => !byName.has(o.name))) return null
    const from = entry.meta?.out_dir
    const to = this.outDirAbs
    // stored elsewhere: every mention of that build's out-dir names this one's
    const move = from !== undefined && from !== to && this.relocatable && RELOCATABLE_DIR.test(from)
      ? (b: Buffer) => replaceAll(b, Buffer.from(`${from}/`), Buffer.from(`${to}/`))
      : (b: Buffer) => b
    if (from !== undefined && from !== to && !move) return null
    return {
      files: this.outputs.map((o) => ({ path: o.path, data: o.name === 'dep-info' ? move(byName.get(o.name)!) : byName.get(o.name)! })),
      stdout: move(entry.stdout),
      stderr: move(entry.stderr)
    }
  }

  entryMeta(): Record<string, string> {
    return { input: this.spec.input, compiler: this.req.compiler, crate: this.spec.crateName, out_dir: this.outDirAbs }
  }

  async dispose(): Promise<void> {
    await Promise.all(this.temps.map((t) => rm(t, { force: true })))
  }
}

/** The arguments without their --emit (a listing run names its own). */
function withoutEmit(args: string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--emit') { i++; continue }
    if (!args[i].startsWith('--emit=')) out.push(args[i])
  }
  return out
}

/** The arguments with --out-dir set to `dir`. */
function withOutDir(args: string[], dir: string): string[] {
  const out: string[] = []
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--out-dir') { out.push('--out-dir', dir); i++; continue }
    out.push(args[i].startsWith('--out-dir=') ? `--out-dir=${dir}` : args[i])
  }
  return out
}

/** `path` as rustc writes it under the last --remap-path-prefix that matches (rustc's precedence), or null. */
function remap(path: string, remaps: Array<[string, string]>): string | null {
  for (let i = remaps.length - 1; i >= 0; i--) {
    const [from, to] = remaps[i]
    if (path === from) return to
    const base = from.endsWith('/') ? from : `${from}/`
    if (path.startsWith(base)) return `${to}${to.endsWith('/') || to === '' ? '' : '/'}${path.slice(base.length)}`
  }
  return null
}

/** How a remap's FROM lies to the working directory: the same in every checkout of one workspace. */
function relation(from: string, cwd: string): string {
  if (!isAbsolute(from)) return `as-given:${from}`
  const f = from.replace(/\/+$/, '') || '/'
  const c = cwd.replace(/\/+$/, '') || '/'
  if (f === c) return 'cwd'
  if (c.startsWith(`${f}/`) || f === '/') return `cwd-up:${c.slice(f.length).split('/').filter(Boolean).length}`
  if (f.startsWith(`${c}/`)) return `cwd-rel:${f.slice(c.length + 1)}`
  // unrelated to this crate's directory: it can only map files outside it, and for each of
  // those the manifest records the name rustc gave it (REMAP_FACT)
  return 'other'
}

/** A path relative to the working directory when under it. */
function relativeTo(p: string, cwd: string): string {
  const c = cwd.endsWith('/') ? cwd : `${cwd}/`
  return p === cwd ? '.' : p.startsWith(c) ? `./${p.slice(c.length)}` : p
}
