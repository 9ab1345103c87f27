// Real cargo and rustc, offline: crates come from Debian's librust-*-dev packages under
// /usr/share/cargo/registry as a directory source, set up in a CARGO_HOME of the test's own
// (never the user's ~/.cargo).
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'

export const DEBIAN_REGISTRY = '/usr/share/cargo/registry'

/** cargo and rustc from ~/.cargo/bin (rustup) or PATH; throws a one-line reason when absent. */
export function findCargo(): { cargo: string; rustc: string } {
  for (const dir of [join(homedir(), '.cargo', 'bin'), ...(process.env.PATH ?? '').split(':')]) {
    if (dir && existsSync(join(dir, 'cargo')) && existsSync(join(dir, 'rustc'))) return { cargo: join(dir, 'cargo'), rustc: join(dir, 'rustc') }
  }
  throw new Error('cargo and rustc not found in ~/.cargo/bin or on PATH (the Rust tests need them)')
}

/** A CARGO_HOME whose crates.io is Debian's registry, offline. */
export function offlineCargoHome(dir: string): string {
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'config.toml'), `[source.crates-io]\nreplace-with = "debian"\n[source.debian]\ndirectory = "${DEBIAN_REGISTRY}"\n[net]\noffline = true\n`)
  return dir
}

/** The toolchain's own rustc (what cargo passes to RUSTC_WRAPPER), asked through the proxy. */
export function toolchainRustc(rustc: string): string {
  const r = spawnSync(rustc, ['--print', 'sysroot'], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`${rustc} --print sysroot failed: ${r.stderr}`)
  return join(r.stdout.trim(), 'bin', 'rustc')
}

/** Every file directly in `dir`, name -> content. */
export function filesIn(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  for (const n of readdirSync(dir).sort()) {
    const p = join(dir, n)
    if (statSync(p).isFile()) out.set(n, readFileSync(p))
  }
  return out
}

/**
 * The rustc calls the daemon's log names as missed / hit since byte `from` (by their source
 * path). A build script's probe of the compiler (anyhow's probe.rs in OUT_DIR) is left out: it
 * is meant to fail on a stable rustc, and failed compiles are never stored.
 */
export function logOutcomes(logFile: string, from: number): { misses: string[]; hits: string[] } {
  const text = readFileSync(logFile).subarray(from).toString('utf8')
  const misses: string[] = []
  const hits: string[] = []
  for (const line of text.split('\n')) {
    const m = /rust (miss \(depend mode\)|direct hit) [0-9a-f]{16} (\S+)$/.exec(line)
    if (m && !m[2].endsWith('/out/probe.rs')) (m[1] === 'direct hit' ? hits : misses).push(m[2])
  }
  return { misses: misses.sort(), hits: hits.sort() }
}
