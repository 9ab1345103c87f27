// Network-namespace lab for tests that need a LAN (mDNS, later NAT): N host namespaces, each
// with one veth into a bridge that lives in its own namespace. Nothing is attached to the root
// namespace, so multicast never leaves the lab. Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN)
// and iproute2; createNetnsLab() reports why not instead of failing, so tests can t.skip().
//
//   const r = createNetnsLab(3)
//   if ('skip' in r) return t.skip(`cannot create network namespaces: ${r.skip}`)
//   try { ... r.lab.prefix(r.lab.hosts[0]) ... } finally { await r.lab.destroy() }
//
// createTwoSegmentLab() builds two such LANs (two bridges) with one host on each and a third
// host on both, which does not route between them: the outer two cannot reach each other.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

export interface NetnsHost {
  /** namespace name, for `ip netns exec` */
  ns: string
  /** the host's address on the lab bridge */
  ip: string
  iface: 'eth0'
}

/** What the lab's process helpers need of a host: its namespace. */
export interface NetnsMember {
  ns: string
}

/** Process helpers every lab has. */
export interface NetnsLabControls {
  /** command prefix that runs a program inside the host's namespace */
  prefix(host: NetnsMember): string[]
  /** spawns a program inside the host's namespace (killed by destroy) */
  spawn(host: NetnsMember, cmd: string, args: string[], opts?: SpawnOptions): ChildProcess
  /** runs a short command inside the host's namespace */
  run(host: NetnsMember, cmd: string, args: string[], timeoutMs?: number): { status: number | null; stdout: string; stderr: string }
  /** kills every process in the lab's namespaces (by PID) and deletes the namespaces */
  destroy(): Promise<void>
}

export interface NetnsLab extends NetnsLabControls {
  readonly bridgeNs: string
  readonly hosts: NetnsHost[]
  readonly subnet: string
}

/** A host with one interface on each segment of a two-segment lab; it forwards nothing. */
export interface NetnsDualHost {
  ns: string
  /** [address on segment 1 (eth0), address on segment 2 (eth1)] */
  ips: [string, string]
  ifaces: ['eth0', 'eth1']
}

export interface TwoSegmentLab extends NetnsLabControls {
  /** the bridge namespaces of segment 1 and segment 2 */
  readonly bridgeNs: [string, string]
  /** ['10.232.1.0/24', '10.232.2.0/24'] */
  readonly subnets: [string, string]
  /** on segment 1 only */
  readonly a: NetnsHost
  /** on both segments, IP forwarding off */
  readonly b: NetnsDualHost
  /** on segment 2 only */
  readonly c: NetnsHost
}

const allNamespaces = new Set<string>()
let labCounter = 0
let exitHookInstalled = false

/** Shared with the benchmarks' own labs (scripts/lib/dist-bench-proc.ts). */
export function ip(args: string[], timeoutMs = 10_000): { ok: boolean; out: string; err: string; code: string | undefined } {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: timeoutMs })
  const code = (r.error as NodeJS.ErrnoException | undefined)?.code
  return { ok: r.status === 0 && !r.error, out: r.stdout ?? '', err: (r.stderr ?? '').trim() || (r.error?.message ?? ''), code }
}

export function mustIp(args: string[]): void {
  const r = ip(args)
  if (!r.ok) throw new Error(`ip ${args.join(' ')}: ${r.err}`)
}

export function pidsIn(ns: string): number[] {
  const r = ip(['netns', 'pids', ns])
  if (!r.ok) return []
  return r.out.split(/\s+/).filter((x) => /^\d+$/.test(x)).map(Number).filter((p) => p !== process.pid)
}

export function killNamespaceProcesses(ns: string, signal: NodeJS.Signals): number {
  const pids = pidsIn(ns)
  for (const pid of pids) {
    try { process.kill(pid, signal) } catch { /* already gone */ }
  }
  return pids.length
}

function deleteNamespace(ns: string): void {
  killNamespaceProcesses(ns, 'SIGKILL')
  ip(['netns', 'del', ns])
  allNamespaces.delete(ns)
}

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  // last resort when a test crashes past its finally blocks: synchronous cleanup
  process.on('exit', () => { for (const ns of [...allNamespaces]) deleteNamespace(ns) })
}

/** Starts a lab: checks for iproute2 and creates its first namespace, or says why it cannot. */
function beginLab(firstNsSuffix: string): { id: string; created: string[] } | { skip: string } {
  const probe = ip(['-V'])
  if (probe.code === 'ENOENT') return { skip: 'the ip binary (iproute2) is not installed' }
  const id = `mcc${process.pid}x${labCounter++}`
  const first = ip(['netns', 'add', `${id}-${firstNsSuffix}`])
  if (!first.ok) return { skip: `ip netns add failed: ${first.err || 'unknown error'}` }
  installExitHook()
  allNamespaces.add(`${id}-${firstNsSuffix}`)
  return { id, created: [`${id}-${firstNsSuffix}`] }
}

/** Creates a namespace with lo up, recorded for destroy() and the exit hook. */
function addNamespace(ns: string, created: string[]): void {
  mustIp(['netns', 'add', ns])
  allNamespaces.add(ns)
  created.push(ns)
  mustIp(['-n', ns, 'link', 'set', 'lo', 'up'])
}

/** A bridge br0 (no multicast snooping) inside an existing namespace. */
function addBridge(bridgeNs: string): void {
  mustIp(['-n', bridgeNs, 'link', 'set', 'lo', 'up'])
  mustIp(['-n', bridgeNs, 'link', 'add', 'br0', 'type', 'bridge', 'mcast_snooping', '0'])
  mustIp(['-n', bridgeNs, 'link', 'set', 'br0', 'up'])
}

/** Plugs `iface` of host namespace `ns` into the bridge of `bridgeNs` (as port `port`) with address addr/24. */
function plugIntoBridge(ns: string, iface: string, bridgeNs: string, port: string, addr: string): void {
  // both veth ends are created directly inside the lab namespaces, never in the root one
  mustIp(['-n', ns, 'link', 'add', iface, 'type', 'veth', 'peer', 'name', port, 'netns', bridgeNs])
  mustIp(['-n', bridgeNs, 'link', 'set', port, 'master', 'br0'])
  mustIp(['-n', bridgeNs, 'link', 'set', port, 'up'])
  mustIp(['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', iface])
  mustIp(['-n', ns, 'link', 'set', iface, 'up'])
}

/** spawn/run/destroy over the lab's namespaces (destroy deletes every one in `created`). */
function labControls(created: string[]): NetnsLabControls {
  const children = new Set<ChildProcess>()
  let destroyed = false
  return {
    prefix: (h) => ['ip', 'netns', 'exec', h.ns],
    spawn(h, cmd, args, opts = {}) {
      const child = spawn('ip', ['netns', 'exec', h.ns, cmd, ...args], opts)
      children.add(child)
      child.once('exit', () => children.delete(child))
      return child
    },
    run(h, cmd, args, timeoutMs = 10_000) {
      const r = spawnSync('ip', ['netns', 'exec', h.ns, cmd, ...args], { encoding: 'utf8', timeout: timeoutMs })
      return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
    },
    async destroy() {
      if (destroyed) return
      destroyed = true
      for (const c of children) { try { c.kill('SIGTERM') } catch { /* gone */ } }
      let left = 0
      for (const ns of created) left += killNamespaceProcesses(ns, 'SIGTERM')
      const end = Date.now() + 3000
      while (left > 0 && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 100))
        left = created.reduce((s, ns) => s + pidsIn(ns).length, 0)
      }
      for (const ns of created) deleteNamespace(ns)
    }
  }
}

/**
 * Creates the lab, or says why it cannot: { skip: reason }. Addresses are 10.231.0.10+i/24
 * (each lab has its own bridge namespace, so parallel labs do not clash).
 */
export function createNetnsLab(n: number): { lab: NetnsLab } | { skip: string } {
  const begun = beginLab('br')
  if ('skip' in begun) return begun
  const { id, created } = begun
  const bridgeNs = created[0]!
  const hosts: NetnsHost[] = []
  try {
    addBridge(bridgeNs)
    for (let i = 0; i < n; i++) {
      const ns = `${id}-h${i}`
      addNamespace(ns, created)
      const addr = `10.231.0.${10 + i}`
      plugIntoBridge(ns, 'eth0', bridgeNs, `veth${i}`, addr)
      mustIp(['-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', 'eth0']) // mDNS multicast
      hosts.push({ ns, ip: addr, iface: 'eth0' })
    }
  } catch (err) {
    for (const ns of created) deleteNamespace(ns)
    return { skip: (err as Error).message }
  }
  return { lab: { bridgeNs, hosts, subnet: '10.231.0.0/24', ...labControls(created) } }
}

/**
 * Two LAN segments, each a bridge in its own namespace: host a (10.232.1.10) on segment 1 only,
 * host c (10.232.2.12) on segment 2 only, and host b on both (eth0 10.232.1.11, eth1 10.232.2.11)
 * with IP forwarding off. No host has a route to the other segment (no default routes), so a
 * and c cannot reach each other; both can reach b. Or { skip: reason }, like createNetnsLab.
 */
export function createTwoSegmentLab(): { lab: TwoSegmentLab } | { skip: string } {
  const begun = beginLab('br1')
  if ('skip' in begun) return begun
  const { id, created } = begun
  const bridge1 = created[0]!
  const bridge2 = `${id}-br2`
  const subnets: [string, string] = ['10.232.1.0/24', '10.232.2.0/24']
  try {
    addBridge(bridge1)
    addNamespace(bridge2, created)
    addBridge(bridge2)
    const a: NetnsHost = { ns: `${id}-a`, ip: '10.232.1.10', iface: 'eth0' }
    const b: NetnsDualHost = { ns: `${id}-b`, ips: ['10.232.1.11', '10.232.2.11'], ifaces: ['eth0', 'eth1'] }
    const c: NetnsHost = { ns: `${id}-c`, ip: '10.232.2.12', iface: 'eth0' }
    addNamespace(a.ns, created)
    plugIntoBridge(a.ns, 'eth0', bridge1, 'vetha', a.ip)
    addNamespace(b.ns, created)
    // forwarding off before b has a second interface: b is a host on both LANs, never a router
    const fwd = spawnSync('ip', ['netns', 'exec', b.ns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=0'], { encoding: 'utf8', timeout: 10_000 })
    if (fwd.status !== 0) throw new Error(`sysctl net.ipv4.ip_forward=0 in ${b.ns}: ${(fwd.stderr ?? '').trim() || fwd.error?.message || 'failed'}`)
    const check = spawnSync('ip', ['netns', 'exec', b.ns, 'cat', '/proc/sys/net/ipv4/ip_forward'], { encoding: 'utf8', timeout: 10_000 })
    if ((check.stdout ?? '').trim() !== '0') throw new Error(`IP forwarding still on in ${b.ns}: ${(check.stdout ?? '').trim() || check.stderr}`)
    plugIntoBridge(b.ns, 'eth0', bridge1, 'vethb', b.ips[0])
    plugIntoBridge(b.ns, 'eth1', bridge2, 'vethb', b.ips[1])
    addNamespace(c.ns, created)
    plugIntoBridge(c.ns, 'eth0', bridge2, 'vethc', c.ip)
    return { lab: { bridgeNs: [bridge1, bridge2], subnets, a, b, c, ...labControls(created) } }
  } catch (err) {
    for (const ns of created) deleteNamespace(ns)
    return { skip: (err as Error).message }
  }
}

/** Namespaces this process created and has not deleted yet (tests assert it ends empty). */
export function liveNamespaces(): string[] {
  return [...allNamespaces]
}

/** A member of the NAT lab: its namespace and its address on its own network (and its global IPv6 address, if it has one). */
export interface NatHost { ns: string; ip: string; name: string; ip6?: string }

/** A home or office router: MASQUERADE from its LAN to the wan, nothing in from the wan. */
export interface NatRouter { ns: string; wanIp: string; lanIp: string; lanSubnet: string; name: string }

export interface NatLab extends NetnsLabControls {
  /**
   * the wan bridge's namespace; every wan address is in 10.77.0.0/16, each host on its own /24,
   * but router 1's, which is the public-looking LAB_PUBLIC_WAN (see there)
   */
  readonly wanNs: string
  /** public members on the wan: p1 10.77.1.10, p2 10.77.2.10 */
  readonly p1: NatHost
  readonly p2: NatHost
  /**
   * router 1 (wan LAB_PUBLIC_WAN, LAN 192.168.1.0/24) with hosts h1a .10 and h1b .11; it can run
   * miniupnpd (startMiniupnpd). IPv6: the routers also route (no NAT, no filter) between their
   * LANs 2001:db8:1::/64 and 2001:db8:2::/64 over the wan's 2001:db8:77::/64 (documentation
   * prefixes); h1a (2001:db8:1::10) and h2 (2001:db8:2::10) have global IPv6 addresses, h1b,
   * p1 and p2 none.
   */
  readonly r1: NatRouter
  readonly h1a: NatHost
  readonly h1b: NatHost
  /** router 2 (wan 10.77.22.1, LAN 192.168.2.0/24) with host h2 .10 */
  readonly r2: NatRouter
  readonly h2: NatHost
  /** runs `iptables ARGS` in a namespace; throws with its stderr */
  iptables(ns: string, args: string[]): void
  /**
   * A slow, lossy wan (on) or a clean one (off): 1 % of the packets that arrive from the wan at
   * p1, p2 and the routers are dropped (iptables statistic), and each wan host's wan side delays
   * what it sends by 50 ms (tc netem) where the kernel has netem. Says what it did.
   */
  impairWan(on: boolean): string
}

/**
 * Router 1's wan address. miniupnpd (like any UPnP-IGD router) refuses to map ports while its
 * wan address is private or reserved (RFC 1918, CGNAT, the documentation and benchmarking
 * ranges: "port forwarding is impossible"), and so does the port-mapping client (another NAT
 * beyond the router). So this one address looks global. It exists only on the lab's wan bridge,
 * in namespaces with no link to the root namespace and no default route: no packet to or from
 * it can leave the lab, and nothing outside the lab ever dials it.
 */
export const LAB_PUBLIC_WAN = '12.77.21.1'
const LAB_PUBLIC_NET = '12.77.21.0/24'

/** Whether iptables can be used (installed, and it works in a fresh namespace). */
function iptablesProblem(ns: string): string | null {
  const r = spawnSync('ip', ['netns', 'exec', ns, 'iptables', '-t', 'nat', '-L', '-n'], { encoding: 'utf8', timeout: 10_000 })
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return 'ip is missing'
  if (r.status !== 0) return `iptables does not work in a network namespace: ${(r.stderr ?? '').trim().split('\n')[0] || r.error?.message || 'not installed?'}`
  return null
}

/**
 * The NAT lab of the mesh's NAT tests: a "wan" bridge with two public members and two routers
 * that MASQUERADE their LANs (router 1: two hosts, router 2: one), each LAN its own bridge. The
 * routers forward LAN → wan and the replies, nothing the wan starts. No namespace is attached to
 * the root one, and nothing routes there. Or { skip: reason }.
 */
export function createNatLab(): { lab: NatLab } | { skip: string } {
  const begun = beginLab('wan')
  if ('skip' in begun) return begun
  const { id, created } = begun
  const wanNs = created[0]!
  const sh = (ns: string, cmd: string, args: string[]) => {
    const r = spawnSync('ip', ['netns', 'exec', ns, cmd, ...args], { encoding: 'utf8', timeout: 10_000 })
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} in ${ns}: ${(r.stderr ?? '').trim() || r.error?.message || 'failed'}`)
  }
  try {
    addBridge(wanNs)
    const problem = iptablesProblem(wanNs)
    if (problem) throw new Error(problem)
    let port = 0
    const wanHost = (name: string, ip: string): NatHost => {
      const ns = `${id}-${name}`
      addNamespace(ns, created)
      plugIntoBridge(ns, 'eth0', wanNs, `w${port++}`, ip)
      // each wan host on its own /24, all on one link: members on another network, as on the internet
      mustIp(['-n', ns, 'route', 'add', '10.77.0.0/16', 'dev', 'eth0'])
      if (ip !== LAB_PUBLIC_WAN) mustIp(['-n', ns, 'route', 'add', LAB_PUBLIC_NET, 'dev', 'eth0'])
      return { ns, ip, name }
    }
    const p1 = wanHost('p1', '10.77.1.10')
    const p2 = wanHost('p2', '10.77.2.10')
    const router = (name: string, wanIp: string, n: number): NatRouter => {
      const r = wanHost(name, wanIp)
      const lanNs = `${id}-lan${n}`
      addNamespace(lanNs, created)
      addBridge(lanNs)
      const lanIp = `192.168.${n}.1`
      plugIntoBridge(r.ns, 'eth1', lanNs, 'vrtr', lanIp)
      sh(r.ns, 'sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1'])
      sh(r.ns, 'iptables', ['-t', 'nat', '-A', 'POSTROUTING', '-o', 'eth0', '-j', 'MASQUERADE'])
      sh(r.ns, 'iptables', ['-P', 'FORWARD', 'DROP'])
      sh(r.ns, 'iptables', ['-A', 'FORWARD', '-i', 'eth1', '-o', 'eth0', '-j', 'ACCEPT'])
      sh(r.ns, 'iptables', ['-A', 'FORWARD', '-i', 'eth0', '-o', 'eth1', '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT'])
      // what a port mapping lets in (miniupnpd's DNAT), as home routers' firewalls do
      sh(r.ns, 'iptables', ['-A', 'FORWARD', '-i', 'eth0', '-o', 'eth1', '-m', 'conntrack', '--ctstate', 'DNAT', '-j', 'ACCEPT'])
      return { ns: r.ns, wanIp, lanIp, lanSubnet: `192.168.${n}.0/24`, name }
    }
    const lanHost = (r: NatRouter, n: number, name: string, ip: string, ip6?: string): NatHost => {
      const ns = `${id}-${name}`
      addNamespace(ns, created)
      plugIntoBridge(ns, 'eth0', `${id}-lan${n}`, `h${port++}`, ip)
      mustIp(['-n', ns, 'route', 'add', 'default', 'via', r.lanIp])
      if (ip6) {
        mustIp(['-n', ns, '-6', 'addr', 'add', `${ip6}/64`, 'dev', 'eth0', 'nodad'])
        mustIp(['-n', ns, '-6', 'route', 'add', 'default', 'via', `2001:db8:${n}::1`])
      }
      return { ns, ip, name, ...(ip6 ? { ip6 } : {}) }
    }
    const r1 = router('r1', LAB_PUBLIC_WAN, 1)
    const r2 = router('r2', '10.77.22.1', 2)
    // IPv6 between the two LANs, routed without NAT (as providers hand out prefixes)
    for (const [r, n, other] of [[r1, 1, 2], [r2, 2, 1]] as const) {
      sh(r.ns, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.forwarding=1'])
      mustIp(['-n', r.ns, '-6', 'addr', 'add', `2001:db8:77::2${n}/64`, 'dev', 'eth0', 'nodad'])
      mustIp(['-n', r.ns, '-6', 'addr', 'add', `2001:db8:${n}::1/64`, 'dev', 'eth1', 'nodad'])
      mustIp(['-n', r.ns, '-6', 'route', 'add', `2001:db8:${other}::/64`, 'via', `2001:db8:77::2${other}`])
    }
    const h1a = lanHost(r1, 1, 'h1a', '192.168.1.10', '2001:db8:1::10')
    const h1b = lanHost(r1, 1, 'h1b', '192.168.1.11')
    const h2 = lanHost(r2, 2, 'h2', '192.168.2.10', '2001:db8:2::10')
    return {
      lab: {
        wanNs, p1, p2, r1, r2, h1a, h1b, h2,
        iptables: (ns, args) => sh(ns, 'iptables', args),
        impairWan(on) {
          const loss = ['-m', 'statistic', '--mode', 'random', '--probability', '0.01', '-m', 'comment', '--comment', 'meshcc-test-loss', '-j', 'DROP']
          let delayed = 0
          for (const h of [p1, p2, r1, r2]) {
            const chain = h === p1 || h === p2 ? 'INPUT' : 'FORWARD'
            sh(h.ns, 'iptables', [on ? '-I' : '-D', chain, '-i', 'eth0', ...loss])
            const tc = spawnSync('ip', ['netns', 'exec', h.ns, 'tc', 'qdisc', on ? 'add' : 'del', 'dev', 'eth0', 'root', ...(on ? ['netem', 'delay', '50ms'] : [])], { encoding: 'utf8', timeout: 10_000 })
            if (tc.status === 0) delayed++
          }
          return `1 % loss on arrival from the wan at p1, p2, r1, r2; ${delayed === 4 ? '50 ms delay (tc netem) on each wan side' : delayed === 0 ? 'no delay: this kernel has no tc netem (sch_netem)' : `delay on ${delayed} of 4 wan sides`}`
        },
        ...labControls(created)
      }
    }
  } catch (err) {
    for (const ns of created) deleteNamespace(ns)
    return { skip: (err as Error).message }
  }
}

/** A UPnP-IGD / NAT-PMP server (Debian's miniupnpd) on a NAT lab router. */
export interface Miniupnpd {
  pid: number
  /** miniupnpd's lease file: one line per mapping, PROTO:extport:client:intport:expiry(s since boot or epoch):description */
  leaseFile: string
  /** the mappings in the lease file */
  leases(): Array<{ proto: string; extPort: number; client: string; intPort: number; expires: number }>
  /** the DNAT rules miniupnpd keeps in the router's nftables (its prerouting chain), one string */
  dnatRules(): string
  /** its output so far (it runs in the foreground with -d) */
  output(): string
  /** SIGTERM by PID, waits for the exit */
  stop(): Promise<void>
}

/**
 * Starts miniupnpd on `router` with UPnP-IGD and NAT-PMP on its LAN side and its wan side as the
 * external interface. Its nftables chains are made first as Debian's nft_init.sh makes them
 * (table inet filter: forward, prerouting and postrouting hooks jumping to miniupnpd's own
 * chains); the lab's iptables FORWARD policy stays in charge and lets the DNATed connections in.
 * Files go to `dir`. Throws with miniupnpd's output when it does not come up.
 */
export async function startMiniupnpd(lab: NatLab, router: NatRouter, dir: string): Promise<Miniupnpd> {
  const rules = join(dir, 'miniupnpd.nft')
  writeFileSync(rules, [
    'table inet filter {',
    '  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }',
    '  chain miniupnpd { }',
    '  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }',
    '  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }',
    '  chain prerouting_miniupnpd { }',
    '  chain postrouting_miniupnpd { }',
    '}', ''
  ].join('\n'))
  const nft = lab.run(router, 'nft', ['-f', rules])
  if (nft.status !== 0) throw new Error(`nft -f ${rules} in ${router.ns}: ${nft.stderr.trim()}`)
  const conf = join(dir, 'miniupnpd.conf')
  const leaseFile = join(dir, 'miniupnpd.leases')
  const pidFile = join(dir, 'miniupnpd.pid')
  writeFileSync(conf, [
    'ext_ifname=eth0',
    'listening_ip=eth1',
    'http_port=0',
    'enable_upnp=yes',
    'enable_natpmp=yes',
    // clients map ports only to their own address
    'secure_mode=yes',
    'system_uptime=no',
    'notify_interval=60',
    'uuid=3e9b2a2c-5f1e-4d1c-9a3e-6d2f7c1b0a11',
    `lease_file=${leaseFile}`,
    `allow 1024-65535 ${router.lanSubnet} 1024-65535`,
    'deny 0-65535 0.0.0.0/0 0-65535',
    ''
  ].join('\n'))
  let out = ''
  const child = lab.spawn(router, 'miniupnpd', ['-f', conf, '-d', '-P', pidFile], { stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout?.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr?.on('data', (d: Buffer) => { out += d.toString() })
  const end = Date.now() + 10_000
  while (Date.now() < end && !/HTTP listening on port/.test(out) && child.exitCode === null) await new Promise((r) => setTimeout(r, 100))
  if (!/HTTP listening on port/.test(out) || !existsSync(pidFile)) {
    child.kill('SIGKILL')
    throw new Error(`miniupnpd did not start in ${router.ns}: ${out.trim().split('\n').slice(-5).join(' | ')}`)
  }
  const pid = Number(readFileSync(pidFile, 'utf8').trim())
  return {
    pid,
    leaseFile,
    leases() {
      if (!existsSync(leaseFile)) return []
      return readFileSync(leaseFile, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => {
        const [proto, ext, client, int, expires] = l.split(':')
        return { proto: proto ?? '', extPort: Number(ext), client: client ?? '', intPort: Number(int), expires: Number(expires) }
      })
    },
    dnatRules: () => lab.run(router, 'nft', ['list', 'chain', 'inet', 'filter', 'prerouting_miniupnpd']).stdout,
    output: () => out,
    async stop() {
      if (child.exitCode !== null) return
      const exited = new Promise((r) => child.once('exit', r))
      try { process.kill(pid, 'SIGTERM') } catch { /* gone */ }
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))])
    }
  }
}
