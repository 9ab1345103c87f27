// The launcher <-> daemon wire protocol, over the per-user unix socket.
//
// Deliberately plain so that a tiny native launcher can speak it:
//   frame   := u32 big-endian length of body | body
//   body    := u8 message type | field*
//   field   := u32 big-endian length | bytes          (strings are UTF-8, numbers decimal ASCII)
//
// One request and one reply per connection. Requests:
//   COMPILE  [version "1", cwd, compiler path, argc, arg × argc, "KEY=VALUE" env × rest]
//   ADMIN    [command, argument]        command: ping | stats | zero | shutdown | status
// Replies:
//   RESULT       [exit code, stdout, stderr]   the daemon wrote the outputs; replay and exit
//   PASSTHROUGH  [reason, warning?]            not cacheable: run the compiler yourself
//                                              (a warning is printed first as "meshcc: <warning>")
//   FALLBACK     [reason]                      the daemon failed: run the compiler yourself
//   ADMIN_REPLY  [text]
//   ERROR        [message]

export const PROTOCOL_VERSION = '1'
/** Nothing legitimate comes close: preprocessed sources are not sent, outputs go to disk. */
export const MAX_FRAME_BYTES = 256 * 1024 * 1024

export const MsgType = {
  COMPILE: 0x01,
  ADMIN: 0x02,
  RESULT: 0x81,
  PASSTHROUGH: 0x82,
  FALLBACK: 0x83,
  ADMIN_REPLY: 0x84,
  ERROR: 0x85
} as const
export type MsgTypeValue = (typeof MsgType)[keyof typeof MsgType]

export interface Frame {
  type: number
  fields: Buffer[]
}

export function encodeFrame(type: number, fields: ReadonlyArray<Buffer | string>): Buffer {
  const bufs = fields.map((f) => (typeof f === 'string' ? Buffer.from(f, 'utf8') : f))
  let bodyLen = 1
  for (const b of bufs) bodyLen += 4 + b.length
  const out = Buffer.allocUnsafe(4 + bodyLen)
  out.writeUInt32BE(bodyLen, 0)
  out[4] = type
  let off = 5
  for (const b of bufs) {
    out.writeUInt32BE(b.length, off)
    off += 4
    b.copy(out, off)
    off += b.length
  }
  return out
}

export class ProtocolError extends Error {}

/** Decode one frame body (without its length prefix). */
export function decodeBody(body: Buffer): Frame {
  if (body.length < 1) throw new ProtocolError('empty frame')
  const fields: Buffer[] = []
  let off = 1
  while (off < body.length) {
    if (off + 4 > body.length) throw new ProtocolError('truncated field length')
    const len = body.readUInt32BE(off)
    off += 4
    if (off + len > body.length) throw new ProtocolError('field longer than its frame')
    fields.push(body.subarray(off, off + len))
    off += len
  }
  return { type: body[0], fields }
}

/**
 * Accumulates socket data and yields complete frames. Rejects frames over the size cap
 * before buffering them.
 */
export class FrameReader {
  private chunks: Buffer[] = []
  private size = 0

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk)
    this.size += chunk.length
    const frames: Frame[] = []
    for (;;) {
      if (this.size < 4) break
      const head = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks)
      this.chunks = [head]
      const len = head.readUInt32BE(0)
      if (len > MAX_FRAME_BYTES) throw new ProtocolError(`frame of ${len} bytes exceeds the limit`)
      if (head.length < 4 + len) break
      frames.push(decodeBody(head.subarray(4, 4 + len)))
      const rest = head.subarray(4 + len)
      this.chunks = rest.length ? [rest] : []
      this.size = rest.length
    }
    return frames
  }
}

export interface CompileRequest {
  cwd: string
  compiler: string
  args: string[]
  env: Record<string, string>
}

export function encodeCompileRequest(req: CompileRequest): Buffer {
  const env = Object.entries(req.env).map(([k, v]) => `${k}=${v}`)
  return encodeFrame(MsgType.COMPILE, [PROTOCOL_VERSION, req.cwd, req.compiler, String(req.args.length), ...req.args, ...env])
}

export function decodeCompileRequest(frame: Frame): CompileRequest {
  const f = frame.fields.map((b) => b.toString('utf8'))
  if (f[0] !== PROTOCOL_VERSION) throw new ProtocolError(`unsupported launcher protocol version ${f[0]}`)
  if (f.length < 4) throw new ProtocolError('compile request with too few fields')
  const argc = Number(f[3])
  if (!Number.isInteger(argc) || argc < 0 || 4 + argc > f.length) throw new ProtocolError('bad argument count')
  const env: Record<string, string> = {}
  for (const kv of f.slice(4 + argc)) {
    const eq = kv.indexOf('=')
    if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1)
  }
  return { cwd: f[1], compiler: f[2], args: f.slice(4, 4 + argc), env }
}
