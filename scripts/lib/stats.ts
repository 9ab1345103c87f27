// Small numeric and table helpers for the benchmarks.

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/** `a` over `b`, pair by pair (the n-th of each, built one after the other), as a fraction over 1 */
export function pairRatios(a: readonly number[], b: readonly number[]): number[] {
  return a.slice(0, b.length).map((x, i) => x / b[i]! - 1)
}

export function mean(xs: number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN
}

export function fmtSec(ms: number | undefined): string {
  return ms === undefined || !Number.isFinite(ms) ? '-' : `${(ms / 1000).toFixed(1)} s`
}

export function fmtMs(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms)) return '-'
  return ms >= 100 ? `${ms.toFixed(0)} ms` : `${ms.toFixed(1)} ms`
}

export function fmtPct(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return '-'
  return `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} %`
}

export function fmtRatio(x: number | undefined): string {
  return x === undefined || !Number.isFinite(x) ? '-' : `${x.toFixed(2)}x`
}

/** A plain-text table with right-aligned columns after the first. */
export function textTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n')
}

/** A GitHub Markdown table, first column left-aligned and the others right-aligned (or as `leftAligned` says). */
export function markdownTable(header: string[], rows: string[][], leftAligned: (i: number) => boolean = (i) => i === 0): string {
  const esc = (c: string) => c.replace(/\|/g, '\\|')
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `| ${header.map((_, i) => (leftAligned(i) ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`)
  ].join('\n')
}
