// The sha256 of a large file (a compiler's shared libraries, an rlib), read in chunks into a
// few buffers that are reused. readFile() would allocate the whole file anew each time, and
// fresh memory costs a page fault per 4 KiB: hashing librustc_driver (150 MB) that way took
// about 1 s of CPU, a 64 KiB read stream 0.4 s, 1 MiB chunks into a kept buffer 0.15 s.
import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import { Semaphore } from './semaphore.js'

const CHUNK = 1024 * 1024
/** hashes reading at once (the libuv pool has four threads); each holds one chunk buffer */
const READERS = 4
const readers = new Semaphore(READERS)
const spare: Buffer[] = []

/** The file's sha256 (hex) and how many bytes it had; throws when it cannot be read. */
export async function hashFileContent(path: string): Promise<{ hash: string; size: number }> {
  return readers.run(async () => {
    const buf = spare.pop() ?? Buffer.allocUnsafe(CHUNK)
    const fh = await open(path, 'r').catch((err: Error) => {
      spare.push(buf)
      throw err
    })
    try {
      const h = createHash('sha256')
      let size = 0
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, CHUNK, null)
        if (bytesRead === 0) break
        h.update(buf.subarray(0, bytesRead))
        size += bytesRead
      }
      return { hash: h.digest('hex'), size }
    } finally {
      spare.push(buf)
      await fh.close()
    }
  })
}
