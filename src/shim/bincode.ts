// The few bincode 1.x "legacy" encodings the sccache scheduler shim needs
// (docs/sccache-protocol.md 1.2, 1.4, 1.9): little-endian, fixed-width integers,
// usize = u64, String = u64 length + UTF-8, enum = u32 variant index + payload.
// Kept deliberately small: the shim only reports status and turns jobs away.

export interface SchedulerStatus {
  numServers: number
  numCpus: number
  inProgress: number
}

/** Checks that a JS number can stand for a Rust usize/u64 without loss. */
function u64Value(name: string, v: number): bigint {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${name}: expected a whole number >= 0, got ${String(v)}`)
  return BigInt(v)
}

function u64(name: string, v: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(u64Value(name, v))
  return b
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(v)
  return b
}

function str(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8')
  return Buffer.concat([u64('string length', bytes.length), bytes])
}

/**
 * `SchedulerStatusResult { num_servers: usize, num_cpus: usize, in_progress: usize }`:
 * 24 bytes, three u64 LE. Throws RangeError for negative, fractional or unsafe numbers.
 */
export function encodeSchedulerStatus(s: SchedulerStatus): Buffer {
  return Buffer.concat([
    u64('numServers', s.numServers),
    u64('numCpus', s.numCpus),
    u64('inProgress', s.inProgress)
  ])
}

/** The same value as the reference scheduler's JSON rendering (serde field names, compact). */
export function schedulerStatusJson(s: SchedulerStatus): string {
  u64Value('numServers', s.numServers)
  u64Value('numCpus', s.numCpus)
  u64Value('inProgress', s.inProgress)
  return `{"num_servers":${s.numServers},"num_cpus":${s.numCpus},"in_progress":${s.inProgress}}`
}

/**
 * `AllocJobHttpResponse::Fail { msg }` (variant 1): the answer that makes a stock client
 * compile locally without failing the build.
 */
export function encodeAllocJobFail(msg: string): Buffer {
  return Buffer.concat([u32(1), str(msg)])
}

/** Decode error: the input is not the bincode value it was expected to be. */
export class BincodeError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'BincodeError'
  }
}

/** Bounds-checked sequential reader; never allocates more than the input holds. */
export class BincodeReader {
  private pos = 0
  constructor(private readonly buf: Buffer) {}

  get offset(): number { return this.pos }
  get remaining(): number { return this.buf.length - this.pos }

  private need(n: number, what: string): void {
    if (n > this.remaining) throw new BincodeError(`${what}: needs ${n} bytes at offset ${this.pos}, only ${this.remaining} left`)
  }

  u32(): number {
    this.need(4, 'u32')
    const v = this.buf.readUInt32LE(this.pos)
    this.pos += 4
    return v
  }

  /** u64 as a number; values above 2^53-1 are refused rather than rounded. */
  u64(): number {
    this.need(8, 'u64')
    const v = this.buf.readBigUInt64LE(this.pos)
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new BincodeError(`u64 at offset ${this.pos} is too large (${v})`)
    this.pos += 8
    return Number(v)
  }

  bytes(): Buffer {
    const len = this.u64()
    this.need(len, 'byte string')
    const out = this.buf.subarray(this.pos, this.pos + len)
    this.pos += len
    return out
  }

  /** Rust String: invalid UTF-8 is an error, as in bincode. */
  string(): string {
    const raw = this.bytes()
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(raw)
    } catch {
      throw new BincodeError('string is not valid UTF-8')
    }
  }
}

/**
 * `Toolchain { archive_id: String }`, the alloc_job request body. Trailing bytes are ignored,
 * like bincode's free `deserialize`.
 */
export function decodeToolchain(body: Buffer): { archiveId: string } {
  return { archiveId: new BincodeReader(body).string() }
}
