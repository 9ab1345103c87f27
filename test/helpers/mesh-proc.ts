// Starts mesh-runner.ts child processes (optionally inside a network namespace) and talks to
// them with JSON lines. Every process started here is tracked and killed by killAllMeshProcs().
import { spawn, type ChildProcess } from 'node:child_process'
import { writeFileSync, mkdirSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import type { MeshMember } from '../../src/mesh/mesh.js'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const RUNNER = join(ROOT, 'test', 'helpers', 'mesh-runner.ts')
const live = new Set<MeshProc>()

export interface MeshConfigOptions {
  keyFile: string
  listen: string[]
  bootstrap?: string[]
  mdns: boolean
  dht: boolean
  cores: number
  name?: string
  deny?: string[]
  logLevel?: 'error' | 'warn' | 'info' | 'debug'
}

/** Writes <dir>/<name>/config.toml (identity beside it) and returns its path. */
export function writeMeshConfig(dir: string, name: string, o: MeshConfigOptions): string {
  const home = join(dir, name)
  mkdirSync(home, { recursive: true })
  const q = (s: string) => JSON.stringify(s)
  const list = (a: string[]) => `[${a.map(q).join(', ')}]`
  const toml = [
    '[daemon]', `socket = ${q(join(home, 'd.sock'))}`,
    '[cache]', `dir = ${q(join(home, 'cache'))}`,
    '[log]', `level = ${q(o.logLevel ?? 'info')}`,
    '[build]', `cores = ${o.cores}`, `local_slots = ${o.cores}`,
    '[mesh]',
    `listen = ${list(o.listen)}`,
    `bootstrap = ${list(o.bootstrap ?? [])}`,
    `mdns = ${o.mdns}`,
    `dht = ${o.dht}`,
    `key_file = ${q(o.keyFile)}`,
    `identity_file = ${q(join(home, 'identity.key'))}`,
    `deny = ${list(o.deny ?? [])}`,
    `name = ${q(o.name ?? name)}`,
    ''
  ].join('\n')
  const file = join(home, 'config.toml')
  writeFileSync(file, toml)
  return file
}

export interface MeshProcOptions {
  config: string
  label: string
  env?: Record<string, string>
  /** command prefix, e.g. ['ip', 'netns', 'exec', 'ns1'] */
  prefix?: string[]
  readyTimeoutMs?: number
}

interface Reply { id?: number; ok?: boolean; result?: unknown; error?: string; event?: string; peerId?: string; meshId?: string; addrs?: string[] }

export class MeshProc {
  peerId = ''
  meshId = ''
  addrs: string[] = []
  private nextId = 1
  private readonly waiting = new Map<number, (r: Reply) => void>()
  private err = ''
  private exited: Promise<number | null>

  private constructor(readonly label: string, readonly child: ChildProcess) {
    this.exited = new Promise((resolve) => child.once('exit', (code) => { live.delete(this); resolve(code) }))
    child.stderr!.setEncoding('utf8')
    child.stderr!.on('data', (d: string) => {
      if (this.err.length < 2_000_000) this.err += d
      // MESHCC_TEST_VERBOSE=1: show the mesh logs of every child, labelled
      if (process.env.MESHCC_TEST_VERBOSE) process.stderr.write(d.replace(/^(?=.)/gm, `${label}| `))
    })
  }

  get pid(): number { return this.child.pid ?? -1 }
  stderr(): string { return this.err }

  /** Resolves when the runner printed ready; rejects with its error line otherwise. */
  static start(o: MeshProcOptions): Promise<MeshProc> {
    const args = ['--import', 'tsx', RUNNER, o.config]
    const [cmd, ...pre] = o.prefix && o.prefix.length > 0 ? [...o.prefix, process.execPath] : [process.execPath]
    const child = spawn(cmd, [...pre, ...args], { cwd: ROOT, env: { ...process.env, ...o.env }, stdio: ['pipe', 'pipe', 'pipe'] })
    const p = new MeshProc(o.label, child)
    live.add(p)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`${o.label}: not ready within ${o.readyTimeoutMs ?? 30000} ms; stderr: ${p.err.slice(-2000)}`)) }, o.readyTimeoutMs ?? 30000)
      const rl = createInterface({ input: child.stdout! })
      rl.on('line', (line) => {
        let r: Reply
        try { r = JSON.parse(line) as Reply } catch { return }
        if (r.event === 'ready') {
          clearTimeout(timer)
          p.peerId = r.peerId!; p.meshId = r.meshId!; p.addrs = r.addrs!
          resolve(p)
        } else if (r.event === 'error') {
          clearTimeout(timer)
          reject(new Error(r.error))
        } else if (r.id !== undefined) {
          const w = p.waiting.get(r.id)
          if (w) { p.waiting.delete(r.id); w(r) }
        }
      })
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`${o.label}: exited with ${code} before ready; stderr: ${p.err.slice(-2000)}`))
        for (const w of p.waiting.values()) w({ ok: false, error: 'process exited' })
        p.waiting.clear()
      })
    })
  }

  request<T>(cmd: string, args: Record<string, unknown> = {}, timeoutMs = 15000): Promise<T> {
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => { this.waiting.delete(id); reject(new Error(`${this.label}: ${cmd} timed out`)) }, timeoutMs)
      this.waiting.set(id, (r) => {
        clearTimeout(timer)
        if (r.ok) resolve(r.result as T)
        else reject(new Error(`${this.label}: ${cmd}: ${r.error}`))
      })
      this.child.stdin!.write(JSON.stringify({ id, cmd, ...args }) + '\n')
    })
  }

  members(): Promise<MeshMember[]> {
    return this.request<MeshMember[]>('members')
  }

  kill(signal: NodeJS.Signals): void {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      try { this.child.kill(signal) } catch { /* gone */ }
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    this.kill('SIGTERM')
    const t = setTimeout(() => this.kill('SIGKILL'), graceMs)
    await this.exited
    clearTimeout(t)
  }

  waitExit(): Promise<number | null> {
    return this.exited
  }
}

export async function killAllMeshProcs(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop(3000)))
}

/** Polls `fn` until it returns a non-undefined value or the time is up (bounded). */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs: number, intervalMs = 200): Promise<T> {
  const end = Date.now() + timeoutMs
  let last: unknown
  while (Date.now() < end) {
    try {
      const v = await fn()
      if (v !== undefined) return v
    } catch (err) {
      last = err
    }
    await new Promise((r) => setTimeout(r, intervalMs))
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`)
}
