// DHT provider records for capabilities ("platform:x64-linux", "toolchain:<hash>"): lets a node
// find who can build with a toolchain beyond its current connections. Keys are CIDv1 (raw,
// sha256) of 'meshcc:<meshid>:<name>', so two meshes never share records.
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import type { Logger } from '../log.js'
import type { MeshLibp2p } from './node.js'
import { errText } from './connector.js'

const PROVIDE_TIMEOUT_MS = 15_000
const REPROVIDE_EVERY_MS = 10 * 60_000
/** provides that reached nobody are retried this often (and after each new connection) */
const RETRY_PENDING_EVERY_MS = 30_000
/** after a new peer connects, retry provides that found nobody (debounced) */
const RETRY_AFTER_CONNECT_MS = 1500
const MAX_NAME_LENGTH = 256

/** The platform this node can build for, as a capability name. */
export function platformCapability(): string {
  return `platform:${process.arch}-${process.platform}`
}

export async function capabilityCid(meshId: string, name: string): Promise<CID> {
  const digest = await sha256.digest(new TextEncoder().encode(`meshcc:${meshId}:${name}`))
  return CID.createV1(raw.code, digest)
}

/** notBefore: a deferred provide (provideWhenSettled) does not run before this time, retries included */
interface Provided { done: boolean; running: Promise<void> | null; notBefore: number }

export class Advertiser {
  private readonly provided = new Map<string, Provided>()
  private queue: Promise<void> = Promise.resolve()
  private timer: NodeJS.Timeout | null = null
  private pendingTimer: NodeJS.Timeout | null = null
  private retryTimer: NodeJS.Timeout | null = null
  private readonly deferred = new Set<NodeJS.Timeout>()
  private readonly stopController = new AbortController()
  /** when the last connection to a new peer opened (or this advertiser was made) */
  private lastConnectAt = Date.now()
  private readonly onConnect = () => { this.lastConnectAt = Date.now(); this.scheduleRetry() }

  constructor(private readonly node: MeshLibp2p, private readonly meshId: string, private readonly log: Logger) {}

  get enabled(): boolean {
    return this.node.services.dht !== undefined
  }

  start(): void {
    if (!this.enabled) return
    this.node.addEventListener('peer:connect', this.onConnect)
    this.timer = setInterval(() => { for (const name of this.provided.keys()) void this.provide(name, true) }, REPROVIDE_EVERY_MS)
    this.timer.unref()
    this.pendingTimer = setInterval(() => this.retryPending(), RETRY_PENDING_EVERY_MS)
    this.pendingTimer.unref()
  }

  stop(): void {
    this.stopController.abort()
    this.node.removeEventListener('peer:connect', this.onConnect)
    if (this.timer) clearInterval(this.timer)
    if (this.pendingTimer) clearInterval(this.pendingTimer)
    if (this.retryTimer) clearTimeout(this.retryTimer)
    for (const t of this.deferred) clearTimeout(t)
    this.deferred.clear()
  }

  /**
   * Announces `name` once this node's connections have settled: no new connection for
   * `quietMs`, and at most `maxWaitMs` after this call. What is announced at start (the
   * platform) so waits out the join, while the newcomer connects to every member and each
   * lookup would ask members still joining (dht-startup.ts). `find` counts it for this node at
   * once.
   */
  provideWhenSettled(name: string, quietMs: number, maxWaitMs: number): void {
    checkName(name)
    if (!this.enabled || this.provided.has(name)) return
    const entry: Provided = { done: false, running: null, notBefore: Infinity }
    this.provided.set(name, entry)
    const deadline = Date.now() + maxWaitMs
    const check = () => {
      const now = Date.now()
      const settledAt = Math.min(this.lastConnectAt + quietMs, deadline)
      if (now < settledAt) { wait(settledAt - now); return }
      entry.notBefore = 0
      void this.provide(name)
    }
    const wait = (ms: number) => {
      const t = setTimeout(() => { this.deferred.delete(t); check() }, ms)
      t.unref()
      this.deferred.add(t)
    }
    check()
  }

  /**
   * Announces that this node provides `name`. Resolves when the attempt finished; never rejects
   * (with no DHT peers yet the record is kept and announced again when a peer connects).
   */
  provide(name: string, again = false): Promise<void> {
    checkName(name)
    if (!this.enabled) return Promise.resolve()
    let p = this.provided.get(name)
    if (p?.running) return p.running
    if (p?.done && !again) return Promise.resolve()
    if (p && !p.done && Date.now() < p.notBefore) return Promise.resolve()
    if (!p) { p = { done: false, running: null, notBefore: 0 }; this.provided.set(name, p) }
    const entry = p
    // one provide at a time: bounded load however many toolchains get announced
    const run = this.queue.then(async () => {
      if (this.stopController.signal.aborted) return
      // with an empty routing table kad-dht would park the query until its timeout
      if (this.routingTableSize() === 0) return
      const t0 = Date.now()
      try {
        const cid = await capabilityCid(this.meshId, name)
        await this.node.contentRouting.provide(cid, { signal: AbortSignal.any([AbortSignal.timeout(PROVIDE_TIMEOUT_MS), this.stopController.signal]) })
        entry.done = true
        this.log.debug(`announced ${name} in the DHT (${Date.now() - t0} ms)`)
      } catch (err) {
        if (!this.stopController.signal.aborted) this.log.debug(`announcing ${name} in the DHT did not complete: ${errText(err)}; will retry`)
      }
    }).finally(() => { entry.running = null })
    entry.running = run
    this.queue = run
    return run
  }

  /** Peer ids (strings) that announced `name`, self included when we provide it. */
  async find(name: string, timeoutMs: number): Promise<string[]> {
    checkName(name)
    const found = new Set<string>()
    if (this.provided.has(name)) found.add(this.node.peerId.toString())
    if (!this.enabled || this.routingTableSize() === 0) return [...found]
    const signal = AbortSignal.any([AbortSignal.timeout(Math.max(1, timeoutMs)), this.stopController.signal])
    try {
      const cid = await capabilityCid(this.meshId, name)
      for await (const p of this.node.contentRouting.findProviders(cid, { signal })) {
        found.add(p.id.toString())
        if (found.size >= 1000) break
      }
    } catch (err) {
      // a timeout just ends the search: return what we have
      if (!signal.aborted) this.log.debug(`DHT search for ${name} failed: ${errText(err)}`)
    }
    return [...found].sort()
  }

  /** kad-dht's routing table size; null when the implementation does not expose it */
  private routingTableSize(): number | null {
    const rt = (this.node.services.dht as unknown as { routingTable?: { size?: unknown } } | undefined)?.routingTable
    return typeof rt?.size === 'number' ? rt.size : null
  }

  private retryPending(): void {
    for (const [name, p] of this.provided) if (!p.done) void this.provide(name)
  }

  private scheduleRetry(): void {
    if (this.retryTimer) return
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null
      this.retryPending()
    }, RETRY_AFTER_CONNECT_MS)
    this.retryTimer.unref()
  }
}

function checkName(name: string): void {
  if (typeof name !== 'string' || name.length === 0 || name.length > MAX_NAME_LENGTH) {
    throw new TypeError(`capability name must be 1 to ${MAX_NAME_LENGTH} characters`)
  }
}
