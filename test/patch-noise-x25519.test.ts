// Noise's X25519 without DER imports (src/mesh/patches/noise-x25519.ts) gives the same shared secrets
// as @libp2p/noise's own Node implementation, for our key pairs, for its key pairs, and for a
// key used more often than a handshake's ephemeral key is; and a real noise handshake between
// two meshcc nodes (127.0.0.1) runs its Diffie-Hellmans through it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { defaultCrypto } from '@libp2p/noise/crypto'
import { Uint8ArrayList } from 'uint8arraylist'
import { fastX25519Crypto, noiseX25519Patch } from '../src/mesh/patches/noise-x25519.js'
import { captureLog, freshPsk, startMeshNode } from './helpers/mesh-node.js'
import { waitFor } from './helpers/mesh-proc.js'

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

test('shared secrets equal the stock implementation, both ways', () => {
  for (let i = 0; i < 20; i++) {
    const ours = fastX25519Crypto.generateX25519KeyPair()
    const theirs = defaultCrypto.generateX25519KeyPair()
    assert.equal(ours.publicKey.length, 32)
    assert.equal(ours.privateKey.length, 32)
    // our public key is the one the stock code derives from our private key
    assert.equal(hex(defaultCrypto.generateX25519KeyPairFromSeed(ours.privateKey).publicKey), hex(ours.publicKey))
    const a = fastX25519Crypto.generateX25519SharedKey(ours.privateKey, theirs.publicKey)
    const b = defaultCrypto.generateX25519SharedKey(theirs.privateKey, ours.publicKey)
    assert.equal(hex(a), hex(b))
    // the same DH through the stock code, and with the public key as a list (noise passes both)
    assert.equal(hex(fastX25519Crypto.generateX25519SharedKey(ours.privateKey, new Uint8ArrayList(theirs.publicKey.subarray(0, 7), theirs.publicKey.subarray(7)))), hex(a))
    assert.equal(hex(defaultCrypto.generateX25519SharedKey(ours.privateKey, theirs.publicKey)), hex(a))
  }
})

test('a key used more than twice (the static key) and a key we did not generate work every time', () => {
  const mine = fastX25519Crypto.generateX25519KeyPair()
  const foreign = defaultCrypto.generateX25519KeyPairFromSeed(randomBytes(32))
  for (let i = 0; i < 5; i++) {
    const peer = defaultCrypto.generateX25519KeyPair()
    for (const k of [mine, foreign]) {
      assert.equal(hex(fastX25519Crypto.generateX25519SharedKey(k.privateKey, peer.publicKey)),
        hex(defaultCrypto.generateX25519SharedKey(peer.privateKey, k.publicKey)), `use ${i + 1}`)
    }
  }
})

test('many handshakes that stop halfway leave a bounded cache that still answers right', () => {
  const kept = fastX25519Crypto.generateX25519KeyPair()
  const peer = defaultCrypto.generateX25519KeyPair()
  const want = hex(defaultCrypto.generateX25519SharedKey(peer.privateKey, kept.publicKey))
  for (let i = 0; i < 600; i++) fastX25519Crypto.generateX25519KeyPair() // never used: abandoned handshakes
  assert.equal(hex(fastX25519Crypto.generateX25519SharedKey(kept.privateKey, peer.publicKey)), want)
})

test('a noise handshake between two nodes goes through these functions', async () => {
  assert.equal(noiseX25519Patch.apply().state, 'applied')
  // count the calls noise makes into our functions (noise keeps a reference to the key-pair
  // function from when a node is built: count from before the nodes exist)
  const { generateX25519KeyPair, generateX25519SharedKey } = fastX25519Crypto
  let pairs = 0
  let dhs = 0
  fastX25519Crypto.generateX25519KeyPair = () => { pairs++; return generateX25519KeyPair() }
  fastX25519Crypto.generateX25519SharedKey = (priv, pub) => { dhs++; return generateX25519SharedKey(priv, pub) }
  const psk = freshPsk()
  const lines: string[] = []
  const a = await startMeshNode({ psk, dht: false, log: captureLog(lines) })
  const b = await startMeshNode({ psk, dht: false, log: captureLog(lines) })
  try {
    const staticPairs = pairs
    assert.equal(staticPairs, 2, 'each node\'s noise made its static key with our key-pair function')
    const conn = await a.dial(b.getMultiaddrs()[0]!)
    assert.equal(conn.encryption, '/noise')
    // the dial returns when A is done; B's last DH follows A's third message
    await waitFor('B to have the connection', () => (b.getConnections().length === 1 ? true : undefined), 5000, 20)
    // XX: an ephemeral key per side, and three DHs per side (ee, es, se); stock noise: none of ours
    assert.equal(pairs - staticPairs, 2, 'ephemeral keys')
    assert.equal(dhs, 6, 'Diffie-Hellmans')
    assert.deepEqual(lines, [])
  } finally {
    fastX25519Crypto.generateX25519KeyPair = generateX25519KeyPair
    fastX25519Crypto.generateX25519SharedKey = generateX25519SharedKey
    await Promise.all([a.stop(), b.stop()])
  }
})
