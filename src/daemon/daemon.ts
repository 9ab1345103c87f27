// The per-user daemon: owns the socket, the cache and the stats, serves launcher requests,
// exits after an idle period unless it is in a mesh. One daemon per socket, enforced by a pid
// lock beside it, and one per mesh identity (identity.key.lock).
import { existsSync, mkdirSync, rmSync, statSync, chmodSync } from 'node:fs'
import { createServer, type Server, type Socket } from 'node:net'
import { dirname } from 'node:path'
import { userInfo } from 'node:os'
import { LocalStore } from '../cache/local-store.js'
import type { Config } from '../config.js'
import { createLogger, logFiles, type Logger } from '../log.js'
import { VERSION } from '../version.js'
import { CompileService, type CompileReply } from './compile-service.js'
import {
  FrameReader, MAX_REQUEST_BYTES, MsgType, ProtocolError, decodeCompileRequest, encodeFrame, type Frame
} from './launcher-protocol.js'
import { ManifestStore } from '../cache/manifest.js'
import { LauncherConfigCheck } from './launcher-config-check.js'
import { Stats } from './stats.js'
import { takePidLock } from '../util/pid-lock.js'
import { lockIdentity } from '../mesh/keys.js'
import { MeshService } from './mesh-service.js'
import { everyAligned } from '../util/aligned-timer.js'
import { ConfigWatch, describeKeys } from './config-watch.js'
import { spawnDaemon } from './spawn.js'
import { openSharedCache } from './shared-cache.js'

export class DaemonStartError extends Error {}

export interface DaemonHandle {
  /** resolves when the daemon has shut down */
  closed: Promise<void>
  shutdown(reason: string): Promise<void>
}

/** Create the socket's directory private to this user, or check an existing one is not shared. */
function prepareSocketDir(socket: string, log: Logger): void {
  const dir = dirname(socket)
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 })
  } catch (err) {
    throw new DaemonStartError(`cannot create socket directory ${dir}: ${(err as NodeJS.ErrnoException).code}`)
  }
  const st = statSync(dir)
  if (st.uid !== userInfo().uid) throw new DaemonStartError(`socket directory ${dir} belongs to another user (uid ${st.uid})`)
  if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
    log.warn(`socket directory ${dir} is writable by others; prefer a private directory`)
  }
}

/**
 * Seconds without a request before this daemon exits; 0 = never. A daemon in a mesh stays up
 * by default ([daemon] mesh_idle_timeout = 0): its peers count on it as a builder and nothing
 * would start it again. `inMesh` is null while the mesh is still starting: no exit then.
 */
export function idleTimeoutFor(config: Config, inMesh: boolean | null): number {
  if (inMesh === null) return 0
  return inMesh ? config.daemon.meshIdleTimeout : config.daemon.idleTimeout
}

export async function startDaemon(config: Config, foreground: boolean): Promise<DaemonHandle | null> {
  // kept: a reloaded config changes the level of every logger made from it
  const logOpts = { level: config.log.level, ...logFiles(config.cache.dir, config.daemon.socket), stderr: foreground }
  const log = createLogger(logOpts)
  try {
    prepareSocketDir(config.daemon.socket, log)
  } catch (err) {
    log.error((err as Error).message) // a background daemon has no stderr: the log is where users look
    throw err
  }
  const lockFile = `${config.daemon.socket}.pid`
  if (takePidLock(lockFile) !== null) {
    log.debug('another daemon already serves this socket; exiting')
    return null
  }
  // A daemon that will join a mesh claims its identity first: a second daemon with the same
  // identity.key (two configs in one directory) must not start and be the same peer twice.
  let releaseIdentity = () => {}
  if (config.mesh.enabled && existsSync(config.mesh.keyFile)) {
    try {
      releaseIdentity = lockIdentity(config.mesh.identityFile, { config: config.file, socket: config.daemon.socket })
    } catch (err) {
      rmSync(lockFile, { force: true })
      if (!foreground) log.error((err as Error).message) // in the foreground the caller prints it
      throw new DaemonStartError((err as Error).message)
    }
  }

  const stats = new Stats(config.cache.dir, log)
  const store = new LocalStore({ dir: config.cache.dir, maxBytes: config.cache.size, log: log.child('cache') })
  await store.open()
  const manifests = config.cache.direct ? new ManifestStore(config.cache.dir) : null
  const compiles = new CompileService({ store, stats, log, slots: config.build.localSlots, direct: manifests })

  let active = 0
  let mesh: MeshService | null = null
  let meshNote: string | null = 'starting'
  let meshStarted = false
  let lastActivity = Date.now()
  let shuttingDown: Promise<void> | null = null
  /** the shared cache's (re)starts, one at a time: the mesh's start, config reloads */
  let sharedChain: Promise<void> = Promise.resolve()
  let resolveClosed!: () => void
  const closed = new Promise<void>((r) => { resolveClosed = r })

  const server: Server = createServer((sock) => serve(sock))
  // aligned: one wake-up with the mesh's timers (util/aligned-timer.ts)
  const flushTimer = everyAligned(2000, () => {
    stats.flushIfDue()
    followConfig(false)
    noticeUpgrade()
    if (restartFor && !foreground && active === 0 && (mesh?.builder.running ?? 0) === 0) void shutdown(`restarting: ${restartFor}`, true)
  }, { unref: true })
  const shortestIdle = Math.min(...[config.daemon.idleTimeout, config.daemon.meshIdleTimeout].filter((t) => t > 0), 20)
  const idleTimer = everyAligned(Math.min(5000, Math.max(250, shortestIdle * 250)), () => {
    const idleMs = idleTimeoutFor(config, meshStarted ? mesh !== null : null) * 1000
    if (idleMs > 0 && active === 0 && Date.now() - lastActivity > idleMs) void shutdown('idle timeout')
  })

  const configCheck = new LauncherConfigCheck()

  // Following the config file and the installed meshcc (config-watch.ts): what changed that
  // only a new daemon can apply, and the last load error, for the log and `meshcc status`.
  const configWatch = new ConfigWatch(config)
  let restartFor: string | null = null
  let configError: string | null = null
  const installed = installStamp()

  function followConfig(force: boolean): string {
    const change = configWatch.check(force)
    if (change.kind === 'invalid') {
      if (change.error !== configError) log.warn(`config not reloaded, keeping the running one: ${change.error}`)
      configError = change.error
      return `config not reloaded: ${change.error}`
    }
    configError = null
    if (change.kind === 'unchanged') return 'config unchanged'
    const { next, live, restart } = change
    if (live.length > 0) {
      config.cache.size = next.cache.size
      store.setMaxBytes(next.cache.size)
      config.log.level = logOpts.level = next.log.level
      compiles.setSlots(next.build.localSlots)
      Object.assign(config.build, { localSlots: next.build.localSlots, offer: next.build.offer, jobTimeout: next.build.jobTimeout, jobDisk: next.build.jobDisk, jobMemory: next.build.jobMemory })
      Object.assign(config.daemon, { idleTimeout: next.daemon.idleTimeout, meshIdleTimeout: next.daemon.meshIdleTimeout })
      applySharedKeys(next, live.map((k) => `${k.section}.${k.key}`))
      mesh?.loadChanged()
      log.info(`config reloaded: ${describeKeys(live)} applied`)
    }
    if (restart.length > 0) {
      restartFor = `config changed (${describeKeys(restart)})`
      log.info(`${restartFor}: ${foreground ? 'restart the daemon to apply it' : 'the daemon restarts itself when idle'}`)
    }
    return [live.length > 0 ? `applied ${describeKeys(live)}` : '', restart.length > 0 ? `${describeKeys(restart)} ${foreground ? 'need a restart' : 'apply when the daemon restarts itself (when idle)'}` : ''].filter(Boolean).join('; ')
  }

  /**
   * The shared cache follows [cache] shared, shared_size, trust, remote and verify_rate: a new
   * rate applies at once; the others stop the shared cache and start it again from the new config.
   */
  function applySharedKeys(next: Config, changed: string[]): void {
    const c = next.cache
    if (changed.includes('cache.verify_rate')) {
      config.cache.verifyRate = c.verifyRate
      compiles.shared?.setVerifyRate(c.verifyRate)
    }
    if (!['cache.shared', 'cache.shared_size', 'cache.trust', 'cache.remote'].some((k) => changed.includes(k))) return
    Object.assign(config.cache, { shared: c.shared, sharedSize: c.sharedSize, trust: c.trust, remote: c.remote })
    restartShared(true)
  }

  /** (Re)open the shared cache (after the mesh started; `meshToo`: the mesh's part as well). */
  function restartShared(meshToo: boolean): void {
    sharedChain = sharedChain.then(async () => {
      if (shuttingDown) return
      const old = compiles.shared
      compiles.shared = null
      await old?.stop()
      if (meshToo) await mesh?.restartMeshCache()
      const next = await openSharedCache(config, mesh?.meshCache ?? null, log.child('shared'))
        .catch((err: Error) => { log.error(`shared cache not started: ${err.message}`); return null })
      if (next && mesh) mesh.runner.distrusted = (peer) => next.trust.refusalToHold(peer) !== null
      compiles.shared = next
    })
  }

  /** The shared cache's counters for -s: remote hits are in the saved stats, the rest since the daemon started. */
  function sharedStats(): Record<string, number> {
    const s = compiles.shared?.status()
    if (!s) return {}
    return {
      entries_served: s.mesh?.entries_served ?? 0, entries_stored_for_others: s.mesh?.entries_stored_for_others ?? 0,
      shared_entries: s.mesh?.shared_entries ?? 0, shared_bytes: s.mesh?.shared_bytes ?? 0,
      entries_published: s.mesh?.entries_published ?? 0, keeps_accepted: s.mesh?.keeps_accepted ?? 0,
      entries_kept_by_builder: s.mesh?.entries_kept_by_builder ?? 0, tier_writes: s.tier?.tier_writes ?? 0,
      verifications: s.verifier.verifications, verify_mismatches: s.verifier.verify_mismatches, verify_skipped: s.verifier.verify_skipped
    }
  }

  /** A new meshcc installed over this one: restart into it when idle. */
  function noticeUpgrade(): void {
    if (restartFor?.startsWith('meshcc upgraded') || installed === null || installStamp() === installed) return
    restartFor = 'meshcc upgraded on disk'
    log.info(`${restartFor}: ${foreground ? 'restart the daemon to run the new version' : 'the daemon restarts itself when idle'}`)
  }

  function reply(sock: Socket, type: number, fields: Array<Buffer | string>): void {
    if (!sock.destroyed) sock.end(encodeFrame(type, fields))
  }

  function compileReplyFrame(r: CompileReply): [number, Array<Buffer | string>] {
    switch (r.kind) {
      case 'result': return [MsgType.RESULT, [String(r.exitCode), r.stdout, r.stderr]]
      case 'passthrough': return [MsgType.PASSTHROUGH, [r.reason]]
      case 'fallback': return [MsgType.FALLBACK, [r.reason]]
    }
  }

  async function admin(command: string): Promise<string> {
    switch (command) {
      case 'ping': return `pong ${process.pid}`
      case 'stats': {
        const s = stats.snapshot()
        const st = store.stats()
        return JSON.stringify({ ...s, ...sharedStats(), cache_entries: st.entries, cache_size_bytes: st.bytes, cache_max_bytes: st.maxBytes, cache_dir: config.cache.dir, version: VERSION })
      }
      case 'zero': stats.zero(); return 'statistics zeroed'
      case 'clear': {
        const removed = await store.clear()
        await manifests?.clear()
        return `cache cleared: ${removed} entries removed`
      }
      case 'reload': return followConfig(true)
      case 'shutdown': setImmediate(() => void shutdown('stop requested')); return 'stopping'
      case 'status': return JSON.stringify({
        daemon: {
          pid: process.pid, version: VERSION, socket: config.daemon.socket, cache_dir: config.cache.dir,
          running: compiles.cpu.running + compiles.fallbackCpu.running, queued: compiles.cpu.queued + compiles.fallbackCpu.queued,
          slots: config.build.localSlots, fallback_slots: config.build.localSlots === 0 ? compiles.fallbackCpu.capacity : config.build.localSlots,
          config_file: config.file, restart_pending: restartFor, log_file: log.file?.() ?? null,
          families: stats.snapshot().families,
          memory: memoryStatus(), pending_request_bytes: pendingRequestBytes
        },
        mesh: mesh?.status() ?? null,
        mesh_note: mesh ? null : meshNote,
        shared: compiles.shared?.status() ?? null
      })
      default: throw new ProtocolError(`unknown admin command ${command}`)
    }
  }

  async function handleFrame(sock: Socket, frame: Frame): Promise<void> {
    if (frame.type === MsgType.COMPILE) {
      const req = decodeCompileRequest(frame)
      const badConfig = configCheck.check(req.env)
      if (badConfig !== null) {
        stats.inc('compile_requests')
        stats.nonCacheable('bad config')
        reply(sock, MsgType.PASSTHROUGH, ['bad config', `${badConfig}; compiling without meshcc`])
        return
      }
      const r = await compiles.handle(req)
      const [type, fields] = compileReplyFrame(r)
      reply(sock, type, fields)
    } else if (frame.type === MsgType.ADMIN) {
      const text = await admin(frame.fields[0]?.toString('utf8') ?? '')
      reply(sock, MsgType.ADMIN_REPLY, [text])
    } else {
      throw new ProtocolError(`unknown message type ${frame.type}`)
    }
  }

  // What the socket may make the daemon hold: a launcher sends its whole request at once, so a
  // connection that has not finished one within REQUEST_DEADLINE_MS is broken or hostile, and the
  // requests being read at any moment hold at most PENDING_REQUEST_BYTES between them (a -j200
  // burst of ordinary requests is a few MiB; a refused one falls back to a local compile).
  const REQUEST_DEADLINE_MS = 30_000
  const PENDING_REQUEST_BYTES = 64 * 1024 * 1024
  let pendingRequestBytes = 0
  const requestBudget = {
    maxFrameBytes: MAX_REQUEST_BYTES,
    reserve: (n: number) => {
      if (pendingRequestBytes + n > PENDING_REQUEST_BYTES) return false
      pendingRequestBytes += n
      return true
    },
    release: (n: number) => { pendingRequestBytes -= n }
  }

  function serve(sock: Socket): void {
    const reader = new FrameReader(requestBudget)
    let handled = false
    const refuse = (message: string) => {
      handled = true
      reader.close()
      clearTimeout(deadline)
      log.warn(`bad request on the socket: ${message}`)
      if (!sock.destroyed) sock.end(encodeFrame(MsgType.ERROR, [message]), () => sock.destroy())
    }
    const deadline = setTimeout(() => refuse(`request not complete within ${REQUEST_DEADLINE_MS / 1000} s`), REQUEST_DEADLINE_MS)
    deadline.unref()
    sock.on('error', () => {}) // a launcher that went away mid-request is not our problem
    sock.on('close', () => {
      clearTimeout(deadline)
      reader.close()
    })
    sock.on('data', (chunk) => {
      if (handled) return
      let frames: Frame[]
      try {
        frames = reader.push(chunk)
      } catch (err) {
        refuse((err as Error).message)
        return
      }
      if (frames.length === 0) return
      handled = true
      clearTimeout(deadline)
      reader.close() // nothing after the request is read
      active++
      lastActivity = Date.now()
      // only compiles change the load others see; status polls must not trigger gossip
      const isCompile = frames[0].type === MsgType.COMPILE
      if (isCompile) mesh?.loadChanged()
      handleFrame(sock, frames[0])
        .catch((err) => {
          log.error(`request failed: ${(err as Error).message}`)
          reply(sock, err instanceof ProtocolError ? MsgType.ERROR : MsgType.FALLBACK, [(err as Error).message])
        })
        .finally(() => {
          active--
          lastActivity = Date.now()
          if (isCompile) mesh?.loadChanged()
        })
    })
  }

  /** Stop serving; `restart`: then start a fresh daemon (the new config or the new install). */
  async function shutdown(reason: string, restart = false): Promise<void> {
    if (shuttingDown) return shuttingDown
    shuttingDown = (async () => {
      log.info(`shutting down: ${reason}`)
      idleTimer.stop()
      flushTimer.stop()
      server.close()
      const deadline = Date.now() + 30_000
      while (active > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
      await compiles.drain()
      await meshStarting
      await sharedChain
      await compiles.shared?.stop().catch((err) => log.warn(`shared cache stop: ${(err as Error).message}`))
      await mesh?.stop().catch((err) => log.warn(`mesh stop: ${(err as Error).message}`))
      await store.close()
      stats.flush()
      rmSync(config.daemon.socket, { force: true })
      releaseIdentity()
      rmSync(lockFile, { force: true })
      if (restart) spawnDaemon(config)
      resolveClosed()
    })()
    return shuttingDown
  }

  // We hold the lock, so any socket file left here belongs to a dead daemon.
  rmSync(config.daemon.socket, { force: true })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(config.daemon.socket, () => {
      server.off('error', reject)
      resolve()
    })
  }).catch((err) => {
    releaseIdentity()
    rmSync(lockFile, { force: true })
    const msg = `cannot listen on ${config.daemon.socket}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`
    log.error(msg)
    throw new DaemonStartError(msg)
  })
  chmodSync(config.daemon.socket, 0o600)
  rmSync(`${config.daemon.socket}.starting`, { force: true })

  // One job's bug must not take the daemon (and every build using it) down.
  process.on('uncaughtException', (err) => log.error(`uncaught: ${err.stack ?? err.message}`))
  process.on('unhandledRejection', (err) => log.error(`unhandled rejection: ${(err as Error)?.stack ?? String(err)}`))
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => void shutdown(`signal ${sig}`))

  // The mesh starts after the socket serves: local compiles never wait for the network.
  const meshStarting = MeshService.start(config, log, VERSION, () => ({ running: compiles.cpu.running, queued: compiles.cpu.queued }), stats)
    .then((m) => {
      mesh = m
      compiles.remote = m?.runner ?? null
      meshNote = m ? null : (config.mesh.enabled ? `no mesh key at ${config.mesh.keyFile} (run "meshcc mesh init" or "meshcc mesh join <invite>")` : 'mesh disabled in config')
    })
    .catch((err: Error) => {
      meshNote = err.message
      log.error(`mesh not started: ${err.message}`)
    })
    .finally(() => {
      meshStarted = true
      restartShared(false)
      const idle = idleTimeoutFor(config, mesh !== null)
      log.info(idle > 0 ? `exits after ${idle} s without a request ([daemon] ${mesh ? 'mesh_idle_timeout' : 'idle_timeout'})` : `stays up while idle${mesh ? ' (in a mesh: [daemon] mesh_idle_timeout = 0)' : ''}`)
    })

  log.info(`meshcc ${VERSION} daemon listening on ${config.daemon.socket} (cache ${config.cache.dir}, ${config.build.localSlots} slots${config.file ? `, config ${config.file}` : ''})`)
  return { closed, shutdown }
}

/** The installed meshcc this daemon runs (its main script on disk); another stamp means an upgrade. */
function installStamp(): string | null {
  try {
    const st = statSync(process.argv[1]!)
    return `${st.ino}:${st.size}:${st.mtimeMs}`
  } catch {
    return null
  }
}

/** The daemon's memory in bytes: the whole process, and V8's heap within it. */
function memoryStatus(): { rss: number; heap_used: number; heap_total: number; external: number } {
  const m = process.memoryUsage()
  return { rss: m.rss, heap_used: m.heapUsed, heap_total: m.heapTotal, external: m.external }
}
