// Human form of the stats, laid out like `sccache -s`: names left, values right-aligned.
import { formatSize } from '../config.js'

const LINES: Array<[string, string]> = [
  ['Compile requests', 'compile_requests'],
  ['Cache hits', 'cache_hits'],
  ['  without preprocessing (direct)', 'direct_hits'],
  ['Cache misses', 'cache_misses'],
  ['Non-cacheable calls', 'non_cacheable'],
  ['Local compiles', 'local_compiles'],
  ['Remote compiles', 'remote_compiles'],
  ['Units keyed with -fdirectives-only', 'directives_only'],
  ['Compile failures', 'compile_failures'],
  ['Fallbacks to a plain compile', 'fallbacks'],
  ['Remote attempts retried', 'remote_retries'],
  ['Cache errors', 'cache_errors'],
  ['Cache writes', 'cache_writes']
]

export function formatStatsText(s: Record<string, unknown>): string {
  const num = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : 0)
  const rows: Array<[string, string]> = LINES.map(([label, key]) => [label, String(num(key))])
  const lookups = num('cache_hits') + num('cache_misses')
  rows.splice(3, 0, ['Cache hit rate', lookups ? `${((100 * num('cache_hits')) / lookups).toFixed(2)} %` : '-'])
  rows.push(['Average cache hit', `${(num('average_hit_ms') / 1000).toFixed(3)} s`])
  rows.push(['Cache entries', String(num('cache_entries'))])
  rows.push(['Cache size', formatSize(num('cache_size_bytes'))])
  rows.push(['Max cache size', formatSize(num('cache_max_bytes'))])
  const width = Math.max(...rows.map(([l]) => l.length)) + 2
  const valueWidth = Math.max(...rows.map(([, v]) => v.length))
  let out = rows.map(([l, v]) => l.padEnd(width) + v.padStart(valueWidth)).join('\n') + '\n'
  for (const [title, key] of [['Non-cacheable reasons', 'non_cacheable_reasons'], ['Fallback reasons', 'fallback_reasons'], ['Retry reasons', 'retry_reasons']] as const) {
    const reasons = Object.entries((s[key] as Record<string, number>) ?? {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    if (reasons.length === 0) continue
    out += `\n${title}:\n` + reasons.map(([r, n]) => `  ${r.padEnd(width + valueWidth - 10)} ${String(n).padStart(7)}`).join('\n') + '\n'
  }
  out += `\nCache location                  ${String(s.cache_dir ?? '')}\nVersion                         ${String(s.version ?? '')}\n`
  return out
}
