/**
 * Random and hostile virtio-blk requests (fast-check) through the real
 * SplitQueue and fake driver, checked against a model of the disk: the
 * device never throws, never fails the device for a well-formed ring, only
 * touches the request's own buffers (and only writes its writable ones),
 * answers well-formed requests with OK and the model's data, and leaves the
 * file exactly as the model says after every run.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import fc from "fast-check";
import {
  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, virtio_blk_discard_write_zeroes,
  virtio_blk_outhdr,
} from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { dataView, setU32, setU64 } from "../../memory/le.js";
import { BLOCK_MAX_DISCARD_SEG, SECTOR_SIZE, VirtioBlock } from "./block.js";
import { FakeDriver } from "./testing/fake-driver.js";
import { arbRawDescriptor, recordingMemory, spaceOf, splitAt as split } from "./testing/fake-driver-hostile.js";
import type { DescriptorChain, GuestBuffer, VirtioDeviceContext, VirtQueue } from "./types.js";

const dir = mkdtempSync(join(tmpdir(), "flint-blk-prop-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const CAPACITY = 64; // sectors
const KNOWN = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES];

/** A queue that remembers every chain it hands out. */
class RecordingQueue implements VirtQueue {
  readonly popped: DescriptorChain[] = [];
  constructor(private readonly q: VirtQueue) {}
  get layout() { return this.q.layout; }
  pop() { const c = this.q.pop(); if (c) this.popped.push(c); return c; }
  pushUsed(head: number, written: number) { this.q.pushUsed(head, written); }
  pushUsedMany(heads: ArrayLike<number>, lens: ArrayLike<number>, count: number) { this.q.pushUsedMany(heads, lens, count); }
  needsInterrupt() { return this.q.needsInterrupt(); }
  setNotifications(on: boolean) { this.q.setNotifications(on); }
  hasAvailable() { return this.q.hasAvailable(); }
  undoPop() { this.q.undoPop(); }
}

class Ctx implements VirtioDeviceContext {
  faults = 0;
  readonly failures: string[] = [];
  constructor(readonly memory: GuestMemory, readonly queues: VirtQueue[], readonly config: Uint8Array, readonly features = 0n) {}
  notifyUsed(): void {}
  notifyConfigChange(): void {}
  kick(): void {}
  fail(reason: string): void { this.failures.push(reason); }
  guestFault(): void { this.faults++; }
  watch(): void {}
  unwatch(): void {}
}

interface Req {
  type: number;
  sector: bigint;
  /** Data bytes (IN: writable, OUT: readable). */
  bytes: number;
  headerBytes: number;
  segs: { sector: bigint; count: number; flags: number }[];
  /** Extra buffer in the wrong direction. */
  wrongDirection: number;
  status: boolean;
  splitAt: number[];
  seed: number;
}

const sectorArb = fc.oneof(
  { weight: 8, arbitrary: fc.bigInt({ min: 0n, max: BigInt(CAPACITY - 1) }) },
  { weight: 2, arbitrary: fc.constantFrom(BigInt(CAPACITY - 1), BigInt(CAPACITY), BigInt(CAPACITY + 1)) },
  { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) },
);

const reqArb: fc.Arbitrary<Req> = fc.record({
  type: fc.oneof({ weight: 12, arbitrary: fc.constantFrom(...KNOWN) }, { weight: 1, arbitrary: fc.nat(0xffffffff) }),
  sector: sectorArb,
  bytes: fc.oneof({ weight: 9, arbitrary: fc.nat(8).map((n) => n * SECTOR_SIZE) }, { weight: 1, arbitrary: fc.nat(4096) }),
  headerBytes: fc.oneof({ weight: 12, arbitrary: fc.constant(virtio_blk_outhdr.SIZE) }, { weight: 1, arbitrary: fc.nat(24) }),
  segs: fc.array(fc.record({
    sector: sectorArb,
    count: fc.oneof({ weight: 8, arbitrary: fc.nat(16) }, { weight: 1, arbitrary: fc.nat(0xffffffff) }),
    flags: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(0, 0, 1) }, { weight: 1, arbitrary: fc.nat(0xffffffff) }),
  }), { maxLength: BLOCK_MAX_DISCARD_SEG + 1 }),
  wrongDirection: fc.oneof({ weight: 12, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 1024 }) }),
  status: fc.oneof({ weight: 20, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  splitAt: fc.array(fc.nat(5000), { maxLength: 3 }),
  seed: fc.nat(255),
});

function splitLen(len: number, at: number[]): number[] {
  return split(new Uint8Array(len), at).map((p) => p.length);
}

const inDisk = (sector: bigint, sectors: bigint) => sector <= BigInt(CAPACITY) && sectors <= BigInt(CAPACITY) - sector;

/** The status a correct device must give, or undefined where the spec leaves a choice to the device. */
function expected(r: Req, readOnly: boolean): number {
  if (r.headerBytes < virtio_blk_outhdr.SIZE) return VIRTIO_BLK_S_IOERR;
  const ext = r.headerBytes - virtio_blk_outhdr.SIZE; // header bytes beyond the struct count as readable data
  const isIn = r.type === VIRTIO_BLK_T_IN || r.type === VIRTIO_BLK_T_GET_ID;
  // Without a separate status buffer, the last writable byte is the status byte.
  const dataIn = (isIn ? r.bytes : r.wrongDirection) - (r.status ? 0 : 1);
  const readableData = ext + (isIn ? r.wrongDirection : 0);
  switch (r.type) {
    case VIRTIO_BLK_T_IN: return readableData === 0 && dataIn % SECTOR_SIZE === 0 && inDisk(r.sector, BigInt(dataIn / SECTOR_SIZE)) ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
    case VIRTIO_BLK_T_OUT: return dataIn === 0 && !readOnly && (r.bytes + ext) % SECTOR_SIZE === 0 && inDisk(r.sector, BigInt((r.bytes + ext) / SECTOR_SIZE)) ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
    case VIRTIO_BLK_T_FLUSH: return ext === 0 && dataIn === 0 ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
    case VIRTIO_BLK_T_GET_ID: return readableData === 0 ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
      const payload = r.segs.length * virtio_blk_discard_write_zeroes.SIZE + ext;
      if (dataIn !== 0 || readOnly) return VIRTIO_BLK_S_IOERR;
      if (payload === 0 || payload % virtio_blk_discard_write_zeroes.SIZE !== 0 || r.segs.length > BLOCK_MAX_DISCARD_SEG) return VIRTIO_BLK_S_IOERR;
      if (ext !== 0) return -1; // garbage segments: any error is fine
      for (const s of r.segs) {
        const allowed = r.type === VIRTIO_BLK_T_WRITE_ZEROES ? 1 : 0;
        if ((s.flags & ~allowed) !== 0) return VIRTIO_BLK_S_UNSUPP;
        if (!inDisk(s.sector, BigInt(s.count))) return VIRTIO_BLK_S_IOERR;
      }
      return VIRTIO_BLK_S_OK;
    }
    default: return VIRTIO_BLK_S_UNSUPP;
  }
}

function hostileRun(readOnly: boolean, numRuns: number, perRun: number) {
  const path = join(dir, `disk-${readOnly}.img`);
  const model = Uint8Array.from({ length: CAPACITY * SECTOR_SIZE }, (_, i) => (i * 31) & 0xff);
  writeFileSync(path, model);
  const blk = new VirtioBlock({ path, readOnly });
  const real = GuestMemory.create([{ guestBase: 0, size: 0x10000 }, { guestBase: 0x20000, size: 0x10000 }]);
  const rec = recordingMemory(real);
  let requests = 0;
  try {
    fc.assert(fc.property(fc.array(reqArb, { minLength: perRun, maxLength: perRun }), fc.boolean(), (reqs, indirect) => {
      const drv = new FakeDriver(real, { base: 0x20000, bytes: 0x10000, queueSize: 16, features: { eventIdx: false, indirect } });
      const q = new RecordingQueue(drv.createQueue());
      const ctx = new Ctx(rec.memory, [q], blk.initialConfig(), blk.deviceFeatures);
      blk.activate(ctx);
      for (const r of reqs) {
        requests++;
        const hdr = new Uint8Array(Math.max(virtio_blk_outhdr.SIZE, r.headerBytes)).fill(r.seed);
        setU32(dataView(hdr), virtio_blk_outhdr.type, r.type);
        setU64(dataView(hdr), virtio_blk_outhdr.sector, r.sector);
        const segs = new Uint8Array(r.segs.length * virtio_blk_discard_write_zeroes.SIZE);
        r.segs.forEach((s, i) => {
          const v = dataView(segs.subarray(i * virtio_blk_discard_write_zeroes.SIZE));
          setU64(v, virtio_blk_discard_write_zeroes.sector, s.sector);
          setU32(v, virtio_blk_discard_write_zeroes.num_sectors, s.count);
          setU32(v, virtio_blk_discard_write_zeroes.flags, s.flags);
        });
        const isOut = r.type === VIRTIO_BLK_T_OUT;
        const isSeg = r.type === VIRTIO_BLK_T_DISCARD || r.type === VIRTIO_BLK_T_WRITE_ZEROES;
        const isIn = r.type === VIRTIO_BLK_T_IN || r.type === VIRTIO_BLK_T_GET_ID || !KNOWN.includes(r.type);
        const outData = Uint8Array.from({ length: isOut ? r.bytes : 0 }, (_, i) => (i + r.seed) & 0xff);
        // A truncated header comes alone (else the payload would complete it).
        const payload = r.headerBytes < virtio_blk_outhdr.SIZE ? new Uint8Array(0) : isSeg ? segs : outData;
        const readable = concat(hdr.subarray(0, r.headerBytes), payload);
        const writableData = (isIn ? r.bytes : 0) + (isIn ? 0 : r.wrongDirection);
        const readableAll = isIn && r.wrongDirection && r.headerBytes >= virtio_blk_outhdr.SIZE ? concat(readable, new Uint8Array(r.wrongDirection)) : readable;
        const writable = [...splitLen(writableData, r.splitAt), ...(r.status ? [1] : [])];
        const rpieces = split(readableAll, r.splitAt);
        if (rpieces.length + writable.length === 0) continue;
        drv.addChain({ readable: rpieces, writable, indirect: indirect && rpieces.length + writable.length > 1 });

        const before = real.read(0x20000, 0x10000);
        rec.clear();
        q.popped.length = 0;
        blk.onNotify(0);
        assert.deepEqual(ctx.failures, [], "a well-formed ring never fails the device");
        assert.equal(rec.outside.length, 0, "no access outside guest memory");
        const chain = q.popped[0]!;
        assert.ok(chain, "the device popped the chain");
        // Only the chain's buffers are accessed, and only writable ones written.
        const within = (a: { addr: number; len: number }, bufs: GuestBuffer[]) => bufs.some((b) => a.addr >= b.addr && a.addr + a.len <= b.addr + b.len);
        for (const a of rec.accesses) {
          const ok = a.op === "write" ? within(a, chain.writable) : within(a, [...chain.readable, ...chain.writable]);
          assert.ok(ok, `access ${JSON.stringify(a)} is outside the request's buffers`);
        }
        const now = real.read(0x20000, 0x10000);
        for (const b of chain.writable) now.set(real.read(b.addr, b.len).map((_, i) => before[b.addr - 0x20000 + i]!), b.addr - 0x20000);
        const used = drv.layout.usedRing - 0x20000;
        now.set(before.subarray(used, used + 4 + 8 * 16 + 2), used);
        assert.ok(Buffer.from(now).equals(Buffer.from(before)), "nothing outside the writable buffers and used ring changed");

        const u = drv.popUsed()!;
        assert.ok(u, "the chain came back");
        assert.ok(u.len <= chain.writableBytes);
        if (!r.status && writableData === 0) { assert.equal(u.len, 0); continue; }
        const all = concat(...u.buffers);
        const status = all[all.length - 1]!;
        const want = expected(r, readOnly);
        if (want >= 0) assert.equal(status, want, `status for ${JSON.stringify(r, (_, v) => (typeof v === "bigint" ? v.toString() : v))}`);
        else assert.notEqual(status, VIRTIO_BLK_S_OK);
        if (status !== VIRTIO_BLK_S_OK) continue;
        const off = Number(r.sector) * SECTOR_SIZE;
        if (r.type === VIRTIO_BLK_T_IN) {
          const n = all.length - 1;
          assert.equal(u.len, n + 1);
          assert.deepEqual(all.subarray(0, n), model.subarray(off, off + n), "IN returns the disk's bytes");
        } else if (isOut) {
          // Header bytes beyond struct virtio_blk_outhdr are the first bytes of the data (§5.2.6).
          model.set(concat(hdr.subarray(virtio_blk_outhdr.SIZE, r.headerBytes), outData), off);
        } else if (isSeg) {
          for (const s of r.segs) model.fill(0, Number(s.sector) * SECTOR_SIZE, (Number(s.sector) + s.count) * SECTOR_SIZE);
        }
      }
      assert.ok(Buffer.from(readFileSync(path)).equals(Buffer.from(model)), "the file matches the model");
    }), { numRuns, includeErrorInReport: true });
  } finally {
    blk.shutdown();
    real.dispose();
  }
  return requests;
}

const concat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  parts.reduce((o, p) => (out.set(p, o), o + p.length), 0);
  return out;
};

test("10^5 random requests to a writable drive: right status, model data, own buffers only", () => {
  assert.ok(hostileRun(false, 2500, 32) >= 80_000);
});

test("random requests to a read-only drive never change the file", () => {
  assert.ok(hostileRun(true, 700, 32) >= 20_000);
});

test("hostile rings (random raw descriptors and indices) never make the device throw or leave guest memory", () => {
  const real = GuestMemory.create([{ guestBase: 0, size: 0x10000 }, { guestBase: 0x20000, size: 0x10000 }]);
  const rec = recordingMemory(real);
  const path = join(dir, "hostile.img");
  writeFileSync(path, new Uint8Array(CAPACITY * SECTOR_SIZE));
  const blk = new VirtioBlock({ path, readOnly: false });
  const space = spaceOf(real);
  try {
    fc.assert(fc.property(
      fc.array(fc.tuple(fc.nat(15), arbRawDescriptor(space, 16)), { minLength: 1, maxLength: 24 }),
      fc.array(fc.nat(0xffff), { minLength: 1, maxLength: 4 }),
      fc.integer({ min: -2, max: 20 }),
      fc.record({ eventIdx: fc.boolean(), indirect: fc.boolean() }),
      (descs, heads, idx, features) => {
        const drv = new FakeDriver(real, { base: 0x20000, bytes: 0x800, queueSize: 16, features });
        const ctx = new Ctx(rec.memory, [drv.createQueue()], blk.initialConfig(), blk.deviceFeatures);
        blk.reset();
        blk.activate(ctx);
        for (const [i, d] of descs) drv.writeDescriptor(i, d);
        heads.forEach((h, i) => drv.setAvailRing(i, h));
        drv.setAvailIdx(idx & 0xffff);
        rec.clear();
        blk.onNotify(0);
        blk.onNotify(0);
        assert.equal(rec.outside.length, 0);
      }), { numRuns: 10_000 });
  } finally {
    blk.shutdown();
    real.dispose();
  }
});
