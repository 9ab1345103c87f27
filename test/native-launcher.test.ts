// The native launcher (dist/bin/meshcc, built from native/launcher.c): its fast path speaks
// the launcher protocol itself and hands everything else to the Node CLI. Against the real
// daemon, and against a scripted peer on a real unix socket where the test needs a daemon
// that misbehaves in one exact way (replies garbage, hangs up) — a real daemon cannot be
// made to do that on cue.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { join } from 'node:path'
import { FrameReader, MsgType, decodeCompileRequest, encodeFrame, type CompileRequest } from '../src/daemon/launcher-protocol.js'
import { createInstance, runCommand, MESHCC, type Instance } from './helpers/meshcc.js'

const instances: Instance[] = []
const servers: Server[] = []
after(async () => {
  for (const s of servers) s.close()
  for (const i of instances) await i.stop()
})

function fresh(name: string): Instance {
  const i = createInstance('', name)
  instances.push(i)
  writeFileSync(join(i.dir, 'w.c'), '#warning from w.c\nint w(int x) { return x * 3; }\n')
  return i
}

/** A scripted daemon on the instance's socket: records each request, answers with `reply`. */
async function scriptedDaemon(inst: Instance, reply: (req: CompileRequest) => Buffer | null): Promise<CompileRequest[]> {
  const { mkdirSync } = await import('node:fs')
  mkdirSync(join(inst.socket, '..'), { recursive: true, mode: 0o700 })
  const seen: CompileRequest[] = []
  const server = createServer((sock) => {
    const reader = new FrameReader()
    sock.on('error', () => {})
    sock.on('data', (chunk) => {
      const frames = reader.push(chunk)
      if (frames.length === 0) return
      const req = decodeCompileRequest(frames[0])
      seen.push(req)
      const out = reply(req)
      if (out) sock.end(out)
      else sock.destroy()
    })
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(inst.socket, resolve))
  return seen
}

test('the built meshcc is the native launcher (a C compiler is present here)', () => {
  const head = readFileSync(MESHCC).subarray(0, 4)
  assert.deepEqual([...head], [0x7f, 0x45, 0x4c, 0x46], 'dist/bin/meshcc is an ELF executable')
})

test('a cache hit through the native launcher starts no Node.js process and replays warnings', async () => {
  const inst = fresh('nat-hit')
  const first = await inst.run(['gcc', '-c', 'w.c', '-o', 'w1.o']) // starts the daemon via the Node CLI
  assert.equal(first.code, 0, first.stderr)
  // any Node.js start fails with this: the hit must not need one
  const noNode = { NODE_OPTIONS: '--import=/nonexistent/meshcc-test-no-node.mjs' }
  const hit = await inst.run(['gcc', '-c', 'w.c', '-o', 'w2.o'], { env: noNode })
  assert.equal(hit.code, 0, hit.stderr)
  assert.match(hit.stderr, /warning: #warning from w\.c/)
  assert.ok(readFileSync(join(inst.dir, 'w1.o')).equals(readFileSync(join(inst.dir, 'w2.o'))))
  const bad = await inst.run(['gcc', '-c', 'missing.c', '-o', 'm.o'], { env: noNode })
  const plain = await runCommand('gcc', ['-c', 'missing.c', '-o', 'm.o'], { cwd: inst.dir })
  assert.equal(bad.code, plain.code, 'a passthrough execs the compiler: its exit code')
  assert.equal(bad.stderr, plain.stderr)
  const s = await inst.stats()
  assert.equal(s.cache_hits, 1)
  assert.equal(s.compile_requests, 3)
})

test('the daemon a compile starts runs with its memory settings, and reports its memory in status', async () => {
  const inst = fresh('nat-mem')
  const first = await inst.run(['gcc', '-c', 'w.c', '-o', 'w1.o'])
  assert.equal(first.code, 0, first.stderr)
  const pid = inst.daemonPid()
  assert.ok(pid, 'a daemon is running')
  const environ = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0')
  assert.ok(environ.includes('MALLOC_ARENA_MAX=2'), 'two malloc arenas')
  assert.ok(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes('--max-semi-space-size=4'), 'the small young generation')
  const st = await inst.run(['status', '--json'])
  assert.equal(st.code, 0, st.stderr)
  const mem = (JSON.parse(st.stdout) as { daemon: { memory: { rss: number; heap_used: number; heap_total: number; external: number } } }).daemon.memory
  assert.ok(mem.heap_used > 0 && mem.heap_used <= mem.heap_total && mem.heap_total < mem.rss, JSON.stringify(mem))
})

test('the request carries cwd, the resolved compiler, the arguments and the environment', async () => {
  const inst = fresh('nat-req')
  const seen = await scriptedDaemon(inst, () => encodeFrame(MsgType.RESULT, ['3', 'out-bytes\n', 'err-bytes\n']))
  const r = await inst.run(['gcc', '-c', 'w.c', '-o', 'w.o', '-DX="a b"'], { env: { MESHCC_TEST_MARK: 'x=y' } })
  assert.equal(r.code, 3, 'exit code from the RESULT frame')
  assert.equal(r.stdout, 'out-bytes\n')
  assert.equal(r.stderr, 'err-bytes\n')
  assert.equal(seen.length, 1)
  const gcc = (await runCommand('sh', ['-c', 'command -v gcc'])).stdout.trim()
  assert.equal(seen[0].cwd, inst.dir)
  assert.equal(seen[0].compiler, gcc)
  assert.deepEqual(seen[0].args, ['-c', 'w.c', '-o', 'w.o', '-DX="a b"'])
  assert.equal(seen[0].env.MESHCC_TEST_MARK, 'x=y')
})

test('PASSTHROUGH and FALLBACK replies make the launcher run the compiler itself', async () => {
  const inst = fresh('nat-pass')
  let type: number = MsgType.PASSTHROUGH
  await scriptedDaemon(inst, () => encodeFrame(type, ['not cacheable']))
  for (const t of [MsgType.PASSTHROUGH, MsgType.FALLBACK]) {
    type = t
    const out = `p${t}.o`
    const r = await inst.run(['gcc', '-c', 'w.c', '-o', out])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stderr, /#warning from w\.c/, 'the compiler itself wrote to stderr')
    assert.ok(existsSync(join(inst.dir, out)))
  }
})

test('a daemon that hangs up or answers garbage: a plain compile, recorded as a fallback with its reason', async () => {
  for (const [name, reply, reason] of [
    ['hangup', () => null, 'daemon connection lost'],
    ['garbage', () => Buffer.from([0, 0, 0, 3, 0x7e, 1, 2]), 'unexpected daemon reply']
  ] as const) {
    const inst = fresh(`nat-${name}`)
    await scriptedDaemon(inst, reply)
    const r = await inst.run(['gcc', '-c', 'w.c', '-o', 'w.o'])
    assert.equal(r.code, 0, r.stderr)
    assert.ok(existsSync(join(inst.dir, 'w.o')), `${name}: the object was compiled`)
    const journal = readFileSync(join(inst.cacheDir, 'fallbacks.journal'), 'utf8')
    assert.match(journal, new RegExp(reason), `${name}: reason journalled`)
  }
})

test('MESHCC_DISABLE=1 compiles without asking the daemon', async () => {
  const inst = fresh('nat-off')
  const seen = await scriptedDaemon(inst, () => encodeFrame(MsgType.RESULT, ['0', '', '']))
  const r = await inst.run(['gcc', '-c', 'w.c', '-o', 'w.o'], { env: { MESHCC_DISABLE: '1' } })
  assert.equal(r.code, 0, r.stderr)
  assert.ok(existsSync(join(inst.dir, 'w.o')))
  assert.equal(seen.length, 0)
})

test('a config the native launcher does not parse itself is left to the Node CLI, which still finds the daemon', async () => {
  const inst = fresh('nat-conf')
  // an inline table: valid TOML, outside the native parser's one simple form
  const text = readFileSync(inst.conf, 'utf8').replace(/\[daemon\]\nsocket = "([^"]+)"\nidle_timeout = 0\n/, "daemon = { socket = '$1', idle_timeout = 0 }\n")
  assert.notEqual(text, readFileSync(inst.conf, 'utf8'))
  writeFileSync(inst.conf, text)
  const seen = await scriptedDaemon(inst, () => encodeFrame(MsgType.RESULT, ['0', '', '']))
  const r = await inst.run(['gcc', '-c', 'w.c', '-o', 'w.o'])
  assert.equal(r.code, 0, r.stderr)
  assert.equal(seen.length, 1, 'the request reached the socket from the config')
})
