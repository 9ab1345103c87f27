// Legacy sccache scheduler shim: a plain-HTTP server speaking just enough of the
// `sccache-dist scheduler` API (docs/sccache-protocol.md 1.3, 1.5, 1.11) that a stock
// `sccache` client with `scheduler_url` pointing here shows the mesh in `--dist-status`,
// and compiles locally (never fails) whenever it asks for a job.
//
// Status codes matter more than usual here: the stock client turns any 4xx into a FAILED
// compile, while 5xx / decode errors fall back to a local compile. So paths a client uses
// (status, alloc_job, server_certificate) never answer 4xx.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { Logger } from '../log.js'
import {
  decodeToolchain,
  encodeAllocJobFail,
  encodeSchedulerStatus,
  schedulerStatusJson,
  type SchedulerStatus
} from './bincode.js'

export interface ShimServerOptions {
  /** "host:port" or "[v6]:port"; port 0 picks a free port */
  listen: string
  log: Logger
  /** called for every status request; must be cheap (a client's daemon start-up waits on it) */
  getStatus: () => SchedulerStatus
  /** largest request body accepted; default 64 KiB (real alloc_job bodies are 72 or 136 bytes) */
  maxBodyBytes?: number
}

export interface ShimServer {
  /** "host:port" actually bound ("[::1]:port" for IPv6) */
  address: string
  close(): Promise<void>
}

export const DEFAULT_MAX_BODY_BYTES = 64 * 1024
/** connections kept open at once; at the limit a new one closes the longest-waiting idle one */
const MAX_CONNECTIONS = 256

/** What alloc_job answers: the client logs it and compiles locally. */
export const ALLOC_JOB_FAIL_MESSAGE =
  'meshcc: jobs are not handed out over the sccache protocol; compile locally (use meshcc as the compiler wrapper to build on the mesh)'

const PREFIX = '/api/v1/scheduler/'

/** Parses "host:port" / "[v6]:port"; port must be 0..65535. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(listen) ?? /^([^:[\]]+):(\d{1,5})$/.exec(listen)
  const port = m ? Number(m[2]) : NaN
  if (!m || port > 65535) throw new Error(`shim listen address "${listen}": expected host:port (e.g. 127.0.0.1:10600 or [::1]:10600)`)
  return { host: m[1], port }
}

function formatAddress(a: AddressInfo): string {
  return a.family === 'IPv6' || a.address.includes(':') ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
}

/**
 * rouille's `accept!` as used by sccache's `prepare_response` with the candidates
 * [octet-stream, json]: the highest q wins, ties go to the earlier candidate, and no match
 * (or no Accept header, i.e. "*\/*") means bincode. Returns true when JSON wins.
 */
export function prefersJson(accept: string | undefined): boolean {
  const header = accept ?? '*/*'
  const candidates = ['application/octet-stream', 'application/json']
  const entries = header.split(',').map((elem) => {
    const [type, ...params] = elem.split(';')
    let q = 1
    for (const p of params) {
      const t = p.trimStart()
      if (t.startsWith('q=')) {
        const v = t.slice(2).trim()
        // Rust's f32::from_str; an unparsable q leaves the default 1.0, as in rouille
        if (/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(v)) { q = Number(v); break }
      }
    }
    return { type: type.trim(), q }
  })
  let best: number | null = null
  let bestQ = -Infinity
  candidates.forEach((cand, index) => {
    const [cl, cr] = cand.split('/')
    for (const { type, q } of entries) {
      if (q <= bestQ) continue
      const [hl, hr] = type.split('/')
      const match = cand === type ||
        ((cl === '*' || hl === '*') && (cr === hr || cr === '*' || hr === '*')) ||
        ((cr === '*' || hr === '*') && (cl === hl || cl === '*' || hl === '*'))
      if (match) { best = index; bestQ = q }
    }
  })
  return best === 1
}

/** The reference servers' error body: `{"description": "...", "cause": null}`. */
function errorJson(description: string): string {
  return JSON.stringify({ description, cause: null })
}

/** Keeps client-supplied text in one short log line. */
function clip(s: string, max = 120): string {
  const flat = s.replace(/[\x00-\x1f\x7f]/g, '?')
  return flat.length > max ? `${flat.slice(0, max)}…` : flat
}

type Body = { ok: true; data: Buffer } | { ok: false; reason: 'too-large' | 'aborted' }

/** Reads at most `limit` bytes; stops as soon as more arrive (declared or streamed). */
function readBody(req: IncomingMessage, limit: number): Promise<Body> {
  const declared = req.headers['content-length']
  if (declared !== undefined && Number(declared) > limit) return Promise.resolve({ ok: false, reason: 'too-large' })
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let size = 0
    let done = false
    const finish = (b: Body) => {
      if (done) return
      done = true
      resolve(b)
    }
    req.on('data', (chunk: Buffer) => {
      if (done) return
      size += chunk.length
      if (size > limit) {
        req.pause()
        finish({ ok: false, reason: 'too-large' })
        return
      }
      chunks.push(chunk)
    })
    req.on('end', () => finish({ ok: true, data: Buffer.concat(chunks, size) }))
    req.on('error', () => finish({ ok: false, reason: 'aborted' }))
    req.on('close', () => finish(req.complete ? { ok: true, data: Buffer.concat(chunks, size) } : { ok: false, reason: 'aborted' }))
  })
}

function send(res: ServerResponse, status: number, contentType: string | null, body: Buffer | string, close = false): void {
  if (res.headersSent || res.destroyed) return
  const data = typeof body === 'string' ? Buffer.from(body, 'utf8') : body
  const headers: Record<string, string | number> = { 'Content-Length': data.length }
  if (contentType) headers['Content-Type'] = contentType
  // After refusing a body we did not read, the connection cannot be reused.
  if (close) headers.Connection = 'close'
  res.writeHead(status, headers)
  res.end(data)
}

export function startShimServer(opts: ShimServerOptions): Promise<ShimServer> {
  const { log, getStatus } = opts
  const maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES
  let target: { host: string; port: number }
  try {
    target = parseListen(opts.listen)
  } catch (err) {
    return Promise.reject(err)
  }

  const statusReply = (req: IncomingMessage, res: ServerResponse) => {
    let status: SchedulerStatus
    let body: Buffer | string
    const json = prefersJson(req.headers.accept)
    try {
      status = getStatus()
      body = json ? schedulerStatusJson(status) : encodeSchedulerStatus(status)
    } catch (err) {
      // 5xx: a client reports NotConnected ("could not communicate with scheduler")
      log.warn(`status unavailable: ${clip((err as Error).message ?? String(err))}`)
      send(res, 500, 'application/json', errorJson('status unavailable'))
      return
    }
    send(res, 200, json ? 'application/json; charset=utf-8' : 'application/octet-stream', body)
  }

  const allocJobReply = (req: IncomingMessage, res: ServerResponse, body: Buffer) => {
    // No token check on purpose: the shim has nothing to protect here (it hands out no
    // work), and a 401 would make the client's compile fail instead of running locally.
    const hasBearer = /^Bearer /i.test(req.headers.authorization ?? '')
    let toolchain = '(undecodable body)'
    try { toolchain = clip(decodeToolchain(body).archiveId, 70) } catch { /* still answer Fail */ }
    log.debug(`alloc_job from ${req.socket.remoteAddress ?? '?'} (toolchain ${toolchain}${hasBearer ? '' : ', no bearer token'}): answering Fail, client compiles locally`)
    send(res, 200, 'application/octet-stream', encodeAllocJobFail(ALLOC_JOB_FAIL_MESSAGE))
  }

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const method = req.method ?? ''
    const rawUrl = req.url ?? ''
    const path = rawUrl.split('?')[0]
    const who = req.socket.remoteAddress ?? '?'
    const clientPath = path === `${PREFIX}status` || path === `${PREFIX}alloc_job` || path.startsWith(`${PREFIX}server_certificate/`)

    const body = await readBody(req, maxBody)
    if (!body.ok) {
      if (body.reason === 'aborted') return
      log.warn(`refused ${clip(method, 10)} ${clip(path)} from ${who}: body larger than ${maxBody} bytes`)
      // 500 on client paths so a stock client would still fall back instead of failing
      send(res, clientPath ? 500 : 413, 'application/json', errorJson(`request body larger than ${maxBody} bytes`), true)
      return
    }

    if ((method === 'GET' || method === 'HEAD') && path === `${PREFIX}status`) return statusReply(req, res)
    if (method === 'POST' && path === `${PREFIX}alloc_job`) return allocJobReply(req, res, body.data)
    if (method === 'GET' && path.startsWith(`${PREFIX}server_certificate/`)) {
      // Never reached by a client we answered (no job ⇒ no server id); the reference
      // scheduler answers 500 for an unknown server, which a client treats as a fallback.
      log.debug(`server_certificate ${clip(path.slice(PREFIX.length + 19))} from ${who}: no such server`)
      return send(res, 500, 'application/json', errorJson('meshcc shim: no build server with that address'))
    }
    if (method === 'POST' && (path === `${PREFIX}heartbeat_server` || path.startsWith(`${PREFIX}job_state/`))) {
      // sccache-dist build servers: not accepted (the mesh has its own workers). 5xx makes
      // them log and retry later rather than treat it as an auth problem.
      log.debug(`${clip(path)} from ${who}: sccache-dist build servers are not accepted`)
      return send(res, 500, 'application/json', errorJson('meshcc shim does not accept sccache-dist build servers'))
    }
    // Like the reference router: unknown path or wrong method → 404, empty body.
    log.debug(`404 ${clip(method, 10)} ${clip(rawUrl)} from ${who}`)
    send(res, 404, null, '')
  }

  const server = createServer((req, res) => {
    res.on('error', () => { /* peer went away; nothing to do */ })
    handle(req, res).catch((err: unknown) => {
      log.warn(`request failed: ${clip((err as Error)?.message ?? String(err))}`)
      send(res, 500, 'application/json', errorJson('internal error'), true)
    })
  })
  // Bound slow or idle peers: the stock client sends small requests with Connection: close.
  server.headersTimeout = 10_000
  server.requestTimeout = 30_000
  server.keepAliveTimeout = 5_000
  // At MAX_CONNECTIONS a new connection closes the one that has waited longest without a
  // request in progress (a request head sent a byte at a time, an idle keep-alive), rather than
  // being refused itself: with net.Server's maxConnections, a few hundred slow partial requests
  // locked every client out until headersTimeout ended them.
  const open = new Set<Socket>()
  const idle = new Map<Socket, true>() // in the order they became idle: the first waited longest
  server.on('connection', (socket: Socket) => {
    if (open.size >= MAX_CONNECTIONS) {
      const oldest = idle.keys().next().value
      if (oldest === undefined) { socket.destroy(); return }
      idle.delete(oldest)
      oldest.destroy()
    }
    open.add(socket)
    idle.set(socket, true)
    socket.once('close', () => { open.delete(socket); idle.delete(socket) })
  })
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket
    idle.delete(socket)
    res.once('close', () => { if (!socket.destroyed) idle.set(socket, true) })
  })
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (err.code !== 'ECONNRESET') log.warn(`bad HTTP request: ${clip(err.code ?? err.message)}`)
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
    else socket.destroy()
  })

  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(new Error(`shim: cannot listen on ${opts.listen}: ${err.code ?? err.message}`))
    }
    server.once('error', onError)
    server.listen({ host: target.host, port: target.port }, () => {
      server.off('error', onError)
      server.on('error', (err) => log.error(`shim server error: ${clip(err.message)}`))
      const address = formatAddress(server.address() as AddressInfo)
      log.info(`sccache scheduler shim listening on http://${address}/`)
      let closing: Promise<void> | null = null
      resolve({
        address,
        close: () => {
          closing ??= new Promise<void>((done) => {
            server.close(() => done())
            server.closeAllConnections()
          })
          return closing
        }
      })
    })
  })
}
