/** A mesh problem the user can fix (missing or bad key, bad invite, ...): one clear line. */
export class MeshError extends Error {
  /** the system error behind it, when one is (EADDRINUSE: the listen port is taken) */
  readonly code: string | undefined
  constructor(message: string, code?: string) {
    super(message)
    this.name = 'MeshError'
    this.code = code
  }
}
