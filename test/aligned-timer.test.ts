// Timers on the wall clock's multiples of their period (src/util/aligned-timer.ts): the
// arithmetic, and real timers firing on the boundaries until stopped.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { everyAligned, msToNextMultiple } from '../src/util/aligned-timer.js'

test('the wait runs to the next multiple of the period, and never serves a boundary twice', () => {
  assert.equal(msToNextMultiple(1000, 5_000_250), 750)
  assert.equal(msToNextMultiple(1000, 5_000_000), 1000)
  assert.equal(msToNextMultiple(2000, 7_001), 999)
  // fired a hair before the boundary it served (clocks differ slightly): the next one, not again now
  assert.equal(msToNextMultiple(1000, 5_999_995), 1005)
})

test('an aligned timer fires on each multiple of its period until stopped', async () => {
  const period = 200
  const fired: number[] = []
  await new Promise<void>((resolve) => {
    const t = everyAligned(period, () => {
      fired.push(Date.now())
      if (fired.length === 4) { t.stop(); resolve() }
    })
  })
  for (const at of fired) {
    // a timer fires at or after its time; on a busy machine some ms late
    assert.ok(at % period < 60, `fired ${at % period} ms past a multiple of ${period}: ${fired.map((f) => f % period).join(', ')}`)
  }
  for (let i = 1; i < fired.length; i++) assert.ok(fired[i]! - fired[i - 1]! >= period * 0.9, 'one firing per period')
  const count = fired.length
  await new Promise((r) => setTimeout(r, period * 2))
  assert.equal(fired.length, count, 'a stopped timer does not fire')
})
