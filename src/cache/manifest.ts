// Direct-mode manifests: for one compile command (compiler, arguments, working directory,
// source content), the sets of included files that were seen with it, each set with the
// content hashes of its files and the cache key of the result they produced. A lookup that
// finds a set whose files all still have those hashes knows the result key without running
// the preprocessor.
//
// Stored beside the cache entries under manifests/xx/<key>, written atomically: a line with the
// SHA-256 of the rest, then the JSON. A damaged manifest is a miss, counted, and removed; the
// checksum is what tells one byte changed in a recorded hash or path (still JSON, still a
// manifest) from a manifest that is merely out of date. Each holds at most MAX_SETS sets, newest
// first, and the key it was written for: one that ends up under another command's name is
// damage, not a hit.
// A manifest can also say "preprocess": the command's result was stored under its
// preprocessed key while its files were too new to record, so a miss here should take the
// preprocessed path (and find it) rather than compile again without the preprocessor.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { clip } from '../log.js'
import type { CacheEntry } from './entry-format.js'

export interface FileSet {
  /**
   * [path, sha256] of every file the compile read, the source included: absolute, or (rustc)
   * relative to the working directory of the build that looks it up
   */
  files: Array<[string, string]>
  /** [name, value or null for unset] of the environment variables the compile read (rustc's env!) */
  env?: Array<[string, string | null]>
  /** key of the cache entry this set produced */
  result: string
}

export interface Manifest {
  sets: FileSet[]
  /** look the command up by its preprocessed key when no set matches */
  preprocess: boolean
}

/** A manifest as read: `damaged` says why one on disk was unusable (it has been removed). */
export interface ManifestRead extends Manifest {
  damaged: string | null
}

const FORMAT = 'meshcc-manifest-3'
/** formats of older meshcc versions (JSON without the checksum line): read as no manifest, not as damage */
const OLD_FORMATS = new Set(['meshcc-manifest-1', 'meshcc-manifest-2'])
const EMPTY: ManifestRead = { sets: [], preprocess: false, damaged: null }
const MAX_SETS = 16
/** A manifest of 16 sets of a few hundred headers is well under this; anything larger is damage. */
const MAX_BYTES = 16 * 1024 * 1024
const HEX64 = /^[0-9a-f]{64}$/

export class ManifestStore {
  private readonly dir: string

  constructor(cacheDir: string) {
    this.dir = join(cacheDir, 'manifests')
  }

  private path(key: string): string {
    return join(this.dir, key.slice(0, 2), key)
  }

  /** Remove every manifest (`meshcc -C`). */
  async clear(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true })
  }

  /** The sets recorded for `key`, newest first, and the preprocess hint; empty when there is none or it is damaged. */
  async get(key: string): Promise<ManifestRead> {
    let text: string
    try {
      const buf = await readFile(this.path(key))
      if (buf.length > MAX_BYTES) throw new Error(`${buf.length} bytes, more than ${MAX_BYTES}`)
      text = buf.toString('utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return EMPTY
      await rm(this.path(key), { force: true })
      return { ...EMPTY, damaged: (err as NodeJS.ErrnoException).code ?? (err as Error).message }
    }
    const m = parseManifest(text, key)
    if (typeof m === 'string') await rm(this.path(key), { force: true })
    if (m === 'old format') return EMPTY
    return typeof m === 'string' ? { ...EMPTY, damaged: m } : { ...m, damaged: null }
  }

  /** Record a set first (replacing an older set with the same files). */
  async add(key: string, set: FileSet): Promise<void> {
    const { sets } = await this.get(key)
    const same = (a: FileSet) => a.files.length === set.files.length && a.files.every(([p, h], i) => set.files[i][0] === p && set.files[i][1] === h) &&
      JSON.stringify(a.env ?? []) === JSON.stringify(set.env ?? [])
    await this.write(key, { sets: [set, ...sets.filter((s) => !same(s))].slice(0, MAX_SETS), preprocess: false })
  }

  /** Note that this command's latest result is only under its preprocessed key. */
  async markPreprocess(key: string): Promise<void> {
    const m = await this.get(key)
    if (!m.preprocess) await this.write(key, { sets: m.sets, preprocess: true })
  }

  private async write(key: string, m: Manifest): Promise<void> {
    const dest = this.path(key)
    await mkdir(join(dest, '..'), { recursive: true })
    const tmp = `${dest}.${randomBytes(6).toString('hex')}.tmp`
    try {
      await writeFile(tmp, encodeManifest(key, m))
      await rename(tmp, dest)
    } catch (err) {
      await rm(tmp, { force: true })
      throw err
    }
  }
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex')

/** A manifest as stored: its checksum line, then the JSON (also what the mesh carries for rustc's depend keys). */
export function encodeManifest(key: string, m: Manifest): string {
  const json = JSON.stringify({ format: FORMAT, key, sets: m.sets, preprocess: m.preprocess })
  return `${sha256(json)}\n${json}`
}

/** The manifest in `text`, written for `key`; or why it is not one ('old format' for an older meshcc's). */
export function parseManifest(text: string, key: string): Manifest | string {
  const d = manifestDoc(text)
  if (typeof d === 'string') return d
  if (d.key !== key) return `written for command ${typeof d.key === 'string' ? clip(d.key, 64) : 'unknown'}, not this one`
  return manifestOf(d)
}

type ManifestDoc = { format?: unknown; key?: unknown; sets?: unknown; preprocess?: unknown }

/** The JSON of a manifest whose checksum and format are right, or why it is not one. */
function manifestDoc(text: string): ManifestDoc | string {
  const checked = text.length > 65 && text[64] === '\n' && HEX64.test(text.slice(0, 64))
  const json = checked ? text.slice(65) : text
  if (checked && sha256(json) !== text.slice(0, 64)) return 'checksum mismatch'
  let doc: unknown
  try {
    doc = JSON.parse(json)
  } catch {
    return checked ? 'not JSON' : 'no checksum'
  }
  if (typeof doc !== 'object' || doc === null) return 'not a manifest'
  const d = doc as ManifestDoc
  if (!checked) return typeof d.format === 'string' && OLD_FORMATS.has(d.format) ? 'old format' : 'no checksum'
  if (d.format !== FORMAT) return 'not a manifest'
  return d
}

/** The sets and hint of a manifest's JSON, each set checked, or why they are malformed. */
function manifestOf(d: ManifestDoc): Manifest | string {
  const sets = d.sets
  if (!Array.isArray(sets)) return 'no sets'
  for (const s of sets) {
    if (typeof s !== 'object' || s === null || typeof s.result !== 'string' || !HEX64.test(s.result) || !Array.isArray(s.files)) return 'a malformed set'
    for (const f of s.files) {
      if (!Array.isArray(f) || f.length !== 2 || typeof f[0] !== 'string' || typeof f[1] !== 'string' || !HEX64.test(f[1])) return 'a malformed file in a set'
    }
    if (s.env !== undefined) {
      if (!Array.isArray(s.env)) return 'a malformed environment in a set'
      for (const e of s.env) if (!Array.isArray(e) || e.length !== 2 || typeof e[0] !== 'string' || (typeof e[1] !== 'string' && e[1] !== null)) return 'a malformed environment in a set'
    }
  }
  return { sets: sets as FileSet[], preprocess: d.preprocess === true }
}

// --- manifest sets in the mesh ---
// A member publishes the set a result was made from as an entry of one output named
// 'manifest', under a key made from the command's direct key: a depend form (its result is
// the key its files make) or a pointer ("preprocess": its result is a preprocessed key).

const SHARED_MANIFEST_VERSION = 'meshcc-shared-manifest-1'
/** Sets are kilobytes: a holder reads none larger than this, packed or unpacked (a member cannot make it unpack a big entry of its own). */
export const MAX_SHARED_SET_BYTES = 4 * 1024 * 1024

/** Where the mesh holds the manifest set of a direct key (depend-mode results, and content-keyed ones in depend form). */
export function sharedManifestKey(direct: string): string {
  return createHash('sha256').update(`${SHARED_MANIFEST_VERSION}\0${direct}`).digest('hex')
}

/** A manifest set as the mesh carries it: an entry of one output, the set's manifest text; `pointer`: its result is a preprocessed key. */
export function sharedManifestEntry(direct: string, set: FileSet, pointer = false): CacheEntry {
  const data = Buffer.from(encodeManifest(direct, { sets: [set], preprocess: pointer }))
  return { exitCode: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), outputs: [{ name: 'manifest', data }] }
}

/**
 * The manifest set `entry` carries when it is one for the mesh key `key` (what
 * sharedManifestEntry makes, for a command whose sharedManifestKey is `key`: a holder can tell
 * without knowing the command), or null. Not checked against anyone's files: whoever uses the
 * set checks that (compile-service.ts).
 */
export function sharedManifestOf(key: string, entry: CacheEntry): Manifest | null {
  const out = entry.outputs
  if (out.length !== 1 || out[0]!.name !== 'manifest' || out[0]!.data.length > MAX_SHARED_SET_BYTES) return null
  const d = manifestDoc(out[0]!.data.toString('utf8'))
  if (typeof d === 'string' || typeof d.key !== 'string' || sharedManifestKey(d.key) !== key) return null
  const m = manifestOf(d)
  return typeof m === 'string' ? null : m
}
