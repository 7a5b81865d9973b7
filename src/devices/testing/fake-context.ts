/**
 * A DeviceContext for tests: records every IRQ line change, exit request and
 * guest fault instead of acting on them.
 */
import type { DeviceContext, VmExitReason } from "../bus.js";

export class FakeContext implements DeviceContext {
  /** Every setIrqLine call, in order. */
  readonly irqCalls: { gsi: number; level: 0 | 1 }[] = [];
  readonly exits: VmExitReason[] = [];
  readonly faults: string[] = [];
  private readonly levels = new Map<number, 0 | 1>();

  setIrqLine(gsi: number, level: 0 | 1): void {
    this.irqCalls.push({ gsi, level });
    this.levels.set(gsi, level);
  }

  requestExit(reason: VmExitReason): void {
    this.exits.push(reason);
  }

  guestFault(device: string, message: string): void {
    this.faults.push(`${device}: ${message}`);
  }

  /** The level last driven on `gsi` (0 if never driven). */
  level(gsi: number): 0 | 1 {
    return this.levels.get(gsi) ?? 0;
  }
}

/** Byte-wide port I/O on a BusDevice, as a guest's inb/outb would do it. */
export interface FakePorts {
  inb(offset: number): number;
  outb(offset: number, value: number): void;
}

export function portsOf(device: { read(o: number, d: Uint8Array): void; write(o: number, d: Uint8Array): void }): FakePorts {
  return {
    inb(offset) {
      const b = new Uint8Array(1);
      device.read(offset, b);
      return b[0]!;
    },
    outb(offset, value) {
      device.write(offset, Uint8Array.of(value & 0xff));
    },
  };
}
