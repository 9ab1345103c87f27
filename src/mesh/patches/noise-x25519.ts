// Replaces: @libp2p/noise 17.0.3's X25519 functions for Node (defaultCrypto from
//   '@libp2p/noise/crypto': generateX25519KeyPair and generateX25519SharedKey). Not a run-time
//   patch: it goes in through noise's public `crypto` option (node.ts), with everything else
//   noise's own defaultCrypto. It is here because it exists only for an upstream shortcoming
//   and copies what noise does inside (keys as raw 32 bytes, the same results).
// Why: the stock functions rebuild both keys of each Diffie-Hellman (three per handshake on each
//   side) from PKCS#8 / SPKI DER, and OpenSSL 3's DER decoder is slow: 0.41 ms for the private
//   key and 0.08 ms for the public one on the test VM, against 0.04 and 0.007 ms from JWK and
//   0.04 ms for the DH itself. A newcomer to a 30-member mesh runs 29 handshakes while every
//   other member runs one; on two shared cores that is CPU the views wait for (bench:mesh).
//   Here a key pair we generate keeps its private KeyObject, the static key's is built once,
//   and every other key comes from JWK; the results are the same bytes.
// Upstream: no issue or PR found. Noise moved X25519 to node:crypto in
//   https://github.com/ChainSafe/js-libp2p-noise/pull/389 (the DER imports date from there); the
//   slow DER import is OpenSSL 3's (https://github.com/nodejs/node/issues/50386). An upstream fix
//   would keep the KeyObjects of generated keys, or import keys from JWK, in defaultCrypto.
// Drop it when noise's defaultCrypto does that. Any version bump of @libp2p/noise means
//   re-checking this file (test/patch-noise-x25519.test.ts checks the results against noise's
//   own functions and that a real handshake uses ours).
import { createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { defaultCrypto } from '@libp2p/noise/crypto'
import type { ICryptoInterface } from '@libp2p/noise'
import type { Uint8ArrayList } from 'uint8arraylist'
import { applied, notApplied, type ProcessPatch } from './patch.js'

/**
 * Private key objects by their key's base64url. A key pair we generate is used in exactly two
 * DHs when it is a handshake's ephemeral key (XX: ee, and es or se), then forgotten; noise's
 * static key is generated the same way, so after its second use it is rebuilt once and kept.
 */
const privateObjects = new Map<string, { key: KeyObject; usesLeft: number }>()
/** a bound for handshakes that stop halfway and never use their key again */
const MAX_PRIVATE_OBJECTS = 256

const b64u = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64url')
const bytes = (b: Uint8Array | Uint8ArrayList): Uint8Array => (b instanceof Uint8Array ? b : b.subarray())

function remember(d: string, key: KeyObject, usesLeft: number): void {
  if (privateObjects.size >= MAX_PRIVATE_OBJECTS) privateObjects.delete(privateObjects.keys().next().value!)
  privateObjects.set(d, { key, usesLeft })
}

function privateObject(privateKey: Uint8Array): KeyObject {
  const d = b64u(privateKey)
  const known = privateObjects.get(d)
  if (known) {
    if (--known.usesLeft <= 0) privateObjects.delete(d)
    return known.key
  }
  // a key we did not generate, or the static key after its first two uses: built once, kept
  // (node's JWK import wants the public half too; DER is slow but this is rare)
  const x = b64u(defaultCrypto.generateX25519KeyPairFromSeed(privateKey).publicKey)
  const key = createPrivateKey({ format: 'jwk', key: { kty: 'OKP', crv: 'X25519', d, x } })
  remember(d, key, Infinity)
  return key
}

export const fastX25519Crypto: ICryptoInterface = {
  ...defaultCrypto,
  generateX25519KeyPair() {
    const { privateKey } = generateKeyPairSync('x25519')
    const jwk = privateKey.export({ format: 'jwk' })
    const pair = { publicKey: Buffer.from(jwk.x!, 'base64url'), privateKey: Buffer.from(jwk.d!, 'base64url') }
    remember(jwk.d!, privateKey, 2)
    return pair
  },
  generateX25519SharedKey(privateKey, publicKey) {
    const pub = createPublicKey({ format: 'jwk', key: { kty: 'OKP', crv: 'X25519', x: b64u(bytes(publicKey)) } })
    return diffieHellman({ privateKey: privateObject(bytes(privateKey)), publicKey: pub })
  }
}

/** the functions of noise's defaultCrypto this replaces: noise must still call them by these names */
const REPLACED = ['generateX25519KeyPair', 'generateX25519SharedKey'] as const

export const noiseX25519Patch: ProcessPatch = {
  scope: 'process',
  name: 'noise-x25519',
  packages: { '@libp2p/noise': '17.0.3' },
  touches: 'defaultCrypto.generateX25519KeyPair and generateX25519SharedKey, through noise({ crypto })',
  upstream: 'none found; X25519 through node:crypto since https://github.com/ChainSafe/js-libp2p-noise/pull/389',
  apply: () => {
    const missing = REPLACED.filter((f) => typeof (defaultCrypto as unknown as Record<string, unknown>)[f] !== 'function')
    return missing.length === 0 ? applied() : notApplied(`noise's defaultCrypto has no ${missing.join(', ')}: ours would never be called`)
  }
}
