// Crafted toolchain archives, served by the hostile member over the real toolchain-fetch
// protocol and named as the toolchain of a compile job it sends the builder: each must be
// refused (the job fails with "toolchain unavailable"), leave nothing in the builder's toolchain
// cache, and write nothing outside it. A million-entry archive is generated as a stream,
// gzipped on the way to its file; the sparse bombs announce 30 GB.
import { once } from 'node:events'
import { createWriteStream, existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { Header } from 'tar'
import { entry, gnuSparseFile, hugeFile, paxSparseFile, tgz, withChecksum } from '../../test/helpers/tar-entries.js'
import { pollFor, type Row } from './chaos-common.js'
import { hostileLab, type HostileLab } from './chaos-hostile-lab.js'

const GB30 = 30 * 1024 ** 3

/** A small valid start, so each archive is a toolchain but for its one evil entry. */
const start = () => [entry('usr/', 'Directory'), entry('usr/bin/', 'Directory'), entry('usr/bin/cc', 'File', { data: '#!/bin/false\n', mode: 0o755 })]

/** `n` empty files, written as a gzipped stream: never all in memory. */
async function manyEntries(file: string, n: number): Promise<void> {
  const gz = createGzip({ level: 6 })
  const done = pipeline(gz, createWriteStream(file))
  const template = Buffer.alloc(512)
  new Header({ path: 'd/00000000', type: 'File', size: 0, mode: 0o644, uid: 0, gid: 0, mtime: new Date(0) }).encode(template, 0)
  gz.write(Buffer.concat([entry('d/', 'Directory')]))
  const perChunk = 2048
  for (let i = 0; i < n; i += perChunk) {
    const chunk = Buffer.alloc(512 * Math.min(perChunk, n - i))
    for (let k = 0; k * 512 < chunk.length; k++) {
      const block = chunk.subarray(k * 512, k * 512 + 512)
      template.copy(block)
      block.write(String(i + k).padStart(8, '0'), 2, 'latin1')
      withChecksum(block)
    }
    if (!gz.write(chunk)) await once(gz, 'drain')
  }
  gz.end(Buffer.alloc(1024))
  await done
}

interface Crafted { name: string; make(lab: HostileLab, file: string, quick: boolean): Promise<void> | void }

/** Where an escaping entry would land on the host. */
const escapeTo = (lab: HostileLab, name: string) => join(lab.work, 'host', `tc-${name}`)

const ARCHIVES: Crafted[] = [
  { name: 'traversal (../)', make: (l, f) => writeFileSync(f, tgz(...start(), entry(`usr/../../../../../../../../../..${escapeTo(l, 'traversal')}`, 'File', { data: 'escaped\n' }))) },
  { name: 'absolute path', make: (l, f) => writeFileSync(f, tgz(...start(), entry(escapeTo(l, 'absolute'), 'File', { data: 'escaped\n' }))) },
  { name: 'symlink out, then a file through it', make: (l, f) => writeFileSync(f, tgz(...start(), entry('out', 'SymbolicLink', { linkpath: `../../../../../../../../..${join(l.work, 'host')}` }), entry('out/tc-through-link', 'File', { data: 'escaped\n' }))) },
  { name: 'absolute symlink, then a file through it', make: (l, f) => writeFileSync(f, tgz(...start(), entry('out', 'SymbolicLink', { linkpath: join(l.work, 'host') }), entry('out/tc-through-abs-link', 'File', { data: 'escaped\n' }))) },
  { name: 'hard link to a host file', make: (l, f) => writeFileSync(f, tgz(...start(), entry('usr/bin/victim', 'Link', { linkpath: join(l.work, 'host', 'victim.txt') }))) },
  { name: 'hard link out by ../', make: (l, f) => writeFileSync(f, tgz(...start(), entry('usr/bin/victim', 'Link', { linkpath: `../../../../../../../..${join(l.work, 'host', 'victim.txt')}` }))) },
  { name: 'character device', make: (_l, f) => writeFileSync(f, tgz(...start(), entry('usr/bin/null', 'CharacterDevice', { mode: 0o666 }))) },
  { name: 'block device', make: (_l, f) => writeFileSync(f, tgz(...start(), entry('usr/bin/sda', 'BlockDevice'))) },
  { name: 'FIFO', make: (_l, f) => writeFileSync(f, tgz(...start(), entry('usr/bin/pipe', 'FIFO'))) },
  { name: 'setuid file', make: (_l, f) => writeFileSync(f, tgz(...start(), entry('usr/bin/su', 'File', { data: '#!/bin/false\n', mode: 0o4755 }))) },
  { name: '30 GB sparse bomb (pax format 1.0)', make: (_l, f) => writeFileSync(f, tgz(...start(), paxSparseFile('usr/bin/bomb', GB30))) },
  { name: '30 GB sparse bomb (old GNU sparse entry)', make: (_l, f) => writeFileSync(f, tgz(...start(), gnuSparseFile('usr/bin/bomb', GB30))) },
  { name: '30 GB file announced, 4 KiB sent', make: (_l, f) => writeFileSync(f, tgz(...start(), hugeFile('usr/bin/bomb', GB30))) },
  { name: 'a million entries', make: (_l, f, quick) => manyEntries(f, quick ? 30_000 : 1_000_000) }
]

function dirBytes(dir: string): number {
  let n = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    try {
      if (e.isDirectory()) n += dirBytes(p)
      else if (e.isFile()) n += statSync(p).size
    } catch { /* removed while we looked */ }
  }
  return n
}

export const toolchainArchives: Row = {
  id: 'toolchain-archives',
  title: 'crafted toolchain archives: traversal, absolute paths, symlink and hard link out, devices, setuid, a 30 GB sparse bomb, a million entries',
  mustShow: '0 accepted, nothing written outside',
  trials: { full: ARCHIVES.length, quick: ARCHIVES.length },
  unit: 'archives',
  async run(env, rec) {
    const lab = await hostileLab(env)
    const dir = join(env.work, 'archives')
    mkdirSync(dir, { recursive: true })
    const cache = join(lab.builder.cacheDir, 'toolchains')
    const initial = lab.hostState()
    const held = () => readdirSync(cache).filter((n) => /^[0-9a-f]{64}$/.test(n)).sort()
    const heldBefore = held()
    let accepted = 0
    const times = new Map<string, number>()
    let million = ''
    for (const [i, a] of ARCHIVES.entries()) {
      await rec.trial(a.name, async () => {
        const file = join(dir, `${i}.tar.gz`)
        await a.make(lab, file, env.quick)
        const hash = lab.serve(file)
        if (a.name === 'a million entries') million = `${(statSync(file).size / 1048576).toFixed(1)} MiB gzipped`
        const job = lab.evilHeader('fine')
        let peak = dirBytes(cache)
        const watch = setInterval(() => { peak = Math.max(peak, dirBytes(cache)) }, 100)
        const t0 = Date.now()
        const r = await lab.send(lab.hostile, { ...job.header, toolchain: hash }, job.files, 300_000)
        clearInterval(watch)
        times.set(a.name, (Date.now() - t0) / 1000)
        const problems: string[] = []
        if (r.kind !== 'failed' || !/toolchain unavailable/.test(r.reason)) { accepted++; problems.push(`not refused: ${r.kind === 'done' ? `done, exit ${r.exitCode}` : `${r.kind}: ${r.reason.slice(0, 200)}`}`) }
        else env.log(`${a.name}: ${r.reason.slice(0, 200)}`)
        if (held().includes(hash)) problems.push('the builder holds it')
        // a refused unpack leaves neither its temp dir nor the received archive
        const left = await pollFor(5000, () => (readdirSync(cache).filter((n) => n.startsWith('.')).length === 0 ? true : undefined), 100)
        if (!left) problems.push(`left in the toolchain cache: ${readdirSync(cache).filter((n) => n.startsWith('.')).join(', ')}`)
        if (peak - statSync(file).size > 256 * 1024 * 1024) problems.push(`the toolchain cache grew to ${peak} bytes while it was refused`)
        const escaped = readdirSync(join(lab.work, 'host')).filter((n) => n.startsWith('tc-'))
        if (escaped.length > 0) problems.push(`written outside: ${escaped.join(', ')}`)
        if (lab.hostState() !== initial) problems.push('a host file changed')
        if (existsSync(join(lab.evilCwd, 'tc-traversal'))) problems.push('written outside: tc-traversal')
        return problems.length ? problems.join('; ') : null
      })
    }
    if (JSON.stringify(held()) !== JSON.stringify(heldBefore)) rec.fail('the toolchain cache', `holds ${held().length} toolchains, ${heldBefore.length} before`)
    const alive = await lab.builderAlive()
    if (alive) rec.fail('the builder', alive)
    const ordinary = await lab.ordinaryJob()
    if (ordinary) rec.fail('the ordinary job after', ordinary)
    const slowest = [...times].sort((x, y) => y[1] - x[1])[0]
    rec.figure(`${accepted} of ${rec.trials} accepted, nothing written outside the toolchain cache, nothing left in it; each refused (fetch included) within ${slowest ? `${slowest[1].toFixed(1)} s (the slowest: ${slowest[0]})` : '-'}`)
    rec.note(`Each archive is a small valid toolchain plus one evil entry (${ARCHIVES.map((a) => a.name).join('; ')}), the million entries ${env.quick ? '(30,000 in --quick) ' : ''}as a stream of empty files (${million}).`,
      'The hostile member serves it by its sha256 and sends the builder a job naming it: the builder fetches it over the toolchain-fetch protocol (the hash checks out) and must refuse to unpack it.',
      'Checked: the job fails with "toolchain unavailable", the builder holds no new toolchain and no temp file, the toolchain cache never grows by more than 256 MiB over the archive\'s size,',
      'no tc-* file appears where the escaping entries point, the guarded host files are unchanged; then an ordinary job compiles byte-identically.')
  }
}
