// Which members hold an entry for the mesh: rendezvous (highest-random-weight) hashing. Each
// member gets a score per key, sha256(key, member); the `n` highest are the key's owners. Every
// member computes the same owners from the same member list, with no coordination, and when a
// member joins or leaves only the keys it owns (or now owns) move: about n/members of them, not
// all of them as with "hash modulo count". A member that leaves takes its entries with it; the
// next-highest member becomes an owner and fills as entries are published or read-repaired.
import { createHash } from 'node:crypto'

/** owners per key: one copy survives a member leaving, and a lookup asks two members at once */
export const DEFAULT_OWNERS = 2

/** The member's weight for a key: the first 8 bytes of sha256("key\0member"), as an unsigned number. */
export function rendezvousScore(key: string, member: string): bigint {
  return createHash('sha256').update(key).update('\0').update(member).digest().readBigUInt64BE(0)
}

/**
 * The `n` members with the highest score for `key`, best first. Pure: the same key and member set
 * (in any order, duplicates ignored) give the same owners.
 */
export function ownersOf(key: string, members: Iterable<string>, n = DEFAULT_OWNERS): string[] {
  const scored = [...new Set(members)].map((m) => ({ m, s: rendezvousScore(key, m) }))
  // ties (a 64-bit collision) broken by id, so every member still agrees
  scored.sort((a, b) => (a.s === b.s ? (a.m < b.m ? -1 : 1) : a.s > b.s ? -1 : 1))
  return scored.slice(0, Math.max(0, n)).map((x) => x.m)
}
