// Hostile jobs: a member holding the mesh key chooses the toolchain, the flags and the file
// table, so it runs what it likes in the builder's sandbox. Each scenario is sent over the real
// compile-job protocol to the real builder of the lab (chaos-hostile-lab.ts); an ordinary job
// from another member runs beside the long ones and after every one, and must come back
// byte-identical to gcc's. After each: none of the host's bytes in what came back, the host's
// files unchanged and nothing created, no connection reached a listener, nothing of the job left
// running, the same builder daemon answering.
import { createHash } from 'node:crypto'
import { lstatSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { JobFile, JobHeader, JobReply } from '../../src/mesh/protocols/compile-job.js'
import { daemonStatus, pollFor, sleep, type Row } from './chaos-common.js'
import { JOB_TIMEOUT_S, clientJob, hostileLab, jobUserProcesses, type HostileLab } from './chaos-hostile-lab.js'

type Reply = JobReply | { kind: 'error'; reason: string }

interface Scenario {
  name: string
  job(lab: HostileLab): { header: JobHeader; files: JobFile[] }
  /** an ordinary job runs while this one does */
  during?: boolean
  /** null when the reply is what the builder must answer, else why not */
  expect(r: Reply, ms: number, lab: HostileLab): string | null
}

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex')
const text = (r: Reply) => r.kind === 'done' ? `done, exit ${r.exitCode}${r.obj ? `, object of ${r.obj.length} bytes` : ''}` : `${r.kind}: ${r.reason.slice(0, 160)}`
const refusedAs = (re: RegExp) => (r: Reply) => (r.kind === 'failed' && re.test(r.reason) ? null : `expected a failure matching ${re}, got ${text(r)}`)
const notCompiled = (r: Reply) => (r.kind === 'done' && r.exitCode === 0 ? `it ran to the end: ${text(r)}` : null)
const anyReply = () => null
/** what chaos-evil wrote (object, stderr): it must have got nowhere */
const evidence = (r: Reply) => (r.kind === 'done' ? `${r.obj?.toString('latin1') ?? ''}\n${r.stderr.toString('latin1')}` : r.kind === 'failed' || r.kind === 'refused' ? r.reason : '')
function nothingGot(r: Reply): string | null {
  const got = evidence(r).split('\n').filter((l) => / (GOT|WROTE|CONNECTED)\b/.test(l))
  return got.length > 0 ? `the job says it managed: ${got.map((l) => l.slice(0, 120)).join(' | ')}` : null
}

/** chaos-evil's environment: what it tries (read, write, connect, unix), all of it unless narrowed. */
function tries(lab: HostileLab, only?: Array<'read' | 'write' | 'connect' | 'unix'>): Record<string, string> {
  const a = lab.attempts
  const want = (k: 'read' | 'write' | 'connect' | 'unix') => !only || only.includes(k)
  return {
    ...(want('read') ? { CHAOS_READ: a.read.join(':') } : {}),
    ...(want('write') ? { CHAOS_WRITE: a.write.join(':') } : {}),
    ...(want('connect') ? { CHAOS_CONNECT: a.connect.join(',') } : {}),
    ...(want('unix') ? { CHAOS_UNIX: a.unix.join(':') } : {})
  }
}

/** A job of real gcc (the toolchain honest shipped) with extra inputs and flags: the -fplugin/-wrapper/-B payloads. */
function gccJob(lab: HostileLab, flags: string[], extra: JobFile[]): { header: JobHeader; files: JobFile[] } {
  writeFileSync(join(lab.evilCwd, 'x.c'), '#include <string.h>\nint payload(const char *s) { return (int)strlen(s); }\n')
  const job = clientJob(lab.evilCwd, 'x.c', ['-O2'], lab.gcc.hash, extra, flags)
  return { header: { ...job.header, env: tries(lab) }, files: job.files }
}

/** An evil-toolchain job whose file table is `table` (paths as given, whatever they are). */
function withTable(lab: HostileLab, table: Array<{ path: string; data: string }>, dirs: string[] = []): { header: JobHeader; files: JobFile[] } {
  const base = lab.evilHeader('evil', tries(lab, ['read']))
  const files: JobFile[] = [...base.files, ...table.map((t) => ({ path: t.path, mode: 0o644, data: Buffer.from(t.data) }))]
  return { header: { ...base.header, dirs, files: files.map((f) => ({ path: f.path, mode: f.mode, size: f.data.length, hash: sha256(f.data) })) }, files }
}

const SCENARIOS: Scenario[] = [
  { name: 'object: a symlink to /etc/shadow', job: (l) => l.evilHeader('symlink', { TARGET: '/etc/shadow' }), expect: refusedAs(/object is not taken: x\.o is a symbolic link/) },
  { name: 'object: a symlink to the builder\'s identity.key', job: (l) => l.evilHeader('symlink', { TARGET: join(l.builder.dir, 'identity.key') }), expect: refusedAs(/is a symbolic link/) },
  { name: 'object: a symlink to /dev/zero', job: (l) => l.evilHeader('symlink', { TARGET: '/dev/zero' }), expect: refusedAs(/is a symbolic link/) },
  { name: 'object: a FIFO', job: (l) => l.evilHeader('fifo'), expect: refusedAs(/not a regular file/) },
  { name: 'object: a hard link', job: (l) => l.evilHeader('hardlink'), expect: refusedAs(/hard link/) },
  { name: 'object: below a directory symlinked to a host directory', job: (l) => l.evilHeader('dirlink', { TARGET: join(l.work, 'host') }, `${l.evilCwd}/sub/secret.txt`), expect: refusedAs(/sub is a symbolic link/) },
  { name: 'disk bomb: 128 MiB against job_disk = 32 MiB', during: true, job: (l) => l.evilHeader('disk'), expect: refusedAs(/filled its disk space/) },
  {
    name: 'memory bomb: 900 MB against job_memory = 512 MiB',
    during: true,
    job: (l) => l.evilHeader('memory'),
    expect: (r) => (r.kind === 'done' && r.exitCode === 0 ? `it got its memory: ${evidence(r).trim().slice(0, 120)}` : null)
  },
  { name: 'fork bomb (every process forks for a minute)', during: true, job: (l) => l.evilHeader('fork'), expect: notCompiled },
  {
    name: `1-hour job (sleep 3600) against job_timeout = ${JOB_TIMEOUT_S} s`,
    during: true,
    job: (l) => l.evilHeader('sleep'),
    expect: (r, ms) => refusedAs(/timed out/)(r) ?? (ms < JOB_TIMEOUT_S * 1000 || ms > JOB_TIMEOUT_S * 1000 + 20_000 ? `ended after ${(ms / 1000).toFixed(1)} s, not at its limit of ${JOB_TIMEOUT_S} s` : null)
  },
  { name: 'network: TCP to the builder\'s 127.0.0.1 and to the lab\'s other host, its daemon\'s unix socket', job: (l) => l.evilHeader('evil', tries(l, ['connect', 'unix'])), expect: (r) => (r.kind === 'done' ? nothingGot(r) : `${text(r)}`) },
  { name: 'reading host files (identity.key, config, mesh key, /etc/shadow, a canary, through /proc and ../)', job: (l) => l.evilHeader('evil', tries(l, ['read'])), expect: (r) => (r.kind === 'done' ? nothingGot(r) : `${text(r)}`) },
  { name: 'writing host files (a canary, identity.key, config, the cache directory, /tmp)', job: (l) => l.evilHeader('evil', tries(l, ['write'])), expect: (r) => (r.kind === 'done' ? nothingGot(r) : `${text(r)}`) },
  {
    name: 'setuid: a setuid copy of itself, run',
    job: (l) => l.evilHeader('setuid', tries(l)),
    expect: (r) => {
      if (r.kind !== 'done') return text(r)
      const e = evidence(r)
      const ids = /ran as uid (\d+) euid (\d+)/.exec(e)
      if (!ids) return 'no report from the job'
      if (ids[1] === '0' || ids[2] === '0') return `the job ran as uid ${ids[1]} euid ${ids[2]}`
      if (!/cwd mount \S+ \S*nosuid/.test(e)) return `its working directory is not mounted nosuid: ${/cwd mount .*/.exec(e)?.[0] ?? 'no mount line'}`
      return nothingGot(r)
    }
  },
  { name: '-fplugin= payload (a shared object of its own, loaded by cc1)', job: (l) => gccJob(l, [`-fplugin=${l.evilCwd}/evil.so`], [{ path: `${l.evilCwd}/evil.so`, mode: 0o755, data: l.payloads.plugin }]), expect: nothingGot },
  { name: '-wrapper payload (its own program run around cc1)', job: (l) => gccJob(l, ['-wrapper', `${l.evilCwd}/evil-bin,wrap`], [{ path: `${l.evilCwd}/evil-bin`, mode: 0o755, data: l.payloads.bin }]), expect: nothingGot },
  { name: '-B payload (its own cc1)', job: (l) => gccJob(l, [`-B${l.evilCwd}/evilB/`], [{ path: `${l.evilCwd}/evilB/cc1`, mode: 0o755, data: l.payloads.bin }]), expect: nothingGot },
  { name: 'file table: a path with ..', job: (l) => withTable(l, [{ path: `${l.evilCwd}/../../../../../../..${join(l.work, 'host', 'created-by-job')}`, data: 'written by a file table\n' }]), expect: notCompiled },
  {
    name: 'file table: paths into the host (a canary, identity.key, config, a new file)',
    job: (l) => withTable(l, [join(l.work, 'host', 'victim.txt'), join(l.builder.dir, 'identity.key'), l.builder.conf, join(l.work, 'host', 'created-by-job')].map((path) => ({ path, data: 'written by a file table\n' }))),
    expect: anyReply
  },
  { name: 'file table: directories with ..', job: (l) => withTable(l, [], [`${l.evilCwd}/../../../../..${join(l.work, 'host', 'created-by-job')}`]), expect: notCompiled },
  { name: 'file table: one path both a file and a directory', job: (l) => withTable(l, [{ path: `${l.evilCwd}/a`, data: 'x' }, { path: `${l.evilCwd}/a/b`, data: 'y' }]), expect: notCompiled },
  {
    name: 'working directory: the builder\'s own config directory',
    job: (l) => {
      const base = l.evilHeader('evil', { CHAOS_WRITE: [join(l.builder.dir, 'written-by-job'), l.builder.conf].join(':'), CHAOS_READ: l.builder.conf }, `${l.builder.dir}/x.o`)
      return { header: { ...base.header, cwd: l.builder.dir, files: base.header.files.map((f) => ({ ...f, path: `${l.builder.dir}/x.c` })) }, files: base.files.map((f) => ({ ...f, path: `${l.builder.dir}/x.c` })) }
    },
    // what it writes there lands in its own tmpfs mounted at that path: the host checks below decide
    expect: anyReply
  }
]

/**
 * Bytes of the files under dir that are their own (one link): what a job could have written on
 * the host's disk there. The kept job trees also hold hard links to their toolchain, which are not.
 */
function ownBytes(dir: string): number {
  let n = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) n += ownBytes(p)
    else if (e.isFile()) { const st = lstatSync(p); if (st.nlink === 1) n += st.size }
  }
  return n
}

/** The host's bytes in a reply, by name. */
function leaked(lab: HostileLab, r: Reply): string[] {
  const parts = r.kind === 'done' ? [r.obj ?? Buffer.alloc(0), r.stdout, r.stderr] : [Buffer.from(r.reason)]
  return [...lab.secrets].filter(([, probe]) => parts.some((p) => p.includes(probe))).map(([name]) => name)
}

export const hostileJobs: Row = {
  id: 'hostile-jobs',
  title: 'hostile jobs: symlinked or special-file outputs (/etc/shadow, identity.key, /dev/zero, a FIFO), disk bomb, memory bomb, fork bomb, 1-hour job, network, reading host files, setuid, `-fplugin`/`-wrapper`/`-B` payloads, file-table paths with `..` or into the host',
  mustShow: '0 host files read or written outside the job\'s space; the builder still serves other jobs during and after',
  trials: { full: SCENARIOS.length, quick: SCENARIOS.length },
  unit: 'scenarios',
  async run(env, rec) {
    const lab = await hostileLab(env)
    const initial = lab.hostState()
    const baselineProcs = jobUserProcesses()
    let during = 0
    let after = 0
    let ordinaryFailed = 0
    let hourJob = ''
    const payloadRan: string[] = []
    let readOrWritten = 0
    let reachedOut = 0
    const jobsDir = join(lab.builder.cacheDir, 'jobs')
    for (const s of SCENARIOS) {
      await rec.trial(s.name, async () => {
        const problems: string[] = []
        const { header, files } = s.job(lab)
        const own = () => { try { return ownBytes(jobsDir) } catch { return 0 } } // a tree may go away while it is read
        const baseTree = own()
        let peakTree = baseTree
        const watch = setInterval(() => { peakTree = Math.max(peakTree, own()) }, 50)
        const t0 = Date.now()
        const hostileReply = lab.send(lab.hostile, header, files).then((r) => ({ r, ms: Date.now() - t0 }))
        let duringWhy: string | null = null
        if (s.during) {
          // once the hostile job runs, an ordinary job from another member
          await pollFor(20_000, async () => ((await daemonStatus(lab.builder)).mesh?.builder.running ?? 0) > 0 ? true : undefined, 100)
          duringWhy = await lab.ordinaryJob()
          during++
          if (duringWhy) { ordinaryFailed++; problems.push(`the ordinary job during it: ${duringWhy}`) }
        }
        const { r, ms } = await hostileReply
        clearInterval(watch)
        if (s.name.startsWith('1-hour')) hourJob = r.kind === 'failed' && /timed out/.test(r.reason) ? `killed at its limit (job_timeout = ${JOB_TIMEOUT_S} s), answered after ${(ms / 1000).toFixed(1)} s` : `${text(r)} after ${(ms / 1000).toFixed(1)} s`
        if (/payload/.test(s.name)) payloadRan.push(`${s.name.split(' ')[0]}: ${/chaos-evil ran as uid (\d+)/.exec(evidence(r))?.[0] ?? 'did not run'}`)
        const why = s.expect(r, ms, lab)
        if (why) problems.push(why)
        const secrets = leaked(lab, r)
        if (secrets.length > 0) { readOrWritten += secrets.length; problems.push(`the host's bytes came back: ${secrets.join(', ')}`) }
        const state = lab.hostState()
        if (state !== initial) {
          const changed = state.split('\n').filter((l) => !initial.split('\n').includes(l))
          readOrWritten += changed.length
          problems.push(`host files changed: ${changed.join('; ')}`)
        }
        if (peakTree - baseTree > 16 * 1024 * 1024) problems.push(`the job trees on the host grew by ${peakTree - baseTree} bytes while it ran`)
        const reached = lab.reached()
        if (reached.loopback + reached.target > reachedOut) { problems.push(`a listener was reached (loopback ${reached.loopback}, the other host ${reached.target})`); reachedOut = reached.loopback + reached.target }
        const left = await pollFor(10_000, () => (jobUserProcesses() <= baselineProcs ? true : undefined), 200)
        if (!left) problems.push(`${jobUserProcesses() - baselineProcs} processes of the job still run 10 s after its reply`)
        const alive = await lab.builderAlive()
        if (alive) problems.push(alive)
        const afterWhy = await lab.ordinaryJob()
        after++
        if (afterWhy) { ordinaryFailed++; problems.push(`the ordinary job after it: ${afterWhy}`) }
        env.log(`${s.name}: ${text(r)} in ${(ms / 1000).toFixed(1)} s${problems.length ? ` — ${problems.join('; ')}` : ''}`)
        return problems.length > 0 ? problems.join('; ') : null
      })
      await sleep(0)
    }
    rec.figure(`${readOrWritten} host files read or written, ${reachedOut} connections out of the sandbox; ordinary jobs ${during} during and ${after} after, ${ordinaryFailed === 0 ? 'all' : `${ordinaryFailed} not`} byte-identical to gcc's`)
    rec.figure(`the 1-hour job: ${hourJob}`)
    rec.note(`${SCENARIOS.length} scenarios, each a job sent by a member holding the mesh key over the compile-job protocol to a builder daemon (bubblewrap, 2 cores,`,
      `job_timeout = ${JOB_TIMEOUT_S} s for the 1-hour job, job_disk = 32 MiB, job_memory = 512 MiB) running in a network namespace of a two-host lab: ${SCENARIOS.map((s) => s.name).join('; ')}.`,
      'Most run a "compiler" that is a shell script with coreutils and chaos-evil (scripts/lib/chaos-evil.c), shipped as the job\'s toolchain; the -fplugin/-wrapper/-B payloads run real gcc with chaos-evil as a plugin, a wrapper or a cc1 among the inputs',
      `(${payloadRan.join('; ')}). chaos-evil tries to read the host files, write host paths, connect to a listener on the builder's 127.0.0.1 and one on the lab's other host (both reachable from the builder itself), and to the builder daemon's unix socket, and reports what it got.`,
      'Checked after each: the host\'s bytes (identity.key, config, mesh key, /etc/shadow, a canary) absent from the reply, the guarded files unchanged and no path created, no listener reached, the job trees on the host grown by less than 16 MiB while it ran (their own files, not the toolchain\'s hard links),',
      'no process of the job\'s user left after 10 s, the same builder daemon, and an ordinary job (real gcc, from another member) byte-identical to gcc\'s after it and, for the bombs and the 1-hour job, while it ran.')
  }
}
