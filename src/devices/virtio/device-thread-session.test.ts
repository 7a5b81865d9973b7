/**
 * How a device session ends, through the real device thread
 * (testing/device-loop-rig.ts, echo backend): QueueReady = 0 after DRIVER_OK
 * without VIRTIO_F_RING_RESET is a driver error that stops the device from
 * touching the rings at once and puts it in DEVICE_NEEDS_RESET (issue 9,
 * finding 6).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL,
} from "../../linux/abi.generated.js";
import { DeviceLoopRig, VIRTIO_V1 } from "./testing/device-loop-rig.js";

const ECHO = new URL("./testing/test-backend.js", import.meta.url);
const text = (s: string) => new TextEncoder().encode(s);

test("QueueReady = 0 after DRIVER_OK reads back 0, is a guest fault, and puts the device in NEEDS_RESET; a reset recovers", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: ECHO, name: "virtio-echo" });
  try {
    const drv = rig.newDriver(0, { queueSize: 16 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    drv.addChain({ readable: [text("before")], writable: [6] });
    rig.kick(0);
    await rig.until(() => drv.usedIdx === 1, "the queue works");
    const faults = rig.guestFaults;
    rig.mmio.w(VIRTIO_MMIO_QUEUE_SEL, 0);
    rig.mmio.w(VIRTIO_MMIO_QUEUE_READY, 0);
    // Linux's vm_del_vq reads QueueReady back and expects 0.
    assert.equal(rig.mmio.r(VIRTIO_MMIO_QUEUE_READY), 0);
    assert.equal(rig.guestFaults, faults + 1);
    await rig.until(() => rig.needsReset, "DEVICE_NEEDS_RESET");
    assert.ok(rig.ackInterrupts() & VIRTIO_MMIO_INT_CONFIG, "with a configuration change interrupt");
    await rig.until(() => rig.failureLog.count === 1, "the failure is reported");
    assert.match(rig.failureLog.last.at(-1)!, /stopped queue 0 while the device was live/);
    // The stopped queue is not served any more.
    drv.addChain({ readable: [text("after")], writable: [5] });
    rig.kick(0);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(drv.usedIdx, 1, "nothing served after the stop");
    // A reset and a fresh bring-up recover the device.
    const [fresh] = rig.bringUpAgain();
    await rig.untilReset();
    assert.equal(rig.status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    fresh!.addChain({ readable: [text("again")], writable: [5] });
    rig.kick(0);
    await rig.until(() => fresh!.usedIdx === 1, "the device works after the reset");
  } finally {
    await rig.stop();
  }
});

test("QueueReady = 0 before DRIVER_OK takes a queue down without a fault (Linux's error path)", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: ECHO, name: "virtio-echo" });
  try {
    rig.mmio.w(VIRTIO_MMIO_QUEUE_SEL, 0);
    rig.mmio.w(VIRTIO_MMIO_QUEUE_READY, 1);
    rig.mmio.w(VIRTIO_MMIO_QUEUE_READY, 0);
    assert.equal(rig.mmio.r(VIRTIO_MMIO_QUEUE_READY), 0);
    assert.equal(rig.guestFaults, 0);
  } finally {
    await rig.stop();
  }
});
