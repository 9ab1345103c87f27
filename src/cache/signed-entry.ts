// A cache entry as it leaves the machine that made it: the encoded entry (entry-format.ts, which
// already names its key and the SHA-256 of its content) wrapped with the producing member's peer
// ID and an Ed25519 signature by that member's identity key. Whoever holds a copy (an owner in the
// mesh, a Redis or HTTP store) can pass it on but cannot change it, nor claim it came from someone
// else: the receiver checks the signature against the public key inside the peer ID, the key and
// content hash against the entry, and the producer against its own trust policy.
//
// Layout, integers little-endian:
//     0  8  magic "MESHCCS1"
//     8  1  format version (1)
//     9  1  signature scheme: 1 = Ed25519 over the message below
//    10  2  producer length P (bytes of the peer ID's canonical text form, at most 128)
//    12  8  timestamp, ms since the epoch (the producer's clock; informational)
//    20 64  signature
//    84  P  producer peer ID (ASCII)
//  84+P     the encoded entry (the rest of the buffer)
//
// The signed message is "meshcc signed entry 1\0" + key (32 bytes) + content hash (32 bytes) +
// producer + timestamp: every byte that says what the entry is and who made it. The entry's body
// encoding is not in it, and need not be: decoding checks the payload against the signed hash.
import { createPublicKey, verify as verifySignature, type KeyObject } from 'node:crypto'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { clip } from '../log.js'
import { ENTRY_MAGIC, EntryFormatError, HEADER_LENGTH, decodeEntry, encodeEntryPieces, isReadableVersion, isValidKey, type CacheEntry } from './entry-format.js'

export const SIGNED_MAGIC = Buffer.from('MESHCCS1', 'latin1')
export const SIGNED_VERSION = 1
const SCHEME_ED25519 = 1
const SIG_BYTES = 64
export const SIGNED_HEADER_BYTES = 84
const MAX_PRODUCER_BYTES = 128
const DOMAIN = Buffer.from('meshcc signed entry 1\0', 'latin1')
/**
 * The largest signed entry taken from a peer or a store: a remote compile returns at most
 * 256 MiB of output (compile-job.ts LIMITS.outputBytes), and an entry is that, compressed.
 */
export const MAX_SIGNED_ENTRY_BYTES = 256 * 1024 * 1024 + 64 * 1024

/** Why a signed entry was refused: the counters are named after these. */
export type RefusalKind = 'malformed' | 'signature' | 'untrusted' | 'entry'

export class SignedEntryError extends Error {
  constructor(readonly kind: RefusalKind, message: string) {
    super(message)
    this.name = 'SignedEntryError'
  }
}

/** This member's identity: its peer ID and the private key behind it (the daemon's identity.key). */
export interface EntrySigner {
  peerId: string
  privateKey: PrivateKey
}

/** What a verified signed entry says about itself; `encoded` is the entry, still encoded. */
export interface SignedEnvelope {
  producer: string
  timestamp: number
  encoded: Buffer
}

/**
 * Producers' public keys as node:crypto key objects, by the producer's text form (null: not a
 * canonical Ed25519 peer ID). A hit verifies two entries, a holder each entry it reads, nearly
 * all by the same few members: parsing the peer ID and importing its key for each cost more than
 * the signature check itself (which @libp2p/crypto does with node:crypto too). Bounded: a member
 * sending entries under ever new names only refills it.
 */
const producerKeys = new Map<string, KeyObject | null>()
const MAX_PRODUCER_KEYS = 1024

function producerKey(producer: string): KeyObject | null {
  const known = producerKeys.get(producer)
  if (known !== undefined) return known
  let key: KeyObject | null = null
  try {
    const id = peerIdFromString(producer)
    // one text form per identity: a deny list names a member once, whichever encoding it sends
    if (id.type === 'Ed25519' && id.toString() === producer) {
      key = createPublicKey({ format: 'jwk', key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(id.publicKey.raw).toString('base64url') } })
    }
  } catch {
    key = null
  }
  if (producerKeys.size >= MAX_PRODUCER_KEYS) producerKeys.clear()
  producerKeys.set(producer, key)
  return key
}

function bytesOf(buf: Uint8Array): Buffer {
  return Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
}

function message(key: Buffer, contentHash: Buffer, producer: Buffer, timestamp: number): Buffer {
  const ts = Buffer.alloc(8)
  ts.writeBigUInt64LE(BigInt(timestamp))
  return Buffer.concat([DOMAIN, key, contentHash, producer, ts])
}

/** The key and content hash an encoded entry names in its header (checked only for shape). */
function entryIdentity(encoded: Buffer): { key: Buffer; contentHash: Buffer } {
  if (encoded.length < HEADER_LENGTH || !encoded.subarray(0, 8).equals(ENTRY_MAGIC)) throw new SignedEntryError('malformed', 'the wrapped data is not a meshcc cache entry')
  if (!isReadableVersion(encoded.readUInt8(8))) throw new SignedEntryError('malformed', `the wrapped entry has format version ${encoded.readUInt8(8)}, not one this meshcc reads`)
  return { contentHash: encoded.subarray(20, 52), key: encoded.subarray(52, 84) }
}

/** Wrap an encoded entry (encodeEntry's output) with `signer`'s peer ID and signature. */
export async function signEntry(encoded: Buffer, signer: EntrySigner, timestamp = Date.now()): Promise<Buffer> {
  const { key, contentHash } = entryIdentity(encoded)
  const producer = Buffer.from(signer.peerId, 'latin1')
  if (producer.length === 0 || producer.length > MAX_PRODUCER_BYTES) throw new Error(`cannot sign as "${clip(signer.peerId, 40)}": not a peer ID`)
  const sig = await signer.privateKey.sign(message(key, contentHash, producer, timestamp))
  if (sig.length !== SIG_BYTES) throw new Error(`cannot sign entries with a ${signer.privateKey.type} identity (an Ed25519 one is needed)`)
  return attachSignature(encoded, { producer: signer.peerId, timestamp, signature: bytesOf(sig) })
}

/**
 * A signature over an entry, without the entry: what a client sends a builder that still holds
 * the outputs of the job it ran (a keep, cache-exchange.ts), so the builder can rebuild the entry
 * and store it as the client signed it.
 */
export interface EntrySignature {
  producer: string
  timestamp: number
  /** 64 bytes, Ed25519 over the message in the header */
  signature: Buffer
}

/** The encoded entry wrapped with a signature made elsewhere (signEntry's layout); checked by readSignedEntry, not here. */
export function attachSignature(encoded: Buffer, sig: EntrySignature): Buffer {
  const producer = Buffer.from(sig.producer, 'latin1')
  if (producer.length === 0 || producer.length > MAX_PRODUCER_BYTES || sig.signature.length !== SIG_BYTES) throw new SignedEntryError('malformed', 'not a producer and signature')
  const header = Buffer.alloc(SIGNED_HEADER_BYTES)
  SIGNED_MAGIC.copy(header, 0)
  header.writeUInt8(SIGNED_VERSION, 8)
  header.writeUInt8(SCHEME_ED25519, 9)
  header.writeUInt16LE(producer.length, 10)
  header.writeBigUInt64LE(BigInt(sig.timestamp), 12)
  sig.signature.copy(header, 20)
  return Buffer.concat([header, producer, encoded])
}

/** The signature and content hash of a signed entry this member made itself (signEntry's output), unchecked; null when it is none. */
export function signatureOf(blob: Buffer): (EntrySignature & { contentHash: Buffer }) | null {
  const encoded = wrappedEntry(blob)
  if (encoded === null || encoded.length < HEADER_LENGTH) return null
  const plen = blob.readUInt16LE(10)
  return {
    producer: blob.toString('latin1', SIGNED_HEADER_BYTES, SIGNED_HEADER_BYTES + plen),
    timestamp: Number(blob.readBigUInt64LE(12)),
    signature: blob.subarray(20, 20 + SIG_BYTES),
    contentHash: encoded.subarray(20, 52)
  }
}

/**
 * Check that `sig` signs `key` and `contentHash` and that its producer may be accepted; throws
 * SignedEntryError. The entry's bytes are not looked at: the caller checks them against the hash.
 */
export function checkSignature(key: Buffer, contentHash: Buffer, sig: EntrySignature, refuseProducer?: (producer: string) => string | null): void {
  const producerBytes = Buffer.from(sig.producer, 'latin1')
  if (producerBytes.length === 0 || producerBytes.length > MAX_PRODUCER_BYTES) throw new SignedEntryError('malformed', `bad producer length ${producerBytes.length}`)
  if (!Number.isSafeInteger(sig.timestamp) || sig.timestamp < 0) throw new SignedEntryError('malformed', 'bad timestamp')
  if (key.length !== 32 || contentHash.length !== 32 || sig.signature.length !== SIG_BYTES) throw new SignedEntryError('malformed', 'bad key, content hash or signature length')
  const publicKey = producerKey(sig.producer)
  if (publicKey === null) throw new SignedEntryError('malformed', `producer "${clip(sig.producer, 60)}" is not an Ed25519 peer ID`)
  const refusal = refuseProducer?.(sig.producer) ?? null
  if (refusal !== null) throw new SignedEntryError('untrusted', `entry produced by ${sig.producer}: ${refusal}`)
  const ok = verifySignature(null, message(key, contentHash, producerBytes, sig.timestamp), publicKey, sig.signature)
  if (!ok) throw new SignedEntryError('signature', `bad signature on an entry claiming to come from ${sig.producer}`)
}

export interface ReadOptions {
  /** refuse a blob larger than this (default MAX_SIGNED_ENTRY_BYTES) */
  maxBytes?: number
  /** the trust policy: null accepts the producer, a string is why it is refused */
  refuseProducer?: (producer: string) => string | null
}

/**
 * Parse a signed entry stored for `key` and check its signature and producer, without decoding
 * the entry itself (an owner passing it on, a store reading its own file). Throws SignedEntryError.
 */
export async function readSignedEntry(blob: Uint8Array, key: string, opts: ReadOptions = {}): Promise<SignedEnvelope> {
  const data = bytesOf(blob)
  const max = opts.maxBytes ?? MAX_SIGNED_ENTRY_BYTES
  if (!isValidKey(key)) throw new SignedEntryError('malformed', `invalid cache key ${JSON.stringify(clip(String(key), 80))}`)
  if (data.length > max) throw new SignedEntryError('malformed', `signed entry of ${data.length} bytes exceeds the limit of ${max}`)
  if (data.length < SIGNED_HEADER_BYTES || !data.subarray(0, 8).equals(SIGNED_MAGIC)) throw new SignedEntryError('malformed', 'not a signed meshcc cache entry')
  const version = data.readUInt8(8)
  if (version !== SIGNED_VERSION) throw new SignedEntryError('malformed', `signed entry format version ${version} (expected ${SIGNED_VERSION})`)
  if (data.readUInt8(9) !== SCHEME_ED25519) throw new SignedEntryError('malformed', `unknown signature scheme ${data.readUInt8(9)}`)
  const plen = data.readUInt16LE(10)
  if (plen === 0 || plen > MAX_PRODUCER_BYTES || SIGNED_HEADER_BYTES + plen > data.length) throw new SignedEntryError('malformed', `bad producer length ${plen}`)
  const timestamp = Number(data.readBigUInt64LE(12))
  const producer = data.toString('latin1', SIGNED_HEADER_BYTES, SIGNED_HEADER_BYTES + plen)
  const encoded = data.subarray(SIGNED_HEADER_BYTES + plen)
  const { key: entryKey, contentHash } = entryIdentity(encoded)
  if (entryKey.toString('hex') !== key) throw new SignedEntryError('malformed', `entry is stored for key ${entryKey.toString('hex')}, not this one`)
  checkSignature(entryKey, contentHash, { producer, timestamp, signature: data.subarray(20, 20 + SIG_BYTES) }, opts.refuseProducer)
  return { producer, timestamp, encoded }
}

/**
 * The encoded entry inside a signed blob that was verified before (readSignedEntry: a store
 * reading its own file), without checking the signature again; null when it is no signed entry.
 */
export function wrappedEntry(blob: Buffer): Buffer | null {
  if (blob.length < SIGNED_HEADER_BYTES || !blob.subarray(0, 8).equals(SIGNED_MAGIC)) return null
  const plen = blob.readUInt16LE(10)
  return SIGNED_HEADER_BYTES + plen <= blob.length ? blob.subarray(SIGNED_HEADER_BYTES + plen) : null
}

/** A verified, decoded entry and who made it. */
export interface OpenedEntry {
  entry: CacheEntry
  producer: string
  timestamp: number
  /** the entry as encoded (entry-format.ts), checked: a local store can keep these bytes as they are */
  encoded: Buffer
}

/**
 * Everything a hit needs checked: the signature and producer (readSignedEntry), then the entry
 * itself (length, checksum against the signed hash, key, exit code 0). Throws SignedEntryError.
 */
export async function openSignedEntry(blob: Uint8Array, key: string, opts: ReadOptions = {}): Promise<OpenedEntry> {
  const env = await readSignedEntry(blob, key, opts)
  let entry: CacheEntry
  try {
    entry = await decodeEntry(env.encoded, key)
  } catch (err) {
    const why = err instanceof EntryFormatError ? err.message : String((err as Error).message ?? err)
    throw new SignedEntryError('entry', `entry from ${env.producer}: ${why}`)
  }
  if (entry.exitCode !== 0) throw new SignedEntryError('entry', `entry from ${env.producer} has exit code ${entry.exitCode}`)
  return { entry, producer: env.producer, timestamp: env.timestamp, encoded: env.encoded }
}

/** Encode and sign an entry in one step: what publish sends to owners and stores. */
export async function sealEntry(entry: CacheEntry, key: string, signer: EntrySigner): Promise<Buffer> {
  return sealEncoded(await encodeEntryPieces(entry, key), key, signer)
}

/** Sign an entry encoded already (encodeEntryPieces' pieces), which must be the one of `key`. */
export async function sealEncoded(pieces: readonly Buffer[], key: string, signer: EntrySigner): Promise<Buffer> {
  const encoded = Buffer.concat(pieces)
  if (encoded.length < HEADER_LENGTH || encoded.toString('hex', 52, 84) !== key) throw new Error(`the encoded entry to sign is not the one of key ${clip(key, 64)}`)
  return signEntry(encoded, signer)
}
