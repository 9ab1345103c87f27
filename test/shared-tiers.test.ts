// The second tier behind the mesh, against real stores started here on loopback ports and killed
// by PID: Debian's redis-server (with a password and a database number) and Debian's nginx with a
// WebDAV location (ccache's HTTP storage layout), and for S3 npm's s3rver behind a SigV4 check
// written here (see startS3 below). Entries written by one member are verified hits
// for another; forged or oversized ones are refused; a dead store costs a lookup nothing but a
// counted failure, and is then left alone for a while. Also the [cache] keys that configure it all.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { CacheEntry } from '../src/cache/entry-format.js'
import { sealEntry, type EntrySigner } from '../src/cache/signed-entry.js'
import { TrustPolicy, distrustFile } from '../src/cache/trust.js'
import { RemoteTier, backendFor, openRemoteTier } from '../src/cache/tiers/index.js'
import { RedisBackend, parseRedisUrl } from '../src/cache/tiers/redis.js'
import { HttpBackend, entryUrl, parseHttpStoreUrl } from '../src/cache/tiers/http.js'
import { S3Backend, parseS3Url } from '../src/cache/tiers/s3.js'
import { ConfigError, loadConfig } from '../src/config.js'
import { silentLogger, type Logger } from '../src/log.js'
import { startNginxDav, startRedis, stopStores, stopped } from './helpers/stores.js'

const dir = mkdtempSync(join(tmpdir(), 'meshcc-tiers-'))
after(async () => {
  await stopStores()
  rmSync(dir, { recursive: true, force: true })
})

function capture(lines: string[]): Logger {
  const log: Logger = {
    error: (m) => lines.push(`E ${m}`), warn: (m) => lines.push(`W ${m}`), info: (m) => lines.push(`I ${m}`), debug: () => {},
    child: () => log, enabled: () => true
  }
  return log
}

async function signer(): Promise<EntrySigner> {
  const privateKey = await generateKeyPair('Ed25519')
  return { peerId: peerIdFromPrivateKey(privateKey).toString(), privateKey }
}

const k = (s: string) => createHash('sha256').update(s).digest('hex')
const entry = (obj: Buffer): CacheEntry => ({ exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), outputs: [{ name: 'obj', data: obj }] })

let producer: EntrySigner
let consumer: EntrySigner
let trust: TrustPolicy

before(async () => {
  producer = await signer()
  consumer = await signer()
  trust = new TrustPolicy({ self: consumer.peerId, trust: 'mesh', deny: [], file: distrustFile(dir), log: silentLogger })
})

/** The shared checks for one store: writes from one member are hits for another; forged entries and dead stores cost nothing. */
async function exercise(url: string, kill: () => Promise<void>, inStore: (key: string) => Promise<Buffer | null>, env = process.env): Promise<void> {
  const writer = new RemoteTier({ backend: backendFor(url, env), signer: producer, trust, log: silentLogger })
  const entries = Array.from({ length: 6 }, (_, i) => ({ key: k(`${url} unit ${i}`), entry: entry(randomBytes(1000 + i * 50_000)) }))
  for (const e of entries) writer.publish(e.key, e.entry)
  await writer.flushed()
  assert.equal(writer.stats().tier_writes, entries.length, JSON.stringify(writer.stats()))
  const stored = await inStore(entries[0]!.key)
  assert.ok(stored?.subarray(0, 8).equals(Buffer.from('MESHCCS1')), 'the store holds the signed entry')

  // another member, its own cache empty: every entry a verified hit from the store
  const lines: string[] = []
  const reader = new RemoteTier({ backend: backendFor(url, env), signer: consumer, trust, log: capture(lines) })
  for (const e of entries) {
    const hit = await reader.lookup(e.key)
    assert.ok(hit, `hit for ${e.key.slice(0, 8)}`)
    assert.equal(hit.producer, producer.peerId)
    assert.deepEqual(hit.entry.outputs, e.entry.outputs)
  }
  assert.equal(await reader.lookup(k(`${url} never stored`)), null)
  assert.deepEqual([reader.stats().tier_hits, reader.stats().tier_misses], [entries.length, 1])

  // a forged entry in the store (garbage signature), and one stored under another key's name
  const backend = backendFor(url, env)
  const forged = await sealEntry(entry(Buffer.from('forged')), k(`${url} forged`), producer)
  forged[30] ^= 1
  await backend.put(k(`${url} forged`), forged, AbortSignal.timeout(5000))
  await backend.put(k(`${url} moved`), stored!, AbortSignal.timeout(5000))
  assert.equal(await reader.lookup(k(`${url} forged`)), null)
  assert.equal(await reader.lookup(k(`${url} moved`)), null)
  assert.deepEqual([reader.stats().tier_failures.signature, reader.stats().tier_failures.malformed], [1, 1])
  assert.ok(lines.some((l) => /bad signature/.test(l)), lines.join('\n'))
  // a reply over the limit is refused by its announced length
  await assert.rejects(backend.get(entries[5]!.key, 1000, AbortSignal.timeout(5000)), /exceeds the limit of 1000/)
  assert.ok(await backend.get(entries[5]!.key, 10_000_000, AbortSignal.timeout(5000)), 'the backend works after a refusal')
  await backend.close()

  // the store dies: a lookup is a counted miss, never a throw, and the store is left alone a while
  await kill()
  assert.equal(await reader.lookup(entries[0]!.key), null)
  const s1 = reader.stats()
  assert.equal(s1.tier_failures.timeout + s1.tier_failures.error, 1)
  assert.equal(s1.tier_down, true)
  assert.ok(lines.some((l) => l.startsWith('W ') && /not used for 5 s/.test(l)), lines.join('\n'))
  assert.equal(await reader.lookup(entries[1]!.key), null)
  assert.equal(reader.stats().tier_failures.down, 1, 'not asked while down')
  writer.publish(k(`${url} after death`), entry(Buffer.from('x')))
  await writer.flushed()
  assert.equal(writer.stats().tier_writes, entries.length, 'nothing written, nothing thrown')
  await Promise.all([writer.stop(), reader.stop()])
}

test('Redis (Debian\'s redis-server) as the second tier', { timeout: 60_000 }, async () => {
  const { url, port, process: redis } = await startRedis(dir, 'sekret')
  // a wrong password is a failure of the store, counted, not a crash
  const wrong = new RemoteTier({ backend: new RedisBackend(`redis://:nope@127.0.0.1:${port}/2`), signer: consumer, trust, log: silentLogger })
  assert.equal(await wrong.lookup(k('x')), null)
  assert.equal(wrong.stats().tier_failures.error, 1)
  await wrong.stop()
  // the store's own view: redis-cli finds "meshcc:<key>" in database 2, and its value is what
  // the backend's GET returns
  const raw = new RedisBackend(url)
  await exercise(url, () => stopped(redis), async (key) => {
    const cli = (db: number) => execFileSync('redis-cli', ['-p', String(port), '--no-auth-warning', '-a', 'sekret', '-n', String(db), 'EXISTS', `meshcc:${key}`]).toString().trim()
    assert.deepEqual([cli(2), cli(0)], ['1', '0'])
    return raw.get(key, 10_000_000, AbortSignal.timeout(5000))
  })
  await raw.close()

})

test('an HTTP store in ccache\'s layout (Debian\'s nginx, a WebDAV location)', { timeout: 60_000 }, async () => {
  const { url, root, process: nginx } = await startNginxDav(dir)
  const store = parseHttpStoreUrl(url)
  // the store's own view: the file nginx wrote at ccache's subdirs path
  await exercise(url, () => stopped(nginx), async (key) => {
    const file = join(root, 'www', new URL(entryUrl(store, key)).pathname)
    return existsSync(file) ? readFileSync(file) : null
  })
  assert.ok(existsSync(join(root, 'www', 'cache')))
})

// S3: no S3 server is packaged in Debian (no MinIO; Ceph's radosgw needs a Ceph cluster), so the
// store is npm's s3rver, an S3 emulator written in Node (not AWS), serving real HTTP on a loopback
// port from files under dir/s3. It speaks S3's REST API (path-style buckets, object keys, 404
// NoSuchKey, XML errors) but checks only the access key ID of a SigV4 request, not its
// signature; so it stands behind a front written here that checks each request's signature as
// AWS documents it (canonical request, string to sign, HMAC key chain; independent of the aws4
// library that signs it), with the body's SHA-256, and answers 403 SignatureDoesNotMatch as S3
// does, before passing the request on.
interface S3Store { url: string; port: number; root: string; env: Record<string, string>; kill: () => Promise<void>; signed: number }

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data).digest()

/** Why the request's AWS Signature V4 is wrong, or null when it is right for `secret` in `region`. */
function sigV4Refusal(method: string, path: string, headers: IncomingHttpHeaders, body: Buffer, keys: Map<string, string>, region: string, now = Date.now()): string | null {
  const auth = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/s3\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/.exec(String(headers.authorization ?? ''))
  if (!auth) return `no SigV4 Authorization header: ${String(headers.authorization ?? '(none)')}`
  const [, keyId, day, scopeRegion, signedHeaders, signature] = auth as unknown as string[]
  const secret = keys.get(keyId!)
  if (secret === undefined) return `unknown access key ${keyId}`
  if (scopeRegion !== region) return `signed for region ${scopeRegion}, the store is in ${region}`
  const amzDate = String(headers['x-amz-date'] ?? '')
  if (!amzDate.startsWith(day!) || Math.abs(Date.parse(amzDate.replace(/^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/, '$1-$2-$3T$4:$5:$6Z')) - now) > 15 * 60_000) return `x-amz-date ${amzDate} is not now`
  const names = signedHeaders!.split(';')
  if (!names.includes('host') || !names.includes('x-amz-date') || !names.includes('x-amz-content-sha256')) return `signed headers ${signedHeaders} leave out host, x-amz-date or x-amz-content-sha256`
  if (headers['x-amz-content-sha256'] !== sha256(body)) return 'x-amz-content-sha256 is not the body\'s'
  const u = new URL(path, 'http://h')
  const query = [...u.searchParams].map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).sort().join('&')
  const canonicalHeaders = names.map((h) => `${h}:${String(headers[h] ?? '').trim().replace(/\s+/g, ' ')}\n`).join('')
  const canonical = [method, u.pathname, query, canonicalHeaders, signedHeaders, headers['x-amz-content-sha256']].join('\n')
  const scope = `${day}/${region}/s3/aws4_request`
  const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256(canonical)].join('\n')
  const key = hmac(hmac(hmac(hmac(`AWS4${secret}`, day!), region), 's3'), 'aws4_request')
  return timingSafeEqual(hmac(key, toSign), Buffer.from(signature!, 'hex')) ? null : 'signature does not match'
}

// The check itself, on the example of AWS's S3 documentation ("Signature Calculations for the
// Authorization Header", GET Object): it accepts AWS's own signature and nothing else.
test('the test\'s SigV4 check accepts AWS\'s documented example', () => {
  const headers: IncomingHttpHeaders = {
    host: 'examplebucket.s3.amazonaws.com', range: 'bytes=0-9', 'x-amz-date': '20130524T000000Z', 'x-amz-content-sha256': sha256(''),
    authorization: 'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41'
  }
  const keys = new Map([['AKIAIOSFODNN7EXAMPLE', 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY']])
  const then = Date.parse('2013-05-24T00:00:00Z')
  assert.equal(sigV4Refusal('GET', '/test.txt', headers, Buffer.alloc(0), keys, 'us-east-1', then), null)
  assert.equal(sigV4Refusal('GET', '/test.txt', { ...headers, range: 'bytes=0-10' }, Buffer.alloc(0), keys, 'us-east-1', then), 'signature does not match')
  assert.equal(sigV4Refusal('GET', '/test.txt', headers, Buffer.alloc(0), keys, 'us-east-1'), 'x-amz-date 20130524T000000Z is not now')
})

async function startS3(bucket: string, region: string): Promise<S3Store> {
  const root = join(dir, 's3')
  mkdirSync(root, { recursive: true })
  const require = createRequire(import.meta.url)
  const S3rver = require('s3rver')
  // s3rver knows only the access keys in its registry; one made for this run, with a fresh secret
  const keyId = `MESHCC${randomBytes(6).toString('hex').toUpperCase()}`
  const secret = randomBytes(20).toString('base64')
  require('s3rver/lib/models/account').DUMMY_ACCOUNT.createKeyPair(keyId, secret)
  const emulator = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: root, vhostBuckets: false, configureBuckets: [{ name: bucket }] })
  const inner = (await emulator.run()).port as number
  const store: S3Store = { url: '', port: 0, root, env: {}, kill: async () => {}, signed: 0 }
  const front: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (c: Buffer) => { size += c.length; if (size <= 64 * 1024 * 1024) chunks.push(c) })
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      const refusal = size > 64 * 1024 * 1024 ? 'body too large' : sigV4Refusal(req.method!, req.url!, req.headers, body, new Map([[keyId, secret]]), region)
      if (refusal !== null) {
        res.writeHead(403, { 'content-type': 'application/xml' })
        res.end(`<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>${refusal}</Message></Error>`)
        return
      }
      store.signed++
      const headers = Object.fromEntries(Object.entries(req.headers).filter(([h]) => h !== 'host' && h !== 'connection' && h !== 'content-length').map(([h, v]) => [h, String(v)]))
      fetch(`http://127.0.0.1:${inner}${req.url}`, { method: req.method, headers, ...(body.length ? { body } : {}) }).then(async (r) => {
        const out = Buffer.from(await r.arrayBuffer())
        res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/octet-stream', 'content-length': out.length })
        res.end(out)
      }, (err: Error) => { res.writeHead(502); res.end(err.message) })
    })
  })
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve))
  store.port = (front.address() as { port: number }).port
  store.url = `s3://${bucket}/team/ci|endpoint=http://127.0.0.1:${store.port}`
  store.env = { AWS_ACCESS_KEY_ID: keyId, AWS_SECRET_ACCESS_KEY: secret, AWS_REGION: region, HOME: dir }
  let alive = true
  store.kill = async () => {
    if (!alive) return
    alive = false
    front.closeAllConnections()
    await Promise.all([new Promise((r) => front.close(r)), emulator.close()])
  }
  return store
}

test('an S3 bucket (s3rver, an S3 emulator, behind a SigV4 check)', { timeout: 60_000 }, async (t) => {
  const s3 = await startS3('meshcc-cache', 'eu-test-1')
  t.after(() => s3.kill())
  const key = k('s3 probe')
  // signatures are checked: a wrong secret, and no credentials at all, are refused by the store,
  // and the log says so in one line
  const wrong = new S3Backend(s3.url, { ...s3.env, AWS_SECRET_ACCESS_KEY: 'not-the-secret' })
  await assert.rejects(wrong.get(key, 1000, AbortSignal.timeout(5000)), /^Error: GET answered HTTP 403 \(SignatureDoesNotMatch\)$/)
  const anonymous = new S3Backend(s3.url, { HOME: dir })
  assert.equal(anonymous.credentials, null)
  await assert.rejects(anonymous.put(key, Buffer.from('x'), AbortSignal.timeout(5000)), /HTTP 403 \(SignatureDoesNotMatch\); no AWS credentials found/)
  assert.equal(s3.signed, 0)
  // keys from a profile of ~/.aws/credentials (HOME is dir here), as the AWS tools keep them
  mkdirSync(join(dir, '.aws'), { recursive: true })
  writeFileSync(join(dir, '.aws', 'credentials'), `[default]\naws_access_key_id = WRONG\naws_secret_access_key = wrong\n\n[ci]\naws_access_key_id = ${s3.env.AWS_ACCESS_KEY_ID}\naws_secret_access_key = ${s3.env.AWS_SECRET_ACCESS_KEY}\n`)
  const profiled = backendFor(`${s3.url}|profile=ci`, { AWS_REGION: 'eu-test-1', HOME: dir })
  assert.equal(await profiled.get(key, 1000, AbortSignal.timeout(5000)), null, 'a missing object is a miss (404 NoSuchKey)')
  assert.equal(s3.signed, 1)
  // the store's own view: the object s3rver keeps on disk for <bucket>/team/ci/<key>
  await exercise(s3.url, s3.kill, async (key) => {
    const file = join(s3.root, 'meshcc-cache', 'team', 'ci', `${key}._S3rver_object`)
    return existsSync(file) ? readFileSync(file) : null
  }, s3.env)
  assert.ok(s3.signed > 10, `every request passed the signature check (${s3.signed})`)
})

test('[cache] remote = "s3://…": addressing, credentials and clear errors', () => {
  const key = k('s3 layout')
  const none = { HOME: dir + '/nowhere' }
  const aws = parseS3Url('s3://my-bucket/team/cc/', none)
  assert.deepEqual([aws.endpoint, aws.region, aws.pathStyle, aws.prefix], ['https://s3.us-east-1.amazonaws.com', 'us-east-1', false, 'team/cc/'])
  assert.equal(new S3Backend('s3://my-bucket', none).credentials, null)
  assert.equal(new S3Backend('s3://my-bucket/team/cc', none).request('GET', key).url, `https://my-bucket.s3.us-east-1.amazonaws.com/team/cc/${key}`)
  assert.equal(new S3Backend('s3://my-bucket', { ...none, AWS_DEFAULT_REGION: 'eu-west-3' }).request('GET', key).url, `https://my-bucket.s3.eu-west-3.amazonaws.com/${key}`)
  // an endpoint (attribute, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) means path style
  assert.equal(new S3Backend('s3://b1b/x|endpoint=http://127.0.0.1:9000/', none).request('GET', key).url, `http://127.0.0.1:9000/b1b/x/${key}`)
  assert.equal(new S3Backend('s3://b1b', { ...none, AWS_ENDPOINT_URL: 'https://minio.lan' }).request('GET', key).url, `https://minio.lan/b1b/${key}`)
  assert.equal(new S3Backend('s3://b1b|endpoint=https://r2.example|path-style=false', none).request('GET', key).url, `https://b1b.r2.example/${key}`)
  // signed with the environment's keys; a session token is sent and signed
  const env = { ...none, AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 'sekret', AWS_SESSION_TOKEN: 'T0KEN', AWS_REGION: 'eu-west-3' }
  const b = new S3Backend('s3://b1b/p|endpoint=http://127.0.0.1:9000', env)
  const put = b.request('PUT', key, Buffer.from('blob'))
  assert.match(put.headers.authorization!, /^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE\/\d{8}\/eu-west-3\/s3\/aws4_request, SignedHeaders=[a-z0-9;-]*\bhost\b[a-z0-9;-]*\bx-amz-security-token\b[a-z0-9;-]*, Signature=[0-9a-f]{64}$/)
  assert.equal(put.headers['x-amz-content-sha256'], sha256(Buffer.from('blob')))
  assert.equal(put.headers['x-amz-security-token'], 'T0KEN')
  assert.equal(put.headers['content-type'], 'application/octet-stream')
  assert.ok(!b.name.includes('sekret') && !b.name.includes('AKID'), b.name)
  assert.equal(b.name, 's3://b1b/p/ at http://127.0.0.1:9000')

  const bad: Array<[string, RegExp]> = [
    ['s3://My_Bucket/x', /"My_Bucket" is not an S3 bucket name/],
    ['s3://ak:sk@bucket', /credentials go in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or ~\/.aws\/credentials, not in the URL/],
    ['s3://bucket:9000/x', /an s3:\/\/ URL is s3:\/\/BUCKET\[\/PREFIX\]; the endpoint goes in \|endpoint=/],
    ['s3://bucket/team%20a', /prefix "team a" may hold only A-Z, a-z, 0-9, ".", "_", "-" and "\/" between names/],
    ['s3://bucket/a//b', /prefix "a\/\/b" may hold only/],
    ['s3://bucket|colour=blue', /unknown attribute "colour" \(endpoint, region, path-style and profile are known\)/],
    ['s3://bucket|endpoint=ftp://h', /endpoint "ftp:\/\/h" is not http:\/\/ or https:\/\//],
    ['s3://bucket|endpoint=http://h/path', /endpoint "http:\/\/h\/path" must be only scheme, host and port/],
    ['s3://bucket|path-style=yes', /path-style "yes" is not true or false/],
    ['s3://bucket|region=EU West', /region "EU West" is not a region name/],
    ['s3://bucket|profile=ci', /profile "ci": cannot read .*nowhere\/.aws\/credentials/]
  ]
  for (const [url, re] of bad) {
    assert.throws(() => backendFor(url, none), (err: Error) => err.message.startsWith('[cache] remote: ') && re.test(err.message) && !err.message.includes('\n'), url)
  }
  // keys that cannot be found when the daemon opens the store: one logged line, no tier, nothing thrown
  const lines: string[] = []
  assert.equal(openRemoteTier('s3://bucket|profile=ci', consumer, trust, capture(lines), none), null)
  assert.deepEqual(lines, [`E second-tier cache not used: [cache] remote: profile "ci": cannot read ${dir}/nowhere/.aws/credentials`])
  assert.throws(() => backendFor('s3://bucket', { ...none, AWS_ENDPOINT_URL: 'minio:9000' }), /\[cache\] remote: AWS_ENDPOINT_URL "minio:9000" is not http:\/\/ or https:\/\//)

  // the config is checked when it is read, credentials are not looked up then
  const conf = join(dir, 'config-s3.toml')
  const load = (remote: string) => {
    writeFileSync(conf, `[cache]\nremote = "${remote}"\n`)
    return loadConfig({ MESHCC_CONF: conf, HOME: dir + '/nowhere' })
  }
  assert.equal(load('s3://meshcc-cache/team|endpoint=http://127.0.0.1:9000|profile=ci').cache.remote, 's3://meshcc-cache/team|endpoint=http://127.0.0.1:9000|profile=ci')
  assert.throws(() => load('s3://meshcc-cache|endpoint=minio:9000'), (err: Error) => err instanceof ConfigError && err.message === `${conf}: [cache] remote: endpoint "minio:9000" is not http:// or https://`)
  assert.throws(() => load('redis://h/db7'), (err: Error) => err instanceof ConfigError && err.message === `${conf}: [cache] remote: "/db7" is not a database number`)
})

test('[cache] remote URLs: ccache\'s layouts and attributes, and clear errors', () => {
  const key = k('layout')
  const sub = parseHttpStoreUrl('http://u:p@cache.lan:8080/ccache')
  assert.equal(entryUrl(sub, key), `http://cache.lan:8080/ccache/${key.slice(0, 2)}/${key.slice(2)}`)
  assert.equal(sub.headers.authorization, `Basic ${Buffer.from('u:p').toString('base64')}`)
  assert.ok(!sub.name.includes('u:p'), 'no secret in the name logs show')
  assert.equal(entryUrl(parseHttpStoreUrl('https://h/c/|layout=flat'), key), `https://h/c/${key}`)
  const bazel = parseHttpStoreUrl('https://h/|layout=bazel|bearer-token=T0K|header=X-Team=core')
  assert.equal(entryUrl(bazel, key), `https://h/ac/${key}`)
  assert.deepEqual(bazel.headers, { authorization: 'Bearer T0K', 'x-team': 'core' })
  assert.throws(() => parseHttpStoreUrl('http://h/|layout=deep'), /layout "deep" is not subdirs, flat or bazel/)
  assert.throws(() => backendFor('http://h/|colour=blue'), /\[cache\] remote: unknown attribute "colour"/)
  assert.throws(() => backendFor('redis://h/db7'), /\[cache\] remote: "\/db7" is not a database number/)
  assert.deepEqual(parseRedisUrl('rediss://alice:pw@r.lan'), { host: 'r.lan', port: 6379, tls: true, username: 'alice', password: 'pw', db: 0, name: 'rediss://r.lan' })
  assert.equal(parseRedisUrl('redis://pw@r.lan:7000/3').password, 'pw')
  assert.ok(new HttpBackend('http://h/x').name.endsWith('/x/'))

  const conf = join(dir, 'config.toml')
  const load = (cache: string) => {
    writeFileSync(conf, `[cache]\n${cache}\n`)
    return loadConfig({ MESHCC_CONF: conf, HOME: dir })
  }
  const d = load('')
  assert.deepEqual([d.cache.shared, d.cache.sharedSize, d.cache.trust, d.cache.verifyRate, d.cache.remote], [true, 2 * 1024 ** 3, 'mesh', 0.01, ''])
  const set = load('shared_size = 0\ntrust = ["12D3KooWabc"]\nverify_rate = 1.0\nremote = "redis://127.0.0.1:6379"\nshared = false')
  assert.deepEqual([set.cache.shared, set.cache.sharedSize, set.cache.trust, set.cache.verifyRate, set.cache.remote], [false, 0, ['12D3KooWabc'], 1, 'redis://127.0.0.1:6379'])
  assert.equal(load('trust = "self"').cache.trust, 'self')
  const bad: Array<[string, RegExp]> = [
    ['trust = "everyone"', /\[cache\] trust: "everyone" is not one of mesh, self, nor a list of peer IDs/],
    ['trust = 3', /\[cache\] trust: expected "mesh" or "self" or a list of peer IDs/],
    ['verify_rate = 1.5', /\[cache\] verify_rate: 1.5 is out of range \(0 to 1/],
    ['verify_rate = "often"', /\[cache\] verify_rate: expected a number from 0 to 1/],
    ['shared_size = "10K"', /\[cache\] shared_size: 10\.0 KiB is too small/],
    ['remote = "ftp://store"', /\[cache\] remote: "ftp:\/\/store" is not a redis:\/\/, rediss:\/\/, http:\/\/, https:\/\/ or s3:\/\/ URL/]
  ]
  for (const [line, re] of bad) {
    assert.throws(() => load(line), (err: Error) => err instanceof ConfigError && re.test(err.message) && err.message.includes(conf), line)
  }
})
