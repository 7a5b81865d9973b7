/**
 * virtio-blk's write cache mode (virtio 1.x §5.2.6.2): flint offers
 * VIRTIO_BLK_F_FLUSH, so a driver that does not negotiate it must get
 * writes that are stable when they complete (write-through, fdatasync per
 * write), and a driver that does gets a write-back cache it flushes itself.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_F_VERSION_1,
} from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { SECTOR_SIZE, VirtioBlock } from "./block.js";
import { blkHeader as header, blkSegment as zeroSegment } from "./testing/block-requests.js";
import { FakeDriver } from "./testing/fake-driver.js";
import type { VirtioDeviceContext, VirtQueue } from "./types.js";

const dir = mkdtempSync(join(tmpdir(), "flint-blk-wt-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const VERSION_1 = 1n << BigInt(VIRTIO_F_VERSION_1);
const FLUSH = 1n << BigInt(VIRTIO_BLK_F_FLUSH);

/** A device over a fresh 64 KiB image; `activate(features)` starts a driver session with those features. */
function rig(name: string) {
  const path = join(dir, name);
  writeFileSync(path, new Uint8Array(64 * 1024));
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
  const blk = new VirtioBlock({ path, readOnly: false });
  let drv: FakeDriver | undefined;
  const activate = (features: bigint): void => {
    drv = new FakeDriver(mem, { base: 0x1000, bytes: 0x40000, queueSize: 16 });
    const ctx: VirtioDeviceContext = {
      memory: mem, queues: [drv.createQueue() as VirtQueue], config: blk.initialConfig(), features,
      notifyUsed() {}, notifyConfigChange() {}, kick() {}, fail(reason) { throw new Error(reason); }, guestFault() {}, watch() {}, unwatch() {},
    };
    blk.activate(ctx);
  };
  /** Sends one chain; returns its status byte. */
  const send = (readable: Uint8Array[], writable: number[]): number | undefined => {
    drv!.addChain({ readable, writable });
    blk.onNotify(0);
    return drv!.popUsed()?.buffers.at(-1)?.[0];
  };
  const write = (): number | undefined => send([header(VIRTIO_BLK_T_OUT, 0), new Uint8Array(SECTOR_SIZE).fill(7)], [1]);
  return { blk, activate, send, write, close: () => { blk.shutdown(); mem.dispose(); } };
}

test("without FLUSH negotiated, every write and write-zeroes is synced before it completes; reads and discards are not", () => {
  const r = rig("write-through.img");
  try {
    r.activate(VERSION_1);
    assert.equal(r.write(), VIRTIO_BLK_S_OK);
    assert.equal(r.blk.metrics.writeThroughSyncs, 1);
    assert.equal(r.send([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), zeroSegment(1, 2)], [1]), VIRTIO_BLK_S_OK);
    assert.equal(r.blk.metrics.writeThroughSyncs, 2);
    assert.equal(r.send([header(VIRTIO_BLK_T_DISCARD, 0), zeroSegment(4, 2)], [1]), VIRTIO_BLK_S_OK);
    assert.equal(r.send([header(VIRTIO_BLK_T_IN, 0)], [SECTOR_SIZE, 1]), VIRTIO_BLK_S_OK);
    assert.equal(r.blk.metrics.writeThroughSyncs, 2, "a discard or a read is not a write to make stable");
  } finally {
    r.close();
  }
});

test("with FLUSH negotiated, writes complete from the page cache (write-back) until the driver flushes", () => {
  const r = rig("write-back.img");
  try {
    r.activate(VERSION_1 | FLUSH);
    assert.equal(r.write(), VIRTIO_BLK_S_OK);
    assert.equal(r.send([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), zeroSegment(1, 2)], [1]), VIRTIO_BLK_S_OK);
    assert.equal(r.blk.metrics.writeThroughSyncs, 0);
  } finally {
    r.close();
  }
});

test("each driver session decides the mode again: a reset forgets the last one", () => {
  const r = rig("sessions.img");
  try {
    r.activate(VERSION_1);
    r.write();
    assert.equal(r.blk.metrics.writeThroughSyncs, 1);
    r.blk.reset();
    r.activate(VERSION_1 | FLUSH);
    r.write();
    assert.equal(r.blk.metrics.writeThroughSyncs, 1, "write-back after renegotiating FLUSH");
    r.blk.reset();
    r.activate(VERSION_1);
    r.write();
    assert.equal(r.blk.metrics.writeThroughSyncs, 2, "write-through again without it");
  } finally {
    r.close();
  }
});
