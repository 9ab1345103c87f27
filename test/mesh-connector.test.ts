// The connector's dial backoff with real libp2p nodes on 127.0.0.1: a member whose dial failed
// is held back, unless it is named with an address the failed dial did not have.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:net'
import { multiaddr } from '@multiformats/multiaddr'
import { Connector } from '../src/mesh/connector.js'
import type { MeshLibp2p } from '../src/mesh/node.js'
import { captureLog, freshPsk, startMeshNode } from './helpers/mesh-node.js'

const nodes: MeshLibp2p[] = []
let connector: Connector | null = null
after(async () => {
  connector?.stop()
  await Promise.all(nodes.map((n) => n.stop()))
})

/** a 127.0.0.1 port nobody listens on (bound, then closed) */
async function closedPort(): Promise<number> {
  const srv = createServer()
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', res))
  const port = (srv.address() as { port: number }).port
  await new Promise<void>((res) => srv.close(() => res()))
  return port
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms))

test('a failed dial holds a member back for the same addresses, not for new ones', { timeout: 30_000 }, async () => {
  const lines: string[] = []
  const psk = freshPsk()
  const a = await startMeshNode({ psk, dht: false, log: captureLog(lines) })
  const b = await startMeshNode({ psk, dht: false, log: captureLog(lines) })
  nodes.push(a, b)
  connector = new Connector({ node: a, log: captureLog(lines), bootstrap: [], isDenied: () => false })
  const bid = b.peerId.toString()
  const dead = multiaddr(`/ip4/127.0.0.1/tcp/${await closedPort()}/p2p/${bid}`)
  const live = b.getMultiaddrs().find((m) => m.toString().startsWith('/ip4/127.0.0.1/'))!
  assert.ok(live, 'b listens on 127.0.0.1')

  // named with an address where nothing listens: the dial fails and the member is held back
  connector.consider(bid, [dead], 'exchange')
  assert.ok(connector.connecting(bid), 'the first naming starts a dial')
  for (let i = 0; i < 100 && connector.connecting(bid); i++) await sleep(50)
  assert.ok(!connector.connecting(bid), 'the dial ended')
  assert.equal(a.getConnections(b.peerId).length, 0)
  assert.ok(connector.dialFailure(bid) !== null, 'the failure holds further dials back')

  // the same address again, within the backoff: no dial
  connector.consider(bid, [dead], 'gossip')
  assert.ok(!connector.connecting(bid), 'the same address is not dialed again within the backoff')

  // an address the failed dial did not have: dialed at once, and it connects
  connector.consider(bid, [dead, live], 'exchange')
  assert.ok(connector.connecting(bid), 'a new address is dialed at once, backoff or not')
  for (let i = 0; i < 200 && a.getConnections(b.peerId).length === 0; i++) await sleep(50)
  assert.ok(a.getConnections(b.peerId).length > 0, 'a reached b at its new address')
  assert.equal(connector.dialFailure(bid), null, 'the success clears the backoff')
})
