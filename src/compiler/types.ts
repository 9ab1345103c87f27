// The seam between the daemon and a compiler family: a family turns an argument list into
// either "not cacheable, because …" or a CompileSpec saying how to preprocess, what goes
// into the cache key, which files a compile writes and how to redirect them to temp files.

export interface OutputFile {
  /** name of the blob in a cache entry */
  name: 'obj' | 'dep'
  /** where the user expects it, as given (relative to cwd or absolute) */
  path: string
}

export interface PathUse {
  /** debug info (the compiler's or the assembler's): it names the working directory and the files */
  debug: boolean
  /** -fdebug-compilation-dir's value: the working directory as debug info names it */
  debugCompDir: string | null
  /** -fdebug-prefix-map and -ffile-prefix-map, in order: names in debug info */
  debugMaps: Array<[string, string]>
  /** -fmacro-prefix-map and -ffile-prefix-map, in order: __FILE__ and the like */
  macroMaps: Array<[string, string]>
  /** an option or language that writes line-marker names into the object itself (sanitizers, LTO, assembler), or null */
  namesInCode: string | null
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
  /** true when the object embeds the working directory as it is (debug info without a prefix map covering it) */
  cwdInKey: boolean
  /** how file names can reach the outputs, and the build's prefix maps for them (path-forms.ts) */
  paths: PathUse
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
