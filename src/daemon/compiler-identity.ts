// Content hash of a compiler binary, memoised by the file's identity (device, inode, size,
// mtime and ctime in nanoseconds): hashing clang's 100 MB binary on every compile would cost
// more than the compile.
import { realpath, stat } from 'node:fs/promises'
import { hashFileContent } from '../util/hash-file.js'

interface Memo { identity: string; hash: string; real: string }

export class CompilerIdentity {
  private readonly memo = new Map<string, Memo>()
  private readonly inflight = new Map<string, Promise<Memo>>()

  /** Returns the content hash and the resolved real path of the compiler. */
  async of(path: string): Promise<{ hash: string; real: string }> {
    const real = await realpath(path)
    const st = await stat(real, { bigint: true })
    const identity = [st.dev, st.ino, st.size, st.mtimeNs, st.ctimeNs].join(':')
    const m = this.memo.get(path)
    if (m && m.identity === identity && m.real === real) return m
    const key = `${real}:${identity}`
    let p = this.inflight.get(key)
    if (!p) {
      p = hashFileContent(real).then(({ hash }) => ({ identity, hash, real }))
      this.inflight.set(key, p)
      p.finally(() => this.inflight.delete(key)).catch(() => {})
    }
    const fresh = await p
    this.memo.set(path, fresh)
    return fresh
  }
}
