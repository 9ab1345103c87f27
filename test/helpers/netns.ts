// Network-namespace lab for tests that need a LAN (mDNS, later NAT): N host namespaces, each
// with one veth into a bridge that lives in its own namespace. Nothing is attached to the root
// namespace, so multicast never leaves the lab. Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN)
// and iproute2; createNetnsLab() reports why not instead of failing, so tests can t.skip().
//
//   const r = createNetnsLab(3)
//   if ('skip' in r) return t.skip(`cannot create network namespaces: ${r.skip}`)
//   try { ... r.lab.prefix(r.lab.hosts[0]) ... } finally { await r.lab.destroy() }
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process'

export interface NetnsHost {
  /** namespace name, for `ip netns exec` */
  ns: string
  /** the host's address on the lab bridge */
  ip: string
  iface: 'eth0'
}

export interface NetnsLab {
  readonly bridgeNs: string
  readonly hosts: NetnsHost[]
  readonly subnet: string
  /** command prefix that runs a program inside the host's namespace */
  prefix(host: NetnsHost): string[]
  /** spawns a program inside the host's namespace (killed by destroy) */
  spawn(host: NetnsHost, cmd: string, args: string[], opts?: SpawnOptions): ChildProcess
  /** runs a short command inside the host's namespace */
  run(host: NetnsHost, cmd: string, args: string[], timeoutMs?: number): { status: number | null; stdout: string; stderr: string }
  /** kills every process in the lab's namespaces (by PID) and deletes the namespaces */
  destroy(): Promise<void>
}

const allNamespaces = new Set<string>()
let labCounter = 0
let exitHookInstalled = false

function ip(args: string[], timeoutMs = 10_000): { ok: boolean; out: string; err: string; code: string | undefined } {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: timeoutMs })
  const code = (r.error as NodeJS.ErrnoException | undefined)?.code
  return { ok: r.status === 0 && !r.error, out: r.stdout ?? '', err: (r.stderr ?? '').trim() || (r.error?.message ?? ''), code }
}

function mustIp(args: string[]): void {
  const r = ip(args)
  if (!r.ok) throw new Error(`ip ${args.join(' ')}: ${r.err}`)
}

function pidsIn(ns: string): number[] {
  const r = ip(['netns', 'pids', ns])
  if (!r.ok) return []
  return r.out.split(/\s+/).filter((x) => /^\d+$/.test(x)).map(Number).filter((p) => p !== process.pid)
}

function killNamespaceProcesses(ns: string, signal: NodeJS.Signals): number {
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

/**
 * Creates the lab, or says why it cannot: { skip: reason }. Addresses are 10.231.0.10+i/24
 * (each lab has its own bridge namespace, so parallel labs do not clash).
 */
export function createNetnsLab(n: number): { lab: NetnsLab } | { skip: string } {
  const probe = ip(['-V'])
  if (probe.code === 'ENOENT') return { skip: 'the ip binary (iproute2) is not installed' }
  const id = `mcc${process.pid}x${labCounter++}`
  const bridgeNs = `${id}-br`
  const first = ip(['netns', 'add', bridgeNs])
  if (!first.ok) return { skip: `ip netns add failed: ${first.err || 'unknown error'}` }
  installExitHook()
  allNamespaces.add(bridgeNs)
  const hosts: NetnsHost[] = []
  const created = [bridgeNs]
  try {
    mustIp(['-n', bridgeNs, 'link', 'set', 'lo', 'up'])
    mustIp(['-n', bridgeNs, 'link', 'add', 'br0', 'type', 'bridge', 'mcast_snooping', '0'])
    mustIp(['-n', bridgeNs, 'link', 'set', 'br0', 'up'])
    for (let i = 0; i < n; i++) {
      const ns = `${id}-h${i}`
      mustIp(['netns', 'add', ns])
      allNamespaces.add(ns)
      created.push(ns)
      const addr = `10.231.0.${10 + i}`
      mustIp(['-n', ns, 'link', 'set', 'lo', 'up'])
      // both veth ends are created directly inside the lab namespaces, never in the root one
      mustIp(['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', `veth${i}`, 'netns', bridgeNs])
      mustIp(['-n', bridgeNs, 'link', 'set', `veth${i}`, 'master', 'br0'])
      mustIp(['-n', bridgeNs, 'link', 'set', `veth${i}`, 'up'])
      mustIp(['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0'])
      mustIp(['-n', ns, 'link', 'set', 'eth0', 'up'])
      mustIp(['-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', 'eth0']) // mDNS multicast
      hosts.push({ ns, ip: addr, iface: 'eth0' })
    }
  } catch (err) {
    for (const ns of created) deleteNamespace(ns)
    return { skip: (err as Error).message }
  }

  const children = new Set<ChildProcess>()
  let destroyed = false
  const lab: NetnsLab = {
    bridgeNs,
    hosts,
    subnet: '10.231.0.0/24',
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
  return { lab }
}

/** Namespaces this process created and has not deleted yet (tests assert it ends empty). */
export function liveNamespaces(): string[] {
  return [...allNamespaces]
}
