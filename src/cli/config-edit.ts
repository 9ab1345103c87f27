// Changing one key of the config file from the command line (`meshcc -M 20G`), the way ccache
// and sccache users expect: the line is replaced in place (or added to its section), comments
// and the rest of the file stay as written, and the file is replaced atomically.
import { readFileSync, statSync } from 'node:fs'
import { writeFileAtomicSync } from '../util/atomic-write.js'

const SECTION_HEADER = /^\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?$/
const ANY_HEADER = /^\s*\[/

/**
 * The TOML text with `[section] key = value` set (`value` already TOML, e.g. '"20G"'). A key
 * set more than once keeps its first line replaced and the others as they were: TOML forbids
 * duplicates, so the parse that follows every edit would report them.
 */
export function setTomlKey(text: string, section: string, key: string, value: string): string {
  const lines = text.split('\n')
  const keyLine = new RegExp(`^(\\s*)${key.replace(/[-]/g, '\\-')}\\s*=`)
  let start = -1
  for (let i = 0; i < lines.length; i++) {
    const m = SECTION_HEADER.exec(lines[i]!)
    if (m && m[1] === section) { start = i; break }
  }
  if (start === -1) {
    const body = text.length === 0 || text.endsWith('\n') ? text : `${text}\n`
    return `${body}${body.length > 0 ? '\n' : ''}[${section}]\n${key} = ${value}\n`
  }
  let end = lines.length
  for (let i = start + 1; i < lines.length; i++) if (ANY_HEADER.test(lines[i]!)) { end = i; break }
  for (let i = start + 1; i < end; i++) {
    const m = keyLine.exec(lines[i]!)
    if (m) {
      const comment = /\s*#[^"']*$/.exec(lines[i]!)?.[0] ?? ''
      lines[i] = `${m[1]}${key} = ${value}${comment}`
      return lines.join('\n')
    }
  }
  lines.splice(start + 1, 0, `${key} = ${value}`)
  return lines.join('\n')
}

/** Set one key in the config file (created when missing), keeping its mode. */
export function editConfigFile(file: string, section: string, key: string, value: string): void {
  let text = ''
  let mode = 0o644
  try {
    text = readFileSync(file, 'utf8')
    mode = statSync(file).mode & 0o777
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  writeFileAtomicSync(file, setTomlKey(text, section, key, value), mode)
}
