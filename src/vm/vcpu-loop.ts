/**
 * The vCPU run loop: KVM_RUN, then one switch over the exit reason
 * (api.rst §5 "The kvm_run structure"). Port I/O and MMIO go to the buses on
 * this thread; anything that ends the VM is returned as a VmExitReason.
 */
import {
  KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR, KVM_EXIT_IO, KVM_EXIT_IO_OUT,
  KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN, KVM_EXIT_SYSTEM_EVENT, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
  KVM_SYSTEM_EVENT_SHUTDOWN, EAGAIN, EINTR, kvm_run,
} from "../linux/abi.generated.js";
import type { Bus, VmExitReason } from "../devices/bus.js";
import { errnoName } from "../sys/native.js";
import type { VcpuFd } from "../kvm/vcpu.js";
import { parkWhilePaused, pauseRequested, stopRequested } from "./control.js";

/** Exit counters of one vCPU (metrics). */
export interface VcpuStats {
  exits: number;
  ioExits: number;
  mmioExits: number;
  unhandledIo: number;
  unhandledMmio: number;
  interrupted: number;
  /** Times this vCPU parked for a pause. */
  parks: number;
  /** KVM_KVMCLOCK_CTRL calls that failed (EINVAL: the guest has no kvm-clock; Firecracker counts these too). */
  kvmclockCtrlFails: number;
}

/** The counters' order in a vCPU's shared counter block. */
const VCPU_STAT_KEYS = ["exits", "ioExits", "mmioExits", "unhandledIo", "unhandledMmio", "interrupted", "parks", "kvmclockCtrlFails"] as const;
const slot = (k: (typeof VCPU_STAT_KEYS)[number]) => VCPU_STAT_KEYS.indexOf(k);
const EXITS = slot("exits"), IO_EXITS = slot("ioExits"), MMIO_EXITS = slot("mmioExits"), UNHANDLED_IO = slot("unhandledIo");
const UNHANDLED_MMIO = slot("unhandledMmio"), INTERRUPTED = slot("interrupted"), PARKS = slot("parks"), KVMCLOCK_CTRL_FAILS = slot("kvmclockCtrlFails");

/**
 * A vCPU's counters: one Float64Array over a SharedArrayBuffer (exact up to
 * 2^53), written by its thread alone and read by the main thread at any time
 * (metrics lines while the VM runs).
 */
export function newStatsBlock(): Float64Array {
  return new Float64Array(new SharedArrayBuffer(VCPU_STAT_KEYS.length * 8));
}

/** The counters of a block as named figures. */
export function readStats(block: Float64Array): VcpuStats {
  const out = {} as VcpuStats;
  VCPU_STAT_KEYS.forEach((k, i) => (out[k] = block[i]!));
  return out;
}

/** Runs until the VM stops (undefined) or this vCPU finds a reason to end it; counts in `stats` (newStatsBlock). */
export function runVcpu(vcpu: VcpuFd, pio: Bus, mmio: Bus, control: Int32Array, stats: Float64Array): VmExitReason | undefined {
  const run = vcpu.run;
  const v = vcpu.runView;
  const runSize = vcpu.runSize;
  for (;;) {
    if (stopRequested(control)) return undefined;
    if (pauseRequested(control)) {
      park(vcpu, control, stats);
      continue; // resumed, or stopped while parked
    }
    const r = vcpu.runOnce();
    stats[EXITS]++;
    switch (r) {
      case KVM_EXIT_IO: {
        stats[IO_EXITS]++;
        const out = run[kvm_run.io_direction] === KVM_EXIT_IO_OUT;
        const size = run[kvm_run.io_size]!;
        const port = v.getUint16(kvm_run.io_port, true);
        const count = v.getUint32(kvm_run.io_count, true);
        const off = Number(v.getBigUint64(kvm_run.io_data_offset, true));
        if (off + size * count > runSize) return { kind: "error", message: `KVM reported I/O data outside kvm_run (port 0x${port.toString(16)})` };
        for (let i = 0; i < count; i++) {
          const data = run.subarray(off + i * size, off + (i + 1) * size);
          const handled = out ? pio.write(port, data) : pio.read(port, data);
          if (!handled) {
            stats[UNHANDLED_IO]++;
            if (!out) data.fill(0xff); // an unclaimed ISA port reads as all ones
          }
        }
        break;
      }
      case KVM_EXIT_MMIO: {
        stats[MMIO_EXITS]++;
        const address = Number(v.getBigUint64(kvm_run.mmio_phys_addr, true));
        const len = v.getUint32(kvm_run.mmio_len, true);
        if (len > 8) return { kind: "error", message: `KVM reported an MMIO access of ${len} bytes` };
        const data = run.subarray(kvm_run.mmio_data, kvm_run.mmio_data + len);
        const handled = run[kvm_run.mmio_is_write] ? mmio.write(address, data) : mmio.read(address, data);
        if (!handled) {
          stats[UNHANDLED_MMIO]++;
          if (!run[kvm_run.mmio_is_write]) data.fill(0);
        }
        break;
      }
      case KVM_EXIT_HLT:
        // Only reachable without an in-kernel irqchip: nothing can wake the vCPU.
        return { kind: "error", message: `vCPU ${vcpu.id} halted with interrupts unavailable` };
      case KVM_EXIT_SHUTDOWN:
        // A triple fault: a PC resets. Linux uses this for reboot=t; anything else
        // is a guest crash, so say where it happened.
        return { kind: "reset", source: "triple-fault", detail: describeCpu(vcpu) };
      case KVM_EXIT_SYSTEM_EVENT: {
        const type = v.getUint32(kvm_run.system_event_type, true);
        if (type === KVM_SYSTEM_EVENT_SHUTDOWN) return { kind: "poweroff" };
        if (type === KVM_SYSTEM_EVENT_RESET) return { kind: "reset", source: "kvm" };
        if (type === KVM_SYSTEM_EVENT_CRASH) return { kind: "error", message: `guest crashed (vCPU ${vcpu.id})` };
        return { kind: "error", message: `unhandled KVM system event ${type}` };
      }
      case KVM_EXIT_INTERNAL_ERROR: {
        const sub = v.getUint32(kvm_run.internal_suberror, true);
        return { kind: "error", message: `KVM internal error on vCPU ${vcpu.id} (suberror ${sub}${describeRip(vcpu)})` };
      }
      case KVM_EXIT_FAIL_ENTRY: {
        const reason = v.getBigUint64(kvm_run.fail_entry_hardware_entry_failure_reason, true);
        return { kind: "error", message: `KVM could not enter vCPU ${vcpu.id} (hardware reason 0x${reason.toString(16)})` };
      }
      case KVM_EXIT_INTR:
      case -EINTR:
      case -EAGAIN:
        stats[INTERRUPTED]++;
        vcpu.setImmediateExit(false);
        break;
      default:
        if (r < 0) return { kind: "error", message: `KVM_RUN failed on vCPU ${vcpu.id}: ${errnoName(-r)}` };
        return { kind: "error", message: `unhandled KVM exit ${r} on vCPU ${vcpu.id}${describeRip(vcpu)}` };
    }
  }
}

/**
 * Parks this vCPU out of KVM_RUN until the VM is resumed or stopped. The
 * exit that brought it here is complete (its I/O was handled), so the vCPU's
 * state is consistent while parked.
 *
 * kvm-clock, as Firecracker does it (src/vmm/src/vstate/vcpu.rs, the Pause
 * event of the running state; arch/x86_64/vcpu.rs kvmclock_ctrl): on each
 * pause from the running state every vCPU, out of KVM_RUN, calls
 * KVM_KVMCLOCK_CTRL (api.rst §4.70: callable "any time after pausing the
 * vcpu, but before it is resumed"), best effort: a failure (EINVAL when the
 * guest never enabled kvm-clock) is counted, never fatal. Nothing else
 * touches the clock on pause or resume: no KVM_GET_CLOCK/KVM_SET_CLOCK, so
 * kvm-clock (and with it the guest's monotonic and wall time) keeps counting
 * host time while the VM is paused, and after resume the guest sees the
 * pause as time that passed; PVCLOCK_GUEST_STOPPED tells its soft-lockup
 * watchdog that the gap was the host's doing. Saving and restoring the clock
 * is a snapshot matter: Firecracker reads it with KVM_GET_CLOCK (api.rst
 * §4.29) when it saves the VM; on load it writes it back with KVM_SET_CLOCK
 * (§4.30), flags 0 (the clock goes on from the snapshot's value) unless
 * asked for KVM_CLOCK_REALTIME (advanced by the wall time since the
 * snapshot), and calls KVM_KVMCLOCK_CTRL on every restored vCPU.
 */
function park(vcpu: VcpuFd, control: Int32Array, stats: Float64Array): void {
  stats[PARKS]++;
  if (vcpu.kvmclockCtrl() < 0) stats[KVMCLOCK_CTRL_FAILS]++;
  parkWhilePaused(control);
}

/** "vCPU n: rip … rsp … cr0 … cr2 … cr3 … cr4 … efer …", or just the vCPU when the registers cannot be read. */
export function describeCpu(vcpu: VcpuFd): string {
  const hex = (x: bigint | number): string => `0x${x.toString(16)}`;
  try {
    const r = vcpu.getRegs(), s = vcpu.getSregs();
    return `vCPU ${vcpu.id}: rip ${hex(r.rip)} rsp ${hex(r.rsp)} rflags ${hex(r.rflags)} cs ${hex(s.cs.selector)} ` +
      `cr0 ${hex(s.cr0)} cr2 ${hex(s.cr2)} cr3 ${hex(s.cr3)} cr4 ${hex(s.cr4)} efer ${hex(s.efer)}`;
  } catch {
    return `vCPU ${vcpu.id}`;
  }
}

function describeRip(vcpu: VcpuFd): string {
  try {
    return `, rip 0x${vcpu.getRegs().rip.toString(16)}`;
  } catch {
    return "";
  }
}
