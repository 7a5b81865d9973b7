/**
 * The legacy devices of a flint microVM and where they sit: COM1 16550 UART
 * (0x3f8, IRQ 4), i8042 (0x60/0x64: reset), ACPI sleep/reset registers
 * (0x600..0x602), the boot-timer byte (MMIO) and the virtio-mmio register
 * files (their device threads are VirtioSet's). `createDeviceSet` makes the
 * shared state on the main thread; `buildBuses` builds each vCPU thread's
 * device objects over it.
 */
import { Writable } from "node:stream";
import {
  ACPI_SLEEP_CONTROL_PORT, BOOT_TIMER_ADDR, BOOT_TIMER_SIZE, COM1_IRQ, COM1_PORT, DEBUG_EXIT_PORT, DEBUG_MARK_PORT,
  I8042_COMMAND_PORT, I8042_DATA_PORT,
} from "../arch/x86_64/layout.js";
import { Bus, type DeviceContext } from "../devices/bus.js";
import { AcpiPm, ACPI_PM_PORT_COUNT } from "../devices/legacy/acpi-pm.js";
import { BootTimer, bootTimerReading, createBootTimerShared } from "../devices/legacy/boot-timer.js";
import { DebugExit, DebugMark, createDebugExitShared, debugExitReading, type DebugExitReading } from "../devices/legacy/debug-exit.js";
import { I8042, createI8042Shared } from "../devices/legacy/i8042.js";
import { Serial, SERIAL_PORT_COUNT } from "../devices/legacy/serial.js";
import { SerialHost } from "../devices/legacy/serial-host.js";
import { createSerialShared, type SerialSavedState } from "../devices/legacy/serial-state.js";
import { insertVirtioTransports, type VirtioTransportDescriptor } from "../devices/virtio/virtio-set.js";

/** Shared state of the legacy devices; transferable to vCPU threads. */
export interface DeviceSetDescriptor {
  serial: SharedArrayBuffer;
  i8042: SharedArrayBuffer;
  bootTimer: SharedArrayBuffer;
  /** Present when the opt-in debug-exit device is on. */
  debugExit?: SharedArrayBuffer;
  /** The virtio-mmio devices' register state (their device threads run elsewhere). */
  virtio?: VirtioTransportDescriptor[];
}

/** The main thread's side of the device set. */
export interface HostDevices {
  readonly descriptor: DeviceSetDescriptor;
  /** Starts the console pump (guest output to `output`, default: discarded). */
  start(ctx: DeviceContext, output?: NodeJS.WritableStream): void;
  /**
   * The VM is stopping: vCPUs blocked on a full console ring drop their byte
   * instead of waiting for a stalled output (SerialHost.releaseWriters).
   */
  releaseConsole(): void;
  /**
   * Flushes remaining guest output and closes the console. The flush is
   * abandoned when `giveUp` settles (an output that stopped taking bytes);
   * without it, it waits as long as the output needs.
   */
  stop(giveUp?: Promise<void>): Promise<void>;
  /** Resolves once the console output has taken every byte the guest wrote so far (after start()). */
  flushConsole(): Promise<void>;
  /** The UART's saved state (after start(), vCPUs paused, console flushed). */
  saveSerial(): SerialSavedState;
  /** Puts back a saved UART state (after start(), before any vCPU runs); throws SerialError EBADSTATE for a record of another kind or version. */
  restoreSerial(saved: SerialSavedState): void;
  /** Guest console bytes dropped: written after the release, or left unflushed at a given-up stop. */
  consoleDroppedBytes(): number;
  /** CLOCK_MONOTONIC ns of the guest's first boot-timer write. */
  bootTimeNs(): bigint | undefined;
  consoleInput(bytes: Uint8Array): number;
  consoleWritable(): Promise<void>;
  /** What the guest reported through the debug-exit device, if it is on. */
  debugExit(): DebugExitReading | undefined;
}

/** A Writable that drops everything (for VMs without a console). */
function sink(): NodeJS.WritableStream {
  return new Writable({ write: (_c, _e, cb) => cb() });
}

export function createDeviceSet(opts: { debugExit?: boolean; virtio?: VirtioTransportDescriptor[] } = {}): HostDevices {
  const descriptor: DeviceSetDescriptor = {
    serial: createSerialShared(),
    i8042: createI8042Shared(),
    bootTimer: createBootTimerShared(),
    ...(opts.debugExit ? { debugExit: createDebugExitShared() } : {}),
    ...(opts.virtio?.length ? { virtio: opts.virtio } : {}),
  };
  let serial: SerialHost | undefined;
  let unflushed = 0;
  let released = false;
  const started = (): SerialHost => {
    if (!serial) throw new Error("the device set has not started");
    return serial;
  };
  return {
    descriptor,
    start(ctx, output) {
      serial = new SerialHost(descriptor.serial, COM1_IRQ, ctx, output ?? sink());
      if (released) serial.releaseWriters();
    },
    releaseConsole() {
      released = true;
      serial?.releaseWriters();
    },
    async stop(giveUp) {
      if (!serial) return;
      const s = serial;
      let flushed = false;
      await Promise.race([s.flush().then(() => (flushed = true)), ...(giveUp ? [giveUp] : [])]);
      if (!flushed) unflushed = s.pendingBytes;
      await s.close();
    },
    flushConsole: () => serial?.flush() ?? Promise.resolve(),
    saveSerial: () => started().save(),
    restoreSerial: (saved) => started().restore(saved),
    consoleDroppedBytes: () => (serial?.droppedBytes ?? 0) + unflushed,
    bootTimeNs: () => bootTimerReading(descriptor.bootTimer),
    consoleInput: (bytes) => serial?.input(bytes) ?? 0,
    consoleWritable: () => serial?.inputRoom() ?? Promise.resolve(),
    debugExit: () => (descriptor.debugExit ? debugExitReading(descriptor.debugExit) : undefined),
  };
}

/** Builds one vCPU thread's port-I/O and MMIO buses over the shared device state. */
export function buildBuses(desc: DeviceSetDescriptor, ctx: DeviceContext): { pio: Bus; mmio: Bus } {
  const pio = new Bus();
  const mmio = new Bus();
  pio.insert(COM1_PORT, SERIAL_PORT_COUNT, new Serial(desc.serial, COM1_IRQ, ctx));
  const i8042 = new I8042(desc.i8042, ctx);
  pio.insert(I8042_DATA_PORT, 1, i8042.dataPort);
  pio.insert(I8042_COMMAND_PORT, 1, i8042.commandPort);
  pio.insert(ACPI_SLEEP_CONTROL_PORT, ACPI_PM_PORT_COUNT, new AcpiPm(ctx));
  mmio.insert(BOOT_TIMER_ADDR, BOOT_TIMER_SIZE, new BootTimer(desc.bootTimer));
  if (desc.debugExit) {
    pio.insert(DEBUG_MARK_PORT, 1, new DebugMark(desc.debugExit));
    pio.insert(DEBUG_EXIT_PORT, 1, new DebugExit(desc.debugExit, ctx));
  }
  if (desc.virtio) insertVirtioTransports(mmio, desc.virtio, ctx);
  return { pio, mmio };
}
