// Noise's X25519 without DER imports (src/mesh/patches/noise-x25519.ts) gives the same shared secrets
// as @libp2p/noise's own Node implementation, for our key pairs, for its key pairs, and for a
// key used more often than a handshake's ephemeral key is.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { defaultCrypto } from '@libp2p/noise/crypto'
import { Uint8ArrayList } from 'uint8arraylist'
import { fastX25519Crypto } from '../src/mesh/patches/noise-x25519.js'

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
