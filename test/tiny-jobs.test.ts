// Compiler probes (Kbuild's cc-option: `gcc -Werror <flags> -c -x c /dev/null -o tmp`, an empty
// conftest.c) through a real mesh: a client with local_slots = 0 and a builder. Such a job costs
// the client's daemon and the builder far more than its compile here (issue #18), so the client
// compiles it itself, counts it under kept_here with its reason (not as a fallback), keeps it
// cacheable, and the builder never sees it; a real unit still goes remote.
import { test, after, before } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { runCommand, type Instance } from './helpers/meshcc.js'
import { status } from './helpers/mesh-daemons.js'
import { startDistMesh, type DistMesh } from './helpers/dist-mesh.js'

let mesh: DistMesh
let client: Instance
let builder: Instance
let dir: string

before(async () => {
  mesh = await startDistMesh('tiny', 1)
  client = mesh.client
  builder = mesh.builders[0]
  dir = join(client.dir, 'w')
  mkdirSync(dir)
})
after(async () => { await mesh?.stop() })

/** every job the builder has been handed, whatever became of it */
async function builderJobs(): Promise<number> {
  const b = (await status(builder)).mesh!.builder
  return b.jobs_done + b.jobs_failed + b.jobs_refused + b.running
}

/** compile `args` through the client and plainly (object `plain-<obj>`): same exit, same object; the client's counts moved */
async function throughClient(args: string[], obj: string) {
  const plain = await runCommand('gcc', [...args, '-o', `plain-${obj}`], { cwd: dir })
  assert.equal(plain.code, 0, plain.stderr)
  const s0 = await client.stats()
  const jobs0 = await builderJobs()
  const r = await client.run(['gcc', ...args, '-o', obj], { cwd: dir, timeoutMs: 120_000 })
  assert.equal(r.code, 0, r.stderr)
  assert.equal(r.stderr, plain.stderr)
  assert.ok(readFileSync(join(dir, obj)).equals(readFileSync(join(dir, `plain-${obj}`))), `${obj} is what gcc makes`)
  const s1 = await client.stats()
  const d = (k: string) => (s1[k] as number) - (s0[k] as number)
  const reason = (r: string) => ((s1.kept_here_reasons as Record<string, number> | undefined)?.[r] ?? 0) - ((s0.kept_here_reasons as Record<string, number> | undefined)?.[r] ?? 0)
  return { d, reason, builderJobs: (await builderJobs()) - jobs0, s1 }
}

test('a warm-up unit goes remote (the builder holds the toolchain before the probes)', { timeout: 180_000 }, async () => {
  writeFileSync(join(dir, 'warm.c'), '#include <stdio.h>\nint main(void) { puts("warm"); return 0; }\n')
  const { d, builderJobs } = await throughClient(['-O2', '-c', 'warm.c'], 'warm.o')
  assert.equal(d('remote_compiles'), 1)
  assert.equal(builderJobs, 1)
})

test('a cc-option probe on /dev/null is compiled here, counted as kept here (not a fallback), and cached', { timeout: 120_000 }, async () => {
  // the flags of a Kbuild cc-option probe (-nostdinc: no file read at all)
  const args = ['-nostdinc', '-Werror', '-D__KERNEL__', '-fno-strict-aliasing', '-fno-stack-protector', '-c', '-x', 'c', '/dev/null']
  const first = await throughClient(args, 'probe.o')
  assert.equal(first.builderJobs, 0, 'the builder was not handed the probe')
  assert.equal(first.d('remote_compiles'), 0)
  assert.equal(first.d('local_compiles'), 1)
  assert.equal(first.d('kept_here'), 1)
  assert.equal(first.reason('compiler probe on /dev/null'), 1, JSON.stringify(first.s1.kept_here_reasons))
  assert.equal(first.d('fallbacks'), 0, JSON.stringify(first.s1.fallback_reasons))
  assert.equal(first.d('cache_misses'), 1)
  // the same probe again (Kbuild repeats them in every directory): a hit
  const again = await throughClient(args, 'probe2.o')
  assert.equal(again.d('cache_hits'), 1)
  assert.equal(again.d('local_compiles') + again.d('remote_compiles'), 0)
  assert.equal(again.builderJobs, 0)
  const shown = await client.run(['-s'])
  assert.match(shown.stdout, /Kept-here reasons:\n\s+compiler probe on \/dev\/null\s+1\n/)
})

test('an empty source file (a configure-style probe) is compiled here; a one-line unit still goes remote', { timeout: 120_000 }, async () => {
  writeFileSync(join(dir, 'conftest.c'), '')
  const empty = await throughClient(['-O2', '-c', 'conftest.c'], 'conftest.o')
  assert.equal(empty.builderJobs, 0)
  assert.equal(empty.d('kept_here'), 1)
  assert.equal(empty.reason('empty source file'), 1, JSON.stringify(empty.s1.kept_here_reasons))
  assert.equal(empty.d('cache_misses'), 1)

  writeFileSync(join(dir, 'unit.c'), 'int unit(int a) { return a * 7; }\n')
  const unit = await throughClient(['-O2', '-c', 'unit.c'], 'unit.o')
  assert.equal(unit.d('remote_compiles'), 1, JSON.stringify(unit.s1.fallback_reasons))
  assert.equal(unit.d('kept_here'), 0)
  assert.equal(unit.builderJobs, 1)
})

test('a probe on /dev/null that -include\'s a large header is a real unit: it goes remote', { timeout: 120_000 }, async () => {
  // about 200 KiB of declarations: its compile is no longer the compiler's start-up alone
  writeFileSync(join(dir, 'big.h'), Array.from({ length: 4000 }, (_, i) => `extern int declared_item_number_${i}(int a, int b);\n`).join(''))
  const r = await throughClient(['-include', 'big.h', '-c', '-x', 'c', '/dev/null'], 'big.o')
  assert.equal(r.d('kept_here'), 0)
  assert.equal(r.d('remote_compiles'), 1, JSON.stringify(r.s1.fallback_reasons))
  assert.equal(r.builderJobs, 1)
})
