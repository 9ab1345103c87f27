// The seam between the compile pipeline (src/daemon/compile-service.ts) and a compiler family
// (C via gcc/clang in c-family.ts, Rust in rust-family.ts). A family turns one request into a
// CompileJob or a reason it cannot be cached; the job supplies what only the family knows (the
// parts of its keys, how to run a compile that lists what it read, which files it writes and
// how a stored result maps onto this build); the pipeline does every lookup, execution (here
// or on a peer), store and replay the same way for all families. A new family is one file
// that implements CompilerFamily, listed in CompileService.families (compile-service.ts).
import { lstatSync, realpathSync } from 'node:fs'
import { basename, dirname, isAbsolute, resolve } from 'node:path'
import type { CacheEntry } from '../cache/entry-format.js'
import type { FileHash, FileHasher } from '../cache/file-hashes.js'
import type { FileSet } from '../cache/manifest.js'
import type { CompileRequest } from '../daemon/launcher-protocol.js'
import type { Logger } from '../log.js'
import type { FamilyStats } from '../daemon/stats.js'
import type { Semaphore } from '../util/semaphore.js'
import type { InputSet } from './inputs.js'

/** A file a compile writes. */
export interface JobOutput {
  /** name of its blob in a cache entry */
  name: string
  /** where the user expects it, as given (relative to cwd or absolute) */
  path: string
}

/** What the daemon lends a family to plan a job. */
export interface FamilyContext {
  /** file content hashes, memoised by stat */
  hasher: FileHasher
  /** compiler runs made only to key a job (the preprocessor, say): bounded apart from compiles */
  pre: Semaphore
  /** misses may be sent to mesh peers (a family may key such jobs differently) */
  remote: boolean
  /** direct mode (manifests) is on */
  direct: boolean
  log: Logger
  /** counters for this family */
  stats: FamilyStats
}

export interface CompilerFamily {
  /** the label in stats and logs: "c", "rust" */
  readonly name: string
  /** whether this family compiles with the compiler the request names (checked in order, cheaply) */
  claims(req: CompileRequest): boolean
  /** the job, or why the call cannot be cached (it then runs untouched) */
  plan(req: CompileRequest, ctx: FamilyContext): Promise<CompileJob | { notCacheable: string }>
}

/** A key from the command and the main source alone, for a manifest lookup. */
export interface DirectKey {
  key: string
  /** the source was saved a moment ago (the edit-compile loop) */
  sourceFresh: boolean
}

/** What a compile read, from the compiler itself (a depfile, rustc's dep-info). */
export interface Dependencies {
  /** absolute paths of every file read */
  files: string[]
  /** environment variables read, with the value seen (null: unset); a family may add facts of its own (CompileJob.fact) */
  env: Array<[string, string | null]>
  /** the list leaves out system headers (-MMD): a self-declared system header makes it untrustworthy */
  userHeadersOnly: boolean
}

/** What a compile will read, listed by the compiler before compiling (rustc --emit=dep-info), and what a peer needs to run it. */
export interface ListedInputs {
  /** the files and variables that key the result, as a compile's own list would name them */
  deps: Dependencies
  /** every file a peer's compile reads: the listed ones and the compiled crates it loads */
  ship: InputSet
}

/** A finished compile's output files, by blob name. */
export type OutputBlobs = Array<{ name: string; data: Buffer }>

/** One compiler run here: its arguments and the temp files that are ours. */
export interface RunPlan {
  args: string[]
  /** paths of our own temp files: a diagnostic naming one would differ from the plain compiler's */
  temps: string[]
  /** environment variables to drop from the request's for this run */
  dropEnv?: readonly string[]
  /**
   * variables, set over the request's, by which the run joins the build's jobserver; a run that
   * may be killed (a hedge) or that the build does not wait for (a verifier's recompile) goes
   * without: a killed compiler takes the tokens it holds, and the build goes on with fewer
   */
  jobserverEnv?: Record<string, string>
  /** the run writes the outputs where the user expects them (rustc into --out-dir): a miss need not write them again */
  inPlace?: boolean
  /**
   * After a successful run and collect(): move the run's own outputs where the user expects
   * them, a rename each (atomic, and no second write of bytes the compiler just wrote); false
   * when one could not be moved, and the outputs are written from the entry instead
   */
  place?(): Promise<boolean>
  /**
   * After a successful run: the outputs to store and hand back, and (depend plans) what the
   * compile read; null outputs when one is missing; null deps when the list cannot be had.
   */
  collect(): Promise<{ outputs: OutputBlobs | null; deps: Dependencies | null }>
}

/** A key from the compiler's own view of the inputs, taken before compiling (C: preprocessed text). */
export interface ContentKey {
  key: string
  /** the files behind the key, for a manifest and for a job sent to a peer; null when not collected */
  inputs: InputSet | null
  /** the inputs with their hashes, taken once however many ask */
  hashed?: Promise<{ set: InputSet; hashes: Array<FileHash | null> }>
}

/** A content key's files with their hashes, hashed once however many ask (a peer's job, the manifest). */
export function hashedInputs(k: ContentKey, hasher: FileHasher): Promise<{ set: InputSet; hashes: Array<FileHash | null> }> {
  const set = k.inputs
  if (set === null) return Promise.reject(new Error('no input set: the preprocessed output was not scanned'))
  k.hashed ??= Promise.all(set.files.map((p) => hasher.hash(p))).then((hashes) => ({ set, hashes }))
  return k.hashed
}

/**
 * Where a command can legitimately read, and which facts its family records: what a manifest
 * set another member published may name. Without this check a member who knows a command that
 * someone runs could publish a set naming any file (an SSH key, /etc/shadow) or variable (a
 * secret) with a guessed hash or value, and learn from whether that member then fetches the
 * set's result whether the guess was right.
 */
export interface SharedReach {
  /** absolute directories under which the command may read (the working directory, the toolchain's, those its arguments name) */
  roots: string[]
  /** a manifest fact (Dependencies.env) of this name is one the family records for this command */
  fact(name: string): boolean
}

/**
 * Why a manifest set that came off the network must not be checked here, or null: a fact the
 * family does not record, or a file that no compiler would list (empty, a NUL, a trailing "/") or
 * whose real path (symlinks and ".." resolved) lies under none of the real roots. Nothing of a
 * file is read; one missing here is left to the check that follows (the set cannot match).
 */
export async function sharedSetRefusal(set: Pick<FileSet, 'files' | 'env'>, cwd: string, reach: SharedReach): Promise<string | null> {
  const badFact = (set.env ?? []).find(([name]) => !reach.fact(name))
  if (badFact) return `variable ${JSON.stringify(badFact[0]).slice(0, 200)}`
  const roots = [...new Set(reach.roots.map(realPath))].filter((r): r is string => r !== null)
  const under = (p: string) => roots.some((r) => p === r || p.startsWith(r === '/' ? r : `${r}/`))
  const bad = set.files.findIndex(([p]) => !plainPath(p))
  // a file missing here (or unreadable to this user) makes the set no match: nothing to refuse
  const reals = bad >= 0 ? [] : realPaths(set.files.map(([p]) => (isAbsolute(p) ? p : resolve(cwd, p))))
  const i = bad >= 0 ? bad : reals.findIndex((r) => r !== null && !under(r))
  return i < 0 ? null : `file ${JSON.stringify(set.files[i][0]).slice(0, 300)}`
}

/**
 * Where a path really leads, or null. On this thread: a promise round trip through the thread
 * pool per file cost a mesh hit of a kernel unit (a few hundred headers) more CPU than the
 * syscalls themselves.
 */
function realPath(p: string): string | null {
  try {
    return realpathSync.native(p)
  } catch {
    return null
  }
}

/**
 * realPath of each path, for a set's hundreds of headers in a few directories: a file that is no
 * symlink lies in the real path of its directory, so that is resolved once per directory and
 * the file only looked at (lstat); a symlink, ".", ".." or a missing file is resolved whole.
 */
function realPaths(paths: string[]): Array<string | null> {
  const dirs = new Map<string, string | null>()
  return paths.map((p) => {
    const base = basename(p)
    if (base === '' || base === '.' || base === '..') return realPath(p)
    let st
    try {
      st = lstatSync(p, { throwIfNoEntry: false })
    } catch {
      st = undefined // not a directory on the way, no permission: as realpath sees it
    }
    if (!st || st.isSymbolicLink()) return realPath(p)
    const dir = dirname(p)
    let real = dirs.get(dir)
    if (real === undefined) dirs.set(dir, (real = realPath(dir)))
    return real === null ? null : real === '/' ? `/${base}` : `${real}/${base}`
  })
}

/**
 * A path a compiler's own list could hold. gcc names its system headers through ".."
 * ("/usr/lib/gcc/x86_64-linux-gnu/12/../../../../include/c++/12/string"), so ".." is allowed
 * here: what decides is where the path really leads (the roots check on its real path).
 */
function plainPath(p: string): boolean {
  return p !== '' && !p.includes('\0') && !p.endsWith('/')
}

/** The replay of a stored entry for this request: output files to write and what to print. */
export interface Restore {
  files: Array<{ path: string; data: Buffer }>
  stdout: Buffer
  stderr: Buffer
}

export interface CompileJob {
  readonly family: string
  /** the source, for logs */
  readonly input: string
  /** every file the compile writes: each must be a regular file or absent */
  readonly outputs: JobOutput[]
  /** why this job must not run on a peer (the option's name, for a fallback reason), or null */
  readonly remoteBlocker: string | null
  /** a file changed less than this before the request is not recorded in a manifest */
  readonly tooNewMs: number
  /** a manifest records files under the working directory relative to it (the key does not hold where the build lies) */
  readonly relativeFiles?: boolean
  /**
   * A manifest set as this family records it: each file in the form a lookup resolves against
   * its own working directory, and the facts (see fact) a lookup must match as well. Absent:
   * absolute paths (relative under the working directory with relativeFiles), `env` as given.
   */
  recordSet?(files: Array<[string, string]>, env: Array<[string, string | null]>): Omit<FileSet, 'result'>
  /** the direct-mode key, or null when the source cannot key one */
  directKey(requestStart: number): Promise<DirectKey | null>
  /** a compile here that also lists what it read (depend mode), or null when the list could miss files */
  dependPlan(): RunPlan | null
  /**
   * The content key, taken before compiling; 'failed' when the compiler refused the input (the
   * real compile reports it), a reason when it shows the call cannot be cached. Absent in a
   * family that keys only through depend mode.
   */
  /** `recheck`: the key taken again for the verifier, not a unit of the build (its counters stay) */
  contentKey?(recheck?: boolean): Promise<ContentKey | 'failed' | { notCacheable: string }>
  /** a plain compile here for a content-keyed miss (with contentKey) */
  /** `objectOnly`: the verifier's compile, which compares the outputs the compiler writes (a manifest hit ran no preprocessor for the depfile) */
  compilePlan?(opts?: { objectOnly?: boolean }): RunPlan
  /** the job as the mesh runner ships it, for a content-keyed miss; absent: never shipped */
  remoteJob?(k: ContentKey): import('../daemon/compile-service.js').RemoteJob
  /**
   * Why this miss is compiled here although a peer could take it (a remote job would cost more
   * than the compile: a compiler probe), for the kept_here count; null: it may go remote.
   */
  keepHere?(k: ContentKey): Promise<string | null>
  /** the outputs of a compile a peer ran for this job; rejects when they cannot be this build's */
  remoteOutputs?(obj: Buffer): Promise<OutputBlobs>
  /** a peer's stdout or stderr as the compile here would have written it (the paths of this build) */
  remoteText?(b: Buffer): Buffer
  /**
   * The inputs, listed by the compiler before compiling, for a miss that may go to a peer. The
   * result is keyed as a depend-mode compile's own list keys it, so either way finds the
   * other's entries. 'failed': the compiler refused the input (the compile here reports it);
   * `local`: the miss stays here, and why. Absent: a family keyed by contentKey or depend mode.
   */
  listInputs?(): Promise<ListedInputs | 'failed' | { local: string }>
  /** a stored entry as this request must see it (paths of this build), or null when it does not fit */
  restore(entry: CacheEntry): Restore | null | Promise<Restore | null>
  /**
   * The value of a fact a manifest recorded (Dependencies.env) as this request sees it;
   * absent: facts are environment variables
   */
  fact?(name: string): string | null
  /** where the command may read and which facts it records, for a manifest set another member published; absent: such sets are refused */
  sharedReach?(): SharedReach
  /** small strings stored with an entry, read back by restore() */
  entryMeta(): Record<string, string>
  /** remove the job's temp files */
  dispose(): Promise<void>
}
