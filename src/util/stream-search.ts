// Does a stream of chunks contain any of several byte strings, across chunk seams included?
// Each chunk is searched where it lies; only the seam (the longest needle's length − 1 bytes
// on each side, once for all needles) is copied, not every chunk, for a preprocessed unit of
// megabytes.
//
// What a search costs: Node's Buffer.indexOf runs a needle shorter than 8 bytes as memchr for
// its first byte plus a compare, and a longer one as Boyer-Moore-Horspool, several times
// slower on C text ("builtin_FILE" 1.9 ms over a 4.6 MB kernel unit, "FILE" 0.3 ms). So each
// needle is looked for by an anchor: up to 7 of its bytes from its rarest byte on, each find
// checked against the whole needle. That took the client's searches of one kernel unit from
// about 6 ms to about 2.5 ms (scripts/bench-pp-scan.ts).

/**
 * Bytes ranked rarest first in preprocessed C and C++ (the cost of a memchr pass for each,
 * measured over a kernel unit and a libstdc++ unit); bytes not listed rank after them.
 */
const RARE_FIRST = '%?MFDLPI.ASETb'
/** Node searches needles up to this long with memchr on the first byte. */
const MAX_ANCHOR = 7

function rank(byte: number): number {
  const r = RARE_FIRST.indexOf(String.fromCharCode(byte))
  return r === -1 ? RARE_FIRST.length : r
}

interface Needle {
  bytes: Buffer
  /** the anchor: bytes[at, at + anchor.length) */
  anchor: Buffer
  at: number
  found: boolean
}

function needle(bytes: Buffer): Needle {
  let at = 0
  for (let i = 1; i < bytes.length; i++) if (rank(bytes[i]!) < rank(bytes[at]!)) at = i
  return { bytes, anchor: bytes.subarray(at, at + MAX_ANCHOR), at, found: bytes.length === 0 }
}

/** Does a stream of chunks contain any of several byte strings? */
export class StreamSearchAny {
  private readonly needles: Needle[]
  /** the longest needle's length − 1: the most of a needle that one side of a seam can hold */
  private readonly seam: number
  /** the stream's last `seam` bytes (fewer at its start) */
  private tail: Buffer = Buffer.alloc(0)
  found = false

  constructor(needles: Buffer[]) {
    this.needles = needles.map(needle)
    this.seam = Math.max(0, ...needles.map((n) => n.length - 1))
    this.found = this.needles.some((n) => n.found)
  }

  /** Feed the next chunk; true once any needle has been seen. */
  push(chunk: Buffer): boolean {
    if (this.found || chunk.length === 0) return this.found
    const k = this.seam
    // the bytes around the seam, for needles that start before this chunk and end in it
    const around = k === 0 ? null : Buffer.concat([this.tail, chunk.subarray(0, k)])
    for (const n of this.needles) {
      if ((around !== null && around.includes(n.bytes)) || this.inChunk(chunk, n)) {
        this.found = true
        return true
      }
    }
    // a chunk shorter than the seam keeps what came before it there
    // (copied: the caller may reuse the chunk)
    if (k > 0) this.tail = Buffer.from(chunk.length >= k ? chunk.subarray(chunk.length - k) : around!.subarray(-k))
    return false
  }

  /** Does the needle lie wholly inside the chunk: each find of its anchor, checked. */
  private inChunk(chunk: Buffer, n: Needle): boolean {
    const { bytes, anchor, at } = n
    const whole = anchor.length === bytes.length
    for (let i = chunk.indexOf(anchor); i !== -1; i = chunk.indexOf(anchor, i + 1)) {
      if (whole) return true
      const start = i - at
      if (start >= 0 && start + bytes.length <= chunk.length && chunk.compare(bytes, 0, bytes.length, start, start + bytes.length) === 0) return true
    }
    return false
  }
}

/** Does a stream of chunks contain one byte string? */
export class StreamSearch extends StreamSearchAny {
  constructor(needle: Buffer) {
    super([needle])
  }
}
