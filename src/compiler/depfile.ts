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
