// What kad-dht (16.x) does when a member starts or a connection opens, trimmed to what a mesh
// needs. A newcomer meets every member through member exchange and connects to each, and
// kad-dht puts every connected member in its routing table; the DHT's own start-up work then
// only asks the same members again. In a 30-member mesh on two cores that work was about a
// third of the CPU every member spends while a newcomer joins (npm run bench:mesh -- --no-dht),
// and the views wait for it.
//
// - The self-query ("who is close to me?", answered by every member with up to 20 peers, each
//   written to the peer store) first runs SELF_QUERY_AFTER_MS after start, like every later
//   one, instead of after 1 s: member exchange has already connected us to the members it
//   would find.
// - Other queries no longer wait for that first self-query (allowQueryWithZeroPeers): the
//   routing table refresh at start then finds an empty table and costs nothing, and a provide
//   or lookup runs as soon as the table has peers (dht-ads.ts does not query an empty table).
// - The platform record (dht-ads.ts, provideWhenSettled) is announced once no new connection
//   has opened for SETTLED_QUIET_MS: its lookup then asks members that have finished joining,
//   and it does not compete with the joins for CPU.
// - A new routing-table contact is pinged (a ping stream each way) before kad-dht adds it, to
//   keep offline peers out. A peer we are connected to right now is online: it is added at once
//   (a patch of kad-dht's internals: patches/dht-connected-contacts.ts).

export const SELF_QUERY_AFTER_MS = 5 * 60_000
export const SETTLED_QUIET_MS = 15_000
/** a mesh that never stops changing around us still gets our platform record */
export const SETTLED_MAX_WAIT_MS = 5 * 60_000

/** kad-dht options for the above (spread into its init). */
export const DHT_STARTUP_OPTIONS = {
  initialQuerySelfInterval: SELF_QUERY_AFTER_MS,
  allowQueryWithZeroPeers: true
} as const
