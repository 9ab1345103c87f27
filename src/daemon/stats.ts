// Counters that survive restarts. Each daemon keeps the increments it has not yet saved and
// folds them into <cache dir>/stats.json under a lock, so two daemons sharing one cache
// directory add up instead of overwriting each other. Launchers that could not reach any
// daemon leave one line each in a journal, folded in at the next save.
import { appendFileSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Logger } from '../log.js'

export const COUNTERS = [
  'compile_requests', 'cache_hits', 'direct_hits', 'cache_misses', 'non_cacheable', 'local_compiles', 'remote_compiles',
  'compile_failures', 'fallbacks', 'remote_retries', 'cache_errors', 'cache_writes', 'directives_only',
  // hits found after a local miss: in the mesh ([cache] shared), in the second tier ([cache] remote)
  'mesh_hits', 'tier_hits',
  // of those, found through a member's manifest set (the files hashed here, no preprocessor run)
  'shared_manifest_hits',
  // manifest sets from the mesh or the tier that named a file or variable the command does not read
  'shared_sets_refused',
  // remote jobs also started here because their builder was slow, and those the compile here won
  'hedged', 'hedge_won_local',
  // misses a peer could take that are compiled here because a remote job would cost more (a compiler probe)
  'kept_here'
] as const
export type Counter = (typeof COUNTERS)[number]

/** The counters that come with a count per reason, and where those are kept. */
const REASON_MAPS = ['non_cacheable_reasons', 'fallback_reasons', 'retry_reasons', 'kept_here_reasons'] as const
type ReasonMap = (typeof REASON_MAPS)[number]
type Reasons = Record<ReasonMap, Record<string, number>>

/** The same counts for the calls of one compiler family ("c", "rust"). */
export interface FamilyData extends Reasons {
  counters: Partial<Record<Counter, number>>
}

export interface StatsData extends Reasons {
  counters: Record<Counter, number>
  /** milliseconds summed over hits, for the average hit time */
  hit_time_ms: number
  /** the counts split by compiler family */
  families: Record<string, FamilyData>
}

/** What the compile pipeline counts for one family: each call counts in the totals and in the family's own. */
export interface FamilyStats {
  readonly name: string
  inc(counter: Counter, n?: number): void
  nonCacheable(reason: string): void
  fallback(reason: string): void
  retry(reason: string): void
  /** a miss compiled here by choice (kept_here) */
  keptHere(reason: string): void
  hitTime(ms: number): void
}

const FAMILY_NAME = /^[a-z][a-z0-9_-]{0,15}$/

const STATS_FILE = 'stats.json'

/** An error as one line: the errno code and what it means (EROFS, not a stack). */
function errMessage(err: unknown): string {
  const e = err as NodeJS.ErrnoException
  return e.code ? `${e.code} (${e.message.split('\n')[0]})` : String(e.message ?? err).split('\n')[0]
}
const JOURNAL_FILE = 'fallbacks.journal'

function emptyReasons(): Reasons {
  return Object.fromEntries(REASON_MAPS.map((k) => [k, {}])) as Reasons
}

function emptyData(): StatsData {
  return {
    counters: Object.fromEntries(COUNTERS.map((c) => [c, 0])) as Record<Counter, number>,
    ...emptyReasons(),
    hit_time_ms: 0,
    families: {}
  }
}

function emptyFamily(): FamilyData {
  return { counters: {}, ...emptyReasons() }
}

function addReasons(into: Record<string, number>, from: Record<string, number>): void {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v
}

function addData(into: StatsData, from: StatsData): StatsData {
  for (const c of COUNTERS) into.counters[c] += from.counters[c]
  for (const k of REASON_MAPS) addReasons(into[k], from[k])
  into.hit_time_ms += from.hit_time_ms
  for (const [name, f] of Object.entries(from.families)) {
    const to = (into.families[name] ??= emptyFamily())
    for (const c of COUNTERS) if (f.counters[c]) to.counters[c] = (to.counters[c] ?? 0) + f.counters[c]!
    for (const k of REASON_MAPS) addReasons(to[k], f[k])
  }
  return into
}

/** A saved family breakdown, keeping only well-formed numbers (the file may be old or damaged). */
function readFamilies(saved: unknown): Record<string, FamilyData> {
  const out: Record<string, FamilyData> = {}
  if (typeof saved !== 'object' || saved === null) return out
  for (const [name, f] of Object.entries(saved as Record<string, Partial<FamilyData>>)) {
    if (!FAMILY_NAME.test(name) || typeof f !== 'object' || f === null) continue
    const d = emptyFamily()
    for (const c of COUNTERS) {
      const v = f.counters?.[c]
      if (typeof v === 'number' && Number.isFinite(v)) d.counters[c] = v
    }
    for (const k of REASON_MAPS) {
      for (const [r, v] of Object.entries(f[k] ?? {})) if (typeof v === 'number' && Number.isFinite(v)) d[k][r] = v
    }
    out[name] = d
  }
  return out
}

/** Called by a launcher that compiled on its own: one appended line, no lock needed. */
export function journalFallback(cacheDir: string, reason: string): void {
  try {
    mkdirSync(cacheDir, { recursive: true, mode: 0o700 })
    appendFileSync(join(cacheDir, JOURNAL_FILE), reason.replace(/\n/g, ' ').slice(0, 200) + '\n')
  } catch {
    // nowhere to record it; the compile itself already succeeded or failed on its own
  }
}

/** A lock directory (mkdir is atomic); a lock older than 10 s is taken to be left by a crash. */
function withLock<T>(dir: string, fn: () => T): T {
  const lock = join(dir, 'stats.lock')
  for (let attempt = 0; ; attempt++) {
    try {
      mkdirSync(lock)
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      try {
        if (Date.now() - statSync(lock).mtimeMs > 10_000) rmSync(lock, { recursive: true, force: true })
      } catch { /* gone already */ }
      if (attempt > 2000) throw new Error('stats lock busy')
      const until = Date.now() + 2
      while (Date.now() < until) { /* short spin: the holder writes one small file */ }
    }
  }
  try {
    return fn()
  } finally {
    rmSync(lock, { recursive: true, force: true })
  }
}

/**
 * How long unsaved counts may wait while compiles come in. Each save is a locked
 * read-merge-write-rename on the daemon's one thread; every 2 s it took about 2.8 s of a kernel
 * build's daemon profile. A clean stop and every read of the counts save at once, so only a
 * crash can lose counts, at most this much.
 */
export const STATS_SAVE_INTERVAL_MS = 30_000

export class Stats {
  private pending = emptyData()
  private dirty = false
  private saveFailing = false
  private lastSave = Date.now()

  constructor(private readonly dir: string, private readonly log: Logger) {
    // an unusable directory costs saving, not counting (see flush)
    try { mkdirSync(dir, { recursive: true, mode: 0o700 }) } catch { /* reported at the first save */ }
  }

  inc(counter: Counter, n = 1): void {
    this.pending.counters[counter] += n
    this.dirty = true
  }

  nonCacheable(reason: string): void {
    this.counted('non_cacheable', 'non_cacheable_reasons', reason)
  }

  fallback(reason: string): void {
    this.counted('fallbacks', 'fallback_reasons', reason)
  }

  /** a remote attempt that failed and was retried elsewhere or locally */
  retry(reason: string): void {
    this.counted('remote_retries', 'retry_reasons', reason)
  }

  /** a miss a peer could take, compiled here because a remote job would cost more */
  keptHere(reason: string): void {
    this.counted('kept_here', 'kept_here_reasons', reason)
  }

  private counted(counter: Counter, map: ReasonMap, reason: string): void {
    this.inc(counter)
    this.pending[map][reason] = (this.pending[map][reason] ?? 0) + 1
  }

  hitTime(ms: number): void {
    this.pending.hit_time_ms += ms
    this.dirty = true
  }

  /** Counting for one compiler family: the totals and the family's share together. */
  family(name: string): FamilyStats {
    let view = this.familyViews.get(name)
    if (!view) this.familyViews.set(name, (view = this.makeFamilyView(name)))
    return view
  }

  private readonly familyViews = new Map<string, FamilyStats>()

  private makeFamilyView(name: string): FamilyStats {
    const own = () => (this.pending.families[name] ??= emptyFamily())
    const reason = (key: ReasonMap, r: string) => {
      const f = own()[key]
      f[r] = (f[r] ?? 0) + 1
    }
    const ownInc = (counter: Counter, n = 1) => {
      const c = own().counters
      c[counter] = (c[counter] ?? 0) + n
    }
    return {
      name,
      inc: (counter, n = 1) => { this.inc(counter, n); ownInc(counter, n) },
      nonCacheable: (r) => { this.nonCacheable(r); ownInc('non_cacheable'); reason('non_cacheable_reasons', r) },
      fallback: (r) => { this.fallback(r); ownInc('fallbacks'); reason('fallback_reasons', r) },
      retry: (r) => { this.retry(r); ownInc('remote_retries'); reason('retry_reasons', r) },
      keptHere: (r) => { this.keptHere(r); ownInc('kept_here'); reason('kept_here_reasons', r) },
      hitTime: (ms) => this.hitTime(ms)
    }
  }

  private readSaved(): StatsData {
    const data = emptyData()
    try {
      const saved = JSON.parse(readFileSync(join(this.dir, STATS_FILE), 'utf8')) as Partial<StatsData>
      for (const c of COUNTERS) {
        const v = saved.counters?.[c]
        if (typeof v === 'number' && Number.isFinite(v)) data.counters[c] = v
      }
      for (const k of REASON_MAPS) addReasons(data[k], saved[k] ?? {})
      if (typeof saved.hit_time_ms === 'number') data.hit_time_ms = saved.hit_time_ms
      data.families = readFamilies(saved.families)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn(`stats file unreadable, starting from zero: ${(err as Error).message}`)
    }
    return data
  }

  private ingestJournal(into: StatsData): void {
    const journal = join(this.dir, JOURNAL_FILE)
    const taken = `${journal}.${process.pid}`
    try {
      renameSync(journal, taken)
    } catch {
      return
    }
    for (const line of readFileSync(taken, 'utf8').split('\n')) {
      if (!line) continue
      into.counters.fallbacks++
      into.counters.compile_requests++
      into.fallback_reasons[line] = (into.fallback_reasons[line] ?? 0) + 1
      this.log.warn(`launcher compiled without the daemon: ${line}`)
    }
    rmSync(taken, { force: true })
  }

  private write(data: StatsData): void {
    const file = join(this.dir, STATS_FILE)
    const tmp = `${file}.${process.pid}.tmp`
    writeFileSync(tmp, JSON.stringify(data))
    renameSync(tmp, file)
  }

  /** Fold unsaved increments and the launcher journal into the stats file. */
  flush(): void {
    this.lastSave = Date.now()
    try {
      withLock(this.dir, () => {
        const data = addData(this.readSaved(), this.pending)
        this.ingestJournal(data)
        this.write(data)
      })
      this.pending = emptyData()
      this.dirty = false
      this.saveFailing = false
    } catch (err) {
      // once per failing streak: a read-only directory would say so at every save
      if (!this.saveFailing) this.log.warn(`could not save statistics in ${this.dir} (they are kept in memory until it works): ${errMessage(err)}`)
      this.saveFailing = true
    }
  }

  /** Save when there is something to save and the last save is STATS_SAVE_INTERVAL_MS old. */
  flushIfDue(): void {
    if (this.dirty && Date.now() - this.lastSave >= STATS_SAVE_INTERVAL_MS) this.flush()
  }

  /**
   * Totals as saved plus what this daemon has not saved yet: on a read-only or full cache
   * directory nothing can be saved, and the counts must still be right.
   */
  snapshot(): StatsData {
    this.flush()
    return addData(this.readSaved(), this.pending)
  }

  zero(): void {
    withLock(this.dir, () => {
      this.ingestJournal(emptyData())
      this.write(emptyData())
    })
    this.pending = emptyData()
    this.dirty = false
  }
}
