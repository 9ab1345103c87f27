// A mesh of real daemons on loopback for distributed-compile tests: one mesh key, builders with
// free slots, and a client with local_slots = 0 that sends every miss to them (mDNS off, each
// daemon its own config dir). Every daemon made here is stopped by stop().
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
