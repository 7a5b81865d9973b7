/**
 * virtio-rng saved and restored in its real device thread
 * (testing/snapshot-rig.ts): requests the guest posted before the snapshot
 * but the device had not served are served once by the restored device (and
 * by each clone), completed ones are never served again, the used ring goes
 * on at the right index, and new requests work.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_STATUS } from "../../linux/abi.generated.js";
import type { VirtioDeviceSavedState } from "./device-saved-state.js";
import { SetRig, type SetSnapshot } from "./testing/snapshot-rig.js";
import type { FakeDriver, UsedEntry } from "./testing/fake-driver.js";
import { VIRTIO_V1 } from "./testing/device-loop-rig.js";
import { probeAsLinux } from "./testing/mmio-access.js";
import type { VirtioDeviceConfig } from "./virtio-set.js";

const CONFIGS: VirtioDeviceConfig[] = [{ kind: "rng", options: {} }];
const BUFFER = 256;

/** The guest's part after a restore: the posted requests come back once, then a new one works. */
async function carriesOn(rig: SetRig, drv: FakeDriver, unserved: number[], usedBefore: number): Promise<void> {
  await rig.set.resume(); // the restored device runs, kicked once
  await rig.until(() => drv.usedIdx === ((usedBefore + unserved.length) & 0xffff), "the requests posted before the snapshot to be served");
  const used: UsedEntry[] = drv.popAllUsed(); // throws on a head served twice or never posted
  assert.deepEqual(used.map((u) => u.head).sort(), [...unserved].sort());
  for (const u of used) assert.equal(u.len, BUFFER);
  const head = drv.addChain({ writable: [BUFFER] });
  rig.kick(0, 0);
  await rig.until(() => drv.usedIdx === ((usedBefore + unserved.length + 1) & 0xffff), "a new request to be served");
  assert.deepEqual(drv.popAllUsed().map((u) => u.head), [head]);
}

test("a restored rng serves the requests posted before the snapshot once, goes on at the right used index, and so does each of two clones", async () => {
  let drv!: FakeDriver;
  const unserved: number[] = [];
  const snap = await SetRig.snapshotAfter(CONFIGS, async (a) => {
    drv = a.newDriver({ queueSize: 16 });
    a.bringUp(0, { drivers: [drv] });
    // Served and taken by the driver.
    for (let i = 0; i < 4; i++) drv.addChain({ writable: [BUFFER] });
    a.kick(0, 0);
    await a.until(() => drv.usedIdx === 4, "the first requests");
    assert.equal(drv.popAllUsed().length, 4);
    // Served, not yet taken by the driver (it sees them after the restore, once).
    for (let i = 0; i < 2; i++) unserved.push(drv.addChain({ writable: [BUFFER] }));
    a.kick(0, 0);
    await a.until(() => drv.usedIdx === 6, "the next requests");
    await a.set.quiesce();
    // Posted while the device is quiesced: its kick is in this VM's eventfd, which the snapshot does not keep.
    for (let i = 0; i < 3; i++) unserved.push(drv.addChain({ writable: [BUFFER] }));
    a.kick(0, 0);
  });
  const [rec] = snap.saved as VirtioDeviceSavedState[];
  assert.deepEqual({ nextAvail: rec!.queues![0]!.nextAvail, nextUsed: rec!.queues![0]!.nextUsed, inFlight: rec!.queues![0]!.inFlight }, { nextAvail: 6, nextUsed: 6, inFlight: [] });
  try {
    const b = await SetRig.restore(CONFIGS, snap);
    try {
      await carriesOn(b, b.driver(drv), unserved, 4);
    } finally {
      await b.stop();
    }
    // Two clones of the one snapshot, each over its own copy of memory.
    const clones = [await SetRig.restore(CONFIGS, snap), await SetRig.restore(CONFIGS, snap)];
    try {
      await Promise.all(clones.map((c) => carriesOn(c, c.driver(drv), unserved, 4)));
      for (const c of clones) assert.deepEqual(c.faults, []);
    } finally {
      for (const c of clones) await c.stop();
    }
  } finally {
    snap.memory.dispose();
  }
});

test("an interrupt the driver had not acknowledged at the snapshot is signalled again when the restored device first runs", async () => {
  let drv!: FakeDriver;
  const snap = await SetRig.snapshotAfter(CONFIGS, async (a) => {
    drv = a.newDriver({ queueSize: 16 });
    a.bringUp(0, { drivers: [drv] });
    drv.addChain({ writable: [BUFFER] });
    a.kick(0, 0);
    await a.until(() => drv.usedIdx === 1, "the request");
  });
  try {
    const [rec] = snap.saved as VirtioDeviceSavedState[];
    assert.equal(rec!.transport.interruptStatus & VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_INT_VRING, "the driver never acknowledged it");
    const b = await SetRig.restore(CONFIGS, snap);
    try {
      assert.equal(b.takeInterrupts(0), 0n, "nothing is signalled before the device runs");
      await b.set.resume();
      await b.until(() => b.takeInterrupts(0) > 0n, "the interrupt signalled again");
      assert.equal(b.driver(drv).popAllUsed().length, 1);
    } finally {
      await b.stop();
    }
  } finally {
    snap.memory.dispose();
  }
});

test("a driver snapshotted in the middle of its probe finishes it on the restored device, which then serves it", async () => {
  const snap = await SetRig.snapshotAfter(CONFIGS, async (a) => {
    a.mmio[0]!.w(VIRTIO_MMIO_STATUS, 0);
    a.mmio[0]!.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
  });
  try {
    const [rec] = snap.saved as VirtioDeviceSavedState[];
    assert.equal(rec!.queues, null, "no session: nothing but registers");
    const b = await SetRig.restore(CONFIGS, snap);
    try {
      assert.equal(b.mmio[0]!.r(VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
      await b.set.resume();
      const drv = b.newDriver({ queueSize: 8 });
      probeAsLinux(b.mmio[0]!.w, VIRTIO_V1, [drv]); // Linux would go on from DRIVER; a fresh probe works as well
      drv.addChain({ writable: [BUFFER] });
      b.kick(0, 0);
      await b.until(() => drv.usedIdx === 1, "the request of the driver that finished its probe");
    } finally {
      await b.stop();
    }
  } finally {
    snap.memory.dispose();
  }
});
