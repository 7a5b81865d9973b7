/**
 * A vCPU fd and its mapped struct kvm_run: one method per vCPU ioctl
 * (api.rst §4). A VcpuFd can be re-created in a worker thread from
 * `describe()`, since fds and mappings are process-wide.
 */
import { closeSync } from "node:fs";
import {
  E2BIG, KVM_GET_CPUID2, KVM_GET_DEBUGREGS, KVM_GET_FPU, KVM_GET_LAPIC, KVM_GET_MP_STATE, KVM_GET_MSRS, KVM_GET_REGS,
  KVM_GET_SREGS, KVM_GET_TSC_KHZ, KVM_GET_VCPU_EVENTS, KVM_GET_XCRS, KVM_GET_XSAVE, KVM_GET_XSAVE2, KVM_KVMCLOCK_CTRL,
  KVM_RUN, KVM_SET_CPUID2, KVM_SET_DEBUGREGS, KVM_SET_FPU, KVM_SET_LAPIC, KVM_SET_MP_STATE, KVM_SET_MSRS, KVM_SET_REGS,
  KVM_SET_SREGS, KVM_SET_TSC_KHZ, KVM_SET_VCPU_EVENTS, KVM_SET_XCRS, KVM_SET_XSAVE,
  kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_run, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
} from "../linux/abi.generated.js";
import { dataView } from "../memory/le.js";
import { errnoName, munmap, sys } from "../sys/native.js";
import { KvmError } from "./errors.js";
import { kvmGetIoctl, kvmIoctl, kvmSetIoctl } from "./kvm.js";
import {
  decodeCpuid, decodeMsrs, decodeRegs, decodeSregs, encodeCpuid, encodeMsrs, encodeRegs, encodeSregs,
} from "./structs.js";
import type { KvmCpuidEntry, KvmMsrEntry, KvmRegs, KvmSregs } from "./types.js";

/** What a worker needs to re-create a VcpuFd. */
export interface VcpuDescriptor {
  id: number;
  fd: number;
  runAddress: bigint;
  runSize: number;
  /** Bytes of this vCPU's XSAVE state (VmFd.xsaveSize()). */
  xsaveSize: number;
}

/** Room for CPUID entries KVM_GET_CPUID2 is first offered, and the most it is ever offered. */
const CPUID2_FIRST_CAPACITY = 64;
const CPUID2_MAX_CAPACITY = 4096;

export class VcpuFd {
  readonly id: number;
  readonly fd: number;
  readonly runAddress: bigint;
  readonly runSize: number;
  /**
   * Bytes of this vCPU's XSAVE state: sizeof(struct kvm_xsave), or more once
   * the process enabled a dynamic XSAVE feature (api.rst 4.134 KVM_GET_XSAVE2).
   */
  readonly xsaveSize: number;
  /** The shared struct kvm_run. */
  readonly run: Uint8Array;
  /** Little-endian view of struct kvm_run; field offsets are in `kvm_run`. */
  readonly runView: DataView;
  private readonly owner: boolean;

  constructor(id: number, fd: number, runAddress: bigint, runSize: number, owner = true, xsaveSize: number = kvm_xsave.SIZE) {
    this.id = id;
    this.fd = fd;
    this.runAddress = runAddress;
    this.runSize = runSize;
    this.xsaveSize = xsaveSize;
    this.run = new Uint8Array(sys.view(runAddress, runSize));
    this.runView = dataView(this.run);
    this.owner = owner;
  }

  /** Views a vCPU created by another thread. */
  static attach(d: VcpuDescriptor): VcpuFd {
    return new VcpuFd(d.id, d.fd, d.runAddress, d.runSize, false, d.xsaveSize);
  }

  describe(): VcpuDescriptor {
    return { id: this.id, fd: this.fd, runAddress: this.runAddress, runSize: this.runSize, xsaveSize: this.xsaveSize };
  }

  /**
   * KVM_RUN. Returns the exit reason (KVM_EXIT_*), or a negative errno
   * (-EINTR when kicked by a signal or immediate_exit). Never throws: this is
   * the hottest call in flint.
   */
  runOnce(): number {
    const r = sys.ioctlValue(this.fd, KVM_RUN, 0);
    return r < 0 ? r : this.runView.getUint32(kvm_run.exit_reason, true);
  }

  /** Sets kvm_run.immediate_exit: the next KVM_RUN returns -EINTR at once. */
  setImmediateExit(on: boolean): void {
    this.run[kvm_run.immediate_exit] = on ? 1 : 0;
  }

  /**
   * KVM_KVMCLOCK_CTRL (api.rst §4.70): tells KVM the guest was stopped by the
   * host, so the guest's kvm-clock page carries PVCLOCK_GUEST_STOPPED and its
   * soft-lockup watchdog does not blame the pause on a lockup. Returns 0, or
   * a negative errno (-EINVAL when the guest never enabled kvm-clock); never
   * throws, since a guest without kvm-clock is a normal case.
   */
  kvmclockCtrl(): number {
    return sys.ioctlValue(this.fd, KVM_KVMCLOCK_CTRL, 0);
  }

  /** KVM_GET_REGS. */
  getRegs(): KvmRegs {
    const buf = new Uint8Array(kvm_regs.SIZE);
    kvmIoctl(this.fd, KVM_GET_REGS, buf, "KVM_GET_REGS");
    return decodeRegs(buf);
  }

  /** KVM_SET_REGS. */
  setRegs(r: KvmRegs): void {
    kvmIoctl(this.fd, KVM_SET_REGS, encodeRegs(r), "KVM_SET_REGS");
  }

  /** KVM_GET_SREGS. */
  getSregs(): KvmSregs {
    const buf = encodeSregs(emptySregs());
    kvmIoctl(this.fd, KVM_GET_SREGS, buf, "KVM_GET_SREGS");
    return decodeSregs(buf);
  }

  /** KVM_SET_SREGS. */
  setSregs(s: KvmSregs): void {
    kvmIoctl(this.fd, KVM_SET_SREGS, encodeSregs(s), "KVM_SET_SREGS");
  }

  /** KVM_SET_CPUID2. */
  setCpuid2(entries: readonly KvmCpuidEntry[]): void {
    kvmIoctl(this.fd, KVM_SET_CPUID2, encodeCpuid(entries), "KVM_SET_CPUID2");
  }

  /** KVM_SET_MSRS: throws unless every MSR was set. */
  setMsrs(entries: readonly KvmMsrEntry[]): void {
    const n = kvmIoctl(this.fd, KVM_SET_MSRS, encodeMsrs(entries), "KVM_SET_MSRS");
    if (n !== entries.length) {
      const bad = entries[n];
      throw new KvmError("EKVMIOCTL", `KVM_SET_MSRS set ${n} of ${entries.length} MSRs (rejected 0x${bad?.index.toString(16)})`);
    }
  }

  /** KVM_GET_MSRS for the given indices. */
  getMsrs(indices: readonly number[]): KvmMsrEntry[] {
    const buf = encodeMsrs(indices.map((index) => ({ index, data: 0n })));
    const n = kvmIoctl(this.fd, KVM_GET_MSRS, buf, "KVM_GET_MSRS");
    return decodeMsrs(buf, n);
  }

  /** KVM_GET_FPU as raw struct kvm_fpu bytes. */
  getFpu(): Uint8Array {
    return kvmGetIoctl(this.fd, KVM_GET_FPU, kvm_fpu.SIZE, "KVM_GET_FPU");
  }

  /** KVM_SET_FPU with the reset state Linux expects (FCW 0x37f, MXCSR 0x1f80). */
  setFpuDefaults(): void {
    const buf = new Uint8Array(kvm_fpu.SIZE);
    const v = dataView(buf);
    v.setUint16(kvm_fpu.fcw, 0x37f, true);
    v.setUint32(kvm_fpu.mxcsr, 0x1f80, true);
    kvmIoctl(this.fd, KVM_SET_FPU, buf, "KVM_SET_FPU");
  }

  /** KVM_GET_LAPIC as raw struct kvm_lapic_state bytes (the APIC register page). */
  getLapic(): Uint8Array {
    return kvmGetIoctl(this.fd, KVM_GET_LAPIC, kvm_lapic_state.SIZE, "KVM_GET_LAPIC");
  }

  /** KVM_SET_LAPIC: `state` is a struct kvm_lapic_state. */
  setLapic(state: Uint8Array): void {
    kvmSetIoctl(this.fd, KVM_SET_LAPIC, state, kvm_lapic_state.SIZE, `KVM_SET_LAPIC on vCPU ${this.id}`);
  }

  /**
   * KVM_GET_XSAVE (api.rst 4.42), or KVM_GET_XSAVE2 (4.134) when this vCPU's
   * XSAVE state is larger than struct kvm_xsave: the raw XSAVE area (x87, SSE,
   * AVX... registers, laid out as CPUID leaf 0xD says on this host), `xsaveSize` bytes.
   */
  getXsave(): Uint8Array {
    return this.xsaveSize > kvm_xsave.SIZE
      ? kvmGetIoctl(this.fd, KVM_GET_XSAVE2, this.xsaveSize, "KVM_GET_XSAVE2")
      : kvmGetIoctl(this.fd, KVM_GET_XSAVE, kvm_xsave.SIZE, "KVM_GET_XSAVE");
  }

  /** KVM_SET_XSAVE (api.rst 4.43): `state` as getXsave returned it, `xsaveSize` bytes. */
  setXsave(state: Uint8Array): void {
    kvmSetIoctl(this.fd, KVM_SET_XSAVE, state, this.xsaveSize, `KVM_SET_XSAVE on vCPU ${this.id}`);
  }

  /** KVM_GET_XCRS (api.rst 4.44): raw struct kvm_xcrs (XCR0, the enabled XSAVE features). */
  getXcrs(): Uint8Array {
    return kvmGetIoctl(this.fd, KVM_GET_XCRS, kvm_xcrs.SIZE, "KVM_GET_XCRS");
  }

  /** KVM_SET_XCRS (api.rst 4.45). */
  setXcrs(state: Uint8Array): void {
    kvmSetIoctl(this.fd, KVM_SET_XCRS, state, kvm_xcrs.SIZE, `KVM_SET_XCRS on vCPU ${this.id}`);
  }

  /**
   * KVM_GET_VCPU_EVENTS (api.rst 4.31): raw struct kvm_vcpu_events — pending
   * or injected exceptions, interrupts and NMIs, the interrupt shadow, SMM.
   */
  getVcpuEvents(): Uint8Array {
    return kvmGetIoctl(this.fd, KVM_GET_VCPU_EVENTS, kvm_vcpu_events.SIZE, "KVM_GET_VCPU_EVENTS");
  }

  /** KVM_SET_VCPU_EVENTS (api.rst 4.32): `state` as getVcpuEvents returned it, its flags saying what is valid. */
  setVcpuEvents(state: Uint8Array): void {
    kvmSetIoctl(this.fd, KVM_SET_VCPU_EVENTS, state, kvm_vcpu_events.SIZE, `KVM_SET_VCPU_EVENTS on vCPU ${this.id}`);
  }

  /** KVM_GET_DEBUGREGS (api.rst 4.33): raw struct kvm_debugregs (DR0-3, DR6, DR7). */
  getDebugregs(): Uint8Array {
    return kvmGetIoctl(this.fd, KVM_GET_DEBUGREGS, kvm_debugregs.SIZE, "KVM_GET_DEBUGREGS");
  }

  /** KVM_SET_DEBUGREGS (api.rst 4.34). */
  setDebugregs(state: Uint8Array): void {
    kvmSetIoctl(this.fd, KVM_SET_DEBUGREGS, state, kvm_debugregs.SIZE, `KVM_SET_DEBUGREGS on vCPU ${this.id}`);
  }

  /**
   * KVM_GET_CPUID2: the CPUID table this vCPU was given with KVM_SET_CPUID2.
   * KVM reports neither the table's size on E2BIG nor how many entries it
   * wrote on success (it leaves nent as given; arch/x86/kvm/x86.c, cpuid.c),
   * so the size is the least room KVM does not answer E2BIG to: doubled until
   * it fits, then narrowed by bisection, a dozen calls at most.
   */
  getCpuid2(): KvmCpuidEntry[] {
    const fits = (capacity: number): Uint8Array | undefined => {
      const buf = encodeCpuid([], capacity);
      const r = sys.ioctl(this.fd, KVM_GET_CPUID2, buf);
      if (r >= 0) return buf;
      if (-r === E2BIG) return undefined;
      throw new KvmError("EKVMIOCTL", `KVM_GET_CPUID2 failed: ${errnoName(-r)}`, errnoName(-r));
    };
    if (fits(0)) return [];
    let tooSmall = 0;
    let capacity = CPUID2_FIRST_CAPACITY;
    let table = fits(capacity);
    while (!table) {
      if (capacity >= CPUID2_MAX_CAPACITY) throw new KvmError("EKVMIOCTL", `KVM_GET_CPUID2 failed: more than ${CPUID2_MAX_CAPACITY} entries`);
      tooSmall = capacity;
      capacity *= 2;
      table = fits(capacity);
    }
    while (capacity - tooSmall > 1) {
      const mid = (tooSmall + capacity) >>> 1;
      const t = fits(mid);
      if (t) [capacity, table] = [mid, t];
      else tooSmall = mid;
    }
    return decodeCpuid(table);
  }

  /**
   * KVM_GET_TSC_KHZ (api.rst 4.56): the guest's TSC frequency in kHz. Throws
   * (EIO) when the host's TSC is unstable.
   */
  getTscKhz(): number {
    return kvmIoctl(this.fd, KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ");
  }

  /**
   * KVM_SET_TSC_KHZ (api.rst 4.55): the guest's TSC frequency in kHz. KVM
   * scales the guest's TSC when it differs from the host's by more than its
   * tolerance (250 ppm), which needs KVM_CAP_TSC_CONTROL for a lower rate.
   */
  setTscKhz(khz: number): void {
    kvmIoctl(this.fd, KVM_SET_TSC_KHZ, khz, `KVM_SET_TSC_KHZ(${khz})`);
  }

  /** KVM_GET_MP_STATE. */
  getMpState(): number {
    const buf = new Uint8Array(kvm_mp_state.SIZE);
    kvmIoctl(this.fd, KVM_GET_MP_STATE, buf, "KVM_GET_MP_STATE");
    return dataView(buf).getUint32(kvm_mp_state.mp_state, true);
  }

  /** KVM_SET_MP_STATE. */
  setMpState(state: number): void {
    const buf = new Uint8Array(kvm_mp_state.SIZE);
    dataView(buf).setUint32(kvm_mp_state.mp_state, state, true);
    kvmIoctl(this.fd, KVM_SET_MP_STATE, buf, "KVM_SET_MP_STATE");
  }

  /** Unmaps kvm_run and closes the fd (owner only). */
  close(): void {
    if (!this.owner) return;
    munmap(this.runAddress, this.runSize);
    closeSync(this.fd);
  }
}

/** An all-zero KvmSregs (a buffer template for KVM_GET_SREGS). */
export function emptySregs(): KvmSregs {
  const seg = () => ({ base: 0n, limit: 0, selector: 0, type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 });
  return {
    cs: seg(), ds: seg(), es: seg(), fs: seg(), gs: seg(), ss: seg(), tr: seg(), ldt: seg(),
    gdt: { base: 0n, limit: 0 }, idt: { base: 0n, limit: 0 },
    cr0: 0n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n, efer: 0n, apic_base: 0n,
    interrupt_bitmap: new Uint8Array(32),
  };
}
