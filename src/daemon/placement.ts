// Which peer gets a job: two random candidates, drawn with probability proportional to their
// free slots, and the better of the two by free slots, speed, RTT and whether it already
// holds the toolchain. Random draws keep many clients reading the same (slightly stale) view
// from herding onto one "best" peer; the second draw keeps the choice close to least-loaded.
// Pure, so the placement benchmark measures exactly this code.

export interface Candidate {
  id: string
  /** advertised free slots minus this client's jobs already in flight there */
  free: number
  /** relative speed score from the load view (higher is faster) */
  speed: number
  rttMs: number | null
  hasToolchain: boolean
}

export function score(c: Candidate): number {
  return c.free * Math.max(1, c.speed) * (c.hasToolchain ? 2 : 1) / (1 + (c.rttMs ?? 5) / 20)
}

export function choosePeer(candidates: readonly Candidate[], random: () => number = Math.random): Candidate | null {
  const c = candidates.filter((x) => x.free > 0)
  if (c.length === 0) return null
  const total = c.reduce((n, x) => n + x.free, 0)
  const draw = (): Candidate => {
    let r = random() * total
    for (const x of c) if ((r -= x.free) <= 0) return x
    return c[c.length - 1]
  }
  const a = draw()
  const b = draw()
  return score(a) >= score(b) ? a : b
}
