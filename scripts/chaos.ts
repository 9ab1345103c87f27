// `npm run chaos`: meshcc's reliability and security figures, measured against real daemons.
// Each row of the table does one kind of damage (a builder SIGKILLed mid-build, damaged cache
// entries, fuzzed wire protocols, a member's hostile jobs, crafted toolchain archives, …) for
// its number of trials and counts the trials that did not show what the row must show, with a
// short reason for each.
//
//   npm run chaos                       the full run (the trials the issue names)
//   npm run chaos -- --quick            a short version of every row (CI runs this: test/chaos.test.ts)
//   npm run chaos -- --only mesh-fuzz,intruders
//   npm run chaos -- --help
//
// The report goes to scripts/bench-results/chaos.md (chaos-quick.md with --quick). Traffic stays
// on 127.0.0.1 and inside network namespaces this script creates; every daemon, namespace, mount
// and temp directory is removed at the end, also when a row fails or on Ctrl-C. Processes are
// killed by PID only. Needs root for the namespaces and the small tmpfs of the full-disk row.
import { spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, release, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Cleanup, Rand, RowRecorder, hashLabel, oneLine, type Row, type RowGroup, type RowResult } from './lib/chaos-common.js'
import { describeLab, startLab, LAB_ENV } from './lib/chaos-lab.js'
import { liveNamespaces } from '../test/helpers/netns.js'
import { crashGroup } from './lib/chaos-crash.js'
import { cacheGroup, fullDiskGroup } from './lib/chaos-cache.js'
import { launcherGroup } from './lib/chaos-launcher.js'
import { hostileGroup } from './lib/chaos-hostile.js'
import { shimGroup } from './lib/chaos-shim.js'
import { markdownTable, textTable } from './lib/stats.js'
import { killRunningChildren } from './lib/proc.js'

const HERE = dirname(fileURLToPath(import.meta.url))

/** In the issue's order. */
const GROUPS: RowGroup[] = [crashGroup, cacheGroup, launcherGroup, hostileGroup, shimGroup, fullDiskGroup]
const ALL_ROWS = GROUPS.flatMap((g) => g.rows)
/** Rows sorted as the issue lists them (the hostile group runs its rows together). */
const ORDER = ['builder-kill', 'client-kill', 'cache-damage', 'concurrent', 'launcher-fuzz', 'mesh-fuzz', 'hostile-jobs', 'intruders', 'toolchain-archives', 'shim-fuzz', 'full-disk']

function usage(): string {
  return `usage: npm run chaos -- [--quick] [--only ROW,ROW] [--seed N] [--out FILE] [--json FILE] [--keep]
  --quick   a short version of every row (about 2 minutes on 2 cores)
  --only    run these rows only: ${ORDER.join(', ')}
  --seed    the random seed (default: from the clock; the report names it, so a run can be repeated)
  --out     the Markdown report (default scripts/bench-results/chaos.md, chaos-quick.md with --quick)
  --json    also write the results as JSON here
  --keep    keep the scratch directory (configs, daemon logs)`
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      seed: { type: 'string' },
      out: { type: 'string' },
      json: { type: 'string' },
      keep: { type: 'boolean', default: false },
      child: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false }
    }
  })
  if (values.help) { console.log(usage()); return 0 }
  const only = values.only ? values.only.split(',').map((s) => s.trim()).filter(Boolean) : ORDER
  const unknown = only.filter((id) => !ALL_ROWS.some((r) => r.id === id))
  if (unknown.length > 0) { console.error(`chaos: unknown row ${unknown.join(', ')} (rows: ${ORDER.join(', ')})`); return 2 }
  const seed = values.seed !== undefined ? Number(values.seed) >>> 0 : (Date.now() & 0x7fffffff)
  const quick = values.quick
  const log = (msg: string) => process.stderr.write(`[chaos${values.child ? ' ns' : ''}] ${msg}\n`)

  const work = mkdtempSync(join(tmpdir(), 'meshcc-chaos-'))
  const results: RowResult[] = []
  const started = Date.now()
  try {
    for (const group of GROUPS) {
      const rows = group.rows.filter((r) => only.includes(r.id))
      if (rows.length === 0) continue
      if (group.namespace && !values.child) results.push(...await runInNamespace(rows, { quick, seed, work, log }))
      else results.push(...await runGroup(group, rows, { quick, seed, work, log }))
    }
  } finally {
    if (values.keep) log(`kept ${work}`)
    else rmSync(work, { recursive: true, force: true })
  }
  results.sort((a, b) => ORDER.indexOf(a.id) - ORDER.indexOf(b.id))
  if (values.json) writeFileSync(values.json, JSON.stringify({ seed, quick, results }, null, 2))
  if (values.child) return 0
  // a daemon just sent SIGKILL may take a moment to be gone
  let left = leftBehind(work)
  for (let i = 0; left && i < 50; i++) {
    await new Promise((r) => setTimeout(r, 100))
    left = leftBehind(work)
  }
  if (left) log(`left behind: ${left}`)

  const wallS = (Date.now() - started) / 1000
  console.log(textTable(['row', 'trials', 'failures', 'measured'], results.map((r) => [r.id, String(r.trials), String(r.failures), r.figures.join('; ')])))
  const out = values.out ?? join(HERE, 'bench-results', quick ? 'chaos-quick.md' : 'chaos.md')
  mkdirSync(dirname(resolve(out)), { recursive: true })
  writeFileSync(out, report(results, { quick, seed, wallS, only: values.only, left }))
  log(`report: ${out} (${wallS.toFixed(0)} s)`)
  return results.every((r) => r.failures === 0 && r.trials > 0) ? 0 : 1
}

interface RunOptions { quick: boolean; seed: number; work: string; log: (msg: string) => void }

/** The group's rows, one after another, then its teardown; a row that throws counts as one failure. */
async function runGroup(group: RowGroup, rows: Row[], o: RunOptions): Promise<RowResult[]> {
  const out: RowResult[] = []
  try {
    for (const row of rows) out.push(await runRow(row, o))
  } finally {
    try { await group.teardown?.() } catch (err) { o.log(`teardown: ${oneLine(err)}`) }
  }
  return out
}

async function runRow(row: Row, o: RunOptions): Promise<RowResult> {
  const rec = new RowRecorder()
  const cleanup = new Cleanup()
  const trials = o.quick ? row.trials.quick : row.trials.full
  const t0 = Date.now()
  o.log(`${row.id}: ${trials} ${row.unit}…`)
  try {
    await row.run({ quick: o.quick, trials, work: o.work, rand: new Rand(o.seed ^ hashLabel(row.id)), log: (m) => o.log(`${row.id}: ${m}`), cleanup }, rec)
  } catch (err) {
    rec.fail('the row itself', oneLine(err))
  } finally {
    await cleanup.runAll((m) => o.log(`${row.id}: ${m}`))
  }
  const seconds = (Date.now() - t0) / 1000
  o.log(`${row.id}: ${rec.trials} trials, ${rec.failures} failures (${seconds.toFixed(1)} s)${rec.reasons.length ? ` — ${rec.reasons.slice(0, 3).join('; ')}` : ''}`)
  return { id: row.id, title: row.title, mustShow: row.mustShow, unit: row.unit, trials: rec.trials, failures: rec.failures, figures: rec.figures, reasons: rec.reasons, notes: rec.notes, seconds }
}

/**
 * Rows that need a LAN: this script again, inside the first host of a two-host namespace lab
 * (its daemons then have loopback and a lab address, and the second host is somewhere their
 * jobs must not reach), reporting as JSON.
 */
async function runInNamespace(rows: Row[], o: RunOptions): Promise<RowResult[]> {
  const failed = (why: string): RowResult[] => rows.map((r) => ({ id: r.id, title: r.title, mustShow: r.mustShow, unit: r.unit, trials: 0, failures: 1, figures: [], reasons: [why], notes: [], seconds: 0 }))
  const lab = startLab()
  if ('skip' in lab) return failed(`cannot create the namespace lab: ${lab.skip}`)
  const json = join(o.work, `ns-${Date.now()}.json`)
  try {
    const args = ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', '--only', rows.map((r) => r.id).join(','), '--seed', String(o.seed), '--json', json, ...(o.quick ? ['--quick'] : [])]
    const child = spawn('ip', ['netns', 'exec', lab.lab.builder.ns, process.execPath, ...args], {
      cwd: resolve(HERE, '..'), env: { ...process.env, [LAB_ENV]: JSON.stringify(describeLab(lab.lab)) }, stdio: ['ignore', 'inherit', 'inherit']
    })
    const limit = (o.quick ? 15 : 120) * 60_000
    const code = await new Promise<number | null>((done) => {
      const timer = setTimeout(() => { o.log('the namespace run took too long: stopping it'); child.kill('SIGKILL') }, limit)
      child.on('exit', (c) => { clearTimeout(timer); done(c) })
      child.on('error', () => { clearTimeout(timer); done(null) })
    })
    try {
      return (JSON.parse(readFileSync(json, 'utf8')) as { results: RowResult[] }).results
    } catch {
      return failed(`the run inside the namespace ended (${code}) without results`)
    }
  } finally {
    await lab.lab.destroy()
  }
}

/**
 * What the run left behind: processes naming its directories (every daemon's config is in a
 * /tmp/chaos-… directory, the run's own files in the scratch directory), its network namespaces,
 * its mounts. Null when nothing.
 */
function leftBehind(work: string): string | null {
  const procs = readdirSync('/proc').filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid).filter((p) => {
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'latin1')
      // a daemon names its config only in its environment
      return cmd.includes(`${tmpdir()}/chaos-`) || cmd.includes(work) || readFileSync(`/proc/${p}/environ`, 'latin1').includes(`MESHCC_CONF=${tmpdir()}/chaos-`)
    } catch { return false }
  })
  const mounts = readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.startsWith('meshcc-chaos'))
  const parts = [procs.length ? `${procs.length} processes (${procs.slice(0, 5).join(', ')})` : '', liveNamespaces().length ? `namespaces ${liveNamespaces().join(', ')}` : '', mounts.length ? `${mounts.length} mounts` : '']
  return parts.filter(Boolean).join('; ') || null
}

function report(results: RowResult[], o: { quick: boolean; seed: number; wallS: number; only?: string; left: string | null }): string {
  const cmd = `npm run chaos${o.quick || o.only ? ' --' : ''}${o.quick ? ' --quick' : ''}${o.only ? ` --only ${o.only}` : ''}`
  const lines = [
    `# Chaos: meshcc's reliability and security figures${o.quick ? ' (quick)' : ''}`,
    '',
    `Generated by \`${cmd}\` (seed ${o.seed}) on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC in ${Math.round(o.wallS)} s,`,
    `on ${cpus().length} cores (${cpus()[0]?.model.trim() ?? 'unknown CPU'}), Linux ${release()}. Left behind after the run: ${o.left ?? 'no process, namespace or mount'}.`,
    '',
    markdownTable(['row', 'trials', 'failures', 'must show', 'measured'], results.map((r) => [r.title, `${r.trials} ${r.unit}`, String(r.failures), r.mustShow, r.figures.join('; ') || '-']), (i) => i !== 1 && i !== 2),
    '',
    `**${results.every((r) => r.failures === 0 && r.trials > 0) ? 'Every failure column is 0.' : `Failures: ${results.filter((r) => r.failures > 0 || r.trials === 0).map((r) => r.id).join(', ')}.`}**`,
    ''
  ]
  const failed = results.filter((r) => r.reasons.length > 0)
  if (failed.length > 0) {
    lines.push('## Failed trials', '')
    for (const r of failed) for (const why of r.reasons) lines.push(`- ${r.id}: ${why}`)
    lines.push('')
  }
  lines.push('## How each row is run', '')
  for (const r of results) {
    lines.push(`- **${r.id}** (${r.seconds.toFixed(0)} s): ${r.notes.join(' ') || '-'}`)
  }
  lines.push('')
  return lines.join('\n')
}

let interrupted = false
process.on('SIGINT', () => {
  if (interrupted) process.exit(130)
  interrupted = true
  process.stderr.write('[chaos] interrupted: cleaning up (Ctrl-C again to leave at once)\n')
  killRunningChildren()
})

main().then((code) => process.exit(code), (err) => {
  process.stderr.write(`chaos: ${oneLine(err)}\n`)
  process.exit(1)
})
