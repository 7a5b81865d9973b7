/**
 * The whole KVM state of one x86-64 vCPU as plain data, saved from a paused
 * vCPU and restored into a fresh one (a snapshot, a clone, a migration).
 * Everything the guest can observe is here: general and special registers,
 * the XSAVE area (x87/SSE/AVX...), XCR0, debug registers, the local APIC page,
 * MSRs, pending events, CPUID and the TSC rate. Guest memory and the VM-wide
 * chips (vm-state.ts) are saved beside it.
 *
 * The order of the ioctls, the MSR list and the TSC handling follow
 * Firecracker (src/vmm/src/arch/x86_64/vcpu.rs, msr.rs, builder.rs, and
 * cpu_config/x86_64/cpuid/common.rs; read 2026-12) and api.rst; each step says
 * which fact it rests on. Where flint departs from Firecracker it says why.
 *
 * Lives in arch/x86_64, not kvm/: the record is x86-specific (XSAVE, MSRs,
 * MTRRs, the LAPIC), as Firecracker keeps it in arch/x86_64/vcpu.rs, while
 * kvm/ stays one method per ioctl.
 */
import {
  EINTR, HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_TSC_INVARIANT_CONTROL, MSR_IA32_CR_PAT, MSR_IA32_MC0_CTL,
  MSR_IA32_MCG_CAP, MSR_IA32_MCx_CTL_1, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE, MSR_IA32_VMX_BASIC,
  MSR_IA32_VMX_VMFUNC, MSR_MTRRcap, MSR_MTRRdefType, MSR_MTRRfix16K_80000, MSR_MTRRfix16K_A0000,
  MSR_MTRRfix4K_C0000, MSR_MTRRfix4K_C8000, MSR_MTRRfix4K_D0000, MSR_MTRRfix4K_D8000, MSR_MTRRfix4K_E0000,
  MSR_MTRRfix4K_E8000, MSR_MTRRfix4K_F0000, MSR_MTRRfix4K_F8000, MSR_MTRRfix64K_00000, MTRRphysBase_MSR_0,
  MTRRphysBase_MSR_1, MTRRphysMask_MSR_0, kvm_debugregs, kvm_lapic_state, kvm_run, kvm_sregs, kvm_vcpu_events,
  kvm_xcrs,
} from "../../linux/abi.generated.js";
import { KvmError } from "../../kvm/errors.js";
import type { Kvm } from "../../kvm/kvm.js";
import type { KvmCpuidEntry, KvmMsrEntry, KvmRegs, KvmSregs } from "../../kvm/types.js";
import type { VcpuFd } from "../../kvm/vcpu.js";
import { errnoName } from "../../sys/native.js";

/** The version of the VcpuState record; bump it when a field changes meaning. */
export const VCPU_STATE_VERSION = 1;

/** Everything KVM holds for one vCPU. Plain data: numbers, bigints, byte arrays. */
export interface VcpuState {
  version: typeof VCPU_STATE_VERSION;
  /** The KVM vCPU id: restoring needs a vCPU created with the same id (its APIC id; 0 is the BSP). */
  id: number;
  /** KVM_MP_STATE_* (api.rst 4.38). */
  mpState: number;
  regs: KvmRegs;
  sregs: KvmSregs;
  /** The XSAVE area (api.rst 4.42), VcpuFd.xsaveSize bytes. */
  xsave: Uint8Array;
  /** struct kvm_xcrs (api.rst 4.44). */
  xcrs: Uint8Array;
  /** struct kvm_debugregs (api.rst 4.33). */
  debugregs: Uint8Array;
  /** struct kvm_lapic_state (api.rst 4.57). */
  lapic: Uint8Array;
  /** The MSRs of msrsToSave() that KVM could read for this vCPU, in that order. */
  msrs: KvmMsrEntry[];
  /** struct kvm_vcpu_events (api.rst 4.31). */
  vcpuEvents: Uint8Array;
  /** The vCPU's CPUID table (KVM_GET_CPUID2). */
  cpuid: KvmCpuidEntry[];
  /** The guest's TSC rate in kHz (api.rst 4.56); 0 when KVM could not tell (an unstable host TSC). */
  tscKhz: number;
}

/**
 * KVM_GET_MSRS/KVM_SET_MSRS take fewer entries than this per call and fail
 * with E2BIG otherwise (MAX_IO_MSRS in arch/x86/kvm/x86.c).
 */
const MAX_IO_MSRS = 256;

/**
 * A TSC rate within 250 parts per million of the saved one needs no scaling:
 * the tolerance KVM itself applies (tsc_tolerance_ppm in arch/x86/kvm/x86.c)
 * and Firecracker copies from QEMU, since hosts calibrate their TSC slightly
 * differently at each boot.
 */
const TSC_KHZ_TOLERANCE_PPM = 250;

/** IA32_MTRRCAP bits 7:0, VCNT: how many variable-range MTRRs (Intel SDM vol. 3A §11.11.1). */
const MTRRCAP_VCNT_MASK = 0xffn;
/** IA32_MCG_CAP bits 7:0, Count: how many machine-check banks (Intel SDM vol. 3B §15.3.1.1). */
const MCG_CAP_COUNT_MASK = 0xffn;

/** The fixed-range MTRRs (Intel SDM vol. 3A §11.11.2.2), which KVM emulates but does not list. */
const FIXED_MTRRS = [
  MSR_MTRRfix64K_00000, MSR_MTRRfix16K_80000, MSR_MTRRfix16K_A0000, MSR_MTRRfix4K_C0000, MSR_MTRRfix4K_C8000,
  MSR_MTRRfix4K_D0000, MSR_MTRRfix4K_D8000, MSR_MTRRfix4K_E0000, MSR_MTRRfix4K_E8000, MSR_MTRRfix4K_F0000,
  MSR_MTRRfix4K_F8000,
];

/**
 * MSRs a snapshot leaves out although KVM lists them: not guest state, and
 * their presence differs between hosts, so saving them would only make a
 * snapshot fail to restore elsewhere (Firecracker leaves both out too).
 * - VMX capability MSRs: what KVM offers a nested hypervisor on this host;
 *   flint saves no nested state (KVM_GET_NESTED_STATE), so they carry nothing.
 * - Hyper-V synthetic MSRs: flint gives guests no Hyper-V interface (newer
 *   kernels can be built without it, CONFIG_KVM_HYPERV).
 */
const UNSAVED_MSR_RANGES: readonly (readonly [first: number, last: number])[] = [
  [MSR_IA32_VMX_BASIC, MSR_IA32_VMX_VMFUNC],
  [HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_TSC_INVARIANT_CONTROL],
];

/**
 * The MSRs to save for `vcpu`:
 * 1. KVM_GET_MSR_INDEX_LIST (api.rst 4.3) in KVM's order, less UNSAVED_MSR_RANGES.
 *    Firecracker keeps an allow-list of ranges instead (SERIALIZABLE_MSR_RANGES
 *    in msr.rs); flint keeps everything KVM lists that is guest state, so MSRs
 *    Firecracker's list misses (AMD's VIRT_SPEC_CTRL, PMU counters, XFD) survive
 *    a snapshot. An MSR KVM lists but cannot read for this vCPU (a feature its
 *    CPUID lacks) is left out by saveVcpuState.
 * 2. The MSRs KVM emulates but does not list, as Firecracker adds them from the
 *    vCPU's CPUID (msrs_to_save_by_cpuid): the variable- and fixed-range MTRRs,
 *    MTRRdefType and PAT, and the machine-check banks (api.rst 4.3: "the MCE bank
 *    MSRs are not returned in the MSR list"). flint sizes both from the vCPU's own
 *    IA32_MTRRCAP and IA32_MCG_CAP where Firecracker assumes 8 MTRRs and 32 banks.
 *    (Firecracker also adds IA32_BNDCFGS when CPUID has MPX; KVM lists it itself
 *    on hosts with MPX.)
 * Asks the vCPU (its MTRR and MCE capabilities) but changes nothing; every vCPU
 * of a VM made by flint gets the same list.
 */
export function msrsToSave(kvm: Kvm, vcpu: VcpuFd): number[] {
  const listed = kvm.getMsrIndexList().filter((i) => !UNSAVED_MSR_RANGES.some(([first, last]) => i >= first && i <= last));
  const caps = readMsrs(vcpu, [MSR_MTRRcap, MSR_IA32_MCG_CAP]);
  const cap = (index: number) => caps.find((e) => e.index === index)?.data ?? 0n;
  const variableMtrrs = Number(cap(MSR_MTRRcap) & MTRRCAP_VCNT_MASK);
  const banks = Number(cap(MSR_IA32_MCG_CAP) & MCG_CAP_COUNT_MASK);
  const mtrrStride = MTRRphysBase_MSR_1 - MTRRphysBase_MSR_0;
  const bankStride = MSR_IA32_MCx_CTL_1 - MSR_IA32_MC0_CTL;
  const added = [
    ...Array.from({ length: variableMtrrs }, (_, i) => [MTRRphysBase_MSR_0 + i * mtrrStride, MTRRphysMask_MSR_0 + i * mtrrStride]).flat(),
    ...FIXED_MTRRS, MSR_MTRRdefType, MSR_IA32_CR_PAT,
    ...Array.from({ length: banks * bankStride }, (_, i) => MSR_IA32_MC0_CTL + i),
  ];
  return [...new Set([...listed, ...added])];
}

/**
 * Reads the MSRs `indices` in chunks KVM accepts. KVM_GET_MSRS stops at the
 * first MSR it cannot read (api.rst 4.18: it returns the number read); that
 * one has no state for this vCPU and is skipped.
 */
function readMsrs(vcpu: VcpuFd, indices: readonly number[]): KvmMsrEntry[] {
  const out: KvmMsrEntry[] = [];
  let at = 0;
  while (at < indices.length) {
    const chunk = indices.slice(at, at + MAX_IO_MSRS - 1);
    const read = vcpu.getMsrs(chunk);
    out.push(...read);
    at += read.length < chunk.length ? read.length + 1 : read.length;
  }
  return out;
}

/** KVM_SET_MSRS in chunks KVM accepts; throws unless every MSR was set. */
function writeMsrs(vcpu: VcpuFd, entries: readonly KvmMsrEntry[]): void {
  for (let at = 0; at < entries.length; at += MAX_IO_MSRS - 1) vcpu.setMsrs(entries.slice(at, at + MAX_IO_MSRS - 1));
}

/**
 * Completes what KVM left pending at the vCPU's last exit: an OUT's
 * instruction is skipped, an IN's or MMIO read's data is written to the guest
 * only when KVM_RUN is entered again, and that pending step is in no state
 * userspace can save (api.rst §5, "The kvm_run structure": "userspace should
 * ensure that the operation is completed before performing a live migration.
 * Userspace can re-enter the guest ... with the immediate_exit field set").
 * Firecracker gets this for free: its vCPUs pause out of a KVM_RUN the kick
 * interrupted. The exit must already be handled (an IN's data in kvm_run).
 */
function completePendingExit(vcpu: VcpuFd): void {
  const wasSet = vcpu.run[kvm_run.immediate_exit] !== 0;
  vcpu.setImmediateExit(true);
  let r: number;
  try {
    r = vcpu.runOnce();
  } finally {
    vcpu.setImmediateExit(wasSet);
  }
  if (r === -EINTR) return;
  if (r >= 0) {
    throw new KvmError("EKVMSTATE", `Cannot save vCPU ${vcpu.id}: KVM has another exit (reason ${r}) to hand over first; handle it, then save`);
  }
  throw new KvmError("EKVMIOCTL", `Cannot save vCPU ${vcpu.id}: KVM_RUN to complete its last exit failed: ${errnoName(-r)}`, errnoName(-r));
}

/**
 * Saves the state of a vCPU that is not running (paused, its last exit
 * handled). `msrIndices` comes from msrsToSave(). Order, after completing the
 * last exit, as Firecracker's save_state:
 * - KVM_GET_MP_STATE first: it runs kvm_apic_accept_events(), which can change
 *   the vCPU and LAPIC state (a pending INIT or SIPI), so everything read after
 *   it sees the result.
 * - KVM_GET_LAPIC may change LAPIC state before returning it.
 * - KVM_GET_VCPU_EVENTS last: other GET ioctls can change the pending events.
 * - KVM_GET_TSC_KHZ can fail on a host with an unstable TSC; the state then
 *   records 0 and a restore keeps the new host's rate (Firecracker: None, and a
 *   warning that the snapshot cannot move to another CPU model).
 */
export function saveVcpuState(vcpu: VcpuFd, msrIndices: readonly number[]): VcpuState {
  completePendingExit(vcpu);
  const mpState = vcpu.getMpState();
  const regs = vcpu.getRegs();
  const sregs = vcpu.getSregs();
  const xsave = vcpu.getXsave();
  const xcrs = vcpu.getXcrs();
  const debugregs = vcpu.getDebugregs();
  const lapic = vcpu.getLapic();
  let tscKhz = 0;
  try {
    tscKhz = vcpu.getTscKhz();
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
  }
  const cpuid = vcpu.getCpuid2();
  const msrs = readMsrs(vcpu, msrIndices);
  const vcpuEvents = vcpu.getVcpuEvents();
  return { version: VCPU_STATE_VERSION, id: vcpu.id, mpState, regs, sregs, xsave, xcrs, debugregs, lapic, msrs, vcpuEvents, cpuid, tscKhz };
}

/** Throws EKVMSTATE, before any ioctl, when `s` cannot be restored into `vcpu`. */
function checkVcpuState(vcpu: VcpuFd, s: VcpuState): void {
  const fail = (why: string) => new KvmError("EKVMSTATE", `Cannot restore vCPU ${vcpu.id}: ${why}`);
  if (s.version !== VCPU_STATE_VERSION) throw fail(`the saved state has version ${String(s.version)}, flint reads ${VCPU_STATE_VERSION}`);
  if (s.id !== vcpu.id) throw fail(`the saved state is vCPU ${s.id}'s`);
  const blobs: [string, Uint8Array, number][] = [
    ["xsave", s.xsave, vcpu.xsaveSize], ["xcrs", s.xcrs, kvm_xcrs.SIZE], ["debugregs", s.debugregs, kvm_debugregs.SIZE],
    ["lapic", s.lapic, kvm_lapic_state.SIZE], ["vcpuEvents", s.vcpuEvents, kvm_vcpu_events.SIZE],
    ["sregs.interrupt_bitmap", s.sregs.interrupt_bitmap, kvm_sregs.SIZE - kvm_sregs.interrupt_bitmap],
  ];
  for (const [name, bytes, size] of blobs) {
    if (!(bytes instanceof Uint8Array) || bytes.byteLength !== size) {
      throw fail(`its ${name} is ${bytes instanceof Uint8Array ? `${bytes.byteLength} bytes` : "missing"}, KVM here takes ${size}`);
    }
  }
}

/**
 * Gives the vCPU the saved TSC rate when this host's differs by more than the
 * tolerance (Firecracker's builder: is_tsc_scaling_required, then
 * KVM_SET_TSC_KHZ on every vCPU before restoring any state, so the saved
 * IA32_TSC is written at the right rate).
 */
function restoreTscKhz(vcpu: VcpuFd, savedKhz: number): void {
  if (savedKhz === 0) return;
  let currentKhz = 0;
  try {
    currentKhz = vcpu.getTscKhz();
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
  }
  if (Math.abs(currentKhz - savedKhz) <= (savedKhz * TSC_KHZ_TOLERANCE_PPM) / 1_000_000) return;
  try {
    vcpu.setTscKhz(savedKhz);
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    throw new KvmError("EKVMCAP",
      `Cannot restore vCPU ${vcpu.id}: its TSC ran at ${savedKhz} kHz and this host's KVM cannot scale its ${currentKhz} kHz to it (KVM_CAP_TSC_CONTROL)`, e.errno);
  }
}

/**
 * Restores MSRs in two steps (Firecracker's DEFERRED_MSRS): IA32_TSC_DEADLINE
 * after every other MSR, since KVM reads IA32_TSC when the deadline is written
 * to decide whether and when to arm the timer. A deadline of 0 is written as
 * the saved TSC (Firecracker's fix_zero_tsc_deadline_msr, which it applies when
 * saving): KVM clears the deadline when the timer fires, before the interrupt
 * reaches the LAPIC, and that pending interrupt is in no saved state, so a
 * snapshot taken in between would lose the guest's timer for good; the cost is
 * at worst one spurious timer interrupt, and none when the LAPIC timer is not in
 * TSC-deadline mode (KVM then ignores the write).
 */
function restoreMsrs(vcpu: VcpuFd, msrs: readonly KvmMsrEntry[]): void {
  writeMsrs(vcpu, msrs.filter((e) => e.index !== MSR_IA32_TSC_DEADLINE));
  const tsc = msrs.find((e) => e.index === MSR_IA32_TSC)?.data;
  const deadline = msrs.filter((e) => e.index === MSR_IA32_TSC_DEADLINE)
    .map((e) => (e.data === 0n && tsc !== undefined ? { index: e.index, data: tsc } : e));
  writeMsrs(vcpu, deadline);
}

/**
 * Restores `s` into `vcpu`, a vCPU created with the same id in a VM set up
 * like the saved one (irqchip and PIT created, memory registered) that has not
 * run. Restore every vCPU, then the VM (restoreVmState), as Firecracker does.
 * Order, as Firecracker's restore_state and builder:
 * - the TSC rate, before anything writes the TSC;
 * - KVM_SET_CPUID2 and KVM_SET_MP_STATE first: some SET ioctls depend on the
 *   CPUID and on whether the vCPU is the BSP;
 * - KVM_SET_REGS before KVM_SET_VCPU_EVENTS: setting registers clears pending
 *   exceptions, which the events restore;
 * - KVM_SET_SREGS before KVM_SET_LAPIC: the sregs carry the APIC base MSR;
 * - KVM_SET_LAPIC before KVM_SET_MSRS: the TSC deadline MSR only restores into
 *   a configured LAPIC;
 * - KVM_SET_VCPU_EVENTS last;
 * - then KVM_KVMCLOCK_CTRL (api.rst 4.70), as Firecracker does after every
 *   restore, so the guest's watchdog does not take the time spent saved for a
 *   soft lockup; it fails (EINVAL) when the guest never enabled kvm-clock,
 *   which is fine.
 * A state that does not fit (version, id, a blob's size) throws EKVMSTATE
 * before any ioctl; one KVM rejects throws EKVMIOCTL, leaving the vCPU half
 * restored, to be discarded.
 */
export function restoreVcpuState(vcpu: VcpuFd, s: VcpuState): void {
  checkVcpuState(vcpu, s);
  restoreTscKhz(vcpu, s.tscKhz);
  vcpu.setCpuid2(s.cpuid);
  vcpu.setMpState(s.mpState);
  vcpu.setRegs(s.regs);
  vcpu.setSregs(s.sregs);
  vcpu.setXsave(s.xsave);
  // A host without XSAVE saves no XCRs (KVM_GET_XCRS gives nr_xcrs 0) and refuses KVM_SET_XCRS with EINVAL
  // (arch/x86/kvm/x86.c); there is then nothing to restore.
  if (new DataView(s.xcrs.buffer, s.xcrs.byteOffset, s.xcrs.byteLength).getUint32(kvm_xcrs.nr_xcrs, true) > 0) vcpu.setXcrs(s.xcrs);
  vcpu.setDebugregs(s.debugregs);
  vcpu.setLapic(s.lapic);
  restoreMsrs(vcpu, s.msrs);
  vcpu.setVcpuEvents(s.vcpuEvents);
  vcpu.kvmclockCtrl();
}
