// Which rustc a request runs, by content: `rustc -vV`, the compiler's shared libraries
// (bin/rustc is a small driver; librustc_driver and LLVM in <sysroot>/lib are the compiler)
// and the standard library of each target it compiles for (<sysroot>/lib/rustlib/<target>/lib).
// Memoised: each file's hash by its identity (CompilerIdentity, kept on disk beside the cache
// when the daemon names a memo file: a fresh daemon then hashes no unchanged file), the toolchain by the
// binary and the variables rustup chooses a toolchain by. A rustup proxy (~/.cargo/bin/rustc)
// also chooses by the working directory (rust-toolchain.toml), so its memo is per directory;
// cargo itself passes the toolchain's own rustc, which has its sysroot beside it.
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs'
import { readdir, realpath, stat } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { execa } from 'execa'
import { CompilerIdentity } from '../daemon/compiler-identity.js'
import type { CompileRequest } from '../daemon/launcher-protocol.js'
import { discoverToolchain, sharedLibraries } from '../toolchain/index.js'
import { JOBSERVER_ENV } from './rust-jobserver.js'

export interface RustToolchain {
  /** rustc -vV, the sysroot's shared libraries */
  hash: string
  sysroot: string
  host: string
  /** the binary's real path */
  real: string
}

/** Variables rustup picks a toolchain by. */
const RUSTUP_ENV = ['RUSTUP_TOOLCHAIN', 'RUSTUP_HOME']

export class RustToolchains {
  private readonly files: CompilerIdentity
  private readonly memo = new Map<string, Promise<RustToolchain>>()
  private readonly targets = new Map<string, Promise<string>>()
  private readonly procMacros = new Map<string, Promise<string | null>>()
  private cpu: string | null = null

  /** `memoFile`: where file hashes are kept across daemons (null: in memory only) */
  constructor(memoFile: string | null = null) {
    this.files = new CompilerIdentity(memoFile)
  }

  async of(req: CompileRequest): Promise<RustToolchain> {
    // on this thread: asked on every rustc call, where a trip through the thread pool costs
    // about 100 us of CPU against 5 for the syscalls
    const real = realpathSync.native(req.compiler)
    const st = statSync(real)
    // a real rustc has its sysroot beside it; anything else (a rustup proxy) decides per directory
    const proxy = !existsSync(join(dirname(dirname(real)), 'lib', 'rustlib'))
    const memoKey = [real, st.size, st.mtimeMs, ...RUSTUP_ENV.map((v) => req.env[v] ?? ''), proxy ? req.cwd : ''].join('\0')
    let p = this.memo.get(memoKey)
    if (!p) {
      p = this.identify(req, real)
      this.memo.set(memoKey, p)
      p.catch(() => this.memo.delete(memoKey))
    }
    return p
  }

  private async identify(req: CompileRequest, real: string): Promise<RustToolchain> {
    const env = { ...req.env }
    for (const k of JOBSERVER_ENV) delete env[k]
    const run = async (args: string[]) => {
      const r = await execa(req.compiler, args, { cwd: req.cwd, env, extendEnv: false, stdin: 'ignore', reject: false })
      if (r.exitCode !== 0) throw new Error(`${basename(req.compiler)} ${args.join(' ')} exited with ${r.exitCode}`)
      return r.stdout
    }
    const [version, sysroot] = await Promise.all([run(['-vV']), run(['--print', 'sysroot'])])
    const host = /^host: (.+)$/m.exec(version)?.[1]
    if (!host) throw new Error(`${basename(req.compiler)} -vV names no host`)
    const h = createHash('sha256').update(`rustc\0${version}\0`)
    await this.hashDir(h, join(sysroot, 'lib'))
    await this.files.save()
    return { hash: h.digest('hex'), sysroot: sysroot.trim(), host, real }
  }

  /** The standard library a compile for `target` links against (a triple, or a target JSON's name). */
  target(tc: RustToolchain, target: string): Promise<string> {
    const key = `${tc.hash}\0${target}`
    let p = this.targets.get(key)
    if (!p) {
      p = (async () => {
        const h = createHash('sha256').update(`target\0${target}\0`)
        await this.hashDir(h, join(tc.sysroot, 'lib', 'rustlib', target, 'lib'))
        await this.files.save()
        return h.digest('hex')
      })()
      this.targets.set(key, p)
      p.catch(() => this.targets.delete(key))
    }
    return p
  }

  /**
   * Why the proc macro `so` (a host library this very rustc built: it loads no other's) could
   * not run inside the toolchain pack that `compiler` ships to a builder, or null when it can:
   * every library the dynamic loader resolves for it (libc, libgcc_s, the loader, a libstd-*.so
   * for a -C prefer-dynamic one) must be in the pack, which holds what rustc itself loads.
   * Memoised by the file's path, size and mtime.
   */
  async procMacroUnshippable(compiler: string, so: string): Promise<string | null> {
    const st = await stat(so).catch(() => null)
    if (st === null) return `${basename(so)} unreadable`
    const key = [compiler, so, st.size, st.mtimeMs].join('\0')
    let p = this.procMacros.get(key)
    if (!p) {
      p = (async () => {
        const [libs, pack] = await Promise.all([sharedLibraries(so), discoverToolchain(compiler, 'rustc')])
        const shipped = new Set(pack.files)
        for (const lib of libs) {
          if (!shipped.has(lib) && !shipped.has(await realpath(lib).catch(() => lib))) return `${basename(so)} needs ${lib}, which the toolchain pack lacks`
        }
        return null
      })().catch((err: Error) => `${basename(so)}: ${err.message.split('\n')[0]!.slice(0, 120)}`)
      this.procMacros.set(key, p)
    }
    return p
  }

  /** This machine's CPU as `-C target-cpu=native` sees it (model and feature flags). */
  cpuFingerprint(): string {
    if (this.cpu === null) {
      let text = ''
      try { text = readFileSync('/proc/cpuinfo', 'utf8') } catch { /* no /proc: the arch alone */ }
      const first = text.split('\n\n')[0] ?? ''
      const pick = (field: string) => new RegExp(`^${field}\\s*:\\s*(.*)$`, 'm').exec(first)?.[1] ?? ''
      this.cpu = createHash('sha256').update([process.arch, pick('vendor_id'), pick('model name'), pick('flags'), pick('Features')].join('\0')).digest('hex')
    }
    return this.cpu
  }

  /** Every regular file directly in `dir`, by name and content (a missing directory hashes as empty). */
  private async hashDir(h: ReturnType<typeof createHash>, dir: string): Promise<void> {
    // a symlink names a file hashed here or nothing the compiler loads
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => [])
    const names = entries.filter((d) => d.isFile()).map((d) => d.name).sort()
    const hashes = await Promise.all(names.map((n) => this.files.of(join(dir, n)).then((r) => r.hash, () => 'unreadable')))
    names.forEach((n, i) => h.update(`${n}\0${hashes[i]}\0`))
  }
}
