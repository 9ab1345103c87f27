/** A mesh problem the user can fix (missing or bad key, bad invite, ...): one clear line. */
export class MeshError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'MeshError'
  }
}
