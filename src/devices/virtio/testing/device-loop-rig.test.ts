/**
 * The device-loop rig itself, over the echo backend: a chain goes through the
 * real device thread, a second thread floods the queue, a control request and
 * a reset are answered while it does, hostile actions run, and the memory
 * watch reports figures.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  DeviceLoopRig, LatencyLog, MemoryWatch, VIRTIO_V1, arbLoopAction, loopActions, memoryFigures,
} from "./device-loop-rig.js";

const ECHO = new URL("./test-backend.js", import.meta.url);
const text = (s: string) => new TextEncoder().encode(s);

test("a chain goes through the real device thread and comes back with an interrupt", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: ECHO, name: "virtio-echo" });
  try {
    const drv = rig.newDriver(0, { queueSize: 16 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    drv.addChain({ readable: [text("ping")], writable: [4] });
    rig.kick(0);
    assert.equal(rig.waitInterrupt(), 1n);
    assert.equal(new TextDecoder().decode(drv.popUsed()!.written), "ping");
    const f = memoryFigures();
    assert.ok(f.rssBytes > 0 && f.peakRssBytes >= f.rssBytes && f.heapUsedBytes > 0);
  } finally {
    await rig.stop();
  }
});

test("while a second thread floods a budgeted queue, requests and resets are answered", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: ECHO, backendOptions: { budget: 8 }, name: "virtio-echo" });
  try {
    const drv = rig.newDriver(0, { queueSize: 64, heapBytes: 1 << 20 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    const heads = Array.from({ length: 32 }, () => drv.addChain({ readable: [new Uint8Array(4096)], writable: [4096] }, false));
    const flood = await rig.flood(0, { heads });
    await rig.until(() => flood.added > 1000, "the flood is under way");
    const lat = new LatencyLog();
    for (let i = 0; i < 5; i++) {
      const r = await rig.timedRequest("info");
      assert.equal(r.ok, false, "the echo device takes no requests, but the refusal is an answer");
      lat.add(r.ms);
    }
    console.log(lat.report("echo requests under flood"));
    assert.ok(flood.added > 1000);
    await flood.stop();
    const ms = await rig.timedReset();
    console.log(`echo reset after flood: ${ms.toFixed(2)} ms`);
  } finally {
    await rig.stop();
  }
});

test("hostile actions run against the device thread and the device stays answerable", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: ECHO, backendOptions: { budget: 16 }, name: "virtio-echo", memoryBytes: 8 << 20 });
  try {
    rig.bringUp({ features: VIRTIO_V1, drivers: [rig.newDriver(0, { queueSize: 16 })] });
    const watch = new MemoryWatch("echo hostile", { heapGrowthBytes: 64 << 20, rssGrowthBytes: 256 << 20 });
    const arb = arbLoopAction(rig.mem, { queues: 1, maxQueueSize: 16 });
    let i = 0;
    for (const a of loopActions(arb, 2000, 42)) {
      await rig.apply(a);
      if (rig.needsReset && ++i % 3 === 0) await rig.apply({ kind: "reset", wait: true });
    }
    assert.equal((await rig.timedRequest("info")).ok, false);
    watch.check();
    console.log(watch.report());
    assert.ok(rig.guestFaults > 0, "a hostile driver causes guest faults");
  } finally {
    await rig.stop();
  }
});
