// What every file in this directory describes and returns (see index.ts for the list).
import type { Logger } from '../../log.js'
import type { MeshLibp2p } from '../node.js'

/** 'not needed': nothing to fix here (e.g. Node already has the function, the DHT is off) */
export type PatchState = 'applied' | 'not needed' | 'not applied'

export interface PatchOutcome {
  state: PatchState
  /** for 'not applied': what was not found; otherwise a short note, possibly empty */
  detail: string
}

export interface PatchInfo {
  /** short name, used in log lines and tests */
  name: string
  /**
   * The npm packages whose internals it touches or whose behaviour it relies on, each at the
   * exact version it was written against: package.json pins the same ones, and a test fails
   * when they differ (a version bump means re-checking the patch).
   */
  packages: Readonly<Record<string, string>>
  /** the internal it touches */
  touches: string
  /** the upstream issue or pull request, or what an upstream fix would be where there is none */
  upstream: string
}

/** Patched once per process: a module's prototype or a global. */
export interface ProcessPatch extends PatchInfo {
  scope: 'process'
  /** idempotent: applies on the first call, then reports the same outcome */
  apply(): PatchOutcome
}

/** Patched on each libp2p node: a service instance's field or method. */
export interface NodePatch extends PatchInfo {
  scope: 'node'
  /** called once per node, right after createLibp2p */
  apply(node: MeshLibp2p, log: Logger): PatchOutcome
}

export type LibraryPatch = ProcessPatch | NodePatch

export const applied = (detail = ''): PatchOutcome => ({ state: 'applied', detail })
export const notNeeded = (detail: string): PatchOutcome => ({ state: 'not needed', detail })
export const notApplied = (detail: string): PatchOutcome => ({ state: 'not applied', detail })

/** Runs `apply` on the first call only, and reports that outcome on every call. */
export function once(apply: () => PatchOutcome): () => PatchOutcome {
  let outcome: PatchOutcome | null = null
  return () => (outcome ??= apply())
}
