/**
 * Booted worker threads kept waiting for work, for library users who start
 * many VMs in one process. A Node worker is a fresh V8 isolate: it takes tens
 * to hundreds of milliseconds to boot before its first line runs, which is
 * most of the time from Machine.create to the guest's first instruction. A
 * pool boots spares ahead of time; taking one costs a postMessage.
 *
 * Off by default (no spares): a process that runs one VM (the CLI) would only
 * pay for idle isolates. Spares are unref'd, so they never keep a process
 * alive. A worker script that can start from a spare reads its init from
 * `workerInit()` instead of `workerData`.
 */
import { parentPort, Worker, workerData, type TransferListItem } from "node:worker_threads";

/** The first message a spare receives: its init (what workerData would have held). */
interface InitMessage {
  flintWorkerInit: unknown;
}

/**
 * Workers an entry point started before flint's modules were loaded
 * (startEarlyWorkers), by script href, for WorkerPool.prestart to adopt. On
 * globalThis: the entry and the CLI are separate bundles, each with its own
 * copy of this module.
 */
const EARLY_WORKERS = Symbol.for("flint.earlyWorkers");
type EarlyWorkers = Map<string, Worker[]>;

/** Throws RangeError ("Cannot <verb> <count> <workers>: 0 to 64") unless `count` is a whole number from 0 to 64. */
function checkCount(count: number, verb: string, workers: string): void {
  if (!Number.isInteger(count) || count < 0 || count > 64) throw new RangeError(`Cannot ${verb} ${count} ${workers}: 0 to 64`);
}

/** A worker running `script` that waits for its init (workerInit), unref'd: an idle spare never keeps the process alive. */
function bootIdle(script: URL): Worker {
  const w = new Worker(script, { workerData: undefined });
  w.unref();
  return w;
}

function earlyWorkers(): EarlyWorkers {
  const g = globalThis as { [EARLY_WORKERS]?: EarlyWorkers };
  return (g[EARLY_WORKERS] ??= new Map());
}

/**
 * Boots `count` (0..64) workers of `script` now, from an entry point that is
 * about to load the rest of flint (cli/entry.ts): they boot on other cores
 * while the loading takes the main thread, and the first prestart of that
 * script's pool adopts them as spares. Unref'd: one never adopted only costs
 * its idle isolate.
 */
export function startEarlyWorkers(script: URL, count: number): void {
  checkCount(count, "start", "early workers");
  const map = earlyWorkers();
  const list = map.get(script.href) ?? [];
  map.set(script.href, list);
  for (let i = 0; i < count; i++) {
    const w = bootIdle(script);
    // One that fails before it is adopted is dropped (the pool then boots its own).
    const drop = () => {
      const at = list.indexOf(w);
      if (at >= 0) list.splice(at, 1);
    };
    w.once("error", drop);
    w.once("exit", drop);
    list.push(w);
  }
}

/** How long after a spare is taken its replacement starts booting (WorkerPool.scheduleRefill). */
export const REFILL_DELAY_MS = 50;

/** A pool of booted, idle workers running one script. */
export class WorkerPool {
  private static readonly pools = new Map<string, WorkerPool>();
  private readonly spares: Worker[] = [];
  private target = 0;
  private refillTimer: NodeJS.Timeout | undefined;

  private constructor(private readonly script: URL) {}

  /** The pool for `script` (one per script in the process). */
  static for(script: URL): WorkerPool {
    let pool = WorkerPool.pools.get(script.href);
    if (!pool) WorkerPool.pools.set(script.href, (pool = new WorkerPool(script)));
    return pool;
  }

  /** Keeps `count` (0..64) booted workers waiting; 0 ends the idle ones. */
  keepSpares(count: number): void {
    checkCount(count, "keep", "spare workers");
    this.target = count;
    while (this.spares.length > count) void this.spares.pop()!.terminate();
    this.refill();
  }

  /**
   * Boots `count` (0..64) more spares now, for a job the caller is about to
   * start (the CLI, before it builds its VM): their boot overlaps the
   * caller's own set-up. Workers of this script an entry point started
   * early (startEarlyWorkers) count first: they are adopted, and only the
   * rest are booted. Unlike keepSpares, a spare taken is not replaced, and
   * one never taken only costs its idle isolate (it is unref'd).
   */
  prestart(count: number): void {
    checkCount(count, "prestart", "workers");
    const early = earlyWorkers().get(this.script.href) ?? [];
    const adopted = early.splice(0, count);
    for (const w of adopted) this.add(w);
    for (let i = adopted.length; i < count; i++) this.boot();
  }

  /** Spares booted or booting now. */
  get spareCount(): number {
    return this.spares.length;
  }

  /** A worker running the script with `init`: a spare when there is one (then replaced), else a new one. */
  take(init: unknown, transferList: readonly TransferListItem[] = []): Worker {
    const spare = this.spares.shift();
    if (!spare) return new Worker(this.script, { workerData: init, transferList: [...transferList] });
    spare.ref();
    spare.postMessage({ flintWorkerInit: init } satisfies InitMessage, [...transferList]);
    this.scheduleRefill();
    return spare;
  }

  /**
   * Replaces taken spares REFILL_DELAY_MS later, not now: creating a worker
   * costs the calling thread a few ms and its isolate's boot takes a core
   * for tens of ms, both of which the job that took the spare needs at
   * that moment (measured: a restored clone's start, npm run bench:snapshot).
   */
  private scheduleRefill(): void {
    if (this.refillTimer !== undefined || this.spares.length >= this.target) return;
    this.refillTimer = setTimeout(() => {
      this.refillTimer = undefined;
      this.refill();
    }, REFILL_DELAY_MS);
    this.refillTimer.unref();
  }

  private refill(): void {
    while (this.spares.length < this.target) this.boot();
  }

  private boot(): void {
    this.add(bootIdle(this.script));
  }

  /** Makes `w` (booting or booted, unref'd, waiting for its init) a spare. */
  private add(w: Worker): void {
    // A spare that dies while idle (it should not) is simply dropped.
    const drop = () => {
      const i = this.spares.indexOf(w);
      if (i >= 0) this.spares.splice(i, 1);
    };
    w.once("exit", drop);
    w.once("error", drop);
    this.spares.push(w);
  }
}

/**
 * In a worker script: its init, from workerData when it was started for a
 * job, or from the first message when it was started as a spare.
 */
export async function workerInit<T>(): Promise<T> {
  if (workerData !== undefined && workerData !== null) return workerData as T;
  const port = parentPort;
  if (!port) throw new Error("workerInit() outside a worker thread");
  return new Promise<T>((resolve) => {
    const onMessage = (m: unknown) => {
      if (typeof m !== "object" || m === null || !("flintWorkerInit" in m)) return;
      port.off("message", onMessage);
      resolve((m as InitMessage).flintWorkerInit as T);
    };
    port.on("message", onMessage);
  });
}
