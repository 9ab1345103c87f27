// The gossip load view: we publish our load every interval and on change, and keep the latest
// message of every other member until it goes silent for `expiryMs`. Peers pick builders from
// this view; builders still make the final accept/refuse decision, so staleness costs a retry.
import { TopicValidatorResult, type Message } from '@libp2p/gossipsub'
import type { Logger } from '../log.js'
import type { MeshLibp2p } from './node.js'
import { decodeLoad, encodeLoad, loadTopic, LoadDecodeError, type LoadInfo, type LoadMessage } from './protocols/load-gossip.js'
import { errText } from './connector.js'
import { everyAligned, type AlignedTimer } from '../util/aligned-timer.js'

export type { LoadInfo } from './protocols/load-gossip.js'

export interface ViewEntry {
  peerId: string
  load: LoadInfo
  addrs: string[]
  seq: number
  /** local clock, ms epoch */
  lastSeen: number
  /** it asked its peers to forward gossip to it (forwarding.ts) */
  wantsForwarding: boolean
}

export const DEFAULT_GOSSIP_INTERVAL_MS = 2000
export const MAX_GOSSIP_INTERVAL_MS = 2000
export const MIN_GOSSIP_INTERVAL_MS = 100
/** extra publishes from notifyLoadChanged are at least this far apart */
export const MIN_PUBLISH_GAP_MS = 100

/** Silent for 3 intervals plus slack: 5 s at the default 1 s interval. */
export function defaultExpiryMs(intervalMs: number): number {
  return 3 * intervalMs + 2000
}

export interface LoadViewInit {
  node: MeshLibp2p
  meshId: string
  log: Logger
  name: string
  version: string
  getLoad: () => Omit<LoadInfo, 'version' | 'name'>
  getAddrs: () => string[]
  isDenied: (peerId: string) => boolean
  intervalMs: number
  expiryMs: number
  /** every valid message from another member (the connector dials members we are not connected to) */
  onMessage?: (peerId: string, addrs: string[]) => void
  /** the view changed (member joined, left or reported new load) */
  onChange?: () => void
  /** whether our messages ask peers to forward gossip to us */
  wantsForwarding?: () => boolean
  /** a silent member stays past the expiry while this says so (a dial to it is under way) */
  keepSilent?: (peerId: string) => boolean
  /** a member left the view because it went silent */
  onSilent?: (peerId: string) => void
}

export class LoadView {
  readonly topic: string
  private readonly entries = new Map<string, ViewEntry>()
  private seq = Date.now() // grows across restarts, so receivers never mistake a restart for stale data
  private lastPublish = 0
  /** placementSignature of our last published message */
  private lastPlacement = ''
  /** whether our last published message asked for forwarding */
  private lastFw = false
  private publishTimer: AlignedTimer | null = null
  private sweepTimer: AlignedTimer | null = null
  private extraTimer: NodeJS.Timeout | null = null
  private stopped = false
  private readonly self: string
  private readonly onGossip = (evt: CustomEvent<Message>) => this.handle(evt.detail)
  /** the validator's decoding, so the message event does not parse the same bytes again */
  private readonly validated = new WeakMap<Uint8Array, LoadMessage>()

  constructor(private readonly init: LoadViewInit) {
    this.topic = loadTopic(init.meshId)
    this.self = init.node.peerId.toString()
  }

  start(): void {
    const pubsub = this.init.node.services.pubsub
    pubsub.topicValidators.set(this.topic, (_peer, msg) => this.validate(msg))
    pubsub.addEventListener('message', this.onGossip)
    pubsub.subscribe(this.topic)
    // on the wall clock's multiples of the interval: every member publishes in the same moment
    // (see util/aligned-timer.ts), and the sweep shares the wake-up
    this.publishTimer = everyAligned(this.init.intervalMs, () => { void this.publish() })
    this.sweepTimer = everyAligned(Math.max(50, Math.min(1000, Math.floor(this.init.intervalMs / 2))), () => this.sweep())
    void this.publish()
  }

  /** Publishes a goodbye so the others drop us at once instead of after the expiry. */
  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    this.publishTimer?.stop()
    this.sweepTimer?.stop()
    if (this.extraTimer) clearTimeout(this.extraTimer)
    const pubsub = this.init.node.services.pubsub
    try {
      const res = await pubsub.publish(this.topic, encodeLoad(this.message(true)))
      // give the goodbye a moment to leave before the caller closes the connections
      if (res.recipients.length > 0) await new Promise((r) => setTimeout(r, 100))
    } catch { /* nobody listening */ }
    pubsub.removeEventListener('message', this.onGossip)
    pubsub.topicValidators.delete(this.topic)
  }

  /**
   * Publish now if what placement reads (free slots, accept policy, toolchains) changed since
   * our last message, at most one extra message per MIN_PUBLISH_GAP_MS. Other changes (jobs
   * running, queued) wait for the interval: a client starting and ending hundreds of jobs a
   * minute would otherwise send each member a message per job, and each costs every receiver.
   */
  notifyLoadChanged(): void {
    if (this.stopped || this.extraTimer || !this.worthTelling()) return
    const wait = this.lastPublish + MIN_PUBLISH_GAP_MS - Date.now()
    if (wait <= 0) { void this.publish(); return }
    this.extraTimer = setTimeout(() => {
      this.extraTimer = null
      if (this.worthTelling()) void this.publish()
    }, wait)
  }

  /**
   * What placement reads changed, or whether we need forwarding: a peer that no longer forwards
   * prunes every member whose latest message does not ask for it (forwarding.ts), so the ask
   * must not wait for the interval.
   */
  private worthTelling(): boolean {
    return this.placementChanged() || (this.init.wantsForwarding?.() ?? false) !== this.lastFw
  }

  private placementChanged(): boolean {
    return placementSignature(this.selfLoad()) !== this.lastPlacement
  }

  /** Other live members (self is not stored; mesh.ts adds it). */
  list(): ViewEntry[] {
    this.sweep()
    return [...this.entries.values()]
  }

  /** One live member's entry, if it is in the view. */
  get(peerId: string): ViewEntry | undefined {
    this.sweep()
    return this.entries.get(peerId)
  }

  selfLoad(): LoadInfo {
    return { ...this.init.getLoad(), version: this.init.version, name: this.init.name }
  }

  private message(bye = false): LoadMessage {
    const l = this.selfLoad()
    return {
      ...l, addrs: this.init.getAddrs(), seq: ++this.seq, timestamp: Date.now(),
      ...(bye ? { bye: true, accept: 'never' as const } : {}),
      ...(!bye && this.init.wantsForwarding?.() ? { wantsForwarding: true } : {})
    }
  }

  private async publish(): Promise<void> {
    if (this.stopped) return
    this.lastPublish = Date.now()
    const m = this.message()
    this.lastPlacement = placementSignature(m)
    this.lastFw = m.wantsForwarding === true
    try {
      await this.init.node.services.pubsub.publish(this.topic, encodeLoad(m))
    } catch (err) {
      this.init.log.debug(`load publish failed: ${errText(err)}`)
    }
  }

  private validate(msg: Message): TopicValidatorResult {
    if (msg.type !== 'signed') return TopicValidatorResult.Reject
    if (this.init.isDenied(msg.from.toString())) return TopicValidatorResult.Reject
    try {
      this.validated.set(msg.data, decodeLoad(msg.data))
      return TopicValidatorResult.Accept
    } catch {
      return TopicValidatorResult.Reject
    }
  }

  private handle(msg: Message): void {
    if (this.stopped || msg.topic !== this.topic || msg.type !== 'signed') return
    const from = msg.from.toString()
    if (from === this.self || this.init.isDenied(from)) return
    let m: LoadMessage
    try {
      m = this.validated.get(msg.data) ?? decodeLoad(msg.data)
    } catch (err) {
      if (err instanceof LoadDecodeError) this.init.log.debug(`bad load message from ${from}: ${err.message}`)
      return
    }
    this.apply(from, m)
  }

  /**
   * A member's own load message that reached us outside gossip, on a stream it authenticated
   * (member-exchange.ts): same rules as a gossiped one.
   */
  acceptDirect(from: string, m: LoadMessage): void {
    if (this.stopped || from === this.self || this.init.isDenied(from)) return
    this.apply(from, m)
  }

  /** The message we would publish now (for member exchange); counts as one of our sequence numbers. */
  ownMessage(): LoadMessage {
    return this.message()
  }

  private apply(from: string, m: LoadMessage): void {
    const prev = this.entries.get(from)
    if (prev && m.seq <= prev.seq) return // late duplicate through another path
    if (m.bye) {
      if (prev) {
        this.entries.delete(from)
        this.init.log.info(`mesh member left: ${prev.load.name || '?'} (${from})`)
        this.init.onChange?.()
      }
      return
    }
    const { addrs, seq, timestamp: _ts, bye: _bye, wantsForwarding, ...load } = m
    this.entries.set(from, { peerId: from, load, addrs, seq, lastSeen: Date.now(), wantsForwarding: wantsForwarding === true })
    this.init.onMessage?.(from, addrs)
    this.init.onChange?.()
    if (!prev) {
      this.init.log.info(`mesh member joined: ${load.name || '?'} (${from}), ${load.cores} cores`)
      this.notifyLoadChanged() // a member we may not reach: ask for forwarding now (worthTelling)
    }
  }

  /**
   * Drop a member now: its last connection closed (a killed daemon's sockets close at once).
   * If it is alive behind another path, its next message through the mesh brings it back.
   */
  forget(peerId: string, why: string): void {
    const e = this.entries.get(peerId)
    if (!e || this.stopped) return
    this.entries.delete(peerId)
    this.init.log.info(`mesh member ${why}, dropped: ${e.load.name || '?'} (${peerId})`)
    this.init.onChange?.()
  }

  private sweep(): void {
    const cutoff = Date.now() - this.init.expiryMs
    let changed = false
    for (const [id, e] of this.entries) {
      if (e.lastSeen < cutoff && !(this.init.keepSilent?.(id) ?? false)) {
        this.entries.delete(id)
        changed = true
        this.init.log.info(`mesh member silent for ${this.init.expiryMs} ms, dropped: ${e.load.name || '?'} (${id})`)
        this.init.onSilent?.(id)
      }
    }
    if (changed) this.init.onChange?.()
  }
}

/** The part of a load message that placement decides on. */
function placementSignature(l: Pick<LoadInfo, 'freeSlots' | 'accept' | 'toolchains'>): string {
  return `${l.freeSlots} ${l.accept} ${l.toolchains.join(',')}`
}
