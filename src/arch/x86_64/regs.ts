/**
 * The register state of the boot vCPU at kernel entry.
 *
 * (a) Linux 64-bit entry, Documentation/x86/boot.rst "64-bit Boot Protocol":
 *     "the CPU must be in 64-bit mode with paging enabled", the boot GDT loaded
 *     with CS = __BOOT_CS and DS/ES/SS = __BOOT_DS, "interrupt must be
 *     disabled; %rsi must hold the base address of the struct boot_params".
 * (b) PVH entry, xen docs/misc/pvh.pandoc and Linux arch/x86/platform/pvh/head.S:
 *     32-bit protected mode without paging (CR0.PE only, CR4 = 0), flat 32-bit
 *     code and data segments, a 32-bit TSS in TR, IF clear, %ebx = physical
 *     address of struct hvm_start_info.
 *
 * Both return partial sregs: the caller merges them over KVM_GET_SREGS so
 * fields flint does not set (apic_base, ldt, cr2, cr8, interrupt_bitmap) keep
 * KVM's reset values.
 */
import {
  EFER_LMA, EFER_LME, X86_CR0_ET, X86_CR0_NE, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE, X86_EFLAGS_FIXED,
} from "../../linux/abi.generated.js";
import type { GuestMemory } from "../../memory/guest-memory.js";
import { zeroRegs, type KvmRegs, type KvmSregs } from "../../kvm/types.js";
import { writeBootGdt, type BootSegments } from "./gdt.js";
import { BOOT_STACK_POINTER, PVH_INFO_START, ZERO_PAGE_START } from "./layout.js";
import { writeIdentityPageTables } from "./paging.js";

/** The boot vCPU's registers at entry: general-purpose and (partial) system registers. */
export interface EntryState {
  regs: KvmRegs;
  sregs: Partial<KvmSregs>;
}

function segmentRegisters(s: BootSegments): Partial<KvmSregs> {
  return { cs: s.cs, ds: s.ds, es: s.ds, fs: s.ds, gs: s.ds, ss: s.ds, tr: s.tr, gdt: s.gdt, idt: s.idt };
}

/**
 * Writes the boot GDT, IDT and identity page tables and returns the state for
 * entering a Linux kernel at its 64-bit entry point `entry` (a guest-physical
 * address, identity mapped), with RSI = ZERO_PAGE_START.
 */
export function setupLinux64Entry(mem: GuestMemory, entry: number): EntryState {
  const segments = writeBootGdt(mem, "long64");
  const { cr3 } = writeIdentityPageTables(mem);
  const regs = zeroRegs();
  regs.rip = BigInt(entry);
  regs.rsi = BigInt(ZERO_PAGE_START);
  regs.rsp = BigInt(BOOT_STACK_POINTER);
  regs.rbp = BigInt(BOOT_STACK_POINTER);
  regs.rflags = BigInt(X86_EFLAGS_FIXED);
  return {
    regs,
    sregs: {
      ...segmentRegisters(segments),
      cr0: BigInt(X86_CR0_PE | X86_CR0_ET | X86_CR0_NE) | BigInt(X86_CR0_PG),
      cr3,
      cr4: BigInt(X86_CR4_PAE),
      efer: BigInt(EFER_LME | EFER_LMA),
    },
  };
}

/**
 * Writes the boot GDT (with a 32-bit code segment) and IDT and returns the
 * state for entering a PVH kernel at `pvhEntry` with EBX = `startInfoAddress`.
 */
export function setupPvhEntry(mem: GuestMemory, pvhEntry: number, startInfoAddress: number = PVH_INFO_START): EntryState {
  const segments = writeBootGdt(mem, "protected32");
  const regs = zeroRegs();
  regs.rip = BigInt(pvhEntry);
  regs.rbx = BigInt(startInfoAddress);
  regs.rflags = BigInt(X86_EFLAGS_FIXED);
  return {
    regs,
    sregs: {
      ...segmentRegisters(segments),
      cr0: BigInt(X86_CR0_PE),
      cr3: 0n,
      cr4: 0n,
      efer: 0n,
    },
  };
}
