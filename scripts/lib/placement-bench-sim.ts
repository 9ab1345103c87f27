// Placement benchmark, part 2: a discrete-event simulation of one build farm in one process.
// Simulated time only (ms): nothing sleeps, so a 40 s build simulates in milliseconds. The
// meshcc policy calls the real choosePeer from src/daemon/placement.ts; everything around it
// (compile-service's compileAndStore loop, remote-runner's effectiveFree/tryPeers/waitForRoom,
// builder.ts's admission, load-view.ts's publishing, the Semaphore's whenFree) is modelled
// here, rule for rule. meshcc 0.1's client logic is kept as a variant ('local-queue').
import { choosePeer, fasterPeerThanHere, type Candidate } from '../../src/daemon/placement.js'
import { rng, subSeed, type BuilderSpec, type ClientSpec, type Workload } from './placement-bench-workload.js'

// ---- the network and gossip model -------------------------------------------------------

export interface NetModel {
  /** one way, per remote job, for the inputs and again for the result (ms) */
  oneWayMs: number
  /** the header/accepted (or refused) round trip before a job is admitted (ms) */
  rttMs: number
  /** periodic load publish (load-view.ts DEFAULT_GOSSIP_INTERVAL_MS) */
  gossipIntervalMs: number
  /** extra publishes on a load change, at least this far apart (load-view.ts MIN_PUBLISH_GAP_MS) */
  minPublishGapMs: number
  /** gossip propagation, uniform in [min, max] per message and receiver */
  propMinMs: number
  propMaxMs: number
}

export const DEFAULT_NET: NetModel = { oneWayMs: 5, rttMs: 2, gossipIntervalMs: 2000, minPublishGapMs: 100, propMinMs: 5, propMaxMs: 25 }

/** remote-runner.ts MAX_ATTEMPTS */
export const MAX_ATTEMPTS = 3

// ---- policies ---------------------------------------------------------------------------

export type Policy =
  | { kind: 'random' }
  | { kind: 'omniscient' }
  | {
    kind: 'meshcc'
    /** 'on-change': what load-view.ts does (2 s timer plus a publish on every load change, ≥100 ms apart); 'periodic': the 2 s timer only */
    gossip: 'on-change' | 'periodic'
    /**
     * 'until-view': remote-runner.ts now (effectiveFree): only own jobs sent after the peer's
     * last load message arrived (minus IN_FLIGHT_MARGIN_MS) count against its freeSlots;
     * 'whole-job': meshcc 0.1, own jobs counted for their whole life
     */
    reserve: 'whole-job' | 'until-view'
    /**
     * what a job does when no peer takes it:
     * 'wait-poll': src now: tryPeers offers it to up to 3 peers (a refusal is backpressure, not a
     *   failure), then on "no-room" compile-service races remote.waitForRoom(job, 1000) (poll the
     *   view every 25-75 ms) against cpu.whenFree(), and repeats until a peer takes it or a local
     *   slot is free;
     * 'local-queue': meshcc 0.1: with no room in the view, or after 3 refusals, queue behind the
     *   local slots (the Semaphore) for good;
     * 'wake-on-message': this benchmark's earlier proposal B (never built): a load message showing
     *   room wakes at most that many waiting jobs, each makes one attempt at that very peer
     */
    noRoom: 'wait-poll' | 'local-queue' | 'wake-on-message'
    /** 'as-built': the real choosePeer; 'two-choices': choosePeer before the fastest tier (chooseTwoChoices) */
    score?: 'as-built' | 'two-choices'
    /**
     * 'unless-faster-peer': src now, a free local slot first unless the real fasterPeerThanHere
     * finds a peer with room that is clearly faster; 'always': a free local slot first, as meshcc did up to 5e6a39d
     */
    localFirst?: 'always' | 'unless-faster-peer'
    /**
     * 'keep-view': src now, a refusal changes nothing in the view (the peer still shows the room
     * it advertised, so waitForRoom returns at once and tryPeers offers the job again);
     * 'mark-full': PROPOSAL F, a refusal counts the peer as full until its next load message
     * arrives, or REFUSED_HOLD_MS have passed, whichever comes first
     */
    refusal?: 'keep-view' | 'mark-full'
  }

/**
 * src/daemon/placement.ts's choosePeer before the fastest tier (up to commit 5e6a39d): two
 * draws in proportion to free slots, and the better of the two by free × speed (× 2 with the
 * toolchain, less for a far peer). A big slow peer beat a small fast one even when each would
 * start the job at once.
 */
export function chooseTwoChoices(candidates: readonly Candidate[], random: () => number): Candidate | null {
  const c = candidates.filter((x) => x.free > 0)
  if (c.length === 0) return null
  const total = c.reduce((n, x) => n + x.free, 0)
  const draw = (): Candidate => {
    let r = random() * total
    for (const x of c) if ((r -= x.free) <= 0) return x
    return c[c.length - 1]!
  }
  const old = (x: Candidate) => x.free * Math.max(1, x.speed) * (x.hasToolchain ? 2 : 1) / (1 + (x.rttMs ?? 5) / 20)
  const a = draw()
  const b = draw()
  return old(a) >= old(b) ? a : b
}

/** remote-runner.ts IN_FLIGHT_MARGIN_MS: a job sent this close before a load message may not be counted in it yet */
export const RESERVE_MARGIN_MS = 50
/** PROPOSAL F: how long a refusal at most stands in for a load message the peer has not sent yet */
export const REFUSED_HOLD_MS = 250
/** compile-service.ts: remote.waitForRoom(prepared, 1000) */
export const WAIT_FOR_ROOM_MS = 1000
/** remote-runner.ts waitForRoom: the view is polled every 25 + random × 50 ms */
export const POLL_MIN_MS = 25
export const POLL_JITTER_MS = 50

/** client-side preprocessing before placement, ms */
export const preprocessMs = (d: number): number => Math.min(150, Math.max(20, 0.05 * d))

// ---- results ----------------------------------------------------------------------------

export interface RunResult {
  makespanMs: number
  jobs: number
  /** jobs run on the client's own slots at once: free local slot first (compile-service's rule) */
  localFirst: number
  /** meshcc 0.1: jobs queued behind the local slots because no peer had room in the view */
  noRoomLocal: number
  /** meshcc: refusals from builders (each one a header round trip) */
  refusals: number
  /** meshcc 0.1: jobs compiled locally after three refusals */
  fallbacks: number
  /** meshcc (now, and the wake-on-message variant): jobs that waited for room or a local slot at least once */
  waited: number
  /** meshcc now: jobs compiled locally after tryPeers found no room (a local slot had freed by then, or while they waited) */
  localAfterWait: number
  /** meshcc now: waitForRoom checks of the view (one per poll, and one on entry) */
  polls: number
  /** random: jobs that waited in a builder's queue; omniscient: in the central queue */
  queued: number
  /** mean ms a job spent between submission and the start of its compile */
  meanWaitMs: number
  /** load messages delivered to clients */
  gossipMessages: number
  /** how long the build went on after the last remote compile ended (local slots only), ms */
  localTailMs: number
}

// ---- the event loop ---------------------------------------------------------------------

class EventQueue {
  private t: number[] = []
  private s: number[] = []
  private f: Array<() => void> = []
  private seq = 0
  get size(): number { return this.t.length }
  private less(i: number, j: number): boolean {
    return this.t[i]! < this.t[j]! || (this.t[i] === this.t[j] && this.s[i]! < this.s[j]!)
  }
  private swap(i: number, j: number): void {
    [this.t[i], this.t[j]] = [this.t[j]!, this.t[i]!];
    [this.s[i], this.s[j]] = [this.s[j]!, this.s[i]!];
    [this.f[i], this.f[j]] = [this.f[j]!, this.f[i]!]
  }
  push(time: number, fn: () => void): void {
    this.t.push(time); this.s.push(this.seq++); this.f.push(fn)
    let i = this.t.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!this.less(i, p)) break
      this.swap(i, p); i = p
    }
  }
  pop(): [number, () => void] {
    const top: [number, () => void] = [this.t[0]!, this.f[0]!]
    const last = this.t.length - 1
    this.swap(0, last)
    this.t.pop(); this.s.pop(); this.f.pop()
    let i = 0
    for (;;) {
      const l = 2 * i + 1, r = l + 1
      let m = i
      if (l < this.t.length && this.less(l, m)) m = l
      if (r < this.t.length && this.less(r, m)) m = r
      if (m === i) break
      this.swap(i, m); i = m
    }
    return top
  }
}

interface ViewEntry { free: number; speed: number; seq: number; receivedAt: number }

interface BuilderState {
  spec: BuilderSpec
  idx: number
  running: number
  /** random: jobs waiting at this builder (distccd's accept backlog) */
  queue: Array<() => void>
  // gossip
  seq: number
  lastPublish: number
  extraPending: boolean
}

interface ClientState {
  spec: ClientSpec
  idx: number
  phase: number
  next: number
  inFlight: number
  pausing: boolean
  finishedAt: number
  localRunning: number
  localQueue: Array<() => void>
  /** meshcc: this client's load view, one entry per builder */
  view: ViewEntry[]
  /** meshcc: send times of this client's jobs in flight, per builder */
  sent: number[][]
  /** meshcc proposal F: when each builder last refused this client */
  refusedAt: number[]
  /** meshcc wake-on-message variant: jobs waiting for room */
  waiting: Array<(peer: BuilderState | null) => boolean>
  /** meshcc now: Semaphore.whenFree() watchers, resolved together when a local slot is released with no one queued */
  freeWatchers: Array<() => void>
}

export function simulate(w: Workload, policy: Policy, seed: number, net: NetModel = DEFAULT_NET): RunResult {
  const q = new EventQueue()
  let now = 0
  const at = (t: number, fn: () => void) => q.push(t, fn)
  const pr = rng(subSeed(seed, 'policy')) // the same random stream for every policy: fewer spurious differences
  const gr = rng(subSeed(seed, 'gossip'))
  const jr = rng(subSeed(seed, 'poll')) // waitForRoom's jitter: its own stream, so the others do not shift

  const builders: BuilderState[] = w.builders.map((spec, idx) => ({ spec, idx, running: 0, queue: [], seq: 0, lastPublish: -Infinity, extraPending: false }))
  const clients: ClientState[] = w.clients.map((spec, idx) => ({
    spec, idx, phase: 0, next: 0, inFlight: 0, pausing: false, finishedAt: -1, localRunning: 0, localQueue: [],
    // the daemons were up before the build: every view starts with an idle snapshot
    view: builders.map((b) => ({ free: b.spec.slots, speed: b.spec.speed * 100, seq: 0, receivedAt: -Infinity })),
    sent: builders.map(() => []),
    refusedAt: builders.map(() => -Infinity),
    waiting: [],
    freeWatchers: []
  }))
  const res: RunResult = {
    makespanMs: 0, jobs: 0, localFirst: 0, noRoomLocal: 0, refusals: 0, fallbacks: 0, waited: 0, localAfterWait: 0, polls: 0,
    queued: 0, meanWaitMs: 0, gossipMessages: 0, localTailMs: 0
  }
  let lastRemoteEnd = 0
  const remoteEnded = () => { lastRemoteEnd = Math.max(lastRemoteEnd, now) }
  let waitSum = 0
  let done = 0
  const startedAfter = (submitted: number) => { waitSum += now - submitted }

  // ---- the client: make -j over phases ----
  const fill = (c: ClientState): void => {
    if (c.pausing || c.finishedAt >= 0) return
    const phase = c.spec.phases[c.phase]!
    while (c.inFlight < c.spec.j && c.next < phase.jobs.length) {
      const d = phase.jobs[c.next++]!
      c.inFlight++
      res.jobs++
      // the daemon preprocesses (cache key, inputs) before it places the job: about 5 % of the
      // compile, 20 to 150 ms, the same for every policy; a job's wait counts from here
      at(now + preprocessMs(d), () => place(c, d, now, () => { c.inFlight--; fill(c) }))
    }
    if (c.next >= phase.jobs.length && c.inFlight === 0) {
      if (c.phase + 1 < c.spec.phases.length) {
        c.pausing = true
        at(now + phase.pauseAfterMs, () => { c.pausing = false; c.phase++; c.next = 0; fill(c) })
      } else {
        c.finishedAt = now
        done++
      }
    }
  }

  // ---- local slots: compile-service's Semaphore(max(1, local_slots)), FIFO ----
  const localCap = (c: ClientState) => Math.max(1, c.spec.localSlots)
  const runLocal = (c: ClientState, d: number, submitted: number, cb: () => void): void => {
    const start = () => {
      startedAfter(submitted)
      at(now + d / c.spec.localSpeed, () => {
        // Semaphore release: the slot goes to the next queued job, else it is freed and every
        // whenFree() watcher is resolved
        const next = c.localQueue.shift()
        if (next) next()
        else { c.localRunning--; onLocalFree(c) }
        cb()
      })
    }
    if (c.localRunning < localCap(c)) { c.localRunning++; start() } else c.localQueue.push(start)
  }
  const localFree = (c: ClientState) => c.spec.localSlots > 0 && c.localRunning < c.spec.localSlots
  let onLocalFree: (c: ClientState) => void = () => {}

  let place: (c: ClientState, d: number, submitted: number, cb: () => void) => void

  if (policy.kind === 'random') {
    // distcc-like: a host drawn at random in proportion to its declared slots (a DISTCC_HOSTS
    // list with host/N entries, --randomize); a full host does not refuse, the job waits in its
    // queue (distccd's listen backlog) until one of its slots frees
    const totalSlots = builders.reduce((n, b) => n + b.spec.slots, 0)
    place = (c, d, submitted, cb) => {
      if (localFree(c)) { res.localFirst++; runLocal(c, d, submitted, cb); return }
      let x = pr() * totalSlots
      let b = builders[builders.length - 1]!
      for (const y of builders) if ((x -= y.spec.slots) <= 0) { b = y; break }
      const target = b
      at(now + net.rttMs + net.oneWayMs, () => {
        const start = () => {
          startedAfter(submitted)
          at(now + d / target.spec.speed, () => {
            const next = target.queue.shift()
            if (next) next()
            else target.running--
            remoteEnded()
            at(now + net.oneWayMs, cb)
          })
        }
        if (target.running < target.spec.slots) { target.running++; start() } else { res.queued++; target.queue.push(start) }
      })
    }
  } else if (policy.kind === 'omniscient') {
    // a central scheduler that sees every slot instantly: the free slot (a builder's, or the
    // client's own) that finishes the job first; when none is free, a central FIFO queue that
    // hands each freed slot to the oldest waiting job (a freed local slot to its own client's)
    interface Waiting { c: ClientState; d: number; submitted: number; cb: () => void }
    const central: Waiting[] = []
    const runOn = (b: BuilderState, job: Waiting) => {
      b.running++
      at(now + net.rttMs + net.oneWayMs, () => {
        startedAfter(job.submitted)
        at(now + job.d / b.spec.speed, () => {
          b.running--
          remoteEnded()
          const k = central.shift()
          if (k) { res.queued++; runOn(b, k) }
          at(now + net.oneWayMs, job.cb)
        })
      })
    }
    onLocalFree = (c) => {
      if (!localFree(c)) return
      const i = central.findIndex((x) => x.c === c)
      if (i >= 0) {
        const [job] = central.splice(i, 1)
        res.queued++
        runLocal(c, job!.d, job!.submitted, job!.cb)
      }
    }
    place = (c, d, submitted, cb) => {
      const overhead = net.rttMs + 2 * net.oneWayMs
      let best: BuilderState | null = null
      let bestT = localFree(c) ? d / c.spec.localSpeed : Infinity
      let bestLoad = localFree(c) ? c.localRunning / c.spec.localSlots : Infinity
      for (const b of builders) {
        if (b.running >= b.spec.slots) continue
        const t = overhead + d / b.spec.speed
        const load = b.running / b.spec.slots
        if (t < bestT - 1e-9 || (Math.abs(t - bestT) <= 1e-9 && load < bestLoad)) { best = b; bestT = t; bestLoad = load }
      }
      if (best) runOn(best, { c, d, submitted, cb })
      else if (bestT < Infinity) { res.localFirst++; runLocal(c, d, submitted, cb) } else central.push({ c, d, submitted, cb })
    }
  } else {
    const p = policy
    // ---- builders' load gossip (load-view.ts) ----
    const publish = (b: BuilderState) => {
      b.lastPublish = now
      const msg = { seq: ++b.seq, free: Math.max(0, b.spec.slots - b.running), speed: b.spec.speed * 100 }
      for (const c of clients) {
        if (c.finishedAt >= 0) continue
        at(now + net.propMinMs + gr() * (net.propMaxMs - net.propMinMs), () => {
          res.gossipMessages++
          const v = c.view[b.idx]!
          if (msg.seq <= v.seq) return // late duplicate through another path
          v.seq = msg.seq; v.free = msg.free; v.speed = msg.speed; v.receivedAt = now // MeshMember.lastSeen
          if (p.noRoom === 'wake-on-message') wake(c, Math.max(0, effectiveFree(c, b)), b)
        })
      }
    }
    const notifyLoadChanged = (b: BuilderState) => {
      if (p.gossip !== 'on-change' || b.extraPending) return
      const wait = b.lastPublish + net.minPublishGapMs - now
      if (wait <= 0) { publish(b); return }
      b.extraPending = true
      at(now + wait, () => { b.extraPending = false; publish(b) })
    }
    for (const b of builders) {
      const tick = () => { if (done < clients.length) { publish(b); at(now + net.gossipIntervalMs, tick) } }
      at(gr() * net.gossipIntervalMs, tick) // timers in arbitrary phase
    }

    // ---- remote-runner.ts: effectiveFree, candidates, pick ----
    const effectiveFree = (c: ClientState, b: BuilderState): number => {
      const v = c.view[b.idx]!
      if (p.refusal === 'mark-full' && c.refusedAt[b.idx]! > v.receivedAt && now - c.refusedAt[b.idx]! < REFUSED_HOLD_MS) return 0
      const mine = c.sent[b.idx]!
      if (p.reserve === 'whole-job') return v.free - mine.length
      let n = 0
      for (const t of mine) if (t > v.receivedAt - RESERVE_MARGIN_MS) n++
      return v.free - n
    }
    const candidates = (c: ClientState, exclude: ReadonlySet<number>) =>
      builders.filter((b) => !exclude.has(b.idx) && effectiveFree(c, b) > 0)
    const pick = (c: ClientState, exclude: ReadonlySet<number>): BuilderState | null => {
      const members = candidates(c, exclude)
      const choose = p.score === 'two-choices' ? chooseTwoChoices : choosePeer
      const chosen = choose(members.map((b): Candidate => ({
        id: b.spec.id, free: effectiveFree(c, b), speed: c.view[b.idx]!.speed, rttMs: 1, hasToolchain: true
      })), pr)
      return chosen ? members.find((b) => b.spec.id === chosen.id) ?? null : null
    }
    const unsend = (c: ClientState, b: BuilderState, sentAt: number) => {
      const l = c.sent[b.idx]!
      l.splice(l.indexOf(sentAt), 1)
    }
    /**
     * One offer (sendCompileJob): the header reaches the builder in rtt/2; builder.ts admits it
     * unless running >= slots ('busy'), and the answer is back rtt/2 later. The in-flight entry
     * (sent at `now`) is dropped when the reply arrives: at once on a refusal, after the result
     * otherwise. `refused` runs after a refusal has come back.
     */
    const offer = (c: ClientState, b: BuilderState, d: number, submitted: number, cb: () => void, refused: () => void): void => {
      const sentAt = now
      c.sent[b.idx]!.push(sentAt)
      at(now + net.rttMs / 2, () => {
        if (b.running >= b.spec.slots) {
          at(now + net.rttMs / 2, () => { res.refusals++; c.refusedAt[b.idx] = now; unsend(c, b, sentAt); refused() })
          return
        }
        b.running++
        notifyLoadChanged(b)
        at(now + net.rttMs / 2 + net.oneWayMs, () => {
          startedAfter(submitted)
          at(now + d / b.spec.speed, () => {
            b.running--
            remoteEnded()
            notifyLoadChanged(b)
            at(now + net.oneWayMs, () => { unsend(c, b, sentAt); cb() })
          })
        })
      })
    }

    // ---- src now: remote-runner.ts tryPeers/waitForRoom and compile-service.ts compileAndStore ----
    /**
     * tryPeers: up to MAX_ATTEMPTS offers, each to a peer picked among those with room in the
     * view and not yet tried in this call; a refusal is backpressure (the next pick, no failure
     * counted). `noRoom` when no untried peer shows room, or after three refusals. (Peer failures,
     * which make compile-service compile here at once, do not happen in this model.)
     */
    const tryPeers = (c: ClientState, d: number, submitted: number, cb: () => void, noRoom: () => void): void => {
      const tried = new Set<number>()
      const next = (attempt: number): void => {
        const b = attempt < MAX_ATTEMPTS ? pick(c, tried) : null
        if (!b) { noRoom(); return }
        tried.add(b.idx)
        offer(c, b, d, submitted, cb, () => next(attempt + 1))
      }
      next(0)
    }
    /**
     * compileAndStore's loop after a local-busy start: tryPeers; on "no-room", compile here if a
     * local slot is free, else race waitForRoom(job, 1000) against cpu.whenFree(), then compile
     * here if a local slot is free, else tryPeers again. waitForRoom checks the view at once, then
     * every 25-75 ms, and resolves when pick() finds a peer with room (or after 1 s); whenFree()
     * resolves every watcher when a local slot is released with no job queued for it, and the
     * first of them to run takes the slot. The losing side of the race is dropped (in src it runs
     * on but no longer affects the job).
     */
    const serve = (c: ClientState, d: number, submitted: number, cb: () => void, waitedBefore: boolean): void => {
      tryPeers(c, d, submitted, cb, () => {
        if (localFree(c)) { res.localAfterWait++; runLocal(c, d, submitted, cb); return }
        if (!waitedBefore) res.waited++
        let settled = false
        const resume = () => {
          if (settled) return
          settled = true
          if (localFree(c)) { res.localAfterWait++; runLocal(c, d, submitted, cb); return }
          serve(c, d, submitted, cb, true)
        }
        const deadline = now + WAIT_FOR_ROOM_MS
        const poll = () => {
          if (settled) return
          res.polls++
          // pick() !== null exactly when a candidate has effectiveFree > 0
          if (now >= deadline || candidates(c, new Set()).length > 0) { resume(); return }
          at(now + POLL_MIN_MS + jr() * POLL_JITTER_MS, poll)
        }
        poll() // Promise.race evaluates waitForRoom first: its first check is synchronous
        if (!settled) c.freeWatchers.push(resume)
      })
    }
    if (p.noRoom === 'wait-poll') {
      onLocalFree = (c) => {
        const watchers = c.freeWatchers
        c.freeWatchers = []
        for (const w of watchers) w()
      }
    }

    // ---- meshcc 0.1 (local-queue) and the earlier proposal (wake-on-message) ----
    // wake-on-message: a job with no room waits for whichever comes first: a free local slot, or
    // a load message showing room at a peer; then it makes one attempt at that very peer (no
    // cascade over stale entries), and waits again, first in line, when refused
    const waitForMessage = (c: ClientState, d: number, submitted: number, cb: () => void, front = false) => {
      res.waited++
      const job = (peer: BuilderState | null): boolean => {
        if (peer === null) {
          if (!localFree(c)) return false
          runLocal(c, d, submitted, cb)
          return true
        }
        if (effectiveFree(c, peer) <= 0) return false
        const others = new Set(builders.filter((b) => b !== peer).map((b) => b.idx))
        attempt(c, d, submitted, cb, others, MAX_ATTEMPTS - 1, true)
        return true
      }
      if (front) c.waiting.unshift(job)
      else c.waiting.push(job)
    }
    /** wake at most `n` waiting jobs, oldest first */
    const wake = (c: ClientState, n: number, peer: BuilderState | null) => {
      while (n-- > 0 && c.waiting.length > 0) {
        const job = c.waiting.shift()!
        if (!job(peer)) { c.waiting.unshift(job); break }
      }
    }
    if (p.noRoom === 'wake-on-message') onLocalFree = (c) => wake(c, 1, null)
    const fallback = (c: ClientState, d: number, submitted: number, cb: () => void, attempts: number, woken = false) => {
      if (woken) { waitForMessage(c, d, submitted, cb, true); return }
      if (attempts > 0) res.fallbacks++
      else res.noRoomLocal++
      if (p.noRoom === 'wake-on-message') waitForMessage(c, d, submitted, cb)
      else runLocal(c, d, submitted, cb)
    }
    /** meshcc 0.1 run(): up to 3 attempts, a refusal counts as one, then a local compile */
    const attempt = (c: ClientState, d: number, submitted: number, cb: () => void, tried: Set<number>, k: number, woken = false): void => {
      if (k >= MAX_ATTEMPTS) { fallback(c, d, submitted, cb, k, woken); return }
      const b = pick(c, tried)
      if (!b) { fallback(c, d, submitted, cb, k, woken); return }
      tried.add(b.idx)
      offer(c, b, d, submitted, cb, () => attempt(c, d, submitted, cb, tried, k + 1, woken))
    }

    // compile-service.ts: a free local slot first (wants(localFree) is false), then the mesh
    place = (c, d, submitted, cb) => {
      // remote-runner.ts wants(true): this machine's score in the view is its speed × 100, as the builders'
      const fasterPeer = p.localFirst === 'unless-faster-peer' &&
        fasterPeerThanHere(c.spec.localSpeed * 100, candidates(c, new Set()).map((b) => ({ speed: c.view[b.idx]!.speed, rttMs: 1 })))
      if (localFree(c) && !fasterPeer) { res.localFirst++; runLocal(c, d, submitted, cb); return }
      // now: wants(false) is true while any member accepts jobs (every builder here), with or
      // without room in the view; 0.1: only when a candidate had room, else the local queue
      if (p.noRoom === 'wait-poll') { serve(c, d, submitted, cb, false); return }
      if (candidates(c, new Set()).length === 0) { fallback(c, d, submitted, cb, 0); return }
      attempt(c, d, submitted, cb, new Set(), 0)
    }
  }

  for (const c of clients) at(c.spec.startMs, () => fill(c))
  while (q.size > 0 && done < clients.length) {
    const [t, fn] = q.pop()
    now = t
    fn()
  }
  if (done < clients.length) throw new Error(`simulation stalled: ${clients.length - done} client(s) never finished (${JSON.stringify(policy)})`)
  res.makespanMs = Math.max(...clients.map((c) => c.finishedAt))
  res.meanWaitMs = waitSum / Math.max(1, res.jobs)
  res.localTailMs = Math.max(0, res.makespanMs - lastRemoteEnd)
  return res
}
