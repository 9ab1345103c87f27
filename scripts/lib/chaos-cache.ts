// The local cache under stress: entries and manifests damaged on disk, 500 compiles at once
// into one daemon, and a cache directory on a full filesystem. Each row has its own daemon
// (test/helpers/meshcc.ts: own config, socket and cache directory, mesh off) driven by the real
// launcher, and compares every object with plain gcc's.
import { execFileSync } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { createInstance, type Instance } from '../../test/helpers/meshcc.js'
import {
  CFLAGS, daemonCounters, daemonStatus, fmtMiB, inParallel, makeThrough, plainObjects, pollFor, writeUnits, wrongObjects,
  type Rand, type Row, type RowEnv, type RowGroup
} from './chaos-common.js'

/** A daemon of this row's own, stopped (and its directory removed) by the row's clean-up. */
function instance(env: RowEnv, name: string, extraToml = ''): Instance {
  const inst = createInstance(extraToml, name)
  env.cleanup.defer(`stop ${name}`, () => inst.stop())
  return inst
}

/** Stops the daemon and waits until it is gone: its writes are on disk, its memory forgotten. */
async function stopDaemon(inst: Instance): Promise<void> {
  await inst.run(['--stop-server'])
  await pollFor(10_000, () => (inst.daemonPid() === null ? true : undefined))
}

type Target = 'entry' | 'manifest'
type Damage = 'flip' | 'truncate' | 'zero' | 'swap'

/** Each unit's manifest and the entry it points at, read from the manifests themselves. */
function cacheFilesByUnit(cacheDir: string, project: string, units: string[]): Map<string, Record<Target, string>> {
  const out = new Map<string, Record<Target, string>>()
  const mdir = join(cacheDir, 'manifests')
  for (const sub of existsSync(mdir) ? readdirSync(mdir) : []) {
    for (const name of readdirSync(join(mdir, sub))) {
      const file = join(mdir, sub, name)
      // a line with the checksum, then the JSON (src/cache/manifest.ts)
      const text = readFileSync(file, 'utf8')
      const doc = JSON.parse(text.slice(text.indexOf('\n') + 1)) as { sets: Array<{ files: Array<[string, string]>; result: string }> }
      const set = doc.sets[0]
      // manifests record files under the working directory relative to it (make runs in the project)
      const unit = units.find((u) => set?.files.some(([p]) => resolve(project, p) === join(project, 'src', `${u}.c`)))
      if (!unit || !set) continue
      out.set(unit, { manifest: file, entry: join(cacheDir, set.result.slice(0, 2), set.result) })
    }
  }
  return out
}

/** Damages one file as `kind` says (swap: with `other`); the bytes are the seeded generator's. */
function damage(rand: Rand, kind: Damage, file: string, other?: string): void {
  const data = readFileSync(file)
  switch (kind) {
    case 'flip': {
      const at = rand.int(data.length)
      data[at]! ^= rand.range(1, 255)
      writeFileSync(file, data)
      break
    }
    case 'truncate': truncateSync(file, rand.int(data.length)); break
    case 'zero': writeFileSync(file, Buffer.alloc(data.length)); break
    case 'swap': {
      writeFileSync(file, readFileSync(other!))
      writeFileSync(other!, data)
      break
    }
  }
}

const cacheDamage: Row = {
  id: 'cache-damage',
  title: 'cache entries and manifests flipped, truncated, zeroed, swapped between keys',
  mustShow: '0 wrong objects; every damaged entry counted in `cache_errors`',
  trials: { full: 10, quick: 2 },
  unit: 'rounds',
  async run(env, rec) {
    const inst = instance(env, 'chaos-damage')
    const project = join(inst.dir, 'project')
    const units = writeUnits(project, 10, 'damage')
    // a file changed within the last second is too new to go into a manifest (its ctime is now,
    // whatever utimes set): on a fast machine the first build came within it and stored no sets
    await new Promise((res) => setTimeout(res, 1100))
    const plain = await plainObjects(project, units)
    const tally: Record<string, number> = {}
    let damaged = 0
    let counted = 0
    let wrongTotal = 0
    const build = async (what: string): Promise<string | null> => {
      rmSync(join(project, 'obj'), { recursive: true, force: true })
      const r = await makeThrough(inst, project, 2)
      if (r.code !== 0) return `${what}: make exited ${r.code}: ${r.stderr.trim().split('\n').pop()}`
      const wrong = wrongObjects(project, plain)
      wrongTotal += wrong.length
      return wrong.length > 0 ? `${what}: ${wrong.length} wrong objects (${wrong.slice(0, 3).join(', ')})` : null
    }
    const first = await build('first build')
    if (first) throw new Error(first)
    for (let round = 0; round < env.trials; round++) {
      await rec.trial(`round ${round + 1}`, async () => {
        const before = await daemonCounters(inst)
        await stopDaemon(inst)
        const files = cacheFilesByUnit(inst.cacheDir, project, units)
        if (files.size !== units.length) {
          await inst.run(['--start-server']) // the next round asks it for its counters
          return `only ${files.size} of ${units.length} units have a manifest and an entry before the damage`
        }
        // every unit gets one kind of damage to its entry or to its manifest, never both (a damaged
        // manifest hides its entry, which is then rewritten unread): per target a flip, a
        // truncation, a zeroing and a swap of two units' files
        const order = env.rand.shuffle(units)
        const kinds: Damage[] = ['flip', 'truncate', 'zero', 'swap', 'swap']
        const plan = order.map((u, i) => ({ u, target: (i % 2 === 0 ? 'entry' : 'manifest') as Target, kind: kinds[Math.floor(i / 2)]! }))
        for (const target of ['entry', 'manifest'] as Target[]) {
          const [a, b] = plan.filter((p) => p.target === target && p.kind === 'swap')
          damage(env.rand, 'swap', files.get(a!.u)![target], files.get(b!.u)![target])
        }
        for (const p of plan) if (p.kind !== 'swap') damage(env.rand, p.kind, files.get(p.u)![p.target])
        for (const p of plan) tally[`${p.target} ${p.kind}`] = (tally[`${p.target} ${p.kind}`] ?? 0) + 1
        damaged += plan.length
        const why = await build('the build after the damage')
        const after = await daemonCounters(inst)
        const errors = after.cache_errors! - before.cache_errors!
        counted += errors
        if (why) return why
        if (errors !== plan.length) return `${plan.length} files damaged, ${errors} counted in cache_errors (${plan.map((p) => `${p.u}: ${p.target} ${p.kind}`).join(', ')})`
        return null
      })
    }
    rec.figure(`${wrongTotal} wrong objects; ${damaged} files damaged, ${counted} counted in cache_errors`)
    rec.note(`${units.length} units (direct mode, depend-mode misses), built with make -j2. Each round stops the daemon (its writes are then on disk), damages every unit's entry or its manifest`,
      `(${Object.entries(tally).map(([k, n]) => `${k} ×${n}`).join(', ')}; a flip XORs one random byte with a random non-zero value, a truncation cuts at a random length, a zeroing keeps the length, a swap exchanges two units' files),`,
      'then builds again: every object must equal plain gcc\'s, and cache_errors must grow by exactly the number of damaged files.')
  }
}

const concurrent: Row = {
  id: 'concurrent',
  title: '500 concurrent compiles (hits and misses) into one daemon',
  mustShow: '0 failures; RSS after, reported',
  trials: { full: 3, quick: 1 },
  unit: 'bursts',
  async run(env, rec) {
    const inst = instance(env, 'chaos-conc')
    const perBurst = env.quick ? 100 : 500
    const units = perBurst / 2
    const started = await inst.run(['--start-server'])
    if (started.code !== 0) throw new Error(`daemon did not start: ${started.stderr.trim()}`)
    const rss: string[] = []
    let fallbacks = 0
    for (let t = 0; t < env.trials; t++) {
      await rec.trial(`burst ${t + 1}`, async () => {
        const dir = join(inst.dir, `burst${t}`)
        const names = writeUnits(dir, units, `burst-${t}`)
        const plain = await plainObjects(dir, names)
        mkdirSync(join(dir, 'obj'), { recursive: true })
        const compile = (u: string, out: string) => inst.run(['gcc', ...CFLAGS.split(' '), '-Iinclude', '-c', `src/${u}.c`, '-o', `obj/${out}.o`], { cwd: dir, timeoutMs: 600_000 })
        // half of the units are in the cache already: hits; the other half misses, each racing its twin
        await inParallel(names.slice(0, units / 2), 8, async (u) => {
          const r = await compile(u, `${u}-warm`)
          if (r.code !== 0) throw new Error(`warming ${u}: ${r.stderr.trim()}`)
        })
        const before = await daemonStatus(inst)
        const counters = await daemonCounters(inst)
        const results = await Promise.all(names.flatMap((u) => [compile(u, `${u}-a`), compile(u, `${u}-b`)]))
        const failed = results.filter((r) => r.code !== 0)
        const wrong = names.flatMap((u) => ['a', 'b'].filter((x) => !readFileSync(join(dir, 'obj', `${u}-${x}.o`)).equals(plain.get(u)!)).map((x) => `${u}-${x}`))
        const after = await daemonStatus(inst)
        const counted = await daemonCounters(inst)
        fallbacks += counted.fallbacks! - counters.fallbacks!
        rss.push(`${fmtMiB(before.daemon.memory.rss)} → ${fmtMiB(after.daemon.memory.rss)}`)
        if (after.daemon.pid !== before.daemon.pid) return 'the daemon was replaced during the burst'
        if (failed.length > 0) return `${failed.length} of ${results.length} compiles failed: ${failed[0]!.stderr.trim().split('\n')[0]}`
        if (wrong.length > 0) return `${wrong.length} objects differ from plain gcc (${wrong.slice(0, 3).join(', ')})`
        return null
      })
    }
    rec.figure(`${rec.trials} × ${perBurst} compiles, ${rec.failures} bursts with failures; ${fallbacks} compiled without the daemon; daemon RSS before → after each burst: ${rss.join(', ')}`)
    rec.note(`Each burst starts ${perBurst} launchers at once (\`meshcc gcc -O2 -c\`): ${units} units, each compiled twice at once, of which half were compiled (cached) just before:`,
      'hits, and misses racing an identical miss. Every launcher must exit 0 and every object equal plain gcc\'s; the daemon\'s RSS (its own `status`) before and after each burst is reported.')
  }
}

const cacheGroupRows = [cacheDamage, concurrent]
export const cacheGroup: RowGroup = { rows: cacheGroupRows }

/** The full-filesystem row: a small tmpfs as the cache directory, filled up before the builds. */
const fullDisk: Row = {
  id: 'full-disk',
  title: 'cache directory on a full filesystem (a small tmpfs)',
  mustShow: 'builds green, one clear log line (not one per compile), no stack traces',
  trials: { full: 3, quick: 3 },
  unit: 'builds',
  async run(env, rec) {
    const inst = instance(env, 'chaos-full')
    mkdirSync(inst.cacheDir, { recursive: true })
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'meshcc-chaos-full', inst.cacheDir])
    // deferred after the daemon's stop, so it runs before it: the daemon is gone when it unmounts
    env.cleanup.defer('unmount the tmpfs', async () => {
      await stopDaemon(inst)
      execFileSync('umount', [inst.cacheDir])
    })
    // fill it: what is left is less than a page
    const filler = openSync(join(inst.cacheDir, 'filler'), 'w')
    try {
      const chunk = Buffer.alloc(64 * 1024, 1)
      for (let i = 0; i < 64; i++) writeSync(filler, chunk)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
    } finally {
      closeSync(filler)
    }
    const project = join(inst.dir, 'project')
    const units = writeUnits(project, 6, 'full')
    const plain = await plainObjects(project, units)
    const outputs: string[] = []
    let green = 0
    for (let b = 0; b < env.trials; b++) {
      await rec.trial(`build ${b + 1}`, async () => {
        rmSync(join(project, 'obj'), { recursive: true, force: true })
        const r = await makeThrough(inst, project, 2)
        outputs.push(r.stdout, r.stderr)
        if (r.code !== 0) return `make exited ${r.code}: ${r.stderr.trim().split('\n').pop()}`
        const wrong = wrongObjects(project, plain)
        if (wrong.length > 0) return `${wrong.length} wrong objects`
        green++
        return null
      })
    }
    const status = await daemonStatus(inst)
    await stopDaemon(inst)
    const logs = [join(inst.cacheDir, 'meshcc.log'), join(inst.dir, 'run', 'meshcc.log')].filter(existsSync).map((f) => readFileSync(f, 'utf8')).join('\n')
    const problems = logs.split('\n').filter((l) => /^\S+ (WARN|ERROR) /.test(l))
    const stacks = [...logs.split('\n'), ...outputs.join('\n').split('\n')].filter((l) => /^\s+at .+:\d+:\d+\)?$/.test(l))
    if (stacks.length > 0) rec.fail('logs and build output', `${stacks.length} stack-trace lines, first: ${stacks[0]!.trim()}`)
    // the same message about other files or keys is one kind of line
    const kinds = new Map<string, number>()
    for (const l of problems) {
      const k = l.replace(/^\S+ \S+\s+\[\d+\]\s*/, '').replace(/[0-9a-f]{64}/g, '<key>').replace(/\/\S+/g, '<path>')
      kinds.set(k, (kinds.get(k) ?? 0) + 1)
    }
    // one line per kind of trouble, said once: not one per compile
    const repeated = [...kinds].filter(([, n]) => n > 1)
    if (repeated.length > 0) rec.fail('the log', `lines repeated: ${repeated.map(([k, n]) => `${n} × "${k}"`).join(' | ')}`)
    if (!problems.some((l) => /could not store .*ENOSPC/.test(l))) rec.fail('the log', `no line says the results are not stored: ${[...kinds.keys()].join(' | ') || 'no warnings at all'}`)
    rec.figure(`${green} of ${env.trials} builds green; ${problems.length} warning lines, each said once (${[...kinds.keys()].map((k) => `"${k.split(/[:(;]/)[0]!.trim()}"`).join(', ')}); ${stacks.length} stack-trace lines`)
    rec.note(`The daemon's cache directory is a 1 MiB tmpfs (mounted for the row, unmounted after it, also when it fails), filled with a file before the first build;`,
      `${units.length} units built ${env.trials} times (make -j2, the objects compared with plain gcc's). The log went to ${status.daemon.log_file ?? '?'}.`,
      'Counted: WARN and ERROR lines in both log files (the cache directory\'s and the one beside the socket; a message about another key or path is the same line), and stack-trace lines there and in the build\'s output.',
      'A failure is a line said more than once, no line saying that results are not stored, or any stack trace. The lines:',
      [...kinds.keys()].map((k) => `"${k}"`).join('; ') + '.')
  }
}

export const fullDiskGroup: RowGroup = { rows: [fullDisk] }
