// The input list a builder gets, from the preprocessor's line markers (real gcc output).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { InputScanner, inputsFromPreprocessed } from '../src/compiler/inputs.js'
import { runCommand } from './helpers/meshcc.js'

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

test('marker forms: #line, names with spaces, escaped quotes and backslashes, UTF-8, and lines that only look like markers', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-inputs-'))
  // real gcc spelling of awkward names: a quote and a backslash in one, a space and UTF-8 in another
  mkdirSync(join(dir, 'odd dir'))
  writeFileSync(join(dir, 'odd dir', 'q"b\\s.h'), 'int q;\n')
  writeFileSync(join(dir, 'odd dir', 'ünï.h'), 'int u;\n')
  // inside <...> a quote is part of the name, and a backslash is no escape
  writeFileSync(join(dir, 'm.c'), '#include <odd dir/q"b\\s.h>\n#include "odd dir/ünï.h"\nint m;\n')
  const pp = await runCommand('gcc', ['-E', '-I.', 'm.c'], { cwd: dir })
  assert.equal(pp.code, 0, pp.stderr)
  assert.match(pp.stdout, /q\\"b\\\\s\.h/, 'gcc escapes the quote and the backslash in its marker')
  // hand-made lines: the #line form, a pragma and a stray "# " line that are no markers
  const extra = '#line 7 "via-line.h"\n#pragma GCC poison x\n# define not_a_marker "nope.h"\n# 12 "unterminated.h\n'
  const set = inputsFromPreprocessed(Buffer.from(pp.stdout + extra), dir, join(dir, 'm.c'))
  const ours = set.files.filter((f) => f.startsWith(dir)).sort()
  assert.deepEqual(ours, [join(dir, 'm.c'), join(dir, 'odd dir', 'q"b\\s.h'), join(dir, 'odd dir', 'ünï.h'), join(dir, 'via-line.h')].sort())

  // streamed as the pipe delivers it: a cut anywhere (inside a marker, between "\n" and "#",
  // at a final line without its newline) gives the same set as the whole buffer
  const whole = Buffer.from(pp.stdout + extra + '# 3 "no-newline.h"')
  const expected = inputsFromPreprocessed(whole, dir, join(dir, 'm.c'))
  assert.ok(expected.files.includes(join(dir, 'no-newline.h')))
  for (let cut = 0; cut <= whole.length; cut++) {
    const s = new InputScanner(dir, join(dir, 'm.c'))
    s.push(whole.subarray(0, cut))
    s.push(whole.subarray(cut))
    assert.deepEqual(s.finish(), expected, `cut at byte ${cut}`)
  }
  const bytewise = new InputScanner(dir, join(dir, 'm.c'))
  for (let i = 0; i < whole.length; i++) bytewise.push(whole.subarray(i, i + 1))
  assert.deepEqual(bytewise.finish(), expected, 'one byte at a time')
})
