/**
 * The debug-exit device (opt-in, for benchmarks and tests). Guest programs
 * mark "start" with a write to DEBUG_MARK_PORT and end the VM with a write of
 * a status byte to DEBUG_EXIT_PORT, like QEMU's isa-debug-exit. Both writes
 * record CLOCK_MONOTONIC, so a benchmark can time guest work from inside the
 * VM exactly as a C monitor would.
 */
import type { BusDevice, DeviceContext } from "../bus.js";
import { sys } from "../../sys/native.js";

/** BigInt64 slots of the shared state. */
const MARK_NS = 0;
const EXIT_NS = 1;
const STATUS = 2;
const SLOTS = 3;

/** What the guest reported through the device. */
export interface DebugExitReading {
  /** ns (CLOCK_MONOTONIC) of the first mark write. */
  markNs?: bigint;
  /** ns of the exit write. */
  exitNs?: bigint;
  /** The byte written to the exit port. */
  status?: number;
}

export function createDebugExitShared(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(SLOTS * 8);
  new BigInt64Array(sab).fill(-1n);
  return sab;
}

export function debugExitReading(shared: SharedArrayBuffer): DebugExitReading {
  const a = new BigInt64Array(shared);
  const get = (i: number) => { const v = Atomics.load(a, i); return v < 0n ? undefined : v; };
  const status = get(STATUS);
  return { markNs: get(MARK_NS), exitNs: get(EXIT_NS), status: status === undefined ? undefined : Number(status) };
}

/** The mark port: any write records the first mark time. */
export class DebugMark implements BusDevice {
  private readonly a: BigInt64Array;
  constructor(shared: SharedArrayBuffer) {
    this.a = new BigInt64Array(shared);
  }
  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }
  write(): void {
    Atomics.compareExchange(this.a, MARK_NS, -1n, sys.monotonicNs());
  }
}

/** The exit port: a write records the time and status and ends the VM. */
export class DebugExit implements BusDevice {
  private readonly a: BigInt64Array;
  constructor(shared: SharedArrayBuffer, private readonly ctx: DeviceContext) {
    this.a = new BigInt64Array(shared);
  }
  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }
  write(_offset: number, data: Uint8Array): void {
    if (Atomics.compareExchange(this.a, EXIT_NS, -1n, sys.monotonicNs()) !== -1n) return;
    Atomics.store(this.a, STATUS, BigInt(data[0] ?? 0));
    this.ctx.requestExit({ kind: "poweroff" });
  }
}
