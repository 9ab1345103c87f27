// The mesh as one shared cache, with real libp2p nodes on 127.0.0.1 (startMesh, the mesh key,
// the project's own protocols) and the daemon's own MeshCache (startMeshCache): entries published
// on one member are verified hits on the others; forged entries are refused; a rustc manifest
// set naming a file or variable the command does not read is refused (real rustc, the daemon's
// own CompileService over the MeshCache), an honest one hits; a member that stops
// answering is skipped; an owner that leaves costs no hit; a builder whose object is wrong is
// caught by verification (real gcc) and distrusted.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { generateMeshKey, loadOrCreateIdentity, writeMeshKey } from '../src/mesh/keys.js'
import { startMesh, type Mesh } from '../src/mesh/mesh.js'
import { loadConfig, type Config } from '../src/config.js'
import type { Logger } from '../src/log.js'
import type { CacheEntry } from '../src/cache/entry-format.js'
import { ownersOf } from '../src/cache/owners.js'
import { sealEntry } from '../src/cache/signed-entry.js'
import { distrustFile, readDistrusted } from '../src/cache/trust.js'
import { Verifier } from '../src/cache/verifier.js'
import { MAX_BATCH_OPS, cacheExchangeProtocol, putEntry, serveCacheExchange } from '../src/mesh/protocols/cache-exchange.js'
import { Framed } from '../src/mesh/protocols/framing.js'
import { peerIdOf } from '../src/mesh/peer-ids.js'
import { MeshCache, startMeshCache } from '../src/daemon/mesh-cache.js'
import { sharedIdentity } from '../src/daemon/shared-identity.js'
import { waitFor } from './helpers/mesh-proc.js'
import { findCargo, toolchainRustc } from './helpers/cargo.js'
import { CompileService, dependKey } from '../src/daemon/compile-service.js'
import { SharedCache } from '../src/daemon/shared-cache.js'
import { Stats } from '../src/daemon/stats.js'
import { LocalStore } from '../src/cache/local-store.js'
import { encodeManifest, ManifestStore, sharedManifestEntry, sharedManifestKey, sharedManifestOf, type FileSet } from '../src/cache/manifest.js'
import { signedManifestSet } from '../src/cache/shared-store.js'
import { FileHasher } from '../src/cache/file-hashes.js'
import { RustFamily } from '../src/compiler/rust-family.js'
import type { CompileJob } from '../src/compiler/family.js'
import { Semaphore } from '../src/util/semaphore.js'
import { formatStatsText } from '../src/cli/stats-format.js'
import type { CompileRequest } from '../src/daemon/launcher-protocol.js'

const dir = mkdtempSync(join(tmpdir(), 'meshcc-shared-mesh-'))
const keyFile = join(dir, 'mesh.key')
const meshes: Mesh[] = []
const caches: MeshCache[] = []

interface Member { name: string; config: Config; mesh: Mesh; cache: MeshCache | null; lines: string[] }

function capture(lines: string[]): Logger {
  const log: Logger = {
    error: (m) => lines.push(`E ${m}`), warn: (m) => lines.push(`W ${m}`), info: (m) => lines.push(`I ${m}`), debug: () => {},
    child: () => log, enabled: () => true
  }
  return log
}

async function peerIdOfHome(name: string): Promise<string> {
  mkdirSync(join(dir, name), { recursive: true })
  return peerIdFromPrivateKey(await loadOrCreateIdentity(join(dir, name, 'identity.key'))).toString()
}

async function member(name: string, o: { shares: boolean; sharedSize?: string; bootstrap?: string[]; deny?: string[]; cache?: boolean }): Promise<Member> {
  const home = join(dir, name)
  mkdirSync(home, { recursive: true })
  const q = (s: string) => JSON.stringify(s)
  const list = (a: string[]) => `[${a.map(q).join(', ')}]`
  const file = join(home, 'config.toml')
  writeFileSync(file, [
    '[cache]', `dir = ${q(join(home, 'cache'))}`, `shared_size = ${q(o.sharedSize ?? (o.shares ? '8M' : '0'))}`,
    '[mesh]', 'listen = ["/ip4/127.0.0.1/tcp/0"]', `bootstrap = ${list(o.bootstrap ?? [])}`, 'mdns = false', 'dht = false',
    `key_file = ${q(keyFile)}`, `identity_file = ${q(join(home, 'identity.key'))}`, `deny = ${list(o.deny ?? [])}`, `name = ${q(name)}`, ''
  ].join('\n'))
  const config = loadConfig({ MESHCC_CONF: file, HOME: dir })
  const lines: string[] = []
  const mesh = await startMesh({
    config, log: capture([]), version: '9.9.9', expiryMs: 8000,
    getLoad: () => ({ cores: 2, running: 0, queued: 0, freeSlots: 2, load1: 0, speed: 1, toolchains: [], accept: 'always', shim: false, sharesCache: o.shares })
  })
  meshes.push(mesh)
  // six nodes starting at once on two cores measure RTTs of hundreds of ms on loopback (the first
  // sample is taken as a connection opens, the next 30 s later), and answer slowly: a generous
  // link limit and answer budget here; both are tested on their own below
  const cache = o.cache === false ? null : await startMeshCache(config, mesh, capture(lines), { goodLinkRttMs: 5000, minBudgetMs: 2000, maxBudgetMs: 2000 })
  if (cache) caches.push(cache)
  return { name, config, mesh, cache, lines }
}

const k = (s: string) => createHash('sha256').update(s).digest('hex')
const entry = (obj: Buffer | string): CacheEntry => ({ exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.from('note\n'), outputs: [{ name: 'obj', data: Buffer.from(obj) }] })

let A: Member, B: Member, C: Member, F: Member, S: Member, L: Member, H: Member
const sharing = () => [A, B, C].map((m) => m.mesh.peerId)
const forgedServed: string[] = []

before(async () => {
  writeMeshKey(keyFile, generateMeshKey())
  const forgerId = await peerIdOfHome('F')
  A = await member('A', { shares: true })
  const boot = [A.mesh.addresses()[0]!]
  B = await member('B', { shares: true, bootstrap: boot })
  C = await member('C', { shares: true, bootstrap: boot, deny: [forgerId] })
  L = await member('L', { shares: false, bootstrap: boot })
  // F: a member holding the mesh key whose cache answers are forged (garbage signatures)
  F = await member('F', { shares: false, bootstrap: boot, cache: false })
  assert.equal(F.mesh.peerId, forgerId)
  await serveCacheExchange(F.mesh.libp2p, F.mesh.meshId, {
    isAllowed: () => true,
    get: async (_peer, key) => {
      forgedServed.push(key)
      const blob = await sealEntry(entry('forged object'), key, (await sharedIdentity(A.config, capture([]))).signer)
      blob[25] ^= 0xff // claims to be A's, signature garbage
      return { blob, next: null }
    },
    admitPut: () => 'no', put: async () => 'no'
  }, () => {}, { maxEntryBytes: 1024 * 1024 })
  // S: a member that reads a request and never answers
  S = await member('S', { shares: false, bootstrap: boot, cache: false })
  await S.mesh.libp2p.handle(cacheExchangeProtocol(S.mesh.meshId), () => { /* holds the stream, says nothing */ })
  const all = [A, B, C, F, S, L]
  for (const m of all) {
    const others = all.filter((x) => x !== m && !(m === C && x === F) && !(m === F && x === C))
    await waitFor(`${m.name} to see the others with a measured link`, () => {
      const ms = m.mesh.members()
      return others.every((o) => ms.some((x) => x.peerId === o.mesh.peerId && x.connection === 'direct' && x.rttMs !== null)) ? true : undefined
    }, 30_000)
  }
})

after(async () => {
  await Promise.all(caches.map((c) => c.stop()))
  await Promise.all(meshes.map((m) => m.stop()))
  rmSync(dir, { recursive: true, force: true })
})

const published: Array<{ key: string; entry: CacheEntry }> = []

test('a result published on one member is a verified hit on every other, from the key\'s owners', { timeout: 120_000 }, async () => {
  for (let i = 0; i < 12; i++) {
    const e = entry(randomBytes(20_000 + i * 1000))
    const key = k(`unit ${i}`)
    published.push({ key, entry: e })
    A.cache!.publish(key, e)
  }
  await A.cache!.flushed()
  const pushed = published.reduce((n, p) => n + ownersOf(p.key, sharing()).filter((o) => o !== A.mesh.peerId).length, 0)
  assert.equal(A.cache!.stats().entries_pushed, pushed)
  assert.equal(B.cache!.stats().entries_stored_for_others + C.cache!.stats().entries_stored_for_others, pushed)
  for (const asker of [B, C]) {
    for (const p of published) {
      const hit = await asker.cache!.lookup(p.key)
      assert.ok(hit, `${asker.name} finds ${p.key.slice(0, 8)}`)
      assert.equal(hit.producer, A.mesh.peerId)
      assert.deepEqual(hit.entry.outputs, p.entry.outputs)
      assert.deepEqual(hit.entry.stderr, p.entry.stderr)
      const owners = ownersOf(p.key, sharing())
      assert.ok(owners.includes(hit.from) || hit.from === A.mesh.peerId, `served by an owner or the producer, not ${hit.from}`)
    }
    assert.equal(asker.cache!.stats().remote_hits, published.length)
  }
  assert.ok(A.cache!.stats().entries_served + B.cache!.stats().entries_served + C.cache!.stats().entries_served > 0)
  // a key nobody has: a miss, asked of its owners
  assert.equal(await B.cache!.lookup(k('never compiled')), null)
  assert.ok(B.cache!.stats().remote_misses + B.cache!.stats().lookups_unasked >= 1)
})

test('forged entries are refused: a garbage signature never becomes a hit, an owner never keeps one, a denied producer is refused', { timeout: 60_000 }, async () => {
  // F answers every get with an entry claiming to be A's under a garbage signature
  const nobody = k('only F claims this')
  assert.equal(await B.cache!.lookup(nobody, [F.mesh.peerId]), null)
  assert.ok(forgedServed.includes(nobody), 'F was asked')
  assert.equal(B.cache!.stats().failures.signature, 1)
  assert.ok(B.lines.some((l) => l.startsWith('W ') && l.includes(F.mesh.peerId) && /bad signature/.test(l)), B.lines.join('\n'))
  // F is skipped from then on; the real owners still answer
  const asked = forgedServed.length
  const hit = await B.cache!.lookup(published[0]!.key, [F.mesh.peerId])
  assert.equal(hit?.producer, A.mesh.peerId)
  assert.equal(forgedServed.length, asked, 'F was not asked again')

  // F offers an owner a forged entry: refused after reading, not kept
  const forged = await sealEntry(entry('forged'), k('forged put'), (await sharedIdentity(A.config, capture([]))).signer)
  forged[25] ^= 0xff
  const r = await putEntry(F.mesh.libp2p, F.mesh.meshId, A.mesh.peerId, k('forged put'), forged, AbortSignal.timeout(10_000))
  assert.equal(r.kind, 'refused')
  assert.match((r as { reason: string }).reason, /bad signature/)
  assert.equal(await A.cache!.lookup(k('forged put')), null)

  // F's own, validly signed entry: A keeps it (it trusts the mesh), C denies F and refuses it
  const fSigner = await sharedIdentity(F.config, capture([]))
  const fKey = k('made by F')
  const own = await sealEntry(entry('an object by F'), fKey, fSigner.signer)
  for (const owner of ownersOf(fKey, sharing()).filter((o) => o !== C.mesh.peerId)) {
    const stored = await putEntry(F.mesh.libp2p, F.mesh.meshId, owner, fKey, own, AbortSignal.timeout(10_000))
    assert.equal(stored.kind, 'stored')
  }
  assert.equal((await B.cache!.lookup(fKey))?.producer, F.mesh.peerId)
  const before = C.cache!.stats().failures.untrusted
  assert.equal(await C.cache!.lookup(fKey), null)
  assert.ok(C.cache!.stats().failures.untrusted > before)
})

/** A member's compile pipeline (as its daemon runs it) over its MeshCache, with its own cache directory. */
async function pipeline(m: Member): Promise<{ svc: CompileService; stats: Stats }> {
  const cacheDir = join(dir, `pipeline-${m.name}`)
  const log = capture(m.lines)
  const stats = new Stats(cacheDir, log)
  const store = new LocalStore({ dir: cacheDir, maxBytes: 64 * 1024 * 1024, log })
  await store.open()
  const svc = new CompileService({ store, stats, log, slots: 1, direct: new ManifestStore(cacheDir) })
  const { trust } = await sharedIdentity(m.config, capture([]))
  svc.shared = new SharedCache({ mesh: m.cache, tier: null, verifier: new Verifier({ rate: 0, trust, log }), trust, log })
  return { svc, stats }
}

test('a rustc manifest set another member publishes is refused when it names a file outside what the command reads (absolute, "..", a symlink out, a file in a directory link out) or a variable cargo does not set; an honest set still hits', { timeout: 120_000 }, async () => {
  const rustc = toolchainRustc(findCargo().rustc)
  const ws = join(dir, 'rust-ws')
  const out = join(ws, 'target')
  mkdirSync(out, { recursive: true })
  // a file outside the crate, its toolchain and cargo's registry, as a user's SSH key is
  const secret = join(dir, 'outside', 'id_ed25519')
  mkdirSync(dirname(secret))
  writeFileSync(secret, 'PRIVATE KEY OF THE VICTIM\n')
  symlinkSync(secret, join(ws, 'key-link'))
  // a directory link out: the file itself is no link, the directory it lies in leads outside
  symlinkSync(dirname(secret), join(ws, 'dir-link'))
  const crates = ['honest', 'absolute', 'climb', 'symlink', 'dirlink', 'variable']
  for (const c of crates) writeFileSync(join(ws, `${c}.rs`), 'pub fn name() -> &\'static str { env!("CARGO_PKG_NAME") }\n')
  const req = (c: string): CompileRequest => ({
    cwd: ws, compiler: rustc, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: join(dir, 'victim-home'), CARGO_PKG_NAME: c, AWS_SECRET_ACCESS_KEY: 'hunter2' },
    args: ['--crate-name', c, '--edition=2021', `${c}.rs`, '--crate-type', 'lib', '--emit=dep-info,metadata,link', '-C', 'embed-bitcode=no', '--out-dir', out]
  })
  const rust = (st: Stats) => st.snapshot().families.rust?.counters ?? {}
  const a = await pipeline(A)
  const b = await pipeline(B)

  // honest: A compiles the crate and publishes its set and result; B (its cache empty) hits
  assert.equal((await a.svc.handle(req('honest'))).kind, 'result')
  await a.svc.drain()
  await A.cache!.flushed()
  rmSync(out, { recursive: true })
  mkdirSync(out)
  const got = await b.svc.handle(req('honest'))
  assert.equal(got.kind === 'result' && got.exitCode, 0, JSON.stringify(got))
  assert.equal(rust(b.stats).mesh_hits, 1, `the honest set is a mesh hit: ${JSON.stringify(rust(b.stats))}`)

  // L knows the commands B runs: for each it publishes a set naming the crate's source and a
  // file or variable it wants to learn about, each with the right hash or value (so the set
  // would match on B), and a result under the key those make
  const hasher = new FileHasher()
  const hash = async (p: string) => (await hasher.hash(p))!.hash
  const forged: Record<string, Pick<FileSet, 'files' | 'env'>> = {
    absolute: { files: [['absolute.rs', await hash(join(ws, 'absolute.rs'))], [secret, await hash(secret)]], env: [['CARGO_PKG_NAME', 'absolute']] },
    climb: { files: [['../outside/id_ed25519', await hash(secret)], ['climb.rs', await hash(join(ws, 'climb.rs'))]], env: [['CARGO_PKG_NAME', 'climb']] },
    symlink: { files: [['key-link', await hash(secret)], ['symlink.rs', await hash(join(ws, 'symlink.rs'))]], env: [['CARGO_PKG_NAME', 'symlink']] },
    dirlink: { files: [['dir-link/id_ed25519', await hash(secret)], ['dirlink.rs', await hash(join(ws, 'dirlink.rs'))]], env: [['CARGO_PKG_NAME', 'dirlink']] },
    variable: { files: [['variable.rs', await hash(join(ws, 'variable.rs'))]], env: [['AWS_SECRET_ACCESS_KEY', 'hunter2'], ['CARGO_PKG_NAME', 'variable']] }
  }
  const family = new RustFamily()
  const lStats = new Stats(join(dir, 'L-stats'), capture([]))
  for (const [c, set] of Object.entries(forged)) {
    const job = await family.plan(req(c), { hasher, pre: new Semaphore(1), remote: false, direct: true, log: capture([]), stats: lStats.family('rust') }) as CompileJob
    const direct = (await job.directKey(Date.now()))!.key
    const result = dependKey(direct, set)
    const manifest = encodeManifest(direct, { sets: [{ ...set, result }], preprocess: false })
    L.cache!.publish(sharedManifestKey(direct), { exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), outputs: [{ name: 'manifest', data: Buffer.from(manifest) }] })
    L.cache!.publish(result, { exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), outputs: job.outputs.map((o) => ({ name: o.name, data: Buffer.from('made by L') })) })
    await job.dispose()
  }
  await L.cache!.flushed()
  const taken: string[] = []
  for (const c of Object.keys(forged)) {
    const r = await b.svc.handle(req(c))
    assert.equal(r.kind === 'result' && r.exitCode, 0, JSON.stringify(r))
    if (readFileSync(join(out, `lib${c}.rlib`)).equals(Buffer.from('made by L'))) taken.push(c)
  }
  assert.deepEqual(taken, [], 'B fetched and used L\'s result for these: L learns that its guess was right')
  const counts = rust(b.stats)
  assert.equal(counts.mesh_hits, 1, `none of L's sets led B to fetch its result: ${JSON.stringify(counts)}`)
  assert.equal(counts.shared_sets_refused, Object.keys(forged).length, JSON.stringify(counts))
  assert.equal(counts.local_compiles, Object.keys(forged).length)
  const warned = B.lines.filter((l) => l.startsWith('W ') && l.includes('shared manifest set'))
  assert.equal(warned.length, 1, `one warning for L, the rest at debug level: ${warned.join('\n')}`)
  assert.ok(warned[0]!.includes(L.mesh.peerId) && warned[0]!.includes(secret), warned[0])
  assert.match(formatStatsText(b.stats.snapshot().counters), new RegExp(`Shared manifest sets refused\\s+${Object.keys(forged).length}\\n`))
})

/** gcc -c unit.c in a directory of its own: the object of `source`. */
function compile(name: string, source: string): Buffer {
  const d = join(dir, 'src', name)
  mkdirSync(d, { recursive: true })
  writeFileSync(join(d, 'unit.c'), source)
  execFileSync('gcc', ['-O1', '-c', 'unit.c', '-o', 'unit.o'], { cwd: d })
  return readFileSync(join(d, 'unit.o'))
}

test('verify_rate = 1.0 catches a member whose object is wrong (real gcc) and distrusts it', { timeout: 60_000 }, async () => {
  const source = 'int answer(void) { return 42; }\n'
  const right = compile('right', source)
  const wrong = compile('wrong', 'int answer(void) { return 41; }\n')
  assert.ok(!right.equals(wrong))
  // A made one honestly; L publishes a wrong object under the key of the right source
  const honestKey = k('honest unit')
  A.cache!.publish(honestKey, entry(compile('a', source)))
  const lieKey = k('the unit L lies about')
  const laterKey = k('another unit by L')
  L.cache!.publish(lieKey, entry(wrong))
  L.cache!.publish(laterKey, entry(wrong))
  await Promise.all([A.cache!.flushed(), L.cache!.flushed()])

  const { trust } = await sharedIdentity(B.config, capture([]))
  const lines: string[] = []
  const verifier = new Verifier({ rate: 1.0, trust, log: capture(lines) })
  const recompile = async () => [{ name: 'obj', data: compile('b', source) }]
  for (const key of [honestKey, lieKey]) {
    const hit = await B.cache!.lookup(key)
    assert.ok(hit, `B finds ${key.slice(0, 8)}`)
    assert.equal(verifier.consider({ key, entry: hit.entry, producer: hit.producer, kind: 'mesh-hit', recompile }), true)
  }
  await verifier.idle()
  assert.deepEqual(verifier.stats(), { verifications: 2, verify_mismatches: 1, verify_skipped: 0, verify_dropped: 0 })
  assert.ok(lines.some((l) => l.startsWith('E ') && l.includes(L.mesh.peerId)), lines.join('\n'))
  assert.deepEqual(readDistrusted(distrustFile(B.config.configDir)).map((r) => r.peerId), [L.mesh.peerId])
  // from now on B refuses L's entries, and A's stay good
  assert.equal(await B.cache!.lookup(laterKey), null)
  assert.ok(B.cache!.stats().failures.untrusted >= 1)
  assert.equal((await B.cache!.lookup(honestKey))?.producer, A.mesh.peerId)
})

test('bounded publishing, the quota, and read repair to an owner that missed', { timeout: 60_000 }, async () => {
  // a backlog of 2 behind 2 uploads in flight: 10 publishes at once drop the 2 oldest waiting
  // (each upload takes the 3 waiting when the backlog overflows, to publish them together)
  const { signer, trust } = await sharedIdentity(B.config, capture([]))
  const small = new MeshCache({ mesh: B.mesh, signer, trust, store: null, log: capture([]), backlogEntries: 2 })
  for (let i = 0; i < 10; i++) small.publish(k(`burst ${i}`), entry(`burst ${i}`))
  assert.equal(small.stats().publish_dropped, 2)
  await small.flushed()
  await small.stop()

  // an entry larger than what an owner holds for others is refused before it is read
  const big = await sealEntry(entry(randomBytes(9 * 1024 * 1024)), k('big'), signer)
  const r = await putEntry(B.mesh.libp2p, B.mesh.meshId, A.mesh.peerId, k('big'), big, AbortSignal.timeout(20_000))
  assert.equal(r.kind, 'refused')
  assert.match((r as { reason: string }).reason, /does not fit/)

  // read repair: an entry only its producer B holds (B is not among its owners); A asks B by a
  // hint, and the owners that missed receive it as B signed it
  let key = ''
  for (let i = 0; ; i++) {
    key = k(`repair ${i}`)
    const o = ownersOf(key, sharing())
    if (!o.includes(B.mesh.peerId) && o.includes(A.mesh.peerId)) break
  }
  const blob = await sealEntry(entry('only at B'), key, signer)
  // B keeps what it made (as publish does), without publishing it
  const bStore = join(B.config.cache.dir, 'shared', key.slice(0, 2))
  mkdirSync(bStore, { recursive: true })
  writeFileSync(join(bStore, key), blob)
  assert.equal(await C.cache!.lookup(key), null, 'the owners do not have it')
  const hit = await A.cache!.lookup(key, [B.mesh.peerId])
  assert.equal(hit?.from, B.mesh.peerId)
  assert.equal(hit?.producer, B.mesh.peerId)
  await A.cache!.flushed()
  // both owners hold it now, as B signed it: C received it, A kept what it fetched
  for (const owner of [A, C]) {
    const held = join(owner.config.cache.dir, 'shared', key.slice(0, 2), key)
    assert.deepEqual(readFileSync(held), blob, `${owner.name} holds it`)
  }
  const fromOwner = await C.cache!.lookup(key)
  assert.equal(fromOwner?.producer, B.mesh.peerId)
})

test('a member holding the mesh key cannot make an owner hold more than its share: streams refused unread, sizes checked before reading', { timeout: 60_000 }, async () => {
  const open = async () => new Framed(await F.mesh.libp2p.dialProtocol(peerIdOf(A.mesh.peerId), cacheExchangeProtocol(A.mesh.meshId)))
  // get streams the other members parked here (cache-exchange.ts, again) close within IDLE_MS
  await waitFor('parked get streams to close', () => (A.cache!.stats().serving_streams === 0 ? true : undefined), 10_000)
  const before = 0
  // ten puts announcing 1 MiB each, none sending a byte of it: eight are accepted (and held
  // against F's budget), the rest refused unread
  const streams = await Promise.all(Array.from({ length: 10 }, () => open()))
  const replies: string[] = []
  for (const [i, f] of streams.entries()) {
    await f.writeJson({ v: 1, op: 'put', key: k(`flood ${i}`), size: 1024 * 1024 })
    replies.push(String((await f.readJson<{ type?: string; reason?: string }>()).type))
  }
  assert.deepEqual(replies.filter((r) => r === 'accepted').length, 8, replies.join(' '))
  assert.equal(replies.filter((r) => r === 'refused').length, 2)
  assert.equal(A.cache!.stats().serving_streams - before, 8)
  for (const f of streams) f.abort(new Error('test done'))
  await waitFor('the streams to be given back', () => (A.cache!.stats().serving_streams === before ? true : undefined), 10_000)
  // an entry announced over the size limit is a protocol violation: the stream is reset unread
  const huge = await open()
  await huge.writeJson({ v: 1, op: 'put', key: k('huge'), size: 1024 * 1024 * 1024 })
  await assert.rejects(huge.readJson())
  // a bad key never reaches the store
  const bad = await open()
  await bad.writeJson({ v: 1, op: 'get', key: '../../etc/passwd' })
  await assert.rejects(bad.readJson())
})

test('a manifest set\'s holder sends the entry the set points at in the same answer: a hit without a second request, and one that fails its check is refused', { timeout: 60_000 }, async () => {
  // H holds, for a manifest set's key, a set by A and the entries it points at (A's, genuine,
  // and one with its signature broken), and counts the requests it gets
  H = await member('H', { shares: false, bootstrap: [B.mesh.addresses()[0]!], cache: false })
  const { signer } = await sharedIdentity(A.config, capture([]))
  const held = new Map<string, Buffer>()
  const setOf = (direct: string, result: string): CacheEntry => ({
    exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0),
    outputs: [{ name: 'manifest', data: Buffer.from(encodeManifest(direct, { sets: [{ files: [], result }], preprocess: false })) }]
  })
  const gets: Array<{ key: string; follow: boolean }> = []
  await serveCacheExchange(H.mesh.libp2p, H.mesh.meshId, {
    isAllowed: () => true,
    get: async (_peer, key, follow) => {
      gets.push({ key, follow })
      const blob = held.get(key)
      if (!blob) return null
      const next = held.get(`next of ${key}`)
      return { blob, next: follow && next ? { key: next.subarray(0, 64).toString('latin1'), blob: next.subarray(64) } : null }
    },
    admitPut: () => 'no', put: async () => 'no'
  }, () => {}, { maxEntryBytes: 1024 * 1024 })
  const hold = async (direct: string, obj: string, damage: boolean) => {
    const setKey = k(`set of ${direct}`)
    const result = k(`result of ${direct}`)
    held.set(setKey, await sealEntry(setOf(direct, result), setKey, signer))
    const blob = await sealEntry(entry(obj), result, signer)
    if (damage) blob[30] ^= 0xff
    held.set(`next of ${setKey}`, Buffer.concat([Buffer.from(result, 'latin1'), blob]))
    return { setKey, result }
  }
  await waitFor('B to see H directly', () => (B.mesh.members().some((m) => m.peerId === H.mesh.peerId && m.connection === 'direct' && m.rttMs !== null) ? true : undefined), 30_000)

  const honest = await hold(k('command 1'), 'object of command 1', false)
  const set = await B.cache!.lookup(honest.setKey, [H.mesh.peerId], { follow: true })
  assert.equal(set?.producer, A.mesh.peerId)
  assert.deepEqual(gets, [{ key: honest.setKey, follow: true }])
  const before = B.cache!.stats()
  const hit = await B.cache!.lookup(honest.result)
  assert.equal(hit?.producer, A.mesh.peerId)
  assert.equal(hit.from, H.mesh.peerId)
  assert.equal(hit.entry.outputs[0]!.data.toString(), 'object of command 1')
  assert.equal(B.cache!.stats().followed_hits, before.followed_hits + 1)
  assert.equal(gets.length, 1, 'the result was not asked for again')
  // a plain lookup (no follow) gets no second entry
  await B.cache!.lookup(honest.setKey, [H.mesh.peerId])
  assert.deepEqual(gets[1], { key: honest.setKey, follow: false })
  assert.equal(B.cache!.stats().followed_hits, before.followed_hits + 1)

  // the entry sent along fails its signature: refused when its key is looked up, never a hit
  const forged = await hold(k('command 2'), 'forged object', true)
  assert.ok(await B.cache!.lookup(forged.setKey, [H.mesh.peerId], { follow: true }))
  const sigBefore = B.cache!.stats().failures.signature
  const got = await B.cache!.lookup(forged.result)
  assert.equal(got, null)
  assert.equal(B.cache!.stats().failures.signature, sigBefore + 1)
  assert.equal(B.cache!.stats().followed_hits, before.followed_hits + 1)
  assert.ok(B.lines.some((l) => l.startsWith('W ') && l.includes(H.mesh.peerId) && /bad signature/.test(l)), B.lines.join('\n'))
  await H.mesh.stop()
})

test('an owner keeps a manifest set\'s depend form when a pointer for the same command arrives (from a member, or published by the owner itself); a depend form replaces a pointer, a pointer a pointer', { timeout: 60_000 }, async () => {
  // a command whose manifest set A and C own: L (holding nothing for others) publishes, asks, and
  // is answered by an owner
  let direct = ''
  for (let i = 0; ; i++) {
    direct = k(`owner keeps ${i}`)
    const o = ownersOf(sharedManifestKey(direct), sharing())
    if (o.includes(A.mesh.peerId) && o.includes(C.mesh.peerId)) break
  }
  const key = sharedManifestKey(direct)
  const files = (tag: string): Array<[string, string]> => [['/src/unit.c', k(`unit.c ${tag}`)], ['/src/unit.h', k(`unit.h ${tag}`)]]
  const dependForm = (tag: string): CacheEntry => sharedManifestEntry(direct, { files: files(tag), result: dependKey(direct, { files: files(tag) }) })
  const pointer = (tag: string): CacheEntry => sharedManifestEntry(direct, { files: files(tag), result: k(`preprocessed ${tag}`) }, true)
  const publish = async (m: Member, e: CacheEntry) => { m.cache!.publish(key, e); await m.cache!.flushed() }
  /** what L is served, and what each owner holds: [tag of the set's files, pointer or depend form] */
  const tagOf = (set: { sets: FileSet[]; preprocess: boolean } | null) => set && `${['v1', 'v2', 'v3'].find((t) => set.sets[0]!.files[0]![1] === k(`unit.c ${t}`))} ${set.preprocess ? 'pointer' : 'depend'}`
  const served = async () => {
    const hit = await L.cache!.lookup(key)
    return tagOf(hit && sharedManifestOf(key, hit.entry))
  }
  const held = async (owner: Member) => tagOf(await signedManifestSet(key, readFileSync(join(owner.config.cache.dir, 'shared', key.slice(0, 2), key))))

  await publish(L, dependForm('v1'))
  assert.equal(await served(), 'v1 depend')
  // B's files were too new to vouch for: a pointer, which both owners refuse
  const refused = A.cache!.stats().entries_refused_for_others + C.cache!.stats().entries_refused_for_others
  const logged = [A.lines.length, C.lines.length]
  await publish(B, pointer('v2'))
  assert.equal(A.cache!.stats().entries_refused_for_others + C.cache!.stats().entries_refused_for_others, refused + 2)
  assert.equal(await served(), 'v1 depend', 'the owners still serve the depend form')
  for (const owner of [A, C]) assert.equal(await held(owner), 'v1 depend', `${owner.name} holds the depend form`)
  assert.deepEqual([A.lines.slice(logged[0]), C.lines.slice(logged[1])].flat().filter((l) => l.startsWith('W ')), [], 'an honest pointer is no warning')
  // an owner's own pointer does not replace the depend form it holds either (its own store is the owner's copy)
  await publish(A, pointer('v3'))
  for (const owner of [A, C]) assert.equal(await held(owner), 'v1 depend', `${owner.name} holds the depend form`)
  assert.equal(await served(), 'v1 depend')
  // a depend form replaces a depend form, as before
  await publish(B, dependForm('v2'))
  for (const owner of [A, C]) assert.equal(await held(owner), 'v2 depend')

  // another command: a pointer is held until a pointer or a depend form replaces it
  for (let i = 0; ; i++) {
    direct = k(`pointer first ${i}`)
    const o = ownersOf(sharedManifestKey(direct), sharing())
    if (o.includes(A.mesh.peerId) && o.includes(C.mesh.peerId)) break
  }
  const key2 = sharedManifestKey(direct)
  const publish2 = async (m: Member, e: CacheEntry) => { m.cache!.publish(key2, e); await m.cache!.flushed() }
  const served2 = async () => {
    const hit = await L.cache!.lookup(key2)
    return tagOf(hit && sharedManifestOf(key2, hit.entry))
  }
  await publish2(L, pointer('v1'))
  assert.equal(await served2(), 'v1 pointer')
  await publish2(B, pointer('v2'))
  assert.equal(await served2(), 'v2 pointer')
  await publish2(L, dependForm('v3'))
  assert.equal(await served2(), 'v3 depend')
})

/** `n` keys both of whose owners are A and C */
function keysOwnedByAC(tag: string, n: number): string[] {
  const out: string[] = []
  for (let i = 0; out.length < n; i++) {
    const key = k(`${tag} ${i}`)
    const o = ownersOf(key, sharing())
    if (o.includes(A.mesh.peerId) && o.includes(C.mesh.peerId)) out.push(key)
  }
  return out
}

test('what one publish run hands an owner goes on one stream (a batch); an owner of the previous version, which fails a batch unanswered, gets each entry on a stream of its own', { timeout: 60_000 }, async () => {
  const { signer, trust } = await sharedIdentity(L.config, capture([]))
  const publisher = () => new MeshCache({ mesh: L.mesh, signer, trust, store: null, log: capture([]) })
  let pub = publisher()
  const [a0, c0] = [A.cache!.stats(), C.cache!.stats()]
  // a job's publishes come within milliseconds of each other: three at once, one stream to each owner
  const keys = keysOwnedByAC('batched', 3)
  for (const key of keys) pub.publish(key, entry(`batched ${key}`))
  await pub.flushed()
  const s = pub.stats()
  assert.deepEqual([s.batches_sent, s.batched_ops, s.entries_pushed, s.failures.error, s.failures.refused], [2, 6, 6, 0, 0], JSON.stringify(s))
  assert.equal(A.cache!.stats().batched_ops_received - a0.batched_ops_received, 3)
  assert.equal(C.cache!.stats().batched_ops_received - c0.batched_ops_received, 3)
  for (const key of keys) for (const owner of [A, C]) assert.ok(existsSync(join(owner.config.cache.dir, 'shared', key.slice(0, 2), key)), `${owner.name} holds ${key.slice(0, 8)}`)
  // the next run soon after goes on the same streams (again)
  for (const key of keysOwnedByAC('batched next', 2)) pub.publish(key, entry(`next ${key}`))
  await pub.flushed()
  const s1 = pub.stats()
  assert.deepEqual([s1.batches_sent, s1.batched_ops, s1.streams_reused, s1.failures.error], [4, 10, 2, 0], JSON.stringify(s1))
  await pub.stop()

  // C as a member of the previous version: puts it takes, and it fails the stream of an
  // operation it does not know before answering anything
  const proto = cacheExchangeProtocol(C.mesh.meshId)
  await C.mesh.libp2p.unhandle(proto)
  const oldGot: string[] = []
  const oldOps: string[] = []
  await C.mesh.libp2p.handle(proto, async (stream) => {
    const f = new Framed(stream, { stallMs: 5000 })
    try {
      const req = await f.readJson<{ op?: string; key?: string; size?: number }>()
      oldOps.push(String(req.op))
      if (req.op !== 'put') throw new Error(`unknown cache operation ${req.op}`)
      await f.writeJson({ type: 'accepted' })
      await f.readBlob(req.size!)
      oldGot.push(req.key!)
      await f.writeJson({ type: 'stored' })
    } catch (err) {
      f.abort(err as Error)
    } finally {
      await f.close()
    }
  })
  pub = publisher()
  try {
    const later = keysOwnedByAC('to the previous version', 3)
    for (const key of later) pub.publish(key, entry(`later ${key}`))
    await pub.flushed()
    assert.deepEqual(oldOps, ['batch', 'put', 'put', 'put'])
    assert.deepEqual(oldGot.sort(), [...later].sort())
    // A took its batch; C's entries all arrived, and nothing counts as a failure
    const s2 = pub.stats()
    assert.deepEqual([s2.batches_sent, s2.batched_ops, s2.entries_pushed, s2.failures.error, s2.members_skipped], [1, 3, 6, 0, 0], JSON.stringify(s2))
    // it stays remembered: the next run goes one by one at once
    oldOps.length = 0
    for (const key of keysOwnedByAC('still the previous version', 2)) pub.publish(key, entry(`still ${key}`))
    await pub.flushed()
    assert.deepEqual(oldOps, ['put', 'put'])
  } finally {
    await C.mesh.libp2p.unhandle(proto)
    await C.cache!.serve()
    await pub.stop()
  }
})

test('a lookup soon after another reuses the stream its holder answered on; a holder of the previous version answers each get on a stream of its own', { timeout: 60_000 }, async () => {
  const { signer, trust } = await sharedIdentity(L.config, capture([]))
  const asker = () => new MeshCache({ mesh: L.mesh, signer, trust, store: null, log: capture([]), goodLinkRttMs: 5000, minBudgetMs: 2000, maxBudgetMs: 2000 })
  const first = asker()
  // misses, answered by both owners: the first lookup asks A and C on streams of their own, the others on those again
  const absent = keysOwnedByAC('nobody published', 3)
  for (const key of absent) assert.equal(await first.lookup(key), null)
  assert.equal(first.stats().streams_reused, 4)
  // a hit on a stream answered on before (the entries the batch test above published to A and C)
  assert.equal((await first.lookup(keysOwnedByAC('batched', 1)[0]!))?.producer, L.mesh.peerId)
  assert.ok(first.stats().streams_reused >= 5)
  assert.equal(first.stats().failures.error, 0)
  await first.stop()

  // C as a holder of the previous version: one get per stream, no again
  const proto = cacheExchangeProtocol(C.mesh.meshId)
  await C.mesh.libp2p.unhandle(proto)
  let oldStreams = 0
  await C.mesh.libp2p.handle(proto, async (stream) => {
    oldStreams++
    const f = new Framed(stream, { stallMs: 5000 })
    try {
      const req = await f.readJson<{ op?: string }>()
      if (req.op !== 'get') throw new Error(`unexpected ${req.op}`)
      await f.writeJson({ type: 'miss' })
    } catch (err) {
      f.abort(err as Error)
    } finally {
      await f.close()
    }
  })
  const second = asker()
  try {
    for (const key of absent) assert.equal(await second.lookup(key), null)
    assert.equal(oldStreams, absent.length)
    // only A's stream was used again
    const s = second.stats()
    assert.deepEqual([s.streams_reused, s.remote_misses, s.failures.error], [absent.length - 1, absent.length, 0])
  } finally {
    await C.mesh.libp2p.unhandle(proto)
    await C.cache!.serve()
    await second.stop()
  }
})

test('a batch from a member holding the mesh key gets every check a put alone gets: sizes before reading, the signature of each entry, the operations and their number', { timeout: 60_000 }, async () => {
  const open = async () => new Framed(await F.mesh.libp2p.dialProtocol(peerIdOf(A.mesh.peerId), cacheExchangeProtocol(A.mesh.meshId)), { stallMs: 10_000 })
  const { signer } = await sharedIdentity(F.config, capture([]))
  const forgedKey = k('batch: forged')
  const forged = await sealEntry(entry('forged in a batch'), forgedKey, signer)
  forged[30] ^= 0xff // the signature
  const honestKey = k('batch: honest')
  const honest = await sealEntry(entry('honest in a batch'), honestKey, signer)
  const a0 = A.cache!.stats()
  const f = await open()
  await f.writeJson({ v: 1, op: 'batch', key: forgedKey, count: 3 })
  const replies: string[] = []
  const put = async (key: string, size: number, blob: Buffer | null) => {
    await f.writeJson({ v: 1, op: 'put', key, size })
    const first = await f.readJson<{ type?: string }>()
    replies.push(String(first.type))
    if (first.type !== 'accepted' || blob === null) return
    await f.writeBlob(blob)
    replies.push(String((await f.readJson<{ type?: string }>()).type))
  }
  await put(forgedKey, forged.length, forged)
  await put(honestKey, honest.length, honest)
  // more than A holds for others (8M): refused before a byte of it is read, and the batch goes on
  await put(k('batch: too big'), 9 * 1024 * 1024, null)
  assert.deepEqual(replies, ['accepted', 'refused', 'accepted', 'stored', 'refused'])
  await f.close()
  const held = (key: string) => existsSync(join(A.config.cache.dir, 'shared', key.slice(0, 2), key))
  assert.deepEqual([held(forgedKey), held(honestKey)], [false, true])
  assert.equal(A.cache!.stats().entries_refused_for_others - a0.entries_refused_for_others, 1)
  // more operations than a batch may carry, an operation that is no put or keep, an entry over
  // the size limit: each a protocol violation, the stream reset
  const bad = async (head: Record<string, unknown>, sub?: Record<string, unknown>) => {
    const g = await open()
    await g.writeJson({ v: 1, op: 'batch', key: honestKey, ...head })
    if (sub) await g.writeJson({ v: 1, key: honestKey, ...sub })
    await assert.rejects(g.readJson(), Error, JSON.stringify([head, sub]))
  }
  await bad({ count: MAX_BATCH_OPS + 1 })
  await bad({ count: 0 })
  await bad({ count: 2 }, { op: 'get' })
  await bad({ count: 2 }, { op: 'batch', count: 1 })
  await bad({ count: 1 }, { op: 'put', size: 1024 * 1024 * 1024 })
  await waitFor('A to give the streams back', () => (A.cache!.stats().serving_streams === 0 ? true : undefined), 10_000)
})

test('a member that stops answering is skipped; an owner that leaves costs no hit', { timeout: 60_000 }, async () => {
  // B with a short budget asks S, which never answers
  const { signer, trust } = await sharedIdentity(B.config, capture([]))
  const quick = new MeshCache({ mesh: B.mesh, signer, trust, store: null, log: capture([]), goodLinkRttMs: 5000, minBudgetMs: 150, maxBudgetMs: 150 })
  const t0 = Date.now()
  assert.equal(await quick.lookup(k('S never answers'), [S.mesh.peerId]), null)
  const waited = Date.now() - t0
  assert.ok(waited < 5000, `a lookup waited ${waited} ms for a silent member`)
  assert.equal(quick.stats().failures.timeout, 1)
  // one late answer may be a busy moment: asked again, skipped once late three times in a row
  assert.equal(quick.stats().members_skipped, 0)
  for (const n of [2, 3]) {
    assert.equal(await quick.lookup(k(`S late ${n}`), [S.mesh.peerId]), null)
    assert.equal(quick.stats().failures.timeout, n)
  }
  assert.equal(quick.stats().members_skipped, 1)
  await quick.lookup(k('S again'), [S.mesh.peerId])
  assert.equal(quick.stats().failures.timeout, 3, 'not asked again while skipped (the key\'s owners were)')
  await quick.stop()
  // only members with a good link are asked: with a limit no link meets, nobody is
  const strict = new MeshCache({ mesh: B.mesh, signer, trust, store: null, log: capture([]), goodLinkRttMs: -1 })
  assert.equal(await strict.lookup(published[0]!.key), null)
  assert.deepEqual([strict.stats().lookups_unasked, strict.stats().remote_hits], [1, 0])
  await strict.stop()

  // A leaves: every key it published has its other owner, B or C
  await A.cache!.stop()
  await A.mesh.stop()
  await waitFor('B to drop A', () => (B.mesh.members().some((m) => m.peerId === A.mesh.peerId) ? undefined : true), 20_000)
  for (const p of published) {
    const hit = await B.cache!.lookup(p.key)
    assert.ok(hit, `B still finds ${p.key.slice(0, 8)} after A left`)
    assert.deepEqual(hit.entry.outputs, p.entry.outputs)
  }
})
