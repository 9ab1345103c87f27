#!/usr/bin/env node
// Entry point. Three ways in: a masquerade link named like a compiler, `meshcc <compiler> …`
// (the launcher), or an admin command. The launcher path is first and imports little:
// it runs once per compile.
import { basename } from 'node:path'
import { isCompilerName, runLauncher } from '../launcher/launcher.js'

const selfScript = process.argv[1]
const invokedAs = basename(selfScript).replace(/\.js$/, '')
const argv = process.argv.slice(2)

async function main(): Promise<void> {
  if (invokedAs !== 'meshcc' && invokedAs !== 'main' && isCompilerName(invokedAs)) {
    await runLauncher(invokedAs, argv, selfScript)
    return
  }
  const first = argv[0]
  if (first === undefined || first.startsWith('-') || ADMIN_COMMANDS.has(first)) {
    const { runAdmin } = await import('./admin.js')
    process.exitCode = await runAdmin(argv)
    return
  }
  await runLauncher(first, argv.slice(1), selfScript)
}

const ADMIN_COMMANDS = new Set(['daemon', 'status', 'stats', 'mesh', 'jobs', 'help', 'version'])

main().catch((err: unknown) => {
  process.stderr.write(`meshcc: ${(err as Error).message ?? String(err)}\n`)
  process.exit(1)
})
