// The WARN and ERROR lines of the daemons' logs (other levels are skipped), grouped by message so
// a problem seen by 30 daemons shows once, with how many daemons saw it and one raw line.
import { readFileSync } from 'node:fs'
import type { BenchNode } from './mesh-bench-node.js'

export interface LogGroup {
  level: string
  /** message with timestamps, pids, peer ids, ports and numbers masked */
  pattern: string
  count: number
  nodes: Set<number>
  example: string
  /** how many of the lines were written after the benchmark asked the daemons to stop */
  duringStop: number
}

export interface LogSummary {
  lines: number
  groups: LogGroup[]
  unreadable: number[]
}

const LINE = /^(\d{4}-\d\d-\d\dT[\d:.]+Z)\s+(\w+)\s+\[\d+\]\s?(.*)$/

export function summarizeLogs(nodes: BenchNode[], stopRequestedAt: Date | undefined): LogSummary {
  const groups = new Map<string, LogGroup>()
  const unreadable: number[] = []
  let lines = 0
  for (const node of nodes) {
    let text: string
    try {
      text = readFileSync(node.log, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') unreadable.push(node.index)
      continue // no log file: nothing at warn level was ever written
    }
    const all = text.split('\n')
    for (let i = 0; i < all.length; i++) {
      let raw = all[i]!
      if (raw.trim() === '') continue
      const m = LINE.exec(raw)
      // a stack trace continues on the following unprefixed lines: keep it with its head line
      while (m && i + 1 < all.length && all[i + 1]!.trim() !== '' && !LINE.test(all[i + 1]!)) raw += `\n${all[++i]}`
      const level = m?.[2] ?? '?'
      if (level === 'INFO' || level === 'DEBUG') continue // only with --log-level info/debug
      lines++
      const msg = m?.[3] ?? raw
      const pattern = msg
        .split('\n')[0]!
        .replace(/12D3KooW[1-9A-HJ-NP-Za-km-z]+|Qm[1-9A-HJ-NP-Za-km-z]{44}/g, '<peer>')
        .replace(/\/tcp\/\d+/g, '/tcp/<port>')
        .replace(/127\.0\.0\.1:\d+/g, '127.0.0.1:<port>')
        .replace(/(?<![\w.])\d+(?:\.\d+)?(?![\d.])/g, '<n>')
      const key = `${level} ${pattern}`
      const g = groups.get(key) ?? { level, pattern, count: 0, nodes: new Set<number>(), example: raw, duringStop: 0 }
      g.count++
      g.nodes.add(node.index)
      if (stopRequestedAt && m && new Date(m[1]!) >= stopRequestedAt) g.duringStop++
      groups.set(key, g)
    }
  }
  return { lines, groups: [...groups.values()].sort((a, b) => b.count - a.count), unreadable }
}
