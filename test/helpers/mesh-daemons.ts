// Helpers for tests that run real daemons in a mesh: status, bounded polling, start.
import assert from 'node:assert/strict'
import type { Instance } from './meshcc.js'
import type { DaemonStatus } from '../../src/cli/mesh-commands.js'

export async function status(i: Instance): Promise<DaemonStatus> {
  const r = await i.run(['status', '--json'])
  assert.equal(r.code, 0, r.stderr)
  return JSON.parse(r.stdout) as DaemonStatus
}

/** Poll until fn returns a value; fail after timeoutMs. */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 250))
  }
}

/** Start the instance's daemon and wait until its mesh is up. */
export async function startMeshDaemon(i: Instance): Promise<DaemonStatus> {
  const r = await i.run(['--start-server'])
  assert.equal(r.code, 0, r.stderr)
  return waitFor('the mesh to start', async () => { const s = await status(i); return s.mesh ? s : undefined })
}
