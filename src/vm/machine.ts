/**
 * A flint microVM: KVM VM, guest memory, vCPU threads, devices and boot
 * state, assembled in the order KVM requires (api.rst: irqchip before
 * vCPUs; CPUID before the first KVM_RUN). `run()` starts every vCPU thread
 * and resolves with the reason the VM ended; while it runs, `pause()` and
 * `resume()` park and release every vCPU and quiesce the devices, and
 * `stop()` ends the VM from any state.
 */
import { closeSync, readFileSync, statSync } from "node:fs";
import { totalmem } from "node:os";
import { Worker } from "node:worker_threads";
import {
  KVM_CAP_EXT_CPUID, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_IOEVENTFD, KVM_CAP_IRQCHIP, KVM_CAP_IRQFD, KVM_CAP_MAX_VCPUS,
  KVM_CAP_MP_STATE, KVM_CAP_NR_VCPUS, KVM_CAP_PIT2, KVM_CAP_SET_TSS_ADDR, KVM_CAP_TSC_DEADLINE_TIMER, KVM_CAP_USER_MEMORY,
  KVM_MEM_LOG_DIRTY_PAGES, KVM_MP_STATE_RUNNABLE, KVM_PIT_SPEAKER_DUMMY,
} from "../linux/abi.generated.js";
import {
  KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, MAX_MEMORY_MIB, MIN_MEMORY_MIB, MiB, ramRegions,
} from "../arch/x86_64/layout.js";
import { vcpuCpuid } from "../arch/x86_64/cpuid.js";
import { configureLints } from "../arch/x86_64/lapic.js";
import { bootMsrs } from "../arch/x86_64/msr.js";
import { setupBoot, type BootMode } from "../boot/index.js";
import type { DeviceContext, VmExitReason } from "../devices/bus.js";
import type { DebugExitReading } from "../devices/legacy/debug-exit.js";
import { GuestFaultLog } from "../devices/fault-log.js";
import { VmGenId } from "../devices/acpi/vmgenid.js";
import { I8042, I8042Error } from "../devices/legacy/i8042.js";
import { BalloonControl } from "../devices/virtio/balloon-control.js";
import { RateLimiterControl, type RateLimiterConfig, type RateLimiterName } from "../devices/virtio/rate-limiter-control.js";
import { setMmdsData } from "../devices/virtio/mmds/control.js";
import type { NetOptions } from "../devices/virtio/net.js";
import {
  VirtioSet, virtioAnnouncement, virtioDsdtDevices, type VirtioAnnouncement, type VirtioDeviceConfig, type VirtioDeviceStats,
} from "../devices/virtio/virtio-set.js";
import { KvmError } from "../kvm/errors.js";
import { Kvm } from "../kvm/kvm.js";
import { RING3_LAYOUT, startInRing3 } from "../arch/x86_64/ring3.js";
import type { KvmRegs, KvmSregs } from "../kvm/types.js";
import type { VcpuFd } from "../kvm/vcpu.js";
import type { VmFd } from "../kvm/vm.js";
import { DIRTY_PAGE_SIZE, GuestMemory } from "../memory/guest-memory.js";
import { FLINT_VERSION } from "../sys/version.js";
import { sys } from "../sys/native.js";
import { WorkerPool } from "../sys/worker-pool.js";
import { WarmVms, type WarmVm, type WarmVmShape } from "./warm-vms.js";
import { installProcessSeccomp, processSeccompAction, seccompDefaultFromEnv } from "../seccomp/index.js";
import { BLOCK_REQUEST_UPDATE_BACKING, type BlockOptions } from "../devices/virtio/block.js";
import { DEVICE_THREAD_POOL } from "../devices/virtio/device-thread.js";
import { waitForChange } from "../devices/shared-lock.js";
import { CONTROL_PARKED, claimExit, createControl, parkedCount, requestPause } from "./control.js";
import { createDeviceSet, type HostDevices } from "./device-set.js";
import { irqLineContext } from "./irq.js";
import type { VcpuThreadInit, VcpuThreadMessage } from "./messages.js";
import { newStatsBlock, readStats, type VcpuStats } from "./vcpu-loop.js";
import { msrsToSave, restoreVcpuState, saveVcpuState } from "../arch/x86_64/vcpu-state.js";
import { restoreVmState, saveVmState } from "../arch/x86_64/vm-state.js";
import { UffdBackend } from "../snapshot/uffd.js";
import { openMemoryFile, writeDiffMemoryFile, writeMemoryFile, type MemoryFileWritten } from "../snapshot/memory-file.js";
import { SnapshotError } from "../snapshot/state-file.js";
import { readMachineSnapshot, writeMachineSnapshot, type MachineSnapshot, type SavedBoot } from "./machine-snapshot.js";

/** How the guest starts. */
export type BootConfig =
  | {
      kind: "linux";
      kernelPath: string;
      initrdPath?: string;
      cmdline: string;
      /** Build ACPI tables (default true). */
      acpi?: boolean;
      /** Kernel entry: 64-bit boot protocol or PVH (default: 64-bit for ELF and bzImage; see BootMode). */
      mode?: BootMode;
    }
  | {
      /** Direct-KVM test guests: every vCPU starts in 64-bit ring 3 at `entry` with RDI = its id. */
      kind: "ring3";
      program: Uint8Array;
      entry?: number;
    };

/** Everything needed to build a VM. */
export interface MachineConfig {
  cpus: number;
  memoryMib: number;
  boot: BootConfig;
  /** Where guest serial output goes (default: discarded). */
  consoleOutput?: NodeJS.WritableStream;
  /** Transparent huge pages for guest memory. */
  hugePages?: boolean;
  /** KSM merging of guest memory. */
  mergeable?: boolean;
  /**
   * Track which pages of guest memory are written (Firecracker's
   * track_dirty_pages), so that snapshot() can write a Diff: KVM's dirty log
   * on every memory slot (KVM_MEM_LOG_DIRTY_PAGES) for the guest's writes,
   * and a shared map of flint's own (MemoryRegion.dirty). Costs KVM work on
   * guest writes; off by default.
   */
  trackDirtyPages?: boolean;
  /** Add the debug-exit device (ports 0xf0 mark, 0xf4 exit with status), for benchmarks and tests. */
  debugExit?: boolean;
  /**
   * The VMGenID device (devices/acpi/vmgenid.ts): a random generation id
   * the guest reads, renewed on every restore with a notification, so a
   * restored or cloned Linux reseeds its RNG. Default: on for a Linux guest
   * with ACPI tables (it is announced in the DSDT; a kernel without ACPI
   * cannot find it), off otherwise; a ring-3 test guest may turn it on.
   */
  vmGenId?: boolean;
  /** When the guest ends the VM, how long run() waits for device threads and the console's last output (default END_TIMEOUT_MS). */
  endTimeoutMs?: number;
  /**
   * Called for guest-caused faults (counted and logged, never fatal): the first
   * GUEST_FAULT_LOG_FIRST of each device one by one, then a summary line
   * ("N more guest faults in <device>, last: ...") at most every second and at
   * the end of the run, so a guest cannot flood the log (fault-log.ts).
   */
  onGuestFault?: (device: string, message: string) => void;
  /**
   * Called for the first few host-side failures of each device that the guest
   * was told about as device errors (a disk image's EIO or ENOSPC); all are
   * counted in MachineResult.virtio[i].hostErrors.
   */
  onHostError?: (device: string, message: string) => void;
  /**
   * Called when the VM ended (by the guest or stop()) SLOW_END_REPORT_MS ago and
   * run() is still waiting, with what it waits for (vCPU threads that have not
   * left the guest, devices that have not stopped, console output not taken):
   * a diagnosis for a VM that does not finish ending.
   */
  onSlowEnd?: (message: string) => void;
  /** How long after the VM ended onSlowEnd waits before it reports (default SLOW_END_REPORT_MS). */
  slowEndReportMs?: number;
  /**
   * virtio-mmio devices, in order: device i gets the window VIRTIO_MMIO_BASE +
   * i * VIRTIO_MMIO_SIZE and GSI FIRST_DEVICE_IRQ + i. With ACPI tables each
   * is announced twice, so kernels with and without ACPI find it: in the DSDT,
   * and on the kernel command line at a second window a kernel with ACPI skips;
   * without ACPI tables, on the command line only (see
   * src/devices/virtio/virtio-set.ts for what Linux does with each).
   */
  virtioDevices?: VirtioDeviceConfig[];
  /** Override how virtio devices are announced (tests and experiments; default "auto"). */
  virtioAnnounce?: VirtioAnnouncement;
  /**
   * Where the virtio devices placed "shared" (the default placement) run:
   * "vm" (the default), a device thread of this VM's own, a V8 isolate that
   * starts with the VM and ends with it; "process", the process's shared
   * device thread, which every VM created or restored with "process" uses
   * (for a library running many VMs: one isolate for all of them, already
   * running when a VM starts). Devices stay independent on it (each fails,
   * resets and stops alone; budgets keep one VM's devices from starving
   * another's), but a device handler blocked in a host syscall (a disk that
   * does not answer) holds up every VM's devices on it, and it runs without
   * a per-thread seccomp filter. A device placed "own" gets its own thread
   * either way.
   */
  deviceThread?: "vm" | "process";
  /** How long pause() and resume() wait for vCPUs and devices before they give up (default PAUSE_TIMEOUT_MS). */
  pauseTimeoutMs?: number;
  /** Called once run() has let every vCPU into the guest (the state is then "running"). */
  onStarted?: () => void;
  /**
   * seccomp-BPF filters (src/seccomp): run() installs the process-wide one on
   * every thread of the process (once per process, and for good: it also
   * limits what the rest of the program may do, e.g. no child processes),
   * then each vCPU and device thread adds its own. Off by default in the
   * library (FLINT_SECCOMP=1 in the environment makes unset mean on, to run
   * a program's tests under the filters); the CLI's monitor modes turn it
   * on. A call outside the lists kills the process (FLINT_SECCOMP_AUDIT=1:
   * logged instead).
   */
  seccomp?: boolean;
}

/**
 * Where a Machine is in its life (Firecracker's instance states are "Not
 * started", "Running" and "Paused"; its process ends with the VM, flint's
 * Machine object outlives it as "ended").
 */
export type MachineState = "not-started" | "running" | "paused" | "ended";

/** How a VM run ended. */
export interface MachineResult {
  reason: VmExitReason;
  /** Milliseconds from run() to the guest's first boot-timer write, if any. */
  bootTimeMs?: number;
  stats: VcpuStats[];
  /** Guest-caused faults, all devices (the sum of guestFaultsByDevice). */
  guestFaults: number;
  /** Guest-caused faults by device name (legacy devices, "irqchip", and each virtio device by its name). */
  guestFaultsByDevice: Record<string, number>;
  /** What the guest wrote to the debug-exit device (when configured). */
  debugExit?: DebugExitReading;
  /** Counters of each virtio device, in configuration order. */
  virtio: VirtioDeviceStats[];
  /**
   * Devices that had not stopped DEVICE_STOP_TIMEOUT_MS after stop() (or
   * END_TIMEOUT_MS after the guest ended the VM), by name: every device of a device thread blocked in a host syscall (e.g. a
   * disk that does not answer). run() resolved without them; each ends once its syscall returns
   * (backend shut down as usual), and its eventfds and the guest memory
   * mapping are released then (see deviceThreadsExited).
   */
  unstoppedDevices: string[];
  /**
   * Guest console bytes that were not delivered: written to a full ring after
   * the VM ended (stop() or the guest), or left when an output that stopped
   * taking bytes was given up.
   */
  consoleDroppedBytes: number;
}

/**
 * How to restore a snapshot (Machine.restore): its two files, and the host
 * side of the new VM (console, callbacks, timeouts as in MachineConfig).
 * What the guest was (vCPUs, memory size, devices) comes from the snapshot.
 */
export interface RestoreOptions extends Omit<MachineConfig, "cpus" | "memoryMib" | "boot" | "debugExit" | "virtioDevices" | "hugePages"> {
  /** The state file snapshot() wrote. */
  statePath: string;
  /**
   * The memory file snapshot() wrote (mapped copy-on-write, never written).
   * Give this or `uffdSocketPath`.
   */
  memoryPath?: string;
  /**
   * The Uffd memory backend instead of `memoryPath`: the Unix socket of a
   * page-fault handler (`flint uffd-handler`, or any of Firecracker's) that
   * serves the memory file; flint hands it the userfaultfd of fresh
   * anonymous guest memory (src/snapshot/uffd.ts) and never opens the file.
   * The handler must be another process (flint's own threads wait for it
   * when they touch guest memory) and keep the connection open while the VM
   * lives: once it closes it, the VM ends with one line.
   */
  uffdSocketPath?: string;
  /**
   * The snapshot's virtio devices with this VM's host-side options (its own
   * TAP, vsock socket path or disk copy, so clones do not collide): the same
   * count and kinds, in the same order. Default: the snapshot's own.
   */
  virtioDevices?: VirtioDeviceConfig[];
  /** Start paused (run() then lets no vCPU into the guest until resume()); default false: running. */
  paused?: boolean;
  /**
   * The state file's content as readMachineSnapshot(statePath) returned it,
   * for a caller that read it already (the API reads its own part first):
   * the file is then not read and checked a second time.
   */
  snapshot?: MachineSnapshot;
}

/** Where Machine.snapshot() writes, and what it saves beside the VM. */
export interface SnapshotPaths {
  /**
   * "full" (the default): all of guest memory. "diff": only the pages
   * written since the previous snapshot (or since tracking started), the
   * rest holes, for rebaseMemoryFile to merge onto the previous memory file;
   * needs MachineConfig.trackDirtyPages.
   */
  type?: "full" | "diff";
  /** The state file (written to a temporary name, then renamed over this one). */
  statePath: string;
  /** The memory file (created or truncated). */
  memoryPath: string;
  /** JSON-able data of the caller's, saved with the VM and given back by restore() (Machine.restoredVmm). */
  vmm?: unknown;
}

/** What Machine.snapshot() wrote. */
export interface SnapshotWritten {
  /** Size of the state file. */
  stateBytes: number;
  /** Size of the memory file (guest RAM). */
  memoryBytes: number;
  /** Bytes of it that hold data: the rest are holes (all-zero pages in a Full, unchanged pages in a Diff). */
  memoryDataBytes: number;
  /** What was written. */
  type: "full" | "diff";
}

/** A BootConfig that says how a snapshot's guest was started (a restored VM boots nothing). */
function bootOf(saved: SavedBoot): BootConfig {
  return saved.kind === "linux"
    ? { kind: "linux", kernelPath: saved.kernelPath, ...(saved.initrdPath ? { initrdPath: saved.initrdPath } : {}), cmdline: saved.cmdline, acpi: saved.acpi }
    : { kind: "ring3", program: new Uint8Array(0) };
}

/** Bad configuration or host limits; `code` is stable, the message is one line. */
export class MachineError extends Error {
  /**
   * ECPUS, EMEMORY, EKERNEL, EINITRD: bad configuration. ENOTSTARTED,
   * EENDED: a run-time operation (pause, resume) in a state that does not
   * allow it. ETIMEOUT: pause() or resume() gave up on a vCPU or device that
   * did not answer within the pause timeout (the VM was left running).
   * EBUFFERFULL, EKBDDISABLED: sendCtrlAltDel() typed nothing (see I8042Error).
   * ENODEVICE: a device operation named a device the VM does not have.
   * ENOTPAUSED: snapshot() of a VM that is not paused. ENOTTRACKED: a Diff
   * snapshot of a VM without dirty page tracking. EDEVICETHREAD: a
   * deviceThread that is neither "vm" nor "process".
   */
  readonly code:
    | "ECPUS" | "EMEMORY" | "EKERNEL" | "EINITRD" | "ENOTSTARTED" | "EENDED" | "ETIMEOUT" | "EBUFFERFULL" | "EKBDDISABLED" | "ENODEVICE"
    | "ENOTPAUSED" | "ENOTTRACKED" | "EDEVICETHREAD";
  constructor(code: MachineError["code"], message: string) {
    super(message);
    this.name = "MachineError";
    this.code = code;
  }
}

/**
 * How long after stop() run() still waits for device threads to stop. A
 * thread blocked in a host syscall (a disk that does not answer) cannot be
 * interrupted from JavaScript; run() then gives up on it and reports it in
 * MachineResult.unstoppedDevices. A VM that ends by itself gives its devices
 * END_TIMEOUT_MS instead (a slow final flush is not cut short).
 */
export const DEVICE_STOP_TIMEOUT_MS = 1000;

/**
 * How long after the guest ended the VM (poweroff, reset, failure) run() waits
 * for device threads and for the console output stream to take the guest's
 * last bytes: long enough for any final flush a working disk needs and for a
 * slow terminal to take a full ring, but bounded, so that a device thread
 * stuck in a host syscall or a console reader that stopped reading cannot keep
 * run() (and the CLI) from ever returning. A device given up on is reported
 * like one stop() gave up on, console bytes left in consoleDroppedBytes.
 */
export const END_TIMEOUT_MS = 30_000;

/**
 * After stop(), how long run() still waits for console output the output
 * stream is slow to take. A VM that ends by itself waits up to END_TIMEOUT_MS
 * (a slow terminal loses nothing); stop() bounds the wait tighter, so that a
 * console reader that stopped reading cannot keep the VM from ending.
 */
export const STOP_FLUSH_TIMEOUT_MS = 50;

/**
 * How long pause() waits for every vCPU to park and every device to quiesce
 * (and resume() for them to run again) before it gives up, resumes what it
 * paused and rejects with ETIMEOUT. A vCPU leaves KVM_RUN within a kick, but
 * one blocked on a full console ring parks only once the console takes
 * output, and a device thread inside a host syscall answers only once the
 * syscall returns; neither may hold the caller forever. (Firecracker waits
 * up to 30 s for its vCPUs' answers.)
 */
export const PAUSE_TIMEOUT_MS = 10_000;

/** How long after the VM ended run() may still be waiting before onSlowEnd says for what. */
export const SLOW_END_REPORT_MS = 10_000;

/** vCPU threads: started from a booted spare when keepWarm asked for some (worker-pool.ts). */
const VCPU_THREAD_POOL = WorkerPool.for(new URL("./vcpu-thread.js", import.meta.url));

/** What Machine.keepWarm keeps booted, per process. */
export interface WarmThreads {
  /** vCPU threads kept waiting (a VM takes one per vCPU). */
  vcpuThreads: number;
  /** Device threads kept waiting (a VM takes one, plus one per device placed on its own thread). */
  deviceThreads: number;
  /**
   * KVM VMs kept made for new VMs (create) and restores of this shape
   * (warm-vms.ts: VM, irqchip, PIT, vCPUs and registered memory, everything
   * but the guest's contents); absent: none. A VM with dirty tracking or
   * huge pages, or of another shape, makes its own.
   */
  vms?: WarmVmShape & { count: number };
  /**
   * prestart only: also make one bare KVM VM (the VM with its irqchip, PIT
   * and TSS; no vCPUs, no memory, so of no shape) on the next turn of the
   * event loop, for the next create() or restore() that makes its VM itself.
   * For a process that waits for its VM's shape (Firecracker's API before
   * InstanceStart or PUT /snapshot/load): it takes KVM_CREATE_VM and
   * KVM_CREATE_PIT2 (7 ms of a 30 ms load on this project's machine) out of
   * the request. A failure here is left for that create() to report.
   */
  kvmVm?: boolean;
}

/** KVM VMs made ahead for creates and restores, when keepWarm asked for some. */
const WARM_VMS = new WarmVms(makeWarmVm);

/** A signal (a real-time one, no SA_RESTART) that kicks a vCPU thread out of KVM_RUN. */
const KICK_SIGNAL = sys.sigrtmin() + 2;
let kickInstalled = false;

function readInput(path: string, what: "kernel" | "initrd"): Buffer {
  const code = what === "kernel" ? "EKERNEL" : "EINITRD";
  try {
    if (!statSync(path).isFile()) throw new MachineError(code, `Cannot read ${what}: '${path}' is not a regular file`);
    return readFileSync(path);
  } catch (e) {
    if (e instanceof MachineError) throw e;
    const c = (e as NodeJS.ErrnoException).code;
    const why = c === "ENOENT" ? "no such file" : c === "EACCES" ? "permission denied" : (c ?? (e as Error).message);
    throw new MachineError(code, `Cannot read ${what}: '${path}': ${why}`);
  }
}

/** Largest vCPU count flint offers: KVM's limit, and 254 for xAPIC ids (255 = broadcast, one id for the IOAPIC). */
export function maxVcpus(kvm: Kvm): number {
  const max = kvm.checkExtension(KVM_CAP_MAX_VCPUS) || kvm.checkExtension(KVM_CAP_NR_VCPUS) || 4;
  return Math.min(max, 254);
}

/** The bare KVM VM prestart({ kvmVm: true }) made, until a VM takes it. */
let spareKvmVm: { kvm: Kvm; vm: VmFd } | undefined;
/** prestart asked for a bare VM and it is not made yet. */
let spareKvmVmPending = false;

/** Makes the bare VM prestart asked for, unless a VM took the request first. */
function makeSpareKvmVm(): void {
  if (!spareKvmVmPending) return;
  spareKvmVmPending = false;
  try {
    spareKvmVm = openBareKvmVm(Kvm.open());
  } catch {
    // No KVM or no capability: the VM's own create() says so, with its context.
  }
}

/**
 * Opens KVM and creates a VM with what every flint VM has before its memory
 * (api.rst: TSS and identity-map pages, then the in-kernel irqchip and PIT,
 * before any vCPU). Throws MachineError ECPUS for a vCPU count this host
 * cannot run, KvmError for a missing capability.
 * Takes the bare VM prestart made ahead when there is one.
 */
function openKvmVm(cpus: number): { kvm: Kvm; vm: VmFd } {
  spareKvmVmPending = false;
  const spare = spareKvmVm;
  spareKvmVm = undefined;
  const kvm = spare?.kvm ?? Kvm.open();
  const max = maxVcpus(kvm);
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > max) {
    spare?.vm.close();
    kvm.close();
    throw new MachineError("ECPUS", `Cannot create VM: --cpus ${cpus} is out of range (1 to ${max} on this host)`);
  }
  return spare ?? openBareKvmVm(kvm);
}

/** Checks `kvm` for what flint needs and makes a VM with its irqchip, PIT and TSS; closes `kvm` on failure. */
function openBareKvmVm(kvm: Kvm): { kvm: Kvm; vm: VmFd } {
  const caps: [number, string][] = [
    [KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"], [KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"],
    [KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"], [KVM_CAP_PIT2, "KVM_CAP_PIT2"],
    [KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"], [KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"],
    [KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE"], [KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"], [KVM_CAP_IRQFD, "KVM_CAP_IRQFD"],
  ];
  try {
    for (const [cap, name] of caps) kvm.requireExtension(cap, name);
  } catch (e) {
    kvm.close();
    throw e;
  }
  const vm = kvm.createVm();
  try {
    vm.setTssAddr(KVM_TSS_ADDRESS);
    vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDRESS);
    vm.createIrqchip();
    vm.createPit2(KVM_PIT_SPEAKER_DUMMY);
  } catch (e) {
    vm.close();
    kvm.close();
    throw e;
  }
  return { kvm, vm };
}

/**
 * Registers each region of `memory` with KVM, slot i for region i (the only
 * place guest memory is given to KVM), with KVM's dirty log when `trackDirty`.
 */
function registerMemory(vm: VmFd, memory: GuestMemory, trackDirty: boolean): void {
  const flags = trackDirty ? KVM_MEM_LOG_DIRTY_PAGES : 0;
  memory.regions.forEach((r, slot) =>
    vm.setUserMemoryRegion({ slot, flags, guestPhysAddr: r.guestBase, memorySize: r.size, userspaceAddr: r.hostAddress }));
}

/** A VM made ahead (warm-vms.ts): everything create and restore do before they give the guest its memory's contents and its vCPUs their state. */
function makeWarmVm(shape: WarmVmShape): WarmVm {
  const { cpus, memoryMib } = shape;
  checkMemorySize(memoryMib);
  const { kvm, vm } = openKvmVm(cpus);
  let memory: GuestMemory | undefined;
  const vcpus: VcpuFd[] = [];
  try {
    memory = GuestMemory.reserve(ramRegions(memoryMib * MiB));
    registerMemory(vm, memory, false);
    for (let id = 0; id < cpus; id++) vcpus.push(vm.createVcpu(id));
    return { shape: { cpus, memoryMib }, kvm, vm, vcpus, memory };
  } catch (e) {
    for (const v of vcpus) v.close();
    memory?.dispose();
    vm.close();
    kvm.close();
    throw e;
  }
}

/** Throws MachineError EDEVICETHREAD unless `where` is a MachineConfig.deviceThread value (or absent). */
function checkDeviceThread(where: unknown): void {
  if (where === undefined || where === "vm" || where === "process") return;
  throw new MachineError("EDEVICETHREAD", `Cannot create VM: deviceThread must be "vm" or "process", not ${JSON.stringify(where)}`);
}

/** Throws MachineError EMEMORY for a guest memory size flint cannot give. */
function checkMemorySize(memoryMib: number): void {
  if (!Number.isInteger(memoryMib) || memoryMib < MIN_MEMORY_MIB) {
    throw new MachineError("EMEMORY", `Cannot create VM: --memory ${memoryMib} MiB is too small (minimum ${MIN_MEMORY_MIB} MiB)`);
  }
  const hostMib = Math.floor(totalmem() / MiB);
  if (memoryMib > Math.min(MAX_MEMORY_MIB, hostMib)) {
    throw new MachineError("EMEMORY", `Cannot create VM: --memory ${memoryMib} MiB is more than this host's ${hostMib} MiB`);
  }
}

export class Machine {
  readonly config: MachineConfig;
  readonly kvm: Kvm;
  readonly vm: VmFd;
  readonly memory: GuestMemory;
  readonly vcpus: VcpuFd[];
  readonly summary: string;
  private readonly control = createControl();
  /** Each vCPU's counters, shared with its thread (filled in the constructor, one per vCPU). */
  private readonly vcpuStatBlocks: Float64Array[] = [];
  private readonly host: HostDevices;
  private readonly virtio: VirtioSet;
  /** pthread ids of the vCPU threads that are alive (cleared on each one's exit, so a stale id is never signalled). */
  private threads: (bigint | undefined)[] = [];
  private workers: Worker[] = [];
  private exitReason: VmExitReason | undefined;
  /** Counts guest faults per device and rate-limits what reaches config.onGuestFault. */
  private readonly faultLog = new GuestFaultLog((r) => this.config.onGuestFault?.(r.device, r.message));
  private faultTimer: NodeJS.Timeout | undefined;
  private ran = false;
  private disposed = false;
  /** stop() was called: console writers are released and the final flush is bounded. */
  private stopCalled = false;
  private giveUpFlush!: () => void;
  /** Settles STOP_FLUSH_TIMEOUT_MS after stop() (END_TIMEOUT_MS after the guest ended the VM): run() then abandons a console flush that has not finished. */
  private readonly flushGivenUp = new Promise<void>((resolve) => (this.giveUpFlush = resolve));
  private giveUpDevices!: () => void;
  /** Settles DEVICE_STOP_TIMEOUT_MS after stop() (END_TIMEOUT_MS after the guest ended the VM): run() then stops waiting for device threads. */
  private readonly devicesGivenUp = new Promise<void>((resolve) => (this.giveUpDevices = resolve));
  private stopTimers: NodeJS.Timeout[] = [];
  /** What run() is waiting for once the VM has ended, for onSlowEnd. */
  private readonly waitingVcpus = new Set<number>();
  private readonly waitingDevices = new Set<string>();
  private ending: "vcpus" | "devices" | "console" | "done" = "vcpus";
  /** The VMGenID device, when the VM has one (MachineConfig.vmGenId). */
  private vmGenId: VmGenId | undefined;
  /** The main thread's view of the i8042 (sendCtrlAltDel), from run() on. */
  private keyboard: I8042 | undefined;
  /** The vCPUs were started (run() posted "start"): the VM is past "not-started". */
  private started = false;
  /** Every vCPU parked and every device quiesced (pause() done, resume() not yet). */
  private paused = false;
  /** pause() and resume() run one at a time, in call order. */
  private lifecycle: Promise<unknown> = Promise.resolve();
  private markEnded!: () => void;
  /** Settles when the VM ends (by the guest, stop() or a failure). */
  private readonly endedSignal = new Promise<void>((resolve) => (this.markEnded = resolve));

  private constructor(
    config: MachineConfig, kvm: Kvm, vm: VmFd, memory: GuestMemory, vcpus: VcpuFd[], host: HostDevices, virtio: VirtioSet, summary: string,
  ) {
    this.config = config;
    this.kvm = kvm;
    this.vm = vm;
    this.memory = memory;
    this.vcpus = vcpus;
    for (let i = 0; i < vcpus.length; i++) this.vcpuStatBlocks.push(newStatsBlock());
    this.host = host;
    this.virtio = virtio;
    this.summary = summary;
  }

  /**
   * For a process that starts many VMs: keeps this many vCPU and device
   * threads booted ahead (each an idle V8 isolate of a few MiB), so that a
   * new VM's run() takes ready threads instead of waiting for isolates to
   * boot; each one taken is replaced in the background. 0 and 0 (the
   * default) keep none.
   */
  static keepWarm(threads: WarmThreads): void {
    VCPU_THREAD_POOL.keepSpares(threads.vcpuThreads);
    DEVICE_THREAD_POOL.keepSpares(threads.deviceThreads);
    const vms = threads.vms;
    WARM_VMS.keep(vms ? { cpus: vms.cpus, memoryMib: vms.memoryMib } : { cpus: 1, memoryMib: MIN_MEMORY_MIB }, vms?.count ?? 0);
  }

  /** KVM VMs made ahead (keepWarm's vms) and waiting. */
  static get warmVmCount(): number {
    return WARM_VMS.idleCount;
  }

  /**
   * For a process about to run one VM (the CLI): boots its vCPU and device
   * threads now, before create(), so that their isolates boot while the VM
   * is built. Taken by the next run(); not replaced (see keepWarm for that).
   */
  static prestart(threads: WarmThreads): void {
    VCPU_THREAD_POOL.prestart(threads.vcpuThreads);
    DEVICE_THREAD_POOL.prestart(threads.deviceThreads);
    if (threads.kvmVm && !spareKvmVm && !spareKvmVmPending) {
      spareKvmVmPending = true;
      setImmediate(makeSpareKvmVm);
    }
  }

  /** A bare KVM VM made ahead (prestart's kvmVm) is waiting. */
  static get spareKvmVm(): boolean {
    return spareKvmVm !== undefined;
  }

  /** Validates `config`, opens KVM and builds the VM; throws MachineError/KvmError/BootError on bad input. */
  static create(config: MachineConfig): Machine {
    const { cpus, memoryMib } = config;
    checkMemorySize(memoryMib);
    checkDeviceThread(config.deviceThread);
    // Read the guest's files before touching KVM, so bad paths fail first and fast.
    const kernel = config.boot.kind === "linux" ? readInput(config.boot.kernelPath, "kernel") : undefined;
    const initrd = config.boot.kind === "linux" && config.boot.initrdPath ? readInput(config.boot.initrdPath, "initrd") : undefined;

    const trackDirty = config.trackDirtyPages ?? false;
    const ram = ramRegions(memoryMib * MiB);
    // A VM made ahead (keepWarm's vms) when one fits: its memory is registered and its vCPUs made.
    const warm = trackDirty || config.hugePages ? undefined : WARM_VMS.take(cpus, ram);
    const { kvm, vm } = warm ?? openKvmVm(cpus);
    let memory: GuestMemory | undefined;
    let virtio: VirtioSet | undefined;
    const vcpus: VcpuFd[] = warm ? [...warm.vcpus] : [];
    try {
      if (warm) {
        memory = GuestMemory.createOver(warm.memory, ram, { mergeable: config.mergeable });
      } else {
        memory = GuestMemory.create(ram, { hugePages: config.hugePages, mergeable: config.mergeable, trackDirty });
        registerMemory(vm, memory, trackDirty);
      }

      // Device threads report faults before the Machine exists; route them through it once it does.
      let machine: Machine | undefined;
      const announce = config.boot.kind === "linux"
        ? virtioAnnouncement(config.virtioAnnounce ?? "auto", config.boot.acpi ?? true)
        : { cmdline: "none" as const, dsdt: false };
      virtio = new VirtioSet(config.virtioDevices ?? [], memory.describe(), vm, {
        onGuestFault: (device, message, count) => (machine ? machine.fault(device, message, count) : config.onGuestFault?.(device, message)),
        onHostError: config.onHostError,
        cmdlineWindows: announce.cmdline === "second-window",
        deviceThread: config.deviceThread,
      });
      const host = createDeviceSet({ debugExit: config.debugExit, virtio: virtio.describe() });
      const acpi = config.boot.kind === "linux" && (config.boot.acpi ?? true);
      const vmGenId = (config.vmGenId ?? acpi) ? new VmGenId() : undefined;
      vmGenId?.writeNewId(memory);
      let bsp: { regs: KvmRegs; sregs: Partial<KvmSregs> } | undefined;
      let summary: string;
      if (config.boot.kind === "linux") {
        const b = config.boot;
        const params = virtio.cmdlineParams(announce.cmdline);
        const cmdline = [b.cmdline, ...params].filter((p) => p.length > 0).join(" ");
        const boot = setupBoot(memory, {
          kernel: kernel!, kernelPath: b.kernelPath, initrd, initrdPath: b.initrdPath, cmdline, cpus,
          acpi: b.acpi ?? true, bootMode: b.mode ?? "auto",
          extraDsdtDevices: [...(announce.dsdt ? virtioDsdtDevices(virtio.devices.length) : []), ...(vmGenId?.dsdtDevices() ?? [])],
        });
        bsp = boot.entry;
        summary = boot.summary;
      } else {
        memory.write(config.boot.entry ?? RING3_LAYOUT.code, config.boot.program);
        summary = `ring-3 program of ${config.boot.program.length} bytes`;
      }

      const supported = kvm.getSupportedCpuid();
      const cpuidHost = { tscDeadline: kvm.checkExtension(KVM_CAP_TSC_DEADLINE_TIMER) > 0 };
      for (let id = 0; id < cpus; id++) {
        const vcpu = warm ? vcpus[id]! : vm.createVcpu(id);
        if (!warm) vcpus.push(vcpu);
        vcpu.setCpuid2(vcpuCpuid(supported, id, cpus, cpuidHost));
        vcpu.setMsrs(bootMsrs());
        vcpu.setFpuDefaults();
        vcpu.setLapic(configureLints(vcpu.getLapic()));
        if (config.boot.kind === "ring3") {
          if (id > 0) vcpu.setMpState(KVM_MP_STATE_RUNNABLE);
          startInRing3(vcpu, memory, config.boot.entry ?? RING3_LAYOUT.code, RING3_LAYOUT.stackTop - id * 0x1000);
          const regs = vcpu.getRegs();
          regs.rdi = BigInt(id);
          vcpu.setRegs(regs);
        } else if (id === 0 && bsp) {
          // APs stay in wait-for-SIPI; the in-kernel LAPIC starts them when Linux sends INIT/SIPI.
          vcpu.setSregs({ ...vcpu.getSregs(), ...bsp.sregs });
          vcpu.setRegs(bsp.regs);
        }
      }
      machine = new Machine(config, kvm, vm, memory, vcpus, host, virtio, warm ? `${summary}, in a VM made ahead` : summary);
      machine.cmdlineWindows = announce.cmdline === "second-window";
      machine.vmGenId = vmGenId;
      return machine;
    } catch (e) {
      void virtio?.stop(); // nothing started yet: closes the eventfds at once
      for (const v of vcpus) v.close();
      memory?.dispose();
      vm.close();
      kvm.close();
      throw e;
    }
  }

  /**
   * Restores a VM saved by snapshot() into a fresh KVM VM: guest memory is
   * the memory file mapped copy-on-write (GuestMemory.mapFile, so this takes
   * the same time whatever the memory size, and VMs restored from one file
   * share the pages none has written), or, with `uffdSocketPath`, anonymous
   * memory a page-fault handler fills on first touch (the Uffd backend:
   * src/snapshot/uffd.ts); then each vCPU's state, the irqchip,
   * PIT and clock, and each device's. run() then starts it where it was saved,
   * running, or paused when `options.paused` (Firecracker's resume_vm:
   * false). Several Machines can be restored from one snapshot (clones);
   * `virtioDevices` gives each its own host-side options (a TAP, a vsock
   * socket path, a disk copy) for the devices the snapshot has, same count
   * and kinds. Throws SnapshotError for a snapshot that is unreadable,
   * corrupted, of another version or does not fit its memory file, or
   * ESNAPUFFD when no page-fault handler takes the userfaultfd (nothing is
   * created then), MachineError/KvmError as create() does.
   */
  static restore(options: RestoreOptions): Machine {
    checkDeviceThread(options.deviceThread);
    const snapshot = options.snapshot ?? readMachineSnapshot(options.statePath).snapshot;
    const overrides = options.virtioDevices;
    if (overrides && (overrides.length !== snapshot.virtio.configs.length || overrides.some((c, i) => c.kind !== snapshot.virtio.configs[i]!.kind))) {
      throw new SnapshotError("ESNAPSTATE",
        `Cannot restore '${options.statePath}': its virtio devices are ${snapshot.virtio.configs.map((c) => c.kind).join(", ") || "none"}; the override lists ${overrides.map((c) => c.kind).join(", ") || "none"}`);
    }
    const virtioDevices: VirtioDeviceConfig[] = overrides ?? snapshot.virtio.configs.map((c) => ({
      ...c, backendModule: c.backendModule !== undefined ? new URL(c.backendModule) : undefined,
    }));
    const config: MachineConfig = {
      ...options, cpus: snapshot.cpus, memoryMib: snapshot.memoryMib, boot: bootOf(snapshot.boot), debugExit: snapshot.debugExit, virtioDevices,
    };
    if ((options.memoryPath === undefined) === (options.uffdSocketPath === undefined)) {
      throw new SnapshotError("ESNAPSTATE", `Cannot restore '${options.statePath}': give either a memory file (memoryPath) or a page-fault handler's socket (uffdSocketPath)`);
    }
    const trackDirty = options.trackDirtyPages ?? false;
    const memFd = options.memoryPath !== undefined ? openMemoryFile(options.memoryPath, snapshot.memory.regions) : undefined;
    let memory: GuestMemory | undefined;
    let uffd: UffdBackend | undefined;
    let kvm: Kvm | undefined, vm: VmFd | undefined, virtio: VirtioSet | undefined;
    const vcpus: VcpuFd[] = [];
    try {
      // A VM made ahead (keepWarm's vms) when one fits; its vCPUs come with it.
      const warm = trackDirty || memFd === undefined ? undefined : WARM_VMS.take(snapshot.cpus, snapshot.memory.regions);
      if (warm && memFd !== undefined) {
        ({ kvm, vm } = warm);
        vcpus.push(...warm.vcpus);
        memory = GuestMemory.mapFileOver(warm.memory, snapshot.memory.regions, memFd, { mergeable: options.mergeable });
        closeSync(memFd);
      } else {
        if (memFd !== undefined) {
          memory = GuestMemory.mapFile(snapshot.memory.regions, memFd, { mergeable: options.mergeable, trackDirty });
          closeSync(memFd);
        } else {
          // Firecracker's order: anonymous memory, a userfaultfd it is registered with, then the handshake.
          memory = GuestMemory.create(snapshot.memory.regions, { mergeable: options.mergeable, trackDirty, externallyPopulated: true });
          uffd = UffdBackend.connect(memory, snapshot.memory.regions.map((r) => r.fileOffset), options.uffdSocketPath!);
        }
        ({ kvm, vm } = openKvmVm(snapshot.cpus));
        registerMemory(vm, memory, trackDirty);
      }
      let machine: Machine | undefined;
      // The devices come up as saved, and quiesced: run() lets them go (their first resume() kicks each once).
      virtio = VirtioSet.restore(virtioDevices, memory.describe(), vm, snapshot.virtio.states, {
        onGuestFault: (device, message, count) => (machine ? machine.fault(device, message, count) : config.onGuestFault?.(device, message)),
        onHostError: config.onHostError,
        cmdlineWindows: snapshot.virtio.cmdlineWindows,
        deviceThread: config.deviceThread,
      });
      const host = createDeviceSet({ debugExit: snapshot.debugExit, virtio: virtio.describe() });
      // Every vCPU first, then the irqchip, PIT and clock (Firecracker's order; vm-state.ts says why).
      for (const saved of snapshot.vcpus) {
        if (!warm) vcpus.push(vm.createVcpu(saved.id));
        restoreVcpuState(vcpus[saved.id]!, saved);
      }
      restoreVmState(vm, snapshot.vm);
      machine = new Machine(config, kvm, vm, memory, vcpus, host, virtio, `restored from ${options.statePath}${warm ? " into a VM made ahead" : ""}`);
      machine.restored = { legacy: snapshot.legacy, paused: options.paused ?? false };
      // A snapshot without a record is of a guest that was never told of a VMGenID.
      machine.vmGenId = snapshot.legacy.vmgenid ? VmGenId.fromSaved(snapshot.legacy.vmgenid) : undefined;
      machine.restoredVmm = snapshot.vmm;
      machine.cmdlineWindows = snapshot.virtio.cmdlineWindows;
      machine.uffd = uffd;
      return machine;
    } catch (e) {
      if (memory === undefined && memFd !== undefined) closeSync(memFd);
      void virtio?.stop();
      for (const v of vcpus) v.close();
      memory?.dispose();
      uffd?.close();
      vm?.close();
      kvm?.close();
      if (e instanceof SnapshotError || e instanceof MachineError) throw e;
      throw new SnapshotError("ESNAPBODY", `Cannot restore '${options.statePath}': ${(e as Error).message}`);
    }
  }

  /** Whether each virtio device also has a command-line window (create() decides it from the boot configuration; restore() keeps the snapshot's). */
  private cmdlineWindows = false;

  /** What the snapshot this Machine was restored from carried for the layer above (SnapshotPaths.vmm). */
  restoredVmm: unknown;

  /** The Uffd memory backend's userfaultfd and handler connection (restore() with uffdSocketPath). */
  private uffd: UffdBackend | undefined;

  /** Set by restore(): what run() puts back before the vCPUs start. */
  private restored: { legacy: MachineSnapshot["legacy"]; paused: boolean } | undefined;

  /**
   * Saves the paused VM: its state to `statePath` (versioned, checksummed:
   * src/snapshot/state-file.ts) and its memory to `memoryPath` (a sparse
   * image of guest RAM: src/snapshot/memory-file.ts). The VM stays paused;
   * resume() or stop() it afterwards as wanted. Console output the guest
   * wrote before the pause is delivered first. Rejects with ENOTPAUSED
   * unless the VM is paused (as Firecracker's snapshot/create), EENDED once
   * it ended, SnapshotError ESNAPIO when a file cannot be written.
   */
  snapshot(paths: SnapshotPaths): Promise<SnapshotWritten> {
    return this.serializedValue(() => this.snapshotNow(paths));
  }

  private async snapshotNow(paths: SnapshotPaths): Promise<SnapshotWritten> {
    const state = this.state;
    const type = paths.type ?? "full";
    if (state === "ended") throw new MachineError("EENDED", "Cannot snapshot VM: it has ended");
    if (state !== "paused") throw new MachineError("ENOTPAUSED", `Cannot snapshot VM: it is ${state === "running" ? "running; pause it first" : "not started"}`);
    if (type === "diff" && !this.config.trackDirtyPages) {
      throw new MachineError("ENOTTRACKED", "Cannot snapshot VM: Diff snapshots are not allowed on uVMs with dirty page tracking disabled.");
    }
    const deadline = this.pauseDeadline();
    try {
      await this.settle("snapshot", this.host.flushConsole(), deadline, () => "the console output stream did not take the guest's output");
    } finally {
      deadline.clear();
    }
    const virtioStates = await this.virtio.saveState();
    const msrs = msrsToSave(this.kvm, this.vcpus[0]!);
    const boot = this.config.boot;
    const savedBoot: SavedBoot = boot.kind === "linux"
      ? { kind: "linux", kernelPath: boot.kernelPath, ...(boot.initrdPath ? { initrdPath: boot.initrdPath } : {}), cmdline: boot.cmdline, acpi: boot.acpi ?? true }
      : { kind: "ring3" };
    const vcpus = this.vcpus.map((v) => saveVcpuState(v, msrs));
    const vm = saveVmState(this.vm);
    const mem = type === "diff" ? this.writeDiffMemory(paths.memoryPath) : writeMemoryFile(this.memory, paths.memoryPath);
    // Every snapshot is the base of the next Diff: both logs start again from here.
    if (this.config.trackDirtyPages) this.resetDirtyLogs();
    const snapshot: MachineSnapshot = {
      kind: "flint-machine", flintVersion: FLINT_VERSION, createdAtMs: Date.now(),
      cpus: this.vcpus.length, memoryMib: this.config.memoryMib, boot: savedBoot, debugExit: this.config.debugExit ?? false,
      memory: { regions: mem.regions, ...(type === "diff" ? { type: "diff" as const } : {}) }, vm, vcpus,
      legacy: { serial: this.host.saveSerial(), i8042: this.keyboard!.save(), ...(this.vmGenId ? { vmgenid: this.vmGenId.save() } : {}) },
      virtio: {
        configs: (this.config.virtioDevices ?? []).map((c, i) => ({
          ...c,
          ...(this.drivePaths.has(i) ? { options: { ...(c.options as BlockOptions), path: this.drivePaths.get(i)! } } : {}),
          backendModule: c.backendModule?.href,
        })),
        states: virtioStates,
        cmdlineWindows: this.cmdlineWindows,
      },
      ...(paths.vmm !== undefined ? { vmm: paths.vmm } : {}),
    };
    const stateBytes = writeMachineSnapshot(paths.statePath, snapshot);
    return { stateBytes, memoryBytes: mem.totalBytes, memoryDataBytes: mem.dataBytes, type };
  }

  /**
   * Each region's dirty pages since the last snapshot: KVM's log (the
   * guest's writes and KVM's own, read and so cleared here) folded into
   * flint's map (the devices'), which thus keeps them until a snapshot was
   * written: a failed write loses none (as Firecracker's dump_dirty).
   */
  private collectDirty(): Uint8Array[] {
    return this.memory.regions.map((r, slot) => {
      const pages = Math.ceil(r.size / DIRTY_PAGE_SIZE);
      const kvm = this.vm.getDirtyLog(slot, pages);
      const map = r.dirty!;
      for (let w = 0; w < kvm.length; w++) {
        const byte = kvm[w]!;
        if (byte === 0) continue;
        for (let b = 0; b < 8; b++) if (byte & (1 << b)) map[w * 8 + b] = 1;
      }
      return map;
    });
  }

  private writeDiffMemory(path: string): MemoryFileWritten {
    return writeDiffMemoryFile(this.memory, path, this.collectDirty());
  }

  /** Starts both dirty logs afresh (KVM's cleared by reading it). */
  private resetDirtyLogs(): void {
    this.memory.regions.forEach((r, slot) => this.vm.getDirtyLog(slot, Math.ceil(r.size / DIRTY_PAGE_SIZE)));
    this.memory.clearDirty();
  }

  /** Starts all vCPU threads; resolves when the VM has stopped and output is flushed. */
  async run(): Promise<MachineResult> {
    if (this.ran) throw new KvmError("EKVMIOCTL", "a Machine runs once");
    this.ran = true;
    const uffd = this.uffd;
    if (uffd) {
      // A handler that already closed the connection will not serve the first fault: nothing starts.
      if (uffd.handlerClosed()) {
        await this.virtio.stop();
        this.dispose();
        throw new SnapshotError("ESNAPUFFD", `Cannot restore: the page-fault handler at '${uffd.socketPath}' closed the connection`);
      }
      uffd.watch(() => {
        // Threads waiting for pages it will never serve are let go (they read zeros) so that the VM can end.
        uffd.release();
        this.end({ kind: "error", message: `the page-fault handler at '${uffd.socketPath}' closed the connection: guest memory can no longer be served` });
      });
    }
    // Device threads and vCPU threads start at the same time (each is a worker that must
    // load before it answers); no vCPU enters the guest before every device is ready.
    // The process-wide seccomp filter before any thread of this VM starts its own (index.ts: the order matters).
    if (this.config.seccomp ?? seccompDefaultFromEnv()) installProcessSeccomp();
    const seccomp = processSeccompAction();
    const devicesStarted = this.virtio.start().then(() => undefined, (e: unknown) => e);
    if (!kickInstalled) {
      sys.installKickSignal(KICK_SIGNAL);
      kickInstalled = true;
    }
    const mainCtx: DeviceContext = {
      ...irqLineContext(this.vm.fd, (m) => this.fault("irqchip", m)),
      requestExit: (reason) => this.end(reason),
      guestFault: (device, message) => this.fault(device, message),
    };
    this.keyboard = new I8042(this.host.descriptor.i8042, mainCtx);
    const stats: VcpuStats[] = [];
    const done: Promise<void>[] = [];
    for (const vcpu of this.vcpus) {
      const init: VcpuThreadInit = {
        vcpu: vcpu.describe(), vmFd: this.vm.fd,
        devices: this.host.descriptor, control: this.control, stats: this.vcpuStatBlocks[vcpu.id]!, kickSignal: KICK_SIGNAL,
        ...(seccomp ? { seccomp } : {}),
      };
      const w = VCPU_THREAD_POOL.take(init);
      this.workers.push(w);
      done.push(new Promise((resolve) => {
        w.on("message", (m: VcpuThreadMessage) => {
          switch (m.type) {
            case "ready": this.threads[vcpu.id] = m.thread; break;
            case "exit": this.end(m.reason); break;
            case "fault": this.fault(m.device, m.message, m.count); break;
            case "done": stats[vcpu.id] = m.stats; break;
          }
        });
        w.on("error", (e) => this.end({ kind: "error", message: `vCPU ${vcpu.id} thread failed: ${e.message}` }));
        this.waitingVcpus.add(vcpu.id);
        w.on("exit", () => {
          this.waitingVcpus.delete(vcpu.id);
          // Node has joined the thread: its pthread id may now name another thread.
          this.threads[vcpu.id] = undefined;
          resolve();
        });
      }));
    }
    const deviceError = await devicesStarted;
    if (deviceError !== undefined) {
      // The guest never ran: end the waiting vCPU threads, then release the VM.
      for (const w of this.workers) void w.terminate();
      await Promise.all(done);
      this.dispose();
      throw deviceError;
    }
    this.host.start(mainCtx, this.config.consoleOutput);
    const restored = this.restored;
    if (restored) {
      // Device registers before any vCPU runs; a restored VM asked to stay paused parks its vCPUs before their first KVM_RUN.
      this.host.restoreSerial(restored.legacy.serial);
      this.keyboard.restore(restored.legacy.i8042);
      // A new generation id, and the GED's edge that makes the guest read it, before any vCPU runs (paused or not: the
      // interrupt waits in the irqchip): every clone of one snapshot reseeds its RNG from its own id.
      this.vmGenId?.writeNewId(this.memory);
      this.vmGenId?.notify(mainCtx);
      if (restored.paused) {
        requestPause(this.control, true);
      } else {
        // Restored virtio devices start quiesced; let them run (and kick each once) before the guest does.
        try {
          await this.virtio.resume();
        } catch (e) {
          for (const w of this.workers) void w.terminate();
          await Promise.all(done);
          await this.virtio.stop();
          this.dispose();
          throw e;
        }
      }
    }
    // "start" right behind the init, not after each thread's "ready": a thread takes both in
    // one turn. Until its "ready" (its pthread id) arrives, a kick reaches it through
    // immediate_exit alone, which is enough before its first KVM_RUN (kickAll).
    const startNs = sys.monotonicNs();
    for (const w of this.workers) w.postMessage("start");
    this.started = true;
    if (restored?.paused) {
      try {
        await this.pause();
      } catch {
        // Ended meanwhile (stop()): run() reports why below.
      }
    }
    this.config.onStarted?.();
    await Promise.all(done);
    // Device threads stop after the vCPUs, so backends flush (e.g. fdatasync) before run() resolves;
    // after stop(), one stuck in a host syscall is given up on (DEVICE_STOP_TIMEOUT_MS).
    this.ending = "devices";
    const stopped = await Promise.all(this.virtio.devices.map(async (d) => {
      this.waitingDevices.add(d.spec.name);
      const ok = await d.stop(this.devicesGivenUp);
      this.waitingDevices.delete(d.spec.name);
      return ok;
    }));
    this.ending = "console";
    await this.host.stop(this.flushGivenUp);
    this.ending = "done";
    const bootNs = this.host.bootTimeNs();
    const unstopped = this.virtio.devices.filter((_, i) => !stopped[i]);
    this.dispose(unstopped.map((d) => d.letGo));
    const virtioStats = this.virtio.stats();
    return {
      reason: this.exitReason ?? { kind: "error", message: "VM stopped without a reason" },
      bootTimeMs: bootNs !== undefined ? Number(bootNs - startNs) / 1e6 : undefined,
      stats,
      ...this.faultCounts(virtioStats),
      debugExit: this.host.debugExit(),
      virtio: virtioStats,
      unstoppedDevices: unstopped.map((d) => d.spec.name),
      consoleDroppedBytes: this.host.consoleDroppedBytes(),
    };
  }

  /**
   * Stops the VM from the host (console escape, API, signal), from any state,
   * before or during run(); the first reason given (here or by the guest) is
   * the one reported. Every vCPU leaves KVM_RUN (kicked), a vCPU blocked on a
   * full console ring gives up its byte, console output still pending is
   * flushed for at most STOP_FLUSH_TIMEOUT_MS, and device threads get
   * DEVICE_STOP_TIMEOUT_MS: run() resolves within those bounds.
   */
  stop(reason: VmExitReason = { kind: "poweroff" }): void {
    if (this.disposed) return;
    this.end(reason);
    if (this.stopCalled) return;
    this.stopCalled = true;
    this.stopTimers.push(setTimeout(this.giveUpFlush, STOP_FLUSH_TIMEOUT_MS), setTimeout(this.giveUpDevices, DEVICE_STOP_TIMEOUT_MS));
  }

  /**
   * Ends the VM for `reason` (the guest's, or stop()'s): every vCPU leaves its
   * loop, a vCPU blocked on a full console ring drops its byte instead of
   * waiting for a reader (the bytes already in the ring are still flushed),
   * and run() waits at most END_TIMEOUT_MS for devices and console output.
   */
  private end(reason: VmExitReason): void {
    if (this.disposed) return;
    if (this.exitReason === undefined) {
      this.exitReason = reason;
      this.markEnded();
      this.host.releaseConsole();
      const giveUp = setTimeout(() => {
        this.giveUpDevices();
        this.giveUpFlush();
      }, this.config.endTimeoutMs ?? END_TIMEOUT_MS);
      const report = setTimeout(() => this.reportSlowEnd(), this.config.slowEndReportMs ?? SLOW_END_REPORT_MS);
      giveUp.unref();
      report.unref();
      this.stopTimers.push(giveUp, report);
    }
    claimExit(this.control);
    this.kick();
  }

  /** Where the VM is in its life (see MachineState). */
  get state(): MachineState {
    if (this.exitReason !== undefined || this.disposed) return "ended";
    if (!this.started) return "not-started";
    return this.paused ? "paused" : "running";
  }

  /**
   * Pauses the running VM: every vCPU leaves KVM_RUN (kicked as by stop())
   * and parks on the control block (Atomics.wait: no CPU used), calling
   * KVM_KVMCLOCK_CTRL as it parks (vcpu-loop.ts says what that does to the
   * guest's clock and why); then every device thread finishes what it had
   * started and stops serving the rings (VirtioSet.quiesce). Resolves once
   * all are at rest. Like Firecracker, pausing a paused VM succeeds at once.
   * Serial console output already in the ring still drains; run() stays
   * pending (a guest that cannot run cannot end the VM) and stop() still
   * ends it. Rejects with ENOTSTARTED before run() started the vCPUs,
   * EENDED once the VM ended (also when it ends meanwhile), and ETIMEOUT
   * when a vCPU or device did not come to rest within the pause timeout
   * (then the VM runs on as before).
   */
  pause(): Promise<void> {
    return this.serialized(() => this.pauseNow());
  }

  /**
   * Resumes a paused VM: the device threads serve their rings again first
   * (requests the guest posted before or during the pause included), then
   * every vCPU re-enters KVM_RUN; resolves once none is parked. Resuming a
   * running VM succeeds at once (as in Firecracker). Rejects like pause().
   */
  resume(): Promise<void> {
    return this.serialized(() => this.resumeNow());
  }

  /**
   * Types Ctrl-Alt-Del on the guest's keyboard (Firecracker's `SendCtrlAltDel`
   * action): the keys go into the i8042's output buffer and IRQ 1 is raised
   * (I8042.sendCtrlAltDel). Linux's keyboard driver then does what
   * /proc/sys/kernel/ctrl-alt-del says: reboot at once (the default; with
   * `reboot=k` that resets through the i8042 and ends the VM), or signal init
   * for an orderly shutdown. Resolves once the keys are queued, not when the
   * guest acts. While paused it is accepted like Firecracker does (its API
   * takes the action in any post-boot state): the guest reads the keys when
   * resumed. Rejects with ENOTSTARTED before the vCPUs started, EENDED once the
   * VM ended, EBUFFERFULL when the guest left the controller's buffer too full
   * for the whole sequence, EKBDDISABLED when the guest turned the keyboard off.
   */
  async sendCtrlAltDel(): Promise<void> {
    const state = this.state;
    if (state === "not-started") throw new MachineError("ENOTSTARTED", "Cannot send Ctrl-Alt-Del: the VM has not started");
    if (state === "ended") throw new MachineError("EENDED", "Cannot send Ctrl-Alt-Del: the VM has ended");
    try {
      this.keyboard!.sendCtrlAltDel();
    } catch (e) {
      if (e instanceof I8042Error && (e.code === "EBUFFERFULL" || e.code === "EKBDDISABLED")) throw new MachineError(e.code, e.message);
      throw e;
    }
  }

  private serialized(op: () => Promise<void>): Promise<void> {
    return this.serializedValue(op);
  }

  /** Runs `op` after every pause(), resume() and snapshot() called before it has settled. */
  private serializedValue<T>(op: () => Promise<T>): Promise<T> {
    const p = this.lifecycle.then(op);
    this.lifecycle = p.catch(() => undefined);
    return p;
  }

  private requireLive(op: "pause" | "resume"): void {
    const state = this.state;
    if (state === "not-started") throw new MachineError("ENOTSTARTED", `Cannot ${op} VM: it has not started`);
    if (state === "ended") throw new MachineError("EENDED", `Cannot ${op} VM: it has ended`);
  }

  private async pauseNow(): Promise<void> {
    this.requireLive("pause");
    if (this.paused) return;
    const deadline = this.pauseDeadline();
    const n = this.vcpus.length;
    requestPause(this.control, true);
    // Kick until every vCPU parked: a kick that landed just before KVM_RUN is covered by the next.
    const kicker = setInterval(() => this.kickAll(), 20);
    this.kickAll();
    try {
      await this.settle("pause", this.untilParked((k) => k >= n), deadline,
        () => `${n - parkedCount(this.control)} of ${n} vCPU(s) did not leave the guest (in KVM_RUN, or blocked on a full console)`);
      clearInterval(kicker);
      await this.settle("pause", this.virtio.quiesce(), deadline, () => "a device thread did not quiesce (busy or blocked in a host syscall)");
    } catch (e) {
      clearInterval(kicker);
      // Leave the VM as it was: running.
      void this.virtio.resume();
      requestPause(this.control, false);
      throw e;
    } finally {
      deadline.clear();
    }
    // The guest may have ended the VM just as its last vCPU parked (its message was still on the way).
    if (this.exitReason !== undefined) throw new MachineError("EENDED", "Cannot pause VM: it ended");
    this.paused = true;
  }

  private async resumeNow(): Promise<void> {
    this.requireLive("resume");
    if (!this.paused) return;
    const deadline = this.pauseDeadline();
    try {
      // Devices first, so that the guest's first steps find them serving.
      await this.settle("resume", this.virtio.resume(), deadline, () => "a device thread did not answer");
      requestPause(this.control, false);
      this.paused = false;
      await this.settle("resume", this.untilParked((k) => k === 0), deadline, () => `${parkedCount(this.control)} vCPU(s) stayed parked`);
    } finally {
      deadline.clear();
    }
  }

  /** A timer for one pause()/resume(): `expired` settles when the pause timeout has passed. */
  private pauseDeadline(): { expired: Promise<void>; clear(): void } {
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<void>((resolve) => (timer = setTimeout(resolve, this.config.pauseTimeoutMs ?? PAUSE_TIMEOUT_MS)));
    return { expired, clear: () => clearTimeout(timer) };
  }

  /** Waits for `step`; rejects with EENDED if the VM ends first, ETIMEOUT (saying `what`) if the deadline passes first. */
  private async settle(op: "pause" | "resume" | "snapshot", step: Promise<void>, deadline: { expired: Promise<void> }, what: () => string): Promise<void> {
    const r = await Promise.race([
      step.then(() => "done" as const), this.endedSignal.then(() => "ended" as const), deadline.expired.then(() => "timeout" as const),
    ]);
    if (r === "ended") throw new MachineError("EENDED", `Cannot ${op} VM: it ended`);
    if (r === "timeout") {
      const s = (this.config.pauseTimeoutMs ?? PAUSE_TIMEOUT_MS) / 1000;
      throw new MachineError("ETIMEOUT", `Cannot ${op} VM: ${what()} within ${s} s`);
    }
  }

  /** Resolves when the parked count satisfies `done`, or the VM is ending (the caller checks which). */
  private async untilParked(done: (parked: number) => boolean): Promise<void> {
    for (;;) {
      const k = parkedCount(this.control);
      if (done(k) || this.exitReason !== undefined || this.disposed) return;
      // vCPUs notify every change; the slice only bounds how long a wait outlives an abandoned pause.
      await waitForChange(this.control, CONTROL_PARKED, k, 100);
    }
  }

  /** Tells onSlowEnd what run() still waits for, SLOW_END_REPORT_MS after the VM ended. */
  private reportSlowEnd(): void {
    if (this.ending === "done" || !this.config.onSlowEnd) return;
    const what =
      this.ending === "vcpus" ? `vCPU thread(s) ${[...this.waitingVcpus].join(", ")} to leave the guest (in KVM_RUN, or blocked on a full console)`
      : this.ending === "devices" ? `device(s) ${[...this.waitingDevices].join(", ")} to stop (a device thread busy or blocked in a host syscall)`
      : "the console output stream to take the guest's last output";
    const after = this.config.slowEndReportMs ?? SLOW_END_REPORT_MS;
    this.config.onSlowEnd(`the VM ended ${after / 1000} s ago and is still waiting for ${what}`);
  }

  /**
   * Settles when every device thread of this VM has exited, including any
   * that run() gave up on (MachineResult.unstoppedDevices), and the process's
   * shared device thread (deviceThread "process") has let go of every device
   * of this VM it ran.
   */
  async deviceThreadsExited(): Promise<void> {
    await Promise.all(this.virtio.devices.map((d) => (d.thread.shared ? d.letGo : d.threadExited)));
  }

  /** Each virtio device's transport counters now (the same figures run() reports at the end). */
  deviceStats(): VirtioDeviceStats[] {
    return this.virtio.stats();
  }

  /** Each vCPU's exit counters now, read while its thread counts (the same figures run() reports at the end). */
  vcpuStats(): VcpuStats[] {
    return this.vcpuStatBlocks.map(readStats);
  }

  /** The balloon's run-time controls, when the VM has a virtio-balloon device (the first, if several). */
  get balloon(): BalloonControl | undefined {
    const i = this.virtio.kinds.indexOf("balloon");
    return i < 0 ? undefined : (this.balloonControl ??= new BalloonControl(this.virtio.devices[i]!, this.config.memoryMib));
  }

  private balloonControl: BalloonControl | undefined;

  /**
   * Changes a running device's rate limiter (Firecracker's PATCH /drives and
   * /network-interfaces): `device` is its index in virtioDevices, `which` "io"
   * for a drive or entropy device, "rx" or "tx" for a network interface.
   * Resolves with the limiter's new configuration; rejects (ERATELIMITER,
   * EVIRTIOREQUEST) changing nothing.
   */
  async updateRateLimiter(device: number, which: RateLimiterName, update: RateLimiterConfig): Promise<RateLimiterConfig> {
    return RateLimiterControl.of(this.virtio, device).update(which, update);
  }

  /**
   * Gives drive `device` (its index in virtioDevices) a new backing file, or
   * re-reads the size of the same one (Firecracker's PATCH /drives/{id} with
   * path_on_host); the guest sees the new capacity through a config-change
   * interrupt (VirtioBlock's update-backing request). Resolves with the new
   * size in 512-byte sectors; rejects changing nothing (MachineError
   * ENODEVICE, or the device's refusal: the file cannot be opened, EBLKBUSY).
   */
  async updateDriveBacking(device: number, path: string): Promise<{ capacitySectors: number }> {
    const handle = this.virtio.devices[device];
    if (!Number.isInteger(device) || !handle || this.virtio.kinds[device] !== "block") {
      throw new MachineError("ENODEVICE", `Cannot update drive: virtio device ${device} is not a drive`);
    }
    const r = (await handle.request(BLOCK_REQUEST_UPDATE_BACKING, { path })) as { capacitySectors: number };
    // A snapshot from now on names the file the drive has (a restore reopens it and checks its size).
    this.drivePaths.set(device, path);
    return r;
  }

  /** Backing files given by updateDriveBacking, by device index (config.virtioDevices keeps what the caller gave). */
  private readonly drivePaths = new Map<number, string>();

  /**
   * Replaces the MMDS data that guests read on every network interface with
   * MMDS on (NetOptions.mmds); resolves when each device has it. Rejects with
   * MmdsDataError (EMMDSDATA) for data that is not JSON or passes the device's
   * limit (MMDS_DATA_MAX_BYTES), changing nothing.
   */
  async setMmdsData(json: unknown): Promise<void> {
    const configs = this.config.virtioDevices ?? [];
    const withMmds = this.virtio.devices.filter((_, i) => configs[i]?.kind === "net" && (configs[i]!.options as NetOptions | undefined)?.mmds !== undefined);
    await setMmdsData(withMmds, json);
  }

  /** A running device's rate limiter as configured now ({} when it limits nothing); see updateRateLimiter. */
  async rateLimiter(device: number, which: RateLimiterName): Promise<RateLimiterConfig> {
    return RateLimiterControl.of(this.virtio, device).info(which);
  }

  /** Pushes bytes to the guest's serial console; returns how many fit. */
  consoleInput(bytes: Uint8Array): number {
    return this.host.consoleInput(bytes);
  }

  /** Resolves when the console can take input again. */
  consoleWritable(): Promise<void> {
    return this.host.consoleWritable();
  }

  private kickTimer: NodeJS.Timeout | undefined;

  private kick(): void {
    this.kickAll();
    // Re-kick until every thread has left, covering a signal that landed just before KVM_RUN.
    this.kickTimer ??= setInterval(() => this.kickAll(), 20);
  }

  /** Makes every vCPU leave KVM_RUN (api.rst §5 immediate_exit, and a signal for one inside it). */
  private kickAll(): void {
    if (this.disposed) return;
    for (const v of this.vcpus) {
      v.setImmediateExit(true);
      const t = this.threads[v.id];
      if (t !== undefined) sys.signalThread(t, KICK_SIGNAL);
    }
  }

  /** Counts `count` guest faults of `device` (a summary from a device thread when > 1) and logs them, rate-limited. */
  private fault(device: string, message: string, count = 1): void {
    this.faultLog.fault(device, message, count);
    this.scheduleFaultSummary();
  }

  /** A pending summary is logged when due even if the guest stops faulting. */
  private scheduleFaultSummary(): void {
    const due = this.faultLog.nextSummaryInMs();
    if (due === undefined || this.faultTimer) return;
    this.faultTimer = setTimeout(() => {
      this.faultTimer = undefined;
      this.faultLog.tick();
      this.scheduleFaultSummary();
    }, due);
    this.faultTimer.unref();
  }

  /**
   * The run's fault counts, after logging what is still summarised. A virtio
   * device's own count (its shared state: register file and device thread)
   * is authoritative; messages still in flight at stop would be missing here.
   */
  private faultCounts(virtio: readonly VirtioDeviceStats[]): Pick<MachineResult, "guestFaults" | "guestFaultsByDevice"> {
    if (this.faultTimer) clearTimeout(this.faultTimer);
    this.faultTimer = undefined;
    this.faultLog.flush();
    const byDevice = this.faultLog.counts();
    for (const v of virtio) if (v.guestFaults > 0 || byDevice[v.name] !== undefined) byDevice[v.name] = v.guestFaults;
    return { guestFaults: Object.values(byDevice).reduce((a, b) => a + b, 0), guestFaultsByDevice: byDevice };
  }

  /**
   * Closes the VM. A device thread still running (`stillRunning`: given up on
   * in a host syscall) may touch guest memory once its syscall returns, so
   * the mapping is released only after every such thread has exited.
   */
  private dispose(stillRunning: Promise<void>[] = []): void {
    this.disposed = true;
    this.markEnded();
    if (this.kickTimer) clearInterval(this.kickTimer);
    for (const t of this.stopTimers) clearTimeout(t);
    for (const v of this.vcpus) v.close();
    // The handler's connection closes after guest memory is unmapped: it then knows the VM is gone.
    const release = () => {
      this.memory.dispose();
      this.uffd?.close();
    };
    if (stillRunning.length === 0) release();
    else void Promise.all(stillRunning).then(release);
    this.vm.close();
    this.kvm.close();
  }
}
