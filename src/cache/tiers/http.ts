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
  const [urlText, ...attrs] = spec.split('|')
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
  for (const a of attrs) {
    const eq = a.indexOf('=')
    const name = eq < 0 ? a : a.slice(0, eq)
    const value = eq < 0 ? '' : a.slice(eq + 1)
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

  async get(key: string, limit: number, signal: AbortSignal): Promise<Buffer | null> {
    const res = await fetch(entryUrl(this.store, key), { headers: this.store.headers, signal })
    if (res.status === 404 || res.status === 410) {
      await res.body?.cancel()
      return null
    }
    if (!res.ok) {
      await res.body?.cancel()
      throw new Error(`GET answered HTTP ${res.status}`)
    }
    const declared = Number(res.headers.get('content-length') ?? NaN)
    if (declared > limit) {
      await res.body?.cancel()
      throw new Error(`entry of ${declared} bytes exceeds the limit of ${limit}`)
    }
    const chunks: Buffer[] = []
    let got = 0
    const reader = res.body?.getReader()
    for (;;) {
      const r = await reader?.read()
      if (!r || r.done) break
      got += r.value.length
      if (got > limit) {
        await reader!.cancel()
        throw new Error(`entry longer than the limit of ${limit} bytes`)
      }
      chunks.push(Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength))
    }
    return Buffer.concat(chunks, got)
  }

  async put(key: string, blob: Buffer, signal: AbortSignal): Promise<void> {
    const res = await fetch(entryUrl(this.store, key), {
      method: 'PUT', body: new Uint8Array(blob.buffer, blob.byteOffset, blob.byteLength) as Uint8Array<ArrayBuffer>, signal,
      headers: { ...this.store.headers, 'content-type': 'application/octet-stream' }
    })
    await res.body?.cancel()
    if (!res.ok) throw new Error(`PUT answered HTTP ${res.status}`)
  }

  async close(): Promise<void> {}
}
