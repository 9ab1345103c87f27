// Test harness: an isolated meshcc instance (own config, socket, cache dir) driven through
// the real built CLI, exactly as a build would drive it.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'

export const REPO = resolve(import.meta.dirname, '..', '..')
export const MESHCC = join(REPO, 'dist', 'bin', 'meshcc')

export interface RunResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; stdoutBuf: Buffer }

export interface Instance {
  dir: string
  conf: string
  socket: string
  cacheDir: string
  env: NodeJS.ProcessEnv
  /** run `meshcc <args>` (or any command with this instance's env) in cwd */
  run(args: string[], opts?: { cwd?: string; env?: NodeJS.ProcessEnv; cmd?: string; timeoutMs?: number }): Promise<RunResult>
  stats(): Promise<Record<string, number & Record<string, number>>>
  daemonPid(): number | null
  stop(): Promise<void>
}

export function runCommand(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (c) => out.push(c))
    child.stderr.on('data', (c) => err.push(c))
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      const stdoutBuf = Buffer.concat(out)
      resolveRun({ code, signal, stdout: stdoutBuf.toString(), stderr: Buffer.concat(err).toString(), stdoutBuf })
    })
  })
}

/**
 * A fresh meshcc with its own config file; extraToml is appended to the config.
 * meshToml, when given, is the body of the [mesh] section (default: mesh disabled).
 */
export function createInstance(extraToml = '', name = 'mcc', meshToml: string | null = null): Instance {
  const dir = mkdtempSync(join(tmpdir(), `${name}-`))
  const socket = join(dir, 'run', 'd.sock')
  const cacheDir = join(dir, 'cache')
  const conf = join(dir, 'config.toml')
  writeFileSync(conf, `[daemon]\nsocket = "${socket}"\nidle_timeout = 0\n[cache]\ndir = "${cacheDir}"\n[log]\nlevel = "debug"\n[mesh]\n${meshToml ?? "enabled = false"}\n${extraToml}`)
  const env: NodeJS.ProcessEnv = { ...process.env, MESHCC_CONF: conf }
  for (const k of ['MESHCC_DIR', 'MESHCC_SOCKET', 'MESHCC_LOG', 'MESHCC_CACHE_SIZE', 'MESHCC_DISABLE', 'MESHCC_IDLE_TIMEOUT', 'MESHCC_DIRECT']) delete env[k]

  const inst: Instance = {
    dir, conf, socket, cacheDir, env,
    run(args, opts = {}) {
      return runCommand(opts.cmd ?? MESHCC, opts.cmd ? args : args, { cwd: opts.cwd ?? dir, env: { ...env, ...opts.env }, timeoutMs: opts.timeoutMs })
    },
    async stats() {
      const r = await inst.run(['-s', '--stats-format', 'json'])
      if (r.code !== 0) throw new Error(`meshcc -s failed: ${r.stderr}`)
      return JSON.parse(r.stdout)
    },
    daemonPid() {
      const f = `${socket}.pid`
      if (!existsSync(f)) return null
      const pid = Number(readFileSync(f, 'utf8'))
      return Number.isInteger(pid) && pid > 0 ? pid : null
    },
    async stop() {
      const pid = inst.daemonPid()
      if (pid !== null) {
        spawnSync(MESHCC, ['--stop-server'], { env, timeout: 40_000 })
        // the daemon is ours (we read its pid from our own lock file): make sure it is gone
        try { process.kill(pid, 'SIGKILL') } catch { /* already exited */ }
      }
      rmSync(dir, { recursive: true, force: true })
    }
  }
  return inst
}

/** Write a tree of files: { 'src/a.c': '…' }. */
export function writeTree(root: string, files: Record<string, string>): void {
  for (const [rel, text] of Object.entries(files)) {
    const p = join(root, rel)
    mkdirSync(join(p, '..'), { recursive: true })
    writeFileSync(p, text)
  }
}

export function haveCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0
}
