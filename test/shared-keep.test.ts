// The builder keeps it too (issues #17 and #18): after a remote compile the client sends the
// builder a keep (its signature and how the entry is made of the job's outputs), not the entry,
// and the builder stores the client's signed entry rebuilt from the outputs it kept.
//
// Real daemons on 127.0.0.1 (each its own config dir, one mesh key) and real gcc: client A sends
// every miss to builder B, the only member holding entries for others (so B is the only owner of
// every key); C, a third member with an empty cache, then gets its hit from B. A forged keep
// (wrong content hash, garbage signature, someone else's job, a ref past the end) is refused and
// counted by a builder's own MeshCache on real libp2p nodes, a member holding the mesh key
// sending it: the job outputs it names are put in the builder's KeptJobs by the test, standing
// for a job that member sent (a real job needs a toolchain shipped, which the daemon test does).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { createInstance, runCommand, type Instance } from './helpers/meshcc.js'
import { status, startMeshDaemon, waitFor } from './helpers/mesh-daemons.js'
import { generateMeshKey, writeMeshKey } from '../src/mesh/keys.js'
import { startMesh, type Mesh } from '../src/mesh/mesh.js'
import { loadConfig, type Config } from '../src/config.js'
import { silentLogger } from '../src/log.js'
import { decodeEntry, type CacheEntry } from '../src/cache/entry-format.js'
import { readSignedEntry, sealEntry, signatureOf } from '../src/cache/signed-entry.js'
import { cacheExchangeProtocol, keepEntry, type KeepRequest } from '../src/mesh/protocols/cache-exchange.js'
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import { startMeshCache, type MeshCache } from '../src/daemon/mesh-cache.js'
import { sharedIdentity } from '../src/daemon/shared-identity.js'
import { KeptJobs } from '../src/daemon/kept-jobs.js'

const all: Instance[] = []
let keyFile = ''
let A: Instance, B: Instance, C: Instance
let work = ''

function daemon(name: string, o: { build: string; cache?: string; bootstrap?: string[] }): Instance {
  const i = createInstance(`[build]\n${o.build}`, name,
    `listen = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\nkey_file = "${keyFile}"\nname = "${name}"\nbootstrap = ${JSON.stringify(o.bootstrap ?? [])}`)
  writeFileSync(i.conf, readFileSync(i.conf, 'utf8').replace('[cache]\n', `[cache]\n${o.cache ? `${o.cache}\n` : ''}`))
  // this shared 2-core machine measures loopback RTTs of 100 ms and more under load
  i.env.MESHCC_SHARED_LINK_MS = '3000'
  i.env.MESHCC_SHARED_BUDGET_MS = '5000'
  all.push(i)
  return i
}

const mesh = async (i: Instance) => (await status(i)).shared!.mesh!

before(async () => {
  const keyDir = createInstance('', 'keep-key')
  all.push(keyDir)
  keyFile = join(keyDir.dir, 'mesh.key')
  writeMeshKey(keyFile, generateMeshKey())
  work = join(keyDir.dir, 'src')
  mkdirSync(work, { recursive: true })
  // B builds and holds entries for others (the default shared_size); A and C hold none, so B is
  // the only owner of every key
  B = daemon('keep-b', { build: 'local_slots = 2\ncores = 2' })
  const sb = await startMeshDaemon(B)
  const boot = sb.mesh!.addresses.filter((a) => a.includes('/127.0.0.1/'))
  A = daemon('keep-a', { build: 'local_slots = 0\ncores = 0', cache: 'shared_size = "0"', bootstrap: boot })
  C = daemon('keep-c', { build: 'local_slots = 1\ncores = 0', cache: 'shared_size = "0"', bootstrap: boot })
  await startMeshDaemon(A)
  await startMeshDaemon(C)
  for (const m of [A, B, C]) {
    await waitFor(`${m.dir} to see the others with a measured link`, async () => {
      const s = await status(m)
      return s.mesh!.members.filter((x) => !x.self && x.connection === 'direct' && x.rtt_ms !== null).length >= 2 ? true : undefined
    }, 30_000)
  }
  await waitFor('A to see B with free slots', async () => {
    const s = await status(A)
    return s.mesh!.members.some((m) => !m.self && m.free_slots > 0 && m.accept !== 'never') ? true : undefined
  }, 30_000)
})

after(async () => {
  for (const i of all) await i.stop()
})

/** an object of some 16 KB that does not compress much: a table of pseudo-random numbers */
const TABLE = Array.from({ length: 4000 }, (_, i) => (Math.imul(i + 1, 2654435761) >>> 0) % 1000003).join(',')
const SOURCE = `#include <stdio.h>\n#include <string.h>\nconst unsigned table[] = {${TABLE}};\n` +
  'int kept(int x) { char b[64]; snprintf(b, sizeof b, "%d %u", x, table[x & 1023]); return (int)strlen(b) + x; }\n'

test('after a remote compile the builder holds the client\'s signed entry from a keep, not a put; a third member gets its hit from the builder', { timeout: 240_000 }, async (t) => {
  writeFileSync(join(work, 'kept.c'), SOURCE)
  const plain = await runCommand('gcc', ['-O2', '-c', 'kept.c', '-o', 'plain.o'], { cwd: work })
  assert.equal(plain.code, 0, plain.stderr)
  const expected = readFileSync(join(work, 'plain.o'))
  const a0 = await A.stats()
  const b0 = await mesh(B)
  // -MD: the client's depfile goes into the entry, which the builder cannot know: the keep's own bytes
  const r = await A.run(['gcc', '-O2', '-MD', '-c', 'kept.c', '-o', 'kept.o'], { cwd: work, timeoutMs: 150_000 })
  assert.equal(r.code, 0, r.stderr)
  const a1 = await A.stats()
  assert.equal(a1.remote_compiles - a0.remote_compiles, 1, `compiled on B (fallbacks: ${JSON.stringify(a1.fallback_reasons)})`)
  assert.ok(readFileSync(join(work, 'kept.o')).equals(expected))

  // published in the background (the result, then its depend form and manifest set): until A's
  // keeps and puts have been answered and stayed so for two seconds (bounded: 30 s)
  let last = ''
  let steadySince = Date.now()
  const am = await waitFor('A\'s publishing to settle', async () => {
    const m = await mesh(A)
    const now = `${m.keeps_accepted} ${m.keep_fallbacks} ${m.entries_pushed} ${m.failures.refused} ${m.failures.error}`
    if (now !== last) { last = now; steadySince = Date.now() }
    return m.keeps_accepted + m.keep_fallbacks >= 1 && Date.now() - steadySince >= 2000 ? m : undefined
  }, 30_000)
  const bm = await mesh(B)
  assert.ok(am.keeps_accepted >= 1, `B took A's keep (A: ${JSON.stringify(am)})`)
  assert.equal(am.keep_fallbacks, 0, 'no keep fell back to a put')
  assert.ok(bm.entries_kept_by_builder - b0.entries_kept_by_builder >= 1, `B counts the kept entry (B: ${JSON.stringify(bm)})`)
  assert.equal(bm.keep_refused - b0.keep_refused, 0)
  // and `meshcc -s` says so on both sides
  assert.match((await A.run(['-s'])).stdout, /kept by the builder that compiled them\s+[1-9]/)
  assert.match((await B.run(['-s'])).stdout, /kept from jobs compiled here\s+[1-9]/)

  // B's store holds the entry A signed, its object the one gcc makes; every entry B got whole is
  // one no keep could describe (a manifest set: not a job's output), never a kept result
  const sharedDir = join(B.dir, 'cache', 'shared')
  const held = readdirSync(sharedDir, { recursive: true, withFileTypes: true }).filter((d) => d.isFile() && /^[0-9a-f]{64}$/.test(d.name))
  const aId = (await status(A)).mesh!.peer_id
  let objects = 0
  let objectEntryBytes = 0
  for (const d of held) {
    const blob = readFileSync(join(d.parentPath, d.name))
    const env = await readSignedEntry(blob, d.name)
    assert.equal(env.producer, aId, 'every entry B holds is signed by A')
    const e = await decodeEntry(env.encoded, d.name)
    if (e.outputs.some((o) => o.name === 'obj')) {
      objects++
      objectEntryBytes += blob.length
      assert.ok(e.outputs.find((o) => o.name === 'obj')!.data.equals(expected), 'the kept entry\'s object is the one gcc makes')
      assert.ok(e.outputs.find((o) => o.name === 'dep')!.data.equals(readFileSync(join(work, 'kept.d'))), 'and its depfile the client\'s')
    }
  }
  assert.ok(objects >= 1, `B holds A's result (${held.length} entries held)`)
  assert.equal(bm.entries_stored_for_others - b0.entries_stored_for_others, held.length - objects, 'B got no result whole: the results came as keeps')
  t.diagnostic(`A sent ${am.keeps_accepted} keeps (${am.keep_bytes_sent} bytes) for an object of ${expected.length} bytes; B holds ${held.length} entries, ${objects} results (${objectEntryBytes} bytes), ${bm.entries_stored_for_others - b0.entries_stored_for_others} put whole`)
  assert.ok(am.keep_bytes_sent > 0 && 4 * am.keep_bytes_sent < objectEntryBytes, `the keeps (${am.keep_bytes_sent} bytes) are a fraction of the entries they stand for (${objectEntryBytes})`)

  // C, its cache empty, compiles the same unit: a hit, from B (the only owner); the same command
  // (the depfile names its target), A's outputs moved aside
  const aDep = readFileSync(join(work, 'kept.d'))
  rmSync(join(work, 'kept.o'))
  rmSync(join(work, 'kept.d'))
  const c0 = await C.stats()
  const bServed = bm.entries_served
  const rc = await C.run(['gcc', '-O2', '-MD', '-c', 'kept.c', '-o', 'kept.o'], { cwd: work, timeoutMs: 150_000 })
  assert.equal(rc.code, 0, rc.stderr)
  const c1 = await C.stats()
  assert.equal(c1.local_compiles - c0.local_compiles, 0, 'C compiled nothing')
  // its manifest set and the result (or the result alone): hits from the mesh either way
  assert.ok((await mesh(C)).remote_hits >= 1, 'C\'s hit came from the mesh')
  assert.ok((await mesh(B)).entries_served > bServed, 'B served it')
  assert.ok(readFileSync(join(work, 'kept.o')).equals(expected))
  assert.ok(readFileSync(join(work, 'kept.d')).equals(aDep))
})

// --- the builder side of a keep, attacked by a member holding the mesh key ---

test('a forged keep is refused and counted: wrong content hash, garbage signature, another member\'s job, a ref past the end; a 12 MiB put sent in one go is stored', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-keep-forge-'))
  const meshes: Mesh[] = []
  let builder: MeshCache | null = null
  try {
    const key = join(dir, 'mesh.key')
    writeMeshKey(key, generateMeshKey())
    const config = (name: string, sharedSize: string, bootstrap: string[]): Config => {
      const home = join(dir, name)
      mkdirSync(home, { recursive: true })
      const file = join(home, 'config.toml')
      writeFileSync(file, [
        '[cache]', `dir = ${JSON.stringify(join(home, 'cache'))}`, `shared_size = ${JSON.stringify(sharedSize)}`,
        '[mesh]', 'listen = ["/ip4/127.0.0.1/tcp/0"]', `bootstrap = ${JSON.stringify(bootstrap)}`, 'mdns = false', 'dht = false',
        `key_file = ${JSON.stringify(key)}`, `identity_file = ${JSON.stringify(join(home, 'identity.key'))}`, ''
      ].join('\n'))
      return loadConfig({ MESHCC_CONF: file, HOME: dir })
    }
    const start = async (cfg: Config, shares: boolean) => {
      const m = await startMesh({
        config: cfg, log: silentLogger, version: '9.9.9', expiryMs: 8000,
        getLoad: () => ({ cores: 2, running: 0, queued: 0, freeSlots: 2, load1: 0, speed: 1, toolchains: [], accept: 'always', shim: false, sharesCache: shares })
      })
      meshes.push(m)
      return m
    }
    const bConfig = config('builder', '32M', [])
    const bMesh = await start(bConfig, true)
    const kept = new KeptJobs()
    builder = await startMeshCache(bConfig, bMesh, silentLogger, { kept })
    const fConfig = config('forger', '0', [bMesh.addresses()[0]!])
    const fMesh = await start(fConfig, false)
    const forger = (await sharedIdentity(fConfig, silentLogger)).signer
    await waitFor('the forger to reach the builder', async () => (fMesh.members().some((m) => m.peerId === bMesh.peerId) ? true : undefined), 30_000)

    // the outputs of a job the forger sent, as the builder's reply carried them
    const obj = randomBytes(4096)
    const parts = [Buffer.alloc(0), Buffer.from('warning: kept\n'), obj]
    const entry: CacheEntry = { exitCode: 0, stdout: parts[0]!, stderr: parts[1]!, outputs: [{ name: 'obj', data: obj }], meta: { input: 'x.c' } }
    const k = createHash('sha256').update('forged keep').digest('hex')
    const honest = signatureOf(await sealEntry(entry, k, forger))!
    const request = (job: string, over: Partial<KeepRequest> = {}): KeepRequest => ({
      key: k, job, contentHash: honest.contentHash, signature: honest,
      stdout: [0, 0, 0], stderr: [1, 0, parts[1]!.length], outputs: [{ name: 'obj', ref: [2, 0, obj.length] }], meta: [['input', 'x.c']], ...over
    })
    const keep = async (req: KeepRequest, extra = Buffer.alloc(0)) =>
      keepEntry(fMesh.libp2p, fMesh.meshId, bMesh.peerId, req, extra, AbortSignal.timeout(20_000))

    // the content hash of other bytes, signed honestly: the entry the builder makes is not it
    const other = signatureOf(await sealEntry({ ...entry, outputs: [{ name: 'obj', data: randomBytes(4096) }] }, k, forger))!
    let r = await keep(request(kept.keep(fMesh.peerId, parts)!, { contentHash: other.contentHash, signature: other }))
    assert.equal(r.kind, 'refused')
    // the right hash, the signature garbage
    const garbage = { ...honest, signature: Buffer.from(honest.signature).fill(7, 0, 8) }
    r = await keep(request(kept.keep(fMesh.peerId, parts)!, { signature: garbage }))
    assert.ok(r.kind === 'refused' && /signature/.test(r.reason), JSON.stringify(r))
    // an honest keep of another member's job (its outputs kept for the builder itself here)
    r = await keep(request(kept.keep(bMesh.peerId, parts)!))
    assert.ok(r.kind === 'refused' && /not held here/.test(r.reason), JSON.stringify(r))
    // a ref past the end of the job's object, and the client's extra bytes standing for the object
    r = await keep(request(kept.keep(fMesh.peerId, parts)!, { outputs: [{ name: 'obj', ref: [2, 1, obj.length] }] }))
    assert.ok(r.kind === 'refused' && /past the end/.test(r.reason), JSON.stringify(r))
    r = await keep(request(kept.keep(fMesh.peerId, parts)!, { outputs: [{ name: 'obj', ref: [3, 0, obj.length] }] }), randomBytes(obj.length))
    assert.equal(r.kind, 'refused')
    assert.equal((await builder.lookup(k)), null, 'nothing was stored')
    let s = builder.stats()
    assert.equal(s.keep_refused, 5)
    assert.equal(s.entries_kept_by_builder, 0)

    // the honest keep is stored; its job's outputs serve two keeps (its key and its depend form) and no more
    const job = kept.keep(fMesh.peerId, parts)!
    r = await keep(request(job))
    assert.equal(r.kind, 'stored', JSON.stringify(r))
    const hit = await builder.lookup(k)
    assert.ok(hit && hit.producer === fMesh.peerId && hit.entry.outputs[0]!.data.equals(obj), 'the builder holds the forger\'s signed entry, its own object in it')
    r = await keep(request(job))
    assert.equal(r.kind, 'stored', 'a second keep of the job (the depend-form key)')
    r = await keep(request(job))
    assert.ok(r.kind === 'refused' && /not held here/.test(r.reason), 'a third finds nothing')
    s = builder.stats()
    assert.equal(s.entries_kept_by_builder, 2)
    assert.equal(s.keep_refused, 6)

    // a put whose entry arrives faster than the owner reads it (sent in one go): it waits in the
    // bytes the owner's account took for it, where libp2p's 4 MiB read buffer dropped the stream
    const MiB = 1024 * 1024
    const bigKey = createHash('sha256').update('a big put').digest('hex')
    const sealed = await sealEntry({ ...entry, outputs: [{ name: 'obj', data: randomBytes(12 * MiB) }] }, bigKey, forger)
    const stream = await fMesh.libp2p.dialProtocol(peerIdFromString(bMesh.peerId), cacheExchangeProtocol(fMesh.meshId))
    const lp = lpStream(stream, { maxDataLength: MiB })
    const frame = (v: unknown) => Buffer.from(JSON.stringify(v))
    const readJson = async () => JSON.parse(Buffer.from((await lp.read()).subarray()).toString('utf8')) as { type?: string; reason?: string }
    try {
      await lp.write(frame({ v: 1, op: 'put', key: bigKey, size: sealed.length }))
      assert.equal((await readJson()).type, 'accepted')
      const chunks = Array.from({ length: Math.ceil(sealed.length / MiB) }, (_, i) => sealed.subarray(i * MiB, (i + 1) * MiB))
      await lp.writeV([frame({ blob: sealed.length }), ...chunks])
      const done = await readJson()
      assert.equal(done.type, 'stored', JSON.stringify(done))
    } finally {
      stream.abort(new Error('test over'))
    }
  } finally {
    await builder?.stop()
    await Promise.all(meshes.map((m) => m.stop()))
    rmSync(dir, { recursive: true, force: true })
  }
})

test('the entry a keep made of a kept job counts in the bytes kept: the oldest jobs go when it does not fit', () => {
  const kept = new KeptJobs({ maxBytes: 1000 })
  const a = kept.keep('p', [Buffer.alloc(300)])!
  const b = kept.keep('p', [Buffer.alloc(300)])!
  assert.deepEqual(kept.stats(), { jobs: 2, bytes: 600 })
  const job = kept.take('p', b)!
  kept.setEncoded(job, Buffer.alloc(250))
  assert.deepEqual(kept.stats(), { jobs: 2, bytes: 850 })
  // a larger one replaces it: past the bound, the oldest job goes
  kept.setEncoded(job, Buffer.alloc(450))
  assert.deepEqual(kept.stats(), { jobs: 1, bytes: 750 })
  assert.equal(kept.take('p', a), null)
  // its second (last) keep finds the entry, and the job is gone with it
  assert.equal(kept.take('p', b)!.encoded!.length, 450)
  assert.deepEqual(kept.stats(), { jobs: 0, bytes: 0 })
  kept.setEncoded(job, Buffer.alloc(100))
  assert.deepEqual(kept.stats(), { jobs: 0, bytes: 0 }, 'a job used up holds nothing')
})
