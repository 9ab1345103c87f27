// The input list a builder gets and direct mode records, read off the preprocessor's line
// markers, and the dependency files depend mode reads: all checked against what real gcc and
// clang write. The ground truth for a unit's files is the compiler's own dependency list (-MD)
// from the same preprocessing run.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { InputScanner, inputsFromPreprocessed } from '../src/compiler/inputs.js'
import { depfilePrerequisites } from '../src/compiler/depfile.js'
import { haveCommand, runCommand } from './helpers/meshcc.js'

const clang = haveCommand('clang') && haveCommand('clang++')

/**
 * Feed `pp` to a scanner in chunks of the given sizes (repeated), as a pipe would deliver it.
 * The text it passes to its sink, with each name put back between its quotes, must be `pp`
 * byte for byte (the cache key hashes that stream with the names replaced).
 */
function scan(pp: Buffer, dir: string, main: string, sizes: number[] = [pp.length]): string[] {
  const parts: Buffer[] = []
  const s = new InputScanner(dir, resolve(dir, main), {
    text: (b, start, end) => { parts.push(Buffer.from(b.subarray(start, end))) },
    name: (raw) => { parts.push(Buffer.from(`"${raw}"`, 'latin1')) }
  })
  for (let at = 0, i = 0; at < pp.length; i++) {
    const n = Math.max(1, sizes[i % sizes.length]!)
    s.push(pp.subarray(at, at + n))
    at += n
  }
  const files = s.finish().files
  assert.ok(Buffer.concat(parts).equals(pp), `the sink's text is the preprocessed text (chunks of up to ${Math.max(...sizes)} bytes)`)
  return files
}

/** One preprocessing run: its output and the files the compiler itself lists (-MD, same run). */
async function preprocess(cc: string, args: string[], dir: string, main: string): Promise<{ pp: Buffer; deps: string[] }> {
  const depPath = join(dir, 'truth.d')
  const r = await runCommand(cc, [...args, '-E', '-MD', '-MF', depPath, main], { cwd: dir })
  assert.equal(r.code, 0, `${cc} ${args.join(' ')} -E ${main}: ${r.stderr}`)
  const deps = [...new Set(depfilePrerequisites(readFileSync(depPath, 'utf8')).map((p) => resolve(dir, p)))].sort()
  rmSync(depPath)
  return { pp: r.stdoutBuf, deps }
}

/** Chunk sizes from a fixed pseudo-random sequence: seams land everywhere, the same way each run. */
function someSizes(seed: number, max: number): number[] {
  const out: number[] = []
  let x = seed
  for (let i = 0; i < 64; i++) {
    x = (x * 1103515245 + 12345) % 2 ** 31
    out.push(1 + (x % max))
  }
  return out
}

const MODES: Array<{ label: string; cc: 'gcc' | 'clang'; args: string[] }> = [
  { label: 'gcc -E', cc: 'gcc', args: [] },
  { label: 'gcc -E -fdirectives-only', cc: 'gcc', args: ['-fdirectives-only'] },
  { label: 'clang -E', cc: 'clang', args: [] }
]

test('a C++ unit of real system headers (<locale>, <regex>, <bits/extc++.h> …): the scan lists exactly what the compiler lists, in any chunking', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-inputs-'))
  try {
    // <locale> reaches libstdc++'s "  #include <bits/time_members.h>", <bits/extc++.h> has more indented includes
    writeFileSync(join(dir, 'big.cpp'), ['iostream', 'locale', 'regex', 'map', 'bits/extc++.h'].map((h) => `#include <${h}>\n`).join('') + 'int main() {}\n')
    for (const m of MODES) {
      if (m.cc === 'clang' && !clang) continue
      const { pp, deps } = await preprocess(m.cc === 'gcc' ? 'g++' : 'clang++', ['-std=c++17', ...m.args], dir, 'big.cpp')
      assert.ok(deps.some((f) => f.endsWith('/bits/time_members.h')), `${m.label}: the unit reaches time_members.h`)
      if (m.label.includes('directives-only')) {
        assert.match(pp.toString('latin1'), /\n[ \t]+# \d+ "[^"\n]*\/time_members\.h" 1/, 'gcc -fdirectives-only writes that marker indented')
      }
      assert.deepEqual(scan(pp, dir, 'big.cpp'), deps, `${m.label}: whole output`)
      for (const [seed, max] of [[1, 65536], [2, 4096], [3, 64]] as const) {
        assert.deepEqual(scan(pp, dir, 'big.cpp', someSizes(seed, max)), deps, `${m.label}: chunks of up to ${max} bytes`)
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('the minimal case: "int a;" then "  #include <z.h>" with -I dir', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-inputs-'))
  try {
    mkdirSync(join(dir, 'dir'))
    writeFileSync(join(dir, 'dir', 'z.h'), 'int z;\n')
    writeFileSync(join(dir, 'm.c'), 'int a;\n  #include <z.h>\n')
    for (const m of MODES) {
      if (m.cc === 'clang' && !clang) continue
      const { pp, deps } = await preprocess(m.cc, ['-I', 'dir', ...m.args], dir, 'm.c')
      assert.ok(deps.includes(join(dir, 'dir', 'z.h')))
      assert.deepEqual(scan(pp, dir, 'm.c'), deps, m.label)
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

/**
 * A unit that uses every way we know of to put something before a directive's '#' or to name a
 * file oddly, with CRLF and CR-only line ends, #line and GNU line markers in the source, forced
 * includes and -imacros.
 */
function writeOddUnit(dir: string): { args: string[]; expected: string[] } {
  const inc = join(dir, 'inc')
  mkdirSync(join(inc, 'odd dir'), { recursive: true })
  mkdirSync(join(dir, 'src'))
  const names = ['plain.h', 'indented.h', 'tabbed.h', 'ffvt.h', 'commented.h', 'multi.h', 'crlf.h', 'crlf-inner.h', 'cr.h', 'cr-inner.h',
    'after-line.h', 'after-marker.h', 'forced.h', 'macros.h', 'from-macros.h', 'rel.h',
    'odd dir/sp ace.h', 'odd dir/q"b\\s.h', 'odd dir/ünï.h', 'odd dir/ta\tb.h', 'odd dir/dol$lar.h', 'odd dir/ha#sh.h', 'odd dir/co:lon.h']
  for (const n of names) writeFileSync(join(inc, n), `/* ${n} */\n`)
  writeFileSync(join(inc, 'crlf.h'), 'int crlf;\r\n  #include "crlf-inner.h"\r\nint crlf2;\r\n')
  writeFileSync(join(inc, 'cr.h'), 'int cr;\r\t#include "cr-inner.h"\rint cr2;\r')
  writeFileSync(join(inc, 'macros.h'), '#define FROM_MACROS 1\n  #include "from-macros.h"\n')
  writeFileSync(join(dir, 'src', 'm.c'), [
    '#include "plain.h"',
    '  #include "indented.h"',
    '\t#  include "tabbed.h"',
    ' \f\v #include "ffvt.h"',
    '/* a comment */ #include "commented.h"',
    '/* a comment',
    '   over lines */ /**/ #include "multi.h"',
    '#include "crlf.h"',
    '#include "cr.h"',
    '#line 100 "renamed-by-line.c"',
    '#include "after-line.h"',
    '# 7 "gone/renamed-by-marker.c" 3',
    '  #include "after-marker.h"',
    '#include "../src/../inc/rel.h"',
    '#include <odd dir/sp ace.h>',
    '#include <odd dir/q"b\\s.h>',
    '#include <odd dir/ünï.h>',
    '#include <odd dir/ta\tb.h>',
    '#include <odd dir/dol$lar.h>',
    '#include <odd dir/ha#sh.h>',
    '#include <odd dir/co:lon.h>',
    '#pragma GCC diagnostic push',
    '_Pragma("GCC diagnostic pop")',
    'int m = FROM_MACROS;',
    ''].join('\n'))
  return {
    args: ['-Iinc', '-include', 'forced.h', '-imacros', 'inc/macros.h'],
    expected: [join(dir, 'src', 'm.c'), ...names.map((n) => join(inc, n))]
  }
}

test('directives after blanks, comments, CR and CRLF line ends; #line and source line markers; escaped names: gcc -E, -fdirectives-only and clang -E', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-inputs-'))
  try {
    const { args, expected } = writeOddUnit(dir)
    for (const m of MODES) {
      if (m.cc === 'clang' && !clang) continue
      const { pp, deps } = await preprocess(m.cc, [...args, ...m.args], dir, 'src/m.c')
      const files = scan(pp, dir, 'src/m.c')
      const ours = files.filter((f) => f.startsWith(dir))
      assert.deepEqual(ours, [...expected].sort(), `${m.label}: every file of ours, nothing else`)
      assert.ok(!files.some((f) => f.includes('renamed-by')), `${m.label}: a #line or line-marker name is no file`)
      if (m.cc === 'gcc') {
        assert.deepEqual(files, deps, `${m.label}: as the compiler lists them`)
      } else {
        // clang's dependency list turns a backslash into '/' and leaves a tab bare: those two aside, the same
        const lossy = (f: string) => f.endsWith('/q"b\\s.h') || f.endsWith('/ta\tb.h')
        assert.deepEqual(files.filter((f) => !lossy(f)), deps.filter((f) => existsSync(f)), `${m.label}: as the compiler lists them`)
      }
      if (m.label.includes('directives-only')) {
        const text = pp.toString('latin1')
        // what made the old scanner blind: markers that do not start a line
        assert.match(text, /\n  # 1 "inc\/indented\.h" 1\n/)
        assert.match(text, /\/\* a comment \*\/ # 1 "inc\/commented\.h" 1\n/)
        assert.match(text, /\r\t# 1 "inc\/cr-inner\.h" 1\n/)
        // a cut anywhere (inside a marker, between the blanks and its '#', inside "*/") changes nothing
        const main = text.indexOf('\n# 1 "src/m.c"')
        for (let cut = main; cut < pp.length; cut++) {
          assert.deepEqual(scan(pp, dir, 'src/m.c', [cut, pp.length]), files, `cut at byte ${cut}`)
        }
        const tail = pp.subarray(main)
        assert.ok(scan(tail, dir, 'src/m.c').includes(join(dir, 'inc', 'cr-inner.h')))
        assert.deepEqual(scan(tail, dir, 'src/m.c', [1]), scan(tail, dir, 'src/m.c'), 'one byte at a time')
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('names the compilers escape in markers: newline (both), tab and every non-ASCII byte (clang, in octal)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-inputs-'))
  try {
    const odd = ['nl\nx.h', 'ta\tb.h', 'ünï.h', 'q"b\\s.h', 'back\\\\two.h']
    for (const n of odd) writeFileSync(join(dir, n), `/* ${n} */\n`)
    writeFileSync(join(dir, 'main\nnl.c'), 'int main1;\n')
    for (const cc of ['gcc', 'clang']) {
      if (cc === 'clang' && !clang) continue
      // -include becomes #include "…": clang takes neither a quote nor a newline there, gcc both
      const forced = odd.filter((n) => cc === 'gcc' || !/["\n]/.test(n))
      const r = await runCommand(cc, ['-E', ...forced.flatMap((n) => ['-include', `./${n}`]), 'main\nnl.c'], { cwd: dir })
      assert.equal(r.code, 0, r.stderr)
      if (cc === 'clang') assert.match(r.stdout, /\\303\\274n\\303\\257\.h/, 'clang writes UTF-8 in octal')
      assert.match(r.stdout, /main\\nnl\.c/, `${cc} writes a newline as \\n`)
      const files = scan(r.stdoutBuf, dir, 'main\nnl.c').filter((f) => f.startsWith(dir))
      assert.deepEqual(files, [join(dir, 'main\nnl.c'), ...forced.map((n) => join(dir, n))].sort(), cc)
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('every file the preprocessor entered, once, with the directories a ".." path walks through', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-inputs-'))
  mkdirSync(join(dir, 'src'))
  mkdirSync(join(dir, 'inc'))
  writeFileSync(join(dir, 'inc', 'a.h'), '#pragma once\nint a(void);\n')
  writeFileSync(join(dir, 'inc', 'b.h'), '#include "a.h"\nint b(void);\n')
  // a.h is entered several times (and left again): one entry
  writeFileSync(join(dir, 'src', 'm.c'), '#include "../inc/a.h"\n#include "../inc/b.h"\n#include <stddef.h>\nint m(void) { return a() + b(); }\n')
  const pp = await runCommand('gcc', ['-E', 'src/m.c'], { cwd: dir })
  assert.equal(pp.code, 0, pp.stderr)
  const buf = Buffer.from(pp.stdout)
  const set = inputsFromPreprocessed(buf, dir, join(dir, 'src', 'm.c'))
  const ours = set.files.filter((f) => f.startsWith(dir))
  assert.deepEqual(ours, [join(dir, 'inc', 'a.h'), join(dir, 'inc', 'b.h'), join(dir, 'src', 'm.c')])
  assert.ok(set.files.some((f) => f.endsWith('/stddef.h')), 'system headers are listed too')
  assert.ok(!set.files.some((f) => f.includes('<')), 'no <built-in> or <command-line>')
  assert.ok(set.dirs.includes(join(dir, 'src')), '"src/../inc" needs src to exist')
  assert.ok(set.dirs.includes(dir))
  // another working directory is another question
  const other = inputsFromPreprocessed(buf, '/elsewhere', '/elsewhere/src/m.c')
  assert.ok(other.files.includes('/elsewhere/src/m.c'))
  assert.ok(!other.files.includes(join(dir, 'src', 'm.c')), 'the main input is the one named, not the old one')
})

test('hand-made lines: #line markers (clang -fuse-line-directives) count, pragmas, stray "#" lines and cut-off markers do not', () => {
  const dir = '/w'
  const text = [
    '# 1 "m.c"', '#line 7 "via-line.h"', '#pragma GCC poison x', '# define not_a_marker "nope.h" 1', '# 12 "unterminated.h',
    'x = a # 3 "after-code.h" 1', '/* # 4 "in-comment.h" 1 */', '# 5 "not-entered.h" 2', '# 6 "resync.h"', '# 8 "sys.h" 1 3 4',
    '# 9 "esc\\101\\x42\\t\\"q\\\\.h" 1', '# 10 "no-newline.h" 1'
  ].join('\n')
  const whole = Buffer.from(text, 'latin1')
  const expected = ['/w/m.c', '/w/via-line.h', '/w/sys.h', '/w/escAB\t"q\\.h', '/w/no-newline.h'].sort()
  assert.deepEqual(scan(whole, dir, 'm.c'), expected)
  for (let cut = 0; cut <= whole.length; cut++) assert.deepEqual(scan(whole, dir, 'm.c', [cut, whole.length]), expected, `cut at byte ${cut}`)
  assert.deepEqual(scan(whole, dir, 'm.c', [1]), expected, 'one byte at a time')
})

test('dependency files as gcc and clang write them: escaped blanks, "$$", "\\#", raw backslashes, several targets, -MP, CRLF', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-depfile-'))
  try {
    const names = ['sp ace.h', 'ta\tb.h', 'ha#sh.h', 'dol$lar.h', 'dd$$.h', 'back\\slash.h', 'q"uote.h', 'co:lon.h', 'ünï.h', 'bs\\ sp.h',
      'trail\\\\.h', 'per%cent.h', 'star*.h', 'semi;.h', 'brack[1].h', 'bs\\#.h']
    mkdirSync(join(dir, 'inc'))
    for (const n of names) writeFileSync(join(dir, 'inc', n), `/* ${n} */\n`)
    writeFileSync(join(dir, 'm.c'), names.map((n) => `#include <${n}>\n`).join(''))
    const target = ['-MT', 'tar get.o', '-MQ', 'q$.o', '-MT', 'x:y.o']
    for (const cc of ['gcc', 'clang']) {
      if (cc === 'clang' && !clang) continue
      const r = await runCommand(cc, ['-Iinc', '-MD', '-MF', 'm.d', '-MP', ...target, '-c', 'm.c', '-o', 'm.o'], { cwd: dir })
      assert.equal(r.code, 0, r.stderr)
      const text = readFileSync(join(dir, 'm.d'), 'utf8')
      const got = depfilePrerequisites(text).filter((p) => p.startsWith('inc/'))
      // clang cannot write a backslash (it becomes '/') nor a tab (left bare): those aside, every name
      const expressible = names.filter((n) => cc === 'gcc' || !/[\\\t]/.test(n))
      if (cc === 'gcc') assert.deepEqual(got, expressible.map((n) => `inc/${n}`), 'gcc: every name exactly')
      else for (const n of expressible) assert.ok(got.includes(`inc/${n}`), `clang: inc/${n} in ${JSON.stringify(got)}`)
      assert.deepEqual(depfilePrerequisites(text)[0], 'm.c', 'targets are not prerequisites')
      assert.deepEqual(depfilePrerequisites(text.replace(/\n/g, '\r\n')), depfilePrerequisites(text), `${cc}: CRLF reads the same`)
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
  assert.deepEqual(depfilePrerequisites('a.o \\\r\n b.o: x.c \\\r\n y.h\r\n'), ['x.c', 'y.h'], 'targets over lines, CRLF')
  assert.deepEqual(depfilePrerequisites('\na.o: x.c\n'), ['x.c'], 'a blank first line')
  assert.deepEqual(depfilePrerequisites('garbage without a rule\nx.o: y.c\n'), [])
})

test('names in every spelling Kbuild and others write ("./", "././", "//", "..", "/./") give the normalised paths and the directories ".." walks through', () => {
  const names = ['./include/a.h', '././include/b.h', 'include//c.h', './src/../inc/d.h', '/usr/include/./e.h', '/usr//include/f.h', 'plain.h', './', '/opt/x/../y.h']
  const pp = Buffer.from(names.map((n, i) => `# ${i + 1} "${n}" 1\nint v${i};\n`).join(''))
  const set = inputsFromPreprocessed(pp, '/build/tree', '/build/tree/main.c')
  assert.deepEqual(set.files, ['/build/tree/', '/build/tree/inc/d.h', '/build/tree/include/a.h', '/build/tree/include/b.h', '/build/tree/include/c.h',
    '/build/tree/main.c', '/build/tree/plain.h', '/opt/y.h', '/usr/include/e.h', '/usr/include/f.h'])
  assert.deepEqual(set.dirs, ['/build/tree', '/build/tree/src', '/opt/x'])
})
