// The statistics must explain what happened: every compile meant for the mesh that ran here is
// a fallback with a reason, a failed compile is a failure (not "non-cacheable"), and the counts
// stay right when the cache directory cannot be written (then the log moves beside the socket).
// Compiles that fall back with local_slots = 0 use this machine's cores as a plain build would.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { dirname, join } from 'node:path'
import { createInstance, runCommand, type Instance } from './helpers/meshcc.js'
import { startMeshDaemon } from './helpers/mesh-daemons.js'

const instances: Instance[] = []
after(async () => { for (const i of instances) await i.stop() })

function fresh(extra = '', mesh: string | null = null): Instance {
  const i = createInstance(extra, 'count', mesh)
  instances.push(i)
  return i
}

test('a compile of a missing source is a compile failure with the compiler\'s own message', async () => {
  const inst = fresh()
  const r = await inst.run(['gcc', '-c', 'nope.c', '-o', 'nope.o'])
  assert.notEqual(r.code, 0)
  assert.match(r.stderr, /nope\.c: No such file or directory/)
  const s = await inst.stats()
  assert.equal(s.compile_failures, 1)
  assert.equal(s.non_cacheable, 0)
})

test('local_slots = 0 without a mesh: every compile is a fallback ("no mesh"), run side by side on this machine\'s cores', { skip: availableParallelism() < 2 ? 'needs two cores' : false }, async () => {
  const inst = fresh('[build]\nlocal_slots = 0\n')
  // a gcc that records when each real compile (not a preprocessing run) starts and ends
  const bin = join(inst.dir, 'bin')
  mkdirSync(bin)
  const log = join(inst.dir, 'compiles.log')
  writeFileSync(join(bin, 'gcc'), `#!/bin/sh\ncase " $* " in *" -E "*) exec /usr/bin/gcc "$@";; esac\necho "start $(date +%s%N)" >> ${log}\nsleep 1\n/usr/bin/gcc "$@"; rc=$?\necho "end $(date +%s%N)" >> ${log}\nexit $rc\n`)
  chmodSync(join(bin, 'gcc'), 0o755)
  for (const f of ['a', 'b']) writeFileSync(join(inst.dir, `${f}.c`), `int ${f}(void) { return 1; }\n`)
  const [ra, rb] = await Promise.all(['a', 'b'].map((f) => inst.run([join(bin, 'gcc'), '-c', `${f}.c`, '-o', `${f}.o`])))
  assert.equal(ra!.code, 0, ra!.stderr)
  assert.equal(rb!.code, 0, rb!.stderr)
  const s = await inst.stats()
  assert.equal(s.fallbacks, 2, JSON.stringify(s.fallback_reasons))
  assert.deepEqual(s.fallback_reasons, { 'no mesh': 2 })
  const times = readFileSync(log, 'utf8').trim().split('\n').map((l) => l.split(' ')).map(([k, t]) => [k, BigInt(t!)] as const)
  const starts = times.filter(([k]) => k === 'start').map(([, t]) => t)
  const ends = times.filter(([k]) => k === 'end').map(([, t]) => t)
  assert.equal(starts.length, 2)
  assert.ok(starts[1]! < ends[0]!, 'the second compile started before the first ended: not one at a time')
  const st = JSON.parse((await inst.run(['status', '--json'])).stdout) as { daemon: { slots: number } }
  assert.equal(st.daemon.slots, 0, 'status shows the configured 0 local slots')
})

test('local_slots = 0 in a mesh with no peer: a fallback with its reason', { timeout: 60_000 }, async () => {
  const inst = fresh('[build]\nlocal_slots = 0\n', 'listen = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\ndht = false')
  assert.equal((await inst.run(['mesh', 'init'])).code, 0)
  await startMeshDaemon(inst)
  writeFileSync(join(inst.dir, 'a.c'), 'int a(void) { return 1; }\n')
  assert.equal((await inst.run(['gcc', '-c', 'a.c'])).code, 0)
  // and a source saved over a second ago: compiled in depend mode, the same reason
  writeFileSync(join(inst.dir, 'b.c'), 'int b(void) { return 2; }\n')
  await new Promise((r) => setTimeout(r, 1100))
  assert.equal((await inst.run(['gcc', '-c', 'b.c'])).code, 0)
  // a library crate as cargo passes it: meant for the mesh too, and says so the same way
  mkdirSync(join(inst.dir, 'out'))
  writeFileSync(join(inst.dir, 'r.rs'), 'pub fn r() -> u8 { 1 }\n')
  // the toolchain's own rustc, as cargo names it (not rustup's proxy)
  const sysroot = (await runCommand('rustc', ['--print', 'sysroot'])).stdout.trim()
  const rr = await inst.run([join(sysroot, 'bin', 'rustc'), '--crate-name', 'r', '--edition=2021', 'r.rs', '--crate-type', 'lib', '--emit=dep-info,metadata,link', '--out-dir', join(inst.dir, 'out')])
  assert.equal(rr.code, 0, rr.stderr)
  const s = await inst.stats()
  assert.deepEqual(s.fallback_reasons, { 'no peer takes jobs': 3 })
  assert.equal(s.local_compiles, 3)
})

test('a read-only cache directory: counts stay right and the log moves beside the socket', { skip: process.getuid?.() !== 0 ? 'needs root for a read-only bind mount' : false }, async (t) => {
  const inst = fresh()
  mkdirSync(inst.cacheDir, { recursive: true })
  const mount = (args: string[]) => spawnSync('mount', args, { encoding: 'utf8' })
  const m = mount(['--bind', inst.cacheDir, inst.cacheDir])
  if (m.status !== 0) { t.skip(`cannot bind-mount here: ${m.stderr.trim()}`); return }
  try {
    assert.equal(mount(['-o', 'remount,ro,bind', inst.cacheDir]).status, 0)
    for (let i = 0; i < 4; i++) writeFileSync(join(inst.dir, `u${i}.c`), `int u${i}(void) { return ${i}; }\n`)
    for (let i = 0; i < 4; i++) {
      const r = await inst.run(['gcc', '-c', `u${i}.c`])
      assert.equal(r.code, 0, r.stderr)
      assert.ok(existsSync(join(inst.dir, `u${i}.o`)))
    }
    const s = await inst.stats()
    assert.equal(s.compile_requests, 4, JSON.stringify(s))
    assert.equal(s.cache_misses, 4)
    const fallbackLog = join(dirname(inst.socket), 'meshcc.log')
    assert.ok(existsSync(fallbackLog), 'the log is written beside the socket')
    const text = readFileSync(fallbackLog, 'utf8')
    assert.match(text, /cannot write the log .*meshcc\.log \(EROFS\): logging here instead/)
    assert.match(text, /could not save statistics .*EROFS/, 'the reason is named as it is (EROFS), not ENOENT')
    const st = JSON.parse((await inst.run(['status', '--json'])).stdout) as { daemon: { log_file: string } }
    assert.equal(st.daemon.log_file, fallbackLog)
  } finally {
    await inst.run(['--stop-server'])
    mount(['-o', 'remount,rw,bind', inst.cacheDir])
    spawnSync('umount', [inst.cacheDir])
  }
})

test('counts are saved on a clean stop, not at every timer tick while compiles come in', { timeout: 60_000 }, async () => {
  const inst = fresh()
  const saved = join(inst.cacheDir, 'stats.json')
  const onDisk = () => existsSync(saved) ? (JSON.parse(readFileSync(saved, 'utf8')) as { counters: Record<string, number> }).counters : null
  for (let i = 0; i < 3; i++) {
    writeFileSync(join(inst.dir, `s${i}.c`), `int s${i}(void) { return ${i}; }\n`)
    const r = await inst.run(['gcc', '-c', `s${i}.c`])
    assert.equal(r.code, 0, r.stderr)
    await new Promise((r) => setTimeout(r, 2500))
  }
  // 7.5 s of compiles: the daemon's 2 s tick ran at least three times and must not have saved
  assert.equal(onDisk()?.compile_requests ?? 0, 0, 'stats.json rewritten while compiles came in')
  assert.equal((await inst.run(['--stop-server'])).code, 0)
  for (let i = 0; i < 100 && !(onDisk()?.compile_requests); i++) await new Promise((r) => setTimeout(r, 50))
  const c = onDisk()
  assert.equal(c?.compile_requests, 3, 'the stop saved every count')
  assert.equal(c?.cache_misses, 3)
  // and the next daemon reports them
  const s = await inst.stats()
  assert.equal(s.compile_requests, 3)
  assert.equal(s.local_compiles, 3)
})
