// Path forms for keys and the relocation of a hit's diagnostics (src/compiler/path-forms.ts).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { keyForm, mapPath, maxClimb, relativeForm, relocator } from '../src/compiler/path-forms.js'

test('paths in the working directory\'s top-level directory are relative to it, others as they are', () => {
  assert.equal(relativeForm('/home/dev/src/proj/include/x.h', '/home/dev/src/proj/build'), '../include/x.h')
  assert.equal(relativeForm('/usr/include/stdio.h', '/home/dev/src/proj/build'), null)
  assert.equal(relativeForm('/home/dev/src/proj/build//', '/home/dev/src/proj/build'), './/')
  assert.equal(relativeForm('src/a.c', '/home/dev'), null)
  assert.equal(keyForm('/home/dev/src/proj/include', '/home/dev/src/proj/build'), '<cwd>/../include')
  assert.equal(keyForm('../include', '/home/dev/src/proj/build'), '../include')
  assert.equal(maxClimb(['/home/dev/src/proj/src/a.c', '/home/dev/x.h', '/usr/include/stdio.h'], '/home/dev/src/proj/build'), 3)
  // leading and doubled slashes, the root, a top-level name that only begins alike, a directory named '..x'
  assert.equal(relativeForm('//home//dev/x.h', '/home/dev/src'), '../x.h')
  assert.equal(relativeForm('/', '/home/dev'), null)
  assert.equal(relativeForm('/homework/x.h', '/home/dev'), null)
  assert.equal(maxClimb(['/home/dev/..x/y.h'], '/home/dev'), 0)
  assert.equal(maxClimb(['/home/x.h', '/home/dev/a/b.h'], '/home/dev/a'), 2)
})

test('path forms are memoised per working directory and stay exact across many of them', () => {
  // the same path under other working directories, asked again and again: each answer its own
  for (let round = 0; round < 2; round++) {
    for (let d = 0; d < 40; d++) {
      const cwd = `/w${d % 3}/proj${d}/build`
      assert.equal(relativeForm(`/w${d % 3}/proj${d}/include/x.h`, cwd), '../include/x.h')
      assert.equal(relativeForm(`/w${(d + 1) % 3}/proj${d}/include/x.h`, cwd), null)
      assert.equal(keyForm(`/w${d % 3}/x.h`, cwd), '<cwd>/../../x.h')
    }
  }
})

test('prefix maps: the compilers\' result, or null when none or two disagreeing maps apply', () => {
  assert.equal(mapPath('/w/proj/src/a.c', [['/w/proj', '.']]), './src/a.c')
  assert.equal(mapPath('/usr/include/stdio.h', [['/w/proj', '.']]), null)
  assert.equal(mapPath('/w/proj/src/a.c', [['/w/proj', '.'], ['/w', '/x']]), null)
  assert.equal(mapPath('/w/proj/src/a.c', [['/w/proj', '.'], ['/w/proj', '.']]), './src/a.c')
})

test('a hit\'s diagnostics move by the working directories\' differing heads, or not at all', () => {
  const move = relocator('/var/lib/ci/ws/proj/build', '/home/dev/src/proj/build', 1)
  assert.ok(move)
  const text = Buffer.from('/var/lib/ci/ws/proj/src/a.c:3:2: warning: #warning x\n/usr/include/stdio.h\n')
  assert.equal(move(text).toString(), '/home/dev/src/proj/src/a.c:3:2: warning: #warning x\n/usr/include/stdio.h\n')
  assert.equal(relocator('/var/lib/ci/ws/proj/build', '/home/dev/src/proj/build', 3), null, 'files above the common part')
  assert.equal(relocator('/proj/build', '/home/x/proj/build', 0), null, 'a head that is the root')
  assert.equal(relocator('/a/b', '/a/b', 9)!(text), text)
})
