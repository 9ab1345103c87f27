// Preprocessed-output benchmark: the client's CPU for handling one unit's preprocessor output
// (src/compiler/pp-output.ts: the builder-check hash, the key's view of the text, the volatile
// and __FILE__ searches, the input scan), fed in 64 KiB chunks as the pipe delivers them. The
// units are kernel units run through gcc -E -fdirectives-only with their Kbuild command lines
// (what a remote job is keyed on), when the benchmark's kernel tree is unpacked and built
// (/var/tmp/meshcc-bench-dist/linux, from npm run bench:dist), and a C++ unit of standard
// headers in any case. It prints each unit's digests, so two versions' runs show the key is
// the same, and ms per MB beside sha256 alone (the floor: the builder's check needs it).
//
//   npm run bench:pp-scan                   (about 20 s)
//   npm run bench:pp-scan -- --reps 20 --kernel /path/to/linux
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { PreprocessedOutput } from '../src/compiler/pp-output.js'
import { keyForm } from '../src/compiler/path-forms.js'
import { median } from './lib/stats.js'

const CHUNK = 64 * 1024
const KERNEL_UNITS = ['kernel/fork.c', 'kernel/sched/core.c', 'kernel/signal.c', 'kernel/workqueue.c', 'kernel/range.c']
const CXX_HEADERS = ['iostream', 'locale', 'regex', 'map', 'string', 'vector', 'algorithm', 'functional', 'memory', 'thread']

const { values } = parseArgs({ options: { reps: { type: 'string', default: '25' }, kernel: { type: 'string', default: '/var/tmp/meshcc-bench-dist/linux' } } })
const reps = Number(values.reps)

interface Unit { label: string; cwd: string; main: string; pp: Buffer }

/** A kernel unit's preprocessed text from its Kbuild command (.fork.o.cmd), -c -o swapped for -E -fdirectives-only. */
function kernelUnit(tree: string, src: string): Unit | null {
  const cmdFile = join(tree, src.replace(/([^/]+)\.c$/, '.$1.o.cmd'))
  if (!existsSync(cmdFile)) return null
  const line = readFileSync(cmdFile, 'utf8').split('\n')[0]!
  const cmd = line.replace(/^cmd_\S+ := /, '').replace(/^\S*meshcc\s+/, '').replace(/-Wp,-MMD,\S+/, '').replace(/ -c -o \S+/, ' -E -fdirectives-only')
  const pp = execFileSync('sh', ['-c', cmd], { cwd: tree, maxBuffer: 1 << 30 })
  return { label: src, cwd: tree, main: resolve(tree, src), pp }
}

function cxxUnit(dir: string): Unit {
  writeFileSync(join(dir, 'big.cpp'), CXX_HEADERS.map((h) => `#include <${h}>\n`).join('') + 'int main() {}\n')
  const pp = execFileSync('g++', ['-std=c++17', '-E', '-fdirectives-only', 'big.cpp'], { cwd: dir, maxBuffer: 1 << 30 })
  return { label: 'C++ standard headers', cwd: dir, main: join(dir, 'big.cpp'), pp }
}

/** Median ms of `run` (and its best: other processes on a shared machine inflate the median), after a few runs that warm the JIT. */
function time(run: () => void): { median: number; best: number } {
  const times: number[] = []
  for (let r = 0; r < reps + 3; r++) {
    const t0 = performance.now()
    run()
    if (r >= 3) times.push(performance.now() - t0)
  }
  return { median: median(times), best: Math.min(...times) }
}

const dir = mkdtempSync(join(tmpdir(), 'meshcc-pp-bench-'))
try {
  const units: Unit[] = []
  for (const src of KERNEL_UNITS) {
    const u = existsSync(values.kernel) ? kernelUnit(values.kernel, src) : null
    if (u) units.push(u)
  }
  if (units.length === 0) console.log(`(no built kernel tree at ${values.kernel}: C++ unit only)`)
  units.push(cxxUnit(dir))
  console.log(`Preprocessed-output handling, gcc -E -fdirectives-only, 64 KiB chunks, median and best of ${reps} runs`)
  let totalMB = 0
  let totalMs = 0
  let totalBest = 0
  let totalSha = 0
  for (const u of units) {
    const chunks: Buffer[] = []
    for (let at = 0; at < u.pp.length; at += CHUNK) chunks.push(u.pp.subarray(at, at + CHUNK))
    let digests = ''
    const { median: ms, best } = time(() => {
      const out = new PreprocessedOutput({
        directivesOnly: true, remote: true, cwd: u.cwd, mainInput: u.main,
        nameForm: (name) => `k:${keyForm(name, u.cwd)}`, macroNameForm: (raw) => `r:${raw}`
      })
      for (const c of chunks) out.push(c)
      const s = out.finish()
      digests = `key ${s.keyText.slice(0, 12)} names ${s.writtenNames.slice(0, 12)} macros ${s.macroNames?.slice(0, 12)} ` +
        `volatile=${s.volatile} builtins=${s.builtins} file-macros=${s.fileMacros} files=${s.inputs.files.length}`
    })
    const { median: sha } = time(() => {
      const h = createHash('sha256')
      for (const c of chunks) h.update(c)
      h.digest()
    })
    const mb = u.pp.length / 1e6
    totalMB += mb
    totalMs += ms
    totalBest += best
    totalSha += sha
    console.log(`${u.label.padEnd(22)} ${mb.toFixed(2).padStart(5)} MB  ${ms.toFixed(2).padStart(6)} ms  ${(ms / mb).toFixed(2).padStart(5)} ms/MB (best ${(best / mb).toFixed(2)})  (sha256 alone ${(sha / mb).toFixed(2)} ms/MB)  ${digests}`)
  }
  console.log(`all units              ${totalMB.toFixed(2).padStart(5)} MB  ${totalMs.toFixed(2).padStart(6)} ms  ${(totalMs / totalMB).toFixed(2).padStart(5)} ms/MB (best ${(totalBest / totalMB).toFixed(2)})  (sha256 alone ${(totalSha / totalMB).toFixed(2)} ms/MB)`)
} finally {
  rmSync(dir, { recursive: true, force: true })
}
