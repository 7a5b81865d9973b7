/**
 * virtio-blk in its real device thread (testing/device-loop-rig.ts): long
 * requests are split across budgeted passes, and a reset never lets the old
 * session write into the rings of the next one (issue 9, finding 6).
 */
import assert from "node:assert/strict";
import { closeSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_CONFIG_S_NEEDS_RESET, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, virtio_blk_outhdr,
} from "../../linux/abi.generated.js";
import { BLOCK_ZERO_BYTES_PER_PASS, SECTOR_SIZE } from "./block.js";
import { usedRingBytes } from "./queue.js";
import { blkHeader as header, blkSegment as segment } from "./testing/block-requests.js";
import { DeviceLoopRig, VIRTIO_V1, actionCount, arbLoopAction } from "./testing/device-loop-rig.js";
import { LOOP_PROPERTY_BOUNDS, formatReport, runLoopProperty } from "./testing/device-loop-property.js";

const BLOCK = new URL("./block.js", import.meta.url);
const MIB = 1 << 20;
const LIMIT_MS = 20_000;
const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

/** An image of `bytes` in `base` (a new directory), every byte 0xab unless `sparse`. */
function image(base: string, bytes: number, sparse = false): string {
  const dir = mkdtempSync(join(base, "flint-blk-loop-"));
  dirs.push(dir);
  const path = join(dir, "disk.img");
  const fd = openSync(path, "w");
  if (sparse) ftruncateSync(fd, bytes);
  else for (let off = 0; off < bytes; off += MIB) writeSync(fd, new Uint8Array(MIB).fill(0xab), 0, MIB, off);
  closeSync(fd);
  return path;
}

test("a WRITE_ZEROES the file system cannot do itself is written over several passes while later requests complete", async () => {
  // tmpfs has no FALLOC_FL_ZERO_RANGE: the device must write the zeros.
  const zeroBytes = 4 * BLOCK_ZERO_BYTES_PER_PASS;
  const path = image("/dev/shm", zeroBytes + MIB);
  const rig = await DeviceLoopRig.start({ backendModule: BLOCK, backendOptions: { path, readOnly: false }, name: "virtio-blk" });
  try {
    const drv = rig.newDriver(0, { queueSize: 16 });
    rig.bringUp({ features: VIRTIO_V1 | (1n << BigInt(VIRTIO_BLK_F_WRITE_ZEROES)), drivers: [drv] });
    const zeroHead = drv.addChain({ readable: [header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, zeroBytes / SECTOR_SIZE)], writable: [1] });
    const idHead = drv.addChain({ readable: [header(VIRTIO_BLK_T_GET_ID, 0)], writable: [20, 1] });
    const kicksBefore = rig.dev.state.stats.kicks;
    rig.kick(0);
    const used: { head: number; status: number }[] = [];
    await rig.until(() => {
      for (let u = drv.popUsed(); u; u = drv.popUsed()) used.push({ head: u.head, status: u.buffers.at(-1)!.at(-1)! });
      return used.length === 2;
    }, "both requests complete", LIMIT_MS);
    assert.deepEqual(used.map((u) => u.head), [idHead, zeroHead], "GET_ID, queued after the WRITE_ZEROES, completes first");
    assert.ok(used.every((u) => u.status === VIRTIO_BLK_S_OK));
    assert.ok(rig.dev.state.stats.kicks - kicksBefore >= 4, "the device came back by itself for the rest of the zeros");
    const fd = openSync(path, "r");
    const check = new Uint8Array(MIB);
    for (const off of [0, zeroBytes - MIB]) {
      readSync(fd, check, 0, MIB, off);
      assert.ok(check.every((b) => b === 0), `zeros at ${off}`);
    }
    readSync(fd, check, 0, MIB, zeroBytes);
    closeSync(fd);
    assert.ok(check.every((b) => b === 0xab), "nothing past the range");
  } finally {
    await rig.stop();
  }
});

test("a reset mid-pass never lets the old session write into the rings of the next", async () => {
  const path = image(tmpdir(), 512 * MIB, true);
  const rig = await DeviceLoopRig.start({ backendModule: BLOCK, backendOptions: { path, readOnly: false }, name: "virtio-blk" });
  try {
    const drv = rig.newDriver(0, { queueSize: 256, heapBytes: 64 * 1024 });
    // 80 reads of 4 MiB each (into one shared guest buffer): more than one pass of work.
    const data = rig.alloc(4 * MIB);
    const requests = 80;
    for (let i = 0; i < requests; i++) {
      const hdr = drv.alloc(virtio_blk_outhdr.SIZE);
      rig.mem.write(hdr, header(VIRTIO_BLK_T_IN, (i * 4 * MIB) / SECTOR_SIZE));
      const status = drv.alloc(1);
      const d = 3 * i;
      drv.writeDescriptor(d, { addr: hdr, len: virtio_blk_outhdr.SIZE, flags: VRING_DESC_F_NEXT, next: d + 1 });
      drv.writeDescriptor(d + 1, { addr: data, len: 4 * MIB, flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, next: d + 2 });
      drv.writeDescriptor(d + 2, { addr: status, len: 1, flags: VRING_DESC_F_WRITE, next: 0 });
      drv.setAvailRing(i, d);
    }
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    drv.setAvailIdx(requests);
    rig.kick(0);
    await rig.until(() => drv.usedIdx >= 2, "the device is reading", LIMIT_MS);
    // The driver resets and at once lays out fresh rings in the same place (as a vCPU whose
    // bounded reset wait ran out would), then brings the device up again.
    const n = rig.reset();
    const [fresh] = rig.bringUpAgain();
    assert.ok(fresh && fresh.layout.usedRing === drv.layout.usedRing);
    await rig.untilReset(n, LIMIT_MS);
    await new Promise((r) => setTimeout(r, 200));
    const usedRing = rig.mem.read(fresh.layout.usedRing, usedRingBytes(fresh.layout.size));
    assert.equal(fresh.usedIdx, 0, "no used entry of the old session in the new rings");
    assert.ok(usedRing.every((b) => b === 0), "the new used ring is untouched");
    assert.equal(rig.status & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "the new session is not failed by the old one");
    // And the new session works.
    fresh.addChain({ readable: [header(VIRTIO_BLK_T_GET_ID, 0)], writable: [20, 1] });
    rig.kick(0);
    await rig.until(() => fresh.usedIdx === 1, "the new session serves requests", LIMIT_MS);
  } finally {
    await rig.stop();
  }
});

test(`a hostile driver (${actionCount()} actions, a second thread kicking) leaves virtio-blk answering, bounded and serving`, async () => {
  const path = image(tmpdir(), 64 * MIB, true);
  const rig = await DeviceLoopRig.start({ backendModule: BLOCK, backendOptions: { path, readOnly: false }, name: "virtio-blk", memoryBytes: 16 * MIB });
  try {
    const features = VIRTIO_V1 | (1n << BigInt(VIRTIO_BLK_F_WRITE_ZEROES));
    rig.bringUp({ features, drivers: [rig.newDriver(0, { queueSize: 64, heapBytes: 64 * 1024 })] });
    const report = await runLoopProperty({
      rig, label: "virtio-blk", actions: actionCount(), seed: 777,
      arb: arbLoopAction(rig.mem, { queues: 1, maxQueueSize: 64, configBytes: 64 }),
      bounds: LOOP_PROPERTY_BOUNDS,
      control: { op: "info" }, progress: process.env.FLINT_FUZZ_ACTIONS ? (l) => console.log(l) : undefined,
      // The second thread re-adds GET_ID requests (header, 20-byte id, status).
      flood: {
        queue: 0, heads: (drv) => {
          const base = drv.heapStart;
          rig.mem.write(base, header(VIRTIO_BLK_T_GET_ID, 0));
          const heads: number[] = [];
          for (let i = 0; i < 8; i++) {
            const d = 3 * i;
            drv.writeDescriptor(d, { addr: base, len: virtio_blk_outhdr.SIZE, flags: VRING_DESC_F_NEXT, next: d + 1 });
            drv.writeDescriptor(d + 1, { addr: base + 64 + 32 * i, len: 20, flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, next: d + 2 });
            drv.writeDescriptor(d + 2, { addr: base + 512 + i, len: 1, flags: VRING_DESC_F_WRITE, next: 0 });
            heads.push(d);
          }
          return heads;
        },
      },
      wellFormed: async () => {
        const [drv] = rig.bringUpAgain();
        await rig.untilReset(undefined, LIMIT_MS);
        drv!.addChain({ readable: [header(VIRTIO_BLK_T_IN, 8)], writable: [4096, 1] });
        rig.kick(0);
        await rig.until(() => drv!.usedIdx === 1, "a well-formed read completes", LIMIT_MS);
        assert.equal(drv!.popUsed()!.buffers[1]![0], VIRTIO_BLK_S_OK);
      },
    });
    console.log(formatReport("virtio-blk", report));
  } finally {
    await rig.stop();
  }
});
