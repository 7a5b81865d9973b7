/**
 * The guest's physical memory map as Linux sees it: the BIOS e820 table
 * (Documentation/x86/zero-page.rst, boot_params.e820_table) and, converted
 * one to one, the PVH memory map (xen/interface/hvm/start_info.h).
 *
 *   [0, EBDA_START)                RAM (real-mode area, zero page, page tables, cmdline)
 *   [EBDA_START, HIMEM_START)      reserved: MP table (EBDA), ACPI tables, legacy hole
 *   [HIMEM_START, MMIO_GAP_START)  RAM, as far as guest memory goes
 *   [MMIO_GAP_END, ...)            RAM above 4 GiB, when memory does not fit below the gap
 */
import { E820_TYPE_RAM, E820_TYPE_RESERVED } from "../../linux/abi.generated.js";
import { ArchError, hex } from "./errors.js";
import { EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START } from "./layout.js";

/** One e820 entry (struct boot_e820_entry): [addr, addr+size) of `type` (E820_TYPE_*). */
export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/** A guest RAM region as GuestMemory or ramRegions() describe it. */
export interface RamRegion {
  readonly guestBase: number;
  readonly size: number;
}

/** Windows of the address space where guest RAM is usable RAM above the legacy hole. */
const HIGH_WINDOWS: readonly [number, number][] = [
  [HIMEM_START, MMIO_GAP_START],
  [MMIO_GAP_END, Number.MAX_SAFE_INTEGER],
];

/**
 * Builds the e820 map for guest RAM `regions`. The low 1 MiB must be RAM (flint
 * puts its boot structures there); every other byte of RAM outside the MMIO gap
 * is reported as usable. Entries are sorted and adjacent RAM is merged.
 */
export function e820Map(regions: readonly RamRegion[]): E820Entry[] {
  if (!regions.some((r) => r.guestBase <= 0 && r.guestBase + r.size >= HIMEM_START)) {
    throw new ArchError("EMEMLAYOUT", `Cannot build the memory map: guest RAM must cover [0, ${hex(HIMEM_START)}) for the boot structures`);
  }
  const ram: E820Entry[] = [];
  for (const r of [...regions].sort((a, b) => a.guestBase - b.guestBase)) {
    for (const [lo, hi] of HIGH_WINDOWS) {
      const start = Math.max(r.guestBase, lo);
      const end = Math.min(r.guestBase + r.size, hi);
      if (end <= start) continue;
      const last = ram[ram.length - 1];
      if (last && last.addr + last.size === start) last.size += end - start;
      else ram.push({ addr: start, size: end - start, type: E820_TYPE_RAM });
    }
  }
  return [
    { addr: 0, size: EBDA_START, type: E820_TYPE_RAM },
    { addr: EBDA_START, size: HIMEM_START - EBDA_START, type: E820_TYPE_RESERVED },
    ...ram,
  ];
}

/**
 * The end of the RAM that starts at HIMEM_START and stays below the MMIO gap:
 * the top of "low" memory, where the kernel, initrd and boot data live.
 */
export function lowRamEnd(regions: readonly RamRegion[]): number {
  const r = regions.find((x) => x.guestBase <= HIMEM_START && x.guestBase + x.size > HIMEM_START);
  if (!r) {
    throw new ArchError("EMEMLAYOUT", `Cannot place the kernel: guest RAM does not extend above ${hex(HIMEM_START)}`);
  }
  return Math.min(r.guestBase + r.size, MMIO_GAP_START);
}
