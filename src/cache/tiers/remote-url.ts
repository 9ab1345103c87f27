// What [cache] remote may name: checked when the config is read (config.ts), so a bad value is a
// config error naming the file, and again when the daemon opens the store (index.ts).
import { parseHttpStoreUrl } from './http.js'
import { parseRedisUrl } from './redis.js'
import { parseS3Url } from './s3.js'

export type RemoteKind = 'redis' | 'http' | 's3'

/** The kind of store a [cache] remote value names; throws a one-line Error for any other scheme. */
export function remoteKind(remote: string): RemoteKind {
  const scheme = /^([a-z0-9]+):\/\/\S/.exec(remote)?.[1]
  if (scheme === 'redis' || scheme === 'rediss') return 'redis'
  if (scheme === 'http' || scheme === 'https') return 'http'
  if (scheme === 's3') return 's3'
  throw new Error(`"${remote.slice(0, 80)}" is not a redis://, rediss://, http://, https:// or s3:// URL`)
}

/** Throws a one-line Error naming what is wrong with a [cache] remote value (credentials are not looked up). */
export function checkRemoteUrl(remote: string, env: Record<string, string | undefined>): void {
  const kind = remoteKind(remote)
  if (kind === 'redis') parseRedisUrl(remote)
  else if (kind === 'http') parseHttpStoreUrl(remote)
  else parseS3Url(remote, env)
}
