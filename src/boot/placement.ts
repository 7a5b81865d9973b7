/**
 * Placing the kernel command line and the initrd in guest memory; shared by
 * the Linux 64-bit boot protocol and PVH.
 */
import { CMDLINE_MAX_SIZE, CMDLINE_START } from "../arch/x86_64/layout.js";
import type { GuestMemory } from "../memory/guest-memory.js";
import { BootError, hex, mib } from "./errors.js";

/** Guest page size: the initrd starts on a page boundary (boot.rst: "page-aligned"). */
export const PAGE_BYTES = 4096;

/** A range of guest memory something was written to. */
export interface GuestRange {
  address: number;
  sizeBytes: number;
}

/**
 * Writes `cmdline` NUL-terminated at CMDLINE_START. `kernelMaxBytes` is the
 * kernel's limit without the NUL (bzImage setup_header.cmdline_size); flint's
 * own limit is CMDLINE_MAX_SIZE including the NUL. Returns the range written
 * (sizeBytes includes the NUL).
 */
export function writeCmdline(mem: GuestMemory, cmdline: string, kernelMaxBytes: number): GuestRange {
  const bytes = Buffer.from(cmdline, "utf8");
  if (bytes.includes(0)) {
    throw new BootError("ECMDLINEINVALID", "Cannot set the kernel command line: it contains a NUL character");
  }
  const maxBytes = Math.min(CMDLINE_MAX_SIZE - 1, kernelMaxBytes);
  if (bytes.length > maxBytes) {
    throw new BootError("ECMDLINETOOLONG", `Cannot set the kernel command line: it is ${bytes.length} bytes but the ${kernelMaxBytes < CMDLINE_MAX_SIZE - 1 ? "kernel accepts" : "limit is"} ${maxBytes}; shorten it`);
  }
  mem.fill(CMDLINE_START, bytes.length + 1, 0);
  mem.write(CMDLINE_START, bytes);
  return { address: CMDLINE_START, sizeBytes: bytes.length + 1 };
}

/** Where an initrd may go. */
export interface InitrdLimits {
  /** First byte after the kernel (the initrd must start at or above it). */
  kernelEnd: number;
  /** Highest address the initrd may occupy, inclusive (setup_header.initrd_addr_max). */
  addrMax: number;
  /** End of the RAM the initrd can go in (top of low RAM). */
  ramEnd: number;
}

/**
 * Copies `initrd` page-aligned as high as possible below
 * min(addrMax + 1, ramEnd), above the kernel — as boot.rst advises, so the
 * kernel's decompression and early allocations stay clear of it.
 */
export function loadInitrd(mem: GuestMemory, initrd: Uint8Array, path: string, limits: InitrdLimits): GuestRange {
  const top = Math.min(limits.addrMax + 1, limits.ramEnd);
  const bottom = Math.ceil(limits.kernelEnd / PAGE_BYTES) * PAGE_BYTES;
  const address = Math.floor((top - initrd.length) / PAGE_BYTES) * PAGE_BYTES;
  if (address < bottom || !mem.contains(address, initrd.length)) {
    throw new BootError("EINITRDTOOBIG", `Cannot load initrd '${path}': it is ${mib(initrd.length)} but only ${mib(Math.max(0, top - bottom))} fit between the kernel's end (${hex(bottom)}) and ${hex(top)}; give the VM more memory or use a smaller initrd`);
  }
  mem.write(address, initrd);
  return { address, sizeBytes: initrd.length };
}
