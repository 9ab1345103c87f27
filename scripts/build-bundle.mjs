// Bundles the Node CLI (dist/cli/main.js as tsc wrote it, with everything it imports) into that
// same file, so that a daemon start reads and compiles one file instead of about 500 modules.
// Measured on 2 cores: loading the daemon's code went from 0.6 s to 0.16 s of CPU and from 93
// to 68 MB of RSS, and a mesh of 30 daemons starting at once is bound by exactly that CPU.
//
// The rest of dist/ stays as tsc wrote it (tests and benchmarks import those modules).
// Everything is inside, so an installed meshcc needs no node_modules (package.json lists the
// libraries as devDependencies). xsalsa20 too: pnet and src/mesh/patches/pnet-cipher.ts import
// the same file, which esbuild includes once, so the patch reaches the instance pnet uses.
import { build } from 'esbuild'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const main = join(root, 'dist', 'cli', 'main.js')

await build({
  entryPoints: [main],
  outfile: main,
  allowOverwrite: true,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // bundled CommonJS packages call require() for Node's built-ins
  banner: { js: "import { createRequire as __meshccCreateRequire } from 'node:module'; const require = __meshccCreateRequire(import.meta.url);" },
  logLevel: 'warning'
})
