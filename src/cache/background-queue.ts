// Work a build hands over and does not wait for: publishing a result (the uploads happen here,
// later), verifying a remote result. Bounded three ways so that a slow or dead destination costs
// nothing but that work: a backlog of at most `maxItems` items and `maxBytes` bytes (the oldest
// are dropped, and counted), at most `concurrency` items in flight, and a byte rate (pace()) that
// uploads share so that publishing never takes the whole link.

export interface BackgroundQueueOptions<T> {
  /** do the work; a rejection is the caller's to count (run is expected to catch its own) */
  run: (item: T) => Promise<void>
  /** bytes an item holds in memory while it waits */
  size: (item: T) => number
  /** an item dropped unsent because the backlog was full or the queue stopped */
  onDrop?: (item: T) => void
  maxItems?: number
  maxBytes?: number
  concurrency?: number
  /** average upload rate through pace(), bytes per second; 0 = unpaced */
  bytesPerSec?: number
  /**
   * Items run together: up to `max` waiting items go to `run` at once (run is then not called),
   * and an item pushed while a slot is free waits `lingerMs` for others to join it.
   */
  group?: { max: number; lingerMs: number; run: (items: T[]) => Promise<void> }
}

export class BackgroundQueue<T> {
  private readonly items: T[] = []
  private bytes = 0
  private running = 0
  private stopped = false
  private busyUntil = 0
  private linger: NodeJS.Timeout | null = null
  private readonly idleWaiters: Array<() => void> = []
  private readonly maxItems: number
  private readonly maxBytes: number
  private readonly concurrency: number
  private readonly bytesPerSec: number

  constructor(private readonly opts: BackgroundQueueOptions<T>) {
    this.maxItems = opts.maxItems ?? 256
    this.maxBytes = opts.maxBytes ?? 256 * 1024 * 1024
    this.concurrency = Math.max(1, opts.concurrency ?? 1)
    this.bytesPerSec = opts.bytesPerSec ?? 0
  }

  /** Items waiting (not those in flight). */
  get length(): number { return this.items.length }
  get inFlight(): number { return this.running }

  /** Queue an item; never blocks, never throws. False when it was dropped at once (stopped, or larger than the backlog). */
  push(item: T): boolean {
    const n = this.opts.size(item)
    if (this.stopped || n > this.maxBytes) { this.opts.onDrop?.(item); return false }
    this.items.push(item)
    this.bytes += n
    const over = () => this.items.length > this.maxItems || this.bytes > this.maxBytes
    // a backlog past its bounds goes to a free slot before anything is dropped: no lingering then
    this.pump(!over())
    while (over()) {
      const old = this.items.shift()!
      this.bytes -= this.opts.size(old)
      this.opts.onDrop?.(old)
    }
    return true
  }

  /** Wait for this upload's share of the byte rate: call before sending `n` bytes. */
  async pace(n: number, signal?: AbortSignal): Promise<void> {
    if (this.bytesPerSec <= 0) return
    const now = Date.now()
    const start = Math.max(now, this.busyUntil)
    this.busyUntil = start + (n / this.bytesPerSec) * 1000
    if (start > now) await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, start - now)
      signal?.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true })
    })
  }

  /** Resolves when nothing waits and nothing is in flight (tests, shutdown). */
  idle(): Promise<void> {
    if (this.items.length === 0 && this.running === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  /** Drop what waits (counted) and wait for what is in flight. */
  async stop(): Promise<void> {
    this.stopped = true
    if (this.linger) clearTimeout(this.linger)
    this.linger = null
    for (const item of this.items.splice(0)) this.opts.onDrop?.(item)
    this.bytes = 0
    await this.idle()
  }

  /** Start what the free slots allow; `linger`: a group may wait for more items first (a push). */
  private pump(linger = false): void {
    const { group } = this.opts
    while (this.running < this.concurrency && this.items.length > 0) {
      if (group && linger && group.lingerMs > 0 && this.items.length < group.max) {
        this.linger ??= setTimeout(() => { this.linger = null; this.pump() }, group.lingerMs)
        return
      }
      const taken = this.items.splice(0, group ? group.max : 1)
      for (const item of taken) this.bytes -= this.opts.size(item)
      this.running++
      void (group ? group.run(taken) : this.opts.run(taken[0]!)).catch(() => {}).finally(() => {
        this.running--
        this.pump()
        if (this.items.length === 0 && this.running === 0) for (const w of this.idleWaiters.splice(0)) w()
      })
    }
    if (this.items.length === 0 && this.running === 0) for (const w of this.idleWaiters.splice(0)) w()
  }
}
