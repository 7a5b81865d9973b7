/**
 * virtio-blk's saved state (block-persist.ts), driven pass by pass: a
 * WRITE_ZEROES still being written when the device is saved (its chain
 * popped and in flight) is finished by the restored device over a copy of
 * guest memory and completed once; the record survives JSON unchanged.
 */
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_F_VERSION_1,
} from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { BLOCK_ZERO_BYTES_PER_PASS, SECTOR_SIZE, VirtioBlock } from "./block.js";
import type { BlockSavedState } from "./block-persist.js";
import { SplitQueue } from "./queue.js";
import { VirtioSavedStateError } from "./saved-state.js";
import { blkHeader, blkSegment } from "./testing/block-requests.js";
import { FakeDriver } from "./testing/fake-driver.js";
import { copyGuestMemory } from "./testing/snapshot-rig.js";
import type { VirtioDeviceContext, VirtQueue } from "./types.js";

// tmpfs cannot zero a range itself: the device writes the zeros, over several passes.
const dir = mkdtempSync(join("/dev/shm", "flint-blk-persist-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const FEATURES = (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VIRTIO_BLK_F_WRITE_ZEROES));

/** What the device asks of its context, and guest memory. */
class Ctx implements VirtioDeviceContext {
  readonly kicks: number[] = [];
  readonly faults: string[] = [];
  constructor(readonly memory: GuestMemory, readonly queues: VirtQueue[], readonly config: Uint8Array, readonly features = FEATURES) {}
  notifyUsed(): void {}
  notifyConfigChange(): void {}
  kick(q: number): void { this.kicks.push(q); }
  fail(reason: string): void { throw new Error(`device failed: ${reason}`); }
  guestFault(m: string): void { this.faults.push(m); }
  watch(): void {}
  unwatch(): void {}
}

function image(bytes: number): string {
  const path = join(dir, `disk-${bytes}.img`);
  const fd = openSync(path, "w");
  for (let off = 0; off < bytes; off += 1 << 20) writeSync(fd, new Uint8Array(1 << 20).fill(0xab), 0, 1 << 20, off);
  closeSync(fd);
  return path;
}

test("a WRITE_ZEROES still being written at the save is finished by the restored device and completed once", () => {
  const zeroBytes = 4 * BLOCK_ZERO_BYTES_PER_PASS;
  const path = image(zeroBytes + (1 << 20));
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
  const drv = new FakeDriver(mem, { base: 0x1000, bytes: 0x10000, queueSize: 16 });
  const q = drv.createQueue();
  const blk = new VirtioBlock({ path, readOnly: false });
  const ctx = new Ctx(mem, [q], blk.initialConfig());
  blk.activate(ctx);
  const zeroHead = drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_WRITE_ZEROES, 0), blkSegment(0, zeroBytes / SECTOR_SIZE)], writable: [1] });
  const idHead = drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_GET_ID, 0)], writable: [20, 1] });
  blk.onNotify(0); // one pass: GET_ID served, the zeros a quarter written
  assert.deepEqual(drv.popAllUsed().map((u) => u.head), [idHead]);
  assert.deepEqual(ctx.kicks, [0], "the device wants to come back for the rest");
  const queueState = q.saveState();
  const saved = JSON.parse(JSON.stringify(blk.saveState())) as BlockSavedState;
  blk.shutdown();
  assert.deepEqual(queueState.inFlight, [[zeroHead, 1]], "the WRITE_ZEROES chain is in flight");
  assert.equal(saved.zeroJobs.length, 1);
  assert.equal(saved.zeroJobs[0]!.ranges[0]!.offset, BLOCK_ZERO_BYTES_PER_PASS, "the record says how far the zeros got");

  // The restore: a copy of guest memory, a new device on the same image, the queue at its saved position.
  const mem2 = copyGuestMemory(mem);
  mem.dispose();
  try {
    const drv2 = drv.moveTo(mem2);
    const q2 = new SplitQueue(mem2, drv2.layout, drv2.features, 16);
    q2.restoreState(queueState);
    const blk2 = new VirtioBlock({ path, readOnly: false });
    const ctx2 = new Ctx(mem2, [q2], blk2.initialConfig());
    blk2.restoreState(saved, ctx2);
    assert.deepEqual(JSON.parse(JSON.stringify(blk2.saveState())), saved, "the record comes back unchanged");
    for (let pass = 0; pass < 10 && drv2.usedIdx === 1; pass++) blk2.onNotify(0);
    const used = drv2.popAllUsed();
    assert.deepEqual(used.map((u) => u.head), [zeroHead], "completed once");
    assert.equal(used[0]!.buffers[0]![0], VIRTIO_BLK_S_OK);
    blk2.onNotify(0);
    assert.equal(drv2.usedIdx, 2, "and never again");
    blk2.shutdown();
    const fd = openSync(path, "r");
    const check = new Uint8Array(1 << 20);
    for (const off of [0, zeroBytes - (1 << 20)]) {
      readSync(fd, check, 0, check.length, off);
      assert.ok(check.every((b) => b === 0), `zeros at ${off}`);
    }
    readSync(fd, check, 0, check.length, zeroBytes);
    closeSync(fd);
    assert.ok(check.every((b) => b === 0xab), "nothing past the range");
  } finally {
    mem2.dispose();
  }
});

test("a record whose zero job lies outside the disk or guest memory, or that holds jobs without a session, is refused", () => {
  const path = image(1 << 20);
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
  try {
    const blk = new VirtioBlock({ path, readOnly: false });
    const ctx = new Ctx(mem, [new FakeDriver(mem, { base: 0x1000, bytes: 0x10000, queueSize: 16 }).createQueue()], blk.initialConfig());
    const base = blk.saveState();
    const job = { head: 0, statusAddr: 0x2000, ranges: [{ offset: 0, length: 4096, unmap: false }] };
    const refused = (s: unknown, c: VirtioDeviceContext | undefined, code: string, pattern: RegExp) =>
      assert.throws(() => blk.restoreState(s, c), (e: unknown) => e instanceof VirtioSavedStateError && e.code === code && pattern.test(e.message));
    refused({ ...base, zeroJobs: [{ ...job, ranges: [{ offset: 1 << 20, length: 512, unmap: false }] }] }, ctx, "EVIRTIOSNAPMISMATCH", /outside the disk/);
    refused({ ...base, zeroJobs: [{ ...job, statusAddr: 1 << 20 }] }, ctx, "EVIRTIOSNAPMISMATCH", /outside guest memory/);
    refused({ ...base, zeroJobs: [job] }, undefined, "EVIRTIOSNAPFORMAT", /not active/);
    refused({ ...base, capacitySectors: 7 }, ctx, "EVIRTIOSNAPFORMAT", /capacitySectors must be a 64-bit unsigned integer/);
    blk.shutdown();
  } finally {
    mem.dispose();
  }
});
