// What an address is to a node (src/mesh/addresses.ts): loopback kept only when nothing else is
// there, this node's own addresses recognised (so it never stores or dials them for another
// peer), subnets read from the interfaces, and the order an invite gives its addresses in.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isOwnAddr, isPublicAddr, localSubnets, onSubnets, orderForOutsiders, tcpPorts, withoutLoopback } from '../src/mesh/addresses.js'
import { linkText } from '../src/cli/mesh-commands.js'
import type { MemberStatus } from '../src/daemon/mesh-service.js'

const P = '12D3KooWDrgWthGVP9ha5KZqyFF4jHoeE83GwPevGbvnUP7b66G1'

test('loopback addresses go whenever another address is there', () => {
  assert.deepEqual(withoutLoopback([`/ip4/127.0.0.1/tcp/10650/p2p/${P}`, `/ip4/10.1.2.3/tcp/10650/p2p/${P}`]), [`/ip4/10.1.2.3/tcp/10650/p2p/${P}`])
  assert.deepEqual(withoutLoopback(['/ip4/127.0.0.1/tcp/1', '/ip6/::1/tcp/1']), ['/ip4/127.0.0.1/tcp/1', '/ip6/::1/tcp/1'], 'a same-host mesh keeps them')
  assert.deepEqual(withoutLoopback([]), [])
})

test("a node's own addresses: its interfaces, loopback and wildcards, on its own ports only", () => {
  const ports = tcpPorts(['/ip4/0.0.0.0/tcp/10650', `/ip4/127.0.0.1/tcp/4000/p2p/${P}`, `/ip4/1.2.3.4/tcp/5/p2p/${P}/p2p-circuit`])
  assert.deepEqual([...ports].sort(), [10650, 4000].sort())
  assert.equal(isOwnAddr(`/ip4/127.0.0.1/tcp/10650/p2p/${P}`, ports), true, 'another host\'s loopback line on our port is us')
  assert.equal(isOwnAddr('/ip4/127.0.0.1/tcp/10651', ports), false, 'another port on loopback is another daemon')
  assert.equal(isOwnAddr('/ip4/0.0.0.0/tcp/4000', ports), true)
  assert.equal(isOwnAddr('/ip4/192.0.2.77/tcp/10650', ports), false, 'not an interface address here')
  assert.equal(isOwnAddr(`/ip4/127.0.0.1/tcp/10650/p2p/${P}/p2p-circuit/p2p/${P}`, ports), false, 'a relayed address is never ours')
  assert.equal(isOwnAddr('/ip4/127.0.0.1/tcp/10650', new Set()), false)
})

test('public: global IPv4 and global unicast IPv6; not private, link-local, unique-local or relayed', () => {
  assert.equal(isPublicAddr('/ip4/12.77.21.1/tcp/10650'), true)
  assert.equal(isPublicAddr('/ip4/192.168.1.5/tcp/10650'), false)
  assert.equal(isPublicAddr('/ip6/2a01:4f8::1/tcp/10650'), true)
  assert.equal(isPublicAddr('/ip6/2001:db8:1::10/tcp/10650'), true, 'the documentation prefix is in 2000::/3 (the NAT lab uses it)')
  assert.equal(isPublicAddr('/ip6/fe80::1/tcp/10650'), false, 'link-local')
  assert.equal(isPublicAddr('/ip6/fd12:3456::1/tcp/10650'), false, 'unique-local')
  assert.equal(isPublicAddr('/ip6/::1/tcp/10650'), false)
  assert.equal(isPublicAddr(`/ip6/2a01:4f8::1/tcp/10650/p2p/${P}/p2p-circuit/p2p/${P}`), false, 'relayed')
})

test('subnets come from the interfaces: loopback is on one, a documentation address is not', () => {
  const s = localSubnets()
  assert.equal(onSubnets('/ip4/127.0.0.1/tcp/1', s), true)
  assert.equal(onSubnets('/ip4/203.0.113.9/tcp/1', s), false)
  assert.equal(onSubnets(`/ip4/127.0.0.1/tcp/1/p2p/${P}/p2p-circuit`, s), false, 'relayed is never near')
})

test('an invite lists public addresses first, relayed next, LAN after, loopback only when alone', () => {
  const pub = `/ip4/198.51.100.7/tcp/10650/p2p/${P}`
  const lan = `/ip4/192.168.1.5/tcp/10650/p2p/${P}`
  const lo = `/ip4/127.0.0.1/tcp/10650/p2p/${P}`
  const relayed = `/ip4/198.51.100.9/tcp/10650/p2p/${P}/p2p-circuit/p2p/${P}`
  assert.deepEqual(orderForOutsiders([lo, lan, relayed, pub], (a) => a === pub), [pub, relayed, lan])
  assert.deepEqual(orderForOutsiders([lo], () => false), [lo])
})

test('the LINK column says how a member is reached, or why it is not', () => {
  const m = (o: Partial<MemberStatus>): MemberStatus => ({ self: false, connection: 'none', lan: false, dial_error: null, ...o } as MemberStatus)
  assert.equal(linkText(m({ self: true, connection: 'self' })), 'self')
  assert.equal(linkText(m({ connection: 'direct', lan: true })), 'LAN direct')
  assert.equal(linkText(m({ connection: 'direct' })), 'direct')
  assert.equal(linkText(m({ connection: 'direct', mapped: true })), 'direct (mapped)', 'dialed through its port mapping')
  assert.equal(linkText(m({ dial_error: 'dial timed out (behind NAT or a firewall?)' })), 'unreachable: dial timed out (behind NAT or a firewall?)')
})
