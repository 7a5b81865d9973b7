/**
 * The virtio-mmio devices of a flint microVM: where each sits, how the guest
 * learns of it, and which device thread runs it.
 *
 * Threads (devicePlacement): every device of a VM runs on one shared device
 * thread unless its config asks for a thread of its own (`thread: "own"`,
 * e.g. a busy disk). A device thread is a worker isolate: measured with
 * blk + net + vsock + rng + balloon and a guest that exits at once, one
 * thread per device peaked at 118 MiB RSS and took ~1 s to start the
 * devices on a loaded 2-core host; one shared thread, 78 MiB and ~0.3 s.
 * Devices on a thread stay independent (device-runner.ts): each fails,
 * resets and stops alone, and budgets keep one from starving another.
 *
 * Device i (in configuration order) gets the window VIRTIO_MMIO_BASE +
 * i * VIRTIO_MMIO_SIZE, a second window VIRTIO_MMIO_CMDLINE_BASE +
 * i * VIRTIO_MMIO_SIZE over the same registers, and GSI FIRST_DEVICE_IRQ + i.
 *
 * Announcement (virtioAnnouncement, "auto"): every kernel, built with ACPI or
 * without, must find every device with no flag.
 *   - With ACPI tables (the default): the DSDT lists the first window as a
 *     Device with _HID "LNRO0005" (mmioDeviceAml), and the command line lists
 *     the second: `virtio_mmio.device=4K@0x<second window>:<gsi>`
 *     (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES). The second window reads DeviceID 0
 *     once a driver has started on the device (CmdlineWindowRegisters).
 *   - Without ACPI tables (--no-acpi): the command line lists the first window.
 * Measured with flint's 6.1 guest kernel (built with and without ACPI) and
 * Debian's 6.1 distro kernel in the nested harness; e2e/acpi-kernels.test.ts
 * checks "auto" with every device on both kernels, virtio-set.e2e.test.ts keeps
 * the other cases as tests:
 *   - Kernel with ACPI, auto: the DSDT's devices are created at ACPI scan
 *     (subsys_initcall), the command line's when virtio_mmio's parameters are
 *     parsed (device initcall level), so the driver binds the DSDT's first:
 *     "LNRO0005:00" works; then "virtio-mmio: Registering device virtio-mmio.0
 *     at 0xd0100000-0xd0100fff, IRQ 5." and its probe reads DeviceID 0 and
 *     returns -ENODEV, which the driver core logs only at debug level. One
 *     device, nothing else in the log.
 *   - Kernel without ACPI (CONFIG_ACPI=n; also the ACPI kernel with acpi=off),
 *     auto: the DSDT is never read; virtio-mmio.0 at the second window probes
 *     (status 0, real ID) and works, its kicks through the ioeventfd.
 *   - Debian's kernel (virtio_mmio a module, no CMDLINE_DEVICES), auto: the
 *     module binds LNRO0005:00 and :01 and they work; the kernel passes over
 *     `virtio_mmio.device=` (a module's parameter it does not know) without a
 *     line, and insmod does not read the command line.
 *   - Kernel with ACPI, one window in both the DSDT and the command line:
 *     bound once (LNRO0005:00), and the duplicate's probe fails for every
 *     device: "virtio-mmio virtio-mmio.0: can't request region for resource
 *     [mem 0xd0001000-0xd0001fff]", "virtio-mmio: probe of virtio-mmio.0
 *     failed with error -16" (-EBUSY), two error lines per device on the
 *     console. Order cannot avoid it (the DSDT's device always binds first and
 *     holds the region); a second window, which the duplicate finds as a
 *     placeholder, does.
 *   - Kernel with ACPI, command line only: virtio-mmio.0 registers and virtio0
 *     appears, but its driver fails ("virtio_rng: probe of virtio0 failed with
 *     error -22"): a command-line device's raw IRQ was never mapped through
 *     acpi_register_gsi on flint's hardware-reduced ACPI platform, so
 *     request_irq fails. The command line alone does not serve ACPI kernels.
 *   - Kernel without ACPI, DSDT only (flint's announcement before): no virtio
 *     device at all, and nothing in the log says why.
 */
import {
  KiB, IOAPIC_START, FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ, VIRTIO_MMIO_BASE, VIRTIO_MMIO_CMDLINE_BASE, VIRTIO_MMIO_SIZE,
} from "../../arch/x86_64/layout.js";
import type { Aml } from "../../arch/x86_64/acpi/aml.js";
import { mmioDeviceAml } from "../../arch/x86_64/acpi/dsdt.js";
import type { VmFd } from "../../kvm/vm.js";
import { KVM_IOEVENTFD_FLAG_DATAMATCH, VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_QUEUE_NOTIFY } from "../../linux/abi.generated.js";
import type { MemoryDescriptor } from "../../memory/guest-memory.js";
import type { Bus, BusDevice, DeviceContext } from "../bus.js";
import type { VirtioDeviceKind } from "./backends.js";
import {
  checkVirtioDeviceSavedState, VIRTIO_SAVED_STATE_VERSION, type VirtioDeviceSavedState, VirtioSavedStateError,
} from "./device-saved-state.js";
import {
  DeviceThread, processDeviceThread, VirtioDeviceHandle, type VirtioDeviceStats, type VirtioTransportDescriptor as DeviceThreadDescriptor,
} from "./device-thread.js";
import { VirtioMmioTransport } from "./mmio.js";

export type { VirtioDeviceStats } from "./device-thread.js";
export type { VirtioDeviceKind } from "./backends.js";
export { VirtioSavedStateError, type VirtioDeviceSavedState } from "./device-saved-state.js";

/** What a vCPU thread needs to put one device's register windows on its MMIO bus. */
export interface VirtioTransportDescriptor extends DeviceThreadDescriptor {
  /** The device's command-line window (see the header), when the command line announces it. */
  cmdlineBase?: number;
}

/** One device of MachineConfig.virtioDevices. */
export interface VirtioDeviceConfig {
  kind: VirtioDeviceKind;
  /** JSON-serialisable options for the kind's backend (its createBackend). */
  options: unknown;
  /** Load the backend from this module instead of the kind's (tests: the echo backend). */
  backendModule?: URL;
  /**
   * Which device thread runs it (see devicePlacement): "shared" (the default)
   * with the VM's other devices, or "own", a thread for this device alone
   * (e.g. a busy disk whose synchronous I/O should not delay the others).
   */
  thread?: DeviceThreadPlacement;
}

/** Where a device runs: on the VM's shared device thread, or on a thread of its own. */
export type DeviceThreadPlacement = "shared" | "own";

/**
 * The device threads for `configs`: which thread (0 to threads - 1) each
 * device runs on. Every device placed "shared" (the default) is on one
 * thread, so a VM costs one worker isolate for all its devices (issue 10);
 * each device placed "own" has one to itself. Threads are numbered in the
 * order of their first device; `shared` is the number of the one the devices
 * placed "shared" use (undefined when every device has its own).
 */
export function devicePlacement(
  configs: readonly Pick<VirtioDeviceConfig, "thread">[],
): { threadOf: number[]; threads: number; shared: number | undefined } {
  let shared: number | undefined, threads = 0;
  const threadOf = configs.map((c) => {
    if (c.thread === "own") return threads++;
    shared ??= threads++;
    return shared;
  });
  return { threadOf, threads, shared };
}

/** Most virtio devices a VM can have: one GSI each, two windows each below the IOAPIC. */
export const MAX_VIRTIO_DEVICES = Math.min(
  LAST_DEVICE_IRQ - FIRST_DEVICE_IRQ + 1,
  Math.floor((VIRTIO_MMIO_CMDLINE_BASE - VIRTIO_MMIO_BASE) / VIRTIO_MMIO_SIZE),
  Math.floor((IOAPIC_START - VIRTIO_MMIO_CMDLINE_BASE) / VIRTIO_MMIO_SIZE),
);

/** Bad virtio configuration; `code` is stable. */
export class VirtioSetError extends Error {
  readonly code = "EVIRTIOCOUNT";
  constructor(message: string) {
    super(message);
    this.name = "VirtioSetError";
  }
}

/**
 * Where device `index` lives: its window (announced in the DSDT, or alone on
 * the command line), its command-line window (announced on the command line
 * next to the DSDT) and its GSI.
 */
export function virtioSlot(index: number): { mmioBase: number; cmdlineBase: number; gsi: number } {
  return {
    mmioBase: VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_SIZE,
    cmdlineBase: VIRTIO_MMIO_CMDLINE_BASE + index * VIRTIO_MMIO_SIZE,
    gsi: FIRST_DEVICE_IRQ + index,
  };
}

/**
 * Which window of each device the kernel command line names: none, the
 * device's own window ("same-window"), or its command-line window
 * ("second-window", for when the DSDT names the first).
 */
export type CmdlineWindow = "none" | "same-window" | "second-window";

/** The kernel command-line parameter announcing the device at `index` in `window`. */
export function virtioCmdlineParam(index: number, window: Exclude<CmdlineWindow, "none"> = "same-window"): string {
  const { mmioBase, cmdlineBase, gsi } = virtioSlot(index);
  const base = window === "second-window" ? cmdlineBase : mmioBase;
  return `virtio_mmio.device=${VIRTIO_MMIO_SIZE / KiB}K@0x${base.toString(16)}:${gsi}`;
}

/** The _HID Linux's virtio_mmio driver matches in ACPI tables (drivers/virtio/virtio_mmio.c). */
export const VIRTIO_MMIO_ACPI_HID = "LNRO0005";

/** DSDT Device objects (V000, V001...) for `count` devices, for guests with ACPI. */
export function virtioDsdtDevices(count: number): Aml[] {
  return Array.from({ length: count }, (_, i) => {
    const { mmioBase, gsi } = virtioSlot(i);
    return mmioDeviceAml({ name: `V${i.toString().padStart(3, "0")}`, hid: VIRTIO_MMIO_ACPI_HID, uid: i, base: mmioBase, sizeBytes: VIRTIO_MMIO_SIZE, gsi });
  });
}

/**
 * How devices are announced. "auto" (the default) reaches kernels with and
 * without ACPI: with ACPI tables, the DSDT names each device's window and the
 * command line its second window; without, the command line names the device's
 * window. The others are for tests and experiments: "cmdline" and "dsdt" alone,
 * and "cmdline+dsdt", one window named both ways (a clash: see the header).
 */
export type VirtioAnnouncement = "auto" | "cmdline" | "dsdt" | "cmdline+dsdt";

/** Where devices are announced: which window the command line names, and whether the DSDT lists them. */
export interface VirtioAnnouncementPlan {
  cmdline: CmdlineWindow;
  dsdt: boolean;
}

/** Where to announce devices for a guest with or without ACPI tables. */
export function virtioAnnouncement(how: VirtioAnnouncement, acpi: boolean): VirtioAnnouncementPlan {
  switch (how) {
    case "auto": return acpi ? { cmdline: "second-window", dsdt: true } : { cmdline: "same-window", dsdt: false };
    case "cmdline": return { cmdline: "same-window", dsdt: false };
    case "dsdt": return { cmdline: "none", dsdt: acpi };
    case "cmdline+dsdt": return { cmdline: "same-window", dsdt: acpi };
  }
}

/** What the set reports to the machine, and how it is announced. */
export interface VirtioSetHooks {
  /** A guest fault, or a summary standing for `count` of them (VirtioDeviceSpec.onGuestFault). */
  onGuestFault?: (device: string, message: string, count: number) => void;
  /** A host-side failure reported to the guest (VirtioDeviceSpec.onHostError). */
  onHostError?: (device: string, message: string) => void;
  /** Give each device its command-line window too (announcement "second-window"). */
  cmdlineWindows?: boolean;
  /**
   * Where the devices placed "shared" run (MachineConfig.deviceThread): a
   * device thread of the set's own ("vm", the default), or the process's
   * (processDeviceThread).
   */
  deviceThread?: "vm" | "process";
}

/**
 * Reads the saved states of a VM's devices (VirtioSet.saveState, from JSON)
 * for `configs`, the devices they are restored into: one record per device,
 * in order, each of the device's kind and of a version this flint reads.
 * Throws VirtioSavedStateError with a one-line message and a stable code
 * (EVIRTIOSNAPVERSION, EVIRTIOSNAPFORMAT, EVIRTIOSNAPMISMATCH) otherwise.
 * The backends' parts are checked by the backends when the devices start.
 */
export function checkVirtioSavedStates(configs: readonly Pick<VirtioDeviceConfig, "kind">[], saved: unknown): VirtioDeviceSavedState[] {
  if (!Array.isArray(saved)) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", "Cannot restore virtio devices: their saved state must be an array, one record per device");
  if (saved.length !== configs.length) {
    throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `Cannot restore virtio devices: the snapshot has ${saved.length} devices, the configuration ${configs.length}`);
  }
  return configs.map((c, i) => checkVirtioDeviceSavedState(saved[i], c.kind, i));
}

/** The main thread's side of all virtio devices. */
export class VirtioSet {
  readonly devices: readonly VirtioDeviceHandle[];
  /** The device threads (devicePlacement): by default one for every device (the process's for those, with hooks.deviceThread "process"). */
  readonly threads: readonly DeviceThread[];
  /** Each device's kind, in the same order. */
  readonly kinds: readonly VirtioDeviceKind[];
  private readonly vm: VmFd | undefined;
  private readonly cmdlineWindows: boolean;

  /**
   * Builds every device's state and eventfds and registers the irqfds; nothing runs yet.
   * `restoreFrom` (checked records, one per device; see VirtioSet.restore) brings the
   * devices up from a snapshot instead of fresh.
   */
  constructor(configs: readonly VirtioDeviceConfig[], memory: MemoryDescriptor, vm: VmFd | undefined, hooks: VirtioSetHooks = {},
    restoreFrom?: readonly VirtioDeviceSavedState[]) {
    if (configs.length > MAX_VIRTIO_DEVICES) {
      throw new VirtioSetError(`Cannot create VM: ${configs.length} virtio devices requested, at most ${MAX_VIRTIO_DEVICES} fit`);
    }
    if (restoreFrom && restoreFrom.length !== configs.length) {
      throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `Cannot restore virtio devices: ${restoreFrom.length} records for ${configs.length} devices`);
    }
    const devices: VirtioDeviceHandle[] = [];
    const placement = devicePlacement(configs);
    const threads = Array.from({ length: placement.threads }, (_, t) =>
      t === placement.shared && hooks.deviceThread === "process" ? processDeviceThread() : new DeviceThread(`virtio device thread ${t}`));
    try {
      configs.forEach((c, i) => {
        const { mmioBase, gsi } = virtioSlot(i);
        devices.push(new VirtioDeviceHandle({
          name: `virtio-${c.kind}@0x${mmioBase.toString(16)}`,
          ...(c.backendModule ? { backendModule: c.backendModule } : { kind: c.kind }),
          backendOptions: c.options ?? {},
          memory, mmioBase, gsi, vm,
          thread: threads[placement.threadOf[i]!]!,
          onGuestFault: hooks.onGuestFault,
          onHostError: hooks.onHostError,
          onFailed: (device, reason) => hooks.onGuestFault?.(device, `device needs reset: ${reason}`, 1),
          ...(restoreFrom ? { restore: restoreFrom[i]! } : {}),
        }));
      });
    } catch (e) {
      for (const d of devices) void d.stop();
      throw e;
    }
    this.devices = devices;
    this.threads = threads;
    this.kinds = configs.map((c) => c.kind);
    this.vm = vm;
    this.cmdlineWindows = hooks.cmdlineWindows ?? false;
  }

  /**
   * The devices of a NEW VM (its own KVM VM fd `vm`, its own guest memory
   * holding the bytes the snapshot's memory held) brought up from `saved`
   * (what VirtioSet.saveState gave, through JSON), for `configs`: the
   * snapshot's configuration, where a device's options may differ where the
   * host differs (another TAP name, another vsock uds path; the same disk, or
   * a copy of it; rate limiters and the balloon target come from the
   * snapshot). `hooks` as for the snapshot's VM (the same announcement: the
   * guest's command line already names the windows).
   *
   * The records are checked here (checkVirtioSavedStates: nothing is created
   * when one is of another version or kind, or malformed). start() then
   * brings every device up as it was saved: registers as the driver left
   * them; if the driver had set DRIVER_OK, already active, its queues built
   * over guest memory at their saved positions and its backend restored,
   * without the driver writing DRIVER_OK again; the ioeventfds and irqfds
   * registered with `vm`. It rejects (nothing left running) when a backend
   * cannot be created or a record does not fit its device
   * (EVIRTIOSNAPMISMATCH, EVIRTIOSNAPFORMAT). The devices start quiesced:
   * restore the VM's own state (its interrupt controller) first, then
   * resume(), which lets them run and kicks each once (see resume()).
   */
  static restore(
    configs: readonly VirtioDeviceConfig[], memory: MemoryDescriptor, vm: VmFd | undefined, saved: unknown, hooks: VirtioSetHooks = {},
  ): VirtioSet {
    return new VirtioSet(configs, memory, vm, hooks, checkVirtioSavedStates(configs, saved));
  }

  /**
   * Every device's record for a snapshot (device-saved-state.ts), in
   * configuration order: JSON-serialisable, for VirtioSet.restore. Only
   * while the set is quiesced (quiesce() resolved, the VM's vCPUs paused):
   * rejects with VirtioSavedStateError EVIRTIONOTQUIESCED otherwise. Each
   * device's record is read on its device thread; the devices stay quiesced.
   */
  async saveState(): Promise<VirtioDeviceSavedState[]> {
    const busy = this.devices.find((d) => !d.quiesced);
    if (busy) throw new VirtioSavedStateError("EVIRTIONOTQUIESCED", `Cannot save virtio devices: ${busy.spec.name} is not quiesced (quiesce() first)`);
    const parts = await Promise.all(this.devices.map((d) => d.saveState()));
    return parts.map((p, i) => ({ version: VIRTIO_SAVED_STATE_VERSION, kind: this.kinds[i]!, ...p }));
  }

  /** The command-line parameters announcing every device in `window` (empty for "none" or no devices). */
  cmdlineParams(window: CmdlineWindow): string[] {
    if (window === "none") return [];
    if (window === "second-window" && !this.cmdlineWindows) {
      throw new VirtioSetError("Cannot announce virtio devices: the set was built without command-line windows");
    }
    return this.devices.map((_, i) => virtioCmdlineParam(i, window));
  }

  stats(): VirtioDeviceStats[] {
    return this.devices.map((d) => d.stats());
  }

  describe(): VirtioTransportDescriptor[] {
    return this.devices.map((d, i) => (this.cmdlineWindows ? { ...d.describe(), cmdlineBase: virtioSlot(i).cmdlineBase } : d.describe()));
  }

  /**
   * Starts every device thread (each once, for all its devices); if a device
   * fails to start, stops the others and rethrows.
   * With command-line windows, a kick written there also reaches the queue's
   * eventfd in the kernel (api.rst §4.60 KVM_IOEVENTFD: several addresses may
   * signal one eventfd), as fast as a kick through the device's own window.
   */
  async start(): Promise<void> {
    const results = await Promise.allSettled(this.devices.map((d) => d.start()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) {
      await this.stop();
      throw failed.reason;
    }
    const vm = this.vm;
    if (!vm || !this.cmdlineWindows) return;
    try {
      this.devices.forEach((d, i) => d.notifyFds.forEach((fd, q) => vm.ioeventfd({
        address: virtioSlot(i).cmdlineBase + VIRTIO_MMIO_QUEUE_NOTIFY, length: 4, fd, flags: KVM_IOEVENTFD_FLAG_DATAMATCH, datamatch: BigInt(q),
      })));
    } catch (e) {
      await this.stop();
      throw e;
    }
  }

  /**
   * Quiesces every device (VirtioDeviceHandle.quiesce): the one place where
   * the VM's devices are brought to rest, for a pause and, next, to read
   * their state for a snapshot. Resolves once every device thread answered.
   */
  async quiesce(): Promise<void> {
    await Promise.all(this.devices.map((d) => d.quiesce()));
  }

  /**
   * Lets every quiesced device run again; resolves once every device thread
   * answered. After a pause no artificial kick is needed: every kick the
   * guest made while its device was quiesced is still counted in the queue's
   * notify eventfd. After a restore (VirtioSet.restore) they are not: they
   * were counted in the old VM's eventfds. So the first resume of a restored
   * device kicks it once, every queue as if the guest had just kicked it
   * (Firecracker's resume_vm does the same for every device,
   * device_manager's kick_virtio_devices; device-runner.ts kickAfterRestore).
   */
  async resume(): Promise<void> {
    await Promise.all(this.devices.map((d) => d.resume()));
  }

  /** Stops every device (backends flushed) and closes their fds. */
  async stop(): Promise<void> {
    await Promise.all(this.devices.map((d) => d.stop()));
  }
}

/**
 * A device's command-line window: the registers of its own window, except
 * that DeviceID reads 0 once a driver has started on the device (status not
 * 0). A device ID of 0 marks a placeholder with no function (virtio 1.2
 * §4.2.2) and Linux's virtio_mmio_probe ends quietly with -ENODEV on it, so a
 * kernel with ACPI, which probes the DSDT's window first, skips this one
 * without a line in its log; a kernel without ACPI probes only this one, finds
 * status 0 and the real ID, and drives the device here.
 */
class CmdlineWindowRegisters implements BusDevice {
  constructor(private readonly transport: VirtioMmioTransport) {}

  read(offset: number, data: Uint8Array): void {
    if (offset === VIRTIO_MMIO_DEVICE_ID && data.length === 4 && this.transport.state.status !== 0) {
      data.fill(0);
      return;
    }
    this.transport.read(offset, data);
  }

  write(offset: number, data: Uint8Array): void {
    this.transport.write(offset, data);
  }
}

/** Puts a register file for each device (and its command-line window, if any) on a vCPU thread's MMIO bus. */
export function insertVirtioTransports(mmio: Bus, descriptors: readonly VirtioTransportDescriptor[], ctx: Pick<DeviceContext, "guestFault">): void {
  for (const d of descriptors) {
    const transport = new VirtioMmioTransport(d.state, d.name, ctx);
    mmio.insert(d.mmioBase, d.mmioSize, transport);
    if (d.cmdlineBase !== undefined) mmio.insert(d.cmdlineBase, d.mmioSize, new CmdlineWindowRegisters(transport));
  }
}
