/**
 * A vCPU fd and its mapped struct kvm_run: one method per vCPU ioctl
 * (api.rst §4). A VcpuFd can be re-created in a worker thread from
 * `describe()`, since fds and mappings are process-wide.
 */
import { closeSync } from "node:fs";
import {
  KVM_GET_FPU, KVM_GET_LAPIC, KVM_GET_MP_STATE, KVM_GET_MSRS, KVM_GET_REGS, KVM_GET_SREGS, KVM_KVMCLOCK_CTRL, KVM_RUN,
  KVM_SET_CPUID2, KVM_SET_FPU, KVM_SET_LAPIC, KVM_SET_MP_STATE, KVM_SET_MSRS, KVM_SET_REGS, KVM_SET_SREGS,
  kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_run,
} from "../linux/abi.generated.js";
import { dataView } from "../memory/le.js";
import { munmap, sys } from "../sys/native.js";
import { KvmError } from "./errors.js";
import { kvmIoctl } from "./kvm.js";
import { decodeMsrs, decodeRegs, decodeSregs, encodeCpuid, encodeMsrs, encodeRegs, encodeSregs } from "./structs.js";
import type { KvmCpuidEntry, KvmMsrEntry, KvmRegs, KvmSregs } from "./types.js";

/** What a worker needs to re-create a VcpuFd. */
export interface VcpuDescriptor {
  id: number;
  fd: number;
  runAddress: bigint;
  runSize: number;
}

export class VcpuFd {
  readonly id: number;
  readonly fd: number;
  readonly runAddress: bigint;
  readonly runSize: number;
  /** The shared struct kvm_run. */
  readonly run: Uint8Array;
  /** Little-endian view of struct kvm_run; field offsets are in `kvm_run`. */
  readonly runView: DataView;
  private readonly owner: boolean;

  constructor(id: number, fd: number, runAddress: bigint, runSize: number, owner = true) {
    this.id = id;
    this.fd = fd;
    this.runAddress = runAddress;
    this.runSize = runSize;
    this.run = new Uint8Array(sys.view(runAddress, runSize));
    this.runView = dataView(this.run);
    this.owner = owner;
  }

  /** Views a vCPU created by another thread. */
  static attach(d: VcpuDescriptor): VcpuFd {
    return new VcpuFd(d.id, d.fd, d.runAddress, d.runSize, false);
  }

  describe(): VcpuDescriptor {
    return { id: this.id, fd: this.fd, runAddress: this.runAddress, runSize: this.runSize };
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
    const buf = new Uint8Array(kvm_fpu.SIZE);
    kvmIoctl(this.fd, KVM_GET_FPU, buf, "KVM_GET_FPU");
    return buf;
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
    const buf = new Uint8Array(kvm_lapic_state.SIZE);
    kvmIoctl(this.fd, KVM_GET_LAPIC, buf, "KVM_GET_LAPIC");
    return buf;
  }

  /** KVM_SET_LAPIC. */
  setLapic(state: Uint8Array): void {
    kvmIoctl(this.fd, KVM_SET_LAPIC, state, "KVM_SET_LAPIC");
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
