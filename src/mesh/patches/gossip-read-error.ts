// Patches: @libp2p/gossipsub 17.1.1, GossipSub.handlePeerReadStreamError, replaced by an own
//   property of the node's gossipsub instance (the class and other instances stay as they are).
// Why: gossipsub forgets a peer entirely, its streams and its subscriptions (onPeerDisconnected),
//   when any inbound stream from it fails, also a stale one left on a connection that closed
//   while another to the same peer stays open (a crossing dial's duplicate, see connector.ts).
//   Libp2p then reports no new connection, so nothing brings the peer back: the two members
//   stopped hearing each other while connected, and each dropped out of the other's view
//   (bench:mesh saw views lose a member after convergence). Here a failed read stream makes
//   gossipsub forget the peer only when no connection to it is left open; when one is, the
//   other side reopens its stream, and gossip-repair.ts hands gossipsub the connection again if
//   it lost its own outbound stream.
// Upstream: https://github.com/ChainSafe/js-libp2p-gossipsub/issues/456 ("GossipSub treats Stream
//   reset as Peer Disconnect"; closed, but 17.1.1 still does it). The related
//   https://github.com/libp2p/js-libp2p/pull/3531 (in 17.1.1) drops closed outbound streams so a
//   reconnect gets a new one, and leaves a stream that closes on an open connection as a
//   follow-up. An upstream fix would drop only the failed stream and keep the peer while it is
//   connected.
// Drop it when gossipsub keeps a connected peer after a read error. Any version bump of
//   @libp2p/gossipsub means re-checking this file (test/libp2p-patches.test.ts and the
//   read-stream test in test/mesh-inproc.test.ts).
import type { PeerId } from '@libp2p/interface'
import type { Logger } from '../../log.js'
import type { MeshLibp2p } from '../node.js'
import { applied, notApplied, type NodePatch, type PatchOutcome } from './patch.js'

type ReadStreamError = (err: unknown, peer: PeerId) => void

function apply(node: MeshLibp2p, log: Logger): PatchOutcome {
  const gs = node.services.pubsub as unknown as { handlePeerReadStreamError?: ReadStreamError }
  const forget = gs.handlePeerReadStreamError
  if (typeof forget !== 'function') return notApplied('gossipsub has no handlePeerReadStreamError method')
  gs.handlePeerReadStreamError = (err: unknown, peer: PeerId): void => {
    if (node.getConnections(peer).some((c) => c.status === 'open')) {
      log.debug(`gossip: a read stream from ${peer.toString()} failed while connected; keeping the peer`)
      return
    }
    forget.call(gs, err, peer)
  }
  return applied()
}

export const gossipReadErrorPatch: NodePatch = {
  scope: 'node',
  name: 'gossip-read-error',
  packages: { '@libp2p/gossipsub': '17.1.1' },
  touches: 'handlePeerReadStreamError of the node\'s GossipSub instance',
  upstream: 'https://github.com/ChainSafe/js-libp2p-gossipsub/issues/456',
  apply
}
