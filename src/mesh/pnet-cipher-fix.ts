// Works around the xsalsa20 package under @libp2p/pnet 3.0.27, whose WASM cipher crashed
// daemons during toolchain transfers with "WebAssembly.Memory.grow(): Maximum memory size
// exceeded" (upstream: js-libp2p PR #3585, merged but not in a release yet).
//
// All ciphers of the process share one WASM memory (at most 64 MB). A call with a large input
// grows it; every other cipher then holds a stale view of length 0, and its next call grows
// the memory again by its whole working size instead of noticing the memory is big enough.
// Busy connections repeat that until the limit, and every connection of the mesh fails.
//
// The fix, applied once to the module pnet itself loaded: feed the cipher at most CHUNK bytes
// per call (the memory then never needs to grow), and refresh a stale view before it is used.
// Remove this file when a pnet release bounds the memory itself.
import { createRequire } from 'node:module'

/** bytes per cipher call: a multiple of the 64-byte Salsa20 block, well inside the initial memory */
export const CHUNK = 64 * 1024

interface Cipher { update(input: Uint8Array, output?: Uint8Array): Uint8Array }
interface CipherModule { (nonce: Uint8Array, key: Uint8Array): Cipher; prototype: Cipher }
interface WasmCipher { _memory: Uint8Array; realloc(size: number): void; update(input: Uint8Array, output: Uint8Array): void }

let applied = false

/** The xsalsa20 module exactly as @libp2p/pnet resolves it. */
export function pnetCipherModule(): CipherModule {
  const requireFromPnet = createRequire(import.meta.resolve('@libp2p/pnet'))
  return requireFromPnet('xsalsa20') as CipherModule
}

export function fixPnetCipher(): void {
  if (applied) return
  applied = true
  const XSalsa20 = pnetCipherModule()
  const proto = XSalsa20.prototype
  const update = proto.update
  proto.update = function chunkedUpdate(this: Cipher, input: Uint8Array, output?: Uint8Array): Uint8Array {
    const out = output ?? new Uint8Array(input.length)
    if (input.length <= CHUNK) return update.call(this, input, out)
    for (let off = 0; off < input.length; off += CHUNK) {
      update.call(this, input.subarray(off, off + CHUNK), out.subarray(off, off + CHUNK))
    }
    return out
  }
  // The WASM implementation's class is not exported: reach it through one instance.
  const probe = XSalsa20(new Uint8Array(24), new Uint8Array(32)) as unknown as { _xor?: WasmCipher; finalize?: () => void }
  const wasmProto = probe._xor ? Object.getPrototypeOf(probe._xor) as WasmCipher : null
  probe.finalize?.() // give its slot in the shared memory back
  if (!wasmProto || typeof wasmProto.update !== 'function') return // the pure-JS fallback has no shared memory
  const wasmUpdate = wasmProto.update
  wasmProto.update = function freshViewUpdate(this: WasmCipher, input: Uint8Array, output: Uint8Array): void {
    // A view of a memory that grew since is detached (length 0), and the module would grow the
    // memory by the whole working size again. realloc(0) grows it by 0 pages: a fresh view.
    if (this._memory.byteLength === 0) this.realloc(0)
    wasmUpdate.call(this, input, output)
  }
}
