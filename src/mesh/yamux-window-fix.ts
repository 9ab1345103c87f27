// Makes @libp2p/yamux (8.0.x) send a stream window update only when the receive window is half
// used, as go-yamux and the yamux spec's reference implementation do, instead of after every
// data frame it receives.
//
// Every gossipsub message arrives as one data frame on a long-lived stream, so stock js-yamux
// answered each one with a window-update frame: one more noise encryption, pnet cipher call and
// socket write per message received. In an idle 30-member mesh that was a third of a daemon's
// CPU (npm run bench:mesh -- --cpu-prof). The sender's window is 256 KiB; an update at half of
// it keeps a bulk transfer flowing just the same.
//
// Only established streams are affected: the first frames of a stream carry its SYN/ACK flags
// and still go through the original method, which also grows the window when reading is fast
// and handles paused streams. Remove this file if yamux adopts the threshold.
import { StreamState, YamuxStream } from '@libp2p/yamux/stream'

interface WindowFields { state: unknown; recvWindow: unknown; recvWindowCapacity: unknown; sendWindowUpdate: () => void }

let applied = false

/** Whether a window update can wait: the stream is established and under half its window is used. */
export function windowUpdateCanWait(s: Pick<WindowFields, 'state' | 'recvWindow' | 'recvWindowCapacity'>): boolean {
  return s.state === StreamState.Established &&
    typeof s.recvWindow === 'number' && typeof s.recvWindowCapacity === 'number' &&
    s.recvWindowCapacity * 2 >= s.recvWindow
}

export function fixYamuxWindowUpdates(): void {
  if (applied) return
  applied = true
  const proto = YamuxStream.prototype as unknown as WindowFields
  const original = proto.sendWindowUpdate
  if (typeof original !== 'function') return // not the yamux we know: leave it alone
  proto.sendWindowUpdate = function (this: WindowFields): void {
    if (windowUpdateCanWait(this)) return
    original.call(this)
  }
}
