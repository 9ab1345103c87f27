// Patches: xsalsa20 1.2.0, the cipher module @libp2p/pnet 3.0.27 loads: XSalsa20.prototype.update
//   (the exported class) and the update method of its WASM implementation (class WASM, not
//   exported; reached through an instance's _xor field, and its _memory view and realloc).
// Why: all ciphers of the process share one WASM memory (at most 64 MB). A call with a large
//   input grows it; every other cipher then holds a stale view of length 0, and its next call
//   grows the memory again by its whole working size instead of noticing it is big enough. Busy
//   connections repeat that until the limit: during toolchain transfers (bench:dist) daemons
//   failed with "WebAssembly.Memory.grow(): Maximum memory size exceeded", and then every
//   connection of the daemon failed.
//   The fix: feed the cipher at most CHUNK bytes per call (the memory then never needs to grow),
//   and refresh a stale view before it is used.
// Upstream: https://github.com/libp2p/js-libp2p/pull/3585 (pnet: bound xsalsa20's WASM memory per
//   message and per connection; merged, but 3.0.27 was still the latest pnet release when this
//   was written). The same PR makes pnet call finalize() on its ciphers, which 3.0.27 never does
//   (each connection keeps two 64-byte slots of the shared memory for good); this patch does not
//   cover that: measured here, the memory's limit is reached after about a million ciphers
//   (500 000 connections, 128 MB), far beyond what a daemon opens in its life.
// Drop it when a pnet release carries that PR. Any version bump of @libp2p/pnet or xsalsa20
//   means re-checking this file (test/patch-pnet-cipher.test.ts, test/libp2p-patches.test.ts).
import xsalsa20 from 'xsalsa20'
import { applied, notApplied, once, type ProcessPatch } from './patch.js'

/** bytes per cipher call: a multiple of the 64-byte Salsa20 block, well inside the initial memory */
export const CHUNK = 64 * 1024

interface Cipher { update(input: Uint8Array, output?: Uint8Array): Uint8Array }
interface CipherModule { (nonce: Uint8Array, key: Uint8Array): Cipher; prototype: Cipher }
interface WasmCipher { _memory: Uint8Array; realloc(size: number): void; update(input: Uint8Array, output: Uint8Array): void }

/**
 * The xsalsa20 module @libp2p/pnet loads: meshcc depends on the same version, npm installs one
 * copy for both (test/patch-pnet-cipher.test.ts checks that pnet resolves this very file), and
 * the bundled CLI (scripts/build-bundle.mjs) holds that one copy for both as well.
 */
export function pnetCipherModule(): CipherModule {
  return xsalsa20 as unknown as CipherModule
}

function apply(): ReturnType<ProcessPatch['apply']> {
  let XSalsa20: CipherModule
  try {
    XSalsa20 = pnetCipherModule()
  } catch (err) {
    return notApplied(`xsalsa20 not found beside @libp2p/pnet (${(err as Error).message.split('\n')[0]})`)
  }
  const proto = XSalsa20.prototype
  if (typeof XSalsa20 !== 'function' || typeof proto?.update !== 'function') return notApplied('xsalsa20 exports no XSalsa20 with an update method')
  // The WASM implementation's class is not exported: reach it through one instance.
  const probe = XSalsa20(new Uint8Array(24), new Uint8Array(32)) as unknown as { _xor?: Partial<WasmCipher>; finalize?: () => void }
  const wasm = probe._xor
  probe.finalize?.() // give its slot in the shared memory back
  if (!(wasm?._memory instanceof Uint8Array) || typeof wasm.realloc !== 'function' || typeof wasm.update !== 'function') {
    return notApplied('xsalsa20\'s WASM cipher (_xor with _memory, realloc, update) is not there')
  }

  const update = proto.update
  proto.update = function chunkedUpdate(this: Cipher, input: Uint8Array, output?: Uint8Array): Uint8Array {
    const out = output ?? new Uint8Array(input.length)
    if (input.length <= CHUNK) return update.call(this, input, out)
    for (let off = 0; off < input.length; off += CHUNK) {
      update.call(this, input.subarray(off, off + CHUNK), out.subarray(off, off + CHUNK))
    }
    return out
  }
  const wasmProto = Object.getPrototypeOf(wasm) as WasmCipher
  const wasmUpdate = wasmProto.update
  wasmProto.update = function freshViewUpdate(this: WasmCipher, input: Uint8Array, output: Uint8Array): void {
    // A view of a memory that grew since is detached (length 0), and the module would grow the
    // memory by the whole working size again. realloc(0) grows it by 0 pages: a fresh view.
    if (this._memory.byteLength === 0) this.realloc(0)
    wasmUpdate.call(this, input, output)
  }
  return applied()
}

export const pnetCipherPatch: ProcessPatch = {
  scope: 'process',
  name: 'pnet-cipher',
  packages: { xsalsa20: '1.2.0', '@libp2p/pnet': '3.0.27' },
  touches: 'XSalsa20.prototype.update and its WASM class\'s update (_xor, _memory, realloc), as loaded by @libp2p/pnet 3.0.27',
  upstream: 'https://github.com/libp2p/js-libp2p/pull/3585',
  apply: once(apply)
}
