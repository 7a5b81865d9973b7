import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { GiB, MMIO_GAP_END, MMIO_GAP_START, MiB, ramRegions } from "../arch/x86_64/layout.js";
import { GuestMemory, MemoryError } from "./guest-memory.js";

test("memory that fits below the MMIO gap is one region; larger memory is split around it", () => {
  assert.deepEqual(ramRegions(256 * MiB), [{ guestBase: 0, size: 256 * MiB }]);
  assert.deepEqual(ramRegions(4 * GiB), [
    { guestBase: 0, size: MMIO_GAP_START },
    { guestBase: MMIO_GAP_END, size: 4 * GiB - MMIO_GAP_START },
  ]);
});

test("a 4 GiB guest is really mapped on both sides of the gap and nothing is mapped inside it", () => {
  const mem = GuestMemory.create(ramRegions(4 * GiB));
  try {
    assert.equal(mem.totalBytes, 4 * GiB);
    mem.writeU64(MMIO_GAP_START - 8, 0x1122334455667788n);
    mem.writeU64(MMIO_GAP_END, 0x99n);
    assert.equal(mem.readU64(MMIO_GAP_START - 8), 0x1122334455667788n);
    assert.equal(mem.readU64(MMIO_GAP_END), 0x99n);
    assert.equal(mem.contains(MMIO_GAP_START, 1), false);
    assert.throws(() => mem.readU8(MMIO_GAP_START + 4096), (e: unknown) => e instanceof MemoryError && e.code === "EGUESTRANGE");
    // A range that starts in RAM and runs into the gap is refused whole.
    assert.throws(() => mem.slice(MMIO_GAP_START - 4, 8), MemoryError);
  } finally {
    mem.dispose();
  }
});

test("every accessor refuses addresses outside guest memory, including hostile ones", () => {
  const mem = GuestMemory.create([{ guestBase: 0, size: MiB }]);
  try {
    for (const [addr, len] of [[MiB, 1], [MiB - 3, 4], [-1, 1], [2 ** 60, 8], [Number.NaN, 1], [0, -1], [0.5, 1]] as const) {
      assert.equal(mem.contains(addr, len), false, `${addr}+${len}`);
      assert.throws(() => mem.slice(addr, len), MemoryError);
      assert.throws(() => mem.readView(addr, len), MemoryError);
      assert.throws(() => mem.markWritten(addr, len), MemoryError);
      assert.equal(mem.indexOfRegion(addr, len), -1);
    }
    assert.throws(() => mem.writeU32(MiB - 2, 1), MemoryError);
    assert.throws(() => mem.readU64(MiB - 7), MemoryError);
    assert.equal(mem.readU32(MiB - 4), 0, "the last word is readable");
  } finally {
    mem.dispose();
  }
});

test("indexOfRegion names the region behind a guest range, in each region, and -1 for any other range", () => {
  const mem = GuestMemory.create([{ guestBase: 0, size: MiB }, { guestBase: 4 * MiB, size: MiB }]);
  try {
    for (const [addr, len, index] of [[0, 1, 0], [0x1234, 100, 0], [MiB - 8, 8, 0], [4 * MiB, 4096, 1], [5 * MiB - 1, 1, 1]] as const) {
      assert.equal(mem.indexOfRegion(addr, len), index, `0x${addr.toString(16)}+${len}`);
      const r = mem.regions[index]!;
      mem.writeU8(addr, 0xa5);
      assert.equal(r.bytes[addr - r.guestBase], 0xa5, "the offset in the region's bytes is address - guestBase");
    }
    assert.equal(mem.indexOfRegion(MiB - 4, 8), -1, "a range that runs off its region");
    assert.equal(mem.indexOfRegion(2 * MiB, 1), -1, "a range in the hole between regions");
    assert.deepEqual([mem.indexOfRegion(-1, 1), mem.indexOfRegion(Number.NaN, 1)], [-1, -1]);
  } finally {
    mem.dispose();
  }
});

test("discard gives pages back: they read as zero afterwards", () => {
  const mem = GuestMemory.create([{ guestBase: 0, size: MiB }]);
  try {
    mem.fill(0x10000, 0x2000, 0xab);
    mem.discard(0x10000, 0x1000);
    assert.equal(mem.readU8(0x10000), 0);
    assert.equal(mem.readU8(0x11000), 0xab);
    assert.throws(() => mem.discard(0x10001, 0x1000), MemoryError);
  } finally {
    mem.dispose();
  }
});

test("huge-page and KSM advice are accepted for guest memory", () => {
  const mem = GuestMemory.create([{ guestBase: 0, size: 8 * MiB }], { hugePages: true, mergeable: true });
  mem.writeU8(0, 1);
  mem.dispose();
});

test("a second thread's view (attach) sees the same bytes", () => {
  const mem = GuestMemory.create([{ guestBase: 0, size: MiB }]);
  try {
    const other = GuestMemory.attach(mem.describe());
    mem.writeU32(0x100, 0xdeadbeef);
    assert.equal(other.readU32(0x100), 0xdeadbeef);
    other.dispose(); // a no-op for a view that does not own the mapping
    assert.equal(mem.readU32(0x100), 0xdeadbeef);
  } finally {
    mem.dispose();
  }
});

test("with dirty tracking every path that can write marks its pages, in a map shared with attached views; reads mark nothing", () => {
  const mem = GuestMemory.create([{ guestBase: 0, size: 64 * 4096 }, { guestBase: 1 * MiB, size: 16 * 4096 }], { trackDirty: true });
  try {
    const dirtyPages = () => mem.regions.map((r) => [...r.dirty!.keys()].filter((p) => r.dirty![p] !== 0));
    assert.equal(mem.tracksDirty, true);
    mem.read(0, 64 * 4096);
    assert.equal(mem.readView(8 * 4096, 4096).length, 4096);
    mem.readU8(5); mem.readU16(5); mem.readU32(5); mem.readU64(5);
    assert.deepEqual(dirtyPages(), [[], []], "reads leave the map clean");
    mem.writeU8(1 * 4096, 1);
    mem.writeU16(2 * 4096 + 4095, 1); // a write across a page boundary marks both pages
    mem.writeU32(4 * 4096, 1);
    mem.writeU64(5 * 4096, 1n);
    mem.write(7 * 4096 - 1, new Uint8Array(2));
    mem.fill(9 * 4096, 2 * 4096);
    mem.slice(12 * 4096, 1);
    mem.markWritten(13 * 4096, 1);
    assert.equal(mem.indexOfRegion(15 * 4096, 4096), 0, "naming a range to write later marks nothing...");
    mem.markWritten(16 * 4096 + 100, 4096); // ...markWritten does, once it is written (two pages)
    mem.discard(14 * 4096, 4096);
    GuestMemory.attach(mem.describe()).writeU8(1 * MiB + 3 * 4096, 1);
    assert.deepEqual(dirtyPages(), [[1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13, 14, 16, 17], [3]]);
    mem.clearDirty();
    assert.deepEqual(dirtyPages(), [[], []]);
  } finally {
    mem.dispose();
  }
  const plain = GuestMemory.create([{ guestBase: 0, size: 4096 }]);
  assert.equal(plain.tracksDirty, false);
  assert.equal(plain.describe().regions[0]!.dirty, undefined);
  plain.dispose();
});

test("reserved memory cannot be read; mapFileOver gives it a file's pages copy-on-write at the same addresses", () => {
  const dir = mkdtempSync(join(tmpdir(), "flint-reserve-"));
  try {
    const file = join(dir, "mem");
    const contents = Buffer.alloc(2 * MiB);
    contents.writeUInt32LE(0xfeedf00d, MiB + 16);
    writeFileSync(file, contents);
    const ranges = [{ guestBase: 0, size: MiB }, { guestBase: 4 * MiB, size: MiB }];
    const reserved = GuestMemory.reserve(ranges);
    const addresses = reserved.regions.map((r) => r.hostAddress);
    assert.throws(() => reserved.readU8(0), (e: unknown) => e instanceof MemoryError && e.code === "EDISPOSED");
    const fd = openSync(file, "r");
    let m: GuestMemory;
    try {
      m = GuestMemory.mapFileOver(reserved, [{ guestBase: 4 * MiB, size: MiB, fileOffset: MiB }, { guestBase: 0, size: MiB, fileOffset: 0 }], fd);
    } finally {
      closeSync(fd);
    }
    try {
      assert.deepEqual(m.regions.map((r) => r.hostAddress), addresses, "the same host addresses (KVM has them registered)");
      assert.equal(m.readU32(4 * MiB + 16), 0xfeedf00d);
      m.writeU32(4 * MiB + 16, 1);
      assert.equal(readFileSync(file).readUInt32LE(MiB + 16), 0xfeedf00d, "writes stay private");
      assert.throws(() => reserved.readU8(0), MemoryError, "the reservation handed over stays unusable");
      reserved.dispose(); // a no-op: the new object owns the mappings
      assert.equal(m.readU32(4 * MiB + 16), 1);
    } finally {
      m.dispose();
    }
    // Another layout is refused, and the reservation released.
    const other = GuestMemory.reserve([{ guestBase: 0, size: MiB }]);
    assert.throws(() => GuestMemory.mapFileOver(other, [{ guestBase: 0, size: 2 * MiB, fileOffset: 0 }], 0),
      (e: unknown) => e instanceof MemoryError && e.code === "EMEMCONFIG");
    assert.throws(() => GuestMemory.mapFileOver(other, [{ guestBase: 0, size: MiB, fileOffset: 0 }], 0), MemoryError, "it cannot be used twice");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("createOver gives reserved memory fresh zeroed pages at the same addresses; another layout is refused", () => {
  const ranges = [{ guestBase: 0, size: MiB }, { guestBase: 4 * MiB, size: MiB }];
  const reserved = GuestMemory.reserve(ranges);
  const addresses = reserved.regions.map((r) => r.hostAddress);
  const m = GuestMemory.createOver(reserved, [ranges[1]!, ranges[0]!]);
  try {
    assert.deepEqual(m.regions.map((r) => r.hostAddress), addresses, "the same host addresses (KVM has them registered)");
    assert.equal(m.readU32(4 * MiB + 16), 0);
    m.writeU32(4 * MiB + 16, 0xfeedf00d);
    m.writeU32(MiB - 4, 7);
    assert.equal(m.readU32(4 * MiB + 16), 0xfeedf00d);
    assert.equal(m.readU32(MiB - 4), 7);
    assert.throws(() => reserved.readU8(0), MemoryError, "the reservation handed over stays unusable");
  } finally {
    m.dispose();
  }
  const other = GuestMemory.reserve([{ guestBase: 0, size: MiB }]);
  assert.throws(() => GuestMemory.createOver(other, [{ guestBase: 0, size: 2 * MiB }]), (e: unknown) => e instanceof MemoryError && e.code === "EMEMCONFIG");
  assert.throws(() => GuestMemory.createOver(other, [{ guestBase: 0, size: MiB }]), MemoryError, "it cannot be used twice");
});
