// The namespace lab of the rows that need more than loopback (test/helpers/netns.ts): two hosts
// on one bridge, nothing in the root namespace. The runner starts itself again inside the first
// host ("builder"): the daemons it starts there have that host's loopback and its lab address,
// and reach the second host ("target"), where a job of theirs must not reach.
import { createNetnsLab, type NetnsHost } from '../../test/helpers/netns.js'

export const LAB_ENV = 'MESHCC_CHAOS_LAB'

export interface ChaosLab {
  /** where the rows run, with their daemons */
  builder: NetnsHost
  /** another host of the LAN */
  target: NetnsHost
  destroy(): Promise<void>
}

export function startLab(): { lab: ChaosLab } | { skip: string } {
  const r = createNetnsLab(2)
  if ('skip' in r) return r
  const [builder, target] = r.lab.hosts as [NetnsHost, NetnsHost]
  return { lab: { builder, target, destroy: () => r.lab.destroy() } }
}

/** What the run inside the lab is told about it (the environment variable's JSON). */
export function describeLab(lab: ChaosLab): { builder: NetnsHost; target: NetnsHost } {
  return { builder: lab.builder, target: lab.target }
}

/** The lab this process runs in, or null when it runs in the root namespace. */
export function labFromEnv(): { builder: NetnsHost; target: NetnsHost } | null {
  const text = process.env[LAB_ENV]
  if (!text) return null
  return JSON.parse(text) as { builder: NetnsHost; target: NetnsHost }
}
