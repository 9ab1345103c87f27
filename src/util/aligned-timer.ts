// Periodic timers that fire on multiples of their period on the wall clock (since the epoch),
// instead of at whatever phase they happened to start.
//
// An idle daemon is woken mostly by timers and small messages. Waking a sleeping process costs
// far more CPU than the little work each wake-up does (on the 2-core test VM about 0.18 ms for
// a message that takes 0.03 ms to handle when it arrives with others). Aligned, the daemon's own
// 1, 2 and 5 s timers fire in one wake-up, and members whose clocks agree (NTP) publish their
// load in the same moment, so each member handles the others' messages in a few wake-ups
// instead of one each. With clocks that disagree, nothing is lost: phases are merely random, as
// they would be without alignment.

export interface AlignedTimer {
  stop(): void
}

/** Milliseconds from `now` until the next multiple of `periodMs`, at least a tenth of a period. */
export function msToNextMultiple(periodMs: number, now = Date.now()): number {
  let wait = periodMs - (now % periodMs)
  // A timer that fired a hair early (the monotonic and wall clocks differ slightly) must not
  // run again at once for the boundary it has just served.
  if (wait < periodMs / 10) wait += periodMs
  return wait
}

/**
 * Calls fn at every multiple of periodMs (wall clock) until stopped; `unref` lets the process
 * exit while the timer is the only thing left.
 */
export function everyAligned(periodMs: number, fn: () => void, opts: { unref?: boolean } = {}): AlignedTimer {
  if (!(periodMs >= 1)) throw new RangeError(`aligned timer period must be at least 1 ms, not ${periodMs}`)
  let timer: NodeJS.Timeout | null = null
  let stopped = false
  const schedule = () => {
    timer = setTimeout(() => {
      if (stopped) return
      try {
        fn()
      } finally {
        if (!stopped) schedule()
      }
    }, msToNextMultiple(periodMs))
    if (opts.unref) timer.unref()
  }
  schedule()
  return {
    stop() {
      stopped = true
      if (timer) clearTimeout(timer)
      timer = null
    }
  }
}
