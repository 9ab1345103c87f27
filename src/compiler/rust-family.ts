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
import { basename, isAbsolute, join, resolve } from 'node:path'
import type { CacheEntry } from '../cache/entry-format.js'
import type { CompileRequest } from '../daemon/launcher-protocol.js'
import { siblingTemp } from '../util/atomic-write.js'
import type { CompileJob, CompilerFamily, Dependencies, DirectKey, FamilyContext, OutputBlobs, Restore, RunPlan } from './family.js'
import { replaceAll } from './path-forms.js'
import { parseDepInfo } from './rust-depinfo.js'
import { JOBSERVER_ENV, RustToolchains, type RustToolchain } from './rust-toolchain.js'
import { parseRustcArgs, type RustSpec } from './rustc-args.js'

const RUST_KEY_VERSION = 'meshcc-rust-1'
/** rustc, rustc-1.63, x86_64-linux-gnu-rustc, rustc-web (Debian's) */
const RUSTC_NAME = /^(?:[\w.]+-)*rustc(?:-[\w.]+)?$/
/** Variables rustc itself reads (besides env! and option_env!, which dep-info lists). */
const RUSTC_ENV = ['RUSTC_BOOTSTRAP', 'RUSTC_FORCE_RUSTC_VERSION', 'RUSTC_LOG', 'RUST_TARGET_PATH', 'RUST_MIN_STACK',
  'LANG', 'LC_ALL', 'LC_MESSAGES', 'SOURCE_DATE_EPOCH', 'MESHCC_CACHE_BUSTER']
/** Cargo's variables that say nothing about the crate (sccache leaves out the same). */
const CARGO_ENV_IGNORED = /^CARGO_(?:MAKEFLAGS|BUILD_JOBS|ENCODED_RUSTFLAGS|REGISTRIES_.*|HOME|TARGET_DIR)$/
/** Cargo's variables that are paths: relative to the working directory in the key when only rustc reads them. */
const CARGO_PATH_ENV = new Set(['CARGO', 'CARGO_MANIFEST_DIR', 'CARGO_MANIFEST_PATH', 'CARGO_RUSTC_CURRENT_DIR'])
/** A directory this many native static libraries deep is a system one: only the -l named ones enter the key. */
const MAX_DIR_STATIC_LIBS = 64
/** A manifest fact that is no variable: the name a remap gives a file outside the working directory. */
const REMAP_FACT = '\0remap '
/** An out-dir spelled alike in a .d (Make), in JSON and in plain text can be rewritten by plain substitution. */
const RELOCATABLE_DIR = /^\/[^\s"\\#$%:]*$/

export class RustFamily implements CompilerFamily {
  readonly name = 'rust'
  private readonly toolchains = new RustToolchains()

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
  /** item 4 of the Rust issue: a rustc job is not shipped to peers yet */
  readonly remoteBlocker = 'rustc'
  /**
   * rustc reads its sources tens of milliseconds after it starts (it loads a 100 MB driver
   * first), so a file older than the request was read as we hash it. Files a build script
   * wrote just before (OUT_DIR) can then be recorded; C's one-second margin would keep them out.
   */
  readonly tooNewMs = 0
  readonly relativeFiles = true
  private readonly outDirAbs: string
  private readonly temps: string[] = []

  constructor(private readonly req: CompileRequest, private readonly spec: RustSpec, private readonly tc: RustToolchain,
    private readonly toolchains: RustToolchains, private readonly ctx: FamilyContext) {
    this.input = spec.input
    this.outputs = spec.outputs
    this.outDirAbs = resolve(req.cwd, spec.outDir)
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
    const procMacro = spec.externs.some((e) => /\.(so|dylib|dll)$/.test(e.path))
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
   * temp one when cargo asked for none). The jobserver variables go: their descriptors belong
   * to the build, and rustc would warn that it cannot open them.
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
      args, temps, dropEnv: JOBSERVER_ENV, inPlace: true,
      collect: async () => {
        const blobs: OutputBlobs = []
        for (const o of spec.outputs) {
          const data = await readFile(o.path).catch(() => null)
          if (data === null) return { outputs: null, deps: null }
          blobs.push({ name: o.name, data })
        }
        const text = await readFile(dep, 'utf8').catch(() => null)
        return { outputs: blobs, deps: text === null ? null : this.dependencies(text) }
      }
    }
  }

  private dependencies(text: string): Dependencies {
    const { req, spec } = this
    const info = parseDepInfo(text)
    const files = [...new Set(info.files.map((f) => resolve(req.cwd, f)))].sort()
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
