// A mesh of real daemons on loopback for distributed-compile tests: one mesh key, builders with
// free slots, and a client with local_slots = 0 that sends every miss to them (mDNS off, each
// daemon its own config dir). Every daemon made here is stopped by stop().
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { createInstance, type Instance } from './meshcc.js'
import { generateMeshKey, writeMeshKey } from '../../src/mesh/keys.js'
import { status, startMeshDaemon, waitFor } from './mesh-daemons.js'

export interface DaemonOptions { localSlots: number; cores: number; bootstrap: string[]; extraEnv?: Record<string, string>; build?: string; mesh?: string }

export interface DistMesh {
  client: Instance
  builders: Instance[]
  /** one more daemon on the same mesh key (not started) */
  daemon(name: string, opts: DaemonOptions): Instance
  stop(): Promise<void>
}

/** `builderCount` builders (2 cores each, `builderBuild` added to their [build]) and a client that has them all in its view with free slots. */
export async function startDistMesh(prefix: string, builderCount = 2, builderBuild = ''): Promise<DistMesh> {
  const all: Instance[] = []
  const keyDir = createInstance('', `${prefix}-key`)
  all.push(keyDir)
  const keyFile = join(keyDir.dir, 'mesh.key')
  // the key only: `mesh init` would also start a daemon with this config's default mesh settings
  writeMeshKey(keyFile, generateMeshKey())
  const daemon = (name: string, opts: DaemonOptions): Instance => {
    const i = createInstance(`[build]\nlocal_slots = ${opts.localSlots}\ncores = ${opts.cores}\n${opts.build ?? ''}`, name,
      `listen = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\nkey_file = "${keyFile}"\nbootstrap = ${JSON.stringify(opts.bootstrap)}${opts.mesh ? `\n${opts.mesh}` : ''}`)
    Object.assign(i.env, opts.extraEnv ?? {})
    all.push(i)
    return i
  }
  const stop = async () => { for (const i of all) await i.stop() }
  try {
    const b1 = daemon(`${prefix}-b1`, { localSlots: 2, cores: 2, bootstrap: [], build: builderBuild })
    const s1 = await startMeshDaemon(b1)
    const boot = s1.mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
    const builders = [b1]
    for (let n = 2; n <= builderCount; n++) {
      const b = daemon(`${prefix}-b${n}`, { localSlots: 2, cores: 2, bootstrap: boot, build: builderBuild })
      await startMeshDaemon(b)
      builders.push(b)
    }
    const client = daemon(`${prefix}-client`, { localSlots: 0, cores: 0, bootstrap: boot })
    await startMeshDaemon(client)
    // the client must see every builder with free slots before it can place anything
    await waitFor('every builder in the client\'s view', async () => {
      const s = await status(client)
      const ready = s.mesh!.members.filter((m) => !m.self && m.free_slots > 0 && m.accept !== 'never')
      return ready.length === builderCount ? true : undefined
    })
    return { client, builders, daemon, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

/**
 * A client with one local slot and a speed score far below the builders' (speed = 1000 in
 * startDistMesh's builderBuild): it sends its misses to `builder` while that has room, and can
 * hedge them here. Started, with the builder and itself in its view.
 */
export async function startSlowClient(mesh: DistMesh, builder: Instance, name: string): Promise<Instance> {
  const boot = (await status(builder)).mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
  const client = mesh.daemon(name, { localSlots: 1, cores: 1, bootstrap: boot, build: 'speed = 1' })
  await startMeshDaemon(client)
  // its own entry too: without its own speed score a client keeps a miss here while its slot is free
  await waitFor('the builder and itself in the client\'s view', async () => {
    const s = await status(client)
    const builderIn = s.mesh!.members.some((m) => !m.self && m.free_slots > 0 && m.accept !== 'never' && m.rtt_ms !== null)
    return builderIn && s.mesh!.members.some((m) => m.self) ? true : undefined
  })
  return client
}

/** Stats of a client before and after one hedged compile that the compile here won, for `family`. */
export function assertHedgeWonHere(before: Record<string, unknown>, after: Record<string, unknown>, family: string): void {
  const d = (k: string) => (after[k] as number) - (before[k] as number)
  assert.equal(d('hedged'), 1, 'the job was hedged')
  assert.equal(d('hedge_won_local'), 1, 'the compile here won')
  assert.equal(d('remote_compiles'), 0)
  assert.equal(d('local_compiles'), 1)
  assert.equal(d('fallbacks'), 0, `no fallback: ${JSON.stringify(after.fallback_reasons)}`)
  const hedged = (s: Record<string, unknown>) => (s.families as Record<string, { counters: Record<string, number> }>)[family]?.counters.hedged ?? 0
  assert.equal(hedged(after) - hedged(before), 1, `counted for the ${family} family`)
}
