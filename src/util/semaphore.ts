// A counting semaphore: bounds how many compilers run at once so a -j200 build queues in
// the daemon instead of thrashing the machine.
export class Semaphore {
  private readonly waiters: Array<() => void> = []
  private freed: Array<() => void> = []
  private used = 0

  constructor(private limit: number) {}

  get running(): number { return this.used }
  get queued(): number { return this.waiters.length }
  get capacity(): number { return this.limit }

  /** Resolves when a slot is free (without taking it): lets a job race a local slot against other work. */
  whenFree(): Promise<void> {
    if (this.used < this.limit) return Promise.resolve()
    return new Promise((resolve) => this.freed.push(resolve))
  }

  /** A new limit (a reloaded config): more room wakes waiters now; less takes effect as jobs end. */
  setLimit(limit: number): void {
    this.limit = limit
    while (this.used < this.limit && this.waiters.length > 0) {
      this.used++
      this.waiters.shift()!()
    }
  }

  async acquire(): Promise<() => void> {
    if (this.used < this.limit) {
      this.used++
    } else {
      await new Promise<void>((resolve) => this.waiters.push(resolve))
    }
    let released = false
    return () => {
      if (released) return
      released = true
      const next = this.used <= this.limit ? this.waiters.shift() : undefined
      if (next) next()
      else {
        this.used--
        const watchers = this.freed
        this.freed = []
        for (const w of watchers) w()
      }
    }
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire()
    try {
      return await fn()
    } finally {
      release()
    }
  }
}
