/**
 * PVH boot: the kernel is entered at its XEN_ELFNOTE_PHYS32_ENTRY in 32-bit
 * protected mode with EBX pointing to struct hvm_start_info
 * (xen/include/public/arch-x86/hvm/start_info.h, mirrored in Linux's
 * include/xen/interface/hvm/start_info.h; Linux reads it in
 * arch/x86/platform/pvh/enlighten.c). Version 1 adds the memory map, which
 * is what a non-Xen host must provide.
 *
 *   PVH_INFO_START    struct hvm_start_info
 *   PVH_MEMMAP_START  hvm_memmap_table_entry[], then the module list (the initrd)
 */
import {
  E820_TYPE_ACPI, E820_TYPE_RAM, XEN_HVM_MEMMAP_TYPE_ACPI, XEN_HVM_MEMMAP_TYPE_RAM,
  XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry, hvm_modlist_entry,
  hvm_start_info,
} from "../linux/abi.generated.js";
import type { E820Entry } from "../arch/x86_64/e820.js";
import { PVH_INFO_START, PVH_MEMMAP_START, ZERO_PAGE_START } from "../arch/x86_64/layout.js";
import type { GuestMemory } from "../memory/guest-memory.js";
import { BootError, hex } from "./errors.js";
import type { GuestRange } from "./placement.js";

/** hvm_start_info version 1: with memmap_paddr / memmap_entries. */
export const HVM_START_INFO_VERSION = 1;

/** What goes into the PVH start info. */
export interface PvhStartInfoOptions {
  cmdline: GuestRange;
  initrd?: GuestRange;
  e820: readonly E820Entry[];
  rsdpAddress?: number;
}

/** The PVH memory-map type for an e820 type (the values coincide; this keeps the mapping explicit). Other types are reserved. */
function memmapType(e820Type: number): number {
  switch (e820Type) {
    case E820_TYPE_RAM: return XEN_HVM_MEMMAP_TYPE_RAM;
    case E820_TYPE_ACPI: return XEN_HVM_MEMMAP_TYPE_ACPI;
    default: return XEN_HVM_MEMMAP_TYPE_RESERVED;
  }
}

/** Writes hvm_start_info, its memory map and module list. Returns the start info address (for EBX). */
export function writePvhStartInfo(mem: GuestMemory, o: PvhStartInfoOptions): number {
  const memmapBytes = o.e820.length * hvm_memmap_table_entry.SIZE;
  const modlist = Math.ceil((PVH_MEMMAP_START + memmapBytes) / 8) * 8;
  const end = modlist + (o.initrd ? hvm_modlist_entry.SIZE : 0);
  if (end > ZERO_PAGE_START) {
    throw new BootError("EMEMMAP", `Cannot write the PVH start info: a memory map of ${o.e820.length} entries does not fit below ${hex(ZERO_PAGE_START)}`);
  }
  mem.fill(PVH_INFO_START, end - PVH_INFO_START, 0);
  const si = (f: keyof typeof hvm_start_info): number => PVH_INFO_START + hvm_start_info[f];
  mem.writeU32(si("magic"), XEN_HVM_START_MAGIC_VALUE);
  mem.writeU32(si("version"), HVM_START_INFO_VERSION);
  mem.writeU64(si("cmdline_paddr"), o.cmdline.address);
  mem.writeU64(si("rsdp_paddr"), o.rsdpAddress ?? 0);
  mem.writeU64(si("memmap_paddr"), PVH_MEMMAP_START);
  mem.writeU32(si("memmap_entries"), o.e820.length);
  o.e820.forEach((e, i) => {
    const at = PVH_MEMMAP_START + i * hvm_memmap_table_entry.SIZE;
    mem.writeU64(at + hvm_memmap_table_entry.addr, e.addr);
    mem.writeU64(at + hvm_memmap_table_entry.size, e.size);
    mem.writeU32(at + hvm_memmap_table_entry.type, memmapType(e.type));
  });
  if (o.initrd) {
    // Linux: "The first module is always ramdisk."
    mem.writeU32(si("nr_modules"), 1);
    mem.writeU64(si("modlist_paddr"), modlist);
    mem.writeU64(modlist + hvm_modlist_entry.paddr, o.initrd.address);
    mem.writeU64(modlist + hvm_modlist_entry.size, o.initrd.sizeBytes);
  }
  return PVH_INFO_START;
}
