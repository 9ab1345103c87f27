// Patches: @libp2p/gossipsub 17.1.1, the node's gossipsub instance's status.hearbeatStartMs (sic),
//   set once right after the node started.
// Why: gossipsub runs its heartbeat every heartbeatInterval (1 s) from the moment it started, and
//   schedules each one from status.hearbeatStartMs. The daemon's other timers fire on the wall
//   clock's whole seconds (util/aligned-timer.ts) so that an idle daemon wakes up once per
//   period, not once per timer; setting the start to 0 (the epoch) moves the heartbeat onto the
//   whole seconds too. Not a bug of gossipsub: it has no option for the phase.
// Upstream: no issue or PR found. An upstream fix would be an option for the heartbeat's phase
//   (or its start time), so that it can share a wake-up with the application's timers.
// Drop it when gossipsub has such an option. Any version bump of @libp2p/gossipsub means
//   re-checking this file (test/libp2p-patches.test.ts, test/mesh-keepalive.test.ts).
import type { MeshLibp2p } from '../node.js'
import { applied, notApplied, type NodePatch, type PatchOutcome } from './patch.js'

function apply(node: MeshLibp2p): PatchOutcome {
  const status = (node.services.pubsub as unknown as { status?: { hearbeatStartMs?: unknown } }).status
  if (typeof status?.hearbeatStartMs !== 'number') return notApplied('gossipsub\'s status has no hearbeatStartMs (is it started?)')
  status.hearbeatStartMs = 0
  return applied()
}

export const gossipHeartbeatPatch: NodePatch = {
  scope: 'node',
  name: 'gossip-heartbeat',
  packages: { '@libp2p/gossipsub': '17.1.1' },
  touches: 'status.hearbeatStartMs of the node\'s GossipSub instance',
  upstream: 'none found: an option for the heartbeat\'s phase would replace it',
  apply
}
