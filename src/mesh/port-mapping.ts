// Port mapping on the home router: a node that finds itself behind NAT (reachability.ts: a
// member on another network could not reach it) asks its router to forward a public port to its
// listen port, by UPnP-IGD or else NAT-PMP, and advertises the mapped address. Reachability's
// next dial-back then proves it (state public, "mapped"). A LAN mesh never gets here: nobody
// there is on another network, so nobody finds out the node is behind NAT ([mesh] port_mapping).
//
// The protocols are @achingbrain/nat-port-mapper's (the library @libp2p/upnp-nat is built on).
// @libp2p/upnp-nat itself is not used: it searches for gateways (SSDP multicast every few
// seconds, then every five minutes) from the moment the node starts, on every node, and maps
// every private address the node has; here the search runs only once a node knows it is NATed,
// and maps the one listen address on the router's own subnet.
//
// What the library does not do right for us, done here instead:
//   - the lease is renewed on our schedule (RENEW_MS, a third of the lease), not the library's;
//   - a mapping is deleted by its *external* port (the library's unmap names the internal one,
//     which on a router with two meshcc machines is the other machine's mapping);
//   - a router whose own external address is private (a provider's NAT beyond it: CGNAT, double
//     NAT) gets no mapping: nobody outside could use it.
import { networkInterfaces } from 'node:os'
import { readFileSync } from 'node:fs'
import { BlockList, isIPv4 } from 'node:net'
import { upnpNat, pmpNat, type Gateway, type PortMapping } from '@achingbrain/nat-port-mapper'
import { isPrivateIp } from '@libp2p/utils'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { Logger } from '../log.js'
import type { MeshLibp2p } from './node.js'
import { isLoopbackAddr, isRelayedAddr } from './addresses.js'
import { errText } from './connector.js'

export type PortMappingState = 'off' | 'idle' | 'searching' | 'mapped' | 'failed'

export interface PortMappingStatus {
  state: PortMappingState
  /** one line: why this state */
  detail: string
  /** the mapped address (/ip4/<router's external address>/tcp/<port>), while mapped */
  address: string | null
  /** 'upnp' or 'pmp', while mapped */
  protocol: 'upnp' | 'pmp' | null
}

/** asked for; UPnP gateways treat less than an hour as an hour (the library rounds it up) */
const LEASE_MS = 3600_000
/** renewed well before it runs out: a router that restarted has forgotten it by then too */
const RENEW_MS = Number(process.env.MESHCC_TEST_PORT_MAPPING_RENEW_MS) > 0 ? Number(process.env.MESHCC_TEST_PORT_MAPPING_RENEW_MS) : LEASE_MS / 3
const SEARCH_MS = 5000
const REQUEST_MS = 5000
/** a renewal the router did not answer is asked again this soon (the lease still runs) */
const RENEW_RETRY_MS = Math.min(RENEW_MS, 60_000)
/** after a failure (no router answered, a refusal), the next try */
const RETRY_MS = 10 * 60_000
const DESCRIPTION = 'meshcc'

interface AddressManagerLike {
  addPublicAddressMapping(internalIp: string, internalPort: number, externalIp: string, externalPort: number, protocol: 'tcp'): void
  removePublicAddressMapping(internalIp: string, internalPort: number, externalIp: string, externalPort: number, protocol: 'tcp'): void
  confirmObservedAddr(addr: Multiaddr, options: { type: 'ip-mapping'; ttl: number }): void
}

/** The UPnP device's control call (the library's gateway keeps its device as `gateway`). */
interface DeviceLike { run(service: string, action: string, args: Array<[string, string | number]>, options?: { signal?: AbortSignal }): Promise<unknown> }
const WAN_IP_CONNECTION_2 = 'urn:schemas-upnp-org:service:WANIPConnection:2'

export class PortMapper {
  private state: PortMappingState
  private why: string
  private gateway: Gateway | null = null
  private protocol: 'upnp' | 'pmp' | null = null
  private mapping: PortMapping | null = null
  /** when the router's lease on the mapping runs out, unless renewed */
  private leaseEnd = 0
  private busy = false
  private nextTry = 0
  private renewTimer: NodeJS.Timeout | null = null
  private stopped = false

  constructor(
    private readonly node: MeshLibp2p,
    private readonly log: Logger,
    enabled: boolean,
    private readonly onChange: () => void
  ) {
    this.state = enabled ? 'idle' : 'off'
    this.why = enabled ? 'not needed so far: no member on another network found this node unreachable' : 'off ([mesh] port_mapping = false)'
  }

  status(): PortMappingStatus {
    return { state: this.state, detail: this.why, address: this.address(), protocol: this.mapping ? this.protocol : null }
  }

  /** the mapped address, while mapped */
  address(): string | null {
    const m = this.mapping
    return m ? `/ip4/${m.externalHost}/tcp/${m.externalPort}` : null
  }

  /** This node is not reachable from other networks: map a port, unless done, tried lately, or off. */
  wanted(): void {
    if (this.state === 'off' || this.stopped || this.busy || this.mapping || Date.now() < this.nextTry) return
    void this.map()
  }

  private set(state: PortMappingState, why: string): void {
    const changed = state !== this.state || why !== this.why
    this.state = state
    this.why = why
    if (changed) this.onChange()
  }

  private fail(why: string): void {
    this.nextTry = Date.now() + RETRY_MS
    this.log.info(`port mapping: ${why}; trying again in ${RETRY_MS / 60_000} min`)
    this.set('failed', why)
  }

  private async map(): Promise<void> {
    this.busy = true
    try {
      const listen = this.listenAddrs()
      if (listen.length === 0) return this.fail('no IPv4 listen address on a private network to map')
      this.set('searching', 'asking the router (UPnP-IGD, then NAT-PMP)')
      const found = await this.findGateway()
      if (this.stopped) return
      if (!found) return this.fail('no router answered UPnP-IGD or NAT-PMP (turned off on the router?)')
      const { gateway, protocol } = found
      const local = listen.find((l) => onSameSubnet(l.ip, gateway.host)) ?? listen[0]!
      const external = await gateway.externalIp({ signal: AbortSignal.timeout(REQUEST_MS) })
      if (!isIPv4(external) || isPrivateIp(external) !== false) {
        await closeGateway(gateway)
        return this.fail(`the router's own address ${external} is not public: another NAT lies beyond it (a provider's), so a mapping would not help`)
      }
      const mapping = await gateway.map(local.port, local.ip, { protocol: 'TCP', ttl: LEASE_MS, autoRefresh: false, description: DESCRIPTION, signal: AbortSignal.timeout(REQUEST_MS) })
      if (this.stopped) {
        await this.unmap(gateway, protocol, mapping)
        return
      }
      this.gateway = gateway
      this.protocol = protocol
      this.mapping = { ...mapping, externalHost: external }
      this.leaseEnd = Date.now() + LEASE_MS
      this.advertise(true)
      this.scheduleRenew(RENEW_MS)
      this.log.info(`port mapping: ${protocol === 'upnp' ? 'UPnP-IGD' : 'NAT-PMP'} router ${gateway.host} forwards ${external}:${mapping.externalPort} to ${local.ip}:${local.port}`)
      this.set('mapped', `${protocol === 'upnp' ? 'UPnP-IGD' : 'NAT-PMP'} on router ${gateway.host}`)
    } catch (err) {
      this.fail(`the router refused or did not answer: ${errText(err)}`)
    } finally {
      this.busy = false
    }
  }

  /** This node's direct IPv4 listen addresses on private networks (the router's side). */
  private listenAddrs(): Array<{ ip: string; port: number }> {
    const out: Array<{ ip: string; port: number }> = []
    for (const m of this.node.getMultiaddrs()) {
      const s = m.toString()
      if (isRelayedAddr(s) || isLoopbackAddr(s)) continue
      const c = m.getComponents()
      const port = Number(c.find((x) => x.name === 'tcp')?.value)
      if (c[0]?.name !== 'ip4' || !(port > 0) || isPrivateIp(c[0].value ?? '') !== true) continue
      out.push({ ip: c[0].value!, port })
    }
    return out
  }

  private async findGateway(): Promise<{ gateway: Gateway; protocol: 'upnp' | 'pmp' } | null> {
    const signal = AbortSignal.timeout(SEARCH_MS)
    try {
      for await (const gw of upnpNat({ description: DESCRIPTION, autoRefresh: false }).findGateways({ signal, searchInterval: 1000 })) {
        if (gw.family === 'IPv4') return { gateway: gw, protocol: 'upnp' }
      }
    } catch (err) {
      this.log.debug(`UPnP-IGD search: ${errText(err)}`)
    }
    if (this.stopped) return null
    const router = defaultGateway()
    if (!router) return null
    const pmp = pmpNat(router, { description: DESCRIPTION, autoRefresh: false })
    try {
      await pmp.externalIp({ signal: AbortSignal.timeout(REQUEST_MS) })
      return { gateway: pmp, protocol: 'pmp' }
    } catch (err) {
      this.log.debug(`NAT-PMP at ${router}: ${errText(err)}`)
      await closeGateway(pmp)
      return null
    }
  }

  /** Adds (or withdraws) the mapped address among the node's own. */
  private advertise(on: boolean): void {
    const m = this.mapping
    const am = (this.node as unknown as { components?: { addressManager?: AddressManagerLike } }).components?.addressManager
    if (!m || !am) return
    if (on) {
      am.addPublicAddressMapping(m.internalHost, m.internalPort, m.externalHost, m.externalPort, 'tcp')
      // confirmed here: reachability's dial-back is what proves it (public, "mapped")
      am.confirmObservedAddr(multiaddr(`/ip4/${m.externalHost}/tcp/${m.externalPort}`), { type: 'ip-mapping', ttl: 10 * 365 * 86_400_000 })
    } else {
      am.removePublicAddressMapping(m.internalHost, m.internalPort, m.externalHost, m.externalPort, 'tcp')
    }
  }

  private scheduleRenew(ms: number): void {
    if (this.renewTimer) clearTimeout(this.renewTimer)
    this.renewTimer = setTimeout(() => { void this.renew() }, ms)
    this.renewTimer.unref()
  }

  /** The same mapping asked for again: the router extends its lease. */
  private async renew(): Promise<void> {
    const gw = this.gateway
    const m = this.mapping
    if (!gw || !m || this.stopped) return
    const asked = Date.now()
    try {
      const again = await gw.map(m.internalPort, m.internalHost, { protocol: 'TCP', ttl: LEASE_MS, autoRefresh: false, description: DESCRIPTION, externalPort: m.externalPort, signal: AbortSignal.timeout(REQUEST_MS) })
      if (this.stopped) return
      if (again.externalPort !== m.externalPort) {
        this.advertise(false)
        this.mapping = { ...m, externalPort: again.externalPort }
        this.advertise(true)
        this.onChange()
      }
      this.leaseEnd = asked + LEASE_MS
      this.log.debug(`port mapping renewed: ${this.address()}`)
      this.scheduleRenew(RENEW_MS)
    } catch (err) {
      if (this.stopped) return
      // a router slow to answer (seen in the NAT lab on a loaded machine: the renewal timed out
      // and the router extended the lease anyway) still forwards the port while the lease
      // runs: keep the mapping, advertised and deleted on stop, and ask again soon
      if (Date.now() + RENEW_RETRY_MS < this.leaseEnd) {
        this.log.info(`port mapping: renewing ${this.address()} failed (${errText(err)}); asking again in ${Math.round(RENEW_RETRY_MS / 1000)} s`)
        this.scheduleRenew(RENEW_RETRY_MS)
        return
      }
      // the lease ran out unrenewed: withdraw the address, map afresh at the next need
      this.log.info(`port mapping: renewing ${this.address()} failed (${errText(err)}); withdrawn`)
      this.advertise(false)
      this.mapping = null
      this.gateway = null
      await closeGateway(gw)
      this.fail(`renewing the mapping failed: ${errText(err)}`)
    }
  }

  private async unmap(gw: Gateway, protocol: 'upnp' | 'pmp' | null, m: PortMapping): Promise<void> {
    try {
      const device = (gw as unknown as { gateway?: DeviceLike }).gateway
      if (protocol === 'upnp' && device && typeof device.run === 'function') {
        await device.run(WAN_IP_CONNECTION_2, 'DeletePortMapping', [['NewRemoteHost', ''], ['NewExternalPort', m.externalPort], ['NewProtocol', 'TCP']], { signal: AbortSignal.timeout(REQUEST_MS) })
      } else {
        await gw.unmap(m.internalPort, { signal: AbortSignal.timeout(REQUEST_MS) }) // NAT-PMP: lifetime 0
      }
      this.log.info(`port mapping ${m.externalHost}:${m.externalPort} removed`)
    } catch (err) {
      this.log.info(`port mapping: removing ${m.externalHost}:${m.externalPort} failed: ${errText(err)} (the router drops it when its lease runs out)`)
    } finally {
      await closeGateway(gw)
    }
  }

  /** Removes the mapping on the router (the daemon stops). */
  async stop(): Promise<void> {
    this.stopped = true
    if (this.renewTimer) clearTimeout(this.renewTimer)
    const gw = this.gateway
    const m = this.mapping
    this.gateway = null
    this.mapping = null
    if (gw && m) await this.unmap(gw, this.protocol, m)
  }
}

/**
 * Closes the library's gateway without its own unmapping: for UPnP that names the internal port
 * as the external one (unmap above removed ours by its external port).
 */
async function closeGateway(gw: Gateway): Promise<void> {
  (gw as unknown as { mappings?: Map<unknown, unknown> }).mappings?.clear()
  await gw.stop({ signal: AbortSignal.timeout(1000) }).catch(() => {})
}

function onSameSubnet(ip: string, other: string): boolean {
  for (const ifs of Object.values(networkInterfaces())) {
    for (const i of ifs ?? []) {
      if (i.family !== 'IPv4' || i.address !== ip) continue
      const prefix = Number(i.cidr?.split('/')[1])
      if (!Number.isInteger(prefix)) continue
      const list = new BlockList()
      list.addSubnet(ip, prefix, 'ipv4')
      return isIPv4(other) && list.check(other, 'ipv4')
    }
  }
  return false
}

/** The IPv4 default gateway (Linux: /proc/net/route), where NAT-PMP asks. */
function defaultGateway(): string | null {
  try {
    for (const line of readFileSync('/proc/net/route', 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/)
      if (f[1] !== '00000000' || !f[2] || f[2] === '00000000') continue
      const n = parseInt(f[2], 16)
      return [n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255].join('.')
    }
  } catch { /* not Linux */ }
  return null
}
