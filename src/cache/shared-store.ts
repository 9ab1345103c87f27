// The entries this member holds for the others: <cache dir>/shared/<2 hex>/<key>, each the signed
// entry exactly as it arrived (signed-entry.ts), so it can be served on with its producer's
// signature. A second LocalStore on its own directory: the same temp-file-and-rename writes, the
// same LRU by mtime, under its own limit ([cache] shared_size). Nothing is stored unverified: a
// put checks the signature, the producer and the whole entry (its checksum against the signed
// hash); a read checks the signature again and drops an entry whose producer was denied or
// distrusted since.
import type { Logger } from '../log.js'
import { formatSize } from '../config.js'
import { StaleEntryError } from './entry-format.js'
import { LocalStore, type StoreCodec, type StoreStats } from './local-store.js'
import { MAX_SIGNED_ENTRY_BYTES, SignedEntryError, openSignedEntry, readSignedEntry } from './signed-entry.js'

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

export type PutOutcome = { stored: true } | { stored: false; kind: SignedEntryError['kind'] | 'quota'; reason: string }

export class SharedStore {
  private readonly store: LocalStore<Buffer>
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
    try {
      await openSignedEntry(blob, key, { refuseProducer: this.opts.refuseToHold })
    } catch (err) {
      if (err instanceof SignedEntryError) return { stored: false, kind: err.kind, reason: err.message }
      throw err
    }
    await this.store.put(key, blob)
    return { stored: true }
  }

  /** Keep an entry this member signed itself, or has just verified whole (a hit it fetched as an owner). */
  async keepVerified(key: string, blob: Buffer): Promise<void> {
    if (this.admit(blob.length) === null) await this.store.put(key, blob)
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
