// The xsalsa20 cipher under @libp2p/pnet (the real WASM module pnet loads, patched by
// src/mesh/patches/pnet-cipher.ts): after one large call, busy connections used to grow its
// shared memory until "Maximum memory size exceeded" and every connection of the daemon failed
// (seen in bench:dist during toolchain transfers).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { createRequire } from 'node:module'
import { CHUNK, pnetCipherModule, pnetCipherPatch } from '../src/mesh/patches/pnet-cipher.js'

const outcome = pnetCipherPatch.apply()
const XSalsa20 = pnetCipherModule()
const key = randomBytes(32)
const nonce = (i: number) => new Uint8Array(24).fill(i + 1)

test('the patch applies to the xsalsa20 pnet loads, the one package.json pins', () => {
  assert.deepEqual(outcome, { state: 'applied', detail: '' })
  const fromPnet = createRequire(import.meta.resolve('@libp2p/pnet')).resolve('xsalsa20')
  assert.equal(fromPnet, createRequire(import.meta.url).resolve('xsalsa20'), 'pnet loads the xsalsa20 meshcc depends on')
})

test('many ciphers stay usable after a large message (the crash seen in bench:dist)', () => {
  const senders = Array.from({ length: 8 }, (_, i) => XSalsa20(nonce(i), key))
  const receivers = Array.from({ length: 8 }, (_, i) => XSalsa20(nonce(i), key))
  const big = randomBytes(2 * 1024 * 1024)
  assert.ok(Buffer.from(receivers[0]!.update(senders[0]!.update(big))).equals(big))
  // without the fix this loop throws RangeError: WebAssembly.Memory.grow(): Maximum memory size exceeded
  for (let i = 0; i < 5000; i++) {
    const msg = randomBytes(1 + (i % 1500))
    const c = i % 8
    assert.ok(Buffer.from(receivers[c]!.update(senders[c]!.update(msg))).equals(msg), `message ${i} decrypts`)
  }
})

test('a message larger than the cipher memory (64 MB) goes through in chunks, byte-exact', () => {
  const tx = XSalsa20(nonce(20), key)
  const rx = XSalsa20(nonce(20), key)
  const huge = randomBytes(70 * 1024 * 1024)
  const sealed = tx.update(huge)
  assert.equal(sealed.length, huge.length)
  assert.ok(!Buffer.from(sealed.subarray(0, 4096)).equals(huge.subarray(0, 4096)), 'it is encrypted')
  // decrypt in pieces that do not line up with the 64-byte blocks or the chunk size: the
  // keystream must continue across calls exactly as one call would
  const out = Buffer.alloc(huge.length)
  let off = 0
  for (const n of [1, 63, 65, CHUNK - 1, CHUNK + 7, 3 * CHUNK]) {
    out.set(rx.update(sealed.subarray(off, off + n)), off)
    off += n
  }
  out.set(rx.update(sealed.subarray(off)), off)
  assert.ok(out.equals(huge))
})
