/**
 * The snapshot section's arithmetic and printed rows, apart from the runs
 * that feed them (snapshot-bench.ts, snapshot-clones.ts), so that a test can
 * check every figure against samples it makes up. Times in ms, memory in
 * KiB unless a name says otherwise.
 */
import { BenchError } from "./bench-error.js";
import { median } from "./process.js";
import type { TouchAmount } from "./snapshot-guest.js";

/** A guest to snapshot: its RAM and how much of it it writes. */
export interface SnapshotShape {
  memoryMib: number;
  touch: TouchAmount;
}

/** "64 MiB, 32 MiB written", "1024 MiB, all written". */
export function shapeName(s: SnapshotShape): string {
  return `${s.memoryMib} MiB, ${s.touch === "all" ? "all" : `${s.touch} MiB`} written`;
}

/** What the clones child (snapshot-clones.ts) is given, as JSON in argv[2]. */
export interface SnapshotClonesInput {
  job: "latency" | "sharing";
  /** dist/bundle/index.js. */
  bundle: string;
  /** Where the snapshot files go. */
  dir: string;
  /** latency: every shape, interleaved; sharing: the first. */
  shapes: SnapshotShape[];
  /** latency: rounds with warm threads; sharing: clones at once. */
  clones: number;
  /** latency: rounds with cold threads (no pool). */
  coldClones: number;
  /** latency: snapshots of each shape (their create times). */
  creates: number;
  /** Wait between clones (the pool's spare boots meanwhile) and before reading memory. */
  settleMs: number;
}

/** A Full snapshot the child made. */
export interface SnapshotMade {
  shape: SnapshotShape;
  statePath: string;
  memoryPath: string;
  /** Machine.snapshot() of the paused VM, called to resolved. */
  createMs: number;
  stateBytes: number;
  /** The memory file's size (the guest's RAM). */
  memoryBytes: number;
  /** Bytes written: the pages that are not all zero. */
  memoryDataBytes: number;
  /** The guest's PASSES when saved. */
  passes: number;
}

/** One clone: Machine.restore + run() until the guest's counter moves, and its steps. */
export interface CloneSample {
  shape: string;
  /** vCPU thread from the pool (Machine.keepWarm), or booted for this clone. */
  pool: "warm" | "cold";
  /** Machine.restore() called to its memory file being mapped: the state file read and checked. */
  stateMs: number;
  /** The memory file mapped (GuestMemory.mapFile). */
  mapMs: number;
  /** From there to guest memory being registered: KVM VM, irqchip and PIT created. */
  kvmVmMs: number;
  /** Guest memory registered with KVM (KVM_SET_USER_MEMORY_REGION). */
  registerMs: number;
  /** The rest of restore(): devices, the vCPU created, vCPU and VM state set. */
  vcpuStateMs: number;
  /** run() called to the vCPUs let go (onStarted). */
  threadStartMs: number;
  /** The vCPUs let go to the guest's counter moving. */
  firstInstructionMs: number;
  /** Machine.restore() called to the counter moving. */
  totalMs: number;
}

/** The fields of /proc/<pid>/smaps_rollup used here (proc(5)), KiB. */
export interface SmapsRollup {
  rssKib: number;
  pssKib: number;
  pssAnonKib: number;
  pssFileKib: number;
  privateDirtyKib: number;
}

/** Parses /proc/<pid>/smaps_rollup; throws EBENCHRUN if a field is missing. */
export function parseSmapsRollup(text: string): SmapsRollup {
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB$`, "m").exec(text);
    if (!match) throw new BenchError("EBENCHRUN", `Cannot find ${name} in /proc/<pid>/smaps_rollup`);
    return Number(match[1]);
  };
  return { rssKib: field("Rss"), pssKib: field("Pss"), pssAnonKib: field("Pss_Anon"), pssFileKib: field("Pss_File"), privateDirtyKib: field("Private_Dirty") };
}

/** The sharing job's measurement. */
export interface SharingSample {
  clones: number;
  /** The process with the library loaded and the original VM gone, before any clone. */
  baseline: SmapsRollup;
  /** With every clone paused after reading its memory. */
  withClones: SmapsRollup;
  /** Restoring the clones to all of them having read their memory twice. */
  readMs: number;
  /** The snapshot's files, left for clones in separate processes. */
  statePath: string;
  memoryPath: string;
}

/** The clones child's report. */
export interface SnapshotClonesReport {
  job: SnapshotClonesInput["job"];
  snapshots: Omit<SnapshotMade, "statePath" | "memoryPath">[];
  clones: CloneSample[];
  sharing?: SharingSample;
}

/** Parses and checks the clones child's JSON line. */
export function parseSnapshotClonesReport(stdout: string, job: SnapshotClonesInput["job"]): SnapshotClonesReport {
  let value: unknown;
  try {
    value = JSON.parse(stdout.trim().split("\n").pop() ?? "");
  } catch {
    throw new BenchError("EBENCHRUN", `The snapshot clones run printed no report: '${stdout.trim().slice(0, 200)}'`);
  }
  const r = value as Partial<SnapshotClonesReport>;
  const finite = (x: unknown) => typeof x === "number" && Number.isFinite(x);
  const cloneOk = (c: Partial<CloneSample>) => typeof c.shape === "string" && (c.pool === "warm" || c.pool === "cold") &&
    [c.stateMs, c.mapMs, c.kvmVmMs, c.registerMs, c.vcpuStateMs, c.threadStartMs, c.firstInstructionMs, c.totalMs].every(finite);
  const rollupOk = (s: Partial<SmapsRollup> | undefined) => s !== undefined && [s.rssKib, s.pssKib, s.pssAnonKib, s.pssFileKib, s.privateDirtyKib].every(finite);
  const ok = r.job === job && Array.isArray(r.snapshots) && r.snapshots.length > 0 && Array.isArray(r.clones) &&
    r.snapshots.every((s) => [s.createMs, s.stateBytes, s.memoryBytes, s.memoryDataBytes].every(finite)) &&
    r.clones.every(cloneOk) &&
    (job === "latency" ? r.clones.length > 0 : r.sharing !== undefined && finite(r.sharing.clones) && rollupOk(r.sharing.baseline) && rollupOk(r.sharing.withClones));
  if (!ok) throw new BenchError("EBENCHRUN", `The snapshot clones run printed an unexpected report: ${stdout.trim().slice(0, 300)}`);
  return r as SnapshotClonesReport;
}

/** The new-process restores (snapshot-process.ts), ms each, in run order. */
export interface ProcessRestoreSamples {
  memoryMib: number;
  flintStateBytes: number;
  /** QEMU's migration file (its whole snapshot). */
  qemuFileBytes: number;
  /** Spawning `flint --api-sock` + PUT /snapshot/load to the guest's first byte. */
  flintSpawn: number[];
  /** Spawning QEMU with -incoming "exec:cat FILE" to the guest's first byte. */
  qemuSpawn: number[];
  /** PUT /snapshot/load into an idle flint process to the guest's first byte. */
  flintLoad: number[];
  /** QMP migrate-incoming into an idle QEMU (-incoming defer) to the guest's first byte. */
  qemuLoad: number[];
}

/** Clones in separate processes (snapshot-process.ts measureProcessSharing). */
export interface ProcessSharingSample {
  clones: number;
  /** Each process, its clone paused after reading its memory. */
  each: SmapsRollup[];
  /** Spawning the processes to every clone having read its memory twice. */
  readMs: number;
}

/**
 * The host address (as a number: /proc/<pid>/mem's offset) of guest address
 * `guestAddress` in a process's mapping of the memory file `path`, from
 * /proc/<pid>/maps: the mapping of that file whose file offset range holds
 * it (guest address = file offset for a single region from 0, as the
 * benchmark's guests have). Undefined when there is none (not mapped yet).
 */
export function findFileMapping(maps: string, path: string, guestAddress: number): number | undefined {
  for (const line of maps.split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s+(.*)$/.exec(line);
    if (!m || m[4] !== path) continue;
    const start = parseInt(m[1]!, 16), end = parseInt(m[2]!, 16), offset = parseInt(m[3]!, 16);
    if (guestAddress >= offset && guestAddress < offset + (end - start)) return start + (guestAddress - offset);
  }
  return undefined;
}

/** The p-th percentile (0..100) of a non-empty list, nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) throw new RangeError("percentile of an empty list");
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export { median };

/** The clone latency goal (ms): restore + run until the guest runs. */
export const CLONE_GOAL_MS = 10;
/** New-process restore: flint at least this many times faster than QEMU. */
export const PROCESS_GOAL_RATIO = 10;
/** Restore of the large guest over the small one at most this. */
export const FLAT_GOAL_RATIO = 1.2;
/** Clones' memory at most this many times one guest's. */
export const SHARING_GOAL_RATIO = 2;

/** A clone's steps in order, with their printed names. */
const CLONE_STEPS: [keyof CloneSample & `${string}Ms`, string][] = [
  ["stateMs", "state file read and checked"],
  ["mapMs", "memory file mapped"],
  ["kvmVmMs", "KVM VM, irqchip and PIT created"],
  ["registerMs", "guest memory registered (KVM_SET_USER_MEMORY_REGION)"],
  ["vcpuStateMs", "devices, vCPU created, vCPU and VM state set"],
  ["threadStartMs", "vCPU thread start (run() to vCPUs let go)"],
  ["firstInstructionMs", "first guest instructions (to the counter moving)"],
];

/** One step of a clone, its median and share of the sum of the steps' medians. */
export interface CloneStep {
  name: string;
  medianMs: number;
  share: number;
}

/** A set of clones' latency. */
export interface CloneLatency {
  count: number;
  medianMs: number;
  p90Ms: number;
}

/** The section's figures. */
export interface SnapshotSummary {
  clone: { shape: string; warm: CloneLatency & { steps: CloneStep[] }; cold?: CloneLatency };
  /** Restore + run until running, warm threads: each pair's large guest over its small one (median of the rounds' ratios). */
  flat: { small: string; large: string; smallMs: number; largeMs: number; ratio: number }[];
  /** Full snapshot create, by shape: median ms and the memory file's data bytes. */
  creates: { shape: string; count: number; medianMs: number; memoryBytes: number; dataBytes: number }[];
  process?: {
    memoryMib: number; runs: number;
    flintSpawnMs: number; qemuSpawnMs: number; spawnRatio: number;
    flintLoadMs: number; qemuLoadMs: number; loadRatio: number;
  };
  sharing?: {
    shape: string; clones: number;
    /** One guest's memory: what it wrote (the memory file's data). */
    oneGuestKib: number;
    inProcess: { pssKib: number; rssKib: number; baselinePssKib: number; ratio: number; addedRatio: number };
    processes?: { pssKib: number; rssKib: number; ratio: number };
  };
}

const cloneLatency = (totals: number[]): CloneLatency => ({ count: totals.length, medianMs: median(totals), p90Ms: percentile(totals, 90) });

/**
 * The figures from the runs: the clone latency of `latency`'s first shape,
 * each `flatPairs` entry's large guest over its small one (shape names), and
 * what the other runs measured, when they ran.
 */
export function summarizeSnapshots(input: {
  latency: SnapshotClonesReport;
  flatPairs: [SnapshotShape, SnapshotShape][];
  sharing?: SnapshotClonesReport;
  processRestore?: ProcessRestoreSamples;
  processSharing?: ProcessSharingSample;
}): SnapshotSummary {
  const { latency } = input;
  const shape = shapeName(latency.snapshots[0]!.shape);
  const of = (name: string, pool: CloneSample["pool"]) => latency.clones.filter((c) => c.shape === name && c.pool === pool);
  const warm = of(shape, "warm"), cold = of(shape, "cold");
  if (warm.length === 0) throw new BenchError("EBENCHRUN", `No warm clones of ${shape} to summarize`);
  const stepMedians: [string, number][] = CLONE_STEPS.map(([key, name]) => [name, median(warm.map((c) => c[key]))]);
  const stepSum = stepMedians.reduce((s, [, ms]) => s + ms, 0);
  const warmTotals = (name: string) => {
    const xs = of(name, "warm").map((c) => c.totalMs);
    if (xs.length === 0) throw new BenchError("EBENCHRUN", `No warm clones of ${name} to summarize`);
    return xs;
  };
  // Clones of the two shapes ran one after the other in each round: compare them round by round, as load drifts.
  const flat = input.flatPairs.map(([s, l]) => {
    const small = shapeName(s), large = shapeName(l), smalls = warmTotals(small), larges = warmTotals(large);
    const rounds = Math.min(smalls.length, larges.length);
    const ratios = Array.from({ length: rounds }, (_, i) => larges[i]! / smalls[i]!);
    return { small, large, smallMs: median(smalls), largeMs: median(larges), ratio: median(ratios) };
  });
  const byShape = new Map<string, SnapshotClonesReport["snapshots"]>();
  for (const s of latency.snapshots) byShape.set(shapeName(s.shape), [...(byShape.get(shapeName(s.shape)) ?? []), s]);
  const creates = [...byShape].map(([name, ss]) => ({
    shape: name, count: ss.length, medianMs: median(ss.map((s) => s.createMs)), memoryBytes: ss[0]!.memoryBytes, dataBytes: median(ss.map((s) => s.memoryDataBytes)),
  }));
  const summary: SnapshotSummary = {
    clone: { shape, warm: { ...cloneLatency(warm.map((c) => c.totalMs)), steps: stepMedians.map(([name, ms]) => ({ name, medianMs: ms, share: stepSum > 0 ? ms / stepSum : 0 })) } },
    flat, creates,
  };
  if (cold.length > 0) summary.clone.cold = cloneLatency(cold.map((c) => c.totalMs));
  const p = input.processRestore;
  if (p) {
    const f = median(p.flintSpawn), q = median(p.qemuSpawn), fl = median(p.flintLoad), ql = median(p.qemuLoad);
    summary.process = { memoryMib: p.memoryMib, runs: p.flintSpawn.length, flintSpawnMs: f, qemuSpawnMs: q, spawnRatio: q / f, flintLoadMs: fl, qemuLoadMs: ql, loadRatio: ql / fl };
  }
  const sh = input.sharing?.sharing;
  if (sh) {
    const snap = input.sharing!.snapshots[0]!;
    const oneGuestKib = snap.memoryDataBytes / 1024;
    const w = sh.withClones;
    summary.sharing = {
      shape: shapeName(snap.shape), clones: sh.clones, oneGuestKib,
      inProcess: { pssKib: w.pssKib, rssKib: w.rssKib, baselinePssKib: sh.baseline.pssKib, ratio: w.pssKib / oneGuestKib, addedRatio: (w.pssKib - sh.baseline.pssKib) / oneGuestKib },
    };
    const ps = input.processSharing;
    if (ps) {
      const pss = ps.each.reduce((s, r) => s + r.pssKib, 0), rss = ps.each.reduce((s, r) => s + r.rssKib, 0);
      summary.sharing.processes = { pssKib: pss, rssKib: rss, ratio: pss / oneGuestKib };
    }
  }
  return summary;
}

const ms = (x: number) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const mib = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;
const x2 = (r: number) => `${r.toFixed(2)}x`;

/** The section's printed rows. */
export function formatSnapshotSection(s: SnapshotSummary): string[] {
  const out: string[] = [];
  const w = s.clone.warm;
  out.push(`in-process clone (Machine.restore + run() until the guest's counter moves; ${s.clone.shape}; vCPU thread from a pool, Machine.keepWarm): ` +
    `median ${ms(w.medianMs)} ms, p90 ${ms(w.p90Ms)} ms of ${w.count}  (${x2(w.medianMs / CLONE_GOAL_MS)} the ${CLONE_GOAL_MS} ms goal)`);
  for (const st of w.steps) out.push(`  ${st.name.padEnd(56)} ${ms(st.medianMs).padStart(6)} ms  ${(st.share * 100).toFixed(0).padStart(3)} %`);
  if (s.clone.cold) out.push(`  cold threads (no pool): median ${ms(s.clone.cold.medianMs)} ms, p90 ${ms(s.clone.cold.p90Ms)} ms of ${s.clone.cold.count}`);
  for (const f of s.flat) {
    out.push(`restore + run, ${f.large} vs ${f.small}: medians ${ms(f.largeMs)} vs ${ms(f.smallMs)} ms  (${x2(f.ratio)}, median of the rounds' ratios; goal <= ${FLAT_GOAL_RATIO}x)`);
  }
  for (const c of s.creates) {
    out.push(`Full snapshot create, ${c.shape}: ${ms(c.medianMs)} ms (median of ${c.count}); memory file ${mib(c.memoryBytes / 1024)}, ${mib(c.dataBytes / 1024)} of data`);
  }
  const p = s.process;
  if (p) {
    out.push(`new process, spawn to the restored guest's first byte (serial-flood guest, ${p.memoryMib} MiB, median of ${p.runs}): ` +
      `flint --api-sock + PUT /snapshot/load ${ms(p.flintSpawnMs)} ms, QEMU -incoming exec:cat ${ms(p.qemuSpawnMs)} ms  (QEMU/flint ${x2(p.spawnRatio)}, goal >= ${PROCESS_GOAL_RATIO}x)`);
    out.push(`  load into an idle process, request to first byte: flint PUT /snapshot/load ${ms(p.flintLoadMs)} ms, QEMU QMP migrate-incoming ${ms(p.qemuLoadMs)} ms  (QEMU/flint ${x2(p.loadRatio)})`);
  }
  const sh = s.sharing;
  if (sh) {
    out.push(`${sh.clones} clones of one snapshot (${sh.shape}), reading only, paused: one guest's memory ${mib(sh.oneGuestKib)} (its memory file's data)`);
    const i = sh.inProcess;
    out.push(`  in one process: PSS ${mib(i.pssKib)} (RSS ${mib(i.rssKib)}, each mapping counted), ${x2(i.ratio)} one guest's memory (goal <= ${SHARING_GOAL_RATIO}x); ` +
      `the clones added ${mib(i.pssKib - i.baselinePssKib)} (${x2(i.addedRatio)}) to the process's ${mib(i.baselinePssKib)}`);
    if (sh.processes) {
      out.push(`  one process each (flint --api-sock): PSS summed ${mib(sh.processes.pssKib)} (RSS summed ${mib(sh.processes.rssKib)}), ${x2(sh.processes.ratio)} one guest's memory`);
    }
  }
  return out;
}
