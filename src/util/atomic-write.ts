// Files appear whole or not at all: write a temp file in the same directory, then rename.
import { randomBytes } from 'node:crypto'
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { rename, rm, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'

export function siblingTemp(dest: string): string {
  return join(dirname(dest), `.${basename(dest)}.${process.pid}-${randomBytes(4).toString('hex')}.meshcc-tmp`)
}

export async function writeFileAtomic(dest: string, data: Uint8Array, mode?: number): Promise<void> {
  const tmp = siblingTemp(dest)
  try {
    await writeFile(tmp, data, mode === undefined ? undefined : { mode })
    await rename(tmp, dest)
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
}

/** The same, synchronously (CLI commands, small files). */
export function writeFileAtomicSync(dest: string, data: string | Uint8Array, mode?: number): void {
  const tmp = siblingTemp(dest)
  try {
    mkdirSync(dirname(dest), { recursive: true, mode: 0o700 })
    writeFileSync(tmp, data, mode === undefined ? undefined : { mode })
    renameSync(tmp, dest)
  } catch (err) {
    rmSync(tmp, { force: true })
    throw err
  }
}
