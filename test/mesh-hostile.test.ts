// A member holding the mesh key turned against a builder: a flood of compile-job streams
// announcing big file tables, jobs that stall, inputs over the builder's budget, toolchain
// archives that are too big or not what they claim. Two real libp2p nodes on 127.0.0.1
// (startMesh, the mesh key, the project's own protocols); the builder's admission is the real
// Builder's (sandbox = "none", so nothing here needs bubblewrap: no job gets as far as running).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomFillSync } from 'node:crypto'
import { gzipSync } from 'node:zlib'
import { existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { generateMeshKey, writeMeshKey } from '../src/mesh/keys.js'
import { startMesh, type Mesh } from '../src/mesh/mesh.js'
import { loadConfig, type Config } from '../src/config.js'
import { silentLogger } from '../src/log.js'
import { lpStream } from '@libp2p/utils'
import { compileJobProtocol, encodeFileTable, sendCompileJob, serveCompileJobs, type CompileJobServer, type JobHeader } from '../src/mesh/protocols/compile-job.js'
import { fetchToolchain, serveToolchains, toolchainFetchProtocol } from '../src/mesh/protocols/toolchain-fetch.js'
import { Framed } from '../src/mesh/protocols/framing.js'
import { cacheExchangeProtocol, getEntry } from '../src/mesh/protocols/cache-exchange.js'
import { Builder } from '../src/daemon/builder.js'
import { MemoryInputCache } from '../src/daemon/input-cache.js'
import { ToolchainCache } from '../src/toolchain/cache.js'
import { waitFor, writeMeshConfig } from './helpers/mesh-proc.js'

const MiB = 1024 * 1024
const dir = mkdtempSync(join(tmpdir(), 'meshcc-hostile-'))
const meshes: Mesh[] = []
let builderNode: Mesh
let hostile: Mesh
let builder: Builder
let inputs: MemoryInputCache
let server: CompileJobServer
const protocolErrors: string[] = []

function config(name: string, bootstrap: string[]): Config {
  const file = writeMeshConfig(dir, name, { keyFile: join(dir, 'mesh.key'), listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap, mdns: false, dht: false, cores: 2 })
  writeFileSync(file, readFileSync(file, 'utf8').replace('[build]\n', '[build]\nsandbox = "none"\n'))
  return loadConfig({ MESHCC_CONF: file, HOME: dir })
}

const load = () => ({ cores: 2, running: 0, queued: 0, freeSlots: 2, load1: 0, speed: 1, toolchains: [], accept: 'always' as const, shim: false })

before(async () => {
  writeMeshKey(join(dir, 'mesh.key'), generateMeshKey())
  const bConfig = config('builder', [])
  builderNode = await startMesh({ config: bConfig, log: silentLogger, version: '9.9.9', getLoad: load })
  meshes.push(builderNode)
  hostile = await startMesh({ config: config('hostile', [builderNode.addresses()[0]!]), log: silentLogger, version: '9.9.9', getLoad: load })
  meshes.push(hostile)
  await waitFor('the hostile member to be connected', () => (hostile.libp2p.getConnections(peerIdFromString(builderNode.peerId)).length > 0 ? true : undefined), 15_000)
  const toolchains = new ToolchainCache({ dir: join(dir, 'builder', 'toolchains'), maxBytes: 1024 * MiB, log: silentLogger })
  await toolchains.open()
  builder = new Builder({
    config: bConfig, log: silentLogger, toolchains,
    fetchToolchain: async () => { throw new Error('no toolchains in this test') },
    findToolchainHolders: async () => [],
    isAllowed: () => true,
    onLoadChange: () => {}
  })
  await builder.init()
  inputs = new MemoryInputCache()
  // as MeshService registers it for cores = 2, but a builder that gives up on a stalled job after 10 s
  server = await serveCompileJobs(builderNode.libp2p, builderNode.meshId, builder, inputs, (peer, err) => protocolErrors.push(err.message), { maxStreamsPerPeer: 6, stallMs: 10_000 })
})

after(async () => {
  inputs?.stop()
  await Promise.all(meshes.map((m) => m.stop()))
  rmSync(dir, { recursive: true, force: true })
})

const header = (files: JobHeader['files']): JobHeader => ({
  toolchain: 'a'.repeat(64), compiler: '/usr/bin/gcc', argv: ['-c', 'x.c', '-o', '/w/x.o'], cwd: '/w', env: {},
  ppHash: '0'.repeat(64), ppArgv: ['-E', 'x.c'], objPath: '/w/x.o', files, dirs: []
})
const fileRef = (path: string, data: Buffer) => ({ path, mode: 0o644, size: data.length, hash: createHash('sha256').update(data).digest('hex') })

test('a flood of job streams announcing 16 MiB file tables: refused or bounded, and all of it given back', { timeout: 120_000 }, async () => {
  const chunk = Buffer.alloc(MiB)
  const streams: Stream[] = []
  // one stream of the flood: a job header naming 20,000 files, a table announced at 16 MiB of
  // which 2 MiB is sent, then nothing (the flood sent it all, then reset; a stream that
  // bursts 4 MiB ahead of its reader is dropped by libp2p itself, which is not what is tested here)
  const flood = async () => {
    const stream = await hostile.libp2p.dialProtocol(peerIdFromString(builderNode.peerId), compileJobProtocol(hostile.meshId))
    streams.push(stream)
    // the wire format by hand: length-prefixed JSON, then the table's chunks
    const lp = lpStream(stream, { maxDataLength: MiB })
    const json = (v: unknown) => lp.write(Buffer.from(JSON.stringify(v)))
    await json({ v: 3, ...header([]), files: 20_000 })
    await json({ blob: 16 * MiB })
    for (let i = 0; i < 2; i++) await lp.write(chunk)
  }
  const base = process.memoryUsage().arrayBuffers
  let peakHeld = 0
  let peakBuffers = 0
  const sampler = setInterval(() => {
    peakHeld = Math.max(peakHeld, server.heldBytes())
    peakBuffers = Math.max(peakBuffers, process.memoryUsage().arrayBuffers - base)
  }, 20)
  try {
    const sent = await Promise.allSettled(Array.from({ length: 64 }, flood))
    await waitFor('the two admitted jobs to hold their tables', () => (server.heldBytes() === 2 * 16 * MiB ? true : undefined), 20_000, 50)
    assert.equal(builder.running, 2, 'a builder of 2 cores admits 2 jobs')
    assert.ok(server.openStreams() <= 6, `streams being served: ${server.openStreams()} (at most 6 from one peer)`)
    console.log(`flood: ${sent.filter((s) => s.status === 'fulfilled').length} of 64 streams opened; peak held ${peakHeld / MiB} MiB, array buffers +${Math.round(peakBuffers / MiB)} MiB`)
  } finally {
    clearInterval(sampler)
  }
  assert.ok(peakHeld <= 2 * 16 * MiB, `held ${peakHeld} bytes`)
  // without the bounds every stream reserved its 16 MiB: over a GiB
  assert.ok(peakBuffers < 256 * MiB, `array buffers grew by ${Math.round(peakBuffers / MiB)} MiB`)

  // the builder gives up on the stalled jobs: slots and bytes come back without any reset
  await waitFor('the stalled jobs to be dropped', () => (server.heldBytes() === 0 && builder.running === 0 ? true : undefined), 30_000, 100)
  assert.ok(protocolErrors.some((m) => /nothing received for 10 s/.test(m)), protocolErrors.slice(0, 5).join('; '))
  for (const s of streams) s.abort(new Error('test over'))
  await waitFor('every stream to be done', () => (server.openStreams() === 0 ? true : undefined), 10_000, 100)
  assert.equal(server.heldBytes(), 0)
})

test('after the flood an honest job gets through: admitted, its inputs received and checked', { timeout: 60_000 }, async () => {
  const src = Buffer.from('int x(void) { return 1; }\n')
  const before = inputs.status().received_bytes
  const reply = await sendCompileJob(hostile.libp2p, hostile.meshId, builderNode.peerId, header([fileRef('/w/x.c', src)]), async () => [src], { signal: AbortSignal.timeout(30_000) })
  // it got as far as the toolchain, which this builder cannot fetch
  assert.equal(reply.kind, 'failed', JSON.stringify(reply))
  assert.match(reply.kind === 'failed' ? reply.reason : '', /toolchain unavailable/)
  assert.equal(inputs.status().received_bytes - before, src.length)
  assert.equal(server.heldBytes(), 0)
  // inputs of many MiB stream through gunzip into the files as they arrive
  const big = randomFillSync(Buffer.alloc(24 * MiB))
  const bigReply = await sendCompileJob(hostile.libp2p, hostile.meshId, builderNode.peerId, header([fileRef('/w/big.h', big), fileRef('/w/x.c', src)]), async (need) => need.map((i) => [big, src][i]!), { signal: AbortSignal.timeout(30_000) })
  assert.match(bigReply.kind === 'failed' ? bigReply.reason : JSON.stringify(bigReply), /toolchain unavailable/, protocolErrors.slice(-3).join('; '))
  assert.equal(inputs.status().received_bytes - before, src.length + big.length, 'x.c came from the cache')
  assert.equal(server.heldBytes(), 0)
})

test('inputs that reach the builder faster than it reads them wait in the memory it reserved for them: the job is not dropped', { timeout: 60_000 }, async () => {
  // libp2p drops a stream whose unread bytes pass its read buffer (4 MiB), and yamux grants
  // window as bytes arrive, not as they are read: a client on a fast link sends a job's inputs
  // faster than a busy builder reads them. Here the client writes all of them at once.
  const big = randomFillSync(Buffer.alloc(12 * MiB))
  const files = [fileRef('/w/burst.h', big)]
  const before = inputs.status().received_bytes
  const stream = await hostile.libp2p.dialProtocol(peerIdFromString(builderNode.peerId), compileJobProtocol(hostile.meshId))
  const lp = lpStream(stream, { maxDataLength: MiB })
  const frame = (v: unknown) => Buffer.from(JSON.stringify(v))
  const readJson = async () => JSON.parse(Buffer.from((await lp.read()).subarray()).toString('utf8')) as { type?: string; reason?: string }
  try {
    const table = encodeFileTable(files)
    await lp.writeV([frame({ v: 3, ...header(files), files: files.length }), frame({ blob: table.length }), table])
    assert.equal((await readJson()).type, 'accepted')
    const packed = gzipSync(big, { level: 1 })
    const chunks = Array.from({ length: Math.ceil(packed.length / MiB) }, (_, i) => packed.subarray(i * MiB, (i + 1) * MiB))
    await lp.writeV([frame({ blob: packed.length }), ...chunks])
    let reply = await readJson()
    while (reply.type === 'working') reply = await readJson()
    assert.equal(reply.type, 'failed', JSON.stringify(reply))
    assert.match(reply.reason ?? '', /toolchain unavailable/)
  } finally {
    stream.abort(new Error('test over'))
  }
  assert.equal(inputs.status().received_bytes - before, big.length)
  await waitFor('the job to be done', () => (server.heldBytes() === 0 ? true : undefined), 10_000, 50)
})

test('a builder that resets the job stream while the client sends its inputs: one clear error, which the client treats as a peer failure', { timeout: 60_000 }, async () => {
  // a builder that takes the job, reads the start of its inputs, then resets the stream (as
  // libp2p does to a stream whose unread bytes overflow, or a builder whose handler failed)
  await builderNode.libp2p.handle(compileJobProtocol('resets'), async (stream) => {
    const f = new Framed(stream)
    await f.readJson()
    await f.readBlob(MiB)
    await f.writeJson({ type: 'accepted', need: [0] })
    await f.readBlobSize(64 * MiB)
    stream.abort(new Error('builder gave up'))
  })
  const big = randomFillSync(Buffer.alloc(24 * MiB))
  const err = await sendCompileJob(hostile.libp2p, 'resets', builderNode.peerId, header([fileRef('/w/big.h', big)]), async () => [big], { signal: AbortSignal.timeout(30_000) })
    .then((reply) => assert.fail(`a reply from a reset stream: ${JSON.stringify(reply)}`), (e: unknown) => e)
  // an Error with a message (tryPeers logs err.message and tries the next peer), not the
  // stream's close event that lpStream rejects with while a write waits for room
  assert.ok(err instanceof Error, `rejected with ${String(err)}`)
  assert.match(err.message, /reset by the peer|has been reset/)
})

test('outputs that reach the client faster than it reads them wait unread: the result is not dropped', { timeout: 60_000 }, async () => {
  // the reply's direction of the test above: a builder on a fast link sends a big object (an
  // rlib is tens of MiB) while the client's event loop is busy; lpStream's default would drop
  // the stream once 4 MiB wait unread. Here the builder writes the whole reply at once.
  const obj = randomFillSync(Buffer.alloc(12 * MiB))
  await builderNode.libp2p.handle(compileJobProtocol('bursts'), async (stream) => {
    const f = new Framed(stream)
    await f.readJson()
    await f.readBlob(MiB)
    await f.writeJson({ type: 'accepted', need: [] })
    await f.readBlob(MiB)
    const lp = lpStream(stream, { maxDataLength: MiB })
    const frame = (v: unknown) => Buffer.from(JSON.stringify(v))
    const chunks = Array.from({ length: obj.length / MiB }, (_, i) => obj.subarray(i * MiB, (i + 1) * MiB))
    await lp.writeV([frame({ type: 'done', exitCode: 0 }), frame({ blob: 0 }), frame({ blob: 0 }), frame({ blob: obj.length }), ...chunks])
    await stream.close()
  })
  const reply = await sendCompileJob(hostile.libp2p, 'bursts', builderNode.peerId, header([]), async () => [], { signal: AbortSignal.timeout(30_000) })
  assert.equal(reply.kind, 'done', JSON.stringify(reply).slice(0, 200))
  assert.ok(reply.kind === 'done' && reply.obj !== null && reply.obj.equals(obj), 'the object arrives whole')
})

test('a cache entry that reaches the asker faster than it reads it waits unread: the hit is not dropped', { timeout: 60_000 }, async () => {
  const entry = randomFillSync(Buffer.alloc(12 * MiB))
  await builderNode.libp2p.handle(cacheExchangeProtocol('bursts'), async (stream) => {
    const lp = lpStream(stream, { maxDataLength: MiB })
    await lp.read()
    const frame = (v: unknown) => Buffer.from(JSON.stringify(v))
    const chunks = Array.from({ length: entry.length / MiB }, (_, i) => entry.subarray(i * MiB, (i + 1) * MiB))
    await lp.writeV([frame({ type: 'hit' }), frame({ blob: entry.length }), ...chunks])
    await stream.close()
  })
  const reply = await getEntry(hostile.libp2p, 'bursts', builderNode.peerId, 'a'.repeat(64), { signal: AbortSignal.timeout(30_000), limit: 64 * MiB })
  assert.equal(reply.kind, 'hit', JSON.stringify(reply).slice(0, 200))
  assert.ok(reply.kind === 'hit' && reply.blob.equals(entry), 'the entry arrives whole')
})

test('a job whose inputs exceed what one peer may make the builder hold is refused before they are sent', { timeout: 60_000 }, async () => {
  const tight = await serveCompileJobs(builderNode.libp2p, 'tight', builder, inputs, () => {}, { peerBytes: MiB })
  const big = Buffer.alloc(2 * MiB, 1)
  let loaded = false
  const reply = await sendCompileJob(hostile.libp2p, 'tight', builderNode.peerId, header([fileRef('/w/big.h', big)]), async () => { loaded = true; return [big] }, { signal: AbortSignal.timeout(30_000) })
  assert.equal(reply.kind, 'refused', JSON.stringify(reply))
  assert.match(reply.kind === 'refused' ? reply.reason : '', /inputs of 2097152 bytes are more than this builder takes from one peer/)
  assert.equal(loaded, false, 'the client was never asked for the bytes')
  assert.equal(tight.heldBytes(), 0)
  assert.equal(builder.running, 0)
})

/** A file of `bytes` random bytes; its sha256. */
function randomFile(path: string, bytes: number): string {
  const h = createHash('sha256')
  const fd = openSync(path, 'w')
  const buf = Buffer.alloc(MiB)
  for (let n = 0; n < bytes; n += buf.length) {
    randomFillSync(buf)
    h.update(buf)
    writeSync(fd, buf)
  }
  closeSync(fd)
  return h.digest('hex')
}

test('toolchain archives are streamed to disk: never whole in memory, never kept when too big or not the hash asked for', { timeout: 120_000 }, async () => {
  const served = join(dir, 'served.tar.gz')
  const hash = randomFile(served, 128 * MiB)
  const other = 'b'.repeat(64) // claimed by the holder, but it sends `served`
  await serveToolchains(builderNode.libp2p, builderNode.meshId, async (h) => (h === hash || h === other ? served : null), () => {})
  const recv = join(dir, 'recv')
  const base = process.memoryUsage().arrayBuffers
  let peak = 0
  const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().arrayBuffers - base) }, 10)
  try {
    const bytes = await fetchToolchain(hostile.libp2p, hostile.meshId, builderNode.peerId, hash, 1024 * MiB, `${recv}-1`, AbortSignal.timeout(60_000))
    assert.equal(bytes, 128 * MiB)
  } finally {
    clearInterval(sampler)
  }
  console.log(`128 MiB toolchain fetched; array buffers peaked at +${Math.round(peak / MiB)} MiB`)
  // both ends are in this process: the old code held the archive whole on each, 256 MiB
  assert.ok(peak < 96 * MiB, `array buffers grew by ${Math.round(peak / MiB)} MiB while fetching 128 MiB`)
  assert.ok(readFileSync(`${recv}-1`).equals(readFileSync(served)))

  await assert.rejects(fetchToolchain(hostile.libp2p, hostile.meshId, builderNode.peerId, other, 1024 * MiB, `${recv}-2`, AbortSignal.timeout(60_000)), /sha256/)
  assert.equal(existsSync(`${recv}-2`), false, 'an archive that is not what was asked for is not kept')
  await assert.rejects(fetchToolchain(hostile.libp2p, hostile.meshId, builderNode.peerId, hash, 64 * MiB, `${recv}-3`, AbortSignal.timeout(60_000)), /exceeds the limit/)
  assert.equal(existsSync(`${recv}-3`), false, 'an archive over the limit is not even started')
  assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('recv')), ['recv-1'])
})

test('a client that stores an archive slower than the link brings it (a loaded builder) is paced by its acks, not dropped', { timeout: 120_000 }, async () => {
  // the holder the test above registered, serving `served`
  const served = join(dir, 'served.tar.gz')
  const hash = createHash('sha256').update(readFileSync(served)).digest('hex')
  // a client with fetchToolchain's read buffer that stalls 3 s after the first chunk, as a
  // loaded disk or CPU makes it; it acks as the protocol says when the holder names a window
  const slowFetch = async (v: number): Promise<number> => {
    const stream = await hostile.libp2p.dialProtocol(peerIdFromString(builderNode.peerId), toolchainFetchProtocol(hostile.meshId))
    const f = new Framed(stream, { stallMs: 60_000, maxBufferSize: 16 * MiB })
    try {
      await f.writeJson({ v, hash })
      const head = await f.readJson<{ ok?: boolean; window?: number }>()
      assert.equal(head.ok, true)
      const size = await f.readBlobSize(1024 * MiB)
      let got = 0
      for await (const chunk of f.readBlobChunks(size)) {
        if (got === 0) await new Promise((r) => setTimeout(r, 3000))
        got += chunk.length
        if (head.window !== undefined && got - chunk.length < size - head.window) await f.writeJson({ ack: got })
      }
      return got
    } finally {
      await f.close()
    }
  }
  assert.equal(await slowFetch(2), 128 * MiB)
  // a version 1 client is still served unpaced: a slow one loses the stream, as every client did
  await assert.rejects(slowFetch(1), /overflow/i)
})
