// Configuration: the documented names work, env overrides the file, and every mistake is
// one clear line naming the file, the key and what is wrong.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ConfigError, defaultJobMemory, loadConfig, parseSize } from '../src/config.js'
import { runCommand, MESHCC } from './helpers/meshcc.js'

function withConf(text: string, fn: (file: string, dir: string) => void | Promise<void>) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'conf-'))
    const file = join(dir, 'config.toml')
    writeFileSync(file, text)
    try { await fn(file, dir) } finally { rmSync(dir, { recursive: true, force: true }) }
  }
}

test('the documented keys are read as written', withConf(`
[daemon]
socket = "/tmp/meshcc-test/daemon.sock"
idle_timeout = 0
mesh_idle_timeout = 3600
[cache]
dir = "~/.cache/meshcc-test"
size = "512M"
[log]
level = "debug"
`, (file) => {
  const c = loadConfig({ MESHCC_CONF: file, HOME: '/home/u' })
  assert.equal(c.daemon.socket, '/tmp/meshcc-test/daemon.sock')
  assert.equal(c.daemon.idleTimeout, 0)
  assert.equal(c.daemon.meshIdleTimeout, 3600)
  assert.match(c.cache.dir, /\.cache\/meshcc-test$/)
  assert.equal(c.cache.size, 512 * 1024 ** 2)
  assert.equal(c.log.level, 'debug')
  assert.equal(c.file, file)
}))

test('[mesh] relay_rate is a size per second, 0 turns the bound off, and defaults to 4 MiB/s', withConf('[mesh]\nrelay_rate = "512K"\n', (file) => {
  assert.equal(loadConfig({ MESHCC_CONF: file }).mesh.relayRate, 512 * 1024)
  writeFileSync(file, '[mesh]\nrelay_rate = 0\n')
  assert.equal(loadConfig({ MESHCC_CONF: file }).mesh.relayRate, 0)
  writeFileSync(file, '[mesh]\n')
  assert.equal(loadConfig({ MESHCC_CONF: file }).mesh.relayRate, 4 * 1024 ** 2)
  writeFileSync(file, '[mesh]\nrelay_rate = "fast"\n')
  assert.throws(() => loadConfig({ MESHCC_CONF: file }), (e: unknown) => e instanceof ConfigError && /relay_rate/.test(e.message))
}))

test('environment variables override the file', withConf('[cache]\nsize = "1G"\n', (file) => {
  const c = loadConfig({ MESHCC_CONF: file, MESHCC_DIR: '/tmp/x-cache', MESHCC_CACHE_SIZE: '2G', MESHCC_LOG: 'warn', MESHCC_IDLE_TIMEOUT: '5', MESHCC_MESH_IDLE_TIMEOUT: '7', MESHCC_SOCKET: '/tmp/s.sock' })
  assert.equal(c.cache.dir, '/tmp/x-cache')
  assert.equal(c.cache.size, 2 * 1024 ** 3)
  assert.equal(c.log.level, 'warn')
  assert.equal(c.daemon.idleTimeout, 5)
  assert.equal(c.daemon.meshIdleTimeout, 7)
  assert.equal(c.daemon.socket, '/tmp/s.sock')
}))

test('defaults without any config file', () => {
  const c = loadConfig({ HOME: '/nonexistent-home', XDG_CONFIG_HOME: '/nonexistent-conf', XDG_CACHE_HOME: '/nonexistent-cache', XDG_RUNTIME_DIR: '/run/user/4242' })
  assert.equal(c.file, null)
  assert.equal(c.cache.dir, '/nonexistent-cache/meshcc')
  assert.equal(c.cache.size, 10 * 1024 ** 3)
  assert.equal(c.daemon.idleTimeout, 600, 'a daemon without a mesh exits after 10 idle minutes')
  assert.equal(c.daemon.meshIdleTimeout, 0, 'a daemon in a mesh stays up')
  assert.equal(c.daemon.socket, '/run/user/4242/meshcc/daemon.sock')
})

test('sizes: one binary convention whatever the spelling, whole bytes without a unit', () => {
  assert.equal(parseSize('10G'), 10 * 1024 ** 3)
  assert.equal(parseSize('10 GB'), 10 * 1024 ** 3, '"10 GB" and "10G" are the same size')
  assert.equal(parseSize('10GiB'), 10 * 1024 ** 3)
  assert.equal(parseSize('1.5GiB'), 1.5 * 1024 ** 3)
  assert.equal(parseSize('500MB'), 500 * 1024 ** 2)
  assert.equal(parseSize('4096'), 4096)
  assert.equal(parseSize(4096), 4096)
  assert.equal(parseSize('1.5'), null, 'a fraction of a byte is a mistake')
  assert.equal(parseSize(1.5), null)
  assert.equal(parseSize('lots'), null)
  assert.equal(parseSize('10X'), null)
})

test('MESHCC_CONF naming a missing file is an error, not the defaults', () => {
  assert.throws(() => loadConfig({ MESHCC_CONF: '/nonexistent/meshcc.toml' }), (e: unknown) => e instanceof ConfigError && /MESHCC_CONF names \/nonexistent\/meshcc\.toml, which does not exist/.test(e.message))
})

test('every key records where its value came from', withConf('[cache]\nsize = "1G"\n', (file) => {
  const c = loadConfig({ MESHCC_CONF: file, MESHCC_LOG: 'debug' })
  const src = (section: string, key: string) => c.sources.find((s) => s.section === section && s.key === key)
  assert.deepEqual(src('cache', 'size'), { section: 'cache', key: 'size', value: '1.0 GiB ("1G")', origin: file })
  assert.deepEqual(src('log', 'level'), { section: 'log', key: 'level', value: '"debug"', origin: 'MESHCC_LOG' })
  assert.equal(src('build', 'job_timeout')?.origin, 'default')
}))

const bad: Array<[string, string, RegExp]> = [
  ['wrong type', '[cache]\nsize = "lots"\n', /config\.toml: \[cache\] size: expected a size such as "10G"/],
  ['unknown key', '[daemon]\nsokcet = "/tmp/x"\n', /config\.toml: unknown key \[daemon\] sokcet/],
  ['unknown section', '[caches]\ndir = "/tmp"\n', /config\.toml: unknown section \[caches\]/],
  ['negative number', '[daemon]\nidle_timeout = -1\n', /\[daemon\] idle_timeout: -1 is out of range/],
  ['bad log level', '[log]\nlevel = "loud"\n', /\[log\] level: "loud" is not one of error, warn, info, debug/],
  ['TOML syntax', '[daemon]\nsocket = \n', /config\.toml: line 2:/],
  ['size as a bare fraction', '[cache]\nsize = 1.5\n', /\[cache\] size: number 1\.5 has no unit .*"1\.5G"/],
  ['size as a fraction string', '[cache]\nsize = "1.5"\n', /\[cache\] size: "1\.5" has no unit/],
  ['size zero', '[cache]\nsize = 0\n', /\[cache\] size: number 0 is too small \(at least 64\.0 KiB\)/],
  ['toolchain cache size zero', '[build]\ntoolchain_cache_size = "0G"\n', /\[build\] toolchain_cache_size: "0G" is too small/]
]
for (const [name, text, re] of bad) {
  test(`bad config (${name}) gives one clear line`, withConf(text, async (file) => {
    assert.throws(() => loadConfig({ MESHCC_CONF: file }), (e: unknown) => e instanceof ConfigError && re.test(e.message) && !e.message.includes('\n'))
    // through the CLI: one line on stderr, no stack trace, non-zero exit
    const r = await runCommand(MESHCC, ['-s'], { env: { ...process.env, MESHCC_CONF: file } })
    assert.equal(r.code, 2)
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
    assert.match(r.stderr, re)
    assert.match(r.stderr, new RegExp(file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')))
  }))
}

test('a bad config never fails a build: the launcher warns and compiles plainly', withConf('[cache]\nsize = "lots"\n', async (file, dir) => {
  writeFileSync(join(dir, 'a.c'), 'int a(void) { return 1; }\n')
  const r = await runCommand(MESHCC, ['gcc', '-c', 'a.c', '-o', 'a.o'], { cwd: dir, env: { ...process.env, MESHCC_CONF: file } })
  assert.equal(r.code, 0)
  assert.match(r.stderr, /^meshcc: .*\[cache\] size.*; compiling without meshcc\n$/)
}))

test('a config broken while the daemon runs: the launcher still warns in one line and compiles plainly', async () => {
  const { createInstance } = await import('./helpers/meshcc.js')
  const inst = createInstance('', 'conf-live')
  try {
    writeFileSync(join(inst.dir, 'a.c'), 'int a(void) { return 1; }\n')
    assert.equal((await inst.run(['gcc', '-c', 'a.c', '-o', 'a.o'])).code, 0) // the daemon is up
    writeFileSync(inst.conf, readFileSync(inst.conf, 'utf8').replace('[cache]\n', '[cache]\nsize = "lots"\n'))
    const r = await inst.run(['gcc', '-c', 'a.c', '-o', 'b.o'])
    assert.equal(r.code, 0)
    assert.match(r.stderr, /^meshcc: .*\[cache\] size.*; compiling without meshcc\n$/)
    assert.ok(existsSync(join(inst.dir, 'b.o')))
  } finally {
    writeFileSync(inst.conf, readFileSync(inst.conf, 'utf8').replace('size = "lots"\n', ''))
    await inst.stop()
  }
})

test('[build] job_disk and job_memory: defaults, sizes as written, too small is one clear line', withConf('[build]\njob_disk = "256M"\njob_memory = "3G"\n', (file, dir) => {
  const c = loadConfig({ MESHCC_CONF: file })
  assert.equal(c.build.jobDisk, 256 * 1024 ** 2)
  assert.equal(c.build.jobMemory, 3 * 1024 ** 3)
  const empty = join(dir, 'empty.toml')
  writeFileSync(empty, '[build]\ncores = 8\n')
  const d = loadConfig({ MESHCC_CONF: empty })
  assert.equal(d.build.jobDisk, 1024 ** 3)
  assert.equal(d.build.jobMemory, defaultJobMemory(8))
  // 1.5 shares of memory per offered core, between 1 and 4 GiB
  assert.equal(defaultJobMemory(8, 16 * 1024 ** 3), 3 * 1024 ** 3)
  assert.equal(defaultJobMemory(2, 24 * 1024 ** 3), 4 * 1024 ** 3)
  assert.equal(defaultJobMemory(16, 4 * 1024 ** 3), 1024 ** 3)
  assert.equal(defaultJobMemory(0, 2 * 1024 ** 3), 3 * 1024 ** 3, 'not offering: as for one core')
  for (const [text, re] of [['job_disk = "10"', /\[build\] job_disk: "10" is too small \(at least 1\.0 MiB\)/], ['job_memory = "1M"', /\[build\] job_memory: "1M" is too small \(at least 16\.0 MiB\)/]] as const) {
    writeFileSync(empty, `[build]\n${text}\n`)
    assert.throws(() => loadConfig({ MESHCC_CONF: empty }), (e: unknown) => e instanceof ConfigError && re.test(e.message) && !e.message.includes('\n'))
  }
}))
