// `npm run package`: meshcc-<version>.tgz, an installable meshcc that needs nothing else.
//
// `npm install -g .` links the global command to this checkout (moving or deleting it breaks
// meshcc) and npm 11 warns that the checkout's `prepare` script is not allowed. The tarball made
// here holds only what an installed meshcc runs: the bundled CLI and daemon (dist/cli/main.js,
// every library inside, see build-bundle.mjs), the native launcher, sandbox reaper and process
// starter (dist/bin/), their sources, the examples and the README; its package.json has no scripts and
// no dependencies, so `npm install -g ./meshcc-<version>.tgz` copies it in, offline, in seconds.
// The native binaries are built for this machine: make the package where it will be installed
// (or on the same OS and architecture).
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const ship = ['dist/cli/main.js', 'dist/bin/meshcc', 'dist/bin/meshcc-reap', 'dist/bin/meshcc-spawn', 'native', 'examples', 'README.md']
for (const f of ship.slice(0, 2)) {
  if (!existsSync(join(root, f))) {
    process.stderr.write(`package: ${f} is missing; run "npm run build" first\n`)
    process.exit(1)
  }
}

const stage = mkdtempSync(join(tmpdir(), 'meshcc-package-'))
try {
  for (const f of ship) if (existsSync(join(root, f))) cpSync(join(root, f), join(stage, f), { recursive: true, verbatimSymlinks: true })
  const { name, version, description, type, license, engines, bin } = pkg
  writeFileSync(join(stage, 'package.json'), JSON.stringify({ name, version, description, type, license, engines, bin, os: ['linux'] }, null, 2) + '\n')
  const out = process.argv[2] ?? root
  const r = spawnSync('npm', ['pack', '--pack-destination', out], { cwd: stage, encoding: 'utf8' })
  if (r.status !== 0) {
    process.stderr.write(r.stderr)
    process.exit(r.status ?? 1)
  }
  const file = join(out, r.stdout.trim().split('\n').pop())
  process.stdout.write(`${file}\ninstall it with: npm install -g ${file}\n`)
} finally {
  rmSync(stage, { recursive: true, force: true })
}
