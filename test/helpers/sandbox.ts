// For tests of sandboxed jobs: a tiny root directory built from host binaries (dash,
// coreutils…), what jobs run in when a test needs no real toolchain, or, packed as a
// toolchain, a hostile "compiler" that is a shell script; and a job's process seen from the host.
import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, statSync, symlinkSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { relativeLinkTarget } from '../../src/toolchain/pack.js'

function isLink(p: string): boolean {
  try { return lstatSync(p).isSymbolicLink() } catch { return false }
}

/** Copies `file` into root at the same absolute path (parent directories resolved as on the
 *  host, symlinks recreated and followed). */
function copyIn(root: string, file: string): void {
  const dir = realpathSync(dirname(file))
  const src = join(dir, basename(file))
  const dest = join(root, src)
  if (existsSync(dest) || isLink(dest)) return
  mkdirSync(join(root, dir), { recursive: true })
  if (isLink(src)) {
    const target = readlinkSync(src)
    // relative, so that the root can be packed as a toolchain (whose links may not be absolute)
    symlinkSync(relativeLinkTarget(src, target), dest)
    copyIn(root, target.startsWith('/') ? target : join(dir, target))
  } else {
    copyFileSync(src, dest)
  }
}

/** Fills `root` (an existing empty directory) with these host tools and what they load. */
export function buildHostRoot(root: string, tools: string[]): void {
  // Merged-/usr hosts: keep /bin -> usr/bin etc. so absolute paths work as on the host.
  for (const top of ['bin', 'sbin', 'lib', 'lib64']) {
    if (isLink(`/${top}`)) symlinkSync(readlinkSync(`/${top}`), join(root, top))
  }
  for (const tool of tools) {
    copyIn(root, tool)
    // shared libraries and the dynamic loader, by the paths ldd prints
    for (const m of execFileSync('ldd', [tool], { encoding: 'utf8' }).matchAll(/(\/\S+)\s+\(0x/g)) copyIn(root, m[1]!)
  }
}

/** What the hostile compiler below prints for the builder's preprocessing run (a job's ppHash is its sha256). */
export const HOSTILE_PP_TEXT = 'int pp;\n'

/**
 * A hostile "compiler" a member ships as its toolchain: it answers the builder's preprocessing
 * run with HOSTILE_PP_TEXT (so the job passes the check), then does what $MODE says with the
 * object path (-o) it was given. The modes about the object are here; `more` adds others, each a
 * shell command (a case arm).
 */
export function hostileCompiler(more: Record<string, string> = {}): string {
  const modes: Record<string, string> = {
    symlink: 'ln -s "$TARGET" "$out"',
    hardlink: 'echo mine > real && ln real "$out"',
    dirlink: 'ln -s "$TARGET" sub',
    fifo: 'mkfifo "$out"',
    disk: 'for i in 1 2 3 4 5 6 7 8; do head -c 16777216 /dev/zero > "big$i" || exit 1; done; echo object > "$out"',
    ...more,
    '*': 'echo "a fine object" > "$out"'
  }
  return [
    '#!/bin/sh',
    `case "$1" in -E) printf '${HOSTILE_PP_TEXT.replace('\n', '\\n')}'; exit 0;; esac`,
    'out=',
    'while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done',
    'case "$MODE" in',
    ...Object.entries(modes).map(([mode, cmd]) => `  ${mode}) ${cmd} ;;`),
    'esac',
    ''
  ].join('\n')
}

/** The pid (as the host sees it) of the process whose argv is exactly `argv`, once it runs. */
export async function waitForProcess(argv: string[], timeoutMs = 10_000): Promise<string | undefined> {
  const cmdline = argv.map((a) => `${a}\0`).join('')
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline;) {
    const pid = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).find((p) => {
      try { return readFileSync(`/proc/${p}/cmdline`, 'utf8') === cmdline } catch { return false }
    })
    if (pid) return pid
    await new Promise((res) => setTimeout(res, 25))
  }
  return undefined
}

/** Bytes in the regular files under dir (what a job could have put on the host's disk there). */
export function treeBytes(dir: string): number {
  let n = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) n += treeBytes(p)
    else if (e.isFile()) n += statSync(p).size
  }
  return n
}
