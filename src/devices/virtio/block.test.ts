import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, VIRTIO_ID_BLOCK, virtio_blk_config, virtio_blk_discard_write_zeroes,
  virtio_blk_outhdr,
} from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { dataView, getU32, getU64, setU32, setU64 } from "../../memory/le.js";
import { BlockError, BLOCK_MAX_DISCARD_SEG, BLOCK_REQUEST_UPDATE_BACKING, BLOCK_SERVE_BUDGET, createBackend, SECTOR_SIZE, VirtioBlock, type BlockOptions } from "./block.js";
import { FakeDriver } from "./testing/fake-driver.js";
import type { VirtioDeviceContext, VirtQueue } from "./types.js";

const dir = mkdtempSync(join(tmpdir(), "flint-blk-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let images = 0;

/** A VirtioDeviceContext that records what the device asks of it. */
class RecordingContext implements VirtioDeviceContext {
  readonly faults: string[] = [];
  readonly failures: string[] = [];
  readonly usedNotifications: number[] = [];
  configChanges = 0;
  constructor(readonly memory: GuestMemory, readonly queues: VirtQueue[], readonly config: Uint8Array, readonly features = 0n) {}
  notifyUsed(queue: number): void { this.usedNotifications.push(queue); }
  notifyConfigChange(): void { this.configChanges++; }
  /** Queues the device asked to be called again for (ctx.kick). */
  readonly kicks: number[] = [];
  kick(queue: number): void { this.kicks.push(queue); }
  fail(reason: string): void { this.failures.push(reason); }
  guestFault(message: string): void { this.faults.push(message); }
  readonly hostErrors: string[] = [];
  hostError(message: string): void { this.hostErrors.push(message); }
  watch(): void {}
  unwatch(): void {}
}

/** A file of `bytes` whose every byte is a function of its offset. */
function image(bytes: number, where = dir): string {
  const path = join(where, `disk-${images++}.img`);
  const data = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) data[i] = (i * 7 + (i >>> 9)) & 0xff;
  writeFileSync(path, data);
  return path;
}

function header(type: number, sector: bigint | number): Uint8Array {
  const h = new Uint8Array(virtio_blk_outhdr.SIZE);
  setU32(dataView(h), virtio_blk_outhdr.type, type);
  setU64(dataView(h), virtio_blk_outhdr.sector, BigInt.asUintN(64, BigInt(sector)));
  return h;
}

function segment(sector: bigint | number, count: number, flags = 0): Uint8Array {
  const s = new Uint8Array(virtio_blk_discard_write_zeroes.SIZE);
  const v = dataView(s);
  setU64(v, virtio_blk_discard_write_zeroes.sector, BigInt(sector));
  setU32(v, virtio_blk_discard_write_zeroes.num_sectors, count);
  setU32(v, virtio_blk_discard_write_zeroes.flags, flags);
  return s;
}

const concat = (...parts: Uint8Array[]): Uint8Array => Uint8Array.from(parts.flatMap((p) => [...p]));
const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 13 + seed) & 0xff);

interface Rig {
  blk: VirtioBlock;
  drv: FakeDriver;
  ctx: RecordingContext;
  mem: GuestMemory;
  path: string;
  /** Sends one chain and returns the used entry with the status byte split off. */
  send(readable: Uint8Array[], writable: number[]): { status: number | undefined; len: number; data: Uint8Array };
  close(): void;
}

function rig(options: Partial<BlockOptions> & { bytes?: number; path?: string; queueSize?: number } = {}): Rig {
  const path = options.path ?? image(options.bytes ?? 64 * 1024);
  const blk = new VirtioBlock({ path, readOnly: options.readOnly ?? false, ...(options.id !== undefined ? { id: options.id } : {}) });
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
  const drv = new FakeDriver(mem, { base: 0x1000, bytes: (1 << 20) - 0x1000, queueSize: options.queueSize ?? 16 });
  const ctx = new RecordingContext(mem, [drv.createQueue()], blk.initialConfig(), blk.deviceFeatures);
  blk.activate(ctx);
  return {
    blk, drv, ctx, mem, path,
    send(readable, writable) {
      drv.addChain({ readable, writable });
      blk.onNotify(0);
      const u = drv.popUsed();
      assert.ok(u, "the device returned the chain");
      const all = concat(...u.buffers);
      return { status: all.length ? all[all.length - 1] : undefined, len: u.len, data: all.subarray(0, Math.max(0, all.length - 1)) };
    },
    close() {
      blk.shutdown();
      mem.dispose();
    },
  };
}

test("config space reports capacity in 512-byte sectors, block size and discard limits", () => {
  const r = rig({ bytes: 64 * 1024 + 100 });
  const v = dataView(r.blk.initialConfig());
  assert.equal(getU64(v, virtio_blk_config.capacity), 128n, "a partial last sector is not exposed");
  assert.equal(getU32(v, virtio_blk_config.blk_size), SECTOR_SIZE);
  assert.ok(getU32(v, virtio_blk_config.seg_max) > 0);
  assert.ok(getU32(v, virtio_blk_config.max_discard_sectors) > 0);
  assert.equal(getU32(v, virtio_blk_config.max_discard_seg), BLOCK_MAX_DISCARD_SEG);
  assert.ok(getU32(v, virtio_blk_config.max_write_zeroes_sectors) > 0);
  assert.equal(r.blk.deviceId, VIRTIO_ID_BLOCK);
  const f = r.blk.deviceFeatures;
  assert.ok(f & (1n << BigInt(VIRTIO_BLK_F_FLUSH)));
  assert.ok(f & (1n << BigInt(VIRTIO_BLK_F_DISCARD)));
  assert.ok(f & (1n << BigInt(VIRTIO_BLK_F_WRITE_ZEROES)));
  assert.ok(!(f & (1n << BigInt(VIRTIO_BLK_F_RO))));
  r.close();
});

test(`a kick serves at most ${BLOCK_SERVE_BUDGET} requests, signals them, and asks to be called again for the rest`, () => {
  const r = rig({ bytes: 128 * 1024, queueSize: 256 });
  const count = BLOCK_SERVE_BUDGET + 16; // 3 descriptors each, in a 256-entry table
  for (let i = 0; i < count; i++) r.drv.addChain({ readable: [header(VIRTIO_BLK_T_IN, i)], writable: [SECTOR_SIZE, 1] });
  r.blk.onNotify(0);
  const first = r.drv.popAllUsed();
  assert.equal(first.length, BLOCK_SERVE_BUDGET);
  assert.deepEqual(r.ctx.usedNotifications, [0], "the batch is signalled before the device yields");
  assert.deepEqual(r.ctx.kicks, [0], "and the device asks to come back");
  r.blk.onNotify(0);
  const rest = r.drv.popAllUsed();
  assert.equal(rest.length, count - BLOCK_SERVE_BUDGET);
  assert.deepEqual(r.ctx.kicks, [0], "nothing left: no further call asked for");
  const file = readFileSync(r.path);
  [...first, ...rest].forEach((u, i) => {
    const all = concat(...u.buffers);
    assert.equal(all[SECTOR_SIZE], VIRTIO_BLK_S_OK);
    assert.ok(Buffer.from(all.subarray(0, SECTOR_SIZE)).equals(file.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE)), `request ${i} read its sector`);
  });
  r.close();
});

test("a read-only drive offers VIRTIO_BLK_F_RO and neither discard nor write-zeroes", () => {
  const r = rig({ readOnly: true });
  const f = r.blk.deviceFeatures;
  assert.ok(f & (1n << BigInt(VIRTIO_BLK_F_RO)));
  assert.ok(!(f & (1n << BigInt(VIRTIO_BLK_F_DISCARD))));
  assert.ok(!(f & (1n << BigInt(VIRTIO_BLK_F_WRITE_ZEROES))));
  r.close();
});

test("written sectors land at sector*512 in the file and read back through IN", () => {
  const r = rig();
  const data = pattern(3 * SECTOR_SIZE, 5);
  const w = r.send([header(VIRTIO_BLK_T_OUT, 7), data], [1]);
  assert.equal(w.status, VIRTIO_BLK_S_OK);
  assert.equal(w.len, 1, "used length counts only the status byte for OUT");
  const file = readFileSync(r.path);
  assert.deepEqual(new Uint8Array(file.subarray(7 * SECTOR_SIZE, 10 * SECTOR_SIZE)), data);
  assert.equal(file[7 * SECTOR_SIZE - 1], ((7 * SECTOR_SIZE - 1) * 7 + 6) & 0xff, "the sector before is untouched");
  const rd = r.send([header(VIRTIO_BLK_T_IN, 6)], [4 * SECTOR_SIZE + 1]);
  assert.equal(rd.status, VIRTIO_BLK_S_OK);
  assert.equal(rd.len, 4 * SECTOR_SIZE + 1, "used length counts data and status");
  assert.deepEqual(rd.data.subarray(SECTOR_SIZE), data);
  assert.deepEqual(rd.data.subarray(0, SECTOR_SIZE), new Uint8Array(file.subarray(6 * SECTOR_SIZE, 7 * SECTOR_SIZE)));
  assert.deepEqual(r.ctx.usedNotifications, [0, 0]);
  assert.equal(r.ctx.faults.length, 0);
  r.close();
});

test("header, data and status may be split across descriptors at any byte", () => {
  const r = rig();
  const data = pattern(2 * SECTOR_SIZE, 9);
  const req = concat(header(VIRTIO_BLK_T_OUT, 3), data);
  // Header split 5/11 + first data byte, data split at odd places.
  const w = r.send([req.subarray(0, 5), req.subarray(5, 17), req.subarray(17, 700), req.subarray(700)], [1]);
  assert.equal(w.status, VIRTIO_BLK_S_OK);
  // IN with data and status sharing the last buffer.
  const rd = r.send([header(VIRTIO_BLK_T_IN, 3).subarray(0, 9), header(VIRTIO_BLK_T_IN, 3).subarray(9)], [100, 2 * SECTOR_SIZE - 100 + 1]);
  assert.equal(rd.status, VIRTIO_BLK_S_OK);
  assert.deepEqual(rd.data, data);
  r.close();
});

test("requests outside the disk fail with IOERR and leave the file untouched", () => {
  const r = rig({ bytes: 16 * SECTOR_SIZE });
  const before = readFileSync(r.path);
  const one = pattern(SECTOR_SIZE, 1);
  for (const sector of [16n, 15n + 2n, 2n ** 64n - 1n, 2n ** 63n]) {
    assert.equal(r.send([header(VIRTIO_BLK_T_OUT, sector), one], [1]).status, VIRTIO_BLK_S_IOERR);
    assert.equal(r.send([header(VIRTIO_BLK_T_IN, sector)], [SECTOR_SIZE + 1]).status, VIRTIO_BLK_S_IOERR);
  }
  assert.equal(r.send([header(VIRTIO_BLK_T_OUT, 15), pattern(2 * SECTOR_SIZE, 1)], [1]).status, VIRTIO_BLK_S_IOERR);
  assert.equal(r.send([header(VIRTIO_BLK_T_DISCARD, 0), segment(10, 7)], [1]).status, VIRTIO_BLK_S_IOERR);
  assert.equal(r.send([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(2n ** 64n - 1n, 2)], [1]).status, VIRTIO_BLK_S_IOERR);
  // The last sector itself is fine.
  assert.equal(r.send([header(VIRTIO_BLK_T_IN, 15)], [SECTOR_SIZE + 1]).status, VIRTIO_BLK_S_OK);
  assert.ok(readFileSync(r.path).equals(before));
  assert.ok(r.blk.metrics.badRequests >= 10);
  assert.equal(r.ctx.failures.length, 0);
  r.close();
});

test("malformed requests fail alone: short header, wrong data direction, partial sectors", () => {
  const r = rig();
  const before = readFileSync(r.path);
  const hdr = header(VIRTIO_BLK_T_OUT, 0);
  assert.equal(r.send([hdr.subarray(0, 15)], [1]).status, VIRTIO_BLK_S_IOERR, "header one byte short");
  assert.equal(r.send([header(VIRTIO_BLK_T_IN, 0), pattern(SECTOR_SIZE, 0)], [SECTOR_SIZE + 1]).status, VIRTIO_BLK_S_IOERR, "IN with readable data");
  assert.equal(r.send([header(VIRTIO_BLK_T_OUT, 0), pattern(SECTOR_SIZE, 0)], [SECTOR_SIZE + 1]).status, VIRTIO_BLK_S_IOERR, "OUT with writable data");
  assert.equal(r.send([header(VIRTIO_BLK_T_OUT, 0), pattern(100, 0)], [1]).status, VIRTIO_BLK_S_IOERR, "OUT of a partial sector");
  assert.equal(r.send([header(VIRTIO_BLK_T_IN, 0)], [101]).status, VIRTIO_BLK_S_IOERR, "IN of a partial sector");
  assert.equal(r.send([header(VIRTIO_BLK_T_FLUSH, 0), pattern(SECTOR_SIZE, 0)], [1]).status, VIRTIO_BLK_S_IOERR, "FLUSH with data");
  assert.equal(r.send([header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 1).subarray(0, 15)], [1]).status, VIRTIO_BLK_S_IOERR, "partial discard segment");
  assert.equal(r.send([header(VIRTIO_BLK_T_DISCARD, 0)], [1]).status, VIRTIO_BLK_S_IOERR, "discard without segments");
  const tooMany = Array.from({ length: BLOCK_MAX_DISCARD_SEG + 1 }, (_, i) => segment(i, 1));
  assert.equal(r.send([header(VIRTIO_BLK_T_DISCARD, 0), ...tooMany], [1]).status, VIRTIO_BLK_S_IOERR, "too many segments");
  // No writable byte at all: nothing can be reported, the chain comes back with length 0.
  const u = r.send([header(VIRTIO_BLK_T_OUT, 0), pattern(SECTOR_SIZE, 0)], []);
  assert.equal(u.status, undefined);
  assert.equal(u.len, 0);
  assert.ok(readFileSync(r.path).equals(before));
  assert.equal(r.ctx.faults.length, 10);
  assert.equal(r.ctx.failures.length, 0);
  r.close();
});

test("unknown request types and reserved discard flags get UNSUPP", () => {
  const r = rig();
  const u = r.send([header(0x7777, 0)], [1]);
  assert.equal(u.status, VIRTIO_BLK_S_UNSUPP);
  assert.equal(u.len, 1);
  assert.equal(r.send([header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)], [1]).status, VIRTIO_BLK_S_UNSUPP);
  assert.equal(r.send([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 1, 0x80)], [1]).status, VIRTIO_BLK_S_UNSUPP);
  r.close();
});

test("a read-only drive refuses OUT, DISCARD and WRITE_ZEROES and still reads", () => {
  const r = rig({ readOnly: true });
  const before = readFileSync(r.path);
  assert.equal(r.send([header(VIRTIO_BLK_T_OUT, 0), pattern(SECTOR_SIZE, 3)], [1]).status, VIRTIO_BLK_S_IOERR);
  assert.equal(r.send([header(VIRTIO_BLK_T_DISCARD, 0), segment(0, 8)], [1]).status, VIRTIO_BLK_S_IOERR);
  assert.equal(r.send([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 8)], [1]).status, VIRTIO_BLK_S_IOERR);
  const rd = r.send([header(VIRTIO_BLK_T_IN, 1)], [SECTOR_SIZE + 1]);
  assert.equal(rd.status, VIRTIO_BLK_S_OK);
  assert.deepEqual(rd.data, new Uint8Array(before.subarray(SECTOR_SIZE, 2 * SECTOR_SIZE)));
  assert.equal(r.send([header(VIRTIO_BLK_T_FLUSH, 0)], [1]).status, VIRTIO_BLK_S_OK);
  assert.ok(readFileSync(r.path).equals(before));
  r.close();
});

test("GET_ID returns 20 bytes derived from the file's device and inode, or the configured id", () => {
  const r = rig();
  const u = r.send([header(VIRTIO_BLK_T_GET_ID, 0)], [VIRTIO_BLK_ID_BYTES, 1]);
  assert.equal(u.status, VIRTIO_BLK_S_OK);
  assert.equal(u.len, VIRTIO_BLK_ID_BYTES + 1);
  const st = statSync(r.path, { bigint: true });
  const expected = `flint-${st.dev.toString(16)}-${st.ino.toString(16)}`.slice(0, VIRTIO_BLK_ID_BYTES);
  assert.equal(Buffer.from(u.data).toString("latin1").replace(/\0+$/, ""), expected);
  const short = r.send([header(VIRTIO_BLK_T_GET_ID, 0)], [6]);
  assert.equal(short.len, 6, "a short buffer gets the id's first bytes");
  assert.equal(Buffer.from(short.data).toString("latin1"), expected.slice(0, 5));
  r.close();
  const named = rig({ id: "serial-42" });
  const n = named.send([header(VIRTIO_BLK_T_GET_ID, 0)], [VIRTIO_BLK_ID_BYTES + 1]);
  assert.deepEqual(n.data, concat(Buffer.from("serial-42"), new Uint8Array(VIRTIO_BLK_ID_BYTES - 9)));
  named.close();
  assert.throws(() => new VirtioBlock({ path: image(SECTOR_SIZE), readOnly: false, id: "x".repeat(21) }), (e: unknown) => e instanceof BlockError && e.code === "EBLKCONFIG");
});

test("DISCARD and WRITE_ZEROES zero the ranges, keep the file size and touch nothing else", () => {
  const r = rig({ bytes: 64 * SECTOR_SIZE });
  const before = readFileSync(r.path);
  assert.equal(r.send([header(VIRTIO_BLK_T_DISCARD, 0), segment(8, 8), segment(32, 8)], [1]).status, VIRTIO_BLK_S_OK);
  assert.equal(r.send([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(17, 3)], [1]).status, VIRTIO_BLK_S_OK);
  assert.equal(r.send([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(50, 5, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)], [1]).status, VIRTIO_BLK_S_OK);
  const after = readFileSync(r.path);
  assert.equal(after.length, before.length);
  const zeroed = (s: number) => (s >= 8 && s < 16) || (s >= 32 && s < 40) || (s >= 17 && s < 20) || (s >= 50 && s < 55);
  for (let s = 0; s < 64; s++) {
    const got = after.subarray(s * SECTOR_SIZE, (s + 1) * SECTOR_SIZE);
    if (zeroed(s)) assert.ok(got.every((b) => b === 0), `sector ${s} is zero`);
    else assert.ok(got.equals(before.subarray(s * SECTOR_SIZE, (s + 1) * SECTOR_SIZE)), `sector ${s} is untouched`);
  }
  r.close();
});

test("FLUSH syncs, and shutdown leaves written data in the file and stops the device", () => {
  const r = rig();
  const data = pattern(SECTOR_SIZE, 77);
  assert.equal(r.send([header(VIRTIO_BLK_T_OUT, 2), data], [1]).status, VIRTIO_BLK_S_OK);
  assert.equal(r.send([header(VIRTIO_BLK_T_FLUSH, 0)], [1]).status, VIRTIO_BLK_S_OK);
  assert.equal(r.blk.metrics.flushes, 1);
  r.blk.shutdown();
  assert.deepEqual(new Uint8Array(readFileSync(r.path).subarray(2 * SECTOR_SIZE, 3 * SECTOR_SIZE)), data);
  r.drv.addChain({ readable: [header(VIRTIO_BLK_T_OUT, 2), pattern(SECTOR_SIZE, 1)], writable: [1] });
  r.blk.onNotify(0);
  assert.equal(r.drv.popUsed(), undefined, "a shut-down device serves nothing");
  r.mem.dispose();
});

test("a broken ring fails the device (NEEDS_RESET) instead of throwing; reset and re-activation work", () => {
  const r = rig();
  r.drv.setAvailIdx(100); // 100 chains "available" in a queue of 16
  assert.doesNotThrow(() => r.blk.onNotify(0));
  assert.equal(r.ctx.failures.length, 1);
  r.blk.reset();
  const drv = new FakeDriver(r.mem, { base: 0x1000, bytes: 0x80000, queueSize: 8 });
  const ctx = new RecordingContext(r.mem, [drv.createQueue()], r.blk.initialConfig());
  r.blk.activate(ctx);
  drv.addChain({ readable: [header(VIRTIO_BLK_T_FLUSH, 0)], writable: [1] });
  r.blk.onNotify(0);
  assert.equal(drv.popUsed()?.written[0], VIRTIO_BLK_S_OK);
  r.close();
});

test("attaching a missing file or a directory fails with EBLKOPEN", () => {
  assert.throws(() => createBackend({ path: join(dir, "nope.img"), readOnly: false }), (e: unknown) => e instanceof BlockError && e.code === "EBLKOPEN");
  assert.throws(() => createBackend({ path: dir, readOnly: true }), (e: unknown) => e instanceof BlockError && e.code === "EBLKOPEN");
});

/** Mounts a 1 MiB tmpfs in a private directory; undefined when this host cannot (not root...). */
function smallTmpfs(): string | undefined {
  const mnt = mkdtempSync(join(tmpdir(), "flint-blk-full-"));
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1M", "tmpfs", mnt], { stdio: "ignore" });
    return mnt;
  } catch {
    rmSync(mnt, { recursive: true, force: true });
    return undefined;
  }
}

test("host ENOSPC becomes IOERR for that request and the device keeps working", (t) => {
  const mnt = smallTmpfs();
  if (!mnt) return t.skip("cannot mount a tmpfs here");
  try {
    // A 4 MiB sparse image on a 1 MiB file system: writes fill it up.
    const path = join(mnt, "sparse.img");
    const fd = openSync(path, "w");
    writeSync(fd, new Uint8Array(1), 0, 1, 4 * 1024 * 1024 - 1);
    closeSync(fd);
    const r = rig({ path });
    const big = pattern(256 * 1024, 3);
    const statuses: number[] = [];
    for (let s = 0; s < 8; s++) {
      statuses.push(r.send([header(VIRTIO_BLK_T_OUT, (s * big.length) / SECTOR_SIZE), big], [1]).status!);
    }
    assert.ok(statuses.includes(VIRTIO_BLK_S_IOERR), `some write fails: ${statuses}`);
    assert.equal(statuses[0], VIRTIO_BLK_S_OK);
    assert.equal(r.blk.metrics.lastHostError, "ENOSPC");
    // Reported as a host error naming the drive, never as the guest's fault.
    const failed = statuses.filter((s) => s === VIRTIO_BLK_S_IOERR).length;
    assert.equal(r.ctx.hostErrors.length, failed);
    assert.match(r.ctx.hostErrors[0]!, new RegExp(`^drive '${path}': writing 262144 bytes at sector \\d+ failed \\(ENOSPC\\)`));
    assert.deepEqual(r.ctx.faults, []);
    // On tmpfs ZERO_RANGE is unsupported: WRITE_ZEROES falls back to writing zeros over allocated blocks.
    assert.equal(r.send([header(VIRTIO_BLK_T_WRITE_ZEROES, 0), segment(0, 8)], [1]).status, VIRTIO_BLK_S_OK);
    const rd = r.send([header(VIRTIO_BLK_T_IN, 0)], [16 * SECTOR_SIZE + 1]);
    assert.equal(rd.status, VIRTIO_BLK_S_OK, "reads still work");
    assert.ok(rd.data.subarray(0, 8 * SECTOR_SIZE).every((b) => b === 0));
    assert.deepEqual(rd.data.subarray(8 * SECTOR_SIZE), big.subarray(8 * SECTOR_SIZE, 16 * SECTOR_SIZE));
    assert.equal(r.send([header(VIRTIO_BLK_T_FLUSH, 0)], [1]).status, VIRTIO_BLK_S_OK);
    assert.equal(r.ctx.failures.length, 0);
    r.close();
  } finally {
    execFileSync("umount", [mnt]);
    rmSync(mnt, { recursive: true, force: true });
  }
});

test("attaches a host block device (a loop device): size from BLKGETSIZE64, data both ways, flushes", (t) => {
  const file = image(256 * 1024);
  let loop: string;
  try {
    loop = execFileSync("losetup", ["-f", "--show", file], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return t.skip("cannot create a loop device here");
  }
  try {
    assert.ok(statSync(loop).isBlockDevice());
    const r = rig({ path: loop });
    assert.equal(r.blk.capacitySectors, BigInt((256 * 1024) / SECTOR_SIZE));
    const rd = r.send([header(VIRTIO_BLK_T_IN, 2)], [SECTOR_SIZE + 1]);
    assert.equal(rd.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(rd.data, new Uint8Array(readFileSync(file).subarray(2 * SECTOR_SIZE, 3 * SECTOR_SIZE)));
    const data = pattern(4096, 5);
    assert.equal(r.send([header(VIRTIO_BLK_T_OUT, 8), data], [1]).status, VIRTIO_BLK_S_OK);
    assert.equal(r.send([header(VIRTIO_BLK_T_FLUSH, 0)], [1]).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(r.send([header(VIRTIO_BLK_T_IN, 8)], [4096 + 1]).data, data);
    // Past the device's end is outside the disk, as for a file.
    assert.equal(r.send([header(VIRTIO_BLK_T_IN, 512)], [SECTOR_SIZE + 1]).status, VIRTIO_BLK_S_IOERR);
    r.close();
    assert.deepEqual(new Uint8Array(readFileSync(file).subarray(8 * SECTOR_SIZE, 8 * SECTOR_SIZE + 4096)), data);
  } finally {
    execFileSync("losetup", ["-d", loop]);
  }
});

test("refuses a character device with EBLKOPEN", () => {
  assert.throws(() => createBackend({ path: "/dev/null", readOnly: true }),
    (e: unknown) => e instanceof BlockError && e.code === "EBLKOPEN" && /neither a regular file nor a block device/.test(e.message));
});

test("a new backing file (Firecracker's PATCH /drives): writes to the old one are kept, the new capacity is in config space with a config-change interrupt, reads come from the new file", () => {
  const r = rig({ bytes: 64 * 1024 });
  const written = pattern(SECTOR_SIZE, 5);
  assert.equal(r.send([header(VIRTIO_BLK_T_OUT, 3), written], [1]).status, VIRTIO_BLK_S_OK);
  const next = image(256 * 1024);
  const answer = r.blk.control({ op: BLOCK_REQUEST_UPDATE_BACKING, args: { path: next } }) as { capacitySectors: number };
  assert.equal(answer.capacitySectors, 512);
  assert.equal(getU64(dataView(r.ctx.config), virtio_blk_config.capacity), 512n, "capacity in config space");
  assert.equal(r.ctx.configChanges, 1, "one config-change interrupt");
  assert.deepEqual(new Uint8Array(readFileSync(r.path).subarray(3 * SECTOR_SIZE, 4 * SECTOR_SIZE)), written, "the old file kept its write");
  const read = r.send([header(VIRTIO_BLK_T_IN, 300)], [SECTOR_SIZE, 1]);
  assert.equal(read.status, VIRTIO_BLK_S_OK, "a sector past the old end is readable now");
  assert.deepEqual(new Uint8Array(read.data), new Uint8Array(readFileSync(next).subarray(300 * SECTOR_SIZE, 301 * SECTOR_SIZE)));
  // A file that cannot be opened changes nothing.
  assert.throws(() => r.blk.control({ op: BLOCK_REQUEST_UPDATE_BACKING, args: { path: join(dir, "missing.img") } }), /cannot be opened/);
  assert.equal(getU64(dataView(r.ctx.config), virtio_blk_config.capacity), 512n);
  assert.throws(() => r.blk.control({ op: BLOCK_REQUEST_UPDATE_BACKING, args: {} }), /path/);
  r.close();
});
