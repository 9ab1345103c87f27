// The shared cache end to end, with real daemons on 127.0.0.1 (each its own config dir, one mesh
// key) driven by real builds: A builds a C++ CMake project (Debug, without -g), B with an empty
// cache gets its units from the mesh, byte-identical to a plain compile; B's build with A killed
// halfway stays green; a member answering with garbage signatures has its entries refused;
// verify_rate = 1.0 catches a builder returning a wrong object and distrusts it; Redis and nginx
// WebDAV as the second tier give hits to a member with nothing in the mesh, and a dead store
// costs no build. A builds in one checkout, B in another at a different absolute path and depth
// (a CI workspace and a developer's tree): without -g every unit is shared as it is; with -g the
// build's own -ffile-prefix-map=<checkout>=. (the README's opt-in) makes it shared, and B's
// verification of those hits (verify_rate = 1.0) finds A honest.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInstance, haveCommand, MESHCC, runCommand, writeTree, type Instance } from './helpers/meshcc.js'
import { status, startMeshDaemon, waitFor } from './helpers/mesh-daemons.js'
import { assertSameFiles, snapshot } from './helpers/compare.js'
import { startNginxDav, startRedis, stopStores, stopped } from './helpers/stores.js'
import { generateMeshKey, writeMeshKey } from '../src/mesh/keys.js'
import { startMesh, type Mesh } from '../src/mesh/mesh.js'
import { DEFAULT_VERIFY_RATE, loadConfig } from '../src/config.js'
import { silentLogger } from '../src/log.js'
import { sealEntry } from '../src/cache/signed-entry.js'
import { putEntry, serveCacheExchange } from '../src/mesh/protocols/cache-exchange.js'
import { sharedIdentity } from '../src/daemon/shared-identity.js'

const skip = !haveCommand('cmake') || !haveCommand('ninja') ? 'cmake or ninja missing' : false
const all: Instance[] = []
const meshes: Mesh[] = []
let keyFile = ''
let A: Instance, B: Instance, C: Instance
/** A's checkout (and the one the other members use); B's, deeper, elsewhere; each builds in <checkout>/build */
let src = ''
let srcB = ''
const build = (root = src) => join(root, 'build')
const objDir = (root = src) => join(build(root), 'CMakeFiles', 'app.dir', 'src')
const UNITS = 10

function daemon(name: string, o: { build?: string; cache?: string; bootstrap?: string[]; mesh?: boolean }): Instance {
  const meshToml = o.mesh === false ? null
    : `listen = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\nkey_file = "${keyFile}"\nname = "${name}"\nbootstrap = ${JSON.stringify(o.bootstrap ?? [])}`
  const i = createInstance(`[build]\n${o.build ?? ''}`, name, meshToml)
  writeFileSync(i.conf, readFileSync(i.conf, 'utf8').replace('[cache]\n', `[cache]\n${o.cache ?? ''}`))
  // this shared 2-core machine measures loopback RTTs of 100 ms and more under load
  i.env.MESHCC_SHARED_LINK_MS = '3000'
  i.env.MESHCC_SHARED_BUDGET_MS = '5000'
  all.push(i)
  return i
}

/** `units` small C++ units sharing headers; `variant` changes every unit (new keys). */
function writeProject(root: string, units: number): void {
  const files: Record<string, string> = {
    'include/common.hpp': '#pragma once\n#include <string>\n#include <vector>\n#ifndef VARIANT\n#define VARIANT 1\n#endif\nstd::string name_of(int i);\n',
    'CMakeLists.txt': 'cmake_minimum_required(VERSION 3.16)\nproject(shared CXX)\nset(CMAKE_CXX_STANDARD 17)\n' +
      `add_executable(app ${Array.from({ length: units }, (_, i) => `src/u${i}.cpp`).join(' ')} src/main.cpp)\ntarget_include_directories(app PRIVATE include)\n`,
    'src/main.cpp': '#include <iostream>\n#include "common.hpp"\n' + Array.from({ length: units }, (_, i) => `int u${i}(int);\n`).join('') +
      `int main() { int s = 0;\n${Array.from({ length: units }, (_, i) => `  s += u${i}(${i});\n`).join('')}  std::cout << s << " " << name_of(s) << "\\n"; }\n`
  }
  for (let i = 0; i < units; i++) {
    files[`src/u${i}.cpp`] = `#include "common.hpp"\n${i === 0 ? 'std::string name_of(int i) { return "n" + std::to_string(i); }\n' : ''}` +
      `int u${i}(int x) { std::vector<int> v(x + ${i}, VARIANT); int s = 0; for (int y : v) s += y * ${i + 1}; return s; }\n`
  }
  writeTree(root, files)
}

/** The CMake configure step (Debug; `$ROOT` in `cxxFlags` is the checkout), with meshcc as the launcher when `env` is a member's. */
async function cmakeConfigure(env: NodeJS.ProcessEnv | null, cxxFlags: string, root = src): Promise<void> {
  const c = await runCommand('cmake', ['-S', root, '-B', build(root), '-G', 'Ninja', '-DCMAKE_CXX_COMPILER=g++', '-DCMAKE_BUILD_TYPE=Debug',
    `-DCMAKE_CXX_FLAGS_DEBUG=${/(^| )-g( |$)/.test(cxxFlags) ? '-g ' : ''}-O0`, `-DCMAKE_CXX_FLAGS=${cxxFlags.replaceAll('$ROOT', root)}`,
    ...(env ? [`-DCMAKE_CXX_COMPILER_LAUNCHER=${MESHCC}`] : [])], { env: env ?? process.env })
  assert.equal(c.code, 0, c.stdout + c.stderr)
}

/** A clean configure and build of the checkout at `root`, or just `targets` in its configured build directory. */
async function cmakeBuild(env: NodeJS.ProcessEnv | null, cxxFlags: string, targets: string[] = [], root = src): Promise<void> {
  if (targets.length === 0) {
    rmSync(build(root), { recursive: true, force: true })
    await cmakeConfigure(env, cxxFlags, root)
  }
  const r = await runCommand('ninja', ['-C', build(root), '-j2', ...targets], { env: env ?? process.env, timeoutMs: 240_000 })
  assert.equal(r.code, 0, r.stdout + r.stderr)
}

/** A plain build's objects and depfiles (no meshcc) at `root`, kept aside for comparison. */
async function plainObjects(cxxFlags: string, root = src): Promise<Map<string, Buffer>> {
  await cmakeBuild(null, cxxFlags, [], root)
  const objs = snapshot(objDir(root), ['.o', '.d'])
  rmSync(build(root), { recursive: true, force: true })
  return objs
}

const shared = async (i: Instance) => (await status(i)).shared!
const counters = async (i: Instance) => await i.stats() as unknown as Record<string, number>

/** Every daemon sees the others directly with a measured RTT (the mesh cache asks only those). */
async function linked(members: Instance[], others: number): Promise<void> {
  for (const m of members) {
    await waitFor(`${m.dir} to see ${others} members with a measured link`, async () => {
      const s = await status(m)
      return s.mesh!.members.filter((x) => !x.self && x.connection === 'direct' && x.rtt_ms !== null).length >= others ? true : undefined
    }, 30_000)
  }
}

/**
 * Run `build` on `i`, which must compile all `units` (a unit its cache already holds is a hit and
 * publishes nothing: each test gives A a variant no earlier test built), then wait until the
 * entries it published have gone out: at least one per unit (a C++ unit goes out under its content
 * key and in depend form, three entries), and the count of pushes to owners steady for two seconds
 * (bounded: a minute).
 */
async function buildAndPublish(i: Instance, units: number, build: () => Promise<void>): Promise<void> {
  const base = (await shared(i)).mesh!
  const c0 = await counters(i)
  await build()
  const c = await counters(i)
  const compiled = c.local_compiles + c.remote_compiles - c0.local_compiles - c0.remote_compiles
  if (compiled < units) throw new Error(`${i.dir}'s build compiled ${compiled} of ${units} units (the rest were hits: an earlier test built this variant), so it has nothing new to publish`)
  let last = -1
  let steadySince = Date.now()
  for (const deadline = Date.now() + 60_000; ;) {
    const m = (await shared(i)).mesh!
    if (m.entries_pushed !== last) { last = m.entries_pushed; steadySince = Date.now() }
    if (m.entries_published - base.entries_published >= units && Date.now() - steadySince >= 2000) return
    if (Date.now() > deadline) throw new Error(`publishing did not settle: ${JSON.stringify(m)}`)
    await new Promise((r) => setTimeout(r, 250))
  }
}

before(async () => {
  if (skip) return
  const keyDir = createInstance('', 'sh-key')
  all.push(keyDir)
  keyFile = join(keyDir.dir, 'mesh.key')
  writeMeshKey(keyFile, generateMeshKey())
  src = join(keyDir.dir, 'checkout')
  srcB = join(keyDir.dir, 'home', 'dev', 'src', 'proj')
  writeProject(src, UNITS)
  writeProject(srcB, UNITS)
  // A and B build only here; C is the mesh's builder (and an owner like the others)
  A = daemon('sh-a', { build: 'offer = "never"', cache: 'shared_size = "64M"\n' })
  const boot = (await startMeshDaemon(A)).mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
  B = daemon('sh-b', { build: 'offer = "never"', cache: 'shared_size = "64M"\n', bootstrap: boot })
  C = daemon('sh-c', { build: 'local_slots = 2\ncores = 2', cache: 'shared_size = "64M"\n', bootstrap: boot })
  await startMeshDaemon(B)
  await startMeshDaemon(C)
  await linked([A, B, C], 2)
})

after(async () => {
  for (const i of all) await i.stop()
  await Promise.all(meshes.map((m) => m.stop()))
  await stopStores()
})

/** B's mesh hits while `build` runs, which must be at least 90 % of the project's units. */
async function meshHitsOnB(build: () => Promise<void>): Promise<number> {
  const before = await counters(B)
  await build()
  const b = await counters(B)
  const hits = b.mesh_hits - before.mesh_hits
  assert.ok(hits >= Math.ceil(0.9 * (UNITS + 1)), `mesh hits ${hits} of ${UNITS + 1} units: ${JSON.stringify(b)}; B's mesh cache: ${JSON.stringify((await shared(B)).mesh)}`)
  return hits
}

test('B, its cache empty, gets a CMake project A built at another path from the mesh: >= 90 % mesh hits, objects and depfiles byte-identical to a plain build at B\'s path', { timeout: 300_000, skip }, async () => {
  const plain = await plainObjects('', srcB)
  await buildAndPublish(A, UNITS + 1, () => cmakeBuild(A.env, ''))
  const a = await counters(A)
  assert.ok(a.local_compiles + a.remote_compiles >= UNITS + 1, JSON.stringify(a))
  const hits = await meshHitsOnB(() => cmakeBuild(B.env, '', [], srcB))
  assertSameFiles(snapshot(objDir(srcB), ['.o', '.d']), plain, 'B\'s build from the mesh')
  assert.equal((await runCommand(join(build(srcB), 'app'), [])).code, 0)
  // what -s and status show
  const s = await shared(B)
  assert.ok(s.mesh!.remote_hits >= hits, JSON.stringify(s.mesh))
  const text = (await B.run(['-s'])).stdout
  assert.match(text, new RegExp(`from the mesh\\s+${(await counters(B)).mesh_hits}\\n`))
  assert.match(text, /Entries served to others\s+\d+/)
  const st = await A.run(['status'])
  assert.match(st.stdout, /shared cache: \d+ hits from the mesh/)
  assert.match(st.stdout, /entries published, \d+ served to others/)
  const served = (await shared(A)).mesh!.entries_served + (await shared(C)).mesh!.entries_served
  assert.ok(served >= 1, 'A and C served entries to B')
})

test('D, its cache empty, building at the path A built (CI runners share paths) finds A\'s units through A\'s manifests: no unit preprocessed, byte-identical', { timeout: 300_000, skip }, async () => {
  const boot = (await status(A)).mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
  // verify_rate = 1.0: every hit found through a manifest is recompiled here and compared
  const D = daemon('sh-d', { build: 'offer = "never"', cache: 'shared_size = "64M"\nverify_rate = 1.0\n', bootstrap: boot })
  await startMeshDaemon(D)
  await linked([D], 3)
  // A builds a variant of its own (every unit a new key; the variants 2 and 3 belong to the tests
  // below, which need A to compile them afresh) and publishes each result in depend form too
  await buildAndPublish(A, UNITS + 1, () => cmakeBuild(A.env, '-DVARIANT=4'))
  const plain2 = await plainObjects('-DVARIANT=4', src)
  const before = await counters(D)
  await cmakeBuild(D.env, '-DVARIANT=4')
  const d = await counters(D)
  const viaManifest = d.shared_manifest_hits - before.shared_manifest_hits
  assert.ok(viaManifest >= Math.ceil(0.9 * (UNITS + 1)), `hits through A's manifests ${viaManifest} of ${UNITS + 1}: ${JSON.stringify(d)}`)
  assertSameFiles(snapshot(objDir(src), ['.o', '.d']), plain2, 'D\'s build through A\'s manifests')
  const v = await waitFor('D\'s verifications', async () => {
    const v = (await shared(D)).verifier
    return v.verifications + v.verify_skipped + v.verify_dropped >= viaManifest ? v : undefined
  }, 180_000)
  assert.ok(v.verifications >= viaManifest, `every manifest hit verified: ${JSON.stringify(v)}`)
  assert.equal(v.verify_mismatches, 0)
})

/** Set B's [cache] verify_rate through a config reload; null puts the default back. */
async function verifyRateOnB(rate: number | null): Promise<void> {
  const conf = readFileSync(B.conf, 'utf8').replace(/verify_rate = .*\n/, '')
  writeFileSync(B.conf, rate === null ? conf : conf.replace('[cache]\n', `[cache]\nverify_rate = ${rate.toFixed(2)}\n`))
  const want = rate ?? DEFAULT_VERIFY_RATE
  await waitFor(`B's verify_rate ${want} after a reload`, async () => ((await shared(B)).verify_rate === want ? true : undefined), 20_000)
}

test('with -g under the opt-in (-ffile-prefix-map=<checkout>=. on both sides), B at its own path gets A\'s units from the mesh, byte-identical; verify_rate = 1.0 on B finds nobody dishonest', { timeout: 300_000, skip }, async () => {
  const flags = '-g -ffile-prefix-map=$ROOT=.'
  const plain = await plainObjects(flags, srcB)
  await buildAndPublish(A, UNITS + 1, () => cmakeBuild(A.env, flags))
  await verifyRateOnB(1)
  try {
    const v0 = (await shared(B)).verifier
    const hits = await meshHitsOnB(() => cmakeBuild(B.env, flags, [], srcB))
    assertSameFiles(snapshot(objDir(srcB), ['.o', '.d']), plain, 'B\'s -g build from the mesh')
    // every hit recompiled here in the background and compared: none is a mismatch
    const v = await waitFor('B to verify its mesh hits', async () => {
      const v = (await shared(B)).verifier
      return v.verifications + v.verify_skipped + v.verify_dropped - (v0.verifications + v0.verify_skipped + v0.verify_dropped) >= hits ? v : undefined
    }, 180_000)
    assert.equal(v.verify_mismatches, v0.verify_mismatches, `hits from another checkout are not mismatches: ${JSON.stringify(v)}`)
    assert.ok(v.verifications - v0.verifications >= hits, `every hit verified: ${JSON.stringify(v)}`)
    const distrusted = (await B.run(['mesh', 'distrusted'])).stdout
    for (const m of [A, C]) assert.doesNotMatch(distrusted, new RegExp((await status(m)).mesh!.peer_id))
  } finally {
    await verifyRateOnB(null)
  }
})

test('B\'s build with A killed halfway stays green, its objects byte-identical', { timeout: 300_000, skip }, async () => {
  const plain = await plainObjects('-DVARIANT=2', srcB)
  await buildAndPublish(A, UNITS + 1, () => cmakeBuild(A.env, '-DVARIANT=2'))
  rmSync(build(srcB), { recursive: true, force: true })
  // the first half of the units, then A dies (SIGKILL: no goodbye), then the rest; the other
  // owners (B itself, C) hold A's entries
  await meshHitsOnB(async () => {
    await cmakeConfigure(B.env, '-DVARIANT=2', srcB)
    const half = Array.from({ length: UNITS / 2 }, (_, i) => `CMakeFiles/app.dir/src/u${i}.cpp.o`)
    await cmakeBuild(B.env, '', half, srcB)
    const pid = A.daemonPid()!
    process.kill(pid, 'SIGKILL')
    await cmakeBuild(B.env, '', ['all'], srcB)
  })
  assertSameFiles(snapshot(objDir(srcB), ['.o', '.d']), plain, 'B\'s build with A killed halfway')
})

test('Rust crates (RUSTC_WRAPPER=meshcc) C built are mesh hits for B, outputs byte-identical to a plain cargo build', { timeout: 300_000, skip }, async () => {
  const { findCargo, offlineCargoHome, filesIn } = await import('./helpers/cargo.js')
  const { cargo } = findCargo()
  const ws = join(C.dir, 'ws')
  const pkg = (name: string, deps = '') => `[package]\nname = "${name}"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\n${deps}\n`
  writeTree(ws, {
    'Cargo.toml': '[workspace]\nmembers = ["base", "mid", "app"]\nresolver = "2"\n',
    'base/Cargo.toml': pkg('base'), 'base/src/lib.rs': 'pub fn base(x: u32) -> u32 { x * 3 + 1 }\n',
    'mid/Cargo.toml': pkg('mid', 'base = { path = "../base" }'), 'mid/src/lib.rs': 'pub fn mid(x: u32) -> String { format!("mid {}", base::base(x)) }\n',
    'app/Cargo.toml': pkg('app', 'mid = { path = "../mid" }'), 'app/src/main.rs': 'fn main() { println!("{}", mid::mid(4)); }\n'
  })
  const cargoHome = offlineCargoHome(join(C.dir, 'cargo-home'))
  const cargoBuild = async (i: Instance | null) => {
    rmSync(join(ws, 'target'), { recursive: true, force: true })
    const env: NodeJS.ProcessEnv = { ...(i?.env ?? process.env), CARGO_HOME: cargoHome, CARGO_TARGET_DIR: join(ws, 'target'), CARGO_INCREMENTAL: '0', CARGO_TERM_COLOR: 'never' }
    delete env.RUSTC_WRAPPER
    if (i) env.RUSTC_WRAPPER = MESHCC
    const r = await runCommand(cargo, ['build', '--offline'], { cwd: ws, env, timeoutMs: 240_000 })
    assert.equal(r.code, 0, r.stderr)
    return filesIn(join(ws, 'target', 'debug', 'deps'))
  }
  const rustHits = async (i: Instance) => ((await i.stats()) as unknown as { families: Record<string, { counters: Record<string, number> }> }).families.rust?.counters.mesh_hits ?? 0
  const plain = await cargoBuild(null)
  const cBase = (await shared(C)).mesh!
  await cargoBuild(C)
  await waitFor('C\'s crates published', async () => {
    const m = (await shared(C)).mesh!
    return m.entries_published - cBase.entries_published >= 4 && m.entries_pushed - cBase.entries_pushed >= 4 ? true : undefined
  }, 30_000)
  await new Promise((r) => setTimeout(r, 1500))
  const before = await rustHits(B)
  const got = await cargoBuild(B)
  assert.ok((await rustHits(B)) - before >= 2, `the two library crates are mesh hits (${JSON.stringify((await B.stats() as unknown as { families: unknown }).families)})`)
  assert.deepEqual([...got.keys()], [...plain.keys()])
  for (const [name, data] of plain) assert.ok(got.get(name)!.equals(data), `${name} differs from the plain build's`)
})

test('a member whose entries carry garbage signatures has them refused; the build stays byte-identical', { timeout: 300_000, skip }, async () => {
  // F: an in-process member with the mesh key, holding entries for others, answering every
  // lookup with an entry whose signature is garbage, and pushing such entries to the others
  const fdir = join(A.dir, 'forger')
  mkdirSync(fdir)
  const fconf = join(fdir, 'config.toml')
  const boot = (await status(C)).mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
  writeFileSync(fconf, ['[cache]', `dir = "${join(fdir, 'cache')}"`, '[mesh]', 'listen = ["/ip4/127.0.0.1/tcp/0"]', `bootstrap = ${JSON.stringify(boot)}`,
    'mdns = false', 'dht = false', `key_file = "${keyFile}"`, 'name = "forger"', ''].join('\n'))
  const fconfig = loadConfig({ MESHCC_CONF: fconf, HOME: fdir })
  const F = await startMesh({
    config: fconfig, log: silentLogger, version: '9.9.9',
    getLoad: () => ({ cores: 2, running: 0, queued: 0, freeSlots: 0, load1: 0, speed: 1, toolchains: [], accept: 'never', shim: false, sharesCache: true })
  })
  meshes.push(F)
  const { signer } = await sharedIdentity(fconfig, silentLogger)
  const forged = async (key: string) => {
    const blob = await sealEntry({ exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), outputs: [{ name: 'obj', data: Buffer.from('forged') }] }, key, signer)
    blob[30] ^= 0xff // inside the signature
    return blob
  }
  let asked = 0
  await serveCacheExchange(F.libp2p, F.meshId, {
    isAllowed: () => true,
    get: async (_peer, key) => { asked++; return { blob: await forged(key), next: null } },
    admitPut: () => null, put: async () => null
  }, () => {}, { maxEntryBytes: 1024 * 1024 })
  await waitFor('B to see F directly', async () => ((await status(B)).mesh!.members.some((m) => m.peer_id === F.peerId && m.connection === 'direct' && m.rtt_ms !== null) ? true : undefined))
  const bId = (await status(B)).mesh!.peer_id
  const pushed = await putEntry(F.libp2p, F.meshId, bId, 'ab'.repeat(32), await forged('ab'.repeat(32)), AbortSignal.timeout(10_000))
  assert.equal(pushed.kind, 'refused', 'B does not hold a forged entry for the others')

  // new units nobody built: F owns about half of them, and answers each lookup with a forgery
  const plain = await plainObjects('-DVARIANT=3')
  const before = await counters(B)
  await cmakeBuild(B.env, '-DVARIANT=3')
  assertSameFiles(snapshot(objDir(), ['.o', '.d']), plain, 'B\'s build while F forges')
  const b = await counters(B)
  assert.equal(b.mesh_hits - before.mesh_hits, 0, 'nothing taken from F')
  const s = await shared(B)
  const view = (await status(B)).mesh!.members.map((m) => `${m.name} ${m.connection} ${m.rtt_ms}`).join(', ')
  assert.ok(asked > 0, `F was asked (B's view: ${view}; B's mesh cache: ${JSON.stringify(s.mesh)})`)
  assert.ok(s.mesh!.failures.signature >= 1, JSON.stringify(s.mesh!.failures))
  assert.ok(s.mesh!.entries_refused_for_others >= 1, JSON.stringify(s.mesh))
  await F.stop()
})

test('verify_rate = 1.0 catches a builder that returns a wrong object, distrusts it, and keeps the wrong object out of every cache', { timeout: 300_000, skip }, async () => {
  // The hostile builder's compiler: the client's toolchain with an assembler that appends
  // garbage to every object (shipped as a configured toolchain archive, which C runs).
  const { discoverToolchain } = await import('../src/toolchain/discover.js')
  const { packToolchain } = await import('../src/toolchain/pack.js')
  const tdir = join(A.dir, 'bad-tc')
  mkdirSync(join(tdir, 'root'), { recursive: true })
  const spec = await discoverToolchain('/usr/bin/cc', 'gcc')
  const packed = await packToolchain({ ...spec, files: [...spec.files, '/usr/bin/dash'] }, tdir)
  assert.equal((await runCommand('tar', ['-xzf', packed.archive, '-C', join(tdir, 'root')])).code, 0)
  const as = join(tdir, 'root/usr/bin/as')
  const realAs = readlinkSync(as)
  rmSync(as)
  writeFileSync(as, `#!/usr/bin/dash\n/usr/bin/${realAs} "$@" || exit 1\nout=\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done\nprintf 'GARBAGE' >> "$out"\n`, { mode: 0o755 })
  const bad = join(tdir, 'bad.tar.gz')
  assert.equal((await runCommand('tar', ['--owner=0', '--group=0', '-czf', bad, '-C', join(tdir, 'root'), '.'])).code, 0)

  const boot = (await status(C)).mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
  const V = daemon('sh-v', { build: `local_slots = 0\ncores = 0\noffer = "never"\ntoolchain_archives = { "/usr/bin/cc" = "${bad}" }`, cache: 'verify_rate = 1.0\nshared_size = 0\n', bootstrap: boot })
  await startMeshDaemon(V)
  const cId = (await status(C)).mesh!.peer_id
  await waitFor('C with room in V\'s view', async () => ((await status(V)).mesh!.members.some((m) => m.peer_id === cId && m.free_slots > 0) ? true : undefined))
  const dir = join(V.dir, 'w')
  mkdirSync(dir)
  writeFileSync(join(dir, 'x.c'), 'int x(int a) { return a * 41; }\n')
  writeFileSync(join(dir, 'y.c'), 'int y(int a) { return a * 43; }\n')
  for (const u of ['x', 'y']) assert.equal((await runCommand('/usr/bin/cc', ['-O2', '-c', `${u}.c`, '-o', `plain-${u}.o`], { cwd: dir })).code, 0)

  const r = await V.run(['/usr/bin/cc', '-O2', '-c', 'x.c', '-o', 'x.o'], { cwd: dir })
  assert.equal(r.code, 0, r.stderr)
  assert.equal((await counters(V)).remote_compiles, 1, 'compiled on C')
  const s = await waitFor('the verification', async () => { const v = (await shared(V)).verifier; return v.verifications >= 1 ? v : undefined })
  assert.equal(s.verify_mismatches, 1)
  const listed = await V.run(['mesh', 'distrusted'])
  assert.match(listed.stdout, new RegExp(cId))
  assert.match(readFileSync(join(V.dir, 'distrusted.json'), 'utf8'), new RegExp(cId))
  assert.equal((await shared(V)).mesh!.entries_published, 0, 'the wrong result was not published')
  // the cache here now holds the verified object: x.c again is a hit with the right bytes
  rmSync(join(dir, 'x.o'))
  assert.equal((await V.run(['/usr/bin/cc', '-O2', '-c', 'x.c', '-o', 'x.o'], { cwd: dir })).code, 0)
  assert.ok(readFileSync(join(dir, 'x.o')).equals(readFileSync(join(dir, 'plain-x.o'))), 'the local compile\'s object replaced the wrong one')
  // and C gets no more jobs from V
  assert.equal((await V.run(['/usr/bin/cc', '-O2', '-c', 'y.c', '-o', 'y.o'], { cwd: dir })).code, 0)
  assert.ok(readFileSync(join(dir, 'y.o')).equals(readFileSync(join(dir, 'plain-y.o'))))
  assert.equal((await counters(V)).remote_compiles, 1, 'no job sent to the distrusted builder')
  const text = (await V.run(['status'])).stdout
  assert.match(text, /verification: 100 % of remote results; 1 verified, 1 mismatches/)
  await V.stop()
})

test('Redis and nginx WebDAV as the second tier: hits for a member with nothing in the mesh; a dead store costs no build', { timeout: 300_000, skip }, async () => {
  const redis = await startRedis(A.dir, 'pw')
  const nginx = await startNginxDav(A.dir)
  // two members outside the mesh: only the tier connects them
  const W = daemon('sh-w', { cache: `remote = "${redis.url}"\n`, mesh: false })
  const R = daemon('sh-r', { cache: `remote = "${redis.url}"\n`, mesh: false })
  const dir = join(A.dir, 'tier')
  mkdirSync(dir)
  const units = ['t0', 't1', 't2', 't3']
  const source = (u: string) => `#include <string.h>\nint ${u}(const char *s) { return (int)strlen(s) + ${u.length}; }\n`
  for (const u of units) writeFileSync(join(dir, `${u}.c`), source(u))
  for (const u of units) assert.equal((await runCommand('gcc', ['-O1', '-c', `${u}.c`, '-o', `plain-${u}.o`], { cwd: dir })).code, 0)
  let written = 0
  /** `fresh`: each source saved again just before its compile, as in an edit-compile loop */
  const compileAll = async (i: Instance, fresh = false) => {
    for (const u of units) {
      if (fresh) {
        writeFileSync(join(dir, `${u}.c`), source(u))
        written = Date.now()
      }
      const r = await i.run(['gcc', '-O1', '-c', `${u}.c`, '-o', `${u}.o`], { cwd: dir })
      assert.equal(r.code, 0, r.stderr)
      assert.ok(readFileSync(join(dir, `${u}.o`)).equals(readFileSync(join(dir, `plain-${u}.o`))), `${u}.o is what gcc makes`)
    }
  }
  const tierOf = async (i: Instance) => (await status(i)).shared?.tier ?? null
  for (const [store, name] of [[redis, 'redis'], [nginx, 'nginx']] as const) {
    if (store === nginx) {
      // a reloaded config moves both members to the HTTP store
      for (const i of [W, R]) {
        writeFileSync(i.conf, readFileSync(i.conf, 'utf8').replace(redis.url, nginx.url))
        await waitFor(`${name} as the tier after a reload`, async () => ((await tierOf(i))?.tier.startsWith('http://127.0.0.1') ? true : undefined), 20_000)
      }
      for (const i of [W, R]) assert.equal((await i.run(['-C'])).code, 0)
    }
    // for redis W's sources are saved as it compiles them: too new to vouch for, so it publishes
    // pointers (its file hashes naming the preprocessed key); for nginx they are older and W
    // compiles in depend mode, publishing depend forms. Two entries per unit either way.
    const wrote = store === redis ? 0 : (await tierOf(W))!.tier_writes // (W's daemon starts with its first compile)
    await compileAll(W, store === redis)
    await waitFor(`W's entries written to ${name}`, async () => ((await tierOf(W))!.tier_writes >= wrote + 2 * units.length ? true : undefined), 20_000)
    // R compiles in depend mode (its sources over a second old) and asks by the direct key only
    await new Promise((r) => setTimeout(r, Math.max(0, written + 1100 - Date.now())))
    const before = await counters(R)
    await compileAll(R)
    const after = await counters(R)
    assert.equal(after.tier_hits - before.tier_hits, units.length, `${name}: every unit a tier hit (${JSON.stringify(after)})`)
    assert.equal(after.shared_manifest_hits - before.shared_manifest_hits, units.length, `${name}: found by the direct key`)
    assert.equal(after.local_compiles, before.local_compiles)
    assert.match((await R.run(['-s'])).stdout, new RegExp(`from the second tier\\s+${after.tier_hits}\\n`))
    // the store dies: R's next build (cache cleared) compiles, counts the failure, fails nothing
    await stopped(store.process)
    assert.equal((await R.run(['-C'])).code, 0)
    await compileAll(R)
    const t = (await tierOf(R))!
    assert.ok(t.tier_failures.error + t.tier_failures.timeout >= 1, JSON.stringify(t))
    assert.equal((await counters(R)).tier_hits, after.tier_hits)
  }
})
