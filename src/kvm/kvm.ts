/**
 * The KVM system handle (/dev/kvm): one method per system ioctl, named after
 * it (Documentation/virt/kvm/api.rst §4). Types follow the kernel's fd chain:
 * Kvm -> VmFd -> VcpuFd.
 */
import { closeSync, openSync } from "node:fs";
import {
  E2BIG, EINTR, KVM_API_VERSION, KVM_CHECK_EXTENSION, KVM_CREATE_VM, KVM_GET_API_VERSION, KVM_GET_MSR_INDEX_LIST,
  KVM_GET_SUPPORTED_CPUID, KVM_GET_VCPU_MMAP_SIZE, kvm_msr_list,
} from "../linux/abi.generated.js";
import { dataView } from "../memory/le.js";
import { errnoName, sys } from "../sys/native.js";
import { KvmError } from "./errors.js";
import { decodeCpuid, encodeCpuid } from "./structs.js";
import type { KvmCpuidEntry } from "./types.js";
import { VmFd } from "./vm.js";

/** Path of the KVM device ($FLINT_KVM_DEVICE overrides it, for tests of hosts without KVM). */
export const KVM_DEVICE_PATH = process.env.FLINT_KVM_DEVICE ?? "/dev/kvm";

/** How many times kvmIoctl issues an ioctl that a signal interrupted (EINTR) before it gives up. */
const EINTR_RETRIES = 100;

/** Calls of KVM_GET_MSR_INDEX_LIST (E2BIG, then the size KVM named) before giving up. */
const MSR_LIST_ATTEMPTS = 3;

/** Runs an ioctl (again when a signal interrupted it) and throws KvmError(EKVMIOCTL) on failure. */
export function kvmIoctl(fd: number, request: number, arg: Parameters<typeof sys.ioctl>[2], what: string): number {
  let r = sys.ioctl(fd, request, arg);
  // A signal (a profiler's SIGPROF, flint's own kick) can interrupt a set-up ioctl such as
  // KVM_CREATE_VM before it did anything: try again, a bounded number of times.
  for (let tries = 1; r === -EINTR && tries < EINTR_RETRIES; tries++) r = sys.ioctl(fd, request, arg);
  if (r < 0) {
    const name = errnoName(-r);
    throw new KvmError("EKVMIOCTL", `${what} failed: ${name}`, name);
  }
  return r;
}

/** kvmIoctl for an ioctl that fills a struct of `size` bytes (KVM_GET_XSAVE, KVM_GET_PIT2...): returns its bytes. */
export function kvmGetIoctl(fd: number, request: number, size: number, what: string): Uint8Array {
  const buf = new Uint8Array(size);
  kvmIoctl(fd, request, buf, what);
  return buf;
}

/**
 * kvmIoctl for an ioctl that reads a struct of `size` bytes from `state`
 * (KVM_SET_XSAVE, KVM_SET_IRQCHIP...): a blob of another size, such as a
 * truncated or foreign snapshot, throws EKVMSTATE before KVM sees it.
 */
export function kvmSetIoctl(fd: number, request: number, state: Uint8Array, size: number, what: string): void {
  if (state.byteLength !== size) {
    throw new KvmError("EKVMSTATE", `Cannot ${what}: the state is ${state.byteLength} bytes, KVM takes ${size}`);
  }
  kvmIoctl(fd, request, state, what);
}

/** An open /dev/kvm. */
export class Kvm {
  readonly fd: number;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** Opens /dev/kvm and checks the API version; errors say what the user can do. */
  static open(path = KVM_DEVICE_PATH): Kvm {
    let fd: number;
    try {
      fd = openSync(path, "r+");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT") {
        throw new KvmError("ENOKVM", `Cannot use KVM: ${path} does not exist (load the kvm module, or enable hardware virtualization)`);
      }
      if (code === "EACCES" || code === "EPERM") {
        throw new KvmError("EKVMACCESS", `Cannot use KVM: no permission to open ${path} (add your user to the 'kvm' group or run as root)`);
      }
      throw new KvmError("ENOKVM", `Cannot use KVM: cannot open ${path}: ${code ?? (e as Error).message}`);
    }
    const kvm = new Kvm(fd);
    const version = kvm.getApiVersion();
    if (version !== KVM_API_VERSION) {
      kvm.close();
      throw new KvmError("EKVMVERSION", `Cannot use KVM: API version ${version}, flint needs ${KVM_API_VERSION}`);
    }
    return kvm;
  }

  /** KVM_GET_API_VERSION. */
  getApiVersion(): number {
    return kvmIoctl(this.fd, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION");
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, a positive value (often a count) when present. */
  checkExtension(cap: number): number {
    const r = sys.ioctl(this.fd, KVM_CHECK_EXTENSION, cap);
    return r < 0 ? 0 : r;
  }

  /** Throws EKVMCAP naming the capability when it is absent. */
  requireExtension(cap: number, name: string): number {
    const r = this.checkExtension(cap);
    if (r <= 0) throw new KvmError("EKVMCAP", `Cannot use KVM: this host's KVM lacks ${name}`);
    return r;
  }

  /** KVM_GET_VCPU_MMAP_SIZE: bytes to map for each vCPU's struct kvm_run. */
  getVcpuMmapSize(): number {
    return kvmIoctl(this.fd, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
  }

  /** KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can expose to a guest. */
  getSupportedCpuid(): KvmCpuidEntry[] {
    for (let capacity = 128; capacity <= 4096; capacity *= 2) {
      const buf = encodeCpuid([], capacity);
      const r = sys.ioctl(this.fd, KVM_GET_SUPPORTED_CPUID, buf);
      if (r === 0) return decodeCpuid(buf);
      if (errnoName(-r) !== "E2BIG") throw new KvmError("EKVMIOCTL", `KVM_GET_SUPPORTED_CPUID failed: ${errnoName(-r)}`, errnoName(-r));
    }
    throw new KvmError("EKVMIOCTL", "KVM_GET_SUPPORTED_CPUID failed: too many entries");
  }

  /**
   * KVM_GET_MSR_INDEX_LIST (api.rst 4.3): the MSRs KVM supports for guests,
   * in KVM's order. Two calls: KVM answers a list with too little room with
   * E2BIG and the count it needs.
   */
  getMsrIndexList(): number[] {
    let capacity = 0;
    for (let attempt = 0; attempt < MSR_LIST_ATTEMPTS; attempt++) {
      const buf = new Uint8Array(kvm_msr_list.SIZE + capacity * 4);
      const v = dataView(buf);
      v.setUint32(kvm_msr_list.nmsrs, capacity, true);
      const r = sys.ioctl(this.fd, KVM_GET_MSR_INDEX_LIST, buf);
      const n = v.getUint32(kvm_msr_list.nmsrs, true);
      if (r >= 0) return Array.from({ length: n }, (_, i) => v.getUint32(kvm_msr_list.indices + 4 * i, true));
      if (-r !== E2BIG) throw new KvmError("EKVMIOCTL", `KVM_GET_MSR_INDEX_LIST failed: ${errnoName(-r)}`, errnoName(-r));
      capacity = n;
    }
    throw new KvmError("EKVMIOCTL", "KVM_GET_MSR_INDEX_LIST failed: the list kept growing");
  }

  /** KVM_CREATE_VM. */
  createVm(): VmFd {
    const fd = kvmIoctl(this.fd, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
    return new VmFd(fd, this);
  }

  close(): void {
    closeSync(this.fd);
  }
}
