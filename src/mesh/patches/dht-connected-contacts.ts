// Patches: @libp2p/kad-dht 16.4.5, routingTable.kb.verify of the node's DHT instance (the k-bucket's
//   check of a new contact, set to RoutingTable.verifyNewContact), replaced by an own property.
// Why: kad-dht pings a new routing-table contact (a ping stream each way) before adding it, to
//   keep offline peers out. A newcomer meets every member through member exchange and connects
//   to each, and kad-dht adds every connected member that speaks the DHT protocol: 29 pings for
//   a newcomer to a 30-member mesh, and one at every member, while all of them are busy with
//   the join (part of the DHT start-up work dht-startup.ts trims; npm run bench:mesh --
//   --no-dht). A peer we hold an open connection to is online: it is added at once; any other
//   contact is still pinged.
// Upstream: the ping came with https://github.com/libp2p/js-libp2p/pull/2745 ("ping peers before
//   adding to routing table"); no issue or PR about connected peers found. An upstream fix would
//   skip the new-contact ping for a peer with an open connection, or make it an option.
// Drop it when kad-dht does that. Any version bump of @libp2p/kad-dht means re-checking this
//   file (test/libp2p-patches.test.ts, test/dht-startup.test.ts).
import type { PeerId } from '@libp2p/interface'
import type { MeshLibp2p } from '../node.js'
import { applied, notApplied, notNeeded, type NodePatch, type PatchOutcome } from './patch.js'

interface Contact { peerId: PeerId }
type Verify = (contact: Contact, options?: unknown) => Promise<boolean>

function apply(node: MeshLibp2p): PatchOutcome {
  if (node.services.dht === undefined) return notNeeded('the DHT is off')
  const kb = (node.services.dht as unknown as { routingTable?: { kb?: { verify?: unknown } } }).routingTable?.kb
  if (!kb || typeof kb.verify !== 'function') return notApplied('kad-dht has no routingTable.kb.verify')
  const verify = (kb.verify as Verify).bind(kb)
  kb.verify = (async (contact: Contact, options?: unknown): Promise<boolean> => {
    if (node.getConnections(contact.peerId).some((c) => c.status === 'open')) return true
    return verify(contact, options)
  }) satisfies Verify
  return applied()
}

export const dhtConnectedContactsPatch: NodePatch = {
  scope: 'node',
  name: 'dht-connected-contacts',
  packages: { '@libp2p/kad-dht': '16.4.5' },
  touches: 'routingTable.kb.verify of the node\'s KadDHT instance',
  upstream: 'none found; the ping came with https://github.com/libp2p/js-libp2p/pull/2745',
  apply
}
