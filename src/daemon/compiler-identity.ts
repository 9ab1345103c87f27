// Content hash of a compiler binary, memoised by path, size and mtime: hashing clang's
// 100 MB binary on every compile would cost more than the compile.
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { realpath, stat } from 'node:fs/promises'

interface Memo { size: number; mtimeMs: number; hash: string; real: string }

export class CompilerIdentity {
  private readonly memo = new Map<string, Memo>()
  private readonly inflight = new Map<string, Promise<Memo>>()

  /** Returns the content hash and the resolved real path of the compiler. */
  async of(path: string): Promise<{ hash: string; real: string }> {
    const real = await realpath(path)
    const st = await stat(real)
    const m = this.memo.get(path)
    if (m && m.size === st.size && m.mtimeMs === st.mtimeMs && m.real === real) return m
    const key = `${real}:${st.size}:${st.mtimeMs}`
    let p = this.inflight.get(key)
    if (!p) {
      p = hashFile(real).then((hash) => ({ size: st.size, mtimeMs: st.mtimeMs, hash, real }))
      this.inflight.set(key, p)
      p.finally(() => this.inflight.delete(key)).catch(() => {})
    }
    const fresh = await p
    this.memo.set(path, fresh)
    return fresh
  }
}

function hashFile(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256')
    createReadStream(file)
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')))
  })
}
