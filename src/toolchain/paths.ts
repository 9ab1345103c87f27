// Path closure for toolchain packing. A toolchain is unpacked as a root filesystem and the
// unpacker refuses any entry below a symlink, so every host path has to be stored at its
// physical location, with each symlink met on the way (/lib -> usr/lib, /usr/bin/gcc ->
// gcc-12, /lib64/ld-linux-x86-64.so.2 -> /lib/...) stored as a link of its own. Then the
// original path resolves inside the sandbox exactly as it does on the host.
import type { Stats } from 'node:fs'
import { lstat, readlink } from 'node:fs/promises'
import { isAbsolute } from 'node:path'

export type ClosureEntry =
  | { kind: 'file'; path: string; stat: Stats }
  | { kind: 'dir'; path: string; stat: Stats }
  | { kind: 'symlink'; path: string; target: string }

/** Linux's own limit on symlinks followed in one lookup */
const MAX_HOPS = 40

/**
 * Resolve `path` component by component like the kernel does, recording every symlink met
 * and the final file or directory. Every recorded path has a symlink-free parent.
 * Throws when something is missing, loops, or ends at a device, fifo or socket.
 */
export async function walkPath(path: string, out: Map<string, ClosureEntry>): Promise<void> {
  if (!isAbsolute(path)) throw new Error(`toolchain path must be absolute: ${path}`)
  const queue = path.split('/')
  const cur: string[] = [] // physical components resolved so far (no symlinks among them)
  let hops = 0
  let last: Stats | null = null
  while (queue.length > 0) {
    const c = queue.shift() as string
    if (c === '' || c === '.') continue
    // cur is physical, so its parent is the real parent, not a lexical guess.
    if (c === '..') { cur.pop(); last = null; continue }
    const next = '/' + [...cur, c].join('/')
    const known = out.get(next)
    let st: Stats | null = null
    let target: string
    if (known && known.kind === 'symlink') {
      target = known.target
    } else if (known) {
      cur.push(c)
      last = known.stat
      continue
    } else {
      st = await lstat(next)
      if (!st.isSymbolicLink()) {
        cur.push(c)
        last = st
        // Intermediate components are recorded as directories by the packer (parents).
        if (queue.every((q) => q === '' || q === '.')) break
        if (!st.isDirectory()) throw new Error(`not a directory: ${next} (in ${path})`)
        continue
      }
      target = await readlink(next)
      out.set(next, { kind: 'symlink', path: next, target })
    }
    if (++hops > MAX_HOPS) throw new Error(`too many levels of symbolic links resolving ${path}`)
    if (isAbsolute(target)) cur.length = 0
    queue.unshift(...target.split('/'))
    last = null
  }
  const real = '/' + cur.join('/')
  if (cur.length === 0) return // resolved to / itself: nothing to record
  const st = last ?? await lstat(real)
  if (st.isFile()) out.set(real, { kind: 'file', path: real, stat: st })
  else if (st.isDirectory()) out.set(real, { kind: 'dir', path: real, stat: st })
  else throw new Error(`not a regular file: ${real} (in ${path})`)
}

/** The closure of several paths, keyed by absolute physical-or-link path. */
export async function closePaths(paths: Iterable<string>): Promise<Map<string, ClosureEntry>> {
  const out = new Map<string, ClosureEntry>()
  for (const p of paths) await walkPath(p, out)
  return out
}

/** Byte-wise order, independent of locale and of JavaScript's UTF-16 comparison. */
export function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b))
}
