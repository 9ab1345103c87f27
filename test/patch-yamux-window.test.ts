// The yamux window-update threshold (src/mesh/patches/yamux-window.ts), on the real YamuxStream
// class: the receiving end of a stream is fed data frames the way the muxer feeds them, and a
// sender that respects the window it was granted must never stall, while the receiver sends a
// handful of window updates instead of one per frame.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { YamuxStream, StreamState } from '@libp2p/yamux/stream'
import { windowUpdateCanWait, yamuxWindowPatch } from '../src/mesh/patches/yamux-window.js'

const INITIAL_WINDOW = 256 * 1024
const FRAME_TYPE_DATA = 0
const FRAME_TYPE_WINDOW_UPDATE = 1
const FLAG_ACK = 2

interface Header { type: number; flag: number; streamID: number; length: number }

/** libp2p's logger shape (a callable with levels and scopes), silent */
function quietLog(): unknown {
  const log = Object.assign(() => {}, { enabled: false, trace: () => {}, error: () => {}, newScope: () => log })
  return log
}

/** Pushes `total` bytes in frames of `frame` bytes, within the window granted; returns what the receiver sent. */
function receive(total: number, frame: number): { sent: Header[]; delivered: number } {
  const sent: Header[] = []
  let credit = INITIAL_WINDOW
  // the receiving side of a stream the remote opened (it answers the SYN with ACK)
  const stream = new (YamuxStream as unknown as new (init: Record<string, unknown>) => { handleData(f: unknown): void })({
    id: '1',
    streamId: 1,
    state: StreamState.SYNReceived,
    direction: 'inbound',
    getRTT: () => 50,
    sendFrame: (h: Header) => { sent.push(h); if (h.type === FRAME_TYPE_WINDOW_UPDATE) credit += h.length; return true },
    log: quietLog()
  })
  let delivered = 0
  for (let guard = 0; delivered < total && guard < 100_000; guard++) {
    const n = Math.min(frame, total - delivered, credit)
    assert.ok(n > 0, `sender stalled after ${delivered} bytes: no window left and no update from the receiver`)
    stream.handleData({ header: { type: FRAME_TYPE_DATA, flag: 0, streamID: 1, length: n }, data: new Uint8Array(n) })
    credit -= n
    delivered += n
  }
  return { sent, delivered }
}

test('a stream answers small frames with one window update per half window, and never stalls the sender', () => {
  yamuxWindowPatch.apply()
  const { sent, delivered } = receive(4 * 1024 * 1024, 300)
  assert.equal(delivered, 4 * 1024 * 1024)
  assert.ok(sent.length > 0 && sent[0]!.flag === FLAG_ACK, 'the first frame back still acknowledges the stream')
  const updates = sent.filter((h) => h.type === FRAME_TYPE_WINDOW_UPDATE)
  // 4 MiB in 300-byte frames is about 14 000 frames; stock yamux sends an update for each
  assert.ok(updates.length <= 40, `${updates.length} window updates for ${Math.ceil(delivered / 300)} frames`)
})

test('large frames that use more than half the window get their update at once', () => {
  yamuxWindowPatch.apply()
  const { sent, delivered } = receive(2 * 1024 * 1024, 200 * 1024)
  assert.equal(delivered, 2 * 1024 * 1024)
  // the ACK, then updates as the window runs low (yamux grows the window when reading is fast)
  assert.ok(sent.filter((h) => h.type === FRAME_TYPE_WINDOW_UPDATE && h.flag === 0).length >= 2)
})

test('the patch finds YamuxStream\'s method and the fields its threshold reads', () => {
  assert.deepEqual(yamuxWindowPatch.apply(), { state: 'applied', detail: '' })
})

test('windowUpdateCanWait: only for an established stream with at least half its window left', () => {
  assert.equal(windowUpdateCanWait({ state: StreamState.Established, recvWindow: 1000, recvWindowCapacity: 500 }), true)
  assert.equal(windowUpdateCanWait({ state: StreamState.Established, recvWindow: 1000, recvWindowCapacity: 499 }), false)
  assert.equal(windowUpdateCanWait({ state: StreamState.SYNReceived, recvWindow: 1000, recvWindowCapacity: 900 }), false)
  assert.equal(windowUpdateCanWait({ state: StreamState.Paused, recvWindow: 1000, recvWindowCapacity: 900 }), false)
  assert.equal(windowUpdateCanWait({ state: StreamState.Established, recvWindow: undefined, recvWindowCapacity: 900 }), false)
})
