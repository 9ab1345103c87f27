// The shared cache as the compile pipeline sees it: one object that asks the mesh (MeshCache),
// then the second tier ([cache] remote), after a local miss; hands every result made here to
// both in the background; and samples the results this machine did not make for verification
// ([cache] verify_rate). Each part is optional: no mesh, no tier, or neither (then there is no
// SharedCache at all). Nothing here throws into a build or makes it wait beyond a lookup's budget.
import type { Config } from '../config.js'
import type { Logger } from '../log.js'
import type { CacheEntry } from '../cache/entry-format.js'
import { Verifier, type VerifierStats, type VerifyJob } from '../cache/verifier.js'
import { openRemoteTier, type RemoteTier, type TierStats } from '../cache/tiers/index.js'
import type { TrustPolicy } from '../cache/trust.js'
import type { BuiltBy, MeshCache, MeshCacheStats } from './mesh-cache.js'
import { sharedIdentity } from './shared-identity.js'

export type SharedSource = 'mesh' | 'tier'

/** A verified entry from elsewhere: who made it, and where it came from. */
export interface SharedHit {
  entry: CacheEntry
  producer: string
  source: SharedSource
  /** the entry as encoded, checked against its key and checksum (kept as it is by the local store) */
  encoded?: Buffer
}

/** What `meshcc status` and `-s` show of the shared cache (only the parts that run). */
export interface SharedCacheStatus {
  mesh: MeshCacheStats | null
  tier: TierStats | null
  verifier: VerifierStats
  verify_rate: number
}

export class SharedCache {
  constructor(private readonly opts: { mesh: MeshCache | null; tier: RemoteTier | null; verifier: Verifier; trust: TrustPolicy; log: Logger }) {}

  get trust(): TrustPolicy { return this.opts.trust }

  /**
   * The mesh first, then the second tier; null when neither has it (or both failed). Never throws.
   * `follow`: the key is a manifest set's, whose result the mesh may send along (mesh-cache.ts).
   */
  async lookup(key: string, opts: { follow?: boolean } = {}): Promise<SharedHit | null> {
    const m = await this.opts.mesh?.lookup(key, [], opts)
    if (m) return { entry: m.entry, encoded: m.encoded, producer: m.producer, source: 'mesh' }
    const t = await this.opts.tier?.lookup(key)
    return t ? { ...t, source: 'tier' } : null
  }

  /**
   * A result made (or vouched for) here: signed and sent to the key's owners and the tier, in the
   * background; `built`: the builder that compiled it still holds its outputs (mesh-cache.ts);
   * `encoded`: the entry encoded for `key` already (for the local store), which the mesh signs as it is.
   */
  publish(key: string, entry: CacheEntry, built?: BuiltBy, encoded?: Promise<readonly Buffer[]>): void {
    this.opts.mesh?.publish(key, entry, built, encoded)
    this.opts.tier?.publish(key, entry)
  }

  /** Sample a result made elsewhere for a local recompile; true when it was taken (its `release` runs later). */
  verify(job: VerifyJob): boolean {
    return this.opts.verifier.consider(job)
  }

  setVerifyRate(rate: number): void {
    this.opts.verifier.setRate(rate)
  }

  status(): SharedCacheStatus {
    return { mesh: this.opts.mesh?.stats() ?? null, tier: this.opts.tier?.stats() ?? null, verifier: this.opts.verifier.stats(), verify_rate: this.opts.verifier.rate }
  }

  /** Publishing and verification idle (tests, shutdown). */
  async flushed(): Promise<void> {
    await Promise.all([this.opts.mesh?.flushed(), this.opts.tier?.flushed(), this.opts.verifier.idle()])
  }

  /** Stop the tier and the verifier; the MeshCache belongs to the mesh service, which stops it. */
  async stop(): Promise<void> {
    await Promise.all([this.opts.tier?.stop(), this.opts.verifier.stop()])
  }
}

/**
 * The daemon's shared cache for this config, over the mesh's MeshCache (null without a mesh or
 * with [cache] shared = false); null when there is neither a mesh cache nor a second tier.
 * Throws a one-line Error for a bad [cache] trust, [mesh] deny or [cache] remote value.
 */
export async function openSharedCache(config: Config, mesh: MeshCache | null, log: Logger): Promise<SharedCache | null> {
  if (!mesh && config.cache.remote === '') return null
  const { signer, trust } = await sharedIdentity(config, log)
  const tier = openRemoteTier(config.cache.remote, signer, trust, log)
  const verifier = new Verifier({ rate: config.cache.verifyRate, trust, log })
  if (tier) log.info(`second-tier cache: ${tier.name}`)
  return new SharedCache({ mesh, tier, verifier, trust, log })
}
