// Content hash of a compiler binary, memoised by the file's identity (device, inode, size,
// mtime and ctime in nanoseconds): hashing clang's 100 MB binary on every compile would cost
// more than the compile.
//
// With a memo file, the hashes also outlive the daemon: a Rust toolchain is 510 MB of
// librustc_driver, LLVM and std rlibs, and hashing it took 0.5 s of a fresh daemon's CPU on
// every cold build. A file rewritten in place gets a new ctime (no program can set it back),
// so its identity no longer matches; a hash is written down only when the file's ctime is
// older than the hash by CTIME_MARGIN_MS (a write in the same timestamp tick as the hash would
// leave the identity as it was) and the file looked the same before and after the hash.
import { readFile, realpath, stat } from 'node:fs/promises'
import { writeFileAtomic } from '../util/atomic-write.js'
import { hashFileContent } from '../util/hash-file.js'

interface Memo { identity: string; hash: string; real: string }

/** how much older than the hash a file's ctime must be for the hash to be written down */
const CTIME_MARGIN_MS = 2000n
/** entries a memo file keeps (a toolchain has a few dozen files): the newest ones win */
const MAX_SAVED = 4096
const MEMO_VERSION = 1

export class CompilerIdentity {
  private readonly memo = new Map<string, Memo>()
  private readonly inflight = new Map<string, Promise<Memo>>()
  /** what the memo file holds, by real path: loaded once */
  private saved: Promise<Map<string, { identity: string; hash: string }>> | null = null
  /** entries hashed here that the file lacks */
  private unsaved = 0
  private saving: Promise<void> = Promise.resolve()

  /** `memoFile`: where hashes are kept across daemons (null: in memory only). */
  constructor(private readonly memoFile: string | null = null) {}

  /** Returns the content hash and the resolved real path of the compiler. */
  async of(path: string): Promise<{ hash: string; real: string }> {
    const real = await realpath(path)
    const st = await stat(real, { bigint: true })
    const identity = identityOf(st)
    const m = this.memo.get(path)
    if (m && m.identity === identity && m.real === real) return m
    const key = `${real}:${identity}`
    let p = this.inflight.get(key)
    if (!p) {
      p = this.hash(real, identity, st.ctimeNs)
      this.inflight.set(key, p)
      p.finally(() => this.inflight.delete(key)).catch(() => {})
    }
    const fresh = await p
    this.memo.set(path, fresh)
    return fresh
  }

  /** Written down when enough has been hashed since the last save (after a toolchain's files, say). */
  async save(): Promise<void> {
    if (this.memoFile === null || this.unsaved === 0) return
    this.unsaved = 0
    const file = this.memoFile
    const saved = await this.loadSaved()
    this.saving = this.saving.then(async () => {
      const entries = [...saved].slice(-MAX_SAVED).map(([real, e]) => [real, e.identity, e.hash])
      await writeFileAtomic(file, Buffer.from(JSON.stringify({ version: MEMO_VERSION, entries })), 0o600)
    }).catch(() => { /* a memo not written is hashed again next time */ })
    return this.saving
  }

  private async hash(real: string, identity: string, ctimeNs: bigint): Promise<Memo> {
    const saved = await this.loadSaved()
    const known = saved.get(real)
    if (known && known.identity === identity) return { identity, hash: known.hash, real }
    const started = BigInt(Date.now()) * 1_000_000n
    const { hash } = await hashFileContent(real)
    if (this.memoFile !== null && ctimeNs + CTIME_MARGIN_MS * 1_000_000n < started) {
      const after = await stat(real, { bigint: true }).catch(() => null)
      if (after && identityOf(after) === identity) {
        saved.delete(real) // re-inserted as the newest
        saved.set(real, { identity, hash })
        this.unsaved++
      }
    }
    return { identity, hash, real }
  }

  private loadSaved(): Promise<Map<string, { identity: string; hash: string }>> {
    if (this.saved === null) {
      const file = this.memoFile
      this.saved = (async () => {
        const map = new Map<string, { identity: string; hash: string }>()
        if (file === null) return map
        try {
          const doc = JSON.parse(await readFile(file, 'utf8')) as { version?: unknown; entries?: unknown }
          if (doc.version !== MEMO_VERSION || !Array.isArray(doc.entries)) return map
          for (const e of doc.entries.slice(-MAX_SAVED) as unknown[]) {
            if (!Array.isArray(e) || e.length !== 3 || !e.every((x) => typeof x === 'string')) continue
            const [real, identity, hash] = e as [string, string, string]
            if (/^[0-9a-f]{64}$/.test(hash)) map.set(real, { identity, hash })
          }
        } catch { /* none yet, or unreadable: hashed anew and written again */ }
        return map
      })()
    }
    return this.saved
  }
}

function identityOf(st: { dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint }): string {
  return [st.dev, st.ino, st.size, st.mtimeNs, st.ctimeNs].join(':')
}
