// Kernel-build bookkeeping for bench-dist.ts (its own copy, so the cache benchmark's kernel.ts
// can change freely): the objects one make run compiled through $(CC), and their hashes.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

/** Objects compiled through $(CC) by one make run: Kbuild's quiet `  CC  x.o` and `  AS  x.o` lines. */
export function compiledObjects(makeOutput: string): string[] {
  const out: string[] = []
  for (const line of makeOutput.split('\n')) {
    const m = /^\s+(?:CC|AS)(?:\s+\[M\])?\s+(\S+\.o)\s*$/.exec(line)
    if (m) out.push(m[1]!)
  }
  return out
}

/** sha256 of each given object (paths relative to the tree); objects that are not there are left out. */
export function hashObjects(linux: string, objects: string[]): Map<string, string> {
  const files = new Map<string, string>()
  for (const rel of objects) {
    try {
      files.set(rel, createHash('sha256').update(readFileSync(join(linux, rel))).digest('hex'))
    } catch {
      // removed or renamed by a later Kbuild step: shows as missing in the comparison
    }
  }
  return files
}
