// Raw tar entries for tests of toolchain unpacking, written block by block so that nothing
// normalises the evil bits away (absolute paths, "..", links out, devices, setuid modes).
import { gzipSync } from 'node:zlib'
import { Header, Pax } from 'tar'

export type EntryType = 'File' | 'Directory' | 'SymbolicLink' | 'Link' | 'CharacterDevice' | 'BlockDevice' | 'FIFO'

/** One raw tar entry: its header (a pax header first when the path needs one or `pax` asks), then its data. */
export function entry(path: string, type: EntryType, opts: { data?: Buffer | string; mode?: number; linkpath?: string; pax?: boolean } = {}): Buffer {
  const data = typeof opts.data === 'string' ? Buffer.from(opts.data) : opts.data ?? Buffer.alloc(0)
  const h = new Header({
    path, type, size: type === 'File' ? data.length : 0, linkpath: opts.linkpath ?? '',
    mode: opts.mode ?? (type === 'Directory' ? 0o755 : 0o644), uid: 0, gid: 0, uname: '', gname: '', mtime: new Date(0)
  })
  const block = Buffer.alloc(512)
  const needPax = h.encode(block, 0)
  const parts: Buffer[] = needPax || opts.pax ? [new Pax({ path, linkpath: opts.linkpath }).encode(), block] : [block]
  if (type === 'File' && data.length) {
    parts.push(data, Buffer.alloc((512 - (data.length % 512)) % 512))
  }
  return Buffer.concat(parts)
}

/** The entries, tar's end-of-archive marker, gzipped. */
export function tgz(...entries: Buffer[]): Buffer {
  return gzipSync(Buffer.concat([...entries, Buffer.alloc(1024)]))
}

/** A pax extended header ('x') carrying exactly these records, whatever node-tar knows of them. */
export function paxHeader(records: Record<string, string>): Buffer {
  const body = Buffer.from(Object.entries(records).map(([k, v]) => paxRecord(`${k}=${v}\n`)).join(''), 'utf8')
  const block = Buffer.alloc(512)
  new Header({ path: 'PaxHeaders/0', type: 'ExtendedHeader', size: body.length, mode: 0o644, uid: 0, gid: 0, mtime: new Date(0) }).encode(block, 0)
  return Buffer.concat([block, body, Buffer.alloc((512 - (body.length % 512)) % 512)])
}

/** "<length> <text>", the length counting its own digits. */
function paxRecord(text: string): string {
  let n = Buffer.byteLength(text) + 2
  while (String(n).length + 1 + Buffer.byteLength(text) !== n) n++
  return `${n} ${text}`
}

/**
 * A sparse file of `realSize` bytes in GNU's pax format 1.0 (what `tar --sparse --format=pax`
 * writes): pax records name it and its real size, and the entry's data is the sparse map (one
 * region of 512 bytes at the end) followed by those bytes.
 */
export function paxSparseFile(name: string, realSize: number): Buffer {
  const map = Buffer.from(`1\n${realSize - 512}\n512\n`)
  const data = Buffer.concat([map, Buffer.alloc(512 - map.length), Buffer.alloc(512, 0x42)])
  return Buffer.concat([
    paxHeader({ 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': name, 'GNU.sparse.realsize': String(realSize) }),
    entry(`GNUSparseFile.0/${name}`, 'File', { data })
  ])
}

/** An old GNU sparse entry (type 'S'): its real size in the header's GNU fields, one 512-byte region stored. */
export function gnuSparseFile(name: string, realSize: number): Buffer {
  const b = Buffer.alloc(512)
  const octal = (off: number, len: number, v: number) => b.write(`${v.toString(8).padStart(len - 1, '0')}\0`, off, 'latin1')
  b.write(name, 0, 'latin1')
  octal(100, 8, 0o644); octal(108, 8, 0); octal(116, 8, 0); octal(124, 12, 512); octal(136, 12, 0)
  b.write('S', 156, 'latin1')
  b.write('ustar  \0', 257, 'latin1')
  octal(386, 12, realSize - 512); octal(398, 12, 512) // the sparse map's one region
  octal(483, 12, realSize)
  return Buffer.concat([withChecksum(b), Buffer.alloc(512, 0x41)])
}

/** A regular file whose header announces `size` bytes (base-256, as for sizes over 8 GiB), followed by only `sent` of them. */
export function hugeFile(name: string, size: number, sent = 4096): Buffer {
  const b = Buffer.alloc(512)
  new Header({ path: name, type: 'File', size: 0, mode: 0o644, uid: 0, gid: 0, mtime: new Date(0) }).encode(b, 0)
  b.fill(0, 124, 136)
  b[124] = 0x80
  b.writeUIntBE(size, 130, 6)
  return Buffer.concat([withChecksum(b), Buffer.alloc(sent, 0x43)])
}

/** The header block with its checksum field recomputed. */
export function withChecksum(b: Buffer): Buffer {
  b.fill(0x20, 148, 156)
  let sum = 0
  for (const x of b) sum += x
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1')
  return b
}
