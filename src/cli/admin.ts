// Admin commands: daemon, --start-server, --stop-server, -s, -z, -C, -M, -p, --reload,
// --version, --help. None of them starts a daemon except the ones that say so: a question
// about the cache is answered from the disk when no daemon runs.
import { parseArgs } from 'node:util'
import { existsSync } from 'node:fs'
import { ConfigError, MIN_CACHE_BYTES, configFilePath, formatSize, loadConfig, parseSize, type Config } from '../config.js'
import { DaemonUnreachable, adminRequest, spawnDaemon } from '../launcher/client.js'
import { silentLogger } from '../log.js'
import { editConfigFile } from './config-edit.js'
import { VERSION } from '../version.js'
import { currentLogFile } from '../log.js'
import { formatStatsText } from './stats-format.js'

const USAGE = `meshcc ${VERSION}: compiler cache and peer-to-peer compile farm

Usage:
  meshcc <compiler> [compiler args…]   compile through the daemon (e.g. meshcc gcc -c x.c)
  meshcc daemon                         run the daemon in the foreground (systemd, debugging)
  meshcc --start-server                 start the daemon in the background
  meshcc --stop-server                  stop the daemon
  meshcc -s, --show-stats [--stats-format text|json]
  meshcc -z, --zero-stats
  meshcc -C, --clear                    remove every cache entry
  meshcc -M, --max-size SIZE            set the cache size (e.g. 20G) in the config file
  meshcc -p, --show-config              the effective config, and where each value comes from
  meshcc --reload                       make the daemon re-read its config now
  meshcc status [--json | --watch]      this daemon and the mesh: peers, cores, load, links
  meshcc jobs                           a -j for make/ninja from the live mesh's cores
  meshcc --dist-status                  mesh summary in sccache's --dist-status JSON shape
  meshcc mesh init [--force]            create a mesh key (a new mesh)
  meshcc mesh invite                    print a one-line invite for other machines
  meshcc mesh join <invite> [--force]   join a mesh from an invite
  meshcc mesh distrusted                members whose results failed a verification
  meshcc mesh trust <peer ID | all>     accept a distrusted member's cache entries again
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
        clear: { type: 'boolean', short: 'C' },
        'max-size': { type: 'string', short: 'M' },
        'show-config': { type: 'boolean', short: 'p' },
        reload: { type: 'boolean' },
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
    process.stderr.write(`meshcc: ${optionError(err as Error)} (meshcc --help lists the commands)\n`)
    return 2
  }
  if (values.help || positionals[0] === 'help') { process.stdout.write(USAGE + '\n'); return 0 }
  if (argv.length === 0) { process.stderr.write(`meshcc: no command or compiler given\n\n${USAGE}\n`); return 2 }

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

  if (values.version || positionals[0] === 'version') {
    const daemon = await daemonStatusLine(config)
    process.stdout.write(`meshcc ${VERSION}\n${daemon}\n`)
    return 0
  }
  if (values['show-config']) {
    const width = Math.max(...config.sources.map((c) => c.origin.length)) + 2
    process.stdout.write(config.sources.map((c) => `${`(${c.origin})`.padEnd(width)} [${c.section}] ${c.key} = ${c.value}`).join('\n') + '\n')
    return 0
  }
  if (values['max-size'] !== undefined) return setMaxSize(config, String(values['max-size']))
  if (values.reload) {
    const r = await askDaemon(config, 'reload')
    process.stdout.write(r === null ? `meshcc: no daemon running on ${config.daemon.socket}; the next one reads the config as it is\n` : `meshcc: ${r}\n`)
    return 0
  }
  if (values.clear) {
    const r = await askDaemon(config, 'clear')
    if (r !== null) { process.stdout.write(`meshcc: ${r}\n`); return 0 }
    const { LocalStore } = await import('../cache/local-store.js')
    const { ManifestStore } = await import('../cache/manifest.js')
    const store = new LocalStore({ dir: config.cache.dir, maxBytes: config.cache.size, log: silentLogger })
    const removed = await store.clear()
    await store.close()
    await new ManifestStore(config.cache.dir).clear()
    process.stdout.write(`meshcc: cache cleared: ${removed} entries removed\n`)
    return 0
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
    process.stderr.write(`meshcc: the daemon did not start; see ${currentLogFile(config.cache.dir, config.daemon.socket)}\n`)
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
    const r = await askDaemon(config, 'zero')
    if (r === null) {
      const { Stats } = await import('../daemon/stats.js')
      new Stats(config.cache.dir, silentLogger).zero()
    }
    process.stdout.write(`${r ?? 'statistics zeroed'}\n`)
    return 0
  }
  if (values['show-stats'] || positionals[0] === 'stats') {
    const format = values['stats-format'] ?? (values.json ? 'json' : 'text')
    if (format !== 'json' && format !== 'text') {
      process.stderr.write(`meshcc: --stats-format must be text or json, not "${String(format)}"\n`)
      return 2
    }
    const json = (await askDaemon(config, 'stats')) ?? JSON.stringify(await statsFromDisk(config))
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
  process.stderr.write(`meshcc: unknown command ${argv[0]} (meshcc --help lists the commands)\n`)
  return 2
}

/** Node's parseArgs message, in a user's words: "unknown option --bogus". */
function optionError(err: Error): string {
  const code = (err as NodeJS.ErrnoException).code
  const opt = /'(-[^']*)'/.exec(err.message)?.[1]
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && opt) return `unknown option ${opt}`
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && opt) return `option ${/--[\w-]+/.exec(opt)?.[0] ?? opt} ${/argument missing/.test(err.message) ? 'needs a value' : 'takes no value'}`
  return err.message.split('\n')[0]!.split('. ')[0]!
}

/** An admin request to a running daemon; null when none runs (never starts one). */
async function askDaemon(config: Config, command: string): Promise<string | null> {
  try {
    return await adminRequest(config, command, { autostart: false, timeoutMs: 30_000 })
  } catch (err) {
    if (err instanceof DaemonUnreachable && /ENOENT|ECONNREFUSED/.test(err.message)) return null
    throw err
  }
}

/** "daemon 0.1.0, pid 42" or that none runs. */
async function daemonStatusLine(config: Config): Promise<string> {
  const r = await askDaemon(config, 'status').catch(() => null)
  if (r === null) return `daemon: not running (socket ${config.daemon.socket})`
  const d = (JSON.parse(r) as { daemon: { version: string; pid: number; restart_pending?: string | null } }).daemon
  const note = d.version !== VERSION ? ` (an older version; it restarts into ${VERSION} when idle)` : ''
  return `daemon: ${d.version}, pid ${d.pid}${note}`
}

/** `-s` without a daemon: the saved counters and the cache as it is on disk. */
async function statsFromDisk(config: Config): Promise<Record<string, unknown>> {
  const { Stats } = await import('../daemon/stats.js')
  const { LocalStore } = await import('../cache/local-store.js')
  const store = new LocalStore({ dir: config.cache.dir, maxBytes: config.cache.size, log: silentLogger })
  const st = existsSync(config.cache.dir) ? (await store.open().then(() => store.stats())) : { entries: 0, bytes: 0, maxBytes: config.cache.size }
  await store.close()
  return { ...new Stats(config.cache.dir, silentLogger).snapshot(), cache_entries: st.entries, cache_size_bytes: st.bytes, cache_max_bytes: st.maxBytes, cache_dir: config.cache.dir, version: VERSION, daemon: 'not running' }
}

/** `-M SIZE`: written to the config file, which a running daemon follows within seconds. */
async function setMaxSize(config: Config, text: string): Promise<number> {
  const bytes = parseSize(text)
  if (bytes === null || bytes < MIN_CACHE_BYTES) {
    process.stderr.write(`meshcc: --max-size: ${JSON.stringify(text)} is not a size of at least ${formatSize(MIN_CACHE_BYTES)} (e.g. "20G", "500M")\n`)
    return 2
  }
  const file = config.file ?? configFilePath()
  editConfigFile(file, 'cache', 'size', JSON.stringify(text.trim()))
  try {
    loadConfig()
  } catch (err) {
    process.stderr.write(`meshcc: ${file} was changed but no longer loads: ${(err as Error).message}\n`)
    return 1
  }
  const r = await askDaemon(config, 'reload').catch(() => null)
  process.stdout.write(`meshcc: cache size set to ${formatSize(bytes)} in ${file}${r === null ? '' : ' (the daemon applied it)'}\n`)
  return 0
}

/** The daemon's stats snapshot as one flat object: counters at top level, numbers as numbers. */
export function flattenStats(raw: { counters: Record<string, number> } & Record<string, unknown>): Record<string, unknown> {
  const { counters, ...rest } = raw
  const hits = counters.cache_hits ?? 0
  const hitMs = typeof rest.hit_time_ms === 'number' ? rest.hit_time_ms : 0
  delete rest.hit_time_ms
  return { ...counters, ...rest, average_hit_ms: hits > 0 ? Math.round((hitMs / hits) * 1000) / 1000 : 0 }
}
