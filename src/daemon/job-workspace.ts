// Job trees on a builder, kept and reused between jobs.
//
// A job's tree is <jobs dir>/w-*/root (hard links to the unpacked toolchain plus the inputs
// outside the client's cwd; the sandbox's read-only root) and w-*/cwd (the inputs under the
// cwd, whose entries the sandbox binds read-only into the job's working directory; the job
// writes only to a tmpfs of its own, src/sandbox/bwrap.ts). A kernel unit brings about 800
// headers: creating and deleting them for every job cost a builder about 350 ms of CPU per job
// on ext4, more than the compile itself. So a finished job's tree is kept, and the next job
// from the same peer with the same toolchain and cwd gets the kept tree that already holds
// most of its inputs: files whose content differs are replaced, missing ones written, and the
// files and directories of earlier jobs that this job does not name are removed.
//
// A tree therefore holds exactly the toolchain, this job's inputs and the directories they
// need, as a fresh tree would: nothing an earlier job left can be found by an include search,
// an #include_next or a __has_include. That is what lets the builder skip re-preprocessing
// the unit to compare it with the client's (builder.ts says when it still does). The units of
// one build differ by a hundred headers or so, so a job removes and writes about that many
// files, not 800. What a job reads besides its preprocessor's inputs cannot be stale either: a
// unit whose preprocessed text names a file to read later (.incbin) is not cacheable, so the
// client compiles it itself and never ships it.
//
// Trees are never shared between peers: one client's files are none of another's business.
// A tree whose job did not finish cleanly is deleted, not reused; so is every tree under
// sandbox = "none", where the job can write anywhere in its chroot.
import { createHash } from 'node:crypto'
import { chmodSync, linkSync, lstatSync, mkdirSync, rmdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import { link, lstat, mkdir, mkdtemp, readdir, readlink, rm, symlink } from 'node:fs/promises'
import { dirname, join, normalize, relative } from 'node:path'
import type { JobFileRef } from '../mesh/protocols/compile-job.js'

export interface WorkspaceKey {
  peer: string
  toolchain: string
  /** the client's working directory, where the cwd tree is mounted */
  cwd: string
}

export interface WorkspacePoolOptions {
  /** where trees live (emptied by the builder at start) */
  dir: string
  /** unpacked toolchain tree to hard-link into each new root */
  toolchainRoot: (hash: string) => string
  /** sandbox = "none": the cwd lives inside the chroot, which the job can write: never reuse */
  chrooted: boolean
  /** most idle trees kept (least recently used go first) */
  maxIdle: number
  /** idle trees unused this long are deleted */
  idleMs?: number
}

export interface WorkspaceStats {
  kept: number; reused: number; created: number
  /** input files written, and of those, written over an older version in a kept tree */
  files_written: number; files_replaced: number
  /** files of earlier jobs removed from a kept tree because the next job did not name them */
  files_removed: number
  /** jobs run again in a fresh tree after a kept one held a file the client no longer has */
  fresh_reruns: number
}

/** A tree that has grown past this many inputs is not kept. */
const MAX_TREE_FILES = 100_000

/**
 * sync() changes a tree with synchronous calls, giving the event loop back after this many.
 * A kernel unit's job writes and removes about 110 files each: as promises, every file was an
 * lstat, an open, a write and a close, each a trip through the thread pool with its wake-ups
 * and a FileHandle to collect, about half of the builder's own CPU per job. Direct calls cost
 * the syscalls only; the yield keeps a job of thousands of files from stalling the other
 * streams for more than a few milliseconds at a time.
 */
const OPS_PER_TURN = 64

/** unlink, and a file already gone is fine (rm's force, without its lstat) */
function unlinkIfThere(p: string): void {
  try {
    unlinkSync(p)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e
  }
}

/** rmdir, and a directory already gone is fine; one that is not empty goes whole */
function removeDir(d: string): void {
  try {
    rmdirSync(d)
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e
    rmSync(d, { recursive: true, force: true })
  }
}

/**
 * The mode an input gets here: the client's, readable by everyone. A root daemon's jobs run as
 * nobody, which must read every input whatever the client's umask was; the trees themselves
 * sit in the daemon's own jobs directory (0700) and reach jobs read-only.
 */
const onDisk = (mode: number) => mode | 0o444

/** bytes of inputs one peer's store keeps (least recently linked go first) */
const STORE_BYTES = 256 * 1024 * 1024
/**
 * peers with a store at once: a member can take new peer IDs at will, and each store may hold
 * STORE_BYTES for the idle time; past this the least recently used store goes
 */
const MAX_STORES = 4

/**
 * One peer's inputs on disk, one file per content and mode, hard-linked into that peer's trees.
 * A job's new inputs were new files, and its dropped ones deleted files: on ext4 the next
 * create then scans past every recently deleted inode (find_inode_bit, recently_deleted), which
 * took a quarter of a builder daemon's CPU. A link allocates no inode and an unlink of one
 * frees none while the store holds the content. The trees reach jobs read-only, as the
 * toolchain's own hard links do; a store is never shared between peers (a job could see the
 * link count), and chrooted trees, which the job can write, get copies instead.
 */
class InputStore {
  private readonly entries = new Map<string, number>() // store path → bytes; insertion order = recency
  private bytes = 0
  lastUsed = Date.now()

  constructor(readonly dir: string) {}

  /** a store dropped by its pool: trees that still hold it get copies, so nothing grows untracked */
  private retired = false
  /** its directory exists */
  private made = false

  /** Put this content at `p` (which must not exist) as a link to the store's copy. */
  link(hash: string, mode: number, data: Buffer, p: string): void {
    if (this.retired) {
      writeFileSync(p, data, { mode: onDisk(mode), flag: 'wx' })
      return
    }
    const sp = join(this.dir, `${hash}.${mode.toString(8)}`)
    this.lastUsed = Date.now()
    const held = this.entries.get(sp)
    if (held !== undefined) {
      this.entries.delete(sp)
      this.entries.set(sp, held)
    } else {
      if (!this.made) mkdirSync(this.dir, { recursive: true, mode: 0o700 })
      this.made = true
      // straight at its name, no temporary file and rename (a tenth of the tree's upkeep per
      // job): no tree links a store file before it is whole (the link below), a failed write
      // goes at once, and the builder empties its jobs directory at start, so a crash midway
      // leaves nothing that is used again. Exclusive: never written through a name that
      // exists, which trees might link
      const put = () => writeFileSync(sp, data, { mode: onDisk(mode), flag: 'wx' })
      try {
        try {
          put()
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
          unlinkIfThere(sp)
          put()
        }
      } catch (e) {
        unlinkIfThere(sp)
        throw e
      }
      this.entries.set(sp, data.length)
      this.bytes += data.length
      // trees keep their links to what goes: only the store's name of it is dropped
      for (const [old, n] of this.entries) {
        if (this.bytes <= STORE_BYTES || old === sp) break
        unlinkIfThere(old)
        this.entries.delete(old)
        this.bytes -= n
      }
    }
    linkSync(sp, p)
  }

  clear(): void {
    this.retired = true
    rmSync(this.dir, { recursive: true, force: true })
    this.entries.clear()
    this.bytes = 0
  }
}

/**
 * Why a job's file table cannot become a tree, or null: a path it names as a file and also as a
 * directory (a file below another file, a file its directories or working directory pass
 * through). Checked before anything of the job is written, as one line naming the path.
 */
export function fileTableClash(files: string[], dirs: string[], cwd: string): string | null {
  const clean = (p: string) => normalize(p).replace(/\/+$/, '') || '/'
  const asDirs = new Set<string>(['/'])
  const withAncestors = (d: string) => {
    for (let x = clean(d); !asDirs.has(x); x = dirname(x)) asDirs.add(x)
  }
  withAncestors(cwd)
  for (const d of dirs) withAncestors(d)
  for (const f of files) withAncestors(dirname(clean(f)))
  const clash = files.find((f) => asDirs.has(clean(f)))
  return clash === undefined ? null : `job file table: ${clash} is both a file and a directory`
}

/** One job tree, owned by one job at a time. */
export class Workspace {
  readonly root: string
  /** host directory mounted at the client's cwd (inside root when chrooted) */
  readonly cwdDir: string
  /** inputs present now: placed host path → content hash and (the client's) mode */
  private readonly files = new Map<string, { hash: string; mode: number }>()
  /** directories this tree created for inputs (not the toolchain's own) */
  private readonly dirs = new Set<string>()
  /** the toolchain's own directories that inputs live under (never removed) */
  private readonly toolchainDirs = new Set<string>()
  /** an input replaced a toolchain file: removing it later would not bring the toolchain's back */
  private shadowsToolchain = false
  lastUsed = Date.now()
  /** jobs run in this tree before the current one */
  jobsBefore = 0
  /**
   * place() by client path: a job asks for each of its ~800 inputs three times (the choice of
   * tree asks every idle tree), and join and relative walk every path character each time
   */
  private readonly placed = new Map<string, string>()

  /** store: link inputs from it (null: write copies, the job may write to its tree) */
  constructor(readonly base: string, readonly key: WorkspaceKey, chrooted: boolean, private readonly store: InputStore | null = null) {
    this.root = join(base, 'root')
    this.cwdDir = chrooted ? join(this.root, key.cwd) : join(base, 'cwd')
  }

  /** Where a client path lives on this host. */
  place(p: string): string {
    let placed = this.placed.get(p)
    if (placed === undefined) {
      const cwd = this.key.cwd
      placed = p === cwd || p.startsWith(cwd + '/') ? join(this.cwdDir, relative(cwd, p)) : join(this.root, p)
      if (this.placed.size >= MAX_TREE_FILES) this.placed.clear()
      this.placed.set(p, placed)
    }
    return placed
  }

  /** The names in the cwd tree that hold these files and directories (what the job must see there). */
  cwdEntries(paths: Iterable<string>): string[] {
    const names = new Set<string>()
    const prefix = this.cwdDir + '/'
    for (const p of paths) {
      const placed = this.place(p)
      if (!placed.startsWith(prefix)) continue
      const rest = placed.slice(prefix.length)
      const slash = rest.indexOf('/')
      names.add(slash < 0 ? rest : rest.slice(0, slash))
    }
    return [...names]
  }

  /** How many of these inputs the tree holds already, byte for byte. */
  holding(refs: JobFileRef[]): number {
    let n = 0
    for (const r of refs) if (this.files.get(this.place(r.path))?.hash === r.hash) n++
    return n
  }

  get reusable(): boolean {
    return !this.shadowsToolchain && this.files.size <= MAX_TREE_FILES
  }

  /**
   * Make the tree hold exactly these inputs with these contents and these directories (and the
   * toolchain): what earlier jobs left and this one does not name goes. Returns how many files
   * were written, replaced and removed.
   */
  async sync(refs: JobFileRef[], data: Buffer[], dirs: string[]): Promise<{ written: number; replaced: number; removed: number }> {
    const want = new Map<string, { path: string; hash: string; mode: number; data: Buffer }>()
    refs.forEach((r, i) => want.set(this.place(r.path), { path: r.path, hash: r.hash, mode: r.mode || 0o644, data: data[i]! }))
    const wantDirs = new Set<string>()
    const addAncestors = (d: string) => {
      for (let x = d; x !== this.root && x !== this.cwdDir && x.length > this.base.length; x = dirname(x)) {
        if (wantDirs.has(x)) break
        wantDirs.add(x)
      }
    }
    for (const d of dirs) addAncestors(this.place(d))
    for (const p of want.keys()) addAncestors(dirname(p))

    let ops = 0
    const turn = async () => { if (++ops % OPS_PER_TURN === 0) await new Promise((r) => setImmediate(r)) }
    let removed = 0
    for (const p of [...this.files.keys()]) {
      if (want.has(p)) continue
      unlinkIfThere(p)
      this.files.delete(p)
      removed++
      await turn()
    }
    // deepest first; a directory this tree made that the job does not need. Empty by now:
    // the files this tree put in it went above, the directories it made in it went before it,
    // the toolchain has nothing in a directory the toolchain lacked, and the job never writes
    // here. So one rmdir, not rm's lstat, readdir and rmdir; rm whole all the same should
    // anything be left (a directory the client replaced by a file must go whole).
    for (const d of [...this.dirs].sort((a, b) => b.length - a.length)) {
      if (wantDirs.has(d)) continue
      removeDir(d)
      this.dirs.delete(d)
      await turn()
    }
    for (const d of [...wantDirs].sort((a, b) => a.length - b.length)) {
      if (this.dirs.has(d) || this.toolchainDirs.has(d)) continue
      const first = mkdirSync(d, { recursive: true })
      if (first === undefined) this.toolchainDirs.add(d) // there before: linked from the toolchain
      else for (let x = d; ; x = dirname(x)) { this.dirs.add(x); if (x === first || x.length <= first.length) break }
      await turn()
    }
    let written = 0
    let replaced = 0
    for (const [p, w] of want) {
      const have = this.files.get(p)
      if (have?.hash === w.hash && (have.mode === w.mode || !this.store)) {
        if (have.mode !== w.mode) { chmodSync(p, onDisk(w.mode)); have.mode = w.mode }
        continue
      }
      if (have) {
        // a new version (or mode, which a linked file shares with the store): a new file (the
        // job may have hard-linked the old one elsewhere)
        unlinkIfThere(p)
        this.files.delete(p)
        replaced++
      }
      const put = () => this.store ? this.store.link(w.hash, w.mode, w.data, p) : writeFileSync(p, w.data, { mode: onDisk(w.mode), flag: 'wx' })
      try {
        put()
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
        // a toolchain file (hard link) at an input's path: never write through the link
        if (lstatSync(p).isDirectory()) throw new Error(`job file table: ${w.path} is a directory of the toolchain`)
        this.shadowsToolchain = true
        unlinkIfThere(p)
        put()
      }
      this.files.set(p, { hash: w.hash, mode: w.mode })
      written++
      await turn()
    }
    return { written, replaced, removed }
  }
}

export class WorkspacePool {
  private readonly idle: Workspace[] = []
  /** each peer's input store (never under chrooted) */
  private readonly stores = new Map<string, InputStore>()
  private readonly stats: Omit<WorkspaceStats, 'kept'> = { reused: 0, created: 0, files_written: 0, files_replaced: 0, files_removed: 0, fresh_reruns: 0 }
  private readonly timer: NodeJS.Timeout

  constructor(private readonly opts: WorkspacePoolOptions) {
    const idleMs = opts.idleMs ?? 10 * 60_000
    this.timer = setInterval(() => void this.dropIdle(idleMs), Math.min(60_000, idleMs))
    this.timer.unref()
  }

  /**
   * A tree for this job, holding its inputs; give it back with release(). fresh: a new tree,
   * holding only them, whatever is kept (the job failed its preprocessing check in a kept one).
   */
  async acquire(key: WorkspaceKey, refs: JobFileRef[], data: Buffer[], dirs: string[], fresh = false): Promise<Workspace> {
    if (fresh) this.stats.fresh_reruns++
    const i = this.opts.chrooted || fresh ? -1 : this.closest(key, refs)
    if (i >= 0) {
      const ws = this.idle.splice(i, 1)[0]!
      try {
        await this.fill(ws, refs, data, dirs)
        this.stats.reused++
        ws.jobsBefore++
        return ws
      } catch {
        // e.g. a directory now where the tree has a file: start over in a fresh tree
        await rm(ws.base, { recursive: true, force: true })
      }
    }
    const ws = new Workspace(await mkdtemp(join(this.opts.dir, 'w-')), key, this.opts.chrooted, this.storeOf(key.peer))
    try {
      await linkTree(this.opts.toolchainRoot(key.toolchain), ws.root)
      await mkdir(ws.cwdDir, { recursive: true })
      await this.fill(ws, refs, data, dirs)
    } catch (e) {
      await rm(ws.base, { recursive: true, force: true })
      throw e
    }
    this.stats.created++
    return ws
  }

  private storeOf(peer: string): InputStore | null {
    if (this.opts.chrooted) return null
    let store = this.stores.get(peer)
    if (!store) {
      if (this.stores.size >= MAX_STORES) {
        const [lru] = [...this.stores].sort(([, a], [, b]) => a.lastUsed - b.lastUsed)
        lru![1].clear()
        this.stores.delete(lru![0])
      }
      // a name of the pool's choosing, whatever the peer id holds
      store = new InputStore(join(this.opts.dir, `inputs-${createHash('sha256').update(peer).digest('hex').slice(0, 32)}`))
      this.stores.set(peer, store)
    }
    return store
  }

  private clearStores(): void {
    for (const s of this.stores.values()) s.clear()
    this.stores.clear()
  }

  private async fill(ws: Workspace, refs: JobFileRef[], data: Buffer[], dirs: string[]): Promise<void> {
    const r = await ws.sync(refs, data, dirs)
    this.stats.files_written += r.written
    this.stats.files_replaced += r.replaced
    this.stats.files_removed += r.removed
    ws.lastUsed = Date.now()
  }

  /** The idle tree for this key that already holds the most of these inputs (-1: none). */
  private closest(key: WorkspaceKey, refs: JobFileRef[]): number {
    let best = -1
    let bestCount = -1
    this.idle.forEach((w, i) => {
      if (w.key.peer !== key.peer || w.key.toolchain !== key.toolchain || w.key.cwd !== key.cwd) return
      const n = w.holding(refs)
      // ties go to the most recently released (later in the list)
      if (n >= bestCount) { best = i; bestCount = n }
    })
    return best
  }

  /**
   * Keep the tree for the next job (clean = the job ran to a verdict), or delete it. Nothing to
   * clean: the sandbox gave the job the tree read-only, and its writes died with its tmpfs.
   */
  async release(ws: Workspace, clean: boolean): Promise<void> {
    if (clean && ws.reusable && !this.opts.chrooted) {
      ws.lastUsed = Date.now()
      this.idle.push(ws)
      while (this.idle.length > this.opts.maxIdle) await rm(this.idle.shift()!.base, { recursive: true, force: true }).catch(() => undefined)
      return
    }
    await rm(ws.base, { recursive: true, force: true })
  }

  status(): WorkspaceStats {
    return { ...this.stats, kept: this.idle.length }
  }

  private async dropIdle(idleMs: number): Promise<void> {
    const now = Date.now()
    for (const ws of [...this.idle]) {
      if (now - ws.lastUsed < idleMs) continue
      this.idle.splice(this.idle.indexOf(ws), 1)
      await rm(ws.base, { recursive: true, force: true }).catch(() => undefined)
    }
    // a store no job has used for the idle time goes too (a tree keeps its links)
    for (const [peer, store] of this.stores) {
      if (now - store.lastUsed < idleMs) continue
      store.clear()
      this.stores.delete(peer)
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer)
    for (const ws of this.idle.splice(0)) await rm(ws.base, { recursive: true, force: true }).catch(() => undefined)
    this.clearStores()
  }
}

/** Mirror a toolchain tree with hard links (cheap, same filesystem) and recreated symlinks. */
async function linkTree(src: string, dest: string): Promise<void> {
  await mkdir(dest, { recursive: true })
  for (const name of await readdir(src)) {
    const s = join(src, name)
    const d = join(dest, name)
    const st = await lstat(s)
    if (st.isDirectory()) await linkTree(s, d)
    else if (st.isSymbolicLink()) await symlink(await readlink(s), d)
    else await link(s, d)
  }
}
