// The entries this member holds for the others: <cache dir>/shared/<2 hex>/<key>, each the signed
// entry exactly as it arrived (signed-entry.ts), so it can be served on with its producer's
// signature. A second LocalStore on its own directory: the same temp-file-and-rename writes, the
// same LRU by mtime, under its own limit ([cache] shared_size). Nothing is stored unverified: a
// put checks the signature, the producer and the whole entry (its checksum against the signed
// hash); a read checks the signature again and drops an entry whose producer was denied or
// distrusted since.
// A manifest set's key (manifest.ts) holds one set: a depend form is not replaced by a pointer
// (consumers of a pointer preprocess, of a depend form only hash; a pointer arriving after an
// equally good depend form would cost every later asker a preprocessor run, and a member
// holding the mesh key could make others' misses preprocess by publishing pointers). A depend
// form replaces either, a pointer only a pointer. Only manifest sets are read to tell, at most
// MAX_SHARED_SET_BYTES each; the check and the write of one key are not interleaved with another's.
import type { Logger } from '../log.js'
import { formatSize } from '../config.js'
import { StaleEntryError, decodeEntry, type CacheEntry } from './entry-format.js'
import { LocalStore, type StoreCodec, type StoreStats } from './local-store.js'
import { MAX_SHARED_SET_BYTES, sharedManifestOf, type Manifest } from './manifest.js'
import { MAX_SIGNED_ENTRY_BYTES, SignedEntryError, openSignedEntry, readSignedEntry, wrappedEntry } from './signed-entry.js'

/** An entry whose producer is refused now: removed from the store quietly, not reported as damage. */
class DroppedEntryError extends StaleEntryError {}

export interface SharedStoreOptions {
  /** <cache dir>/shared */
  dir: string
  /** [cache] shared_size, at least MIN_CACHE_BYTES */
  maxBytes: number
  log: Logger
  /**
   * Why entries by this producer may not be held (denied, distrusted), or null. Not the same as
   * whom this machine trusts for its own builds: it holds entries for members that may trust more.
   */
  refuseToHold: (producer: string) => string | null
}

/** 'held': a depend form is held for that manifest set's key, and a pointer was offered (see the header) */
export type PutOutcome = { stored: true } | { stored: false; kind: SignedEntryError['kind'] | 'quota' | 'held'; reason: string }

const KEPT_DEPEND_FORM = 'a depend form is held for this command; a pointer does not replace it'

/**
 * The manifest set in `blob`, a signed entry for `key` whose signature was checked, when it is
 * one (sharedManifestOf); null for anything else, never unpacking more than MAX_SHARED_SET_BYTES.
 */
export async function signedManifestSet(key: string, blob: Buffer): Promise<Manifest | null> {
  const encoded = blob.length <= MAX_SHARED_SET_BYTES ? wrappedEntry(blob) : null
  if (encoded === null) return null
  try {
    return sharedManifestOf(key, await decodeEntry(encoded, key, { maxPayloadBytes: MAX_SHARED_SET_BYTES }))
  } catch {
    return null
  }
}

export class SharedStore {
  private readonly store: LocalStore<Buffer>
  /** the write of each key in progress, which the next write of that key waits for */
  private readonly writing = new Map<string, Promise<unknown>>()
  /** the fraction of the limit one entry may take (LocalStore evicts down to 90 %) */
  private static readonly FIT = 0.9

  constructor(private readonly opts: SharedStoreOptions) {
    const codec: StoreCodec<Buffer> = {
      encode: async (blob) => blob,
      decode: async (buf, key) => {
        try {
          await readSignedEntry(buf, key, { refuseProducer: opts.refuseToHold })
        } catch (err) {
          if (err instanceof SignedEntryError && err.kind === 'untrusted') throw new DroppedEntryError(err.message)
          throw err
        }
        return buf
      }
    }
    this.store = new LocalStore<Buffer>({ dir: opts.dir, maxBytes: opts.maxBytes, log: opts.log, codec })
  }

  open(): Promise<void> {
    return this.store.open()
  }

  /** The signed entry held for `key`, or null. */
  async get(key: string): Promise<Buffer | null> {
    const got = await this.store.get(key)
    return got.status === 'hit' ? got.entry : null
  }

  /** Before reading an offered entry of `size` bytes: why it would not be kept, or null. */
  admit(size: number): string | null {
    const fit = Math.min(MAX_SIGNED_ENTRY_BYTES, Math.floor(this.store.maxBytes * SharedStore.FIT))
    if (size > fit) return `an entry of ${formatSize(size)} does not fit the ${formatSize(this.store.maxBytes)} held for others here`
    return null
  }

  /** Verify an offered entry whole and keep it; what happened. */
  async put(key: string, blob: Buffer): Promise<PutOutcome> {
    const quota = this.admit(blob.length)
    if (quota !== null) return { stored: false, kind: 'quota', reason: quota }
    let entry: CacheEntry
    try {
      entry = (await openSignedEntry(blob, key, { refuseProducer: this.opts.refuseToHold })).entry
    } catch (err) {
      if (err instanceof SignedEntryError) return { stored: false, kind: err.kind, reason: err.message }
      throw err
    }
    const why = await this.write(key, blob, entry)
    return why === null ? { stored: true } : { stored: false, kind: 'held', reason: why }
  }

  /**
   * Keep an entry this member signed itself, or has just verified whole (a hit it fetched as an
   * owner, a builder's keep); why not, or null. `entry`: the entry decoded, when the caller has
   * it (without it, the blob is read only when a depend form is held for its key).
   */
  async keepVerified(key: string, blob: Buffer, entry?: CacheEntry): Promise<string | null> {
    return this.admit(blob.length) ?? (await this.write(key, blob, entry))
  }

  /** Store `blob` unless a depend form held for `key` stays (see the header); why not, or null. */
  private write(key: string, blob: Buffer, entry: CacheEntry | undefined): Promise<string | null> {
    const run = async (): Promise<string | null> => {
      if (await this.keepsDependForm(key, blob, entry)) return KEPT_DEPEND_FORM
      await this.store.put(key, blob)
      return null
    }
    const prev = this.writing.get(key)
    const done = prev ? prev.then(run, run) : run()
    this.writing.set(key, done)
    const forget = () => { if (this.writing.get(key) === done) this.writing.delete(key) }
    done.then(forget, forget)
    return done
  }

  /** Whether `blob` (decoded: `entry`) is a pointer and a depend form is held for `key`: only manifest sets are read. */
  private async keepsDependForm(key: string, blob: Buffer, entry: CacheEntry | undefined): Promise<boolean> {
    const offered = entry && sharedManifestOf(key, entry)
    if (entry && offered?.preprocess !== true) return false
    const held = await this.get(key)
    const kept = held && (await signedManifestSet(key, held))
    if (!kept || kept.preprocess || kept.sets.length === 0) return false
    return (offered ?? (await signedManifestSet(key, blob)))?.preprocess === true
  }

  stats(): StoreStats {
    return this.store.stats()
  }

  setMaxBytes(bytes: number): void {
    this.store.setMaxBytes(bytes)
  }

  close(): Promise<void> {
    return this.store.close()
  }
}
