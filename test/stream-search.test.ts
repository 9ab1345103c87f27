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
