// gcc and clang argument handling. Only single-source compile-only (-c) invocations whose
// every option is understood are cacheable; anything else runs the compiler untouched.
// When in doubt, pass through: a wrong cache hit is far worse than a missed one.
import { basename, extname } from 'node:path'
import { keyForm, mapPath, type PrefixMap } from './path-forms.js'
import { expandResponseFiles, ResponseFileError } from './response-file.js'
import type { CompileSpec, OutputFile, ParseResult } from './types.js'

/** Options whose value may be the next argument (attached forms such as -Ifoo match SAFE_PREFIX). */
const WITH_VALUE = new Set([
  '-D', '-U', '-I', '-include', '-imacros', '-isystem', '-iquote', '-idirafter', '-iprefix',
  '-iwithprefix', '-iwithprefixbefore', '-isysroot', '-imultilib', '-imultiarch', '--sysroot', '-x',
  '-Xpreprocessor', '-Xassembler', '-Xlinker', '-mllvm', '-target', '--target', '-arch', '--param',
  '-B', '-F', '-iframework', '-cxx-isystem', '-isystem-after', '-ivfsoverlay', '-resource-dir',
  '-gcc-toolchain', '--gcc-toolchain', '-L', '-l', '-u', '-T', '-z', '-e', '-specs', '-dumpbase',
  '-dumpdir', '-dumpbase-ext', '-Xarch_device', '-Xarch_host'
])

/** Never cacheable: they read or write files we do not track, or print non-reproducible output. */
const NOT_CACHEABLE_EXACT = new Map<string, string>([
  ['-E', 'preprocess only (-E)'], ['-M', 'dependency listing only (-M)'], ['-MM', 'dependency listing only (-MM)'],
  ['-MG', 'missing headers as dependencies (-MG)'], ['-S', 'assembly output (-S)'], ['-', 'input from stdin'],
  ['-v', 'verbose (-v)'], ['-###', 'dry run (-###)'], ['--version', 'version query'], ['-time', 'timing report (-time)'],
  ['-fsyntax-only', 'syntax check only'], ['-ftest-coverage', 'coverage notes (-ftest-coverage)'],
  ['-fprofile-arcs', 'profiling (-fprofile-arcs)'], ['--coverage', 'coverage (--coverage)'],
  ['-fbranch-probabilities', 'profile feedback (-fbranch-probabilities)'], ['-frepo', '-frepo'],
  ['-fmem-report', 'memory report'], ['-fstack-usage', 'stack usage files (-fstack-usage)'],
  ['-gsplit-dwarf', 'split DWARF (-gsplit-dwarf)'], ['-emit-pch', 'PCH creation'], ['-Xclang', '-Xclang arguments'],
  ['-fsave-optimization-record', 'optimization record files'], ['-MJ', 'compilation database output (-MJ)'],
  ['--serialize-diagnostics', 'serialized diagnostics file'], ['-aux-info', 'aux-info output'],
  ['-fmodules', 'clang modules'], ['-fmodules-ts', 'C++ modules'], ['-fcxx-modules', 'C++ modules'],
  ['-save-temps', 'keeps intermediate files (-save-temps)'], ['-include-pch', 'precompiled header input']
])

/** Prefixes of options that are never cacheable. */
const NOT_CACHEABLE_PREFIX: Array<[string, string]> = [
  ['-save-temps=', 'keeps intermediate files (-save-temps)'], ['-fprofile-', 'profile flags (-fprofile-*)'],
  ['-fauto-profile', 'profile feedback (-fauto-profile)'], ['-fcreate-profile', 'profile flags'],
  ['-fplugin', 'compiler plugins (-fplugin)'], ['-fdump-', 'dump files (-fdump-*)'],
  ['-fcallgraph-info', 'call graph files'], ['-foptimization-record-file', 'optimization record files'],
  ['-ftime-report', 'timing report'], ['-ftime-trace', 'timing trace files'], ['-fmodule', 'clang modules'],
  ['-fcompare-debug', '-fcompare-debug'], ['-fcoverage', 'coverage flags'], ['-fopt-info', 'optimization info'],
  ['-fdiagnostics-format=sarif-file', 'SARIF diagnostics file'], ['-fprofile', 'profile flags'],
  ['--print', 'query option'], ['-print-', 'query option'], ['-dump', 'query option'], ['-MJ', 'compilation database output (-MJ)'],
  ['-Xclang', '-Xclang arguments'], ['-pch', 'precompiled headers']
]

/** Prefixes of options known not to write extra files nor to depend on untracked input. */
const SAFE_PREFIX = ['-O', '-g', '-f', '-W', '-m', '-std=', '-pedantic', '-D', '-U', '-I', '-iquote', '-isystem',
  '-idirafter', '-include', '-imacros', '-iprefix', '-iwithprefix', '-isysroot', '--sysroot', '-B', '-F',
  '--target=', '-target', '--param', '-L', '-l', '-nostdinc', '-nostdlib', '-static', '-stdlib=', '-rtlib=',
  '-unwindlib=', '-fuse-ld', '-Xlinker', '-Xassembler', '-Xpreprocessor', '-mllvm', '-resource-dir',
  '--gcc-toolchain=', '-gcc-toolchain', '-ivfsoverlay', '-cxx-isystem', '-iframework', '-imultilib', '-imultiarch',
  '-isystem-after', '-specs', '--specs=', '-Q', '-dumpbase', '-dumpdir', '-x', '-arch', '-Xarch_']

const SAFE_EXACT = new Set(['-c', '-w', '-ansi', '-p', '-pg', '-pthread', '-pthreads', '-shared', '-rdynamic', '-pie',
  '-no-pie', '-static', '-C', '-CC', '-P', '-H', '-trigraphs', '-traditional', '-traditional-cpp', '-undef',
  '-pipe', '-s', '-no-canonical-prefixes', '-integrated-as', '-no-integrated-as', '-Qunused-arguments', '-I-',
  '-nogpulib', '-nostartfiles', '-nodefaultlibs', '-M', '-MM', '-MD', '-MMD', '-MP', '-MG'])

const SOURCE_LANGUAGES: Record<string, string> = {
  '.c': 'c', '.cc': 'c++', '.cp': 'c++', '.cxx': 'c++', '.cpp': 'c++', '.CPP': 'c++', '.c++': 'c++', '.C': 'c++',
  '.m': 'objective-c', '.mm': 'objective-c++', '.M': 'objective-c++', '.S': 'assembler-with-cpp', '.sx': 'assembler-with-cpp'
}
/**
 * Options that make the compiler read programs or files outside what preprocessing shows
 * (another cc1 via -B, a specs file, sanitizer lists): such compiles are cached but never
 * sent to a peer, whose sandbox would lack them.
 */
const LOCAL_ONLY_PREFIX = ['-B', '--gcc-toolchain', '-gcc-toolchain', '-specs', '--specs', '-fsanitize-ignorelist',
  '-fsanitize-blacklist', '-fsanitize-coverage-allowlist', '-fsanitize-coverage-ignorelist', '-fsanitize-system-ignorelist',
  '--sysroot', '-isysroot', '-resource-dir', '-fplugin']

/**
 * Options whose value names a file or directory the preprocessor searches: only what it finds
 * reaches the outputs (the preprocessed text and the manifests hold that), so the key holds
 * the value relative to the working directory (path-forms.ts). Longest first: -isystem-after
 * before -isystem.
 */
const SEARCH_PATH_OPTIONS = ['-iwithprefixbefore', '-isystem-after', '-iwithprefix', '-cxx-isystem', '-iframework', '-idirafter',
  '-isystem', '-iprefix', '-include', '-imacros', '-iquote', '-I', '-F']
/** Prefix maps: which names each one rewrites (debug info, __FILE__ and the like). */
const PREFIX_MAP_OPTIONS: Record<string, { debug: boolean; macro: boolean }> = {
  '-fdebug-prefix-map=': { debug: true, macro: false },
  '-fmacro-prefix-map=': { debug: false, macro: true },
  '-ffile-prefix-map=': { debug: true, macro: true }
}

const CACHEABLE_LANGUAGES = new Set(['c', 'c++', 'objective-c', 'objective-c++', 'assembler-with-cpp'])
/**
 * gcc's -fdirectives-only preprocessing (includes and conditionals, no macro expansion) names
 * the same files at a third of the CPU for a kernel unit. Not for assembler (its '#' lines),
 * nor with options that change what the preprocessor writes.
 */
const DIRECTIVES_ONLY_LANGUAGES = new Set(['c', 'c++', 'objective-c', 'objective-c++'])
const NOT_DIRECTIVES_ONLY = new Set(['-C', '-CC', '-P', '-traditional', '-traditional-cpp', '-trigraphs', '-undef'])

export function compilerFamily(compilerPath: string): 'gcc' | 'clang' {
  return /clang/.test(basename(compilerPath)) ? 'clang' : 'gcc'
}

/** Make's quoting of a target name, as -MQ applies it. */
function makeQuote(target: string): string {
  let out = ''
  for (let i = 0; i < target.length; i++) {
    const c = target[i]
    if (c === ' ' || c === '\t') {
      for (let j = i - 1; j >= 0 && target[j] === '\\'; j--) out += '\\'
      out += '\\' + c
    } else if (c === '$') out += '$$'
    else if (c === '#') out += '\\#'
    else out += c
  }
  return out
}

function stripExt(p: string): string {
  const e = extname(p)
  return e ? p.slice(0, -e.length) : p
}

interface Dep {
  /** -MD / -MMD given to the driver */
  driverMode: '-MD' | '-MMD' | null
  /** -Wp,-MD,file / -Wp,-MMD,file */
  wpMode: '-MD' | '-MMD' | null
  wpFile: string | null
  mf: string | null
  targets: Array<{ quoted: boolean; value: string }>
  mp: boolean
}

/**
 * Parse a gcc or clang argument list (without the compiler itself).
 * `family` decides the few places where gcc and clang differ.
 */
/** Options that add system include directories, whose headers -MMD leaves out of a depfile. */
const SYSTEM_DIR_OPTIONS = ['-isystem', '-idirafter', '-iwithprefix', '-iwithsysroot', '-isysroot', '--sysroot', '-cxx-isystem',
  '-iframework', '-isystem-after', '--system-header-prefix', '-imsvc', '-Xclang', '-Xpreprocessor', '-Wp,-isystem', '-Wp,-idirafter']

export function parseGccArgs(rawArgs: readonly string[], cwd: string, family: 'gcc' | 'clang'): ParseResult {
  let args: string[]
  try {
    args = expandResponseFiles(rawArgs, cwd)
  } catch (err) {
    return { cacheable: false, reason: err instanceof ResponseFileError ? err.message : 'bad response file' }
  }

  let compileOnly = false
  let output: string | null = null
  let explicitLanguage: string | null = null
  let languageBeforeInput = false
  const inputs: string[] = []
  const archs = new Set<string>()
  const dep: Dep = { driverMode: null, wpMode: null, wpFile: null, mf: null, targets: [], mp: false }
  let debug = false
  const debugMaps: PrefixMap[] = []
  const macroMaps: PrefixMap[] = []
  let debugCompDir: string | null = null
  /** an option that writes names into the object beyond debug info and __FILE__ */
  let namesInCode: string | null = null
  // indices of arguments that are outputs or dependency options, left out of key and preprocessing
  const outputArgIdx = new Set<number>()
  const depArgIdx = new Set<number>()

  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (!a.startsWith('-') || a === '-') {
      if (a === '-') return { cacheable: false, reason: 'input from stdin' }
      inputs.push(a)
      if (explicitLanguage !== null) languageBeforeInput = true
      continue
    }
    // value-taking options: the value is attached (-ofoo, -MF=foo) or the next argument
    const takeValue = (name: string): string | null => {
      if (a === name) return i + 1 < args.length ? args[++i] : null
      return a.slice(name.length)
    }

    if (a === '-c') { compileOnly = true; continue }
    if (a === '-o' || (a.startsWith('-o') && a.length > 2)) {
      const start = i
      const v = takeValue('-o')
      if (v === null) return { cacheable: false, reason: 'missing value for -o' }
      output = v
      for (let k = start; k <= i; k++) outputArgIdx.add(k)
      continue
    }
    if (a.startsWith('-x')) {
      const v = takeValue('-x')
      if (v === null) return { cacheable: false, reason: 'missing value for -x' }
      if (inputs.length > 0 && v !== 'none') return { cacheable: false, reason: '-x after the input file' }
      explicitLanguage = v === 'none' ? null : v
      continue
    }
    if (a === '-M' || a === '-MM') return { cacheable: false, reason: `dependency listing only (${a})` }
    if (a === '-MG') return { cacheable: false, reason: 'missing headers as dependencies (-MG)' }
    if (a === '-MD' || a === '-MMD') { dep.driverMode = a; depArgIdx.add(i); continue }
    if (a === '-MP') { dep.mp = true; depArgIdx.add(i); continue }
    if (a.startsWith('-MF') || a.startsWith('-MT') || a.startsWith('-MQ')) {
      const name = a.slice(0, 3)
      const start = i
      const v = takeValue(name)
      if (v === null || v === '') return { cacheable: false, reason: `missing value for ${name}` }
      for (let k = start; k <= i; k++) depArgIdx.add(k)
      if (name === '-MF') dep.mf = v
      else dep.targets.push({ quoted: name === '-MQ', value: v })
      continue
    }
    if (a.startsWith('-Wp,')) {
      const parts = a.slice(4).split(',')
      if ((parts[0] === '-MD' || parts[0] === '-MMD') && parts.length === 2 && parts[1] !== '') {
        dep.wpMode = parts[0]
        dep.wpFile = parts[1]
        depArgIdx.add(i)
        continue
      }
      if (parts.some((p) => p.startsWith('-M') || p.startsWith('-d') || p === '-E' || p.startsWith('-o'))) {
        return { cacheable: false, reason: `preprocessor option ${a}` }
      }
      continue
    }
    if (a.startsWith('-Wa,')) {
      // assembler listings (-a…) write files we do not track
      const parts = a.slice(4).split(',')
      if (parts.some((p) => p.startsWith('-a') || p.startsWith('--MD') || p.startsWith('-MD'))) {
        return { cacheable: false, reason: `assembler output option ${a}` }
      }
      // the assembler's own debug info names the working directory and the files
      if (parts.some((p) => p.startsWith('-g') || p.startsWith('--gdwarf') || p.startsWith('--gen-debug') || p.startsWith('--gstabs'))) debug = true
      continue
    }
    if (a.startsWith('-Wl,')) continue
    if (a === '-arch') {
      const v = takeValue('-arch')
      if (v === null) return { cacheable: false, reason: 'missing value for -arch' }
      archs.add(v)
      continue
    }
    if (a.startsWith('-g') && a !== '-gsplit-dwarf') {
      // conservative: any -g form except explicit "off" ones may emit the working directory
      if (a === '-g0' || a === '-ggdb0') debug = false
      else if (!a.startsWith('-gno-') && !a.startsWith('-gz')) debug = true
      continue
    }
    const mapOption = Object.keys(PREFIX_MAP_OPTIONS).find((o) => a.startsWith(o))
    if (mapOption) {
      // OLD ends at the first '=', as gcc and clang split it
      const v = a.slice(mapOption.length)
      const eq = v.indexOf('=')
      if (eq === -1) return { cacheable: false, reason: `${a}: no '=' in the prefix map` }
      const map: PrefixMap = [v.slice(0, eq), v.slice(eq + 1)]
      if (PREFIX_MAP_OPTIONS[mapOption].debug) debugMaps.push(map)
      if (PREFIX_MAP_OPTIONS[mapOption].macro) macroMaps.push(map)
      continue
    }
    // sanitizers keep source locations (file names from the line markers) in the object, LTO
    // bytecode keeps locations for the link's diagnostics
    if ((a.startsWith('-fsanitize') && a !== '-fsanitize-recover') || (a.startsWith('-flto') && a !== '-flto=none')) namesInCode ??= a.split('=')[0]
    if (a.startsWith('-fdebug-compilation-dir')) {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : (i + 1 < args.length ? args[++i] : null)
      if (v === null) return { cacheable: false, reason: 'missing value for -fdebug-compilation-dir' }
      debugCompDir = v
      continue
    }
    const exact = NOT_CACHEABLE_EXACT.get(a)
    if (exact) return { cacheable: false, reason: exact }
    for (const [p, reason] of NOT_CACHEABLE_PREFIX) if (a.startsWith(p)) return { cacheable: false, reason }
    if (WITH_VALUE.has(a)) {
      if (i + 1 >= args.length) return { cacheable: false, reason: `missing value for ${a}` }
      if (args[++i].startsWith('@')) return { cacheable: false, reason: `response file as the value of ${a}` }
      continue
    }
    if (SAFE_EXACT.has(a) || SAFE_PREFIX.some((p) => a.startsWith(p))) continue
    return { cacheable: false, reason: `unknown option ${a}` }
  }

  if (!compileOnly) return { cacheable: false, reason: 'not a compile-only invocation (no -c)' }
  if (inputs.length === 0) return { cacheable: false, reason: 'no input file' }
  if (inputs.length > 1) return { cacheable: false, reason: 'multiple input files' }
  if (archs.size > 1) return { cacheable: false, reason: 'multiple -arch values' }
  const input = inputs[0]
  const language = explicitLanguage ?? SOURCE_LANGUAGES[extname(input)] ?? null
  if (language === null) return { cacheable: false, reason: `unsupported source type ${extname(input) || input}` }
  if (!CACHEABLE_LANGUAGES.has(language)) return { cacheable: false, reason: `unsupported language ${language}` }
  if (explicitLanguage !== null && !languageBeforeInput) return { cacheable: false, reason: '-x without an input after it' }
  if (dep.driverMode && dep.wpMode) return { cacheable: false, reason: 'both -MD and -Wp,-MD' }

  const objPath = output ?? basename(stripExt(input)) + '.o'
  if (objPath === '-') return { cacheable: false, reason: 'output to stdout' }

  // Where the depfile goes and which target it names, exactly as the driver would decide.
  let depPath: string | null = null
  let depTarget: string | null = null
  let addTargetArgs: string[] = []
  if (dep.driverMode || dep.wpMode) {
    if (dep.driverMode) {
      depPath = dep.mf ?? (output !== null ? stripExt(output) + '.d' : basename(stripExt(input)) + '.d')
      if (dep.targets.length === 0) {
        depTarget = makeQuote(objPath)
        addTargetArgs = ['-MQ', objPath]
      }
    } else {
      depPath = dep.wpFile
      if (dep.targets.length === 0) {
        // gcc's cc1 names the input's basename with .o; clang's driver uses the object path
        const t = family === 'gcc' ? basename(stripExt(input)) + '.o' : objPath
        depTarget = makeQuote(t)
        addTargetArgs = ['-MQ', t]
      }
    }
    if (depTarget === null) depTarget = dep.targets.map((t) => (t.quoted ? makeQuote(t.value) : t.value)).join(' ')
  }

  // Arguments shared by every use: without outputs, dependency options and -pipe.
  const common: string[] = []
  for (let i = 0; i < args.length; i++) {
    if (outputArgIdx.has(i) || depArgIdx.has(i)) continue
    common.push(args[i])
  }

  // paths the preprocessor searches, and the OLD of prefix maps, relative to the working
  // directory: where the checkout lies is not in the key unless a name reaches the outputs
  const keyArgs: string[] = []
  for (let i = 0; i < common.length; i++) {
    const a = common[i]
    if (a === '-pipe' || a === input) continue
    const opt = SEARCH_PATH_OPTIONS.find((o) => a.startsWith(o))
    const mapOption = Object.keys(PREFIX_MAP_OPTIONS).find((o) => a.startsWith(o))
    if (opt !== undefined && a === opt && i + 1 < common.length) keyArgs.push(a, keyForm(common[++i], cwd))
    else if (opt !== undefined && a !== opt) keyArgs.push(opt + keyForm(a.slice(opt.length), cwd))
    else if (mapOption !== undefined) {
      const v = a.slice(mapOption.length)
      const eq = v.indexOf('=')
      keyArgs.push(`${mapOption}${keyForm(v.slice(0, eq), cwd)}=${v.slice(eq + 1)}`)
    } else keyArgs.push(a)
  }
  keyArgs.push(`input=${keyForm(input, cwd)}`)
  if (depTarget !== null) {
    keyArgs.push(`dep=${dep.driverMode ?? 'wp' + dep.wpMode}`, `mp=${dep.mp}`)
  }

  // the assembler writes what the line markers name into its file symbols
  if (language === 'assembler-with-cpp') namesInCode ??= 'assembler source'
  const cwdInKey = debug && debugCompDir === null && mapPath(cwd, debugMaps) === null

  const outputs: OutputFile[] = [{ name: 'obj', path: objPath }]
  if (depPath !== null) outputs.push({ name: 'dep', path: depPath })

  const spec: CompileSpec = {
    family,
    language,
    input,
    outputs,
    preprocessArgs(depPath, directivesOnly = false) {
      const out = [...common.filter((a) => a !== '-c'), '-E']
      if (directivesOnly) out.push('-fdirectives-only')
      if (depPath !== null && (dep.driverMode || dep.wpMode)) out.push(...userDepArgs(depPath))
      return out
    },
    keyArgs,
    depTarget,
    cwdInKey,
    paths: { debug, debugCompDir, debugMaps, macroMaps, namesInCode },
    // the option's name, not its value: it names a fallback reason in the stats
    remoteBlocker: args.map((a) => LOCAL_ONLY_PREFIX.find((p) => a.startsWith(p))).find((p) => p !== undefined) ?? null,
    directivesOnly: family === 'gcc' && DIRECTIVES_ONLY_LANGUAGES.has(language) &&
      !common.some((a) => NOT_DIRECTIVES_ONLY.has(a) || a.startsWith('-Wp,') || a.startsWith('-Xpreprocessor') || a.startsWith('-fpreprocessed') || a.startsWith('-fdirectives-only') || a.startsWith('-fno-directives-only')),
    compileArgs(objPath) {
      return [...common, '-o', objPath]
    },
    dependCompileArgs(objPath, depPath) {
      const mmd = dep.driverMode === '-MMD' || dep.wpMode === '-MMD'
      if (mmd && (!common.includes('-nostdinc') || common.some((a) => SYSTEM_DIR_OPTIONS.some((o) => a.startsWith(o))))) return null
      const deps = dep.driverMode || dep.wpMode ? userDepArgs(depPath) : ['-MD', '-MF', depPath]
      return { args: [...common, ...deps, '-o', objPath], userHeadersOnly: mmd }
    }
  }
  /** the user's dependency options, writing to `path` and naming the user's target */
  function userDepArgs(path: string): string[] {
    const out = dep.driverMode ? [dep.driverMode, '-MF', path] : [`-Wp,${dep.wpMode},${path}`]
    for (const t of dep.targets) out.push(t.quoted ? '-MQ' : '-MT', t.value)
    out.push(...addTargetArgs)
    if (dep.mp) out.push('-MP')
    return out
  }
  return { cacheable: true, spec }
}
