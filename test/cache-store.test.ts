import { test, describe, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { setTimeout as delay } from 'node:timers/promises'
import { brotliCompressSync, brotliDecompressSync, deflateRawSync } from 'node:zlib'
import { LocalStore, type CacheEntry, type GetResult } from '../src/cache/local-store.js'
import { decodeEntry, encodeEntry, HEADER_LENGTH } from '../src/cache/entry-format.js'
import { silentLogger } from '../src/log.js'

const dirs: string[] = []
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }) })

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'meshcc-cache-test-'))
  dirs.push(d)
  return d
}

const keyOf = (s: string) => createHash('sha256').update(s).digest('hex')
/** deterministic incompressible bytes */
const noise = (seed: string, n: number) => createHash('shake256', { outputLength: n }).update(seed).digest()
const entryPath = (dir: string, key: string) => join(dir, key.slice(0, 2), key)
/** the key the entry-format tests encode and decode under */
const K = keyOf('entry format')

/** An entry whose content is a function of the seed, so any hit can be checked exactly. */
function makeEntry(seed: string, size = 2048): CacheEntry {
  return {
    exitCode: 0,
    stdout: Buffer.from(`stdout ${seed}\n`),
    stderr: Buffer.from(`warning: unused variable in ${seed}\n`),
    outputs: [
      { name: 'obj', data: noise(`obj:${seed}`, size) },
      { name: 'dep', data: Buffer.from(`${seed}.o: ${seed}.c include/a.h\n`) }
    ],
    meta: { source: `${seed}.c` }
  }
}

async function openStore(dir: string, maxBytes = 10 * 1024 ** 3): Promise<LocalStore> {
  const store = new LocalStore({ dir, maxBytes, log: silentLogger })
  await store.open()
  return store
}

/** Entry files really on disk: [key, size, mtimeMs]. */
function diskEntries(dir: string): Array<{ key: string; size: number; mtimeMs: number }> {
  const out = []
  for (const sub of readdirSync(dir)) {
    if (!/^[0-9a-f]{2}$/.test(sub)) continue
    for (const name of readdirSync(join(dir, sub))) {
      const st = statSync(join(dir, sub, name))
      out.push({ key: name, size: st.size, mtimeMs: st.mtimeMs })
    }
  }
  return out
}
const diskBytes = (dir: string) => diskEntries(dir).reduce((n, e) => n + e.size, 0)

function assertHit(r: GetResult, expected: CacheEntry): void {
  assert.equal(r.status, 'hit', `expected a hit, got ${JSON.stringify(r)}`)
  if (r.status === 'hit') assert.deepStrictEqual(r.entry, expected)
}

describe('entry format', () => {
  test('roundtrips every field, including binary stderr and empty outputs', async () => {
    const entry: CacheEntry = {
      exitCode: 0,
      stdout: Buffer.alloc(0),
      stderr: Buffer.from([0x66, 0x6f, 0xff, 0x00, 0xfe, 0x0a]),
      outputs: [{ name: 'obj', data: noise('a', 5000) }, { name: 'dwo', data: Buffer.alloc(0) }],
      meta: { compiler: 'gcc 13.2', source: 'ünïcode.c' }
    }
    const buf = await encodeEntry(entry, K)
    assert.equal(buf.subarray(0, 8).toString('latin1'), 'MESHCC01')
    assert.deepStrictEqual(await decodeEntry(buf, K), entry)
    // No meta stays no meta.
    const bare = { ...entry, meta: undefined }
    delete bare.meta
    assert.deepStrictEqual(await decodeEntry(await encodeEntry(bare, K), K), bare)
  })

  test('compresses compressible outputs', async () => {
    const text = Buffer.from('int main(void) { return 0; }\n'.repeat(2000))
    const buf = await encodeEntry({ exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), outputs: [{ name: 'obj', data: text }] }, K)
    assert.ok(buf.length < text.length / 10, `${buf.length} bytes for ${text.length} of text`)
  })

  test('outputs of many megabytes roundtrip, stored when incompressible and compressed when not', async () => {
    // larger than the hash's slice (4 MiB) and brotli's output chunk, in several pieces
    const text = Buffer.from('pub fn f() -> u32 { 42 }\n'.repeat(400_000))
    const big: CacheEntry = { exitCode: 0, stdout: Buffer.from('note'), stderr: Buffer.alloc(0), outputs: [{ name: 'rlib', data: noise('big', 9_000_000) }, { name: 'rmeta', data: noise('m', 3) }], meta: { crate: 'x' } }
    const stored = await encodeEntry(big, K)
    assert.equal(stored[9], 0, 'incompressible: stored')
    assert.deepStrictEqual(await decodeEntry(stored, K), big)
    const mixed: CacheEntry = { ...big, outputs: [{ name: 'rlib', data: text }, { name: 'rmeta', data: noise('m2', 5_000_000) }] }
    const compressed = await encodeEntry(mixed, K)
    assert.equal(compressed[9], 2, 'compressible: brotli')
    assert.ok(compressed.length < text.length, `${compressed.length} bytes`)
    assert.deepStrictEqual(await decodeEntry(compressed, K), mixed)
    const flipped = Buffer.from(compressed); flipped[25] ^= 1
    await assert.rejects(decodeEntry(flipped, K), /checksum mismatch/)
  })

  test('refuses bad headers, truncation and trailing bytes', async () => {
    const good = await encodeEntry(makeEntry('hdr'), K)
    const bad = Buffer.from(good); bad[0] ^= 0xff
    await assert.rejects(decodeEntry(bad, K), /bad magic/)
    const version = Buffer.from(good); version[8] = 9
    await assert.rejects(decodeEntry(version, K), /unsupported format version 9/)
    await assert.rejects(decodeEntry(good.subarray(0, 20), K), /truncated/)
    await assert.rejects(decodeEntry(good.subarray(0, good.length - 1), K), /truncated/)
    await assert.rejects(decodeEntry(Buffer.concat([good, Buffer.from([0])]), K), /trailing/)
    const sum = Buffer.from(good); sum[30] ^= 1
    await assert.rejects(decodeEntry(sum, K), /checksum mismatch/)
  })

  /** A well-formed header (stored encoding, correct checksum) around any payload. */
  function wrap(payload: Buffer, opts: { encoding?: number; declared?: number; body?: Buffer } = {}): Buffer {
    const body = opts.body ?? payload
    const h = Buffer.alloc(HEADER_LENGTH)
    h.write('MESHCC01', 0, 'latin1')
    h[8] = 2
    h[9] = opts.encoding ?? 0
    h.writeUInt32LE(opts.declared ?? payload.length, 12)
    h.writeUInt32LE(body.length, 16)
    createHash('sha256').update(payload).digest().copy(h, 20)
    h.write(K, 52, 'hex')
    return Buffer.concat([h, body])
  }

  test('refuses payload lengths that overrun the buffer even with a valid checksum', async () => {
    const p = Buffer.alloc(16)
    p.writeInt32LE(0, 0)
    p.writeUInt32LE(0xfffffff0, 4) // stdout "length"
    await assert.rejects(decodeEntry(wrap(p), K), /malformed payload: stdout needs 4294967280 bytes/)

    const q = Buffer.alloc(4 + 4 + 4 + 2 + 1 + 3 + 4)
    let o = q.writeInt32LE(0, 0); o = q.writeUInt32LE(0, o); o = q.writeUInt32LE(0, o)
    o = q.writeUInt16LE(1, o); o = q.writeUInt8(3, o); o += q.write('../', o, 'latin1'); q.writeUInt32LE(0, o)
    await assert.rejects(decodeEntry(wrap(q), K), /bad output name/)
  })

  test('refuses a body that decompresses beyond its declared size, brotli and deflate alike', async () => {
    const payload = Buffer.alloc(1 << 20)
    for (const [encoding, body] of [[1, deflateRawSync(payload)], [2, brotliCompressSync(payload)]] as const) {
      await assert.rejects(decodeEntry(wrap(payload, { encoding, declared: 1000, body }), K), /decompression failed|header declares/)
      await assert.rejects(decodeEntry(wrap(payload, { encoding }), K, { maxPayloadBytes: 4096 }), /exceeds the limit/)
    }
  })

  test('new entries are brotli; entries an earlier meshcc wrote with deflate still read back', async () => {
    const e = makeEntry('compressible')
    e.outputs = [{ name: 'obj', data: Buffer.alloc(50_000, 0x90) }]
    const enc = await encodeEntry(e, K)
    assert.equal(enc[9], 2)
    assert.ok(enc.length < 5000, `${enc.length} bytes: compressed`)
    // the payload of that entry, deflated as meshcc did before, under the same header
    const payload = brotliDecompressSync(enc.subarray(HEADER_LENGTH))
    const old = wrap(payload, { encoding: 1, body: deflateRawSync(payload) })
    assert.deepStrictEqual(await decodeEntry(old, K), e)
    assert.deepStrictEqual(await decodeEntry(enc, K), e)
  })

  test('refuses to encode unsafe output names', async () => {
    const e = makeEntry('names')
    await assert.rejects(encodeEntry({ ...e, outputs: [{ name: '../obj', data: Buffer.alloc(1) }] }, K), /bad output name/)
    await assert.rejects(encodeEntry({ ...e, outputs: [{ name: 'obj', data: Buffer.alloc(1) }, { name: 'obj', data: Buffer.alloc(1) }] }, K), /duplicate output/)
  })
})

describe('LocalStore', () => {
  test('put/get roundtrip with several outputs, stored compressed at <dir>/<2 hex>/<key>', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const key = keyOf('roundtrip')
    const entry: CacheEntry = {
      exitCode: 0,
      stdout: Buffer.from('note: something\n'),
      stderr: Buffer.from([0x1b, 0x5b, 0x33, 0x31, 0x6d, 0xff, 0xfe, 0x00, 0x0a]),
      outputs: [
        { name: 'obj', data: Buffer.concat([noise('obj', 3000), Buffer.alloc(30000, 0x90)]) },
        { name: 'dep', data: Buffer.from('a.o: a.c a.h\n') },
        { name: 'dwo', data: noise('dwo', 100) }
      ],
      meta: { compiler: 'gcc', source: 'a.c' }
    }
    await store.put(key, entry)
    const file = entryPath(dir, key)
    assert.ok(existsSync(file))
    const size = statSync(file).size
    assert.ok(size < 10000, `entry file is ${size} bytes, expected compression`)
    assertHit(await store.get(key), entry)
    assert.deepStrictEqual(store.stats(), { entries: 1, bytes: size, maxBytes: 10 * 1024 ** 3 })
    // A fresh instance reads it back from disk.
    const again = await openStore(dir)
    assert.deepStrictEqual(again.stats().entries, 1)
    assertHit(await again.get(key), entry)
    await store.close(); await again.close()
  })

  test('a file of more pieces than one writev takes is written whole, its bytes in order; so is a stored entry of many outputs', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const key = keyOf('many pieces')
    // 600 pieces through a codec that hands them over as they are: past one writev call's 512
    // buffers; then an entry of 60 incompressible outputs, stored in 4 pieces each
    const outputs = Array.from({ length: 60 }, (_, i) => ({ name: `o${i}`, data: noise(`piece ${i}`, 1000 + i) }))
    const pieces: Buffer[] = []
    for (let i = 0; i < 10; i++) pieces.push(...outputs.map((o) => o.data))
    const bytes = new LocalStore<Buffer[]>({ dir: join(dir, 'raw'), maxBytes: 10 * 1024 ** 2, log: silentLogger, codec: {
      encode: async (v) => v,
      decode: async (buf) => [buf]
    } })
    await bytes.put(key, pieces)
    const raw = await bytes.get(key)
    assert.equal(raw.status, 'hit')
    assert.ok(raw.status === 'hit' && raw.entry[0].equals(Buffer.concat(pieces)))
    const entry: CacheEntry = { exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.from('w\n'), outputs }
    await store.put(key, entry)
    assertHit(await store.get(key), entry)
    await store.close(); await bytes.close()
  })

  test('putEncoded keeps an encoded entry byte for byte (a verified mesh hit), and it reads back as a hit', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const key = keyOf('fetched')
    const entry = makeEntry('fetched', 50_000)
    const encoded = await encodeEntry(entry, key)
    await store.putEncoded(key, encoded)
    assert.deepEqual(readFileSync(entryPath(dir, key)), encoded)
    assertHit(await store.get(key), entry)
    assert.equal(store.stats().bytes, encoded.length)
    await store.close()
  })

  test('unknown key is a miss', async () => {
    const store = await openStore(tempDir())
    assert.deepStrictEqual(await store.get(keyOf('nothing here')), { status: 'miss' })
    await store.close()
  })

  test('a corrupted entry is reported, removed, and then a miss', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const key = keyOf('corrupt')
    await store.put(key, makeEntry('corrupt', 8192))
    const file = entryPath(dir, key)
    const buf = readFileSync(file)
    const mid = buf.length >> 1
    for (let i = mid; i < mid + 16; i++) buf[i] ^= 0xa5
    writeFileSync(file, buf)
    const r = await store.get(key)
    assert.equal(r.status, 'corrupt')
    assert.match(r.status === 'corrupt' ? r.reason : '', /decompression failed|checksum mismatch|malformed/)
    assert.ok(!existsSync(file), 'corrupt file must be removed')
    assert.deepStrictEqual(await store.get(key), { status: 'miss' })
    assert.equal(store.stats().entries, 0)
    assert.equal(store.stats().bytes, 0)
    await store.close()
  })

  test('a truncated entry is reported, removed, and then a miss', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const key = keyOf('truncated')
    await store.put(key, makeEntry('truncated', 8192))
    const file = entryPath(dir, key)
    truncateSync(file, Math.floor(statSync(file).size / 2))
    const r = await store.get(key)
    assert.deepStrictEqual(r.status, 'corrupt')
    assert.match(r.status === 'corrupt' ? r.reason : '', /truncated/)
    assert.ok(!existsSync(file))
    assert.deepStrictEqual(await store.get(key), { status: 'miss' })
    // An empty file (e.g. after a power loss) is corrupt too.
    await store.put(key, makeEntry('truncated'))
    truncateSync(file, 0)
    assert.equal((await store.get(key)).status, 'corrupt')
    assert.ok(!existsSync(file))
    await store.close()
  })

  test('an entry copied under another key\'s name is corrupt, never a hit', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const a = keyOf('copied a')
    const b = keyOf('copied b')
    await store.put(a, makeEntry('a'))
    mkdirSync(join(dir, b.slice(0, 2)), { recursive: true })
    writeFileSync(entryPath(dir, b), readFileSync(entryPath(dir, a)))
    const r = await store.get(b)
    assert.equal(r.status, 'corrupt', `an entry of ${a} read as ${b}: ${JSON.stringify(r).slice(0, 200)}`)
    assert.match(r.status === 'corrupt' ? r.reason : '', new RegExp(`stored for key ${a}`))
    assert.ok(!existsSync(entryPath(dir, b)), 'the misplaced copy is removed')
    assertHit(await store.get(a), makeEntry('a'))
    await store.close()
  })

  test('an entry in the format of an older meshcc is a quiet miss and is removed', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const key = keyOf('old format')
    await store.put(key, makeEntry('old'))
    const file = entryPath(dir, key)
    const old = readFileSync(file)
    old[8] = 1 // version 1 had no key in its header
    writeFileSync(file, old)
    assert.deepStrictEqual(await store.get(key), { status: 'miss' })
    assert.ok(!existsSync(file))
    await store.close()
  })

  test('a stored entry with a non-zero exit code is never a hit', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const key = keyOf('sneaky failure')
    mkdirSync(join(dir, key.slice(0, 2)), { recursive: true })
    writeFileSync(entryPath(dir, key), await encodeEntry({ ...makeEntry('x'), exitCode: 1 }, key))
    const r = await store.get(key)
    assert.deepStrictEqual(r, { status: 'corrupt', reason: 'stored entry has exit code 1' })
    assert.ok(!existsSync(entryPath(dir, key)))
    await store.close()
  })

  test('put refuses a failed compile', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const key = keyOf('failed')
    await assert.rejects(store.put(key, { ...makeEntry('failed'), exitCode: 1 }), /failed compile/)
    await assert.rejects(store.put(key, { ...makeEntry('failed'), exitCode: -11 }), /failed compile/)
    assert.deepStrictEqual(diskEntries(dir), [])
    assert.deepStrictEqual(await store.get(key), { status: 'miss' })
    await store.close()
  })

  test('invalid keys are rejected', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const hex = keyOf('k')
    for (const bad of ['../x', 'abc', '', hex.toUpperCase(), `${hex}/../../x`, `../${hex.slice(3)}`, `${hex.slice(0, 63)}g`, ` ${hex.slice(1)}`]) {
      await assert.rejects(store.get(bad), /invalid cache key/, `get(${bad})`)
      await assert.rejects(store.put(bad, makeEntry('k')), /invalid cache key/, `put(${bad})`)
    }
    assert.deepStrictEqual(readdirSync(dir), [])
    await store.close()
  })

  test('eviction keeps the total under the limit and removes the least recently used', async () => {
    const dir = tempDir()
    const probe = (await encodeEntry(makeEntry('probe', 9000), K)).length
    const limit = probe * 10 + 100
    const store = await openStore(dir, limit)
    const keys = Array.from({ length: 12 }, (_, i) => keyOf(`lru ${i}`))
    for (let i = 0; i < 8; i++) await store.put(keys[i], makeEntry(`lru ${i}`, 9000))
    // Age them: entry 0 oldest, 7 newest.
    const base = Date.now() / 1000 - 3600
    for (let i = 0; i < 8; i++) utimesSync(entryPath(dir, keys[i]), base + i * 60, base + i * 60)
    // Using the oldest entry makes it the most recent.
    assertHit(await store.get(keys[0]), makeEntry('lru 0', 9000))
    assert.ok(statSync(entryPath(dir, keys[0])).mtimeMs > Date.now() - 60_000)
    for (let i = 8; i < 12; i++) await store.put(keys[i], makeEntry(`lru ${i}`, 9000))
    await store.evict()
    await store.close()

    const onDisk = diskEntries(dir)
    // Eviction ran once the 11th entry crossed the limit and went down to 90%.
    assert.ok(diskBytes(dir) <= limit, `${diskBytes(dir)} bytes on disk, limit ${limit}`)
    assert.ok(onDisk.length >= 9 && onDisk.length <= 10, `${onDisk.length} entries left`)
    assert.equal(store.stats().bytes, diskBytes(dir))
    assert.equal(store.stats().entries, onDisk.length)
    const present = new Set(onDisk.map((e) => e.key))
    assert.ok(present.has(keys[0]), 'recently used entry must survive')
    assert.ok(!present.has(keys[1]) && !present.has(keys[2]), 'least recently used entries must go')
    for (let i = 4; i < 12; i++) assert.ok(present.has(keys[i]), `entry ${i} should survive`)

    const reopened = await openStore(dir, limit)
    assertHit(await reopened.get(keys[0]), makeEntry('lru 0', 9000))
    assert.deepStrictEqual(await reopened.get(keys[1]), { status: 'miss' })
    await reopened.close()
  })

  test('an entry larger than the cache is not stored', async () => {
    const dir = tempDir()
    const store = await openStore(dir, 4096)
    const key = keyOf('huge')
    await store.put(key, makeEntry('huge', 8192))
    assert.deepStrictEqual(await store.get(key), { status: 'miss' })
    assert.equal(store.stats().entries, 0)
    await store.close()
  })

  test('200 concurrent puts and gets of overlapping keys, with eviction running', async () => {
    const dir = tempDir()
    const one = (await encodeEntry(makeEntry('c', 4000), K)).length
    const limit = one * 8 // 20 keys cannot all fit: evictions race with the gets
    const store = await openStore(dir, limit)
    const keys = Array.from({ length: 20 }, (_, i) => keyOf(`concurrent ${i}`))
    const expected = keys.map((_, i) => makeEntry(`concurrent ${i}`, 4000))
    let hits = 0
    const firstPut = new Map<number, Promise<void>>()
    const ops: Array<Promise<void>> = []
    for (let n = 0; n < 200; n++) {
      const i = n % keys.length
      if (n % 3 === 0) {
        const put = delay((n * 13) % 50).then(() => store.put(keys[i], expected[i]))
        if (!firstPut.has(i)) firstPut.set(i, put)
        ops.push(put)
        continue
      }
      ops.push((async () => {
        // Early gets race freely with the puts; later ones follow a put of their key.
        if (n < 100) await delay((n * 13) % 50)
        else await firstPut.get(i)?.catch(() => {})
        const r = await store.get(keys[i])
        if (r.status === 'hit') { hits++; assert.deepStrictEqual(r.entry, expected[i]) } else assert.deepStrictEqual(r, { status: 'miss' })
      })())
    }
    const results = await Promise.allSettled(ops)
    assert.deepStrictEqual(results.filter((r) => r.status === 'rejected'), [])
    await store.evict()
    await store.close()
    assert.ok(hits > 0, `some gets should hit (${hits})`)
    const onDisk = diskEntries(dir)
    assert.ok(onDisk.every((e) => !e.key.startsWith('.tmp-')), 'no temp files left behind')
    assert.ok(diskBytes(dir) <= limit, `${diskBytes(dir)} bytes on disk, limit ${limit}`)
    assert.equal(store.stats().bytes, diskBytes(dir))
    const check = await openStore(dir, limit)
    for (const e of onDisk) assertHit(await check.get(e.key), expected[keys.indexOf(e.key)])
    await check.close()
  })

  test('close waits for puts in flight and then refuses work', async () => {
    const dir = tempDir()
    const store = await openStore(dir)
    const keys = Array.from({ length: 10 }, (_, i) => keyOf(`close ${i}`))
    const puts = keys.map((k, i) => store.put(k, makeEntry(`close ${i}`)))
    await store.close()
    assert.equal(diskEntries(dir).length, 10)
    await Promise.all(puts)
    await assert.rejects(store.put(keyOf('late'), makeEntry('late')), /closed/)
    await assert.rejects(store.get(keys[0]), /closed/)
  })

  test('open removes stale temp files and ignores foreign files', async () => {
    const dir = tempDir()
    const key = keyOf('kept')
    const writer = await openStore(dir)
    await writer.put(key, makeEntry('kept'))
    await writer.close()
    const sub = join(dir, key.slice(0, 2))
    const stale = join(sub, '.tmp-999-deadbeef')
    const fresh = join(sub, '.tmp-998-cafebabe')
    writeFileSync(stale, 'half an entry'); writeFileSync(fresh, 'a live writer')
    const old = Date.now() / 1000 - 2 * 3600
    utimesSync(stale, old, old)
    writeFileSync(join(dir, 'stats.json'), '{}')
    writeFileSync(join(dir, 'meshcc.log'), 'log line\n')
    mkdirSync(join(dir, 'zz')); writeFileSync(join(dir, 'zz', keyOf('zz')), 'x')
    writeFileSync(join(sub, 'not-a-key'), 'x')
    const other = keyOf('other prefix') // a key filed under the wrong subdirectory
    writeFileSync(join(sub, other.startsWith(key.slice(0, 2)) ? keyOf('other prefix 2') : other), 'x')

    const store = await openStore(dir)
    assert.ok(!existsSync(stale), 'stale temp file removed')
    assert.ok(existsSync(fresh), 'young temp file kept')
    assert.ok(existsSync(join(dir, 'stats.json')) && existsSync(join(dir, 'meshcc.log')) && existsSync(join(sub, 'not-a-key')))
    assert.deepStrictEqual(store.stats(), { entries: 1, bytes: statSync(entryPath(dir, key)).size, maxBytes: 10 * 1024 ** 3 })
    await store.close()
  })

  test('two instances share one directory', async () => {
    const dir = tempDir()
    const one = (await encodeEntry(makeEntry('s', 3000), K)).length
    const a = await openStore(dir, one * 100)
    const b = await openStore(dir, one * 100)
    const keys = Array.from({ length: 10 }, (_, i) => keyOf(`shared ${i}`))
    for (let i = 0; i < 10; i++) await a.put(keys[i], makeEntry(`shared ${i}`, 3000))
    for (let i = 0; i < 10; i++) assertHit(await b.get(keys[i]), makeEntry(`shared ${i}`, 3000))
    assert.equal(b.stats().entries, 10)

    // A third, small store on the same directory evicts most of a's entries.
    const c = new LocalStore({ dir, maxBytes: one * 4, log: silentLogger })
    const removed = await c.evict() // opens the store and evicts
    assert.ok(removed >= 6, `${removed} removed`)
    const survivors = new Set(diskEntries(dir).map((e) => e.key))
    assert.ok(survivors.size >= 1 && survivors.size <= 3, `${survivors.size} survivors`)
    for (let i = 0; i < 10; i++) {
      const r = await a.get(keys[i])
      if (survivors.has(keys[i])) assertHit(r, makeEntry(`shared ${i}`, 3000))
      else assert.deepStrictEqual(r, { status: 'miss' })
    }
    // a keeps working and its view catches up with the directory on the next scan.
    await a.put(keyOf('after'), makeEntry('after', 6000))
    assert.equal(await a.evict(), 0)
    assert.equal(a.stats().entries, survivors.size + 1)
    assert.equal(a.stats().bytes, diskBytes(dir))
    // Eviction by c also counts what a wrote since c's scan.
    assert.ok(diskBytes(dir) > one * 4 * 0.9, `${diskBytes(dir)} bytes before`)
    await c.evict()
    assert.ok(diskBytes(dir) <= one * 4 * 0.9, `${diskBytes(dir)} bytes after`)
    await Promise.all([a.close(), b.close(), c.close()])
  })

  test('two processes writing and reading the same keys', async () => {
    const dir = tempDir()
    const keys = Array.from({ length: 30 }, (_, i) => keyOf(`proc ${i}`))
    const storeUrl = pathToFileURL(join(import.meta.dirname, '../src/cache/local-store.ts')).href
    const logUrl = pathToFileURL(join(import.meta.dirname, '../src/log.ts')).href
    const child = join(dir, 'child.mts')
    writeFileSync(child, `
      import { createHash } from 'node:crypto'
      import { LocalStore } from ${JSON.stringify(storeUrl)}
      import { silentLogger } from ${JSON.stringify(logUrl)}
      const noise = (seed, n) => createHash('shake256', { outputLength: n }).update(seed).digest()
      const store = new LocalStore({ dir: process.argv[2], maxBytes: 60000, log: silentLogger })
      await store.open()
      for (let round = 0; round < 3; round++) {
        await Promise.all(${JSON.stringify(keys)}.map((k, i) => store.put(k, {
          exitCode: 0,
          stdout: Buffer.from('stdout proc ' + i + '\\n'),
          stderr: Buffer.from('warning: unused variable in proc ' + i + '\\n'),
          outputs: [{ name: 'obj', data: noise('obj:proc ' + i, 2048) }, { name: 'dep', data: Buffer.from('proc ' + i + '.o: proc ' + i + '.c include/a.h\\n') }],
          meta: { source: 'proc ' + i + '.c' }
        })))
      }
      await store.close()
    `)
    const childDone = promisify(execFile)(process.execPath, ['--import', 'tsx', child, dir], { cwd: join(import.meta.dirname, '..') })
    const store = await openStore(dir, 60000)
    let corrupt = 0
    let rounds = 0
    const deadline = Date.now() + 10_000
    let childFinished = false
    void childDone.then(() => { childFinished = true }, () => { childFinished = true })
    while (!childFinished && Date.now() < deadline) {
      rounds++
      await Promise.all(keys.map(async (k, i) => {
        if (i % 3 === 0) return store.put(k, makeEntry(`proc ${i}`))
        const r = await store.get(k)
        if (r.status === 'corrupt') corrupt++
        if (r.status === 'hit') assert.deepStrictEqual(r.entry, makeEntry(`proc ${i}`))
      }))
    }
    await childDone
    assert.ok(rounds > 1, 'the parent should have worked while the child ran')
    await store.evict()
    await store.close()
    assert.equal(corrupt, 0)
    assert.ok(diskBytes(dir) <= 60000, `${diskBytes(dir)} bytes on disk`)
    assert.ok(!readdirSync(dir).some((n) => n.startsWith('.tmp-')))
    const check = await openStore(dir, 60000)
    for (const e of diskEntries(dir)) {
      assert.ok(!e.key.startsWith('.tmp-'), 'no temp files left')
      assertHit(await check.get(e.key), makeEntry(`proc ${keys.indexOf(e.key)}`))
    }
    await check.close()
  })
})
