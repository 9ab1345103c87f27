// Which peer gets a job, and whether a free local slot should wait for a faster peer instead.
// Pure, so the placement benchmark (scripts/bench-placement.ts) measures exactly this code.
//
// A job goes to the fastest peers with room: a job runs 1/speed as long there, and the view
// says who has room. Peers within SAME_TIER of the fastest count as equally fast (speed scores
// are measured, so two identical machines never report quite the same one), and among those a
// draw in proportion to free slots spreads the jobs. Many clients reading the same view do
// pick the same tier; what keeps them from piling onto one peer is in remote-runner.ts: a
// client counts its own jobs in flight against a peer's advertised room, a full builder
// refuses an offer after one header round trip (no inputs sent), and a refusal marks the peer
// full until its next load message. The benchmark counts those refusals.
//
// Within the tier, a peer that already holds more of the job's inputs (the client knows what
// it sent each peer) weighs more in the draw, up to five times one that holds none: the bytes
// sent per job fall as a build goes on, and the load still spreads over every peer with room.

export interface Candidate {
  id: string
  /** advertised free slots minus this client's jobs already in flight there */
  free: number
  /** relative speed score from the load view (higher is faster) */
  speed: number
  rttMs: number | null
  hasToolchain: boolean
  /** reached through a relay member: the job's bytes cross two links and the relay's CPU */
  relayed?: boolean
  /** share of the job's input files this peer holds already, 0 to 1 (unknown: as if all) */
  inputsHeld?: number
}

/** peers this close to the fastest one with room count as equally fast */
export const SAME_TIER = 0.9
/**
 * A free local slot is skipped for a peer with room only when that peer is this much faster:
 * the margin pays for shipping the job, and keeps noise in the speed scores of equal machines
 * from sending work away.
 */
export const FASTER_THAN_HERE = 1.2

/**
 * A relayed link's cost beyond its RTT (which the relay's hop already raises): inputs,
 * toolchains and objects share two uplinks and the relay member's CPU (npm run bench:nat).
 * A relayed peer must be this much faster than a direct one to be chosen over it, and it is
 * chosen over a free local slot only when it is FASTER_THAN_HERE times faster after that.
 */
export const RELAYED_COST = 2.5

/** How fast a job gets done on this peer, relatively: speed, less for a far or relayed peer. */
export function reach(c: Pick<Candidate, 'speed' | 'rttMs' | 'relayed'>): number {
  return Math.max(1, c.speed) / (1 + (c.rttMs ?? 5) / 20) / (c.relayed ? RELAYED_COST : 1)
}

/** reach, and a peer that must first receive the toolchain counts as half as fast */
export function score(c: Candidate): number {
  return reach(c) * (c.hasToolchain ? 2 : 1)
}

export function choosePeer(candidates: readonly Candidate[], random: () => number = Math.random): Candidate | null {
  const withRoom = candidates.filter((x) => x.free > 0)
  if (withRoom.length === 0) return null
  const best = Math.max(...withRoom.map(score))
  const tier = withRoom.filter((x) => score(x) >= best * SAME_TIER)
  const weight = (x: Candidate) => x.free * (0.25 + (x.inputsHeld ?? 1))
  let r = random() * tier.reduce((n, x) => n + weight(x), 0)
  for (const x of tier) if ((r -= weight(x)) <= 0) return x
  return tier[tier.length - 1]!
}

/**
 * Whether a job should go to the mesh even though a local slot is free: some peer with room
 * (the candidates) gets it done FASTER_THAN_HERE times faster than this machine. `ownSpeed` is
 * this machine's score in the view (null before its first load message: stay local).
 */
export function fasterPeerThanHere(ownSpeed: number | null, candidates: ReadonlyArray<Pick<Candidate, 'speed' | 'rttMs' | 'relayed'>>): boolean {
  if (ownSpeed === null || !(ownSpeed > 0)) return false
  return candidates.some((c) => reach(c) > ownSpeed * FASTER_THAN_HERE)
}

// Hedging. A job sent to a peer may take far longer there than it would here (a stalled or
// overloaded builder, a crate on the critical path): once it has run HEDGE_FACTOR times as
// long as jobs of its kind usually take on that peer, and at least HEDGE_FLOOR_MS, a client
// with a free local slot compiles it here too and takes whichever result comes first. Past
// that bound the job is either one of the largest (where one more local run is cheap against
// its length) or its builder is slow; the floor keeps short C jobs, whose times on loopback
// jitter by tens of milliseconds, from being compiled twice.
//
// The usual time is kept per peer and toolchain, so rustc's crates (0.2 s to tens of seconds)
// never set the bound of C units there, nor the other way round. A job that had the peer
// fetch the toolchain is not a usual job: the peer lacked it when the job was placed, so the
// job's time holds the fetch and unpacking (rustc's toolchain is 175 MiB: 9.6 s on loopback,
// far more on a slow link) and, recorded, it would raise the bound for the next five or more
// jobs there to three times that, when rustc's jobs are few enough that those are a large
// part of the build. Such a job's time is left out: until a usual job has finished there,
// the bound is HEDGE_FACTOR times the floor.

/** never hedge a job before it has run this long on its builder */
export const HEDGE_FLOOR_MS = 2_000
/** hedge a job that has run this many times as long as the usual one on its builder */
export const HEDGE_FACTOR = 3
/** weight of the newest job in a peer's usual job time (about the last five jobs count) */
const JOB_TIME_WEIGHT = 0.3

/** How long jobs usually take, per key (a peer and a toolchain family): an EWMA of finished jobs. */
export class JobTimes {
  private readonly usual = new Map<string, number>()

  constructor(private readonly maxKeys = 4096) {}

  /** A job's time from acceptance to result; `fetchedToolchain`: the peer lacked its toolchain when it was placed (left out). */
  record(key: string, ms: number, fetchedToolchain = false): void {
    if (fetchedToolchain) return
    const before = this.usual.get(key)
    if (before === undefined && this.usual.size >= this.maxKeys) this.usual.clear()
    this.usual.set(key, before === undefined ? ms : before + JOB_TIME_WEIGHT * (ms - before))
  }

  get(key: string): number | null {
    return this.usual.get(key) ?? null
  }
}

/**
 * After how long a job running on a peer is also started here: HEDGE_FACTOR times its usual
 * time there; with no job of its kind finished there yet, HEDGE_FACTOR times the floor.
 */
export function hedgeAfterMs(usualMs: number | null): number {
  return Math.max(HEDGE_FLOOR_MS, HEDGE_FACTOR * (usualMs ?? HEDGE_FLOOR_MS))
}
