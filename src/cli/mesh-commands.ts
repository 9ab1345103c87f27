// Mesh-facing commands: status (table, JSON, live), jobs, --dist-status, mesh init|invite|join.
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { formatSize, type Config } from '../config.js'
import { currentLogFile } from '../log.js'
import { adminRequest, DaemonUnreachable } from '../launcher/client.js'
import type { MemberStatus, MeshStatus } from '../daemon/mesh-service.js'
import type { SharedCacheStatus } from '../daemon/shared-cache.js'
import type { ReachabilityStatus } from '../mesh/reachability.js'
import { joinedBootstrapFile, storedPeersFile, writeJoinedBootstrap } from '../mesh/state-files.js'
import { decodeInvite, encodeInvite, generateMeshKey, identityPeerId, parseMeshKeyText, writeMeshKey } from '../mesh/keys.js'
import { formatDistStatus } from '../shim/dist-status.js'
import { isLoopbackAddr, isPublicAddr, orderForOutsiders, toMultiaddr, withoutLoopback } from '../mesh/addresses.js'
import { connect } from 'node:net'
import { familyTable, type FamilyCounts } from './stats-format.js'

export interface DaemonStatus {
  daemon: { pid: number; version: string; socket: string; cache_dir: string; running: number; queued: number; slots: number; families?: Record<string, FamilyCounts> }
  mesh: MeshStatus | null
  mesh_note: string | null
  /** the shared cache (mesh, second tier, verification); null when none runs */
  shared?: SharedCacheStatus | null
}

/** No daemon listens on the config's socket; the message says how to start one. */
export class NoDaemon extends Error {
  constructor(config: Config) {
    super(`no daemon running on ${config.daemon.socket}; start one with \`meshcc --start-server\` (or \`meshcc daemon\` in the foreground)`)
    this.name = 'NoDaemon'
  }
}

/**
 * The daemon's status. Never starts a daemon: a status that starts what it reports on hides
 * that none ran (and starts one with whatever config this shell happens to name). Throws NoDaemon.
 */
export async function fetchStatus(config: Config): Promise<DaemonStatus> {
  let text: string
  try {
    text = await adminRequest(config, 'status', { autostart: false, timeoutMs: 10_000 })
  } catch (err) {
    if (err instanceof DaemonUnreachable && /ENOENT|ECONNREFUSED/.test(err.message)) throw new NoDaemon(config)
    throw err
  }
  return JSON.parse(text) as DaemonStatus
}

function short(id: string): string {
  return id.length > 16 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id
}

export function formatStatus(s: DaemonStatus): string {
  const d = s.daemon
  let out = `meshcc ${d.version}, daemon pid ${d.pid}, ${d.running} compiling, ${d.queued} queued, ${d.slots} local slots\n`
  if (d.families && Object.keys(d.families).length > 0) out += familyTable(d.families).map((l) => `  ${l}`).join('\n') + '\n'
  if (s.shared) out += sharedText(s.shared, d.families ?? {})
  if (!s.mesh) return out + (s.mesh_note === 'starting' ? 'mesh: starting (ask again in a moment)\n' : `mesh: not running (${s.mesh_note ?? 'unknown'})\n`)
  const m = s.mesh
  out += `mesh ${m.mesh_id}, this node ${m.peer_id}\n`
  out += `  listening on ${m.addresses.join(' ')}\n`
  if (m.reachability) out += `  reachability: ${reachabilityText(m.reachability)}\n`
  for (const addr of m.identity_clashes ?? []) out += `  WARNING: the peer at ${addr} has this node's own identity: a cloned machine or a copied identity.key? delete identity.key on one of them\n`
  const refused = m.refused_peers ?? []
  if (refused.length > 0) {
    const shown = refused.slice(0, 3).map((r) => r.addr).join(', ') + (refused.length > 3 ? ', …' : '')
    out += `  ${refused.length} ${refused.length === 1 ? 'peer' : 'peers'} refused: different mesh key (${shown})\n`
  }
  const shim = m.shim.serving_peer ? `served by ${m.shim.serving_peer === m.peer_id ? `this node at http://${m.shim.listen ?? '?'}/` : short(m.shim.serving_peer)}` : 'not served (no shim-capable node)'
  out += `  sccache shim: ${shim}\n`
  const b = m.builder
  out += `  builder: ${b.capacity > 0 ? `offers ${b.capacity} cores (${b.offer}), sandbox ${b.sandbox}` : `not taking jobs (${b.sandbox_note ?? `offer = "${b.offer}"`})`}; ${b.running} running, ${b.jobs_done} done, ${b.jobs_failed} failed, ${b.jobs_refused} refused\n`
  if (b.job_memory) out += `  job memory: ${b.job_memory}\n`
  for (const t of m.toolchain_transfers.slice(-3)) out += `  toolchain ${t.hash.slice(0, 12)} ${t.direction} ${t.direction === 'sent' ? 'to' : 'from'} ${short(t.peer)}: ${(t.bytes / 1048576).toFixed(1)} MiB in ${t.ms} ms\n`
  out += '\n'
  const header = ['PEER', 'NAME', 'CORES', 'RUNNING', 'QUEUED', 'FREE', 'LOAD', 'TOOLCHAINS', 'RTT', 'LINK', 'JOBS SENT/DONE']
  const rows = m.members.map((p) => [
    short(p.peer_id) + (p.self ? ' *' : ''), p.name, String(p.cores), String(p.running), String(p.queued), String(p.free_slots),
    p.load1.toFixed(2), String(p.toolchains), p.self ? '-' : p.rtt_ms === null ? '?' : `${p.rtt_ms.toFixed(1)}ms`,
    linkText(p),
    p.self ? '-' : `${m.jobs_per_peer[p.peer_id]?.sent ?? 0}/${m.jobs_per_peer[p.peer_id]?.done ?? 0}`
  ])
  rows.push(['total', `${m.totals.members} nodes`, String(m.totals.cores), String(m.totals.running), String(m.totals.queued), String(m.totals.free_slots), '', '', '', '', ''])
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (r: string[]) => r.map((c, i) => (i >= 2 && i <= 8 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd()
  return out + [line(header), ...rows.map(line)].join('\n') + '\n'
}

/** The shared cache's lines: where remote hits came from, what this member did for the others, verification. */
export function sharedText(sh: SharedCacheStatus, families: Record<string, FamilyCounts>): string {
  const hits = (k: string) => Object.values(families).reduce((n, f) => n + (f.counters[k] ?? 0), 0)
  const m = sh.mesh
  const t = sh.tier
  const parts = [`${hits('mesh_hits')} hits from the mesh${m ? '' : ' (off)'}`]
  if (t) parts.push(`${hits('tier_hits')} from ${t.tier}${t.tier_down ? ' (not answering)' : ''}`)
  let out = `shared cache: ${parts.join(', ')}\n`
  if (m) {
    out += `  ${m.entries_published} entries published, ${m.entries_served} served to others; holding ${m.shared_entries} entries (${formatSize(m.shared_bytes)} of ${formatSize(m.shared_max_bytes)}) for others\n`
    const failed = Object.values(m.failures).reduce((n, v) => n + v, 0)
    if (failed > 0) out += `  lookups failed or refused: ${Object.entries(m.failures).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(', ')}\n`
  }
  const v = sh.verifier
  out += `  verification: ${+(sh.verify_rate * 100).toFixed(2)} % of remote results; ${v.verifications} verified, ${v.verify_mismatches} mismatches${v.verify_skipped > 0 ? `, ${v.verify_skipped} skipped` : ''}\n`
  return out
}

/** The LINK column: how this node reaches the member, or why it cannot. */
export function linkText(p: MemberStatus): string {
  if (p.self) return 'self'
  if (p.connection === 'direct') return p.lan ? 'LAN direct' : p.mapped ? 'direct (mapped)' : 'direct'
  if (p.connection === 'relayed') return p.relay_via ? `relayed via ${p.relay_via}` : 'relayed'
  return p.dial_error ? `unreachable: ${p.dial_error}` : 'none (seen through others)'
}

/** The reachability line: how other networks reach this node, and why. */
export function reachabilityText(r: ReachabilityStatus): string {
  switch (r.state) {
    case 'public': return r.mapped ? `public (mapped: ${r.mapped} forwarded by the router, ${r.port_mapping?.detail ?? ''}; ${r.detail})` : `public (${r.detail})`
    case 'relayed': return `behind NAT, relayed via ${r.relays.join(', ')} (${r.detail})`
    case 'unreachable': return `unreachable from other networks: ${r.detail}`
    default: return `unknown (${r.detail})`
  }
}

/** A -j for make/ninja: the cores the live mesh offers (this machine included). */
export function suggestedJobs(s: DaemonStatus): number {
  if (!s.mesh) return Math.max(1, s.daemon.slots)
  const offered = s.mesh.members.filter((m) => m.accept !== 'never').reduce((n, m) => n + m.cores, 0)
  return Math.max(1, offered)
}

export function distStatus(s: DaemonStatus): string {
  const m = s.mesh
  if (!m) return formatDistStatus('meshcc (no mesh)', { numServers: 1, numCpus: s.daemon.slots, inProgress: s.daemon.running })
  return formatDistStatus(`meshcc-${m.mesh_id}`, { numServers: m.totals.members, numCpus: m.totals.cores, inProgress: m.totals.running })
}

export async function statusCommand(config: Config, opts: { json: boolean; watch: boolean }): Promise<number> {
  try {
    if (!opts.watch) {
      const s = await fetchStatus(config)
      process.stdout.write(opts.json ? JSON.stringify(s) + '\n' : formatStatus(s))
      return 0
    }
    for (;;) {
      const s = await fetchStatus(config)
      process.stdout.write('\x1b[H\x1b[2J' + formatStatus(s) + `\n(refreshing every second; Ctrl-C to stop)\n`)
      await new Promise((r) => setTimeout(r, 1000))
    }
  } catch (err) {
    if (!(err instanceof NoDaemon)) throw err
    process.stderr.write(`meshcc: ${err.message}\n`)
    return 1
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * (Re)starts the daemon so that it reads the new mesh key: `mesh init` and `mesh join` promise
 * a daemon in the mesh afterwards. Returns false (said on stderr) when it did not start.
 */
async function restartDaemon(config: Config): Promise<boolean> {
  if (!config.mesh.enabled) {
    process.stdout.write(`meshcc: the mesh is disabled in ${config.file ?? 'the config'} ([mesh] enabled = false): set it to true to join; the daemon was left as it is\n`)
    return true
  }
  let wasRunning = true
  try {
    await adminRequest(config, 'shutdown', { autostart: false, timeoutMs: 5000 })
  } catch {
    wasRunning = false
  }
  const deadline = Date.now() + 35_000
  while (wasRunning && existsSync(config.daemon.socket) && Date.now() < deadline) await sleep(50)
  try {
    await adminRequest(config, 'ping', { autostart: true, timeoutMs: 10_000 })
  } catch (err) {
    process.stderr.write(`meshcc: the daemon did not start: ${(err as Error).message}; see ${currentLogFile(config.cache.dir, config.daemon.socket)}\n`)
    return false
  }
  process.stdout.write(`meshcc: daemon ${wasRunning ? 'restarted' : 'started'} to join the mesh\n`)
  return true
}

const MESH_START_WAIT_MS = 15_000

/** The status once the daemon's mesh is up or failed (a daemon just (re)started needs a moment); starts the daemon if none runs. */
async function statusWithMesh(config: Config): Promise<DaemonStatus> {
  let s = JSON.parse(await adminRequest(config, 'status', { autostart: true, timeoutMs: 10_000 })) as DaemonStatus
  const deadline = Date.now() + MESH_START_WAIT_MS
  while (!s.mesh && s.mesh_note === 'starting' && Date.now() < deadline) {
    await sleep(200)
    s = await fetchStatus(config)
  }
  return s
}

export async function meshCommand(config: Config, args: string[], force: boolean): Promise<number> {
  const [sub, arg] = args
  const keyFile = config.mesh.keyFile
  if (sub === 'distrusted' || sub === 'trust') return trustCommand(config, sub, arg)
  if (sub === 'init') {
    if (existsSync(keyFile) && !force) {
      process.stderr.write(`meshcc: a mesh key already exists at ${keyFile}; use --force to replace it (machines with the old key will no longer connect)\n`)
      return 1
    }
    writeMeshKey(keyFile, generateMeshKey())
    forgetStoredPeers(config) // members of the mesh this key replaces
    process.stdout.write(`meshcc: new mesh key written to ${keyFile}\nRun "meshcc mesh invite" to get a line that other machines pass to "meshcc mesh join".\n`)
    return (await restartDaemon(config)) ? 0 : 1
  }
  if (sub === 'invite') {
    if (!existsSync(keyFile)) {
      process.stderr.write(`meshcc: no mesh key at ${keyFile}: run "meshcc mesh init" first (or "meshcc mesh join <invite>")\n`)
      return 1
    }
    const key = readFileSync(keyFile, 'utf8')
    const s = await statusWithMesh(config)
    if (!s.mesh) {
      const why = s.mesh_note === 'starting' ? `its mesh did not start within ${MESH_START_WAIT_MS / 1000} s` : s.mesh_note ?? 'unknown'
      process.stderr.write(`meshcc: the daemon is not in the mesh (${why}); see ${currentLogFile(config.cache.dir, config.daemon.socket)}\n`)
      return 1
    }
    // a member on another network tries them in this order; the invite never names only
    // loopback or LAN addresses when the node knows better ones
    const reached = new Set(s.mesh.reachability?.public_addresses ?? [])
    const addrs = orderForOutsiders(s.mesh.addresses, (a) => reached.has(a) || isPublicAddr(a))
    process.stdout.write(encodeInvite({ key, addrs }) + '\n')
    return 0
  }
  if (sub === 'join') {
    if (!arg) {
      process.stderr.write('meshcc: usage: meshcc mesh join <invite>\n')
      return 2
    }
    const invite = decodeInvite(arg)
    const self = await identityPeerId(config.mesh.identityFile)
    if (self !== null && invite.addrs.some((a) => a.endsWith(`/p2p/${self}`))) {
      process.stderr.write(`meshcc: this invite names this node's own peer ID (${self}): it was made here, or on a machine with a copy of ${config.mesh.identityFile} (a cloned machine or synced dotfiles?); delete identity.key on one of them, restart its daemon, and make the invite again\n`)
      return 1
    }
    let sameKey = false
    if (existsSync(keyFile)) {
      const current = parseMeshKeyText(readFileSync(keyFile, 'utf8'))
      const incoming = parseMeshKeyText(invite.key)
      const same = 'hex' in current && 'hex' in incoming && current.hex === incoming.hex
      if (!same && !force) {
        process.stderr.write(`meshcc: ${keyFile} holds a different mesh key; use --force to leave that mesh and join this one\n`)
        return 1
      }
      sameKey = same
    }
    writeMeshKey(keyFile, invite.key)
    if (!sameKey) forgetStoredPeers(config)
    // the latest invite's addresses replace the last one's: a second join must not keep dialing
    // the addresses the first invite named (the mesh itself keeps the members' current ones)
    // an older invite may name the inviting machine's loopback address: here it would reach
    // this machine, not that one
    const addrs = withoutLoopback(invite.addrs)
    writeJoinedBootstrap(config, addrs)
    process.stdout.write(`meshcc: joined: key in ${keyFile}, ${addrs.length} bootstrap address(es) in ${joinedBootstrapFile(config)}\n`)
    const answering = await anyAnswers(addrs.filter((a) => !isLoopbackAddr(a) || addrs.every(isLoopbackAddr)), JOIN_PROBE_MS)
    if (!answering) {
      process.stderr.write(`meshcc: none of the invite's addresses answered within ${JOIN_PROBE_MS / 1000} s (${addrs.slice(0, 3).join(' ')}${addrs.length > 3 ? ' …' : ''}): ask a member that other networks can reach (a server, or a machine with a port forward) for its invite, or add such a member to [mesh] bootstrap; the daemon keeps trying\n`)
    }
    return (await restartDaemon(config)) ? 0 : 1
  }
  process.stderr.write('meshcc: usage: meshcc mesh init [--force] | meshcc mesh invite | meshcc mesh join <invite> [--force] | meshcc mesh distrusted | meshcc mesh trust <peer ID | all>\n')
  return 2
}

/**
 * `mesh distrusted` lists the producers whose results failed a verification ([cache] verify_rate);
 * `mesh trust <peer ID | all>` accepts their entries again. The daemon notices within a second.
 */
async function trustCommand(config: Config, sub: 'distrusted' | 'trust', arg: string | undefined): Promise<number> {
  const { canonicalPeerId, clearDistrusted, distrustFile, readDistrusted } = await import('../cache/trust.js')
  const file = distrustFile(config.configDir)
  if (sub === 'distrusted') {
    const list = readDistrusted(file)
    if (list.length === 0) process.stdout.write('meshcc: no member is distrusted\n')
    for (const r of list) process.stdout.write(`${r.peerId}  since ${r.since}: ${r.reason}\n`)
    return 0
  }
  if (!arg) {
    process.stderr.write('meshcc: usage: meshcc mesh trust <peer ID | all> (meshcc mesh distrusted lists them)\n')
    return 2
  }
  let peer: string | null = null
  if (arg !== 'all') {
    try { peer = canonicalPeerId(arg, 'meshcc mesh trust') } catch (err) {
      process.stderr.write(`meshcc: ${(err as Error).message}\n`)
      return 2
    }
  }
  const removed = clearDistrusted(file, peer)
  if (removed.length === 0) {
    process.stdout.write(`meshcc: ${peer ?? 'nobody'} ${peer ? 'is not' : 'is'} distrusted (${file})\n`)
    return peer ? 1 : 0
  }
  process.stdout.write(`meshcc: trusted again: ${removed.map((r) => r.peerId).join(', ')}\n`)
  return 0
}

/** The members' addresses that a daemon stored belong to the mesh a new key leaves. */
function forgetStoredPeers(config: Config): void {
  rmSync(storedPeersFile(config), { force: true })
}

const JOIN_PROBE_MS = 3000


/**
 * Whether a TCP connection to any of these addresses opens within `ms` (a relayed address: its
 * relay's). Says only that something listens there; the daemon's dial proves the rest.
 */
async function anyAnswers(addrs: string[], ms: number): Promise<boolean> {
  const targets = addrs.map((a) => {
    const c = toMultiaddr(a.split('/p2p-circuit')[0]!)?.getComponents() ?? []
    const host = c[0]?.name === 'ip4' || c[0]?.name === 'ip6' || c[0]?.name?.startsWith('dns') ? c[0].value : undefined
    const port = Number(c.find((x) => x.name === 'tcp')?.value)
    return host && port > 0 ? { host, port } : null
  }).filter((t): t is { host: string; port: number } => t !== null).slice(0, 8)
  if (targets.length === 0) return false
  const one = (t: { host: string; port: number }) => new Promise<boolean>((resolve) => {
    const sock = connect({ host: t.host, port: t.port })
    const done = (ok: boolean) => { clearTimeout(timer); sock.destroy(); resolve(ok) }
    const timer = setTimeout(() => done(false), ms)
    sock.once('connect', () => done(true))
    sock.once('error', () => done(false))
  })
  const results = await Promise.all(targets.map(one))
  return results.some(Boolean)
}
