// The DHT's start-up, trimmed (src/mesh/dht-startup.ts), on two real meshes in this process
// (127.0.0.1, DHT on, mDNS off): a connected peer enters the routing table without the
// new-contact ping, a provide and a lookup work at once, without waiting for the first
// self-query (5 min after start), and the platform record waits until the connections settled.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateMeshKey, writeMeshKey } from '../src/mesh/keys.js'
import { startMesh, type Mesh } from '../src/mesh/mesh.js'
import { SELF_QUERY_AFTER_MS } from '../src/mesh/dht-startup.js'
import { loadConfig } from '../src/config.js'
import type { Logger } from '../src/log.js'
import { waitFor } from './helpers/mesh-proc.js'

const dir = mkdtempSync(join(tmpdir(), 'meshcc-dht-startup-'))
const meshes: Mesh[] = []
after(async () => {
  await Promise.all(meshes.map((m) => m.stop()))
  rmSync(dir, { recursive: true, force: true })
})

const quiet: Logger = { error: () => {}, warn: () => {}, info: () => {}, debug: () => {}, child: () => quiet, enabled: () => false }

async function start(name: string, keyFile: string, bootstrap: string[], dhtStartupMs?: number): Promise<Mesh> {
  const home = join(dir, name)
  mkdirSync(home, { recursive: true })
  writeFileSync(join(home, 'config.toml'), [
    '[mesh]', 'listen = ["/ip4/127.0.0.1/tcp/0"]', 'mdns = false', 'dht = true', `name = "${name}"`,
    `bootstrap = ${JSON.stringify(bootstrap)}`,
    `key_file = ${JSON.stringify(keyFile)}`, `identity_file = ${JSON.stringify(join(home, 'id.key'))}`, ''
  ].join('\n'))
  const m = await startMesh({
    config: loadConfig({ MESHCC_CONF: join(home, 'config.toml'), HOME: dir }), log: quiet, version: '9.9.9',
    dhtStartupMs,
    getLoad: () => ({ cores: 2, running: 0, queued: 0, freeSlots: 2, load1: 0, speed: 1, toolchains: [], accept: 'always', shim: false })
  })
  meshes.push(m)
  return m
}

test('DHT start-up: connected peers join the routing table unpinged, queries need no self-query first, the platform record comes later', { timeout: 45_000 }, async () => {
  const keyFile = join(dir, 'mesh.key')
  writeMeshKey(keyFile, generateMeshKey())
  const t0 = Date.now()
  const a = await start('A', keyFile, [])
  // every ping kad-dht sends goes through the ping service: count A's
  const ping = a.libp2p.services.ping
  const original = ping.ping.bind(ping)
  let pings = 0
  ping.ping = ((...args: Parameters<typeof original>) => { pings++; return original(...args) }) as typeof ping.ping
  const tb = Date.now()
  const b = await start('B', keyFile, [a.addresses()[0]!], 4000)

  const dhtOf = (m: Mesh) => m.libp2p.services.dht as unknown as { routingTable: { size: number } }
  await waitFor('B in A\'s routing table, and A in B\'s', () => (dhtOf(a).routingTable.size === 1 && dhtOf(b).routingTable.size === 1 ? true : undefined), 10_000, 50)
  assert.equal(pings, 0, 'A pinged a peer it was connected to before adding it to the routing table')

  // a provide and a lookup, long before the first self-query would have let them run
  const hash = 'c0ffee00'.repeat(8)
  // bounded repeats, as dht-ads.ts itself retries a provide that did not complete: kad-dht's
  // ADD_PROVIDER is one-way (the provide resolves once it is sent), and a provide or lookup that
  // finds the routing table empty at that instant returns at once (one CI run got [] within
  // 280 ms of the start, both tables having held the other a moment before)
  let providers: string[] = []
  await waitFor('A to find B as the toolchain\'s provider', async () => {
    await b.provideToolchain(hash)
    providers = await a.findToolchainProviders(hash, 2000)
    return providers.includes(b.peerId) ? true : undefined
  }, 15_000, 200)
  assert.deepEqual(providers, [b.peerId])
  assert.ok(Date.now() - t0 < SELF_QUERY_AFTER_MS, `took ${Date.now() - t0} ms`)

  // B's platform record waits until no new connection opened for 4 s here (15 s by default), then A finds it
  const platform = `platform:${process.arch}-${process.platform}`
  const early = await a.findCapabilityProviders(platform, 1000)
  if (Date.now() - tb < 3500) assert.ok(!early.includes(b.peerId), 'B announced its platform before its start-up delay')
  assert.ok((await b.findCapabilityProviders(platform, 1000)).includes(b.peerId), 'B counts itself at once')
  await waitFor('A to find B\'s platform record', async () => ((await a.findCapabilityProviders(platform, 1000)).includes(b.peerId) ? true : undefined), 15_000, 500)
})
