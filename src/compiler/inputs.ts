// The files a compile reads, taken from the line markers of its preprocessed output
// (`# 12 "/usr/include/stdio.h" 1 3 4`): what a builder needs to reproduce the compile
// with every file at its own path, so objects (debug info included) and diagnostics are
// exactly the local ones. The builder re-preprocesses and compares hashes, so a file this
// misses can only cost a retry, never a wrong object.
import { isAbsolute, normalize, resolve } from 'node:path'

export interface InputSet {
  /** absolute, normalised paths of every file the preprocessor entered */
  files: string[]
  /** directories that must exist because a path walks through them ("src/../inc/h.h") */
  dirs: string[]
}

const MARKER = /^#(?:line)? \d+ "((?:[^"\\]|\\.)*)"/
// a Buffer needle: a string one is converted again on every indexOf call
const NEWLINE_HASH = Buffer.from('\n#')

/**
 * The quoted file name of the marker line at `start` (still escaped, latin1), or null when the
 * line is no marker. Checks "# <digits> \"" byte by byte and decodes only the name: a kernel
 * unit has thousands of marker lines. Names with a backslash take the regex.
 */
function quotedName(pp: Buffer, start: number): string | null {
  let i = start + 1
  if (pp[i] === 108 /* l */) {
    if (pp.toString('latin1', i, i + 4) !== 'line') return null
    i += 4
  }
  if (pp[i] !== 32) return null
  const digits = ++i
  while (pp[i]! >= 48 && pp[i]! <= 57) i++
  if (i === digits || pp[i] !== 32 || pp[i + 1] !== 34) return null
  const open = i + 2
  const close = pp.indexOf(34, open)
  const nl = pp.indexOf(10, open)
  if (close === -1 || (nl !== -1 && close > nl)) return null
  const name = pp.toString('latin1', open, close)
  if (!name.includes('\\')) return name
  const end = nl === -1 ? pp.length : nl
  const m = MARKER.exec(pp.toString('latin1', start, Math.min(end, start + 8192)))
  return m ? m[1]! : null
}

function unescape(s: string): string {
  return s.replace(/\\(.)/g, '$1')
}

// A miss that may go to the mesh reads the set twice (the manifest, the job's inputs): a
// kernel unit's preprocessed output is megabytes, so parse each buffer once.
const parsed = new WeakMap<Buffer, { key: string; set: InputSet }>()

export function inputsFromPreprocessed(pp: Buffer, cwd: string, mainInput: string): InputSet {
  const key = `${cwd}\0${mainInput}`
  const memo = parsed.get(pp)
  if (memo && memo.key === key) return { files: [...memo.set.files], dirs: [...memo.set.dirs] }
  const set = parseMarkers(pp, cwd, mainInput)
  parsed.set(pp, { key, set })
  return { files: [...set.files], dirs: [...set.dirs] }
}

function parseMarkers(pp: Buffer, cwd: string, mainInput: string): InputSet {
  const seen = new Set<string>()
  const dirs = new Set<string>()
  const add = (raw: string) => {
    if (raw.startsWith('<') && raw.endsWith('>')) return // <built-in>, <command-line>, <stdin>
    if (raw.endsWith('//')) return // gcc's "# 1 "/cwd//"" working-directory marker
    // not path.join: it would resolve the ".." whose directory must exist on the builder
    const abs = isAbsolute(raw) ? raw : `${cwd.replace(/\/+$/, '')}/${raw}`
    const parts = abs.split('/')
    for (let i = 1; i < parts.length; i++) if (parts[i] === '..') dirs.add(normalize(parts.slice(0, i).join('/') || '/'))
    seen.add(normalize(abs))
  }
  add(mainInput)
  // Markers sit at line starts: jump from one "\n#" to the next in the buffer (memchr-fast)
  // instead of walking every line, and decode only the marker lines. latin1 keeps byte
  // offsets and never throws. A unit returns to the same few hundred files thousands of
  // times: a raw name seen before skips the rest.
  const rawNames = new Set<string>()
  const marker = (start: number) => {
    const raw = quotedName(pp, start)
    if (raw === null || rawNames.has(raw)) return
    rawNames.add(raw)
    add(Buffer.from(unescape(raw), 'latin1').toString('utf8'))
  }
  if (pp[0] === 35 /* # */) marker(0)
  for (let at = pp.indexOf(NEWLINE_HASH); at !== -1; at = pp.indexOf(NEWLINE_HASH, at + 1)) marker(at + 1)
  dirs.add(resolve(cwd))
  return { files: [...seen].sort(), dirs: [...dirs].sort() }
}
