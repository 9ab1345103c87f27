// The launcher <-> daemon wire protocol, over the per-user unix socket.
//
// Deliberately plain so that a tiny native launcher can speak it:
//   frame   := u32 big-endian length of body | body
//   body    := u8 message type | field*
//   field   := u32 big-endian length | bytes          (strings are UTF-8, numbers decimal ASCII)
//
// One request and one reply per connection. Requests:
//   COMPILE  [version "1", cwd, compiler path, argc, arg × argc, "KEY=VALUE" env × rest]
//            the native launcher adds MESHCC_LAUNCHER_PID=<its pid> to the env: it holds the
//            build's descriptors (a jobserver's) while it waits; decoded as launcherPid
//   ADMIN    [command, argument]        command: ping | stats | zero | shutdown | status
// Replies:
//   RESULT       [exit code, stdout, stderr]   the daemon wrote the outputs; replay and exit
//   PASSTHROUGH  [reason, warning?]            not cacheable: run the compiler yourself
//                                              (a warning is printed first as "meshcc: <warning>")
//   FALLBACK     [reason]                      the daemon failed: run the compiler yourself
//   ADMIN_REPLY  [text]
//   ERROR        [message]

export const PROTOCOL_VERSION = '1'
/** Replies: a compiler's stdout and stderr, which outputs that go to disk never pass through. */
export const MAX_FRAME_BYTES = 256 * 1024 * 1024
/**
 * Requests: argv and environment, which execve caps at 6 MiB together since Linux 4.13 (3/4 of
 * the 8 MiB _STK_LIM, pointers included), plus the cwd and compiler path. The native launcher
 * (native/launcher.c MAX_REQUEST) checks the same number before it sends.
 */
export const MAX_REQUEST_BYTES = 16 * 1024 * 1024

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

export interface FrameReaderOptions {
  /** largest frame body accepted (default MAX_FRAME_BYTES) */
  maxFrameBytes?: number
  /** asked before a frame's buffer is allocated; false refuses the frame (a daemon-wide budget) */
  reserve?: (bytes: number) => boolean
  /** gives back what reserve() granted, once the frame is complete or the reader is closed */
  release?: (bytes: number) => void
}

/**
 * Accumulates socket data and yields complete frames. A frame's length is checked against the
 * cap before anything is allocated; its body is then allocated once at that length and each
 * piece copied in once, so a frame sent in many small pieces costs no more than one sent whole.
 */
export class FrameReader {
  private readonly head = Buffer.alloc(4)
  private headFill = 0
  private body: Buffer | null = null
  private bodyFill = 0
  private readonly maxFrameBytes: number

  constructor(private readonly opts: FrameReaderOptions = {}) {
    this.maxFrameBytes = opts.maxFrameBytes ?? MAX_FRAME_BYTES
  }

  /** bytes held for the frame being read (its announced length), 0 between frames */
  get pendingBytes(): number {
    return this.body?.length ?? 0
  }

  push(chunk: Buffer): Frame[] {
    const frames: Frame[] = []
    let off = 0
    while (off < chunk.length) {
      if (this.body === null) {
        const n = Math.min(4 - this.headFill, chunk.length - off)
        chunk.copy(this.head, this.headFill, off, off + n)
        this.headFill += n
        off += n
        if (this.headFill < 4) break
        this.startBody(this.head.readUInt32BE(0))
      }
      const body = this.body!
      const n = Math.min(body.length - this.bodyFill, chunk.length - off)
      chunk.copy(body, this.bodyFill, off, off + n)
      this.bodyFill += n
      off += n
      if (this.bodyFill === body.length) frames.push(this.finishBody())
    }
    return frames
  }

  /** Drop an incomplete frame (the connection went away) and give back its reservation. */
  close(): void {
    if (this.body) this.opts.release?.(this.body.length)
    this.body = null
    this.headFill = 0
  }

  private startBody(len: number): void {
    if (len > this.maxFrameBytes) throw new ProtocolError(`frame of ${len} bytes exceeds the limit of ${this.maxFrameBytes}`)
    if (len === 0) throw new ProtocolError('empty frame')
    if (this.opts.reserve && !this.opts.reserve(len)) throw new ProtocolError(`busy: no room for a frame of ${len} bytes now`)
    this.body = Buffer.allocUnsafe(len)
    this.bodyFill = 0
  }

  private finishBody(): Frame {
    const body = this.body!
    this.opts.release?.(body.length)
    this.body = null
    this.headFill = 0
    return decodeBody(body)
  }
}

/** The env entry a launcher names its own pid by; never part of the compiler's environment. */
export const LAUNCHER_PID_ENV = 'MESHCC_LAUNCHER_PID'

export interface CompileRequest {
  cwd: string
  compiler: string
  args: string[]
  env: Record<string, string>
  /** the process cargo (or make) started as the compiler, waiting for the reply with the build's descriptors */
  launcherPid?: number
}

export function encodeCompileRequest(req: CompileRequest): Buffer {
  const env = Object.entries(req.env).map(([k, v]) => `${k}=${v}`)
  if (req.launcherPid !== undefined) env.push(`${LAUNCHER_PID_ENV}=${req.launcherPid}`)
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
  const pid = env[LAUNCHER_PID_ENV]
  delete env[LAUNCHER_PID_ENV]
  const req: CompileRequest = { cwd: f[1], compiler: f[2], args: f.slice(4, 4 + argc), env }
  if (pid !== undefined && /^[1-9]\d{0,9}$/.test(pid)) req.launcherPid = Number(pid)
  return req
}
