// An S3 bucket (AWS, or any S3-compatible store: MinIO, Ceph's radosgw, Garage, R2…) as a second
// tier: GET and PUT of the object <prefix>/<key>, signed with AWS Signature V4. Written like the
// HTTP store's URL:
//   s3://BUCKET[/PREFIX][|endpoint=http(s)://host[:port]][|region=R][|path-style=true|false][|profile=P]
// The endpoint, region and credentials come from the attributes, else from where the AWS tools
// and sccache (through them) take them: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION /
// AWS_DEFAULT_REGION (else us-east-1), AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+
// AWS_SESSION_TOKEN), else the [profile] (AWS_PROFILE, else default) of ~/.aws/credentials
// (AWS_SHARED_CREDENTIALS_FILE). Never in the URL: config files get shared and logged. No
// credentials at all means unsigned requests (a bucket readable by anyone). They are read when
// the daemon starts. Without an endpoint the store is AWS, addressed by virtual host
// (BUCKET.s3.R.amazonaws.com); with one, by path (ENDPOINT/BUCKET/…), as MinIO and radosgw need.
//
// The requests, their size limits and their misses (404) are the HTTP store's (http.ts). A
// missing object answers 403, not 404, to a caller without s3:ListBucket on the bucket: that is
// a failure here, so the credentials need ListBucket beside GetObject and PutObject.
//
// Signing with npm aws4 (one file, no dependencies, the signer behind `request` and many S3
// tools for a decade) rather than @smithy/signature-v4, which brings the SDK's own stack of
// packages, or a hand-written SigV4, whose canonicalisation is easy to get subtly wrong.
import { readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import aws4 from 'aws4'
import { getBlob, putBlob, splitAttributes } from './http.js'
import type { BlobBackend } from './remote-tier.js'

export interface S3Credentials { accessKeyId: string; secretAccessKey: string; sessionToken?: string }

export interface S3StoreUrl {
  bucket: string
  /** "" or "a/b/" */
  prefix: string
  /** "http(s)://host[:port]" */
  endpoint: string
  region: string
  pathStyle: boolean
  /** |profile=: that profile of the credentials file, over the environment's keys */
  profile: string | undefined
  name: string
}

type Env = Record<string, string | undefined>

const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/
const PREFIX = /^[A-Za-z0-9._\-/]{0,512}$/
const REGION = /^[a-z0-9-]{1,32}$/

/** Parse "s3://…[|attr=value…]" with `env` for what the URL leaves out (but the keys); throws a one-line Error naming what is wrong. */
export function parseS3Url(spec: string, env: Env = process.env): S3StoreUrl {
  const { urlText, attrs } = splitAttributes(spec)
  let u: URL
  try { u = new URL(urlText) } catch { throw new Error(`"${urlText.slice(0, 80)}" is not a URL`) }
  if (u.protocol !== 's3:') throw new Error(`"${u.protocol}" is not s3:`)
  if (u.username !== '' || u.password !== '') throw new Error('credentials go in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or ~/.aws/credentials, not in the URL')
  if (u.port !== '' || u.search !== '' || u.hash !== '') throw new Error('an s3:// URL is s3://BUCKET[/PREFIX]; the endpoint goes in |endpoint=')
  if (!BUCKET.test(u.hostname)) throw new Error(`"${u.hostname.slice(0, 80)}" is not an S3 bucket name (3 to 63 of a-z, 0-9, "." and "-")`)
  const path = decodeURIComponent(u.pathname).replace(/^\/+|\/+$/g, '')
  if (!PREFIX.test(path) || (path !== '' && path.split('/').some((p) => p === '' || p === '.' || p === '..'))) {
    throw new Error(`prefix "${path.slice(0, 80)}" may hold only A-Z, a-z, 0-9, ".", "_", "-" and "/" between names`)
  }
  let endpoint: string | undefined
  let region: string | undefined
  let pathStyle: boolean | undefined
  let profile: string | undefined
  for (const { name, value } of attrs) {
    if (name === 'endpoint') endpoint = value
    else if (name === 'region') region = value
    else if (name === 'profile') profile = value
    else if (name === 'path-style') {
      if (value !== 'true' && value !== 'false') throw new Error(`path-style "${value.slice(0, 40)}" is not true or false`)
      pathStyle = value === 'true'
    } else {
      throw new Error(`unknown attribute "${name.slice(0, 40)}" (endpoint, region, path-style and profile are known)`)
    }
  }
  region ??= env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1'
  if (!REGION.test(region)) throw new Error(`region "${region.slice(0, 40)}" is not a region name`)
  const fromEnv = endpoint === undefined
  endpoint ??= env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL
  const origin = endpoint === undefined ? `https://s3.${region}.amazonaws.com` : endpointOrigin(endpoint, fromEnv)
  pathStyle ??= endpoint !== undefined
  const prefix = path === '' ? '' : `${path}/`
  return {
    bucket: u.hostname, prefix, endpoint: origin, region, pathStyle, profile,
    name: `s3://${u.hostname}/${prefix}${endpoint === undefined ? '' : ` at ${origin}`}`
  }
}

function endpointOrigin(text: string, fromEnv: boolean): string {
  const where = fromEnv ? 'AWS_ENDPOINT_URL' : 'endpoint'
  let e: URL
  try { e = new URL(text) } catch { throw new Error(`${where} "${text.slice(0, 80)}" is not a URL`) }
  if (e.protocol !== 'http:' && e.protocol !== 'https:') throw new Error(`${where} "${text.slice(0, 80)}" is not http:// or https://`)
  if (e.pathname !== '/' || e.search !== '' || e.username !== '') throw new Error(`${where} "${text.slice(0, 80)}" must be only scheme, host and port`)
  return e.origin
}

/** The environment's keys, else a profile of the shared credentials file, else none; throws when a named profile is not there. */
function credentialsFrom(env: Env, profile: string | undefined): S3Credentials | null {
  if (profile === undefined && env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY) {
    return { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY, ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}) }
  }
  const file = env.AWS_SHARED_CREDENTIALS_FILE || join(env.HOME || homedir(), '.aws', 'credentials')
  const name = profile ?? (env.AWS_PROFILE || 'default')
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch {
    if (profile !== undefined) throw new Error(`profile "${profile.slice(0, 40)}": cannot read ${file}`)
    return null
  }
  const section = iniSection(text, name)
  if (section?.aws_access_key_id && section.aws_secret_access_key) {
    return { accessKeyId: section.aws_access_key_id, secretAccessKey: section.aws_secret_access_key, ...(section.aws_session_token ? { sessionToken: section.aws_session_token } : {}) }
  }
  if (profile !== undefined) throw new Error(`profile "${profile.slice(0, 40)}" has no aws_access_key_id and aws_secret_access_key in ${file}`)
  return null
}

/** The keys of [name] in an INI file as the AWS tools write ~/.aws/credentials. */
function iniSection(text: string, name: string): Record<string, string> | null {
  let current: string | null = null
  let found: Record<string, string> | null = null
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue
    const head = /^\[\s*([^\]]+?)\s*\]$/.exec(line)
    if (head) {
      current = head[1]!
      if (current === name) found ??= {}
      continue
    }
    const eq = line.indexOf('=')
    if (current === name && eq > 0) found![line.slice(0, eq).trim().toLowerCase()] = line.slice(eq + 1).trim()
  }
  return found
}

export class S3Backend implements BlobBackend {
  readonly name: string
  readonly store: S3StoreUrl
  /** null: requests go unsigned */
  readonly credentials: S3Credentials | null

  constructor(spec: string, env: Env = process.env) {
    this.store = parseS3Url(spec, env)
    this.credentials = credentialsFrom(env, this.store.profile)
    this.name = this.store.name
  }

  /** The object's URL and the signed headers for one request. */
  request(method: 'GET' | 'PUT', key: string, body?: Buffer): { url: string; headers: Record<string, string> } {
    const s = this.store
    const e = new URL(s.endpoint)
    const host = s.pathStyle ? e.host : `${s.bucket}.${e.host}`
    const path = `${s.pathStyle ? `/${s.bucket}` : ''}/${s.prefix}${key}`
    const url = `${e.protocol}//${host}${path}`
    const headers: Record<string, string> = body ? { 'content-type': 'application/octet-stream' } : {}
    if (!this.credentials) return { url, headers }
    const signed = aws4.sign({ host, path, method, service: 's3', region: s.region, headers, ...(body ? { body } : {}) }, this.credentials)
    // fetch sets Host and Content-Length itself, to the values signed here
    const out: Record<string, string> = {}
    for (const [h, v] of Object.entries(signed.headers ?? {})) {
      if (!/^(host|content-length)$/i.test(h)) out[h.toLowerCase()] = String(v)
    }
    return { url, headers: out }
  }

  get(key: string, limit: number, signal: AbortSignal): Promise<Buffer | null> {
    const { url, headers } = this.request('GET', key)
    return getBlob(url, headers, limit, signal).catch((err: Error) => this.refused(err))
  }

  put(key: string, blob: Buffer, signal: AbortSignal): Promise<void> {
    const { url, headers } = this.request('PUT', key, blob)
    return putBlob(url, headers, blob, signal).catch((err: Error) => this.refused(err))
  }

  /** An anonymous request refused says why it was anonymous. */
  private refused(err: Error): never {
    if (!this.credentials && /HTTP 403/.test(err.message)) err.message += '; no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials)'
    throw err
  }

  async close(): Promise<void> {}
}
