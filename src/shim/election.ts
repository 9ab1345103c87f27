// Which mesh node serves the sccache scheduler shim: every node computes this from its own
// membership view, so the rule must be pure and give the same answer everywhere.

export interface ShimMember {
  peerId: string
  /** this node is willing to serve the shim ([shim] enabled) */
  shim: boolean
  /** when the member was last heard from (ms); liveness is the caller's business */
  lastSeen: number
}

/**
 * The lowest peer id among shim-capable members, or null when there is none.
 * Ids are compared by UTF-16 code units (`<`), never `localeCompare`, whose order depends
 * on the machine's locale and could make two nodes elect different servers.
 * `now` is accepted for call-site symmetry but not used: the caller passes only live
 * members, and filtering by time here would let clock skew split the vote.
 */
export function electShimServer(members: ReadonlyArray<ShimMember>, now?: number): string | null {
  void now
  let best: string | null = null
  for (const m of members) {
    if (m.shim !== true || typeof m.peerId !== 'string' || m.peerId === '') continue
    if (best === null || m.peerId < best) best = m.peerId
  }
  return best
}
