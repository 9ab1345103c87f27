// Expansion of gcc/clang `@file` response files, with the quoting rules of libiberty's
// buildargv: whitespace separates arguments, single and double quotes group, backslash escapes.
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'

export class ResponseFileError extends Error {}

export function splitResponseFile(text: string): string[] {
  const args: string[] = []
  let cur = ''
  let inArg = false
  let quote: '"' | "'" | null = null
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (c === '\\' && i + 1 < text.length) {
      cur += text[++i]
      inArg = true
    } else if (quote) {
      if (c === quote) quote = null
      else cur += c
    } else if (c === '"' || c === "'") {
      quote = c
      inArg = true
    } else if (/\s/.test(c)) {
      if (inArg) args.push(cur)
      cur = ''
      inArg = false
    } else {
      cur += c
      inArg = true
    }
  }
  if (inArg) args.push(cur)
  return args
}

/** Replace every readable `@file` argument by its contents, recursively (bounded depth). */
export function expandResponseFiles(args: readonly string[], cwd: string, depth = 0): string[] {
  if (depth > 8) throw new ResponseFileError('response files nested too deeply')
  const out: string[] = []
  for (const arg of args) {
    if (arg.startsWith('@') && arg.length > 1) {
      let text: string
      try {
        text = readFileSync(resolve(cwd, arg.slice(1)), 'utf8')
      } catch {
        // gcc passes an unreadable @file on literally; we cannot reason about it
        throw new ResponseFileError(`unreadable response file ${arg}`)
      }
      out.push(...expandResponseFiles(splitResponseFile(text), cwd, depth + 1))
    } else {
      out.push(arg)
    }
  }
  return out
}
