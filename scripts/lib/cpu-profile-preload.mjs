// Loaded with NODE_OPTIONS=--import into one benchmark daemon (node refuses --cpu-prof in
// NODE_OPTIONS). The first SIGUSR2 starts a V8 CPU profile, the second writes it to
// $MESHCC_BENCH_PROF_DIR/daemon-<pid>.cpuprofile: the benchmark profiles its idle window only.
import { Session } from 'node:inspector'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'

const dir = process.env.MESHCC_BENCH_PROF_DIR
if (dir) {
  let session = null
  process.on('SIGUSR2', () => {
    if (!session) {
      session = new Session()
      session.connect()
      session.post('Profiler.enable', () => session.post('Profiler.start'))
      return
    }
    const s = session
    session = null
    s.post('Profiler.stop', (err, res) => {
      if (!err) writeFileSync(join(dir, `daemon-${process.pid}.cpuprofile`), JSON.stringify(res.profile))
      s.disconnect()
    })
  })
}
