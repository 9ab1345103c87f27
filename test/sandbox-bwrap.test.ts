// bubblewrap sandbox: a tiny toolchain root built from host binaries (dash, coreutils, bash for
// /dev/tcp), jobs run in it and must see only that root, their job directory and a fresh TMPDIR.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { checkBwrap, runSandboxed, SandboxJobError, SCRATCH_DIR, type SandboxJob } from '../src/sandbox/bwrap.js'

const TOOLS = ['/bin/sh', '/bin/cat', '/bin/ls', '/usr/bin/env', '/bin/sleep', '/usr/bin/head', '/bin/mkdir', '/bin/bash']

let base: string
let root: string
let jobN = 0

/** Copies `file` into root at the same absolute path (parent directories resolved as on the
 *  host, symlinks recreated and followed). */
function copyIn(file: string): void {
  const dir = realpathSync(dirname(file))
  const src = join(dir, basename(file))
  const dest = join(root, src)
  if (existsSync(dest) || isLink(dest)) return
  mkdirSync(join(root, dir), { recursive: true })
  if (isLink(src)) {
    const target = readlinkSync(src)
    symlinkSync(target, dest)
    copyIn(target.startsWith('/') ? target : join(dir, target))
  } else {
    copyFileSync(src, dest)
  }
}
function isLink(p: string): boolean {
  try { return lstatSync(p).isSymbolicLink() } catch { return false }
}

function buildRoot(): void {
  // Merged-/usr hosts: keep /bin -> usr/bin etc. so absolute paths work as on the host.
  for (const top of ['bin', 'sbin', 'lib', 'lib64']) {
    if (isLink(`/${top}`)) symlinkSync(readlinkSync(`/${top}`), join(root, top))
  }
  for (const tool of TOOLS) {
    copyIn(tool)
    // shared libraries and the dynamic loader, by the paths ldd prints
    for (const m of execFileSync('ldd', [tool], { encoding: 'utf8' }).matchAll(/(\/\S+)\s+\(0x/g)) copyIn(m[1]!)
  }
}

function newJob(over: Partial<SandboxJob> = {}): SandboxJob {
  const jobDir = join(base, `job${++jobN}`)
  mkdirSync(jobDir)
  return {
    root, jobDir, cwd: '/home/alice/src/proj', argv: ['/bin/sh', '-c', 'true'], env: { PATH: '/usr/bin:/bin' },
    timeoutMs: 5000, cpuSeconds: 5, maxOutputBytes: 64 * 1024, ...over
  }
}
const sh = (script: string, over: Partial<SandboxJob> = {}) => newJob({ argv: ['/bin/sh', '-c', script], ...over })
const text = (b: Buffer) => b.toString('utf8')

before(() => {
  base = mkdtempSync(join(tmpdir(), 'meshcc-sandbox-'))
  root = join(base, 'root')
  mkdirSync(root)
  buildRoot()
})
after(() => { rmSync(base, { recursive: true, force: true }) })

test('checkBwrap finds a working bwrap', async () => {
  const r = await checkBwrap()
  assert.ok(r.ok, r.ok ? '' : r.reason)
  assert.match(r.version, /^\d+\.\d+/)
  assert.ok(r.path.endsWith('/bwrap'))
  assert.strictEqual(await checkBwrap().then((x) => x.ok && x.path), r.path)
})

test('job runs in cwd, writes into jobDir, stdout/stderr/exit code come back', async () => {
  const job = sh('pwd; echo oops >&2; echo result > out.txt; mkdir -p sub && echo x > sub/y; exit 3')
  const r = await runSandboxed(job)
  assert.equal(r.sandboxError, null)
  assert.equal(r.exitCode, 3)
  assert.equal(r.signal, null)
  assert.equal(text(r.stdout), '/home/alice/src/proj\n')
  assert.equal(text(r.stderr), 'oops\n')
  assert.equal(readFileSync(join(job.jobDir, 'out.txt'), 'utf8'), 'result\n')
  assert.equal(readFileSync(join(job.jobDir, 'sub/y'), 'utf8'), 'x\n')
  assert.equal(r.timedOut, false)
  assert.equal(r.outputTooLarge, false)
})

test('cwd below a directory the root has keeps its siblings visible', async () => {
  // /usr exists in the root: /usr/src/proj must be created without hiding /usr/bin.
  const r = await runSandboxed(sh('pwd; ls /usr/bin/cat && echo hi > f && cat f', { cwd: '/usr/src/proj' }))
  assert.equal(r.sandboxError, null, text(r.stderr))
  assert.equal(r.exitCode, 0, text(r.stderr))
  assert.equal(text(r.stdout), '/usr/src/proj\n/usr/bin/cat\nhi\n')
  // and under /tmp (the client's paths are reproduced there too; scratch space is TMPDIR)
  const t = await runSandboxed(sh('pwd; echo a > f; ls', { cwd: '/tmp/build' }))
  assert.equal(t.exitCode, 0, text(t.stderr))
  assert.equal(text(t.stdout), '/tmp/build\nf\n')
})

test('job sees no host files and cannot write the root, /proc/sys or outside its dir', async () => {
  const secret = join(tmpdir(), `meshcc-secret-${process.pid}`)
  writeFileSync(secret, 'top secret\n')
  try {
    const script = [
      `cat ${secret} && echo LEAK-tmp`,
      'cat /etc/hostname && echo LEAK-etc',
      `ls ${base} && echo LEAK-base`,
      'echo x > /usr/bin/evil && echo WROTE-root',
      'echo x > /evil && echo WROTE-slash',
      // uts is unshared too, so even a failure here would not touch the host's domainname
      'echo x > /proc/sys/kernel/domainname && echo WROTE-proc',
      'echo x > "$TMPDIR/scratch" && echo tmp-ok',
      'exit 0'
    ].join('; ')
    const r = await runSandboxed(sh(script))
    assert.equal(r.sandboxError, null)
    const out = text(r.stdout)
    assert.doesNotMatch(out, /LEAK|WROTE|secret/, out + text(r.stderr))
    assert.match(out, /tmp-ok/)
    assert.ok(!existsSync(join(root, 'usr/bin/evil')))
  } finally {
    rmSync(secret, { force: true })
  }
})

test('no network: a connection to 127.0.0.1 in the host namespace fails', async () => {
  let connections = 0
  const server: Server = createServer((s) => { connections++; s.destroy() })
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res))
  const port = (server.address() as { port: number }).port
  try {
    const r = await runSandboxed(newJob({
      argv: ['/bin/bash', '-c', `exec 3<>/dev/tcp/127.0.0.1/${port} && echo CONNECTED`]
    }))
    assert.equal(r.sandboxError, null)
    assert.notEqual(r.exitCode, 0)
    assert.doesNotMatch(text(r.stdout), /CONNECTED/)
    await new Promise((res) => setTimeout(res, 100))
    assert.equal(connections, 0)
  } finally {
    server.close()
  }
})

test('environment is exactly job.env (plus the PWD bwrap always sets and the scratch TMPDIR)', async () => {
  const job = newJob({ argv: ['/usr/bin/env'], env: { A: '1', LANG: 'C', PATH: '/bin' } })
  process.env.MESHCC_SANDBOX_LEAK = 'host'
  try {
    const r = await runSandboxed(job)
    assert.equal(r.exitCode, 0)
    assert.deepEqual(text(r.stdout).trim().split('\n').sort(), ['A=1', 'LANG=C', 'PATH=/bin', `PWD=${job.cwd}`, `TMPDIR=${SCRATCH_DIR}`])
  } finally {
    delete process.env.MESHCC_SANDBOX_LEAK
  }
})

test('wall-clock timeout kills the whole sandbox', async () => {
  const marker = '41.123'
  const t0 = Date.now()
  const r = await runSandboxed(sh(`sleep ${marker} & sleep ${marker}`, { timeoutMs: 800 }))
  assert.ok(Date.now() - t0 < 4000)
  assert.equal(r.timedOut, true)
  assert.equal(r.exitCode, null)
  assert.equal(r.signal, 'SIGKILL')
  assert.equal(r.sandboxError, null)
  // both sleeps (one in the background) are gone
  const alive = () => readdirSync('/proc').filter((p) => /^\d+$/.test(p)).some((p) => {
    try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(marker) } catch { return false }
  })
  for (let i = 0; i < 20 && alive(); i++) await new Promise((res) => setTimeout(res, 50))
  assert.equal(alive(), false)
})

test('CPU limit stops a busy loop', async () => {
  // generous wall clock: on a loaded machine one CPU second took 3-4 s of real time
  const r = await runSandboxed(sh('while :; do :; done', { cpuSeconds: 1, timeoutMs: 10_000 }))
  assert.equal(r.timedOut, false)
  assert.equal(r.sandboxError, null)
  assert.equal(r.signal, 'SIGXCPU')
  assert.equal(r.exitCode, null)
})

test('the job\'s CPU time counts among the daemon\'s reaped children, not PID 1\'s', async () => {
  // bwrap leaves its pid namespace's init behind when it exits; without dist/bin/meshcc-reap
  // (npm run build) that init, and the compile it ran, is reaped by PID 1 and its CPU is lost
  // to the daemon's accounting (bench:dist once reported it as 60 s of "other processes")
  const reaped = () => {
    const f = readFileSync('/proc/self/stat', 'utf8')
    const v = f.slice(f.lastIndexOf(')') + 2).split(' ')
    return (Number(v[13]) + Number(v[14])) / 100 // cutime + cstime, clock ticks (USER_HZ = 100)
  }
  const before = reaped()
  // about 0.4 s of CPU in the shell itself (a builtin loop: no further processes)
  const r = await runSandboxed(sh('i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done', { timeoutMs: 60_000, cpuSeconds: 30 }))
  assert.equal(r.exitCode, 0, r.sandboxError ?? '')
  const got = reaped() - before
  assert.ok(got >= 0.15, `the job's CPU reached this process's reaped children: ${got.toFixed(2)} s`)
})

test('output cap: too much stdout', async () => {
  const r = await runSandboxed(sh('head -c 1000000 /dev/zero; sleep 3', { maxOutputBytes: 10_000 }))
  assert.equal(r.outputTooLarge, true)
  assert.equal(r.stdout.length, 10_000)
  assert.equal(r.sandboxError, null)
  assert.equal(r.timedOut, false)
})

test('output cap: too large files left in jobDir, and a file beyond RLIMIT_FSIZE', async () => {
  const r = await runSandboxed(sh('head -c 50000 /dev/zero > big.o', { maxOutputBytes: 10_000 }))
  assert.equal(r.exitCode, 0, JSON.stringify({ ...r, stdout: text(r.stdout), stderr: text(r.stderr) }))
  assert.equal(r.outputTooLarge, true)
  const small = await runSandboxed(sh('head -c 5000 /dev/zero > ok.o', { maxOutputBytes: 10_000 }))
  assert.equal(small.outputTooLarge, false)
  // tmpBytes doubles as the per-file limit: the write is stopped, not merely reported afterwards
  const job = sh('head -c 5000000 /dev/zero > huge.o', { maxOutputBytes: 10_000, tmpBytes: 1_000_000 })
  const h = await runSandboxed(job)
  assert.equal(h.outputTooLarge, true)
  assert.equal(h.signal, 'SIGXFSZ')
  assert.ok(statSync(join(job.jobDir, 'huge.o')).size <= 1_000_000)
})

test('bwrap setup failures are sandboxError, not a job exit code', async () => {
  const missing = await runSandboxed(newJob({ root: join(base, 'no-such-root') }))
  assert.equal(missing.exitCode, null)
  assert.match(missing.sandboxError ?? '', /no-such-root/)

  const noJobDir = sh('true')
  rmSync(noJobDir.jobDir, { recursive: true })
  const r = await runSandboxed(noJobDir)
  assert.equal(r.exitCode, null)
  assert.match(r.sandboxError ?? '', /^bwrap: /)

  const noExe = await runSandboxed(newJob({ argv: ['/usr/bin/no-such-compiler'] }))
  assert.equal(noExe.exitCode, null)
  assert.match(noExe.sandboxError ?? '', /no-such-compiler/)

  // a job that exits 1 and prints "bwrap:" itself is still the job's own failure
  const fake = await runSandboxed(sh('echo "bwrap: Can\'t mount" >&2; exit 1'))
  assert.equal(fake.sandboxError, null)
  assert.equal(fake.exitCode, 1)
})

test('invalid jobs are rejected', async () => {
  await assert.rejects(runSandboxed(newJob({ cwd: 'relative/dir' })), SandboxJobError)
  await assert.rejects(runSandboxed(newJob({ cwd: '/proc/self' })), SandboxJobError)
  await assert.rejects(runSandboxed(newJob({ argv: ['gcc'] })), SandboxJobError)
  await assert.rejects(runSandboxed(newJob({ env: { 'A=B': 'x' } })), SandboxJobError)
})
