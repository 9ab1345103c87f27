// Toolchains this peer holds: for each, the archive as received (so it can pass it on to
// other peers) and the unpacked root that jobs mount read-only as /.
//
//   <dir>/<hash>/toolchain.tar.gz
//   <dir>/<hash>/root/
//   <dir>/<hash>/meta.json        sizes; its mtime is the LRU clock across restarts
//   <dir>/.tmp-*  <dir>/.trash-*  adds in progress, evictions in progress
//
// A toolchain appears by renaming a complete temp dir to <hash>, so a crash leaves only
// temp dirs, which open() deletes: one daemon owns the directory.
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { copyFile, mkdir, readFile, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { formatSize } from '../config.js'
import type { Logger } from '../log.js'
import { ToolchainArchiveError, unpackToolchain, DEFAULT_MAX_BYTES } from './unpack.js'

export interface ToolchainCacheOptions {
  dir: string
  /** archives plus unpacked files, in bytes */
  maxBytes: number
  log: Logger
}

const HASH_RE = /^[0-9a-f]{64}$/
const ARCHIVE = 'toolchain.tar.gz'
const ROOT = 'root'
const META = 'meta.json'

interface Held {
  archiveBytes: number
  unpackedBytes: number
  lastUsed: number
}

interface MetaFile { hash: string; archiveBytes: number; unpackedBytes: number; entries: number }

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException | null
  return e?.code ?? String(e?.message ?? err).split('\n')[0]
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 })) h.update(chunk as Buffer)
  return h.digest('hex')
}

export class ToolchainCache {
  readonly dir: string
  readonly maxBytes: number
  private readonly log: Logger
  private readonly held = new Map<string, Held>()
  private readonly inUse = new Map<string, number>()
  private readonly adding = new Map<string, Promise<string>>()
  /** directory removals in flight, so a re-add of the same hash waits for them */
  private readonly removing = new Map<string, Promise<void>>()
  private opening: Promise<void> | null = null
  private totalBytes = 0

  constructor(opts: ToolchainCacheOptions) {
    if (!Number.isFinite(opts.maxBytes) || opts.maxBytes < 0) throw new Error(`toolchain cache size must be a number of bytes, got ${opts.maxBytes}`)
    this.dir = opts.dir
    this.maxBytes = Math.floor(opts.maxBytes)
    this.log = opts.log
  }

  /** Create the directory, pick up toolchains held before a restart, delete leftovers. */
  open(): Promise<void> {
    if (!this.opening) {
      this.opening = this.doOpen().catch((err: unknown) => {
        this.opening = null
        throw err
      })
    }
    return this.opening
  }

  private async doOpen(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 })
    const names = await readdir(this.dir)
    for (const name of names) {
      const p = join(this.dir, name)
      if (name.startsWith('.tmp-') || name.startsWith('.trash-')) {
        await rm(p, { recursive: true, force: true })
        continue
      }
      if (!HASH_RE.test(name)) continue
      const found = await this.readHeld(name)
      if (found) {
        this.setHeld(name, found)
      } else {
        this.log.warn(`toolchain ${name}: incomplete on disk, removed`)
        await rm(p, { recursive: true, force: true })
      }
    }
    this.log.debug(`toolchains ${this.dir}: ${this.held.size} held, ${formatSize(this.totalBytes)} of ${formatSize(this.maxBytes)}`)
    this.evict()
  }

  private async readHeld(hash: string): Promise<Held | null> {
    const base = join(this.dir, hash)
    try {
      const metaPath = join(base, META)
      const meta = JSON.parse(await readFile(metaPath, 'utf8')) as MetaFile
      const [archive, root, metaSt] = await Promise.all([stat(join(base, ARCHIVE)), stat(join(base, ROOT)), stat(metaPath)])
      if (meta.hash !== hash || archive.size !== meta.archiveBytes || !root.isDirectory() || typeof meta.unpackedBytes !== 'number') return null
      return { archiveBytes: archive.size, unpackedBytes: meta.unpackedBytes, lastUsed: metaSt.mtimeMs }
    } catch {
      return null
    }
  }

  has(hash: string): boolean {
    return this.held.has(hash)
  }

  /** Unpacked root of a held toolchain (mount it read-only as /). */
  rootOf(hash: string): string {
    if (!this.held.has(hash)) throw new Error(`toolchain ${hash} is not held`)
    return join(this.dir, hash, ROOT)
  }

  /** The archive as received, to serve to other peers; null when not held. */
  archivePath(hash: string): string | null {
    return this.held.has(hash) ? join(this.dir, hash, ARCHIVE) : null
  }

  /** Hashes held, for advertising. */
  list(): string[] {
    return [...this.held.keys()].sort()
  }

  stats(): { toolchains: number; bytes: number; maxBytes: number; inUse: number } {
    return { toolchains: this.held.size, bytes: this.totalBytes, maxBytes: this.maxBytes, inUse: this.inUse.size }
  }

  /** Mark as recently used (in memory now, on disk through meta.json's mtime). */
  touch(hash: string): void {
    const h = this.held.get(hash)
    if (!h) return
    const now = Date.now()
    h.lastUsed = now
    const t = new Date(now)
    utimes(join(this.dir, hash, META), t, t).catch((err: unknown) => this.log.debug(`toolchain touch ${hash}: ${errText(err)}`))
  }

  /** Keep a toolchain from eviction while a job runs in it; call the result when done. */
  acquire(hash: string): () => void {
    if (!this.held.has(hash)) throw new Error(`toolchain ${hash} is not held`)
    this.inUse.set(hash, (this.inUse.get(hash) ?? 0) + 1)
    this.touch(hash)
    let released = false
    return () => {
      if (released) return
      released = true
      const n = (this.inUse.get(hash) ?? 1) - 1
      if (n > 0) this.inUse.set(hash, n)
      else this.inUse.delete(hash)
      this.evict() // it may have been the only thing keeping the cache over its limit
    }
  }

  /**
   * A new path in the cache's directory to receive an archive into (a fetch from a peer): on the
   * same filesystem, so add(hash, path, { move: true }) takes it without a copy. The caller
   * removes it if it is still there afterwards; open() removes any a crash left.
   */
  receivePath(): string {
    return join(this.dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}.tar.gz`)
  }

  /**
   * Verify (sha256 of the archive bytes must equal hash), unpack and keep a toolchain;
   * resolves to its root. Adding a held hash just touches it; concurrent adds share one run.
   * With `move`, an archive given by path is renamed into the cache rather than copied.
   */
  async add(hash: string, archive: Buffer | string, opts: { move?: boolean } = {}): Promise<string> {
    if (!HASH_RE.test(hash)) throw new Error(`invalid toolchain hash ${JSON.stringify(String(hash).slice(0, 80))}: expected 64 lowercase hex digits`)
    await this.open()
    if (this.held.has(hash)) {
      this.touch(hash)
      return this.rootOf(hash)
    }
    let p = this.adding.get(hash)
    if (!p) {
      p = this.doAdd(hash, archive, opts.move === true)
      this.adding.set(hash, p)
      p.finally(() => this.adding.delete(hash)).catch(() => {})
    }
    return p
  }

  private async doAdd(hash: string, archive: Buffer | string, move: boolean): Promise<string> {
    const started = Date.now()
    const tmp = join(this.dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`)
    await mkdir(tmp, { mode: 0o700 })
    try {
      // Hash our own copy, not the source: what we verify is exactly what we unpack and serve.
      const archiveFile = join(tmp, ARCHIVE)
      if (typeof archive === 'string') await (move ? rename(archive, archiveFile) : copyFile(archive, archiveFile))
      else await writeFile(archiveFile, archive)
      const actual = await sha256File(archiveFile)
      if (actual !== hash) throw new ToolchainArchiveError(`toolchain archive hash mismatch: expected ${hash}, got ${actual}`)
      const archiveBytes = (await stat(archiveFile)).size
      if (archiveBytes > this.maxBytes) throw new Error(`toolchain ${hash} (${formatSize(archiveBytes)}) does not fit a ${formatSize(this.maxBytes)} toolchain cache`)
      const { entries, fileBytes } = await unpackToolchain(archiveFile, join(tmp, ROOT), { maxBytes: Math.min(DEFAULT_MAX_BYTES, this.maxBytes) })
      if (archiveBytes + fileBytes > this.maxBytes) throw new Error(`toolchain ${hash} (${formatSize(archiveBytes + fileBytes)} with its files) does not fit a ${formatSize(this.maxBytes)} toolchain cache`)
      const meta: MetaFile = { hash, archiveBytes, unpackedBytes: fileBytes, entries }
      await writeFile(join(tmp, META), JSON.stringify(meta) + '\n')
      await this.removing.get(hash)
      const final = join(this.dir, hash)
      try {
        await rename(tmp, final)
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err
        // Already there (left by an earlier add we did not index?): keep the one on disk if sound.
        const existing = await this.readHeld(hash)
        if (!existing) throw err
        await rm(tmp, { recursive: true, force: true })
      }
      this.setHeld(hash, { archiveBytes, unpackedBytes: fileBytes, lastUsed: Date.now() })
      this.log.info(`toolchain ${hash.slice(0, 12)} added: ${formatSize(archiveBytes)} archive, ${formatSize(fileBytes)} in ${entries} entries, ${Date.now() - started} ms`)
      this.evict(hash)
      return join(final, ROOT)
    } catch (err) {
      await rm(tmp, { recursive: true, force: true })
      throw err
    }
  }

  /** Wait for adds and removals in flight. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.adding.values(), ...this.removing.values()])
  }

  // --- internals ---

  private setHeld(hash: string, h: Held): void {
    const old = this.held.get(hash)
    if (old) this.totalBytes -= old.archiveBytes + old.unpackedBytes
    this.held.set(hash, h)
    this.totalBytes += h.archiveBytes + h.unpackedBytes
  }

  /**
   * Drop least recently used toolchains until the total fits, never one in use (or `keep`,
   * the one just added). Choice and index update are synchronous, so an acquire() cannot
   * slip in between; the directories are removed afterwards.
   */
  private evict(keep?: string): void {
    if (this.totalBytes <= this.maxBytes) return
    const candidates = [...this.held]
      .filter(([hash]) => hash !== keep && !this.inUse.has(hash))
      .sort((a, b) => a[1].lastUsed - b[1].lastUsed || (a[0] < b[0] ? -1 : 1))
    for (const [hash, h] of candidates) {
      if (this.totalBytes <= this.maxBytes) break
      this.held.delete(hash)
      this.totalBytes -= h.archiveBytes + h.unpackedBytes
      this.log.info(`toolchain ${hash.slice(0, 12)} evicted (${formatSize(h.archiveBytes + h.unpackedBytes)}; cache ${formatSize(this.totalBytes)} of ${formatSize(this.maxBytes)})`)
      this.removeDir(hash)
    }
    if (this.totalBytes > this.maxBytes) {
      this.log.warn(`toolchain cache over its limit (${formatSize(this.totalBytes)} of ${formatSize(this.maxBytes)}): the rest is in use`)
    }
  }

  private removeDir(hash: string): void {
    const prev = this.removing.get(hash) ?? Promise.resolve()
    const p = prev.then(async () => {
      // Rename first so the hash disappears at once, then delete at leisure.
      const trash = join(this.dir, `.trash-${process.pid}-${randomBytes(6).toString('hex')}`)
      try {
        await rename(join(this.dir, hash), trash)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
        throw err
      }
      await rm(trash, { recursive: true, force: true })
    }).catch((err: unknown) => this.log.warn(`toolchain remove ${hash}: ${errText(err)}`))
    this.removing.set(hash, p)
    void p.finally(() => { if (this.removing.get(hash) === p) this.removing.delete(hash) })
  }
}
