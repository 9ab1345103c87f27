// A bare meshcc libp2p node (createMeshNode: tcp on 127.0.0.1, pnet, noise, yamux, gossipsub,
// optionally the DHT; no mDNS) for tests of the libp2p layer without the rest of the mesh.
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createMeshNode, type MeshLibp2p } from '../../src/mesh/node.js'
import { generateMeshKey, meshIdFromKey } from '../../src/mesh/keys.js'
import type { Logger } from '../../src/log.js'

/** A fresh mesh key as the bytes pnet takes. */
export function freshPsk(): Uint8Array {
  return new TextEncoder().encode(generateMeshKey().trimEnd())
}

/** A logger that keeps its warnings and errors as lines ("W ...", "E ..."). */
export function captureLog(lines: string[]): Logger {
  const log: Logger = {
    error: (m) => lines.push(`E ${m}`), warn: (m) => lines.push(`W ${m}`), info: () => {}, debug: () => {},
    child: () => log, enabled: () => true
  }
  return log
}

export async function startMeshNode(opts: { psk: Uint8Array; dht: boolean; log: Logger }): Promise<MeshLibp2p> {
  return createMeshNode({
    privateKey: await generateKeyPair('Ed25519'),
    psk: opts.psk,
    meshId: meshIdFromKey(opts.psk),
    listen: ['/ip4/127.0.0.1/tcp/0'],
    mdns: false,
    dht: opts.dht,
    isDenied: () => false,
    log: opts.log
  })
}
