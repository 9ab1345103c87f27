// The second tier named by [cache] remote, or null when there is none.
import type { Logger } from '../../log.js'
import type { EntrySigner } from '../signed-entry.js'
import type { TrustPolicy } from '../trust.js'
import { HttpBackend } from './http.js'
import { RedisBackend } from './redis.js'
import { RemoteTier, type BlobBackend } from './remote-tier.js'
import { remoteKind } from './remote-url.js'
import { S3Backend } from './s3.js'

export { RemoteTier, type BlobBackend, type TierStats } from './remote-tier.js'

/** The backend for a [cache] remote value; throws a one-line Error naming what is wrong with it. */
export function backendFor(remote: string, env: Record<string, string | undefined> = process.env): BlobBackend {
  try {
    const kind = remoteKind(remote)
    if (kind === 'redis') return new RedisBackend(remote)
    return kind === 's3' ? new S3Backend(remote, env) : new HttpBackend(remote)
  } catch (err) {
    throw new Error(`[cache] remote: ${(err as Error).message}`)
  }
}

/**
 * The tier for a [cache] remote value, or null. The value's form was checked with the config; what
 * is left to fail here (S3 keys from a profile that is not there) is logged and costs the tier's
 * hits, not the mesh's.
 */
export function openRemoteTier(remote: string, signer: EntrySigner, trust: TrustPolicy, log: Logger, env: Record<string, string | undefined> = process.env): RemoteTier | null {
  if (remote === '') return null
  let backend: BlobBackend
  try {
    backend = backendFor(remote, env)
  } catch (err) {
    log.error(`second-tier cache not used: ${(err as Error).message}`)
    return null
  }
  return new RemoteTier({ backend, signer, trust, log })
}
