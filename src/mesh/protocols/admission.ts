// Admission bookkeeping shared by the protocols that take bytes from peers (compile jobs, cache
// exchange): how many streams each peer has open, and how many bytes its requests make this
// member hold, so that no peer gets more than its share however many streams it opens.

/** Streams open per peer and in all. */
export class StreamCounts {
  private readonly perPeer = new Map<string, number>()
  total = 0

  /** Count a new stream from `peer`: how many it had open before this one, and the call that ends it. */
  open(peer: string): { before: number; close(): void } {
    const before = this.perPeer.get(peer) ?? 0
    this.perPeer.set(peer, before + 1)
    this.total++
    let closed = false
    return {
      before,
      close: () => {
        if (closed) return
        closed = true
        this.total--
        const left = (this.perPeer.get(peer) ?? 1) - 1
        if (left > 0) this.perPeer.set(peer, left)
        else this.perPeer.delete(peer)
      }
    }
  }
}

/**
 * Bytes held for requests (jobs, entries), per peer and in all: a request takes what it is about
 * to hold and gives it back when done, so no peer can make this member hold more than its share,
 * however many streams it opens.
 */
export class HeldBytes {
  private readonly perPeer = new Map<string, number>()
  total = 0

  constructor(readonly peerLimit: number, private readonly totalLimit: number) {}

  /** A request's account: take() refuses what would exceed a limit; end() gives back all it took. */
  account(peer: string): { take(n: number): boolean; give(n: number): void; end(): void } {
    let mine = 0
    const give = (n: number) => {
      mine -= n
      this.total -= n
      const left = (this.perPeer.get(peer) ?? 0) - n
      if (left > 0) this.perPeer.set(peer, left)
      else this.perPeer.delete(peer)
    }
    return {
      take: (n) => {
        const peerHeld = this.perPeer.get(peer) ?? 0
        if (peerHeld + n > this.peerLimit || this.total + n > this.totalLimit) return false
        this.perPeer.set(peer, peerHeld + n)
        this.total += n
        mine += n
        return true
      },
      give,
      end: () => { if (mine > 0) give(mine) }
    }
  }
}
