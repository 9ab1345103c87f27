// A Redis server as a second-tier store: GET and SET of "meshcc:<key>" over one connection,
// in RESP (the Redis serialization protocol). URL: redis://[[user:]password@]host[:port][/db]
// (rediss:// for TLS), as ccache's redis storage takes it.
//
// Hand-written rather than ioredis or @redis/client: three commands are all this needs, and the
// one thing it must do that those clients cannot is refuse a reply by its announced length
// before reading it (a "$<n>" header over the limit drops the connection): they buffer any bulk
// reply whole, so a store, or whatever answers on that port, could make the daemon allocate
// hundreds of MiB per lookup. Their reconnect loops, offline queues and retries would also have
// to be switched off one by one: here a failed connection fails its commands at once, and
// remote-tier.ts decides when to try again.
import { connect as netConnect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import type { BlobBackend } from './remote-tier.js'

/** ccache keeps "ccache:<digest>" keys: one Redis can serve both without their entries meeting */
const KEY_PREFIX = 'meshcc:'
const MAX_LINE_BYTES = 64 * 1024
const DEFAULT_PORT = 6379

export interface RedisUrl { host: string; port: number; tls: boolean; username: string | null; password: string | null; db: number; name: string }

/** Parse redis://…; throws a one-line Error naming what is wrong. */
export function parseRedisUrl(text: string): RedisUrl {
  let u: URL
  try { u = new URL(text) } catch { throw new Error(`"${text.slice(0, 80)}" is not a URL`) }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new Error(`"${u.protocol}" is not redis: or rediss:`)
  if (u.hostname === '') throw new Error('the URL names no host')
  const port = u.port === '' ? DEFAULT_PORT : Number(u.port)
  const path = u.pathname.replace(/^\//, '')
  if (path !== '' && !/^\d{1,5}$/.test(path)) throw new Error(`"/${path}" is not a database number`)
  const db = path === '' ? 0 : Number(path)
  const username = u.username === '' ? null : decodeURIComponent(u.username)
  const password = u.password === '' ? null : decodeURIComponent(u.password)
  // a URL with only "user@" means a password (as ccache reads it)
  const auth = password ?? username
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''), port, tls: u.protocol === 'rediss:',
    username: password !== null ? username : null, password: auth, db,
    name: `${u.protocol}//${u.host}${db ? `/${db}` : ''}`
  }
}

/** One command as RESP: an array of bulk strings. */
function encodeCommand(args: Array<string | Buffer>): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)]
  for (const a of args) {
    const b = typeof a === 'string' ? Buffer.from(a) : a
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'))
  }
  return Buffer.concat(parts)
}

type Reply = string | number | Buffer | null
interface Pending { limit: number; resolve: (r: Reply) => void; reject: (e: Error) => void }

export class RedisError extends Error {}

/** One connection; replies are matched to commands in order. Any trouble closes it and fails what waits. */
class RespConnection {
  private readonly pending: Pending[] = []
  private line: Buffer[] = []
  private lineBytes = 0
  private bulk: Buffer | null = null
  private bulkFill = 0
  closed = false

  constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      try { this.feed(chunk) } catch (err) { this.close(err as Error) }
    })
    socket.on('error', (err) => this.close(err))
    socket.on('close', () => this.close(new Error('connection closed')))
  }

  send(args: Array<string | Buffer>, limit: number): Promise<Reply> {
    if (this.closed) return Promise.reject(new Error('connection closed'))
    return new Promise((resolve, reject) => {
      this.pending.push({ limit, resolve, reject })
      this.socket.write(encodeCommand(args))
    })
  }

  close(err: Error): void {
    if (!this.closed) {
      this.closed = true
      this.socket.destroy()
    }
    for (const p of this.pending.splice(0)) p.reject(err)
  }

  private deliver(r: Reply | Error): void {
    const p = this.pending.shift()
    if (!p) throw new Error('a reply nobody asked for')
    if (r instanceof Error) p.reject(r)
    else p.resolve(r)
  }

  private feed(chunk: Buffer): void {
    let off = 0
    while (off < chunk.length) {
      if (this.bulk) {
        const n = Math.min(this.bulk.length - this.bulkFill, chunk.length - off)
        chunk.copy(this.bulk, this.bulkFill, off, off + n)
        this.bulkFill += n
        off += n
        if (this.bulkFill < this.bulk.length) continue
        const full = this.bulk
        this.bulk = null
        if (full[full.length - 2] !== 13 || full[full.length - 1] !== 10) throw new Error('bulk reply not followed by CRLF')
        this.deliver(full.subarray(0, full.length - 2))
        continue
      }
      const nl = chunk.indexOf(10, off)
      const end = nl === -1 ? chunk.length : nl + 1
      this.line.push(chunk.subarray(off, end))
      this.lineBytes += end - off
      off = end
      if (this.lineBytes > MAX_LINE_BYTES) throw new Error(`reply line longer than ${MAX_LINE_BYTES} bytes`)
      if (nl === -1) continue
      const text = Buffer.concat(this.line).toString('utf8').replace(/\r?\n$/, '')
      this.line = []
      this.lineBytes = 0
      this.onLine(text)
    }
  }

  private onLine(text: string): void {
    const type = text[0]
    const rest = text.slice(1)
    if (type === '+') return this.deliver(rest)
    if (type === '-') return this.deliver(new RedisError(rest.slice(0, 300)))
    if (type === ':') return this.deliver(Number(rest))
    if (type === '$') {
      if (!/^-?\d+$/.test(rest)) throw new Error('bad bulk length')
      const n = Number(rest)
      if (n < 0) return this.deliver(null)
      const limit = this.pending[0]?.limit ?? 0
      if (n > limit) throw new Error(`reply of ${n} bytes exceeds the limit of ${limit}`)
      this.bulk = Buffer.allocUnsafe(n + 2)
      this.bulkFill = 0
      return
    }
    throw new Error(`unexpected reply type ${JSON.stringify(type ?? '')}`)
  }
}

export interface RedisBackendOptions {
  /** a connection must be up within this (default 1000 ms) */
  connectTimeoutMs?: number
}

export class RedisBackend implements BlobBackend {
  readonly name: string
  private readonly url: RedisUrl
  private conn: Promise<RespConnection> | null = null

  constructor(url: string, private readonly opts: RedisBackendOptions = {}) {
    this.url = parseRedisUrl(url)
    this.name = this.url.name
  }

  async get(key: string, limit: number, signal: AbortSignal): Promise<Buffer | null> {
    const r = await this.command(['GET', KEY_PREFIX + key], limit, signal)
    if (r !== null && !Buffer.isBuffer(r)) throw new Error(`GET answered ${typeof r}`)
    return r
  }

  async put(key: string, blob: Buffer, signal: AbortSignal): Promise<void> {
    const r = await this.command(['SET', KEY_PREFIX + key, blob], 0, signal)
    if (r !== 'OK') throw new Error(`SET answered ${JSON.stringify(String(r)).slice(0, 80)}`)
  }

  async close(): Promise<void> {
    const c = this.conn
    this.conn = null
    if (c) (await c.catch(() => null))?.close(new Error('closed'))
  }

  private async command(args: Array<string | Buffer>, limit: number, signal: AbortSignal): Promise<Reply> {
    signal.throwIfAborted()
    const conn = await this.connection(signal)
    // an abandoned reply would answer the next command: a command given up on closes the connection
    const onAbort = () => conn.close(new Error(String(signal.reason?.message ?? 'aborted')))
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      return await conn.send(args, limit)
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }

  private connection(signal: AbortSignal): Promise<RespConnection> {
    if (this.conn) return this.conn.then((c) => (c.closed ? this.reconnect(signal) : c))
    return this.reconnect(signal)
  }

  private reconnect(signal: AbortSignal): Promise<RespConnection> {
    const { host, port, tls, username, password, db } = this.url
    const p = new Promise<RespConnection>((resolve, reject) => {
      const socket = tls ? tlsConnect({ host, port, servername: host }) : netConnect({ host, port })
      socket.setNoDelay(true)
      const timeout = AbortSignal.any([signal, AbortSignal.timeout(this.opts.connectTimeoutMs ?? 1000)])
      const fail = (err: Error) => { cleanup(); socket.destroy(); reject(err) }
      const onAbort = () => fail(new Error(`no connection to ${host}:${port} within the time allowed`))
      const onError = (err: Error) => fail(err)
      const cleanup = () => { timeout.removeEventListener('abort', onAbort); socket.off('error', onError) }
      timeout.addEventListener('abort', onAbort, { once: true })
      socket.once('error', onError)
      socket.once(tls ? 'secureConnect' : 'connect', () => {
        cleanup()
        const conn = new RespConnection(socket)
        const setup: Array<Promise<Reply>> = []
        if (password !== null) setup.push(conn.send(username !== null ? ['AUTH', username, password] : ['AUTH', password], 0))
        if (db !== 0) setup.push(conn.send(['SELECT', String(db)], 0))
        Promise.all(setup).then(() => resolve(conn), (err: Error) => { conn.close(err); reject(err) })
      })
    })
    this.conn = p
    p.catch(() => { if (this.conn === p) this.conn = null })
    return p
  }
}
