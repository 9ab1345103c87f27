// Does a stream of chunks contain a byte string anywhere, across chunk seams included? Each
// chunk is searched where it lies; only the seam (needle length − 1 bytes on each side) is
// copied, not every chunk, for a preprocessed unit of megabytes.
export class StreamSearch {
  private tail: Buffer = Buffer.alloc(0)
  found = false

  constructor(private readonly needle: Buffer) {}

  push(chunk: Buffer): boolean {
    if (this.found) return true
    const k = this.needle.length - 1
    this.found = chunk.includes(this.needle) || Buffer.concat([this.tail, chunk.subarray(0, k)]).includes(this.needle)
    // a chunk shorter than the seam keeps what came before it there
    this.tail = k === 0 ? Buffer.alloc(0) : chunk.length >= k ? chunk.subarray(chunk.length - k) : Buffer.concat([this.tail, chunk]).subarray(-k)
    return this.found
  }
}

/** Does a stream of chunks contain any of several byte strings? */
export class StreamSearchAny {
  private readonly searches: StreamSearch[]

  constructor(needles: Buffer[]) {
    this.searches = needles.map((n) => new StreamSearch(n))
  }

  get found(): boolean {
    return this.searches.some((s) => s.found)
  }

  push(chunk: Buffer): void {
    for (const s of this.searches) if (s.push(chunk)) return // one find answers the question
  }
}
