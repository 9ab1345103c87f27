// Leveled logger: one line per event, to a log file in the cache dir and, when the daemon
// runs in the foreground, to stderr as well. Appends are synchronous and small, so lines
// from several processes (launchers recording fallbacks, two daemons) never interleave.
import { appendFileSync, mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import type { LogLevel } from './config.js'

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 }
/** the longest message a line carries: a stack trace fits, a peer's megabyte string does not */
export const MAX_LOG_MESSAGE = 8192

/**
 * Text that came from outside (a peer, a job, a file) as it may appear in a log line or an
 * error message: control characters escaped, so it cannot forge lines or move the terminal,
 * and at most `max` characters, saying how long it really was.
 */
export function clip(text: string, max = 200): string {
  const escaped = (text.length > max ? text.slice(0, max) : text).replace(/[\x00-\x1f\x7f\u2028\u2029]/g, (c) => {
    const code = c.charCodeAt(0)
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16)}`
  })
  return text.length > max ? `${escaped}… (${text.length} characters)` : escaped
}

/** A message as a log entry holds it: bounded, and its further lines (a stack) indented, so none passes for an entry. */
function bounded(msg: string): string {
  const m = msg.length > MAX_LOG_MESSAGE ? `${msg.slice(0, MAX_LOG_MESSAGE)}… (${msg.length} characters)` : msg
  return m.replace(/\r?\n|\r/g, '\n    ')
}

export interface Logger {
  error(msg: string): void
  warn(msg: string): void
  info(msg: string): void
  debug(msg: string): void
  /** a logger whose lines carry a component prefix, e.g. "mesh" */
  child(component: string): Logger
  enabled(level: LogLevel): boolean
}

export interface LoggerOptions {
  level: LogLevel
  /** append lines here (created with its directory when missing); null = no file */
  file: string | null
  /** also write to stderr (foreground daemon) */
  stderr?: boolean
  /** shown in every line, e.g. the pid */
  tag?: string
}

export function createLogger(opts: LoggerOptions, component = ''): Logger {
  let fileBroken = false
  if (opts.file) {
    try { mkdirSync(dirname(opts.file), { recursive: true }) } catch { fileBroken = true }
  }
  const write = (level: LogLevel, msg: string) => {
    if (RANK[level] > RANK[opts.level]) return
    const line = `${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} ${opts.tag ?? `[${process.pid}]`}${component ? ` ${component}:` : ''} ${bounded(msg)}\n`
    if (opts.file && !fileBroken) {
      try { appendFileSync(opts.file, line) } catch { fileBroken = true }
    }
    if (opts.stderr) process.stderr.write(line)
  }
  return {
    error: (m) => write('error', m),
    warn: (m) => write('warn', m),
    info: (m) => write('info', m),
    debug: (m) => write('debug', m),
    child: (c) => createLogger(opts, component ? `${component}/${c}` : c),
    enabled: (level) => RANK[level] <= RANK[opts.level]
  }
}

/** A logger that drops everything (tests and tools that have nowhere to log). */
export const silentLogger: Logger = {
  error: () => {}, warn: () => {}, info: () => {}, debug: () => {},
  child: () => silentLogger,
  enabled: () => false
}
