/**
 * virtio-blk saved and restored in its real device thread
 * (testing/snapshot-rig.ts): reads and writes the guest posted before the
 * snapshot but the device had not served are served once by the restored
 * drive (and by each of two clones, each over its own copy of the image),
 * what was completed stays completed, the used ring goes on at the right
 * index, and new requests work. (block-persist.test.ts covers a WRITE_ZEROES
 * still being written at the snapshot.)
 */
import assert from "node:assert/strict";
import { closeSync, copyFileSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from "../../linux/abi.generated.js";
import { SECTOR_SIZE } from "./block.js";
import type { VirtioDeviceSavedState } from "./device-saved-state.js";
import { blkHeader } from "./testing/block-requests.js";
import type { FakeDriver, UsedEntry } from "./testing/fake-driver.js";
import { SetRig, type SetSnapshot } from "./testing/snapshot-rig.js";
import type { VirtioDeviceConfig } from "./virtio-set.js";

const dir = mkdtempSync(join(tmpdir(), "flint-blk-restore-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const MIB = 1 << 20;

const drive = (path: string): VirtioDeviceConfig[] => [{ kind: "block", options: { path, readOnly: false } }];
const block = (byte: number) => new Uint8Array(SECTOR_SIZE).fill(byte);

/** The `sectors` of the image at `sector`. */
function readImage(path: string, sector: number, sectors = 1): Uint8Array {
  const fd = openSync(path, "r");
  const b = new Uint8Array(sectors * SECTOR_SIZE);
  readSync(fd, b, 0, b.length, sector * SECTOR_SIZE);
  closeSync(fd);
  return b;
}

const status = (u: UsedEntry): number => u.buffers.at(-1)!.at(-1)!;

/**
 * The guest's part after a restore: the three requests owed (a completed write it had not
 * taken, and a write and a read posted while the device was quiesced) come back once, OK;
 * then a new read sees the restored write.
 */
async function carriesOn(rig: SetRig, drv: FakeDriver, owed: { w8: number; w16: number; r0: number }, path: string): Promise<void> {
  await rig.set.resume();
  await rig.until(() => drv.usedIdx === 5, "the requests owed at the snapshot");
  const used = drv.popAllUsed();
  assert.deepEqual(used.map((u) => u.head).sort(), [owed.w8, owed.w16, owed.r0].sort());
  for (const u of used) assert.equal(status(u), VIRTIO_BLK_S_OK);
  assert.deepEqual(used.find((u) => u.head === owed.r0)!.buffers[0], block(0x11), "the read sees the write completed before the snapshot");
  assert.deepEqual(readImage(path, 16), block(0x33), "the write posted before the snapshot reached this image");
  const head = drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_IN, 16)], writable: [SECTOR_SIZE, 1] });
  rig.kick(0, 0);
  await rig.until(() => drv.usedIdx === 6, "a new read");
  const [u] = drv.popAllUsed();
  assert.equal(u!.head, head);
  assert.deepEqual(u!.buffers[0], block(0x33));
}

test("a restored drive serves the requests posted before the snapshot once and goes on; so does each of two clones over its own copy of the image", async () => {
  const path = join(dir, "disk.img");
  const fd = openSync(path, "w");
  writeSync(fd, new Uint8Array(4 * MIB).fill(0xab));
  closeSync(fd);
  let drv!: FakeDriver;
  const owed = { w8: -1, w16: -1, r0: -1 };
  const snap = await SetRig.snapshotAfter(drive(path), async (a) => {
    drv = a.newDriver({ queueSize: 16, heapBytes: 16 * 1024 });
    a.bringUp(0, { drivers: [drv] });
    // Completed and taken: a write of sector 0, and a read of it.
    drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_OUT, 0), block(0x11)], writable: [1] });
    a.kick(0, 0);
    await a.until(() => drv.usedIdx === 1, "the first write");
    drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_IN, 0)], writable: [SECTOR_SIZE, 1] });
    a.kick(0, 0);
    await a.until(() => drv.usedIdx === 2, "the first read");
    assert.deepEqual(drv.popAllUsed().map(status), [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK]);
    // Completed, not yet taken by the driver.
    owed.w8 = drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_OUT, 8), block(0x22)], writable: [1] });
    a.kick(0, 0);
    await a.until(() => drv.usedIdx === 3, "the second write");
    // Posted while quiesced: a write of sector 16 and a read of sector 0.
    await a.set.quiesce();
    owed.w16 = drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_OUT, 16), block(0x33)], writable: [1] });
    owed.r0 = drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_IN, 0)], writable: [SECTOR_SIZE, 1] });
    a.kick(0, 0);
  });
  // The image as the snapshot left it, for the clones (each restores over its own copy).
  const copies = [join(dir, "clone-0.img"), join(dir, "clone-1.img")];
  for (const c of copies) copyFileSync(path, c);
  try {
    const [rec] = snap.saved as VirtioDeviceSavedState[];
    assert.deepEqual([rec!.queues![0]!.nextAvail, rec!.queues![0]!.nextUsed], [3, 3]);
    assert.deepEqual(readImage(path, 16), block(0xab), "the write posted while quiesced was not served before the snapshot");
    const b = await SetRig.restore(drive(path), snap);
    try {
      await carriesOn(b, b.driver(drv), owed, path);
      assert.deepEqual(b.faults, []);
    } finally {
      await b.stop();
    }
    const clones = await Promise.all(copies.map((c) => SetRig.restore(drive(c), snap)));
    try {
      await Promise.all(clones.map((c, i) => carriesOn(c, c.driver(drv), owed, copies[i]!)));
    } finally {
      for (const c of clones) await c.stop();
    }
    assert.deepEqual(readImage(path, 8), block(0x22));
  } finally {
    snap.memory.dispose();
  }
});

test("a drive restored over an image of another size is refused (EVIRTIOSNAPMISMATCH), nothing left running", async () => {
  const path = join(dir, "small.img");
  const fd = openSync(path, "w");
  writeSync(fd, new Uint8Array(MIB));
  closeSync(fd);
  const snap = await SetRig.snapshotAfter(drive(path), async (a) => {
    a.bringUp(0, { drivers: [a.newDriver({ queueSize: 8 })] });
  });
  const other = join(dir, "bigger.img");
  const fd2 = openSync(other, "w");
  writeSync(fd2, new Uint8Array(2 * MIB));
  closeSync(fd2);
  try {
    await assert.rejects(SetRig.restore(drive(other), snap), (e: unknown) => {
      assert.equal((e as { code?: string }).code, "EVIRTIOSNAPMISMATCH");
      assert.match((e as Error).message, /^Cannot restore virtio-block@0x[0-9a-f]+: the snapshot's guest saw a disk of 2048 sectors, this drive has 4096$/);
      return true;
    });
  } finally {
    snap.memory.dispose();
  }
});
