// Patches: @libp2p/yamux 8.0.3, YamuxStream.prototype.sendWindowUpdate (from '@libp2p/yamux/stream';
//   it reads the stream's state, recvWindow and recvWindowCapacity fields).
// Why: stock yamux sends a stream window update after every data frame it receives (handleData
//   calls sendWindowUpdate, and anything consumed makes it send). Every gossipsub message arrives
//   as one data frame on a long-lived stream, so each was answered with a window-update frame:
//   one more noise encryption, pnet cipher call and socket write per message received. In an
//   idle 30-member mesh that was a third of a daemon's CPU (npm run bench:mesh -- --cpu-prof).
//   Here an established stream sends its update only once half its receive window is used, as
//   go-yamux and rust-yamux do; the sender's window is 256 KiB, and an update at half of it
//   keeps a bulk transfer flowing just the same. The first frames of a stream carry its SYN/ACK
//   flags and still go through the original method, which also grows the window when reading is
//   fast and handles paused streams.
// Upstream: no js-libp2p issue or PR found. rust-yamux made the same change in
//   https://github.com/libp2p/rust-yamux/pull/109 (issue #100: "Send WindowUpdate message
//   early", at half the window). An upstream fix would be that threshold in
//   YamuxStream.sendWindowUpdate (update when recvWindowCapacity < recvWindow / 2).
// Drop it when yamux adopts the threshold. Any version bump of @libp2p/yamux means re-checking
//   this file (test/patch-yamux-window.test.ts, test/libp2p-patches.test.ts).
import { StreamState, YamuxStream } from '@libp2p/yamux/stream'
import { applied, notApplied, once, type PatchOutcome, type ProcessPatch } from './patch.js'

interface WindowFields { state: unknown; recvWindow: unknown; recvWindowCapacity: unknown; sendWindowUpdate: () => void }

/** Whether a window update can wait: the stream is established and under half its window is used. */
export function windowUpdateCanWait(s: Partial<Pick<WindowFields, 'state' | 'recvWindow' | 'recvWindowCapacity'>>): boolean {
  return s.state === StreamState.Established &&
    typeof s.recvWindow === 'number' && typeof s.recvWindowCapacity === 'number' &&
    s.recvWindowCapacity * 2 >= s.recvWindow
}

/** The fields the threshold reads, as a new stream of this yamux has them. */
function fieldsOfNewStream(): Partial<WindowFields> {
  const log = Object.assign(() => {}, { enabled: false, trace: () => {}, error: () => {}, newScope: () => log })
  const Stream = YamuxStream as unknown as new (init: Record<string, unknown>) => Partial<WindowFields>
  return new Stream({ id: 'probe', streamId: 1, state: StreamState.Established, direction: 'inbound', getRTT: () => -1, sendFrame: () => true, log })
}

function apply(): PatchOutcome {
  const proto = YamuxStream.prototype as unknown as WindowFields
  const original = proto.sendWindowUpdate
  if (typeof original !== 'function') return notApplied('YamuxStream has no sendWindowUpdate method')
  let probe: Partial<WindowFields>
  try {
    probe = fieldsOfNewStream()
  } catch (err) {
    return notApplied(`a YamuxStream could not be made to check its fields (${(err as Error).message.split('\n')[0]})`)
  }
  // a renamed field would make the threshold never apply: stock behaviour, silently
  if (!windowUpdateCanWait(probe)) return notApplied('a new YamuxStream lacks state, recvWindow or recvWindowCapacity as the threshold reads them')
  proto.sendWindowUpdate = function (this: WindowFields): void {
    if (windowUpdateCanWait(this)) return
    original.call(this)
  }
  return applied()
}

export const yamuxWindowPatch: ProcessPatch = {
  scope: 'process',
  name: 'yamux-window',
  packages: { '@libp2p/yamux': '8.0.3' },
  touches: 'YamuxStream.prototype.sendWindowUpdate (reads state, recvWindow, recvWindowCapacity)',
  upstream: 'none in js-libp2p; the same threshold in rust-yamux: https://github.com/libp2p/rust-yamux/pull/109',
  apply: once(apply)
}
