// An HTTP store as a second tier, in ccache's HTTP storage layout, so one store (an nginx WebDAV
// location, bazel-remote, any server that keeps what is PUT) serves both:
//   GET / PUT <url>/<first 2 hex of key>/<rest of key>      layout=subdirs (the default, as ccache)
//              <url>/<key>                                  layout=flat
//              <url>/ac/<key>                               layout=bazel (the key is already 64 hex)
// Written as ccache's remote_storage takes it: "http://host/path|layout=flat|bearer-token=T";
// user:password in the URL is sent as basic authentication, and |header=Name=Value adds a
// header. 404 and 410 are misses; other statuses are failures. A reply larger than the limit is
// refused by its Content-Length, or as soon as it grows past the limit without one.
import type { BlobBackend } from './remote-tier.js'

export type HttpLayout = 'subdirs' | 'flat' | 'bazel'

export interface HttpStoreUrl { base: string; layout: HttpLayout; headers: Record<string, string>; name: string }

/** Parse "http(s)://…[|attr=value…]"; throws a one-line Error naming what is wrong. */
export function parseHttpStoreUrl(spec: string): HttpStoreUrl {
  const { urlText, attrs } = splitAttributes(spec)
  let u: URL
  try { u = new URL(urlText!) } catch { throw new Error(`"${urlText!.slice(0, 80)}" is not a URL`) }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`"${u.protocol}" is not http: or https:`)
  if (u.search !== '' || u.hash !== '') throw new Error('the URL may not have a query or a fragment')
  const headers: Record<string, string> = {}
  if (u.username !== '' || u.password !== '') {
    headers.authorization = `Basic ${Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')}`
    u.username = ''
    u.password = ''
  }
  let layout: HttpLayout = 'subdirs'
  for (const { name, value } of attrs) {
    if (name === 'layout') {
      if (value !== 'subdirs' && value !== 'flat' && value !== 'bazel') throw new Error(`layout "${value}" is not subdirs, flat or bazel`)
      layout = value
    } else if (name === 'bearer-token') {
      headers.authorization = `Bearer ${value}`
    } else if (name === 'header') {
      const [h, ...v] = value.split('=')
      if (!h || v.length === 0) throw new Error(`header "${value.slice(0, 80)}" is not Name=Value`)
      headers[h.toLowerCase()] = v.join('=')
    } else {
      throw new Error(`unknown attribute "${name.slice(0, 40)}" (layout, bearer-token and header are known)`)
    }
  }
  const base = u.toString().replace(/\/?$/, '/')
  return { base, layout, headers, name: base }
}

/** "url|name=value|…" as ccache writes a remote storage: the URL and its attributes in order. */
export function splitAttributes(spec: string): { urlText: string; attrs: Array<{ name: string; value: string }> } {
  const [urlText, ...parts] = spec.split('|')
  const attrs = parts.map((a) => {
    const eq = a.indexOf('=')
    return eq < 0 ? { name: a, value: '' } : { name: a.slice(0, eq), value: a.slice(eq + 1) }
  })
  return { urlText: urlText!, attrs }
}

export function entryUrl(store: HttpStoreUrl, key: string): string {
  if (store.layout === 'flat') return store.base + key
  if (store.layout === 'bazel') return `${store.base}ac/${key}`
  return `${store.base}${key.slice(0, 2)}/${key.slice(2)}`
}

export class HttpBackend implements BlobBackend {
  readonly name: string
  private readonly store: HttpStoreUrl

  constructor(spec: string) {
    this.store = parseHttpStoreUrl(spec)
    this.name = this.store.name
  }

  get(key: string, limit: number, signal: AbortSignal): Promise<Buffer | null> {
    return getBlob(entryUrl(this.store, key), this.store.headers, limit, signal)
  }

  put(key: string, blob: Buffer, signal: AbortSignal): Promise<void> {
    return putBlob(entryUrl(this.store, key), this.store.headers, blob, signal)
  }

  async close(): Promise<void> {}
}

// The requests, shared with the S3 store (s3.ts), which only adds its signature headers.

/** GET `url`: null for 404 and 410, the body if it is within `limit` bytes; throws otherwise. */
export async function getBlob(url: string, headers: Record<string, string>, limit: number, signal: AbortSignal): Promise<Buffer | null> {
  const res = await fetch(url, { headers, signal })
  if (res.status === 404 || res.status === 410) {
    await res.body?.cancel()
    return null
  }
  if (!res.ok) throw new Error(`GET answered HTTP ${res.status}${await errorCode(res)}`)
  const declared = Number(res.headers.get('content-length') ?? NaN)
  if (declared > limit) {
    await res.body?.cancel()
    throw new Error(`entry of ${declared} bytes exceeds the limit of ${limit}`)
  }
  return (await readBounded(res, limit, () => `entry longer than the limit of ${limit} bytes`))!
}

/** PUT `blob` at `url`; throws unless the store answers 2xx. */
export async function putBlob(url: string, headers: Record<string, string>, blob: Buffer, signal: AbortSignal): Promise<void> {
  const res = await fetch(url, {
    method: 'PUT', body: new Uint8Array(blob.buffer, blob.byteOffset, blob.byteLength) as Uint8Array<ArrayBuffer>, signal,
    headers: { ...headers, 'content-type': 'application/octet-stream' }
  })
  if (!res.ok) throw new Error(`PUT answered HTTP ${res.status}${await errorCode(res)}`)
  await res.body?.cancel()
}

/** The body, or null once it grows past `limit` (then `tooLong` names the error, if given). */
async function readBounded(res: Response, limit: number, tooLong?: () => string): Promise<Buffer | null> {
  const chunks: Buffer[] = []
  let got = 0
  const reader = res.body?.getReader()
  for (;;) {
    const r = await reader?.read()
    if (!r || r.done) break
    got += r.value.length
    if (got > limit) {
      await reader!.cancel()
      if (tooLong) throw new Error(tooLong())
      return null
    }
    chunks.push(Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength))
  }
  return Buffer.concat(chunks, got)
}

/** " (Code)" from an S3-style XML error body of at most 4 KiB, else "": the reason in one word for the log. */
async function errorCode(res: Response): Promise<string> {
  const body = await readBounded(res, 4096).catch(() => null)
  const code = /<Code>([A-Za-z]{1,64})<\/Code>/.exec(body?.toString('latin1') ?? '')
  return code ? ` (${code[1]})` : ''
}
