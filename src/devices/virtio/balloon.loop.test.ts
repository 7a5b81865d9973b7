/**
 * virtio-balloon in its real device thread (testing/device-loop-rig.ts): a
 * guest on other vCPUs that keeps re-adding inflate and deflate requests must
 * not keep the device thread from the host's setTarget/info requests or a
 * reset (finding 3 of issue 9).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { BALLOON_DEFLATE_QUEUE, BALLOON_INFLATE_QUEUE, BALLOON_MAX_PFNS_PER_REQUEST, BALLOON_PAGE_SIZE, BALLOON_QUEUE_SIZE, type BalloonInfo } from "./balloon.js";
import { VIRTIO_BALLOON_F_STATS_VQ } from "../../linux/abi.generated.js";
import { DeviceLoopRig, LatencyLog, VIRTIO_V1, actionCount, arbLoopAction } from "./testing/device-loop-rig.js";
import { LOOP_PROPERTY_BOUNDS, formatReport, runLoopProperty } from "./testing/device-loop-property.js";

const BALLOON = new URL("./balloon.js", import.meta.url);
const MIB = 1 << 20;
/** Hang-catching limit for one answer (generous: the machine may be loaded). */
const ANSWER_LIMIT_MS = 10_000;

test("a guest flooding the inflate and deflate queues from two threads does not starve setTarget/info or a reset", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: BALLOON, name: "virtio-balloon", memoryBytes: 64 * MIB });
  try {
    const inflate = rig.newDriver(BALLOON_INFLATE_QUEUE, { queueSize: BALLOON_QUEUE_SIZE, heapBytes: 0 });
    const deflate = rig.newDriver(BALLOON_DEFLATE_QUEUE, { queueSize: BALLOON_QUEUE_SIZE, heapBytes: 0 });
    // One list of the most PFNs a request may carry, every other page from 16 MiB up (no two
    // contiguous: one madvise each), shared by every request on both queues.
    const list = rig.alloc(4 * BALLOON_MAX_PFNS_PER_REQUEST);
    for (let i = 0; i < BALLOON_MAX_PFNS_PER_REQUEST; i++) rig.mem.writeU32(list + 4 * i, (16 * MIB) / BALLOON_PAGE_SIZE + 2 * i);
    for (const drv of [inflate, deflate]) {
      for (let i = 0; i < BALLOON_QUEUE_SIZE; i++) drv.writeDescriptor(i, { addr: list, len: 4 * BALLOON_MAX_PFNS_PER_REQUEST, flags: 0, next: 0 });
    }
    rig.bringUp({ features: VIRTIO_V1, drivers: [inflate, deflate] });
    const heads = Array.from({ length: BALLOON_QUEUE_SIZE }, (_, i) => i);
    const floods = [await rig.flood(BALLOON_INFLATE_QUEUE, { heads }), await rig.flood(BALLOON_DEFLATE_QUEUE, { heads })];
    await rig.until(() => floods[0]!.added + floods[1]!.added > 4 * BALLOON_QUEUE_SIZE, "the floods are under way", ANSWER_LIMIT_MS);
    const lat = new LatencyLog();
    for (let mib = 1; mib <= 4; mib++) {
      const set = await rig.timedRequest("setTarget", { targetMib: mib }, ANSWER_LIMIT_MS);
      assert.equal(set.ok, true, String(set.value));
      assert.equal((set.value as BalloonInfo).targetMib, mib);
      const info = await rig.timedRequest("info", undefined, ANSWER_LIMIT_MS);
      assert.equal(info.ok, true, String(info.value));
      assert.ok((info.value as BalloonInfo).metrics.inflatedPages > 0, "the floods inflate");
      lat.add(set.ms);
      lat.add(info.ms);
    }
    // Neither queue starves the other: both floods keep going.
    const before = floods.map((f) => f.added);
    await rig.until(() => floods.every((f, i) => f.added > before[i]! + BALLOON_QUEUE_SIZE), "both floods progress", ANSWER_LIMIT_MS);
    const resetMs = await rig.timedReset(ANSWER_LIMIT_MS);
    console.log(`${lat.report("virtio-balloon requests under flood")}; reset ${resetMs.toFixed(1)} ms; ${floods[0]!.added} + ${floods[1]!.added} requests added`);
    assert.equal(rig.failureLog.count, 0, rig.failureLog.last.join("; "));
  } finally {
    await rig.stop();
  }
});

test(`a hostile driver on the inflate and stats queues (${actionCount()} actions, a second thread kicking) leaves deflate requests and setTarget/info served, memory bounded`, async () => {
  const rig = await DeviceLoopRig.start({ backendModule: BALLOON, name: "virtio-balloon", memoryBytes: 16 * MIB });
  try {
    const features = VIRTIO_V1 | (1n << BigInt(VIRTIO_BALLOON_F_STATS_VQ));
    rig.bringUp({
      features,
      drivers: [0, 1, 2].map((q) => rig.newDriver(q, { queueSize: 64, heapBytes: 64 * 1024 })),
    });
    const page = (addr: number) => addr / BALLOON_PAGE_SIZE;
    const report = await runLoopProperty({
      rig, label: "virtio-balloon", actions: actionCount(), seed: 4242,
      // Hostile actions on queue 0 (inflate) and, mapped, queue 2 (stats); queue 1 stays well-formed.
      arb: arbLoopAction(rig.mem, { queues: 2, maxQueueSize: 64, configBytes: 8 }).map((a) => ("queue" in a && a.queue === 1 ? { ...a, queue: 2 } : a)),
      bounds: LOOP_PROPERTY_BOUNDS,
      control: { op: "info" }, progress: process.env.FLINT_FUZZ_ACTIONS ? (l) => console.log(l) : undefined,
      // The second thread re-adds inflate requests of one PFN list (the top 1 MiB of guest RAM).
      flood: {
        queue: BALLOON_INFLATE_QUEUE, heads: (drv) => {
          const list = drv.heapStart;
          for (let i = 0; i < 64; i++) rig.mem.writeU32(list + 4 * i, page(15 * MIB) + i);
          for (let i = 0; i < 8; i++) drv.writeDescriptor(i, { addr: list, len: 256, flags: 0, next: 0 });
          return [0, 1, 2, 3, 4, 5, 6, 7];
        },
      },
      wellFormed: async () => {
        const set = await rig.timedRequest("setTarget", { targetMib: 1 }, ANSWER_LIMIT_MS);
        assert.equal(set.ok, true, String(set.value));
        if (rig.needsReset) {
          rig.bringUpAgain();
          await rig.untilReset(undefined, ANSWER_LIMIT_MS);
        }
        const drv = rig.drivers[BALLOON_DEFLATE_QUEUE]!;
        const before = drv.usedIdx;
        const pfns = new Uint8Array(16);
        for (let i = 0; i < 4; i++) new DataView(pfns.buffer).setUint32(4 * i, page(14 * MIB) + i, true);
        drv.addChain({ readable: [pfns] });
        rig.kick(BALLOON_DEFLATE_QUEUE);
        await rig.until(() => drv.usedIdx !== before, "a well-formed deflate request completes", ANSWER_LIMIT_MS);
        drv.popAllUsed();
      },
    });
    console.log(formatReport("virtio-balloon", report));
  } finally {
    await rig.stop();
  }
});
