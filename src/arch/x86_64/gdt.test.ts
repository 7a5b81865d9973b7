import assert from "node:assert/strict";
import { test } from "node:test";
import { GuestMemory } from "../../memory/guest-memory.js";
import {
  BOOT_CS_SELECTOR, BOOT_DS_SELECTOR, BOOT_TSS_SELECTOR, GDT_ENTRY_SIZE, bootGdtEntries, encodeGdtEntry,
  gdtEntryToSegment, writeBootGdt,
} from "./gdt.js";
import { BOOT_GDT_START, BOOT_IDT_START, MiB } from "./layout.js";

test("the 64-bit boot GDT has Linux's flat __BOOT_CS and __BOOT_DS descriptors", () => {
  const e = bootGdtEntries("long64");
  // The values Linux itself uses: GDT_ENTRY_INIT(0xa09b, 0, 0xfffff) and (0xc093, 0, 0xfffff).
  assert.equal(e[BOOT_CS_SELECTOR / 8], 0x00af9b000000ffffn);
  assert.equal(e[BOOT_DS_SELECTOR / 8], 0x00cf93000000ffffn);
  assert.equal(e[0], 0n);
});

test("the PVH GDT's code segment is 32-bit (D=1, L=0)", () => {
  const cs = gdtEntryToSegment(bootGdtEntries("protected32")[BOOT_CS_SELECTOR / 8]!, BOOT_CS_SELECTOR);
  assert.equal(cs.db, 1);
  assert.equal(cs.l, 0);
  assert.equal(cs.limit, 0xffffffff);
});

test("a descriptor converts to a KVM segment with its limit scaled by the granularity", () => {
  const seg = gdtEntryToSegment(0x00af9b000000ffffn, 0x10);
  assert.deepEqual(seg, {
    base: 0n, limit: 0xffffffff, selector: 0x10, type: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0,
  });
});

test("encoding and decoding a descriptor round-trips every field", () => {
  const d = { base: 0x12345678, limit: 0xabcde, type: 0x5, s: 1, dpl: 2, present: 1, avl: 1, l: 0, db: 1, g: 0 };
  const seg = gdtEntryToSegment(encodeGdtEntry(d), 0x2b);
  assert.equal(seg.base, 0x12345678n);
  assert.equal(seg.limit, 0xabcde);
  assert.deepEqual([seg.type, seg.s, seg.dpl, seg.present, seg.avl, seg.l, seg.db, seg.g], [5, 1, 2, 1, 1, 0, 1, 0]);
});

test("a not-present descriptor gives an unusable segment", () => {
  assert.equal(gdtEntryToSegment(0n, 0).unusable, 1);
});

test("the boot GDT is written below the IDT and describes a busy TSS in TR", () => {
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 * MiB }]);
  try {
    const s = writeBootGdt(mem, "long64");
    assert.ok(BOOT_GDT_START + s.gdt.limit + 1 <= BOOT_IDT_START);
    assert.equal(mem.readU64(BOOT_GDT_START + BOOT_CS_SELECTOR), 0x00af9b000000ffffn);
    assert.equal(s.tr.selector, BOOT_TSS_SELECTOR);
    assert.equal(s.tr.type, 0xb);
    assert.equal(s.tr.s, 0);
    assert.equal(s.tr.present, 1);
    assert.equal(s.idt.base, BigInt(BOOT_IDT_START));
    assert.equal(s.idt.limit, GDT_ENTRY_SIZE - 1);
    assert.equal(mem.readU64(BOOT_IDT_START), 0n);
  } finally {
    mem.dispose();
  }
});
