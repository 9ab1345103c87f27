import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, mkdirSync, rmSync, statSync, writeFileSync, readFileSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateMeshKey, writeMeshKey, readMeshKey, meshIdFromKey, loadOrCreateIdentity, encodeInvite, decodeInvite } from '../src/mesh/keys.js'
import { MeshError } from '../src/mesh/errors.js'
import { startMesh } from '../src/mesh/mesh.js'
import { loadConfig } from '../src/config.js'
import { silentLogger } from '../src/log.js'

const dir = mkdtempSync(join(tmpdir(), 'meshcc-keys-'))
after(() => rmSync(dir, { recursive: true, force: true }))

test('mesh key: generate, write (0600, atomic), read', () => {
  const key = generateMeshKey()
  assert.match(key, /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}\n$/)
  const file = join(dir, 'a', 'b', 'mesh.key')
  writeMeshKey(file, key)
  assert.equal(statSync(file).mode & 0o777, 0o600)
  assert.deepEqual(readdirSync(join(dir, 'a', 'b')), ['mesh.key'], 'no temp files left')
  const bytes = readMeshKey(file)
  assert.equal(new TextDecoder().decode(bytes), key.trimEnd())
  // bare hex and CRLF forms read to the same key and mesh id
  const hex = key.trim().split('\n')[2]
  writeFileSync(join(dir, 'crlf.key'), key.trim().split('\n').join('\r\n').toUpperCase().replace('/KEY/SWARM/PSK/1.0.0/', '/key/swarm/psk/1.0.0/').replace('/BASE16/', '/base16/'))
  assert.equal(meshIdFromKey(readMeshKey(join(dir, 'crlf.key'))), meshIdFromKey(key))
  assert.equal(meshIdFromKey(hex), meshIdFromKey(key))
  assert.match(meshIdFromKey(key), /^[0-9a-f]{8}$/)
  assert.notEqual(meshIdFromKey(generateMeshKey()), meshIdFromKey(key))
})

test('mesh key: clear errors naming the file', () => {
  const missing = join(dir, 'nope', 'mesh.key')
  assert.throws(() => readMeshKey(missing), (e: Error) => e instanceof MeshError && e.message.includes(missing) && e.message.includes('meshcc mesh init') && e.message.includes('meshcc mesh join') && !e.message.includes('\n'))
  const cases: Array<[string, RegExp]> = [
    ['', /empty/],
    ['hello\n', /first line must be/],
    ['/key/swarm/psk/1.0.0/\n/base64/\nabc\n', /only base16/],
    ['/key/swarm/psk/1.0.0/\n/base16/\n', /missing/],
    ['/key/swarm/psk/1.0.0/\n/base16/\nabcd\n', /64 hex characters, found 4/],
    [`/key/swarm/psk/1.0.0/\n/base16/\n${'z'.repeat(64)}\n`, /non-hex/]
  ]
  for (const [text, re] of cases) {
    const f = join(dir, 'bad.key')
    writeFileSync(f, text)
    assert.throws(() => readMeshKey(f), (e: Error) => e instanceof MeshError && e.message.includes(f) && re.test(e.message) && !e.message.includes('\n'), JSON.stringify(text))
  }
  assert.throws(() => writeMeshKey(join(dir, 'w.key'), 'garbage'), MeshError)
})

test('identity: created once with mode 0600, then reloaded', async () => {
  const file = join(dir, 'id', 'identity.key')
  const k1 = await loadOrCreateIdentity(file)
  assert.equal(statSync(file).mode & 0o777, 0o600)
  const k2 = await loadOrCreateIdentity(file)
  assert.equal(k1.publicKey.toString(), k2.publicKey.toString())
  assert.equal(k1.type, 'Ed25519')
  // concurrent creation agrees on one key
  const f2 = join(dir, 'id2', 'identity.key')
  const ks = await Promise.all([1, 2, 3, 4].map(() => loadOrCreateIdentity(f2)))
  assert.equal(new Set(ks.map((k) => k.publicKey.toString())).size, 1)
  writeFileSync(join(dir, 'broken.key'), 'not a key')
  await assert.rejects(loadOrCreateIdentity(join(dir, 'broken.key')), (e: Error) => e instanceof MeshError && e.message.includes('broken.key'))
  assert.ok(readFileSync(file).length > 32)
})

test('invite: roundtrip and clear errors', () => {
  const key = generateMeshKey()
  const addrs = ['/ip4/192.168.1.10/tcp/10650/p2p/12D3KooWLaSbwC5GhKbqVoScxZbiKZXFNFL8U33SG3Ww3rgHmMf5', '/ip6/::1/tcp/10650']
  const inv = encodeInvite({ key, addrs })
  assert.match(inv, /^meshcc1:[A-Za-z0-9_-]+$/)
  assert.deepEqual(decodeInvite(`  ${inv}\n`), { key, addrs })
  assert.deepEqual(decodeInvite(encodeInvite({ key: key.trim().split('\n')[2], addrs: [] })), { key, addrs: [] })
  const bad: Array<[string, RegExp]> = [
    ['hello', /must start with "meshcc1:"/],
    ['meshcc1:', /base64url|damaged/],
    ['meshcc1:abc def', /characters/],
    [inv.slice(0, inv.length - 10), /truncated or damaged/],
    ['meshcc1:' + Buffer.from(JSON.stringify({ v: 2, k: 'a'.repeat(64), a: [] })).toString('base64url'), /version/],
    ['meshcc1:' + Buffer.from(JSON.stringify({ v: 1, k: 'abc', a: [] })).toString('base64url'), /key/],
    ['meshcc1:' + Buffer.from(JSON.stringify({ v: 1, k: 'a'.repeat(64), a: ['not-an-addr'] })).toString('base64url'), /not a valid multiaddr/]
  ]
  for (const [text, re] of bad) {
    assert.throws(() => decodeInvite(text), (e: Error) => e instanceof MeshError && re.test(e.message) && !e.message.includes('\n'), text)
  }
  assert.throws(() => encodeInvite({ key: 'nope', addrs: [] }), MeshError)
})

test('startMesh refuses to start without a mesh key, with one clear line', async () => {
  const conf = join(dir, 'nokey', 'config.toml')
  const keyFile = join(dir, 'nokey', 'mesh.key')
  mkdirSync(join(dir, 'nokey'))
  writeFileSync(conf, `[mesh]\nkey_file = ${JSON.stringify(keyFile)}\nidentity_file = ${JSON.stringify(join(dir, 'nokey', 'id.key'))}\nmdns = false\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n`)
  const config = loadConfig({ MESHCC_CONF: conf, HOME: dir })
  const getLoad = () => ({ cores: 1, running: 0, queued: 0, freeSlots: 1, load1: 0, speed: 1, toolchains: [], accept: 'always' as const, shim: false })
  await assert.rejects(startMesh({ config, log: silentLogger, version: 't', getLoad }),
    (e: Error) => e instanceof MeshError && e.message.includes(keyFile) && e.message.includes('meshcc mesh init'))
  writeMeshKey(keyFile, generateMeshKey())
  writeFileSync(conf, readFileSync(conf, 'utf8') + 'bootstrap = ["not a multiaddr"]\n')
  const config2 = loadConfig({ MESHCC_CONF: conf, HOME: dir })
  await assert.rejects(startMesh({ config: config2, log: silentLogger, version: 't', getLoad }),
    (e: Error) => e instanceof MeshError && /bootstrap: "not a multiaddr" is not a valid multiaddr/.test(e.message))
})
