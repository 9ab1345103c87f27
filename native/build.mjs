// Builds the native launcher (native/launcher.c) into dist/bin/meshcc, the `meshcc` users run.
// Without a C compiler, dist/bin/meshcc becomes a link to the Node CLI: everything works,
// each compile just pays Node's start-up (about 0.1 s of CPU) instead of about 1 ms.
// Also native/reap.c into dist/bin/meshcc-reap, which builders run their sandboxes under
// (src/sandbox/bwrap.ts); without it they run them directly.
import { spawnSync } from 'node:child_process'
import { chmodSync, mkdirSync, renameSync, rmSync, symlinkSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const out = join(root, 'dist', 'bin', 'meshcc')
const tmp = `${out}.${process.pid}.tmp`
mkdirSync(dirname(out), { recursive: true })
rmSync(tmp, { force: true })

const compilers = [...new Set([process.env.CC, 'cc', 'gcc', 'clang'].filter(Boolean))]
const args = ['-O2', '-Wall', '-Wextra', `-DMESHCC_NODE=${JSON.stringify(process.execPath)}`, '-o', tmp, join(root, 'native', 'launcher.c')]
const built = compilers.find((cc) => spawnSync(cc, args, { stdio: ['ignore', 'inherit', 'inherit'] }).status === 0)
if (built) {
  renameSync(tmp, out)
} else {
  rmSync(tmp, { force: true })
  process.stderr.write(`meshcc: could not build the native launcher (tried ${compilers.join(', ')}); dist/bin/meshcc runs the Node launcher instead (slower per compile)\n`)
  rmSync(out, { force: true })
  symlinkSync('../cli/main.js', out)
}
chmodSync(join(root, 'dist', 'cli', 'main.js'), 0o755)

const reap = join(root, 'dist', 'bin', 'meshcc-reap')
const reapTmp = `${reap}.${process.pid}.tmp`
rmSync(reapTmp, { force: true })
const reapArgs = ['-O2', '-Wall', '-Wextra', '-o', reapTmp, join(root, 'native', 'reap.c')]
if (built && spawnSync(built, reapArgs, { stdio: ['ignore', 'inherit', 'inherit'] }).status === 0) {
  renameSync(reapTmp, reap)
} else {
  rmSync(reapTmp, { force: true })
  rmSync(reap, { force: true })
}
