/**
 * The error class of flint's boot path (kernel loading, boot protocol,
 * PVH): every failure has a stable `code` and a message a user can act on.
 */

import { MiB } from "../arch/x86_64/layout.js";

/** Why a kernel, initrd or command line could not be set up for boot. */
export class BootError extends Error {
  /**
   * - EKERNELFORMAT: the kernel file is not a well-formed x86-64 ELF vmlinux or bzImage
   * - EKERNELUNSUPPORTED: a bzImage without the 64-bit boot protocol (>= 2.12, XLF_KERNEL_64)
   * - EKERNELPLACEMENT: the kernel does not fit where it must go in guest RAM
   * - ECMDLINETOOLONG: the command line exceeds what the kernel or flint accepts
   * - ECMDLINEINVALID: the command line contains a NUL byte
   * - EINITRDTOOBIG: the initrd does not fit between the kernel and its highest allowed address
   * - ENOPVHENTRY: PVH boot was requested for a kernel without a PVH entry note
   * - EMEMMAP: the memory map has more entries than the boot structure holds
   */
  readonly code:
    | "EKERNELFORMAT" | "EKERNELUNSUPPORTED" | "EKERNELPLACEMENT" | "ECMDLINETOOLONG" | "ECMDLINEINVALID"
    | "EINITRDTOOBIG" | "ENOPVHENTRY" | "EMEMMAP";
  constructor(code: BootError["code"], message: string) {
    super(message);
    this.name = "BootError";
    this.code = code;
  }
}

/** Formats a guest address the way messages show it. */
export function hex(x: number | bigint): string {
  return `0x${x.toString(16)}`;
}

/** Formats a byte count in MiB for messages, e.g. "12.5 MiB". */
export function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1).replace(/\.0$/, "")} MiB`;
}
