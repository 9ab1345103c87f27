// Peer id strings parsed once. The load view, the connector and the status code ask about the
// same few members many times a second; parsing is base58 work each time, and libp2p caches a
// PeerId's string form on the object, so a kept object also makes its lookups cheap.
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'

const MAX_KEPT = 10_000
const kept = new Map<string, PeerId>()

/** peerIdFromString, memoised; throws like it on a malformed id */
export function peerIdOf(id: string): PeerId {
  let p = kept.get(id)
  if (p === undefined) {
    p = peerIdFromString(id)
    if (kept.size >= MAX_KEPT) kept.clear()
    kept.set(id, p)
  }
  return p
}
