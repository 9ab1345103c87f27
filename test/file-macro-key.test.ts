// A unit that may go to a peer is keyed on its -fdirectives-only text, where __FILE__ and its
// kin stay unexpanded: they take the file's name from the line markers when compiled. Such a
// unit used to be preprocessed a second time, fully, on the client (almost every kernel unit
// names __FILE__ in a header's macros); now its key holds the names those macros expand to.
// Checked here with a real mesh (one builder, a client with local_slots = 0) and real gcc: the
// unit is preprocessed once; a second checkout at another absolute path, whose key text is the
// same relative to its working directory, misses (its __FILE__ differs) and gets gcc's own
// object; with -fmacro-prefix-map mapping the checkout away, it hits, byte-identical again.
import { test, after, before } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { runCommand, type Instance } from './helpers/meshcc.js'
import { startDistMesh, type DistMesh } from './helpers/dist-mesh.js'

let mesh: DistMesh
let client: Instance
before(async () => {
  mesh = await startDistMesh('filemacro', 1)
  client = mesh.client
})
after(async () => { await mesh?.stop() })

const SOURCE = '#include "where.h"\nconst char *here(void) { return __FILE__; }\nconst char *header(void) { return where_h(); }\n'
const HEADER = 'static inline const char *where_h(void) { return __FILE__ ":" __FILE_NAME__; }\n'

/** The project at <top>/<name>, built CMake-style: absolute source and include paths. */
function checkout(top: string, name: string): string {
  const root = join(top, name, 'proj')
  mkdirSync(join(root, 'include'), { recursive: true })
  writeFileSync(join(root, 'include', 'where.h'), HEADER)
  writeFileSync(join(root, 'unit.c'), SOURCE)
  return root
}

/** Compile in `root` through the client and plainly: the same object; the stats moved by this compile. */
async function build(root: string, extra: string[]): Promise<Record<string, number>> {
  const args = ['-O1', ...extra.map((a) => a.replaceAll('$ROOT', root)), `-I${root}/include`, '-c', `${root}/unit.c`]
  const plain = await runCommand('gcc', [...args, '-o', 'plain.o'], { cwd: root })
  assert.equal(plain.code, 0, plain.stderr)
  const s0 = await client.stats()
  const r = await client.run(['gcc', ...args, '-o', 'unit.o'], { cwd: root, timeoutMs: 150_000 })
  assert.equal(r.code, 0, r.stderr)
  const s1 = await client.stats()
  assert.ok(readFileSync(join(root, 'unit.o')).equals(readFileSync(join(root, 'plain.o'))), `${root}/unit.o is what gcc makes there`)
  const moved: Record<string, number> = {}
  for (const k of ['directives_only', 'cache_hits', 'cache_misses', 'remote_compiles', 'local_compiles']) moved[k] = (s1[k] as number) - (s0[k] as number)
  return moved
}

test('a unit naming __FILE__ is preprocessed once, keyed by the names __FILE__ expands to', { timeout: 240_000 }, async () => {
  const top = join(client.dir, 'checkouts')
  const a = checkout(top, 'ci')
  const b = checkout(top, 'developer-home')
  await sleep(1100) // files this new are not trusted into a manifest

  const first = await build(a, [])
  assert.equal(first.directives_only, 1, 'keyed on its -fdirectives-only text, no full preprocessing after it')
  assert.equal(first.cache_misses, 1)
  assert.equal(first.remote_compiles, 1, 'compiled on the builder')
  // the same text relative to the working directory, another absolute path: __FILE__ differs
  const other = await build(b, [])
  assert.equal(other.cache_hits, 0, 'no hit from the other checkout: its __FILE__ names another path')
  assert.equal(other.directives_only, 1)

  // the build maps its checkout away: the expansions are the same, so is the object
  const mapped = ['-fmacro-prefix-map=$ROOT/=']
  assert.equal((await build(a, mapped)).cache_misses, 1)
  const hit = await build(b, mapped)
  assert.equal(hit.cache_hits, 1, 'a hit from the other checkout once the prefix map hides the path')
})
