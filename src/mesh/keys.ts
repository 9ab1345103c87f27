// Mesh secrets and identity on disk, and invites.
// - mesh key: a libp2p pnet swarm key; whoever holds it can join the mesh.
// - identity: this daemon's persistent Ed25519 key (its peer id).
// - invite: one line carrying the mesh key and a few bootstrap addresses.
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, mkdirSync, readFileSync, writeFileSync, linkSync, unlinkSync } from 'node:fs'
import { dirname, basename, join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { MeshError } from './errors.js'
import { lockDetails, takePidLock } from '../util/pid-lock.js'
import { writeFileAtomicSync } from '../util/atomic-write.js'

const KEY_HEADER = '/key/swarm/psk/1.0.0/'
const KEY_CODEC = '/base16/'
const INVITE_PREFIX = 'meshcc1:'
const MAX_INVITE_LENGTH = 8192
const MAX_INVITE_ADDRS = 32

/** A fresh mesh key in the swarm key format: '/key/swarm/psk/1.0.0/\n/base16/\n<64 hex>'. */
export function generateMeshKey(): string {
  return formatKey(randomBytes(32).toString('hex'))
}

function formatKey(hex: string): string {
  return `${KEY_HEADER}\n${KEY_CODEC}\n${hex.toLowerCase()}\n`
}

/**
 * Parses key text (the full swarm key, or just the 64 hex digits) into the 64 hex digits.
 * Returns an error description instead of throwing so callers can name their source.
 */
export function parseMeshKeyText(text: string): { hex: string } | { error: string } {
  const trimmed = text.trim()
  if (/^[0-9a-fA-F]{64}$/.test(trimmed)) return { hex: trimmed.toLowerCase() }
  const lines = trimmed.split(/\r\n|\r|\n/).map((l) => l.trim()).filter((l) => l !== '')
  if (lines.length === 0) return { error: 'the file is empty' }
  if (lines[0] !== KEY_HEADER) return { error: `first line must be "${KEY_HEADER}", found "${lines[0].slice(0, 40)}"` }
  if (lines[1] !== KEY_CODEC) return { error: `second line must be "${KEY_CODEC}" (only base16 keys are supported), found "${(lines[1] ?? '').slice(0, 40)}"` }
  if (lines.length < 3) return { error: 'the key line (64 hex characters) is missing' }
  if (lines.length > 3) return { error: 'unexpected text after the key line' }
  if (!/^[0-9a-fA-F]{64}$/.test(lines[2])) return { error: `the key line must be 64 hex characters, found ${lines[2].length} characters${/^[0-9a-fA-F]*$/.test(lines[2]) ? '' : ' including non-hex ones'}` }
  return { hex: lines[2].toLowerCase() }
}

/** Writes key text to `file` (mkdir -p, mode 0600, atomic). The text is validated first. */
export function writeMeshKey(file: string, text: string): void {
  const parsed = parseMeshKeyText(text)
  if ('error' in parsed) throw new MeshError(`mesh key for ${file} is malformed: ${parsed.error}`)
  writeKeyFile(file, formatKey(parsed.hex))
}

/** Reads the mesh key as the canonical bytes pnet expects. Throws MeshError with one clear line. */
export function readMeshKey(file: string): Uint8Array {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'ENOENT') {
      throw new MeshError(`no mesh key at ${file}: run \`meshcc mesh init\` to create a new mesh, or \`meshcc mesh join <invite>\` to join one`)
    }
    throw new MeshError(`cannot read mesh key ${file}: ${e.code ?? e.message}`)
  }
  const parsed = parseMeshKeyText(text)
  if ('error' in parsed) throw new MeshError(`mesh key ${file} is malformed: ${parsed.error}`)
  return new TextEncoder().encode(formatKey(parsed.hex).trimEnd())
}

/** Short public id of a mesh: names its gossip topics, DHT protocol and mDNS tag. */
export function meshIdFromKey(key: Uint8Array | string): string {
  const text = typeof key === 'string' ? key : new TextDecoder().decode(key)
  const parsed = parseMeshKeyText(text)
  if ('error' in parsed) throw new MeshError(`mesh key is malformed: ${parsed.error}`)
  // Domain-separated so the id says nothing useful about the key itself.
  return createHash('sha256').update('meshcc mesh id\n').update(Buffer.from(parsed.hex, 'hex')).digest('hex').slice(0, 8)
}

/** Loads the persistent identity, creating it (mode 0600) on first use. */
export async function loadOrCreateIdentity(file: string): Promise<PrivateKey> {
  const existing = readIdentity(file)
  if (existing) return existing
  const key = await generateKeyPair('Ed25519')
  const bytes = privateKeyToProtobuf(key)
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 })
  const tmp = tempName(file)
  writeFileSync(tmp, bytes, { mode: 0o600 })
  try {
    // link() fails if the file appeared meanwhile: two daemons starting at once agree on one key.
    linkSync(tmp, file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new MeshError(`cannot write identity ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    const other = readIdentity(file)
    if (other) return other
    throw new MeshError(`identity ${file} is being created by another process; try again`)
  } finally {
    try { unlinkSync(tmp) } catch { /* already gone */ }
  }
  return key
}

/** The lock a daemon holds on its identity while it runs (see lockIdentity). */
export function identityLockFile(identityFile: string): string {
  return `${identityFile}.lock`
}

/**
 * Claims the identity for this process until the returned function releases it. Two daemons
 * with one identity (two configs in one directory) would be one peer twice: the mesh sees one
 * member that flaps. Throws MeshError naming the daemon that holds it. `self` describes this
 * daemon (config file, socket) for the message another one would print.
 */
export function lockIdentity(identityFile: string, self: { config: string | null; socket: string }): () => void {
  const lock = identityLockFile(identityFile)
  mkdirSync(dirname(lock), { recursive: true, mode: 0o700 })
  const holder = takePidLock(lock, [`config ${self.config ?? '(none: defaults)'}`, `socket ${self.socket}`])
  if (holder !== null) {
    const who = lockDetails(lock).join(', ')
    throw new MeshError(`identity ${identityFile} is in use by the meshcc daemon with pid ${holder}${who ? ` (${who})` : ''}: two daemons cannot share one peer ID; give this config its own [mesh] identity_file`)
  }
  return () => { try { unlinkSync(lock) } catch { /* already gone */ } }
}

/** The peer ID of an identity file, or null when there is none yet (or it is unreadable). */
export async function identityPeerId(file: string): Promise<string | null> {
  let key: PrivateKey | null
  try { key = readIdentity(file) } catch { return null }
  if (!key) return null
  const { peerIdFromPrivateKey } = await import('@libp2p/peer-id')
  return peerIdFromPrivateKey(key).toString()
}

function readIdentity(file: string): PrivateKey | null {
  let bytes: Buffer
  try {
    bytes = readFileSync(file)
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'ENOENT') return null
    throw new MeshError(`cannot read identity ${file}: ${e.code ?? e.message}`)
  }
  try {
    return privateKeyFromProtobuf(new Uint8Array(bytes))
  } catch (err) {
    throw new MeshError(`identity ${file} is not a valid private key (${(err as Error).message}); move it away to create a new identity`)
  }
}

export interface Invite { key: string; addrs: string[] }

/** One line: 'meshcc1:' + base64url of {"v":1,"k":"<64 hex>","a":[addrs]}. `key` may be key text or bare hex. */
export function encodeInvite(invite: Invite): string {
  const parsed = parseMeshKeyText(invite.key)
  if ('error' in parsed) throw new MeshError(`cannot make an invite: mesh key is malformed: ${parsed.error}`)
  for (const a of invite.addrs) checkAddr(a, 'cannot make an invite')
  const json = JSON.stringify({ v: 1, k: parsed.hex, a: invite.addrs })
  return INVITE_PREFIX + Buffer.from(json, 'utf8').toString('base64url')
}

/** Inverse of encodeInvite; `key` comes back as full swarm key text. Throws MeshError. */
export function decodeInvite(text: string): Invite {
  const line = text.trim()
  if (!line.startsWith(INVITE_PREFIX)) {
    throw new MeshError(`invalid invite: it must start with "${INVITE_PREFIX}" (copy the whole line that \`meshcc mesh invite\` prints)`)
  }
  if (line.length > MAX_INVITE_LENGTH) throw new MeshError(`invalid invite: too long (${line.length} characters)`)
  const body = line.slice(INVITE_PREFIX.length)
  if (!/^[A-Za-z0-9_-]+$/.test(body)) throw new MeshError('invalid invite: it contains characters that base64url does not use (was it cut or wrapped?)')
  let doc: unknown
  try {
    doc = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'))
  } catch {
    throw new MeshError('invalid invite: it is truncated or damaged (copy the whole line)')
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new MeshError('invalid invite: it is truncated or damaged (copy the whole line)')
  const d = doc as Record<string, unknown>
  if (d.v !== 1) throw new MeshError(`invalid invite: unsupported invite version ${JSON.stringify(d.v)} (this meshcc understands version 1)`)
  if (typeof d.k !== 'string' || !/^[0-9a-f]{64}$/.test(d.k)) throw new MeshError('invalid invite: the mesh key in it is not 64 hex characters')
  if (!Array.isArray(d.a) || d.a.some((x) => typeof x !== 'string')) throw new MeshError('invalid invite: the address list is damaged')
  if (d.a.length > MAX_INVITE_ADDRS) throw new MeshError(`invalid invite: too many addresses (${d.a.length})`)
  const addrs = d.a as string[]
  for (const a of addrs) checkAddr(a, 'invalid invite')
  return { key: formatKey(d.k), addrs }
}

function checkAddr(a: string, context: string): void {
  try {
    multiaddr(a)
  } catch {
    throw new MeshError(`${context}: "${a.slice(0, 80)}" is not a valid multiaddr`)
  }
}

function tempName(file: string): string {
  return join(dirname(file), `.${basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`)
}

function writeKeyFile(file: string, data: string): void {
  try {
    writeFileAtomicSync(file, data, 0o600)
    chmodSync(file, 0o600) // umask cannot loosen the mode, but an odd umask could tighten it: be exact
  } catch (err) {
    throw new MeshError(`cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
}
