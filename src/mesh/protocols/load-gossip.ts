// Load gossip: every node publishes one small message per interval on '/meshcc/<meshid>/load/1'.
// Wire format: UTF-8 JSON object with short keys (the sender's peer id is the gossipsub message
// source, so it is not repeated). Field v is the message format version; a change that old
// nodes cannot read bumps the topic as well. Unknown keys are ignored (room for additions).
//
//   v    1                      format version
//   c    cores offered          r   running jobs       q  queued jobs     f  free slots
//   l    load1 (os.loadavg)     s   speed score        t  toolchain hashes (<= 32)
//   a    'a'lways | 'i'dle | 'n'ever                    ver  meshcc version
//   sh   shim-capable (0/1)     n   name (hostname)    ad multiaddrs (<= 16)
//   seq  sender's sequence number (grows across restarts)   ts  sender's clock, ms epoch
//   bye  1 when the sender is leaving the mesh (optional)
//   fw   1 when the sender knows a member it has no direct connection to, so its peers should
//        forward gossip to it (optional; forwarding.ts)
//   sc   1 when the sender holds cache entries for the others ([cache] shared_size > 0), so it
//        counts among the owners of keys (cache/owners.ts); optional, absent = 0
//   rc   how other networks reach the sender: 'p'ublic, 'm'apped (public through a port
//        mapping on its router), 'r'elayed, 'u'nreachable (optional,
//        absent while unknown; reachability.ts)
//   rl   1 when the sender serves as a relay for members (optional)

export const LOAD_FORMAT_VERSION = 1
/** Messages larger than this are rejected before parsing. */
export const MAX_LOAD_MESSAGE_BYTES = 8192
export const MAX_TOOLCHAINS = 32
export const MAX_ADDRS = 16
const MAX_STRING = 256
const MAX_TOOLCHAIN_ID = 128

export function loadTopic(meshId: string): string {
  return `/meshcc/${meshId}/load/1`
}

export type Accept = 'always' | 'idle' | 'never'

/** What a member says about itself in the load view. */
export interface LoadInfo {
  cores: number
  running: number
  queued: number
  freeSlots: number
  load1: number
  speed: number
  toolchains: string[]
  accept: Accept
  version: string
  shim: boolean
  name: string
  /** holds cache entries for the others (field sc; absent in older members' messages) */
  sharesCache?: boolean
  /** how other networks reach the member (reachability.ts), when it knows */
  reach?: 'p' | 'm' | 'r' | 'u'
  /** it serves as a circuit relay for members */
  relay?: boolean
}

export interface LoadMessage extends LoadInfo {
  addrs: string[]
  seq: number
  timestamp: number
  bye?: boolean
  /** the sender needs its peers to forward gossip (field fw) */
  wantsForwarding?: boolean
}

const ACCEPT_CODE: Record<Accept, string> = { always: 'a', idle: 'i', never: 'n' }
const ACCEPT_FROM_CODE: Record<string, Accept> = { a: 'always', i: 'idle', n: 'never' }

export class LoadDecodeError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'LoadDecodeError'
  }
}

/** Encodes a load message; lists and strings are capped so the result stays small. */
export function encodeLoad(m: LoadMessage): Uint8Array {
  const toolchains = m.toolchains.filter((t) => t.length > 0 && t.length <= MAX_TOOLCHAIN_ID).slice(0, MAX_TOOLCHAINS)
  const addrs = m.addrs.filter((a) => a.length > 0 && a.length <= MAX_STRING).slice(0, MAX_ADDRS)
  const doc: Record<string, unknown> = {
    v: LOAD_FORMAT_VERSION,
    c: int(m.cores), r: int(m.running), q: int(m.queued), f: int(m.freeSlots),
    l: Math.round(finite(m.load1) * 100) / 100,
    s: Math.round(finite(m.speed) * 1000) / 1000,
    t: toolchains,
    a: ACCEPT_CODE[m.accept],
    ver: m.version.slice(0, 64),
    sh: m.shim ? 1 : 0,
    n: m.name.slice(0, 128),
    ad: addrs,
    seq: int(m.seq),
    ts: int(m.timestamp)
  }
  if (m.reach) doc.rc = m.reach
  if (m.relay) doc.rl = 1
  if (m.bye) doc.bye = 1
  if (m.wantsForwarding) doc.fw = 1
  if (m.sharesCache) doc.sc = 1
  const bytes = new TextEncoder().encode(JSON.stringify(doc))
  if (bytes.length > MAX_LOAD_MESSAGE_BYTES) throw new LoadDecodeError(`load message too large (${bytes.length} bytes)`)
  return bytes
}

/** Decodes and validates a load message. Throws LoadDecodeError on anything unexpected. */
export function decodeLoad(data: Uint8Array): LoadMessage {
  if (data.length > MAX_LOAD_MESSAGE_BYTES) throw new LoadDecodeError(`load message too large (${data.length} bytes, at most ${MAX_LOAD_MESSAGE_BYTES})`)
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(data)
  } catch {
    throw new LoadDecodeError('load message is not UTF-8')
  }
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch {
    throw new LoadDecodeError('load message is not JSON')
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new LoadDecodeError('load message is not a JSON object')
  const d = doc as Record<string, unknown>
  if (d.v !== LOAD_FORMAT_VERSION) throw new LoadDecodeError(`unsupported load message version ${JSON.stringify(d.v)}`)
  const accept = ACCEPT_FROM_CODE[String(d.a)]
  if (accept === undefined) throw new LoadDecodeError('load message: bad accept field')
  return {
    cores: count(d.c, 'c'),
    running: count(d.r, 'r'),
    queued: count(d.q, 'q'),
    freeSlots: count(d.f, 'f'),
    load1: num(d.l, 'l', 0, 1e6),
    speed: num(d.s, 's', 0, 1e12),
    toolchains: strings(d.t, 't', MAX_TOOLCHAINS, MAX_TOOLCHAIN_ID),
    accept,
    version: str(d.ver, 'ver', 64),
    shim: d.sh === 1 || d.sh === true,
    name: str(d.n, 'n', 128),
    addrs: strings(d.ad, 'ad', MAX_ADDRS, MAX_STRING),
    seq: num(d.seq, 'seq', 0, Number.MAX_SAFE_INTEGER),
    timestamp: num(d.ts, 'ts', 0, Number.MAX_SAFE_INTEGER),
    ...(d.rc === 'p' || d.rc === 'm' || d.rc === 'r' || d.rc === 'u' ? { reach: d.rc } : {}),
    ...(d.rl === 1 ? { relay: true } : {}),
    ...(d.bye === 1 || d.bye === true ? { bye: true } : {}),
    ...(d.fw === 1 || d.fw === true ? { wantsForwarding: true } : {}),
    ...(d.sc === 1 || d.sc === true ? { sharesCache: true } : {})
  }
}

function int(n: number): number {
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0
}

function finite(n: number): number {
  return Number.isFinite(n) && n > 0 ? n : 0
}

function num(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new LoadDecodeError(`load message: bad ${field} field`)
  return v
}

function count(v: unknown, field: string): number {
  const n = num(v, field, 0, 1_000_000)
  if (!Number.isInteger(n)) throw new LoadDecodeError(`load message: bad ${field} field`)
  return n
}

function str(v: unknown, field: string, max: number): string {
  if (typeof v !== 'string' || v.length > max) throw new LoadDecodeError(`load message: bad ${field} field`)
  return v
}

function strings(v: unknown, field: string, maxItems: number, maxLen: number): string[] {
  if (!Array.isArray(v) || v.length > maxItems) throw new LoadDecodeError(`load message: bad ${field} field`)
  for (const s of v) if (typeof s !== 'string' || s.length === 0 || s.length > maxLen) throw new LoadDecodeError(`load message: bad ${field} field`)
  return v as string[]
}
