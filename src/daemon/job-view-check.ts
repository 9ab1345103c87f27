// When a builder must still re-preprocess a unit to compare it with the client's.
//
// A job's tree holds exactly the toolchain and the files the client's preprocessor entered
// (job-workspace.ts), so an include search, an #include_next or a header guard finds on the
// builder what it found on the client, and the unit compiles to the client's object without
// a second preprocessing (which cost a builder a sandbox start and a third of a compile per
// job). Four things can still tell the two trees apart, and each is visible in the inputs:
//   - `__has_include` (and `__has_include_next`): true on the client for a file it never
//     entered, which no tree holds;
//   - `__TIMESTAMP__`: the source's mtime, which differs here;
//   - `#pragma once` in a content the job holds at two paths: gcc tells such copies apart by
//     their mtimes, which are the builder's own;
//   - a path that walks through a directory with `..` (the job's `dirs` beyond its cwd): on
//     the client that directory may be a link, resolved elsewhere;
//   - a file read without a line marker: `#pragma GCC dependency` (and its mtime test), `#embed`
//     and `__has_embed`: the client entered no marker for it, so no tree holds it.
// A job that shows one of them is checked as before (the check's error then names the cause);
// the others are not.
import type { JobFile, JobHeader } from '../mesh/protocols/compile-job.js'

const HAS_INCLUDE = 1
const TIMESTAMP = 2
const PRAGMA_ONCE = 4
const READS_UNMARKED = 8

/** contents remembered by hash; cleared whole past this many (a build's headers fit) */
const MAX_MEMO = 200_000
const PRAGMA_ONCE_RE = /pragma\s+once|_Pragma\s*\(\s*"\s*once/
const UNMARKED_RE = /pragma\s+GCC\s+dependency|_Pragma\s*\(\s*"\s*GCC\s+dependency|#\s*embed\b|__has_embed/

export class JobViewCheck {
  private readonly memo = new Map<string, number>()

  /** Why this job must be re-preprocessed here, or null when its tree is enough. */
  reason(header: Pick<JobHeader, 'cwd' | 'dirs' | 'files'>, files: JobFile[]): string | null {
    const walks = header.dirs.find((d) => d !== header.cwd)
    if (walks !== undefined) return `a path walks through ${walks} with ".."`
    const onceSeen = new Set<string>()
    for (const [i, f] of files.entries()) {
      const hash = header.files[i]!.hash
      const flags = this.flagsOf(hash, f.data)
      if (flags & HAS_INCLUDE) return `${f.path} uses __has_include`
      if (flags & TIMESTAMP) return `${f.path} uses __TIMESTAMP__`
      if (flags & READS_UNMARKED) return `${f.path} reads a file without a line marker (#pragma GCC dependency, #embed)`
      if (flags & PRAGMA_ONCE) {
        if (onceSeen.has(hash)) return `${f.path} has #pragma once and a copy at another path`
        onceSeen.add(hash)
      }
    }
    return null
  }

  private flagsOf(hash: string, data: Buffer): number {
    let flags = this.memo.get(hash)
    if (flags !== undefined) return flags
    flags = (data.includes('__has_include') ? HAS_INCLUDE : 0) | (data.includes('__TIMESTAMP__') ? TIMESTAMP : 0)
    if (data.includes('once') && PRAGMA_ONCE_RE.test(data.toString('latin1'))) flags |= PRAGMA_ONCE
    if ((data.includes('dependency') || data.includes('embed')) && UNMARKED_RE.test(data.toString('latin1'))) flags |= READS_UNMARKED
    if (this.memo.size >= MAX_MEMO) this.memo.clear()
    this.memo.set(hash, flags)
    return flags
  }
}
