// Content hashes memoised across requests (a build's --extern crates, a compiler's libraries):
// a file rewritten in place is hashed again even when its size and mtime look as before.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { FileHasher } from '../src/cache/file-hashes.js'
import { CompilerIdentity } from '../src/daemon/compiler-identity.js'
import { hashFileContent } from '../src/util/hash-file.js'

const dir = mkdtempSync(join(tmpdir(), 'meshcc-file-hashes-'))
after(() => rmSync(dir, { recursive: true, force: true }))
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** a whole second a minute ago: old enough to be memoised, and utimes sets it exactly */
const OLD = Math.floor(Date.now() / 1000) - 60

/** Same size, mtime put back: only the inode's ctime says the content changed. */
function rewriteKeepingMtime(path: string, data: Buffer): void {
  writeFileSync(path, data)
  utimesSync(path, OLD, OLD)
  assert.equal(statSync(path).mtimeMs, OLD * 1000)
}

test('hashFileContent: empty, one chunk and many chunks hash as their bytes do; a missing file rejects', async () => {
  for (const [name, size] of [['empty', 0], ['small', 1000], ['large', 3 * 1024 * 1024 + 17]] as const) {
    const p = join(dir, name)
    const data = createHash('shake256', { outputLength: Math.max(size, 1) }).update(name).digest().subarray(0, size)
    writeFileSync(p, data)
    assert.deepEqual(await hashFileContent(p), { hash: sha(data), size })
  }
  // more at once than there are readers: each gets its own buffer
  const many = await Promise.all(Array.from({ length: 10 }, (_, i) => { const p = join(dir, `m${i}`); writeFileSync(p, `file ${i}`); return hashFileContent(p) }))
  many.forEach((h, i) => assert.equal(h.hash, sha(Buffer.from(`file ${i}`))))
  await assert.rejects(hashFileContent(join(dir, 'missing')))
  await assert.rejects(hashFileContent(dir))
})

test('a compiler rewritten with the same size and mtime is hashed again (ctime), never served its old hash', async () => {
  const p = join(dir, 'cc')
  writeFileSync(p, Buffer.alloc(4096, 1))
  utimesSync(p, OLD, OLD)
  const ids = new CompilerIdentity()
  const first = await ids.of(p)
  assert.equal(first.hash, sha(readFileSync(p)))
  await delay(20) // a ctime tick apart
  rewriteKeepingMtime(p, Buffer.alloc(4096, 2))
  assert.equal((await ids.of(p)).hash, sha(Buffer.alloc(4096, 2)))
})

test('an rlib rewritten with the same size and mtime gets its new hash from hashBinary', async () => {
  const p = join(dir, 'libx.rlib')
  writeFileSync(p, Buffer.alloc(2 * 1024 * 1024, 3))
  utimesSync(p, OLD, OLD)
  const hasher = new FileHasher()
  assert.equal((await hasher.hashBinary(p))?.hash, sha(Buffer.alloc(2 * 1024 * 1024, 3)))
  await delay(20)
  rewriteKeepingMtime(p, Buffer.alloc(2 * 1024 * 1024, 4))
  const again = await hasher.hashBinary(p)
  assert.equal(again?.hash, sha(Buffer.alloc(2 * 1024 * 1024, 4)))
  assert.equal(again?.size, 2 * 1024 * 1024)
  assert.equal(await hasher.hashBinary(join(dir, 'gone.rlib')), null)
})

test('a memo file carries compiler hashes to the next daemon, and never past a rewrite in place or a file too new', async () => {
  const memo = join(dir, 'compiler-hashes.json')
  const old = join(dir, 'libdriver.so')
  const fresh = join(dir, 'libfresh.so')
  writeFileSync(old, Buffer.alloc(8192, 5))
  utimesSync(old, OLD, OLD)
  await delay(2100) // its ctime well before the hash
  writeFileSync(fresh, Buffer.alloc(100, 6)) // written just now: its ctime could share the hash's timestamp tick
  const first = new CompilerIdentity(memo)
  assert.equal((await first.of(old)).hash, sha(Buffer.alloc(8192, 5)))
  assert.equal((await first.of(fresh)).hash, sha(Buffer.alloc(100, 6)))
  await first.save()
  const doc = JSON.parse(readFileSync(memo, 'utf8')) as { entries: string[][] }
  assert.deepEqual(doc.entries.map((e) => e[0]), [old], 'only the file older than the hash is written down')

  // the next daemon takes the written hash without reading the file: shown by a forged one
  const forged = 'f'.repeat(64)
  writeFileSync(memo, JSON.stringify({ version: 1, entries: [[old, doc.entries[0][1], forged]] }))
  assert.equal((await new CompilerIdentity(memo).of(old)).hash, forged)

  // rewritten in place, same size and mtime: the ctime differs, so the memo no longer applies
  rewriteKeepingMtime(old, Buffer.alloc(8192, 7))
  assert.equal((await new CompilerIdentity(memo).of(old)).hash, sha(Buffer.alloc(8192, 7)))

  // a damaged memo file is no memo
  writeFileSync(memo, '{"version":1,"entries":[["x"')
  assert.equal((await new CompilerIdentity(memo).of(old)).hash, sha(Buffer.alloc(8192, 7)))
})
