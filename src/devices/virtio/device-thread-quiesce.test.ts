/**
 * Quiescing a device on its real device thread (VirtioDeviceHandle.quiesce,
 * device-runner.ts), with virtio-rng played by a fake guest driver
 * (testing/device-loop-rig.ts): once quiesce() resolves the device serves
 * nothing more, every request it took is complete, requests posted while
 * quiesced wait in the ring and are all served after resume(), none lost
 * and none served twice; and the same holds over many cycles while another
 * thread floods the queue.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { VRING_DESC_F_WRITE } from "../../linux/abi.generated.js";
import { DeviceLoopRig, VIRTIO_V1 } from "./testing/device-loop-rig.js";
import type { UsedEntry } from "./testing/fake-driver.js";

const RNG = new URL("./rng.js", import.meta.url);
/** Hang-catching limit (generous: the machine may be loaded). */
const LIMIT_MS = 10_000;
const BUFFER = 4096;

test("a quiesced rng serves nothing; requests posted before and during quiesce are all served once after resume", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: RNG, name: "virtio-rng" });
  try {
    const drv = rig.newDriver(0, { queueSize: 64, heapBytes: 64 * BUFFER });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    // Heads, in the order posted: a head the device returned is free again, so it may be posted twice.
    const posted: number[] = [];
    const used: UsedEntry[] = [];
    // Mid-traffic: 32 requests and a kick, and the quiesce right behind them.
    for (let i = 0; i < 32; i++) posted.push(drv.addChain({ writable: [BUFFER] }));
    rig.kick(0);
    await rig.dev.quiesce();
    const atQuiesce = drv.usedIdx;
    used.push(...drv.popAllUsed());
    // What the device took before it quiesced is complete, nothing half-filled.
    for (const u of used) assert.equal(u.len, BUFFER, `request ${u.head} answered with ${u.len} bytes`);
    // Requests the guest posts while the device is quiesced.
    for (let i = 0; i < 16; i++) posted.push(drv.addChain({ writable: [BUFFER] }));
    rig.kick(0);
    await sleep(200);
    assert.equal(drv.usedIdx, atQuiesce, "the device served requests while quiesced");

    await rig.dev.resume();
    await rig.until(() => drv.usedIdx === posted.length, "every request served after resume", LIMIT_MS);
    await sleep(50);
    assert.equal(drv.usedIdx, posted.length, "a request was served twice");
    used.push(...drv.popAllUsed());
    const sorted = (heads: number[]) => [...heads].sort((a, b) => a - b);
    assert.deepEqual(sorted(used.map((u) => u.head)), sorted(posted));
    for (const u of used) assert.equal(u.len, BUFFER);
    assert.equal(rig.failureLog.count, 0, rig.failureLog.last.join("; "));
  } finally {
    await rig.stop();
  }
});

test("quiesce and resume 30 times while another thread floods the rng queue: used never moves while quiesced, no chain is lost", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: RNG, name: "virtio-rng" });
  try {
    const size = 64;
    const drv = rig.newDriver(0, { queueSize: size, heapBytes: 0 });
    const buf = rig.alloc(512);
    for (let i = 0; i < size; i++) drv.writeDescriptor(i, { addr: buf, len: 512, flags: VRING_DESC_F_WRITE, next: 0 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    const flood = await rig.flood(0, { heads: Array.from({ length: size }, (_, i) => i) });
    for (let cycle = 0; cycle < 30; cycle++) {
      await rig.until(() => flood.added > (cycle + 1) * size, `the flood to go on (cycle ${cycle})`, LIMIT_MS);
      await rig.dev.quiesce();
      const frozen = drv.usedIdx;
      await sleep(5);
      assert.equal(drv.usedIdx, frozen, `used moved while quiesced (cycle ${cycle})`);
      await rig.dev.resume();
    }
    const added = await flood.stop();
    await rig.until(() => drv.usedIdx === (added & 0xffff), "every chain the flood added to be served", LIMIT_MS);
    assert.equal(rig.failureLog.count, 0, rig.failureLog.last.join("; "));
  } finally {
    await rig.stop();
  }
});

test("quiesce() and resume() of a stopped device resolve at once", async () => {
  const rig = await DeviceLoopRig.start({ backendModule: RNG, name: "virtio-rng" });
  await rig.stop();
  await rig.dev.quiesce();
  await rig.dev.resume();
});
