// Placement benchmark, part 3: the scenarios and the policies compared.
import type { Policy } from './placement-bench-sim.js'
import type { Scenario } from './placement-bench-workload.js'

const HET_SLOTS = [[2, 0.2], [4, 0.35], [8, 0.3], [16, 0.15]] as const
const HET_SPEED = [[1.0, 0.4], [1.5, 0.4], [2.0, 0.2]] as const
const HOM_SLOTS = [[8, 1]] as const
const HOM_SPEED = [[1.0, 1]] as const

/** a compile: lognormal around 0.8 s (mean about 1 s), and 0.5 % heavy translation units of 3 to 6 s */
const JOBS = { medianMs: 800, sigma: 0.6, longShare: 0.005, longMs: [3000, 6000] as const, localSlots: 2 }

export const SCENARIOS: Scenario[] = [
  {
    name: 'hom20-steady', description: '20 builders × 8 slots, speed 1.0; 6 clients -j32 start together, 1200 jobs',
    builders: 20, slotMix: HOM_SLOTS, speedMix: HOM_SPEED, clients: 6, j: 32, totalJobs: 1200, bursty: false, staggerMs: 0, ...JOBS
  },
  {
    name: 'het20-steady', description: '20 builders, 2/4/8/16 slots, speed 1.0/1.5/2.0; 6 clients -j32 start together, 1200 jobs',
    builders: 20, slotMix: HET_SLOTS, speedMix: HET_SPEED, clients: 6, j: 32, totalJobs: 1200, bursty: false, staggerMs: 0, ...JOBS
  },
  {
    name: 'het20-light', description: 'as het20, but 4 clients -j16: fewer jobs in flight than slots, 800 jobs',
    builders: 20, slotMix: HET_SLOTS, speedMix: HET_SPEED, clients: 4, j: 16, totalJobs: 800, bursty: false, staggerMs: 0, ...JOBS
  },
  {
    name: 'het20-solo', description: 'as het20, one client -j128 (a single big build about the size of the farm), 1000 jobs',
    builders: 20, slotMix: HET_SLOTS, speedMix: HET_SPEED, clients: 1, j: 128, totalJobs: 1000, bursty: false, staggerMs: 0, ...JOBS
  },
  {
    name: 'het30-steady', description: '30 builders, mixed slots and speeds; 8 clients -j32 start together, 2000 jobs',
    builders: 30, slotMix: HET_SLOTS, speedMix: HET_SPEED, clients: 8, j: 32, totalJobs: 2000, bursty: false, staggerMs: 0, ...JOBS
  },
  {
    name: 'hom30-bursty', description: '30 builders × 8 slots; 8 clients -j48 starting within 5 s, builds cut into directories (barrier + 0.3-1.5 s serial step), 2000 jobs',
    builders: 30, slotMix: HOM_SLOTS, speedMix: HOM_SPEED, clients: 8, j: 48, totalJobs: 2000, bursty: true, staggerMs: 5000, ...JOBS
  },
  {
    name: 'het30-bursty', description: '30 builders, mixed slots and speeds; 8 clients -j48 starting within 5 s, directories with barriers, 2000 jobs',
    builders: 30, slotMix: HET_SLOTS, speedMix: HET_SPEED, clients: 8, j: 48, totalJobs: 2000, bursty: true, staggerMs: 5000, ...JOBS
  }
]

/**
 * The workload bench:placement --daemons plays on real daemons on this machine: one speed (the
 * stand-in compiler cannot tell builders apart), long jobs (a job costs the client and builder
 * daemons some CPU here whatever it sleeps; at about 6 jobs/s the 2 cores keep up), Σ -j a
 * little above the slots, clients starting within 3 s.
 */
export const DAEMONS_SCENARIO: Scenario = {
  name: 'daemons20', description: '20 real builder daemons declaring 1/2/4 slots, speed 1.0; 3 client daemons -j16 starting within 3 s, 240 stand-in jobs of 6 s median',
  builders: 20, slotMix: [[1, 0.3], [2, 0.4], [4, 0.3]], speedMix: HOM_SPEED, clients: 3, j: 16, totalJobs: 240, bursty: false, staggerMs: 3000,
  medianMs: 6000, sigma: 0.5, longShare: 0.02, longMs: [15_000, 25_000], localSlots: 0
}

export interface NamedPolicy { key: string; label: string; policy: Policy; proposal: boolean }

type MeshccPolicy = Extract<Policy, { kind: 'meshcc' }>
/** src now: until-view in-flight accounting, on "no-room" wait for room (polled) or a local slot */
const NOW: MeshccPolicy = { kind: 'meshcc', gossip: 'on-change', reserve: 'until-view', noRoom: 'wait-poll', score: 'as-built', localFirst: 'unless-faster-peer', refusal: 'mark-full' }

export const MESHCC: NamedPolicy = { key: 'meshcc', label: 'meshcc (src now)', proposal: false, policy: NOW }
export const RANDOM: NamedPolicy = { key: 'random', label: 'random (distcc-like)', proposal: false, policy: { kind: 'random' } }
export const OMNI: NamedPolicy = { key: 'omni', label: 'omniscient least-loaded', proposal: false, policy: { kind: 'omniscient' } }

/** variants: meshcc 0.1 for comparison, a stale-view model, and proposals (not in src/) */
export const VARIANTS: NamedPolicy[] = [
  {
    key: 'meshcc-0.1-as-built', proposal: false,
    label: 'meshcc 0.1 as built: own jobs counted for their whole life; no room in the view, or 3 refusals → the local queue for good',
    policy: { ...NOW, reserve: 'whole-job', noRoom: 'local-queue', score: 'two-choices', localFirst: 'always' }
  },
  { key: 'meshcc-2s', proposal: false, label: 'meshcc (src now) with the 2 s periodic gossip only (no on-change publish)', policy: { ...NOW, gossip: 'periodic' } },
  {
    key: 'wake-msg', proposal: true,
    label: 'the earlier A+B proposal as first simulated: a load message showing room wakes at most that many waiting jobs (no polling), one attempt each at that peer',
    policy: { ...NOW, noRoom: 'wake-on-message' }
  },
  { key: 'no-F', proposal: false, label: 'before F (commit db2bb21): a refusal leaves the view unchanged, so waiting jobs re-offer the peer every round trip', policy: { ...NOW, refusal: 'keep-view' } },
  {
    key: 'prev', proposal: false,
    label: 'meshcc as of 5e6a39d: two draws ∝ free slots, the better by free × speed; a free local slot always first',
    policy: { ...NOW, score: 'two-choices', localFirst: 'always' }
  },
  { key: 'tier-only', proposal: false, label: 'src now, but a free local slot always first (the fastest tier alone)', policy: { ...NOW, localFirst: 'always' } },
  { key: 'skip-only', proposal: false, label: 'src now, but the two-draw choosePeer (skipping a free local slot for a faster peer alone)', policy: { ...NOW, score: 'two-choices' } }
]
