/**
 * The property run shared by the device-loop property tests (block, net, rng,
 * balloon: `*.loop.test.ts`): a hostile driver plays `actions` random
 * LoopActions (aliased and maximal-length chains, raw ring writes, kicks,
 * resets mid-request, config writes) against a device in its real thread,
 * while a second guest thread keeps re-adding chains on one queue and
 * kicking it. Every `checkEvery` actions, and at the end:
 *
 *   - a control request (or the refusal of one) comes back within `answerLimitMs`;
 *   - heap and RSS growth stay under `bounds` (MemoryWatch);
 *   - `wellFormed` (the device's own check that a good request on a queue
 *     the hostile actions leave alone, or after a reset, completes) passes.
 *
 * A device in NEEDS_RESET (the hostile driver broke a ring) is reset and
 * brought up again now and then, as a driver would. `FLINT_FUZZ_ACTIONS`
 * sets the count (10^5 by default, 10^6 in `npm run fuzz:devices`).
 */
import assert from "node:assert/strict";
import type fc from "fast-check";
import type { FakeDriver } from "./fake-driver.js";
import { type DeviceLoopRig, LatencyLog, type LoopAction, type MemoryBounds, MemoryWatch, loopActions, memoryFigures } from "./device-loop-rig.js";

/**
 * The bounds every device-loop property run states, over a baseline taken
 * once the device is up: the process's V8 heap on the test's thread may grow
 * 32 MiB; its RSS (every thread: main, device, second guest thread) 128 MiB,
 * which covers the 16 MiB of guest RAM the hostile driver touches, the
 * device and guest threads' V8 heaps growing to their working size, and
 * nothing a guest could make grow with its request count or sizes (measured:
 * +60 MiB after 10^5 actions, +72 MiB after 2 x 10^5, flattening). A guest
 * that could make flint allocate per request or per fault crosses it long
 * before 10^5 actions.
 */
export const LOOP_PROPERTY_BOUNDS: MemoryBounds = { heapGrowthBytes: 32 << 20, rssGrowthBytes: 128 << 20 };

/** What a property run needs. */
export interface LoopPropertyOptions {
  rig: DeviceLoopRig;
  label: string;
  arb: fc.Arbitrary<LoopAction>;
  actions: number;
  seed: number;
  bounds: MemoryBounds;
  /** A request the device answers (or refuses) through its control path. */
  control: { op: string; args?: unknown };
  /** Checks that a well-formed request completes (after resetting the device if it is failed). */
  wellFormed: () => Promise<void>;
  /**
   * The second guest thread: which queue it floods, and `heads(drv)` writes the chains it
   * re-adds into that queue's driver (called again after every fresh bring-up, which zeroes
   * the rings; the thread reads the ring indices from guest memory and carries on).
   */
  flood?: { queue: number; heads: (drv: FakeDriver) => number[] };
  checkEvery?: number;
  answerLimitMs?: number;
  /** Gets a progress line at every checkpoint (actions done, memory growth so far). */
  progress?: (line: string) => void;
}

/** What a run did, for the test's log. */
export interface LoopPropertyReport {
  actions: number;
  resets: number;
  recoveries: number;
  guestFaults: number;
  failures: number;
  floodAdded: number;
  requests: LatencyLog;
  resetTimes: LatencyLog;
  memory: string;
}

/** Runs the property; throws (assert) on the first bound crossed or answer missing. */
export async function runLoopProperty(o: LoopPropertyOptions): Promise<LoopPropertyReport> {
  const { rig } = o;
  const checkEvery = o.checkEvery ?? 10_000;
  const limit = o.answerLimitMs ?? 10_000;
  const requests = new LatencyLog(), resetTimes = new LatencyLog();
  const watch = new MemoryWatch(o.label, o.bounds);
  let resets = 0, recoveries = 0, floodAdded = 0, done = 0;
  let flood: Awaited<ReturnType<DeviceLoopRig["flood"]>> | undefined;
  const floodHeads = () => {
    const drv = o.flood && rig.drivers[o.flood.queue];
    return drv ? o.flood!.heads(drv) : [];
  };
  const startFlood = async () => {
    const drv = o.flood && rig.drivers[o.flood.queue];
    if (drv) flood = await rig.flood(o.flood!.queue, { heads: floodHeads(), driver: drv });
  };
  const stopFlood = async () => {
    if (flood) floodAdded += await flood.stop();
    flood = undefined;
  };
  const bringUpAgain = () => {
    rig.bringUpAgain();
    floodHeads();
  };
  const checkpoint = async () => {
    const r = await rig.timedRequest(o.control.op, o.control.args, limit);
    requests.add(r.ms);
    watch.check();
    const now = memoryFigures();
    o.progress?.(`${o.label}: ${done} actions, RSS +${((now.rssBytes - watch.baseline.rssBytes) / 2 ** 20).toFixed(1)} MiB, heap +${((now.heapUsedBytes - watch.baseline.heapUsedBytes) / 2 ** 20).toFixed(1)} MiB`);
    // The well-formed request may use the flooded queue: the second thread waits meanwhile.
    await flood?.pause();
    await o.wellFormed();
    floodHeads();
    flood?.resume();
  };

  await startFlood();
  for (const a of loopActions(o.arb, o.actions, o.seed)) {
    if (a.kind === "reset") {
      // Resets are timed (and always awaited, bounded): a reset mid-request must be answered.
      resetTimes.add(await rig.timedReset(limit));
      bringUpAgain();
      resets++;
    } else {
      await rig.apply(a);
    }
    done++;
    if (done % 64 === 0 && rig.needsReset && (done / 64) % 4 === 0) {
      // A driver notices NEEDS_RESET (config interrupt) and starts over.
      resetTimes.add(await rig.timedReset(limit));
      bringUpAgain();
      recoveries++;
    }
    if (done % checkEvery === 0) await checkpoint();
    // Let the event loop breathe (fault messages, timers) without slowing the run much.
    if (done % 256 === 0) await new Promise((r) => setImmediate(r));
  }
  await checkpoint();
  await stopFlood();
  resetTimes.add(await rig.timedReset(limit));
  assert.ok(rig.dev.state.threadRunning, "the device thread is still running");
  return {
    actions: done, resets, recoveries, guestFaults: rig.guestFaults, failures: rig.failureLog.count, floodAdded,
    requests, resetTimes, memory: watch.report(),
  };
}

/** One line for the test's log. */
export function formatReport(label: string, r: LoopPropertyReport): string {
  return `${label}: ${r.actions} actions, ${r.resets} resets + ${r.recoveries} recoveries, ${r.guestFaults} guest faults, ` +
    `${r.failures} failures, ${r.floodAdded} chains from the second thread; ${r.requests.report("control")}; ` +
    `${r.resetTimes.report("resets")}; ${r.memory}`;
}
