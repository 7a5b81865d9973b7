/**
 * A KVM virtual machine fd: one method per VM ioctl (api.rst §4).
 */
import { closeSync } from "node:fs";
import {
  KVM_CAP_XSAVE2, KVM_CHECK_EXTENSION, KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2, KVM_CREATE_VCPU, KVM_GET_CLOCK,
  KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_IOEVENTFD, KVM_IRQ_LINE, KVM_IRQFD, KVM_SET_CLOCK, KVM_SET_IDENTITY_MAP_ADDR,
  KVM_SET_IRQCHIP, KVM_SET_PIT2, KVM_SET_TSS_ADDR, KVM_SET_USER_MEMORY_REGION, MAP_SHARED, PROT_READ, PROT_WRITE,
  kvm_clock_data, kvm_ioeventfd, kvm_irq_level, kvm_irqchip, kvm_irqfd, kvm_pit_config, kvm_pit_state2,
  kvm_userspace_memory_region, kvm_xsave,
} from "../linux/abi.generated.js";
import { dataView } from "../memory/le.js";
import { errnoName, mmap, sys } from "../sys/native.js";
import { KvmError } from "./errors.js";
import { kvmGetIoctl, kvmIoctl, kvmSetIoctl, type Kvm } from "./kvm.js";
import { VcpuFd } from "./vcpu.js";

/** Arguments of KVM_SET_USER_MEMORY_REGION. */
export interface UserMemoryRegion {
  slot: number;
  flags: number;
  guestPhysAddr: number;
  memorySize: number;
  userspaceAddr: bigint;
}

/** Arguments of KVM_IOEVENTFD. */
export interface IoEventFd {
  address: number;
  length: 0 | 1 | 2 | 4 | 8;
  fd: number;
  flags: number;
  datamatch?: bigint;
}

/** An open VM. The fd number is usable from any thread of this process. */
export class VmFd {
  readonly fd: number;
  /** The system handle; absent on a VmFd attached in another thread. */
  readonly kvm: Kvm | undefined;
  private readonly irqLevel = new Uint8Array(kvm_irq_level.SIZE);
  private readonly irqLevelView = dataView(this.irqLevel);

  constructor(fd: number, kvm?: Kvm) {
    this.fd = fd;
    this.kvm = kvm;
  }

  /** A VmFd for an fd opened by another thread (no vCPU creation). */
  static attach(fd: number): VmFd {
    return new VmFd(fd);
  }

  /**
   * KVM_CHECK_EXTENSION on the VM (api.rst 4.4, KVM_CAP_CHECK_EXTENSION_VM):
   * 0 when absent, a positive value when present. Some answers are per VM.
   */
  checkExtension(cap: number): number {
    const r = sys.ioctl(this.fd, KVM_CHECK_EXTENSION, cap);
    return r < 0 ? 0 : r;
  }

  /**
   * Bytes of a vCPU's XSAVE state in this VM: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)
   * asked of the VM, at least sizeof(struct kvm_xsave) (api.rst 4.43, 4.134).
   */
  xsaveSize(): number {
    return Math.max(kvm_xsave.SIZE, this.checkExtension(KVM_CAP_XSAVE2));
  }

  /** KVM_SET_USER_MEMORY_REGION. */
  setUserMemoryRegion(r: UserMemoryRegion): void {
    const buf = new Uint8Array(kvm_userspace_memory_region.SIZE);
    const v = dataView(buf);
    v.setUint32(kvm_userspace_memory_region.slot, r.slot, true);
    v.setUint32(kvm_userspace_memory_region.flags, r.flags, true);
    v.setBigUint64(kvm_userspace_memory_region.guest_phys_addr, BigInt(r.guestPhysAddr), true);
    v.setBigUint64(kvm_userspace_memory_region.memory_size, BigInt(r.memorySize), true);
    v.setBigUint64(kvm_userspace_memory_region.userspace_addr, r.userspaceAddr, true);
    kvmIoctl(this.fd, KVM_SET_USER_MEMORY_REGION, buf, `KVM_SET_USER_MEMORY_REGION(slot ${r.slot})`);
  }

  /**
   * KVM_GET_DIRTY_LOG (api.rst 4.8): which pages of memory slot `slot`
   * (registered with KVM_MEM_LOG_DIRTY_PAGES) the guest or KVM wrote since
   * the last call, one bit per 4 KiB page in 64-bit little-endian words;
   * KVM clears the log as it hands it out. `pages` is the slot's page count.
   */
  getDirtyLog(slot: number, pages: number): Uint8Array {
    const bitmap = new Uint8Array(Math.ceil(pages / 64) * 8);
    const r = sys.getDirtyLog(this.fd, slot, bitmap);
    if (r < 0) throw new KvmError("EKVMIOCTL", `KVM_GET_DIRTY_LOG(slot ${slot}) failed: ${errnoName(-r)}`, errnoName(-r));
    return bitmap;
  }

  /** KVM_SET_TSS_ADDR: three pages of guest-physical space KVM may use (Intel). */
  setTssAddr(address: number): void {
    kvmIoctl(this.fd, KVM_SET_TSS_ADDR, address, "KVM_SET_TSS_ADDR");
  }

  /** KVM_SET_IDENTITY_MAP_ADDR: one page for the EPT identity map (Intel). */
  setIdentityMapAddr(address: number): void {
    const buf = new BigUint64Array([BigInt(address)]);
    kvmIoctl(this.fd, KVM_SET_IDENTITY_MAP_ADDR, buf, "KVM_SET_IDENTITY_MAP_ADDR");
  }

  /** KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and local APICs. */
  createIrqchip(): void {
    kvmIoctl(this.fd, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
  }

  /** KVM_CREATE_PIT2: in-kernel i8254 timer. */
  createPit2(flags: number): void {
    const buf = new Uint8Array(kvm_pit_config.SIZE);
    dataView(buf).setUint32(kvm_pit_config.flags, flags, true);
    kvmIoctl(this.fd, KVM_CREATE_PIT2, buf, "KVM_CREATE_PIT2");
  }

  /**
   * KVM_GET_IRQCHIP (api.rst 4.26): raw struct kvm_irqchip of the in-kernel
   * chip `chipId` (KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC).
   */
  getIrqchip(chipId: number): Uint8Array {
    const buf = new Uint8Array(kvm_irqchip.SIZE);
    dataView(buf).setUint32(kvm_irqchip.chip_id, chipId, true);
    kvmIoctl(this.fd, KVM_GET_IRQCHIP, buf, `KVM_GET_IRQCHIP(${chipId})`);
    return buf;
  }

  /** KVM_SET_IRQCHIP (api.rst 4.27): `state` as getIrqchip returned it; its chip_id names the chip. */
  setIrqchip(state: Uint8Array): void {
    kvmSetIoctl(this.fd, KVM_SET_IRQCHIP, state, kvm_irqchip.SIZE, "KVM_SET_IRQCHIP");
  }

  /** KVM_GET_PIT2 (api.rst 4.72): raw struct kvm_pit_state2 of the in-kernel i8254. */
  getPit2(): Uint8Array {
    return kvmGetIoctl(this.fd, KVM_GET_PIT2, kvm_pit_state2.SIZE, "KVM_GET_PIT2");
  }

  /** KVM_SET_PIT2 (api.rst 4.73). */
  setPit2(state: Uint8Array): void {
    kvmSetIoctl(this.fd, KVM_SET_PIT2, state, kvm_pit_state2.SIZE, "KVM_SET_PIT2");
  }

  /**
   * KVM_GET_CLOCK (api.rst 4.29): raw struct kvm_clock_data — the guest's
   * kvmclock in ns, and flags saying which other fields KVM filled in.
   */
  getClock(): Uint8Array {
    return kvmGetIoctl(this.fd, KVM_GET_CLOCK, kvm_clock_data.SIZE, "KVM_GET_CLOCK");
  }

  /** KVM_SET_CLOCK (api.rst 4.30): `state`'s flags choose how KVM takes it (KVM_CLOCK_REALTIME). */
  setClock(state: Uint8Array): void {
    kvmSetIoctl(this.fd, KVM_SET_CLOCK, state, kvm_clock_data.SIZE, "KVM_SET_CLOCK");
  }

  /**
   * KVM_IRQ_LINE: sets an irqchip input (GSI) level. Hot path: reuses one
   * buffer and returns -errno instead of throwing; callers count failures.
   */
  irqLine(gsi: number, level: number): number {
    this.irqLevelView.setUint32(kvm_irq_level.irq, gsi, true);
    this.irqLevelView.setUint32(kvm_irq_level.level, level, true);
    const r = sys.ioctl(this.fd, KVM_IRQ_LINE, this.irqLevel);
    return r < 0 ? r : 0;
  }

  /** KVM_IRQFD: writes to `eventFd` inject `gsi` without a trip through userspace. */
  irqfd(eventFd: number, gsi: number, flags = 0, resampleFd = 0): void {
    const buf = new Uint8Array(kvm_irqfd.SIZE);
    const v = dataView(buf);
    v.setUint32(kvm_irqfd.fd, eventFd, true);
    v.setUint32(kvm_irqfd.gsi, gsi, true);
    v.setUint32(kvm_irqfd.flags, flags, true);
    v.setUint32(kvm_irqfd.resamplefd, resampleFd, true);
    kvmIoctl(this.fd, KVM_IRQFD, buf, `KVM_IRQFD(gsi ${gsi})`);
  }

  /** KVM_IOEVENTFD: a guest write to `address` signals `fd` instead of exiting to userspace. */
  ioeventfd(e: IoEventFd): void {
    const buf = new Uint8Array(kvm_ioeventfd.SIZE);
    const v = dataView(buf);
    v.setBigUint64(kvm_ioeventfd.datamatch, e.datamatch ?? 0n, true);
    v.setBigUint64(kvm_ioeventfd.addr, BigInt(e.address), true);
    v.setUint32(kvm_ioeventfd.len, e.length, true);
    v.setInt32(kvm_ioeventfd.fd, e.fd, true);
    v.setUint32(kvm_ioeventfd.flags, e.flags, true);
    kvmIoctl(this.fd, KVM_IOEVENTFD, buf, `KVM_IOEVENTFD(0x${e.address.toString(16)})`);
  }

  /** KVM_CREATE_VCPU, and maps its struct kvm_run. */
  createVcpu(id: number): VcpuFd {
    const fd = kvmIoctl(this.fd, KVM_CREATE_VCPU, id, `KVM_CREATE_VCPU(${id})`);
    if (!this.kvm) throw new KvmError("EKVMIOCTL", "KVM_CREATE_VCPU needs the VM's owning thread");
    const size = this.kvm.getVcpuMmapSize();
    let runAddress: bigint;
    try {
      runAddress = mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    } catch (e) {
      closeSync(fd);
      throw new KvmError("EKVMIOCTL", `mmap of vCPU ${id}'s kvm_run failed: ${(e as Error).message}`);
    }
    return new VcpuFd(id, fd, runAddress, size, true, this.xsaveSize());
  }

  close(): void {
    closeSync(this.fd);
  }
}
