import assert from "node:assert/strict";
import { test } from "node:test";
import {
  XEN_HVM_MEMMAP_TYPE_RAM, XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry,
  hvm_modlist_entry, hvm_start_info,
} from "../linux/abi.generated.js";
import { e820Map } from "../arch/x86_64/e820.js";
import { CMDLINE_START, MiB, PVH_INFO_START, PVH_MEMMAP_START, ZERO_PAGE_START, ramRegions } from "../arch/x86_64/layout.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { BootError } from "./errors.js";
import { writePvhStartInfo } from "./pvh.js";

function withMemory(fn: (mem: GuestMemory) => void): void {
  const mem = GuestMemory.create(ramRegions(64 * MiB));
  try { fn(mem); } finally { mem.dispose(); }
}
const si = (f: keyof typeof hvm_start_info): number => PVH_INFO_START + hvm_start_info[f];

test("the PVH start info has the magic, version 1, cmdline, RSDP and the memory map", () => {
  withMemory((mem) => {
    const e820 = e820Map(mem.regions);
    const at = writePvhStartInfo(mem, { cmdline: { address: CMDLINE_START, sizeBytes: 5 }, e820, rsdpAddress: 0xe0000 });
    assert.equal(at, PVH_INFO_START);
    assert.equal(mem.readU32(si("magic")), XEN_HVM_START_MAGIC_VALUE);
    assert.equal(mem.readU32(si("version")), 1);
    assert.equal(mem.readU64(si("cmdline_paddr")), BigInt(CMDLINE_START));
    assert.equal(mem.readU64(si("rsdp_paddr")), 0xe0000n);
    assert.equal(mem.readU32(si("nr_modules")), 0);
    assert.equal(mem.readU64(si("memmap_paddr")), BigInt(PVH_MEMMAP_START));
    assert.equal(mem.readU32(si("memmap_entries")), e820.length);
    const types = e820.map((_, i) => mem.readU32(PVH_MEMMAP_START + i * hvm_memmap_table_entry.SIZE + hvm_memmap_table_entry.type));
    assert.deepEqual(types, [XEN_HVM_MEMMAP_TYPE_RAM, XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_MEMMAP_TYPE_RAM]);
    const last = PVH_MEMMAP_START + (e820.length - 1) * hvm_memmap_table_entry.SIZE;
    assert.equal(mem.readU64(last + hvm_memmap_table_entry.addr) + mem.readU64(last + hvm_memmap_table_entry.size), BigInt(64 * MiB));
  });
});

test("the initrd is the first PVH module, listed after the memory map", () => {
  withMemory((mem) => {
    const e820 = e820Map(mem.regions);
    writePvhStartInfo(mem, { cmdline: { address: CMDLINE_START, sizeBytes: 5 }, e820, initrd: { address: 0x3f00000, sizeBytes: 777 } });
    assert.equal(mem.readU32(si("nr_modules")), 1);
    const modlist = Number(mem.readU64(si("modlist_paddr")));
    assert.ok(modlist >= PVH_MEMMAP_START + e820.length * hvm_memmap_table_entry.SIZE, "after the memory map");
    assert.ok(modlist + hvm_modlist_entry.SIZE <= ZERO_PAGE_START);
    assert.equal(modlist % 8, 0);
    assert.equal(mem.readU64(modlist + hvm_modlist_entry.paddr), 0x3f00000n);
    assert.equal(mem.readU64(modlist + hvm_modlist_entry.size), 777n);
    assert.equal(mem.readU64(si("rsdp_paddr")), 0n);
  });
});

test("a memory map too long for the PVH area is a BootError", () => {
  withMemory((mem) => {
    const e820 = Array.from({ length: 200 }, (_, i) => ({ addr: i * 4096, size: 4096, type: 1 }));
    assert.throws(() => writePvhStartInfo(mem, { cmdline: { address: CMDLINE_START, sizeBytes: 1 }, e820 }),
      (e: unknown) => e instanceof BootError && e.code === "EMEMMAP");
  });
});
