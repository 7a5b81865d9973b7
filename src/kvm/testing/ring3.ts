/**
 * Starts a vCPU directly in 64-bit ring 3, for direct-KVM tests and exit
 * benchmarks on hosts (like flint's CI machines) whose KVM emulates guest
 * ring 0 slowly: CPL3 code and stack segments (DPL 3), user-accessible
 * identity page tables over the first 4 GiB, and RFLAGS.IOPL = 3 so that
 * `in`/`out` exit to the VMM instead of faulting.
 */
import { X86_CR0_ET, X86_CR0_NE, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE, EFER_LMA, EFER_LME, X86_EFLAGS_FIXED, X86_EFLAGS_IOPL_BIT } from "../../linux/abi.generated.js";
import type { GuestMemory } from "../../memory/guest-memory.js";
import type { KvmSegment, KvmSregs } from "../types.js";
import { zeroRegs } from "../types.js";
import type { VcpuFd } from "../vcpu.js";

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

/** Page-table entry bits (Intel SDM vol. 3 §4.5). */
const PTE_PRESENT = 1n, PTE_WRITE = 2n, PTE_USER = 4n, PTE_PS = 0x80n;
const MiB2 = 2n * 1024n * 1024n;

/** Selectors: index << 3 | RPL. */
const SEL_CODE3 = (1 << 3) | 3;
const SEL_DATA3 = (2 << 3) | 3;
const SEL_TSS = 3 << 3;

function segment(selector: number, type: number, dpl: number, l: number, db: number, s: number): KvmSegment {
  return { base: 0n, limit: 0xffffffff, selector, type, present: 1, dpl, db, s, l, g: 1, avl: 0, unusable: 0 };
}

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
  const flags = PTE_PRESENT | PTE_WRITE | PTE_USER;
  mem.writeU64(L.pml4, BigInt(L.pdpt) | flags);
  for (let i = 0; i < 4; i++) {
    mem.writeU64(L.pdpt + 8 * i, BigInt(L.pd + 0x1000 * i) | flags);
    for (let j = 0; j < 512; j++) {
      mem.writeU64(L.pd + 0x1000 * i + 8 * j, (BigInt(i * 512 + j) * MiB2) | flags | PTE_PS);
    }
  }
  // GDT: null, 64-bit ring-3 code, ring-3 data, 64-bit TSS (16 bytes).
  const rpl = cpl;
  const code = segment((SEL_CODE3 & ~3) | rpl, 0xb, cpl, 1, 0, 1);
  const data = segment((SEL_DATA3 & ~3) | rpl, 0x3, cpl, 0, 1, 1);
  const dplBits = BigInt(cpl) << 45n; // descriptor DPL field, bits 46:45
  mem.writeU64(L.gdt, 0n);
  mem.writeU64(L.gdt + 8, 0x00af9b000000ffffn | dplBits); // code: P, S, type 0xb, L, G
  mem.writeU64(L.gdt + 16, 0x00cf93000000ffffn | dplBits); // data: P, S, type 0x3, D/B, G
  // Some hosts' KVM checks the TSS I/O permission bitmap even at IOPL 3, so give
  // every port a 0 ("allowed") bit: the I/O map base (TSS offset 0x66) points
  // just past the 0x68-byte TSS, and the map ends with the required 0xff byte
  // (Intel SDM vol. 1 §19.5.2 "I/O Permission Bit Map").
  const TSS_SIZE = 0x68, IOMAP_BYTES = 65536 / 8;
  mem.fill(L.tss, TSS_SIZE + IOMAP_BYTES + 1, 0);
  mem.writeU16(L.tss + 0x66, TSS_SIZE);
  mem.writeU8(L.tss + TSS_SIZE + IOMAP_BYTES, 0xff);
  const tss: KvmSegment = { base: BigInt(L.tss), limit: TSS_SIZE + IOMAP_BYTES, selector: SEL_TSS, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };
  const ldt: KvmSegment = { base: 0n, limit: 0, selector: 0, type: 0x2, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1 };

  const sregs: KvmSregs = vcpu.getSregs();
  Object.assign(sregs, {
    cs: code, ds: data, es: data, fs: data, gs: data, ss: data, tr: tss, ldt,
    gdt: { base: BigInt(L.gdt), limit: 8 * 5 - 1 },
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
