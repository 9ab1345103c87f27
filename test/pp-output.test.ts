// PreprocessedOutput (src/compiler/pp-output.ts): what the client takes from a unit's
// preprocessor output. Its digests are cache keys: they must stay byte for byte what they
// were when every piece of text went to the hash on its own (main before the staged hash), in
// any chunking of the stream.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PreprocessedOutput, type PreprocessedSummary } from '../src/compiler/pp-output.js'
import { decodeMarkerName, InputScanner } from '../src/compiler/inputs.js'
import { runCommand } from './helpers/meshcc.js'

const CWD = '/build/tree'
const opts = (directivesOnly: boolean) => ({
  directivesOnly, remote: true, cwd: CWD, mainInput: `${CWD}/main.c`,
  nameForm: (name: string) => `k:${name.replace(`${CWD}/`, '')}`,
  macroNameForm: (raw: string, name: string) => (name.startsWith(`${CWD}/`) ? `m:${name.slice(CWD.length + 1)}` : `r:${raw}`)
})

/** Feed `pp` in chunks of the given sizes (repeated), each chunk a copy the next push overwrites, as a reused pipe buffer would be. */
function summarise(pp: Buffer, sizes: number[], directivesOnly = true): Omit<PreprocessedSummary, 'inputs'> & { files: string[] } {
  const out = new PreprocessedOutput(opts(directivesOnly))
  const scratch = Buffer.alloc(Math.max(...sizes))
  for (let at = 0, i = 0; at < pp.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, pp.length - at)
    pp.copy(scratch, 0, at, at + n)
    out.push(scratch.subarray(0, n))
    scratch.fill(0x23) // '#': a stale reference to the last chunk would show in the digests
    at += n
  }
  const { inputs, ...rest } = out.finish()
  return { ...rest, files: inputs.files }
}

/** The key text's digest as main computed it: every piece the scanner passes, and every name, its own hash update. */
function keyTextAsMain(pp: Buffer, directivesOnly: boolean): { keyText: string; writtenNames: string; macroNames: string } {
  const o = opts(directivesOnly)
  const keyText = createHash('sha256')
  const written = createHash('sha256')
  const macro = createHash('sha256')
  const s = new InputScanner(o.cwd, o.mainInput, {
    text: (b, start, end) => { keyText.update(b.subarray(start, end)) },
    name: (raw, escaped) => {
      const name = decodeMarkerName(raw, escaped)
      keyText.update(`\0${o.nameForm(name)}\0`)
      written.update(`${raw}\0`)
      macro.update(`${o.macroNameForm(raw, name)}\0`)
    }
  })
  s.push(pp)
  s.finish()
  return { keyText: keyText.digest('hex'), writtenNames: written.digest('hex'), macroNames: macro.digest('hex') }
}

/**
 * Preprocessed text with what the key's sink must get right: repeated names, escaped and
 * non-ASCII names (gcc's "\\\\" and clang's octal), a CR line end, an indented marker, a marker
 * after a comment, #line, a marker cut short by the end, and __FILE__.
 */
const SYNTHETIC = Buffer.from([
  '# 1 "main.c"',
  '# 1 "<built-in>"',
  '# 1 "/build/tree//"',
  '# 1 "main.c"',
  '# 1 "inc/a\\\\b.h" 1',
  'int a = 1; /* long text */ ' + 'x'.repeat(5000),
  '# 2 "main.c" 2',
  '  # 3 "inc/\\303\\274.h" 1 3 4',
  'const char *f = __FILE__;\r',
  '# 4 "main.c" 2\r',
  '/* c */ # 5 "inc/a\\\\b.h" 1',
  '#define X 1',
  '#line 7 "gen.y"',
  'y'.repeat(70000),
  '# 8 "main.c" 2',
  'int z;',
  '# 9 "/usr/include/stdio.h" 1 3 4'
].join('\n'), 'latin1')

/** SYNTHETIC's digests computed by main's code (main's keyFrom as of 8830021: per-piece updates, the scanner finished before the digest): a changed key fails here. */
const SYNTHETIC_DIGESTS = {
  ppHash: '81f26c585fe8ce3bd8abd97300d217939d5fc6903a5eb4367319e7f36c2ff0db',
  keyText: '06265d31cd5499ee9a44af651a55ffc9111d92735d01b0864d0494d0fea19950',
  writtenNames: '3e8bd16745c161dc1dc1b52c6db599c034ce154f204945fe0230618d81b04405',
  macroNames: '4d00304e8a32884ed1efab3450e28500e7dccec5b15bf3039b9da231731d0093'
}

test('the digests of a fixed text are the ones main computed, in chunks of 1, 7, 4 KiB and 64 KiB bytes', () => {
  for (const sizes of [[1], [7], [4096], [65536], [3, 1, 4096, 17]]) {
    const s = summarise(SYNTHETIC, sizes)
    const got = { ppHash: s.ppHash, keyText: s.keyText, writtenNames: s.writtenNames, macroNames: s.macroNames }
    assert.deepEqual(got, SYNTHETIC_DIGESTS, `chunks of ${sizes.join(',')}`)
    assert.equal(s.fileMacros, true)
    assert.equal(s.volatile, false)
  }
  assert.deepEqual(keyTextAsMain(SYNTHETIC, true), { keyText: SYNTHETIC_DIGESTS.keyText, writtenNames: SYNTHETIC_DIGESTS.writtenNames, macroNames: SYNTHETIC_DIGESTS.macroNames })
})

test('a real unit (gcc -E -fdirectives-only and gcc -E over many system headers): the same digests as main\'s piece-by-piece hashing, in any chunking', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-pp-output-'))
  try {
    const headers = ['stdio.h', 'stdlib.h', 'string.h', 'assert.h', 'math.h', 'pthread.h', 'signal.h', 'time.h', 'unistd.h', 'fcntl.h', 'sys/stat.h', 'wchar.h', 'locale.h']
    writeFileSync(join(dir, 'main.c'), headers.map((h) => `#include <${h}>\n`).join('') + 'int main(void) { assert(1); puts(__FILE__); return 0; }\n')
    for (const directivesOnly of [true, false]) {
      const r = await runCommand('gcc', ['-E', ...(directivesOnly ? ['-fdirectives-only'] : []), 'main.c'], { cwd: dir })
      assert.equal(r.code, 0, r.stderr)
      const pp = r.stdoutBuf
      assert.ok(pp.length > 100_000, `a unit of some size (${pp.length} bytes)`)
      const want = keyTextAsMain(pp, directivesOnly)
      const ppHash = createHash('sha256').update(pp).digest('hex')
      for (const sizes of [[7], [65536], [4096, 1, 333], [pp.length]]) {
        const s = summarise(pp, sizes, directivesOnly)
        const label = `${directivesOnly ? '-fdirectives-only' : '-E'}, chunks of ${sizes.join(',')}`
        assert.equal(s.ppHash, ppHash, label)
        assert.equal(s.keyText, want.keyText, label)
        assert.equal(s.writtenNames, want.writtenNames, label)
        assert.equal(s.macroNames, directivesOnly ? want.macroNames : null, label)
        assert.ok(s.files.some((f) => f.endsWith('/stdio.h')), label)
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
