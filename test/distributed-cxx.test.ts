// Units whose preprocessor output is not the textbook kind, compiled through a mesh of fresh
// daemons: a client with local_slots = 0 and two builders whose job trees start empty (a kept
// tree that already held a header would hide a header the client forgot to ship). gcc's
// -fdirectives-only output, on which such units are keyed and shipped, indents the line marker
// of an indented #include (libstdc++'s <locale> has one) and ignores a digraph "%:include";
// the client must still ship every header, never key or record a manifest without one, and a
// builder that cannot preprocess must say why.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { runCommand, type Instance } from './helpers/meshcc.js'
import { startDistMesh, type DistMesh } from './helpers/dist-mesh.js'

let mesh: DistMesh
before(async () => { mesh = await startDistMesh('dcxx') })
after(async () => { await mesh?.stop() })

/** Files changed within the last second are "too new" to go into a manifest. */
const settle = () => sleep(1100)

function logLines(i: Instance, pattern: RegExp): string[] {
  return readFileSync(join(i.cacheDir, 'meshcc.log'), 'utf8').split('\n').filter((l) => pattern.test(l))
}

/** A directory of its own under the client, so each unit gets a fresh job tree on the builders. */
function unitDir(name: string): string {
  const dir = join(mesh.client.dir, name)
  mkdirSync(dir, { recursive: true })
  return dir
}

/** Compile plainly and through the client: the client's compile must run on a builder at the first attempt and write the same object. */
async function remoteAtFirstAttempt(compiler: string, args: string[], dir: string, obj: string): Promise<void> {
  const plain = await runCommand(compiler, [...args, '-o', `plain-${obj}`], { cwd: dir })
  assert.equal(plain.code, 0, plain.stderr)
  const before = await mesh.client.stats()
  const r = await mesh.client.run([compiler, ...args, '-o', obj], { cwd: dir, timeoutMs: 150_000 })
  assert.equal(r.code, 0, r.stderr)
  const after = await mesh.client.stats()
  const why = () => `retries ${JSON.stringify(after.retry_reasons)}, fallbacks ${JSON.stringify(after.fallback_reasons)}; client log:\n${logLines(mesh.client, /did not complete|here after|cannot ship/).slice(-4).join('\n')}`
  assert.equal(after.remote_compiles - before.remote_compiles, 1, `compiled on a builder (${why()})`)
  assert.equal(after.remote_retries - before.remote_retries, 0, `no retry (${why()})`)
  assert.equal(after.local_compiles - before.local_compiles, 0, 'nothing compiled here')
  assert.ok(readFileSync(join(dir, obj)).equals(readFileSync(join(dir, `plain-${obj}`))), `${obj} is what ${compiler} makes`)
}

test('a C++ unit that includes <locale> (an indented #include inside libstdc++) is compiled remotely at the first attempt, byte-identical (-g)', { timeout: 180_000 }, async () => {
  const dir = unitDir('locale')
  writeFileSync(join(dir, 'fmt.cpp'), [
    '#include <iostream>', '#include <locale>', '#include <sstream>', '#include <string>',
    'std::string when(const std::tm &t) {', '  std::ostringstream os;', '  os.imbue(std::locale::classic());',
    '  const std::time_put<char> &tp = std::use_facet<std::time_put<char>>(os.getloc());',
    '  tp.put(os, os, \' \', &t, \'Y\');', '  return os.str();', '}', ''].join('\n'))
  await remoteAtFirstAttempt('g++', ['-g', '-O1', '-std=c++17', '-c', 'fmt.cpp'], dir, 'fmt.o')
})

test('the minimal case, "int a;" then "  #include <z.h>" with -I dir, is compiled remotely at the first attempt', { timeout: 120_000 }, async () => {
  const dir = unitDir('minimal')
  mkdirSync(join(dir, 'dir'))
  writeFileSync(join(dir, 'dir', 'z.h'), 'int z = 7;\n')
  writeFileSync(join(dir, 'm.c'), 'int a;\n  #include <z.h>\n')
  await remoteAtFirstAttempt('gcc', ['-g', '-I', 'dir', '-c', 'm.c'], dir, 'm.o')
})

/** Compile `src` through the client, change `header`, compile again: the second object must be the new one. */
async function noStaleObject(dir: string, src: string, header: string, versions: [string, string]): Promise<void> {
  writeFileSync(join(dir, header), versions[0])
  await settle()
  const args = ['-O2', '-c', src, '-o', 'out.o']
  const r1 = await mesh.client.run(['gcc', ...args], { cwd: dir })
  assert.equal(r1.code, 0, r1.stderr)
  writeFileSync(join(dir, header), versions[1])
  await settle()
  const before = await mesh.client.stats()
  const r2 = await mesh.client.run(['gcc', ...args], { cwd: dir })
  assert.equal(r2.code, 0, r2.stderr)
  const after = await mesh.client.stats()
  const plain = await runCommand('gcc', [...args.slice(0, -1), 'plain.o'], { cwd: dir })
  assert.equal(plain.code, 0, plain.stderr)
  assert.equal(after.cache_hits - before.cache_hits, 0, `no hit after ${header} changed (direct hits: ${after.direct_hits - before.direct_hits})`)
  assert.ok(readFileSync(join(dir, 'out.o')).equals(readFileSync(join(dir, 'plain.o'))), `the object reflects the changed ${header}`)
}

test('a changed header behind an indented #include is never answered from the first compile\'s manifest (direct mode)', { timeout: 120_000 }, async () => {
  const dir = unitDir('direct-indented')
  writeFileSync(join(dir, 'u.c'), '#define WITH_CONF 1\n#ifdef WITH_CONF\n  #include "conf.h"\n#endif\nint value(void) { return CONF; }\n')
  await noStaleObject(dir, 'u.c', 'conf.h', ['#define CONF 1\n', '#define CONF 2\n'])
})

test('a header included by a digraph "%:include" (which -fdirectives-only leaves alone) is in the key: no stale hit when it changes', { timeout: 120_000 }, async () => {
  const dir = unitDir('digraph')
  writeFileSync(join(dir, 'dg.c'), '%:include "dg.h"\nint value(void) { return DG; }\n')
  await noStaleObject(dir, 'dg.c', 'dg.h', ['#define DG 1\n', '#define DG 2\n'])
})

test('a builder that cannot preprocess a job sends back and logs the compiler\'s diagnostics, not just their first line', { timeout: 120_000 }, async () => {
  const dir = unitDir('builder-diagnostics')
  // "#pragma GCC dependency" reads a file no line marker names: a builder never has it. The
  // warning before it is the first line of the preprocessor's stderr, the cause comes after.
  writeFileSync(join(dir, 'gen.y'), '%%\n')
  const old = new Date(Date.now() - 3600_000)
  utimesSync(join(dir, 'gen.y'), old, old)
  writeFileSync(join(dir, 'p.c'), '#warning generated parser\n#pragma GCC dependency "gen.y"\nint p;\n')
  const r = await mesh.client.run(['gcc', '-c', 'p.c', '-o', 'p.o'], { cwd: dir })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stderr, /warning: #warning generated parser/)
  const cause = /preprocessing failed here: .*#warning generated parser.*gen\.y: No such file or directory/
  const client = logLines(mesh.client, /did not complete/)
  assert.ok(client.some((l) => cause.test(l)), `the client's log names the cause:\n${client.slice(-3).join('\n')}`)
  const builders = mesh.builders.flatMap((b) => logLines(b, /preprocessing failed here/))
  assert.ok(builders.some((l) => cause.test(l)), `a builder's log names the cause:\n${builders.slice(-3).join('\n')}`)
})
