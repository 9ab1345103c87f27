// The local content-addressed cache: <dir>/<first 2 hex of key>/<key>, one compressed,
// checksummed file per compile result (see entry-format.ts). Several daemons may share
// the directory, so the filesystem is the only truth: writes are temp file + rename,
// reads verify everything, LRU is the file mtime (refreshed on every hit), and eviction
// re-scans the directory and tolerates files vanishing under it.
import { randomBytes } from 'node:crypto'
import type { Dirent, Stats } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { lstat, mkdir, open as openFile, readdir, rename, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { formatSize } from '../config.js'
import type { Logger } from '../log.js'
import { StaleEntryError, decodeEntry, encodeEntryPieces, isValidKey, type CacheEntry } from './entry-format.js'

export type { CacheEntry } from './entry-format.js'
export { isValidKey } from './entry-format.js'

export type GetResult<T = CacheEntry> =
  | { status: 'hit'; entry: T }
  | { status: 'miss' }
  /** the entry was unreadable and has been removed */
  | { status: 'corrupt'; reason: string }

export interface StoreStats { entries: number; bytes: number; maxBytes: number }

/**
 * How values become files and back. decode throws on anything unusable (StaleEntryError for an
 * older format: removed quietly; any other error: removed as corrupt, with its message).
 */
export interface StoreCodec<T> {
  /** the file's bytes, whole or as pieces written one after the other */
  encode(value: T, key: string): Promise<Buffer | readonly Buffer[]>
  decode(buf: Buffer, key: string): Promise<T>
}

/** The cache's own codec: entry-format.ts, and never a failed compile, whoever wrote the file. */
export const entryCodec: StoreCodec<CacheEntry> = {
  encode: (entry, key) => {
    if (!entry || entry.exitCode !== 0) return Promise.reject(new Error(`refusing to cache a failed compile (exit code ${String(entry?.exitCode)})`))
    return encodeEntryPieces(entry, key)
  },
  decode: async (buf, key) => {
    const entry = await decodeEntry(buf, key)
    if (entry.exitCode !== 0) throw new Error(`stored entry has exit code ${entry.exitCode}`)
    return entry
  }
}

export interface LocalStoreOptions<T = CacheEntry> {
  dir: string
  /** size limit in bytes for all entries together */
  maxBytes: number
  log: Logger
  /** what the files hold (default: cache entries, entryCodec) */
  codec?: StoreCodec<T>
}

const SUBDIR_RE = /^[0-9a-f]{2}$/
const TEMP_PREFIX = '.tmp-'
/** temp files older than this belong to a crashed writer */
const STALE_TEMP_MS = 60 * 60 * 1000
/** eviction frees space down to this fraction of the limit, so it does not run on every put */
const EVICT_TARGET = 0.9
/** files larger than this in the store are garbage, not entries (the format caps payloads at 1 GiB) */
const MAX_FILE_BYTES = 2 * 1024 ** 3
/** buffers per writev call (Linux's IOV_MAX is 1024) */
const WRITEV_MAX = 512

interface IndexEntry { size: number; mtimeMs: number }

function errCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code
}

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException | null
  return e?.code ?? String(e?.message ?? err).split('\n')[0]
}

/** A new file (never an existing one) holding `pieces` one after the other, without joining them first. */
async function writePieces(path: string, pieces: readonly Buffer[]): Promise<void> {
  const fh = await openFile(path, 'wx')
  try {
    // writev takes at most IOV_MAX buffers per call, and any write may write fewer bytes than asked
    let i = 0
    let done = 0 // bytes of pieces[i] already written
    while (i < pieces.length) {
      const { bytesWritten } = done > 0 ? await fh.write(pieces[i], done) : await fh.writev(pieces.slice(i, i + WRITEV_MAX))
      if (bytesWritten === 0) throw new Error(`writing ${path} made no progress`)
      let left = done + bytesWritten
      done = 0
      while (i < pieces.length && left >= pieces[i].length) left -= pieces[i++].length
      done = left
    }
  } finally {
    await fh.close()
  }
}

/** Run fn over items with at most `limit` calls in flight. */
async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++])
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}

const TEST_PUT_DELAY_MS = Number(process.env.MESHCC_TEST_STORE_DELAY_MS) > 0 ? Number(process.env.MESHCC_TEST_STORE_DELAY_MS) : 0

export class LocalStore<T = CacheEntry> {
  readonly dir: string
  private readonly codec: StoreCodec<T>
  private max: number
  private readonly log: Logger
  private readonly index = new Map<string, IndexEntry>()
  private totalBytes = 0
  private opening: Promise<void> | null = null
  private closed = false
  private readonly inflight = new Set<Promise<unknown>>()
  /** evictions run one at a time */
  private evictChain: Promise<unknown> = Promise.resolve()
  /** the eviction started by put(), so a burst of puts queues at most one */
  private autoEvict: Promise<unknown> | null = null

  constructor(opts: LocalStoreOptions<T>) {
    if (!Number.isFinite(opts.maxBytes) || opts.maxBytes < 0) throw new Error(`cache size must be a number of bytes, got ${opts.maxBytes}`)
    this.dir = opts.dir
    this.max = Math.floor(opts.maxBytes)
    this.log = opts.log
    this.codec = opts.codec ?? (entryCodec as unknown as StoreCodec<T>)
  }

  /** Create the directory, index what is there, remove stale temp files. Safe to call twice. */
  open(): Promise<void> {
    // Already open: work still draining during close() (an eviction after a put) may proceed.
    if (this.opening) return this.opening
    if (this.closed) return Promise.reject(new Error('cache store is closed'))
    this.opening = this.doOpen().catch((err: unknown) => {
      this.opening = null // let a later call retry
      throw err
    })
    return this.opening
  }

  private async doOpen(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 })
    const started = Date.now()
    const found = await this.scan()
    this.replaceIndex(found, started)
    this.log.debug(`cache ${this.dir}: ${this.index.size} entries, ${formatSize(this.totalBytes)} of ${formatSize(this.maxBytes)} (scanned in ${Date.now() - started} ms)`)
    // The limit may have been lowered since the last run.
    this.maybeEvict()
  }

  async get(key: string): Promise<GetResult<T>> {
    const file = this.pathFor(key)
    this.assertOpen()
    await this.open()
    let fh: FileHandle
    try {
      fh = await openFile(file, 'r')
    } catch (err) {
      // ENOENT is the normal miss, and also a get racing with eviction.
      const code = errCode(err)
      if (code !== 'ENOENT' && code !== 'ENOTDIR') this.log.warn(`cache read ${key}: ${errText(err)}`)
      this.forget(key)
      return { status: 'miss' }
    }
    try {
      const st = await fh.stat()
      if (!st.isFile()) {
        this.log.warn(`cache read ${key}: not a regular file, ignored`)
        return { status: 'miss' }
      }
      const read = await this.readEntry(key, fh, st)
      if ('stale' in read) {
        await this.removeCorrupt(key, file, st)
        this.log.debug(`cache entry ${key}: ${read.stale}; removed`)
        return { status: 'miss' }
      }
      if ('reason' in read) {
        await this.removeCorrupt(key, file, st)
        this.log.warn(`cache entry ${key} is corrupt (${read.reason}); removed`)
        return { status: 'corrupt', reason: read.reason }
      }
      // Refresh the LRU clock through the descriptor: touches exactly the file that was read.
      const now = new Date()
      try {
        await fh.utimes(now, now)
      } catch (err) {
        this.log.debug(`cache touch ${key}: ${errText(err)}`)
      }
      // Eviction may have unlinked this file (or a put replaced it) while it was being read:
      // counting it again would count bytes no longer on disk. An indexed entry gets only its
      // LRU time (its size is what put or the scan saw for the current file); one this process
      // did not know (another daemon wrote it) is added while the file is still linked.
      const cur = this.index.get(key)
      if (cur) this.setIndex(key, { size: cur.size, mtimeMs: now.getTime() })
      else if ((await fh.stat()).nlink > 0 && !this.index.has(key)) this.setIndex(key, { size: st.size, mtimeMs: now.getTime() })
      return { status: 'hit', entry: read.entry }
    } catch (err) {
      // An I/O error is not evidence of a bad entry: report a miss and keep the file.
      this.log.warn(`cache read ${key}: ${errText(err)}`)
      return { status: 'miss' }
    } finally {
      await fh.close().catch(() => {})
    }
  }

  /** Decode an open entry file; I/O errors throw, bad content gives a reason, an older format says so. */
  private async readEntry(key: string, fh: FileHandle, st: Stats): Promise<{ entry: T } | { reason: string } | { stale: string }> {
    if (st.size > MAX_FILE_BYTES) return { reason: `file of ${st.size} bytes is too large` }
    const buf = await fh.readFile()
    try {
      return { entry: await this.codec.decode(buf, key) }
    } catch (err) {
      if (err instanceof StaleEntryError) return { stale: err.message }
      return { reason: String((err as Error).message ?? err) }
    }
  }

  async put(key: string, entry: T): Promise<void> {
    const file = this.pathFor(key)
    this.assertOpen()
    // Tracked from the first synchronous step so close() always sees it.
    return this.track(this.doPut(key, file, () => this.codec.encode(entry, key)))
  }

  /**
   * Keep bytes already in this store's format, checked by the caller (a verified entry fetched
   * from the mesh: its encoding, checksum and key were checked as it was opened), as they are:
   * no second compression of what arrived compressed. Also a result encoded once for this store
   * and the mesh (its pieces, possibly still being encoded).
   */
  async putEncoded(key: string, buf: Buffer | readonly Buffer[] | Promise<readonly Buffer[]>): Promise<void> {
    const file = this.pathFor(key)
    this.assertOpen()
    return this.track(this.doPut(key, file, async () => await buf))
  }

  private async doPut(key: string, file: string, encode: () => Promise<Buffer | readonly Buffer[]>): Promise<void> {
    await this.open()
    const encoded = await encode()
    // tests only: a slow disk, so that what happens while an entry is being stored can be seen
    if (TEST_PUT_DELAY_MS > 0) await new Promise((res) => setTimeout(res, TEST_PUT_DELAY_MS))
    const pieces = Buffer.isBuffer(encoded) ? [encoded] : encoded
    const size = pieces.reduce((n, p) => n + p.length, 0)
    if (size > this.targetBytes()) {
      // It would push out everything else, itself included.
      this.log.info(`not caching ${key}: ${formatSize(size)} does not fit a ${formatSize(this.maxBytes)} cache`)
      return
    }
    const sub = join(this.dir, key.slice(0, 2))
    const tmp = join(sub, `${TEMP_PREFIX}${process.pid}-${randomBytes(8).toString('hex')}`)
    try {
      try {
        await writePieces(tmp, pieces)
      } catch (err) {
        if (errCode(err) !== 'ENOENT') throw err
        await mkdir(sub, { recursive: true, mode: 0o700 })
        await writePieces(tmp, pieces)
      }
      // No fsync: after a power loss a damaged entry fails its checksum and is removed on read.
      await rename(tmp, file)
    } catch (err) {
      await unlink(tmp).catch(() => {})
      throw err
    }
    this.setIndex(key, { size, mtimeMs: Date.now() })
    this.maybeEvict()
  }

  stats(): StoreStats {
    return { entries: this.index.size, bytes: this.totalBytes, maxBytes: this.maxBytes }
  }

  get maxBytes(): number {
    return this.max
  }

  /** A new size limit (`meshcc -M`, a reloaded config): a smaller one evicts now. */
  setMaxBytes(bytes: number): void {
    this.max = Math.floor(bytes)
    this.maybeEvict()
  }

  /** Evict now (after any eviction already running); resolves to the number of entries this call removed. */
  evict(): Promise<number> {
    return this.queueEviction(() => this.runEviction())
  }

  /** Remove every entry (`meshcc -C`); resolves to the number removed. */
  clear(): Promise<number> {
    return this.queueEviction(() => this.runEviction(0))
  }

  private queueEviction(fn: () => Promise<number>): Promise<number> {
    const run = this.evictChain.then(async () => {
      await this.open()
      return fn()
    })
    this.evictChain = run.catch(() => {})
    return this.track(run)
  }

  /** Stop accepting work and wait for writes and evictions in flight. */
  async close(): Promise<void> {
    this.closed = true
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight])
  }

  // --- internals ---

  /** Validated path of an entry; a key is exactly 64 lowercase hex digits, so it cannot leave the store. */
  private pathFor(key: string): string {
    if (!isValidKey(key)) throw new Error(`invalid cache key ${JSON.stringify(String(key).slice(0, 80))}: expected 64 lowercase hex digits`)
    return join(this.dir, key.slice(0, 2), key)
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('cache store is closed')
  }

  private targetBytes(): number {
    return Math.floor(this.maxBytes * EVICT_TARGET)
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p)
    const done = () => { this.inflight.delete(p) }
    p.then(done, done)
    return p
  }

  private setIndex(key: string, e: IndexEntry): void {
    const old = this.index.get(key)
    if (old) this.totalBytes -= old.size
    this.index.set(key, e)
    this.totalBytes += e.size
  }

  private forget(key: string): void {
    const old = this.index.get(key)
    if (!old) return
    this.totalBytes -= old.size
    this.index.delete(key)
  }

  /**
   * Take a fresh scan as the index. Entries this process wrote or hit after the scan
   * started may be missing from it or stale in it, so those keep their in-memory values.
   */
  private replaceIndex(found: Map<string, IndexEntry>, scanStarted: number): void {
    for (const [key, e] of this.index) {
      if (e.mtimeMs >= scanStarted) found.set(key, e)
    }
    this.index.clear()
    this.totalBytes = 0
    for (const [key, e] of found) this.setIndex(key, e)
  }

  /** Unlink a corrupt entry, unless a writer has already replaced it with a new file. */
  private async removeCorrupt(key: string, file: string, seen: Stats): Promise<void> {
    try {
      const now = await lstat(file)
      if (now.ino === seen.ino && now.dev === seen.dev) await unlink(file)
    } catch (err) {
      if (errCode(err) !== 'ENOENT') this.log.warn(`cache remove ${key}: ${errText(err)}`)
    }
    this.forget(key)
  }

  /** Entries actually on disk (only <dir>/<2 hex>/<key>); stale temp files are removed on the way. */
  private async scan(): Promise<Map<string, IndexEntry>> {
    const found = new Map<string, IndexEntry>()
    let top: Dirent[]
    try {
      top = await readdir(this.dir, { withFileTypes: true })
    } catch (err) {
      if (errCode(err) === 'ENOENT') return found
      throw err
    }
    const subdirs = top.filter((d) => d.isDirectory() && SUBDIR_RE.test(d.name)).map((d) => d.name)
    const now = Date.now()
    let staleTemps = 0
    await forEachLimit(subdirs, 8, async (sub) => {
      const subPath = join(this.dir, sub)
      let names: string[]
      try {
        names = await readdir(subPath)
      } catch (err) {
        if (errCode(err) !== 'ENOENT') this.log.warn(`cache scan ${subPath}: ${errText(err)}`)
        return
      }
      await forEachLimit(names, 32, async (name) => {
        const isTemp = name.startsWith(TEMP_PREFIX)
        if (!isTemp && !(isValidKey(name) && name.startsWith(sub))) return
        const p = join(subPath, name)
        try {
          const st = await lstat(p)
          if (!st.isFile()) return
          if (!isTemp) {
            found.set(name, { size: st.size, mtimeMs: st.mtimeMs })
          } else if (now - st.mtimeMs > STALE_TEMP_MS) {
            await unlink(p)
            staleTemps++
          }
        } catch (err) {
          if (errCode(err) !== 'ENOENT') this.log.debug(`cache scan ${p}: ${errText(err)}`)
        }
      })
    })
    if (staleTemps > 0) this.log.info(`cache: removed ${staleTemps} temp file(s) left by an interrupted write`)
    return found
  }

  private maybeEvict(): void {
    if (this.autoEvict || this.totalBytes <= this.maxBytes) return
    this.autoEvict = this.evict()
      .catch((err: unknown) => { this.log.warn(`cache eviction failed: ${errText(err)}`) })
      .finally(() => { this.autoEvict = null })
  }

  /** Evict least recently used entries down to `target` bytes (default: a little under the limit, when over it). */
  private async runEviction(target?: number): Promise<number> {
    // Re-scan: another daemon sharing the directory may have written or evicted entries.
    const started = Date.now()
    const found = await this.scan()
    this.replaceIndex(new Map(found), started)
    if (target === undefined) {
      if (this.totalBytes <= this.maxBytes) return 0
      target = this.targetBytes()
    }
    const before = this.totalBytes
    const candidates = [...found].sort((a, b) => a[1].mtimeMs - b[1].mtimeMs || (a[0] < b[0] ? -1 : 1))
    let removed = 0
    let i = 0
    while (this.totalBytes > target && i < candidates.length) {
      // Plan a batch that would reach the target, delete it, then re-check: some may be kept.
      const batch: Array<[string, IndexEntry]> = []
      for (let planned = this.totalBytes; planned > target && i < candidates.length; i++) {
        batch.push(candidates[i])
        planned -= candidates[i][1].size
      }
      await forEachLimit(batch, 16, async ([key, seen]) => {
        if (await this.evictOne(key, seen)) removed++
      })
    }
    this.log.info(`cache eviction: removed ${removed} entries, ${formatSize(before)} -> ${formatSize(this.totalBytes)} (limit ${formatSize(this.maxBytes)})`)
    return removed
  }

  /** Remove one entry unless it was used or rewritten since the scan; true when this call removed it. */
  private async evictOne(key: string, seen: IndexEntry): Promise<boolean> {
    const file = join(this.dir, key.slice(0, 2), key)
    try {
      const st = await lstat(file)
      if (st.mtimeMs !== seen.mtimeMs) {
        this.setIndex(key, { size: st.size, mtimeMs: st.mtimeMs })
        return false
      }
      await unlink(file)
      this.forget(key)
      return true
    } catch (err) {
      // ENOENT: the other daemon got there first.
      if (errCode(err) === 'ENOENT') this.forget(key)
      else this.log.warn(`cache evict ${key}: ${errText(err)}`)
      return false
    }
  }
}
