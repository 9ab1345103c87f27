// Deterministic toolchain archives: the same files give the same bytes, so the sha256 of
// the .tar.gz names the toolchain on every peer. Entries are sorted, owned by 0:0 with no
// names, mtime 0, modes normalised to 0755/0644 (setuid and friends never survive),
// parents are explicit directories, and symlinks get relative targets so they resolve
// inside whatever directory the archive is unpacked to. The empty directories proc/,
// dev/ and tmp/ are mount points: the root is bound read-only, so bwrap cannot create them.
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { lstat, mkdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { dirname, isAbsolute, join, resolve } from 'node:path'
import { Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { Header, Pax } from 'tar'
import { writeFileAtomic } from '../util/atomic-write.js'
import { discoverToolchain } from './discover.js'
import { closePaths, compareBytes } from './paths.js'
import type { CompilerFamily, ToolchainSpec } from './types.js'

export interface PackResult {
  /** sha256 hex of the compressed archive */
  hash: string
  /** absolute path of <outDir>/<hash>.tar.gz */
  archive: string
  /** size of the archive file */
  bytes: number
}

/**
 * Part of the archive format: the hash covers the compressed bytes, so changing the level
 * renames every toolchain. 4 is ~40% faster than zlib's default 6 on libLLVM for ~3% more bytes.
 */
export const GZIP_LEVEL = 4
const MOUNT_POINTS = ['proc', 'dev', 'tmp']

type PackEntry =
  | { kind: 'dir'; name: string }
  | { kind: 'file'; name: string; host: string; size: number; mode: number }
  | { kind: 'symlink'; name: string; target: string }

/** Archive-relative name of an absolute host path. */
function rel(abs: string): string {
  return abs.replace(/^\/+/, '')
}

/**
 * A symlink target that resolves the same way inside the unpacked root. Relative targets
 * are kept verbatim (every directory they pass is in the archive too); an absolute one
 * climbs to the root first: /x/y from usr/bin/z becomes ../../x/y. The link's parent has
 * no symlinks in it, so climbing with .. is exact, unlike a lexical path.relative().
 */
export function relativeLinkTarget(linkPath: string, target: string): string {
  if (!isAbsolute(target)) return target
  const depth = rel(dirname(linkPath)).split('/').filter(Boolean).length
  const down = target.replace(/^\/+/, '')
  const up = '../'.repeat(depth)
  if (down === '') return depth === 0 ? '.' : up.slice(0, -1)
  return up + down
}

async function planEntries(spec: ToolchainSpec): Promise<PackEntry[]> {
  // Re-close even a discovered spec: a hand-written one may list paths below symlinks.
  const closure = await closePaths([spec.compiler, ...spec.files])
  const byName = new Map<string, PackEntry>()
  const addDir = (name: string) => {
    if (name !== '' && !byName.has(name)) byName.set(name, { kind: 'dir', name })
  }
  for (const m of MOUNT_POINTS) addDir(m)
  for (const e of closure.values()) {
    const name = rel(e.path)
    // Parents of every entry are real directories on the host (the closure guarantees it).
    const parts = name.split('/')
    for (let i = 1; i < parts.length; i++) addDir(parts.slice(0, i).join('/'))
    if (e.kind === 'dir') addDir(name)
    else if (e.kind === 'symlink') byName.set(name, { kind: 'symlink', name, target: relativeLinkTarget(e.path, e.target) })
    else byName.set(name, { kind: 'file', name, host: e.path, size: e.stat.size, mode: e.stat.mode & 0o111 ? 0o755 : 0o644 })
  }
  return [...byName.values()].sort((a, b) => compareBytes(a.name, b.name))
}

const ZERO_BLOCK = Buffer.alloc(512)

function headerBlocks(h: { path: string; type: 'File' | 'Directory' | 'SymbolicLink'; mode: number; size: number; linkpath?: string }): Buffer[] {
  const header = new Header({
    path: h.path, type: h.type, mode: h.mode, size: h.size, linkpath: h.linkpath ?? '',
    uid: 0, gid: 0, uname: '', gname: '', mtime: new Date(0)
  })
  const block = Buffer.alloc(512)
  const needPax = header.encode(block, 0)
  // Long or non-ASCII names go in a pax header carrying only path and linkpath.
  if (needPax) return [new Pax({ path: h.path, linkpath: h.linkpath }).encode(), block]
  return [block]
}

async function* tarStream(entries: PackEntry[]): AsyncGenerator<Buffer> {
  for (const e of entries) {
    if (e.kind === 'dir') {
      yield* headerBlocks({ path: `${e.name}/`, type: 'Directory', mode: 0o755, size: 0 })
    } else if (e.kind === 'symlink') {
      yield* headerBlocks({ path: e.name, type: 'SymbolicLink', mode: 0o777, size: 0, linkpath: e.target })
    } else {
      yield* headerBlocks({ path: e.name, type: 'File', mode: e.mode, size: e.size })
      let n = 0
      if (e.size > 0) {
        for await (const chunk of createReadStream(e.host, { start: 0, end: e.size - 1, highWaterMark: 1024 * 1024 })) {
          n += (chunk as Buffer).length
          yield chunk as Buffer
        }
      }
      // A file rewritten while we pack (a package upgrade) would corrupt the tar stream.
      if (n !== e.size) throw new Error(`${e.host} changed size while packing (${e.size} -> ${n} bytes)`)
      const pad = (512 - (e.size % 512)) % 512
      if (pad) yield ZERO_BLOCK.subarray(0, pad)
    }
  }
  yield Buffer.alloc(1024) // end-of-archive marker
}

/** Pack a toolchain into <outDir>/<sha256>.tar.gz; the same files always give the same hash. */
export async function packToolchain(spec: ToolchainSpec, outDir: string): Promise<PackResult> {
  if (!isAbsolute(spec.compiler)) throw new Error(`toolchain compiler must be an absolute path: ${spec.compiler}`)
  const entries = await planEntries(spec)
  await mkdir(outDir, { recursive: true })
  const tmp = join(outDir, `.pack-${process.pid}-${randomBytes(6).toString('hex')}.tmp`)
  const hash = createHash('sha256')
  let bytes = 0
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk)
      bytes += chunk.length
      cb(null, chunk)
    }
  })
  try {
    // Node's gzip header has mtime 0 and no name, so the output depends on the input only.
    await pipeline(Readable.from(tarStream(entries)), createGzip({ level: GZIP_LEVEL, chunkSize: 256 * 1024 }), tap, createWriteStream(tmp, { mode: 0o644 }))
    const hex = hash.digest('hex')
    const archive = resolve(outDir, `${hex}.tar.gz`)
    await rename(tmp, archive)
    return { hash: hex, archive, bytes }
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
}

// --- packing once per compiler ---

const INDEX_FILE = 'toolchains.json'
const INDEX_VERSION = 1

interface IndexRecord {
  family: CompilerFamily
  compiler: string
  hash: string
  bytes: number
  /** [path, size, mtimeMs] of the compiler binary and every packed file: any change repacks */
  stamps: Array<[string, number, number]>
}
interface IndexFile { version: number; toolchains: Record<string, IndexRecord> }

const memo = new Map<string, IndexRecord>()
const inflight = new Map<string, Promise<PackResult>>()
/** index read-modify-write, one at a time per directory */
const indexChains = new Map<string, Promise<unknown>>()

async function stampsOf(paths: string[]): Promise<Array<[string, number, number]>> {
  return Promise.all(paths.map(async (p): Promise<[string, number, number]> => {
    const st = await lstat(p)
    return [p, st.size, st.mtimeMs]
  }))
}

async function stillValid(rec: IndexRecord, outDir: string): Promise<boolean> {
  try {
    const st = await stat(join(outDir, `${rec.hash}.tar.gz`))
    if (st.size !== rec.bytes) return false
    const now = await stampsOf(rec.stamps.map((s) => s[0]))
    return now.every((s, i) => s[1] === rec.stamps[i][1] && s[2] === rec.stamps[i][2])
  } catch {
    return false
  }
}

async function readIndex(outDir: string): Promise<IndexFile> {
  try {
    const doc = JSON.parse(await readFile(join(outDir, INDEX_FILE), 'utf8')) as IndexFile
    if (doc && doc.version === INDEX_VERSION && doc.toolchains && typeof doc.toolchains === 'object') return doc
  } catch { /* missing or damaged: start over */ }
  return { version: INDEX_VERSION, toolchains: {} }
}

function updateIndex(outDir: string, key: string, rec: IndexRecord): Promise<void> {
  const prev = indexChains.get(outDir) ?? Promise.resolve()
  const next = prev.catch(() => {}).then(async () => {
    const doc = await readIndex(outDir)
    const old = doc.toolchains[key]
    doc.toolchains[key] = rec
    await writeFileAtomic(join(outDir, INDEX_FILE), Buffer.from(JSON.stringify(doc, null, 1)))
    // The compiler changed: drop its old archive unless another compiler shares it.
    if (old && old.hash !== rec.hash && !Object.values(doc.toolchains).some((r) => r.hash === old.hash)) {
      await rm(join(outDir, `${old.hash}.tar.gz`), { force: true })
    }
  })
  indexChains.set(outDir, next)
  return next
}

/**
 * Discover and pack a compiler's toolchain once: later calls (also after a restart, via
 * <outDir>/toolchains.json) return the same archive while the compiler binary and every
 * packed file keep their size and mtime.
 */
export async function packToolchainCached(compilerPath: string, family: CompilerFamily, outDir: string): Promise<PackResult> {
  const key = `${family}:${compilerPath}`
  const dirKey = `${resolve(outDir)}\0${key}`
  let p = inflight.get(dirKey)
  if (p) return p
  p = (async () => {
    const known = memo.get(dirKey) ?? (await readIndex(outDir)).toolchains[key]
    if (known && known.family === family && await stillValid(known, outDir)) {
      memo.set(dirKey, known)
      return { hash: known.hash, archive: resolve(outDir, `${known.hash}.tar.gz`), bytes: known.bytes }
    }
    const spec = await discoverToolchain(compilerPath, family)
    // Stamp before packing: a change during packing then shows up as a mismatch next time.
    const stamps = await stampsOf([...new Set([spec.compiler, ...spec.files])])
    const res = await packToolchain(spec, outDir)
    const rec: IndexRecord = { family, compiler: spec.compiler, hash: res.hash, bytes: res.bytes, stamps }
    await updateIndex(outDir, key, rec)
    memo.set(dirKey, rec)
    return res
  })()
  inflight.set(dirKey, p)
  p.finally(() => inflight.delete(dirKey)).catch(() => {})
  return p
}
