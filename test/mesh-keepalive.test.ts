// The mesh's own keep-alive (src/mesh/keepalive.ts) between a mesh in this process and one in a
// child process, both real libp2p nodes on 127.0.0.1: every connection gets an RTT from a yamux
// ping when it opens; a peer that stops answering while its TCP connection stays up (SIGSTOP:
// what a frozen or powered-off machine looks like) is closed after the timeout, and one that
// answers is not. Also: gossipsub's heartbeat runs on the wall clock's whole seconds.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateMeshKey, writeMeshKey } from '../src/mesh/keys.js'
import { rttOf, startMesh, type Mesh } from '../src/mesh/mesh.js'
import { KeepAlive } from '../src/mesh/keepalive.js'
import { loadConfig } from '../src/config.js'
import type { Logger } from '../src/log.js'
import { MeshProc, killAllMeshProcs, waitFor, writeMeshConfig } from './helpers/mesh-proc.js'

const dir = mkdtempSync(join(tmpdir(), 'meshcc-keepalive-'))
let A: Mesh | null = null
let B: MeshProc | null = null
after(async () => {
  B?.kill('SIGCONT')
  await killAllMeshProcs()
  await A?.stop()
  rmSync(dir, { recursive: true, force: true })
})

function capture(lines: string[]): Logger {
  const mk = (): Logger => ({
    error: (m) => lines.push(`E ${m}`), warn: (m) => lines.push(`W ${m}`), info: (m) => lines.push(`I ${m}`),
    debug: () => {}, child: () => mk(), enabled: () => true
  })
  return mk()
}

test('keep-alive: RTT at once, a frozen peer is dropped, a live one kept; heartbeat on whole seconds', { timeout: 60_000 }, async () => {
  const keyFile = join(dir, 'mesh.key')
  writeMeshKey(keyFile, generateMeshKey())
  const home = join(dir, 'A')
  mkdirSync(home, { recursive: true })
  writeFileSync(join(home, 'config.toml'), [
    '[mesh]', 'listen = ["/ip4/127.0.0.1/tcp/0"]', 'mdns = false', 'dht = false', 'name = "A"',
    `key_file = ${JSON.stringify(keyFile)}`, `identity_file = ${JSON.stringify(join(home, 'id.key'))}`, ''
  ].join('\n'))
  const lines: string[] = []
  const log = capture(lines)
  A = await startMesh({
    config: loadConfig({ MESHCC_CONF: join(home, 'config.toml'), HOME: dir }), log, version: '9.9.9',
    getLoad: () => ({ cores: 2, running: 0, queued: 0, freeSlots: 2, load1: 0, speed: 1, toolchains: [], accept: 'always', shim: false })
  })
  const a = A

  // gossipsub's heartbeat, moved onto whole seconds (where the daemon's other timers fire)
  const pubsub = a.libp2p.services.pubsub
  assert.equal((pubsub as unknown as { status: { hearbeatStartMs: unknown } }).status.hearbeatStartMs, 0)
  const beats: number[] = []
  await new Promise<void>((resolve) => {
    const on = () => { beats.push(Date.now()); if (beats.length === 4) { pubsub.removeEventListener('gossipsub:heartbeat', on); resolve() } }
    pubsub.addEventListener('gossipsub:heartbeat', on)
  })
  // the first one was already scheduled when the mesh started; from the next on, whole seconds
  assert.ok(beats.slice(1).every((t) => t % 1000 < 150), `heartbeats at ${beats.map((t) => t % 1000).join(', ')} ms past the second`)

  B = await MeshProc.start({
    label: 'B',
    config: writeMeshConfig(dir, 'B', { keyFile, listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [a.addresses()[0]!], mdns: false, dht: false, cores: 2 })
  })
  const b = B
  const connToB = () => a.libp2p.getConnections().find((c) => c.remotePeer.toString() === b.peerId && c.status === 'open')
  const conn = await waitFor('A connected to B', () => connToB(), 15_000)
  // the keep-alive pings a connection when it opens: its RTT comes from that yamux ping
  await waitFor('an RTT on the connection to B', () => (rttOf(conn) !== null ? true : undefined), 5000)

  // a fast keep-alive beside the daemon's own: B answers, so nothing is closed
  const fast = new KeepAlive(a.libp2p, log, 300, 1500)
  fast.start()
  try {
    await new Promise((r) => setTimeout(r, 2500))
    assert.equal(connToB(), conn, 'a peer that answers keeps its connection')
    assert.ok(!lines.some((l) => /keep-alive/.test(l)), lines.join('\n'))

    // B freezes: its kernel keeps the TCP connection, nothing answers the pings
    b.kill('SIGSTOP')
    const t0 = Date.now()
    await waitFor('A to close the connection to the frozen B', () => (connToB() === undefined ? true : undefined), 10_000, 100)
    const took = Date.now() - t0
    assert.ok(took >= 1000, `closed after ${took} ms, before the 1.5 s timeout could pass`)
    assert.ok(lines.some((l) => l.startsWith('I ') && l.includes(b.peerId) && /no answer to a keep-alive ping/.test(l)), lines.join('\n'))
  } finally {
    fast.stop()
    b.kill('SIGCONT')
  }
})
