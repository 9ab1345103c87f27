// The second tier named by [cache] remote, or null when there is none.
import type { Logger } from '../../log.js'
import type { EntrySigner } from '../signed-entry.js'
import type { TrustPolicy } from '../trust.js'
import { HttpBackend } from './http.js'
import { RedisBackend } from './redis.js'
import { RemoteTier, type BlobBackend } from './remote-tier.js'
import { S3Backend } from './s3.js'

export { RemoteTier, type BlobBackend, type TierStats } from './remote-tier.js'

/** The backend for a [cache] remote value; throws a one-line Error naming what is wrong with it. */
export function backendFor(remote: string, env: Record<string, string | undefined> = process.env): BlobBackend {
  try {
    if (/^rediss?:/.test(remote)) return new RedisBackend(remote)
    return remote.startsWith('s3:') ? new S3Backend(remote, env) : new HttpBackend(remote)
  } catch (err) {
    throw new Error(`[cache] remote: ${(err as Error).message}`)
  }
}

export function openRemoteTier(remote: string, signer: EntrySigner, trust: TrustPolicy, log: Logger): RemoteTier | null {
  if (remote === '') return null
  return new RemoteTier({ backend: backendFor(remote), signer, trust, log })
}
