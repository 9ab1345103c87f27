// StreamSearch (src/util/stream-search.ts): how the daemon spots an assembler .incbin in a
// preprocessed unit that arrives in pipe chunks of any size, the needle split across seams.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { StreamSearch, StreamSearchAny } from '../src/util/stream-search.js'

const needle = Buffer.from('.incbin')

function chunked(text: string, sizes: number[]): Buffer[] {
  const b = Buffer.from(text)
  const out: Buffer[] = []
  let at = 0
  for (let i = 0; at < b.length; i++) {
    const n = sizes[i % sizes.length]!
    out.push(b.subarray(at, at + n))
    at += n
  }
  return out
}

test('a needle is found in any chunking: inside a chunk, across one seam, across several short chunks', () => {
  const text = `${'x'.repeat(1000)}\t.incbin "blob.bin"\n${'y'.repeat(500)}`
  for (const sizes of [[4096], [1003], [1000, 3], [1001, 1, 1, 1, 1, 1, 1], [1], [2, 5], [7]]) {
    const s = new StreamSearch(needle)
    for (const c of chunked(text, sizes)) s.push(c)
    assert.equal(s.found, true, `chunk sizes ${sizes.join(',')}`)
  }
})

test('no false find: the needle\'s pieces in separate places, or a prefix at the very end', () => {
  for (const text of ['.inc and bin', `${'z'.repeat(100)}.incbi`, '.incbi\nn', 'incbin without the dot']) {
    for (const sizes of [[1], [3], [100]]) {
      const s = new StreamSearch(needle)
      for (const c of chunked(text, sizes)) s.push(c)
      assert.equal(s.found, false, `${JSON.stringify(text)} in chunks of ${sizes.join(',')}`)
    }
  }
})

test('StreamSearchAny: any of several needles, across seams, and no find for identifiers that only start alike', () => {
  const needles = ['__DATE__', '__TIME__', '__TIMESTAMP__'].map((n) => Buffer.from(n))
  for (const sizes of [[4096], [3], [1], [5, 2]]) {
    const hit = new StreamSearchAny(needles)
    for (const c of chunked('struct x = __TIMER_INITIALIZER; const char *s = __TIMESTAMP__;', sizes)) hit.push(c)
    assert.equal(hit.found, true, `chunk sizes ${sizes.join(',')}`)
    const miss = new StreamSearchAny(needles)
    for (const c of chunked('struct x = __TIMER_INITIALIZER; int __DATE_FORMAT; int __TIME_;', sizes)) miss.push(c)
    assert.equal(miss.found, false, `chunk sizes ${sizes.join(',')}`)
  }
})

/** The daemon's needles (src/compiler/pp-output.ts): each is looked for by an anchor from its rarest byte, so each gets checked. */
const DAEMON_NEEDLES = ['.incbin', 'DATE__', 'TIME__', 'STAMP__', '%:', '??=', 'builtin_FILE', 'builtin_source_loc', 'FILE__']
/** C-like text full of near misses: anchors without their needle around them, needles cut short. */
const NEAR_MISSES = 'x = __builtin_expect(a, 0); FILE *f; p.inc = bin; ME__ MP__ TIME_ __TIMER__ DATE_ %d ?? = builtin_FIL builtin_source_lo .incbi\n'

function filler(length: number): string {
  return NEAR_MISSES.repeat(Math.ceil(length / NEAR_MISSES.length)).slice(0, length)
}

test('every daemon needle, at every offset around a seam, in chunks of 1, 7 and 64 KiB: found exactly when the text holds it', () => {
  for (const size of [1, 7, 64 * 1024]) {
    // chunks of 1 and 7: a short text, the needle at every offset mod the chunk size; 64 KiB: across the first seam
    const seam = size === 1 ? 40 : size === 7 ? 7 * 8 : size
    for (const n of DAEMON_NEEDLES) {
      for (let at = seam - n.length; at <= seam; at++) {
        const text = filler(at) + n + filler(size === 64 * 1024 ? 1000 : 30)
        const s = new StreamSearchAny([...DAEMON_NEEDLES].map((m) => Buffer.from(m)))
        for (const c of chunked(text, [size])) s.push(c)
        assert.equal(s.found, true, `${n} at ${at}, chunks of ${size}`)
        const alone = new StreamSearch(Buffer.from(n))
        for (const c of chunked(text, [size])) alone.push(c)
        assert.equal(alone.found, true, `${n} alone at ${at}, chunks of ${size}`)
      }
    }
    const none = new StreamSearchAny(DAEMON_NEEDLES.map((m) => Buffer.from(m)))
    for (const c of chunked(filler(size * 3 + 5), [size])) none.push(c)
    assert.equal(none.found, false, `near misses only, chunks of ${size}`)
  }
})

test('a chunk the caller overwrites after pushing it leaves no trace in the seam', () => {
  const s = new StreamSearch(Buffer.from('builtin_FILE'))
  const chunk = Buffer.from('xxxxbuiltin_')
  s.push(chunk)
  chunk.fill('y')
  s.push(Buffer.from('FILE'))
  assert.equal(s.found, true)
})
