// The files a compile reads, taken from the line markers of its preprocessed output
// (`# 12 "/usr/include/stdio.h" 1 3 4`): what a builder needs to reproduce the compile
// with every file at its own path, so objects (debug info included) and diagnostics are
// exactly the local ones, and what direct mode records in a manifest. A file missed here
// costs a remote job a retry (the builder re-preprocesses and compares hashes) but would
// leave a manifest blind to that file's changes, so the scan errs towards listing too much:
// a listed file that does not exist only keeps the unit local and out of manifests.
//
// What gcc and clang really write (gcc 12, clang 14):
// - `-E`: a marker always starts a line.
// - gcc `-E -fdirectives-only` copies the source up to each directive's '#', so the marker of
//   `  #include <x.h>` (libstdc++'s locale_facets_nonio.h has one) or `/* c */ #include` keeps
//   that indentation or comment before it, and in a source with CR line ends it follows a CR.
// - Flag 1 after the name marks entering a file; a marker without it is a return (2), a line
//   resync, or a `#line N "name"` from the source, whose name need not be a file at all (bison
//   output names its .y file, relative to wherever bison ran).
// - Names are C string literals: gcc escapes `\` `"` and newline, clang also tab and every
//   byte outside printable ASCII (octal: "\303\274" for "ü").
import { isAbsolute, normalize, resolve } from 'node:path'

export interface InputSet {
  /** absolute, normalised paths of every file the preprocessor entered */
  files: string[]
  /** directories that must exist because a path walks through them ("src/../inc/h.h") */
  dirs: string[]
}

/** a marker line is a path and a few numbers; a longer unfinished "#" line is no marker */
const MAX_MARKER_LINE = 16 * 1024

/** what path.normalize would change in an absolute path: "//", a "." or ".." component */
const NOT_NORMAL = /\/\/|\/\.\.?(?:\/|$)/

const LF = 10
const CR = 13
const SPACE = 32
const QUOTE = 34
const HASH = 35
const STAR = 42
const SLASH = 47
const BACKSLASH = 92
const L = 108

/** Blanks that may indent a directive: space, tab, vertical tab, form feed. */
function isBlank(c: number | undefined): boolean {
  return c === SPACE || c === 9 || c === 11 || c === 12
}

/** Where a marker's name lies in its line, and whether the marker enters that file. */
interface MarkerName {
  /** the still-escaped name (latin1) */
  raw: string
  escaped: boolean
  /** offsets of the name's opening and closing quote */
  open: number
  close: number
  /** flag 1 (entering a file), or a `#line` form */
  entering: boolean
}

/**
 * The name of the marker whose '#' is at `start` and whose line ends at `end`, or null when the
 * line is no marker. Checked byte by byte: a kernel unit has thousands of markers. `#line N
 * "name"` (clang -fuse-line-directives) carries no flags, so every such name counts as entered.
 */
function markerName(b: Buffer, start: number, end: number): MarkerName | null {
  let i = start + 1
  const lineForm = b[i] === L
  if (lineForm) {
    if (b[i + 1] !== 105 /* i */ || b[i + 2] !== 110 /* n */ || b[i + 3] !== 101 /* e */) return null
    i += 4
  }
  if (b[i] !== SPACE) return null
  const digits = ++i
  while (b[i]! >= 48 && b[i]! <= 57) i++
  if (i === digits || b[i] !== SPACE || b[i + 1] !== QUOTE) return null
  const open = i + 2
  let close = b.indexOf(QUOTE, open)
  if (close === -1 || close >= end) return null
  // a loop, not indexOf: that would search on past the name, through the rest of the chunk
  let escaped = false
  for (let j = open; j < close && !escaped; j++) escaped = b[j] === BACKSLASH
  if (escaped) {
    // the first quote no backslash escapes
    for (close = open; close < end && b[close] !== QUOTE; close++) if (b[close] === BACKSLASH) close++
    if (close >= end) return null
  }
  // flags follow in ascending order: entering a file puts 1 first
  const entering = lineForm || (b[close + 1] === SPACE && b[close + 2] === 49 /* 1 */ && (close + 3 === end || b[close + 3] === SPACE || b[close + 3] === CR))
  return { raw: b.toString('latin1', open, close), escaped, open: open - 1, close: close + 1, entering }
}

/**
 * Where the scanned text goes for a cache key that must not hold every name as written: the
 * bytes outside marker names, and each marker's name (still escaped) in their place.
 */
export interface MarkerTextSink {
  /** bytes [start, end) of `b`: a range, not a subarray, as a unit passes tens of thousands of pieces */
  text(b: Buffer, start: number, end: number): void
  name(raw: string, escaped: boolean): void
}

const SIMPLE_ESCAPES: Record<string, number> = { a: 7, b: 8, e: 27, f: 12, n: 10, r: 13, t: 9, v: 11 }

/** A marker's name as the compiler reads it back: C string-literal escapes, then UTF-8. */
export function decodeMarkerName(raw: string, escaped = true): string {
  if (!escaped) return Buffer.from(raw, 'latin1').toString('utf8')
  const bytes: number[] = []
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i)
    if (c !== BACKSLASH || i + 1 === raw.length) {
      bytes.push(c)
      continue
    }
    const e = raw[++i]!
    if (e >= '0' && e <= '7') {
      let v = 0
      let n = 0
      for (; n < 3 && raw[i + n]! >= '0' && raw[i + n]! <= '7'; n++) v = v * 8 + raw.charCodeAt(i + n) - 48
      bytes.push(v & 0xff)
      i += n - 1
    } else if (e === 'x' && /[0-9a-fA-F]/.test(raw[i + 1] ?? '')) {
      let v = 0
      while (/[0-9a-fA-F]/.test(raw[i + 1] ?? '')) v = (v * 16 + parseInt(raw[++i]!, 16)) & 0xff
      bytes.push(v)
    } else {
      bytes.push(SIMPLE_ESCAPES[e] ?? e.charCodeAt(0)) // \\ \" \' \? and any other: the character itself
    }
  }
  return Buffer.from(bytes).toString('utf8')
}

/**
 * Collects the input set while the preprocessor's output streams past, chunk by chunk, so the
 * megabytes of a kernel unit are never joined into one buffer. It jumps from one '#' to the next
 * (memchr-fast, and '#' is much rarer than a line end), skips the '#' that cannot start a marker
 * by the next byte (#define, ##, #x), and looks back only from the rest: a marker's '#' follows a
 * line end (LF or CR), blanks, or the end of a comment. Only marker lines are decoded; latin1 keeps
 * byte offsets and never throws. A unit returns to the same few hundred files thousands of times:
 * a raw name seen before skips the rest.
 */
export class InputScanner {
  private readonly files = new Set<string>()
  private readonly dirs = new Set<string>()
  private readonly rawNames = new Set<string>()
  /** the start of a marker line that the last chunk did not finish */
  private partial: Buffer | null = null
  /** a '#' at the start of the next chunk could begin a directive (the stream starts at a line start) */
  private directiveMayStart = true
  /** the last chunk ended in '*' (a "*\/" cut by the seam) */
  private endedInStar = false

  /** `sink`: the text passes through it, every marker's name apart (path-forms.ts keys names by where they lie) */
  constructor(private readonly cwd: string, mainInput: string, private readonly sink: MarkerTextSink | null = null) {
    this.add(mainInput)
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return
    const sink = this.sink
    let from = 0
    /** the chunk's bytes before this went to the sink */
    let passed = 0
    if (this.partial) {
      const nl = chunk.indexOf(LF)
      if (nl === -1) {
        if (this.partial.length + chunk.length > MAX_MARKER_LINE) {
          sink?.text(this.partial, 0, this.partial.length)
          sink?.text(chunk, 0, chunk.length)
          this.partial = null
          this.directiveMayStart = false
          this.endedInStar = false
        } else {
          this.partial = Buffer.concat([this.partial, chunk])
        }
        return
      }
      const line = Buffer.concat([this.partial, chunk.subarray(0, nl)])
      this.marker(line, 0, line.length)
      this.partial = null
      from = nl + 1
      passed = nl
    }
    for (let at = chunk.indexOf(HASH, from); at !== -1; at = chunk.indexOf(HASH, at + 1)) {
      // most '#' of -fdirectives-only output start "#define"; markers are "# 12" or "#line"
      const next = chunk[at + 1]
      if (next !== undefined && next !== SPACE && next !== L) continue
      if (!this.directiveStart(chunk, at)) continue
      const nl = chunk.indexOf(LF, at)
      if (nl === -1) {
        // its own bytes: the chunk may be reused
        if (chunk.length - at <= MAX_MARKER_LINE) {
          sink?.text(chunk, passed, at)
          passed = chunk.length
          this.partial = Buffer.from(chunk.subarray(at))
        }
        break
      }
      if (sink) {
        sink.text(chunk, passed, at)
        passed = nl
      }
      this.marker(chunk, at, nl)
    }
    if (sink && passed < chunk.length) sink.text(chunk, passed, chunk.length)
    this.directiveMayStart = this.directiveStart(chunk, chunk.length)
    this.endedInStar = chunk[chunk.length - 1] === STAR
  }

  /** The set, once the stream has ended. */
  finish(): InputSet {
    if (this.partial) this.marker(this.partial, 0, this.partial.length) // a last line without its newline
    this.partial = null
    this.dirs.add(resolve(this.cwd))
    return { files: [...this.files].sort(), dirs: [...this.dirs].sort() }
  }

  /** Could a directive's '#' stand at `at`: only blanks back to a line end or a comment's end? */
  private directiveStart(chunk: Buffer, at: number): boolean {
    let i = at - 1
    while (i >= 0 && isBlank(chunk[i])) i--
    if (i < 0) return this.directiveMayStart
    const c = chunk[i]
    if (c === LF || c === CR) return true
    return c === SLASH && (i > 0 ? chunk[i - 1] === STAR : this.endedInStar)
  }

  /** The line from '#' at `start` to `end` (its line end): the sink gets it, its name apart. */
  private marker(buf: Buffer, start: number, end: number): void {
    const name = markerName(buf, start, end)
    if (this.sink) {
      if (name === null) {
        this.sink.text(buf, start, end)
      } else {
        this.sink.text(buf, start, name.open)
        this.sink.name(name.raw, name.escaped)
        this.sink.text(buf, name.close, end)
      }
    }
    if (name === null || !name.entering || this.rawNames.has(name.raw)) return
    this.rawNames.add(name.raw)
    this.add(decodeMarkerName(name.raw, name.escaped))
  }

  private add(raw: string): void {
    if (raw.startsWith('<') && raw.endsWith('>')) return // <built-in>, <command-line>, <stdin>
    if (raw.endsWith('//')) return // gcc's "# 1 "/cwd//"" working-directory marker
    // not path.join: it would resolve the ".." whose directory must exist on the builder. A
    // leading "./" (Kbuild names every header so) goes first: normalize would drop it anyway,
    // and a path left with nothing to normalize skips it (a kernel unit enters ~800 files)
    let rel = raw
    if (!isAbsolute(raw)) while (rel.startsWith('./')) rel = rel.slice(2)
    const abs = isAbsolute(raw) ? raw : `${this.cwd.replace(/\/+$/, '')}/${rel}`
    if (abs.includes('/..')) {
      const parts = abs.split('/')
      for (let i = 1; i < parts.length; i++) if (parts[i] === '..') this.dirs.add(normalize(parts.slice(0, i).join('/') || '/'))
    }
    this.files.add(NOT_NORMAL.test(abs) ? normalize(abs) : abs)
  }
}

/** The input set of a whole preprocessed unit in one buffer. */
export function inputsFromPreprocessed(pp: Buffer, cwd: string, mainInput: string): InputSet {
  const s = new InputScanner(cwd, mainInput)
  s.push(pp)
  return s.finish()
}
