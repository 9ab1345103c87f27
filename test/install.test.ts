// The documented install: `npm run package` makes a tarball that `npm install -g` copies in,
// offline, with no dependency and no install script, and the installed meshcc works without
// this checkout (its command is not a link back into it). Installed into a private prefix.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { copyFileSync, existsSync, mkdtempSync, readFileSync, realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { REPO, runCommand } from './helpers/meshcc.js'

test('npm run package, npm install -g of the tarball: a self-contained meshcc that compiles, restarts into an upgrade, and uninstalls', { timeout: 120_000 }, async () => {
  const work = mkdtempSync(join(tmpdir(), 'install-'))
  try {
    const made = await runCommand(process.execPath, [join(REPO, 'scripts', 'package.mjs'), work])
    assert.equal(made.code, 0, made.stderr)
    const tgz = made.stdout.split('\n')[0]!
    assert.ok(tgz.endsWith('.tgz') && existsSync(tgz), made.stdout)

    const prefix = join(work, 'prefix')
    const inst = await runCommand('npm', ['install', '-g', '--prefix', prefix, '--offline', '--no-audit', '--no-fund', tgz], { timeoutMs: 90_000 })
    assert.equal(inst.code, 0, inst.stderr)
    assert.doesNotMatch(inst.stderr, /install-scripts|prepare/, 'no install script to allow')
    const bin = join(prefix, 'bin', 'meshcc')
    const real = realpathSync(bin)
    assert.ok(real.startsWith(realpathSync(prefix)), `the command lives in the install, not in the checkout: ${real}`)
    const pkg = JSON.parse(readFileSync(join(prefix, 'lib', 'node_modules', 'meshcc', 'package.json'), 'utf8')) as Record<string, unknown>
    assert.equal(pkg.dependencies, undefined, 'nothing to fetch')
    assert.equal(pkg.scripts, undefined)

    const home = join(work, 'home')
    writeFileSync(join(work, 'c.toml'), `[daemon]\nsocket = "${join(work, 'run', 'd.sock')}"\n[cache]\ndir = "${join(home, 'cache')}"\n[mesh]\nenabled = false\n`)
    const env = { ...process.env, MESHCC_CONF: join(work, 'c.toml'), PATH: `${join(prefix, 'bin')}:${process.env.PATH}` }
    writeFileSync(join(work, 'a.c'), 'int twice(int x) { return 2 * x; }\n')
    const v = await runCommand('meshcc', ['--version'], { env })
    assert.match(v.stdout, /^meshcc \d+\.\d+\.\d+\n/)
    const r = await runCommand('meshcc', ['gcc', '-c', 'a.c', '-o', 'a.o'], { cwd: work, env })
    assert.equal(r.code, 0, r.stderr)
    const plain = await runCommand('gcc', ['-c', 'a.c', '-o', 'plain.o'], { cwd: work })
    assert.equal(plain.code, 0)
    assert.ok(readFileSync(join(work, 'a.o')).equals(readFileSync(join(work, 'plain.o'))), 'the same object as plain gcc')
    const s = await runCommand('meshcc', ['-s', '--stats-format', 'json'], { env })
    assert.equal(JSON.parse(s.stdout).cache_misses, 1, 'it went through the daemon')

    // an upgrade replaces the installed files; the idle daemon restarts into them by itself
    const pidFile = join(work, 'run', 'd.sock.pid')
    const oldPid = Number(readFileSync(pidFile, 'utf8'))
    const main = join(prefix, 'lib', 'node_modules', 'meshcc', 'dist', 'cli', 'main.js')
    copyFileSync(main, `${main}.new`)
    renameSync(`${main}.new`, main)
    const deadline = Date.now() + 30_000
    let newPid = oldPid
    while (Date.now() < deadline) {
      try { newPid = Number(readFileSync(pidFile, 'utf8')) } catch { /* between the two daemons */ }
      if (newPid !== oldPid && newPid > 0) break
      await new Promise((r) => setTimeout(r, 200))
    }
    assert.notEqual(newPid, oldPid, 'the daemon restarted into the upgraded files')
    const again = await runCommand('meshcc', ['gcc', '-c', 'a.c', '-o', 'b.o'], { cwd: work, env })
    assert.equal(again.code, 0, again.stderr)
    assert.ok(readFileSync(join(work, 'b.o')).equals(readFileSync(join(work, 'plain.o'))))
    assert.equal((await runCommand('meshcc', ['--stop-server'], { env })).code, 0)

    const un = await runCommand('npm', ['uninstall', '-g', '--prefix', prefix, 'meshcc'], { timeoutMs: 60_000 })
    assert.equal(un.code, 0, un.stderr)
    assert.equal(existsSync(bin), false)
  } finally {
    // a daemon this test started (the pid lock beside its socket), also when an assertion failed
    try { process.kill(Number(readFileSync(join(work, 'run', 'd.sock.pid'), 'utf8')), 'SIGKILL') } catch { /* not running */ }
    rmSync(work, { recursive: true, force: true })
  }
})
