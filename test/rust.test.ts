// RUSTC_WRAPPER=meshcc with real cargo and rustc on a real workspace: two dozen crates (our
// own six and Debian's librust-*-dev crates as an offline directory source), a proc macro, a
// build script compiling C through the cc crate, a bin that links through a meshcc masquerade.
// One target directory is shared by the steps (cargo clean between them), so the suite stays
// within a few minutes on two cores.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { cpSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInstance, MESHCC, runCommand, writeTree, type Instance, type RunResult } from './helpers/meshcc.js'
import { filesIn, findCargo, logOutcomes, offlineCargoHome, toolchainRustc } from './helpers/cargo.js'

const { cargo, rustc } = findCargo()
const DEPS = { regex: '1', serde_json: '1', serde: '1', log: '0.4', anyhow: '1', itertools: '0.10', smallvec: '1', once_cell: '1', bitflags: '1' }

function workspace(): Record<string, string> {
  const pkg = (name: string, deps: string, extra = '') => `[package]\nname = "${name}"\nversion = "0.1.0"\nedition = "2021"\n${extra}\n[dependencies]\n${deps}`
  return {
    'Cargo.toml': '[workspace]\nmembers = ["corelib", "midlib", "leaflib", "macros", "native", "app"]\nresolver = "2"\n',
    'corelib/Cargo.toml': pkg('corelib', Object.entries(DEPS).map(([k, v]) => `${k} = "${v}"`).join('\n')),
    'corelib/data.txt': 'first words\n',
    'corelib/src/lib.rs': `use itertools::Itertools;
pub const DATA: &str = include_str!("../data.txt");
pub fn describe(s: &str) -> String {
    let unused_here = 1; // a warning cargo shows, replayed on a hit
    let re = regex::Regex::new(r"\\w+").unwrap();
    let words: smallvec::SmallVec<[&str; 4]> = re.find_iter(s).map(|m| m.as_str()).collect();
    let v = serde_json::json!({ "crate": env!("CARGO_PKG_NAME"), "words": words.iter().join(" ") });
    log::debug!("{}", v);
    v.to_string()
}
pub fn data() -> anyhow::Result<&'static str> { Ok(*DATA_LAZY) }
static DATA_LAZY: once_cell::sync::Lazy<&'static str> = once_cell::sync::Lazy::new(|| DATA.trim());
bitflags::bitflags! { pub struct Flags: u8 { const A = 1; } }
`,
    'midlib/Cargo.toml': pkg('midlib', 'corelib = { path = "../corelib" }'),
    'midlib/src/lib.rs': 'pub fn mid(s: &str) -> String { format!("mid:{}", corelib::describe(s)) }\n',
    'leaflib/Cargo.toml': pkg('leaflib', 'log = "0.4"'),
    'leaflib/src/lib.rs': 'pub fn leaf() -> u32 { log::trace!("leaf"); 7 }\n',
    'macros/Cargo.toml': pkg('macros', '', '[lib]\nproc-macro = true'),
    'macros/src/lib.rs': 'use proc_macro::TokenStream;\n#[proc_macro]\npub fn answer(_: TokenStream) -> TokenStream { "42u32".parse().unwrap() }\n',
    'native/Cargo.toml': pkg('native', '', 'build = "build.rs"') + '\n[build-dependencies]\ncc = "1"\n',
    'native/build.rs': 'fn main() { cc::Build::new().file("csrc/twice.c").compile("twice"); }\n',
    'native/csrc/twice.c': 'int twice(int x) { return 2 * x; }\n',
    'native/src/lib.rs': 'extern "C" { fn twice(x: i32) -> i32; }\npub fn doubled(x: i32) -> i32 { unsafe { twice(x) } }\n',
    'app/Cargo.toml': pkg('app', 'midlib = { path = "../midlib" }\nleaflib = { path = "../leaflib" }\nmacros = { path = "../macros" }\nnative = { path = "../native" }\ncorelib = { path = "../corelib" }'),
    'app/src/main.rs': 'fn main() { println!("{} {} {} {} {}", midlib::mid("hello rust"), leaflib::leaf(), macros::answer!(), native::doubled(21), corelib::data().unwrap()); }\n'
  }
}

let inst: Instance
let root: string
let ws: string
let target: string
let cargoHome: string
let masq: string
/** the plain build's outputs: what every meshcc build must reproduce byte for byte */
let plain: Map<string, Buffer>
/** the crates (sources) cargo compiles with a cacheable rustc call */
let cacheable: string[]

/** cargo in `dir` with the environment a cached build uses; `wrapped`: RUSTC_WRAPPER and CC/CXX through meshcc. */
function cargoIn(dir: string, args: string[], wrapped: boolean, extraEnv: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = {
    ...inst.env, CARGO_HOME: cargoHome, CARGO_TARGET_DIR: join(dir, 'target'), CARGO_INCREMENTAL: '0', CARGO_TERM_COLOR: 'never',
    RUSTFLAGS: `--remap-path-prefix=${dir}=/ws`, ...extraEnv
  }
  delete env.RUSTC_WRAPPER
  delete env.CC
  delete env.CXX
  if (wrapped) {
    // Everything through meshcc at once, as the Gentoo wiki warns against for sccache: the
    // wrapper, C and C++ (a masquerade link wrapped again), and `cc` for linking on PATH
    Object.assign(env, { RUSTC_WRAPPER: MESHCC, CC: `${MESHCC} ${masq}/cc`, CXX: `${MESHCC} ${masq}/c++`, PATH: `${masq}:${env.PATH}` })
  }
  return runCommand(cargo, ['build', '--offline', ...args], { cwd: dir, env, timeoutMs: 600_000 })
}

function logSize(): number {
  try { return statSync(join(inst.cacheDir, 'meshcc.log')).size } catch { return 0 }
}

/** Build with meshcc after a cargo clean; the crates it missed and hit. */
async function cleanBuild(dir = ws, extraEnv: NodeJS.ProcessEnv = {}): Promise<{ r: RunResult; misses: string[]; hits: string[] }> {
  rmSync(join(dir, 'target'), { recursive: true, force: true })
  const from = logSize()
  const r = await cargoIn(dir, [], true, extraEnv)
  assert.equal(r.code, 0, r.stderr)
  return { r, ...logOutcomes(join(inst.cacheDir, 'meshcc.log'), from) }
}

before(async () => {
  inst = createInstance('', 'rust')
  root = inst.dir
  ws = join(root, 'ws')
  target = join(ws, 'target')
  cargoHome = offlineCargoHome(join(root, 'cargo-home'))
  masq = join(root, 'masq')
  mkdirSync(masq)
  for (const c of ['cc', 'c++', 'gcc', 'g++']) symlinkSync(MESHCC, join(masq, c))
  writeTree(ws, workspace())
  // the plain build, at the same path, for reference
  const r = await cargoIn(ws, [], false)
  assert.equal(r.code, 0, r.stderr)
  plain = filesIn(join(target, 'debug', 'deps'))
  const run = await runCommand(join(target, 'debug', 'app'), [])
  assert.equal(run.stdout, 'mid:{"crate":"corelib","words":"hello rust"} 7 42 42 first words\n')
})

after(async () => {
  await inst?.stop()
})

test('cargo clean && cargo build twice: the second is all hits, every output byte-identical to a plain build', async () => {
  const cold = await cleanBuild()
  cacheable = cold.misses
  // the six workspace crates less the bin and the proc macro, and every Debian crate they use
  for (const c of ['corelib/src/lib.rs', 'midlib/src/lib.rs', 'leaflib/src/lib.rs', 'native/src/lib.rs']) assert.ok(cacheable.includes(c), `${c} compiled through the cache: ${cacheable.join(' ')}`)
  assert.ok(cacheable.length >= 20, `${cacheable.length} cacheable crates`)
  assert.equal(cold.hits.length, 0)
  assert.match(cold.r.stderr, /unused variable: `unused_here`/)

  // cargo's credentials and proxies reach rustc's environment but not its output: never in a key
  const warm = await cleanBuild(ws, { CARGO_REGISTRY_TOKEN: 'cio-not-a-real-token', CARGO_HTTP_PROXY: 'http://user:secret@127.0.0.1:9' })
  assert.deepEqual(warm.misses, [])
  assert.deepEqual(warm.hits, cacheable)
  assert.match(warm.r.stderr, /unused variable: `unused_here`/, 'the warning is replayed on a hit')
  const now = filesIn(join(target, 'debug', 'deps'))
  assert.deepEqual([...now.keys()], [...plain.keys()])
  for (const [name, data] of plain) assert.ok(now.get(name)!.equals(data), `${name} differs from the plain build's`)
  const run = await runCommand(join(target, 'debug', 'app'), [])
  assert.equal(run.stdout, 'mid:{"crate":"corelib","words":"hello rust"} 7 42 42 first words\n')

  const s = await inst.stats()
  const rust = (s as unknown as { families: Record<string, { counters: Record<string, number>; non_cacheable_reasons: Record<string, number> }> }).families.rust
  assert.equal(rust.counters.cache_hits, cacheable.length)
  // a build script's probe (anyhow's) misses and fails each time: failures are never stored
  assert.equal(rust.counters.cache_misses - (rust.counters.compile_failures ?? 0), cacheable.length)
  for (const reason of ['bin crate (links)', 'proc-macro crate (links)', 'rustc query (-vV)']) assert.ok(rust.non_cacheable_reasons[reason] > 0, `counted: ${reason}`)
  const text = await inst.run(['-s'])
  assert.match(text.stdout, /rust +\d+ +\d+/, 'meshcc -s shows a rust row')
})

test('another checkout at another path, its path remapped, hits every cacheable crate', async () => {
  const other = join(root, 'checkout-two')
  cpSync(ws, other, { recursive: true, filter: (src) => !src.startsWith(target) })
  const b = await cleanBuild(other)
  // native bundles the C library its build script compiles, whose debug info names the
  // checkout (cc does not remap): a different archive, so a different crate, and a miss
  assert.deepEqual(b.misses, ['native/src/lib.rs'])
  assert.deepEqual(b.hits, cacheable.filter((c) => c !== 'native/src/lib.rs'))
  const here = filesIn(join(other, 'target', 'debug', 'deps'))
  for (const [name, data] of plain) {
    if (name.startsWith('libnative-') || name.startsWith('app-')) continue // and the program linked with it
    // dep-info names this checkout's out-dir; everything else is the same bytes
    const want = name.endsWith('.d') ? Buffer.from(data.toString('latin1').replaceAll(`${ws}/`, `${other}/`), 'latin1') : data
    assert.ok(here.get(name)?.equals(want), `${name} in the second checkout`)
  }
  const run = await runCommand(join(other, 'target', 'debug', 'app'), [])
  assert.match(run.stdout, /first words/)
})

test('a change to one source file misses exactly the crates that depend on it', async () => {
  const lib = join(ws, 'corelib', 'src', 'lib.rs')
  writeFileSync(lib, readFileSync(lib, 'utf8') + 'pub fn added() -> u8 { 1 }\n')
  const b = await cleanBuild()
  // corelib changed; midlib's key holds corelib's rmeta, which changed with it; nothing else
  assert.deepEqual(b.misses, ['corelib/src/lib.rs', 'midlib/src/lib.rs'])
  assert.equal(b.hits.length, cacheable.length - 2)
})

test('a change to an include_str! file misses, and the new text is what the program prints', async () => {
  writeFileSync(join(ws, 'corelib', 'data.txt'), 'second words\n')
  const b = await cleanBuild()
  assert.ok(b.misses.includes('corelib/src/lib.rs'), `misses: ${b.misses.join(' ')}`)
  assert.ok(!b.misses.includes('leaflib/src/lib.rs'))
  const run = await runCommand(join(target, 'debug', 'app'), [])
  assert.match(run.stdout, /second words\n$/)
})

test('a dependency compiled again in place, seconds after the last build, is keyed by its new rmeta in the crate depending on it', async () => {
  // no cargo clean: rustc renames corelib's new rmeta over the one whose hash the daemon kept
  // as it read it moments ago (FileHasher.readKnownBinary); midlib's key must hold the new
  // one, or midlib would be served the entry compiled against the old corelib. (The daemon
  // keeps the new rmeta's hash as it reads it too: file-hashes.test.ts shows a rewrite
  // never answered by the memo on its own.)
  const lib = join(ws, 'corelib', 'src', 'lib.rs')
  writeFileSync(lib, readFileSync(lib, 'utf8') + 'pub fn added_again() -> u8 { 2 }\n')
  const from = logSize()
  const r = await cargoIn(ws, [], true)
  assert.equal(r.code, 0, r.stderr)
  const b = logOutcomes(join(inst.cacheDir, 'meshcc.log'), from)
  assert.deepEqual(b.misses, ['corelib/src/lib.rs', 'midlib/src/lib.rs'])
  assert.deepEqual(b.hits, [])
})

test('a compile error reaches cargo exactly as rustc gives it, JSON diagnostics included', async () => {
  const dir = join(root, 'direct')
  mkdirSync(join(dir, 'out'), { recursive: true })
  writeFileSync(join(dir, 'bad.rs'), 'pub fn f() -> u32 { let x: u32 = "no"; x }\n')
  writeFileSync(join(dir, 'warn.rs'), 'pub fn f() -> u32 { let unused = 3; 1 }\n')
  const real = toolchainRustc(rustc)
  const argsFor = (src: string) => ['--crate-name', src.replace('.rs', ''), '--edition=2021', src, '--error-format=json',
    '--json=diagnostic-rendered-ansi,artifacts,future-incompat', '--crate-type', 'lib', '--emit=dep-info,metadata,link',
    '-C', 'embed-bitcode=no', '-C', 'metadata=0123456789abcdef', '-C', 'extra-filename=-0123456789abcdef', '--out-dir', join(dir, 'out')]
  for (const src of ['bad.rs', 'warn.rs']) {
    rmSync(join(dir, 'out'), { recursive: true })
    mkdirSync(join(dir, 'out'))
    const want = await runCommand(real, argsFor(src), { cwd: dir })
    const plainOut = filesIn(join(dir, 'out'))
    rmSync(join(dir, 'out'), { recursive: true })
    mkdirSync(join(dir, 'out'))
    // twice through meshcc: a miss, then (for the one that compiles) a hit
    for (let round = 0; round < 2; round++) {
      const got = await inst.run([real, ...argsFor(src)], { cwd: dir })
      assert.equal(got.code, want.code, `${src} round ${round}`)
      assert.ok(got.stdoutBuf.equals(want.stdoutBuf), `${src} stdout round ${round}`)
      assert.equal(got.stderr, want.stderr, `${src} stderr round ${round}`)
      if (want.code === 0) assert.deepEqual(filesIn(join(dir, 'out')), plainOut)
    }
  }
  assert.match((await runCommand(real, argsFor('bad.rs'), { cwd: dir })).stderr, /"level":"error"/)

  // and through cargo: the build fails with rustc's message
  const leaf = join(ws, 'leaflib', 'src', 'lib.rs')
  const good = readFileSync(leaf, 'utf8')
  writeFileSync(leaf, 'pub fn leaf() -> u32 { "seven" }\n')
  try {
    const r = await cargoIn(ws, [], true)
    assert.equal(r.code, 101)
    assert.match(r.stderr, /error\[E0308\]: mismatched types/)
    assert.match(r.stderr, /leaflib\/src\/lib\.rs:1:24/)
  } finally {
    writeFileSync(leaf, good)
  }
})

test('CC, CXX and RUSTC_WRAPPER all through meshcc with one compile slot: build scripts and linking never wait on meshcc itself', async () => {
  // A masquerade link wrapped again (CC="meshcc /masq/cc") made meshcc run itself as the
  // compiler: the outer compile held the only slot while the inner one waited for it, and the
  // build hung, as sccache does when it ends up calling itself.
  const one = createInstance('[build]\nlocal_slots = 1\n', 'rust1')
  try {
    const dir = join(one.dir, 'ws')
    const files = workspace()
    writeTree(dir, {
      'Cargo.toml': '[workspace]\nmembers = ["native", "app"]\nresolver = "2"\n',
      'native/Cargo.toml': files['native/Cargo.toml'], 'native/build.rs': files['native/build.rs'],
      'native/csrc/twice.c': files['native/csrc/twice.c'], 'native/src/lib.rs': files['native/src/lib.rs'],
      'app/Cargo.toml': '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\nnative = { path = "../native" }\n',
      'app/src/main.rs': 'fn main() { println!("{}", native::doubled(21)); }\n'
    })
    const env: NodeJS.ProcessEnv = {
      ...one.env, CARGO_HOME: cargoHome, CARGO_TARGET_DIR: join(dir, 'target'), CARGO_INCREMENTAL: '0',
      RUSTC_WRAPPER: MESHCC, CC: `${MESHCC} ${masq}/cc`, CXX: `${MESHCC} ${masq}/c++`, PATH: `${masq}:${process.env.PATH}`
    }
    const r = await runCommand(cargo, ['build', '--offline', '-j2'], { cwd: dir, env, timeoutMs: 240_000 })
    assert.equal(r.signal, null, 'the build hung and was killed')
    assert.equal(r.code, 0, r.stderr)
    const run = await runCommand(join(dir, 'target', 'debug', 'app'), [])
    assert.equal(run.stdout, '42\n')
    const s = await one.stats()
    assert.ok(s.compile_requests > 0)
    assert.equal(s.fallbacks, 0, JSON.stringify(s.fallback_reasons))
    // the C compile of the build script went through the daemon as a cached compile
    assert.ok((s as unknown as { families: Record<string, { counters: Record<string, number> }> }).families.c.counters.cache_misses >= 1)
  } finally {
    await one.stop()
  }
})
