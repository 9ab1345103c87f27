// Mesh-facing commands: status (table, JSON, live), jobs, --dist-status, mesh init|invite|join.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import type { Config } from '../config.js'
import { adminRequest, spawnDaemon } from '../launcher/client.js'
import type { MeshStatus } from '../daemon/mesh-service.js'
import { joinedBootstrapFile, readJoinedBootstrap } from '../daemon/mesh-service.js'
import { decodeInvite, encodeInvite, generateMeshKey, parseMeshKeyText, writeMeshKey } from '../mesh/keys.js'
import { formatDistStatus } from '../shim/dist-status.js'
import { familyTable, type FamilyCounts } from './stats-format.js'

export interface DaemonStatus {
  daemon: { pid: number; version: string; socket: string; cache_dir: string; running: number; queued: number; slots: number; families?: Record<string, FamilyCounts> }
  mesh: MeshStatus | null
  mesh_note: string | null
}

export async function fetchStatus(config: Config): Promise<DaemonStatus> {
  return JSON.parse(await adminRequest(config, 'status', { autostart: true, timeoutMs: 10_000 })) as DaemonStatus
}

function short(id: string): string {
  return id.length > 16 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id
}

export function formatStatus(s: DaemonStatus): string {
  const d = s.daemon
  let out = `meshcc ${d.version}, daemon pid ${d.pid}, ${d.running} compiling, ${d.queued} queued, ${d.slots} local slots\n`
  if (d.families && Object.keys(d.families).length > 0) out += familyTable(d.families).map((l) => `  ${l}`).join('\n') + '\n'
  if (!s.mesh) return out + `mesh: not running (${s.mesh_note ?? 'unknown'})\n`
  const m = s.mesh
  out += `mesh ${m.mesh_id}, this node ${m.peer_id}\n`
  out += `  listening on ${m.addresses.join(' ')}\n`
  const shim = m.shim.serving_peer ? `served by ${m.shim.serving_peer === m.peer_id ? `this node at http://${m.shim.listen ?? '?'}/` : short(m.shim.serving_peer)}` : 'not served (no shim-capable node)'
  out += `  sccache shim: ${shim}\n`
  const b = m.builder
  out += `  builder: ${b.capacity > 0 ? `offers ${b.capacity} cores (${b.offer}), sandbox ${b.sandbox}` : `not taking jobs (${b.sandbox_note ?? `offer = "${b.offer}"`})`}; ${b.running} running, ${b.jobs_done} done, ${b.jobs_failed} failed, ${b.jobs_refused} refused\n`
  for (const t of m.toolchain_transfers.slice(-3)) out += `  toolchain ${t.hash.slice(0, 12)} ${t.direction} ${t.direction === 'sent' ? 'to' : 'from'} ${short(t.peer)}: ${(t.bytes / 1048576).toFixed(1)} MiB in ${t.ms} ms\n`
  out += '\n'
  const header = ['PEER', 'NAME', 'CORES', 'RUNNING', 'QUEUED', 'FREE', 'LOAD', 'TOOLCHAINS', 'RTT', 'LINK', 'JOBS SENT/DONE']
  const rows = m.members.map((p) => [
    short(p.peer_id) + (p.self ? ' *' : ''), p.name, String(p.cores), String(p.running), String(p.queued), String(p.free_slots),
    p.load1.toFixed(2), String(p.toolchains), p.self ? '-' : p.rtt_ms === null ? '?' : `${p.rtt_ms.toFixed(1)}ms`,
    p.self ? 'self' : `${p.lan ? 'LAN ' : ''}${p.connection}`,
    p.self ? '-' : `${m.jobs_per_peer[p.peer_id]?.sent ?? 0}/${m.jobs_per_peer[p.peer_id]?.done ?? 0}`
  ])
  rows.push(['total', `${m.totals.members} nodes`, String(m.totals.cores), String(m.totals.running), String(m.totals.queued), String(m.totals.free_slots), '', '', '', '', ''])
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (r: string[]) => r.map((c, i) => (i >= 2 && i <= 8 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd()
  return out + [line(header), ...rows.map(line)].join('\n') + '\n'
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
}

async function restartDaemonIfRunning(config: Config): Promise<void> {
  try {
    await adminRequest(config, 'shutdown', { autostart: false, timeoutMs: 5000 })
  } catch {
    return // not running: it picks up the mesh when it next starts
  }
  const deadline = Date.now() + 35_000
  while (existsSync(config.daemon.socket) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
  spawnDaemon(config)
  process.stdout.write('meshcc: daemon restarted to join the mesh\n')
}

export async function meshCommand(config: Config, args: string[], force: boolean): Promise<number> {
  const [sub, arg] = args
  const keyFile = config.mesh.keyFile
  if (sub === 'init') {
    if (existsSync(keyFile) && !force) {
      process.stderr.write(`meshcc: a mesh key already exists at ${keyFile}; use --force to replace it (machines with the old key will no longer connect)\n`)
      return 1
    }
    writeMeshKey(keyFile, generateMeshKey())
    process.stdout.write(`meshcc: new mesh key written to ${keyFile}\nRun "meshcc mesh invite" to get a line that other machines pass to "meshcc mesh join".\n`)
    await restartDaemonIfRunning(config)
    return 0
  }
  if (sub === 'invite') {
    if (!existsSync(keyFile)) {
      process.stderr.write(`meshcc: no mesh key at ${keyFile}: run "meshcc mesh init" first (or "meshcc mesh join <invite>")\n`)
      return 1
    }
    const key = readFileSync(keyFile, 'utf8')
    const s = await fetchStatus(config)
    if (!s.mesh) {
      process.stderr.write(`meshcc: the daemon is not in the mesh (${s.mesh_note ?? 'unknown'}); restart it: meshcc --stop-server && meshcc --start-server\n`)
      return 1
    }
    process.stdout.write(encodeInvite({ key, addrs: s.mesh.addresses }) + '\n')
    return 0
  }
  if (sub === 'join') {
    if (!arg) {
      process.stderr.write('meshcc: usage: meshcc mesh join <invite>\n')
      return 2
    }
    const invite = decodeInvite(arg)
    if (existsSync(keyFile)) {
      const current = parseMeshKeyText(readFileSync(keyFile, 'utf8'))
      const incoming = parseMeshKeyText(invite.key)
      const same = 'hex' in current && 'hex' in incoming && current.hex === incoming.hex
      if (!same && !force) {
        process.stderr.write(`meshcc: ${keyFile} holds a different mesh key; use --force to leave that mesh and join this one\n`)
        return 1
      }
    }
    writeMeshKey(keyFile, invite.key)
    const file = joinedBootstrapFile(config)
    const addrs = [...new Set([...readJoinedBootstrap(config), ...invite.addrs])]
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 })
    writeFileSync(file, '# bootstrap peers from "meshcc mesh join"; one multiaddr per line\n' + addrs.join('\n') + '\n', { mode: 0o600 })
    process.stdout.write(`meshcc: joined: key in ${keyFile}, ${invite.addrs.length} bootstrap address(es) in ${file}\n`)
    await restartDaemonIfRunning(config)
    return 0
  }
  process.stderr.write('meshcc: usage: meshcc mesh init [--force] | meshcc mesh invite | meshcc mesh join <invite> [--force]\n')
  return 2
}
