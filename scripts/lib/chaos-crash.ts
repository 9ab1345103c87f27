// Daemons SIGKILLed in the middle of a build: a builder (then restarted), and the client's own
// daemon (started again by the next launcher). A client with local_slots = 0 and two builders on
// 127.0.0.1 (test/helpers/dist-mesh.ts), a real project built with `make -j4 CC="meshcc gcc"`;
// every object is compared with plain gcc's. MESHCC_CACHE_BUSTER makes every trial's compiles
// misses, so each build sends its units to the builders.
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { startDistMesh, type DistMesh } from '../../test/helpers/dist-mesh.js'
import type { Instance } from '../../test/helpers/meshcc.js'
import {
  daemonCounters, daemonStatus, makeThrough, objectsMade, plainObjects, pollFor, sleep, writeUnits, wrongObjects,
  type Row, type RowEnv, type RowGroup
} from './chaos-common.js'
import { readdirSync, readFileSync } from 'node:fs'

interface Fixture { mesh: DistMesh; project: string; units: string[]; plain: Map<string, Buffer> }
let fixture: Promise<Fixture> | null = null

/** The mesh and the project, made by the first row that needs them and kept for the other. */
function setUp(env: RowEnv): Promise<Fixture> {
  fixture ??= (async () => {
    env.log('starting a client (local_slots = 0) and two builders on 127.0.0.1')
    const mesh = await startDistMesh('chaos-crash', 2)
    const project = join(mesh.client.dir, 'project')
    const units = writeUnits(project, env.quick ? 12 : 24, 'crash')
    const plain = await plainObjects(project, units)
    // the first build ships the toolchain to both builders: not a trial
    const warm = await makeThrough(mesh.client, project, 4, { MESHCC_CACHE_BUSTER: 'warm-up' })
    if (warm.code !== 0) throw new Error(`the warm-up build failed: ${warm.stderr.trim().split('\n').pop()}`)
    return { mesh, project, units, plain }
  })()
  return fixture
}

/**
 * Both builders back in the client's view with free slots: null, or what the view held at the
 * end of the minute (each member's slots, running jobs, connection and dial error), so a
 * failure says which of them was missing and how.
 */
async function bothBuildersReady(client: Instance): Promise<string | null> {
  let last = 'no status reply'
  const ok = await pollFor(60_000, async () => {
    const s = await daemonStatus(client, 5000)
    const others = s.mesh?.members.filter((m) => !m.self) ?? []
    last = others.length === 0 ? 'no other member in the view' : others.map((m) =>
      `${m.name}: ${m.free_slots} free, ${m.running} running, held back ${m.held_back_ms} ms, connection ${m.connection}${m.dial_error ? ` (${m.dial_error})` : ''}, seen ${m.last_seen_ms_ago} ms ago`).join('; ')
    return others.filter((m) => m.free_slots > 0).length >= 2 ? true : undefined
  }, 250)
  return ok === true ? null : last
}

/**
 * Processes still running a builder's jobs: each job's meshcc-reap names the builder's job tree
 * in its arguments (bwrap and the job under it are gone when it is).
 */
function jobProcessesOf(builder: Instance): number {
  const tree = `${builder.cacheDir}/jobs/`
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    try { return readFileSync(`/proc/${p}/cmdline`, 'latin1').includes(tree) } catch { return false }
  }).length
}

/** One build with a daemon SIGKILLed once `ready` says the build is in the middle; what went wrong, or null. */
async function buildWithKill(f: Fixture, tag: string, victim: Instance, ready: () => Promise<boolean>): Promise<{ why: string | null; landed: boolean }> {
  rmSync(join(f.project, 'obj'), { recursive: true, force: true })
  let finished = false
  const build = makeThrough(f.mesh.client, f.project, 4, { MESHCC_CACHE_BUSTER: tag }).finally(() => { finished = true })
  let landed = false
  while (!finished) {
    if (await ready().catch(() => false)) {
      const pid = victim.daemonPid()
      if (pid !== null && objectsMade(f.project) < f.units.length) {
        process.kill(pid, 'SIGKILL')
        landed = true
      }
      break
    }
    await sleep(30)
  }
  const r = await build
  if (r.code !== 0) return { why: `make exited ${r.code ?? r.signal}: ${r.stderr.trim().split('\n').pop()}`, landed }
  const wrong = wrongObjects(f.project, f.plain)
  if (wrong.length > 0) return { why: `${wrong.length} objects differ from plain gcc: ${wrong.slice(0, 4).join(', ')}`, landed }
  if (!landed) return { why: 'the build ended before the kill (not a mid-build trial)', landed }
  return { why: null, landed }
}

const builderKill: Row = {
  id: 'builder-kill',
  title: 'builder SIGKILLed mid-build (make -j4 through a client with local_slots = 0), builder restarted',
  mustShow: '0 failed builds, 0 objects differing from plain gcc',
  trials: { full: 10, quick: 1 },
  unit: 'builds',
  async run(env, rec) {
    const f = await setUp(env)
    const { client, builders } = f.mesh
    const before = await daemonCounters(client)
    let orphans = 0
    let landedWith = 0
    for (let i = 0; i < env.trials; i++) {
      const victim = builders[i % builders.length]!
      await rec.trial(`build ${i + 1}`, async () => {
        let inFlight = 0
        const { why } = await buildWithKill(f, `builder-kill-${i}-${Date.now()}`, victim, async () => {
          const s = await daemonStatus(victim, 2000)
          inFlight = s.mesh?.builder.running ?? 0
          return inFlight > 0
        })
        landedWith += inFlight
        // the jobs of a killed builder die with it (native/reap.c follows its daemon)
        await sleep(2000)
        orphans += jobProcessesOf(victim)
        const restart = await victim.run(['--start-server'])
        if (restart.code !== 0) return `the builder did not restart: ${restart.stderr.trim()}`
        const view = await bothBuildersReady(client)
        if (view !== null) return why ?? `the restarted builder did not come back into the client's view within 60 s: ${view}`
        return why
      })
    }
    const after = await daemonCounters(client)
    rec.figure(`${rec.trials - rec.failures} of ${rec.trials} builds green with every object equal to plain gcc's`)
    rec.figure(`${landedWith} jobs in flight on the killed builders; client retried ${after.remote_retries! - before.remote_retries!}, compiled ${after.fallbacks! - before.fallbacks!} locally`)
    rec.figure(`${orphans} job processes outliving their builder`)
    rec.note(`${f.units.length} units, make -j4 through a client (local_slots = 0) and two builders (2 cores each), all on 127.0.0.1;`,
      'each build SIGKILLs one builder (alternating) as soon as it runs a job, waits 2 s, counts the processes of its jobs still running (a job\'s meshcc-reap names the builder\'s job tree), restarts it with `meshcc --start-server` and waits until the client sees both builders with free slots.',
      'Every compile is a miss (MESHCC_CACHE_BUSTER per trial); objects are compared byte for byte with plain gcc\'s.')
  }
}

const clientKill: Row = {
  id: 'client-kill',
  title: 'the client\'s own daemon SIGKILLed mid-build',
  mustShow: '0 failed builds, 0 wrong objects',
  trials: { full: 5, quick: 1 },
  unit: 'builds',
  async run(env, rec) {
    const f = await setUp(env)
    const { client } = f.mesh
    const before = await daemonCounters(client)
    for (let i = 0; i < env.trials; i++) {
      await rec.trial(`build ${i + 1}`, async () => {
        const { why } = await buildWithKill(f, `client-kill-${i}-${Date.now()}`, client, async () => objectsMade(f.project) >= 3)
        // the next launcher started a new daemon: it must be back in the mesh for the next trial
        const view = await bothBuildersReady(client)
        if (view !== null) return why ?? `the new client daemon did not see the builders within 60 s: ${view}`
        return why
      })
    }
    const after = await daemonCounters(client).catch(() => null)
    rec.figure(`${rec.trials - rec.failures} of ${rec.trials} builds green with every object equal to plain gcc's${after ? `; ${after.fallbacks! - before.fallbacks!} compiles went local while the daemon was down or starting, ${after.remote_compiles! - before.remote_compiles!} went to the builders` : ''}`)
    rec.note(`The same mesh and project; each build SIGKILLs the client's daemon once 3 objects exist. Launchers whose request it held compile locally,`,
      'the next launcher starts a new daemon, which joins the mesh again; the trial waits for it to see both builders.')
  }
}

export const crashGroup: RowGroup = {
  rows: [builderKill, clientKill],
  async teardown() {
    const f = await fixture?.catch(() => null)
    fixture = null
    await f?.mesh.stop()
  }
}
