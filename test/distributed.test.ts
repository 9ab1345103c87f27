// Distributed compilation with real daemons on loopback: a client with local_slots = 0
// sends every miss to two builders (toolchains shipped, jobs in bubblewrap). Objects and
// depfiles must be byte-identical to a plain local build (debug info included), warnings
// and errors must look exactly like local ones, a builder killed mid-build must not break
// the build, and a builder without bubblewrap must refuse jobs.
import { test, after, before } from 'node:test'
import assert from 'node:assert/strict'
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { haveCommand, runCommand, MESHCC, type Instance } from './helpers/meshcc.js'
import { C_UNITS, CXX_UNITS, writeCProject, writeCxxProject } from './helpers/projects.js'
import { status, startMeshDaemon, waitFor } from './helpers/mesh-daemons.js'
import { startDistMesh, type DaemonOptions, type DistMesh } from './helpers/dist-mesh.js'
import { assertSameFiles, snapshot } from './helpers/compare.js'
import { formatStatus } from '../src/cli/mesh-commands.js'

let mesh: DistMesh
let client: Instance
let builders: Instance[] = []
const daemon = (name: string, opts: DaemonOptions): Instance => mesh.daemon(name, opts)
/** the builders still running (one test kills one; status no longer starts a daemon that is gone) */
const liveBuilders = (): Instance[] => builders.filter((b) => { try { return process.kill(b.daemonPid()!, 0) } catch { return false } })

before(async () => {
  mesh = await startDistMesh('dist')
  client = mesh.client
  builders = mesh.builders
})
after(async () => { await mesh?.stop() })

/**
 * Compile `args` with `compiler` plainly and through the client: the client's compile must run
 * on a builder and write the same object. The client's stats before and after.
 */
async function remoteLikePlain(compiler: string, args: string[], dir: string, obj: string) {
  const plain = await runCommand(compiler, [...args, '-o', `plain-${obj}`], { cwd: dir })
  assert.equal(plain.code, 0, plain.stderr)
  const before = await client.stats()
  const r = await client.run([compiler, ...args, '-o', obj], { cwd: dir, timeoutMs: 150_000 })
  assert.equal(r.code, 0, r.stderr)
  const after = await client.stats()
  assert.equal(after.remote_compiles - before.remote_compiles, 1, `compiled on a builder (retries: ${JSON.stringify(after.retry_reasons)}, fallbacks: ${JSON.stringify(after.fallback_reasons)})`)
  assert.ok(readFileSync(join(dir, obj)).equals(readFileSync(join(dir, `plain-${obj}`))), `${obj} is what ${compiler} makes`)
  return { before, after }
}

test('a C project via make, every miss compiled remotely: objects (-g) and depfiles identical to a plain build, warnings identical', { timeout: 300_000 }, async () => {
  const proj = join(client.dir, 'cproj')
  writeCProject(proj)
  const plain = await runCommand('make', ['-j2', 'CC=gcc'], { cwd: proj })
  assert.equal(plain.code, 0, plain.stderr)
  const expected = snapshot(join(proj, 'build'), ['.o', '.d'])
  await runCommand('make', ['clean'], { cwd: proj })

  const before = await client.stats()
  const r = await client.run(['-j4', `CC=${MESHCC} gcc`], { cmd: 'make', cwd: proj, timeoutMs: 240_000 })
  assert.equal(r.code, 0, r.stderr)
  assertSameFiles(snapshot(join(proj, 'build'), ['.o', '.d']), expected, 'distributed build')
  const s = await client.stats()
  const remote = s.remote_compiles - before.remote_compiles
  // every TU goes remote unless, for a moment, no builder had a free slot (then it is compiled here)
  assert.ok(remote > 0, 'compiled remotely')
  assert.equal(remote + s.local_compiles - before.local_compiles, C_UNITS.length)
  for (const reason of Object.keys(s.fallback_reasons)) assert.equal(reason, 'no peer with room', `fallbacks: ${JSON.stringify(s.fallback_reasons)}`)
  const warn = (t: string) => t.split('\n').filter((l) => l.includes('warn.c')).join('\n')
  assert.ok(warn(r.stderr).length > 0)
  assert.equal(warn(r.stderr), warn(plain.stderr), 'the remote warning reads exactly like the local one')
  const app = await runCommand(join(proj, 'build', 'app'), [])
  assert.equal(app.stdout, '6 3 16.41 2 9\n')
  // status shows the jobs per peer and the toolchain transfers
  const st = await status(client)
  const sent = Object.values(st.mesh!.jobs_per_peer).reduce((n, p) => n + p.done, 0)
  assert.ok(sent >= remote, `jobs per peer count the remote jobs (${sent} >= ${remote})`)
  const bs = await Promise.all(builders.map(status))
  const received = bs.flatMap((b) => b.mesh!.toolchain_transfers.filter((t) => t.direction === 'received'))
  assert.ok(received.length > 0, 'a builder received the toolchain')
  // and the sender shows what it sent, to whom: the client, for each transfer received from it
  const fromClient = bs.flatMap((b) => b.mesh!.toolchain_transfers.filter((t) => t.direction === 'received' && t.peer === st.mesh!.peer_id).map((t) => ({ t, to: b.mesh!.peer_id })))
  assert.ok(fromClient.length > 0, 'a builder received the toolchain from the client')
  const sentTc = st.mesh!.toolchain_transfers.filter((t) => t.direction === 'sent')
  for (const { t, to } of fromClient) assert.ok(sentTc.some((x) => x.hash === t.hash && x.bytes === t.bytes && x.peer === to), `the client lists the toolchain ${t.hash.slice(0, 12)} it sent to ${to}`)
  assert.match(formatStatus(st), /toolchain \w{12} sent to \S+: [\d.]+ MiB in \d+ ms/)
})

test('a C++ project via CMake with the compiler-launcher variables, compiled remotely, byte-identical (Debug, -g)', { timeout: 300_000, skip: !haveCommand('cmake') || !haveCommand('ninja') ? 'cmake or ninja missing' : false }, async () => {
  const src = join(client.dir, 'cxx')
  writeCxxProject(src)
  const build = join(client.dir, 'cxx-build')
  const configure = (launcher: boolean) => runCommand('cmake', ['-S', src, '-B', build, '-G', 'Ninja', '-DCMAKE_CXX_COMPILER=g++', '-DCMAKE_BUILD_TYPE=Debug',
    ...(launcher ? [`-DCMAKE_CXX_COMPILER_LAUNCHER=${MESHCC}`] : [])], { env: client.env })
  const objDir = join(build, 'CMakeFiles', 'app.dir', 'src')
  assert.equal((await configure(false)).code, 0)
  assert.equal((await runCommand('ninja', ['-C', build], { env: client.env })).code, 0)
  const aside = join(client.dir, 'cxx-plain-objs')
  cpSync(objDir, aside, { recursive: true })
  rmSync(build, { recursive: true, force: true })
  assert.equal((await configure(true)).code, 0)
  const before = await client.stats()
  const r = await runCommand('ninja', ['-C', build, '-j4'], { env: client.env, timeoutMs: 240_000 })
  assert.equal(r.code, 0, r.stdout + r.stderr)
  assertSameFiles(snapshot(objDir, ['.o', '.d']), snapshot(aside, ['.o', '.d']), 'distributed CMake build')
  const s = await client.stats()
  const remote = s.remote_compiles - before.remote_compiles
  assert.ok(remote > 0, `compiled remotely (${JSON.stringify({ f: s.fallback_reasons, r: s.retry_reasons, local: s.local_compiles })})`)
  assert.equal(remote + s.local_compiles - before.local_compiles, CXX_UNITS.length)
  assert.equal((await runCommand(join(build, 'app'), [])).stdout, '7.14159 3 6\n')
})

test('a compile error on a builder is rechecked here: the user sees exactly the local error, never cached', { timeout: 120_000 }, async () => {
  const dir = join(client.dir, 'err')
  mkdirSync(dir)
  writeFileSync(join(dir, 'bad.c'), '#include <stdio.h>\n#define CALL(f) f(1, 2)\nint g(int);\nint main(void) { return CALL(g) + missing; }\n')
  const plain = await runCommand('gcc', ['-g', '-c', 'bad.c', '-o', 'bad.o'], { cwd: dir })
  assert.notEqual(plain.code, 0)
  const before = await client.stats()
  const r = await client.run(['gcc', '-g', '-c', 'bad.c', '-o', 'bad.o'], { cwd: dir })
  assert.equal(r.code, plain.code)
  assert.equal(r.stderr, plain.stderr)
  const s = await client.stats()
  const rechecked = (s.retry_reasons as unknown as Record<string, number>)['remote compile failed, rechecked here'] ?? 0
  const rBefore = (before.retry_reasons as unknown as Record<string, number>)['remote compile failed, rechecked here'] ?? 0
  assert.equal(rechecked - rBefore, 1, `a builder ran it first (${JSON.stringify(s.retry_reasons)})`)
  assert.equal(s.local_compiles - before.local_compiles, 1, 'then it was compiled here')
  assert.equal(existsSync(join(dir, 'bad.o')), false)
  assert.equal(s.cache_writes, before.cache_writes)
})

test('a unit that includes thousands of headers (as large C++ units do) is compiled remotely, byte-identical (-g)', { timeout: 180_000 }, async () => {
  const dir = join(client.dir, 'many-headers')
  const inc = join(dir, 'include', 'vendor', 'some_large_library', 'detail', 'implementation')
  mkdirSync(inc, { recursive: true })
  // 3000 files with paths like a big library's: their list alone is far beyond a small control message
  const n = 3000
  for (let i = 0; i < n; i++) writeFileSync(join(inc, `component_${i}_with_a_descriptive_name.hpp`), `int component_${i}(void);\n`)
  writeFileSync(join(dir, 'unit.c'), Array.from({ length: n }, (_, i) => `#include "vendor/some_large_library/detail/implementation/component_${i}_with_a_descriptive_name.hpp"`).join('\n') + '\nint unit(void) { return component_7(); }\n')
  const { before, after } = await remoteLikePlain('gcc', ['-g', '-Iinclude', '-c', 'unit.c'], dir, 'unit.o')
  assert.equal(after.fallbacks, before.fallbacks)
})

test('units -fdirectives-only cannot key are preprocessed fully: __TIME__ never hits stale, __COUNTER__ in #if and a comment naming .incbin are still cached', { timeout: 120_000 }, async () => {
  const dir = join(client.dir, 'dironly')
  mkdirSync(dir)
  // __TIME__ stays unexpanded in directives-only output: keyed on that, the second compile would hit the first
  writeFileSync(join(dir, 'time.c'), 'const char *built_at = __TIME__;\n')
  // identifiers that merely start like those macros (the kernel's __TIMER_INITIALIZER) keep the cheap mode
  writeFileSync(join(dir, 'timer.c'), '#define __TIMER_INITIALIZER(f) { f }\nstruct t { int f; } timer = __TIMER_INITIALIZER(1);\nint __DATE_FORMAT;\n')
  const s0 = await client.stats()
  const r0 = await client.run(['gcc', '-c', 'timer.c', '-o', 'timer.o'], { cwd: dir })
  assert.equal(r0.code, 0, r0.stderr)
  const before = await client.stats()
  assert.equal(before.directives_only - s0.directives_only, 1, 'timer.c keyed on its -fdirectives-only text')
  const r1 = await client.run(['gcc', '-c', 'time.c', '-o', 't1.o'], { cwd: dir })
  assert.equal(r1.code, 0, r1.stderr)
  await new Promise((r) => setTimeout(r, 1100))
  const r2 = await client.run(['gcc', '-c', 'time.c', '-o', 't2.o'], { cwd: dir })
  assert.equal(r2.code, 0, r2.stderr)
  assert.ok(!readFileSync(join(dir, 't1.o')).equals(readFileSync(join(dir, 't2.o'))), 'the second object has its own __TIME__')
  const mid = await client.stats()
  assert.equal(mid.cache_hits - before.cache_hits, 0, 'no hit for a unit naming __TIME__')
  assert.equal(mid.directives_only, before.directives_only, 'time.c was preprocessed fully')
  // __FILE__ left unexpanded takes its name from the line markers: the key holds the names it
  // expands to, and the unit keeps the cheap mode (test/file-macro-key.test.ts checks the keys)
  writeFileSync(join(dir, 'file.c'), 'const char *here = __FILE__;\n')
  const rf = await client.run(['gcc', '-c', join(dir, 'file.c'), '-o', 'f.o'], { cwd: dir })
  assert.equal(rf.code, 0, rf.stderr)
  assert.equal((await client.stats()).directives_only, before.directives_only + 1, 'file.c keyed on its -fdirectives-only text')
  // compiled through the client as a cacheable miss, not passed through to a plain compile
  const cachedMiss = async (src: string, obj: string) => {
    const s0 = await client.stats()
    const r = await client.run(['gcc', '-c', src, '-o', obj], { cwd: dir })
    assert.equal(r.code, 0, r.stderr)
    const s1 = await client.stats()
    assert.equal(s1.non_cacheable, s0.non_cacheable, `${src} passed through: ${JSON.stringify(s1.non_cacheable_reasons)}`)
    assert.equal(s1.cache_misses - s0.cache_misses, 1)
  }
  // gcc refuses __COUNTER__ in a directive with -fdirectives-only: the full preprocessor keys it
  writeFileSync(join(dir, 'counter.c'), '#if __COUNTER__ == 0\nint first;\n#endif\nint c(void) { return __COUNTER__; }\n')
  await cachedMiss('counter.c', 'c.o')
  const plain = await runCommand('gcc', ['-c', 'counter.c', '-o', 'p.o'], { cwd: dir })
  assert.equal(plain.code, 0)
  assert.ok(readFileSync(join(dir, 'c.o')).equals(readFileSync(join(dir, 'p.o'))))
  // that text keeps comments: one that mentions .incbin must not make the unit non-cacheable
  writeFileSync(join(dir, 'comment.c'), '/* no .incbin here */\nint commented;\n')
  await cachedMiss('comment.c', 'comment.o')
})

test('a clang compile (-g) is compiled remotely too, byte-identical, with its own toolchain', { timeout: 180_000, skip: !haveCommand('clang') ? 'clang missing' : false }, async () => {
  const dir = join(client.dir, 'clang')
  mkdirSync(dir)
  writeFileSync(join(dir, 'h.h'), '#include <stdio.h>\n#define GREET(x) printf("hello %s\\n", x)\n')
  writeFileSync(join(dir, 'a.c'), '#include "h.h"\nint main(void) { GREET("clang"); return 0; }\n')
  const { before, after } = await remoteLikePlain('clang', ['-g', '-O1', '-c', 'a.c'], dir, 'a.o')
  assert.equal(after.directives_only, before.directives_only, 'clang units are preprocessed fully')
})

test('a header shared by many units crosses the network once per builder, not once per unit', { timeout: 180_000 }, async () => {
  const dir = join(client.dir, 'shared')
  mkdirSync(dir)
  // a big header: about 300 KB of declarations, the same bytes for every unit
  const decls = Array.from({ length: 6000 }, (_, i) => `int shared_function_number_${i}(int a, int b, int c);`).join('\n')
  writeFileSync(join(dir, 'big.h'), `#ifndef BIG_H\n#define BIG_H\n${decls}\n#endif\n`)
  const headerBytes = readFileSync(join(dir, 'big.h')).length
  const units = 6
  for (let i = 0; i < units; i++) writeFileSync(join(dir, `u${i}.c`), `#include "big.h"\nint u${i}(void) { return shared_function_number_${i}(1, 2, 3); }\n`)
  const received = async () => {
    let n = 0
    for (const b of builders) n += (await status(b)).mesh!.input_cache.received_bytes
    return n
  }
  const before = await received()
  const stats0 = await client.stats()
  const trees = async () => (await Promise.all(builders.map(status))).map((b) => b.mesh!.builder.workspaces)
  const trees0 = await trees()
  for (let i = 0; i < units; i++) {
    const r = await client.run(['gcc', '-O2', '-c', `u${i}.c`, '-o', `u${i}.o`], { cwd: dir })
    assert.equal(r.code, 0, r.stderr)
  }
  const s = await client.stats()
  assert.equal(s.remote_compiles - stats0.remote_compiles, units, `all compiled on builders (${JSON.stringify(s.fallback_reasons)})`)
  const shipped = (await received()) - before
  // each builder gets the header (and stdc-predef.h) at most once; every unit's own source once
  assert.ok(shipped < 2 * headerBytes + 2 * 8192 + units * 200, `${shipped} input bytes received for ${units} units of a ${headerBytes}-byte header`)
  assert.ok(shipped >= headerBytes, 'the header was shipped at least once')
  // and a builder writes the header once, not once per unit: the next job reuses the tree
  const trees1 = await trees()
  const reused = trees1.reduce((n, t, i) => n + t.reused - trees0[i]!.reused, 0)
  const written = trees1.reduce((n, t, i) => n + t.files_written - trees0[i]!.files_written, 0)
  assert.ok(reused >= units - builders.length, `job trees reused ${reused} times for ${units} units on ${builders.length} builders`)
  assert.ok(written < units * 2, `${written} files written for ${units} units of one shared header`)
  for (let i = 0; i < units; i++) {
    const plain = await runCommand('gcc', ['-O2', '-c', `u${i}.c`, '-o', `p${i}.o`], { cwd: dir })
    assert.equal(plain.code, 0)
    assert.ok(readFileSync(join(dir, `u${i}.o`)).equals(readFileSync(join(dir, `p${i}.o`))), `u${i}.o is what gcc makes`)
  }
})

test('a free local slot is passed over for a much faster peer, and kept next to peers as fast ([build] speed)', { timeout: 180_000 }, async () => {
  const boot = (await status(builders[0])).mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
  const ready = async (i: Instance) => waitFor('both builders with room in its view', async () => {
    const v = await status(i)
    const b = v.mesh!.members.filter((m) => !m.self && m.free_slots > 0 && m.accept !== 'never')
    return b.length === 2 ? v : undefined
  })
  const compileOne = async (i: Instance, name: string) => {
    const dir = join(i.dir, 'src')
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, `${name}.c`), `int ${name}(int x) { return x * 7 + 1; }\n`)
    const before = await i.stats()
    const r = await i.run(['gcc', '-O2', '-g', '-c', `${name}.c`, '-o', `${name}.o`], { cwd: dir })
    assert.equal(r.code, 0, r.stderr)
    const plain = await runCommand('gcc', ['-O2', '-g', '-c', `${name}.c`, '-o', `${name}.plain`], { cwd: dir })
    assert.equal(plain.code, 0)
    assert.ok(readFileSync(join(dir, `${name}.o`)).equals(readFileSync(join(dir, `${name}.plain`))), `${name}.o is what gcc makes`)
    const after = await i.stats()
    return { remote: after.remote_compiles - before.remote_compiles, local: after.local_compiles - before.local_compiles }
  }
  // a laptop: one free local slot, declared far slower than the builders (whose speed is measured)
  const laptop = daemon('dist-laptop', { localSlots: 1, cores: 0, bootstrap: boot, build: 'speed = 1\n' })
  await startMeshDaemon(laptop)
  const view = await ready(laptop)
  assert.equal(view.mesh!.members.find((m) => m.self)!.speed, 1, 'the declared speed is what it advertises')
  assert.deepEqual(await compileOne(laptop, 'lap'), { remote: 1, local: 0 }, 'sent to a faster builder although its own slot was free')
  // a workstation as fast as the fastest builder keeps its job on its free slot
  const fastest = Math.ceil(Math.max(...view.mesh!.members.filter((m) => !m.self).map((m) => m.speed)))
  const ws = daemon('dist-workstation', { localSlots: 1, cores: 0, bootstrap: boot, build: `speed = ${fastest}\n` })
  await startMeshDaemon(ws)
  await ready(ws)
  assert.deepEqual(await compileOne(ws, 'ws'), { remote: 0, local: 1 }, 'compiled on its own free slot')
  await laptop.stop()
  await ws.stop()
})

test('a builder killed with SIGKILL in the middle of a build: the build stays green and correct', { timeout: 300_000 }, async () => {
  const dir = join(client.dir, 'kill')
  mkdirSync(dir)
  const n = 24
  for (let i = 0; i < n; i++) writeFileSync(join(dir, `k${i}.c`), `#include <stdio.h>\n#include <string.h>\nint k${i}(const char *s) { return (int)strlen(s) * ${i + 1}; }\n`)
  writeFileSync(join(dir, 'Makefile'), `OBJS = ${Array.from({ length: n }, (_, i) => `k${i}.o`).join(' ')}\nall: $(OBJS)\n%.o: %.c\n\t$(CC) -O2 -g -c $< -o $@\n`)
  const victim = builders[0]
  const pid = victim.daemonPid()!
  const build = client.run(['-j4', `CC=${MESHCC} gcc`], { cmd: 'make', cwd: dir, timeoutMs: 280_000 })
  const deadline = Date.now() + 120_000
  let killed = false
  while (Date.now() < deadline) {
    if (readdirSync(dir).filter((f) => f.endsWith('.o')).length >= 2) {
      process.kill(pid, 'SIGKILL')
      killed = true
      break
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  assert.ok(killed, 'the builder was killed mid-build')
  const r = await build
  assert.equal(r.code, 0, r.stderr)
  for (let i = 0; i < n; i++) {
    const p = await runCommand('gcc', ['-O2', '-g', '-c', `k${i}.c`, '-o', `k${i}.plain`], { cwd: dir })
    assert.equal(p.code, 0)
    assert.ok(readFileSync(join(dir, `k${i}.o`)).equals(readFileSync(join(dir, `k${i}.plain`))), `k${i}.o correct`)
  }
})

test('a builder without bubblewrap refuses jobs unless sandbox = "none" is configured, and says so', { timeout: 120_000 }, async () => {
  const boot = (await status(builders[1])).mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
  const noBwrap = daemon('dist-nobwrap', { localSlots: 1, cores: 2, bootstrap: boot, extraEnv: { MESHCC_BWRAP: '' } })
  const s = await startMeshDaemon(noBwrap)
  const self = await waitFor('the builder check', async () => { const x = await status(noBwrap); return x.mesh!.builder.sandbox_note !== 'not checked yet' ? x : undefined })
  assert.equal(self.mesh!.builder.capacity, 0)
  assert.match(self.mesh!.builder.sandbox_note ?? '', /MESHCC_BWRAP.*remote jobs refused/)
  assert.match((await noBwrap.run(['status'])).stdout, /builder: not taking jobs/)
  // the others see it as not accepting, so they never place a job there
  await waitFor('the others to see it refusing', async () => {
    const v = await status(client)
    const m = v.mesh!.members.find((x) => x.peer_id === s.mesh!.peer_id)
    return m && m.accept === 'never' && m.free_slots === 0 ? true : undefined
  })
  // the operator's explicit choice: sandbox = "none" takes jobs without bwrap
  const none = daemon('dist-none', { localSlots: 1, cores: 2, bootstrap: boot, extraEnv: { MESHCC_BWRAP: '' }, build: 'sandbox = "none"\n' })
  await startMeshDaemon(none)
  const ns = await waitFor('the none builder', async () => { const x = await status(none); return x.mesh!.builder.sandbox_note !== 'not checked yet' ? x : undefined })
  assert.equal(ns.mesh!.builder.capacity, 2)
  assert.match((await none.run(['status'])).stdout, /sandbox none/)

  // and jobs really run there (chrooted at the client's paths): a client that may use only
  // this builder compiles with -g, byte-identical to a plain local compile
  const noneId = ns.mesh!.peer_id
  // every other member the first client knows of
  const others = [...new Set([...(await status(client)).mesh!.members.map((m) => m.peer_id), s.mesh!.peer_id])].filter((id) => id !== noneId)
  const only = daemon('dist-client-none', {
    localSlots: 0, cores: 0, bootstrap: ns.mesh!.addresses.filter((a) => a.includes('/127.0.0.1/')), mesh: `deny = ${JSON.stringify(others)}`
  })
  await startMeshDaemon(only)
  await waitFor('the none builder in the new client\'s view, with free slots', async () => {
    const v = await status(only)
    return v.mesh!.members.some((m) => m.peer_id === noneId && m.free_slots > 0) ? true : undefined
  })
  const dir = join(only.dir, 'src')
  mkdirSync(dir)
  writeFileSync(join(dir, 'n.c'), '#include <stdio.h>\nstatic int twice(int x) { return 2 * x; }\nint main(void) { printf("%d\\n", twice(21)); return 0; }\n')
  const plain = await runCommand('gcc', ['-g', '-O1', '-c', 'n.c', '-o', 'plain.o'], { cwd: dir })
  assert.equal(plain.code, 0, plain.stderr)
  const before = await only.stats()
  const r = await only.run(['gcc', '-g', '-O1', '-c', 'n.c', '-o', 'n.o'], { cwd: dir })
  assert.equal(r.code, 0, r.stderr)
  const after = await only.stats()
  const noneLog = () => [none, only].map((i) => readFileSync(join(i.cacheDir, 'meshcc.log'), 'utf8')).join('\n').split('\n').filter((l) => /job|chroot|sandbox/i.test(l)).slice(-5).join('\n')
  assert.equal(after.remote_compiles - before.remote_compiles, 1, `compiled on the sandbox = "none" builder (fallbacks: ${JSON.stringify(after.fallback_reasons)}, retries: ${JSON.stringify(after.retry_reasons)}); builder log:\n${noneLog()}`)
  assert.ok(readFileSync(join(dir, 'n.o')).equals(readFileSync(join(dir, 'plain.o'))), 'same bytes as the local compile, debug info included')
  assert.ok((await status(none)).mesh!.builder.jobs_done >= 1, 'the none builder counts the job')
  // the tests after this one expect the first builders only
  for (const i of [only, none, noBwrap]) await i.stop()
})

test('a toolchain archive named in [build] toolchain_archives is shipped instead of a discovered one', { timeout: 180_000 }, async () => {
  const { discoverToolchain } = await import('../src/toolchain/discover.js')
  const { packToolchain } = await import('../src/toolchain/pack.js')
  const { gunzipSync, gzipSync } = await import('node:zlib')
  const { createHash } = await import('node:crypto')
  // a prepared archive for /usr/bin/cc, recompressed so its hash differs from what discovery would give
  const dir = join(client.dir, 'custom-tc')
  mkdirSync(dir)
  const packed = await packToolchain(await discoverToolchain('/usr/bin/cc', 'gcc'), dir)
  const custom = join(dir, 'custom.tar.gz')
  writeFileSync(custom, gzipSync(gunzipSync(readFileSync(packed.archive)), { level: 9 }))
  const hash = createHash('sha256').update(readFileSync(custom)).digest('hex')
  assert.notEqual(hash, packed.hash)

  const boot = (await status(builders[1])).mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
  const c2 = daemon('dist-custom', { localSlots: 0, cores: 0, bootstrap: boot, build: `toolchain_archives = { "/usr/bin/cc" = "${custom}" }\n` })
  await startMeshDaemon(c2)
  await waitFor('a builder with room', async () => ((await status(c2)).mesh!.members.some((m) => !m.self && m.free_slots > 0) ? true : undefined))
  writeFileSync(join(c2.dir, 'x.c'), 'int x(void) { return 42; }\n')
  const r = await c2.run(['/usr/bin/cc', '-O2', '-c', 'x.c', '-o', 'x.o'])
  assert.equal(r.code, 0, r.stderr)
  const s = await c2.stats()
  assert.equal(s.remote_compiles, 1, JSON.stringify(s.fallback_reasons))
  const plain = await runCommand('/usr/bin/cc', ['-O2', '-c', 'x.c', '-o', 'p.o'], { cwd: c2.dir })
  assert.equal(plain.code, 0)
  assert.ok(readFileSync(join(c2.dir, 'x.o')).equals(readFileSync(join(c2.dir, 'p.o'))))
  // every builder still running (an earlier test kills builders[0]; run alone, it is alive)
  const alive = liveBuilders()
  const got = await Promise.all(alive.map(status))
  assert.ok(got.some((b) => b.mesh!.toolchain_transfers.some((t) => t.hash === hash && t.direction === 'received')), 'the builder received the configured archive')
})

test('a remote compile longer than libp2p\'s 120 s idle-stream timeout is not cut off', { timeout: 400_000 }, async (t) => {
  // A real compile that long would need gigabytes of memory here (gcc's constexpr evaluator keeps
  // every step), so the toolchain's assembler is wrapped to wait 130 s first: the job is real,
  // only slow. The wrapper lives in a toolchain archive named in [build] toolchain_archives.
  const { discoverToolchain } = await import('../src/toolchain/discover.js')
  const { packToolchain } = await import('../src/toolchain/pack.js')
  const dir = join(client.dir, 'slow-tc')
  mkdirSync(join(dir, 'root'), { recursive: true })
  const spec = await discoverToolchain('/usr/bin/cc', 'gcc')
  const packed = await packToolchain({ ...spec, files: [...spec.files, '/usr/bin/dash', '/usr/bin/sleep'] }, dir)
  assert.equal((await runCommand('tar', ['-xzf', packed.archive, '-C', join(dir, 'root')])).code, 0)
  const as = join(dir, 'root/usr/bin/as')
  const realAs = readlinkSync(as) // as -> x86_64-linux-gnu-as on Debian
  rmSync(as)
  writeFileSync(as, `#!/usr/bin/dash\n/usr/bin/sleep 130\nexec /usr/bin/${realAs} "$@"\n`, { mode: 0o755 })
  const slow = join(dir, 'slow.tar.gz')
  assert.equal((await runCommand('tar', ['--owner=0', '--group=0', '-czf', slow, '-C', join(dir, 'root'), '.'])).code, 0)

  const boot = (await status(builders[1])).mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
  const c3 = daemon('dist-slow', { localSlots: 0, cores: 0, bootstrap: boot, build: `toolchain_archives = { "/usr/bin/cc" = "${slow}" }\n` })
  await startMeshDaemon(c3)
  await waitFor('a builder with room', async () => ((await status(c3)).mesh!.members.some((m) => !m.self && m.free_slots > 0) ? true : undefined))
  writeFileSync(join(c3.dir, 'slow.c'), 'int slow(int x) { return x * 3; }\n')
  const t0 = Date.now()
  const r = await c3.run(['/usr/bin/cc', '-g', '-O2', '-c', 'slow.c', '-o', 'slow.o'], { timeoutMs: 300_000 })
  const took = Date.now() - t0
  t.diagnostic(`the remote compile took ${(took / 1000).toFixed(1)} s`)
  assert.equal(r.code, 0, r.stderr)
  assert.ok(took > 125_000, `the job ran past 120 s (${took} ms)`)
  const s = await c3.stats()
  assert.equal(s.remote_compiles, 1, `compiled remotely, not retried or compiled here: ${JSON.stringify(s.fallback_reasons)} ${JSON.stringify(s.retry_reasons)}`)
  assert.equal(s.local_compiles, 0)
  const plain = await runCommand('/usr/bin/cc', ['-g', '-O2', '-c', 'slow.c', '-o', 'plain.o'], { cwd: c3.dir })
  assert.equal(plain.code, 0)
  assert.ok(readFileSync(join(c3.dir, 'slow.o')).equals(readFileSync(join(c3.dir, 'plain.o'))), 'the same object as a local compile')
})

test('a file no line marker names (an assembler .incbin) cannot break the build: the local recheck compiles it', { timeout: 120_000 }, async () => {
  const dir = join(client.dir, 'incbin')
  mkdirSync(dir)
  writeFileSync(join(dir, 'blob.bin'), Buffer.from(Array.from({ length: 256 }, (_, i) => i)))
  writeFileSync(join(dir, 'piggy.S'), '#define SECTION .rodata\n\t.section SECTION\n\t.globl blob\nblob:\n\t.incbin "blob.bin"\n')
  const plain = await runCommand('gcc', ['-c', 'piggy.S', '-o', 'plain.o'], { cwd: dir })
  assert.equal(plain.code, 0, plain.stderr)
  const r = await client.run(['gcc', '-c', 'piggy.S', '-o', 'piggy.o'], { cwd: dir })
  assert.equal(r.code, 0, r.stderr)
  assert.ok(readFileSync(join(dir, 'piggy.o')).equals(readFileSync(join(dir, 'plain.o'))), 'same object as a plain compile')
})
