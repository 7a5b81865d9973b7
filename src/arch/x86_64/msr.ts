/**
 * Model-specific registers a vCPU starts with before entering Linux, as a
 * PC firmware would leave them (Intel SDM vol. 3 §9.1 "initialization";
 * same set as Firecracker and kvmtool).
 */
import {
  MSR_CSTAR, MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING, MSR_IA32_SYSENTER_CS,
  MSR_IA32_SYSENTER_EIP, MSR_IA32_SYSENTER_ESP, MSR_IA32_TSC, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_MTRRdefType,
  MSR_STAR, MSR_SYSCALL_MASK, MTRR_TYPE_WRBACK,
} from "../../linux/abi.generated.js";
import type { KvmMsrEntry } from "../../kvm/types.js";

/** IA32_MTRR_DEF_TYPE bit 11 "E": MTRRs enabled (Intel SDM vol. 3 §11.11.2.1). */
const MTRR_DEF_TYPE_ENABLE = 1n << 11n;

/** Boot MSRs: syscall MSRs cleared, TSC 0, fast strings on, MTRRs enabled with write-back default. */
export function bootMsrs(): KvmMsrEntry[] {
  return [
    { index: MSR_IA32_SYSENTER_CS, data: 0n },
    { index: MSR_IA32_SYSENTER_ESP, data: 0n },
    { index: MSR_IA32_SYSENTER_EIP, data: 0n },
    { index: MSR_STAR, data: 0n },
    { index: MSR_CSTAR, data: 0n },
    { index: MSR_KERNEL_GS_BASE, data: 0n },
    { index: MSR_SYSCALL_MASK, data: 0n },
    { index: MSR_LSTAR, data: 0n },
    { index: MSR_IA32_TSC, data: 0n },
    { index: MSR_IA32_MISC_ENABLE, data: BigInt(MSR_IA32_MISC_ENABLE_FAST_STRING) },
    { index: MSR_MTRRdefType, data: MTRR_DEF_TYPE_ENABLE | BigInt(MTRR_TYPE_WRBACK) },
  ];
}
