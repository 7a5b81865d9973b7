/**
 * Encoding and decoding of KVM structs at the offsets generated from
 * linux/kvm.h (src/linux/abi.generated.ts). No offset is typed here.
 */
import {
  kvm_cpuid2, kvm_cpuid_entry2, kvm_dtable, kvm_msr_entry, kvm_msrs, kvm_regs, kvm_segment, kvm_sregs,
} from "../linux/abi.generated.js";
import { dataView } from "../memory/le.js";
import type { KvmCpuidEntry, KvmDtable, KvmMsrEntry, KvmRegs, KvmSegment, KvmSregs } from "./types.js";

const REG_NAMES = [
  "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
  "rip", "rflags",
] as const;

/** struct kvm_regs -> KvmRegs. */
export function decodeRegs(buf: Uint8Array): KvmRegs {
  const v = dataView(buf);
  const out = {} as KvmRegs;
  for (const n of REG_NAMES) out[n] = v.getBigUint64(kvm_regs[n], true);
  return out;
}

/** KvmRegs -> struct kvm_regs bytes. */
export function encodeRegs(r: KvmRegs): Uint8Array {
  const buf = new Uint8Array(kvm_regs.SIZE);
  const v = dataView(buf);
  for (const n of REG_NAMES) v.setBigUint64(kvm_regs[n], BigInt.asUintN(64, r[n]), true);
  return buf;
}

const SEG_BYTES = ["type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable"] as const;

function decodeSegment(v: DataView, at: number): KvmSegment {
  const s: KvmSegment = {
    base: v.getBigUint64(at + kvm_segment.base, true),
    limit: v.getUint32(at + kvm_segment.limit, true),
    selector: v.getUint16(at + kvm_segment.selector, true),
    type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0,
  };
  for (const f of SEG_BYTES) s[f] = v.getUint8(at + kvm_segment[f]);
  return s;
}

function encodeSegment(v: DataView, at: number, s: KvmSegment): void {
  v.setBigUint64(at + kvm_segment.base, BigInt.asUintN(64, s.base), true);
  v.setUint32(at + kvm_segment.limit, s.limit >>> 0, true);
  v.setUint16(at + kvm_segment.selector, s.selector, true);
  for (const f of SEG_BYTES) v.setUint8(at + kvm_segment[f], s[f]);
}

function decodeDtable(v: DataView, at: number): KvmDtable {
  return { base: v.getBigUint64(at + kvm_dtable.base, true), limit: v.getUint16(at + kvm_dtable.limit, true) };
}

function encodeDtable(v: DataView, at: number, d: KvmDtable): void {
  v.setBigUint64(at + kvm_dtable.base, BigInt.asUintN(64, d.base), true);
  v.setUint16(at + kvm_dtable.limit, d.limit, true);
}

const SEGS = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
const CRS = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"] as const;
const BITMAP_BYTES = kvm_sregs.SIZE - kvm_sregs.interrupt_bitmap;

/** struct kvm_sregs -> KvmSregs. */
export function decodeSregs(buf: Uint8Array): KvmSregs {
  const v = dataView(buf);
  const out = {} as KvmSregs;
  for (const s of SEGS) out[s] = decodeSegment(v, kvm_sregs[s]);
  out.gdt = decodeDtable(v, kvm_sregs.gdt);
  out.idt = decodeDtable(v, kvm_sregs.idt);
  for (const c of CRS) out[c] = v.getBigUint64(kvm_sregs[c], true);
  out.interrupt_bitmap = buf.slice(kvm_sregs.interrupt_bitmap, kvm_sregs.interrupt_bitmap + BITMAP_BYTES);
  return out;
}

/** KvmSregs -> struct kvm_sregs bytes. */
export function encodeSregs(s: KvmSregs): Uint8Array {
  const buf = new Uint8Array(kvm_sregs.SIZE);
  const v = dataView(buf);
  for (const n of SEGS) encodeSegment(v, kvm_sregs[n], s[n]);
  encodeDtable(v, kvm_sregs.gdt, s.gdt);
  encodeDtable(v, kvm_sregs.idt, s.idt);
  for (const c of CRS) v.setBigUint64(kvm_sregs[c], BigInt.asUintN(64, s[c]), true);
  buf.set(s.interrupt_bitmap.subarray(0, BITMAP_BYTES), kvm_sregs.interrupt_bitmap);
  return buf;
}

/** struct kvm_msrs with its entries. */
export function encodeMsrs(entries: readonly KvmMsrEntry[]): Uint8Array {
  const buf = new Uint8Array(kvm_msrs.SIZE + entries.length * kvm_msr_entry.SIZE);
  const v = dataView(buf);
  v.setUint32(kvm_msrs.nmsrs, entries.length, true);
  entries.forEach((e, i) => {
    const at = kvm_msrs.entries + i * kvm_msr_entry.SIZE;
    v.setUint32(at + kvm_msr_entry.index, e.index, true);
    v.setBigUint64(at + kvm_msr_entry.data, BigInt.asUintN(64, e.data), true);
  });
  return buf;
}

/** Entries of a struct kvm_msrs (after KVM_GET_MSRS). */
export function decodeMsrs(buf: Uint8Array, count: number): KvmMsrEntry[] {
  const v = dataView(buf);
  const out: KvmMsrEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = kvm_msrs.entries + i * kvm_msr_entry.SIZE;
    out.push({ index: v.getUint32(at + kvm_msr_entry.index, true), data: v.getBigUint64(at + kvm_msr_entry.data, true) });
  }
  return out;
}

const CPUID_FIELDS = ["function", "index", "flags", "eax", "ebx", "ecx", "edx"] as const;

/**
 * struct kvm_cpuid2 holding `entries`, or — when `entries` is empty — an
 * empty table with nent = `capacity` for KVM_GET_SUPPORTED_CPUID to fill.
 */
export function encodeCpuid(entries: readonly KvmCpuidEntry[], capacity = entries.length): Uint8Array {
  const buf = new Uint8Array(kvm_cpuid2.SIZE + capacity * kvm_cpuid_entry2.SIZE);
  const v = dataView(buf);
  v.setUint32(kvm_cpuid2.nent, entries.length > 0 ? entries.length : capacity, true);
  entries.forEach((e, i) => {
    const at = kvm_cpuid2.entries + i * kvm_cpuid_entry2.SIZE;
    for (const f of CPUID_FIELDS) v.setUint32(at + kvm_cpuid_entry2[f], e[f] >>> 0, true);
  });
  return buf;
}

/** Entries of a struct kvm_cpuid2. */
export function decodeCpuid(buf: Uint8Array): KvmCpuidEntry[] {
  const v = dataView(buf);
  const n = v.getUint32(kvm_cpuid2.nent, true);
  const out: KvmCpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = kvm_cpuid2.entries + i * kvm_cpuid_entry2.SIZE;
    const e = {} as KvmCpuidEntry;
    for (const f of CPUID_FIELDS) e[f] = v.getUint32(at + kvm_cpuid_entry2[f], true);
    out.push(e);
  }
  return out;
}
