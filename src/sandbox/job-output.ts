// Taking a file out of a job's tree. The job decides what every name it can write is: the
// object may be a symlink to the builder's identity.key, a hard link, a FIFO that blocks a
// reader for ever, a link to /dev/zero that never ends, or sit below a directory that is a
// link to /. So the file is reached one component at a time from a directory the builder
// trusts, each opened without following a link (openat by way of /proc/self/fd, which Node
// lacks), and taken only when what was opened is a regular file with a single link, read
// through that same descriptor up to the cap.
import { constants } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'

const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK, O_NOCTTY } = constants

export type JobFile = { ok: true; data: Buffer } | { ok: false; reason: string }

/**
 * The regular file at `rel` (relative to `trustedDir`; a leading / is ignored) of at most
 * `maxBytes` bytes, or why it is not taken. `trustedDir` itself is opened as given.
 */
export async function readJobFile(trustedDir: string, rel: string, maxBytes: number): Promise<JobFile> {
  const parts = rel.split('/').filter((p) => p !== '' && p !== '.')
  if (parts.length === 0 || parts.includes('..')) return { ok: false, reason: `${rel}: not a path inside the job's tree` }
  let dir: FileHandle
  try {
    dir = await open(trustedDir, O_RDONLY | O_DIRECTORY)
  } catch (e) {
    return { ok: false, reason: `cannot open the job's tree: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` }
  }
  let file: FileHandle | null = null
  try {
    for (let i = 0; i < parts.length; i++) {
      const last = i === parts.length - 1
      const at = `/proc/self/fd/${dir.fd}/${parts[i]}`
      let next: FileHandle
      try {
        // O_NONBLOCK: opening a FIFO must not wait for a writer that never comes
        next = await open(at, last ? O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY : O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
      } catch (e) {
        const reached = parts.slice(0, i + 1).join('/')
        return { ok: false, reason: last ? why(e, reached) : `${rel}: ${why(e, reached)}` }
      }
      if (last) file = next
      else {
        await dir.close()
        dir = next
      }
    }
    const st = await file!.stat()
    if (!st.isFile()) return { ok: false, reason: `${rel}: not a regular file` }
    if (st.nlink !== 1) return { ok: false, reason: `${rel}: a hard link (${st.nlink} links)` }
    if (st.size > maxBytes) return { ok: false, reason: `${rel}: larger than ${maxBytes} bytes` }
    // the size fstat gave may change under a writer that is still alive (sandbox = "none"):
    // the cap holds whatever the file does
    let buf = Buffer.allocUnsafe(Math.min(st.size, maxBytes) + 1)
    let n = 0
    for (;;) {
      if (n === buf.length) {
        if (n > maxBytes) return { ok: false, reason: `${rel}: larger than ${maxBytes} bytes` }
        const grown = Buffer.allocUnsafe(Math.min(2 * buf.length, maxBytes + 1))
        buf.copy(grown, 0, 0, n)
        buf = grown
      }
      const { bytesRead } = await file!.read(buf, n, buf.length - n, n)
      if (bytesRead === 0) break
      n += bytesRead
    }
    return { ok: true, data: n === buf.length - 1 ? buf.subarray(0, n) : Buffer.from(buf.subarray(0, n)) }
  } finally {
    await dir.close().catch(() => undefined)
    if (file) await file.close().catch(() => undefined)
  }
}

export type JobFiles = { ok: true; data: Buffer[] } | { ok: false; reason: string }

/**
 * Several files of a job (each as readJobFile takes one), at most `maxBytes` together: a job
 * with many outputs cannot make the builder hold more than a job with one.
 */
export async function readJobFiles(trustedDir: string, rels: string[], maxBytes: number): Promise<JobFiles> {
  const data: Buffer[] = []
  let left = maxBytes
  for (const rel of rels) {
    const f = await readJobFile(trustedDir, rel, left)
    if (!f.ok) return f
    left -= f.data.length
    data.push(f.data)
  }
  return { ok: true, data }
}

function why(e: unknown, path: string): string {
  const code = (e as NodeJS.ErrnoException).code
  if (code === 'ELOOP') return `${path} is a symbolic link`
  // O_DIRECTORY | O_NOFOLLOW on a link: ENOTDIR
  if (code === 'ENOTDIR') return `${path} is a symbolic link or not a directory`
  if (code === 'ENOENT') return `${path} is missing`
  return `${path}: ${code ?? (e as Error).message}`
}
