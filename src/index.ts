/**
 * flint as a library: build a microVM, run it, steer it while it runs.
 *
 *   import { Machine } from "flint";
 *   const vm = Machine.create({
 *     cpus: 2, memoryMib: 256,
 *     boot: { kind: "linux", kernelPath: "vmlinux", cmdline: "console=ttyS0 reboot=k panic=-1" },
 *     consoleOutput: process.stdout,
 *     virtioDevices: [{ kind: "block", options: { path: "rootfs.ext4" } }, { kind: "balloon", options: { targetMib: 0 } }],
 *   });
 *   const done = vm.run();
 *   await vm.balloon?.setTarget(64);   // at run time
 *   const result = await done;         // { reason: { kind: "poweroff" }, ... }
 *
 * Every error flint throws for bad input has a stable `code` and a one-line message.
 */
export { Machine, MachineError, maxVcpus, END_TIMEOUT_MS, SLOW_END_REPORT_MS, PAUSE_TIMEOUT_MS } from "./vm/machine.js";
export type { BootConfig, MachineConfig, MachineResult, MachineState, WarmThreads, RestoreOptions, SnapshotPaths, SnapshotWritten } from "./vm/machine.js";
export { SnapshotError, SNAPSHOT_FORMAT_VERSION } from "./snapshot/state-file.js";
export { runUffdHandler, type UffdHandlerOptions, type UffdHandlerStats } from "./snapshot/uffd-handler.js";
export { parseUffdMappings, type UffdRegionMapping } from "./snapshot/uffd.js";
export type { VmExitReason } from "./devices/bus.js";
export type { VirtioDeviceConfig, VirtioDeviceKind, VirtioAnnouncement, VirtioDeviceStats, DeviceThreadPlacement } from "./devices/virtio/virtio-set.js";
export type { BlockOptions } from "./devices/virtio/block.js";
export type { NetOptions } from "./devices/virtio/net.js";
export type { RngOptions } from "./devices/virtio/rng.js";
export { RateLimiterError, type RateLimiterConfig, type RateLimiterName, type TokenBucketConfig } from "./devices/virtio/rate-limiter.js";
export type { VsockOptions } from "./devices/virtio/vsock/index.js";
export type { BalloonOptions, BalloonStats, BalloonMetrics } from "./devices/virtio/balloon.js";
export { BalloonControl, type BalloonInfo, type BalloonWaitOptions } from "./devices/virtio/balloon-control.js";
export { BalloonError } from "./devices/virtio/balloon.js";
export { BlockError } from "./devices/virtio/block.js";
export { NetError } from "./devices/virtio/net.js";
export { VsockError } from "./devices/virtio/vsock/index.js";
export { VirtioDeviceError } from "./devices/virtio/device-thread.js";
export { KvmError } from "./kvm/errors.js";
export { BootError } from "./boot/errors.js";
export { runDoctor, type DoctorReport, type DoctorCheck } from "./doctor/doctor.js";
export { buildKernel, type KernelArtifacts, type BuildKernelOptions } from "./guest/kernel-build.js";
export { buildInitramfs, defaultInit, parseGuestReport, type InitramfsOptions, type InitramfsFile, type GuestReport } from "./guest/initramfs.js";
export {
  Vm, VmError, VM_DEFAULT_CMDLINE, type VmCreateOptions, type VmOptions, type VmState, type InstanceInfo, type BalloonStatistics,
  type VmSnapshot, type VmRestoreOptions,
} from "./vmm/vm.js";
export { VmResources, type MachineConfigUpdate } from "./vmm/resources.js";
export { ApiServer, HTTP_MAX_PAYLOAD_SIZE, type ApiServerOptions } from "./vmm/api-server.js";
export { MmdsStore, MmdsError } from "./vmm/mmds-store.js";
export { LoggerError } from "./vmm/logger.js";
export { MetricsError, METRICS_INTERVAL_MS } from "./vmm/metrics.js";
export { ConfigError, parseVmConfig, type VmConfig } from "./config/schema.js";
