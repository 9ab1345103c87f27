import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { gzipSync } from 'node:zlib'
import { Header } from 'tar'
import { ToolchainCache } from '../src/toolchain/cache.js'
import { packToolchain } from '../src/toolchain/pack.js'
import { ToolchainArchiveError } from '../src/toolchain/unpack.js'
import { silentLogger } from '../src/log.js'

const dirs: string[] = []
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }) })

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'meshcc-tc-cache-'))
  dirs.push(d)
  return d
}

/** deterministic incompressible bytes */
const noise = (seed: string, n: number) => createHash('shake256', { outputLength: n }).update(seed).digest()
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

interface Fake { hash: string; archive: string; bytes: Buffer; compiler: string }

/** A small real toolchain archive: one ~100 KB "compiler" of noise. */
async function fakeToolchain(seed: string, size = 100 * 1024): Promise<Fake> {
  const src = tempDir()
  const compiler = join(src, 'bin', 'cc')
  mkdirSync(join(src, 'bin'))
  writeFileSync(compiler, noise(seed, size), { mode: 0o755 })
  const r = await packToolchain({ compiler, files: [] }, tempDir())
  return { hash: r.hash, archive: r.archive, bytes: readFileSync(r.archive), compiler }
}

const newCache = (dir: string, maxBytes: number) => new ToolchainCache({ dir, maxBytes, log: silentLogger })

test('add verifies the hash, unpacks, and keeps the archive to serve', async () => {
  const a = await fakeToolchain('a')
  const dir = tempDir()
  const cache = newCache(dir, 10 * 1024 * 1024)
  await cache.open()
  const wrong = sha256(Buffer.from('something else'))
  await assert.rejects(cache.add(wrong, a.bytes), (err: unknown) => err instanceof ToolchainArchiveError && /hash mismatch/.test(err.message))
  assert.equal(cache.has(wrong), false)
  assert.deepEqual(readdirSync(dir), [], 'nothing left from the failed add')
  await assert.rejects(cache.add('not-a-hash', a.bytes), /invalid toolchain hash/)

  const root = await cache.add(a.hash, a.archive) // from a path
  assert.equal(root, cache.rootOf(a.hash))
  assert.ok(cache.has(a.hash))
  assert.deepEqual(readFileSync(join(root, a.compiler)), noise('a', 100 * 1024))
  const served = cache.archivePath(a.hash)
  assert.ok(served && existsSync(served))
  assert.equal(sha256(readFileSync(served)), a.hash)
  assert.deepEqual(cache.list(), [a.hash])
  assert.equal(cache.archivePath(wrong), null)
  assert.throws(() => cache.rootOf(wrong), /not held/)
  // Adding again is a no-op that returns the same root.
  assert.equal(await cache.add(a.hash, a.bytes), root)
})

test('an archive with the right hash but evil content is refused and leaves nothing', async () => {
  const h = new Header({ path: '/etc/evil', type: 'File', size: 0, mode: 0o644, mtime: new Date(0) })
  const block = Buffer.alloc(512)
  h.encode(block, 0)
  const evil = gzipSync(Buffer.concat([block, Buffer.alloc(1024)]))
  const dir = tempDir()
  const cache = newCache(dir, 10 * 1024 * 1024)
  await assert.rejects(cache.add(sha256(evil), evil), ToolchainArchiveError)
  assert.deepEqual(readdirSync(dir), [])
  assert.deepEqual(cache.list(), [])
})

test('concurrent adds of one hash unpack once', async () => {
  const a = await fakeToolchain('concurrent')
  const dir = tempDir()
  const cache = newCache(dir, 10 * 1024 * 1024)
  const roots = await Promise.all([cache.add(a.hash, a.bytes), cache.add(a.hash, a.archive), cache.add(a.hash, a.bytes)])
  assert.equal(new Set(roots).size, 1)
  assert.deepEqual(readdirSync(dir), [a.hash])
})

test('LRU eviction keeps the recently used toolchain, and never one in use', async () => {
  const [a, b, c, d] = await Promise.all(['lru-a', 'lru-b', 'lru-c', 'lru-d'].map((s) => fakeToolchain(s)))
  // Each costs ~200 KB (archive + files): room for two.
  const cache = newCache(tempDir(), 450 * 1024)
  await cache.add(a.hash, a.bytes)
  await delay(5)
  await cache.add(b.hash, b.bytes)
  await delay(5)
  cache.touch(a.hash) // a is now more recent than b
  await delay(5)
  await cache.add(c.hash, c.bytes)
  assert.deepEqual(new Set(cache.list()), new Set([a.hash, c.hash]), 'b, least recently used, was evicted')
  assert.equal(cache.archivePath(b.hash), null)
  await cache.close()
  assert.equal(existsSync(join(cache.dir, b.hash)), false, 'its files are gone')

  // a is the least recently used now, but a job is running in it.
  await delay(5)
  const releaseA = cache.acquire(a.hash)
  await delay(5)
  cache.touch(c.hash)
  await delay(5)
  await cache.add(d.hash, d.bytes)
  assert.deepEqual(new Set(cache.list()), new Set([a.hash, d.hash]), 'c evicted instead of the acquired a')
  assert.ok(existsSync(join(cache.rootOf(a.hash), a.compiler)))

  // Everything else in use: the cache goes over its limit rather than pull a root from under a job.
  const releaseD = cache.acquire(d.hash)
  await cache.add(b.hash, b.bytes)
  assert.deepEqual(new Set(cache.list()), new Set([a.hash, b.hash, d.hash]))
  assert.ok(cache.stats().bytes > cache.maxBytes)
  releaseA()
  releaseA() // idempotent
  assert.deepEqual(new Set(cache.list()), new Set([b.hash, d.hash]), 'released a goes once over the limit')
  releaseD()
  assert.throws(() => cache.acquire(a.hash), /not held/)
  await cache.close()
})

test('a restarted cache sees what it held and cleans up leftovers', async () => {
  const [a, b] = await Promise.all([fakeToolchain('restart-a'), fakeToolchain('restart-b')])
  const dir = tempDir()
  const first = newCache(dir, 10 * 1024 * 1024)
  await first.add(a.hash, a.bytes)
  await first.add(b.hash, b.archive)
  await first.close()
  // Leftovers of a crash: a temp dir, and a hash dir without its meta.json.
  mkdirSync(join(dir, '.tmp-123-abc', 'root'), { recursive: true })
  const broken = sha256(Buffer.from('broken'))
  mkdirSync(join(dir, broken, 'root'), { recursive: true })

  const second = newCache(dir, 10 * 1024 * 1024)
  await second.open()
  assert.deepEqual(second.list(), [a.hash, b.hash].sort())
  assert.ok(existsSync(join(second.rootOf(b.hash), b.compiler)))
  assert.equal(sha256(readFileSync(second.archivePath(a.hash) as string)), a.hash)
  assert.equal(second.stats().bytes, first.stats().bytes)
  assert.deepEqual(readdirSync(dir).sort(), [a.hash, b.hash].sort())

  // A smaller limit after the restart evicts down to it, least recently used first.
  await delay(5)
  const t = new Date()
  utimesSync(join(dir, a.hash, 'meta.json'), t, t) // a used last, before the restart
  const third = newCache(dir, 300 * 1024)
  await third.open()
  assert.deepEqual(third.list(), [a.hash])
  await third.close()
})
