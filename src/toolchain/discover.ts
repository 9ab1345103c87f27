// Which host files a compiler needs to compile a preprocessed translation unit (-c, no
// linking, no headers): the driver, its compiler proper (cc1*, or clang itself), the
// assembler for gcc, and the shared libraries (and dynamic loader) all of them load, plus
// every symlink on the way to each. No /etc/ld.so.cache: glibc finds libraries in its
// built-in default directories, and libraries outside them are found through RUNPATH,
// which keeps working because every file keeps its host path in the sandbox.
import { execFile } from 'node:child_process'
import { constants } from 'node:fs'
import { access, open, readdir, stat } from 'node:fs/promises'
import { delimiter, isAbsolute, join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { closePaths, compareBytes, walkPath, type ClosureEntry } from './paths.js'
import type { CompilerFamily, ToolchainSpec } from './types.js'

export type { CompilerFamily, ToolchainSpec } from './types.js'

const run = promisify(execFile)
const QUERY_TIMEOUT_MS = 30_000

/** Programs gcc's driver may exec for -c: compilers proper (C, C++, Objective-C/C++) and LTO. */
const GCC_PROGRAMS = ['cc1', 'cc1plus', 'cc1obj', 'cc1objplus', 'lto1']

export class ToolchainDiscoveryError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ToolchainDiscoveryError'
  }
}

async function query(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { timeout: QUERY_TIMEOUT_MS, env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 4 * 1024 * 1024 })
    return stdout.trim()
  } catch (err) {
    const e = err as Error & { stderr?: string }
    const why = (e.stderr?.trim() || e.message).split('\n')[0]
    throw new ToolchainDiscoveryError(`${cmd} ${args.join(' ')}: ${why}`)
  }
}

async function isExecutableFile(p: string): Promise<boolean> {
  try {
    const st = await stat(p)
    if (!st.isFile()) return false
    await access(p, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** A bare program name looked up on PATH the way the gcc driver falls back to it. */
async function findOnPath(name: string, pathVar = process.env.PATH ?? ''): Promise<string | null> {
  for (const dir of pathVar.split(delimiter)) {
    if (!dir || !isAbsolute(dir)) continue
    const p = join(dir, name)
    if (await isExecutableFile(p)) return p
  }
  return null
}

async function absoluteCompiler(compilerPath: string): Promise<string> {
  if (isAbsolute(compilerPath)) return compilerPath
  if (compilerPath.includes('/')) return resolve(compilerPath)
  const found = await findOnPath(compilerPath)
  if (!found) throw new ToolchainDiscoveryError(`compiler ${compilerPath} not found on PATH`)
  return found
}

async function isElf(p: string): Promise<boolean> {
  const fh = await open(p, 'r')
  try {
    const buf = Buffer.alloc(4)
    const { bytesRead } = await fh.read(buf, 0, 4, 0)
    return bytesRead === 4 && buf.toString('latin1') === '\x7fELF'
  } finally {
    await fh.close()
  }
}

/** Absolute paths of the shared objects (and loader) an ELF binary loads, per ldd. */
export async function sharedLibraries(binary: string): Promise<string[]> {
  if (!(await isElf(binary))) {
    // A wrapper script would need an interpreter and whatever it runs: not supported.
    throw new ToolchainDiscoveryError(`${binary} is not an ELF binary (a wrapper script?); cannot package it`)
  }
  let out: string
  try {
    const r = await run('ldd', [binary], { timeout: QUERY_TIMEOUT_MS, env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 4 * 1024 * 1024 })
    out = r.stdout
  } catch (err) {
    const e = err as Error & { stdout?: string; stderr?: string }
    const text = `${e.stdout ?? ''}${e.stderr ?? ''}`
    // ldd exits 1 for static binaries: nothing to add.
    if (/not a dynamic executable|statically linked/.test(text)) return []
    throw new ToolchainDiscoveryError(`ldd ${binary}: ${(e.stderr?.trim() || e.message).split('\n')[0]}`)
  }
  const libs: string[] = []
  for (const raw of out.split('\n')) {
    const line = raw.trim()
    if (!line || /statically linked/.test(line)) continue
    const arrow = /^(\S+)\s+=>\s+(.*?)\s*(?:\(0x[0-9a-f]+\))?$/.exec(line)
    if (arrow) {
      if (arrow[2] === 'not found') throw new ToolchainDiscoveryError(`${binary} needs ${arrow[1]}, which the dynamic loader cannot find`)
      if (isAbsolute(arrow[2])) libs.push(arrow[2])
      continue
    }
    const direct = /^(\/\S+)\s+\(0x[0-9a-f]+\)$/.exec(line) // the dynamic loader
    if (direct) libs.push(direct[1])
    // anything else without a path is the vDSO
  }
  return libs
}

async function gccPrograms(compiler: string): Promise<string[]> {
  const found: string[] = []
  const names = [...GCC_PROGRAMS, 'as']
  const answers = await Promise.all(names.map((n) => query(compiler, [`-print-prog-name=${n}`])))
  for (let i = 0; i < names.length; i++) {
    const ans = answers[i]
    // gcc prints the bare name when it has no such program of its own.
    if (isAbsolute(ans)) {
      if (await isExecutableFile(ans)) found.push(ans)
      else if (names[i] === 'as') throw new ToolchainDiscoveryError(`${compiler} uses assembler ${ans}, which is not an executable file`)
    } else if (names[i] === 'as') {
      // The driver falls back to PATH; the sandbox sets PATH=/usr/bin:/bin.
      const onPath = await findOnPath(ans)
      if (!onPath) throw new ToolchainDiscoveryError(`${compiler} uses assembler "${ans}", which is not on PATH`)
      found.push(onPath)
    }
  }
  if (!found.some((p) => /\/cc1(plus)?$/.test(p))) {
    throw new ToolchainDiscoveryError(`${compiler} reports no cc1 or cc1plus: is it really gcc?`)
  }
  return found
}

async function gccDataFiles(compiler: string): Promise<string[]> {
  // A specs file changes what the driver passes to cc1, so it must travel along.
  const specs = await query(compiler, ['-print-file-name=specs'])
  if (isAbsolute(specs)) {
    try { if ((await stat(specs)).isFile()) return [specs] } catch { /* absent */ }
  }
  return []
}

async function clangDataFiles(compiler: string): Promise<string[]> {
  // Only share/ of the resource dir: the default sanitizer ignorelists that -fsanitize=...
  // reads (a missing one is an error). include/ is for preprocessing, lib/ for linking.
  const resourceDir = await query(compiler, ['-print-resource-dir'])
  if (!isAbsolute(resourceDir)) throw new ToolchainDiscoveryError(`${compiler} -print-resource-dir printed "${resourceDir}"`)
  const share = join(resourceDir, 'share')
  let names: string[]
  try {
    names = await readdir(share)
  } catch {
    return []
  }
  const files: string[] = []
  for (const n of names) {
    const p = join(share, n)
    try { if ((await stat(p)).isFile()) files.push(p) } catch { /* vanished */ }
  }
  return files
}

/**
 * What rustc needs to compile a library crate: the compiler's own shared libraries in
 * <sysroot>/lib (librustc_driver, LLVM) and the host's standard library (its rlibs and
 * rmeta, <sysroot>/lib/rustlib/<host>/lib). No linker: a job that links never leaves the client.
 */
async function rustcSysrootFiles(compiler: string): Promise<string[]> {
  const sysroot = await query(compiler, ['--print', 'sysroot'])
  const host = /^host: (.+)$/m.exec(await query(compiler, ['-vV']))?.[1]
  if (!isAbsolute(sysroot) || !host) throw new ToolchainDiscoveryError(`${compiler}: no sysroot or host from --print sysroot and -vV`)
  const files: string[] = []
  for (const dir of [join(sysroot, 'lib'), join(sysroot, 'lib', 'rustlib', host, 'lib')]) {
    let names: string[]
    try { names = await readdir(dir) } catch { throw new ToolchainDiscoveryError(`${compiler}: cannot read ${dir}`) }
    for (const n of names.sort()) {
      const p = join(dir, n)
      try { if ((await stat(p)).isFile()) files.push(p) } catch { /* vanished */ }
    }
  }
  return files
}

/** locale-archive holds every generated locale; beyond this it is not worth shipping */
const MAX_LOCALE_ARCHIVE = 16 * 1024 * 1024

/**
 * Locale data, so diagnostics under the client's LANG (C.UTF-8 is the usual default) keep
 * their typographic quotes: without it the compiler falls back to ASCII and the remote
 * stderr would differ from the local one.
 */
async function localeFiles(): Promise<string[]> {
  const out: string[] = []
  const dir = '/usr/lib/locale'
  let names: string[] = []
  try { names = await readdir(dir) } catch { return out }
  for (const n of names.sort()) {
    const p = join(dir, n)
    try {
      const st = await stat(p)
      if (n === 'locale-archive' && st.isFile() && st.size <= MAX_LOCALE_ARCHIVE) out.push(p)
      else if (st.isDirectory() && /^c\.utf-?8$/i.test(n)) {
        for (const f of (await readdir(p)).sort()) {
          const fp = join(p, f)
          const fst = await stat(fp)
          if (fst.isFile()) out.push(fp)
          else if (fst.isDirectory()) for (const g of (await readdir(fp)).sort()) out.push(join(fp, g)) // LC_MESSAGES/
        }
      }
    } catch { /* vanished */ }
  }
  return out
}

interface Memo { size: number; mtimeMs: number; spec: ToolchainSpec }
const memo = new Map<string, Memo>()
const inflight = new Map<string, Promise<ToolchainSpec>>()

/**
 * The files `compilerPath` needs inside an otherwise empty root to compile a preprocessed
 * TU with -c. Memoised per (path, family, size and mtime of the real binary).
 */
export async function discoverToolchain(compilerPath: string, family: CompilerFamily): Promise<ToolchainSpec> {
  const compiler = await absoluteCompiler(compilerPath)
  let st
  try {
    st = await stat(compiler)
  } catch (err) {
    throw new ToolchainDiscoveryError(`compiler ${compiler}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
  }
  const key = `${family}\0${compiler}`
  const m = memo.get(key)
  if (m && m.size === st.size && m.mtimeMs === st.mtimeMs) return cloneSpec(m.spec)
  const flightKey = `${key}\0${st.size}\0${st.mtimeMs}`
  let p = inflight.get(flightKey)
  if (!p) {
    p = discoverUncached(compiler, family)
    inflight.set(flightKey, p)
    const size = st.size
    const mtimeMs = st.mtimeMs
    p.then((spec) => { memo.set(key, { size, mtimeMs, spec }) }, () => {})
      .finally(() => inflight.delete(flightKey))
  }
  return cloneSpec(await p)
}

function cloneSpec(s: ToolchainSpec): ToolchainSpec {
  return { compiler: s.compiler, files: [...s.files] }
}

async function discoverUncached(compiler: string, family: CompilerFamily): Promise<ToolchainSpec> {
  const roots: string[] = [compiler, ...await localeFiles()]
  if (family === 'gcc') {
    roots.push(...await gccPrograms(compiler), ...await gccDataFiles(compiler))
  } else if (family === 'rustc') {
    roots.push(...await rustcSysrootFiles(compiler))
  } else {
    roots.push(...await clangDataFiles(compiler))
  }
  let closure: Map<string, ClosureEntry>
  try {
    closure = await closePaths(roots)
  } catch (err) {
    throw new ToolchainDiscoveryError(`toolchain of ${compiler}: ${(err as Error).message}`)
  }
  // Libraries of every executable we ship; ldd already lists indirect dependencies.
  const executables = [...closure.values()]
    .filter((e): e is Extract<ClosureEntry, { kind: 'file' }> => e.kind === 'file' && (e.stat.mode & 0o111) !== 0)
    .map((e) => e.path)
  const libs = (await Promise.all(executables.map((x) => sharedLibraries(x)))).flat()
  try {
    for (const lib of libs) await walkPath(lib, closure)
  } catch (err) {
    throw new ToolchainDiscoveryError(`libraries of ${compiler}: ${(err as Error).message}`)
  }
  const files = [...closure.values()].filter((e) => e.kind !== 'dir').map((e) => e.path).sort(compareBytes)
  return { compiler, files }
}
