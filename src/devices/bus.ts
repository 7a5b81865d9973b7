/**
 * Buses route a vCPU's port-I/O or MMIO exit to the device that owns the
 * address. A device sees offsets relative to its own base.
 *
 * Threading model: every vCPU runs in its own worker thread and handles its
 * own exits (hot exits never leave the vCPU thread). Each worker builds its
 * own device objects from a transferable description; a device whose state
 * must be shared between vCPUs and the main thread keeps it in a
 * SharedArrayBuffer, guarded by a SpinLock (src/devices/shared-lock.ts).
 * Devices act on the world only through their DeviceContext.
 */

/** What a device may do besides answering reads and writes. */
export interface DeviceContext {
  /** Drives an interrupt line (GSI) of the in-kernel irqchip: level 1 = asserted. */
  setIrqLine(gsi: number, level: 0 | 1): void;
  /** Asks the VMM to end the VM (all vCPUs stop). */
  requestExit(reason: VmExitReason): void;
  /** Records a guest-caused fault (counted and logged, never fatal). */
  guestFault(device: string, message: string): void;
}

/** Why a VM ended, as seen by the user. */
export type VmExitReason =
  | { kind: "poweroff" }
  | {
      kind: "reset";
      source: "i8042" | "acpi" | "triple-fault" | "kvm";
      /** Which vCPU and where, for a triple fault (e.g. "vCPU 1: rip 0x… rsp 0x… cr2 0x… cr3 0x…"). */
      detail?: string;
    }
  | { kind: "error"; message: string };

/** A device on a bus. `data.length` is the access size (1, 2, 4 or 8). */
export interface BusDevice {
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

interface Range {
  base: number;
  size: number;
  device: BusDevice;
}

/** Why a bus could not take a device. */
export class BusError extends Error {
  readonly code = "EBUSOVERLAP";
  constructor(message: string) {
    super(message);
    this.name = "BusError";
  }
}

/** An address space (port I/O or MMIO) of non-overlapping device ranges. */
export class Bus {
  private ranges: Range[] = [];
  private last: Range | undefined;

  /** Adds `device` at [base, base+size); throws BusError if it overlaps another. */
  insert(base: number, size: number, device: BusDevice): void {
    for (const r of this.ranges) {
      if (base < r.base + r.size && r.base < base + size) {
        throw new BusError(`bus range 0x${base.toString(16)}+0x${size.toString(16)} overlaps 0x${r.base.toString(16)}`);
      }
    }
    this.ranges.push({ base, size, device });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  private find(address: number): Range | undefined {
    const l = this.last;
    if (l && address >= l.base && address < l.base + l.size) return l;
    for (const r of this.ranges) {
      if (address >= r.base && address < r.base + r.size) {
        this.last = r;
        return r;
      }
    }
    return undefined;
  }

  /** Dispatches a read; returns false when no device owns `address` (data left as is). */
  read(address: number, data: Uint8Array): boolean {
    const r = this.find(address);
    if (!r) return false;
    r.device.read(address - r.base, data);
    return true;
  }

  /** Dispatches a write; returns false when no device owns `address`. */
  write(address: number, data: Uint8Array): boolean {
    const r = this.find(address);
    if (!r) return false;
    r.device.write(address - r.base, data);
    return true;
  }
}
