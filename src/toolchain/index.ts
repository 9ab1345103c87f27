// Toolchains shipped by content: discover what a compiler needs, pack it deterministically,
// unpack untrusted archives safely, keep a bounded set of them on a peer.
export type { CompilerFamily, ToolchainSpec } from './types.js'
export { discoverToolchain, sharedLibraries, ToolchainDiscoveryError } from './discover.js'
export { packToolchain, packToolchainCached, relativeLinkTarget, GZIP_LEVEL, type PackResult } from './pack.js'
export { unpackToolchain, ToolchainArchiveError, DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, type UnpackLimits, type UnpackStats } from './unpack.js'
export { ToolchainCache, type ToolchainCacheOptions } from './cache.js'
