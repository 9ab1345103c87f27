// The rows about a member turned against a builder, run together inside the namespace lab on
// one builder (chaos-hostile-lab.ts).
import type { RowGroup } from './chaos-common.js'
import { stopHostileLab } from './chaos-hostile-lab.js'
import { hostileJobs } from './chaos-hostile-jobs.js'
import { meshFuzz } from './chaos-mesh-fuzz.js'
import { intruders } from './chaos-intruders.js'
import { toolchainArchives } from './chaos-toolchains.js'

export const hostileGroup: RowGroup = {
  rows: [meshFuzz, hostileJobs, intruders, toolchainArchives],
  namespace: true,
  teardown: stopHostileLab
}
