// Job trees kept between jobs on a builder (src/daemon/job-workspace.ts), on the real
// filesystem: a reused tree must hold exactly the next job's inputs with their current
// contents, as a fresh one does (the builder skips its preprocessing check on that ground), never be shared between peers, never write through a
// toolchain hard link, be dropped when its job did not end cleanly, and hold every input
// readable by the job's user. (Jobs cannot write the tree: test/sandbox-bwrap.test.ts.)
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { WorkspacePool } from '../src/daemon/job-workspace.js'
import type { JobFileRef } from '../src/mesh/protocols/compile-job.js'

const top = mkdtempSync(join(tmpdir(), 'meshcc-ws-'))
after(() => rmSync(top, { recursive: true, force: true }))

const CWD = '/home/dev/proj'
const TOOL = 'a'.repeat(64)

function toolchain(): string {
  const t = join(top, 'toolchain')
  if (existsSync(t)) return t
  mkdirSync(join(t, 'usr', 'bin'), { recursive: true })
  mkdirSync(join(t, 'usr', 'include'), { recursive: true })
  writeFileSync(join(t, 'usr', 'bin', 'cc'), 'the compiler')
  writeFileSync(join(t, 'usr', 'include', 'stdio.h'), 'toolchain stdio.h')
  symlinkSync('usr/bin', join(t, 'bin'))
  return t
}

function pool(chrooted = false) {
  const dir = mkdtempSync(join(top, 'jobs-'))
  return new WorkspacePool({ dir, toolchainRoot: () => toolchain(), chrooted, maxIdle: 4 })
}

/** A job's inputs: client path → content. */
function job(files: Record<string, string>): { refs: JobFileRef[]; data: Buffer[] } {
  const refs: JobFileRef[] = []
  const data: Buffer[] = []
  for (const [path, text] of Object.entries(files)) {
    const b = Buffer.from(text)
    refs.push({ path, mode: 0o644, size: b.length, hash: createHash('sha256').update(b).digest('hex') })
    data.push(b)
  }
  return { refs, data }
}

/** Every file and directory under dir: relative path → content (or "<dir>"). */
function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name)
      const st = lstatSync(p)
      if (st.isDirectory()) { out[relative(dir, p) + '/'] = '<dir>'; walk(p) }
      else if (st.isSymbolicLink()) out[relative(dir, p)] = '<link>'
      else out[relative(dir, p)] = readFileSync(p, 'utf8')
    }
  }
  walk(dir)
  return out
}

const key = (peer: string) => ({ peer, toolchain: TOOL, cwd: CWD })

test('a kept tree: exactly the next job\'s inputs at their current contents, what earlier jobs left removed', async () => {
  const p = pool()
  const a = job({ [`${CWD}/src/a.c`]: 'int a;', [`${CWD}/include/x.h`]: 'x1', '/opt/sdk/include/sdk.h': 'sdk' })
  const ws = await p.acquire(key('peer1'), a.refs, a.data, [`${CWD}/build`])
  assert.deepEqual(tree(ws.cwdDir), { 'src/': '<dir>', 'src/a.c': 'int a;', 'include/': '<dir>', 'include/x.h': 'x1', 'build/': '<dir>' })
  assert.equal(readFileSync(join(ws.root, 'opt/sdk/include/sdk.h'), 'utf8'), 'sdk')
  assert.equal(readFileSync(join(ws.root, 'usr/bin/cc'), 'utf8'), 'the compiler')
  await p.release(ws, true)

  const b = job({ [`${CWD}/src/b.c`]: 'int b;', [`${CWD}/include/x.h`]: 'x2', [`${CWD}/include/y.h`]: 'y', '/opt/sdk/include/sdk.h': 'sdk' })
  const ws2 = await p.acquire(key('peer1'), b.refs, b.data, [])
  assert.equal(ws2.base, ws.base, 'the same tree is reused')
  assert.deepEqual(tree(ws2.cwdDir), { 'src/': '<dir>', 'src/b.c': 'int b;', 'include/': '<dir>', 'include/x.h': 'x2', 'include/y.h': 'y' }, 'a.c and the empty build/ are gone')
  assert.equal(readFileSync(join(ws2.root, 'opt/sdk/include/sdk.h'), 'utf8'), 'sdk')
  assert.deepEqual(tree(join(ws2.root, 'usr')), { 'bin/': '<dir>', 'bin/cc': 'the compiler', 'include/': '<dir>', 'include/stdio.h': 'toolchain stdio.h' }, 'the toolchain as it was')
  const st = p.status()
  assert.equal(st.created, 1)
  assert.equal(st.reused, 1)
  // first job: 3 files; second: b.c, the new y.h and the changed x.h (sdk.h kept, a.c removed)
  assert.equal(st.files_written, 3 + 3)
  assert.equal(st.files_replaced, 1, 'x.h')
  assert.equal(st.files_removed, 1, 'a.c')
  await p.release(ws2, true)

  // fresh: a new tree holding only the job's inputs, although one is kept (a kept tree failed
  // the preprocessing check)
  const ws3 = await p.acquire(key('peer1'), b.refs, b.data, [], true)
  assert.notEqual(ws3.base, ws.base)
  assert.deepEqual(tree(ws3.cwdDir), { 'src/': '<dir>', 'src/b.c': 'int b;', 'include/': '<dir>', 'include/x.h': 'x2', 'include/y.h': 'y' })
  assert.equal(p.status().fresh_reruns, 1)
  await p.release(ws3, true)
  await p.stop()
})

test('a kept tree drops the directories and files outside the cwd that the next job does not name, keeps the toolchain\'s', async () => {
  const p = pool()
  const a = job({ [`${CWD}/a.c`]: 'int a;', '/opt/sdk/include/deep/sdk.h': 'sdk', '/usr/include/extra/e.h': 'e' })
  const ws = await p.acquire(key('peer1'), a.refs, a.data, [`${CWD}/build/obj`])
  await p.release(ws, true)
  // the client replaced a directory by a file of the same name
  const b = job({ [`${CWD}/a.c`]: 'int a;', [`${CWD}/build`]: 'now a file' })
  const ws2 = await p.acquire(key('peer1'), b.refs, b.data, [])
  assert.equal(ws2.base, ws.base)
  assert.deepEqual(tree(ws2.cwdDir), { 'a.c': 'int a;', build: 'now a file' })
  assert.equal(existsSync(join(ws2.root, 'opt')), false, 'the directories only sdk.h needed are gone')
  assert.equal(existsSync(join(ws2.root, 'usr/include/extra')), false)
  assert.deepEqual(tree(join(ws2.root, 'usr')), { 'bin/': '<dir>', 'bin/cc': 'the compiler', 'include/': '<dir>', 'include/stdio.h': 'toolchain stdio.h' }, 'the toolchain as it was')
  await p.release(ws2, true)
  await p.stop()
})

test('trees are never shared between peers, and one that did not end cleanly is deleted', async () => {
  const p = pool()
  const a = job({ [`${CWD}/a.c`]: 'int a;' })
  const w1 = await p.acquire(key('peer1'), a.refs, a.data, [])
  await p.release(w1, true)
  const w2 = await p.acquire(key('peer2'), a.refs, a.data, [])
  assert.notEqual(w2.base, w1.base, 'another peer gets a tree of its own')
  await p.release(w2, false)
  assert.equal(existsSync(w2.base), false, 'a tree whose job failed is deleted')
  const w3 = await p.acquire({ ...key('peer1'), cwd: '/elsewhere' }, [], [], [])
  assert.notEqual(w3.base, w1.base, 'another cwd gets a tree of its own')
  await p.release(w3, true)
  assert.equal(p.status().created, 3)
  await p.stop()
  assert.equal(existsSync(w1.base), false, 'stop deletes the idle trees')
})

test('inputs are readable by everyone (a root daemon\'s jobs run as nobody), and a job is shown the entries of the cwd it needs', async () => {
  const p = pool()
  const a = job({ [`${CWD}/src/a.c`]: 'int a;', [`${CWD}/top.h`]: 't', [`${CWD}/include/x.h`]: 'x', '/opt/sdk/sdk.h': 'sdk' })
  a.refs[0]!.mode = 0o600
  a.refs[1]!.mode = 0o750
  const ws = await p.acquire(key('peer1'), a.refs, a.data, [`${CWD}/build/obj`, '/opt/other'])
  assert.equal(statSync(join(ws.cwdDir, 'src/a.c')).mode & 0o777, 0o644)
  assert.equal(statSync(join(ws.cwdDir, 'top.h')).mode & 0o777, 0o754)
  assert.equal(statSync(join(ws.root, 'opt/sdk/sdk.h')).mode & 0o777, 0o644)
  assert.deepEqual(ws.cwdEntries([...a.refs.map((r) => r.path), `${CWD}/build/obj`, '/opt/other', CWD]).sort(), ['build', 'include', 'src', 'top.h'])
  // a mode change alone: still readable
  await p.release(ws, true)
  const b = job({ [`${CWD}/src/a.c`]: 'int a;' })
  b.refs[0]!.mode = 0o700
  const ws2 = await p.acquire(key('peer1'), b.refs, b.data, [])
  assert.equal(ws2.base, ws.base)
  assert.equal(statSync(join(ws2.cwdDir, 'src/a.c')).mode & 0o777, 0o744)
  await p.release(ws2, true)
  await p.stop()
})

test('an input at a toolchain file\'s path replaces the hard link, never writes through it', async () => {
  const p = pool()
  const a = job({ '/usr/include/stdio.h': 'the client\'s own stdio.h', [`${CWD}/a.c`]: 'int a;' })
  const w = await p.acquire(key('peer1'), a.refs, a.data, [])
  assert.equal(readFileSync(join(w.root, 'usr/include/stdio.h'), 'utf8'), 'the client\'s own stdio.h')
  assert.equal(readFileSync(join(toolchain(), 'usr/include/stdio.h'), 'utf8'), 'toolchain stdio.h', 'the toolchain is untouched')
  await p.release(w, true)
  assert.equal(existsSync(w.base), false, 'the tree lost a toolchain file for good: not reused')
  await p.stop()
})

test('sandbox = "none" (the job can write anywhere in its chroot): trees are never reused', async () => {
  const p = pool(true)
  const a = job({ [`${CWD}/a.c`]: 'int a;' })
  const w = await p.acquire(key('peer1'), a.refs, a.data, [])
  assert.equal(readFileSync(join(w.root, CWD, 'a.c'), 'utf8'), 'int a;', 'the cwd lives inside the chroot')
  await p.release(w, true)
  assert.equal(existsSync(w.base), false)
  await p.stop()
})

test('of several idle trees, a job gets the one that already holds most of its inputs', async () => {
  const p = pool()
  const libH = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`${CWD}/lib/h${i}.h`, `lib ${i}`]))
  const kernH = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`${CWD}/kernel/h${i}.h`, `kernel ${i}`]))
  const mmH = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`${CWD}/mm/h${i}.h`, `mm ${i}`]))
  const a = job({ ...libH, [`${CWD}/lib/a.c`]: 'a' })
  const b = job({ ...kernH, [`${CWD}/kernel/b.c`]: 'b' })
  const m = job({ ...mmH, [`${CWD}/mm/m.c`]: 'm' })
  // three jobs at once: three trees, released so that neither the oldest nor the newest fits
  const wa = await p.acquire(key('peer1'), a.refs, a.data, [])
  const wb = await p.acquire(key('peer1'), b.refs, b.data, [])
  const wm = await p.acquire(key('peer1'), m.refs, m.data, [])
  await p.release(wa, true)
  await p.release(wb, true)
  await p.release(wm, true)
  const written0 = p.status().files_written
  const c = job({ ...kernH, [`${CWD}/kernel/c.c`]: 'c' })
  const wc = await p.acquire(key('peer1'), c.refs, c.data, [])
  assert.equal(wc.base, wb.base, 'the tree that held the kernel headers')
  assert.equal(p.status().files_written - written0, 1, 'only c.c was written')
  await p.release(wc, true)
  await p.stop()
})

test('a peer\'s trees link one copy of each content and mode: a mode change never reaches another tree, another peer\'s trees and chrooted ones share nothing', async () => {
  const p = pool()
  const a = job({ [`${CWD}/src/a.c`]: 'int a;', [`${CWD}/inc/x.h`]: 'same', [`${CWD}/inc/y.h`]: 'same' })
  // two jobs at once from peer1: two trees holding the same contents
  const w1 = await p.acquire(key('peer1'), a.refs, a.data, [])
  const w2 = await p.acquire(key('peer1'), a.refs, a.data, [])
  const ino = (w: { cwdDir: string }, f: string) => statSync(join(w.cwdDir, f)).ino
  assert.notEqual(w1.base, w2.base)
  assert.equal(ino(w1, 'src/a.c'), ino(w2, 'src/a.c'), 'one copy of a.c for both trees')
  assert.equal(ino(w1, 'inc/x.h'), ino(w1, 'inc/y.h'), 'one copy of a content held at two paths')
  // peer2 sees its own copies: a link count must not tell it what peer1 sent
  const w3 = await p.acquire(key('peer2'), a.refs, a.data, [])
  assert.notEqual(ino(w3, 'src/a.c'), ino(w1, 'src/a.c'))
  assert.equal(statSync(join(w3.cwdDir, 'src/a.c')).nlink, 2, 'the store\'s name and this tree\'s')
  await p.release(w1, true)
  // a mode change in one tree gets a file of its own; the other tree keeps its mode
  const b = job({ [`${CWD}/src/a.c`]: 'int a;' })
  b.refs[0]!.mode = 0o700
  const w1b = await p.acquire(key('peer1'), b.refs, b.data, [])
  assert.equal(w1b.base, w1.base)
  assert.equal(statSync(join(w1b.cwdDir, 'src/a.c')).mode & 0o777, 0o744)
  assert.equal(statSync(join(w2.cwdDir, 'src/a.c')).mode & 0o777, 0o644)
  for (const w of [w1b, w2, w3]) await p.release(w, true)
  await p.stop()
  // under sandbox = "none" a job can write its tree: never a link to anything it could change
  const c = pool(true)
  const wc = await c.acquire(key('peer1'), a.refs, a.data, [])
  assert.equal(statSync(join(wc.cwdDir, 'src/a.c')).nlink, 1)
  await c.release(wc, true)
  await c.stop()
})

test('a member taking new peer IDs gets at most four input stores on the builder\'s disk; a dropped store\'s trees get copies', async () => {
  const dir = mkdtempSync(join(top, 'jobs-'))
  const p = new WorkspacePool({ dir, toolchainRoot: () => toolchain(), chrooted: false, maxIdle: 8 })
  const stores = () => readdirSync(dir).filter((n) => n.startsWith('inputs-')).length
  const a = job({ [`${CWD}/src/a.c`]: 'int a;' })
  const first = await p.acquire(key('peer0'), a.refs, a.data, [])
  for (let i = 1; i < 7; i++) await p.release(await p.acquire(key(`peer${i}`), a.refs, a.data, []), true)
  assert.equal(stores(), 4, 'the least recently used stores went')
  // peer0's store went while its tree was in use: what it writes next is a copy, not a store file
  const b = job({ [`${CWD}/src/a.c`]: 'int a;', [`${CWD}/src/b.c`]: 'int b;' })
  await p.release(first, true)
  const again = await p.acquire(key('peer0'), b.refs, b.data, [])
  assert.equal(statSync(join(again.cwdDir, 'src/b.c')).nlink, 1, 'a copy: nothing untracked in a dropped store')
  assert.equal(stores(), 4)
  await p.release(again, true)
  await p.stop()
})

test('a store file is written at its name without a temporary file, and never through a name that is already there (a file some tree may link)', async () => {
  const dir = mkdtempSync(join(top, 'jobs-'))
  const p = new WorkspacePool({ dir, toolchainRoot: () => toolchain(), chrooted: false, maxIdle: 4 })
  const a = job({ [`${CWD}/src/a.c`]: 'int a;' })
  // a name at the store's path for this content and mode, hard-linked elsewhere, as a tree's
  // link to a content the store has let go of would be
  const store = join(dir, `inputs-${createHash('sha256').update('peer1').digest('hex').slice(0, 32)}`)
  mkdirSync(store, { recursive: true })
  const held = join(top, 'held-by-a-tree')
  writeFileSync(held, 'an older tree\'s content')
  linkSync(held, join(store, `${a.refs[0]!.hash}.644`))
  const ws = await p.acquire(key('peer1'), a.refs, a.data, [])
  assert.equal(readFileSync(join(ws.cwdDir, 'src/a.c'), 'utf8'), 'int a;')
  assert.equal(readFileSync(held, 'utf8'), 'an older tree\'s content', 'not written through the name that was there')
  assert.deepEqual(readdirSync(store), [`${a.refs[0]!.hash}.644`], 'no temporary file left')
  await p.release(ws, true)
  await p.stop()
})
