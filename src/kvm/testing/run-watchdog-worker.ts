/** The worker of run-watchdog.ts: waits out the limit, then signals the guarded thread until stopped. */
import { workerData } from "node:worker_threads";
import { sys } from "../../sys/native.js";
import type { WatchdogInit } from "./run-watchdog.js";

/** How often the guarded thread is signalled once the limit has passed (a signal can land between two KVM_RUNs). */
const RESIGNAL_MS = 50;

const { thread, signal, limitMs, flags } = workerData as WatchdogInit;
if (Atomics.wait(flags, 0, 0, limitMs) === "timed-out") {
  Atomics.store(flags, 1, 1);
  while (Atomics.load(flags, 0) === 0) {
    if (sys.signalThread(thread, signal) < 0) break;
    Atomics.wait(flags, 0, 0, RESIGNAL_MS);
  }
}
