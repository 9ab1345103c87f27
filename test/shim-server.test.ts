// The shim over real HTTP on 127.0.0.1, including requests shaped like the stock client's
// (reqwest: Connection: close, Accept: */*, bearer token, octet-stream body).
import { test, after, before } from 'node:test'
import assert from 'node:assert/strict'
import { connect, createServer as createNetServer, type Socket } from 'node:net'
import type { Logger } from '../src/log.js'
import type { LogLevel } from '../src/config.js'
import { BincodeReader } from '../src/shim/bincode.js'
import { ALLOC_JOB_FAIL_MESSAGE, parseListen, prefersJson, startShimServer, type ShimServer } from '../src/shim/server.js'

function captureLogger(lines: string[]): Logger {
  const at = (level: LogLevel) => (msg: string) => { lines.push(`${level} ${msg}`) }
  const self: Logger = {
    error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'),
    child: () => self,
    enabled: () => true
  }
  return self
}

interface RawResponse { status: number; headers: Record<string, string>; body: Buffer }

/** Sends raw bytes, reads until the server closes (bounded by a timeout), parses one response. */
function raw(address: string, request: Buffer | string, opts: { endAfterWrite?: boolean } = {}): Promise<RawResponse> {
  const { host, port } = parseListen(address)
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port })
    const chunks: Buffer[] = []
    const timer = setTimeout(() => { sock.destroy(); reject(new Error('timed out waiting for the response')) }, 5000)
    sock.on('data', (c) => chunks.push(c))
    sock.on('error', () => { /* EPIPE/ECONNRESET after a refusal: parse what arrived */ })
    sock.on('close', () => {
      clearTimeout(timer)
      const all = Buffer.concat(chunks)
      const sep = all.indexOf('\r\n\r\n')
      if (sep < 0) { reject(new Error(`no HTTP response: ${JSON.stringify(all.toString('latin1'))}`)); return }
      const [statusLine, ...headerLines] = all.subarray(0, sep).toString('latin1').split('\r\n')
      const headers: Record<string, string> = {}
      for (const l of headerLines) {
        const i = l.indexOf(':')
        headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
      }
      const rest = all.subarray(sep + 4)
      const len = headers['content-length'] !== undefined ? Number(headers['content-length']) : rest.length
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body: rest.subarray(0, len) })
    })
    sock.write(request, () => { if (opts.endAfterWrite !== false) sock.end() })
  })
}

function clientRequest(method: string, path: string, headers: Record<string, string | number>, body: Buffer = Buffer.alloc(0)): Buffer {
  const lines = [`${method} ${path} HTTP/1.1`, 'host: 127.0.0.1', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)]
  return Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1'), body])
}

const TOOLCHAIN_72 = Buffer.concat([
  Buffer.from('4000000000000000', 'hex'),
  Buffer.from('5f2b1c0e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c', 'ascii')
])

let shim: ShimServer
const logLines: string[] = []
let status = { numServers: 3, numCpus: 56, inProgress: 24 }
let statusThrows = false

before(async () => {
  shim = await startShimServer({
    listen: '127.0.0.1:0',
    log: captureLogger(logLines),
    maxBodyBytes: 4096,
    getStatus: () => {
      if (statusThrows) throw new Error('mesh view not ready')
      return status
    }
  })
})
after(async () => { await shim.close() })

test('binds the requested host with a real port', () => {
  assert.match(shim.address, /^127\.0\.0\.1:\d+$/)
  assert.notEqual(parseListen(shim.address).port, 0)
})

test('GET status returns the exact 24 bytes (as the stock client asks)', async () => {
  const res = await raw(shim.address, clientRequest('GET', '/api/v1/scheduler/status', { accept: '*/*', connection: 'close' }))
  assert.equal(res.status, 200)
  assert.equal(res.headers['content-type'], 'application/octet-stream')
  assert.equal(res.headers['content-length'], '24')
  assert.deepEqual(res.body, Buffer.from('030000000000000038000000000000001800000000000000', 'hex'))
})

test('status without Accept is bincode too, and numbers are read per request', async () => {
  status = { numServers: 1, numCpus: 8, inProgress: 0 }
  try {
    const res = await fetch(`http://${shim.address}/api/v1/scheduler/status`, { headers: { accept: '' } })
    assert.equal(res.status, 200)
    const body = new BincodeReader(Buffer.from(await res.arrayBuffer()))
    assert.deepEqual([body.u64(), body.u64(), body.u64(), body.remaining], [1, 8, 0, 0])
  } finally {
    status = { numServers: 3, numCpus: 56, inProgress: 24 }
  }
})

test('status as JSON when Accept prefers application/json', async () => {
  const res = await fetch(`http://${shim.address}/api/v1/scheduler/status`, { headers: { accept: 'application/json' } })
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/)
  assert.equal(await res.text(), '{"num_servers":3,"num_cpus":56,"in_progress":24}')
})

test('Accept negotiation follows rouille: ties and no match go to bincode', () => {
  assert.equal(prefersJson(undefined), false)
  assert.equal(prefersJson('*/*'), false)
  assert.equal(prefersJson('application/octet-stream'), false)
  assert.equal(prefersJson('application/json'), true)
  assert.equal(prefersJson('text/html, application/json;q=0.9'), true)
  assert.equal(prefersJson('application/json;q=0.5, application/octet-stream'), false)
  assert.equal(prefersJson('application/octet-stream;q=0.1, application/json'), true)
  assert.equal(prefersJson('application/*'), false)
  assert.equal(prefersJson('text/plain'), false)
})

test('HEAD status has headers only', async () => {
  const res = await fetch(`http://${shim.address}/api/v1/scheduler/status`, { method: 'HEAD' })
  assert.equal(res.status, 200)
  assert.equal(res.headers.get('content-length'), '24')
  assert.equal((await res.arrayBuffer()).byteLength, 0)
})

function assertFail(body: Buffer): string {
  const r = new BincodeReader(body)
  assert.equal(r.u32(), 1, 'AllocJobHttpResponse variant 1 = Fail')
  const msg = r.string()
  assert.equal(r.remaining, 0)
  return msg
}

test('alloc_job exactly as the stock client sends it gets 200 + Fail', async () => {
  const res = await raw(shim.address, clientRequest('POST', '/api/v1/scheduler/alloc_job', {
    authorization: 'Bearer dangerously_insecure_client',
    'content-type': 'application/octet-stream',
    'content-length': 72,
    accept: '*/*',
    connection: 'close'
  }, TOOLCHAIN_72))
  assert.equal(res.status, 200)
  assert.equal(res.headers['content-type'], 'application/octet-stream')
  assert.equal(Number(res.headers['content-length']), res.body.length)
  assert.equal(assertFail(res.body), ALLOC_JOB_FAIL_MESSAGE)
  assert.ok(logLines.some((l) => l.includes('alloc_job') && l.includes('5f2b1c0e')), 'logged the toolchain id')
})

test('alloc_job never answers 4xx: no token, odd content type, garbage or empty body', async () => {
  const cases: Array<[Record<string, string>, Buffer]> = [
    [{}, TOOLCHAIN_72],
    [{ authorization: 'Bearer wrong', 'content-type': 'text/plain' }, TOOLCHAIN_72],
    [{ authorization: 'Basic xyz' }, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1])],
    [{ authorization: 'Bearer x' }, Buffer.alloc(0)]
  ]
  for (const [headers, body] of cases) {
    const res = await fetch(`http://${shim.address}/api/v1/scheduler/alloc_job`, { method: 'POST', headers, body: new Uint8Array(body) })
    assert.equal(res.status, 200, JSON.stringify(headers))
    assertFail(Buffer.from(await res.arrayBuffer()))
  }
})

test('server_certificate answers 500 (client falls back), build-server paths 5xx, unknown 404', async () => {
  const cert = await fetch(`http://${shim.address}/api/v1/scheduler/server_certificate/192.168.1.10:10501`)
  assert.equal(cert.status, 500)
  assert.equal((await cert.json() as { cause: unknown }).cause, null)
  for (const path of ['/api/v1/scheduler/heartbeat_server', '/api/v1/scheduler/job_state/7']) {
    const res = await fetch(`http://${shim.address}${path}`, { method: 'POST', body: new Uint8Array([1, 0, 0, 0]), headers: { authorization: 'Bearer 127.0.0.1:1 x' } })
    assert.equal(res.status, 500, path)
    await res.arrayBuffer()
  }
  for (const [method, path] of [['GET', '/'], ['GET', '/api/v1/scheduler/alloc_job'], ['POST', '/api/v1/scheduler/status'], ['GET', '/api/v1/distserver/run_job/1'], ['DELETE', '/api/v1/scheduler/status/../status'], ['GET', '/%ff%00']] as const) {
    const res = await fetch(`http://${shim.address}${path}`, { method })
    assert.equal(res.status, 404, `${method} ${path}`)
    assert.equal((await res.arrayBuffer()).byteLength, 0)
  }
})

test('malformed HTTP gets a 400 and the server keeps serving', async () => {
  const res = await raw(shim.address, 'THIS IS NOT HTTP\r\n\0\0\r\n\r\n')
  assert.equal(res.status, 400)
  const ok = await raw(shim.address, clientRequest('GET', '/api/v1/scheduler/status', { connection: 'close' }))
  assert.equal(ok.status, 200)
})

test('oversize bodies are refused without reading them: 413, or 500 on alloc_job', async () => {
  const big = clientRequest('POST', '/api/v1/scheduler/heartbeat_server', { 'content-length': 10_000_000, 'content-type': 'application/octet-stream' }, Buffer.alloc(100))
  const res = await raw(shim.address, big, { endAfterWrite: false })
  assert.equal(res.status, 413)
  assert.equal(res.headers.connection, 'close')

  // alloc_job is a client path: a 4xx there would fail the user's compile
  const alloc = await raw(shim.address, clientRequest('POST', '/api/v1/scheduler/alloc_job', { 'content-length': 5000, authorization: 'Bearer x' }, Buffer.alloc(5000)))
  assert.equal(alloc.status, 500)

  // chunked (no declared length): cut off while streaming
  const chunk = Buffer.alloc(3000, 0x61)
  const chunked = Buffer.concat([
    clientRequest('POST', '/api/v1/scheduler/job_state/1', { 'transfer-encoding': 'chunked' }),
    Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n'),
    Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n0\r\n\r\n')
  ])
  const streamed = await raw(shim.address, chunked)
  assert.equal(streamed.status, 413)

  const refused = logLines.filter((l) => l.startsWith('warn refused'))
  assert.equal(refused.length, 3, refused.join(' | '))
  assert.ok(refused.every((l) => !l.includes('\n')), 'one-line logs')
  const ok = await fetch(`http://${shim.address}/api/v1/scheduler/status`)
  assert.equal(ok.status, 200)
  await ok.arrayBuffer()
})

test('a failing getStatus gives 500, logged, and does not take the server down', async () => {
  statusThrows = true
  try {
    const res = await fetch(`http://${shim.address}/api/v1/scheduler/status`)
    assert.equal(res.status, 500)
    await res.arrayBuffer()
    assert.ok(logLines.some((l) => l.includes('mesh view not ready')))
  } finally {
    statusThrows = false
  }
  const bad = await startShimServer({ listen: '127.0.0.1:0', log: captureLogger([]), getStatus: () => ({ numServers: -1, numCpus: 1.5, inProgress: 0 }) })
  try {
    const res = await fetch(`http://${bad.address}/api/v1/scheduler/status`)
    assert.equal(res.status, 500)
    await res.arrayBuffer()
  } finally {
    await bad.close()
  }
})

test('a burst of concurrent clients is served', async () => {
  const results = await Promise.all(Array.from({ length: 50 }, () =>
    raw(shim.address, clientRequest('GET', '/api/v1/scheduler/status', { connection: 'close' }))))
  assert.ok(results.every((r) => r.status === 200 && r.body.length === 24))
})

test('a few hundred slow partial requests do not lock out a status request', async () => {
  // request heads sent a byte at a time hold their connections; more of them than the server
  // keeps open (256) once made it refuse every other client until they timed out
  const slow = await Promise.all(Array.from({ length: 300 }, () => new Promise<Socket>((resolve) => {
    const sock = connect({ ...parseListen(shim.address) }, () => { sock.write('GET /api/v1/scheduler/status HTTP/1.1\r\nhost: 127'); resolve(sock) })
    sock.on('error', () => {})
  })))
  try {
    await new Promise((r) => setTimeout(r, 200))
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now()
      const res = await raw(shim.address, clientRequest('GET', '/api/v1/scheduler/status', { connection: 'close' }))
      assert.equal(res.status, 200)
      assert.ok(Date.now() - t0 < 1000, `answered in ${Date.now() - t0} ms`)
    }
  } finally {
    for (const s of slow) s.destroy()
  }
})

test('listen errors reject with a clear message', async () => {
  await assert.rejects(startShimServer({ listen: 'nonsense', log: captureLogger([]), getStatus: () => status }), /expected host:port/)
  await assert.rejects(startShimServer({ listen: '127.0.0.1:70000', log: captureLogger([]), getStatus: () => status }), /expected host:port/)
  const taken = parseListen(shim.address).port
  await assert.rejects(startShimServer({ listen: `127.0.0.1:${taken}`, log: captureLogger([]), getStatus: () => status }), /EADDRINUSE/)
})

test('IPv6 loopback address is formatted with brackets', async (t) => {
  const probe = createNetServer()
  const v6 = await new Promise<boolean>((resolve) => {
    probe.once('error', () => resolve(false))
    probe.listen({ host: '::1', port: 0 }, () => probe.close(() => resolve(true)))
  })
  if (!v6) { t.skip('no IPv6 loopback on this machine'); return }
  const s = await startShimServer({ listen: '[::1]:0', log: captureLogger([]), getStatus: () => status })
  try {
    assert.match(s.address, /^\[::1\]:\d+$/)
    const res = await fetch(`http://${s.address}/api/v1/scheduler/status`)
    assert.equal((await res.arrayBuffer()).byteLength, 24)
  } finally {
    await s.close()
  }
})

test('close is idempotent and really closes', async () => {
  const s = await startShimServer({ listen: '127.0.0.1:0', log: captureLogger([]), getStatus: () => status })
  await Promise.all([s.close(), s.close()])
  await s.close()
  await assert.rejects(fetch(`http://${s.address}/api/v1/scheduler/status`))
})
