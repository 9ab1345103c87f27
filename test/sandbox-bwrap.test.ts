// bubblewrap sandbox: a tiny toolchain root built from host binaries (dash, coreutils, bash for
// /dev/tcp), jobs run in it and must see only that root, their inputs (read-only), and a
// size-capped tmpfs for their working directory and TMPDIR; they run as an unprivileged user,
// and a file is taken out of them only if it is a regular file of their own.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { buildHostRoot, treeBytes, waitForProcess } from './helpers/sandbox.js'
import { checkBwrap, JOB_PROCESSES, runSandboxed, SandboxJobError, SCRATCH_DIR, type SandboxJob } from '../src/sandbox/bwrap.js'
import { detectJobMemory, jobMemoryMode } from '../src/sandbox/cgroup.js'

const TOOLS = ['/bin/sh', '/bin/cat', '/bin/ls', '/usr/bin/env', '/bin/sleep', '/usr/bin/head', '/bin/mkdir', '/bin/bash',
  '/bin/ln', '/usr/bin/mkfifo', '/bin/chmod', '/bin/cp', '/usr/bin/tail', '/usr/bin/tr']

let base: string
let root: string
let jobN = 0

/** A job whose inputs directory holds `input.c` and `inc/h.h`, both visible in its cwd. */
function newJob(over: Partial<SandboxJob> = {}): SandboxJob {
  const dir = join(base, `inputs${++jobN}`)
  mkdirSync(join(dir, 'inc'), { recursive: true })
  writeFileSync(join(dir, 'input.c'), 'int input;\n')
  writeFileSync(join(dir, 'inc', 'h.h'), 'int h;\n')
  return {
    root, inputs: { dir, entries: ['input.c', 'inc'] }, cwd: '/home/alice/src/proj', argv: ['/bin/sh', '-c', 'true'], env: { PATH: '/usr/bin:/bin' },
    timeoutMs: 5000, cpuSeconds: 5, maxOutputBytes: 64 * 1024, diskBytes: 8 * 1024 * 1024, ...over
  }
}
const sh = (script: string, over: Partial<SandboxJob> = {}) => newJob({ argv: ['/bin/sh', '-c', script], ...over })
const text = (b: Buffer) => b.toString('utf8')

before(() => {
  base = mkdtempSync(join(tmpdir(), 'meshcc-sandbox-'))
  root = join(base, 'root')
  mkdirSync(root)
  buildHostRoot(root, TOOLS)
})
after(() => { rmSync(base, { recursive: true, force: true }) })

test('checkBwrap finds a working bwrap', async () => {
  const r = await checkBwrap()
  assert.ok(r.ok, r.ok ? '' : r.reason)
  assert.match(r.version, /^\d+\.\d+/)
  assert.ok(r.path.endsWith('/bwrap'))
  assert.strictEqual(await checkBwrap().then((x) => x.ok && x.path), r.path)
})

test('job runs in cwd among its inputs, stdout/stderr/exit code and the collected file come back', async () => {
  const job = sh('pwd; cat input.c inc/h.h; echo oops >&2; echo result > out.txt; mkdir -p sub && echo x > sub/y && cat out.txt; exit 3', { collect: 'sub/y' })
  const r = await runSandboxed(job)
  assert.equal(r.sandboxError, null)
  assert.equal(r.exitCode, 3)
  assert.equal(r.signal, null)
  assert.equal(text(r.stdout), '/home/alice/src/proj\nint input;\nint h;\nresult\n')
  assert.equal(text(r.stderr), 'oops\n')
  assert.deepEqual(r.collected, { ok: true, data: Buffer.from('x\n') })
  assert.equal(r.timedOut, false)
  assert.equal(r.outputTooLarge, false)
  assert.equal(r.diskFull, false)
  // what the job wrote went with its tmpfs; the inputs directory is as it was
  assert.deepEqual(readdirSync(job.inputs!.dir).sort(), ['inc', 'input.c'])
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
  assert.equal(text(t.stdout), '/tmp/build\nf\ninc\ninput.c\n')
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

test('a collected file over the output cap is not taken', async () => {
  const r = await runSandboxed(sh('head -c 50000 /dev/zero > big.o', { maxOutputBytes: 10_000, collect: 'big.o' }))
  assert.equal(r.exitCode, 0, text(r.stderr))
  assert.deepEqual(r.collected, { ok: false, reason: 'big.o: larger than 10000 bytes' })
  const small = await runSandboxed(sh('head -c 5000 /dev/zero > ok.o', { maxOutputBytes: 10_000, collect: 'ok.o' }))
  assert.equal(small.collected?.ok && small.collected.data.length, 5000)
})

test('disk: the job writes into a tmpfs of diskBytes (cwd and TMPDIR together), stopped while it writes; the host disk is untouched', async () => {
  // four files of 3 MiB, each under the per-file limit: the old per-file check let 4 GiB through
  const job = sh('for i in 1 2 3; do head -c 3145728 /dev/zero > big$i || exit 9; done; head -c 3145728 /dev/zero > "$TMPDIR/t" || exit 8; echo done',
    { diskBytes: 8 * 1024 * 1024, timeoutMs: 20_000 })
  const before = treeBytes(base)
  const r = await runSandboxed(job)
  assert.equal(r.sandboxError, null, text(r.stderr))
  assert.equal(r.exitCode, 9, `the third file did not fit: ${text(r.stderr)}`)
  assert.equal(r.diskFull, true)
  assert.match(text(r.stderr), /No space left on device/)
  assert.equal(treeBytes(base), before, 'nothing landed in the test\'s directories on the host (root and inputs)')
  assert.deepEqual(readdirSync(job.inputs!.dir).sort(), ['inc', 'input.c'])
  // TMPDIR shares the budget
  const t = await runSandboxed(sh('head -c 6291456 /dev/zero > big; head -c 3145728 /dev/zero > "$TMPDIR/t" || exit 8', { diskBytes: 8 * 1024 * 1024 }))
  assert.equal(t.exitCode, 8)
  assert.equal(t.diskFull, true)
  // and the next job has its own, empty tmpfs
  const next = await runSandboxed(sh('ls -A; head -c 3145728 /dev/zero > big && echo fits', { diskBytes: 8 * 1024 * 1024 }))
  assert.equal(text(next.stdout), 'inc\ninput.c\nfits\n')
  assert.equal(next.diskFull, false)
})

test('the inputs are read-only to the job, and so is everything else but its tmpfs', async () => {
  const job = sh([
    'echo x > input.c && echo WROTE-input',
    'rm -f inc/h.h && echo REMOVED-input',
    'echo x > inc/new.h && echo WROTE-inputdir',
    'mv inc gone && echo MOVED-inputdir',
    'echo x > /dev/shm/x && echo WROTE-dev',
    // every mount the job can write: the line's mount options come first after the mount point
    'while read -r id parent dev root mnt opts rest; do case "$opts" in rw*) echo "rw $mnt";; esac; done < /proc/self/mountinfo',
    'exit 0'
  ].join('; '))
  const r = await runSandboxed(job)
  assert.equal(r.exitCode, 0, text(r.stderr))
  const out = text(r.stdout)
  assert.doesNotMatch(out, /WROTE|REMOVED|MOVED/, out)
  // the job's tmpfs (twice: cwd and TMPDIR), /dev's device nodes and a private devpts; nothing of the host
  assert.deepEqual(out.trim().split('\n').filter((l) => l.startsWith('rw ')).sort(),
    ['rw /.meshcc-tmp', 'rw /dev/full', 'rw /dev/null', 'rw /dev/pts', 'rw /dev/random', 'rw /dev/tty', 'rw /dev/urandom', 'rw /dev/zero', `rw ${job.cwd}`])
  assert.equal(readFileSync(join(job.inputs!.dir, 'input.c'), 'utf8'), 'int input;\n')
  assert.deepEqual(readdirSync(join(job.inputs!.dir, 'inc')), ['h.h'])
})

test('a collected file is taken only if it is a regular file of the job\'s own: no link, FIFO or device leads out', async () => {
  const secret = join(tmpdir(), `meshcc-secret-${process.pid}`)
  writeFileSync(secret, 'host secret\n')
  try {
    const cases: Array<[string, string, RegExp]> = [
      [`ln -s ${secret} x.o`, 'x.o', /x\.o is a symbolic link/],
      ['ln -s /dev/zero x.o', 'x.o', /x\.o is a symbolic link/],
      ['echo mine > real; ln real x.o', 'x.o', /a hard link \(2 links\)/],
      ['ln input.c x.o', 'x.o', /x\.o is missing/], // the inputs are another mount: EXDEV
      [`ln -s ${dirname(secret)} sub`, `sub/${basename(secret)}`, /sub is a symbolic link or not a directory/],
      ['ln -s /usr sub', 'sub/bin/sh', /sub is a symbolic link or not a directory/],
      ['mkfifo x.o', 'x.o', /not a regular file/],
      ['mkdir x.o', 'x.o', /not a regular file/],
      ['true', 'x.o', /x\.o is missing/]
    ]
    for (const [script, collect, reason] of cases) {
      const r = await runSandboxed(sh(`${script}; exit 0`, { collect }))
      assert.equal(r.exitCode, 0, `${script}: ${text(r.stderr)}`)
      assert.equal(r.collected?.ok, false, `${script}: ${JSON.stringify(r.collected)}`)
      assert.match(r.collected && !r.collected.ok ? r.collected.reason : '', reason, script)
    }
  } finally {
    rmSync(secret, { force: true })
  }
})

test('the job runs as an unprivileged user on the host, and what it marks setuid has no effect', { skip: process.getuid?.() !== 0 ? 'needs root: checks what a root daemon\'s jobs run as' : false }, async () => {
  const marker = '37.5417'
  const job = sh(`cp /bin/sh ./suid && chmod 4755 ./suid && echo made; sleep ${marker}`, { timeoutMs: 20_000 })
  const running = runSandboxed(job)
  // the job's sleep, from the host
  const pid = await waitForProcess(['sleep', marker])
  assert.ok(pid, 'the job is running')
  const uids = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))!.slice(1).map(Number)
  assert.deepEqual(uids, [65534, 65534, 65534, 65534], 'real, effective, saved and filesystem uid: nobody')
  const suid = statSync(`/proc/${pid}/cwd/suid`)
  assert.equal(suid.uid, 65534, 'the file is not root\'s')
  const mount = readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n').find((l) => l.split(' ')[4] === job.cwd)!
  assert.match(mount.split(' ')[5]!, /(^|,)nosuid(,|$)/)
  assert.match(mount.split(' ')[5]!, /(^|,)nodev(,|$)/)
  process.kill(Number(pid), 'SIGKILL')
  const r = await running
  assert.equal(r.sandboxError, null)
  assert.match(text(r.stdout), /made/)
})

test('memory: a process allocating past maxMemoryBytes fails, and a fork bomb stops at JOB_PROCESSES', async () => {
  // tail -c N of a pipe keeps the last N bytes in memory: 100 MB of them
  const hog = await runSandboxed(sh('head -c 200000000 /dev/zero | tail -c 100000000 > /dev/null && echo survived', { maxMemoryBytes: 32 * 1024 * 1024, timeoutMs: 30_000 }))
  assert.equal(hog.sandboxError, null)
  assert.equal(text(hog.stdout), '')
  // in a cgroup the kernel kills it at the limit; under RLIMIT_AS its allocation fails
  if ((await jobMemoryMode()).cgroups) assert.equal(hog.memoryLimitReached, true)
  else assert.match(text(hog.stderr), /memory exhausted/)
  assert.notEqual(hog.exitCode, 0)
  // without the cap the same job gets its memory (the limit is what stopped it)
  const free = await runSandboxed(sh('head -c 200000000 /dev/zero | tail -c 100000000 > /dev/null && echo survived', { timeoutMs: 30_000 }))
  assert.equal(text(free.stdout), 'survived\n')
  const bomb = await runSandboxed(sh('n=0; while [ $n -lt 100 ]; do sleep 1 & n=$((n+1)); done; echo spawned', { timeoutMs: 20_000 }))
  assert.match(text(bomb.stderr), /Cannot fork/)
  assert.ok(JOB_PROCESSES < 100)
})


test('bwrap setup failures are sandboxError, not a job exit code', async () => {
  const missing = await runSandboxed(newJob({ root: join(base, 'no-such-root') }))
  assert.equal(missing.exitCode, null)
  assert.match(missing.sandboxError ?? '', /no-such-root/)

  const noInputs = sh('true')
  rmSync(noInputs.inputs!.dir, { recursive: true })
  const r = await runSandboxed(noInputs)
  assert.equal(r.exitCode, null)
  assert.match(r.sandboxError ?? '', /^meshcc-reap: .*inputs.*No such file/)
  const noEntry = await runSandboxed(sh('true', { inputs: { ...newJob().inputs!, entries: ['no-such-entry'] } }))
  assert.equal(noEntry.exitCode, null)
  assert.match(noEntry.sandboxError ?? '', /^bwrap: .*no-such-entry/)

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
  for (const bad of ['../x', 'a/b', '..', '']) {
    await assert.rejects(runSandboxed(newJob({ inputs: { dir: base, entries: [bad] } })), SandboxJobError)
  }
  await assert.rejects(runSandboxed(newJob({ cwd: SCRATCH_DIR })), SandboxJobError)
  await assert.rejects(runSandboxed(newJob({ diskBytes: 0 })), SandboxJobError)
})

test('a job whose daemon is SIGKILLed ends with it: nothing of it goes on running', { timeout: 60_000 }, async () => {
  // a stand-in daemon: a process that runs one sandboxed job and is killed while it runs
  const marker = '301.375'
  const job = sh(`sleep ${marker}`, { timeoutMs: 600_000, cpuSeconds: 600, maxMemoryBytes: 64 * 1024 * 1024 })
  const bwrapModule = join(import.meta.dirname, '..', 'src', 'sandbox', 'bwrap.ts')
  const daemon = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e',
    `import { runSandboxed } from ${JSON.stringify(bwrapModule)}\nawait runSandboxed(${JSON.stringify(job)})`], { stdio: 'ignore' })
  const sleeper = await waitForProcess(['sleep', marker], 30_000)
  const ownPids = () => readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(marker) } catch { return false }
  })
  const job_ = ownPids()
  const memory = await jobMemoryMode()
  // the job cgroup the dead daemon leaves (it had no time to remove it), in every hierarchy
  const stale = memory.cgroups ? [memory.cgroups.memoryBase, memory.cgroups.pidsBase].filter((b) => b !== null).map((b) => join(b, `meshcc-job.${daemon.pid}.0`)) : []
  try {
    assert.ok(sleeper, 'the job runs')
    // in its cgroup: the reaper joined it before it started anything
    if (memory.cgroups) assert.match(readFileSync(`/proc/${sleeper}/cgroup`, 'utf8'), new RegExp(`/meshcc-job\\.${daemon.pid}\\.0$`, 'm'))
    daemon.kill('SIGKILL')
    // the reaper, bwrap and the job: none may outlive the daemon (the job's time limit was the daemon's to enforce)
    let left = ownPids()
    for (let waited = 0; left.length > 0 && waited < 10_000; waited += 100) {
      await new Promise((r) => setTimeout(r, 100))
      left = ownPids()
    }
    assert.deepEqual(left, [], `still running 10 s after the daemon died: ${left.map((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').slice(0, 3).join(' ')).join(' | ')}`)
    // the next daemon's start removes what the dead one left
    for (const dir of stale) assert.ok(existsSync(dir), `the dead daemon's job cgroup ${dir}`)
    await detectJobMemory()
    for (const dir of stale) assert.equal(existsSync(dir), false, `${dir} is still there after a daemon start`)
  } finally {
    daemon.kill('SIGKILL')
    for (const p of job_) { try { process.kill(Number(p), 'SIGKILL') } catch { /* gone */ } }
  }
})
