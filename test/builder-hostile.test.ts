// A builder against a hostile mesh member. Holding the mesh key, a member chooses the toolchain
// and the flags, so it runs what it likes in the builder's sandbox: here a "compiler" that is a
// shell script shipped as a toolchain. Whatever it does, the builder must return none of its
// host's bytes (files, its identity), must not let it fill the disk or the memory, must not run
// it as root, and must go on compiling real C units byte-identically. A real Builder with a real
// toolchain cache, real bubblewrap and real gcc; only the mesh transport is left out (jobs are
// handed to Builder.run as the compile-job protocol would).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'
import { loadConfig, type Config } from '../src/config.js'
import { silentLogger } from '../src/log.js'
import { Builder } from '../src/daemon/builder.js'
import { jobMemoryMode } from '../src/sandbox/cgroup.js'
import { decodeJobOutputs, encodeJobOutputs, type JobFile, type JobHeader, type JobReply } from '../src/mesh/protocols/compile-job.js'
import { ToolchainCache } from '../src/toolchain/cache.js'
import { discoverToolchain } from '../src/toolchain/discover.js'
import { packToolchain } from '../src/toolchain/pack.js'
import { HOSTILE_PP_TEXT, buildHostRoot, hostileCompiler, treeBytes, waitForProcess } from './helpers/sandbox.js'

const MiB = 1024 * 1024
const PEER = '12D3KooWHostileMemberOfTheMeshWithTheKey'
const CWD = '/home/mallory/src/evil'
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')

let top: string
let config: Config
let builder: Builder
const archives = new Map<string, Buffer>()
let evil: string
/** a file of the builder's host, outside any job tree */
let secret: string
let identity: string

/** The hostile compiler (helpers/sandbox.ts), with the modes these tests add. */
const EVIL_CC = hostileCompiler({
  zero: 'ln -s /dev/zero "$out"',
  memory: 'head -c 400000000 /dev/zero | tail -c 300000000 > /dev/null || exit 1; echo object > "$out"',
  // three processes holding 120 MB each at once (tail keeps its input until the end): each under
  // job_memory, together past it; the job goes on when one is killed, and exits 0
  spread: 'for i in 1 2 3; do { head -c 120000000 /dev/zero; sleep 2; } | tail -c 120000000 > /dev/null & done; wait; echo object > "$out"',
  setuid: 'cp /bin/sh ./suid && chmod 4755 ./suid && sleep "$TARGET"; echo object > "$out"',
  // two outputs (a compile-job v4 job, as rustc's rlib and rmeta)
  pair: 'echo first > first.out && echo "a fine object" > "$out"',
  pairlink: 'ln -s "$TARGET" first.out && echo "a fine object" > "$out"'
})

before(async () => {
  top = mkdtempSync(join(tmpdir(), 'meshcc-hostile-'))
  chmodSync(top, 0o755)
  secret = join(top, 'host-secret')
  writeFileSync(secret, 'the builder host\'s own bytes\n', { mode: 0o600 })
  // the daemon's config dir, identity and mesh key beside the config
  const confDir = join(top, 'config')
  mkdirSync(confDir)
  writeFileSync(join(confDir, 'config.toml'), '')
  config = loadConfig({ MESHCC_CONF: join(confDir, 'config.toml'), HOME: top })
  identity = config.mesh.identityFile
  writeFileSync(identity, 'PRIVATE KEY OF THIS BUILDER\n', { mode: 0o600 })
  writeFileSync(config.mesh.keyFile, 'THE MESH KEY\n', { mode: 0o600 })
  config.cache.dir = join(top, 'cache')
  config.build.cores = 2
  Object.assign(config.build, { jobDisk: 32 * MiB, jobMemory: 256 * MiB, jobTimeout: 60 })

  // the hostile toolchain: dash, coreutils and the script
  const root = join(top, 'evil-root')
  mkdirSync(root)
  buildHostRoot(root, ['/bin/sh', '/bin/ln', '/usr/bin/mkfifo', '/usr/bin/head', '/usr/bin/tail', '/bin/cp', '/bin/chmod', '/bin/sleep'])
  mkdirSync(join(root, 'usr', 'local', 'bin'), { recursive: true })
  writeFileSync(join(root, 'usr', 'local', 'bin', 'evilcc'), EVIL_CC, { mode: 0o755 })
  const archive = join(top, 'evil.tar.gz')
  execFileSync('tar', ['--owner=0', '--group=0', '-czf', archive, '-C', root, '.'])
  const bytes = readFileSync(archive)
  evil = sha256(bytes)
  archives.set(evil, bytes)

  const toolchains = new ToolchainCache({ dir: join(config.cache.dir, 'toolchains'), maxBytes: 4 * 1024 * MiB, log: silentLogger })
  await toolchains.open()
  builder = new Builder({
    config, log: silentLogger, toolchains,
    // as the toolchain-fetch protocol hands it over: a file the cache moves in
    fetchToolchain: async (_peer, hash) => {
      const file = join(top, `fetched-${hash.slice(0, 12)}-${Date.now()}`)
      writeFileSync(file, archives.get(hash)!)
      return { file, bytes: archives.get(hash)!.length }
    },
    findToolchainHolders: async () => [],
    isAllowed: () => true,
    onLoadChange: () => undefined
  })
  await builder.cleanStaleJobs()
  await builder.init()
  assert.equal(builder.status().sandbox_ok, true, builder.status().sandbox_note ?? '')
})
after(() => rmSync(top, { recursive: true, force: true }))

/** One job of the hostile compiler, its object at objPath. */
function evilJob(mode: string, target = '', objPath = `${CWD}/x.o`): Promise<JobReply> {
  const src = Buffer.from('int x;\n')
  const header: JobHeader = {
    toolchain: evil, compiler: '/usr/local/bin/evilcc', argv: ['-c', 'x.c', '-o', objPath], cwd: CWD,
    env: { MODE: mode, TARGET: target }, ppHash: sha256(HOSTILE_PP_TEXT), ppArgv: ['-E', 'x.c'], objPath,
    files: [{ path: `${CWD}/x.c`, mode: 0o644, size: src.length, hash: sha256(src) }], dirs: []
  }
  return builder.run(PEER, header, [{ path: `${CWD}/x.c`, mode: 0o644, data: src }])
}

/** A job with two outputs and no preprocessor check (compile-job v4, as a rustc job is). */
function evilPair(mode: string, target = ''): Promise<JobReply> {
  const src = Buffer.from('int x;\n')
  const header: JobHeader = {
    toolchain: evil, compiler: '/usr/local/bin/evilcc', argv: ['x.c', '-o', `${CWD}/x.o`], cwd: CWD,
    env: { MODE: mode, TARGET: target }, ppHash: '', ppArgv: [], objPath: `${CWD}/first.out`, outputs: ['first.out', 'x.o'],
    files: [{ path: `${CWD}/x.c`, mode: 0o644, size: src.length, hash: sha256(src) }], dirs: []
  }
  return builder.run(PEER, header, [{ path: `${CWD}/x.c`, mode: 0o644, data: src }])
}

/** The job was refused as a failure, and nothing of the host came back. */
function assertRefused(r: JobReply, why: RegExp): void {
  const shown = r.kind === 'done' ? { ...r, obj: r.obj?.toString('utf8').slice(0, 80) } : r
  assert.equal(r.kind, 'failed', JSON.stringify(shown))
  assert.match((r as { reason: string }).reason, why)
}

test('an object that is a symlink to a host file, or to the builder\'s identity.key, is refused', { timeout: 60_000 }, async () => {
  assertRefused(await evilJob('symlink', secret), /object is not taken: x\.o is a symbolic link/)
  assertRefused(await evilJob('symlink', identity), /object is not taken: x\.o is a symbolic link/)
  // the mesh key beside it, by a relative link up the tree
  assertRefused(await evilJob('symlink', '../../../../../../../../../' + config.mesh.keyFile), /symbolic link/)
})

test('a job with several outputs: each comes back in one blob, and one that is a link to a host file fails the job', { timeout: 60_000 }, async () => {
  const r = await evilPair('pair')
  assert.equal(r.kind, 'done', JSON.stringify(r))
  const [first, obj] = decodeJobOutputs((r as { obj: Buffer }).obj, 2)
  assert.equal(first!.toString(), 'first\n')
  assert.equal(obj!.toString(), 'a fine object\n')
  assertRefused(await evilPair('pairlink', identity), /outputs are not taken: first\.out is a symbolic link/)
})

test('a multi-output blob that does not add up is a protocol violation, never a read past its end', () => {
  const good = encodeJobOutputs([Buffer.from('ab'), Buffer.from('')])
  assert.deepEqual(decodeJobOutputs(good, 2).map(String), ['ab', ''])
  assert.throws(() => decodeJobOutputs(good, 3), /end before output 2/)
  assert.throws(() => decodeJobOutputs(good, 1), /longer than its outputs/)
  const lying = Buffer.from(good)
  lying.writeUInt32BE(0xffffffff, 0)
  assert.throws(() => decodeJobOutputs(lying, 2), /longer than the blob/)
})

test('an object below a directory that is a symlink out of the tree is refused', { timeout: 60_000 }, async () => {
  assertRefused(await evilJob('dirlink', top, `${CWD}/sub/host-secret`), /sub is a symbolic link or not a directory/)
})

test('an object that is a hard link is refused', { timeout: 60_000 }, async () => {
  assertRefused(await evilJob('hardlink'), /a hard link \(2 links\)/)
})

test('an object that is a FIFO or /dev/zero is refused at once, without the builder reading for ever', { timeout: 60_000 }, async () => {
  const rss = process.resourceUsage().maxRSS
  assertRefused(await evilJob('fifo'), /not a regular file/)
  assertRefused(await evilJob('zero'), /x\.o is a symbolic link/)
  // reading /dev/zero as "the object" once cost the builder 2 GiB of memory before it gave up
  assert.ok(process.resourceUsage().maxRSS - rss < 256 * 1024, `the builder's peak memory grew by ${process.resourceUsage().maxRSS - rss} KiB`)
})

test('a job writing past job_disk fails while it writes, the host disk untouched, and the builder serves the next job', { timeout: 120_000 }, async () => {
  const jobs = join(config.cache.dir, 'jobs')
  let peak = 0
  // watch the job trees while the job writes 128 MiB against a 32 MiB job_disk
  const watch = setInterval(() => { try { peak = Math.max(peak, treeBytes(jobs)) } catch { /* a tree going away */ } }, 20)
  let r: JobReply
  try {
    r = await evilJob('disk')
  } finally {
    clearInterval(watch)
  }
  assertRefused(r, /filled its disk space \(\[build\] job_disk\)/)
  assert.ok(peak < 16 * MiB, `the job trees on the host grew to ${peak} bytes while it ran`)
  const next = await evilJob('fine')
  assert.equal(next.kind, 'done')
  assert.equal(next.kind === 'done' && next.obj?.toString('utf8'), 'a fine object\n')
})

test('a job allocating past job_memory fails', { timeout: 60_000 }, async () => {
  const r = await evilJob('memory')
  assert.ok(!(r.kind === 'done' && r.exitCode === 0), `a 300 MB allocation against job_memory = 256 MiB: ${JSON.stringify(r.kind === 'done' ? { ...r, obj: null, stderr: r.stderr.toString() } : r)}`)
})

test('a job of several processes, each under job_memory, together past it, is stopped at the job\'s memory limit', { timeout: 60_000 }, async (t) => {
  const mode = await jobMemoryMode()
  if (!mode.cgroups) return t.skip(`needs a cgroup for jobs: ${mode.reason}`)
  assertRefused(await evilJob('spread'), /^job memory limit reached \(\[build\] job_memory\)$/)
  assert.equal(builder.status().job_memory, `${mode.cgroups.describe()}, 256.0 MiB per job`)
  // and the builder goes on: the next job is served
  const next = await evilJob('fine')
  assert.equal(next.kind === 'done' && next.obj?.toString('utf8'), 'a fine object\n')
})

test('the job does not run as root, and a setuid file it makes is neither root\'s nor effective', { timeout: 60_000, skip: process.getuid?.() !== 0 ? 'needs root: checks what a root daemon\'s jobs run as' : false }, async () => {
  const marker = '29.4681'
  const running = evilJob('setuid', marker)
  const pid = await waitForProcess(['sleep', marker])
  assert.ok(pid, 'the job is running')
  const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1])
  const suid = statSync(`/proc/${pid}/cwd/suid`)
  const cwdMount = readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n').find((l) => l.split(' ')[4] === CWD)!
  process.kill(Number(pid), 'SIGKILL')
  await running
  assert.notEqual(uid, 0, 'the job\'s uid on the host')
  assert.ok(suid.uid !== 0 || (suid.mode & 0o4000) === 0, `a setuid-root file: uid ${suid.uid}, mode ${suid.mode.toString(8)}`)
  assert.match(cwdMount.split(' ')[5]!, /(^|,)nosuid(,|$)/, cwdMount)
})

test('a file table naming a path both as a file and as a directory is refused up front, naming the path, and the builder serves the next job', { timeout: 60_000 }, async () => {
  const src = Buffer.from('int x;\n')
  const ref = (path: string) => ({ path, mode: 0o644, size: src.length, hash: sha256(src) })
  const jobs = join(config.cache.dir, 'jobs')
  const cases: Array<{ paths: string[]; dirs: string[]; clash: string }> = [
    // a/b a file, and a/b/c a file below it
    { paths: [`${CWD}/a/b`, `${CWD}/a/b/c`, `${CWD}/x.c`], dirs: [], clash: `${CWD}/a/b` },
    // a file that the table also names as a directory
    { paths: [`${CWD}/inc`, `${CWD}/x.c`], dirs: [`${CWD}/inc`], clash: `${CWD}/inc` },
    // the working directory itself as a file
    { paths: [CWD, `${CWD}/x.c`], dirs: [], clash: CWD }
  ]
  for (const c of cases) {
    const failedBefore = builder.status().jobs_failed
    const trees = readdirSync(jobs).sort()
    const header: JobHeader = {
      toolchain: evil, compiler: '/usr/local/bin/evilcc', argv: ['-c', 'x.c', '-o', `${CWD}/x.o`], cwd: CWD,
      env: { MODE: 'fine' }, ppHash: sha256(HOSTILE_PP_TEXT), ppArgv: ['-E', 'x.c'], objPath: `${CWD}/x.o`,
      files: c.paths.map(ref), dirs: c.dirs
    }
    const r = await builder.run(PEER, header, c.paths.map((path) => ({ path, mode: 0o644, data: src })))
    assertRefused(r, new RegExp(`^job file table: ${c.clash.replaceAll('/', '\\/')} is both a file and a directory$`))
    assert.equal(builder.status().jobs_failed, failedBefore + 1)
    assert.deepEqual(readdirSync(jobs).sort(), trees, 'no tree was made for it')
  }
  // a file where the toolchain has a directory: the tree is dropped, the reason names the path
  const shadow: JobHeader = {
    toolchain: evil, compiler: '/usr/local/bin/evilcc', argv: ['-c', 'x.c', '-o', `${CWD}/x.o`], cwd: CWD,
    env: { MODE: 'fine' }, ppHash: sha256(HOSTILE_PP_TEXT), ppArgv: ['-E', 'x.c'], objPath: `${CWD}/x.o`,
    files: ['/usr/local', `${CWD}/x.c`].map(ref), dirs: []
  }
  assertRefused(await builder.run(PEER, shadow, shadow.files.map((f) => ({ path: f.path, mode: 0o644, data: src }))), /job file table: \/usr\/local is a directory of the toolchain$/)
  // and the next job runs
  const r = await evilJob('fine')
  assert.equal(r.kind, 'done', JSON.stringify(r))
  assert.equal(r.kind === 'done' && r.obj?.toString(), 'a fine object\n')
})

test('after all that, the builder compiles a real C unit (-g) byte-identically to a local gcc', { timeout: 180_000 }, async () => {
  const dir = join(top, 'client')
  mkdirSync(join(dir, 'include'), { recursive: true })
  writeFileSync(join(dir, 'include', 'twice.h'), '#include <string.h>\nstatic inline int twice(int x) { return 2 * x; }\n')
  writeFileSync(join(dir, 'unit.c'), '#include "twice.h"\nint unit(const char *s) { return twice((int)strlen(s)); }\n')
  const pp = execFileSync('gcc', ['-g', '-O2', '-Iinclude', '-E', 'unit.c'], { cwd: dir })
  execFileSync('gcc', ['-g', '-O2', '-Iinclude', '-c', 'unit.c', '-o', 'plain.o'], { cwd: dir })
  // what the client sends: every file its preprocessor read, by the line markers
  const paths = [...new Set([...pp.toString('utf8').matchAll(/^# \d+ "([^"<]+)"/gm)].map((m) => resolve(dir, m[1]!)))]
    .filter((p) => isAbsolute(p) && statSync(p, { throwIfNoEntry: false })?.isFile())
  const files: JobFile[] = paths.map((p) => ({ path: p, mode: statSync(p).mode & 0o777, data: readFileSync(p) }))
  const packed = await packToolchain(await discoverToolchain('/usr/bin/gcc', 'gcc'), join(top, 'packed'))
  archives.set(packed.hash, readFileSync(packed.archive))
  const objPath = `${dir}/.meshcc-remote-test.o`
  const header: JobHeader = {
    toolchain: packed.hash, compiler: '/usr/bin/gcc', argv: ['-g', '-O2', '-Iinclude', '-c', 'unit.c', '-o', objPath], cwd: dir,
    env: {}, ppHash: sha256(pp), ppArgv: ['-g', '-O2', '-Iinclude', '-E', 'unit.c'], objPath,
    files: files.map((f) => ({ path: f.path, mode: f.mode, size: f.data.length, hash: sha256(f.data) })), dirs: [join(dir, 'include')]
  }
  for (let i = 0; i < 2; i++) {
    // twice: a fresh tree, then the kept one
    const r = await builder.run(PEER, header, files)
    assert.equal(r.kind, 'done', JSON.stringify(r))
    assert.equal(r.kind === 'done' && r.exitCode, 0, r.kind === 'done' ? r.stderr.toString() : '')
    assert.ok(r.kind === 'done' && r.obj!.equals(readFileSync(join(dir, 'plain.o'))), 'the same bytes as the local compile, debug info included')
  }
  assert.equal(builder.status().workspaces.reused >= 1, true)
})

test('no job cgroup is left behind, also of the jobs that were killed', async (t) => {
  const mode = await jobMemoryMode()
  if (!mode.cgroups) return t.skip(`needs a cgroup for jobs: ${mode.reason}`)
  for (const base of [mode.cgroups.memoryBase, mode.cgroups.pidsBase]) {
    if (base) assert.deepEqual(readdirSync(base).filter((n) => n.startsWith(`meshcc-job.${process.pid}.`)), [], base)
  }
})
