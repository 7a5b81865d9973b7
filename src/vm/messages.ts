/** Messages between the main thread and vCPU worker threads. */
import type { DefaultAction } from "../seccomp/index.js";
import type { VmExitReason } from "../devices/bus.js";
import type { VcpuDescriptor } from "../kvm/vcpu.js";
import type { DeviceSetDescriptor } from "./device-set.js";
import type { VcpuStats } from "./vcpu-loop.js";

/** workerData of a vCPU thread. */
export interface VcpuThreadInit {
  vcpu: VcpuDescriptor;
  vmFd: number;
  devices: DeviceSetDescriptor;
  control: Int32Array;
  /** This vCPU's counters (vcpu-loop.ts newStatsBlock), shared with the main thread. */
  stats: Float64Array;
  kickSignal: number;
  /** The thread's own seccomp filter to stack before it runs the guest (when the process has one). */
  seccomp?: DefaultAction;
}

/** vCPU thread -> main thread. */
export type VcpuThreadMessage =
  | { type: "ready"; thread: bigint }
  | { type: "exit"; reason: VmExitReason }
  /** A guest fault, or with `count` > 1 a summary of that many (fault-log.ts). */
  | { type: "fault"; device: string; message: string; count: number }
  | { type: "done"; stats: VcpuStats };
