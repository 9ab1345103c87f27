// Discover + pack real compilers, unpack them, and prove the archive is complete by
// compiling in a sandbox whose root is nothing but the unpacked toolchain: the object
// must be byte-identical to the one the host compiler makes from the same input.
import { test, after, before } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, execFileSync } from 'node:child_process'
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { list as tarList, type ReadEntry } from 'tar'
import { discoverToolchain } from '../src/toolchain/discover.js'
import { packToolchain, packToolchainCached, relativeLinkTarget, type PackResult } from '../src/toolchain/pack.js'
import { unpackToolchain } from '../src/toolchain/unpack.js'
import type { ToolchainSpec } from '../src/toolchain/types.js'

const run = promisify(execFile)
const dirs: string[] = []
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }) })

function tempDir(prefix = 'meshcc-tc-pack-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix))
  dirs.push(d)
  return d
}

async function listArchive(file: string): Promise<Array<{ path: string; type: string; mode: number; uid: number; gid: number; uname: string; gname: string; mtime: number; linkpath: string; size: number }>> {
  const out: Array<{ path: string; type: string; mode: number; uid: number; gid: number; uname: string; gname: string; mtime: number; linkpath: string; size: number }> = []
  await tarList({ file, onReadEntry: (e: ReadEntry) => {
    out.push({ path: e.path, type: e.type, mode: e.mode ?? -1, uid: e.uid ?? -1, gid: e.gid ?? -1, uname: e.uname ?? '', gname: e.gname ?? '', mtime: e.mtime?.getTime() ?? -1, linkpath: e.linkpath ?? '', size: e.size })
  } })
  return out
}

test('relativeLinkTarget climbs to the root for absolute targets and keeps relative ones', () => {
  assert.equal(relativeLinkTarget('/usr/bin/z', '/x/y'), '../../x/y')
  assert.equal(relativeLinkTarget('/lib64', '/usr/lib64'), 'usr/lib64')
  assert.equal(relativeLinkTarget('/usr/lib64/ld-linux-x86-64.so.2', '/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2'), '../../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2')
  assert.equal(relativeLinkTarget('/usr/bin/gcc', 'gcc-12'), 'gcc-12')
  assert.equal(relativeLinkTarget('/a/b', '/'), '..')
  assert.equal(relativeLinkTarget('/b', '/'), '.')
})

test('a hand-made toolchain packs deterministically, with symlinked directories resolved', async () => {
  // host layout: <t>/real/bin/tool (exec), <t>/real/lib/libx.so, <t>/bin -> real/bin,
  // <t>/real/bin/alias -> <abs>/bin/tool (absolute, through the dir link), data file with setuid-ish mode
  const t = tempDir()
  mkdirSync(join(t, 'real/bin'), { recursive: true })
  mkdirSync(join(t, 'real/lib'), { recursive: true })
  writeFileSync(join(t, 'real/bin/tool'), 'tool', { mode: 0o750 })
  writeFileSync(join(t, 'real/lib/libx.so'), 'lib', { mode: 0o600 })
  symlinkSync('real/bin', join(t, 'bin'))
  symlinkSync(join(t, 'bin/tool'), join(t, 'real/bin/alias'))
  const spec: ToolchainSpec = { compiler: join(t, 'bin/alias'), files: [join(t, 'bin/../real/lib/libx.so')] }
  const out1 = tempDir()
  const out2 = tempDir()
  const a = await packToolchain(spec, out1)
  const b = await packToolchain({ compiler: spec.compiler, files: [...spec.files].reverse() }, out2)
  assert.equal(a.hash, b.hash)
  assert.match(a.hash, /^[0-9a-f]{64}$/)
  assert.equal(a.archive, join(out1, `${a.hash}.tar.gz`))
  assert.equal(statSync(a.archive).size, a.bytes)
  assert.deepEqual(readFileSync(a.archive), readFileSync(b.archive))

  const entries = await listArchive(a.archive)
  const names = entries.map((e) => e.path)
  assert.deepEqual(names, [...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))), 'sorted')
  for (const e of entries) {
    assert.ok(!e.path.startsWith('/'), e.path)
    assert.equal(e.uid, 0); assert.equal(e.gid, 0); assert.equal(e.uname, ''); assert.equal(e.gname, '')
    assert.equal(e.mtime, 0, `${e.path} mtime`)
  }
  const rel = t.slice(1)
  const byName = new Map(entries.map((e) => [e.path.replace(/\/$/, ''), e]))
  for (const m of ['proc', 'dev', 'tmp', 'tmp' + t.slice(4)]) assert.equal(byName.get(m)?.type, 'Directory', m)
  assert.equal(byName.get(`${rel}/bin`)?.type, 'SymbolicLink')
  assert.equal(byName.get(`${rel}/bin`)?.linkpath, 'real/bin')
  assert.equal(byName.get(`${rel}/real/bin/alias`)?.linkpath, '../'.repeat(rel.split('/').length + 2) + `${rel}/bin/tool`)
  assert.equal(byName.get(`${rel}/real/bin/tool`)?.mode, 0o755)
  assert.equal(byName.get(`${rel}/real/lib/libx.so`)?.mode, 0o644)
  assert.equal(byName.has(`${rel}/bin/tool`), false, 'nothing stored below a symlink')

  const root = join(tempDir(), 'root')
  await unpackToolchain(a.archive, root)
  // The compiler path as invoked resolves inside the root: alias -> /abs/bin/tool -> real/bin/tool.
  assert.equal(readFileSync(join(root, rel, 'real/bin/alias'), 'utf8'), 'tool')
  assert.equal(readlinkSync(join(root, rel, 'bin')), 'real/bin')
})

// --- real compilers ---

const C_SOURCE = `#include <stdio.h>
#include <math.h>
#include <string.h>
struct point { double x, y; };
static double norm(struct point p) { return sqrt(p.x * p.x + p.y * p.y); }
int main(int argc, char **argv) {
  struct point p = { argc, (double)strlen(argv[0]) };
  printf("%s %f\\n", argv[0], norm(p));
  return 0;
}
`
const CXX_SOURCE = `#include <map>
#include <string>
#include <vector>
#include <iostream>
#include <algorithm>
template <typename T> T total(const std::vector<T>& v) { T s{}; for (auto& x : v) s += x; return s; }
int count_words(const std::vector<std::string>& words) {
  std::map<std::string, int> m;
  for (auto& w : words) m[w]++;
  std::cout << total(std::vector<int>{1, 2, 3}) << "\\n";
  return (int)std::count_if(m.begin(), m.end(), [](auto& kv) { return kv.second > 1; });
}
`

let sandboxKind: 'bwrap' | 'chroot' = 'bwrap'
const jobRoot = tempDir('meshcc-tc-job-')

before(async () => {
  writeFileSync(join(jobRoot, 'a.c'), C_SOURCE)
  writeFileSync(join(jobRoot, 'b.cc'), CXX_SOURCE)
  // Each compiler preprocesses for itself: gcc's .i uses glibc attributes clang rejects.
  await run('/usr/bin/gcc', ['-E', 'a.c', '-o', 'gcc.i'], { cwd: jobRoot })
  await run('/usr/bin/g++', ['-E', 'b.cc', '-o', 'g++.ii'], { cwd: jobRoot })
  await run('/usr/bin/clang', ['-E', 'a.c', '-o', 'clang.i'], { cwd: jobRoot })
  await run('/usr/bin/clang', ['-E', '-x', 'c++', 'b.cc', '-o', 'clang.ii'], { cwd: jobRoot })
  try {
    execFileSync('bwrap', ['--ro-bind', '/', '/', '--unshare-all', '--die-with-parent', 'true'], { stdio: 'pipe' })
  } catch (err) {
    sandboxKind = 'chroot'
    process.stderr.write(`# bwrap cannot run here (${String((err as Error).message).split('\n')[0]}); FALLING BACK TO chroot\n`)
  }
})

/** Compile in a sandbox rooted at the toolchain; returns the object bytes. */
async function compileIsolated(root: string, compiler: string, args: string[], jobName: string): Promise<Buffer> {
  const job = join(jobRoot, jobName)
  mkdirSync(job)
  const input = args[args.length - 1]
  cpSync(join(jobRoot, input), join(job, input))
  const full = [...args.slice(0, -1), input, '-o', 'out.o']
  if (sandboxKind === 'bwrap') {
    await run('bwrap', ['--ro-bind', root, '/', '--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '--bind', job, job, '--chdir', job,
      '--unshare-all', '--die-with-parent', '--clearenv', '--setenv', 'PATH', '/usr/bin:/bin', compiler, ...full], { env: {} })
    return readFileSync(join(job, 'out.o'))
  }
  // chroot fallback: the job dir has to exist inside the (here writable) root, and chroot(1)
  // starts in /, so paths are absolute (objects built with -g may then differ in comp_dir).
  const inner = join(root, job)
  mkdirSync(inner, { recursive: true })
  cpSync(join(job, input), join(inner, input))
  const abs = full.map((a) => (a === input || a === 'out.o' ? join(job, a) : a))
  await run('chroot', [root, compiler, ...abs], { env: { PATH: '/usr/bin:/bin' } })
  return readFileSync(join(inner, 'out.o'))
}

async function compileOnHost(compiler: string, args: string[], jobName: string): Promise<Buffer> {
  // Same absolute directory as in the sandbox: -g records it.
  const job = join(jobRoot, jobName)
  mkdirSync(job)
  const input = args[args.length - 1]
  cpSync(join(jobRoot, input), join(job, input))
  await run(compiler, [...args.slice(0, -1), input, '-o', 'out.o'], { cwd: job, env: { PATH: '/usr/bin:/bin' } })
  const obj = readFileSync(join(job, 'out.o'))
  rmSync(job, { recursive: true })
  return obj
}

async function assertSameObject(root: string, compiler: string, args: string[], name: string): Promise<void> {
  const host = await compileOnHost(compiler, args, name)
  const isolated = await compileIsolated(root, compiler, args, name)
  assert.ok(host.length > 500, `${name}: host object looks empty`)
  assert.ok(host.equals(isolated), `${name}: object compiled in the sandbox differs from the host's (${isolated.length} vs ${host.length} bytes)`)
}

function timed<T>(label: string, fn: () => Promise<T>): Promise<T> {
  const t = Date.now()
  return fn().then((v) => {
    process.stderr.write(`# ${label}: ${Date.now() - t} ms\n`)
    return v
  })
}

test('gcc and g++: discovered, packed deterministically and once, and enough to compile in isolation', async (t) => {
  const gcc = await timed('discover gcc', () => discoverToolchain('/usr/bin/gcc', 'gcc'))
  assert.equal(gcc.compiler, '/usr/bin/gcc')
  assert.deepEqual(gcc.files, [...new Set(gcc.files)].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))))
  for (const f of ['/usr/bin/gcc', '/usr/bin/gcc-12', '/usr/bin/x86_64-linux-gnu-gcc-12', '/usr/lib/gcc/x86_64-linux-gnu/12/cc1',
    '/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus', '/usr/bin/as', '/usr/bin/x86_64-linux-gnu-as', '/lib64', '/lib']) {
    assert.ok(gcc.files.includes(f), `gcc toolchain lacks ${f}`)
  }
  assert.ok(gcc.files.some((f) => /\/libc\.so\.6$/.test(f)), 'libc')
  assert.ok(gcc.files.some((f) => /\/ld-linux-x86-64\.so\.2$/.test(f) && lstatSync(f).isFile()), 'the dynamic loader itself')
  assert.ok(gcc.files.some((f) => /\/libisl\.so/.test(f)), "cc1's libraries")
  assert.ok(!gcc.files.some((f) => f.includes('ld.so.cache')), 'no ld.so.cache')
  const again = await discoverToolchain('/usr/bin/gcc', 'gcc')
  assert.deepEqual(again, gcc, 'memoised result is stable')

  const out = tempDir()
  const first = await timed('packToolchainCached gcc', () => packToolchainCached('/usr/bin/gcc', 'gcc', out))
  const second: PackResult = await timed('pack gcc again', () => packToolchain(gcc, tempDir()))
  assert.equal(second.hash, first.hash, 'packing twice gives the same hash')
  t.diagnostic(`gcc archive ${first.bytes} bytes (${(first.bytes / 1048576).toFixed(1)} MiB), ${gcc.files.length} files`)

  // Cached: no repack in this process, nor after a "restart" (a fresh directory key with the same index).
  const cached = await timed('packToolchainCached gcc (memo)', () => packToolchainCached('/usr/bin/gcc', 'gcc', out))
  assert.deepEqual(cached, first)
  const restarted = tempDir()
  cpSync(out, restarted, { recursive: true })
  const mtime = statSync(join(restarted, `${first.hash}.tar.gz`)).mtimeMs
  const fromIndex = await timed('packToolchainCached gcc (index)', () => packToolchainCached('/usr/bin/gcc', 'gcc', restarted))
  assert.equal(fromIndex.hash, first.hash)
  assert.equal(statSync(fromIndex.archive).mtimeMs, mtime, 'archive not rewritten')
  assert.ok(existsSync(join(restarted, 'toolchains.json')))

  const root = join(tempDir(), 'root')
  await timed('unpack gcc', () => unpackToolchain(first.archive, root))
  await assertSameObject(root, '/usr/bin/gcc', ['-O2', '-x', 'cpp-output', '-c', 'gcc.i'], 'gcc-c')
  await assertSameObject(root, '/usr/bin/gcc', ['-O1', '-g', '-fPIC', '-x', 'c++-cpp-output', '-c', 'g++.ii'], 'gcc-cxx')

  // g++ is its own driver (g++ -> g++-12 -> x86_64-linux-gnu-g++-12).
  const gxx = await discoverToolchain('/usr/bin/g++', 'gcc')
  assert.ok(gxx.files.includes('/usr/bin/x86_64-linux-gnu-g++-12'))
  const gxxPack = await timed('pack g++', () => packToolchain(gxx, out))
  assert.notEqual(gxxPack.hash, first.hash)
  const gxxRoot = join(tempDir(), 'root')
  await unpackToolchain(gxxPack.archive, gxxRoot)
  await assertSameObject(gxxRoot, '/usr/bin/g++', ['-O2', '-g', '-x', 'c++-cpp-output', '-c', 'g++.ii'], 'gxx-cxx')
  t.diagnostic(`sandbox: ${sandboxKind}`)
})

test('clang: discovered, packed, and enough to compile C and C++ in isolation', async (t) => {
  const clang = await timed('discover clang', () => discoverToolchain('/usr/bin/clang', 'clang'))
  for (const f of ['/usr/bin/clang', '/usr/lib/llvm-14/bin/clang']) assert.ok(clang.files.includes(f), `clang toolchain lacks ${f}`)
  for (const re of [/\/libLLVM-14\.so/, /\/libclang-cpp\.so/, /\/libstdc\+\+\.so/, /\/libc\.so\.6$/, /asan_ignorelist\.txt$/]) {
    assert.ok(clang.files.some((f) => re.test(f)), `clang toolchain lacks ${re}`)
  }
  assert.ok(!clang.files.some((f) => /\/include\//.test(f)), 'no headers: the input is preprocessed')
  assert.ok(!clang.files.some((f) => /-as$/.test(f)), 'no assembler: clang assembles itself')
  // Packed once (libLLVM alone is ~105 MB): determinism is covered by the gcc and hand-made cases.
  const packed = await timed('pack clang', () => packToolchain(clang, tempDir()))
  t.diagnostic(`clang archive ${packed.bytes} bytes (${(packed.bytes / 1048576).toFixed(1)} MiB), ${clang.files.length} files`)
  const root = join(tempDir(), 'root')
  const stats = await timed('unpack clang', () => unpackToolchain(packed.archive, root))
  t.diagnostic(`clang unpacked: ${(stats.fileBytes / 1048576).toFixed(1)} MiB in ${stats.entries} entries`)
  await assertSameObject(root, '/usr/bin/clang', ['-O2', '-x', 'cpp-output', '-c', 'clang.i'], 'clang-c')
  await assertSameObject(root, '/usr/bin/clang', ['-O2', '-g', '-x', 'c++-cpp-output', '-c', 'clang.ii'], 'clang-cxx')
  // -fsanitize reads the default ignorelist from the resource dir.
  await assertSameObject(root, '/usr/bin/clang', ['-O1', '-fsanitize=address', '-x', 'cpp-output', '-c', 'clang.i'], 'clang-asan')
  t.diagnostic(`sandbox: ${sandboxKind}`)
})
