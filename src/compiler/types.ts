// The seam between the daemon and a compiler family: a family turns an argument list into
// either "not cacheable, because …" or a CompileSpec saying how to preprocess, what goes
// into the cache key, which files a compile writes and how to redirect them to temp files.

export interface OutputFile {
  /** name of the blob in a cache entry */
  name: 'obj' | 'dep'
  /** where the user expects it, as given (relative to cwd or absolute) */
  path: string
}

export interface CompileSpec {
  family: 'gcc' | 'clang'
  /** language after -x / extension, e.g. "c", "c++", "objective-c", "assembler-with-cpp" */
  language: string
  input: string
  outputs: OutputFile[]
  /**
   * Arguments that write the preprocessed TU to stdout and, when the compile asks for one,
   * the dependency file to `depPath` (exactly the file the compile itself would write)
   */
  preprocessArgs(depPath: string | null, directivesOnly?: boolean): string[]
  /**
   * Whether preprocessArgs may add gcc's -fdirectives-only: the output then keeps macros
   * unexpanded and comments in, still names every file read, and costs far less to produce
   */
  directivesOnly: boolean
  /** every argument that affects the outputs, in order, output paths removed */
  keyArgs: string[]
  /** the dependency file's target text, or null when no depfile is written */
  depTarget: string | null
  /** true when the object embeds the working directory (debug info without a prefix map) */
  cwdInKey: boolean
  /**
   * Why this compile must not run on a peer (an option makes the compiler read programs or
   * files the preprocessed view does not show), or null
   */
  remoteBlocker: string | null
  /** arguments for the real compile writing the object to `objPath`; no dependency options */
  compileArgs(objPath: string): string[]
  /**
   * Depend mode: arguments for the real compile that also make the compiler list every file
   * it read in a dependency file at `depPath` (the user's own depfile, byte for byte, when the
   * compile asks for one); `userHeadersOnly` for -MMD. Null when that list could miss files: -MMD leaves out system
   * headers, so it only qualifies with -nostdinc and no system include directories.
   */
  dependCompileArgs(objPath: string, depPath: string): { args: string[]; userHeadersOnly: boolean } | null
}

export type ParseResult =
  | { cacheable: true; spec: CompileSpec }
  | { cacheable: false; reason: string }
