// A builder's job tree shows the compiler exactly the client's inputs (src/daemon/job-workspace.ts),
// so the builder compiles without re-preprocessing the unit, except when its inputs can tell
// two trees apart (src/daemon/job-view-check.ts). Real daemons on loopback, one builder (so
// every job reuses the one kept tree), real gcc: a header an earlier job left in the kept tree
// must never reach a later job, through the include search, #include_next or __has_include;
// every object must be byte-identical to a plain gcc compile at the client.
import { test, after, before } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { runCommand, type Instance } from './helpers/meshcc.js'
import { status } from './helpers/mesh-daemons.js'
import { startDistMesh, type DistMesh } from './helpers/dist-mesh.js'

let mesh: DistMesh
let client: Instance
let builder: Instance

before(async () => {
  mesh = await startDistMesh('view', 1)
  client = mesh.client
  builder = mesh.builders[0]!
})
after(async () => { await mesh?.stop() })

const checked = async () => (await status(builder)).mesh!.builder.jobs_checked

/** Compile name.c through the client and plainly; the objects must be the same. Whether it ran remotely. */
async function compileLikePlain(dir: string, name: string, args: string[]): Promise<boolean> {
  const before = await client.stats()
  const r = await client.run(['gcc', ...args, '-c', `${name}.c`, '-o', `${name}.o`], { cwd: dir, timeoutMs: 120_000 })
  assert.equal(r.code, 0, r.stderr)
  const plain = await runCommand('gcc', [...args, '-c', `${name}.c`, '-o', `plain-${name}.o`], { cwd: dir })
  assert.equal(plain.code, 0, plain.stderr)
  assert.ok(readFileSync(join(dir, `${name}.o`)).equals(readFileSync(join(dir, `plain-${name}.o`))), `${name}.o is what gcc makes here`)
  const after = await client.stats()
  return after.remote_compiles - before.remote_compiles === 1
}

function write(dir: string, files: Record<string, string>): void {
  for (const [p, text] of Object.entries(files)) {
    mkdirSync(join(dir, p, '..'), { recursive: true })
    writeFileSync(join(dir, p), text)
  }
}

test('a header the client removed, which an earlier job left in the kept tree, is not found by the include search', { timeout: 180_000 }, async () => {
  const dir = join(client.dir, 'stale-search')
  write(dir, { 'inc/1/x.h': '#define X 1\n', 'inc/2/x.h': '#define X 2\n' })
  const src = (n: string) => `#include "x.h"\nint ${n}(void) { return X; }\n`
  write(dir, { 'u.c': src('u') })
  assert.ok(await compileLikePlain(dir, 'u', ['-Iinc/1', '-Iinc/2']), 'u.c compiled on the builder')
  rmSync(join(dir, 'inc/1/x.h'))
  write(dir, { 'v.c': src('v') })
  const c0 = await checked()
  assert.ok(await compileLikePlain(dir, 'v', ['-Iinc/1', '-Iinc/2']), 'v.c compiled on the builder, with inc/2/x.h')
  assert.equal(await checked(), c0, 'without a preprocessing check')
})

test('#include_next does not find a header an earlier job left in the kept tree', { timeout: 180_000 }, async () => {
  const dir = join(client.dir, 'stale-next')
  // under one entry of the cwd: a job is shown only the entries of the cwd its inputs are in
  write(dir, {
    'inc/a/n.h': '#include_next <n.h>\n',
    'inc/b/n.h': '#define N 2\n',
    'inc/c/n.h': '#define N 3\n'
  })
  const args = ['-Iinc/a', '-Iinc/b', '-Iinc/c']
  const src = (n: string) => `#include <n.h>\nint ${n}(void) { return N; }\n`
  write(dir, { 'p.c': src('p') })
  assert.ok(await compileLikePlain(dir, 'p', args))
  rmSync(join(dir, 'inc/b/n.h'))
  write(dir, { 'q.c': src('q') })
  assert.ok(await compileLikePlain(dir, 'q', args), 'q.c compiled on the builder, with inc/c/n.h')
})

test('a header the builder already holds is not sent again: the client reports bytes sent per job against the preprocessed unit', { timeout: 180_000 }, async () => {
  const dir = join(client.dir, 'transfer')
  // 300 KB of header that compresses badly (gzip would hide a resend of a repetitive one)
  const big = Array.from({ length: 6000 }, (_, i) => `#define K${i} ${(i * 2654435761) % 4294967296}u /* ${(i * 40503) % 65536} */`).join('\n') + '\n'
  write(dir, { 'big.h': big, 'a.c': '#include "big.h"\nint a(void) { return K1; }\n', 'b.c': '#include "big.h"\nint b(void) { return K2; }\n' })
  const t0 = (await status(client)).mesh!.transfer
  assert.ok(await compileLikePlain(dir, 'a', []))
  const t1 = (await status(client)).mesh!.transfer
  assert.ok(await compileLikePlain(dir, 'b', []))
  const t2 = (await status(client)).mesh!.transfer
  assert.equal(t1.jobs - t0.jobs, 1)
  assert.equal(t2.jobs - t1.jobs, 1)
  const first = t1.bytes_sent - t0.bytes_sent
  const second = t2.bytes_sent - t1.bytes_sent
  const pp = t2.pp_bytes - t1.pp_bytes
  assert.ok(pp > big.length / 2, `the preprocessed unit holds the header's definitions (${pp} bytes)`)
  assert.ok(first > big.length / 4, `the first job sent the header (${first} bytes)`)
  assert.ok(second < pp / 10, `the second sent ${second} bytes, under 10 % of its ${pp}-byte unit`)
})

test('__has_include: a unit that probes a header it never includes is checked, and gets the client\'s answer', { timeout: 180_000 }, async () => {
  const dir = join(client.dir, 'has-include')
  // an earlier job's tree held old.h, the client has removed it since
  write(dir, { 'probe.h': '#if __has_include("opt.h")\n#define V 1\n#else\n#define V 2\n#endif\n' })
  write(dir, { 'inc/old.h': '#define OLD 1\n', 'o1.c': '#include "old.h"\nint o1(void) { return OLD; }\n' })
  assert.ok(await compileLikePlain(dir, 'o1', ['-Iinc']))
  rmSync(join(dir, 'inc/old.h'))
  write(dir, { 'o2.c': '#include "probe.h"\n#if __has_include("old.h")\nint o2(void) { return 1; }\n#else\nint o2(void) { return 2; }\n#endif\n' })
  assert.ok(await compileLikePlain(dir, 'o2', ['-Iinc']), 'compiled on the builder (the check passes: old.h is gone there too)')
  // last, as a failed check holds the only builder back for a while: the probed header is on
  // the client but never entered, so never shipped; the builder's tree lacks it and only the
  // check (then a local compile) gives the client's object
  write(dir, { 'inc/opt.h': '/* present */\n', 'h.c': '#include "probe.h"\nint h(void) { return V; }\n' })
  const c0 = await checked()
  await compileLikePlain(dir, 'h', ['-Iinc'])
  assert.equal(await checked(), c0 + 1, 'the builder re-preprocessed it')
})
