// End to end with real compilers: real projects built through meshcc twice, compared byte
// for byte with a plain build (objects, depfiles, warnings).
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { cpSync, existsSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { assertSameFiles, snapshot } from './helpers/compare.js'
import { createInstance, haveCommand, runCommand, MESHCC, type Instance } from './helpers/meshcc.js'
import { C_UNITS, CXX_UNITS, writeCProject, writeCxxProject } from './helpers/projects.js'

const instances: Instance[] = []
after(async () => { for (const i of instances) await i.stop() })

for (const [cc, label] of [['gcc', 'gcc'], ['clang', 'clang']] as const) {
  test(`C project via make with ${label}: second build all hits, objects, depfiles and warnings identical to plain`, async () => {
    const inst = createInstance('', `build-${label}`)
    instances.push(inst)
    const proj = join(inst.dir, 'proj')
    writeCProject(proj)

    const plain = await runCommand('make', ['-j2', `CC=${cc}`], { cwd: proj })
    assert.equal(plain.code, 0, plain.stderr)
    const plainObjs = snapshot(join(proj, 'build'), ['.o', '.d'])
    assert.equal([...plainObjs.keys()].filter((f) => f.endsWith('.o')).length, C_UNITS.length)
    assert.match(plain.stderr, /unused_variable/)
    await runCommand('make', ['clean'], { cwd: proj })

    const cold = await inst.run(['-j2', `CC=${MESHCC} ${cc}`], { cmd: 'make', cwd: proj })
    assert.equal(cold.code, 0, cold.stderr)
    assertSameFiles(snapshot(join(proj, 'build'), ['.o', '.d']), plainObjs, 'cold build')
    const s1 = await inst.stats()
    assert.equal(s1.cache_misses, C_UNITS.length)
    assert.equal(s1.cache_hits, 0)
    await runCommand('make', ['clean'], { cwd: proj })

    const warm = await inst.run(['-j2', `CC=${MESHCC} ${cc}`], { cmd: 'make', cwd: proj })
    assert.equal(warm.code, 0, warm.stderr)
    assertSameFiles(snapshot(join(proj, 'build'), ['.o', '.d']), plainObjs, 'warm build')
    const s2 = await inst.stats()
    assert.equal(s2.cache_hits, C_UNITS.length, 'every TU is a hit on the second build')
    assert.equal(s2.cache_misses, C_UNITS.length, 'no new misses')
    assert.equal(s2.fallbacks, 0)
    // the warning is replayed on the hit, exactly as the compiler printed it
    const warnLines = (s: string) => s.split('\n').filter((l) => l.includes('warn.c')).join('\n')
    assert.ok(warnLines(warm.stderr).length > 0, 'warning replayed on a hit')
    assert.equal(warnLines(warm.stderr), warnLines(plain.stderr))
    const app = await runCommand(join(proj, 'build', 'app'), [])
    assert.equal(app.stdout, '6 3 16.41 2 9\n')
  })
}

test('C++ project via CMake + ninja with CMAKE_CXX_COMPILER_LAUNCHER=meshcc (g++ and clang++)', { skip: !haveCommand('cmake') || !haveCommand('ninja') ? 'cmake or ninja missing' : false }, async () => {
  const inst = createInstance('', 'cmake')
  instances.push(inst)
  const src = join(inst.dir, 'cxx')
  writeCxxProject(src)
  for (const cxx of ['g++', 'clang++']) {
    const objDir = (b: string) => join(b, 'CMakeFiles', 'app.dir', 'src')
    const configure = (b: string, launcher: boolean) => runCommand('cmake', ['-S', src, '-B', b, '-G', 'Ninja', `-DCMAKE_CXX_COMPILER=${cxx}`, '-DCMAKE_BUILD_TYPE=Debug',
      ...(launcher ? [`-DCMAKE_CXX_COMPILER_LAUNCHER=${MESHCC}`] : [])], { cwd: inst.dir, env: inst.env })
    const plainDir = join(inst.dir, `plain-${cxx}`)
    assert.equal((await configure(plainDir, false)).code, 0)
    const p = await runCommand('ninja', ['-C', plainDir], { env: inst.env })
    assert.equal(p.code, 0, p.stdout + p.stderr)
    const expected = snapshot(objDir(plainDir), ['.o', '.d'])
    // same path, so debug info (comp dir) matches: move the plain build aside, build with meshcc where it was
    const aside = join(inst.dir, `aside-${cxx}`)
    cpSync(objDir(plainDir), aside, { recursive: true })
    rmSync(plainDir, { recursive: true, force: true })
    assert.equal((await configure(plainDir, true)).code, 0)
    const before = await inst.stats()
    for (let round = 0; round < 2; round++) {
      const b = await runCommand('ninja', ['-C', plainDir], { env: inst.env, timeoutMs: 120_000 })
      assert.equal(b.code, 0, b.stdout + b.stderr)
      const got = snapshot(objDir(plainDir), ['.o', '.d'])
      assertSameFiles(got, snapshot(aside, ['.o', '.d']), `${cxx} round ${round}`)
      if (round === 0) assert.equal((await runCommand('ninja', ['-C', plainDir, '-t', 'clean'], { env: inst.env })).code, 0)
    }
    const after = await inst.stats()
    assert.equal(after.cache_hits - before.cache_hits, CXX_UNITS.length, `${cxx}: second ninja build all hits`)
    assert.ok(expected.size > 0)
    const run = await runCommand(join(plainDir, 'app'), [])
    assert.equal(run.stdout, '7.14159 3 6\n')
  }
})

test('the masquerade directory: a link named gcc in front of PATH goes through meshcc', async () => {
  const inst = createInstance('', 'masq')
  instances.push(inst)
  const { symlinkSync, mkdirSync, writeFileSync } = await import('node:fs')
  const masq = join(inst.dir, 'masq')
  mkdirSync(masq)
  symlinkSync(MESHCC, join(masq, 'gcc'))
  symlinkSync(MESHCC, join(masq, 'cc'))
  writeFileSync(join(inst.dir, 'm.c'), 'int m(void) { return 42; }\n')
  const env = { PATH: `${masq}:${process.env.PATH}` }
  for (const name of ['gcc', 'cc']) {
    const r = await inst.run(['-c', 'm.c', '-o', `m-${name}.o`], { cmd: name, env })
    assert.equal(r.code, 0, r.stderr)
    assert.ok(existsSync(join(inst.dir, `m-${name}.o`)))
  }
  const s = await inst.stats()
  assert.equal(s.compile_requests, 2)
  assert.equal(s.cache_misses + s.cache_hits, 2)
})
