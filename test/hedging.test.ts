// Hedging a slow remote job, with real daemons on loopback, a real builder (bubblewrap) and
// real gcc. The builder is made slow by a real cause: its compiler process (cc1, inside the
// sandbox) is frozen with SIGSTOP once the job runs there, so the builder daemon stays alive,
// keeps the job's stream going with heartbeats and stays in the view, and the job simply does
// not finish (a builder that is slow, not one that is gone). A client with a local slot must
// compile the job here too once it has run longer than is usual on that builder, and take that
// result; a client with local_slots = 0 must not.
import { test, after, before } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { runCommand, type Instance, type RunResult } from './helpers/meshcc.js'
import { status, waitFor } from './helpers/mesh-daemons.js'
import { assertHedgeWonHere, startDistMesh, startSlowClient, type DistMesh } from './helpers/dist-mesh.js'
import { HEDGE_FACTOR, HEDGE_FLOOR_MS } from '../src/daemon/placement.js'
import { logFiles } from '../src/log.js'
import { Freezer, ended } from './helpers/freeze.js'

let mesh: DistMesh
let builder: Instance
/** local_slots = 0: every miss to the builder */
let noSlots: Instance
/** local_slots = 1 and a speed score far below the builder's: misses go to the builder while its slot is free */
let hedger: Instance
/** the builder's compilers this test froze, thawed again however a test ends */
const freezer = new Freezer()
const thaw = () => freezer.thaw()

before(async () => {
  // one builder, advertised far faster than the clients: the hedging client sends its misses there
  mesh = await startDistMesh('hedge', 1, 'speed = 1000')
  builder = mesh.builders[0]!
  noSlots = mesh.client
  hedger = await startSlowClient(mesh, builder, 'hedge-local1')
})
after(async () => {
  thaw()
  await mesh?.stop()
})

/** A unit that keeps cc1 busy for a moment at -O2 (long enough to be caught running); `seed` makes each one a miss. */
function writeSlowUnit(dir: string, name: string, seed: number): void {
  mkdirSync(dir, { recursive: true })
  const n = 60
  const fns = Array.from({ length: n }, (_, i) =>
    `int f${i}(int x){int s=${i + seed};for(int j=0;j<x;j++){s+=(j*${i + 3})%(j+${(i % 7) + 2});if(s>${i * 31 + 7})s^=j<<${i % 5};}return s;}`)
  writeFileSync(join(dir, name), `${fns.join('\n')}\nint all(int x){return ${fns.map((_, i) => `f${i}(x)`).join('+')};}\n`)
}

/**
 * Small remote compiles through `client` until one ran on the builder (the first ships the
 * toolchain, which a client with a local slot may hedge): the client has a usual job time
 * there. The wall time of the one that went remote.
 */
async function warmUp(client: Instance, dir: string): Promise<number> {
  mkdirSync(dir, { recursive: true })
  for (let n = 0; n < 4; n++) {
    writeFileSync(join(dir, `warm${n}.c`), `int warm_${n}(int x) { return x * ${n + 3}; }\n`)
    const before = await client.stats()
    const t0 = Date.now()
    const r = await client.run(['gcc', '-c', '-O2', `warm${n}.c`, '-o', `warm${n}.o`], { cwd: dir, timeoutMs: 180_000 })
    const took = Date.now() - t0
    assert.equal(r.code, 0, r.stderr)
    const after = await client.stats()
    if (after.remote_compiles - before.remote_compiles === 1) return took
  }
  const st = await status(client)
  const log = readFileSync(logFiles(client.cacheDir, client.socket).file, 'utf8').split('\n').slice(-40).join('\n')
  assert.fail(`no warm-up compiled on the builder (stats: ${JSON.stringify(await client.stats())}; view ${JSON.stringify(st.mesh?.members)})\n${log}`)
}

/**
 * slow.c compiled plainly (plain.o), then through `client` (slow.o) with the builder's cc1
 * frozen as soon as it runs: the run, and that cc1's pid once frozen.
 */
async function slowCompile(client: Instance, dir: string, seed: number): Promise<{ run: Promise<RunResult>; frozenCc1: number }> {
  writeSlowUnit(dir, 'slow.c', seed)
  const plain = await runCommand('gcc', ['-c', '-O2', 'slow.c', '-o', 'plain.o'], { cwd: dir })
  assert.equal(plain.code, 0, plain.stderr)
  const freezing = freezer.freezeUnder(builder.daemonPid()!, 'cc1')
  const run = client.run(['gcc', '-c', '-O2', 'slow.c', '-o', 'slow.o'], { cwd: dir, timeoutMs: 240_000 })
  return { run, frozenCc1: await freezing }
}

test('a client with a local slot compiles a job stuck on a slow builder here too and takes that result', { timeout: 400_000 }, async () => {
  const dir = join(hedger.dir, 'src')
  await warmUp(hedger, dir)
  const before = await hedger.stats()
  try {
    // without a hedge this waits for the frozen builder: the run's own timeout ends it
    const { run, frozenCc1: cc1 } = await slowCompile(hedger, dir, 1)
    const r = await run
    assert.equal(r.code, 0, `the compile finished (${r.signal ?? ''}): ${r.stderr}`)
    assert.ok(readFileSync(join(dir, 'slow.o')).equals(readFileSync(join(dir, 'plain.o'))), 'slow.o is what gcc makes')
    const after = await hedger.stats()
    assertHedgeWonHere(before, after, 'c')
    // the human form names it
    const text = await hedger.run(['-s'])
    assert.match(text.stdout, /hedged\)\s+\d+/)
    // the client reset the job's stream: the builder kills the job's sandbox (the frozen cc1 with it)
    await waitFor('the builder to stop the abandoned job', async () => (ended(cc1) ? true : undefined), 30_000)
  } finally {
    thaw()
  }
  // the builder still works once its compiler runs again (the abandoned job ends there)
  writeSlowUnit(dir, 'after.c', 3)
  const again = await hedger.stats()
  const r2 = await hedger.run(['gcc', '-c', '-O2', 'after.c', '-o', 'after.o'], { cwd: dir, timeoutMs: 180_000 })
  assert.equal(r2.code, 0, r2.stderr)
  const s2 = await hedger.stats()
  assert.equal(s2.remote_compiles + s2.local_compiles - again.remote_compiles - again.local_compiles, 1)
})

test('a client with local_slots = 0 never hedges: it waits for the builder', { timeout: 400_000 }, async () => {
  const dir = join(noSlots.dir, 'src')
  const warm = await warmUp(noSlots, dir)
  const before = await noSlots.stats()
  try {
    let finished = false
    const { run } = await slowCompile(noSlots, dir, 2)
    void run.then(() => { finished = true })
    // past any bound a hedge could use: the usual job there is at most the warm-up's wall time
    await new Promise((r) => setTimeout(r, Math.max(HEDGE_FLOOR_MS, HEDGE_FACTOR * warm) + 3000))
    assert.equal(finished, false, 'the compile waits for the frozen builder')
    const mid = await noSlots.stats()
    assert.equal(mid.hedged - before.hedged, 0, 'not hedged')
    thaw()
    const r = await run
    assert.equal(r.code, 0, r.stderr)
    assert.ok(readFileSync(join(dir, 'slow.o')).equals(readFileSync(join(dir, 'plain.o'))), 'slow.o is what gcc makes')
    const after = await noSlots.stats()
    assert.equal(after.remote_compiles - before.remote_compiles, 1, `compiled on the builder (fallbacks: ${JSON.stringify(after.fallback_reasons)})`)
    assert.equal(after.hedged - before.hedged, 0)
  } finally {
    thaw()
  }
})
