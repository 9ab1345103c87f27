// Where a build lies, kept out of C keys where it cannot reach the outputs. A CI member at
// /var/lib/ci/ws/proj/build and a developer at /home/dev/src/proj/build compile the same
// files under different absolute names; without -g, __FILE__ and the like the object does not
// hold those names (gcc and clang write only the source's basename into its file symbol), so
// the key holds a path that shares a first component with the working directory relative to
// that directory, and one that does not (/usr/include, the toolchain) as it is.
//
// Where names do reach an output (debug info, __FILE__, sanitizer metadata) the key holds them
// as the output holds them: after the build's own -fdebug-prefix-map / -ffile-prefix-map /
// -fmacro-prefix-map, which is the opt-in that makes such units shareable.
//
// Diagnostics and depfiles name this build's paths; a hit stored by a build elsewhere has them
// rewritten (relocate) by the part of the two working directories that differs.
import { isAbsolute, normalize, relative } from 'node:path'

/** A prefix map's OLD and NEW, as given. */
export type PrefixMap = [string, string]

/** Marks a key form relative to the working directory, apart from a path the build gave relative. */
const CWD_TAG = '<cwd>/'

/** the first non-empty component ('' for '/'), without splitting the whole path */
function firstComponent(p: string): string {
  let i = 0
  while (i < p.length && p.charCodeAt(i) === 47) i++
  const end = p.indexOf('/', i)
  return p.slice(i, end === -1 ? p.length : end)
}

/**
 * Forms already computed, per working directory. A kernel unit names ~800 headers, mostly the
 * same ones as the unit before, and each miss asks for their forms two or three times
 * (recordSet, maxClimb, keys): about 3 ms of the daemon's CPU per unit before this memo.
 * Lexical and pure, so a memo cannot go stale; bounded over all directories by clearing.
 */
const formMemo = new Map<string, Map<string, string | null>>()
/** forms held over all directories (a CMake build has a directory per target): all dropped beyond it */
const MAX_MEMO_FORMS = 200_000
let memoForms = 0

/**
 * The path relative to `cwd` when it lies in the same top-level directory (the checkout's
 * part of the tree); else null. Lexical, like the names a compiler writes.
 */
export function relativeForm(p: string, cwd: string): string | null {
  const known = formMemo.get(cwd)?.get(p)
  if (known !== undefined) return known
  const form = computeRelativeForm(p, cwd)
  if (memoForms >= MAX_MEMO_FORMS) {
    formMemo.clear()
    memoForms = 0
  }
  let memo = formMemo.get(cwd)
  if (memo === undefined) formMemo.set(cwd, (memo = new Map()))
  memo.set(p, form)
  memoForms++
  return form
}

function computeRelativeForm(p: string, cwd: string): string | null {
  if (!isAbsolute(p) || !isAbsolute(cwd)) return null
  const top = firstComponent(p)
  if (top === '' || top !== firstComponent(cwd)) return null
  const trailing = /\/+$/.exec(p)?.[0] ?? ''
  return (relative(cwd, p) || '.') + (trailing && p !== '/' ? trailing : '')
}

/** A path as a key holds it when its name cannot reach the outputs. */
export function keyForm(p: string, cwd: string): string {
  const r = relativeForm(p, cwd)
  return r === null ? p : CWD_TAG + r
}

/**
 * `p` as the compiler writes it under `maps`, or null when no map applies. gcc takes the last
 * matching map, clang 14 another order: when two matching maps disagree the result is null
 * (the raw name goes into the key).
 */
export function mapPath(p: string, maps: readonly PrefixMap[]): string | null {
  let out: string | null = null
  for (const [from, to] of maps) {
    if (from === '' || !p.startsWith(from)) continue
    const mapped = to + p.slice(from.length)
    if (out !== null && out !== mapped) return null
    out = mapped
  }
  return out
}

/** How many directories up a relative path climbs before it goes down. */
function climbs(rel: string): number {
  // relative() gives normalized paths: one that does not start with '..' climbs nothing
  if (!rel.startsWith('..')) return 0
  let n = 0
  for (const part of normalize(rel).split('/')) {
    if (part !== '..') break
    n++
  }
  return n
}

/** The deepest climb among the files a compile read, relative to its working directory (0: none leaves it). */
export function maxClimb(files: readonly string[], cwd: string): number {
  let max = 0
  for (const f of files) {
    const r = relativeForm(f, cwd)
    if (r !== null) max = Math.max(max, climbs(r))
  }
  return max
}

/**
 * Rewrites bytes a compile at `from` wrote (a depfile, diagnostics) into what the same compile
 * at `to` writes: the working directories' differing heads swapped ("/home/dev/src" for
 * "/var/lib/ci/ws" under a common "proj/build"). Null when that cannot be exact: the heads are
 * the root, or the compile read files above the common part (`climb` from its directory).
 */
export function relocator(from: string, to: string, climb: number): ((b: Buffer) => Buffer) | null {
  if (from === to) return (b) => b
  const a = normalize(from).split('/').filter(Boolean)
  const b = normalize(to).split('/').filter(Boolean)
  let common = 0
  while (common < a.length && common < b.length && a[a.length - 1 - common] === b[b.length - 1 - common]) common++
  const headA = a.slice(0, a.length - common)
  const headB = b.slice(0, b.length - common)
  if (headA.length === 0 || headB.length === 0 || climb > common) return null
  const oldHead = Buffer.from(`/${headA.join('/')}/`)
  const newHead = Buffer.from(`/${headB.join('/')}/`)
  return (buf) => replaceAll(buf, oldHead, newHead)
}

/** Every occurrence of `from` in `b` replaced with `to`. */
export function replaceAll(b: Buffer, from: Buffer, to: Buffer): Buffer {
  let at = b.indexOf(from)
  if (at === -1) return b
  const parts: Buffer[] = []
  let last = 0
  for (; at !== -1; at = b.indexOf(from, at + from.length)) {
    parts.push(b.subarray(last, at), to)
    last = at + from.length
  }
  parts.push(b.subarray(last))
  return Buffer.concat(parts)
}
