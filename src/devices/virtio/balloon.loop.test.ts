/**
 * virtio-balloon in its real device thread (testing/device-loop-rig.ts): a
 * guest on other vCPUs that keeps re-adding inflate and deflate requests must
 * not keep the device thread from the host's setTarget/info requests or a
 * reset (finding 3 of issue 9).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { BALLOON_DEFLATE_QUEUE, BALLOON_INFLATE_QUEUE, BALLOON_MAX_PFNS_PER_REQUEST, BALLOON_PAGE_SIZE, BALLOON_QUEUE_SIZE, type BalloonInfo } from "./balloon.js";
import { DeviceLoopRig, LatencyLog, VIRTIO_V1 } from "./testing/device-loop-rig.js";

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
