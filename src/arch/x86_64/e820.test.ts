import assert from "node:assert/strict";
import { test } from "node:test";
import { E820_TYPE_RAM, E820_TYPE_RESERVED } from "../../linux/abi.generated.js";
import { e820Map, lowRamEnd } from "./e820.js";
import { ArchError } from "./errors.js";
import { EBDA_START, GiB, HIMEM_START, MiB, MMIO_GAP_END, MMIO_GAP_START, ramRegions } from "./layout.js";

test("a small VM has low RAM, the reserved EBDA-to-1MiB hole, and RAM up to its end", () => {
  assert.deepEqual(e820Map(ramRegions(256 * MiB)), [
    { addr: 0, size: EBDA_START, type: E820_TYPE_RAM },
    { addr: EBDA_START, size: HIMEM_START - EBDA_START, type: E820_TYPE_RESERVED },
    { addr: HIMEM_START, size: 256 * MiB - HIMEM_START, type: E820_TYPE_RAM },
  ]);
});

test("a VM larger than the MMIO gap start gets RAM below the gap and above 4 GiB", () => {
  const map = e820Map(ramRegions(4 * GiB));
  assert.equal(map.length, 4);
  assert.deepEqual(map[2], { addr: HIMEM_START, size: MMIO_GAP_START - HIMEM_START, type: E820_TYPE_RAM });
  assert.deepEqual(map[3], { addr: MMIO_GAP_END, size: 4 * GiB - MMIO_GAP_START, type: E820_TYPE_RAM });
});

test("no e820 RAM entry overlaps the MMIO gap or the reserved hole", () => {
  for (const mem of [32 * MiB, 3 * GiB, 3 * GiB + 4096, 8 * GiB]) {
    for (const e of e820Map(ramRegions(mem)).filter((x) => x.type === E820_TYPE_RAM)) {
      assert.ok(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END, `entry ${e.addr} overlaps the gap`);
      assert.ok(e.addr + e.size <= EBDA_START || e.addr >= HIMEM_START);
    }
  }
});

test("memory that does not cover the first MiB is rejected with EMEMLAYOUT", () => {
  assert.throws(() => e820Map([{ guestBase: 0, size: 512 * 1024 }]), (e: unknown) => e instanceof ArchError && e.code === "EMEMLAYOUT");
});

test("low RAM ends at the end of memory or at the MMIO gap, whichever is lower", () => {
  assert.equal(lowRamEnd(ramRegions(64 * MiB)), 64 * MiB);
  assert.equal(lowRamEnd(ramRegions(6 * GiB)), MMIO_GAP_START);
});
