// Byte-for-byte comparison of build outputs against a plain build.
import assert from 'node:assert/strict'
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'

/** The files in dir whose names end in one of exts, by name. */
export function snapshot(dir: string, exts: string[]): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  for (const f of readdirSync(dir)) if (exts.some((e) => f.endsWith(e))) out.set(f, readFileSync(join(dir, f)))
  return out
}

export function assertSameFiles(actual: Map<string, Buffer>, expected: Map<string, Buffer>, what: string): void {
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort(), `${what}: same file set`)
  for (const [name, data] of expected) assert.ok(actual.get(name)!.equals(data), `${what}: ${name} differs from the plain build`)
}
