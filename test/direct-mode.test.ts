// Direct mode: a hit found from the hashes of the included files, without running the
// preprocessor, and never a stale object when a header changes. Real gcc, real daemon.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { copyFileSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createInstance, haveCommand, runCommand, type Instance } from './helpers/meshcc.js'

const instances: Instance[] = []
after(async () => { for (const i of instances) await i.stop() })

/** Files changed (mtime or ctime) within the last second are "too new" to go into a manifest. */
const settle = () => sleep(1100)

async function project(name: string, extra = ''): Promise<Instance> {
  const inst = createInstance(extra, name)
  instances.push(inst)
  writeFileSync(join(inst.dir, 'h.h'), '#define VALUE 41\n')
  writeFileSync(join(inst.dir, 'd.c'), '#include "h.h"\n#include <stdio.h>\n#warning replayed\nint d(void) { return VALUE + 1; }\n')
  await settle()
  return inst
}

async function compile(inst: Instance, out: string, extra: string[] = [], env: Record<string, string> = {}) {
  const args = ['gcc', '-O2', '-MD', '-MF', `${out}.d`, ...extra, '-c', 'd.c', '-o', out]
  const r = await inst.run(args, { env })
  assert.equal(r.code, 0, r.stderr)
  const plain = await runCommand('gcc', args.slice(1).map((a) => (a === out ? 'plain.o' : a === `${out}.d` ? 'plain.d' : a)), { cwd: inst.dir })
  assert.equal(plain.code, 0)
  assert.ok(readFileSync(join(inst.dir, out)).equals(readFileSync(join(inst.dir, 'plain.o'))), `${out} is byte-identical to gcc's`)
  assert.equal(readFileSync(join(inst.dir, `${out}.d`), 'utf8').replace(new RegExp(`^${out}:`), 'X:'),
    readFileSync(join(inst.dir, 'plain.d'), 'utf8').replace(/^plain\.o:/, 'X:'), 'depfile as gcc writes it')
  assert.equal(r.stderr, plain.stderr, 'warnings replayed')
  return r
}

test('the second identical compile is a direct hit; outputs, depfile and warnings as gcc gives them', async () => {
  const inst = await project('direct')
  await compile(inst, 'a.o')
  let s = await inst.stats()
  assert.equal(s.cache_misses, 1)
  assert.equal(s.direct_hits, 0)
  await compile(inst, 'a.o')
  s = await inst.stats()
  assert.equal(s.cache_hits, 1)
  assert.equal(s.direct_hits, 1)
  // touching a header without changing it keeps the hit: contents count, not timestamps
  const past = new Date(Date.now() - 60_000)
  utimesSync(join(inst.dir, 'h.h'), past, past)
  await compile(inst, 'a.o')
  s = await inst.stats()
  assert.equal(s.direct_hits, 2)
})

test('a changed header is never answered from the old manifest, and both versions hit afterwards', async () => {
  const inst = await project('direct-hdr')
  await compile(inst, 'a.o')
  writeFileSync(join(inst.dir, 'h.h'), '#define VALUE 99\n')
  await settle()
  await compile(inst, 'a.o') // compile() compares with plain gcc: a stale object fails here
  let s = await inst.stats()
  assert.equal(s.cache_misses, 2)
  assert.equal(s.direct_hits, 0)
  writeFileSync(join(inst.dir, 'h.h'), '#define VALUE 41\n')
  await settle()
  await compile(inst, 'a.o')
  writeFileSync(join(inst.dir, 'h.h'), '#define VALUE 99\n')
  await settle()
  await compile(inst, 'a.o')
  s = await inst.stats()
  assert.equal(s.direct_hits, 2, 'one manifest remembers both header versions')
  await compile(inst, 'a.o', ['-DEXTRA=1'])
  s = await inst.stats()
  assert.equal(s.cache_misses, 3, 'another define is another command')
})

test('a header changed moments before the compile is not trusted into a manifest', async () => {
  const inst = await project('direct-new')
  writeFileSync(join(inst.dir, 'h.h'), '#define VALUE 7\n')
  // a timestamp ahead of the clock stays "just changed" however slowly this machine runs
  const future = new Date(Date.now() + 3_600_000)
  utimesSync(join(inst.dir, 'h.h'), future, future)
  await compile(inst, 'a.o')
  await compile(inst, 'a.o')
  let s = await inst.stats()
  assert.equal(s.direct_hits, 0, 'nothing was recorded while the header was new')
  assert.equal(s.cache_hits, 0, 'a compile without the preprocessor stores nothing it cannot key safely')
  const past = new Date(Date.now() - 60_000)
  utimesSync(join(inst.dir, 'h.h'), past, past)
  await sleep(1200) // and its ctime settles
  await compile(inst, 'a.o') // the header has settled: this compile is recorded
  await compile(inst, 'a.o')
  s = await inst.stats()
  assert.equal(s.direct_hits, 1)
})

test('a source compiled right after it was saved still hits next time (its result is under the preprocessed key)', async () => {
  const inst = await project('direct-fresh')
  const src = join(inst.dir, 'd.c')
  writeFileSync(src, readFileSync(src, 'utf8') + 'int fresh;\n')
  const future = new Date(Date.now() + 3_600_000) // "just saved", however slow this machine is
  utimesSync(src, future, future)
  await compile(inst, 'a.o')
  const past = new Date(Date.now() - 60_000)
  utimesSync(src, past, past)
  await settle()
  await compile(inst, 'a.o') // settled now: without the hint this would be a depend-mode miss
  let s = await inst.stats()
  assert.equal(s.cache_misses, 1)
  assert.equal(s.cache_hits, 1)
  await compile(inst, 'a.o')
  s = await inst.stats()
  assert.equal(s.direct_hits, 1, 'the preprocessed hit recorded the manifest')
})

test('__TIME__ in the source disables direct mode for it', async () => {
  const inst = await project('direct-time')
  writeFileSync(join(inst.dir, 'd.c'), '#include "h.h"\nconst char *built = "x" __TIME__;\nint d(void) { return VALUE; }\n')
  await settle()
  for (let i = 0; i < 2; i++) {
    const r = await inst.run(['gcc', '-c', 'd.c', '-o', 't.o'])
    assert.equal(r.code, 0, r.stderr)
  }
  const s = await inst.stats()
  assert.equal(s.direct_hits, 0)
})

test('MESHCC_DIRECT=0 (or [cache] direct = false) always runs the preprocessor', async () => {
  const inst = await project('direct-off', '')
  writeFileSync(inst.conf, readFileSync(inst.conf, 'utf8').replace('[cache]\n', '[cache]\ndirect = false\n'))
  await compile(inst, 'a.o')
  await compile(inst, 'a.o')
  const s = await inst.stats()
  assert.equal(s.cache_hits, 1)
  assert.equal(s.direct_hits, 0)
})

test('a miss runs no preprocessor (depend mode); -MMD qualifies only with -nostdinc', async () => {
  const inst = await project('direct-depend')
  await compile(inst, 'a.o')
  let s = await inst.stats()
  assert.equal(s.cache_misses, 1)
  // the compiler's own depfile listed the headers: the next lookup hits without -E
  await compile(inst, 'a.o')
  s = await inst.stats()
  assert.equal(s.direct_hits, 1)
  // -MMD drops system headers from the list, so with <stdio.h> it takes the preprocessed path;
  // the manifest then comes from the line markers, which name every header
  const mmd = ['gcc', '-O2', '-MMD', '-c', 'd.c', '-o', 'm.o']
  assert.equal((await inst.run(mmd)).code, 0)
  assert.equal((await inst.run(mmd)).code, 0)
  s = await inst.stats()
  assert.equal(s.direct_hits, 2)
  assert.equal(readFileSync(join(inst.dir, 'm.d'), 'utf8'), 'm.o: d.c h.h\n')
  // a stdio.h of our own through -nostdinc: no system directories, so -MMD lists everything
  writeFileSync(join(inst.dir, 'stdio.h'), 'int puts(const char *);\n')
  await settle()
  const own = ['gcc', '-O2', '-nostdinc', '-I.', '-MMD', '-c', 'd.c', '-o', 'n.o']
  assert.equal((await inst.run(own)).code, 0)
  assert.equal((await inst.run(own)).code, 0)
  assert.equal(readFileSync(join(inst.dir, 'n.d'), 'utf8'), 'n.o: d.c h.h stdio.h\n')
  s = await inst.stats()
  assert.equal(s.direct_hits, 3)
  writeFileSync(join(inst.dir, 'stdio.h'), 'int puts(const char *); int other;\n')
  await settle()
  assert.equal((await inst.run(own)).code, 0)
  s = await inst.stats()
  assert.equal(s.direct_hits, 3, 'a changed header listed by -MMD is a miss')
  const log = readFileSync(join(inst.cacheDir, 'meshcc.log'), 'utf8')
  assert.equal(log.match(/miss \(depend mode\)/g)?.length, 3, 'the -MD, the -nostdinc and the changed-header misses ran without -E')
  // the compiler's outputs were moved into place (renamed), not copied: nothing of ours is left
  await inst.run(['gcc', '-O2', '-MD', '-c', 'd.c', '-o', 'p.o'])
  assert.deepEqual(readdirSync(inst.dir).filter((n) => n.includes('meshcc-tmp')), [], 'no temp file beside the outputs')
  assert.equal(readFileSync(join(inst.dir, 'p.d'), 'utf8').split(':')[0], 'p.o', 'the depfile names the object, not its temp')
})

test('-MMD leaves out what a self-declared system header includes, however it declares itself: such a list makes no manifest', { timeout: 120_000 }, async () => {
  const spellings: Array<[string, string]> = [
    ['clang', '_Pragma("GCC system_header")'], ['gcc', '#pragma /* vendored */ GCC system_header'],
    ['gcc', '%:pragma GCC system_header'], ['gcc', '# 1 "outer.h" 3']
  ]
  const stale: string[] = []
  for (const [cc, declaration] of spellings) {
    if (cc === 'clang' && !haveCommand('clang')) continue
    const inst = createInstance('', 'direct-sys')
    instances.push(inst)
    writeFileSync(join(inst.dir, 'inner.h'), '#define INNER 1\n')
    writeFileSync(join(inst.dir, 'outer.h'), `${declaration}\n#include "inner.h"\n`)
    writeFileSync(join(inst.dir, 's.c'), '#include "outer.h"\nint s(void) { return INNER; }\n')
    await settle()
    const args = ['-O2', '-nostdinc', '-I.', '-MMD', '-c', 's.c', '-o', 's.o']
    for (let i = 0; i < 2; i++) assert.equal((await inst.run([cc, ...args])).code, 0)
    // the compiler's own list: inner.h is not in it
    assert.equal(readFileSync(join(inst.dir, 's.d'), 'utf8'), 's.o: s.c outer.h\n', `${cc} with ${declaration}`)
    writeFileSync(join(inst.dir, 'inner.h'), '#define INNER 2\n')
    await settle()
    assert.equal((await inst.run([cc, ...args])).code, 0)
    const plain = await runCommand(cc, [...args.slice(0, -1), 'plain.o'], { cwd: inst.dir })
    assert.equal(plain.code, 0, plain.stderr)
    if (!readFileSync(join(inst.dir, 's.o')).equals(readFileSync(join(inst.dir, 'plain.o')))) stale.push(`${cc} with ${declaration}`)
  }
  assert.deepEqual(stale, [], 'stale objects: inner.h changed, the object did not')
})

test('a manifest or an entry copied under another command\'s name is a miss counted in cache_errors, never that command\'s object', async () => {
  const inst = await project('direct-misplaced')
  const files = (dir: string, name: RegExp) => {
    const out: string[] = []
    for (const d of readdirSync(dir)) if (/^[0-9a-f]{2}$/.test(d)) for (const f of readdirSync(join(dir, d))) if (name.test(f)) out.push(join(dir, d, f))
    return out.sort()
  }
  const manifests = () => files(join(inst.cacheDir, 'manifests'), /^[0-9a-f]{64}$/)
  const entries = () => files(inst.cacheDir, /^[0-9a-f]{64}$/)
  await compile(inst, 'a.o') // -O2
  const [manifestO2, entryO2] = [manifests(), entries()]
  assert.equal(manifestO2.length, 1)
  assert.equal(entryO2.length, 1)
  await compile(inst, 'a.o', ['-O0'])
  const manifestO0 = manifests().filter((f) => f !== manifestO2[0])
  const entryO0 = entries().filter((f) => f !== entryO2[0])
  assert.equal(manifestO0.length, 1)
  assert.equal(entryO0.length, 1)

  // the -O2 command's manifest under the -O0 command's name: it points at the -O2 object
  copyFileSync(manifestO2[0]!, manifestO0[0]!)
  await compile(inst, 'a.o', ['-O0']) // compile() compares with gcc -O0's own object
  let s = await inst.stats()
  assert.equal(s.cache_errors, 1, 'the misplaced manifest is counted')
  assert.equal(s.direct_hits, 0)

  // the -O2 object's entry under the -O0 result's name
  copyFileSync(entryO2[0]!, entryO0[0]!)
  await compile(inst, 'a.o', ['-O0'])
  s = await inst.stats()
  assert.equal(s.cache_errors, 2, 'the misplaced entry is counted')
  assert.equal(s.cache_hits, 0)
  await compile(inst, 'a.o', ['-O0'])
  s = await inst.stats()
  assert.equal(s.direct_hits, 1, 'and both are whole again afterwards')
})

test('a manifest with one character changed that still reads as a manifest is damage, counted in cache_errors', async () => {
  const inst = await project('direct-flipped')
  await compile(inst, 'a.o')
  const dir = join(inst.cacheDir, 'manifests')
  const [sub] = readdirSync(dir).filter((d) => /^[0-9a-f]{2}$/.test(d))
  const [name] = readdirSync(join(dir, sub!))
  const file = join(dir, sub!, name!)
  // one hex digit of the header's recorded hash: still JSON, still a manifest of this command,
  // but it no longer says what was compiled (npm run chaos flips random bytes this way)
  const text = readFileSync(file, 'utf8')
  const at = text.indexOf('h.h"') + 6
  writeFileSync(file, text.slice(0, at) + (text[at] === '0' ? '1' : '0') + text.slice(at + 1))
  await compile(inst, 'a.o')
  const s = await inst.stats()
  assert.equal(s.cache_errors, 1, 'the changed manifest is counted')
  assert.equal(s.direct_hits, 0)
})
