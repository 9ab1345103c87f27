// What every part of the shared cache needs from this machine: its signer (the daemon's identity
// key, the same one that is its peer ID in the mesh) and its trust policy ([cache] trust, [mesh]
// deny, the distrust list beside the config). One of each per config, however many parts ask.
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { Config } from '../config.js'
import type { Logger } from '../log.js'
import { loadOrCreateIdentity } from '../mesh/keys.js'
import type { EntrySigner } from '../cache/signed-entry.js'
import { TrustPolicy, distrustFile } from '../cache/trust.js'

export interface SharedIdentity { signer: EntrySigner; trust: TrustPolicy }

const opened = new Map<string, Promise<SharedIdentity>>()

/** This machine's signer and trust policy; throws a one-line Error for a bad [cache] trust or [mesh] deny entry. */
export function sharedIdentity(config: Config, log: Logger): Promise<SharedIdentity> {
  const id = `${config.mesh.identityFile}\0${config.configDir}\0${JSON.stringify(config.cache.trust)}\0${config.mesh.deny.join(',')}`
  let p = opened.get(id)
  if (!p) {
    p = (async () => {
      const privateKey = await loadOrCreateIdentity(config.mesh.identityFile)
      const peerId = peerIdFromPrivateKey(privateKey).toString()
      const trust = new TrustPolicy({ self: peerId, trust: config.cache.trust, deny: config.mesh.deny, file: distrustFile(config.configDir), log, configFile: config.file })
      return { signer: { peerId, privateKey }, trust }
    })()
    p.catch(() => opened.delete(id))
    opened.set(id, p)
  }
  return p
}
