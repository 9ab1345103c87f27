// The second tier behind the mesh, against real stores started here on loopback ports and killed
// by PID: Debian's redis-server (with a password and a database number) and Debian's nginx with a
// WebDAV location (ccache's HTTP storage layout). Entries written by one member are verified hits
// for another; forged or oversized ones are refused; a dead store costs a lookup nothing but a
// counted failure, and is then left alone for a while. Also the [cache] keys that configure it all.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { CacheEntry } from '../src/cache/entry-format.js'
import { sealEntry, type EntrySigner } from '../src/cache/signed-entry.js'
import { TrustPolicy, distrustFile } from '../src/cache/trust.js'
import { RemoteTier, backendFor } from '../src/cache/tiers/index.js'
import { RedisBackend, parseRedisUrl } from '../src/cache/tiers/redis.js'
import { HttpBackend, entryUrl, parseHttpStoreUrl } from '../src/cache/tiers/http.js'
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
async function exercise(url: string, kill: () => Promise<void>, inStore: (key: string) => Promise<Buffer | null>): Promise<void> {
  const writer = new RemoteTier({ backend: backendFor(url), signer: producer, trust, log: silentLogger })
  const entries = Array.from({ length: 6 }, (_, i) => ({ key: k(`${url} unit ${i}`), entry: entry(randomBytes(1000 + i * 50_000)) }))
  for (const e of entries) writer.publish(e.key, e.entry)
  await writer.flushed()
  assert.equal(writer.stats().tier_writes, entries.length, JSON.stringify(writer.stats()))
  const stored = await inStore(entries[0]!.key)
  assert.ok(stored?.subarray(0, 8).equals(Buffer.from('MESHCCS1')), 'the store holds the signed entry')

  // another member, its own cache empty: every entry a verified hit from the store
  const lines: string[] = []
  const reader = new RemoteTier({ backend: backendFor(url), signer: consumer, trust, log: capture(lines) })
  for (const e of entries) {
    const hit = await reader.lookup(e.key)
    assert.ok(hit, `hit for ${e.key.slice(0, 8)}`)
    assert.equal(hit.producer, producer.peerId)
    assert.deepEqual(hit.entry.outputs, e.entry.outputs)
  }
  assert.equal(await reader.lookup(k(`${url} never stored`)), null)
  assert.deepEqual([reader.stats().tier_hits, reader.stats().tier_misses], [entries.length, 1])

  // a forged entry in the store (garbage signature), and one stored under another key's name
  const backend = backendFor(url)
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
    ['remote = "ftp://store"', /\[cache\] remote: "ftp:\/\/store" is not a redis:\/\/, rediss:\/\/, http:\/\/ or https:\/\/ URL/]
  ]
  for (const [line, re] of bad) {
    assert.throws(() => load(line), (err: Error) => err instanceof ConfigError && re.test(err.message) && err.message.includes(conf), line)
  }
})
