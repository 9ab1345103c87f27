// Reading the prerequisites of a Make-format dependency file as gcc and clang write it:
//   target: prereq1 prereq2 \
//    prereq3
// with spaces escaped as "\ ", '#' as "\#" and '$' as "$$". Only the first rule counts
// (-MP adds empty "header:" rules after it).

/** Paths listed as prerequisites of the first rule, unescaped, as written (maybe relative). */
export function depfilePrerequisites(text: string): string[] {
  const joined = text.replace(/\\\r?\n/g, ' ')
  const firstRule = joined.split(/\r?\n/).find((l) => l.trim() !== '') ?? ''
  const words: string[] = []
  let cur = ''
  let seenColon = false
  const flush = () => {
    if (cur !== '') words.push(cur)
    cur = ''
  }
  for (let i = 0; i < firstRule.length; i++) {
    const c = firstRule[i]
    if (c === '\\' && (firstRule[i + 1] === ' ' || firstRule[i + 1] === '#' || firstRule[i + 1] === '\\')) {
      cur += firstRule[++i]
    } else if (c === '$' && firstRule[i + 1] === '$') {
      cur += '$'
      i++
    } else if (c === ' ' || c === '\t') {
      flush()
    } else if (c === ':' && !seenColon && (i + 1 === firstRule.length || firstRule[i + 1] === ' ' || firstRule[i + 1] === '\t')) {
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
