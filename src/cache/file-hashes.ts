// Content hashes of source and header files, memoised by what stat says about them.
//
// Direct mode checks every header a translation unit included (hundreds for a kernel file)
// on each lookup. The daemon lives across compiles, so after the first read a header costs
// one stat: its hash is reused while device, inode, size, mtime and ctime (nanoseconds) are
// unchanged. A file changed within the last seconds is hashed but not memoised: two writes
// inside one timestamp tick with the same size would look unchanged.
import { createHash } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { hashFileContent } from '../util/hash-file.js'

export interface FileHash {
  hash: string
  size: number
  /** permission bits */
  mode: number
  /** the file names __DATE__, __TIME__ or __TIMESTAMP__, or reads a file no depfile or line marker lists (#embed, .incbin): its output is not a function of the inputs we see */
  volatile: boolean
  /** the file declares itself a system header: -MMD leaves out what it includes */
  systemHeader: boolean
  /** modified at or after `since`: the content may still be changing */
  newerThan(since: number): boolean
}

interface Memo { dev: bigint; ino: bigint; size: bigint; mode: number; mtimeNs: bigint; ctimeNs: bigint; hash: string; volatile: boolean; systemHeader: boolean }

/** How recently a file may have changed and still have its hash memoised. */
const SETTLE_MS = 2000
const MAX_MEMO = 200_000

/**
 * Files up to this size are read on the main thread (readSmallFile): an fs.promises readFile is
 * four trips through the libuv pool (open, fstat, read, close), 124 to 139 us of CPU per kernel
 * header against 6 to 10 us for readFileSync, which holds the event loop for microseconds.
 */
export const SYNC_READ_MAX_BYTES = 256 * 1024

/** The bytes of a file `size` bytes long as stat said, read on this thread when it is small. */
export async function readSmallFile(path: string, size: number | bigint): Promise<Buffer> {
  return size <= SYNC_READ_MAX_BYTES ? readFileSync(path) : readFile(path)
}

const VOLATILE = /__(?:DATE|TIME|TIMESTAMP)__|#\s*embed\b|__has_embed|\.incbin\b/
/**
 * Any mention of system_header at all: besides "#pragma GCC system_header" the compilers take a
 * comment inside the directive, a "%:" digraph, a line splice and (clang) _Pragma("GCC
 * system_header"). A GNU line marker in the source ("# 1 \"x.h\" 3") can do the same. A false
 * alarm only keeps a -MMD result out of a manifest.
 */
const SYSTEM_HEADER = /system_header|^[ \t]*(?:#|%:)[ \t]*\d/m

export class FileHasher {
  private readonly memo = new Map<string, Memo>()
  /** binary inputs (rustc's --extern crates, static libraries): content only, never scanned as text */
  private readonly binaryMemo = new Map<string, Memo>()

  /** The file's hash, or null when it cannot be read (gone, a directory, no permission). */
  hash(path: string): Promise<FileHash | null> {
    return this.hashWith(path, this.memo, true)
  }

  /**
   * The same for a file that is no source text (an rlib, an archive): megabytes that the
   * source checks (__DATE__, system_header) would scan for nothing; volatile and systemHeader
   * are false.
   */
  hashBinary(path: string): Promise<FileHash | null> {
    return this.hashWith(path, this.binaryMemo, false)
  }

  private async hashWith(path: string, memo: Map<string, Memo>, scan: boolean): Promise<FileHash | null> {
    // stat on this thread: an fs.promises round trip through the thread pool costs about ten
    // times the CPU of the syscall itself, and a kernel unit asks for hundreds of headers
    let st
    try {
      st = statSync(path, { bigint: true, throwIfNoEntry: false })
    } catch {
      return null
    }
    if (!st?.isFile()) return null
    const changedMs = Number((st.mtimeNs > st.ctimeNs ? st.mtimeNs : st.ctimeNs) / 1_000_000n)
    const newerThan = (since: number) => changedMs >= since
    const m = memo.get(path)
    const mode = Number(st.mode & 0o7777n)
    if (m && m.dev === st.dev && m.ino === st.ino && m.size === st.size && m.mode === mode && m.mtimeNs === st.mtimeNs && m.ctimeNs === st.ctimeNs) {
      return { hash: m.hash, size: Number(m.size), mode, volatile: m.volatile, systemHeader: m.systemHeader, newerThan }
    }
    let hash: string
    let size: number
    let volatile = false
    let systemHeader = false
    try {
      if (scan) {
        const data = await readSmallFile(path, st.size)
        hash = createHash('sha256').update(data).digest('hex')
        size = data.length
        const text = data.toString('latin1')
        volatile = VOLATILE.test(text)
        systemHeader = SYSTEM_HEADER.test(text)
      } else {
        // megabytes that are hashed only: through a kept buffer, not a fresh one per file
        ;({ hash, size } = await hashFileContent(path))
      }
    } catch {
      return null
    }
    if (Date.now() - changedMs > SETTLE_MS) {
      if (memo.size >= MAX_MEMO) memo.clear() // a crude bound; refilling costs one read per file
      memo.set(path, { dev: st.dev, ino: st.ino, size: st.size, mode, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, hash, volatile, systemHeader })
    } else {
      memo.delete(path)
    }
    return { hash, size, mode, volatile, systemHeader, newerThan }
  }
}
