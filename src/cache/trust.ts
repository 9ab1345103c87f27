// Whose cache entries this machine accepts. Three sources, checked in this order:
// - [mesh] deny: a member the operator threw out; its entries are refused, and dropped where held
// - the distrust list, distrusted.json beside the config: producers whose entries failed a
//   verification (verifier.ts adds them); kept until an operator clears it (`meshcc mesh trust`)
// - [cache] trust: "mesh" (any member holding the mesh key), "self" (only this machine's own
//   entries: the mesh as a backup of its own cache), or a list of peer IDs (and its own)
// The daemon and the CLI both write the distrust list (whole file: temp file, then rename); the
// daemon re-reads it when it changes, so a cleared producer is trusted again within a second.
import { readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from '../log.js'
import { clip } from '../log.js'
import { writeFileAtomicSync } from '../util/atomic-write.js'

export type TrustSetting = 'mesh' | 'self' | string[]

export interface DistrustRecord {
  peerId: string
  /** ISO time it was distrusted */
  since: string
  reason: string
}

const MAX_FILE_BYTES = 1024 * 1024
const MAX_RECORDS = 10_000
const MAX_REASON = 500
/** how often the daemon looks whether the file changed */
const RELOAD_CHECK_MS = 1000

export function distrustFile(configDir: string): string {
  return join(configDir, 'distrusted.json')
}

/** The records in the file; a missing file is an empty list, a damaged one too (with a warning). */
export function readDistrusted(file: string, log?: Logger): DistrustRecord[] {
  let text: string
  try {
    if (statSync(file).size > MAX_FILE_BYTES) throw new Error(`larger than ${MAX_FILE_BYTES} bytes`)
    text = readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log?.warn(`cannot read the distrust list ${file}: ${(err as Error).message}`)
    return []
  }
  try {
    const doc = JSON.parse(text) as { v?: unknown; peers?: unknown }
    if (doc.v !== 1 || !Array.isArray(doc.peers)) throw new Error('not a distrust list')
    return doc.peers.slice(0, MAX_RECORDS).filter((r): r is DistrustRecord =>
      r !== null && typeof r === 'object' && typeof r.peerId === 'string' && r.peerId.length <= 128 &&
      typeof r.since === 'string' && typeof r.reason === 'string')
  } catch (err) {
    log?.warn(`the distrust list ${file} is damaged (${(err as Error).message}); ignoring it`)
    return []
  }
}

export function writeDistrusted(file: string, records: DistrustRecord[]): void {
  writeFileAtomicSync(file, JSON.stringify({ v: 1, peers: records.slice(-MAX_RECORDS) }, null, 1) + '\n', 0o600)
}

/** Remove `peer` (or everyone, for null) from the list; the records removed. */
export function clearDistrusted(file: string, peer: string | null): DistrustRecord[] {
  const all = readDistrusted(file)
  const removed = all.filter((r) => peer === null || r.peerId === peer)
  if (removed.length > 0) writeDistrusted(file, all.filter((r) => !removed.includes(r)))
  return removed
}

/** A peer ID in its one canonical text form, or an Error naming `where`. */
export function canonicalPeerId(text: string, where: string): string {
  try {
    return peerIdFromString(text).toString()
  } catch {
    throw new Error(`${where}: "${clip(text, 80)}" is not a peer ID (expected e.g. 12D3KooW...)`)
  }
}

export interface TrustPolicyOptions {
  /** this machine's peer ID: its own entries are always accepted */
  self: string
  trust: TrustSetting
  deny: string[]
  /** the distrust list (distrustFile(config.configDir)) */
  file: string
  log: Logger
  /** the config file, for error messages */
  configFile?: string | null
}

export class TrustPolicy {
  private readonly self: string
  private readonly mode: 'mesh' | 'self' | 'list'
  private readonly trusted: Set<string>
  private readonly deny: Set<string>
  private distrust = new Map<string, DistrustRecord>()
  private fileStamp = ''
  private checkedAt = 0

  constructor(private readonly opts: TrustPolicyOptions) {
    const where = (key: string) => `${opts.configFile ? `${opts.configFile}: ` : ''}${key}`
    this.self = opts.self
    this.mode = Array.isArray(opts.trust) ? 'list' : opts.trust
    this.trusted = new Set(Array.isArray(opts.trust) ? opts.trust.map((p) => canonicalPeerId(p, where('[cache] trust'))) : [])
    this.deny = new Set(opts.deny.map((p) => canonicalPeerId(p, where('[mesh] deny'))))
    this.reload(true)
  }

  /** Why entries by `producer` are refused here, or null when they are accepted. */
  refusal(producer: string): string | null {
    const held = this.refusalToHold(producer)
    if (held !== null) return held
    if (producer === this.self) return null
    if (this.mode === 'self') return 'this machine accepts only its own entries ([cache] trust = "self")'
    if (this.mode === 'list' && !this.trusted.has(producer)) return 'not listed in [cache] trust'
    return null
  }

  /**
   * Why entries by `producer` may not even be held here for others, or null: only evidence against
   * it counts (denied, distrusted). Whom this machine trusts for its own builds ([cache] trust)
   * does not: the members it holds entries for may trust more.
   */
  refusalToHold(producer: string): string | null {
    if (this.deny.has(producer)) return 'its member is listed in [mesh] deny'
    if (producer === this.self) return null
    this.reload()
    const d = this.distrust.get(producer)
    return d ? `distrusted since ${d.since} (${d.reason}); "meshcc mesh trust ${producer}" clears it` : null
  }

  /** Whether an entry by `producer` may be used here. */
  accepts(producer: string): boolean {
    return this.refusal(producer) === null
  }

  /**
   * Refuse `producer`'s entries from now on, until an operator clears it: a verification found
   * one of its results wrong. This machine's own id is never added (its own compiler disagreeing
   * with itself is not something a trust list fixes). False when it was not added.
   */
  distrustProducer(producer: string, reason: string): boolean {
    if (producer === this.self) return false
    this.reload(true)
    if (this.distrust.has(producer)) return false
    const record: DistrustRecord = { peerId: producer, since: new Date().toISOString(), reason: clip(reason, MAX_REASON) }
    const records = [...this.distrust.values(), record]
    try {
      writeDistrusted(this.opts.file, records)
    } catch (err) {
      this.opts.log.error(`cannot write the distrust list ${this.opts.file}: ${(err as Error).message}; ${producer} is distrusted until the daemon restarts`)
    }
    this.distrust.set(producer, record)
    this.fileStamp = this.stamp()
    return true
  }

  distrusted(): DistrustRecord[] {
    this.reload()
    return [...this.distrust.values()]
  }

  private stamp(): string {
    try {
      const st = statSync(this.opts.file)
      return `${st.ino}:${st.mtimeMs}:${st.size}`
    } catch {
      return 'none'
    }
  }

  /** Re-read the file when it changed (checked at most once a second unless forced). */
  private reload(force = false): void {
    const now = Date.now()
    if (!force && now - this.checkedAt < RELOAD_CHECK_MS) return
    this.checkedAt = now
    const stamp = this.stamp()
    if (stamp === this.fileStamp) return
    this.fileStamp = stamp
    this.distrust = new Map(readDistrusted(this.opts.file, this.opts.log).map((r) => [r.peerId, r]))
  }
}
