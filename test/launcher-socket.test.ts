// The daemon's unix socket against a broken or hostile local client: a frame over the request
// cap, big frames sent in small pieces from several connections at once, requests that never
// finish. The daemon must answer or drop each, hold a bounded number of bytes for them, and
// go on compiling. Real daemon, real socket.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { connect, type Socket } from 'node:net'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { FrameReader, MsgType, encodeFrame, type Frame } from '../src/daemon/launcher-protocol.js'
import { createInstance, runCommand, type Instance } from './helpers/meshcc.js'

let inst: Instance
let pid: number
before(async () => {
  inst = createInstance('', 'sock')
  const r = await inst.run(['--start-server'])
  assert.equal(r.code, 0, r.stderr)
  pid = inst.daemonPid()!
  assert.ok(pid > 0)
})
after(async () => { await inst.stop() })

interface Conn { sock: Socket; reply: Promise<Frame | null> }

/** A connection whose reply (or null when the daemon closes without one) can be awaited. */
function open(): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const sock = connect(inst.socket)
    const reader = new FrameReader()
    const reply = new Promise<Frame | null>((done) => {
      sock.on('data', (c) => { const f = reader.push(c); if (f.length) done(f[0]!) })
      sock.on('close', () => done(null))
      sock.on('error', () => {})
    })
    sock.once('connect', () => resolve({ sock, reply }))
    sock.once('error', reject)
  })
}

/** The reply, or a failure naming what was waited for after `ms`. */
async function within<T>(what: string, p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms) })
  try { return await Promise.race([p, late]) } finally { clearTimeout(timer) }
}

async function daemonStatus(): Promise<{ pid: number; pending_request_bytes: number; memory: { rss: number } }> {
  const c = await open()
  c.sock.write(encodeFrame(MsgType.ADMIN, ['status']))
  const f = await within('status reply', c.reply, 10_000)
  assert.equal(f?.type, MsgType.ADMIN_REPLY)
  return JSON.parse(f!.fields[0]!.toString('utf8')).daemon
}

const MiB = 1024 * 1024
const text = (f: Frame | null) => (f ? `${f.type.toString(16)} ${f.fields.map((x) => x.toString('utf8', 0, 200)).join(' | ')}` : 'closed without a reply')

/** An ADMIN ping frame padded with a junk field to `bytes` of body. */
function bigPing(bytes: number): Buffer {
  return encodeFrame(MsgType.ADMIN, ['ping', Buffer.alloc(bytes - 1 - 8 - 4, 0x61)])
}

test('a frame announced over the request cap is refused at once, before its body', async () => {
  const c = await open()
  const head = Buffer.alloc(4)
  head.writeUInt32BE(64 * MiB) // the old cap was 256 MiB: this was buffered in full
  c.sock.write(head)
  const f = await within('refusal', c.reply, 5000)
  assert.equal(f?.type, MsgType.ERROR, text(f))
  assert.match(f!.fields[0]!.toString(), /exceeds the limit of 16777216/)
})

test('big frames in 64 KiB pieces from several connections: bytes held stay within the budget, each is answered', { timeout: 120_000 }, async () => {
  const before = await daemonStatus()
  const frame = bigPing(15 * MiB)
  const conns = await Promise.all(Array.from({ length: 5 }, () => open()))
  // every connection announces its frame first: four fit the 64 MiB budget, the fifth does not
  for (const c of conns) { c.sock.write(frame.subarray(0, 4)); await sleep(50) }
  const refused = await within('refusal of the fifth', conns[4]!.reply, 5000)
  assert.equal(refused?.type, MsgType.ERROR, text(refused))
  assert.match(refused!.fields[0]!.toString(), /busy/)
  const mid = await daemonStatus()
  assert.equal(mid.pending_request_bytes, 4 * frame.length - 16, 'four frames reserved, at their announced size')
  // the rest in small pieces, interleaved
  for (let off = 4; off < frame.length; off += 64 * 1024) {
    for (const c of conns.slice(0, 4)) c.sock.write(frame.subarray(off, Math.min(frame.length, off + 64 * 1024)))
    if ((off / (64 * 1024)) % 16 === 0) await sleep(1)
  }
  for (const c of conns.slice(0, 4)) {
    const f = await within('pong', c.reply, 60_000)
    assert.equal(f?.type, MsgType.ADMIN_REPLY, text(f))
    assert.match(f!.fields[0]!.toString(), /^pong /)
  }
  const end = await daemonStatus()
  assert.equal(end.pid, pid)
  assert.equal(end.pending_request_bytes, 0)
  console.log(`daemon rss ${Math.round(before.memory.rss / MiB)} MiB before, ${Math.round(mid.memory.rss / MiB)} with four frames announced, ${Math.round(end.memory.rss / MiB)} after`)
})

test('a request left unfinished is dropped: at once when its client goes, after 30 s when it stalls', { timeout: 90_000 }, async () => {
  const gone = await open()
  gone.sock.write(bigPing(8 * MiB).subarray(0, 100_000))
  await sleep(200)
  assert.equal((await daemonStatus()).pending_request_bytes, 8 * MiB)
  gone.sock.destroy()
  await sleep(200)
  assert.equal((await daemonStatus()).pending_request_bytes, 0, 'a closed connection gives its bytes back')

  const stalled = await open()
  const t0 = Date.now()
  stalled.sock.write(bigPing(4 * MiB).subarray(0, 100_000))
  const f = await within('the deadline', stalled.reply, 45_000)
  assert.equal(f?.type, MsgType.ERROR, text(f))
  assert.match(f!.fields[0]!.toString(), /not complete within 30 s/)
  assert.ok(Date.now() - t0 >= 29_000)
  assert.equal((await daemonStatus()).pending_request_bytes, 0)
})

test('after all that the daemon still compiles', async () => {
  writeFileSync(join(inst.dir, 'x.c'), 'int x(void) { return 42; }\n')
  const r = await inst.run(['gcc', '-c', 'x.c', '-o', 'x.o'])
  assert.equal(r.code, 0, r.stderr)
  const plain = await runCommand('gcc', ['-c', 'x.c', '-o', 'plain.o'], { cwd: inst.dir })
  assert.equal(plain.code, 0)
  assert.ok(readFileSync(join(inst.dir, 'x.o')).equals(readFileSync(join(inst.dir, 'plain.o'))))
  assert.equal(inst.daemonPid(), pid, 'the same daemon throughout')
  assert.equal((await inst.stats()).fallbacks, 0)
})
