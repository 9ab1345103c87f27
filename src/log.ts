// Leveled logger: one line per event, to a log file in the cache dir and, when the daemon
// runs in the foreground, to stderr as well. Appends are synchronous and small, so lines
// from several processes (launchers recording fallbacks, two daemons) never interleave.
import { appendFileSync, mkdirSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
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

/**
 * The first line of whatever was thrown, at most `max` characters. Libraries do not always
 * throw Errors (a libp2p stream's write rejects with its close Event): reading `.message` of
 * those in a catch block would throw again and skip the code that handles the failure.
 */
export function firstLine(err: unknown, max = 200): string {
  const m = (err as { message?: unknown } | null)?.message
  const text = typeof m === 'string' && m !== '' ? m : String(err)
  return text.split('\n')[0]!.slice(0, max)
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
  /** the file lines go to now (the fallback once the first file failed), or null */
  file?(): string | null
}

export interface LoggerOptions {
  level: LogLevel
  /** append lines here (created with its directory when missing); null = no file */
  file: string | null
  /** where lines go when `file` cannot be written (a read-only or full cache directory) */
  fallbackFile?: string
  /** also write to stderr (foreground daemon) */
  stderr?: boolean
  /** shown in every line, e.g. the pid */
  tag?: string
}

export function createLogger(opts: LoggerOptions, component = ''): Logger {
  return makeLogger(opts, { current: opts.file, tried: false }, component)
}

/** Where a logger and its children write; shared, so one failure moves them all. */
interface LogTarget { current: string | null; tried: boolean }

function makeLogger(opts: LoggerOptions, target: LogTarget, component: string): Logger {
  const append = (line: string) => {
    while (target.current) {
      try {
        if (!target.tried) { target.tried = true; mkdirSync(dirname(target.current), { recursive: true }) }
        appendFileSync(target.current, line)
        return
      } catch (err) {
        const failed = target.current
        target.current = failed === opts.fallbackFile ? null : opts.fallbackFile ?? null
        target.tried = false
        // the first line in the new place says why it is there
        if (target.current) line = `${stamp('warn', `[${process.pid}]`, '')} cannot write the log ${failed} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): logging here instead\n${line}`
      }
    }
  }
  const write = (level: LogLevel, msg: string) => {
    if (RANK[level] > RANK[opts.level]) return
    const line = `${stamp(level, opts.tag ?? `[${process.pid}]`, component)} ${bounded(msg)}\n`
    append(line)
    if (opts.stderr) process.stderr.write(line)
  }
  return {
    error: (m) => write('error', m),
    warn: (m) => write('warn', m),
    info: (m) => write('info', m),
    debug: (m) => write('debug', m),
    child: (c) => makeLogger(opts, target, component ? `${component}/${c}` : c),
    enabled: (level) => RANK[level] <= RANK[opts.level],
    file: () => target.current
  }
}

function stamp(level: LogLevel, tag: string, component: string): string {
  return `${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} ${tag}${component ? ` ${component}:` : ''}`
}

/**
 * The daemon's log: in the cache directory, or, when that cannot be written (read-only, full),
 * beside the socket, in the user's private runtime directory.
 */
export function logFiles(cacheDir: string, socket: string): { file: string; fallbackFile: string } {
  return { file: join(cacheDir, 'meshcc.log'), fallbackFile: join(dirname(socket), 'meshcc.log') }
}

/** The log file a user should read: whichever of the two was written last. */
export function currentLogFile(cacheDir: string, socket: string): string {
  const { file, fallbackFile } = logFiles(cacheDir, socket)
  const mtime = (p: string) => { try { return statSync(p).mtimeMs } catch { return -1 } }
  return mtime(fallbackFile) > mtime(file) ? fallbackFile : file
}

/** A logger that drops everything (tests and tools that have nowhere to log). */
export const silentLogger: Logger = {
  error: () => {}, warn: () => {}, info: () => {}, debug: () => {},
  child: () => silentLogger,
  enabled: () => false,
  file: () => null
}
