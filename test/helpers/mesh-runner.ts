// Test helper process: starts one Mesh from a TOML config and answers JSON-line commands.
//   node --import tsx test/helpers/mesh-runner.ts <config.toml>
// env: MESHCC_TEST_GOSSIP_MS, MESHCC_TEST_EXPIRY_MS (view timings), MESHCC_TEST_DHT_STARTUP_MS
// stdout: {"event":"ready","peerId","meshId","addrs"} then one reply per command:
//   {"id":1,"cmd":"members"} {"id":2,"cmd":"addresses"} {"id":3,"cmd":"provide","hash":"h"}
//   {"id":4,"cmd":"find","hash":"h","timeoutMs":3000} {"id":5,"cmd":"findCap","name":"n"}
//   {"id":6,"cmd":"connections"} {"id":7,"cmd":"stop"}
// replies: {"id":1,"ok":true,"result":...} or {"id":1,"ok":false,"error":"..."}
import { loadavg } from 'node:os'
import { createInterface } from 'node:readline'
import { loadConfig } from '../../src/config.js'
import { createLogger } from '../../src/log.js'
import { startMesh, type Mesh } from '../../src/mesh/mesh.js'

const file = process.argv[2]
if (!file) {
  process.stderr.write('usage: mesh-runner.ts <config.toml>\n')
  process.exit(2)
}
const out = (obj: unknown) => process.stdout.write(JSON.stringify(obj) + '\n')
const num = (v: string | undefined) => (v && /^\d+$/.test(v) ? Number(v) : undefined)

let mesh: Mesh | null = null
let stopping = false
const stop = async (code: number) => {
  if (stopping) return
  stopping = true
  const hard = setTimeout(() => process.exit(code), 5000)
  hard.unref()
  try { await mesh?.stop() } catch { /* exiting anyway */ }
  process.exit(code)
}
process.on('SIGTERM', () => { void stop(0) })
process.on('SIGINT', () => { void stop(0) })

try {
  const config = loadConfig({ ...process.env, MESHCC_CONF: file })
  const log = createLogger({ level: config.log.level, file: null, stderr: true, tag: `[${process.pid}]` }).child('mesh')
  const cores = config.build.cores
  mesh = await startMesh({
    config,
    log,
    version: 'test-0.0.0',
    gossipIntervalMs: num(process.env.MESHCC_TEST_GOSSIP_MS),
    expiryMs: num(process.env.MESHCC_TEST_EXPIRY_MS),
    dhtStartupMs: num(process.env.MESHCC_TEST_DHT_STARTUP_MS),
    rttIntervalMs: 1000,
    getLoad: () => ({ cores, running: 0, queued: 0, freeSlots: cores, load1: loadavg()[0], speed: 1, toolchains: [], accept: 'always', shim: false })
  })
} catch (err) {
  out({ event: 'error', error: (err as Error).message, name: (err as Error).name })
  process.exit(3)
}
const m = mesh
out({ event: 'ready', peerId: m.peerId, meshId: m.meshId, addrs: m.addresses() })

interface Cmd { id?: number; cmd?: string; hash?: string; name?: string; timeoutMs?: number }
const rl = createInterface({ input: process.stdin })
rl.on('line', (line) => {
  let c: Cmd
  try { c = JSON.parse(line) as Cmd } catch { out({ ok: false, error: 'bad json' }); return }
  void (async () => {
    try {
      let result: unknown
      switch (c.cmd) {
        case 'members': result = m.members(); break
        case 'addresses': result = m.addresses(); break
        case 'provide': await m.provideToolchain(String(c.hash)); result = true; break
        case 'find': result = await m.findToolchainProviders(String(c.hash), c.timeoutMs); break
        case 'findCap': result = await m.findCapabilityProviders(String(c.name), c.timeoutMs); break
        case 'connections': result = m.libp2p.getConnections().map((x) => ({ peer: x.remotePeer.toString(), addr: x.remoteAddr.toString(), direction: x.direction })); break
        case 'stop': out({ id: c.id, ok: true, result: true }); await stop(0); return
        default: throw new Error(`unknown command ${c.cmd}`)
      }
      out({ id: c.id, ok: true, result })
    } catch (err) {
      out({ id: c.id, ok: false, error: (err as Error).message })
    }
  })()
})
// parent gone (stdin closed): leave too, so no test leaves a mesh process behind
rl.on('close', () => { void stop(0) })
