/**
 * A hang guard for tests that run a vCPU on their own thread: a guest that
 * never exits (one restored into nonsense, spinning in real mode, which this
 * host's KVM emulates without ever returning) would block KVM_RUN for good.
 * Past `limitMs` a worker signals the test's thread until stopped, so KVM_RUN
 * returns -EINTR and the run loop, seeing `expired()`, fails the test. It
 * measures nothing: a passing run never comes near the limit.
 */
import { Worker } from "node:worker_threads";
import { sys } from "../../sys/native.js";

/** A real-time signal of its own (flint's vCPU threads are kicked with another). */
const WATCHDOG_SIGNAL = sys.sigrtmin() + 5;
let installed = false;

/** What the worker shares with the test's thread: [0] is 1 once stopped, [1] is 1 once expired. */
export interface WatchdogInit {
  thread: bigint;
  signal: number;
  limitMs: number;
  flags: Int32Array;
}

export interface RunWatchdog {
  /** True once the limit has passed: the run loop should give up. */
  expired(): boolean;
  stop(): void;
}

/** Starts guarding the calling thread's KVM_RUN calls. */
export function startRunWatchdog(limitMs: number): RunWatchdog {
  if (!installed) {
    sys.installKickSignal(WATCHDOG_SIGNAL);
    installed = true;
  }
  const flags = new Int32Array(new SharedArrayBuffer(8));
  const init: WatchdogInit = { thread: sys.threadSelf(), signal: WATCHDOG_SIGNAL, limitMs, flags };
  const worker = new Worker(new URL("./run-watchdog-worker.js", import.meta.url), { workerData: init });
  worker.unref();
  return {
    expired: () => Atomics.load(flags, 1) === 1,
    stop: () => {
      Atomics.store(flags, 0, 1);
      Atomics.notify(flags, 0);
    },
  };
}
