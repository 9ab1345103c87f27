// The sccache scheduler shim fuzzed over HTTP: malformed requests, huge bodies (declared and
// streamed), bad bincode, and a few hundred slow partial requests held open the whole time,
// while a status request is timed every 250 ms. A real daemon in a mesh of its own (the shim is
// elected among the mesh's shim-capable members: here itself), on 127.0.0.1.
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'
import { createInstance, type Instance } from '../../test/helpers/meshcc.js'
import { generateMeshKey, writeMeshKey } from '../../src/mesh/keys.js'
import { daemonStatus, fmtMiB, inParallel, pollFor, sleep, type Rand, type Row, type RowGroup } from './chaos-common.js'
import { freePort } from './proc.js'

type Kind = 'malformed' | 'huge body' | 'bad bincode' | 'valid'

const PATHS = ['/api/v1/scheduler/status', '/api/v1/scheduler/alloc_job', '/api/v1/scheduler/server_certificate/127.0.0.1:1', '/api/v1/scheduler/heartbeat_server',
  '/api/v1/scheduler/job_state/1', '/', '/api/v1/scheduler/../status', '/%00', `/${'x'.repeat(9000)}`]

/** A request line and headers as a client (or an attacker) might write them. */
function head(method: string, path: string, headers: Array<[string, string]>): Buffer {
  return Buffer.from(`${method} ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`, 'latin1')
}

function request(rand: Rand, kind: Kind): Buffer {
  switch (kind) {
    case 'malformed': return rand.pick([
      () => rand.bytes(rand.int(2048)),
      () => Buffer.from(`${rand.pick(['GET', 'POST', 'BREW', '', 'G\0T'])} ${rand.pick(PATHS)} ${rand.pick(['HTTP/1.1', 'HTTP/9.9', 'HTTPS/1.1', ''])}\r\n${rand.pick(['host: x\r\n', 'bad header\r\n', ': x\r\n', 'content-length: -1\r\n', 'content-length: 1, 2\r\n', 'transfer-encoding: chunked\r\ncontent-length: 5\r\n'])}\r\n`, 'latin1'),
      () => Buffer.concat([head('GET', rand.pick(PATHS), [['x', 'y'.repeat(rand.int(20_000))]]), rand.bytes(rand.int(64))]),
      () => Buffer.concat([head('POST', rand.pick(PATHS), [['transfer-encoding', 'chunked']]), Buffer.from(`${rand.pick(['zz', '-1', 'ffffffffffffffff', '5'])}\r\n`), rand.bytes(rand.int(100))])
    ])()
    case 'huge body': return rand.chance(0.5)
      ? Buffer.concat([head('POST', rand.pick(PATHS), [['content-length', String(rand.range(65 * 1024, 2 ** 40))]]), rand.bytes(rand.int(32 * 1024))])
      : Buffer.concat([head('POST', rand.pick(PATHS), [['transfer-encoding', 'chunked']]), ...Array.from({ length: rand.range(2, 8) }, () => Buffer.concat([Buffer.from('8000\r\n'), Buffer.alloc(0x8000, 0x61), Buffer.from('\r\n')])), Buffer.from('0\r\n\r\n')])
    case 'bad bincode': {
      const body = rand.chance(0.5) ? rand.bytes(rand.int(4096)) : Buffer.concat([Buffer.from(rand.pick(['ffffffffffffffff', '4000000000000000', '0100000000000000', '0000000000000080']), 'hex'), rand.bytes(rand.int(200))])
      return Buffer.concat([head('POST', '/api/v1/scheduler/alloc_job', [['content-length', String(body.length)], ['content-type', 'application/octet-stream'], ['authorization', 'Bearer x']]), body])
    }
    case 'valid': return head(rand.pick(['GET', 'HEAD']), '/api/v1/scheduler/status', [['accept', rand.pick(['*/*', 'application/json', 'application/octet-stream'])], ['connection', 'close']])
  }
}

/** Sends bytes, then reads until the server closes or `waitMs` pass: the status code, or null. */
function send(port: number, bytes: Buffer, waitMs: number): Promise<{ status: number | null; closed: boolean }> {
  return new Promise((resolve) => {
    const sock = connect({ host: '127.0.0.1', port })
    let got = ''
    let done = false
    const finish = (closed: boolean) => {
      if (done) return
      done = true
      clearTimeout(timer)
      sock.destroy()
      const m = /^HTTP\/1\.1 (\d{3})/.exec(got)
      resolve({ status: m ? Number(m[1]) : null, closed })
    }
    const timer = setTimeout(() => finish(false), waitMs)
    sock.on('data', (c: Buffer) => { if (got.length < 64) got += c.toString('latin1') })
    sock.on('close', () => finish(true))
    sock.on('error', () => finish(true))
    sock.on('connect', () => { sock.write(bytes, () => sock.end()) })
  })
}

/** A stock client's status request: its time in ms, or null when no 200 came within 1 s. */
async function probe(port: number): Promise<number | null> {
  const t0 = performance.now()
  const r = await send(port, head('GET', '/api/v1/scheduler/status', [['accept', '*/*'], ['connection', 'close']]), 1000)
  return r.status === 200 ? performance.now() - t0 : null
}

/** A daemon in a mesh of its own, serving the shim on a free port of 127.0.0.1. */
async function shimDaemon(cleanupDefer: (what: string, fn: () => Promise<void>) => void): Promise<{ inst: Instance; port: number }> {
  const port = await freePort()
  const inst = createInstance(`[shim]\nenabled = true\nlisten = "127.0.0.1:${port}"\n`, 'chaos-shim', 'listen = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\ndht = false')
  cleanupDefer('stop the daemon', () => inst.stop())
  writeMeshKey(join(inst.dir, 'mesh.key'), generateMeshKey())
  const r = await inst.run(['--start-server'])
  if (r.code !== 0) throw new Error(`the daemon did not start: ${r.stderr.trim()}`)
  const serving = await pollFor(30_000, async () => ((await daemonStatus(inst)).mesh?.shim.serving_here ? true : undefined), 250)
  if (!serving) throw new Error('the shim did not start within 30 s')
  return { inst, port }
}

const shimFuzz: Row = {
  id: 'shim-fuzz',
  title: 'shim HTTP endpoint: malformed requests, huge bodies, bad bincode, a few hundred slow partial requests',
  mustShow: 'server alive, answers a valid status request within 1 s during and after',
  trials: { full: 10_000, quick: 1000 },
  unit: 'requests',
  async run(env, rec) {
    const { inst, port } = await shimDaemon((what, fn) => env.cleanup.defer(what, fn))
    const before = await daemonStatus(inst)

    // slow partial requests: a header line a byte at a time, held open for the whole run
    const slow: Socket[] = []
    let stopSlow = false
    const slowCount = env.quick ? 300 : 400
    for (let i = 0; i < slowCount; i++) {
      const s = connect({ host: '127.0.0.1', port })
      s.on('error', () => {})
      slow.push(s)
    }
    env.cleanup.defer('close the slow requests', () => { stopSlow = true; for (const s of slow) s.destroy() })
    const drip = (async () => {
      const text = 'GET /api/v1/scheduler/status HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ' + 'a'.repeat(10_000)
      for (let at = 0; !stopSlow && at < text.length; at++) {
        for (const s of slow) if (!s.destroyed) s.write(text[at]!)
        await sleep(500)
      }
    })()

    // the probe: a status request every 250 ms, which must be answered within 1 s
    const probes: number[] = []
    let lateProbes = 0
    let probing = true
    const prober = (async () => {
      while (probing) {
        const ms = await probe(port)
        if (ms === null) lateProbes++
        else probes.push(ms)
        await sleep(250)
      }
    })()
    await sleep(1000)

    const kinds: Record<Kind, number> = { malformed: 0, 'huge body': 0, 'bad bincode': 0, valid: 0 }
    const statuses = new Map<string, number>()
    await inParallel(Array.from({ length: env.trials }, (_, i) => i), 32, async (i) => {
      const r = env.rand.derive(`request ${i}`)
      const kind = r.pick(['malformed', 'malformed', 'huge body', 'bad bincode', 'valid'] as const)
      kinds[kind]++
      await rec.trial(`request ${i} (${kind})`, async () => {
        const out = await send(port, request(r, kind), 15_000)
        const key = out.status === null ? (out.closed ? 'closed' : 'no answer') : String(out.status)
        statuses.set(key, (statuses.get(key) ?? 0) + 1)
        if (!out.closed && out.status === null) return 'neither answered nor closed within 15 s'
        if (kind === 'valid' && out.status !== 200) return `a valid status request got ${key}`
        return null
      })
    })
    probing = false
    await prober
    const during = probes.length
    const lateDuring = lateProbes
    stopSlow = true
    await drip
    for (const s of slow) s.destroy()
    const afterMs = await probe(port)
    const after = await daemonStatus(inst)
    if (lateDuring > 0) rec.fail('status probes during the fuzz', `${lateDuring} of ${during + lateDuring} got no answer within 1 s`)
    if (afterMs === null) rec.fail('the status probe after the fuzz', 'no answer within 1 s')
    if (after.daemon.pid !== before.daemon.pid) rec.fail('the daemon', 'was replaced during the fuzz')
    const sorted = [...probes].sort((a, b) => a - b)
    const p = (q: number) => sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!.toFixed(0) : '-'
    rec.figure(`server alive; ${during} of ${during + lateDuring} status probes during the fuzz answered within 1 s (median ${p(0.5)} ms, slowest ${p(1)} ms), the one after in ${afterMs === null ? 'more than 1000' : afterMs.toFixed(0)} ms; daemon RSS ${fmtMiB(before.daemon.memory.rss)} → ${fmtMiB(after.daemon.memory.rss)}`)
    rec.note(`${env.trials} requests, 32 connections at a time: ${Object.entries(kinds).map(([k, n]) => `${k} ${n}`).join(', ')}`,
      '(malformed: random bytes, broken request lines and headers, 20 KB headers, broken chunking; huge body: a declared length from 65 KiB to 1 TiB with part of it sent, or a chunked body past the 64 KiB cap;',
      `bad bincode: alloc_job with a random body; valid: a status request, which must get 200), while ${slowCount} connections send a request header one byte every 500 ms for the whole run.`,
      `Answers: ${[...statuses].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ×${n}`).join(', ')}. A status probe (GET, as the stock client sends it) every 250 ms throughout must get its 200 within 1 s.`)
  }
}

export const shimGroup: RowGroup = { rows: [shimFuzz] }
