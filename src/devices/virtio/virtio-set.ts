/**
 * The virtio-mmio devices of a flint microVM: where each sits, how the guest
 * learns of it, and their device threads.
 *
 * Device i (in configuration order) gets the MMIO window
 * VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE and GSI FIRST_DEVICE_IRQ + i.
 *
 * Announcement — each device exactly once (virtioAnnouncement):
 *   - with ACPI: a DSDT Device object, _HID "LNRO0005" (mmioDeviceAml);
 *   - without ACPI (MP table only): `virtio_mmio.device=4K@0x<base>:<gsi>` on
 *     the kernel command line (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
 * Measured with flint's 6.1 guest kernel in the nested harness
 * (virtio-set.e2e.test.ts keeps the first and last cases as tests):
 *   - ACPI + command line only: the device registers (virtio0) but the
 *     driver's probe fails with -EINVAL: on flint's hardware-reduced ACPI
 *     platform there are no legacy ISA IRQs, and a command-line device's raw
 *     IRQ number was never mapped through acpi_register_gsi, so request_irq
 *     fails. The command line alone does not work with ACPI.
 *   - ACPI + DSDT + command line: not probed twice, but the second platform
 *     device fails ("can't request region ... probe of virtio-mmio.0 failed
 *     with error -16"): one working device and an error in the log.
 *   - ACPI + DSDT only, and no ACPI + command line only: the device probes
 *     once, its driver binds, and it works (/dev/hwrng reads).
 */
import { KiB, IOAPIC_START, FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE } from "../../arch/x86_64/layout.js";
import type { Aml } from "../../arch/x86_64/acpi/aml.js";
import { mmioDeviceAml } from "../../arch/x86_64/acpi/dsdt.js";
import type { VmFd } from "../../kvm/vm.js";
import type { MemoryDescriptor } from "../../memory/guest-memory.js";
import type { Bus, DeviceContext } from "../bus.js";
import { VirtioDeviceHandle, type VirtioDeviceStats, type VirtioTransportDescriptor } from "./device-thread.js";
import { VirtioMmioTransport } from "./mmio.js";

export type { VirtioDeviceStats, VirtioTransportDescriptor } from "./device-thread.js";

/** The device types flint offers. */
export type VirtioDeviceKind = "block" | "net" | "vsock" | "rng" | "balloon";

/** One device of MachineConfig.virtioDevices. */
export interface VirtioDeviceConfig {
  kind: VirtioDeviceKind;
  /** JSON-serialisable options for the kind's backend (its createBackend). */
  options: unknown;
  /** Load the backend from this module instead of the kind's (tests: the echo backend). */
  backendModule?: URL;
}

/** Each kind's backend module, loaded in its device thread. */
export const VIRTIO_BACKEND_MODULES: Readonly<Record<VirtioDeviceKind, URL>> = {
  block: new URL("./block.js", import.meta.url),
  net: new URL("./net.js", import.meta.url),
  vsock: new URL("./vsock/index.js", import.meta.url),
  rng: new URL("./rng.js", import.meta.url),
  balloon: new URL("./balloon.js", import.meta.url),
};

/** Most virtio devices a VM can have: one GSI each, and windows below the IOAPIC. */
export const MAX_VIRTIO_DEVICES = Math.min(
  LAST_DEVICE_IRQ - FIRST_DEVICE_IRQ + 1,
  Math.floor((IOAPIC_START - VIRTIO_MMIO_BASE) / VIRTIO_MMIO_SIZE),
);

/** Bad virtio configuration; `code` is stable. */
export class VirtioSetError extends Error {
  readonly code = "EVIRTIOCOUNT";
  constructor(message: string) {
    super(message);
    this.name = "VirtioSetError";
  }
}

/** Where device `index` lives. */
export function virtioSlot(index: number): { mmioBase: number; gsi: number } {
  return { mmioBase: VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_SIZE, gsi: FIRST_DEVICE_IRQ + index };
}

/** The kernel command-line parameter announcing the device at `index`. */
export function virtioCmdlineParam(index: number): string {
  const { mmioBase, gsi } = virtioSlot(index);
  return `virtio_mmio.device=${VIRTIO_MMIO_SIZE / KiB}K@0x${mmioBase.toString(16)}:${gsi}`;
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

/** How devices are announced: "auto" picks the DSDT with ACPI and the command line without. */
export type VirtioAnnouncement = "auto" | "cmdline" | "dsdt" | "cmdline+dsdt";

/** Where to announce devices for a guest with or without ACPI tables. */
export function virtioAnnouncement(how: VirtioAnnouncement, acpi: boolean): { cmdline: boolean; dsdt: boolean } {
  switch (how) {
    case "auto": return { cmdline: !acpi, dsdt: acpi };
    case "cmdline": return { cmdline: true, dsdt: false };
    case "dsdt": return { cmdline: false, dsdt: acpi };
    case "cmdline+dsdt": return { cmdline: true, dsdt: acpi };
  }
}

/** What the set reports to the machine. */
export interface VirtioSetHooks {
  /** A guest fault, or a summary standing for `count` of them (VirtioDeviceSpec.onGuestFault). */
  onGuestFault?: (device: string, message: string, count: number) => void;
  /** A host-side failure reported to the guest (VirtioDeviceSpec.onHostError). */
  onHostError?: (device: string, message: string) => void;
}

/** The main thread's side of all virtio devices. */
export class VirtioSet {
  readonly devices: readonly VirtioDeviceHandle[];
  /** Each device's kind, in the same order. */
  readonly kinds: readonly VirtioDeviceKind[];

  /** Builds every device's state and eventfds and registers the irqfds; nothing runs yet. */
  constructor(configs: readonly VirtioDeviceConfig[], memory: MemoryDescriptor, vm: VmFd | undefined, hooks: VirtioSetHooks = {}) {
    if (configs.length > MAX_VIRTIO_DEVICES) {
      throw new VirtioSetError(`Cannot create VM: ${configs.length} virtio devices requested, at most ${MAX_VIRTIO_DEVICES} fit`);
    }
    const devices: VirtioDeviceHandle[] = [];
    try {
      configs.forEach((c, i) => {
        const { mmioBase, gsi } = virtioSlot(i);
        devices.push(new VirtioDeviceHandle({
          name: `virtio-${c.kind}@0x${mmioBase.toString(16)}`,
          backendModule: c.backendModule ?? VIRTIO_BACKEND_MODULES[c.kind],
          backendOptions: c.options ?? {},
          memory, mmioBase, gsi, vm,
          onGuestFault: hooks.onGuestFault,
          onHostError: hooks.onHostError,
          onFailed: (device, reason) => hooks.onGuestFault?.(device, `device needs reset: ${reason}`, 1),
        }));
      });
    } catch (e) {
      for (const d of devices) void d.stop();
      throw e;
    }
    this.devices = devices;
    this.kinds = configs.map((c) => c.kind);
  }

  /** The command-line parameters announcing every device (empty when there are none). */
  cmdlineParams(): string[] {
    return this.devices.map((_, i) => virtioCmdlineParam(i));
  }

  stats(): VirtioDeviceStats[] {
    return this.devices.map((d) => d.stats());
  }

  describe(): VirtioTransportDescriptor[] {
    return this.devices.map((d) => d.describe());
  }

  /** Starts every device thread; if one fails, stops the others and rethrows. */
  async start(): Promise<void> {
    const results = await Promise.allSettled(this.devices.map((d) => d.start()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) {
      await this.stop();
      throw failed.reason;
    }
  }

  /** Stops every device (backends flushed) and closes their fds. */
  async stop(): Promise<void> {
    await Promise.all(this.devices.map((d) => d.stop()));
  }
}

/** Puts a register file for each device on a vCPU thread's MMIO bus. */
export function insertVirtioTransports(mmio: Bus, descriptors: readonly VirtioTransportDescriptor[], ctx: Pick<DeviceContext, "guestFault">): void {
  for (const d of descriptors) mmio.insert(d.mmioBase, d.mmioSize, new VirtioMmioTransport(d.state, d.name, ctx));
}
