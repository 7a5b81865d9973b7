/**
 * The CPUID a flint vCPU sees: KVM_GET_SUPPORTED_CPUID, normalised per vCPU.
 * Sets the hypervisor bit and keeps KVM's paravirtual leaves (0x40000000..)
 * so Linux uses kvm-clock instead of calibrating a TSC it cannot trust, and
 * gives each vCPU its own APIC id and a topology of N single-thread cores in
 * one package (Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 "CPUID Fn8000_00xx").
 */
import { KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_CPUID_SIGNATURE } from "../../linux/abi.generated.js";
import type { KvmCpuidEntry } from "../../kvm/types.js";

/** CPUID.1:ECX bit 31: "running under a hypervisor" (reserved for this use on bare metal). */
const CPUID1_ECX_HYPERVISOR = 1 << 31;
/**
 * CPUID.1:ECX bit 24: the local APIC's TSC-deadline timer mode. KVM emulates it
 * but leaves the bit to userspace (api.rst, KVM_CAP_TSC_DEADLINE_TIMER). With it,
 * Linux arms its per-CPU timer against the TSC (whose rate kvm-clock gives) and
 * skips calibrating the APIC timer against the PIT, a step that costs boot time
 * and fails on a loaded host ("APIC timer disabled due to verification failure").
 */
const CPUID1_ECX_TSC_DEADLINE = 1 << 24;
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

/**
 * Extended topology (leaf 0xB or 0x1F): sub-leaf 0 is the SMT level (one
 * thread per core), 1 the core level (cpuCount cores), 2 ends the list.
 */
function topologyLeaf(fn: number, apicId: number, cpuCount: number, coreBits: number): KvmCpuidEntry[] {
  const flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
  return [
    { function: fn, index: 0, flags, eax: 0, ebx: 1, ecx: (LEVEL_TYPE_SMT << 8) | 0, edx: apicId },
    { function: fn, index: 1, flags, eax: coreBits, ebx: cpuCount, ecx: (LEVEL_TYPE_CORE << 8) | 1, edx: apicId },
    { function: fn, index: 2, flags, eax: 0, ebx: 0, ecx: 2, edx: apicId },
  ];
}

/** What KVM offers beyond KVM_GET_SUPPORTED_CPUID. */
export interface CpuidHostFeatures {
  /** KVM_CAP_TSC_DEADLINE_TIMER: KVM emulates the TSC-deadline timer. */
  tscDeadline: boolean;
}

/** The CPUID table for vCPU `cpuId` of `cpuCount`. */
export function vcpuCpuid(
  supported: readonly KvmCpuidEntry[], cpuId: number, cpuCount: number, host: CpuidHostFeatures = { tscDeadline: false },
): KvmCpuidEntry[] {
  const apicId = cpuId;
  const coreBits = bitsFor(cpuCount);
  const out: KvmCpuidEntry[] = [];
  for (const src of supported) {
    const e = { ...src };
    switch (e.function) {
      case 0x1:
        e.ecx |= CPUID1_ECX_HYPERVISOR;
        if (host.tscDeadline) e.ecx |= CPUID1_ECX_TSC_DEADLINE;
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
        // KVM may offer only sub-leaf 0: replace the leaf with flint's own topology.
        if (e.index === 0) out.push(...topologyLeaf(e.function, apicId, cpuCount, coreBits));
        continue;
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
    }
    out.push(e);
  }
  // KVM provides the "KVMKVMKVM\0\0\0" signature leaf and its features: kept as they are.
  if (!out.some((e) => e.function === KVM_CPUID_SIGNATURE)) {
    throw new RangeError("KVM_GET_SUPPORTED_CPUID has no KVM paravirtual leaves");
  }
  return out;
}
