// What the client takes from the preprocessor's output of a C-family unit as it streams past, in
// one place: the hash a builder's check compares, the key's view of the text (line-marker names
// in the form that can reach the outputs), the names as written and as __FILE__ expands them,
// the files the unit read (InputScanner), and the searches that decide whether the unit may be
// keyed on this text at all. A kernel unit is megabytes and every remote job pays for this pass.
import { createHash, type Hash } from 'node:crypto'
import { StreamSearchAny } from '../util/stream-search.js'
import { decodeMarkerName, InputScanner, type InputSet, type MarkerTextSink } from './inputs.js'

const INCBIN = Buffer.from('.incbin')
/**
 * __DATE__, __TIME__ and __TIMESTAMP__, left unexpanded by -fdirectives-only: such a unit is
 * keyed on its fully preprocessed text. Searched by their tails: a needle that starts with "__"
 * takes several times as long in C code, and an identifier that merely ends alike only costs a
 * full preprocessing run.
 */
const DATE_TIME_MACROS = ['DATE__', 'TIME__', 'STAMP__'].map((m) => Buffer.from(m))
/**
 * gcc -fdirectives-only leaves a directive spelled with a digraph or trigraph ("%:include",
 * "??=include") as text, so the header it includes would be missing from the key while the
 * real compile reads it: such a unit is preprocessed fully too.
 */
const ALTERNATIVE_HASH = ['%:', '??='].map((m) => Buffer.from(m))
/**
 * __FILE__, __BASE_FILE__ and __FILE_NAME__, left unexpanded by -fdirectives-only, take the
 * file's name from the line markers when compiled: such a unit's key holds every marker's name
 * as those macros expand it (after -fmacro-prefix-map). Almost every kernel unit names __FILE__
 * in a header's macros (WARN, cond_resched), and preprocessing it fully as well cost the client
 * a second, three times dearer preprocessor run per remote job.
 */
const FILE_MACROS = [Buffer.from('FILE__')]
/** Builtins that write the current file's name into the object, unexpanded in any preprocessed text: the names enter the key as written. */
const FILE_BUILTINS = ['builtin_FILE', 'builtin_source_loc'].map((m) => Buffer.from(m))

export interface PreprocessedOutputOptions {
  /** -fdirectives-only text (comments kept, __DATE__ and __FILE__ unexpanded) */
  directivesOnly: boolean
  /** the unit may go to a peer: hash the text as it is for the builder's check */
  remote: boolean
  cwd: string
  /** the unit's source, absolute */
  mainInput: string
  /** a marker's name (decoded) as the key holds it */
  nameForm(name: string): string
  /** a marker's name as __FILE__ expands it, from the raw (escaped) and the decoded name */
  macroNameForm(raw: string, name: string): string
}

export interface PreprocessedSummary {
  /** sha256 (hex) of the text as it is; '' when not remote */
  ppHash: string
  ppBytes: number
  /** sha256 (hex) of the text with each marker's name in its key form */
  keyText: string
  /** sha256 (hex) of the marker names as written */
  writtenNames: string
  /** sha256 (hex) of the names __FILE__ expands to; null unless directives-only */
  macroNames: string | null
  /** .incbin (and, directives-only: a date or time macro, a digraph or trigraph "#") */
  volatile: boolean
  /** __builtin_FILE or __builtin_source_location */
  builtins: boolean
  /** directives-only text naming __FILE__ or its kin */
  fileMacros: boolean
  inputs: InputSet
}

/** Pieces of text shorter than this are copied into the stage; longer ones go to the hash as they are. */
const STAGE_DIRECT = 4096
const STAGE_SIZE = 64 * 1024
/** Pieces up to this long are copied byte by byte. */
const STAGE_LOOP = 64

/**
 * A hash fed in large pieces: a unit's thousands of line markers cut its text into tens of
 * thousands of short pieces, and each update is a call into C++ that costs more than hashing
 * the piece. The hash of the concatenation is the same, so small pieces are copied into one
 * buffer and hashed together.
 */
class StagedHash {
  private readonly stage = Buffer.allocUnsafe(STAGE_SIZE)
  private used = 0
  private readonly hash = createHash('sha256')

  bytes(b: Buffer, start = 0, end = b.length): void {
    const n = end - start
    if (n >= STAGE_DIRECT) {
      this.flush()
      this.hash.update(b.subarray(start, end))
      return
    }
    if (n > STAGE_SIZE - this.used) this.flush()
    // most pieces are a marker's few bytes around its name: a loop, as Buffer.copy allocates a view
    if (n <= STAGE_LOOP) for (let i = start; i < end; i++) this.stage[this.used++] = b[i]!
    else this.used += b.copy(this.stage, this.used, start, end)
  }

  digest(): string {
    this.flush()
    return this.hash.digest('hex')
  }

  private flush(): void {
    if (this.used === 0) return
    this.hash.update(this.stage.subarray(0, this.used)) // update consumes it now: the stage may be reused
    this.used = 0
  }
}

/** A marker name's forms, worked out once per distinct name (a unit returns to the same few hundred files thousands of times). */
interface NameForms {
  /** "\0<key form>\0" as the key's text holds it (UTF-8) */
  key: Buffer
  /** "<raw>\0" (UTF-8) */
  written: Buffer
  /** "<the name as __FILE__ expands it>\0" (UTF-8) */
  macro: Buffer
}

export class PreprocessedOutput {
  private readonly ppHash: Hash | null
  private readonly keyText = new StagedHash()
  /**
   * "<raw>\0" per marker, and "<macro form>\0" when directives-only, hashed as they come from
   * each name's forms (no string per marker, nor one of the whole unit's names at the end)
   */
  private readonly writtenNames = new StagedHash()
  private readonly macroNames = new StagedHash()
  private readonly directivesOnly: boolean
  private readonly forms = new Map<string, NameForms>()
  private readonly scanner: InputScanner
  private readonly search: StreamSearchAny
  private readonly builtins = new StreamSearchAny(FILE_BUILTINS)
  private readonly fileMacros: StreamSearchAny | null
  private ppBytes = 0

  constructor(opts: PreprocessedOutputOptions) {
    const { directivesOnly } = opts
    this.directivesOnly = directivesOnly
    this.ppHash = opts.remote ? createHash('sha256') : null
    const sink: MarkerTextSink = {
      text: (b, start, end) => { this.keyText.bytes(b, start, end) },
      name: (raw, escaped) => {
        let form = this.forms.get(raw)
        if (form === undefined) {
          const name = decodeMarkerName(raw, escaped)
          form = { key: Buffer.from(`\0${opts.nameForm(name)}\0`), written: Buffer.from(`${raw}\0`), macro: Buffer.from(directivesOnly ? `${opts.macroNameForm(raw, name)}\0` : '') }
          this.forms.set(raw, form)
        }
        this.keyText.bytes(form.key)
        this.writtenNames.bytes(form.written)
        if (directivesOnly) this.macroNames.bytes(form.macro)
      }
    }
    this.scanner = new InputScanner(opts.cwd, opts.mainInput, sink)
    // An assembler .incbin (in a .S file or inline asm) reads a file the preprocessed text does
    // not contain: a change there would leave the key unchanged and a hit would be stale. In
    // directives-only text (comments kept, __DATE__ unexpanded) it, or a date or time macro,
    // sends the unit to full preprocessing, which decides; so does a "%:" or "??=". __FILE__
    // and its kin keep the cheap mode: the key takes the names they expand to (FILE_MACROS).
    this.search = new StreamSearchAny(directivesOnly ? [INCBIN, ...DATE_TIME_MACROS, ...ALTERNATIVE_HASH] : [INCBIN])
    this.fileMacros = directivesOnly ? new StreamSearchAny(FILE_MACROS) : null
  }

  push(chunk: Buffer): void {
    this.ppHash?.update(chunk)
    this.ppBytes += chunk.length
    this.search.push(chunk)
    this.builtins.push(chunk)
    this.fileMacros?.push(chunk)
    this.scanner.push(chunk)
  }

  /** Has the text so far named .incbin (or, directives-only, what sends a unit to full preprocessing)? */
  get volatile(): boolean {
    return this.search.found
  }

  /** Once the stream has ended. */
  finish(): PreprocessedSummary {
    // first: a last line without its line end reaches the sink only now
    const inputs = this.scanner.finish()
    return {
      ppHash: this.ppHash?.digest('hex') ?? '',
      ppBytes: this.ppBytes,
      keyText: this.keyText.digest(),
      writtenNames: this.writtenNames.digest(),
      macroNames: this.directivesOnly ? this.macroNames.digest() : null,
      volatile: this.search.found,
      builtins: this.builtins.found,
      fileMacros: this.fileMacros?.found ?? false,
      inputs
    }
  }
}
