// Real second-tier stores for tests, started on loopback ports and killed by PID: Debian's
// redis-server (a password, no persistence) and Debian's nginx with a WebDAV location (ccache's
// HTTP storage layout). Every store started here is killed by stopStores().
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { RedisBackend } from '../../src/cache/tiers/redis.js'
import { waitFor } from './mesh-proc.js'

const children: ChildProcess[] = []

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

function started(cmd: string, args: string[]): ChildProcess {
  const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  children.push(c)
  return c
}

/** Kill a store by its PID, as a crash would. */
export async function stopped(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return
  const gone = new Promise((r) => c.once('exit', r))
  c.kill('SIGKILL')
  await gone
}

export async function stopStores(): Promise<void> {
  await Promise.all(children.map((c) => stopped(c)))
}

export interface Store { url: string; port: number; root: string; process: ChildProcess }

/** redis-server on a free port with `password`, data under dir/redis; `url` names database `db`. */
export async function startRedis(dir: string, password: string, db = 2): Promise<Store> {
  const port = await freePort()
  const root = join(dir, 'redis')
  mkdirSync(root, { recursive: true })
  const proc = started('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', root, '--requirepass', password])
  const url = `redis://:${password}@127.0.0.1:${port}/${db}`
  const probe = new RedisBackend(url)
  const key = '0'.repeat(64)
  await waitFor('redis-server to answer', async () => (await probe.get(key, 100, AbortSignal.timeout(1000)).then(() => true, () => undefined)), 20_000)
  await probe.close()
  return { url, port, root, process: proc }
}

/** nginx (one process) serving a WebDAV location /cache/ from dir/nginx/www. */
export async function startNginxDav(dir: string): Promise<Store> {
  const port = await freePort()
  const root = join(dir, 'nginx')
  mkdirSync(join(root, 'www', 'cache'), { recursive: true })
  mkdirSync(join(root, 'tmp'), { recursive: true })
  const conf = join(root, 'nginx.conf')
  writeFileSync(conf, [
    process.getuid?.() === 0 ? 'user root;' : '',
    // one process: killing it by its PID leaves no worker behind still serving
    'master_process off;', 'daemon off;', `pid ${root}/nginx.pid;`, `error_log ${root}/error.log;`,
    'events { worker_connections 64; }',
    'http {', '  access_log off;',
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${root}/tmp/${t};`),
    `  server { listen 127.0.0.1:${port};`,
    `    location /cache/ { root ${root}/www; dav_methods PUT DELETE; create_full_put_path on; client_max_body_size 64m; }`,
    '  }', '}', ''
  ].join('\n'))
  const proc = started('nginx', ['-c', conf, '-p', root, '-e', `${root}/error.log`])
  const url = `http://127.0.0.1:${port}/cache`
  await waitFor('nginx to answer', () => fetch(`${url}/`).then(() => true, () => undefined), 20_000)
  return { url, port, root, process: proc }
}
