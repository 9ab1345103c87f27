// The per-compile launcher: hands one compiler call to the daemon and replays its answer,
// or runs the compiler itself whenever the daemon cannot help. It never fails a build
// that the plain compiler would pass.
import { spawnSync } from 'node:child_process'
import { accessSync, constants, realpathSync, statSync, writeSync } from 'node:fs'
import { basename, delimiter, resolve } from 'node:path'
import { ConfigError, loadConfig, type Config } from '../config.js'
import { createLogger, logFiles } from '../log.js'
import { MsgType, encodeCompileRequest } from '../daemon/launcher-protocol.js'
import { journalFallback } from '../daemon/stats.js'
import { requestDaemon } from './client.js'

/** Names a masquerade link may have: cc, gcc-12, x86_64-linux-gnu-g++, clang++-14, rustc, … */
const COMPILER_NAME = /^(?:[\w.]+-)*(?:cc|c\+\+|gcc|g\+\+|clang|clang\+\+|rustc)(?:-\d+(?:\.\d+)*)?$/

export function isCompilerName(name: string): boolean {
  return COMPILER_NAME.test(name)
}

function isExecutableFile(p: string): boolean {
  try {
    accessSync(p, constants.X_OK)
    return statSync(p).isFile()
  } catch {
    return false
  }
}

function realOrSelf(p: string): string {
  try { return realpathSync(p) } catch { return p }
}

/** Whether a file is meshcc itself: this CLI, or a launcher or masquerade link resolving to one. */
function isMeshcc(real: string, self: string): boolean {
  return real === self || basename(real) === 'meshcc'
}

/**
 * Find the real compiler: a path is taken as given; a bare name is looked up on PATH,
 * skipping meshcc itself (a masquerade directory is usually first on PATH). A path that is
 * meshcc (CC=/masquerade/dir/cc wrapped again) is looked up by its name the same way: run as
 * the compiler, meshcc would ask its own daemon for a slot inside the compile that holds one,
 * and a build with every slot so taken would hang.
 */
export function resolveCompiler(name: string, selfScript: string, cwd: string, pathVar = process.env.PATH ?? ''): string | null {
  const self = realOrSelf(selfScript)
  if (name.includes('/')) {
    const given = resolve(cwd, name)
    if (!isExecutableFile(given)) return null
    if (!isMeshcc(realOrSelf(given), self)) return given
    name = basename(name)
  }
  for (const dir of pathVar.split(delimiter)) {
    if (!dir) continue
    const candidate = resolve(cwd, dir, name)
    if (!isExecutableFile(candidate)) continue
    if (isMeshcc(realOrSelf(candidate), self)) continue
    return candidate
  }
  return null
}

/**
 * `meshcc meshcc gcc …` (a wrapper wrapped again: CC="meshcc gcc" under a RUSTC_WRAPPER or
 * a build that adds its own launcher) is `meshcc gcc …`: the compiler is the first argument
 * that is not meshcc.
 */
export function unwrapSelf(compilerName: string, args: string[], selfScript: string, cwd: string): [string, string[]] {
  const self = realOrSelf(selfScript)
  while (args.length > 0 && (compilerName === 'meshcc' || (compilerName.includes('/') && basename(compilerName) === 'meshcc' && isMeshcc(realOrSelf(resolve(cwd, compilerName)), self)))) {
    compilerName = args[0]
    args = args.slice(1)
  }
  return [compilerName, args]
}

function writeAll(fd: number, data: Buffer): void {
  let off = 0
  while (off < data.length) {
    try {
      off += writeSync(fd, data, off, data.length - off)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') continue // non-blocking pipe: retry
      throw err
    }
  }
}

/** Run the compiler ourselves with the build's own stdio, and exit the way it exited. */
function runDirect(compiler: string, args: string[]): never {
  const r = spawnSync(compiler, args, { stdio: 'inherit' })
  if (r.error) {
    process.stderr.write(`meshcc: cannot run ${compiler}: ${(r.error as NodeJS.ErrnoException).code ?? r.error.message}\n`)
    process.exit(127)
  }
  if (r.signal) {
    process.kill(process.pid, r.signal)
  }
  process.exit(r.status ?? 1)
}

function fallbackLocally(config: Config | null, compiler: string, args: string[], reason: string, detail = reason): never {
  if (config) {
    journalFallback(config.cache.dir, reason)
    createLogger({ level: config.log.level, ...logFiles(config.cache.dir, config.daemon.socket) }, 'launcher').warn(`compiling locally without the daemon: ${detail}`)
  }
  runDirect(compiler, args)
}

export async function runLauncher(compilerName: string, args: string[], selfScript: string): Promise<never> {
  const cwd = process.cwd()
  ;[compilerName, args] = unwrapSelf(compilerName, args, selfScript, cwd)
  const compiler = resolveCompiler(compilerName, selfScript, cwd)
  if (compiler === null) {
    process.stderr.write(`meshcc: compiler "${compilerName}" not found${compilerName.includes('/') ? '' : ' on PATH (meshcc itself skipped)'}\n`)
    process.exit(127)
  }
  if (process.env.MESHCC_DISABLE && process.env.MESHCC_DISABLE !== '0') runDirect(compiler, args)

  let config: Config
  try {
    config = loadConfig()
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    process.stderr.write(`meshcc: ${err.message}; compiling without meshcc\n`)
    runDirect(compiler, args)
  }

  // the native launcher already tried the daemon for this very call and it failed
  const nativeFailed = process.env.MESHCC_LAUNCHER_FALLBACK
  if (nativeFailed !== undefined) {
    delete process.env.MESHCC_LAUNCHER_FALLBACK
    fallbackLocally(config, compiler, args, nativeFailed || 'daemon unreachable')
  }

  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v
  let frame
  try {
    frame = await requestDaemon(config, encodeCompileRequest({ cwd, compiler, args, env }), { autostart: true, timeoutMs: 0 })
  } catch (err) {
    const msg = (err as Error).message
    fallbackLocally(config, compiler, args, msg.startsWith('daemon closed') ? 'daemon connection lost' : 'daemon unreachable', msg)
  }
  switch (frame.type) {
    case MsgType.RESULT: {
      const code = Number(frame.fields[0]?.toString('utf8'))
      writeAll(1, frame.fields[1] ?? Buffer.alloc(0))
      writeAll(2, frame.fields[2] ?? Buffer.alloc(0))
      process.exit(Number.isInteger(code) ? code : 1)
    }
    // eslint-disable-next-line no-fallthrough
    case MsgType.PASSTHROUGH:
    case MsgType.FALLBACK:
      if (frame.fields[1]?.length) process.stderr.write(`meshcc: ${frame.fields[1].toString('utf8')}\n`)
      runDirect(compiler, args) // the daemon has counted it already
    // eslint-disable-next-line no-fallthrough
    default:
      fallbackLocally(config, compiler, args, 'unexpected daemon reply')
  }
}
