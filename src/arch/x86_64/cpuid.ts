/**
 * The CPUID a flint vCPU sees: KVM_GET_SUPPORTED_CPUID, normalised per vCPU.
 * Sets the hypervisor bit and keeps KVM's paravirtual leaves (0x40000000..)
 * so Linux uses kvm-clock instead of calibrating a TSC it cannot trust, and
 * gives each vCPU its own APIC id and a topology of N single-thread cores in
 * one package (Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 "CPUID Fn8000_00xx").
 */
import { KVM_CPUID_SIGNATURE } from "../../linux/abi.generated.js";
import type { KvmCpuidEntry } from "../../kvm/types.js";

/** CPUID.1:ECX bit 31: "running under a hypervisor" (reserved for this use on bare metal). */
const CPUID1_ECX_HYPERVISOR = 1 << 31;
/** CPUID.1:EDX bit 28: HTT — EBX[23:16] holds the logical processor count. */
const CPUID1_EDX_HTT = 1 << 28;
/** Leaf 0xB/0x1F level types (ECX[15:8]). */
const LEVEL_TYPE_SMT = 1;
const LEVEL_TYPE_CORE = 2;

/** Bits needed to hold ids 0..n-1. */
function bitsFor(n: number): number {
  let b = 0;
  while (1 << b < n) b++;
  return b;
}

/** The CPUID table for vCPU `cpuId` of `cpuCount`. */
export function vcpuCpuid(supported: readonly KvmCpuidEntry[], cpuId: number, cpuCount: number): KvmCpuidEntry[] {
  const apicId = cpuId;
  const coreBits = bitsFor(cpuCount);
  const out: KvmCpuidEntry[] = [];
  for (const src of supported) {
    const e = { ...src };
    switch (e.function) {
      case 0x1:
        e.ecx |= CPUID1_ECX_HYPERVISOR;
        // EBX[31:24] initial APIC id, [23:16] logical processors per package, [15:8] CLFLUSH size (kept).
        e.ebx = ((apicId & 0xff) << 24) | ((cpuCount & 0xff) << 16) | (e.ebx & 0xffff);
        if (cpuCount > 1) e.edx |= CPUID1_EDX_HTT;
        else e.edx &= ~CPUID1_EDX_HTT;
        break;
      case 0x4:
        // EAX[31:26]: cores per package - 1; [25:14]: logical processors sharing this cache - 1 (1 thread).
        if ((e.eax & 0x1f) !== 0) e.eax = (e.eax & 0x3fff) | (((cpuCount - 1) & 0x3f) << 26);
        break;
      case 0xb:
      case 0x1f:
        e.edx = apicId;
        if (e.index === 0) {
          e.eax = 0; // shift to the next level: one thread per core
          e.ebx = 1;
          e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
        } else if (e.index === 1) {
          e.eax = coreBits;
          e.ebx = cpuCount;
          e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
        } else {
          e.eax = 0;
          e.ebx = 0;
          e.ecx = e.index; // level type 0: invalid, ends the enumeration
        }
        break;
      case 0x80000008:
        // ECX[7:0]: cores - 1; [15:12]: APIC id bits for the core id (AMD).
        e.ecx = (e.ecx & ~0xf0ff) | ((cpuCount - 1) & 0xff) | (coreBits << 12);
        break;
      case 0x8000001e:
        // AMD extended APIC id; one thread per core, compute unit = core.
        e.eax = apicId;
        e.ebx = (e.ebx & ~0xffff) | (apicId & 0xff);
        e.ecx = e.ecx & ~0x7ff;
        break;
      case KVM_CPUID_SIGNATURE:
        // "KVMKVMKVM\0\0\0" is provided by KVM; keep it and its max leaf.
        break;
    }
    out.push(e);
  }
  if (!out.some((e) => e.function === KVM_CPUID_SIGNATURE)) {
    throw new RangeError("KVM_GET_SUPPORTED_CPUID has no KVM paravirtual leaves");
  }
  return out;
}
