// Real meshcc daemons in the NAT lab (netns.ts createNatLab), for test/mesh-nat.test.ts and
// scripts/bench-nat.ts: p1 and p2 public, relaying, building nothing; h1a and h1b behind
// router 1 with mDNS; h2 behind router 2. Every daemon bootstraps from p1 (p1 from nobody),
// listens on the default port, has 1 core, local_slots = 0 and speed 100; only h1b offers its
// core at first (onlyBuilder switches that live). The identities are made before the start.
// h1b has [mesh] port_mapping = false: when router 1 runs miniupnpd, h1a maps a port on it and
// h1b stays relayed.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { readFileSync, writeFileSync } from 'node:fs'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { createInstance, MESHCC, runCommand, type Instance } from './meshcc.js'
import type { NatHost, NatLab } from './netns.js'
import type { DaemonStatus } from '../../src/cli/mesh-commands.js'
import type { MemberStatus } from '../../src/daemon/mesh-service.js'
import { adminRequest } from '../../src/launcher/client.js'
import { loadConfig } from '../../src/config.js'
import { generateMeshKey, loadOrCreateIdentity, writeMeshKey } from '../../src/mesh/keys.js'

/** the default port (the lab's daemons listen where the config's default says) */
export const NAT_PORT = 10650
export type Name = 'p1' | 'p2' | 'h1a' | 'h1b' | 'h2'
export const NAMES: readonly Name[] = ['p1', 'p2', 'h1a', 'h1b', 'h2']
export interface Member { name: Name; host: NatHost; inst: Instance; id: string }

/** The daemon's status over its socket, never starting one (a start here would be outside the lab). */
export async function statusOf(m: Member): Promise<DaemonStatus | undefined> {
  try {
    return JSON.parse(await adminRequest(loadConfig({ MESHCC_CONF: m.inst.conf }), 'status', { autostart: false, timeoutMs: 10_000 })) as DaemonStatus
  } catch {
    return undefined
  }
}

/** Polls `fn` every 300 ms until it returns a value, at most `ms`; undefined when the time is up. */
export async function until<T>(ms: number, fn: () => Promise<T | undefined>): Promise<T | undefined> {
  const end = Date.now() + ms
  for (let i = 0; i < 1000 && Date.now() < end; i++) {
    const v = await fn()
    if (v !== undefined) return v
    await new Promise((r) => setTimeout(r, 300))
  }
  return undefined
}

export interface NatMeshOptions {
  /** extra environment per daemon */
  env?: Partial<Record<Name, Record<string, string>>>
}

export interface NatMesh {
  members: Map<Name, Member>
  /** starts the member's daemon again (after killDaemon) */
  startDaemon(n: Name): void
  m(n: Name): Member
  /** SIGKILL by the pid in the daemon's own pid file (a member dying: its sockets close) */
  killDaemon(n: Name): void
  /** SIGTERM by the pid in its pid file (the daemon shuts down as on a stop); waits up to 30 s for its exit */
  stopDaemon(n: Name): Promise<void>
  /** how `from` sees `to` */
  link(from: Name, to: Name): Promise<MemberStatus | undefined>
  /** makes `builder` the only member that takes jobs, and waits until `client` sees so */
  onlyBuilder(builder: Name, client: Name): Promise<void>
  /** one line per member: reachability, relays, links */
  summary(): Promise<string>
}

/** Writes the configs, starts the five daemons in their namespaces; `instances` collects what to stop. */
export async function startNatMesh(lab: NatLab, instances: Instance[], opts: NatMeshOptions = {}): Promise<NatMesh> {
  const keyDir = createInstance('', 'nat-key')
  instances.push(keyDir)
  const keyFile = join(keyDir.dir, 'mesh.key')
  writeMeshKey(keyFile, generateMeshKey())
  const hosts: Record<Name, NatHost> = { p1: lab.p1, p2: lab.p2, h1a: lab.h1a, h1b: lab.h1b, h2: lab.h2 }
  const members = new Map<Name, Member>()
  for (const name of NAMES) {
    const inst = createInstance('', `nat-${name}`, 'enabled = true')
    instances.push(inst)
    const id = peerIdFromPrivateKey(await loadOrCreateIdentity(join(inst.dir, 'identity.key'))).toString()
    members.set(name, { name, host: hosts[name], inst, id })
  }
  const m = (n: Name) => members.get(n)!
  const p1Boot = `/ip4/${lab.p1.ip}/tcp/${NAT_PORT}/p2p/${m('p1').id}`
  for (const name of NAMES) {
    const { inst } = m(name)
    const relayOnly = name === 'p1' || name === 'p2'
    writeFileSync(inst.conf, [
      '[daemon]', `socket = "${inst.socket}"`, 'idle_timeout = 0',
      '[cache]', `dir = "${inst.cacheDir}"`,
      '[log]', 'level = "debug"',
      '[build]', 'cores = 1', 'local_slots = 0', 'speed = 100', `offer = "${name === 'h1b' ? 'always' : 'never'}"`,
      // the default listen addresses: IPv4 and IPv6 on NAT_PORT
      '[mesh]', `key_file = "${keyFile}"`, `name = "${name}"`,
      // the public members find each other through the bootstrap address like everyone else
      `bootstrap = [${name === 'p1' ? '' : `"${p1Boot}"`}]`,
      `mdns = ${!relayOnly}`,
      ...(name === 'h1b' ? ['port_mapping = false'] : []),
      ''
    ].join('\n'))
  }
  const startDaemon = (n: Name) => { lab.spawn(m(n).host, MESHCC, ['daemon'], { env: { ...m(n).inst.env, ...opts.env?.[n] }, stdio: 'ignore' }) }
  for (const n of NAMES) startDaemon(n)

  const link = async (from: Name, to: Name) => (await statusOf(m(from)))?.mesh?.members.find((p) => p.peer_id === m(to).id)
  return {
    members,
    startDaemon,
    m,
    link,
    killDaemon(n) {
      const pid = m(n).inst.daemonPid()
      assert.ok(pid, `${n} has a pid file`)
      process.kill(pid, 'SIGKILL')
    },
    async stopDaemon(n) {
      const pid = m(n).inst.daemonPid()
      assert.ok(pid, `${n} has a pid file`)
      process.kill(pid, 'SIGTERM')
      const gone = await until(30_000, async () => { try { process.kill(pid, 0); return undefined } catch { return true } })
      assert.ok(gone, `${n}'s daemon exits within 30 s of SIGTERM`)
    },
    async onlyBuilder(builder, client) {
      for (const n of ['h1a', 'h1b', 'h2'] as Name[]) {
        const conf = readFileSync(m(n).inst.conf, 'utf8')
        const want = `offer = "${n === builder ? 'always' : 'never'}"`
        if (conf.includes(want)) continue
        writeFileSync(m(n).inst.conf, conf.replace(/offer = "\w+"/, want))
        const r = await runCommand(MESHCC, ['--reload'], { env: m(n).inst.env, timeoutMs: 30_000 })
        assert.equal(r.code, 0, `reload ${n}: ${r.stderr}`)
      }
      const seen = await until(20_000, async () => {
        const s = await statusOf(m(client))
        const takers = s?.mesh?.members.filter((p) => !p.self && p.accept !== 'never' && p.free_slots > 0 && p.held_back_ms === 0).map((p) => p.name)
        return takers?.join() === builder ? takers : undefined
      })
      assert.ok(seen, `${client} sees ${builder} as the only builder`)
    },
    async summary() {
      return (await Promise.all([...members.values()].map(async (x) => {
        const s = await statusOf(x)
        if (!s?.mesh) return `${x.name}: ${s ? `no mesh (${s.mesh_note})` : 'no answer'}`
        return `${x.name}: ${s.mesh.reachability?.state} [${s.mesh.reachability?.detail}] relays=${s.mesh.reachability?.relays.join(',')} | ` +
          s.mesh.members.filter((p) => !p.self).map((p) => `${p.name}:${p.connection}${p.relay_via ? `@${p.relay_via}` : ''}${p.dial_error ? `(${p.dial_error})` : ''}`).join(' ')
      }))).join('\n')
    }
  }
}
