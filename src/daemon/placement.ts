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
