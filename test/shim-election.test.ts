import { test } from 'node:test'
import assert from 'node:assert/strict'
import { electShimServer } from '../src/shim/election.js'
import { formatDistStatus, shimSchedulerUrl } from '../src/shim/dist-status.js'

const m = (peerId: string, shim: boolean, lastSeen = 1000) => ({ peerId, shim, lastSeen })

test('lowest peer id among shim-capable members wins', () => {
  const members = [m('12D3KooWZ', true), m('12D3KooWA', false), m('12D3KooWM', true), m('12D3KooWB', true)]
  assert.equal(electShimServer(members), '12D3KooWB')
})

test('deterministic: input order, lastSeen and now do not matter', () => {
  const members = [m('QmC', true, 5), m('QmA', true, 1), m('QmB', true, 9)]
  const expected = electShimServer(members)
  assert.equal(expected, 'QmA')
  const perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]]
  for (const [i, p] of perms.entries()) {
    assert.equal(electShimServer(p.map((k) => members[k]), i * 1000), expected)
  }
  assert.equal(electShimServer(members.map((x) => ({ ...x, lastSeen: 0 })), Date.now()), expected)
})

test('code-unit order, not locale order', () => {
  // localeCompare would put "a" before "B"; code units put "B" (0x42) first
  assert.equal(electShimServer([m('a1', true), m('B1', true)]), 'B1')
})

test('null when nobody is capable or the list is empty', () => {
  assert.equal(electShimServer([]), null)
  assert.equal(electShimServer([m('QmA', false), m('QmB', false)]), null)
  assert.equal(electShimServer([m('', true)]), null)
})

test('does not mutate its input', () => {
  const members = Object.freeze([Object.freeze(m('QmB', true)), Object.freeze(m('QmA', true))])
  assert.equal(electShimServer(members), 'QmA')
})

test('formatDistStatus matches sccache --dist-status for a connected scheduler', () => {
  assert.equal(
    formatDistStatus('http://127.0.0.1:10600/', { numServers: 3, numCpus: 56, inProgress: 24 }),
    '{"SchedulerStatus":["http://127.0.0.1:10600/",{"num_servers":3,"num_cpus":56,"in_progress":24}]}'
  )
  assert.equal(shimSchedulerUrl('127.0.0.1:10600'), 'http://127.0.0.1:10600/')
  assert.equal(formatDistStatus('a"b\\', { numServers: 0, numCpus: 0, inProgress: 0 }), '{"SchedulerStatus":["a\\"b\\\\",{"num_servers":0,"num_cpus":0,"in_progress":0}]}')
  assert.throws(() => formatDistStatus('x', { numServers: -1, numCpus: 0, inProgress: 0 }), RangeError)
})
