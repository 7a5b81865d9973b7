/**
 * The Linux x86 boot protocol's zero page: struct boot_params at
 * ZERO_PAGE_START, which the kernel finds through RSI at its 64-bit entry
 * (Documentation/x86/boot.rst "64-bit Boot Protocol", Documentation/x86/zero-page.rst).
 *
 * For a bzImage the kernel's own setup header is copied in and then the
 * loader-written fields are filled; for an ELF vmlinux flint writes a minimal
 * header (boot_flag, "HdrS", version) with the same loader fields.
 */
import {
  CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH, boot_e820_entry, boot_params, setup_header,
} from "../linux/abi.generated.js";
import type { E820Entry } from "../arch/x86_64/e820.js";
import { ZERO_PAGE_START } from "../arch/x86_64/layout.js";
import type { GuestMemory } from "../memory/guest-memory.js";
import { BootError } from "./errors.js";
import { BOOT_FLAG_MAGIC, SETUP_HEADER_MAGIC, type KernelImage } from "./kernel-image.js";
import type { GuestRange } from "./placement.js";

/** boot.rst type_of_loader: 0xFF is "undefined" — a loader without an assigned id. */
export const LOADER_TYPE_UNDEFINED = 0xff;
/**
 * boot.rst heap_end_ptr: offset from the real-mode code of the end of the setup
 * heap, minus 0x200. The real-mode code is not used with the 64-bit entry, so
 * this is the conventional full 64 KiB segment: 0x10000 - 0x200.
 */
export const HEAP_END_PTR = 0x10000 - 0x200;
/**
 * Protocol version written into the header flint makes for ELF kernels: 2.15,
 * the version whose setup_header layout abi.generated.ts describes.
 */
export const ELF_BOOT_PROTOCOL = 0x020f;

/** What goes into the zero page. */
export interface BootParamsOptions {
  kernel: KernelImage;
  /** The NUL-terminated command line in guest memory. */
  cmdline: GuestRange;
  initrd?: GuestRange;
  e820: readonly E820Entry[];
  /** The ACPI RSDP, when ACPI tables were written (boot_params.acpi_rsdp_addr, protocol 2.14+). */
  rsdpAddress?: number;
}

const lo32 = (x: number): number => x % 2 ** 32;
const hi32 = (x: number): number => Math.floor(x / 2 ** 32);

/** Writes struct boot_params at ZERO_PAGE_START. Returns its address (for RSI). */
export function writeBootParams(mem: GuestMemory, o: BootParamsOptions): number {
  if (o.e820.length > E820_MAX_ENTRIES_ZEROPAGE) {
    throw new BootError("EMEMMAP", `Cannot write the boot parameters: the memory map has ${o.e820.length} entries, the zero page holds ${E820_MAX_ENTRIES_ZEROPAGE}`);
  }
  const zp = ZERO_PAGE_START;
  const hdr = (f: keyof typeof setup_header): number => zp + boot_params.hdr + setup_header[f];
  mem.fill(zp, boot_params.SIZE, 0);

  if (o.kernel.setupHeader) {
    mem.write(zp + boot_params.hdr, o.kernel.setupHeader);
    // Relocating loaders set code32_start to where the protected-mode code went (boot.rst).
    mem.writeU32(hdr("code32_start"), o.kernel.kernelStart);
  } else {
    mem.writeU16(hdr("boot_flag"), BOOT_FLAG_MAGIC);
    mem.writeU32(hdr("header"), SETUP_HEADER_MAGIC);
    mem.writeU16(hdr("version"), ELF_BOOT_PROTOCOL);
    mem.writeU32(hdr("initrd_addr_max"), o.kernel.initrdAddrMax);
    mem.writeU32(hdr("cmdline_size"), o.kernel.cmdlineMaxBytes);
  }
  mem.writeU8(hdr("type_of_loader"), LOADER_TYPE_UNDEFINED);
  mem.writeU8(hdr("loadflags"), mem.readU8(hdr("loadflags")) | LOADED_HIGH | CAN_USE_HEAP);
  mem.writeU16(hdr("heap_end_ptr"), HEAP_END_PTR);
  mem.writeU32(hdr("cmd_line_ptr"), lo32(o.cmdline.address));
  mem.writeU32(zp + boot_params.ext_cmd_line_ptr, hi32(o.cmdline.address));
  if (o.initrd) {
    mem.writeU32(hdr("ramdisk_image"), lo32(o.initrd.address));
    mem.writeU32(hdr("ramdisk_size"), lo32(o.initrd.sizeBytes));
    mem.writeU32(zp + boot_params.ext_ramdisk_image, hi32(o.initrd.address));
    mem.writeU32(zp + boot_params.ext_ramdisk_size, hi32(o.initrd.sizeBytes));
  }
  if (o.rsdpAddress !== undefined) mem.writeU64(zp + boot_params.acpi_rsdp_addr, o.rsdpAddress);

  mem.writeU8(zp + boot_params.e820_entries, o.e820.length);
  o.e820.forEach((e, i) => {
    const at = zp + boot_params.e820_table + i * boot_e820_entry.SIZE;
    mem.writeU64(at + boot_e820_entry.addr, e.addr);
    mem.writeU64(at + boot_e820_entry.size, e.size);
    mem.writeU32(at + boot_e820_entry.type, e.type);
  });
  return zp;
}
