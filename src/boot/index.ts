/**
 * flint's x86-64 boot path in one call: load the kernel, write the firmware
 * tables (MP table, ACPI), the command line, the initrd and the boot protocol
 * structure (Linux zero page or PVH start info), the GDT and page tables, and
 * return the boot vCPU's entry registers.
 *
 * Boot modes:
 *   - "linux64" (and "auto"): the Linux 64-bit boot protocol, for ELF vmlinux
 *     (entry e_entry) and bzImage (entry load address + 0x200);
 *   - "pvh": the PVH entry of an ELF vmlinux with XEN_ELFNOTE_PHYS32_ENTRY.
 */
import { buildAcpiTables } from "../arch/x86_64/acpi/tables.js";
import type { Aml } from "../arch/x86_64/acpi/aml.js";
import { e820Map, lowRamEnd } from "../arch/x86_64/e820.js";
import { checkCpuCount, writeMpTable } from "../arch/x86_64/mptable.js";
import { setupLinux64Entry, setupPvhEntry, type EntryState } from "../arch/x86_64/regs.js";
import type { GuestMemory } from "../memory/guest-memory.js";
import { BootError, hex, mib } from "./errors.js";
import { loadKernel, type KernelImage } from "./kernel-image.js";
import { writeBootParams } from "./linux-boot.js";
import { loadInitrd, writeCmdline, type GuestRange } from "./placement.js";
import { writePvhStartInfo } from "./pvh.js";

export { BootError } from "./errors.js";
export type { KernelImage } from "./kernel-image.js";
export type { EntryState } from "../arch/x86_64/regs.js";

/**
 * How to enter the kernel: "auto" and "linux64" the 64-bit boot protocol,
 * "pvh" the PVH entry (an ELF with XEN_ELFNOTE_PHYS32_ENTRY only),
 * "prefer-pvh" PVH when the ELF has that note and the 64-bit protocol
 * otherwise, which is what Firecracker does with any kernel it is given.
 */
export type BootMode = "auto" | "linux64" | "pvh" | "prefer-pvh";

/** Inputs of setupBoot. */
export interface BootOptions {
  /** The kernel file's bytes: ELF vmlinux or bzImage. */
  kernel: Uint8Array;
  /** The kernel file's path, for messages. */
  kernelPath: string;
  /** The initrd's bytes, if any. */
  initrd?: Uint8Array;
  /** The initrd's path, for messages. */
  initrdPath?: string;
  cmdline: string;
  /** Number of vCPUs; the BSP is APIC id 0. */
  cpus: number;
  /** Write ACPI tables (RSDP, XSDT, FADT, MADT, DSDT). */
  acpi: boolean;
  /** Default "auto" = "linux64". */
  bootMode?: BootMode;
  /** AML Device objects for the DSDT's \_SB_ (e.g. from mmioDeviceAml), when acpi is set. */
  extraDsdtDevices?: readonly Aml[];
}

/** What setupBoot did. */
export interface BootSetup {
  /** The BSP's registers; merge sregs over KVM_GET_SREGS. APs start in wait-for-SIPI. */
  entry: EntryState;
  /** The kernel format, or "pvh" when entered through PVH. */
  kind: "elf" | "bzimage" | "pvh";
  /** One line for logs. */
  summary: string;
  kernel: KernelImage;
  cmdline: GuestRange;
  initrd?: GuestRange;
  /** The ACPI RSDP, when ACPI tables were written. */
  rsdpAddress?: number;
}

/** Sets up guest memory and the BSP's registers to boot a Linux kernel. */
export function setupBoot(mem: GuestMemory, opts: BootOptions): BootSetup {
  const mode = opts.bootMode ?? "auto";
  checkCpuCount(opts.cpus);
  const e820 = e820Map(mem.regions); // also checks the low 1 MiB is RAM
  const kernel = loadKernel(mem, opts.kernel, opts.kernelPath);
  const pvh = mode === "pvh" || (mode === "prefer-pvh" && kernel.pvhEntry !== undefined);
  if (pvh && kernel.pvhEntry === undefined) {
    throw new BootError("ENOPVHENTRY", kernel.kind === "bzimage"
      ? `Cannot boot '${opts.kernelPath}' with PVH: it is a bzImage; PVH needs an ELF vmlinux with a XEN_ELFNOTE_PHYS32_ENTRY note`
      : `Cannot boot '${opts.kernelPath}' with PVH: the ELF has no XEN_ELFNOTE_PHYS32_ENTRY note (build with CONFIG_PVH=y) — or use the 64-bit entry`);
  }

  const cmdline = writeCmdline(mem, opts.cmdline, kernel.cmdlineMaxBytes);
  const initrd = opts.initrd && opts.initrd.length > 0
    ? loadInitrd(mem, opts.initrd, opts.initrdPath ?? "initrd", { kernelEnd: kernel.kernelEnd, addrMax: kernel.initrdAddrMax, ramEnd: lowRamEnd(mem.regions) })
    : undefined;
  writeMpTable(mem, opts.cpus);
  const rsdpAddress = opts.acpi
    ? buildAcpiTables(mem, { cpus: opts.cpus, extraDsdtDevices: opts.extraDsdtDevices ?? [] }).rsdpAddress
    : undefined;

  const tables = { cmdline, e820, ...(initrd ? { initrd } : {}), ...(rsdpAddress !== undefined ? { rsdpAddress } : {}) };
  let entry: EntryState;
  if (pvh) {
    const startInfo = writePvhStartInfo(mem, tables);
    entry = setupPvhEntry(mem, kernel.pvhEntry!, startInfo);
  } else {
    writeBootParams(mem, { kernel, ...tables });
    entry = setupLinux64Entry(mem, kernel.entry64);
  }

  const kind = pvh ? "pvh" : kernel.kind;
  const format = kernel.kind === "bzimage"
    ? `bzImage (protocol ${kernel.protocolVersion! >> 8}.${(kernel.protocolVersion! & 0xff).toString().padStart(2, "0")}) at ${hex(kernel.kernelStart)}`
    : `ELF vmlinux at ${hex(kernel.kernelStart)}`;
  const summary = [
    `${format}, ${pvh ? "PVH" : "64-bit"} entry ${hex(entry.regs.rip)}`,
    initrd ? `initrd ${mib(initrd.sizeBytes)} at ${hex(initrd.address)}` : "no initrd",
    `cmdline ${cmdline.sizeBytes - 1} bytes`,
    `${opts.cpus} vCPU${opts.cpus === 1 ? "" : "s"}`,
    rsdpAddress !== undefined ? `ACPI RSDP ${hex(rsdpAddress)}` : "no ACPI (MP table only)",
  ].join(", ");
  return { entry, kind, summary, kernel, cmdline, ...(initrd ? { initrd } : {}), ...(rsdpAddress !== undefined ? { rsdpAddress } : {}) };
}
