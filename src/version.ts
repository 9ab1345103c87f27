// The package version, read once from meshcc's package.json: the nearest one above this module,
// which is src/ or dist/ as tsc wrote it, or dist/cli/ in the bundled CLI (build-bundle.mjs).
import { readFileSync } from 'node:fs'

function readVersion(): string {
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string }
      if (pkg.name === 'meshcc' && typeof pkg.version === 'string') return pkg.version
    } catch { /* not here */ }
  }
  return '0.0.0'
}

export const VERSION = readVersion()
