// The commands ccache and sccache users type (-C, -M, -p, --version, -s, -z), run as a user
// would: through the built CLI, with and without a daemon, against a real config file. None of
// them may start a daemon, every mistake is one line, and a running daemon follows its config.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInstance, type Instance } from './helpers/meshcc.js'
import { setTomlKey } from '../src/cli/config-edit.js'

const instances: Instance[] = []
after(async () => { for (const i of instances) await i.stop() })

function fresh(extra = ''): Instance {
  const i = createInstance(extra, 'admin')
  instances.push(i)
  return i
}

/** Poll (bounded) until fn returns true. */
async function until(what: string, fn: () => Promise<boolean> | boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

test('no command, an unknown option, an option without its value: one line each, no stack, exit 2', async () => {
  const inst = fresh()
  for (const [args, re] of [[[], /^meshcc: no command or compiler given\n/], [['--bogus'], /^meshcc: unknown option --bogus \(meshcc --help/], [['-M'], /^meshcc: option --max-size needs a value/]] as const) {
    const r = await inst.run([...args])
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`)
    assert.match(r.stderr, re)
    assert.doesNotMatch(r.stderr, /at .*\.js:\d+|ERR_PARSE_ARGS|To specify a positional/, 'no Node internals')
  }
  assert.equal(inst.daemonPid(), null, 'no daemon was started')
})

test('-s, -z, --version and -p answer without starting a daemon; -s counts from the disk', async () => {
  const inst = fresh()
  const s = await inst.run(['-s', '--stats-format', 'json'])
  assert.equal(s.code, 0, s.stderr)
  assert.ok(s.stdout.endsWith('}\n'), 'JSON ends with a newline')
  assert.equal(JSON.parse(s.stdout).compile_requests, 0)
  assert.equal((await inst.run(['-z'])).code, 0)
  const v = await inst.run(['--version'])
  assert.match(v.stdout, /^meshcc \d+\.\d+\.\d+\ndaemon: not running/)
  const p = await inst.run(['-p'])
  assert.equal(p.code, 0, p.stderr)
  assert.match(p.stdout, new RegExp(`^\\(${inst.conf.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\) +\\[cache\\] dir = "${inst.cacheDir.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}"$`, 'm'))
  assert.match(p.stdout, /^\(default\) +\[cache\] size = 10\.0 GiB$/m)
  const env = await inst.run(['-p'], { env: { MESHCC_LOG: 'warn' } })
  assert.match(env.stdout, /^\(MESHCC_LOG\) +\[log\] level = "warn"$/m, 'an environment override names its variable')
  assert.equal(inst.daemonPid(), null, 'none of them started a daemon')

  // a compile starts the daemon; --version then names it
  writeFileSync(join(inst.dir, 'a.c'), 'int a(void) { return 1; }\n')
  assert.equal((await inst.run(['gcc', '-c', 'a.c'])).code, 0)
  const v2 = await inst.run(['--version'])
  assert.match(v2.stdout, new RegExp(`^daemon: \\d+\\.\\d+\\.\\d+, pid ${inst.daemonPid()}$`, 'm'))
})

test('-M writes the size into the config file, keeping its comments, and the running daemon applies it', async () => {
  const inst = fresh()
  writeFileSync(inst.conf, readFileSync(inst.conf, 'utf8').replace('[cache]\n', '[cache]\nsize = "2G"   # shared with the CI box\n'))
  writeFileSync(join(inst.dir, 'a.c'), 'int a(void) { return 1; }\n')
  assert.equal((await inst.run(['gcc', '-c', 'a.c'])).code, 0) // a daemon runs
  const r = await inst.run(['-M', '300M'])
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /cache size set to 300\.0 MiB .*\(the daemon applied it\)/)
  const text = readFileSync(inst.conf, 'utf8')
  assert.match(text, /^size = "300M"   # shared with the CI box$/m)
  assert.equal((text.match(/^size =/gm) ?? []).length, 1)
  assert.equal((await inst.stats()).cache_max_bytes, 300 * 1024 ** 2)
  const bad = await inst.run(['-M', '1.5'])
  assert.equal(bad.code, 2)
  assert.match(bad.stderr, /^meshcc: --max-size: "1\.5" is not a size/)
})

test('-C removes every entry and manifest, with a daemon and without one', async () => {
  const inst = fresh()
  writeFileSync(join(inst.dir, 'a.c'), 'int a(void) { return 1; }\n')
  writeFileSync(join(inst.dir, 'b.c'), 'int b(void) { return 2; }\n')
  for (const f of ['a', 'b']) assert.equal((await inst.run(['gcc', '-c', `${f}.c`])).code, 0)
  await until('two entries', async () => (await inst.stats()).cache_entries === 2)
  const r = await inst.run(['-C'])
  assert.match(r.stdout, /cache cleared: 2 entries removed/)
  assert.equal((await inst.stats()).cache_entries, 0)
  const again = await inst.run(['gcc', '-c', 'a.c'])
  assert.equal(again.code, 0)
  const s = await inst.stats()
  assert.equal(s.cache_hits, 0, 'no hit survives a clear, not even through a manifest')
  await inst.run(['--stop-server'])
  await until('an entry', async () => (await inst.stats()).cache_entries === 1)
  const off = await inst.run(['-C'])
  assert.match(off.stdout, /cache cleared: 1 entries removed/)
  assert.equal(inst.daemonPid(), null)
})

test('a running daemon follows its config: live keys at once, the others by restarting itself when idle', async () => {
  const inst = fresh()
  writeFileSync(join(inst.dir, 'a.c'), 'int a(void) { return 1; }\n')
  assert.equal((await inst.run(['gcc', '-c', 'a.c'])).code, 0)
  const pid = inst.daemonPid()
  assert.ok(pid)
  const status = async () => JSON.parse((await inst.run(['status', '--json'])).stdout) as { daemon: { pid: number; slots: number } }
  writeFileSync(inst.conf, setTomlKey(readFileSync(inst.conf, 'utf8'), 'build', 'local_slots', '1'))
  await until('local_slots applied', async () => (await status()).daemon.slots === 1)
  assert.equal(inst.daemonPid(), pid, 'a live key needs no restart')

  // a broken file changes nothing and says why (the CLI itself cannot load it: the daemon's log says it)
  const good = readFileSync(inst.conf, 'utf8')
  writeFileSync(inst.conf, good.replace('[build]', '[build]\nlocal_slots_typo = 3'))
  const logFile = join(inst.cacheDir, 'meshcc.log')
  await until('the config error logged', () => /config not reloaded, keeping the running one: .*unknown key \[build\] local_slots_typo/.test(readFileSync(logFile, 'utf8')))
  assert.equal(inst.daemonPid(), pid)
  writeFileSync(inst.conf, setTomlKey(good, 'cache', 'direct', 'false'))
  await until('a restart into the new config', async () => { const p = inst.daemonPid(); return p !== null && p !== pid })
  await until('the new daemon answers', async () => (await inst.run(['status', '--json'])).code === 0)
  const p = await inst.run(['-p'])
  assert.match(p.stdout, /\[cache\] direct = false/)
})

test('status and -s say that no daemon runs instead of starting one', async () => {
  const inst = fresh()
  const st = await inst.run(['status'])
  assert.notEqual(st.code, 0)
  assert.match(st.stderr, /no daemon running/)
  assert.equal(inst.daemonPid(), null)
  assert.equal(existsSync(inst.socket), false)
})

test('setTomlKey: replaces in its section, adds the key or the section, leaves the rest', () => {
  const base = '# mine\n[daemon]\nsize = "x"\n[cache]\ndir = "/c"  # keep\n'
  assert.equal(setTomlKey(base, 'cache', 'size', '"5G"'), '# mine\n[daemon]\nsize = "x"\n[cache]\nsize = "5G"\ndir = "/c"  # keep\n')
  assert.equal(setTomlKey('[cache]\nsize = "1G" # old\n', 'cache', 'size', '"5G"'), '[cache]\nsize = "5G" # old\n')
  assert.equal(setTomlKey('', 'cache', 'size', '"5G"'), '[cache]\nsize = "5G"\n')
  assert.equal(setTomlKey('[log]\nlevel = "info"', 'cache', 'size', '"5G"'), '[log]\nlevel = "info"\n\n[cache]\nsize = "5G"\n')
})

test('mesh init with the mesh disabled writes the key and starts no daemon', async () => {
  const inst = fresh()
  const r = await inst.run(['mesh', 'init'])
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /the mesh is disabled in .*\[mesh\] enabled = false/)
  assert.ok(existsSync(join(inst.dir, 'mesh.key')))
  assert.equal(inst.daemonPid(), null, 'a daemon with the mesh off has no reason to start for it')
})
