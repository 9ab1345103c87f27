// The rustc the daemon runs for cargo joins cargo's own jobserver (src/compiler/rust-jobserver.ts):
// real cargo with RUSTC_WRAPPER=meshcc and a RUSTC that notes which pipe its jobserver is
// before it runs the real rustc.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { chmodSync, closeSync, openSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { buildJobserver } from '../src/compiler/rust-jobserver.js'
import { createInstance, MESHCC, runCommand, writeTree, type Instance } from './helpers/meshcc.js'
import { findCargo, toolchainRustc } from './helpers/cargo.js'

const { cargo, rustc } = findCargo()
let inst: Instance

before(() => {
  inst = createInstance('', 'rustjobs')
})

after(async () => {
  await inst?.stop()
})

test('every crate the daemon compiles for cargo takes its tokens from the pipe of cargo\'s jobserver', async () => {
  const dir = join(inst.dir, 'ws')
  const lib = (name: string, body: string) => ({
    [`${name}/Cargo.toml`]: `[package]\nname = "${name}"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\n`,
    [`${name}/src/lib.rs`]: body
  })
  writeTree(dir, {
    'Cargo.toml': '[workspace]\nmembers = ["one", "two", "app"]\nresolver = "2"\n',
    ...lib('one', 'pub fn one() -> u32 { (1..=10u32).map(|x| x * x).sum() }\n'),
    ...lib('two', 'pub fn two() -> String { format!("{:?}", vec![2u8; 2]) }\n'),
    'app/Cargo.toml': '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\none = { path = "../one" }\ntwo = { path = "../two" }\n',
    'app/src/main.rs': 'fn main() { println!("{} {}", one::one(), two::two()); }\n'
  })
  // RUSTC: one line per call, `crate form pipe`, the pipe its jobserver's descriptors (cargo's
  // form, as inherited) or path (`fifo:`) name; then the real rustc
  const log = join(inst.dir, 'rustc.log')
  const noter = join(inst.dir, 'bin', 'rustc')
  writeTree(inst.dir, {
    'bin/rustc': `#!/bin/sh
crate=-; prev=
for a in "$@"; do [ "$prev" = --crate-name ] && crate=$a; prev=$a; done
case "$CARGO_MAKEFLAGS" in
  *fifo:*) p=\${CARGO_MAKEFLAGS##*fifo:}; form=fifo; pipe=$(readlink "\${p%% *}") ;;
  *--jobserver-auth=*) p=\${CARGO_MAKEFLAGS##*--jobserver-auth=}; p=\${p%% *}; form=fds; pipe=$(readlink /proc/$$/fd/\${p%%,*}) ;;
  *) form=none; pipe=- ;;
esac
echo "$crate $form \${pipe:-unreadable}" >> ${log}
exec ${toolchainRustc(rustc)} "$@"
`
  })
  chmodSync(noter, 0o755)
  const env: NodeJS.ProcessEnv = { ...inst.env, CARGO_TARGET_DIR: join(dir, 'target'), CARGO_INCREMENTAL: '0', RUSTC: noter, RUSTC_WRAPPER: MESHCC }
  delete env.CARGO_MAKEFLAGS
  const r = await runCommand(cargo, ['build', '--offline', '-j2'], { cwd: dir, env, timeoutMs: 120_000 })
  assert.equal(r.code, 0, r.stderr)
  assert.doesNotMatch(r.stderr, /jobserver/, 'rustc complained about its jobserver')
  assert.equal((await runCommand(join(dir, 'target', 'debug', 'app'), [])).stdout, '385 [2, 2]\n')

  const calls = readFileSync(log, 'utf8').trim().split('\n').map((l) => l.split(' '))
  const compiles = (crate: string) => calls.filter((c) => c[0] === crate)
  // the libraries are cached compiles the daemon ran; the bin passes through to rustc under cargo
  for (const crate of ['one', 'two']) {
    assert.deepEqual(compiles(crate).map((c) => c[1]), ['fifo'], `${crate}: ${JSON.stringify(calls)}`)
  }
  const app = compiles('app')
  assert.deepEqual(app.map((c) => c[1]), ['fds'], JSON.stringify(calls))
  const cargoPipe = app[0]![2]!
  assert.match(cargoPipe, /^pipe:\[\d+\]$/)
  for (const crate of ['one', 'two']) assert.equal(compiles(crate)[0]![2], cargoPipe, `${crate} joined another jobserver than cargo's`)
  const s = await inst.stats()
  assert.ok(s.cache_misses >= 2, JSON.stringify(s))
})

test('descriptors 3,4 on one pipe in a process at the request\'s directory are its jobserver; elsewhere they are not', async () => {
  // a shell holding both ends of one pipe on 3 and 4, as a launcher holds cargo's, then sleeping
  const holder = spawn('sh', ['-c', 'exec 5>&1; : | sh -c "exec 3</dev/stdin 4<>/dev/stdin; echo \\$\\$ >&5; exec sleep 60"'], { cwd: inst.dir, stdio: ['ignore', 'pipe', 'ignore'] })
  try {
    const [line] = await once(holder.stdout!, 'data') as [Buffer]
    const pid = Number(line.toString().trim())
    assert.ok(pid > 0, line.toString())
    const req = (cwd: string, flags: string) => ({ cwd, compiler: 'rustc', args: [], env: { CARGO_MAKEFLAGS: flags }, launcherPid: pid })
    assert.equal(buildJobserver(req(inst.dir, '-j --jobserver-fds=3,4 --jobserver-auth=3,4')), `/proc/${pid}/fd/3`)
    assert.equal(buildJobserver(req('/', '-j --jobserver-fds=3,4 --jobserver-auth=3,4')), null)
    assert.equal(buildJobserver(req(inst.dir, '-j --jobserver-auth=3,5')), null)
  } finally {
    for (const p of await children(holder.pid!)) process.kill(p, 'SIGKILL')
    holder.kill('SIGKILL')
  }
})

test('no launcher pid, a fifo: jobserver already, or descriptors that are no pipe: no jobserver for the daemon\'s rustc', () => {
  const req = (env: Record<string, string>, launcherPid?: number) => ({ cwd: '/', compiler: 'rustc', args: [], env, launcherPid })
  const fds = { CARGO_MAKEFLAGS: '-j --jobserver-fds=3,4 --jobserver-auth=3,4' }
  assert.equal(buildJobserver(req(fds)), null)
  assert.equal(buildJobserver(req({ CARGO_MAKEFLAGS: '-j2 --jobserver-auth=fifo:/tmp/GMfifo1' }, process.pid)), null)
  assert.equal(buildJobserver(req({}, process.pid)), null)
  // this process's descriptor 999 is closed; a file's is no pipe
  assert.equal(buildJobserver(req({ CARGO_MAKEFLAGS: '-j --jobserver-auth=999,999' }, process.pid)), null)
  const fd = openSync(join(inst.dir, 'config.toml'), 'r')
  try {
    assert.equal(buildJobserver(req({ MAKEFLAGS: `-j --jobserver-auth=${fd},${fd}` }, process.pid)), null)
  } finally {
    closeSync(fd)
  }
})

/** The pids of `pid`'s children and theirs (the shells' sleep), from /proc. */
async function children(pid: number): Promise<number[]> {
  const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '')
  const direct = text.split(' ').filter(Boolean).map(Number)
  return [...direct, ...(await Promise.all(direct.map(children))).flat()]
}
