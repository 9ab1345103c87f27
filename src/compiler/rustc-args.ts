// rustc argument handling, for the calls cargo makes through RUSTC_WRAPPER. Cacheable: one
// source compiled to an rlib or staticlib (no linker runs), with an --out-dir, every option
// understood. Everything else (bin, dylib, cdylib and proc-macro crates, which link; queries
// such as -vV and --print; incremental compilation) runs rustc untouched, with its reason.
// When in doubt, pass through: a wrong cache hit is far worse than a missed one.
import { readFileSync } from 'node:fs'
import { isAbsolute, resolve } from 'node:path'

/** Options whose value may be the next argument (or attached: --opt=value, -Cvalue). */
const LONG_WITH_VALUE = new Set(['--crate-name', '--crate-type', '--edition', '--emit', '--out-dir', '--extern', '--cfg',
  '--check-cfg', '--target', '--cap-lints', '--codegen', '--error-format', '--json', '--color', '--diagnostic-width',
  '--remap-path-prefix', '--remap-path-scope', '--allow', '--warn', '--deny', '--forbid', '--force-warn', '--print',
  '--explain', '--sysroot', '--env-set', '--extern-location', '--crate-attr'])
const SHORT_WITH_VALUE = new Set(['-C', '-Z', '-L', '-l', '-A', '-W', '-D', '-F', '-o'])
const FLAGS = new Set(['-g', '-O', '--test', '-v', '--verbose'])
const QUERIES = new Set(['-V', '--version', '-vV', '-Vv', '-h', '--help', '--print', '--explain'])

/** -C options that read or write files the key cannot see, or make the output not a function of the inputs. */
const CODEGEN_NOT_CACHEABLE: Record<string, string> = {
  incremental: 'incremental compilation (-C incremental)',
  'profile-generate': 'profiling (-C profile-generate)',
  'profile-use': 'profile feedback (-C profile-use)',
  'profile-sample-use': 'profile feedback (-C profile-sample-use)',
  'codegen-backend': 'custom codegen backend (-C codegen-backend)',
  'save-temps': 'keeps intermediate files (-C save-temps)',
  remark: 'optimization remarks (-C remark)'
}

/** Crate types that are compiled without a linker, and the file `--emit=link` writes for each. */
const ARCHIVE_TYPES: Record<string, { blob: string; file: (stem: string) => string }> = {
  lib: { blob: 'rlib', file: (s) => `lib${s}.rlib` },
  rlib: { blob: 'rlib', file: (s) => `lib${s}.rlib` },
  staticlib: { blob: 'staticlib', file: (s) => `lib${s}.a` }
}
const LINKED_TYPES = new Set(['bin', 'dylib', 'cdylib', 'proc-macro'])

/** `--emit` kinds other than link, with their blob name and the file each writes. */
const EMIT_FILES: Record<string, { blob: string; file: (stem: string, crate: string, extra: string) => string }> = {
  metadata: { blob: 'rmeta', file: (_s, c, e) => `lib${c}${e}.rmeta` },
  'dep-info': { blob: 'dep-info', file: (s) => `${s}.d` },
  'llvm-ir': { blob: 'llvm-ir', file: (s) => `${s}.ll` },
  'llvm-bc': { blob: 'llvm-bc', file: (s) => `${s}.bc` },
  asm: { blob: 'asm', file: (s) => `${s}.s` },
  obj: { blob: 'obj', file: (s) => `${s}.o` },
  mir: { blob: 'mir', file: (s) => `${s}.mir` }
}

export interface RustOutput { name: string; path: string }

export interface RustSpec {
  crateName: string
  /** the source as given */
  input: string
  /** --out-dir as given */
  outDir: string
  /** every file the compile writes, paths as rustc builds them (out-dir joined, or as --emit names them) */
  outputs: RustOutput[]
  /** the dep-info the user asked for (its blob name), or null when rustc must be asked for one */
  depInfo: RustOutput | null
  /** the arguments that change the output, in order, with paths that do not (out-dir, -L dirs, --extern files) left out */
  keyArgs: string[]
  /** --extern files, whose content enters the key */
  externs: Array<{ name: string; path: string }>
  /** -L directories that rustc searches for native libraries (static ones are bundled into an rlib) */
  nativeDirs: string[]
  /** every -L directory, of any kind (where rustc finds the crates it loads) */
  searchDirs: string[]
  /** libraries named by -l static=NAME (a "+verbatim" name is the file name) */
  staticLibs: Array<{ name: string; verbatim: boolean }>
  /** --target given as a JSON file: its path */
  targetJson: string | null
  /** --target as given (a triple, or the JSON file's path), or null for the host */
  target: string | null
  /** --remap-path-prefix FROM=TO, in order */
  remaps: Array<[string, string]>
  /** -C target-cpu=native: the output depends on this machine's CPU */
  nativeCpu: boolean
  /** the arguments, response files expanded */
  args: string[]
}

export type RustParseResult = { cacheable: true; spec: RustSpec } | { cacheable: false; reason: string }

/** rustc's @file: one argument per line. */
function expandArgFiles(args: readonly string[], cwd: string): string[] | string {
  const out: string[] = []
  for (const a of args) {
    if (!a.startsWith('@') || a.length === 1) {
      out.push(a)
      continue
    }
    try {
      const text = readFileSync(resolve(cwd, a.slice(1)), 'utf8')
      out.push(...text.split('\n').filter((l, i, all) => l !== '' || i < all.length - 1))
    } catch {
      return `unreadable argument file ${a}`
    }
  }
  return out
}

/** FROM=TO of --remap-path-prefix: rustc splits at the last '='. */
function splitRemap(v: string): [string, string] | null {
  const eq = v.lastIndexOf('=')
  return eq <= 0 ? null : [v.slice(0, eq), v.slice(eq + 1)]
}

export function parseRustcArgs(rawArgs: readonly string[], cwd: string): RustParseResult {
  const expanded = expandArgFiles(rawArgs, cwd)
  if (typeof expanded === 'string') return { cacheable: false, reason: expanded }
  const args = expanded
  const no = (reason: string): RustParseResult => ({ cacheable: false, reason })
  // a query (cargo's `rustc - --print=… --crate-type bin …` probe) is one whatever else it names
  const q = args.find((a) => QUERIES.has(a) || a.startsWith('--print=') || a.startsWith('--explain='))
  if (q !== undefined) return no(`rustc query (${q.split('=')[0]})`)

  const inputs: string[] = []
  let crateName: string | null = null
  let outDir: string | null = null
  let extra = ''
  const crateTypes: string[] = []
  const emits: Array<{ kind: string; path: string | null }> = []
  const keyArgs: string[] = []
  const externs: RustSpec['externs'] = []
  const nativeDirs: string[] = []
  const searchDirs: string[] = []
  const staticLibs: RustSpec['staticLibs'] = []
  const remaps: RustSpec['remaps'] = []
  let target: string | null = null
  let nativeCpu = false
  let stdin = false

  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (a === '-') { stdin = true; continue }
    if (!a.startsWith('-')) {
      inputs.push(a)
      keyArgs.push(a)
      continue
    }
    if (FLAGS.has(a)) {
      if (a === '--test') return no('test harness (links)')
      keyArgs.push(a)
      continue
    }
    // the option's name and value: --name=value, --name value, -Xvalue, -X value
    let name: string
    let value: string
    const eq = a.indexOf('=')
    if (a.startsWith('--')) {
      name = eq === -1 ? a : a.slice(0, eq)
      if (!LONG_WITH_VALUE.has(name)) return no(`unknown rustc option ${name}`)
      if (eq !== -1) value = a.slice(eq + 1)
      else if (i + 1 < args.length) value = args[++i]
      else return no(`missing value for ${name}`)
    } else {
      name = a.slice(0, 2)
      if (!SHORT_WITH_VALUE.has(name)) return no(`unknown rustc option ${a}`)
      if (a.length > 2) value = a.slice(2)
      else if (i + 1 < args.length) value = args[++i]
      else return no(`missing value for ${name}`)
    }

    switch (name) {
      case '--crate-name': crateName = value; break
      case '--crate-type':
        for (const t of value.split(',')) {
          if (LINKED_TYPES.has(t)) return no(`${t} crate (links)`)
          if (!ARCHIVE_TYPES[t]) return no(`unknown crate type ${t}`)
          crateTypes.push(t)
        }
        break
      case '--emit':
        for (const e of value.split(',')) {
          const at = e.indexOf('=')
          const kind = at === -1 ? e : e.slice(0, at)
          if (kind !== 'link' && !EMIT_FILES[kind]) return no(`unknown --emit kind ${kind}`)
          emits.push({ kind, path: at === -1 ? null : e.slice(at + 1) })
        }
        break
      case '--out-dir': outDir = value; continue // where outputs go is no part of what they are
      case '-o': return no('output file (-o)')
      case '--sysroot': return no('custom --sysroot')
      case '-Z': return no('unstable option (-Z)')
      case '--env-set': case '--crate-attr': case '--extern-location': return no(`unstable option (${name})`)
      case '--extern': {
        const eqx = value.indexOf('=')
        if (eqx === -1) break // a crate from the sysroot, by name
        const spec = value.slice(0, eqx)
        const path = value.slice(eqx + 1)
        externs.push({ name: spec, path })
        keyArgs.push(name, `${spec}=<extern ${externs.length - 1}>`)
        continue
      }
      case '-L': {
        const k = value.indexOf('=')
        const kind = k === -1 ? 'all' : value.slice(0, k)
        const dir = k === -1 ? value : value.slice(k + 1)
        if (!['all', 'native', 'crate', 'dependency', 'framework'].includes(kind)) return no(`unknown -L kind ${kind}`)
        if (kind === 'all' || kind === 'native') nativeDirs.push(dir)
        searchDirs.push(dir)
        keyArgs.push(name, kind) // the directory's static libraries enter by content
        continue
      }
      case '-l': {
        // [KIND[:MODIFIERS]=]NAME[:RENAME]
        const k = value.indexOf('=')
        if (k !== -1) {
          const [kind, mods = ''] = value.slice(0, k).split(':')
          if (kind === 'static') staticLibs.push({ name: value.slice(k + 1).split(':')[0], verbatim: mods.includes('+verbatim') })
        }
        break
      }
      case '--target':
        target = value
        if (value.endsWith('.json')) {
          keyArgs.push(name, '<target json>') // by content (rust-family.ts), not by where it lies
          continue
        }
        break
      case '--remap-path-prefix': {
        const r = splitRemap(value)
        if (r === null) return no(`bad --remap-path-prefix ${value}`)
        remaps.push(r)
        continue // enters the key relative to the working directory (rust-family.ts)
      }
      case '-C': case '--codegen': {
        const opt = value.split('=')[0]
        const bad = CODEGEN_NOT_CACHEABLE[opt]
        if (bad) return no(bad)
        if (opt === 'extra-filename') extra = value.slice(opt.length + 1)
        if (opt === 'target-cpu' && value.slice(opt.length + 1) === 'native') nativeCpu = true
        if (opt === 'target-feature' && value.includes('native')) nativeCpu = true
        break
      }
    }
    keyArgs.push(name, value)
  }

  if (stdin) return no('input from stdin')
  if (inputs.length === 0) return no('no input file')
  if (inputs.length > 1) return no('multiple input files')
  if (crateName === null) return no('no --crate-name')
  if (crateTypes.length === 0) return no('no --crate-type')
  if (outDir === null) return no('no --out-dir')
  if (!emits.some((e) => e.kind === 'link' || e.kind === 'metadata')) return no('no link or metadata output')

  const stem = `${crateName}${extra}`
  const inDir = (f: string) => (isAbsolute(outDir!) ? `${outDir!.replace(/\/+$/, '')}/${f}` : resolve(cwd, outDir!, f))
  const outputs: RustOutput[] = []
  let depInfo: RustOutput | null = null
  for (const e of emits) {
    const add = (o: RustOutput) => { if (!outputs.some((x) => x.name === o.name)) outputs.push(o) }
    if (e.kind === 'link') {
      for (const t of new Set(crateTypes.map((c) => ARCHIVE_TYPES[c]))) {
        if (e.path !== null && crateTypes.length > 1) return no('--emit link=PATH with several crate types')
        add({ name: t.blob, path: e.path !== null ? resolve(cwd, e.path) : inDir(t.file(stem)) })
      }
      continue
    }
    const f = EMIT_FILES[e.kind]
    const o = { name: f.blob, path: e.path !== null ? resolve(cwd, e.path) : inDir(f.file(stem, crateName, extra)) }
    if (e.path === '-') return no(`--emit ${e.kind} to stdout`)
    add(o)
    if (e.kind === 'dep-info') depInfo = o
  }

  const targetJson = target !== null && target.endsWith('.json') ? resolve(cwd, target) : null
  return {
    cacheable: true,
    spec: { crateName, input: inputs[0], outDir, outputs, depInfo, keyArgs, externs, nativeDirs, searchDirs, staticLibs, targetJson, target, remaps, nativeCpu, args }
  }
}
