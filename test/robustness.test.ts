// meshcc must never break a build nor hand back a wrong object: compile errors, crashes of
// the daemon, damaged cache entries, eviction, pass-through invocations, many concurrent
// compiles, and a daemon that must not hold the build's pipes open.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { closeSync, existsSync, openSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync, writeSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { createInstance, runCommand, MESHCC, type Instance } from './helpers/meshcc.js'

const instances: Instance[] = []
after(async () => { for (const i of instances) await i.stop() })

function fresh(extra = '', name = 'rob'): Instance {
  const i = createInstance(extra, name)
  instances.push(i)
  return i
}

function entryFiles(cacheDir: string): string[] {
  const out: string[] = []
  for (const d of readdirSync(cacheDir)) {
    if (!/^[0-9a-f]{2}$/.test(d)) continue
    for (const f of readdirSync(join(cacheDir, d))) if (/^[0-9a-f]{64}$/.test(f)) out.push(join(cacheDir, d, f))
  }
  return out
}

test('a compile error gives the plain compiler\'s stderr and exit code, and is never cached', async () => {
  const inst = fresh()
  writeFileSync(join(inst.dir, 'bad.c'), 'int f(void) { return undeclared_name; }\n')
  const plain = await runCommand('gcc', ['-c', 'bad.c', '-o', 'bad.o'], { cwd: inst.dir })
  assert.notEqual(plain.code, 0)
  for (let round = 0; round < 2; round++) {
    const r = await inst.run(['gcc', '-c', 'bad.c', '-o', 'bad.o'])
    assert.equal(r.code, plain.code)
    assert.equal(r.stderr, plain.stderr)
    assert.equal(r.stdout, plain.stdout)
    assert.equal(existsSync(join(inst.dir, 'bad.o')), false)
  }
  const s = await inst.stats()
  assert.equal(s.cache_hits, 0, 'a failure is never served from the cache')
  assert.equal(s.cache_entries, 0)
})

test('non-cacheable invocations (link, -E, two sources) pass through untouched', async () => {
  const inst = fresh()
  writeFileSync(join(inst.dir, 'a.c'), '#define TWO 2\nint a(void) { return TWO; }\n')
  writeFileSync(join(inst.dir, 'b.c'), 'int a(void);\nint main(void) { return a() - 2; }\n')
  const pre = await inst.run(['gcc', '-E', 'a.c'])
  const plainPre = await runCommand('gcc', ['-E', 'a.c'], { cwd: inst.dir })
  assert.equal(pre.code, 0)
  assert.equal(pre.stdout, plainPre.stdout)
  const two = await inst.run(['gcc', '-c', 'a.c', 'b.c'])
  assert.equal(two.code, 0, two.stderr)
  const link = await inst.run(['gcc', 'a.o', 'b.o', '-o', 'prog'])
  assert.equal(link.code, 0, link.stderr)
  assert.equal((await runCommand(join(inst.dir, 'prog'), [])).code, 0)
  const s = await inst.stats()
  assert.equal(s.non_cacheable, 3)
  assert.equal(s.cache_misses, 0)
  const reasons = s.non_cacheable_reasons as unknown as Record<string, number>
  assert.equal(reasons['preprocess only (-E)'], 1)
  assert.equal(reasons['multiple input files'], 1)
  assert.equal(reasons['not a compile-only invocation (no -c)'], 1)
})

test('a corrupted and a truncated cache entry each give a miss and a correct object', async () => {
  const inst = fresh()
  writeFileSync(join(inst.dir, 'x.c'), 'static const char big[4096] = "payload"; const char *x(void) { return big; }\n')
  const plain = await runCommand('gcc', ['-O1', '-c', 'x.c', '-o', 'plain.o'], { cwd: inst.dir })
  assert.equal(plain.code, 0)
  const expected = readFileSync(join(inst.dir, 'plain.o'))
  const compile = async () => {
    // the preprocessed path reads the damaged entry each time (direct mode would key later compiles anew)
    const r = await inst.run(['gcc', '-O1', '-c', 'x.c', '-o', 'x.o'], { env: { MESHCC_DIRECT: '0' } })
    assert.equal(r.code, 0, r.stderr)
    assert.ok(readFileSync(join(inst.dir, 'x.o')).equals(expected), 'object equals the plain compile')
  }
  await compile() // miss, stored
  await inst.stats() // flushes; the entry write has finished by the time the next compile reads it
  for (const damage of ['corrupt', 'truncate'] as const) {
    const [entry] = entryFiles(inst.cacheDir)
    assert.ok(entry, 'an entry exists')
    if (damage === 'corrupt') {
      const buf = readFileSync(entry)
      for (let i = Math.floor(buf.length / 2); i < Math.floor(buf.length / 2) + 16; i++) buf[i] ^= 0xff
      writeFileSync(entry, buf)
    } else {
      truncateSync(entry, Math.floor(statSync(entry).size / 2))
    }
    const before = await inst.stats()
    await compile()
    const afterStats = await inst.stats()
    assert.equal(afterStats.cache_errors - before.cache_errors, 1, `${damage}: counted as a cache error`)
    assert.equal(afterStats.cache_misses - before.cache_misses, 1, `${damage}: treated as a miss`)
  }
  await compile()
  const s = await inst.stats()
  assert.ok(s.cache_hits >= 1, 'the rewritten entry is good again')
})

test('eviction keeps the cache under its size limit', async () => {
  const inst = fresh('', 'evict')
  // 200 KiB limit; each object carries ~24 KiB of incompressible data
  writeFileSync(inst.conf, readFileSync(inst.conf, 'utf8').replace('[cache]\n', '[cache]\nsize = "200K"\n'))
  for (let i = 0; i < 16; i++) {
    const bytes = Array.from({ length: 24 * 1024 }, (_, k) => (k * 2654435761 + i * 97) % 251).join(',')
    writeFileSync(join(inst.dir, `e${i}.c`), `const unsigned char data${i}[] = {${bytes}};\n`)
    const r = await inst.run(['gcc', '-c', `e${i}.c`, '-o', `e${i}.o`])
    assert.equal(r.code, 0, r.stderr)
  }
  await inst.run(['--stop-server']) // waits for writes and evictions in flight
  const total = entryFiles(inst.cacheDir).reduce((n, f) => n + statSync(f).size, 0)
  assert.ok(total <= 200 * 1024, `cache holds ${total} bytes, limit 204800`)
  assert.ok(entryFiles(inst.cacheDir).length >= 3, 'recent entries are kept')
  const s = await inst.stats()
  assert.ok(s.cache_size_bytes <= 200 * 1024)
})

test('200 concurrent compiles against one daemon all succeed', async () => {
  const inst = fresh('', 'conc')
  mkdirSync(join(inst.dir, 'c'))
  for (let i = 0; i < 100; i++) writeFileSync(join(inst.dir, 'c', `u${i}.c`), `int u${i}(int x) { return x * ${i} + ${i % 7}; }\n`)
  // 100 distinct sources, each compiled twice at once: misses, racing identical misses, and hits
  const jobs = Array.from({ length: 200 }, (_, j) => inst.run(['gcc', '-O2', '-c', `c/u${j % 100}.c`, '-o', `c/u${j % 100}-${j >= 100 ? 'b' : 'a'}.o`], { timeoutMs: 300_000 }))
  const results = await Promise.all(jobs)
  results.forEach((r, j) => assert.equal(r.code, 0, `job ${j}: ${r.stderr}`))
  for (let i = 0; i < 100; i++) {
    const plain = await runCommand('gcc', ['-O2', '-c', `c/u${i}.c`, '-o', `c/p${i}.o`], { cwd: inst.dir })
    assert.equal(plain.code, 0)
    const p = readFileSync(join(inst.dir, 'c', `p${i}.o`))
    assert.ok(readFileSync(join(inst.dir, 'c', `u${i}-a.o`)).equals(p))
    assert.ok(readFileSync(join(inst.dir, 'c', `u${i}-b.o`)).equals(p))
  }
  const s = await inst.stats()
  assert.equal(s.compile_requests, 200)
  const why = () => readFileSync(join(inst.cacheDir, 'meshcc.log'), 'utf8').split('\n').filter((l) => /WARN|ERROR/i.test(l) && !/launcher compiled without the daemon/.test(l)).slice(-10).join('\n')
  assert.equal(s.fallbacks, 0, `fallbacks: ${JSON.stringify(s.fallback_reasons)}\n${why()}`)
})

test('the daemon killed with SIGKILL in the middle of a build leaves the build green', async () => {
  const inst = fresh('', 'kill')
  const src = join(inst.dir, 'k')
  mkdirSync(src)
  const n = 30
  for (let i = 0; i < n; i++) writeFileSync(join(src, `k${i}.c`), `#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\nint k${i}(const char *s) { return (int)strlen(s) + ${i}; }\n`)
  writeFileSync(join(src, 'Makefile'), `OBJS = ${Array.from({ length: n }, (_, i) => `k${i}.o`).join(' ')}\nall: $(OBJS)\n%.o: %.c\n\t$(CC) -O2 -c $< -o $@\n`)
  const build = inst.run(['-j4', `CC=${MESHCC} gcc`], { cmd: 'make', cwd: src, timeoutMs: 300_000 })
  // wait for the daemon to be up and some objects to exist, then kill it
  const deadline = Date.now() + 60_000
  let killed = false
  while (Date.now() < deadline) {
    const pid = inst.daemonPid()
    const done = readdirSync(src).filter((f) => f.endsWith('.o')).length
    if (pid !== null && done >= 3) {
      process.kill(pid, 'SIGKILL')
      killed = true
      break
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  assert.ok(killed, 'the daemon was killed mid-build')
  const r = await build
  assert.equal(r.code, 0, r.stderr)
  for (let i = 0; i < n; i++) {
    const obj = join(src, `k${i}.o`)
    assert.ok(existsSync(obj), `k${i}.o exists`)
    const plain = await runCommand('gcc', ['-O2', '-c', `k${i}.c`, '-o', `k${i}.plain`], { cwd: src })
    assert.equal(plain.code, 0)
    assert.ok(readFileSync(obj).equals(readFileSync(join(src, `k${i}.plain`))), `k${i}.o is correct`)
  }
})

test('a killed daemon that is still a zombie (its parent has not reaped it) does not keep a new one from starting', { timeout: 120_000 }, async () => {
  const inst = fresh('', 'zombie')
  writeFileSync(join(inst.dir, 'z.c'), 'int z(void) { return 3; }\n')
  // A zombie that stays one: bash starts a child that exits soon, then becomes `sleep`,
  // which never waits for it. (A SIGKILLed daemon is one until init's sweep reaps it: about
  // 2 s on this VM, for good under a parent that does not wait.)
  const parent = spawn('bash', ['-c', 'sleep 0.3 & echo $!; exec sleep 120'], { stdio: ['ignore', 'pipe', 'ignore'] })
  try {
    const zombie = await new Promise<number>((resolve, reject) => {
      parent.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())))
      parent.once('exit', () => reject(new Error('the zombie maker exited')))
    })
    for (let i = 0; i < 100 && !/\) Z /.test(readFileSync(`/proc/${zombie}/stat`, 'utf8')); i++) await new Promise((r) => setTimeout(r, 20))
    assert.match(readFileSync(`/proc/${zombie}/stat`, 'utf8'), /\) Z /, 'the stand-in for the killed daemon is a zombie')
    // what a SIGKILLed daemon leaves: its pid lock (and its socket file, which nobody serves)
    mkdirSync(dirname(inst.socket), { recursive: true, mode: 0o700 })
    writeFileSync(`${inst.socket}.pid`, `${zombie}\n`)
    const r = await inst.run(['gcc', '-c', 'z.c', '-o', 'z.o'])
    assert.equal(r.code, 0, r.stderr)
    assert.match(readFileSync(`/proc/${zombie}/stat`, 'utf8'), /\) Z /, 'the zombie is still there: the compile did not wait it out')
    const s = await inst.stats()
    assert.equal(s.fallbacks, 0, `the compile went through a new daemon, not around it: ${JSON.stringify(s.fallback_reasons)}`)
    assert.equal(s.cache_misses, 1)
  } finally {
    parent.kill('SIGKILL')
  }
})

test('a daemon that cannot start means a plain local compile, counted as a fallback', async () => {
  const inst = fresh('', 'nostart')
  writeFileSync(join(inst.dir, 'f.c'), 'int f(void) { return 1; }\n')
  // a socket path whose directory cannot be created
  writeFileSync(join(inst.dir, 'blocker'), '')
  const r = await inst.run(['gcc', '-c', 'f.c', '-o', 'f.o'], { env: { MESHCC_SOCKET: join(inst.dir, 'blocker', 'd.sock') } })
  assert.equal(r.code, 0, r.stderr)
  assert.ok(existsSync(join(inst.dir, 'f.o')))
  const s = await inst.stats() // the working daemon folds in the launcher's journal
  assert.equal(s.fallbacks, 1)
  assert.equal((s.fallback_reasons as unknown as Record<string, number>)['daemon unreachable'], 1)
})

test('the daemon started by a launcher does not hold the caller\'s pipes open', async () => {
  const inst = fresh('', 'pipes')
  writeFileSync(join(inst.dir, 'p.c'), 'int p(void) { return 2; }\n')
  assert.equal(inst.daemonPid(), null, 'no daemon before the first compile')
  const child = spawn(MESHCC, ['gcc', '-c', 'p.c', '-o', 'p.o'], { cwd: inst.dir, env: inst.env, stdio: ['ignore', 'pipe', 'pipe'] })
  const started = Date.now()
  const exited = new Promise<number>((res) => child.on('exit', () => res(Date.now())))
  // read stdout and stderr to EOF, as ninja does
  const eof = (s: NodeJS.ReadableStream) => new Promise<void>((res) => { s.on('end', res); s.resume() })
  const timeout = new Promise<string>((res) => setTimeout(() => res('timeout'), 20_000))
  const outcome = await Promise.race([Promise.all([eof(child.stdout), eof(child.stderr)]).then(() => 'eof'), timeout])
  assert.equal(outcome, 'eof', 'pipes reached EOF')
  const eofAt = Date.now()
  const exitedAt = await exited
  assert.ok(Math.abs(eofAt - exitedAt) < 2000, 'EOF came with the launcher\'s exit, not later')
  assert.ok(Date.now() - started < 20_000)
  const pid = inst.daemonPid()
  assert.ok(pid !== null, 'the daemon is still running after the compile')
  process.kill(pid, 0)
})

test('@file response files are expanded and cached', async () => {
  const inst = fresh('', 'rsp')
  writeFileSync(join(inst.dir, 'r.c'), 'int r(void) { return VALUE; }\n')
  writeFileSync(join(inst.dir, 'args.rsp'), '-O2 "-DVALUE=4"\n-c r.c\n')
  for (let i = 0; i < 2; i++) {
    const r = await inst.run(['gcc', '@args.rsp', '-o', 'r.o'])
    assert.equal(r.code, 0, r.stderr)
  }
  const s = await inst.stats()
  assert.equal(s.cache_misses, 1)
  assert.equal(s.cache_hits, 1)
})

test('an output that is a device (-o /dev/null in configure probes) is left a device', async (t) => {
  const inst = fresh('', 'devnull')
  // a private null device in the test's own directory: the real /dev/null is never at risk
  const dev = join(inst.dir, 'null')
  const mk = await runCommand('mknod', [dev, 'c', '1', '3'])
  if (mk.code !== 0) {
    t.skip(`cannot create a device node here: ${mk.stderr.trim()}`)
    return
  }
  writeFileSync(join(inst.dir, 'probe.c'), 'int probe(void) { return 0; }\n')
  for (let i = 0; i < 2; i++) {
    const r = await inst.run(['gcc', '-c', 'probe.c', '-o', dev])
    assert.equal(r.code, 0, r.stderr)
    assert.ok(statSync(dev).isCharacterDevice(), 'still a character device')
  }
  const s = await inst.stats()
  assert.equal(s.non_cacheable, 2)
  assert.equal(readdirSync(inst.dir).filter((f) => f.includes('meshcc-tmp')).length, 0, 'no temp files left beside it')
})

test('.incbin makes a compile non-cacheable: a changed blob is never answered with a stale object', async () => {
  const inst = fresh('', 'incbin')
  writeFileSync(join(inst.dir, 'blob.bin'), 'first')
  writeFileSync(join(inst.dir, 'data.S'), '\t.section .rodata\n\t.globl blob\nblob:\n\t.incbin "blob.bin"\n')
  // settled sources qualify for direct and depend mode, whose file lists do not name blob.bin either
  await new Promise((r) => setTimeout(r, 1100))
  const build = async () => {
    const r = await inst.run(['gcc', '-c', 'data.S', '-o', 'data.o'])
    assert.equal(r.code, 0, r.stderr)
    const p = await runCommand('gcc', ['-c', 'data.S', '-o', 'plain.o'], { cwd: inst.dir })
    assert.equal(p.code, 0)
    assert.ok(readFileSync(join(inst.dir, 'data.o')).equals(readFileSync(join(inst.dir, 'plain.o'))), 'object matches the current blob')
  }
  await build()
  await build()
  writeFileSync(join(inst.dir, 'blob.bin'), 'second, longer')
  await build()
  const s = await inst.stats()
  assert.equal(s.cache_hits, 0)
  assert.equal((s.non_cacheable_reasons as unknown as Record<string, number>)['.incbin directive (reads a file the key cannot see)'], 3)
})

test('a cache directory on a full filesystem: compiles succeed, and the log says so once, not once per compile', async (t) => {
  const inst = fresh('', 'full')
  mkdirSync(inst.cacheDir, { recursive: true })
  // a 1 MiB tmpfs of the test's own as the cache directory, filled before the first compile
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'meshcc-test-full', inst.cacheDir], { encoding: 'utf8' })
  if (mounted.status !== 0) {
    t.skip(`cannot mount a tmpfs here: ${(mounted.stderr ?? '').trim()}`)
    return
  }
  try {
    const fd = openSync(join(inst.cacheDir, 'filler'), 'w')
    try { for (let i = 0; i < 32; i++) writeSync(fd, Buffer.alloc(64 * 1024, 1)) } catch { /* ENOSPC: full */ } finally { closeSync(fd) }
    for (let i = 0; i < 4; i++) {
      writeFileSync(join(inst.dir, `f${i}.c`), `int f${i}(int x) { return x + ${i}; }\n`)
      const r = await inst.run(['gcc', '-O2', '-c', `f${i}.c`, '-o', `f${i}.o`])
      assert.equal(r.code, 0, r.stderr)
      assert.ok(existsSync(join(inst.dir, `f${i}.o`)))
    }
    await inst.run(['--stop-server'])
    const logs = [join(inst.cacheDir, 'meshcc.log'), join(inst.dir, 'run', 'meshcc.log')].filter(existsSync).map((f) => readFileSync(f, 'utf8')).join('')
    const stores = logs.split('\n').filter((l) => / WARN .*(store|cache entr)/i.test(l))
    assert.equal(stores.length, 1, `one warning about storing results, not one per compile:\n${stores.join('\n')}`)
    assert.match(stores[0]!, /ENOSPC/)
    assert.doesNotMatch(logs, /^\s+at /m, 'no stack traces')
  } finally {
    await inst.run(['--stop-server'])
    spawnSync('umount', [inst.cacheDir])
  }
})
