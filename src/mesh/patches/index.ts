// Every place meshcc changes a library's code or private state at run time, one file per patch.
// Each file says what it touches (package, exact version, the internal), why (the bug and its
// symptom here), the upstream issue or pull request, and when it can be dropped.
//
// These patches are written against exact versions: package.json pins every package listed in
// a patch's `packages` to that version (no ^ range), and test/libp2p-patches.test.ts fails when
// a pinned or installed version differs from the one a patch names. A version bump therefore
// means re-checking the patches that name the package. Should one stop applying anyway (an
// internal renamed), applying it reports 'not applied' instead of failing, and createMeshNode
// logs one warning line for it: the daemon runs unpatched, but says so.
//
// Process patches (a module's prototype, a global) apply once per process; node patches (a
// service instance's method or field) apply to each libp2p node right after it is created.
import { promiseWithResolversPatch } from './promise-with-resolvers.js' // first: libp2p code needs it
import type { Logger } from '../../log.js'
import type { MeshLibp2p } from '../node.js'
import type { LibraryPatch, NodePatch, PatchInfo, PatchOutcome, ProcessPatch } from './patch.js'
import { pnetCipherPatch } from './pnet-cipher.js'
import { yamuxWindowPatch } from './yamux-window.js'
import { noiseX25519Patch } from './noise-x25519.js'
import { gossipReadErrorPatch } from './gossip-read-error.js'
import { gossipHeartbeatPatch } from './gossip-heartbeat.js'
import { dhtConnectedContactsPatch } from './dht-connected-contacts.js'

export type { LibraryPatch, PatchOutcome, PatchState } from './patch.js'
export { fastX25519Crypto } from './noise-x25519.js'

export const PROCESS_PATCHES: readonly ProcessPatch[] = [promiseWithResolversPatch, pnetCipherPatch, yamuxWindowPatch, noiseX25519Patch]
export const NODE_PATCHES: readonly NodePatch[] = [gossipReadErrorPatch, gossipHeartbeatPatch, dhtConnectedContactsPatch]
export const ALL_PATCHES: readonly LibraryPatch[] = [...PROCESS_PATCHES, ...NODE_PATCHES]

export interface PatchStatus extends PatchOutcome {
  name: string
  packages: PatchInfo['packages']
  upstream: string
}

const statusOf = (p: LibraryPatch, o: PatchOutcome): PatchStatus => ({ name: p.name, packages: p.packages, upstream: p.upstream, ...o })

/** Applies the process patches (once; later calls report the same outcomes). */
export function applyProcessPatches(): PatchStatus[] {
  return PROCESS_PATCHES.map((p) => statusOf(p, p.apply()))
}

const nodeStatuses = new WeakMap<MeshLibp2p, PatchStatus[]>()

/** Applies the node patches to a started node (once per node). */
export function applyNodePatches(node: MeshLibp2p, log: Logger): PatchStatus[] {
  let done = nodeStatuses.get(node)
  if (!done) {
    done = NODE_PATCHES.map((p) => statusOf(p, p.apply(node, log)))
    nodeStatuses.set(node, done)
  }
  return done
}

/** What became of every patch for this node: the process patches and the node's own. */
export function patchReport(node: MeshLibp2p): PatchStatus[] {
  return [...applyProcessPatches(), ...(nodeStatuses.get(node) ?? [])]
}

/** One log line for a patch that did not apply, or null. */
export function patchWarning(s: PatchStatus): string | null {
  if (s.state !== 'not applied') return null
  const versions = Object.entries(s.packages).map(([pkg, v]) => `${pkg} ${v}`).join(', ')
  return `library patch ${s.name} did not apply: ${s.detail}; running without it (written for ${versions || 'this runtime'}; see src/mesh/patches/${s.name}.ts)`
}
