// Human form of the stats, laid out like `sccache -s`: names left, values right-aligned.
import { formatSize } from '../config.js'

const LINES: Array<[string, string]> = [
  ['Compile requests', 'compile_requests'],
  ['Cache hits', 'cache_hits'],
  ['  without preprocessing (direct)', 'direct_hits'],
  ['  from the mesh', 'mesh_hits'],
  ['    found through a member\'s manifest', 'shared_manifest_hits'],
  ['  from the second tier', 'tier_hits'],
  ['Cache misses', 'cache_misses'],
  ['Non-cacheable calls', 'non_cacheable'],
  ['Local compiles', 'local_compiles'],
  ['  of those, kept from the mesh (probes)', 'kept_here'],
  ['Remote compiles', 'remote_compiles'],
  ['  slow, also started here (hedged)', 'hedged'],
  ['  of those, finished here first', 'hedge_won_local'],
  ['Units keyed with -fdirectives-only', 'directives_only'],
  ['Compile failures', 'compile_failures'],
  ['Fallbacks to a plain compile', 'fallbacks'],
  ['Remote attempts retried', 'remote_retries'],
  ['Cache errors', 'cache_errors'],
  ['Shared manifest sets refused', 'shared_sets_refused'],
  ['Cache writes', 'cache_writes']
]

/** The shared cache's counts since the daemon started: shown when it runs one. */
const SHARED_LINES: Array<[string, string]> = [
  ['Entries published to the mesh', 'entries_published'],
  ['  kept by the builder that compiled them', 'keeps_accepted'],
  ['Entries served to others', 'entries_served'],
  ['Entries held for others', 'shared_entries'],
  ['  kept from jobs compiled here', 'entries_kept_by_builder'],
  ['Remote results verified', 'verifications'],
  ['Verification mismatches', 'verify_mismatches']
]

export function formatStatsText(s: Record<string, unknown>): string {
  const num = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : 0)
  const rows: Array<[string, string]> = LINES.map(([label, key]) => [label, String(num(key))])
  const lookups = num('cache_hits') + num('cache_misses')
  for (const [label, key] of SHARED_LINES) if (typeof s[key] === 'number') rows.push([label, String(num(key))])
  rows.splice(3, 0, ['Cache hit rate', lookups ? `${((100 * num('cache_hits')) / lookups).toFixed(2)} %` : '-'])
  rows.push(['Average cache hit', `${(num('average_hit_ms') / 1000).toFixed(3)} s`])
  rows.push(['Cache entries', String(num('cache_entries'))])
  rows.push(['Cache size', formatSize(num('cache_size_bytes'))])
  rows.push(['Max cache size', formatSize(num('cache_max_bytes'))])
  const width = Math.max(...rows.map(([l]) => l.length)) + 2
  const valueWidth = Math.max(...rows.map(([, v]) => v.length))
  let out = rows.map(([l, v]) => l.padEnd(width) + v.padStart(valueWidth)).join('\n') + '\n'
  for (const [title, key] of [['Non-cacheable reasons', 'non_cacheable_reasons'], ['Fallback reasons', 'fallback_reasons'], ['Retry reasons', 'retry_reasons'], ['Kept-here reasons', 'kept_here_reasons']] as const) {
    const reasons = Object.entries((s[key] as Record<string, number>) ?? {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    if (reasons.length === 0) continue
    out += `\n${title}:\n` + reasons.map(([r, n]) => `  ${r.padEnd(width + valueWidth - 10)} ${String(n).padStart(7)}`).join('\n') + '\n'
  }
  const families = (s.families ?? {}) as Record<string, FamilyCounts>
  if (Object.keys(families).length > 0) {
    out += '\nBy compiler family:\n' + familyTable(families).map((l) => `  ${l}`).join('\n') + '\n'
    for (const [name, f] of Object.entries(families).sort()) {
      for (const [title, key] of [['non-cacheable', 'non_cacheable_reasons'], ['fallbacks', 'fallback_reasons']] as const) {
        const reasons = Object.entries(f[key] ?? {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
        if (reasons.length > 0) out += `  ${name} ${title}: ${reasons.map(([r, n]) => `${r} ${n}`).join(', ')}\n`
      }
    }
  }
  out += `\nCache location                  ${String(s.cache_dir ?? '')}\nVersion                         ${String(s.version ?? '')}\n`
  return out
}

/** One family's share of the stats (StatsData.families). */
export interface FamilyCounts {
  counters: Record<string, number | undefined>
  non_cacheable_reasons?: Record<string, number>
  fallback_reasons?: Record<string, number>
}

const FAMILY_COLUMNS: Array<[string, string]> = [['requests', 'compile_requests'], ['hits', 'cache_hits'], ['misses', 'cache_misses'],
  ['non-cacheable', 'non_cacheable'], ['local', 'local_compiles'], ['remote', 'remote_compiles'], ['fallbacks', 'fallbacks'], ['failed', 'compile_failures']]

/** A table of each compiler family's counts, one line per family under a header (for -s and status). */
export function familyTable(families: Record<string, FamilyCounts>): string[] {
  const names = Object.keys(families).sort()
  const rows = [['family', ...FAMILY_COLUMNS.map(([h]) => h)], ...names.map((n) => [n, ...FAMILY_COLUMNS.map(([, k]) => String(families[n].counters[k] ?? 0))])]
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  '))
}
