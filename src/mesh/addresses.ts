// What an address is to this node: loopback, one of its own, on one of its own subnets, relayed.
// Used to keep addresses that no other host can use out of what a node advertises and stores
// (its loopback address reaches whatever listens on the *other* host's loopback, often that
// host's own daemon on the same default port), to keep a node from dialing itself, and to tell
// a member on this node's own network from one on another.
import { BlockList, isIP } from 'node:net'
import { networkInterfaces } from 'node:os'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { isPrivate } from '@libp2p/utils'

export function toMultiaddr(a: Multiaddr | string): Multiaddr | null {
  if (typeof a !== 'string') return a
  try { return multiaddr(a) } catch { return null }
}

/** the first component's value (an IP address or DNS name) */
function hostValue(ma: Multiaddr): { family: string; host: string } {
  const c = ma.getComponents()[0]
  return { family: c?.name ?? '', host: c?.value ?? '' }
}

export function isLoopbackAddr(a: Multiaddr | string): boolean {
  const ma = toMultiaddr(a)
  if (!ma) return false
  const { family, host } = hostValue(ma)
  return (family === 'ip4' && host.startsWith('127.')) || (family === 'ip6' && host === '::1')
}

export function isRelayedAddr(a: Multiaddr | string): boolean {
  return String(a).includes('/p2p-circuit')
}

/**
 * Keeps loopback addresses only when nothing else is there: a same-host mesh (tests, a
 * benchmark on one machine) has nothing else, and a remote member must never get them.
 */
export function withoutLoopback<T extends Multiaddr | string>(addrs: T[]): T[] {
  const others = addrs.filter((a) => !isLoopbackAddr(a))
  return others.length > 0 ? others : addrs
}

/** This machine's interface subnets (loopback included), read when asked: interfaces come and go. */
export function localSubnets(): BlockList {
  const list = new BlockList()
  for (const ifs of Object.values(networkInterfaces())) {
    for (const i of ifs ?? []) {
      const prefix = Number(i.cidr?.split('/')[1])
      const type = i.family === 'IPv4' ? 'ipv4' : 'ipv6'
      if (Number.isInteger(prefix)) list.addSubnet(i.address.split('%')[0]!, prefix, type)
    }
  }
  return list
}

/** This machine's own interface addresses. */
function localAddresses(): BlockList {
  const list = new BlockList()
  for (const ifs of Object.values(networkInterfaces())) {
    for (const i of ifs ?? []) list.addAddress(i.address.split('%')[0]!, i.family === 'IPv4' ? 'ipv4' : 'ipv6')
  }
  return list
}

function ipOf(ma: Multiaddr): { ip: string; type: 'ipv4' | 'ipv6' } | null {
  const { family, host } = hostValue(ma)
  if (family === 'ip4' && isIP(host) === 4) return { ip: host, type: 'ipv4' }
  if (family === 'ip6' && isIP(host) === 6) return { ip: host, type: 'ipv6' }
  return null
}

/** Whether the address's host is on one of these subnets (a member on this node's own network segment). */
export function onSubnets(a: Multiaddr | string, subnets: BlockList): boolean {
  const ma = toMultiaddr(a)
  const ip = ma && !isRelayedAddr(a) ? ipOf(ma) : null
  return ip !== null && subnets.check(ip.ip, ip.type)
}

/** Whether the address is one of this machine's own (an interface's address, a wildcard, loopback) on one of `ports`. */
export function isOwnAddr(a: Multiaddr | string, ports: ReadonlySet<number>): boolean {
  const ma = toMultiaddr(a)
  if (!ma || isRelayedAddr(a) || ports.size === 0) return false
  const port = Number(ma.getComponents().find((c) => c.name === 'tcp')?.value)
  if (!ports.has(port)) return false
  const ip = ipOf(ma)
  if (!ip) return false
  if (ip.ip === '0.0.0.0' || ip.ip === '::' || isLoopbackAddr(ma)) return true
  return localAddresses().check(ip.ip, ip.type)
}

/**
 * Addresses in the order a member on another network should try them: public ones (and
 * announced or mapped ones, which `isPublic` says), then relayed ones, then the rest (LAN),
 * loopback last and only when there is nothing else.
 */
export function orderForOutsiders(addrs: string[], isPublic: (a: string) => boolean): string[] {
  const rank = (a: string) => (isLoopbackAddr(a) ? 3 : isRelayedAddr(a) ? 1 : isPublic(a) ? 0 : 2)
  return withoutLoopback([...addrs].sort((x, y) => rank(x) - rank(y)))
}

/** The TCP ports of these (listen) addresses, relayed ones aside. */
export function tcpPorts(addrs: Array<Multiaddr | string>): Set<number> {
  const ports = new Set<number>()
  for (const a of addrs) {
    const ma = toMultiaddr(a)
    const port = Number(ma?.getComponents().find((c) => c.name === 'tcp')?.value)
    if (ma && Number.isInteger(port) && port > 0 && !isRelayedAddr(a)) ports.add(port)
  }
  return ports
}

const GLOBAL_UNICAST_V6 = new BlockList()
GLOBAL_UNICAST_V6.addSubnet('2000::', 3, 'ipv6')

/**
 * A direct address others can reach without a NAT in the way: IPv4 outside the private,
 * loopback and documentation ranges (libp2p's isPrivate), or global unicast IPv6 (2000::/3; its
 * documentation prefix 2001:db8::/32 included, which never reaches a real network and which the
 * NAT lab's IPv6 wan uses). Link-local and unique-local IPv6 addresses are not.
 */
export function isPublicAddr(a: string): boolean {
  const ma = toMultiaddr(a)
  if (ma === null || isRelayedAddr(a)) return false
  const ip = ipOf(ma)
  if (ip?.type === 'ipv6') return GLOBAL_UNICAST_V6.check(ip.ip, 'ipv6')
  try { return !isPrivate(ma) } catch { return false }
}

/** An IPv6 address (direct). */
export function isIPv6Addr(a: Multiaddr | string): boolean {
  const ma = toMultiaddr(a)
  return ma !== null && !isRelayedAddr(a) && ipOf(ma)?.type === 'ipv6'
}
