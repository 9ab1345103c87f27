// The real-world C project the cache benchmark builds: the Linux kernel from Debian's
// linux-source package, unpacked once into a work dir and configured with `make tinyconfig`.
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fail, run, runOk } from './proc.js'

/** Debian packages the benchmark needs (kernel source and build deps, plus the other caches). */
export const REQUIRED_PACKAGES = [
  'linux-source', 'bc', 'flex', 'bison', 'libelf-dev', 'libssl-dev', 'make', 'gcc', 'ccache', 'sccache', 'time'
]

/**
 * Fixed build identity for every tool, so the few TUs that embed it (init/version.c and
 * friends) are identical from build to build and warm builds can hit.
 */
export const KBUILD_FIXED_ENV: Record<string, string> = {
  KBUILD_BUILD_TIMESTAMP: 'Thu Jan  1 00:00:00 UTC 2026',
  KBUILD_BUILD_USER: 'meshcc-bench',
  KBUILD_BUILD_HOST: 'meshcc-bench',
  KBUILD_BUILD_VERSION: '1'
}

/**
 * The environment a compile sees under Kbuild: the top Makefile unexports LC_ALL and exports
 * LC_COLLATE=C and LC_NUMERIC=C. ccache hashes the LC_* variables, so a single compile run
 * outside make must see the same ones to hit the entries the build stored.
 */
export function kbuildCompileEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env, LC_COLLATE: 'C', LC_NUMERIC: 'C' }
  delete out.LC_ALL
  return out
}

async function isInstalled(pkg: string): Promise<boolean> {
  const r = await run('dpkg-query', ['-W', '-f=${Status}', pkg], { timeoutMs: 30_000 })
  return r.code === 0 && r.stdout.includes('install ok installed')
}

/** `dpkg -s` every package first; only when some are missing: apt-get update once, then install. */
export async function ensurePackages(say: (s: string) => void, extra: string[] = []): Promise<void> {
  const missing: string[] = []
  for (const p of [...REQUIRED_PACKAGES, ...extra]) if (!(await isInstalled(p))) missing.push(p)
  if (missing.length === 0) return
  if (process.getuid?.() !== 0) fail(`missing Debian packages (${missing.join(' ')}); run as root or apt-get install them`)
  say(`installing ${missing.join(' ')} (apt-get)…`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  await runOk('apt-get', ['update', '-qq'], { env, timeoutMs: 10 * 60_000 }, 'apt-get update')
  await runOk('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env, timeoutMs: 30 * 60_000 }, 'apt-get install')
}

/** The newest /usr/src/linux-source-*.tar.xz. */
function findTarball(): string {
  const dir = '/usr/src'
  const tars = existsSync(dir) ? readdirSync(dir).filter((f) => /^linux-source-.*\.tar\.xz$/.test(f)) : []
  if (tars.length === 0) fail('no /usr/src/linux-source-*.tar.xz (is the linux-source package installed?)')
  tars.sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
  return join(dir, tars[tars.length - 1]!)
}

/** Unpack the kernel once into <workDir>/linux and reuse it on later runs. */
export async function ensureTree(workDir: string, say: (s: string) => void): Promise<string> {
  const linux = join(workDir, 'linux')
  if (existsSync(join(linux, 'Makefile')) && existsSync(join(linux, 'Kbuild'))) return linux
  const tarball = findTarball()
  mkdirSync(workDir, { recursive: true })
  const partial = join(workDir, 'linux.partial')
  rmSync(partial, { recursive: true, force: true })
  mkdirSync(partial)
  say(`unpacking ${tarball} into ${linux}…`)
  await runOk('tar', ['-xJf', tarball, '--strip-components=1', '-C', partial], { timeoutMs: 15 * 60_000 }, 'unpacking the kernel source')
  rmSync(linux, { recursive: true, force: true })
  renameSync(partial, linux)
  return linux
}

/** The configuration used: tinyconfig (see the note in bench-cache.ts for why it is enough). */
export const CONFIG_NAME = 'tinyconfig'
const CONFIG_MARKER = '.meshcc-bench-config'

/** `make tinyconfig` once; the marker records which config .config holds. */
export async function ensureConfig(linux: string, env: NodeJS.ProcessEnv, say: (s: string) => void): Promise<void> {
  const marker = join(linux, CONFIG_MARKER)
  if (existsSync(join(linux, '.config')) && existsSync(marker) && readFileSync(marker, 'utf8').trim() === CONFIG_NAME) return
  say(`make ${CONFIG_NAME}…`)
  await runOk('make', [CONFIG_NAME], { cwd: linux, env, timeoutMs: 5 * 60_000 }, `make ${CONFIG_NAME}`)
  writeFileSync(marker, CONFIG_NAME + '\n')
}

/** Objects compiled through $(CC) by one make run: Kbuild's quiet `  CC  dir/file.o` lines (and `  AS  x.o` with `assembler`). */
export function compiledObjects(makeOutput: string, opts: { assembler?: boolean } = {}): string[] {
  const out: string[] = []
  const re = opts.assembler ? /^\s+(?:CC|AS)(?:\s+\[M\])?\s+(\S+\.o)\s*$/ : /^\s+CC(?:\s+\[M\])?\s+(\S+\.o)\s*$/
  for (const line of makeOutput.split('\n')) {
    const m = re.exec(line)
    if (m) out.push(m[1]!)
  }
  return out
}

/**
 * The exact compile command Kbuild ran for `obj` (e.g. kernel/fork.o), read from the
 * `.<name>.o.cmd` file it writes, with the compiler prefix (`$(CC)` as given to make) removed:
 * what is returned starts with the first argument after `gcc`.
 */
export function readKbuildCompileArgs(linux: string, obj: string, cc: string): string {
  const slash = obj.lastIndexOf('/')
  const cmdFile = join(linux, obj.slice(0, slash + 1) + '.' + obj.slice(slash + 1) + '.cmd')
  if (!existsSync(cmdFile)) fail(`no ${cmdFile}: was ${obj} built?`)
  const first = readFileSync(cmdFile, 'utf8').split('\n')[0] ?? ''
  const m = /^(?:saved)?cmd_\S+ := (.*)$/.exec(first)
  if (!m) fail(`cannot parse the compile command in ${cmdFile}`)
  let cmd = m[1]!.trim()
  // later Kbuild steps (objtool, recordmcount) are chained with ';' — keep the compile only
  const semi = cmd.indexOf('; ')
  if (semi >= 0) cmd = cmd.slice(0, semi).trim()
  if (!cmd.startsWith(cc + ' ')) fail(`the command in ${cmdFile} does not start with "${cc}"`)
  return cmd.slice(cc.length + 1).trim()
}

/** sha256 of each given object file (paths relative to the tree); missing files are left out. */
export function hashObjects(linux: string, objects: string[]): Map<string, string> {
  const files = new Map<string, string>()
  for (const rel of objects) {
    try {
      files.set(rel, createHash('sha256').update(readFileSync(join(linux, rel))).digest('hex'))
    } catch {
      // not there (e.g. removed by a later Kbuild step): reported as missing by the comparison
    }
  }
  return files
}
