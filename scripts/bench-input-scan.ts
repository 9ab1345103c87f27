// Input-scan benchmark: how long the client's InputScanner (src/compiler/inputs.ts) takes over a
// big real unit, fed in 64 KiB chunks as the preprocessor's pipe delivers them. The unit is a
// C++ file including much of the standard library (<iostream> <locale> <regex> <map> …),
// preprocessed by g++ -E -fdirectives-only (what a unit shipped to a peer is keyed on), g++ -E
// and clang++ -E. Each scan's file set is checked against the compiler's own -M list.
//
//   npm run bench:scan                 (about 10 s)
//   npm run bench:scan -- --reps 50
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { InputScanner } from '../src/compiler/inputs.js'
import { depfilePrerequisites } from '../src/compiler/depfile.js'
import { median } from './lib/stats.js'

const HEADERS = ['iostream', 'locale', 'regex', 'map', 'string', 'vector', 'algorithm', 'functional', 'memory', 'thread', 'future',
  'unordered_map', 'sstream', 'fstream', 'chrono', 'random', 'filesystem', 'variant']
const CHUNK = 64 * 1024

const { values } = parseArgs({ options: { reps: { type: 'string', default: '30' } } })
const reps = Number(values.reps)
const dir = mkdtempSync(join(tmpdir(), 'meshcc-scan-bench-'))
try {
  writeFileSync(join(dir, 'big.cpp'), HEADERS.map((h) => `#include <${h}>\n`).join('') + 'int main() {}\n')
  const rows: string[] = []
  for (const [label, cc, mode] of [['g++ -E -fdirectives-only', 'g++', ['-fdirectives-only']], ['g++ -E', 'g++', []], ['clang++ -E', 'clang++', []]] as const) {
    const pp = execFileSync(cc, ['-std=c++17', '-E', ...mode, 'big.cpp'], { cwd: dir, maxBuffer: 1 << 30 })
    const want = depfilePrerequisites(execFileSync(cc, ['-std=c++17', '-M', 'big.cpp'], { cwd: dir, encoding: 'utf8' })).map((p) => resolve(dir, p)).sort()
    const chunks: Buffer[] = []
    for (let at = 0; at < pp.length; at += CHUNK) chunks.push(pp.subarray(at, at + CHUNK))
    const times: number[] = []
    let files: string[] = []
    for (let r = 0; r < reps + 3; r++) {
      const t0 = performance.now()
      const s = new InputScanner(dir, join(dir, 'big.cpp'))
      for (const c of chunks) s.push(c)
      files = s.finish().files
      if (r >= 3) times.push(performance.now() - t0) // the first runs warm the JIT
    }
    const missing = want.filter((f) => !files.includes(f)).length
    const extra = files.filter((f) => !want.includes(f)).length
    const ms = median(times)
    const best = Math.min(...times)
    rows.push(`${label.padEnd(26)} ${(pp.length / 1e6).toFixed(1).padStart(5)} MB  median ${ms.toFixed(2).padStart(6)} ms (${(pp.length / 1e3 / ms).toFixed(0).padStart(5)} MB/s), best ${best.toFixed(2).padStart(6)} ms  ${files.length} files, ${missing} missing, ${extra} extra against -M`)
  }
  console.log(`InputScanner over a C++ unit of ${HEADERS.length} standard headers, 64 KiB chunks, ${reps} runs`)
  for (const r of rows) console.log(r)
} finally {
  rmSync(dir, { recursive: true, force: true })
}
