// The mesh's state beside the config file, kept across restarts (each written whole: temp file, then rename):
// - mesh-bootstrap.txt: the addresses of the invite `meshcc mesh join` took last (replaced by the next join)
// - mesh-peers.json: the members' addresses as the mesh itself last reported them, so a daemon
//   finds a member again after that member moved (a new port, a new address) or after the
//   invite's member left; dialed at start besides the configured bootstrap addresses
// - mesh-listen.json: the ports this daemon listened on, asked for again at the next start so
//   that the addresses the other members stored stay good
// All three are read with size limits and validated loosely: a damaged file is ignored, never fatal.
import { readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import type { Config } from '../config.js'
import { writeFileAtomic, writeFileAtomicSync } from '../util/atomic-write.js'

const MAX_STATE_FILE_BYTES = 256 * 1024
/** members kept in mesh-peers.json (the most recently seen first) */
export const MAX_STORED_PEERS = 64
export const MAX_STORED_ADDRS = 4
const MAX_ADDR_LENGTH = 256
/** a member not seen for this long is dropped from mesh-peers.json */
export const STORED_PEER_MAX_AGE_MS = 14 * 24 * 3600_000

export function joinedBootstrapFile(config: Config): string {
  return join(config.configDir, 'mesh-bootstrap.txt')
}

export function storedPeersFile(config: Config): string {
  return join(config.configDir, 'mesh-peers.json')
}

export function listenPortsFile(config: Config): string {
  return join(config.configDir, 'mesh-listen.json')
}

function readSmall(file: string): string | null {
  try {
    if (statSync(file).size > MAX_STATE_FILE_BYTES) return null
    return readFileSync(file, 'utf8')
  } catch {
    return null
  }
}

function readJson(file: string): Record<string, unknown> | null {
  const text = readSmall(file)
  if (text === null) return null
  try {
    const doc = JSON.parse(text) as unknown
    return typeof doc === 'object' && doc !== null && !Array.isArray(doc) ? doc as Record<string, unknown> : null
  } catch {
    return null
  }
}

export function readJoinedBootstrap(config: Config): string[] {
  const text = readSmall(joinedBootstrapFile(config))
  if (text === null) return []
  return text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#') && l.length <= MAX_ADDR_LENGTH).slice(0, 64)
}

/** Replaces the joined addresses with these (an invite's). */
export function writeJoinedBootstrap(config: Config, addrs: string[]): void {
  writeFileAtomicSync(joinedBootstrapFile(config), '# bootstrap peers from the last "meshcc mesh join"; one multiaddr per line\n' + addrs.join('\n') + '\n', 0o600)
}

export interface StoredPeer {
  peerId: string
  addrs: string[]
  /** ms epoch when this daemon last had the member in its view */
  seen: number
}

export function readStoredPeers(config: Config, now = Date.now()): StoredPeer[] {
  const doc = readJson(storedPeersFile(config))
  if (!doc || doc.v !== 1 || !Array.isArray(doc.peers)) return []
  const out: StoredPeer[] = []
  for (const p of doc.peers.slice(0, MAX_STORED_PEERS) as unknown[]) {
    const e = p as Partial<StoredPeer> | null
    if (typeof e?.peerId !== 'string' || e.peerId.length > 128 || !Array.isArray(e.addrs) || typeof e.seen !== 'number') continue
    if (now - e.seen > STORED_PEER_MAX_AGE_MS) continue
    const addrs = e.addrs.filter((a): a is string => typeof a === 'string' && a.length > 0 && a.length <= MAX_ADDR_LENGTH).slice(0, MAX_STORED_ADDRS)
    if (addrs.length > 0) out.push({ peerId: e.peerId, addrs, seen: e.seen })
  }
  return out
}

/** The newest entry per member, most recently seen first, within the bounds. */
export function mergeStoredPeers(current: StoredPeer[], previous: StoredPeer[], self: string, now = Date.now()): StoredPeer[] {
  const byId = new Map<string, StoredPeer>()
  for (const p of [...current, ...previous]) {
    if (p.peerId === self || now - p.seen > STORED_PEER_MAX_AGE_MS || p.addrs.length === 0) continue
    const had = byId.get(p.peerId)
    if (!had || had.seen < p.seen) byId.set(p.peerId, { peerId: p.peerId, addrs: p.addrs.slice(0, MAX_STORED_ADDRS), seen: p.seen })
  }
  return [...byId.values()].sort((a, b) => b.seen - a.seen).slice(0, MAX_STORED_PEERS)
}

export async function writeStoredPeers(config: Config, peers: StoredPeer[]): Promise<void> {
  await writeFileAtomic(storedPeersFile(config), Buffer.from(JSON.stringify({ v: 1, peers }, null, 1) + '\n'), 0o600)
}

/** The ports this identity listened on last time, by configured listen address. */
export function readListenPorts(config: Config, peerId: string): Record<string, number> {
  const doc = readJson(listenPortsFile(config))
  if (!doc || doc.peer !== peerId || typeof doc.ports !== 'object' || doc.ports === null) return {}
  const out: Record<string, number> = {}
  for (const [listen, port] of Object.entries(doc.ports as Record<string, unknown>).slice(0, 16)) {
    if (typeof port === 'number' && Number.isInteger(port) && port > 0 && port < 65536) out[listen] = port
  }
  return out
}

export function writeListenPorts(config: Config, peerId: string, ports: Record<string, number>): void {
  writeFileAtomicSync(listenPortsFile(config), JSON.stringify({ peer: peerId, ports }) + '\n', 0o600)
}
