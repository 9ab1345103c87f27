// The shared cache's pieces that need no network: signed entries (real Ed25519 keys), owners by
// rendezvous hashing, the trust policy and its distrust list (with the real CLI that clears it),
// the store of entries held for others, the background queue, and the verifier.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { encodeEntry, encodeEntryPieces, reKeyed, type CacheEntry } from '../src/cache/entry-format.js'
import { MAX_SIGNED_ENTRY_BYTES, SignedEntryError, openSignedEntry, readSignedEntry, sealEncoded, sealEntry, signEntry, type EntrySigner } from '../src/cache/signed-entry.js'
import { ownersOf } from '../src/cache/owners.js'
import { TrustPolicy, distrustFile, readDistrusted } from '../src/cache/trust.js'
import { SharedStore } from '../src/cache/shared-store.js'
import { BackgroundQueue } from '../src/cache/background-queue.js'
import { Verifier } from '../src/cache/verifier.js'
import { silentLogger, type Logger } from '../src/log.js'
import { runCommand, MESHCC } from './helpers/meshcc.js'

const dir = mkdtempSync(join(tmpdir(), 'meshcc-shared-'))
after(() => rmSync(dir, { recursive: true, force: true }))

const key = (s: string) => createHash('sha256').update(s).digest('hex')
const entry = (obj: string): CacheEntry => ({ exitCode: 0, stdout: Buffer.from(''), stderr: Buffer.from('warning: x\n'), outputs: [{ name: 'obj', data: Buffer.from(obj) }], meta: { input: 'x.c' } })

async function signer(): Promise<EntrySigner> {
  const privateKey = await generateKeyPair('Ed25519')
  return { peerId: peerIdFromPrivateKey(privateKey).toString(), privateKey }
}

function capture(lines: string[]): Logger {
  const log: Logger = {
    error: (m) => lines.push(`E ${m}`), warn: (m) => lines.push(`W ${m}`), info: (m) => lines.push(`I ${m}`), debug: () => {},
    child: () => log, enabled: () => true
  }
  return log
}

async function refusedAs(p: Promise<unknown>, kind: SignedEntryError['kind']): Promise<string> {
  try {
    await p
  } catch (err) {
    assert.ok(err instanceof SignedEntryError, `expected a SignedEntryError, got ${String(err)}`)
    assert.equal(err.kind, kind, err.message)
    return err.message
  }
  assert.fail(`expected a refusal (${kind}), got an entry`)
}

test('signed entries: the producer and its signature travel with the entry, and nothing else passes', async () => {
  const a = await signer()
  const b = await signer()
  const k = key('unit 1')
  const blob = await sealEntry(entry('object bytes'), k, a)
  const opened = await openSignedEntry(blob, k)
  assert.equal(opened.producer, a.peerId)
  assert.deepEqual(opened.entry.outputs[0]!.data, Buffer.from('object bytes'))
  assert.deepEqual(opened.entry.stderr, Buffer.from('warning: x\n'))

  // a flipped signature byte
  const badSig = Buffer.from(blob); badSig[30] ^= 1
  await refusedAs(openSignedEntry(badSig, k), 'signature')
  // another member's id put in front of A's signature (same length: both Ed25519 ids)
  const otherProducer = Buffer.from(blob); otherProducer.write(b.peerId, 84, 'latin1')
  await refusedAs(openSignedEntry(otherProducer, k), 'signature')
  // the entry's content hash changed: the signature covers it
  const encodedAt = 84 + a.peerId.length
  const badHash = Buffer.from(blob); badHash[encodedAt + 25] ^= 1
  await refusedAs(openSignedEntry(badHash, k), 'signature')
  // the entry's body changed: the signature still holds, the checksum against the signed hash does not
  const badBody = Buffer.from(blob); badBody[badBody.length - 3] ^= 0xff
  await refusedAs(openSignedEntry(badBody, k), 'entry')
  // asked for another key
  await refusedAs(openSignedEntry(blob, key('unit 2')), 'malformed')
  // truncated, garbage, oversized
  await refusedAs(openSignedEntry(blob.subarray(0, 100), k), 'malformed')
  await refusedAs(openSignedEntry(randomBytes(500), k), 'malformed')
  await refusedAs(openSignedEntry(blob, k, { maxBytes: blob.length - 1 }), 'malformed')
  assert.ok(MAX_SIGNED_ENTRY_BYTES >= 256 * 1024 * 1024)
  // the trust policy's word
  const why = await refusedAs(openSignedEntry(blob, k, { refuseProducer: (p) => (p === a.peerId ? 'not trusted here' : null) }), 'untrusted')
  assert.match(why, new RegExp(a.peerId))
  // readSignedEntry checks the envelope only: the damaged body passes it, and openSignedEntry catches it
  assert.equal((await readSignedEntry(badBody, k)).producer, a.peerId)
  // a producer that is no Ed25519 peer id, or one written in another text form
  const notAnId = Buffer.from(blob); notAnId.write('x'.repeat(a.peerId.length), 84, 'latin1')
  await refusedAs(openSignedEntry(notAnId, k), 'malformed')
  const cidForm = peerIdFromPrivateKey(a.privateKey).toCID().toString()
  const cidSigned = await signEntry(await encodeEntry(entry('object bytes'), k), { peerId: cidForm, privateKey: a.privateKey })
  await refusedAs(openSignedEntry(cidSigned, k), 'malformed')
  // an identity that cannot sign entries
  const secp = await generateKeyPair('secp256k1')
  await assert.rejects(sealEntry(entry('x'), k, { peerId: peerIdFromPrivateKey(secp).toString(), privateKey: secp }), /Ed25519/)
  // a failed compile is never an entry, signed or not
  const failed = await signEntry(await encodeEntry({ ...entry('x'), exitCode: 1 }, k), a)
  await refusedAs(openSignedEntry(failed, k), 'entry')
})

test('an entry encoded once (for the local store) is signed as it is, and under its depend-form key re-keyed, never compressed again', async () => {
  const a = await signer()
  const k = key('unit 1')
  const k2 = key('unit 1, depend form')
  const e = { ...entry('object bytes '.repeat(500)), outputs: [{ name: 'obj', data: Buffer.from('object bytes '.repeat(500)) }, { name: 'dep', data: Buffer.from('x.o: x.c x.h\n'.repeat(300)) }] }
  const pieces = await encodeEntryPieces(e, k)
  const header = Buffer.from(pieces[0]!)
  const opened = await openSignedEntry(await sealEncoded(pieces, k, a), k)
  assert.ok(opened.encoded.equals(Buffer.concat(pieces)), 'the signed entry wraps the local store\'s bytes')
  assert.deepEqual(opened.entry, e)
  const other = await openSignedEntry(await sealEncoded(reKeyed(pieces, k2), k2, a), k2)
  assert.deepEqual(other.entry, e)
  assert.ok(other.encoded.subarray(84).equals(Buffer.concat(pieces).subarray(84)), 'the body is the same bytes')
  assert.ok(pieces[0]!.equals(header), 're-keying leaves the original header alone')
  // pieces of one key are never signed as another's
  await assert.rejects(sealEncoded(pieces, k2, a), /not the one of key/)
  assert.throws(() => reKeyed([Buffer.alloc(10)], k2), /no header/)
})

test('owners: rendezvous hashing is balanced, order-free, and moves only what a joining or leaving member owns', () => {
  const members = Array.from({ length: 10 }, (_, i) => `member-${i}`)
  const keys = Array.from({ length: 6000 }, (_, i) => key(`k${i}`))
  const count = new Map(members.map((m) => [m, 0]))
  for (const k of keys) {
    const o = ownersOf(k, members)
    assert.equal(o.length, 2)
    assert.notEqual(o[0], o[1])
    for (const m of o) count.set(m, count.get(m)! + 1)
  }
  // each member owns about 2/10 of the keys (1200 of 6000; the standard deviation is about 31)
  for (const [m, n] of count) assert.ok(n > 1060 && n < 1340, `${m} owns ${n} keys`)
  // the same owners whatever the order of the list, duplicates ignored
  for (const k of keys.slice(0, 200)) assert.deepEqual(ownersOf(k, [...members].reverse().concat(members[3]!)), ownersOf(k, members))

  // a member leaves: keys it did not own keep their owners; keys it owned keep the other one
  const gone = members[4]!
  const left = members.filter((m) => m !== gone)
  let moved = 0
  for (const k of keys) {
    const before = ownersOf(k, members)
    const now = ownersOf(k, left)
    if (!before.includes(gone)) assert.deepEqual(now, before)
    else { moved++; assert.ok(now.includes(before.find((m) => m !== gone)!)) }
  }
  assert.ok(moved > 1060 && moved < 1340, `${moved} keys moved when one of 10 members left`)
  // a member joins: a key's owners change only by taking the newcomer in
  const joined = [...members, 'member-new']
  let changed = 0
  for (const k of keys) {
    const before = ownersOf(k, members)
    const now = ownersOf(k, joined)
    for (const m of now) assert.ok(m === 'member-new' || before.includes(m))
    if (now.includes('member-new')) changed++
  }
  assert.ok(changed > 950 && changed < 1230, `${changed} keys took the newcomer in (2/11 of 6000 is about 1091)`)
  assert.deepEqual(ownersOf(keys[0]!, []), [])
  assert.equal(ownersOf(keys[0]!, ['only']).length, 1)
})

test('trust policy: deny, "self", a list, and a distrust list that persists until the CLI clears it', async () => {
  const a = await signer()
  const b = await signer()
  const c = await signer()
  const home = join(dir, 'trust')
  mkdirSync(home, { recursive: true })
  const file = distrustFile(home)
  const lines: string[] = []
  const log = capture(lines)
  const mesh = new TrustPolicy({ self: a.peerId, trust: 'mesh', deny: [c.peerId], file, log })
  assert.equal(mesh.refusal(a.peerId), null)
  assert.equal(mesh.refusal(b.peerId), null)
  assert.match(mesh.refusal(c.peerId)!, /\[mesh\] deny/)
  assert.match(mesh.refusalToHold(c.peerId)!, /\[mesh\] deny/)
  const self = new TrustPolicy({ self: a.peerId, trust: 'self', deny: [], file, log })
  assert.equal(self.refusal(a.peerId), null)
  assert.match(self.refusal(b.peerId)!, /only its own/)
  assert.equal(self.refusalToHold(b.peerId), null, 'what this machine trusts for itself does not limit what it holds for others')
  const list = new TrustPolicy({ self: a.peerId, trust: [b.peerId], deny: [], file, log })
  assert.equal(list.refusal(b.peerId), null)
  assert.match(list.refusal(c.peerId)!, /not listed in \[cache\] trust/)
  assert.throws(() => new TrustPolicy({ self: a.peerId, trust: ['12D3KooWnotapeer'], deny: [], file, log, configFile: '/etc/meshcc.toml' }),
    /\/etc\/meshcc\.toml: \[cache\] trust: "12D3KooWnotapeer" is not a peer ID/)

  // distrust: written beside the config, seen by another instance (the daemon's other parts, a restart)
  assert.equal(mesh.distrustProducer(b.peerId, 'mesh-hit 0123: obj differs'), true)
  assert.equal(mesh.distrustProducer(b.peerId, 'again'), false, 'listed once')
  assert.equal(mesh.distrustProducer(a.peerId, 'own compiler disagreed'), false, 'never itself')
  assert.match(mesh.refusal(b.peerId)!, /distrusted since .*obj differs.*meshcc mesh trust/)
  assert.deepEqual(readDistrusted(file).map((r) => r.peerId), [b.peerId])
  const restarted = new TrustPolicy({ self: a.peerId, trust: 'mesh', deny: [], file, log })
  assert.match(restarted.refusalToHold(b.peerId)!, /distrusted/)

  // the CLI lists and clears it; the policies notice within a second
  const conf = join(home, 'config.toml')
  writeFileSync(conf, '[mesh]\nenabled = false\n')
  const env = { ...process.env, MESHCC_CONF: conf, HOME: home }
  const listed = await runCommand(MESHCC, ['mesh', 'distrusted'], { env })
  assert.equal(listed.code, 0, listed.stderr)
  assert.match(listed.stdout, new RegExp(`${b.peerId}  since .*obj differs`))
  const bad = await runCommand(MESHCC, ['mesh', 'trust', 'nonsense'], { env })
  assert.equal(bad.code, 2)
  assert.match(bad.stderr, /"nonsense" is not a peer ID/)
  const cleared = await runCommand(MESHCC, ['mesh', 'trust', b.peerId], { env })
  assert.equal(cleared.code, 0, cleared.stderr)
  assert.match(cleared.stdout, new RegExp(`trusted again: ${b.peerId}`))
  assert.deepEqual(readDistrusted(file), [])
  await new Promise((r) => setTimeout(r, 1100))
  assert.equal(mesh.refusal(b.peerId), null)
  assert.equal(restarted.refusal(b.peerId), null)
  const again = await runCommand(MESHCC, ['mesh', 'trust', b.peerId], { env })
  assert.equal(again.code, 1)
  assert.match(again.stdout, /is not distrusted/)

  // a damaged list is ignored with a warning, never fatal
  writeFileSync(file, '{ not json')
  const damaged = new TrustPolicy({ self: a.peerId, trust: 'mesh', deny: [], file, log })
  assert.equal(damaged.refusal(b.peerId), null)
  assert.ok(lines.some((l) => /distrust list .* is damaged/.test(l)), lines.join('\n'))
})

test('the store of entries held for others: verified before it is kept, kept signed, dropped once its producer is distrusted', async () => {
  const a = await signer()
  const f = await signer()
  const home = join(dir, 'store')
  mkdirSync(home, { recursive: true })
  const trust = new TrustPolicy({ self: a.peerId, trust: 'self', deny: [], file: distrustFile(home), log: silentLogger })
  const store = new SharedStore({ dir: join(home, 'shared'), maxBytes: 256 * 1024, log: silentLogger, refuseToHold: (p) => trust.refusalToHold(p) })
  await store.open()
  const k1 = key('held 1')
  const byF = await sealEntry(entry('from f'), k1, f)
  // trust = "self" here, yet it holds f's entry for the members that trust f
  assert.deepEqual(await store.put(k1, byF), { stored: true })
  assert.deepEqual(await store.get(k1), byF, 'served on exactly as it arrived')
  // forged: a bad signature, or the right bytes under another key, are not kept
  const forged = Buffer.from(byF); forged[40] ^= 1
  const k2 = key('held 2')
  const r2 = await store.put(k2, forged)
  assert.equal(r2.stored, false)
  const r3 = await store.put(k2, byF)
  assert.ok(!r3.stored && r3.kind === 'malformed', JSON.stringify(r3))
  assert.equal(await store.get(k2), null)
  // over the quota: refused before reading (admit) and at put
  const big = await sealEntry(entry(randomBytes(300 * 1024).toString('hex')), key('big'), f)
  assert.match(store.admit(big.length)!, /does not fit/)
  assert.equal((await store.put(key('big'), big)).stored, false)
  // f distrusted: its entry is dropped at the next read, file and all
  trust.distrustProducer(f.peerId, 'test')
  assert.equal(await store.get(k1), null)
  const files = readdirSync(join(home, 'shared', k1.slice(0, 2)))
  assert.ok(!files.includes(k1), `the entry file is gone: ${files.join(' ')}`)
  assert.equal((await store.put(k1, byF)).stored, false)
  await store.close()
})

test('background queue: never blocks, drops the oldest past its bounds, paces uploads', async () => {
  const ran: number[] = []
  const dropped: number[] = []
  let release!: () => void
  const gate = new Promise<void>((r) => { release = r })
  const q = new BackgroundQueue<number>({
    run: async (n) => { await gate; ran.push(n) },
    size: () => 10, onDrop: (n) => dropped.push(n), maxItems: 3, maxBytes: 1000, concurrency: 1
  })
  for (let i = 0; i < 8; i++) assert.equal(q.push(i), true)
  // 0 runs; 1..7 queued with room for 3: 1, 2, 3, 4 dropped (oldest first)
  assert.deepEqual(dropped, [1, 2, 3, 4])
  assert.equal(q.length, 3)
  release()
  await q.idle()
  assert.deepEqual(ran, [0, 5, 6, 7])
  const bytes = new BackgroundQueue<number>({ run: async () => {}, size: (n) => n, onDrop: (n) => dropped.push(n), maxBytes: 100 })
  assert.equal(bytes.push(101), false, 'larger than the whole backlog')
  const paced = new BackgroundQueue<number>({ run: async () => {}, size: () => 0, bytesPerSec: 1000 })
  const t0 = Date.now()
  await paced.pace(100)
  await paced.pace(100)
  await paced.pace(100)
  assert.ok(Date.now() - t0 >= 190, `300 bytes at 1000 bytes/s took ${Date.now() - t0} ms`)
  await q.stop()
  assert.equal(q.push(9), false, 'stopped')
})

test('verifier: samples at the rate, compares bytes, distrusts the producer of a wrong result', async () => {
  const a = await signer()
  const liar = await signer()
  const honest = await signer()
  const home = join(dir, 'verify')
  mkdirSync(home, { recursive: true })
  const lines: string[] = []
  const trust = new TrustPolicy({ self: a.peerId, trust: 'mesh', deny: [], file: distrustFile(home), log: silentLogger })
  const v = new Verifier({ rate: 1.0, trust, log: capture(lines) })
  const good = entry('right object')
  const right = async () => [{ name: 'obj', data: Buffer.from('right object') }]
  assert.equal(v.consider({ key: key('v1'), entry: good, producer: honest.peerId, kind: 'mesh-hit', recompile: right }), true)
  assert.equal(v.consider({ key: key('v2'), entry: entry('WRONG object'), producer: liar.peerId, kind: 'remote-compile', recompile: right }), true)
  assert.equal(v.consider({ key: key('v3'), entry: good, producer: honest.peerId, kind: 'tier-hit', recompile: async () => null }), true)
  assert.equal(v.consider({ key: key('v4'), entry: good, producer: honest.peerId, kind: 'mesh-hit', recompile: async () => { throw new Error('source changed') } }), true)
  await v.idle()
  assert.deepEqual(v.stats(), { verifications: 2, verify_mismatches: 1, verify_skipped: 2, verify_dropped: 0 })
  assert.equal(trust.accepts(honest.peerId), true)
  assert.equal(trust.accepts(liar.peerId), false)
  assert.match(trust.refusal(liar.peerId)!, /remote-compile .*obj differ/)
  assert.ok(lines.some((l) => l.startsWith('E ') && l.includes(liar.peerId) && /distrusted from now on/.test(l)), lines.join('\n'))
  assert.ok(existsSync(distrustFile(home)))
  // its own results: a mismatch is counted and logged, but a machine never distrusts itself
  v.consider({ key: key('v5'), entry: entry('x'), producer: a.peerId, kind: 'mesh-hit', recompile: right })
  await v.idle()
  assert.equal(v.stats().verify_mismatches, 2)
  assert.equal(trust.accepts(a.peerId), true)

  // the rate: 0 never samples; 0.25 samples what the random source puts under it
  const none = new Verifier({ rate: 0, trust, log: silentLogger })
  assert.equal(none.consider({ key: key('n'), entry: good, producer: honest.peerId, kind: 'mesh-hit', recompile: right }), false)
  const draws = [0.1, 0.9, 0.3, 0.2, 0.26]
  const quarter = new Verifier({ rate: 0.25, trust, log: silentLogger, random: () => draws.shift()! })
  const sampled = draws.slice().map(() => quarter.consider({ key: key('q'), entry: good, producer: honest.peerId, kind: 'mesh-hit', recompile: right }))
  assert.deepEqual(sampled, [true, false, false, true, false])
  await quarter.idle()
  assert.equal(quarter.stats().verifications, 2)
})
