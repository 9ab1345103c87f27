// Builds the native launcher (native/launcher.c) into dist/bin/meshcc, the `meshcc` users run.
// Without a C compiler, dist/bin/meshcc becomes a link to the Node CLI: everything works,
// each compile just pays Node's start-up (about 0.1 s of CPU) instead of about 1 ms.
// Also native/reap.c into dist/bin/meshcc-reap, which builders run their sandboxes under
// (src/sandbox/bwrap.ts); without it they run them directly. And native/spawn.c into
// dist/bin/meshcc-spawn, which starts the daemons' preprocessors and compilers
// (src/util/run-process.ts); without it node's spawn does.
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

// the helpers: built with the compiler that built the launcher, or absent (their users fall back)
for (const [name, source] of [['meshcc-reap', 'reap.c'], ['meshcc-spawn', 'spawn.c']]) {
  const bin = join(root, 'dist', 'bin', name)
  const binTmp = `${bin}.${process.pid}.tmp`
  rmSync(binTmp, { force: true })
  const binArgs = ['-O2', '-Wall', '-Wextra', '-o', binTmp, join(root, 'native', source)]
  if (built && spawnSync(built, binArgs, { stdio: ['ignore', 'inherit', 'inherit'] }).status === 0) {
    renameSync(binTmp, bin)
  } else {
    rmSync(binTmp, { force: true })
    rmSync(bin, { force: true })
  }
}
