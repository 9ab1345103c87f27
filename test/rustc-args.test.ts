// rustc argument parsing and dep-info reading, on the argument lists cargo 1.95 really passes.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseRustcArgs } from '../src/compiler/rustc-args.js'
import { parseDepInfo } from '../src/compiler/rust-depinfo.js'

const OUT = '/w/target/debug/deps'
/** cargo build's call for a registry library (memchr), as logged from cargo 1.95 */
const LIB = ['--crate-name', 'memchr', '--edition=2018', '/reg/memchr-2.5.0/src/lib.rs', '--error-format=json',
  '--json=diagnostic-rendered-ansi,artifacts,future-incompat', '--crate-type', 'lib', '--emit=dep-info,metadata,link',
  '-C', 'embed-bitcode=no', '-C', 'debuginfo=2', '--cfg', 'feature="std"', '--check-cfg', 'cfg(docsrs,test)',
  '-C', 'metadata=17697163538d07f3', '-C', 'extra-filename=-85444e00ba1b7355', '--out-dir', OUT,
  '-L', `dependency=${OUT}`, '--extern', `cfg_if=${OUT}/libcfg_if-4a499ef178f2ff1a.rmeta`, '--cap-lints', 'allow', '--cfg', 'memchr_runtime_sse2']

function spec(args: string[]) {
  const r = parseRustcArgs(args, '/reg/memchr-2.5.0')
  assert.ok(r.cacheable, r.cacheable ? '' : r.reason)
  return r.spec
}

function reason(args: string[]): string {
  const r = parseRustcArgs(args, '/w')
  assert.ok(!r.cacheable, 'expected not cacheable')
  return r.reason
}

test('a library crate as cargo compiles it: its three outputs, and a key without where things lie', () => {
  const s = spec(LIB)
  assert.deepEqual(s.outputs, [
    { name: 'dep-info', path: `${OUT}/memchr-85444e00ba1b7355.d` },
    { name: 'rmeta', path: `${OUT}/libmemchr-85444e00ba1b7355.rmeta` },
    { name: 'rlib', path: `${OUT}/libmemchr-85444e00ba1b7355.rlib` }
  ])
  assert.equal(s.depInfo?.path, `${OUT}/memchr-85444e00ba1b7355.d`)
  assert.deepEqual(s.externs, [{ name: 'cfg_if', path: `${OUT}/libcfg_if-4a499ef178f2ff1a.rmeta` }])
  assert.ok(!s.keyArgs.some((a) => a.includes(OUT)), `no out-dir path in ${s.keyArgs.join(' ')}`)
  for (const a of ['feature="std"', 'metadata=17697163538d07f3', 'allow', 'memchr_runtime_sse2', '/reg/memchr-2.5.0/src/lib.rs']) assert.ok(s.keyArgs.includes(a), a)
})

test('cargo check (metadata only), a staticlib, explicit --emit paths and a target JSON', () => {
  const check = spec(LIB.map((a) => (a === '--emit=dep-info,metadata,link' ? '--emit=dep-info,metadata' : a)))
  assert.deepEqual(check.outputs.map((o) => o.name), ['dep-info', 'rmeta'])
  const st = spec(['--crate-name', 'x', 'src/lib.rs', '--crate-type', 'staticlib', '--emit=link,llvm-ir', '--out-dir', OUT])
  assert.deepEqual(st.outputs, [{ name: 'staticlib', path: `${OUT}/libx.a` }, { name: 'llvm-ir', path: `${OUT}/x.ll` }])
  const named = spec(['--crate-name', 'x', 'src/lib.rs', '--crate-type', 'rlib', '--emit', 'link,dep-info=deps/x.d', '--out-dir', OUT])
  assert.equal(named.depInfo?.path, '/reg/memchr-2.5.0/deps/x.d')
  const json = spec([...LIB, '--target', 'my-target.json'])
  assert.equal(json.targetJson, '/reg/memchr-2.5.0/my-target.json')
  assert.ok(!json.keyArgs.includes('my-target.json'), 'a target JSON enters by content')
})

test('calls that run rustc untouched, each with its reason', () => {
  assert.equal(reason(['-vV']), 'rustc query (-vV)')
  assert.equal(reason(['-', '--crate-name', '___', '--print=file-names', '--crate-type', 'bin', '--crate-type', 'proc-macro', '--print=sysroot']), 'rustc query (--print)')
  assert.equal(reason(['--explain', 'E0308']), 'rustc query (--explain)')
  assert.equal(reason(['-', '--crate-name', 'x', '--crate-type', 'rlib', '--emit=link', '--out-dir', OUT]), 'input from stdin')
  for (const [t, r] of [['bin', 'bin crate (links)'], ['dylib', 'dylib crate (links)'], ['cdylib', 'cdylib crate (links)'], ['proc-macro', 'proc-macro crate (links)']]) {
    assert.equal(reason(LIB.map((a) => (a === 'lib' ? t : a))), r)
  }
  assert.equal(reason([...LIB, '-C', 'incremental=/w/target/debug/incremental']), 'incremental compilation (-C incremental)')
  assert.equal(reason([...LIB, '--test']), 'test harness (links)')
  assert.equal(reason([...LIB, '-Zunstable-options']), 'unstable option (-Z)')
  assert.equal(reason([...LIB, '-o', 'x.rlib']), 'output file (-o)')
  assert.equal(reason([...LIB, '--frobnicate']), 'unknown rustc option --frobnicate')
  assert.equal(reason(LIB.filter((a, i) => a !== '--out-dir' && LIB[i - 1] !== '--out-dir')), 'no --out-dir')
  assert.equal(reason(['@/nonexistent/args']), 'unreadable argument file @/nonexistent/args')
})

test('an @file of arguments is read one per line, as rustc reads it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rargs-'))
  writeFileSync(join(dir, 'args'), LIB.slice(4).join('\n') + '\n')
  const s = spec([...LIB.slice(0, 4), `@${join(dir, 'args')}`])
  assert.equal(s.outputs.length, 3)
  assert.equal(s.args.length, LIB.length)
})

test('--remap-path-prefix splits at the last "=", -l static and -L native are kept for the key', () => {
  const s = spec([...LIB, '--remap-path-prefix=/w/a=b=/ws', '-L', 'native=/w/out', '-l', 'static:+verbatim=libz.a', '-lstatic=twice'])
  assert.deepEqual(s.remaps, [['/w/a=b', '/ws']])
  assert.deepEqual(s.nativeDirs, ['/w/out'])
  assert.deepEqual(s.staticLibs, [{ name: 'libz.a', verbatim: true }, { name: 'twice', verbatim: false }])
})

test('dep-info: the first rule\'s files and env!/option_env! lookups, unescaped', () => {
  const text = [
    '/w/target/debug/deps/a-1.d: a/src/lib.rs a/src/my\\ file.txt /w/target/debug/build/a-2/out/gen.rs',
    '',
    '/w/target/debug/deps/liba-1.rlib: a/src/lib.rs a/src/my\\ file.txt /w/target/debug/build/a-2/out/gen.rs',
    '',
    'a/src/lib.rs:',
    'a/src/my\\ file.txt:',
    '',
    '# env-dep:CARGO_PKG_NAME=a',
    '# env-dep:MULTI=line\\nnext\\\\',
    '# env-dep:UNSET_ONE',
    ''
  ].join('\n')
  const d = parseDepInfo(text)
  assert.deepEqual(d.files, ['a/src/lib.rs', 'a/src/my file.txt', '/w/target/debug/build/a-2/out/gen.rs'])
  assert.deepEqual(d.env, [['CARGO_PKG_NAME', 'a'], ['MULTI', 'line\nnext\\'], ['UNSET_ONE', null]])
})
