/**
 * A tiny mutex over one Int32 of a SharedArrayBuffer, for device state shared
 * between vCPU worker threads and the main thread. Critical sections are a
 * few register updates long, so waiters spin briefly and then sleep on
 * Atomics.wait (allowed in workers; the main thread only spins, which is fine
 * for sections this short).
 */
import { isMainThread } from "node:worker_threads";

const UNLOCKED = 0;
const LOCKED = 1;
const CONTENDED = 2;

export class SpinLock {
  private readonly cell: Int32Array;
  private readonly index: number;
  private readonly canWait: boolean;

  /** `cell[index]` is the lock word; it must start at 0. */
  constructor(cell: Int32Array, index = 0) {
    this.cell = cell;
    this.index = index;
    // Never block the main thread's event loop: it only spins.
    this.canWait = !isMainThread;
  }

  lock(): void {
    const c = this.cell, i = this.index;
    if (Atomics.compareExchange(c, i, UNLOCKED, LOCKED) === UNLOCKED) return;
    for (let spins = 0; ; spins++) {
      if (Atomics.exchange(c, i, CONTENDED) === UNLOCKED) return;
      if (this.canWait && spins > 100) Atomics.wait(c, i, CONTENDED, 1);
    }
  }

  unlock(): void {
    if (Atomics.exchange(this.cell, this.index, UNLOCKED) === CONTENDED) Atomics.notify(this.cell, this.index, 1);
  }

  /** Runs `fn` with the lock held. */
  with<T>(fn: () => T): T {
    this.lock();
    try {
      return fn();
    } finally {
      this.unlock();
    }
  }
}

type WaitAsyncResult =
  | { async: false; value: "not-equal" | "timed-out" }
  | { async: true; value: Promise<"ok" | "timed-out"> };
// Atomics.waitAsync is in Node 20 (V8) but not in the ES2022 lib typings flint compiles against.
const atomicsWaitAsync = (Atomics as unknown as {
  waitAsync(cell: Int32Array, index: number, value: number, timeoutMs?: number): WaitAsyncResult;
}).waitAsync;

/**
 * Resolves once `cell[index]` is no longer `expected` — at once if it already
 * differs, else on the next Atomics.notify of that cell, or after `timeoutMs`
 * when given (the caller looks again). Never blocks, so the main thread uses
 * it to sleep until a vCPU worker signals (no polling).
 */
export async function waitForChange(cell: Int32Array, index: number, expected: number, timeoutMs?: number): Promise<void> {
  const w = atomicsWaitAsync(cell, index, expected, timeoutMs);
  if (w.async) await w.value;
}
