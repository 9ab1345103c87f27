// Admin commands: daemon, --start-server, --stop-server, -s, -z, --version, --help.
import { parseArgs } from 'node:util'
import { existsSync } from 'node:fs'
import { ConfigError, loadConfig, type Config } from '../config.js'
import { adminRequest, spawnDaemon } from '../launcher/client.js'
import { VERSION } from '../version.js'
import { formatStatsText } from './stats-format.js'

const USAGE = `meshcc ${VERSION}: compiler cache and peer-to-peer compile farm

Usage:
  meshcc <compiler> [compiler args…]   compile through the daemon (e.g. meshcc gcc -c x.c)
  meshcc daemon                         run the daemon in the foreground (systemd, debugging)
  meshcc --start-server                 start the daemon in the background
  meshcc --stop-server                  stop the daemon
  meshcc -s, --show-stats [--stats-format text|json]
  meshcc -z, --zero-stats
  meshcc status [--json | --watch]      this daemon and the mesh: peers, cores, load, links
  meshcc jobs                           a -j for make/ninja from the live mesh's cores
  meshcc --dist-status                  mesh summary in sccache's --dist-status JSON shape
  meshcc mesh init [--force]            create a mesh key (a new mesh)
  meshcc mesh invite                    print a one-line invite for other machines
  meshcc mesh join <invite> [--force]   join a mesh from an invite
  meshcc --version | --help

Configuration: ~/.config/meshcc/config.toml or MESHCC_CONF; see the README.`

async function waitFor(cond: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await cond()) return true
    await new Promise((r) => setTimeout(r, 50))
  }
  return false
}

async function ping(config: Config): Promise<boolean> {
  try {
    await adminRequest(config, 'ping', { autostart: false, timeoutMs: 2000 })
    return true
  } catch {
    return false
  }
}

export async function runAdmin(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>
  let positionals: string[]
  try {
    ;({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        'show-stats': { type: 'boolean', short: 's' },
        'stats-format': { type: 'string' },
        'zero-stats': { type: 'boolean', short: 'z' },
        'start-server': { type: 'boolean' },
        'stop-server': { type: 'boolean' },
        background: { type: 'boolean' },
        json: { type: 'boolean' },
        watch: { type: 'boolean' },
        force: { type: 'boolean' },
        'dist-status': { type: 'boolean' },
        version: { type: 'boolean', short: 'V' },
        help: { type: 'boolean', short: 'h' }
      }
    }))
  } catch (err) {
    process.stderr.write(`meshcc: ${(err as Error).message}\n${USAGE}\n`)
    return 2
  }
  if (values.help || positionals[0] === 'help') { process.stdout.write(USAGE + '\n'); return 0 }
  if (values.version || positionals[0] === 'version') { process.stdout.write(`meshcc ${VERSION}\n`); return 0 }

  let config: Config
  try {
    config = loadConfig()
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`meshcc: ${err.message}\n`)
      return 2
    }
    throw err
  }

  if (positionals[0] === 'daemon') {
    const { startDaemon, DaemonStartError } = await import('../daemon/daemon.js')
    try {
      const handle = await startDaemon(config, !values.background)
      if (handle === null) {
        if (!values.background) process.stderr.write(`meshcc: a daemon is already running on ${config.daemon.socket}\n`)
        return values.background ? 0 : 1
      }
      await handle.closed
      // libp2p leaves short timers behind after stop; the daemon is done, so leave now
      process.exit(0)
    } catch (err) {
      if (err instanceof DaemonStartError) {
        process.stderr.write(`meshcc: ${err.message}\n`)
        return 1
      }
      throw err
    }
  }
  if (values['start-server']) {
    if (await ping(config)) { process.stdout.write(`meshcc: daemon already running on ${config.daemon.socket}\n`); return 0 }
    spawnDaemon(config)
    if (await waitFor(() => ping(config), 15_000)) {
      process.stdout.write(`meshcc: daemon started on ${config.daemon.socket}\n`)
      return 0
    }
    process.stderr.write(`meshcc: the daemon did not start; see ${config.cache.dir}/meshcc.log\n`)
    return 1
  }
  if (values['stop-server']) {
    if (!(await ping(config))) { process.stdout.write('meshcc: no daemon running\n'); return 0 }
    await adminRequest(config, 'shutdown', { autostart: false, timeoutMs: 5000 })
    const gone = await waitFor(async () => !existsSync(config.daemon.socket), 35_000)
    process.stdout.write(gone ? 'meshcc: daemon stopped\n' : 'meshcc: the daemon is still finishing its jobs\n')
    return gone ? 0 : 1
  }
  if (values['zero-stats']) {
    process.stdout.write(await adminRequest(config, 'zero', { autostart: true, timeoutMs: 10_000 }) + '\n')
    return 0
  }
  if (values['show-stats'] || positionals[0] === 'stats') {
    const format = values['stats-format'] ?? (values.json ? 'json' : 'text')
    if (format !== 'json' && format !== 'text') {
      process.stderr.write(`meshcc: --stats-format must be text or json, not "${String(format)}"\n`)
      return 2
    }
    const json = await adminRequest(config, 'stats', { autostart: true, timeoutMs: 10_000 })
    const flat = flattenStats(JSON.parse(json))
    process.stdout.write(format === 'json' ? JSON.stringify(flat) + '\n' : formatStatsText(flat))
    return 0
  }
  if (positionals[0] === 'status' || positionals[0] === 'jobs' || positionals[0] === 'mesh' || values['dist-status']) {
    const mc = await import('./mesh-commands.js')
    if (positionals[0] === 'mesh') return mc.meshCommand(config, positionals.slice(1), Boolean(values.force))
    if (positionals[0] === 'status') return mc.statusCommand(config, { json: Boolean(values.json), watch: Boolean(values.watch) })
    const s = await mc.fetchStatus(config)
    process.stdout.write((positionals[0] === 'jobs' ? String(mc.suggestedJobs(s)) : mc.distStatus(s)) + '\n')
    return 0
  }
  process.stderr.write(`meshcc: unknown command ${argv.join(' ')}\n${USAGE}\n`)
  return 2
}

/** The daemon's stats snapshot as one flat object: counters at top level, numbers as numbers. */
export function flattenStats(raw: { counters: Record<string, number> } & Record<string, unknown>): Record<string, unknown> {
  const { counters, ...rest } = raw
  const hits = counters.cache_hits ?? 0
  const hitMs = typeof rest.hit_time_ms === 'number' ? rest.hit_time_ms : 0
  delete rest.hit_time_ms
  return { ...counters, ...rest, average_hit_ms: hits > 0 ? Math.round((hitMs / hits) * 1000) / 1000 : 0 }
}
