// Hits across checkouts: the same small project at two absolute paths (different depths, as a
// CI workspace and a developer's tree), built CMake-style (absolute -I and source paths, build
// directory inside the checkout) through one daemon with one cache. Every unit whose object does
// not hold its path hits from the other checkout; __FILE__, assert and -g units miss unless the
// build maps the checkout away (-ffile-prefix-map), and then hit. Every object is compared
// with cmp-like equality against a plain compile at the second checkout, every depfile and
// every warning text too. Real gcc and clang, real daemon; preprocessor mode and direct mode.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createInstance, haveCommand, runCommand, writeTree, type Instance } from './helpers/meshcc.js'

const clang = haveCommand('clang') && haveCommand('clang++')
const cleanups: Array<() => Promise<void> | void> = []
after(async () => { for (const c of cleanups) await c() })

const PROJECT: Record<string, string> = {
  'include/util.h': '#pragma once\n#include <stddef.h>\nstatic inline size_t twice(size_t x) { return 2 * x; }\n',
  // a warning: the replayed diagnostic must name this checkout's file
  'src/plain.c': '#include "util.h"\n#include <stdio.h>\n#warning "kept for the test"\nint plain(int x) { printf("%d", x); return (int)twice((size_t)x); }\n',
  'src/calc.cpp': '#include "util.h"\n#include <vector>\n#include <string>\nstd::string calc(std::vector<int> v) { return std::to_string(twice(v.size())); }\n',
  'src/where.c': 'const char *where(void) { return __FILE__; }\n',
  'src/check.c': '#include <assert.h>\nint check(int x) { assert(x > 0); return x + 1; }\n'
}

interface Unit { cc: string; src: string; flags: string[]; clang?: boolean }

/** Two checkouts of PROJECT at different depths, their build directories made. */
function checkouts(): { a: string; b: string } {
  const top = mkdtempSync(join(tmpdir(), 'meshcc-checkouts-'))
  cleanups.push(() => rmSync(top, { recursive: true, force: true }))
  const a = join(top, 'ci', 'ws', 'proj')
  const b = join(top, 'home', 'dev', 'src', 'proj')
  for (const root of [a, b]) {
    writeTree(root, PROJECT)
    mkdirSync(join(root, 'build', 'obj'), { recursive: true })
  }
  return { a, b }
}

/** The unit's arguments as CMake writes them for the checkout at `root`, writing `out` (and `out`.d) for target `obj`. */
function args(u: Unit, root: string, obj: string, out = obj): string[] {
  const flags = u.flags.map((f) => f.replaceAll('$ROOT', root))
  return [...flags, `-I${root}/include`, '-MD', '-MT', `obj/${obj}`, '-MF', `obj/${out}.d`, '-o', `obj/${out}`, '-c', `${root}/src/${u.src}`]
}

async function counts(inst: Instance): Promise<{ hits: number; misses: number; direct: number }> {
  const s = await inst.stats()
  return { hits: s.cache_hits, misses: s.cache_misses, direct: s.direct_hits }
}

/**
 * Compile `u` in checkout A, then in checkout B; says whether B's compile hit. B's object,
 * depfile and diagnostics must be exactly a plain compile's at B.
 */
async function buildBoth(inst: Instance, a: string, b: string, u: Unit): Promise<boolean> {
  const obj = `${u.src}.${u.cc}.${u.flags.length}.o`
  // one stats call per pair (each is a CLI start): A's first compile of a command is a miss
  const before = await counts(inst)
  for (const root of [a, b]) {
    const r = await inst.run([u.cc, ...args(u, root, obj)], { cwd: join(root, 'build') })
    assert.equal(r.code, 0, r.stderr)
    if (root === a) continue
    const after = await counts(inst)
    const plain = await runCommand(u.cc, args(u, root, obj, `plain-${obj}`), { cwd: join(root, 'build') })
    assert.equal(plain.code, 0, plain.stderr)
    const at = (f: string) => readFileSync(join(root, 'build', 'obj', f))
    assert.ok(at(obj).equals(at(`plain-${obj}`)), `${u.cc} ${u.src} ${u.flags.join(' ')}: the object at B is byte-identical to a plain compile there`)
    const dep = at(`${obj}.d`).toString()
    assert.equal(dep, at(`plain-${obj}.d`).toString(), `${u.src}: the depfile at B is the one the compiler writes there`)
    assert.ok(dep.includes(`${b}/src/${u.src}`) && !dep.includes(a), `${u.src}: the depfile names B's files only:\n${dep}`)
    assert.equal(r.stderr, plain.stderr, `${u.src}: diagnostics as the compiler gives them at B`)
    if (u.src === 'plain.c') assert.ok(r.stderr.includes(`${b}/src/plain.c`), r.stderr)
    return after.hits > before.hits
  }
  throw new Error('unreachable')
}

const SHARED: Unit[] = [
  { cc: 'gcc', src: 'plain.c', flags: ['-O2'] },
  { cc: 'g++', src: 'calc.cpp', flags: ['-O2', '-std=c++17'] },
  { cc: 'clang', src: 'plain.c', flags: ['-O2'], clang: true },
  { cc: 'clang++', src: 'calc.cpp', flags: ['-O1'], clang: true }
]
/** Their objects hold the checkout's path: shared only under the opt-in. */
const PATH_BOUND: Unit[] = [
  { cc: 'gcc', src: 'where.c', flags: ['-O2'] },
  { cc: 'gcc', src: 'check.c', flags: ['-O2'] },
  { cc: 'gcc', src: 'plain.c', flags: ['-O2', '-g'] },
  { cc: 'clang', src: 'check.c', flags: ['-O2'], clang: true },
  { cc: 'clang++', src: 'calc.cpp', flags: ['-g'], clang: true }
]
/** The opt-in: the build maps the checkout away (-ffile-prefix-map covers debug info and __FILE__). */
const optIn = (u: Unit): Unit => ({ ...u, flags: [...u.flags, '-ffile-prefix-map=$ROOT=.'] })

for (const mode of ['direct', 'preprocessor'] as const) {
  test(`${mode} mode: a second checkout at another path hits wherever the object does not hold the path`, { timeout: 240_000 }, async () => {
    const inst = createInstance('', `checkouts-${mode}`)
    cleanups.push(() => inst.stop())
    if (mode === 'preprocessor') {
      writeFileSync(inst.conf, readFileSync(inst.conf, 'utf8').replace('[cache]\n', '[cache]\ndirect = false\n'))
    }
    const { a, b } = checkouts()
    await sleep(1100) // files this new are not trusted into a manifest
    for (const u of SHARED) {
      if (u.clang && !clang) continue
      assert.equal(await buildBoth(inst, a, b, u), true, `${u.cc} ${u.src} ${u.flags.join(' ')}: a hit from the other checkout`)
    }
    for (const u of PATH_BOUND) {
      if (u.clang && !clang) continue
      assert.equal(await buildBoth(inst, a, b, u), false, `${u.cc} ${u.src} ${u.flags.join(' ')}: its object holds the path, a miss`)
      assert.equal(await buildBoth(inst, a, b, optIn(u)), true, `${u.cc} ${u.src} ${u.flags.join(' ')} -ffile-prefix-map: a hit`)
    }
    if (mode === 'direct') assert.ok((await counts(inst)).direct > 0, 'the hits came through manifests')
  })
}

test('direct mode: a hit from another checkout writes its depfile without running the compiler there', { timeout: 120_000 }, async () => {
  const inst = createInstance('', 'checkouts-nopp')
  cleanups.push(() => inst.stop())
  const { a, b } = checkouts()
  // the compilers, each logging its runs: the wrapper is the compiler meshcc sees at both checkouts
  const bin = join(a, '..', '..', 'bin')
  mkdirSync(bin, { recursive: true })
  const log = join(bin, 'runs.log')
  const units: Unit[] = [{ cc: 'gcc', src: 'plain.c', flags: ['-O2'] }, ...(clang ? [{ cc: 'clang++', src: 'calc.cpp', flags: ['-O1'], clang: true }] : [])]
  for (const u of units) {
    const real = (await runCommand('sh', ['-c', `command -v ${u.cc}`])).stdout.trim()
    writeFileSync(join(bin, u.cc), `#!/bin/sh\necho "$PWD $*" >> ${log}\nexec ${real} "$@"\n`, { mode: 0o755 })
  }
  await sleep(1100) // files this new are not trusted into a manifest
  for (const u of units) {
    const cc = join(bin, u.cc)
    const obj = `${u.src}.nopp.o`
    const run = (root: string, out = obj) => inst.run([cc, ...args(u, root, obj, out)], { cwd: join(root, 'build') })
    assert.equal((await run(a)).code, 0)
    writeFileSync(log, '')
    const before = await counts(inst)
    const r = await run(b)
    assert.equal(r.code, 0, r.stderr)
    const after = await counts(inst)
    assert.equal(after.direct - before.direct, 1, `${u.cc} ${u.src}: a direct hit from checkout A`)
    assert.equal(readFileSync(log, 'utf8'), '', `${u.cc} ${u.src}: the hit ran the compiler at B:\n${readFileSync(log, 'utf8')}`)
    const plain = await runCommand(u.cc, args(u, b, obj, `plain-${obj}`), { cwd: join(b, 'build') })
    assert.equal(plain.code, 0, plain.stderr)
    const at = (f: string) => readFileSync(join(b, 'build', 'obj', f), 'utf8')
    assert.equal(at(`${obj}.d`), at(`plain-${obj}.d`), `${u.cc} ${u.src}: the depfile at B is the one the compiler writes there`)
  }
})
