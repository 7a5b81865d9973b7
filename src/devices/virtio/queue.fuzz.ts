/**
 * Long hostile-driver run for SplitQueue: `npm run fuzz:virtio` (10^6 actions).
 * The same checks as queue.property.test.ts (see testing/fake-driver-hostile.ts),
 * ten times longer. Options: --actions N (default 1000000), --seed S (default random).
 * Exits 1 with fast-check's counterexample and seed on the first violation.
 */
import { parseArgs } from "node:util";
import fc from "fast-check";
import { GuestMemory } from "../../memory/guest-memory.js";
import { arbQueueScenario, newHostileStats, runQueueScenario, spaceOf } from "./testing/fake-driver-hostile.js";

const { values } = parseArgs({ options: { actions: { type: "string", default: "1000000" }, seed: { type: "string" } } });
const target = Number(values.actions);
const seed = values.seed !== undefined ? Number(values.seed) : Date.now() ^ (Math.random() * 2 ** 31);
const mem = GuestMemory.create([{ guestBase: 0, size: 0x8000 }, { guestBase: 0x10000, size: 0x2000 }]);
const stats = newHostileStats();
const arb = arbQueueScenario(spaceOf(mem), 40, 200);
const t0 = performance.now();
let round = 0;
try {
  while (stats.actions < target) {
    // Rounds of 2000 scenarios, each with its own seed so any failure can be replayed.
    const roundSeed = (seed + round++) | 0;
    fc.assert(fc.property(arb, (s) => runQueueScenario(mem, s, stats)), { numRuns: 2000, seed: roundSeed });
    console.log(`${stats.actions} actions, ${stats.chainsPopped} chains popped, ${((performance.now() - t0) / 1000).toFixed(1)} s (seed ${roundSeed})`);
  }
  console.log(`fuzz:virtio passed: ${JSON.stringify(stats)}`);
} catch (e) {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
} finally {
  mem.dispose();
}
