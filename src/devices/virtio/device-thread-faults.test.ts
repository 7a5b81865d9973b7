/**
 * Guest faults from a device thread: counted per device in the shared state,
 * posted to the main thread only the first few times, then as summaries
 * (issue 9, finding 2: one postMessage per fault let a guest grow the host).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { GUEST_FAULT_LOG_FIRST } from "../fault-log.js";
import { RNG_QUEUE_SIZE } from "./rng.js";
import { DeviceLoopRig, MemoryWatch, VIRTIO_V1 } from "./testing/device-loop-rig.js";

const RNG = new URL("./rng.js", import.meta.url);
const FAULTS = 50_000;

test("a guest faulting 50 000 times gets every fault counted and at most a few messages a second posted", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: RNG, name: "virtio-rng" });
  try {
    const drv = rig.newDriver(0, { queueSize: RNG_QUEUE_SIZE, heapBytes: 0 });
    // Every request is a device-readable buffer: a guest fault each (virtio-rng wants writable ones).
    const buf = rig.alloc(16);
    for (let i = 0; i < RNG_QUEUE_SIZE; i++) drv.writeDescriptor(i, { addr: buf, len: 16, flags: 0, next: 0 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    const watch = new MemoryWatch("virtio-rng faults", { heapGrowthBytes: 32 << 20, rssGrowthBytes: 128 << 20 });
    const t0 = performance.now();
    const flood = await rig.flood(0, { heads: Array.from({ length: RNG_QUEUE_SIZE }, (_, i) => i) });
    await rig.until(() => rig.guestFaults >= FAULTS, `${FAULTS} guest faults`, 60_000);
    await flood.stop();
    const seconds = (performance.now() - t0) / 1000;
    const faults = rig.guestFaults;
    // A summary at most every second, plus the first few.
    assert.ok(rig.deviceFaults.count <= GUEST_FAULT_LOG_FIRST + Math.ceil(seconds) + 2,
      `${rig.deviceFaults.count} messages for ${faults} faults in ${seconds.toFixed(1)} s`);
    watch.check();
    console.log(`${faults} faults in ${seconds.toFixed(1)} s: ${rig.deviceFaults.count} messages; ${watch.report()}`);
    await rig.dev.stop(); // the thread posts what it still summarises at stop
    assert.equal(rig.deviceFaultsReported, rig.guestFaults, "the reports account for every fault");
    assert.match(rig.deviceFaults.last.at(-1)!, /^\d+ more guest faults in virtio-rng, last: virtio-rng: request with 16 readable/);
  } finally {
    await rig.stop();
  }
});
