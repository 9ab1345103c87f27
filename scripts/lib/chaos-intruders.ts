// Connections to the builder's mesh port from outside the mesh: libp2p nodes of the project's
// own createMeshNode holding another mesh key, plain libp2p nodes with no key at all (tcp, noise,
// yamux, no private network), and raw junk over TCP. None may become a member; the members (the
// lab's two) must stay connected and served.
import { generateKeyPair } from '@libp2p/crypto/keys'
import { noise } from '@libp2p/noise'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { tcp } from '@libp2p/tcp'
import { yamux } from '@libp2p/yamux'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { connect } from 'node:net'
import { silentLogger } from '../../src/log.js'
import { createMeshNode } from '../../src/mesh/node.js'
import { meshIdFromKey } from '../../src/mesh/keys.js'
import { freshPsk } from '../../test/helpers/mesh-node.js'
import { daemonStatus, inParallel, type Rand, type Row } from './chaos-common.js'
import { hostileLab, type HostileLab } from './chaos-hostile-lab.js'

/** The builder's members other than itself. */
async function members(lab: HostileLab): Promise<string[]> {
  return ((await daemonStatus(lab.builder)).mesh?.members ?? []).filter((m) => !m.self).map((m) => m.peer_id).sort()
}

/** A libp2p node dials the builder: null when refused, else what happened. */
async function dialWith(lab: HostileLab, kind: 'other key' | 'no key'): Promise<{ peer: string; why: string | null }> {
  const privateKey = await generateKeyPair('Ed25519')
  const peer = peerIdFromPrivateKey(privateKey).toString()
  const node = kind === 'other key'
    ? await (async () => { const psk = freshPsk(); return createMeshNode({ privateKey, psk, meshId: meshIdFromKey(psk), listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, dht: false, isDenied: () => false, log: silentLogger }) })()
    : await createLibp2p({ privateKey, addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] })
  try {
    await node.dial(multiaddr(lab.builderAddr), { signal: AbortSignal.timeout(15_000) })
    return { peer, why: `a node with ${kind === 'other key' ? 'another mesh key' : 'no mesh key'} got a connection` }
  } catch {
    return { peer, why: null }
  } finally {
    await node.stop()
  }
}

/** Junk to the mesh port: null when the builder closed the connection without letting it in. */
function junk(lab: HostileLab, r: Rand): Promise<string | null> {
  const port = Number(/\/tcp\/(\d+)/.exec(lab.builderAddr)![1])
  const bytes = r.pick([
    () => r.bytes(r.range(1, 4096)),
    () => Buffer.from('/multistream/1.0.0\n/noise\n'), // libp2p's own opening, without the private network
    () => Buffer.concat([r.bytes(24), r.bytes(r.range(1, 2048))]), // a nonce, then what is not its cipher text
    () => Buffer.from('GET / HTTP/1.1\r\nhost: x\r\n\r\n')
  ])()
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port })
    const timer = setTimeout(() => { s.destroy(); resolve('the connection was still open after 30 s') }, 30_000)
    s.on('error', () => {})
    s.on('close', () => { clearTimeout(timer); resolve(null) })
    s.on('connect', () => s.write(bytes))
    s.on('data', () => {}) // the builder's nonce: read and ignored
  })
}

export const intruders: Row = {
  id: 'intruders',
  title: 'connections without the mesh key, with another key, and raw junk to the mesh port',
  mustShow: '0 accepted; members unaffected',
  trials: { full: 100, quick: 10 },
  unit: 'attempts of each kind',
  async run(env, rec) {
    const lab = await hostileLab(env)
    const before = await members(lab)
    const intruderIds = new Set<string>()
    let accepted = 0
    await inParallel(Array.from({ length: env.trials }, (_, i) => i), 8, async (i) => {
      await rec.trial(`attempt ${i}`, async () => {
        const r = env.rand.derive(`attempt ${i}`)
        const problems: string[] = []
        for (const kind of ['other key', 'no key'] as const) {
          const { peer, why } = await dialWith(lab, kind)
          intruderIds.add(peer)
          if (why) { accepted++; problems.push(why) }
        }
        const j = await junk(lab, r)
        if (j) problems.push(`junk: ${j}`)
        return problems.length > 0 ? problems.join('; ') : null
      })
    })
    const after = await members(lab)
    const status = await daemonStatus(lab.builder)
    const inside = after.filter((p) => intruderIds.has(p))
    if (inside.length > 0) rec.fail('the builder\'s members', `${inside.length} intruders among them`)
    if (JSON.stringify(after) !== JSON.stringify(before)) rec.fail('the builder\'s members', `${before.length} before, ${after.length} after`)
    const ordinary = await lab.ordinaryJob()
    if (ordinary) rec.fail('the ordinary job after', ordinary)
    const alive = await lab.builderAlive()
    if (alive) rec.fail('the builder', alive)
    const refused = status.mesh?.refused_peers.reduce((n, p) => n + p.count, 0) ?? 0
    rec.figure(`${accepted} of ${2 * rec.trials} nodes accepted, ${inside.length} intruders among the members, junk always closed; members ${before.length} before and ${after.length} after, an ordinary job byte-identical after; the builder counts ${refused} refused handshakes`)
    rec.note(`${env.trials} attempts (8 at a time), each: a node of the project's createMeshNode with a fresh identity and another mesh key, a plain libp2p node (tcp, noise, yamux) with no key, both dialing the builder's mesh address,`,
      'and a raw TCP connection sending junk (random bytes, libp2p\'s plain multistream opening, a 24-byte nonce followed by noise, an HTTP request), which the builder must close.',
      'The builder\'s members (its own status) are compared before and after; the lab\'s honest member then compiles an ordinary job through it.')
  }
}
