import assert from "node:assert/strict";
import { after, test } from "node:test";
import fc from "fast-check";
import { GuestMemory } from "../../memory/guest-memory.js";
import { readChain, writeChain } from "./chain-io.js";
import { vringNeedEvent } from "./queue.js";
import { FakeDriver } from "./testing/fake-driver.js";
import { arbChainSpec, arbQueueScenario, newHostileStats, runQueueScenario, spaceOf } from "./testing/fake-driver-hostile.js";

// Small memory with a gap, so whole-memory diffs after every action stay cheap:
// [0, 32 KiB) and [64 KiB, 72 KiB).
const mem = GuestMemory.create([{ guestBase: 0, size: 0x8000 }, { guestBase: 0x10000, size: 0x2000 }]);
after(() => mem.dispose());

/** Actions the CI run must reach (the fuzz script, `npm run fuzz:virtio`, does 10^6). */
const CI_ACTIONS = 100_000;

test("a hostile driver never makes the queue touch memory outside guest RAM or the used ring, or throw anything but QueueError", () => {
  const stats = newHostileStats();
  const arb = arbQueueScenario(spaceOf(mem), 40, 200);
  fc.assert(fc.property(arb, (scenario) => runQueueScenario(mem, scenario, stats)), { numRuns: 1300 });
  console.log(`# hostile queue: ${JSON.stringify(stats)}`);
  assert.ok(stats.actions >= CI_ACTIONS, `only ${stats.actions} actions ran`);
  // The generators must reach every refusal and plenty of successful traffic.
  for (const code of ["EQUEUELAYOUT", "EQUEUEINDEX", "EQUEUECHAIN", "EQUEUERANGE", "EQUEUEUSED"]) {
    assert.ok((stats.errors[code] ?? 0) > 10, `QueueError ${code} seen ${stats.errors[code] ?? 0} times`);
  }
  assert.ok(stats.chainsPopped > 5000 && stats.usedPushed > 2000 && stats.interrupts > 500, JSON.stringify(stats));
});

test("random well-formed requests round-trip through the queue byte for byte, across idx wraparound", () => {
  fc.assert(fc.property(
    fc.constantFrom(1, 2, 8, 16), fc.boolean(), fc.boolean(), fc.integer({ min: 0, max: 0xffff }),
    fc.array(fc.tuple(arbChainSpec({ maxBuffers: 6, indirect: true }), fc.uint8Array({ maxLength: 200 })), { minLength: 1, maxLength: 30 }),
    (size, indirect, eventIdx, start, requests) => {
      mem.fill(0, 0x8000, 0);
      const drv = new FakeDriver(mem, { base: 0, bytes: 0x8000, queueSize: 16 * size, features: { indirect, eventIdx } });
      const q = drv.createQueue();
      // Start both sides near the wraparound point: send `start` empty requests first (cheaply).
      for (let i = 0; i < start % 64 + (start > 0xff00 ? 0xff00 : 0); i++) {
        drv.addChain({ writable: [0] });
        q.pushUsed(q.pop()!.head, 0);
        drv.popUsed();
      }
      for (const [spec, reply] of requests) {
        const s = { ...spec, indirect: indirect && spec.indirect };
        if (!s.indirect && s.readable.length + s.writable.length > q.layout.size) continue;
        drv.addChain(s);
        const chain = q.pop()!;
        const payload = Buffer.concat(s.readable);
        assert.deepEqual(Buffer.from(readChain(mem, chain, 0, chain.readableBytes)), payload);
        assert.equal(chain.writableBytes, s.writable.reduce((a, b) => a + b, 0));
        const n = writeChain(mem, chain, 0, reply);
        assert.equal(n, Math.min(reply.length, chain.writableBytes));
        q.pushUsed(chain.head, n);
        const used = drv.popUsed()!;
        assert.equal(used.head, chain.head);
        assert.deepEqual(Buffer.from(used.written), Buffer.from(reply.subarray(0, n)));
      }
      assert.equal(drv.outstandingChains, 0);
      assert.equal(drv.freeDescriptors, q.layout.size);
    },
  ), { numRuns: 150 });
});

test("needsInterrupt agrees with Linux's vring_need_event for random used_event values and push counts", () => {
  fc.assert(fc.property(fc.array(fc.tuple(fc.nat(5), fc.integer({ min: -3, max: 8 })), { minLength: 1, maxLength: 60 }), (rounds) => {
    mem.fill(0, 0x8000, 0);
    const drv = new FakeDriver(mem, { base: 0, bytes: 0x8000, queueSize: 8, features: { eventIdx: true, indirect: false } });
    const q = drv.createQueue();
    let old = 0, first = true;
    for (const [pushes, eventOffset] of rounds) {
      for (let i = 0; i < pushes; i++) {
        drv.addChain({ writable: [1] });
        q.pushUsed(q.pop()!.head, 1);
      }
      drv.popAllUsed();
      drv.usedEvent = (old + eventOffset) & 0xffff;
      const want: boolean = pushes > 0 && (first || vringNeedEvent(drv.usedEvent, q.usedIdx, old));
      assert.equal(q.needsInterrupt(), want);
      first = false;
      old = q.usedIdx;
    }
  }), { numRuns: 300 });
});
