// Public surface of the mesh for the daemon and CLI. Importing this loads libp2p (~400 ms);
// commands that only handle keys and invites should import './keys.js' directly.
export { startMesh, platformCapability, type Mesh, type MeshMember, type MeshOptions, type MembersListener, type LoadInfo } from './mesh.js'
export { MeshError } from './errors.js'
export { generateMeshKey, writeMeshKey, readMeshKey, parseMeshKeyText, meshIdFromKey, loadOrCreateIdentity, encodeInvite, decodeInvite, type Invite } from './keys.js'
export { loadTopic } from './protocols/load-gossip.js'
