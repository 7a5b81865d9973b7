/**
 * The boot-timer byte at BOOT_TIMER_ADDR: a guest's init writes anything
 * there once it is up, and the VMM records when (CLOCK_MONOTONIC ns) for
 * boot-time benchmarks. Only the first write counts; reads return 0.
 *
 *   mmio.insert(BOOT_TIMER_ADDR, BOOT_TIMER_SIZE, new BootTimer(shared));
 *   bootTimerReading(shared)   // main thread: bigint ns, or undefined
 *   await whenBooted(shared)   // main thread: resolves at the first write
 */
import type { BusDevice } from "../bus.js";
import { waitForChange } from "../shared-lock.js";
import { sys } from "../../sys/native.js";

/** Int32 slot: NOT_YET -> RECORDING (one writer won) -> RECORDED (timestamp valid). */
const STATE = 0;
const NOT_YET = 0;
const RECORDING = 1;
const RECORDED = 2;
/** The BigInt64 slot (byte offset 8) holding the timestamp. */
const TIMESTAMP = 1;
const SHARED_BYTES = 2 * BigInt64Array.BYTES_PER_ELEMENT;

/** Shared state for one boot timer: no timestamp yet. */
export function createBootTimerShared(): SharedArrayBuffer {
  return new SharedArrayBuffer(SHARED_BYTES);
}

/** The MMIO device; every vCPU builds one over the same buffer. */
export class BootTimer implements BusDevice {
  private readonly state: Int32Array;
  private readonly stamp: BigInt64Array;

  /** `now` is the clock (CLOCK_MONOTONIC ns); tests may pass their own. */
  constructor(shared: SharedArrayBuffer, private readonly now: () => bigint = () => sys.monotonicNs()) {
    this.state = new Int32Array(shared, 0, 1);
    this.stamp = new BigInt64Array(shared, 0, 2);
  }

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  write(_offset: number, _data: Uint8Array): void {
    // Whoever moves NOT_YET -> RECORDING first owns the timestamp; later writes are no-ops.
    if (Atomics.compareExchange(this.state, STATE, NOT_YET, RECORDING) !== NOT_YET) return;
    const t = this.now();
    Atomics.store(this.stamp, TIMESTAMP, t);
    Atomics.store(this.state, STATE, RECORDED);
    Atomics.notify(this.state, STATE);
  }
}

/** CLOCK_MONOTONIC ns of the guest's first write, or undefined if it has not written. */
export function bootTimerReading(shared: SharedArrayBuffer): bigint | undefined {
  if (Atomics.load(new Int32Array(shared, 0, 1), STATE) !== RECORDED) return undefined;
  return Atomics.load(new BigInt64Array(shared, 0, 2), TIMESTAMP);
}

/** Resolves with the boot timestamp once the guest writes (never blocks the event loop). */
export async function whenBooted(shared: SharedArrayBuffer): Promise<bigint> {
  const state = new Int32Array(shared, 0, 1);
  for (;;) {
    const s = Atomics.load(state, STATE);
    if (s === RECORDED) return bootTimerReading(shared)!;
    await waitForChange(state, STATE, s);
  }
}
