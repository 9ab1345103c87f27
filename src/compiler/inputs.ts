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
/** a marker line is a path and a few numbers; a longer unfinished "#" line is no marker */
const MAX_MARKER_LINE = 16 * 1024

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

/**
 * Collects the input set while the preprocessor's output streams past, chunk by chunk, so the
 * megabytes of a kernel unit are never joined into one buffer. Markers sit at line starts: it
 * jumps from one "\n#" to the next (memchr-fast) instead of walking every line, and decodes
 * only marker lines; latin1 keeps byte offsets and never throws. A unit returns to the same few
 * hundred files thousands of times: a raw name seen before skips the rest.
 */
export class InputScanner {
  private readonly files = new Set<string>()
  private readonly dirs = new Set<string>()
  private readonly rawNames = new Set<string>()
  /** the start of a "#" line that the last chunk did not finish */
  private partial: Buffer | null = null
  /** the last chunk ended a line (the stream starts at one) */
  private atLineStart = true

  constructor(private readonly cwd: string, mainInput: string) {
    this.add(mainInput)
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return
    let from = 0
    if (this.partial) {
      const nl = chunk.indexOf(10)
      if (nl === -1) {
        this.partial = this.partial.length + chunk.length > MAX_MARKER_LINE ? null : Buffer.concat([this.partial, chunk])
        if (this.partial === null) this.atLineStart = false
        return
      }
      this.marker(Buffer.concat([this.partial, chunk.subarray(0, nl)]), 0)
      this.partial = null
      from = nl
    } else if (this.atLineStart && chunk[0] === 35 /* # */) {
      this.lineAt(chunk, 0)
    }
    for (let at = chunk.indexOf(NEWLINE_HASH, from); at !== -1; at = chunk.indexOf(NEWLINE_HASH, at + 1)) {
      if (!this.lineAt(chunk, at + 1)) break
    }
    this.atLineStart = chunk[chunk.length - 1] === 10
  }

  /** The set, once the stream has ended. */
  finish(): InputSet {
    if (this.partial) this.marker(this.partial, 0) // a last line without its newline
    this.partial = null
    this.dirs.add(resolve(this.cwd))
    return { files: [...this.files].sort(), dirs: [...this.dirs].sort() }
  }

  /** The "#" line at `start`: parsed when it ends in this chunk, else kept for the next; false when kept. */
  private lineAt(chunk: Buffer, start: number): boolean {
    // most "#" lines of -fdirectives-only output are #define: no marker ("# 12" or "#line")
    const next = chunk[start + 1]
    if (next !== undefined && next !== 32 && next !== 108 /* l */) return true
    if (chunk.indexOf(10, start) !== -1) {
      this.marker(chunk, start)
      return true
    }
    if (chunk.length - start <= MAX_MARKER_LINE) this.partial = Buffer.from(chunk.subarray(start)) // its own bytes: the chunk may be reused
    return false
  }

  private marker(buf: Buffer, start: number): void {
    const raw = quotedName(buf, start)
    if (raw === null || this.rawNames.has(raw)) return
    this.rawNames.add(raw)
    this.add(Buffer.from(unescape(raw), 'latin1').toString('utf8'))
  }

  private add(raw: string): void {
    if (raw.startsWith('<') && raw.endsWith('>')) return // <built-in>, <command-line>, <stdin>
    if (raw.endsWith('//')) return // gcc's "# 1 "/cwd//"" working-directory marker
    // not path.join: it would resolve the ".." whose directory must exist on the builder
    const abs = isAbsolute(raw) ? raw : `${this.cwd.replace(/\/+$/, '')}/${raw}`
    const parts = abs.split('/')
    for (let i = 1; i < parts.length; i++) if (parts[i] === '..') this.dirs.add(normalize(parts.slice(0, i).join('/') || '/'))
    this.files.add(normalize(abs))
  }
}

/** The input set of a whole preprocessed unit in one buffer. */
export function inputsFromPreprocessed(pp: Buffer, cwd: string, mainInput: string): InputSet {
  const s = new InputScanner(cwd, mainInput)
  s.push(pp)
  return s.finish()
}
