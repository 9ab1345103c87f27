/** how a toolchain is discovered: a C compiler's driver and programs, or rustc with its sysroot */
export type CompilerFamily = 'gcc' | 'clang' | 'rustc'

/** Everything a compiler needs to turn a preprocessed translation unit into an object. */
export interface ToolchainSpec {
  /** absolute path as the client invoked it, e.g. /usr/bin/gcc; run by this path in the sandbox */
  compiler: string
  /** absolute host paths (files and the symlinks leading to them), sorted, deduplicated */
  files: string[]
}
