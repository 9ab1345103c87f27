// Unpacking a toolchain that came from another peer. The archive is untrusted input and
// its files end up as the root of a sandbox we exec in, so anything unusual is an error,
// never a silent skip: absolute or ../ paths, hard links, devices, fifos, setuid/setgid
// bits, sparse files, entries below a symlink, symlinks that are absolute or climb out of the root
// (resolved through the archive's own links, checked once every entry is known), too
// many entries, too many decompressed bytes. Files are written only below directories
// this function created, with O_EXCL, so no link can redirect a write; everything goes
// to a temp dir beside destDir that is renamed into place only when all checks passed.
import { randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { mkdir, open, rename, rm, stat, symlink } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { Readable } from 'node:stream'
import { createGunzip } from 'node:zlib'
import { Parser, type ReadEntry } from 'tar'

export class ToolchainArchiveError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ToolchainArchiveError'
  }
}

export interface UnpackLimits {
  /** decompressed bytes (the whole tar stream), default 2 GiB */
  maxBytes?: number
  /** tar entries, default 20000 */
  maxEntries?: number
  /** give up after this long; default a minute plus a second per MiB of archive */
  timeoutMs?: number
}

export interface UnpackStats {
  entries: number
  /** sum of the regular files' sizes */
  fileBytes: number
}

export const DEFAULT_MAX_BYTES = 2 * 1024 ** 3
export const DEFAULT_MAX_ENTRIES = 20_000
/** a toolchain of 77 MiB unpacks in about 3 s; the deadline is for an archive made to be slow */
export function defaultUnpackTimeoutMs(archiveBytes: number): number {
  return 60_000 + Math.ceil(archiveBytes / (1024 * 1024)) * 1000
}
const MAX_LINK_HOPS = 40

type Node = { kind: 'dir' } | { kind: 'file' } | { kind: 'symlink'; target: string }

/** Archive path → its components, or an error for absolute and ../ paths. */
function components(path: string): string[] {
  if (path.startsWith('/')) throw new ToolchainArchiveError(`absolute path in archive: ${JSON.stringify(path)}`)
  if (path.includes('\0')) throw new ToolchainArchiveError(`NUL byte in archive path: ${JSON.stringify(path)}`)
  const parts = path.split('/').filter((p) => p !== '' && p !== '.')
  if (parts.includes('..')) throw new ToolchainArchiveError(`".." in archive path: ${JSON.stringify(path)}`)
  return parts
}

/**
 * Resolve a symlink's target inside the archive tree the way the kernel would, following
 * the archive's other links; throws when it would leave the root.
 */
function checkLinkTarget(tree: Map<string, Node>, linkName: string, target: string): void {
  const where = `symlink ${JSON.stringify(linkName)} -> ${JSON.stringify(target)}`
  if (target === '') throw new ToolchainArchiveError(`${where}: empty target`)
  if (target.startsWith('/')) throw new ToolchainArchiveError(`${where}: absolute target`)
  const stack = linkName.split('/').slice(0, -1)
  const queue = target.split('/')
  let hops = 0
  while (queue.length > 0) {
    const c = queue.shift() as string
    if (c === '' || c === '.') continue
    if (c === '..') {
      if (stack.length === 0) throw new ToolchainArchiveError(`${where}: target escapes the archive root`)
      stack.pop()
      continue
    }
    const node = tree.get([...stack, c].join('/'))
    if (node?.kind === 'symlink') {
      if (++hops > MAX_LINK_HOPS) throw new ToolchainArchiveError(`${where}: too many levels of symbolic links`)
      if (node.target.startsWith('/')) throw new ToolchainArchiveError(`${where}: resolves through an absolute symlink`)
      queue.unshift(...node.target.split('/'))
      continue
    }
    stack.push(c)
  }
}

function describeType(type: string): string {
  switch (type) {
    case 'Link': return 'hard link'
    case 'CharacterDevice': return 'character device'
    case 'BlockDevice': return 'block device'
    case 'FIFO': return 'fifo'
    default: return `unsupported entry type ${type}`
  }
}

/**
 * Unpack a toolchain archive (.tar.gz, path or bytes) to destDir, which must not exist.
 *
 * Reading stops at tar's end-of-archive marker (two zero blocks): what follows is never
 * decompressed, like GNU tar without --ignore-zeros. node-tar's parser, fed past the marker,
 * joins each new piece to everything it has buffered since (quadratic: 64 MiB of zeros after
 * the marker took 27 s of one core, 96 MiB 61 s), and the bytes there are never unpacked, so
 * there is nothing to check in them: the archive's sha256 already vouches for the whole file.
 */
export async function unpackToolchain(archive: string | Buffer, destDir: string, limits: UnpackLimits = {}): Promise<UnpackStats> {
  const maxBytes = limits.maxBytes ?? DEFAULT_MAX_BYTES
  const maxEntries = limits.maxEntries ?? DEFAULT_MAX_ENTRIES
  const timeoutMs = limits.timeoutMs ?? defaultUnpackTimeoutMs(typeof archive === 'string' ? (await stat(archive)).size : archive.length)
  await mkdir(dirname(destDir), { recursive: true })
  const tmp = join(dirname(destDir), `.${basename(destDir)}.unpack-${process.pid}-${randomBytes(6).toString('hex')}`)
  await mkdir(tmp, { mode: 0o755 })

  const tree = new Map<string, Node>()
  let entries = 0
  let declaredBytes = 0
  let fileBytes = 0

  let failure: Error | null = null
  let rejectFailed!: (e: Error) => void
  const failed = new Promise<never>((_, reject) => { rejectFailed = reject })
  failed.catch(() => {})
  const fail = (err: unknown) => {
    if (failure) return
    failure = err instanceof Error ? err : new Error(String(err))
    rejectFailed(failure)
  }

  const handle = async (entry: ReadEntry): Promise<void> => {
    if (++entries > maxEntries) throw new ToolchainArchiveError(`more than ${maxEntries} entries`)
    const type = entry.type
    const isFile = type === 'File' || type === 'OldFile' || type === 'ContiguousFile'
    if (!isFile && type !== 'Directory' && type !== 'SymbolicLink') {
      throw new ToolchainArchiveError(`${describeType(type)} in archive: ${JSON.stringify(entry.path)}`)
    }
    const parts = components(entry.path)
    const mode = entry.mode ?? 0
    if (mode & 0o6000) throw new ToolchainArchiveError(`setuid/setgid mode ${mode.toString(8)} on ${JSON.stringify(entry.path)}`)
    declaredBytes += entry.size
    if (declaredBytes > maxBytes) throw new ToolchainArchiveError(`archive contents exceed ${maxBytes} bytes`)
    if (parts.length === 0) {
      // "./" is the root itself, which is already a directory.
      if (type === 'Directory') { entry.resume(); return }
      throw new ToolchainArchiveError(`${type} entry for the archive root`)
    }
    // Parents: must be directories we created; a symlink or file there would redirect the write.
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i).join('/')
      const node = tree.get(prefix)
      if (node === undefined) {
        await mkdir(join(tmp, prefix), { mode: 0o755 })
        tree.set(prefix, { kind: 'dir' })
      } else if (node.kind === 'symlink') {
        throw new ToolchainArchiveError(`${JSON.stringify(entry.path)} goes through symlink ${JSON.stringify(prefix)}`)
      } else if (node.kind !== 'dir') {
        throw new ToolchainArchiveError(`${JSON.stringify(entry.path)} goes through file ${JSON.stringify(prefix)}`)
      }
    }
    const name = parts.join('/')
    const existing = tree.get(name)
    if (existing) {
      if (existing.kind === 'dir' && type === 'Directory') { entry.resume(); return }
      throw new ToolchainArchiveError(`duplicate entry ${JSON.stringify(entry.path)}`)
    }
    const host = join(tmp, name)
    if (type === 'Directory') {
      await mkdir(host, { mode: 0o755 })
      tree.set(name, { kind: 'dir' })
      entry.resume()
    } else if (type === 'SymbolicLink') {
      const target = entry.linkpath ?? ''
      // Cheap checks now; resolution through later links happens at the end.
      checkLinkTarget(tree, name, target)
      await symlink(target, host)
      tree.set(name, { kind: 'symlink', target })
      entry.resume()
    } else {
      tree.set(name, { kind: 'file' })
      const fh = await open(host, 'wx', mode & 0o111 ? 0o755 : 0o644)
      try {
        fileBytes += await copyEntry(entry, fh, failed)
      } finally {
        await fh.close()
      }
    }
  }

  const parser = new Parser({ strict: true })
  let chain: Promise<void> = Promise.resolve()
  parser.on('entry', (entry: ReadEntry) => {
    // The parser hands out entries one by one; the chain keeps our async work in order.
    chain = chain.then(async () => {
      if (failure) { entry.resume(); return }
      await handle(entry)
    }).catch((err: unknown) => { fail(err); entry.resume() })
  })
  // node-tar drops pax records it does not know: a GNU sparse file (pax format 0.x or 1.0) would
  // unpack as its sparse map under a GNUSparseFile.0/ path, not as the file the archive means
  parser.on('meta', (text: string) => {
    if (/(^|\n)\d+ GNU\.sparse\./.test(text)) fail(new ToolchainArchiveError('sparse file in archive (GNU.sparse pax records)'))
  })
  parser.on('ignoredEntry', (entry: ReadEntry) => fail(new ToolchainArchiveError(`${describeType(entry.type)} in archive: ${JSON.stringify(entry.path)}`)))
  parser.on('warn', (_code: string, message: string) => fail(new ToolchainArchiveError(`bad tar data: ${message}`)))
  parser.on('error', (err: Error) => fail(new ToolchainArchiveError(`bad tar data: ${err.message}`)))
  const parsed = new Promise<void>((resolve) => parser.on('end', () => resolve()))
  // emitted in order with the entries: when a write returns true, or its drain comes, the
  // parser has told us whether the data so far held the marker
  let sawEnd = false
  parser.on('eof', () => { sawEnd = true })
  const deadline = setTimeout(() => fail(new ToolchainArchiveError(`unpacking took longer than ${Math.round(timeoutMs / 1000)} s`)), timeoutMs)

  const source: Readable = typeof archive === 'string' ? createReadStream(archive) : Readable.from([archive])
  const gunzip = createGunzip({ chunkSize: 256 * 1024 }) // 16 KiB chunks made unpacking ~8x slower
  source.on('error', (err) => gunzip.destroy(err))
  source.pipe(gunzip)
  try {
    let total = 0
    try {
      for await (const chunk of gunzip) {
        if (failure || sawEnd) break
        total += (chunk as Buffer).length
        // Counted as it streams: a gzip bomb stops here, not after filling the disk.
        if (total > maxBytes) { fail(new ToolchainArchiveError(`archive decompresses to more than ${maxBytes} bytes`)); break }
        if (!parser.write(chunk as Buffer)) await Promise.race([new Promise((r) => parser.once('drain', r)), failed])
      }
    } catch (err) {
      if (!failure) {
        const e = err as NodeJS.ErrnoException
        fail(e.code?.startsWith('Z_') || e.code === 'ERR_INVALID_ARG_TYPE' ? new ToolchainArchiveError(`corrupt or not gzip data: ${e.message}`) : e)
      }
    }
    if (!failure) {
      parser.end()
      await Promise.race([parsed, failed]).catch(() => {})
    }
    await chain
    // nothing but an end marker (a stream of zeros, say) is no toolchain
    if (!failure && entries === 0) fail(new ToolchainArchiveError('archive has no entries'))
    if (!failure) {
      // Links are checked again with the whole tree: a later link may change an earlier one's path.
      for (const [name, node] of tree) {
        if (node.kind === 'symlink') checkLinkTarget(tree, name, node.target)
      }
    }
    if (failure) throw failure
    source.destroy() // the bytes after the end marker, unread
    try {
      await rename(tmp, destDir)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOTEMPTY' || code === 'EEXIST') throw new Error(`cannot unpack toolchain: ${destDir} already exists`)
      throw err
    }
    return { entries, fileBytes }
  } catch (err) {
    source.destroy()
    gunzip.destroy()
    await rm(tmp, { recursive: true, force: true })
    throw err
  } finally {
    clearTimeout(deadline)
  }
}

/**
 * Write one entry's data through fh, pausing the entry (and so the parser) per chunk.
 * Settles early when the unpack fails elsewhere: the parser is then no longer fed and
 * the entry would never end.
 */
function copyEntry(entry: ReadEntry, fh: FileHandle, failed: Promise<never>): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let n = 0
    let broken = false
    // Writes are chained so they land in order even if a chunk arrives before the last
    // write finished ('end' may also come then); pausing only provides backpressure.
    let pending: Promise<void> = Promise.resolve()
    const onData = (chunk: Buffer) => {
      entry.pause()
      pending = pending.then(async () => {
        if (broken) return
        await writeAll(fh, chunk)
        n += chunk.length
        entry.resume()
      }).catch((err: unknown) => { broken = true; entry.resume(); reject(err) })
    }
    entry.on('end', () => { void pending.then(() => { if (!broken) resolve(n) }) })
    entry.on('error', reject)
    failed.catch((err: unknown) => { broken = true; reject(err) })
    entry.on('data', onData) // attaching a data listener starts the flow
  })
}

async function writeAll(fh: FileHandle, buf: Buffer): Promise<void> {
  let off = 0
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, null)
    if (bytesWritten <= 0) throw new Error('write made no progress')
    off += bytesWritten
  }
}
