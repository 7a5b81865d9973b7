/**
 * The snapshot section of `npm run bench` (alone: `--snapshot-only`), on
 * this host's /dev/kvm, VMs without virtio devices:
 *
 *   1. in-process clone latency: Machine.restore + run() until the guest
 *      runs, vCPU threads from a pool, median and p90, and each step's
 *      share; the same with cold threads (snapshot-clones.ts, job latency);
 *   2. restore in a new process: `flint --api-sock` + PUT /snapshot/load
 *      against QEMU -M microvm restoring its own migration file, spawn to
 *      the guest's first byte, and the load alone into idle processes
 *      (snapshot-process.ts);
 *   3. restore time against memory size: a 1 GiB guest against a 64 MiB one,
 *      both having written 32 MiB, and both having written all of it (a
 *      dense memory file); and Full snapshot create times and data bytes;
 *   4. clone memory sharing: 8 clones of a 256 MiB guest that wrote 200 MiB,
 *      reading only, in one process (job sharing) and one process each
 *      (snapshot-process.ts), PSS against one guest's memory.
 *
 * Memory files live in the temporary directory, so the clones map them from
 * the page cache (just written); a restore from a cold file would page them
 * in from the disk as the guest touches them.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath, pathToFileURL } from "node:url";
import { BenchError } from "./bench-error.js";
import { runTimed, tail } from "./process.js";
import { measureProcessRestore, measureProcessSharing } from "./snapshot-process.js";
import {
  type ProcessRestoreSamples, type ProcessSharingSample, type SnapshotClonesInput, type SnapshotClonesReport, type SnapshotShape, type SnapshotSummary,
  formatSnapshotSection, parseSnapshotClonesReport, summarizeSnapshots,
} from "./snapshot-report.js";

const LIBRARY = fileURLToPath(new URL("../bundle/index.js", import.meta.url));
const CLONES_CHILD = fileURLToPath(new URL("./snapshot-clones.js", import.meta.url));

/** Options for {@link measureSnapshots}. */
export interface SnapshotBenchOptions {
  /** Clones with warm threads, per shape (default 30). */
  clones?: number;
  /** Clones with cold threads, per shape (default 5). */
  coldClones?: number;
  /** Full snapshots made of each shape (default 3). */
  creates?: number;
  /** New-process restores, per monitor and way (default 7). */
  processRuns?: number;
  /** Clones in the sharing figure (default 8). */
  sharingClones?: number;
}

/** Everything the section measured, for --json. */
export interface SnapshotBenchResult {
  summary: SnapshotSummary;
  latency: SnapshotClonesReport;
  sharing: SnapshotClonesReport;
  processRestore: ProcessRestoreSamples;
  processSharing: ProcessSharingSample;
  qemuVersion: string;
}

const SMALL: SnapshotShape = { memoryMib: 64, touch: 32 };
const LARGE: SnapshotShape = { memoryMib: 1024, touch: 32 };
const SMALL_DENSE: SnapshotShape = { memoryMib: 64, touch: "all" };
const LARGE_DENSE: SnapshotShape = { memoryMib: 1024, touch: "all" };
const SHARED: SnapshotShape = { memoryMib: 256, touch: 200 };
const SETTLE_MS = 250;

async function runClonesChild(input: SnapshotClonesInput): Promise<SnapshotClonesReport> {
  const r = await runTimed(process.execPath, [CLONES_CHILD, JSON.stringify(input)], { timeoutMs: 900_000 });
  if (r.exitCode !== 0) throw new BenchError("EBENCHRUN", `The snapshot clones run (${input.job}) failed (${r.signal ?? `status ${r.exitCode}`}):\n${tail(r.stderr)}`);
  return parseSnapshotClonesReport(r.stdout, input.job);
}

/** Runs every figure of the section. */
export async function measureSnapshots(options: SnapshotBenchOptions = {}): Promise<SnapshotBenchResult> {
  const clones = options.clones ?? 30, coldClones = options.coldClones ?? 5, creates = options.creates ?? 3;
  const processRuns = options.processRuns ?? 7, sharingClones = options.sharingClones ?? 8;
  for (const [name, v] of Object.entries({ clones, coldClones, creates, processRuns, sharingClones })) {
    if (!Number.isInteger(v) || v < (name === "coldClones" ? 0 : 1)) throw new BenchError("EBENCHARG", `Cannot run the snapshot section with ${name} ${v}`);
  }
  const qemuVersion = (await runTimed("qemu-system-x86_64", ["--version"], { timeoutMs: 30_000, installHint: "apt-get install qemu-system-x86" }))
    .stdout.split("\n")[0]!.trim();
  const dir = mkdtempSync(join(tmpdir(), "flint-bench-snapshots-"));
  try {
    const base = { bundle: LIBRARY, settleMs: SETTLE_MS };
    const latency = await runClonesChild({
      ...base, job: "latency", dir: join(dir, "latency"), shapes: [SMALL, LARGE, SMALL_DENSE, LARGE_DENSE], clones, coldClones, creates,
    });
    rmSync(join(dir, "latency"), { recursive: true, force: true }); // the dense 1 GiB file out of the page cache's way
    const processRestore = await measureProcessRestore({ runs: processRuns, memoryMib: 64 });
    const sharing = await runClonesChild({ ...base, job: "sharing", dir: join(dir, "sharing"), shapes: [SHARED], clones: sharingClones, coldClones: 0, creates: 1 });
    const sh = sharing.sharing!;
    const processSharing = await measureProcessSharing({
      statePath: sh.statePath, memoryPath: sh.memoryPath, passes: sharing.snapshots[0]!.passes, clones: sharingClones, settleMs: SETTLE_MS,
    });
    const summary = summarizeSnapshots({ latency, flatPairs: [[SMALL, LARGE], [SMALL_DENSE, LARGE_DENSE]], sharing, processRestore, processSharing });
    return { summary, latency, sharing, processRestore, processSharing, qemuVersion };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Measures and prints the section; returns everything for --json. */
export async function printSnapshotSection(out: (line: string) => void, options: SnapshotBenchOptions = {}): Promise<SnapshotBenchResult> {
  out("== snapshots: clones, restore in a new process vs QEMU, memory size, sharing (ring-3 guests on /dev/kvm, no virtio devices) ==");
  const started = performance.now();
  const result = await measureSnapshots(options);
  for (const line of formatSnapshotSection(result.summary)) out(line);
  out(`  (${result.qemuVersion}; section took ${((performance.now() - started) / 1000).toFixed(0)} s)`);
  return result;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? Number(process.argv[i + 1]) : undefined;
  };
  await printSnapshotSection((l) => console.log(l), { clones: arg("--clones"), processRuns: arg("--runs") });
}
