// The daemon's unix socket fuzzed: random bytes, truncated frames, frames announced larger than
// the request cap, frames with random fields (types, admin commands, compile requests with random
// arguments), frames sent a few bytes at a time, and requests left unfinished until the end.
// A real daemon; the fuzzer speaks src/daemon/launcher-protocol.ts's framing itself.
import { connect, type Socket } from 'node:net'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInstance } from '../../test/helpers/meshcc.js'
import { FrameReader, MAX_REQUEST_BYTES, MsgType, PROTOCOL_VERSION, encodeFrame, type Frame } from '../../src/daemon/launcher-protocol.js'
import { CFLAGS, daemonCounters, daemonStatus, fmtMiB, inParallel, plainObjects, sleep, writeUnits, type Rand, type Row, type RowGroup } from './chaos-common.js'

type Kind = 'random' | 'truncated' | 'oversized' | 'fields' | 'slow'

/** Tokens of fuzzed compile requests: none names a path outside the scratch directory. */
const TOKENS = ['-c', '-o', 'x.o', 'u0.c', 'src/u0.c', '-O2', '-g', '-E', '-S', '-M', '-MD', '-MF', 'x.d', '-I', 'include', '-D', 'X=1', '-x', 'c', '-', '@rsp', '-fplugin=x', '-Wall', '--version', '-v', '', '\u00e9', 'a'.repeat(300)]
/** Admin commands a fuzzed frame may carry: never one that changes the daemon (shutdown, clear, zero, reload). */
const ADMIN = ['ping', 'status', 'stats', 'nope', '', 'shutdownx', 'PING']

/** A frame with random fields of a random type (compile and admin requests most often). */
function randomFieldsFrame(rand: Rand, cwd: string): Buffer {
  const type = rand.pick([MsgType.COMPILE, MsgType.COMPILE, MsgType.ADMIN, MsgType.ADMIN, rand.int(256)])
  if (type === MsgType.ADMIN) return encodeFrame(type, [rand.pick(ADMIN), rand.bytes(rand.int(16))])
  if (type === MsgType.COMPILE) {
    const args = Array.from({ length: rand.int(8) }, () => rand.pick(TOKENS))
    const argc = rand.chance(0.8) ? String(args.length) : rand.pick(['-1', '999999', 'x', '', String(args.length + 3)])
    const env = Array.from({ length: rand.int(4) }, () => rand.pick(['PATH=/usr/bin:/bin', 'LANG=C', 'MESHCC_CACHE_BUSTER=fuzz', 'X', '=', 'A=b']))
    const version = rand.chance(0.9) ? PROTOCOL_VERSION : rand.pick(['2', '', '0'])
    const compiler = rand.pick(['/usr/bin/gcc', 'gcc', '/nonexistent/cc', '', 'x'.repeat(5000)])
    return encodeFrame(type, [version, rand.chance(0.95) ? cwd : rand.pick(['', 'relative', '/nonexistent']), compiler, argc, ...args, ...env].slice(0, rand.chance(0.1) ? rand.int(4) : undefined))
  }
  return encodeFrame(type, Array.from({ length: rand.int(5) }, () => rand.bytes(rand.int(64))))
}

interface Outcome { reply: Frame | null; ms: number }

/** Sends `bytes` (in `pieces` spread over `spreadMs`), then waits for a reply or the daemon's close, at most `waitMs`. */
function exchange(socket: string, bytes: Buffer, opts: { pieces?: number; spreadMs?: number; waitMs: number; closeAfterSend?: boolean }): Promise<Outcome> {
  return new Promise((resolve) => {
    const t0 = Date.now()
    const sock: Socket = connect(socket)
    const reader = new FrameReader()
    let done = false
    const finish = (reply: Frame | null) => {
      if (done) return
      done = true
      clearTimeout(timer)
      sock.destroy()
      resolve({ reply, ms: Date.now() - t0 })
    }
    const timer = setTimeout(() => finish(null), opts.waitMs)
    sock.on('data', (c) => { try { const f = reader.push(c); if (f.length > 0) finish(f[0]!) } catch { finish(null) } })
    sock.on('close', () => finish(null))
    sock.on('error', () => finish(null))
    sock.once('connect', async () => {
      const pieces = Math.max(1, opts.pieces ?? 1)
      const step = Math.ceil(bytes.length / pieces)
      for (let off = 0; off < bytes.length && !done; off += step) {
        sock.write(bytes.subarray(off, off + step))
        if (opts.spreadMs) await sleep(opts.spreadMs / pieces)
      }
      if (opts.closeAfterSend) finish(null)
    })
  })
}

const launcherFuzz: Row = {
  id: 'launcher-fuzz',
  title: 'launcher protocol: random, truncated, oversized and slow frames',
  mustShow: 'daemon alive, compiles correctly after, RSS back within 20 % of before',
  trials: { full: 10_000, quick: 1000 },
  unit: 'frames',
  async run(env, rec) {
    const inst = createInstance('', 'chaos-launcher')
    env.cleanup.defer('stop the daemon', () => inst.stop())
    const project = join(inst.dir, 'project')
    const units = writeUnits(project, 2, 'launcher')
    const plain = await plainObjects(project, units)
    mkdirSync(join(project, 'obj'), { recursive: true })
    const compileOk = async (tag: string): Promise<string | null> => {
      const r = await inst.run(['gcc', ...CFLAGS.split(' '), '-Iinclude', '-c', `src/${units[0]}.c`, '-o', `obj/${tag}.o`], { cwd: project })
      if (r.code !== 0) return `compile exited ${r.code}: ${r.stderr.trim()}`
      return readFileSync(join(project, 'obj', `${tag}.o`)).equals(plain.get(units[0]!)!) ? null : 'the object differs from plain gcc\'s'
    }
    const first = await compileOk('before')
    if (first) throw new Error(`before the fuzz: ${first}`)
    const before = await daemonStatus(inst)
    const countersBefore = await daemonCounters(inst)
    writeFileSync(join(project, 'x.o'), '')

    // requests left unfinished for the whole run: they hold their reserved bytes until they go
    const stalled: Socket[] = []
    for (let i = 0; i < 16; i++) {
      const s = connect(inst.socket)
      s.on('error', () => {})
      s.write(encodeFrame(MsgType.ADMIN, ['ping', Buffer.alloc(256 * 1024)]).subarray(0, 1000))
      stalled.push(s)
    }
    env.cleanup.defer('close the stalled requests', () => { for (const s of stalled) s.destroy() })

    const kinds: Record<Kind, number> = { random: 0, truncated: 0, oversized: 0, fields: 0, slow: 0 }
    let answered = 0
    let slowest = 0
    let rssPeak = before.daemon.memory.rss
    const rand = env.rand
    await inParallel(Array.from({ length: env.trials }, (_, i) => i), 16, async (i) => {
      const r = rand.derive(`frame ${i}`)
      const kind: Kind = r.chance(0.005) ? 'slow' : r.pick(['random', 'truncated', 'oversized', 'fields', 'fields'] as const)
      kinds[kind]++
      await rec.trial(`frame ${i} (${kind})`, async () => {
        let out: Outcome
        switch (kind) {
          case 'random': {
            out = await exchange(inst.socket, r.bytes(r.int(4096)), { waitMs: 2000, closeAfterSend: r.chance(0.5) })
            break
          }
          case 'truncated': {
            const whole = randomFieldsFrame(r, project)
            out = await exchange(inst.socket, whole.subarray(0, r.int(whole.length)), { waitMs: 1000, closeAfterSend: true })
            break
          }
          case 'oversized': {
            const head = Buffer.alloc(4)
            const big = r.chance(0.5)
            head.writeUInt32BE(big ? MAX_REQUEST_BYTES + 1 + r.int(0xffffffff - MAX_REQUEST_BYTES - 1) : r.range(1024 * 1024, MAX_REQUEST_BYTES))
            // a frame over the cap is refused at once; one under it is sent in part, then dropped
            out = await exchange(inst.socket, Buffer.concat([head, r.bytes(r.int(64 * 1024))]), { waitMs: big ? 10_000 : 200, closeAfterSend: !big })
            if (big && out.reply?.type !== MsgType.ERROR) return `no refusal of a frame over the cap (${out.reply ? `reply type ${out.reply.type}` : 'no reply'} after ${out.ms} ms)`
            break
          }
          case 'fields': {
            out = await exchange(inst.socket, randomFieldsFrame(r, project), { waitMs: 60_000 })
            if (out.reply === null) return `a complete frame got no reply within ${out.ms} ms`
            break
          }
          case 'slow': {
            // a valid request in 20 pieces over 1-3 s, as a loaded launcher might send it
            out = await exchange(inst.socket, encodeFrame(MsgType.ADMIN, ['ping', '']), { pieces: 20, spreadMs: r.range(1000, 3000), waitMs: 10_000 })
            if (!out.reply?.fields[0]?.toString().startsWith('pong')) return `a slow ping got ${out.reply ? `reply type ${out.reply.type.toString(16)}` : 'no reply'}`
            break
          }
        }
        if (out.reply) answered++
        slowest = Math.max(slowest, out.ms)
        return null
      })
      if (i % 500 === 499) {
        const s = await daemonStatus(inst).catch(() => null)
        if (s === null || s.daemon.pid !== before.daemon.pid) rec.fail(`after frame ${i}`, 'the daemon is gone')
        else rssPeak = Math.max(rssPeak, s.daemon.memory.rss)
      }
    })
    for (const s of stalled) s.destroy()
    await sleep(1000)
    const after = await daemonStatus(inst)
    const countersAfter = await daemonCounters(inst)
    if (after.daemon.pid !== before.daemon.pid) rec.fail('after the fuzz', `the daemon was replaced (pid ${before.daemon.pid} → ${after.daemon.pid})`)
    if (after.daemon.pending_request_bytes !== 0) rec.fail('after the fuzz', `${after.daemon.pending_request_bytes} request bytes still held`)
    const compiled = await compileOk('after')
    if (compiled) rec.fail('the compile after the fuzz', compiled)
    const grew = after.daemon.memory.rss / before.daemon.memory.rss - 1
    if (grew > 0.2) rec.fail('memory', `RSS ${fmtMiB(before.daemon.memory.rss)} before, ${fmtMiB(after.daemon.memory.rss)} after (+${(grew * 100).toFixed(0)} %)`)
    rec.figure(`daemon alive (the same pid throughout), the compile after it byte-identical to plain gcc's; RSS ${fmtMiB(before.daemon.memory.rss)} before, peak ${fmtMiB(rssPeak)}, ${fmtMiB(after.daemon.memory.rss)} after (${grew >= 0 ? '+' : ''}${(grew * 100).toFixed(0)} %)`)
    rec.note(`${env.trials} connections, 16 at a time, each one frame: ${Object.entries(kinds).map(([k, n]) => `${k} ${n}`).join(', ')}`,
      '(random: up to 4 KiB of random bytes; truncated: a frame with random fields cut at a random byte; oversized: a length over the 16 MiB cap, which must be refused at once, or one under it sent in part and dropped;',
      'fields: a complete frame of a random type, mostly compile requests with random arguments from a fixed list (no path outside the scratch directory) and admin requests that change nothing; slow: a ping in 20 pieces over 1-3 s, which must be answered),',
      `beside 16 requests left unfinished for the whole run. ${answered} frames were answered, the slowest exchange took ${slowest} ms; the daemon compiled ${countersAfter.compile_requests! - countersBefore.compile_requests!} of the fuzzed compile requests.`,
      'RSS is the daemon\'s own (its status), after a first compile and 1 s after the last frame.')
  }
}

export const launcherGroup: RowGroup = { rows: [launcherFuzz] }
