import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { unpackToolchain, ToolchainArchiveError, type UnpackLimits } from '../src/toolchain/unpack.js'
import { entry, gnuSparseFile, hugeFile, paxSparseFile, tgz } from './helpers/tar-entries.js'

const dirs: string[] = []
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }) })

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'meshcc-tc-unpack-'))
  dirs.push(d)
  return d
}

/** deterministic incompressible bytes */
const noiseBytes = (n: number) => createHash('shake256', { outputLength: n }).update('noise').digest()

/** The archive must be refused with a ToolchainArchiveError and leave nothing behind. */
async function assertRejected(archive: Buffer, reason: RegExp, limits?: UnpackLimits): Promise<void> {
  const parent = tempDir()
  const dest = join(parent, 'root')
  await assert.rejects(unpackToolchain(archive, dest, limits), (err: unknown) => {
    assert.ok(err instanceof ToolchainArchiveError, `expected ToolchainArchiveError, got ${String(err)}`)
    assert.match(err.message, reason)
    assert.ok(!err.message.includes('\n'), 'one-line reason')
    return true
  })
  assert.equal(existsSync(dest), false, 'destDir must not exist after a rejection')
  assert.deepEqual(readdirSync(parent), [], 'no temp dir left beside destDir')
  assert.equal(existsSync('/tmp/meshcc-evil'), false)
}

const good = () => [
  entry('usr/', 'Directory'),
  entry('usr/bin/', 'Directory'),
  entry('usr/bin/cc', 'File', { data: '#!/bin/false\n', mode: 0o755 }),
  entry('usr/bin/gcc', 'SymbolicLink', { linkpath: 'cc' }),
  entry('lib', 'SymbolicLink', { linkpath: 'usr/lib' }),
  entry('usr/lib/', 'Directory'),
  entry('usr/lib/libc.so.6', 'File', { data: 'libc' }),
  entry('usr/lib64/ld.so', 'SymbolicLink', { linkpath: '../../lib/libc.so.6' })
]

test('a well-formed archive unpacks, with links kept relative and modes normalised', async () => {
  const dest = join(tempDir(), 'root')
  const stats = await unpackToolchain(tgz(...good()), dest)
  assert.equal(stats.entries, 8)
  assert.equal(stats.fileBytes, 13 + 4)
  assert.equal(readFileSync(join(dest, 'usr/bin/gcc'), 'utf8'), '#!/bin/false\n')
  assert.equal(readlinkSync(join(dest, 'usr/lib64/ld.so')), '../../lib/libc.so.6')
  assert.equal(readFileSync(join(dest, 'usr/lib64/ld.so'), 'utf8'), 'libc', 'resolves through lib -> usr/lib')
  assert.equal(statSync(join(dest, 'usr/bin/cc')).mode & 0o7777, 0o755)
  assert.equal(statSync(join(dest, 'usr/lib/libc.so.6')).mode & 0o7777, 0o644)
  // Long names travel in pax headers.
  const long = `usr/${'x'.repeat(150)}/${'y'.repeat(120)}`
  const dest2 = join(tempDir(), 'root')
  await unpackToolchain(tgz(entry(long, 'File', { data: 'z' })), dest2)
  assert.equal(readFileSync(join(dest2, long), 'utf8'), 'z')
})

test('a path or file destination that exists is an error, not a merge', async () => {
  const parent = tempDir()
  const dest = join(parent, 'root')
  mkdirSync(dest)
  writeFileSync(join(dest, 'keep'), 'x')
  await assert.rejects(unpackToolchain(tgz(...good()), dest), /already exists/)
  assert.deepEqual(readdirSync(parent), ['root'])
  assert.deepEqual(readdirSync(dest), ['keep'])
})

test('rejects an absolute path', async () => {
  await assertRejected(tgz(...good(), entry('/tmp/meshcc-evil', 'File', { data: 'x' })), /absolute path/)
})

test('rejects ../ traversal', async () => {
  await assertRejected(tgz(entry('usr/', 'Directory'), entry('usr/../../meshcc-evil', 'File', { data: 'x' })), /"\.\."/)
  await assertRejected(tgz(entry('../meshcc-evil', 'File', { data: 'x' })), /"\.\."/)
  // Same through a pax header, which overrides the ustar name.
  await assertRejected(tgz(entry('a/../../meshcc-evil', 'File', { data: 'x', pax: true })), /"\.\."/)
})

test('rejects a symlink with an absolute target', async () => {
  await assertRejected(tgz(...good(), entry('usr/bin/evil', 'SymbolicLink', { linkpath: '/etc/passwd' })), /absolute target/)
})

test('rejects a symlink whose relative target escapes the root', async () => {
  await assertRejected(tgz(...good(), entry('usr/bin/evil', 'SymbolicLink', { linkpath: '../../../etc/passwd' })), /escapes the archive root/)
  // Only escapes once resolved through another link: dot -> . then evil -> dot/.. is root/..
  await assertRejected(tgz(entry('dot', 'SymbolicLink', { linkpath: '.' }), entry('evil', 'SymbolicLink', { linkpath: 'dot/..' })), /escapes the archive root/)
  // ... also when the link it goes through comes later in the archive.
  await assertRejected(tgz(entry('evil', 'SymbolicLink', { linkpath: 'dot/../x' }), entry('dot', 'SymbolicLink', { linkpath: '.' })), /escapes the archive root/)
  // Through a directory link: up -> usr/.., fine by itself, up/../x escapes.
  await assertRejected(tgz(entry('usr/', 'Directory'), entry('usr/up', 'SymbolicLink', { linkpath: '..' }), entry('usr/evil', 'SymbolicLink', { linkpath: 'up/../x' })), /escapes the archive root/)
  // A link loop is refused too.
  await assertRejected(tgz(entry('a', 'SymbolicLink', { linkpath: 'b/x' }), entry('b', 'SymbolicLink', { linkpath: 'a/x' })), /too many levels/)
})

test('rejects a file written through a symlinked directory', async () => {
  await assertRejected(tgz(entry('d/', 'Directory'), entry('l', 'SymbolicLink', { linkpath: 'd' }), entry('l/f', 'File', { data: 'x' })), /goes through symlink "l"/)
  // A link pointing outside that is then written through: refused at the link already.
  await assertRejected(tgz(entry('l', 'SymbolicLink', { linkpath: '../../../../tmp' }), entry('l/meshcc-evil', 'File', { data: 'x' })), /escapes/)
  // A file replacing a symlink (open would follow it) is a duplicate.
  await assertRejected(tgz(entry('d/', 'Directory'), entry('l', 'SymbolicLink', { linkpath: 'd/f' }), entry('l', 'File', { data: 'x' })), /duplicate entry/)
  // A file used as a directory.
  await assertRejected(tgz(entry('f', 'File', { data: 'x' }), entry('f/g', 'File', { data: 'y' })), /goes through file/)
})

test('rejects a hard link', async () => {
  await assertRejected(tgz(...good(), entry('usr/bin/g++', 'Link', { linkpath: 'usr/bin/cc' })), /hard link/)
})

test('rejects device files and fifos', async () => {
  await assertRejected(tgz(...good(), entry('dev/null', 'CharacterDevice', { mode: 0o666 })), /character device/)
  await assertRejected(tgz(entry('sda', 'BlockDevice')), /block device/)
  await assertRejected(tgz(entry('pipe', 'FIFO')), /fifo/)
})

test('rejects sparse files, however they are written: a 30 GB one is never a toolchain', async () => {
  const GB30 = 30 * 1024 ** 3
  // pax format 1.0: node-tar knows no GNU.sparse records and would unpack the map as the file's
  // contents, under a GNUSparseFile.0/ path: an archive that means something else than it unpacks to
  await assertRejected(tgz(...good(), paxSparseFile('usr/bin/bomb', GB30)), /sparse file/)
  await assertRejected(tgz(...good(), gnuSparseFile('usr/bin/bomb', GB30)), /SparseFile/)
  // a plain file announcing 30 GB: refused from its header, before its data
  await assertRejected(tgz(...good(), hugeFile('usr/bin/bomb', GB30)), /exceed 2147483648 bytes/)
})

test('rejects more data than maxBytes, counting as it streams', async () => {
  const big = Buffer.alloc(1024 * 1024) // compresses to ~1 KB
  await assertRejected(tgz(...good(), entry('usr/big', 'File', { data: big })), /exceed|more than/, { maxBytes: 64 * 1024 })
  // Declared sizes within the limit, but headers and padding push the stream over it mid-file.
  await assertRejected(tgz(entry('f', 'File', { data: Buffer.alloc(300 * 1024, 7) })), /more than/, { maxBytes: 300 * 1024 + 100 })
  // Zeros are tar's end marker: a stream of nothing else is an empty archive, read no further.
  await assertRejected(gzipSync(Buffer.alloc(8 * 1024 * 1024)), /no entries|Unrecognized archive format/, { maxBytes: 1024 * 1024 })
})

test('stops at the end-of-archive marker: a long trailer after it costs nothing', { timeout: 120_000 }, async () => {
  // 128 MiB of zeros after the marker (128 KiB gzipped): node-tar's parser, fed on, re-joins
  // its growing buffer on every piece (64 MiB took 27 s, 96 MiB 61 s); never read, it takes none
  const trailer = Buffer.alloc(128 * 1024 * 1024)
  const archive = gzipSync(Buffer.concat([...good(), Buffer.alloc(1024), trailer]), { level: 1 })
  const dest = join(tempDir(), 'root')
  const t0 = performance.now()
  const stats = await unpackToolchain(archive, dest)
  const ms = performance.now() - t0
  assert.equal(stats.entries, 8)
  assert.equal(readFileSync(join(dest, 'usr/bin/gcc'), 'utf8'), '#!/bin/false\n')
  // a bound an order of magnitude above the time it takes, two below the old quadratic one
  assert.ok(ms < 10_000, `unpacking took ${Math.round(ms)} ms`)
  // what follows the marker is never parsed: garbage there does not matter either
  const garbage = gzipSync(Buffer.concat([...good(), Buffer.alloc(1024), Buffer.from('not a tar header'.repeat(64))]))
  assert.equal((await unpackToolchain(garbage, join(tempDir(), 'root'))).entries, 8)
})

test('an unpack that runs past its deadline is abandoned, leaving nothing', async () => {
  const many = Array.from({ length: 3000 }, (_, i) => entry(`d${i % 30}/f${i}`, 'File', { data: String(i) }))
  const dirs = Array.from({ length: 30 }, (_, i) => entry(`d${i}/`, 'Directory'))
  await assertRejected(tgz(...dirs, ...many), /unpacking took longer than 0 s/, { timeoutMs: 20 })
})

test('rejects more entries than maxEntries', async () => {
  const many = Array.from({ length: 10 }, (_, i) => entry(`f${i}`, 'File', { data: String(i) }))
  await assertRejected(tgz(...many), /more than 5 entries/, { maxEntries: 5 })
  const dest = join(tempDir(), 'root')
  await unpackToolchain(tgz(...many), dest, { maxEntries: 10 })
})

test('rejects setuid and setgid modes', async () => {
  await assertRejected(tgz(...good(), entry('usr/bin/su', 'File', { data: 'x', mode: 0o4755 })), /setuid\/setgid mode 4755/)
  await assertRejected(tgz(entry('usr/', 'Directory', { mode: 0o2755 })), /setuid\/setgid/)
})

test('rejects data that is not a gzip tar, and truncated archives', async () => {
  await assertRejected(Buffer.from('definitely not gzip'), /corrupt or not gzip|bad tar data/)
  const whole = Buffer.concat([...good(), entry('usr/x', 'File', { data: Buffer.alloc(4096, 1) })])
  await assertRejected(gzipSync(whole.subarray(0, whole.length - 1000)), /bad tar data/)
  await assertRejected(tgz(...good()).subarray(0, 60), /corrupt or not gzip|bad tar data/)
  // Corrupt deflate data in the middle of a file's body.
  const z = tgz(entry('f', 'File', { data: noiseBytes(2 * 1024 * 1024) }))
  for (let i = z.length >> 1; i < (z.length >> 1) + 100; i++) z[i] ^= 0xff
  await assertRejected(z, /corrupt or not gzip|bad tar data/)
})
