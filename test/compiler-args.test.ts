// gcc/clang argument classification and the depfile/key details, checked against what the
// real compilers do where it matters (the end-to-end tests compare whole builds).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseGccArgs } from '../src/compiler/gcc.js'
import { splitResponseFile } from '../src/compiler/response-file.js'
import { runCommand } from './helpers/meshcc.js'

const cwd = '/work/proj'
const ok = (args: string[], family: 'gcc' | 'clang' = 'gcc') => {
  const r = parseGccArgs(args, cwd, family)
  if (!r.cacheable) assert.fail(`expected cacheable, got: ${r.reason}`)
  return r.spec
}
const no = (args: string[], reason: RegExp) => {
  const r = parseGccArgs(args, cwd, 'gcc')
  assert.equal(r.cacheable, false, `${args.join(' ')} should not be cacheable`)
  if (!r.cacheable) assert.match(r.reason, reason)
}

test('cacheable compiles of C, C++, Objective-C and preprocessed assembly', () => {
  assert.equal(ok(['-c', 'a.c', '-o', 'a.o']).language, 'c')
  assert.equal(ok(['-c', 'a.cpp']).language, 'c++')
  assert.equal(ok(['-c', 'a.cc', '-O2', '-std=c++17', '-DX=1', '-I', 'inc', '-isystem', 'sys']).language, 'c++')
  assert.equal(ok(['-c', 'a.m']).language, 'objective-c')
  assert.equal(ok(['-c', 'a.S']).language, 'assembler-with-cpp')
  assert.equal(ok(['-x', 'c++', '-c', 'a.inc']).language, 'c++')
  assert.deepEqual(ok(['-c', 'dir/a.c']).outputs, [{ name: 'obj', path: 'a.o' }])
})

test('not cacheable: link, -E, several sources, stdin, PCH, -save-temps, profiling, unknown options', () => {
  no(['a.c', '-o', 'a'], /no -c/)
  no(['-E', 'a.c'], /-E/)
  no(['-c', 'a.c', 'b.c'], /multiple input/)
  no(['-c', '-x', 'c', '-'], /stdin/)
  no(['-c', 'a.h', '-o', 'a.h.gch'], /unsupported source type/)
  no(['-c', '-x', 'c-header', 'a.h'], /unsupported language c-header/)
  no(['-c', 'a.c', '-save-temps'], /save-temps/)
  no(['-c', 'a.c', '-fprofile-generate'], /profile/)
  no(['-c', 'a.c', '--coverage'], /coverage/)
  no(['-c', 'a.c', '-fplugin=x.so'], /plugin/)
  no(['-c', 'a.c', '--frobnicate'], /unknown option --frobnicate/)
  no(['-c', 'a.c', '-gsplit-dwarf'], /split DWARF/)
  no(['-c', 'a.c', '-MG', '-MD'], /-MG/)
  no(['-c', 'a.s'], /unsupported source type \.s/)
  no(['-c', 'a.c', '-Wa,-adhln=a.lst'], /assembler output/)
  no(['-c', 'a.c', '@/nonexistent/rsp'], /unreadable response file/)
})

test('-fdirectives-only preprocessing: gcc C and C++ only, and not with options that change what the preprocessor writes', async () => {
  assert.equal(ok(['-c', 'a.c', '-O2', '-Wp,-MMD,a.d']).directivesOnly, true)
  assert.equal(ok(['-c', 'a.cpp']).directivesOnly, true)
  assert.equal(ok(['-c', 'a.c'], 'clang').directivesOnly, false)
  assert.equal(ok(['-c', 'a.S']).directivesOnly, false)
  for (const a of ['-C', '-CC', '-P', '-traditional-cpp', '-trigraphs', '-fpreprocessed', '-fno-directives-only']) {
    assert.equal(ok(['-c', 'a.c', a]).directivesOnly, false, a)
  }
  const spec = ok(['-c', 'a.c'])
  assert.ok(spec.preprocessArgs(null, true).includes('-fdirectives-only'))
  assert.ok(!spec.preprocessArgs(null).includes('-fdirectives-only'))
  // what the mode is chosen for, on real gcc: the same files named, the same depfile written
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-dironly-'))
  try {
    writeFileSync(join(dir, 'h.h'), '#define TWICE(x) ((x) * 2) /* a comment */\n#include <stddef.h>\n')
    writeFileSync(join(dir, 'a.c'), '#include "h.h"\n#if defined(TWICE)\n#include <limits.h>\n#endif\nint a(void) { return TWICE(INT_MAX / 4); }\n')
    const s = ok(['-c', 'a.c', '-MD'])
    const markers = (t: string) => [...new Set(t.split('\n').filter((l) => /^# \d+ "/.test(l)).map((l) => l.split('"')[1]))].sort()
    const full = await runCommand('gcc', s.preprocessArgs(join(dir, 'full.d')), { cwd: dir })
    const dOnly = await runCommand('gcc', s.preprocessArgs(join(dir, 'donly.d'), true), { cwd: dir })
    assert.equal(full.code, 0, full.stderr)
    assert.equal(dOnly.code, 0, dOnly.stderr)
    assert.deepEqual(markers(dOnly.stdout), markers(full.stdout))
    assert.ok(markers(full.stdout).some((f) => f.endsWith('/limits.h')))
    assert.equal(readFileSync(join(dir, 'donly.d'), 'utf8'), readFileSync(join(dir, 'full.d'), 'utf8'))
    assert.match(dOnly.stdout, /TWICE\(INT_MAX/, 'macros stay unexpanded')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('output name does not enter the key; the depfile target does', () => {
  const a = ok(['-c', 'a.c', '-o', 'x/a.o', '-O2'])
  const b = ok(['-c', 'a.c', '-o', 'y/b.o', '-O2'])
  assert.deepEqual(a.keyArgs, b.keyArgs)
  const da = ok(['-c', 'a.c', '-o', 'x/a.o', '-MD'])
  const db = ok(['-c', 'a.c', '-o', 'y/b.o', '-MD'])
  assert.equal(da.depTarget, 'x/a.o')
  assert.notEqual(da.depTarget, db.depTarget)
  assert.deepEqual(da.outputs, [{ name: 'obj', path: 'x/a.o' }, { name: 'dep', path: 'x/a.d' }])
})

test('working directory enters the key only with debug info and no prefix map covering it', () => {
  assert.equal(ok(['-c', 'a.c']).cwdInKey, false)
  assert.equal(ok(['-c', 'a.c', '-g']).cwdInKey, true)
  assert.equal(ok(['-c', 'a.c', '-g', '-g0']).cwdInKey, false)
  assert.equal(ok(['-c', 'a.c', '-g', `-fdebug-prefix-map=${cwd}=.`]).cwdInKey, false)
  assert.equal(ok(['-c', 'a.c', '-g', '-ffile-prefix-map=/work=/src']).cwdInKey, false)
  assert.equal(ok(['-c', 'a.c', '-g', '-ffile-prefix-map=/elsewhere=/src']).cwdInKey, true)
})

test('response files split like gcc does', () => {
  assert.deepEqual(splitResponseFile(`-O2 "-DMSG=hello world" 'a b.c'\n-I\\ spaced\n`), ['-O2', '-DMSG=hello world', 'a b.c', '-I spaced'])
})

// The depfile our preprocessing run writes must equal the compiler's own, for every form.
const depForms: string[][] = [
  ['-MD'], ['-MMD'], ['-MD', '-MF', 'deps/out.dep'], ['-MMD', '-MT', 'custom target'], ['-MD', '-MQ', 'q$target'],
  ['-MD', '-MP'], ['-MMD', '-MT', 'a', '-MT', 'b', '-MP'], ['-Wp,-MMD,deps/wp.d'], ['-Wp,-MD,deps/wp2.d', '-MT', 'zz']
]
for (const family of ['gcc', 'clang'] as const) {
  test(`depfiles from the preprocessing run equal ${family}'s own`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deps-'))
    try {
      mkdirSync(join(dir, 'out'))
      mkdirSync(join(dir, 'deps'))
      mkdirSync(join(dir, 'inc'))
      writeFileSync(join(dir, 'inc', 'h.h'), '#define H 1\n')
      writeFileSync(join(dir, 'src.c'), '#include <stdio.h>\n#include "h.h"\nint f(void) { return H; }\n')
      for (const form of depForms) {
        const args = ['-c', 'src.c', '-Iinc', '-o', 'out/obj.o', ...form]
        const spec = parseGccArgs(args, dir, family)
        assert.ok(spec.cacheable, `${form.join(' ')} cacheable`)
        if (!spec.cacheable) continue
        const plain = await runCommand(family, args, { cwd: dir })
        assert.equal(plain.code, 0, plain.stderr)
        const depPath = spec.spec.outputs.find((o) => o.name === 'dep')!.path
        const expected = readFileSync(join(dir, depPath))
        // the depfile comes from the preprocessing run, the object from a compile without dependency options
        const pp = await runCommand(family, spec.spec.preprocessArgs(join(dir, 'tmp.d')), { cwd: dir })
        assert.equal(pp.code, 0, pp.stderr)
        assert.equal(readFileSync(join(dir, 'tmp.d'), 'utf8'), expected.toString('utf8'), `${family} ${form.join(' ')}`)
        const r = await runCommand(family, spec.spec.compileArgs(join(dir, 'tmp.o')), { cwd: dir })
        assert.equal(r.code, 0, r.stderr)
        assert.ok(readFileSync(join(dir, 'tmp.o')).equals(readFileSync(join(dir, 'out/obj.o'))), `object for ${form.join(' ')}`)
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
}

test('depfile prerequisites: continuations, escaped spaces, $$, -MP rules', async () => {
  const { depfilePrerequisites } = await import('../src/compiler/depfile.js')
  const text = 'out/a.o: src/a.c include/my\\ dir/h.h \\\n  /usr/include/stdio.h price$$.h\n\ninclude/my\\ dir/h.h:\n'
  assert.deepEqual(depfilePrerequisites(text), ['src/a.c', 'include/my dir/h.h', '/usr/include/stdio.h', 'price$.h'])
  assert.deepEqual(depfilePrerequisites('a.o b.o: x.c\n'), ['x.c'])
  assert.deepEqual(depfilePrerequisites('garbage without a rule\n'), [])
})

test('search paths, prefix maps and the source enter the key relative to the working directory when they lie in its tree', () => {
  const at = (root: string, extra: string[] = []) => {
    const r = parseGccArgs([...extra, `-I${root}/include`, '-isystem', `${root}/third`, '-I/usr/local/include', `-ffile-prefix-map=${root}=.`, '-c', `${root}/src/a.c`], `${root}/build`, 'gcc')
    if (!r.cacheable) assert.fail(r.reason)
    return r.spec
  }
  const ci = at('/var/lib/ci/ws/proj')
  const dev = at('/home/dev/src/proj')
  assert.deepEqual(ci.keyArgs, dev.keyArgs, 'two checkouts, one key')
  assert.ok(!ci.keyArgs.some((a) => a.includes('/var/lib')), ci.keyArgs.join(' '))
  assert.ok(ci.keyArgs.includes('-I/usr/local/include'), 'a path outside the checkout\'s tree stays as it is')
  // a path the build gives relative is not the same argument as an absolute one
  const rel = parseGccArgs(['-I../include', '-c', '../src/a.c'], '/home/dev/src/proj/build', 'gcc')
  const abs = parseGccArgs(['-I/home/dev/src/proj/include', '-c', '../src/a.c'], '/home/dev/src/proj/build', 'gcc')
  assert.ok(rel.cacheable && abs.cacheable)
  assert.notDeepEqual(rel.spec.keyArgs, abs.spec.keyArgs)
  // what reaches the object does not move: -fdebug-compilation-dir, -D values
  assert.notDeepEqual(at('/var/lib/ci/ws/proj', ['-fdebug-compilation-dir=/var/lib/ci/ws/proj']).keyArgs,
    at('/home/dev/src/proj', ['-fdebug-compilation-dir=/home/dev/src/proj']).keyArgs)
  assert.deepEqual(ci.paths.debugMaps, [['/var/lib/ci/ws/proj', '.']])
  assert.equal(ok(['-c', 'a.c', '-fsanitize=address']).paths.namesInCode, '-fsanitize')
  assert.equal(ok(['-c', 'a.S']).paths.namesInCode, 'assembler source')
  assert.equal(ok(['-c', 'a.c', '-Wa,--gdwarf-5']).paths.debug, true)
})

test('a depfile moved to another checkout is rewrapped as its writer wraps it, or refused when that is not exact', async () => {
  const { relocateDepfile } = await import('../src/compiler/depfile.js')
  const move = (n: string) => n.replace('/ci/ws/', '/home/developer/src/')
  // gcc: a name that would pass column 72 starts a new line, one space in; -MP's rules one per line
  const gcc = 'obj/a.o: /ci/ws/src/a.c /ci/ws/include/util.h /usr/include/stdio.h\n/ci/ws/include/util.h:\n/usr/include/stdio.h:\n'
  assert.equal(relocateDepfile(gcc, 'gcc', move),
    'obj/a.o: /home/developer/src/src/a.c /home/developer/src/include/util.h \\\n /usr/include/stdio.h\n/home/developer/src/include/util.h:\n/usr/include/stdio.h:\n')
  // clang: 75 columns with room for " \", two spaces in, each -MP rule after an empty line
  const clang = 'obj/a.o: /ci/ws/src/a.c /ci/ws/include/util.h /usr/include/stdio.h\n\n/ci/ws/include/util.h:\n\n/usr/include/stdio.h:\n'
  assert.equal(relocateDepfile(clang, 'clang', move),
    'obj/a.o: /home/developer/src/src/a.c /home/developer/src/include/util.h \\\n  /usr/include/stdio.h\n\n/home/developer/src/include/util.h:\n\n/usr/include/stdio.h:\n')
  // refused: the other writer's form, an escaped name, a name that would need escaping once moved, no rule
  assert.equal(relocateDepfile(clang, 'gcc', move), null)
  assert.equal(relocateDepfile(gcc, 'clang', move), null)
  assert.equal(relocateDepfile('a.o: my\\ dir/h.h\n', 'gcc', move), null)
  assert.equal(relocateDepfile('a.o: /ci/ws/h.h\n', 'gcc', (n) => n.replace('/ci/ws/', '/my dir/')), null)
  assert.equal(relocateDepfile('garbage\n', 'gcc', move), null)
})
