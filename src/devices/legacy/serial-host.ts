/**
 * The host (main-thread) end of a 16550A: drains guest output from the TX ring
 * to a writable stream and feeds guest input into the RX ring.
 *
 * It sleeps on Atomics.waitAsync until a vCPU writes a byte (no timers, no
 * polling), writes what it finds to `output`, and when `output.write()`
 * returns false waits for 'drain' before taking more. While it waits the ring
 * fills and the guest's THR writes block, so a slow terminal slows the guest
 * instead of losing output. Draining makes room, which raises THRE; the host
 * then re-evaluates the interrupt line under the device lock.
 */
import type { DeviceContext } from "../bus.js";
import { waitForChange } from "../shared-lock.js";
import { SerialState, type SerialSavedState } from "./serial-state.js";

interface FlushWaiter {
  /** TX head when flush() was called: resolved once the tail has passed it. */
  target: number;
  resolve: () => void;
}

/** Drives one serial port's byte streams from the main thread. */
export class SerialHost {
  private readonly state: SerialState;
  private closed = false;
  private outputBroken = false;
  private flushWaiters: FlushWaiter[] = [];
  /** output.write() returned false and 'drain' has not come yet. */
  private waitingForDrain = false;
  /** Settles when `output` has finished (or failed) writing the last chunk handed to it. */
  private lastWrite: Promise<void> = Promise.resolve();
  /** Bytes handed to `output.write()` whose callback has not come yet. */
  private inFlightBytes = 0;
  /** Ends a wait for 'drain' early (close() on a stuck output). */
  private stopWaiting: (() => void) | undefined;
  private readonly pump: Promise<void>;

  /**
   * Starts draining at once. `ctx` is the main thread's DeviceContext (its
   * setIrqLine is used when draining raises THRE or input raises RDA).
   */
  constructor(
    shared: SharedArrayBuffer,
    irq: number,
    private readonly ctx: DeviceContext,
    private readonly output: NodeJS.WritableStream,
  ) {
    this.state = new SerialState(shared, irq, ctx);
    output.on("error", () => {
      // A dead terminal (EPIPE...) must not wedge the guest: discard from now on.
      this.outputBroken = true;
    });
    this.pump = this.run();
  }

  /**
   * Pushes guest-bound bytes into the RX ring and raises the received-data
   * interrupt if the guest enabled it. Returns how many bytes fit (possibly
   * fewer than given, 0 when the ring is full or the port is closed); wait on
   * inputRoom() before offering the rest.
   */
  input(bytes: Uint8Array): number {
    if (this.closed || bytes.length === 0) return 0;
    const st = this.state;
    return this.locked(() => st.rxPush(bytes), 0);
  }

  /** Resolves once the RX ring has room for at least one byte (or the port closed). */
  async inputRoom(): Promise<void> {
    const [cell, index] = this.state.waitCell("rxTail");
    for (;;) {
      const tail = Atomics.load(cell, index); // read before checking, so no pop is missed
      if (this.closed || this.state.rxFree() > 0) return;
      await waitForChange(cell, index, tail);
    }
  }

  /**
   * Feeds a readable (stdin) into the guest, pausing it while the RX ring is
   * full so that no keystroke is dropped. Returns a function that detaches it.
   */
  connectInput(input: NodeJS.ReadableStream): () => void {
    const queue: Uint8Array[] = [];
    let feeding = false;
    let paused = false;
    let detached = false;
    const feed = async (): Promise<void> => {
      feeding = true;
      while (queue.length > 0 && !this.closed && !detached) {
        const bytes = queue[0]!;
        const n = this.input(bytes);
        if (n === bytes.length) {
          queue.shift();
          continue;
        }
        queue[0] = bytes.subarray(n);
        if (!paused) {
          paused = true;
          input.pause();
        }
        await this.inputRoom();
      }
      feeding = false;
      if (paused && !this.closed && !detached) {
        paused = false;
        input.resume();
      }
    };
    const onData = (chunk: Buffer | string): void => {
      queue.push(typeof chunk === "string" ? Buffer.from(chunk) : chunk);
      if (!feeding) void feed();
    };
    input.on("data", onData);
    return () => {
      detached = true;
      input.off("data", onData);
    };
  }

  /**
   * Resolves when every byte the guest wrote before this call has been
   * written by `output` (at VM exit, so the last lines show). An output that
   * never completes a write keeps it pending: race it with a timeout, then close().
   */
  async flush(): Promise<void> {
    if (this.closed) return;
    const target = this.state.txHead();
    if (target !== this.state.txTail() || this.waitingForDrain) {
      await new Promise<void>((resolve) => this.flushWaiters.push({ target, resolve }));
    }
    // write() returning true only means "buffered": wait until the last chunk was really written.
    if (!this.closed) await this.lastWrite;
  }

  /** Guest bytes not yet written by `output`: still in the ring, or handed to it and not completed. */
  get pendingBytes(): number {
    return this.state.txUsed() + this.inFlightBytes;
  }

  /** Guest bytes lost because no one could take them (port closed, or written from the main thread). */
  get droppedBytes(): number {
    return this.state.txDropped();
  }

  /**
   * The VM is stopping: a vCPU blocked on a full ring, or one that finds it
   * full from now on, drops its byte (counted in droppedBytes) instead of
   * waiting for `output`. Draining goes on, so flush() still delivers what
   * the ring holds if `output` moves. Until this is called (or close()), a
   * stalled output stalls the guest's writers and loses nothing.
   */
  releaseWriters(): void {
    this.state.releaseWriters();
  }

  /**
   * Stops draining and releases any vCPU blocked on a full ring (its byte is
   * dropped). Call flush() first to keep the last output.
   */
  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.state.close();
      this.stopWaiting?.();
    }
    return this.pump;
  }

  /** The device's saved state; call with vCPUs paused and after flush(). */
  save(): SerialSavedState {
    const st = this.state;
    return st.lock.with(() => st.save());
  }

  /** Restores registers and pending input saved by save(); vCPUs must be paused. */
  restore(saved: SerialSavedState): void {
    const st = this.state;
    st.lock.with(() => st.restore(saved));
  }

  private async run(): Promise<void> {
    const st = this.state;
    const [cell, index] = st.waitCell("txHead");
    while (!this.closed) {
      const head = st.txHead();
      const tail = st.txTail();
      if (head === tail) {
        this.settleFlushes(tail);
        await waitForChange(cell, index, head);
        continue;
      }
      const chunk = st.txPeek(head, tail);
      // The bytes now live in `chunk`: free the ring, wake blocked writers, raise THRE.
      this.locked(() => st.txConsume(chunk.length), undefined);
      await this.write(chunk);
      this.settleFlushes(st.txTail());
    }
    for (const w of this.flushWaiters) w.resolve();
    this.flushWaiters = [];
  }

  /** Writes a chunk, waiting for 'drain' (or the stream's end) when it applies backpressure. */
  private async write(chunk: Buffer): Promise<void> {
    if (this.outputBroken) return;
    let resolveWritten!: () => void;
    this.lastWrite = new Promise<void>((resolve) => (resolveWritten = resolve));
    this.inFlightBytes += chunk.length;
    let done = false;
    const written = (): void => {
      if (done) return;
      done = true;
      this.inFlightBytes -= chunk.length;
      resolveWritten();
    };
    let ok: boolean;
    try {
      ok = this.output.write(chunk, () => written());
    } catch {
      this.outputBroken = true;
      written();
      return;
    }
    if (ok) return;
    this.waitingForDrain = true;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        this.output.off("drain", done);
        this.output.off("close", done);
        this.output.off("error", done);
        this.stopWaiting = undefined;
        resolve();
      };
      this.output.on("drain", done);
      this.output.on("close", done);
      this.output.on("error", done);
      this.stopWaiting = done;
    });
    this.waitingForDrain = false;
  }

  private settleFlushes(tail: number): void {
    if (this.flushWaiters.length === 0 || this.waitingForDrain) return;
    this.flushWaiters = this.flushWaiters.filter((w) => {
      if (((tail - w.target) | 0) < 0) return true;
      w.resolve();
      return false;
    });
  }

  /** Runs `fn` under the device lock and updates the IRQ line; host errors are reported, not thrown. */
  private locked<T>(fn: () => T, fallback: T): T {
    const st = this.state;
    try {
      return st.lock.with(() => {
        const r = fn();
        st.updateIrq();
        return r;
      });
    } catch (e) {
      this.ctx.guestFault("serial", `host side: ${(e as Error).message}`);
      return fallback;
    }
  }
}
