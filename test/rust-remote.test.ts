// Distributed rustc (issue #16) with real cargo, rustc and daemons on loopback: a client with
// local_slots = 0 and two builders (three daemons, each its own config dir), so every
// cacheable crate's rustc runs on a builder in its bubblewrap sandbox, the crates loading a
// proc macro (serde's and thiserror's derives from Debian's registry, one of the workspace's
// own) included: the .so goes with the job. The outputs must be byte for byte a plain
// build's, the next build all hits, and a builder whose jobs fail must leave the build green
// (compiled here). Proc macro crates, build scripts and bins are compiled and run here.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { MESHCC, createInstance, runCommand, writeTree, type Instance, type RunResult } from './helpers/meshcc.js'
import { filesIn, findCargo, logOutcomes, offlineCargoHome } from './helpers/cargo.js'
import { startDistMesh, type DistMesh } from './helpers/dist-mesh.js'
import { status } from './helpers/mesh-daemons.js'

const { cargo } = findCargo()
const DEPS = { smallvec: '1', itoa: '1', bitflags: '1', 'cfg-if': '1', memchr: '2', fnv: '1', either: '1' }
/** the crates whose rustc loads a proc macro: serde (serde_derive), thiserror (thiserror-impl), usemac (all three) */
const LOADING_PROC_MACROS = ['serde-1.0.152/src/lib.rs', 'thiserror-1.0.38/src/lib.rs', 'usemac/src/lib.rs']

function workspace(): Record<string, string> {
  const pkg = (name: string, deps: string, extra = '') => `[package]\nname = "${name}"\nversion = "0.1.0"\nedition = "2021"\n${extra}\n[dependencies]\n${deps}`
  return {
    'Cargo.toml': '[workspace]\nmembers = ["corelib", "midlib", "macros", "usemac", "gitver", "usegit", "app"]\nresolver = "2"\n',
    'macros/Cargo.toml': pkg('macros', '', '[lib]\nproc-macro = true'),
    'macros/src/lib.rs': 'use proc_macro::TokenStream;\n#[proc_macro]\npub fn answer(_: TokenStream) -> TokenStream { "42u32".parse().unwrap() }\n',
    // loads three proc macros, shipped with its job
    'usemac/Cargo.toml': pkg('usemac', 'macros = { path = "../macros" }\nserde = { version = "1", features = ["derive"] }\nthiserror = "1"'),
    'usemac/src/lib.rs': `#[derive(serde::Serialize, Debug)]
pub struct Point { pub x: u32, pub y: u32 }
#[derive(thiserror::Error, Debug)]
pub enum Oops { #[error("oops {0} in {}", env!("CARGO_PKG_NAME"))] Bad(u32) }
pub fn answer() -> u32 { macros::answer!() }
pub fn describe() -> String { format!("{:?} {}", Point { x: 1, y: 2 }, Oops::Bad(3)) }
`,
    // named like git-version's proc macro, which runs git: a crate loading it compiles here
    'gitver/Cargo.toml': pkg('git-version-macro', '', '[lib]\nproc-macro = true'),
    'gitver/src/lib.rs': 'use proc_macro::TokenStream;\n#[proc_macro]\npub fn version(_: TokenStream) -> TokenStream { "\\"v1\\"".parse().unwrap() }\n',
    'usegit/Cargo.toml': pkg('usegit', 'git-version-macro = { path = "../gitver" }'),
    'usegit/src/lib.rs': 'pub fn version() -> &\'static str { git_version_macro::version!() }\n',
    'corelib/Cargo.toml': pkg('corelib', Object.entries(DEPS).map(([k, v]) => `${k} = "${v}"`).join('\n')),
    'corelib/data.txt': 'some words\n',
    'corelib/src/lib.rs': `pub const DATA: &str = include_str!("../data.txt");
pub fn describe(s: &str) -> String {
    let words: smallvec::SmallVec<[&str; 4]> = s.split(' ').collect();
    let mut b = itoa::Buffer::new();
    let n = b.format(words.len());
    let seen: fnv::FnvHashSet<&str> = words.iter().copied().collect();
    let e: either::Either<u8, u8> = either::Either::Left(1);
    format!("{} {} {} {} {}", env!("CARGO_PKG_NAME"), n, seen.len(), memchr::memchr(b' ', s.as_bytes()).unwrap_or(0), e.either(|x| x, |y| y))
}
cfg_if::cfg_if! { if #[cfg(unix)] { pub fn os() -> &'static str { "unix" } } else { pub fn os() -> &'static str { "other" } } }
bitflags::bitflags! { pub struct Flags: u8 { const A = 1; } }
`,
    'midlib/Cargo.toml': pkg('midlib', 'corelib = { path = "../corelib" }'),
    // uses smallvec through corelib only: rustc loads its rmeta from -L dependency=, no --extern names it
    'midlib/src/lib.rs': 'pub fn mid(s: &str) -> String { format!("mid:{}:{}:{}", corelib::describe(s), corelib::os(), corelib::DATA.trim()) }\n',
    'app/Cargo.toml': pkg('app', 'midlib = { path = "../midlib" }\nusemac = { path = "../usemac" }\nusegit = { path = "../usegit" }'),
    'app/src/main.rs': 'fn main() { println!("{} {} {} {}", midlib::mid("hello remote rust"), usemac::answer(), usemac::describe(), usegit::version()); }\n'
  }
}
const EXPECTED = 'mid:corelib 3 3 5 1:unix:some words 42 Point { x: 1, y: 2 } oops 3 in usemac v1\n'

let root: Instance
let ws: string
let cargoHome: string
let plain: Map<string, Buffer>
const meshes: DistMesh[] = []

function cargoBuild(client: Instance, extraEnv: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  rmSync(join(ws, 'target'), { recursive: true, force: true })
  const env: NodeJS.ProcessEnv = {
    ...client.env, CARGO_HOME: cargoHome, CARGO_TARGET_DIR: join(ws, 'target'), CARGO_INCREMENTAL: '0', CARGO_TERM_COLOR: 'never',
    RUSTFLAGS: `--remap-path-prefix=${ws}=/ws`, RUSTC_WRAPPER: MESHCC, ...extraEnv
  }
  delete env.CC
  delete env.CXX
  return runCommand(cargo, ['build', '--offline'], { cwd: ws, env, timeoutMs: 900_000 })
}

function logSize(i: Instance): number {
  try { return statSync(join(i.cacheDir, 'meshcc.log')).size } catch { return 0 }
}

interface RustCounts { counters: Record<string, number>; fallback_reasons: Record<string, number>; retry_reasons: Record<string, number>; non_cacheable_reasons: Record<string, number> }
async function rustStats(i: Instance): Promise<RustCounts> {
  return (await i.stats() as unknown as { families: Record<string, RustCounts> }).families.rust
}

function assertSameAsPlain(): void {
  const now = filesIn(join(ws, 'target', 'debug', 'deps'))
  assert.deepEqual([...now.keys()], [...plain.keys()])
  for (const [name, data] of plain) assert.ok(now.get(name)!.equals(data), `${name} differs from the plain build's`)
}

before(async () => {
  root = createInstance('', 'rustremote')
  ws = join(root.dir, 'ws')
  cargoHome = offlineCargoHome(join(root.dir, 'cargo-home'))
  writeTree(ws, workspace())
  const env: NodeJS.ProcessEnv = { ...process.env, CARGO_HOME: cargoHome, CARGO_TARGET_DIR: join(ws, 'target'), CARGO_INCREMENTAL: '0', CARGO_TERM_COLOR: 'never', RUSTFLAGS: `--remap-path-prefix=${ws}=/ws` }
  delete env.RUSTC_WRAPPER
  const r = await runCommand(cargo, ['build', '--offline'], { cwd: ws, env, timeoutMs: 600_000 })
  assert.equal(r.code, 0, r.stderr)
  plain = filesIn(join(ws, 'target', 'debug', 'deps'))
  assert.equal((await runCommand(join(ws, 'target', 'debug', 'app'), [])).stdout, EXPECTED)
})

after(async () => {
  for (const m of meshes) await m.stop()
  await root?.stop()
})

test('cargo build through a client with local_slots = 0 and two builders: every crate compiles on a builder, proc macro users too, byte-identical to a plain build, then all hit', { timeout: 1_200_000 }, async () => {
  const mesh = await startDistMesh('rr', 2)
  meshes.push(mesh)
  const { client, builders } = mesh
  const from = logSize(client)
  const r = await cargoBuild(client)
  assert.equal(r.code, 0, r.stderr)
  assertSameAsPlain()
  assert.equal((await runCommand(join(ws, 'target', 'debug', 'app'), [])).stdout, EXPECTED)

  const log = readFileSync(join(client.cacheDir, 'meshcc.log')).subarray(from).toString('utf8')
  const remote = [...log.matchAll(/compiled (\S+) on \S+$/gm)].map((m) => m[1])
  const s = await rustStats(client)
  const why = `fallbacks: ${JSON.stringify(s.fallback_reasons)}, retries: ${JSON.stringify(s.retry_reasons)}\n${log.split('\n').filter((l) => /here|inside the daemon|not taken|did not complete/.test(l)).slice(0, 8).join('\n')}`
  for (const c of ['corelib/src/lib.rs', 'midlib/src/lib.rs', ...LOADING_PROC_MACROS]) {
    assert.ok(remote.some((x) => x.endsWith(c)), `${c} compiled on a builder: ${remote.join(' ')} (${why})`)
  }
  // the workspace's three libraries and Debian's crates: nothing cacheable compiled here
  assert.ok(remote.length >= 3 + Object.keys(DEPS).length + 2, `${remote.length} crates compiled remotely: ${remote.join(' ')}`)
  assert.equal(s.counters.remote_compiles, remote.length)
  // thiserror's build script probes rustc through the wrapper with a crate meant to fail on a
  // stable rustc: its listing fails, and it fails here as it would without meshcc
  const probes = [...log.matchAll(/rust miss \(depend mode\) \S+ \S+\/out\/probe\.rs$/gm)].length
  const expected: Record<string, number> = { [`not distributable (rustc loading git_version_macro, a proc macro reading what rustc does not track)`]: 1 }
  if (probes > 0) expected['not distributable (rustc refused the crate while listing its inputs)'] = probes
  assert.deepEqual(s.fallback_reasons, expected, `only usegit and the ${probes} probes compiled here (${why})`)
  assert.ok(!remote.includes('usegit/src/lib.rs'), 'the crate loading a proc macro known to run git compiled here')
  const done = await Promise.all(builders.map(async (b) => (await status(b)).mesh!.builder.jobs_done))
  assert.equal(done[0]! + done[1]!, remote.length, `jobs done by the builders: ${done.join(' + ')}`)

  // the next build after cargo clean: every crate a builder compiled is a hit here
  const from2 = logSize(client)
  const warm = await cargoBuild(client)
  assert.equal(warm.code, 0, warm.stderr)
  assertSameAsPlain()
  const again = logOutcomes(join(client.cacheDir, 'meshcc.log'), from2)
  assert.deepEqual(again.misses, [])
  assert.equal(again.hits.length, remote.length + 1, 'every crate the builders compiled, and usegit')
  assert.equal((await rustStats(client)).counters.remote_compiles, remote.length, 'no further remote compile')
})

test('a builder SIGKILLed while it compiles a crate: the build stays green and identical, the rest compiles here', { timeout: 1_200_000 }, async () => {
  const mesh = await startDistMesh('rrkill', 1)
  meshes.push(mesh)
  const { client, builders } = mesh
  const victim = builders[0]!
  const pid = victim.daemonPid()!
  const build = cargoBuild(client)
  // bounded: until the builder runs a job (or the build ends without one), at most 10 minutes
  const deadline = Date.now() + 600_000
  let killed = false
  let done = false
  void build.then(() => { done = true })
  while (!done && Date.now() < deadline) {
    const running = (await status(victim).catch(() => null))?.mesh?.builder.running ?? 0
    if (running > 0) {
      process.kill(pid, 'SIGKILL')
      killed = true
      break
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  assert.ok(killed, 'the builder was killed while it ran a job')
  const r = await build
  assert.equal(r.code, 0, r.stderr)
  assertSameAsPlain()
  assert.equal((await runCommand(join(ws, 'target', 'debug', 'app'), [])).stdout, EXPECTED)
  const s = await rustStats(client)
  assert.ok(s.counters.local_compiles > 0, `crates compiled here after the kill: ${JSON.stringify(s)}`)
})
