import assert from "node:assert/strict";
import { test } from "node:test";
import {
  CAN_USE_HEAP, E820_TYPE_RAM, LOADED_HIGH, boot_e820_entry, boot_params, setup_header,
} from "../linux/abi.generated.js";
import { e820Map } from "../arch/x86_64/e820.js";
import { CMDLINE_START, MiB, ZERO_PAGE_START, ramRegions } from "../arch/x86_64/layout.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { loadKernel } from "./kernel-image.js";
import { ELF_BOOT_PROTOCOL, HEAP_END_PTR, LOADER_TYPE_UNDEFINED, writeBootParams } from "./linux-boot.js";
import { makeBzImage, makeElfKernel } from "./testing/images.js";

function withMemory(fn: (mem: GuestMemory) => void): void {
  const mem = GuestMemory.create(ramRegions(64 * MiB));
  try { fn(mem); } finally { mem.dispose(); }
}
const hdr = (f: keyof typeof setup_header): number => ZERO_PAGE_START + boot_params.hdr + setup_header[f];

test("a bzImage's zero page is its own setup header plus the loader fields", () => {
  withMemory((mem) => {
    const file = makeBzImage({ payload: new Uint8Array(0x1000), cmdlineSize: 1234 });
    const kernel = loadKernel(mem, file, "bzImage");
    mem.fill(ZERO_PAGE_START, 4096, 0xee); // stale data must not survive
    writeBootParams(mem, {
      kernel, cmdline: { address: CMDLINE_START, sizeBytes: 10 }, initrd: { address: 0x3f00000, sizeBytes: 12345 },
      e820: e820Map(mem.regions), rsdpAddress: 0xe0000,
    });
    assert.equal(mem.readU16(hdr("version")), 0x020f);
    assert.equal(mem.readU32(hdr("cmdline_size")), 1234, "copied from the kernel's header");
    assert.equal(mem.readU32(hdr("kernel_alignment")), 0x200000);
    assert.equal(mem.readU8(hdr("type_of_loader")), LOADER_TYPE_UNDEFINED);
    assert.equal(mem.readU8(hdr("loadflags")), LOADED_HIGH | CAN_USE_HEAP);
    assert.equal(mem.readU16(hdr("heap_end_ptr")), HEAP_END_PTR);
    assert.equal(mem.readU32(hdr("cmd_line_ptr")), CMDLINE_START);
    assert.equal(mem.readU32(hdr("ramdisk_image")), 0x3f00000);
    assert.equal(mem.readU32(hdr("ramdisk_size")), 12345);
    assert.equal(mem.readU32(hdr("code32_start")), kernel.kernelStart);
    assert.equal(mem.readU32(ZERO_PAGE_START + boot_params.ext_ramdisk_image), 0);
    assert.equal(mem.readU64(ZERO_PAGE_START + boot_params.acpi_rsdp_addr), 0xe0000n);
    assert.equal(mem.readU8(ZERO_PAGE_START), 0, "fields outside the header are cleared");
  });
});

test("an ELF kernel gets a default header with boot_flag, HdrS and a version", () => {
  withMemory((mem) => {
    const kernel = loadKernel(mem, makeElfKernel({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: new Uint8Array(16) }] }), "vmlinux");
    writeBootParams(mem, { kernel, cmdline: { address: CMDLINE_START, sizeBytes: 1 }, e820: e820Map(mem.regions) });
    assert.equal(mem.readU16(hdr("boot_flag")), 0xaa55);
    assert.equal(Buffer.from(mem.read(hdr("header"), 4)).toString("latin1"), "HdrS");
    assert.equal(mem.readU16(hdr("version")), ELF_BOOT_PROTOCOL);
    assert.equal(mem.readU32(hdr("initrd_addr_max")), 0x37ffffff);
    assert.equal(mem.readU8(hdr("type_of_loader")), LOADER_TYPE_UNDEFINED);
    assert.equal(mem.readU32(hdr("ramdisk_image")), 0);
    assert.equal(mem.readU64(ZERO_PAGE_START + boot_params.acpi_rsdp_addr), 0n, "no ACPI tables, no RSDP pointer");
  });
});

test("the zero page carries the e820 map", () => {
  withMemory((mem) => {
    const kernel = loadKernel(mem, makeElfKernel({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: new Uint8Array(16) }] }), "vmlinux");
    const e820 = e820Map(mem.regions);
    writeBootParams(mem, { kernel, cmdline: { address: CMDLINE_START, sizeBytes: 1 }, e820 });
    assert.equal(mem.readU8(ZERO_PAGE_START + boot_params.e820_entries), e820.length);
    const read = e820.map((_, i) => {
      const at = ZERO_PAGE_START + boot_params.e820_table + i * boot_e820_entry.SIZE;
      return { addr: Number(mem.readU64(at)), size: Number(mem.readU64(at + 8)), type: mem.readU32(at + 16) };
    });
    assert.deepEqual(read, e820);
    assert.equal(read[read.length - 1]!.type, E820_TYPE_RAM);
    assert.equal(read[read.length - 1]!.addr + read[read.length - 1]!.size, 64 * MiB);
  });
});
