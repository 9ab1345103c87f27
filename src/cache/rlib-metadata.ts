// Where an rlib keeps its crate metadata. rustc's rlib is an ar archive (GNU format) whose member
// "lib.rmeta" is a small ELF object with one section ".rmeta" holding exactly the bytes rustc also
// writes beside it as the .rmeta file (cargo asks for --emit=dep-info,metadata,link). Those bytes
// are about a third of a cold cargo build's outputs; the entry format (entry-format.ts) stores
// them once. Only the layout is parsed here, by its headers, never by searching the data: anything
// unexpected (another archive format, a Mach-O or 32-bit wrapper, a truncated member) is "none".

const AR_MAGIC = Buffer.from('!<arch>\n', 'latin1')
const AR_HEADER = 60
const RMETA_MEMBER = Buffer.from('lib.rmeta/', 'latin1')
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46])
const ELFCLASS64 = 2
const ELFDATA2LSB = 1
const ELF64_HEADER = 64
const ELF64_SECTION_HEADER = 64
const SECTION_NAME = Buffer.from('.rmeta\0', 'latin1')
/** rustc's rlibs put lib.rmeta among the first members; a bound keeps a hostile archive cheap */
const MAX_MEMBERS_SCANNED = 16
const MAX_SECTIONS = 64

/** The .rmeta section's bytes inside an rlib, as an offset into the whole archive and a size. */
export interface EmbeddedMetadata {
  offset: number
  size: number
}

/** The metadata section of `archive`'s lib.rmeta member, or null when it has none in the layout above. */
export function embeddedMetadata(archive: Buffer): EmbeddedMetadata | null {
  if (archive.length < AR_MAGIC.length + AR_HEADER || !archive.subarray(0, AR_MAGIC.length).equals(AR_MAGIC)) return null
  let at = AR_MAGIC.length
  for (let i = 0; i < MAX_MEMBERS_SCANNED && at + AR_HEADER <= archive.length; i++) {
    const header = archive.subarray(at, at + AR_HEADER)
    if (header[58] !== 0x60 || header[59] !== 0x0a) return null
    const sizeText = header.toString('latin1', 48, 58).trimEnd()
    if (!/^[0-9]{1,10}$/.test(sizeText)) return null
    const size = Number(sizeText)
    const start = at + AR_HEADER
    if (start + size > archive.length) return null
    if (header.subarray(0, RMETA_MEMBER.length).equals(RMETA_MEMBER) && header.subarray(RMETA_MEMBER.length, 16).every((c) => c === 0x20)) {
      const section = elfSection(archive.subarray(start, start + size))
      return section === null ? null : { offset: start + section.offset, size: section.size }
    }
    at = start + size + (size & 1)
  }
  return null
}

/** The ".rmeta" section of a little-endian ELF64 object, within `obj`. */
function elfSection(obj: Buffer): EmbeddedMetadata | null {
  if (obj.length < ELF64_HEADER || !obj.subarray(0, 4).equals(ELF_MAGIC) || obj[4] !== ELFCLASS64 || obj[5] !== ELFDATA2LSB) return null
  const shoff = Number(obj.readBigUInt64LE(0x28))
  const shentsize = obj.readUInt16LE(0x3a)
  const shnum = obj.readUInt16LE(0x3c)
  const shstrndx = obj.readUInt16LE(0x3e)
  if (shentsize !== ELF64_SECTION_HEADER || shnum === 0 || shnum > MAX_SECTIONS || shstrndx >= shnum) return null
  if (shoff > obj.length || shoff + shnum * shentsize > obj.length) return null
  const section = (i: number) => {
    const h = shoff + i * shentsize
    return { name: obj.readUInt32LE(h), offset: Number(obj.readBigUInt64LE(h + 0x18)), size: Number(obj.readBigUInt64LE(h + 0x20)) }
  }
  const names = section(shstrndx)
  if (names.offset + names.size > obj.length) return null
  for (let i = 0; i < shnum; i++) {
    const s = section(i)
    if (s.name + SECTION_NAME.length > names.size) continue
    const nameAt = names.offset + s.name
    if (!obj.subarray(nameAt, nameAt + SECTION_NAME.length).equals(SECTION_NAME)) continue
    return s.offset + s.size <= obj.length && s.size > 0 ? { offset: s.offset, size: s.size } : null
  }
  return null
}
