/**
 * Starts a vCPU directly in 64-bit ring 3 (or ring 0), for direct-KVM tests,
 * exit benchmarks and `flint doctor`'s speed probe on hosts (like flint's CI
 * machines) whose KVM emulates guest ring 0 slowly: code and stack segments
 * of the chosen privilege, user-accessible identity page tables over the
 * first 4 GiB, and RFLAGS.IOPL = 3 so that `in`/`out` exit to the VMM
 * instead of faulting.
 */
import {
  EFER_LMA, EFER_LME, X86_CR0_ET, X86_CR0_NE, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE, X86_EFLAGS_FIXED, X86_EFLAGS_IOPL_BIT,
} from "../../linux/abi.generated.js";
import type { GuestMemory } from "../../memory/guest-memory.js";
import type { KvmSegment, KvmSregs } from "../../kvm/types.js";
import { zeroRegs } from "../../kvm/types.js";
import type { VcpuFd } from "../../kvm/vcpu.js";
import {
  GDT_ENTRY_SIZE, SEG_TYPE_CODE_EXEC_READ_ACCESSED, SEG_TYPE_DATA_READ_WRITE_ACCESSED, SEG_TYPE_TSS_BUSY,
  encodeGdtEntry, gdtEntryToSegment,
} from "./gdt.js";
import { LARGE_PAGE_BYTES, PAGE_TABLE_BYTES, PAGE_TABLE_ENTRIES, PTE_PRESENT, PTE_PS, PTE_RW } from "./paging.js";

/** Guest addresses the ring-3 harness uses (all inside the first 1 MiB). */
export const RING3_LAYOUT = {
  gdt: 0x500,
  tss: 0x7000, // 0x68-byte TSS + an all-zero I/O permission bitmap (8 KiB + 1)
  pml4: 0x1000,
  pdpt: 0x2000,
  pd: 0x3000, // four pages: 0x3000..0x6fff
  code: 0x10000,
  stackTop: 0x80000,
  data: 0x90000,
} as const;

/** Page-table entry bit "U/S": user-mode accesses allowed (Intel SDM vol. 3 §4.5). */
const PTE_USER = 1n << 2n;

/** GDT slots: null, code, data, then the 16-byte 64-bit TSS descriptor. */
const CODE_INDEX = 1;
const DATA_INDEX = 2;
const TSS_INDEX = 3;
const GDT_ENTRIES = 5;

/** Writes page tables and a GDT into `mem` and puts `vcpu` at `entry` in ring 3. */
export function startInRing3(vcpu: VcpuFd, mem: GuestMemory, entry: number, stackTop: number = RING3_LAYOUT.stackTop): void {
  startInRing(vcpu, mem, entry, stackTop, 3);
}

/**
 * Same machine state in ring 0 — used by `flint doctor` to measure how fast
 * this host runs guest kernel code (natively, or emulated as on some nested hosts).
 */
export function startInRing0(vcpu: VcpuFd, mem: GuestMemory, entry: number, stackTop: number = RING3_LAYOUT.stackTop): void {
  startInRing(vcpu, mem, entry, stackTop, 0);
}

function startInRing(vcpu: VcpuFd, mem: GuestMemory, entry: number, stackTop: number, cpl: 0 | 3): void {
  const L = RING3_LAYOUT;
  // Identity map 4 GiB with 2 MiB pages, user-accessible.
  const flags = PTE_PRESENT | PTE_RW | PTE_USER;
  mem.writeU64(L.pml4, BigInt(L.pdpt) | flags);
  for (let i = 0; i < 4; i++) {
    mem.writeU64(L.pdpt + 8 * i, BigInt(L.pd + PAGE_TABLE_BYTES * i) | flags);
    for (let j = 0; j < PAGE_TABLE_ENTRIES; j++) {
      mem.writeU64(L.pd + PAGE_TABLE_BYTES * i + 8 * j, BigInt((i * PAGE_TABLE_ENTRIES + j) * LARGE_PAGE_BYTES) | flags | PTE_PS);
    }
  }
  // Flat 64-bit code and data descriptors of privilege `cpl`; the segment
  // registers are derived from the very descriptors written to the GDT.
  const flat = { base: 0, limit: 0xfffff, s: 1, dpl: cpl, present: 1, avl: 0, g: 1 };
  const codeEntry = encodeGdtEntry({ ...flat, type: SEG_TYPE_CODE_EXEC_READ_ACCESSED, l: 1, db: 0 });
  const dataEntry = encodeGdtEntry({ ...flat, type: SEG_TYPE_DATA_READ_WRITE_ACCESSED, l: 0, db: 1 });
  mem.writeU64(L.gdt, 0n);
  mem.writeU64(L.gdt + CODE_INDEX * GDT_ENTRY_SIZE, codeEntry);
  mem.writeU64(L.gdt + DATA_INDEX * GDT_ENTRY_SIZE, dataEntry);
  const code = gdtEntryToSegment(codeEntry, (CODE_INDEX << 3) | cpl);
  const data = gdtEntryToSegment(dataEntry, (DATA_INDEX << 3) | cpl);
  // Some hosts' KVM checks the TSS I/O permission bitmap even at IOPL 3, so give
  // every port a 0 ("allowed") bit: the I/O map base (TSS offset 0x66) points
  // just past the 0x68-byte TSS, and the map ends with the required 0xff byte
  // (Intel SDM vol. 1 §19.5.2 "I/O Permission Bit Map").
  const TSS_SIZE = 0x68, IOMAP_BYTES = 65536 / 8;
  mem.fill(L.tss, TSS_SIZE + IOMAP_BYTES + 1, 0);
  mem.writeU16(L.tss + 0x66, TSS_SIZE);
  mem.writeU8(L.tss + TSS_SIZE + IOMAP_BYTES, 0xff);
  const tss: KvmSegment = {
    base: BigInt(L.tss), limit: TSS_SIZE + IOMAP_BYTES, selector: TSS_INDEX << 3, type: SEG_TYPE_TSS_BUSY,
    present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0,
  };
  const ldt: KvmSegment = { base: 0n, limit: 0, selector: 0, type: 0x2, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1 };

  const sregs: KvmSregs = vcpu.getSregs();
  Object.assign(sregs, {
    cs: code, ds: data, es: data, fs: data, gs: data, ss: data, tr: tss, ldt,
    gdt: { base: BigInt(L.gdt), limit: GDT_ENTRIES * GDT_ENTRY_SIZE - 1 },
    idt: { base: 0n, limit: 0 },
    cr0: BigInt(X86_CR0_PE | X86_CR0_PG | X86_CR0_ET | X86_CR0_NE) & 0xffffffffn,
    cr3: BigInt(L.pml4),
    cr4: BigInt(X86_CR4_PAE),
    efer: BigInt(EFER_LME | EFER_LMA),
  });
  vcpu.setSregs(sregs);
  const regs = zeroRegs();
  regs.rip = BigInt(entry);
  regs.rsp = BigInt(stackTop);
  regs.rflags = BigInt(X86_EFLAGS_FIXED) | (3n << BigInt(X86_EFLAGS_IOPL_BIT));
  vcpu.setRegs(regs);
}
