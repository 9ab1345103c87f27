// [cache] verify_rate: a sample of the results this machine did not make itself (mesh hits,
// second-tier hits, remote compiles) is compiled again here, in the background, and the bytes
// compared. A mismatch is logged with the producer's peer ID, counted, and the producer is
// distrusted (trust.ts) until an operator clears it: its entries are refused from then on, here
// and in the entries this member holds for others.
//
// The pipeline decides what "compile again" means: it passes a callback that runs the same
// command here, at low priority, into temporary outputs, and returns them (or null when it could
// not, e.g. a source file changed meanwhile: counted as skipped, never as a mismatch).
import type { Logger } from '../log.js'
import { BackgroundQueue } from './background-queue.js'
import type { CacheEntry } from './entry-format.js'
import type { TrustPolicy } from './trust.js'

export type VerifiedKind = 'mesh-hit' | 'tier-hit' | 'remote-compile'

export interface VerifyJob {
  key: string
  /** the result that was used */
  entry: CacheEntry
  /** who made it: the signer of a hit, the builder of a remote compile */
  producer: string
  kind: VerifiedKind
  /** outputs not compared (a depfile made in another checkout names that checkout's files; a hit writes this build's own) */
  ignore?: string[]
  /** compile here into fresh outputs, by name (e.g. [{ name: 'obj', data }]); null = could not */
  recompile: () => Promise<Array<{ name: string; data: Buffer }> | null>
  /** the result matched a local compile (a remote compile's result is published only then) */
  onMatch?: () => void
  /** the result differed: the fresh outputs, to replace the stored entry with */
  onMismatch?: (fresh: Array<{ name: string; data: Buffer }>) => void
  /** runs once the job is done with, verified or dropped (the pipeline keeps the job's temp files until then) */
  release?: () => void
}

export interface VerifierStats {
  /** results compared */
  verifications: number
  verify_mismatches: number
  /** sampled, but the local compile could not run or failed */
  verify_skipped: number
  /** sampled, but the backlog was full */
  verify_dropped: number
}

export interface VerifierOptions {
  /** [cache] verify_rate, 0 to 1 */
  rate: number
  trust: TrustPolicy
  log: Logger
  /** a number in [0, 1); tests make sampling deterministic with it */
  random?: () => number
  /** sampled jobs that may wait (default 16: a verification is a whole compile) */
  maxQueued?: number
}

export class Verifier {
  private currentRate: number
  private readonly random: () => number
  private readonly queue: BackgroundQueue<VerifyJob>
  private readonly counts: VerifierStats = { verifications: 0, verify_mismatches: 0, verify_skipped: 0, verify_dropped: 0 }

  constructor(private readonly opts: VerifierOptions) {
    this.currentRate = opts.rate
    this.random = opts.random ?? Math.random
    this.queue = new BackgroundQueue<VerifyJob>({
      run: (job) => this.verify(job),
      size: () => 0,
      onDrop: (job) => { this.counts.verify_dropped++; job.release?.() },
      maxItems: opts.maxQueued ?? 16,
      concurrency: 1
    })
  }

  /** A reloaded config's verify_rate. */
  setRate(rate: number): void {
    this.currentRate = rate
  }

  get rate(): number {
    return this.currentRate
  }

  /** Sample `job` at the rate and queue it; true when it will be verified. Never throws, never waits. */
  consider(job: VerifyJob): boolean {
    if (this.rate <= 0 || this.random() >= this.rate) return false
    return this.queue.push(job)
  }

  stats(): VerifierStats {
    return { ...this.counts }
  }

  /** Resolves when every queued verification has run (tests, shutdown). */
  idle(): Promise<void> {
    return this.queue.idle()
  }

  async stop(): Promise<void> {
    await this.queue.stop()
  }

  private async verify(job: VerifyJob): Promise<void> {
    try {
      await this.compare(job)
    } finally {
      job.release?.()
    }
  }

  private async compare(job: VerifyJob): Promise<void> {
    const { log, trust } = this.opts
    let fresh: Array<{ name: string; data: Buffer }> | null
    try {
      fresh = await job.recompile()
    } catch (err) {
      log.debug(`verification of ${job.key.slice(0, 16)} skipped: ${(err as Error).message}`)
      fresh = null
    }
    if (fresh === null || fresh.length === 0) {
      this.counts.verify_skipped++
      return
    }
    this.counts.verifications++
    const differing = fresh.filter((out) => {
      if (job.ignore?.includes(out.name)) return false
      const used = job.entry.outputs.find((o) => o.name === out.name)
      return !used || !used.data.equals(out.data)
    }).map((o) => o.name)
    if (differing.length === 0) {
      job.onMatch?.()
      return
    }
    this.counts.verify_mismatches++
    job.onMismatch?.(fresh)
    const reason = `${job.kind} ${job.key.slice(0, 16)}: ${differing.join(', ')} differ from a local compile`
    const added = trust.distrustProducer(job.producer, reason)
    log.error(`verification failed: ${reason}; the result came from ${job.producer}${added ? `, which is distrusted from now on ("meshcc mesh trust ${job.producer}" clears it)` : ''}`)
  }
}
