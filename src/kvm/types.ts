/**
 * Plain-object forms of the KVM register structs (linux/kvm.h, asm/kvm.h).
 * 64-bit fields are bigint: guest values are unchecked until a caller checks them.
 */

/** struct kvm_regs. */
export interface KvmRegs {
  rax: bigint; rbx: bigint; rcx: bigint; rdx: bigint;
  rsi: bigint; rdi: bigint; rsp: bigint; rbp: bigint;
  r8: bigint; r9: bigint; r10: bigint; r11: bigint;
  r12: bigint; r13: bigint; r14: bigint; r15: bigint;
  rip: bigint; rflags: bigint;
}

/** struct kvm_segment. */
export interface KvmSegment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** struct kvm_dtable. */
export interface KvmDtable {
  base: bigint;
  limit: number;
}

/** struct kvm_sregs (interrupt_bitmap kept as raw bytes). */
export interface KvmSregs {
  cs: KvmSegment; ds: KvmSegment; es: KvmSegment; fs: KvmSegment;
  gs: KvmSegment; ss: KvmSegment; tr: KvmSegment; ldt: KvmSegment;
  gdt: KvmDtable; idt: KvmDtable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint;
  efer: bigint; apic_base: bigint;
  interrupt_bitmap: Uint8Array;
}

/** One struct kvm_msr_entry. */
export interface KvmMsrEntry {
  index: number;
  data: bigint;
}

/** One struct kvm_cpuid_entry2. */
export interface KvmCpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** All-zero registers. */
export function zeroRegs(): KvmRegs {
  const z = 0n;
  return { rax: z, rbx: z, rcx: z, rdx: z, rsi: z, rdi: z, rsp: z, rbp: z, r8: z, r9: z, r10: z, r11: z, r12: z, r13: z, r14: z, r15: z, rip: z, rflags: 2n };
}
