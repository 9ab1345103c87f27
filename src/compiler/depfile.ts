// Reading the prerequisites of a Make-format dependency file as gcc and clang write it:
//   target1 target2: prereq1 prereq2 \
//    prereq3
// Only the first rule counts (-MP adds empty "header:" rules after it). The escaping undone
// here is the writers' (gcc's mkdeps.cc munge, clang's DependencyFile.cpp PrintFilename), not
// make's: a blank in a name is written "\ " (gcc also "\<tab>") with every backslash right
// before it doubled, '#' is written "\#", '$' is "$$", and any other backslash stays as it is.
// Names the writers cannot express (a newline; clang turns a backslash into '/' and leaves a
// tab bare) come out as paths that do not exist, which the caller treats as "cannot trust".

/** Paths listed as prerequisites of the first rule, unescaped, as written (maybe relative). */
export function depfilePrerequisites(text: string): string[] {
  const words: string[] = []
  let cur = ''
  let seenColon = false
  const flush = () => {
    if (cur !== '') words.push(cur)
    cur = ''
  }
  const isBlank = (c: string | undefined) => c === ' ' || c === '\t'
  const lineEndAt = (i: number) => text[i] === '\n' || (text[i] === '\r' && text[i + 1] === '\n')
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!
    if (c === '\\') {
      let n = 1
      while (text[i + n] === '\\') n++
      const next = i + n
      if (lineEndAt(next)) {
        // a continuation: the last backslash joins the lines
        cur += '\\'.repeat(n - 1)
        flush()
        i = text[next] === '\r' ? next + 1 : next
      } else if (isBlank(text[next])) {
        // an odd run escapes the blank (its other backslashes doubled); an even one ends a name
        if (n % 2 === 1) {
          cur += '\\'.repeat((n - 1) / 2) + text[next]
        } else {
          cur += '\\'.repeat(n)
          flush()
        }
        i = next
      } else if (text[next] === '#') {
        cur += '\\'.repeat(n - 1) + '#'
        i = next
      } else {
        cur += '\\'.repeat(n)
        i = next - 1
      }
    } else if (c === '$' && text[i + 1] === '$') {
      cur += '$'
      i++
    } else if (isBlank(c)) {
      flush()
    } else if (lineEndAt(i)) {
      flush()
      if (seenColon || words.length > 0) break // the end of the first rule
      if (c === '\r') i++
    } else if (c === ':' && !seenColon && (i + 1 === text.length || isBlank(text[i + 1]) || lineEndAt(i + 1))) {
      flush()
      words.length = 0 // everything so far named targets
      seenColon = true
    } else {
      cur += c
    }
  }
  flush()
  return seenColon ? words : []
}

// Writing a depfile for a build in another directory, exactly as its compiler would. The
// names are the stored ones moved to this build's paths; the lines are wrapped as the writer
// wraps them by the names' lengths: gcc's libcpp/mkdeps.cc (a line breaks before a name that
// would pass column 72; continuation lines start with one space; -MP's phony rules follow
// one per line) and clang's DependencyFileGenerator (75 columns, room kept for the " \";
// continuation lines start with two spaces; each phony rule after an empty line). A stored
// depfile is rewritten only when writing its own names back gives it byte for byte: any form
// this does not know (another compiler version's wrapping, escaped names) gives null, and the
// caller asks the preprocessor instead.

export type DepfileWriter = 'gcc' | 'clang'

/** One rule as written: its targets and prerequisites, names as they appear (escaped). */
interface Rule { targets: string[]; prereqs: string[] }

/** The rules of a depfile whose names need no escaping; null for anything else. */
function parseRules(text: string): Rule[] | null {
  if (!text.endsWith('\n') || /[\\$#\t\r]/.test(text.replace(/ \\\n/g, ''))) return null
  const rules: Rule[] = []
  for (const line of text.replace(/ \\\n/g, ' ').split('\n').slice(0, -1)) {
    if (line === '') continue
    const colon = line.indexOf(':')
    if (colon <= 0 || (line[colon + 1] !== undefined && line[colon + 1] !== ' ') || line.indexOf(':', colon + 1) !== -1) return null
    const targets = line.slice(0, colon).split(' ').filter(Boolean)
    const prereqs = line.slice(colon + 1).split(' ').filter(Boolean)
    if (targets.length === 0) return null
    rules.push({ targets, prereqs })
  }
  const [main, ...phony] = rules
  if (!main || phony.some((r) => r.targets.length !== 1 || r.prereqs.length !== 0)) return null
  return rules
}

function writeRules(rules: Rule[], writer: DepfileWriter): string {
  const [main, ...phony] = rules
  let out = ''
  let col = 0
  if (writer === 'gcc') {
    const put = (name: string) => {
      if (col > 0) {
        if (col + name.length > 72) { out += ' \\\n'; col = 0 }
        col++
        out += ' '
      }
      col += name.length
      out += name
    }
    main!.targets.forEach(put)
    out += ':'
    col++
    main!.prereqs.forEach(put)
    out += '\n'
    for (const r of phony) out += `${r.targets[0]}:\n`
    return out
  }
  for (const t of main!.targets) {
    if (col === 0) {
      col += t.length
    } else if (col + t.length + 2 > 75) {
      col = t.length + 2
      out += ' \\\n  '
    } else {
      col += t.length + 1
      out += ' '
    }
    out += t
  }
  out += ':'
  col++
  for (const p of main!.prereqs) {
    if (col + p.length + 1 + 2 > 75) { out += ' \\\n '; col = 2 }
    out += ` ${p}`
    col += p.length + 1
  }
  out += '\n'
  for (const r of phony) out += `\n${r.targets[0]}:\n`
  return out
}

/**
 * `stored`, written by `writer` for a build elsewhere, with each name passed through `move`
 * and the lines wrapped again as the writer would; null when the stored text is not in a
 * form this reproduces exactly, or a moved name would need escaping.
 */
export function relocateDepfile(stored: string, writer: DepfileWriter, move: (name: string) => string): string | null {
  const rules = parseRules(stored)
  if (rules === null || writeRules(rules, writer) !== stored) return null
  const moved = rules.map((r) => ({ targets: r.targets.map(move), prereqs: r.prereqs.map(move) }))
  if (moved.some((r) => [...r.targets, ...r.prereqs].some((n) => /[\s\\$#:]/.test(n) || n === ''))) return null
  return writeRules(moved, writer)
}
