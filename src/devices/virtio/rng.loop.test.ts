/**
 * virtio-rng in its real device thread (testing/device-loop-rig.ts): a guest
 * on another vCPU that re-adds every buffer as soon as it is filled must not
 * keep the device thread from its control eventfd (finding 3 of issue 9).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from "../../linux/abi.generated.js";
import { RATE_LIMITER_REQUEST_INFO } from "./rate-limiter.js";
import { RNG_QUEUE_SIZE } from "./rng.js";
import type { GuestMemory } from "../../memory/guest-memory.js";
import { DeviceLoopRig, LatencyLog, VIRTIO_V1, actionCount, arbLoopAction } from "./testing/device-loop-rig.js";
import { LOOP_PROPERTY_BOUNDS, formatReport, runLoopProperty } from "./testing/device-loop-property.js";
import type { FakeDriver } from "./testing/fake-driver.js";

const RNG = new URL("./rng.js", import.meta.url);
/** Hang-catching limit for one answer (generous: the machine may be loaded). */
const ANSWER_LIMIT_MS = 10_000;

test("a guest flooding the rng queue from another thread does not starve control requests or a reset", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: RNG, name: "virtio-rng" });
  try {
    const drv = rig.newDriver(0, { queueSize: RNG_QUEUE_SIZE, heapBytes: 0 });
    // Every descriptor is 512 writable bytes of one shared buffer, chained to the next: the
    // chain from head h has 256 - h descriptors (tails are shared), so each request costs
    // up to the device's 64 KiB cap in many small fills.
    const buf = rig.alloc(512);
    for (let i = 0; i < RNG_QUEUE_SIZE; i++) {
      const last = i === RNG_QUEUE_SIZE - 1;
      drv.writeDescriptor(i, { addr: buf, len: 512, flags: VRING_DESC_F_WRITE | (last ? 0 : VRING_DESC_F_NEXT), next: last ? 0 : i + 1 });
    }
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    const flood = await rig.flood(0, { heads: Array.from({ length: RNG_QUEUE_SIZE }, (_, i) => i) });
    await rig.until(() => flood.added > 2 * RNG_QUEUE_SIZE, "the flood is under way");
    const lat = new LatencyLog();
    for (let i = 0; i < 5; i++) {
      // Its rate limiter's configuration, answered by the device thread between passes.
      const r = await rig.timedRequest(RATE_LIMITER_REQUEST_INFO, { which: "io" }, ANSWER_LIMIT_MS);
      assert.deepEqual({ ok: r.ok, value: r.value }, { ok: true, value: {} });
      lat.add(r.ms);
    }
    const added = flood.added;
    await rig.until(() => flood.added > added + RNG_QUEUE_SIZE, "the flood still goes on", ANSWER_LIMIT_MS);
    const resetMs = await rig.timedReset(ANSWER_LIMIT_MS);
    console.log(`${lat.report("virtio-rng requests under flood")}; reset ${resetMs.toFixed(1)} ms; ${flood.added} chains added`);
    assert.equal(rig.failureLog.count, 0, rig.failureLog.last.join("; "));
  } finally {
    await rig.stop();
  }
});

test(`a hostile driver (${actionCount()} actions, a second thread kicking) leaves virtio-rng answering, bounded and serving`, async () => {
  const rig = await DeviceLoopRig.start({ backendModule: RNG, name: "virtio-rng", memoryBytes: 16 << 20 });
  try {
    rig.bringUp({ features: VIRTIO_V1, drivers: [rig.newDriver(0, { queueSize: 64, heapBytes: 64 * 1024 })] });
    const report = await runLoopProperty({
      rig, label: "virtio-rng", actions: actionCount(), seed: 9001,
      arb: arbLoopAction(rig.mem, { queues: 1, maxQueueSize: 64, configBytes: 4 }),
      bounds: LOOP_PROPERTY_BOUNDS,
      control: { op: "info" }, progress: process.env.FLINT_FUZZ_ACTIONS ? (l) => console.log(l) : undefined,
      flood: { queue: 0, heads: (drv) => wellFormedHeads(rig.mem, drv, 8) },
      wellFormed: async () => {
        const [drv] = rig.bringUpAgain();
        await rig.untilReset(undefined, ANSWER_LIMIT_MS);
        drv!.addChain({ writable: [32] });
        rig.kick(0);
        await rig.until(() => drv!.usedIdx === 1, "a well-formed request completes", ANSWER_LIMIT_MS);
        assert.equal(drv!.popUsed()!.len, 32);
      },
    });
    console.log(formatReport("virtio-rng", report));
  } finally {
    await rig.stop();
  }
});

/** Writes `n` one-buffer writable chains (heads 0..n-1) into `drv`'s rings, for the second thread to re-add. */
function wellFormedHeads(mem: GuestMemory, drv: FakeDriver, n: number): number[] {
  const buf = drv.heapStart;
  for (let i = 0; i < n; i++) drv.writeDescriptor(i, { addr: buf + 64 * i, len: 64, flags: VRING_DESC_F_WRITE, next: 0 });
  void mem;
  return Array.from({ length: n }, (_, i) => i);
}
