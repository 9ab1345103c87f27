// Patches: Node 20's global Promise (the runtime, not a package): adds Promise.withResolvers.
// Why: libp2p 3 and its helpers (it-queue, @libp2p/utils, yamux, ping...) call
//   Promise.withResolvers, which arrived in Node 22; on Node 20 (package.json engines: >=20.19)
//   the daemon's first dial crashed with "TypeError: Promise.withResolvers is not a function".
// Upstream: none to wait for. js-libp2p targets current Node releases, and Node 20 will not get
//   the function; the fix on our side is to require Node 22.
// Drop it when package.json's engines asks for Node >= 22.
// Applied when this module is evaluated: it must be imported before any libp2p module runs
// (index.ts imports it first; node.ts imports index.ts first, mesh.ts this file first).
import { applied, notNeeded, type ProcessPatch } from './patch.js'

const native = typeof (Promise as unknown as { withResolvers?: unknown }).withResolvers === 'function'

if (!native) {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers<T>(this: PromiseConstructor) {
      let resolve!: (v: T | PromiseLike<T>) => void
      let reject!: (e?: unknown) => void
      const promise = new this<T>((res, rej) => { resolve = res; reject = rej })
      return { promise, resolve, reject }
    }
  })
}

export const promiseWithResolversPatch: ProcessPatch = {
  scope: 'process',
  name: 'promise-with-resolvers',
  packages: {}, // the runtime: written for Node 20 (engines in package.json)
  touches: 'the global Promise.withResolvers of Node 20',
  upstream: 'none: Node 22 has Promise.withResolvers; drop this when engines requires it',
  apply: () => (native ? notNeeded(`Node ${process.versions.node} has it`) : applied('polyfilled'))
}
