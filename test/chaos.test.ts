// `npm run chaos -- --quick` as CI runs it: a short version of every row of the chaos harness
// (scripts/chaos.ts: daemons SIGKILLed mid-build, damaged cache entries, fuzzed protocols, a
// hostile member's jobs and archives, …), each of which must show 0 failures. The harness runs
// as a child process and reports its rows as JSON; this test reads them.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { REPO } from './helpers/meshcc.js'

interface RowResult { id: string; trials: number; failures: number; reasons: string[]; figures: string[] }

const ROWS = ['builder-kill', 'client-kill', 'cache-damage', 'concurrent', 'launcher-fuzz', 'mesh-fuzz', 'hostile-jobs', 'intruders', 'toolchain-archives', 'shim-fuzz', 'full-disk']

test('npm run chaos -- --quick: every row, 0 failures', {
  timeout: 30 * 60_000,
  skip: process.getuid?.() !== 0 ? 'needs root: network namespaces and a tmpfs mount' : false
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshcc-chaos-test-'))
  try {
    const json = join(dir, 'chaos.json')
    const code = await new Promise<number | null>((resolve) => {
      const child = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'scripts', 'chaos.ts'), '--quick', '--json', json, '--out', join(dir, 'chaos.md')],
        { cwd: REPO, stdio: ['ignore', 'inherit', 'inherit'] })
      child.on('exit', (c) => resolve(c))
    })
    const { results } = JSON.parse(readFileSync(json, 'utf8')) as { results: RowResult[] }
    assert.deepEqual(results.map((r) => r.id), ROWS, 'every row ran')
    for (const r of results) {
      assert.ok(r.trials > 0, `${r.id}: no trials`)
      assert.equal(r.failures, 0, `${r.id}: ${r.failures} failures: ${r.reasons.join(' | ')}`)
    }
    assert.equal(code, 0, 'the harness exits 0 when every row shows 0 failures')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
