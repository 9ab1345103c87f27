// What every row of `npm run chaos` shares: a row's shape and its recorder (trials, failures,
// a short reason per failed trial, the figures it must show), clean-up that runs also when a
// row fails, a seeded random source (a run can be repeated exactly), the daemon's own status
// over its socket, and small real C projects with their plain-gcc objects to compare against.
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { loadConfig } from '../../src/config.js'
import { adminRequest } from '../../src/launcher/client.js'
import type { DaemonStatus } from '../../src/cli/mesh-commands.js'
import { MESHCC, type Instance } from '../../test/helpers/meshcc.js'
import { run } from './proc.js'

export const MiB = 1024 * 1024

/** One row of the table. */
export interface Row {
  /** for --only */
  id: string
  /** what the row does to meshcc */
  title: string
  /** what the issue asks it to show */
  mustShow: string
  trials: { full: number; quick: number }
  /** what one trial is ("builds", "frames", …) */
  unit: string
  run(env: RowEnv, rec: RowRecorder): Promise<void>
}

/** Rows that share a set-up (daemons, a mesh): the group tears it down after its last row. */
export interface RowGroup {
  rows: Row[]
  teardown?(): Promise<void>
  /** runs inside a network namespace of a lab the runner makes (chaos-lab.ts) */
  namespace?: boolean
}

export interface RowEnv {
  quick: boolean
  /** trials of this row in this run */
  trials: number
  /** the run's scratch directory (removed at the end unless --keep) */
  work: string
  /** random source of this row, seeded from the run's seed and the row id */
  rand: Rand
  log(msg: string): void
  cleanup: Cleanup
}

export interface RowResult {
  id: string
  title: string
  mustShow: string
  unit: string
  trials: number
  failures: number
  /** the measured figures the row must show */
  figures: string[]
  /** one short line per failed trial */
  reasons: string[]
  /** how the row was run, what a figure means */
  notes: string[]
  seconds: number
}

/** Counts trials and failures; a trial is a function that returns null when it passed, or why not. */
export class RowRecorder {
  trials = 0
  failures = 0
  readonly figures: string[] = []
  readonly reasons: string[] = []
  readonly notes: string[] = []

  /** Runs one trial; a thrown error is a failed trial with its message as the reason. */
  async trial(label: string, fn: () => Promise<string | null>): Promise<boolean> {
    this.trials++
    let why: string | null
    try {
      why = await fn()
    } catch (err) {
      why = oneLine(err)
    }
    if (why !== null) this.fail(label, why)
    return why === null
  }

  /** A failure found outside a trial (a check over all of them). */
  fail(label: string, why: string): void {
    this.failures++
    if (this.reasons.length < 50) this.reasons.push(`${label}: ${why}`)
    else if (this.reasons.length === 50) this.reasons.push('… (more failures not listed)')
  }

  figure(text: string): void { this.figures.push(text) }
  /** how the row was run: the parts are joined with spaces */
  note(...parts: string[]): void { this.notes.push(parts.join(' ')) }
}

/** An error (or anything thrown) as one line. */
export function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err)
  const first = text.split('\n')[0] ?? ''
  return first.length > 300 ? `${first.slice(0, 300)}…` : first
}

/** Clean-up steps, run last-in first-out; a failing step is reported, never thrown. */
export class Cleanup {
  private readonly steps: Array<{ what: string; fn: () => Promise<void> | void }> = []

  defer(what: string, fn: () => Promise<void> | void): void {
    this.steps.push({ what, fn })
  }

  async runAll(log: (msg: string) => void): Promise<void> {
    while (this.steps.length > 0) {
      const { what, fn } = this.steps.pop()!
      try {
        await fn()
      } catch (err) {
        log(`clean-up "${what}" failed: ${oneLine(err)}`)
      }
    }
  }
}

/** A small seeded generator (mulberry32): the same seed gives the same run. */
export class Rand {
  private state: number

  constructor(private readonly seed: number) { this.state = seed >>> 0 }

  /** 32 random bits */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0
    let t = this.state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }

  /** a whole number in [0, n) */
  int(n: number): number { return n <= 1 ? 0 : this.next() % n }
  /** a whole number in [lo, hi] */
  range(lo: number, hi: number): number { return lo + this.int(hi - lo + 1) }
  chance(p: number): boolean { return this.next() / 0x100000000 < p }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]! }
  /** a shuffled copy */
  shuffle<T>(xs: readonly T[]): T[] {
    const out = [...xs]
    for (let i = out.length - 1; i > 0; i--) {
      const j = this.int(i + 1)
      ;[out[i], out[j]] = [out[j]!, out[i]!]
    }
    return out
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n)
    let i = 0
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.next(), i)
    for (; i < n; i++) b[i] = this.next() & 0xff
    return b
  }
  /** another generator, from this one's seed and a label: the same whatever order they are made in */
  derive(label: string): Rand { return new Rand(this.seed ^ hashLabel(label)) }
}

export function hashLabel(label: string): number {
  return createHash('sha256').update(label).digest().readUInt32LE(0)
}

/** The daemon's `status` as the CLI's `status --json` gets it, straight over its socket (no CLI start-up). */
export async function daemonStatus(inst: Instance, timeoutMs = 15_000): Promise<DaemonStatusReply> {
  const text = await adminRequest(loadConfig({ ...inst.env }), 'status', { autostart: false, timeoutMs })
  return JSON.parse(text) as DaemonStatusReply
}

/** The daemon's counters (`meshcc -s --stats-format json`), over its socket. */
export async function daemonCounters(inst: Instance, timeoutMs = 15_000): Promise<Record<string, number>> {
  const raw = JSON.parse(await adminRequest(loadConfig({ ...inst.env }), 'stats', { autostart: false, timeoutMs })) as { counters: Record<string, number> }
  return raw.counters
}

/** The admin `status` reply, with the daemon's memory the CLI's type leaves out. */
export type DaemonStatusReply = DaemonStatus & { daemon: DaemonStatus['daemon'] & { memory: { rss: number }; pending_request_bytes: number; log_file: string | null } }

export const fmtMiB = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`

/**
 * `n` C units in dir/src (each a little arithmetic over two shared headers and libc's), made
 * distinct by `tag`; their mtimes set 10 s back so direct and depend mode trust them at once
 * (a file changed within the last second is never recorded).
 */
export function writeUnits(dir: string, n: number, tag: string): string[] {
  mkdirSync(join(dir, 'src'), { recursive: true })
  mkdirSync(join(dir, 'include'), { recursive: true })
  const files: Record<string, string> = {
    'include/chaos.h': `#ifndef CHAOS_H\n#define CHAOS_H\n#include <stddef.h>\n#define CHAOS_TAG "${tag}"\nstruct pair { int a; long b; };\nlong mix(const struct pair *p, size_t n);\n#endif\n`,
    'include/util.h': '#ifndef UTIL_H\n#define UTIL_H\nstatic inline long sq(long x) { return x * x; }\n#endif\n'
  }
  const units: string[] = []
  for (let i = 0; i < n; i++) {
    const u = `u${i}`
    units.push(u)
    files[`src/${u}.c`] = `#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include "chaos.h"\n#include "util.h"\n` +
      `long ${u}(const char *s) {\n  struct pair p[${4 + (i % 5)}];\n  for (size_t k = 0; k < sizeof p / sizeof p[0]; k++) { p[k].a = (int)k * ${i + 1}; p[k].b = sq((long)strlen(s) + (long)k); }\n` +
      `  return mix(p, sizeof p / sizeof p[0]) + ${i} + (long)sizeof(CHAOS_TAG);\n}\n`
  }
  const past = new Date(Date.now() - 10_000)
  for (const [rel, text] of Object.entries(files)) {
    const p = join(dir, rel)
    writeFileSync(p, text)
    utimesSync(p, past, past)
  }
  writeFileSync(join(dir, 'Makefile'), [
    `OBJS = ${units.map((u) => `obj/${u}.o`).join(' ')}`,
    'all: $(OBJS)',
    'obj/%.o: src/%.c',
    '\t@mkdir -p obj',
    '\t$(CC) $(CFLAGS) -Iinclude -c $< -o $@',
    'clean:',
    '\trm -rf obj',
    ''
  ].join('\n'))
  return units
}

/** Flags the projects are built with (no -g: the objects do not name the directory). */
export const CFLAGS = '-O2 -Wall'

/** The objects plain gcc makes of the units (compiled in `dir`, the same command line as the Makefile's), a few at a time. */
export async function plainObjects(dir: string, units: string[]): Promise<Map<string, Buffer>> {
  mkdirSync(join(dir, 'plain'), { recursive: true })
  await inParallel(units, availableParallelism(), async (u) => {
    const r = await run('gcc', [...CFLAGS.split(' '), '-Iinclude', '-c', `src/${u}.c`, '-o', `plain/${u}.o`], { cwd: dir, timeoutMs: 120_000 })
    if (r.code !== 0) throw new Error(`plain gcc of ${u}: ${r.stderr.split('\n')[0]}`)
  })
  return new Map(units.map((u) => [u, readFileSync(join(dir, 'plain', `${u}.o`))]))
}

/** fn over the items, at most `limit` at once; the first error is thrown once all have settled. */
export async function inParallel<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0
  let failure: unknown = null
  const worker = async () => {
    while (next < items.length) {
      const i = next++
      try { await fn(items[i]!, i) } catch (err) { failure ??= err }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  if (failure !== null) throw failure
}

/** Objects in dir/obj that are missing or differ from the plain ones, as "u3 (missing)", "u4 (differs)". */
export function wrongObjects(dir: string, expected: Map<string, Buffer>): string[] {
  const bad: string[] = []
  for (const [u, want] of expected) {
    const p = join(dir, 'obj', `${u}.o`)
    if (!existsSync(p)) bad.push(`${u} (missing)`)
    else if (!readFileSync(p).equals(want)) bad.push(`${u} (differs)`)
  }
  return bad
}

/** The .o files made so far in dir/obj. */
export function objectsMade(dir: string): number {
  try { return readdirSync(join(dir, 'obj')).filter((f) => f.endsWith('.o')).length } catch { return 0 }
}

/** `make -j` of the project through `meshcc gcc` with the instance's config; extra env on top. */
export function makeThrough(inst: Instance, dir: string, jobs: number, env: Record<string, string> = {}, timeoutMs = 300_000) {
  return run('make', [`-j${jobs}`, `CC=${MESHCC} gcc`, `CFLAGS=${CFLAGS}`], { cwd: dir, env: { ...inst.env, ...env }, timeoutMs })
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** Polls fn until it gives a value or ms pass: the value, or undefined. */
export async function pollFor<T>(ms: number, fn: () => Promise<T | undefined> | T | undefined, everyMs = 100): Promise<T | undefined> {
  const end = Date.now() + ms
  for (;;) {
    try {
      const v = await fn()
      if (v !== undefined) return v
    } catch { /* not yet */ }
    if (Date.now() > end) return undefined
    await sleep(everyMs)
  }
}
