// Hedging a rustc job (issue #16, item 4), with real daemons on loopback, a real builder
// (bubblewrap) and the real rustc from ~/.cargo/bin, its toolchain shipped to the builder by
// content. The builder is made slow by a real cause: its rustc (inside the sandbox) is frozen
// with SIGSTOP once the job runs there (helpers/freeze.ts), so the builder daemon stays alive
// and in the view and the job simply does not finish. A client with a free local slot must
// compile the crate here too once it has run longer on the builder than rustc jobs usually do
// there, take that result (exit code, stdout, stderr and every output, the .d included, byte
// for byte a plain rustc's), count it as a hedge, and the builder's late end must change
// nothing: not the outputs written, not the cache entry, not the builder's next job.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { runCommand, type Instance } from './helpers/meshcc.js'
import { status, waitFor } from './helpers/mesh-daemons.js'
import { assertHedgeWonHere, startDistMesh, startSlowClient, type DistMesh } from './helpers/dist-mesh.js'
import { filesIn, findCargo, toolchainRustc } from './helpers/cargo.js'
import { Freezer, ended } from './helpers/freeze.js'

const rustc = toolchainRustc(findCargo().rustc)
let mesh: DistMesh
let builder: Instance
/** local_slots = 1 and a speed score far below the builder's: misses go to the builder while its slot is free */
let hedger: Instance
const freezer = new Freezer()

before(async () => {
  mesh = await startDistMesh('rhedge', 1, 'speed = 1000')
  builder = mesh.builders[0]!
  hedger = await startSlowClient(mesh, builder, 'rhedge-local1')
})
after(async () => {
  freezer.thaw()
  await mesh?.stop()
})

/** rustc's arguments as cargo gives them for a library crate, at -O2 (a crate that keeps rustc busy for a moment) */
function crateArgs(name: string, out: string): string[] {
  return ['--crate-name', name, '--edition=2021', `${name}.rs`, '--error-format=json', '--json=diagnostic-rendered-ansi,artifacts,future-incompat',
    '--crate-type', 'lib', '--emit=dep-info,metadata,link', '-C', 'opt-level=2', '-C', 'embed-bitcode=no',
    '-C', 'metadata=0123456789abcdef', '-C', 'extra-filename=-0123456789abcdef', '--out-dir', out]
}

/** A crate of generic code monomorphised many times; `seed` makes each one a miss. */
function writeCrate(dir: string, name: string, seed: number, fns: number): void {
  mkdirSync(dir, { recursive: true })
  const body = Array.from({ length: fns }, (_, i) =>
    `pub fn f${i}<T: Copy + Into<u64>>(xs: &[T]) -> u64 { xs.iter().enumerate().fold(${seed + i}u64, |s, (j, x)| { let v: u64 = (*x).into(); if (s ^ v) % ${(i % 7) + 2} == 0 { s.rotate_left(${i % 13}) ^ v } else { s.wrapping_mul(${i * 31 + 7}).wrapping_add(v + j as u64) } }) }\n` +
    `pub fn g${i}(a: &[u8], b: &[u16], c: &[u32]) -> u64 { f${i}(a) ^ f${i}(b) ^ f${i}(c) }`)
  writeFileSync(join(dir, `${name}.rs`), `${body.join('\n')}\n`)
}

/** rustc's own result for the crate in `dir`: its exit, streams and every file of its out dir (emptied first) */
async function plainRustc(dir: string, name: string): Promise<{ code: number | null; stdout: Buffer; stderr: string; files: Map<string, Buffer> }> {
  const out = join(dir, 'out')
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out)
  const r = await runCommand(rustc, crateArgs(name, out), { cwd: dir })
  assert.equal(r.code, 0, r.stderr)
  const files = filesIn(out)
  rmSync(out, { recursive: true })
  mkdirSync(out)
  return { code: r.code, stdout: r.stdoutBuf, stderr: r.stderr, files }
}

/** every file of `dir` with its modification time */
function mtimes(dir: string): Map<string, number> {
  return new Map(readdirSync(dir).sort().map((n) => [n, statSync(join(dir, n)).mtimeMs]))
}

test('a rustc job stuck on a slow builder is compiled here too once a local slot is free, and the result here is taken', { timeout: 600_000 }, async () => {
  const dir = join(hedger.dir, 'crates')
  // Small crates until one compiled on the builder: the first ships the toolchain (which the
  // hedge may beat), and the client then has a usual rustc job time there.
  let warmed = false
  for (let n = 0; n < 4 && !warmed; n++) {
    writeCrate(dir, `warm${n}`, n, 2)
    mkdirSync(join(dir, 'out'), { recursive: true })
    const before = await hedger.stats()
    const r = await hedger.run([rustc, ...crateArgs(`warm${n}`, join(dir, 'out'))], { cwd: dir, timeoutMs: 300_000 })
    assert.equal(r.code, 0, r.stderr)
    warmed = (await hedger.stats()).remote_compiles - before.remote_compiles === 1
  }
  assert.ok(warmed, `no warm-up crate compiled on the builder: ${JSON.stringify(await hedger.stats())}`)

  writeCrate(dir, 'slow', 1000, 40)
  const want = await plainRustc(dir, 'slow')
  const out = join(dir, 'out')
  const before = await hedger.stats()
  try {
    const freezing = freezer.freezeUnder(builder.daemonPid()!, 'rustc')
    // without a hedge this waits for the frozen builder until the run's own timeout ends it
    const got = await hedger.run([rustc, ...crateArgs('slow', out)], { cwd: dir, timeoutMs: 120_000 })
    const frozen = await freezing
    assert.equal(got.code, want.code, `the compile finished (${got.signal ?? ''}): ${got.stderr}`)
    assert.ok(got.stdoutBuf.equals(want.stdout), 'stdout (cargo\'s JSON artifacts) as rustc gives it')
    assert.equal(got.stderr, want.stderr)
    const files = filesIn(out)
    assert.deepEqual([...files.keys()], [...want.files.keys()])
    for (const [name, data] of want.files) assert.ok(files.get(name)!.equals(data), `${name} is what rustc makes`)
    assert.ok(files.has('slow-0123456789abcdef.d'), `the dep-info was written: ${[...files.keys()].join(' ')}`)

    const after = await hedger.stats()
    assertHedgeWonHere(before, after, 'rust')

    // the builder's late end: its rustc runs again; the client reset the job's stream, so the
    // builder stops the job (or finishes it into a closed stream). Nothing here may change.
    const written = mtimes(out)
    freezer.thaw()
    await waitFor('the builder\'s rustc for the abandoned job to end', async () => (ended(frozen) ? true : undefined), 60_000)
    await waitFor('the builder to have no job running', async () => ((await status(builder)).mesh!.builder.running === 0 ? true : undefined), 60_000)
    assert.deepEqual(mtimes(out), written, 'no output rewritten after the hedge won')
    for (const [name, data] of filesIn(out)) assert.ok(data.equals(want.files.get(name)!), `${name} unchanged`)
    assert.equal((await hedger.stats()).remote_compiles, after.remote_compiles, 'the late answer was not taken')
  } finally {
    freezer.thaw()
  }

  // the entry the hedge stored is rustc's result: a hit restores the same files
  rmSync(out, { recursive: true })
  mkdirSync(out)
  const h0 = await hedger.stats()
  const hit = await hedger.run([rustc, ...crateArgs('slow', out)], { cwd: dir, timeoutMs: 120_000 })
  assert.equal(hit.code, 0, hit.stderr)
  assert.equal((await hedger.stats()).cache_hits - h0.cache_hits, 1, 'the second run is a hit')
  assert.deepEqual(filesIn(out), want.files)

  // and the builder still compiles the next crate
  writeCrate(dir, 'next', 2000, 2)
  const r0 = await hedger.stats()
  const next = await hedger.run([rustc, ...crateArgs('next', out)], { cwd: dir, timeoutMs: 180_000 })
  assert.equal(next.code, 0, next.stderr)
  const r1 = await hedger.stats()
  assert.equal(r1.remote_compiles + r1.local_compiles - r0.remote_compiles - r0.local_compiles, 1)
})
