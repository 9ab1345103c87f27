// The daemon answers a miss before its entry is on disk. The same compile asked again while the
// entry is still being stored (the next step of a build, a second checkout) must wait for it
// and hit, not compile again. The store is slowed for this test (MESHCC_TEST_STORE_DELAY_MS, a
// slow disk), so the second request always arrives while the first entry is being written.
// Real gcc, real daemon.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createInstance, runCommand, type Instance } from './helpers/meshcc.js'

const instances: Instance[] = []
after(async () => { for (const i of instances) await i.stop() })

const STORE_DELAY_MS = 1500

for (const [mode, direct] of [['depend (the default)', true], ['preprocessor', false]] as const) {
  test(`${mode} mode: a compile asked again while its entry is being stored is a hit`, { timeout: 60_000 }, async () => {
    const inst = createInstance('', 'inflight')
    if (!direct) writeFileSync(inst.conf, readFileSync(inst.conf, 'utf8').replace('[cache]\n', '[cache]\ndirect = false\n'))
    instances.push(inst)
    inst.env.MESHCC_TEST_STORE_DELAY_MS = String(STORE_DELAY_MS)
    writeFileSync(join(inst.dir, 'u.c'), '#include <stdio.h>\nint u(void) { return printf("u\\n"); }\n')
    await sleep(1100) // files this new are not trusted into a manifest
    const args = ['gcc', '-O2', '-c', 'u.c', '-o', 'u.o']
    const first = await inst.run(args)
    assert.equal(first.code, 0, first.stderr)
    const t0 = Date.now()
    const second = await inst.run(args)
    const waited = Date.now() - t0
    assert.equal(second.code, 0, second.stderr)
    const plain = await runCommand('gcc', ['-O2', '-c', 'u.c', '-o', 'plain.o'], { cwd: inst.dir })
    assert.equal(plain.code, 0, plain.stderr)
    assert.ok(readFileSync(join(inst.dir, 'u.o')).equals(readFileSync(join(inst.dir, 'plain.o'))), 'the object is what gcc makes')
    const s = await inst.stats()
    assert.equal(s.cache_misses, 1, `one miss (the first compile): ${JSON.stringify({ hits: s.cache_hits, misses: s.cache_misses })}`)
    assert.equal(s.cache_hits, 1, `the second compile hit, after waiting ${waited} ms for the entry`)
  })
}
