/**
 * A child program of the snapshot section (snapshot-bench.ts): flint as a
 * library restoring clones in its own process, from dist/bundle/index.js as
 * `import "flint"` would. One job a run, so that each starts from a clean
 * process (the memory figures are the whole process's):
 *
 *   latency  for each guest shape, Full snapshots of a running guest
 *            (snapshot-guest.ts), timed; then clones of the last one, one
 *            at a time (shapes interleaved round by round): Machine.restore + run()
 *            until the guest's counter moves, first warm: a vCPU thread and
 *            a KVM VM of the clone's shape made ahead (Machine.keepWarm,
 *            switched to the next clone's shape between clones), then cold.
 *            Each clone's steps (they add up to its total): restore() to its
 *            memory file being mapped (the state file read and checked),
 *            the mapping, on to the memory's registration with KVM (KVM
 *            VM, irqchip and PIT created), the registration (both none for a
 *            VM made ahead), the rest of
 *            restore() (devices, vCPU created, vCPU and VM state set),
 *            run() to the vCPUs let go (onStarted: thread taken and ready),
 *            and from there to the counter moving (the first guest
 *            instructions, with their first page faults). restore() has no
 *            hooks: the child times its steps by wrapping three methods of
 *            the bundle's own classes (reached through a Machine's objects)
 *            in functions that only read the clock (installProbes).
 *   sharing  one snapshot of a guest that wrote most of its RAM, `clones`
 *            clones restored and run until each has read every written page
 *            twice, then paused; this process's /proc/self/smaps_rollup
 *            before and after. The snapshot's files stay (for the section's
 *            clones in separate processes).
 *
 * Prints one JSON line (SnapshotClonesReport) on stdout.
 *
 *   node dist/bench/snapshot-clones.js '<SnapshotClonesInput as JSON>'
 */
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import type { Machine, MachineResult } from "../index.js";
import { COUNT_OFFSET, PASSES_OFFSET, STATUS_ADDRESS, touchAndReadProgram } from "./snapshot-guest.js";
import {
  type CloneSample, type SnapshotClonesInput, type SnapshotClonesReport, type SnapshotMade, type SnapshotShape,
  parseSmapsRollup, shapeName,
} from "./snapshot-report.js";

type Flint = typeof import("../index.js");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const nextTick = () => new Promise<void>((r) => setImmediate(r));

/** Polls `fn` once per turn of the event loop (so worker messages still get through) until it holds; throws after `limitMs`. */
async function until(what: string, fn: () => boolean, limitMs = 60_000): Promise<void> {
  const end = performance.now() + limitMs;
  while (!fn()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await nextTick();
  }
}

const status = (m: Machine, offset: number): bigint => m.memory.readU64(STATUS_ADDRESS + offset);

/** A running guest of `shape`, saved once it has written its range and read it once; the original is stopped. */
async function makeSnapshot(flint: Flint, dir: string, shape: SnapshotShape, index: number, created?: (m: Machine) => void): Promise<SnapshotMade> {
  const paths = { statePath: join(dir, `s${index}.snap`), memoryPath: join(dir, `s${index}.mem`) };
  const m = flint.Machine.create({ cpus: 1, memoryMib: shape.memoryMib, boot: { kind: "ring3", program: touchAndReadProgram(shape.memoryMib, shape.touch) } });
  created?.(m);
  const running = m.run();
  running.catch(() => undefined);
  try {
    await until("the guest to write its range", () => status(m, PASSES_OFFSET) >= 1n);
    await m.pause();
    const t0 = performance.now();
    const w = await m.snapshot(paths);
    const createMs = performance.now() - t0;
    return { shape, ...paths, createMs, stateBytes: w.stateBytes, memoryBytes: w.memoryBytes, memoryDataBytes: w.memoryDataBytes, passes: Number(status(m, PASSES_OFFSET)) };
  } finally {
    m.stop();
    await running;
  }
}

/** Stops a clone and waits for its end; a clone that ended by itself is a failure. */
async function stopClone(m: Machine, running: Promise<MachineResult>, what: string): Promise<void> {
  m.stop();
  const r = await running;
  if (r.reason.kind !== "poweroff") throw new Error(`${what} ended with ${r.reason.kind}${r.reason.kind === "error" ? `: ${r.reason.message}` : ""}`);
}

/** When restore()'s steps began and ended, as the probes saw them (performance.now()). */
interface RestoreMarks {
  mapStart?: number;
  mapEnd?: number;
  registerStart?: number;
  registerEnd?: number;
}

let marks: RestoreMarks = {};

/** Wraps `owner[name]` so that each call runs `before` and `after` around it; nothing else changes. */
function wrap(owner: Record<string, unknown>, name: string, before: () => void, after: () => void): void {
  const original = owner[name] as (...args: unknown[]) => unknown;
  if (typeof original !== "function") throw new Error(`cannot probe ${name}: not a method`);
  owner[name] = function (this: unknown, ...args: unknown[]) {
    before();
    try {
      return original.apply(this, args);
    } finally {
      after();
    }
  };
}

/**
 * Timestamps restore()'s steps: GuestMemory.mapFile (the memory file
 * mapped) and VmFd.setUserMemoryRegion (guest memory registered with KVM),
 * on the classes of the bundle `m` came from. The first registration's
 * start and the last one's end are kept.
 */
function installProbes(m: Machine): void {
  const memoryClass = m.memory.constructor as unknown as Record<string, unknown>;
  const vmPrototype = Object.getPrototypeOf(m.vm) as Record<string, unknown>;
  wrap(memoryClass, "mapFile", () => (marks.mapStart = performance.now()), () => (marks.mapEnd = performance.now()));
  wrap(memoryClass, "mapFileOver", () => (marks.mapStart = performance.now()), () => (marks.mapEnd = performance.now()));
  wrap(vmPrototype, "setUserMemoryRegion", () => (marks.registerStart ??= performance.now()), () => (marks.registerEnd = performance.now()));
}

/** One clone of `snap`, timed step by step (see the module comment), then stopped. */
async function cloneOnce(flint: Flint, snap: SnapshotMade, pool: CloneSample["pool"]): Promise<CloneSample> {
  marks = {};
  let startedAt = 0;
  const t0 = performance.now();
  const m = flint.Machine.restore({ statePath: snap.statePath, memoryPath: snap.memoryPath, onStarted: () => (startedAt = performance.now()) });
  const t1 = performance.now();
  const { mapStart, mapEnd } = marks;
  if (mapStart === undefined || mapEnd === undefined) throw new Error("the restore probes saw no memory mapped: did Machine.restore change?");
  // A warm VM (keepWarm's vms) was made and registered ahead: no registration in the clone's time.
  const registerStart = marks.registerStart ?? mapEnd, registerEnd = marks.registerEnd ?? mapEnd;
  if (pool === "cold" && marks.registerStart === undefined) throw new Error("the restore probes saw no memory registered: did Machine.restore change?");
  const at = status(m, COUNT_OFFSET);
  const running = m.run();
  running.catch(() => undefined);
  await until("the clone's counter to move", () => status(m, COUNT_OFFSET) !== at);
  const t2 = performance.now();
  await stopClone(m, running, "a clone");
  return {
    shape: shapeName(snap.shape), pool,
    stateMs: mapStart - t0, mapMs: mapEnd - mapStart, kvmVmMs: registerStart - mapEnd, registerMs: registerEnd - registerStart,
    vcpuStateMs: t1 - registerEnd, threadStartMs: startedAt - t1, firstInstructionMs: t2 - startedAt, totalMs: t2 - t0,
  };
}

async function latency(flint: Flint, input: SnapshotClonesInput): Promise<SnapshotClonesReport> {
  // Each shape saved `creates` times, shapes interleaved; the clones restore the last of each.
  const made: SnapshotMade[] = [];
  let snapshots: SnapshotMade[] = [];
  let probed = false;
  for (let round = 0; round < input.creates; round++) {
    snapshots = [];
    for (const [i, shape] of input.shapes.entries()) {
      snapshots.push(await makeSnapshot(flint, input.dir, shape, i, (m) => {
        if (!probed) installProbes(m);
        probed = true;
      }));
    }
    made.push(...snapshots);
  }
  const clones: CloneSample[] = [];
  // Warm: a vCPU thread and a KVM VM of the next clone's shape made ahead (the pool keeps one shape
  // at a time, so it is switched before each clone: every shape's clones are timed alike).
  const warmFor = (snap: (typeof snapshots)[number]) =>
    flint.Machine.keepWarm({ vcpuThreads: 1, deviceThreads: 0, vms: { cpus: 1, memoryMib: snap.shape.memoryMib, count: 1 } });
  const rounds = async (pool: CloneSample["pool"], n: number) => {
    for (let round = 0; round < n; round++) {
      for (const snap of snapshots) {
        if (pool === "warm") warmFor(snap);
        await sleep(input.settleMs); // the pool boots the spare taken by the clone before
        clones.push(await cloneOnce(flint, snap, pool));
      }
    }
  };
  warmFor(snapshots[0]!);
  await sleep(input.settleMs);
  await cloneOnce(flint, snapshots[0]!, "warm"); // uncounted: first use of every code path
  await rounds("warm", input.clones);
  flint.Machine.keepWarm({ vcpuThreads: 0, deviceThreads: 0 });
  await rounds("cold", input.coldClones);
  return { job: "latency", snapshots: made.map(({ statePath: _s, memoryPath: _m, ...rest }) => rest), clones };
}

function rollup() {
  return parseSmapsRollup(readFileSync("/proc/self/smaps_rollup", "utf8"));
}

async function sharing(flint: Flint, input: SnapshotClonesInput): Promise<SnapshotClonesReport> {
  const shape = input.shapes[0]!;
  const snap = await makeSnapshot(flint, input.dir, shape, 0);
  await sleep(input.settleMs);
  const baseline = rollup();
  const clones: { m: Machine; running: Promise<MachineResult> }[] = [];
  try {
    const t0 = performance.now();
    for (let i = 0; i < input.clones; i++) {
      const m = flint.Machine.restore({ statePath: snap.statePath, memoryPath: snap.memoryPath });
      const running = m.run();
      running.catch(() => undefined);
      clones.push({ m, running });
    }
    // Two more passes: at least one whole pass after the restore, every written page read.
    await until("every clone to read its memory", () => clones.every(({ m }) => status(m, PASSES_OFFSET) >= BigInt(snap.passes + 2)), 300_000);
    const readMs = performance.now() - t0;
    for (const { m } of clones) await m.pause();
    await sleep(input.settleMs);
    const all = rollup();
    const { statePath: _s, memoryPath: _m, ...made } = snap;
    return { job: "sharing", snapshots: [made], clones: [], sharing: { clones: input.clones, baseline, withClones: all, readMs, statePath: snap.statePath, memoryPath: snap.memoryPath } };
  } finally {
    for (const { m, running } of clones) await stopClone(m, running, "a sharing clone");
  }
}

async function main(): Promise<void> {
  const input = JSON.parse(process.argv[2]!) as SnapshotClonesInput;
  mkdirSync(input.dir, { recursive: true });
  const flint = (await import(pathToFileURL(input.bundle).href)) as Flint;
  const report = input.job === "latency" ? await latency(flint, input) : await sharing(flint, input);
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

await main();
