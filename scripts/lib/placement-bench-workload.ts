// Placement benchmark, part 1: deterministic clusters, workloads and the ideal makespan.
// Everything here is a pure function of a scenario and a seed, so every policy is run on the
// very same builders and the very same jobs.

/** A seeded PRNG (mulberry32): fast, good enough for a simulation, repeatable across runs. */
export function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A seed for one named stream of one run (different streams never share numbers). */
export function subSeed(seed: number, stream: string): number {
  let h = 2166136261 ^ seed
  for (let i = 0; i < stream.length; i++) h = Math.imul(h ^ stream.charCodeAt(i), 16777619)
  return h >>> 0
}

function normal(r: () => number): number {
  const u = Math.max(r(), 1e-12)
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r())
}

function pickWeighted<T>(r: () => number, items: ReadonlyArray<readonly [T, number]>): T {
  const total = items.reduce((n, [, w]) => n + w, 0)
  let x = r() * total
  for (const [v, w] of items) if ((x -= w) <= 0) return v
  return items[items.length - 1]![0]
}

export interface BuilderSpec { id: string; slots: number; speed: number }

export interface Phase {
  /** base durations in ms (on a speed 1.0 machine), in submission order */
  jobs: number[]
  /** serial step on the client after the phase (a link, a code generator), ms */
  pauseAfterMs: number
}

export interface ClientSpec {
  id: string
  /** make -j: jobs this client has submitted and not yet finished */
  j: number
  /** [build] local_slots */
  localSlots: number
  localSpeed: number
  /** when this client's build starts, ms */
  startMs: number
  phases: Phase[]
}

export interface Scenario {
  name: string
  description: string
  builders: number
  /** declared slots and speed factor: either one kind (homogeneous) or a weighted mix */
  slotMix: ReadonlyArray<readonly [number, number]>
  speedMix: ReadonlyArray<readonly [number, number]>
  clients: number
  /** -j of each client */
  j: number
  localSlots: number
  totalJobs: number
  /** lognormal job durations: median (ms) and sigma; plus a share of long jobs */
  medianMs: number
  sigma: number
  longShare: number
  longMs: readonly [number, number]
  /** bursty: the build is cut into phases with a barrier and a serial step between them */
  bursty: boolean
  /** client start times spread over this many ms (0: all start together) */
  staggerMs: number
}

export interface Workload { builders: BuilderSpec[]; clients: ClientSpec[] }

export function makeWorkload(s: Scenario, seed: number): Workload {
  const rb = rng(subSeed(seed, `builders:${s.name}`))
  const builders: BuilderSpec[] = []
  for (let i = 0; i < s.builders; i++) {
    builders.push({ id: `b${String(i).padStart(2, '0')}`, slots: pickWeighted(rb, s.slotMix), speed: pickWeighted(rb, s.speedMix) })
  }
  const rj = rng(subSeed(seed, `jobs:${s.name}`))
  const duration = (): number => {
    if (rj() < s.longShare) return s.longMs[0] + rj() * (s.longMs[1] - s.longMs[0])
    return Math.min(60_000, Math.max(50, s.medianMs * Math.exp(s.sigma * normal(rj))))
  }
  const clients: ClientSpec[] = []
  const perClient = Math.floor(s.totalJobs / s.clients)
  for (let c = 0; c < s.clients; c++) {
    const n = c === s.clients - 1 ? s.totalJobs - perClient * (s.clients - 1) : perClient
    const phases: Phase[] = []
    if (!s.bursty) {
      phases.push({ jobs: Array.from({ length: n }, duration), pauseAfterMs: 0 })
    } else {
      // 3 to 6 directories of uneven size, each ending in a barrier and a serial step: make
      // waits for the directory, then links or generates code, then starts the next burst
      const k = 3 + Math.floor(rj() * 4)
      const weights = Array.from({ length: k }, () => 0.2 + rj())
      const wsum = weights.reduce((a, b) => a + b, 0)
      let left = n
      weights.forEach((wt, i) => {
        const size = i === k - 1 ? left : Math.min(left, Math.max(1, Math.round(n * wt / wsum)))
        left -= size
        if (size > 0) phases.push({ jobs: Array.from({ length: size }, duration), pauseAfterMs: 0 })
      })
      for (let i = 0; i < phases.length - 1; i++) phases[i]!.pauseAfterMs = 300 + rj() * 1200
    }
    clients.push({
      id: `c${c}`, j: s.j, localSlots: s.localSlots, localSpeed: 1,
      startMs: s.staggerMs > 0 ? Math.round(rj() * s.staggerMs) : 0, phases
    })
  }
  return { builders, clients }
}

export interface IdealBreakdown {
  /** the lower bound on the makespan, ms */
  idealMs: number
  /** all work at the best rate the farm can reach, from each start time on */
  capacityMs: number
  /** the longest job on the fastest machine */
  longestMs: number
  /** a client's own chain: its phases one after the other, each no faster than its -j allows */
  clientPathMs: number
  totalWork: number
  /** Σ speed of every slot (builders' and the clients' local slots) */
  capacity: number
}

/** Σ speed of the `n` fastest slots among `speeds` (one entry per slot) */
function topRate(speeds: number[], n: number): number {
  return [...speeds].sort((a, b) => b - a).slice(0, n).reduce((a, b) => a + b, 0)
}

/**
 * A lower bound on any placement's makespan (network overhead ignored). At any instant at most
 * Σ -j jobs run, so the farm works at most at R = Σ speed of its Σ -j fastest slots (all of
 * them when Σ -j exceeds the slots); one client works at most at r_c = Σ speed of the -j fastest
 * slots it can use (the builders' and its own local slots).
 *   max( max over start times t: t + (work of the clients starting at or after t) / R,
 *        first start + longest job / fastest speed,
 *        max over clients: start + Σ phases max(phase work / r_c, longest in phase / fastest) + serial steps )
 */
export function idealMakespan(w: Workload): IdealBreakdown {
  const builderSlots = w.builders.flatMap((b) => Array<number>(b.slots).fill(b.speed))
  const allSlots = [...builderSlots, ...w.clients.flatMap((c) => Array<number>(c.localSlots).fill(c.localSpeed))]
  const maxSpeed = Math.max(...allSlots)
  const capacity = allSlots.reduce((a, b) => a + b, 0)
  const work = (c: ClientSpec) => c.phases.reduce((n, p) => n + p.jobs.reduce((a, b) => a + b, 0), 0)
  const totalWork = w.clients.reduce((n, c) => n + work(c), 0)
  let capacityMs = 0
  for (const c of w.clients) {
    const later = w.clients.filter((x) => x.startMs >= c.startMs)
    const rate = topRate(allSlots, later.reduce((n, x) => n + x.j, 0))
    capacityMs = Math.max(capacityMs, c.startMs + later.reduce((n, x) => n + work(x), 0) / rate)
  }
  let longest = 0
  for (const c of w.clients) for (const p of c.phases) for (const d of p.jobs) longest = Math.max(longest, d)
  const longestMs = Math.min(...w.clients.map((c) => c.startMs)) + longest / maxSpeed
  let clientPathMs = 0
  for (const c of w.clients) {
    const rate = topRate([...builderSlots, ...Array<number>(c.localSlots).fill(c.localSpeed)], c.j)
    let t = c.startMs
    for (const p of c.phases) {
      const pw = p.jobs.reduce((a, b) => a + b, 0)
      t += Math.max(pw / rate, Math.max(0, ...p.jobs) / maxSpeed) + p.pauseAfterMs
    }
    clientPathMs = Math.max(clientPathMs, t)
  }
  return { idealMs: Math.max(capacityMs, longestMs, clientPathMs), capacityMs, longestMs, clientPathMs, totalWork, capacity }
}
