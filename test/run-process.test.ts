// runProcess (src/util/run-process.ts): processes started through dist/bin/meshcc-spawn
// (native/spawn.c), so that the daemon itself never forks. Real processes throughout.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { runProcess } from '../src/util/run-process.js'

const env = { PATH: process.env.PATH! }
const HELPER = fileURLToPath(new URL('../dist/bin/meshcc-spawn', import.meta.url))
const stat = (pid: number) => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')

test('the helper is built (npm run build, with a C compiler)', () => {
  assert.ok(existsSync(HELPER), `${HELPER} is missing`)
})

test('a process is started by the helper, not forked from this process', async () => {
  let parent = -1
  const r = await runProcess('sleep', ['0.2'], { cwd: '/tmp', env, onSpawn: (pid) => { parent = Number(stat(pid)[1]) } })
  assert.equal(r.exitCode, 0)
  assert.notEqual(parent, process.pid)
  assert.match(readFileSync(`/proc/${parent}/cmdline`, 'utf8'), /meshcc-spawn/)
})

test('exit code, stdout and stderr, the working directory and exactly the given environment', async () => {
  const r = await runProcess('sh', ['-c', 'pwd; echo "$FOO"; env | wc -l; echo err >&2; exit 3'], { cwd: '/usr', env: { ...env, FOO: 'a b' } })
  assert.equal(r.exitCode, 3)
  assert.equal(r.signal, null)
  // sh adds PWD, SHLVL and _ of its own
  assert.deepEqual(r.stdout.toString().split('\n').slice(0, 2), ['/usr', 'a b'])
  assert.ok(Number(r.stdout.toString().split('\n')[2]) <= 5)
  assert.equal(r.stderr.toString(), 'err\n')
})

test('a process that cannot start, or cannot enter its directory, has no exit code', async () => {
  for (const r of [await runProcess('/nonexistent/cc', [], { cwd: '/tmp', env }), await runProcess('true', [], { cwd: '/nonexistent', env })]) {
    assert.equal(r.exitCode, undefined)
    assert.equal(r.stdout.length + r.stderr.length, 0)
  }
})

test('a killed process reports its signal; one past maxBuffer is killed', async () => {
  const killed = await runProcess('sh', ['-c', 'kill -9 $$'], { cwd: '/tmp', env })
  assert.deepEqual([killed.exitCode, killed.signal], [undefined, 'SIGKILL'])
  // a signal with an alias is named as node's spawn names it (a compiler that aborts: SIGABRT, not SIGIOT)
  const aborted = await runProcess('sh', ['-c', 'kill -ABRT $$'], { cwd: '/tmp', env })
  assert.deepEqual([aborted.exitCode, aborted.signal], [undefined, 'SIGABRT'])
  const big = await runProcess('sh', ['-c', 'exec head -c 50000000 /dev/zero'], { cwd: '/tmp', env, maxBuffer: 1_000_000 })
  assert.equal(big.exitCode, undefined)
  assert.ok(big.stdout.length <= 1_000_000)
})

test('streamed stdout arrives whole; streams not kept are not read', async () => {
  let n = 0
  const r = await runProcess('head', ['-c', '3000000', '/dev/urandom'], { cwd: '/tmp', env, stderr: false, onStdout: (b) => { n += b.length } })
  assert.deepEqual([r.exitCode, n, r.stdout.length], [0, 3_000_000, 0])
  const quiet = await runProcess('sh', ['-c', 'echo out; echo err >&2'], { cwd: '/tmp', env, stdout: false, stderr: false })
  assert.deepEqual([quiet.exitCode, quiet.stdout.length, quiet.stderr.length], [0, 0, 0])
})

test('ownGroup: the process leads a group of its own, which the caller can kill', async () => {
  let pid = 0
  let group = 0
  const r = await runProcess('sh', ['-c', 'sleep 30 & wait'], {
    cwd: '/tmp', env, ownGroup: true,
    onSpawn: (p) => { pid = p; group = Number(stat(p)[2]); setTimeout(() => process.kill(-p, 'SIGKILL'), 100) }
  })
  assert.equal(group, pid)
  assert.equal(r.signal, 'SIGKILL')
})

test('a callback that throws in onSpawn does not leave the run hanging', async () => {
  const r = await runProcess('echo', ['ok'], { cwd: '/tmp', env, onSpawn: () => { throw new Error('caller bug') } })
  assert.equal(r.stdout.toString(), 'ok\n')
})

test('many at once each get their own output', async () => {
  const rs = await Promise.all(Array.from({ length: 40 }, (_, i) => runProcess('sh', ['-c', `echo ${i}; echo e${i} >&2`], { cwd: '/tmp', env })))
  rs.forEach((r, i) => assert.deepEqual([r.exitCode, r.stdout.toString(), r.stderr.toString()], [0, `${i}\n`, `e${i}\n`]))
})

test('the helper keeps no process alive once its runs are done', () => {
  const script = `import { runProcess } from ${JSON.stringify(fileURLToPath(new URL('../src/util/run-process.ts', import.meta.url)))}
    const r = await runProcess('true', [], { cwd: '/tmp', env: { PATH: process.env.PATH } }); console.log(r.exitCode)`
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { timeout: 30_000, encoding: 'utf8' })
  assert.equal(out.trim(), '0')
})

test('a NUL byte in an argument or the environment fails that run only', async () => {
  for (const r of [await runProcess('echo', ['a\0b'], { cwd: '/tmp', env }), await runProcess('true', [], { cwd: '/tmp', env: { ...env, X: 'a\0b' } })]) {
    assert.equal(r.exitCode, undefined)
  }
  // and the helper still starts the next one (such a string used to end it)
  let parent = -1
  // alive long enough for its /proc entry to be read (a bare echo can be reaped before onSpawn runs)
  const r = await runProcess('sh', ['-c', 'echo ok; sleep 0.2'], { cwd: '/tmp', env, onSpawn: (pid) => { parent = Number(stat(pid)[1]) } })
  assert.equal(r.stdout.toString(), 'ok\n')
  assert.match(readFileSync(`/proc/${parent}/cmdline`, 'utf8'), /meshcc-spawn/)
})
