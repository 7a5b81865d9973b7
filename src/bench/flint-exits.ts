/**
 * flint's side of the exit benchmark: the same PVH exit-loop guest the C
 * ceiling and QEMU run, booted by flint's real machine (PVH entry, vCPU
 * worker thread, buses, devices), timed from the guest's start marker to its
 * end marker through the debug-exit device.
 */
import { BenchError } from "./bench-error.js";
import { buildExitLoopGuest, checkExitLoopRun, exitLoopCmdline, EXIT_LOOP_END_OK, type ExitLoopRun } from "../guest/programs/exit-loop.js";
import { median } from "./process.js";
import { Machine } from "../vm/machine.js";

export interface FlintExitsResult {
  exitsPerSecond: number;
  exitsPerSecondSamples: number[];
  /** Host RSS growth of this process over one run, KiB (guest RAM touched included). */
}

/** One run: exits per second between the markers. */
export async function flintExitsOnce(run: ExitLoopRun): Promise<number> {
  checkExitLoopRun(run);
  const m = Machine.create({
    cpus: 1,
    memoryMib: 64,
    boot: { kind: "linux", kernelPath: buildExitLoopGuest(), cmdline: exitLoopCmdline(run), acpi: false, mode: "pvh" },
    debugExit: true,
  });
  const r = await m.run();
  const d = r.debugExit;
  if (r.reason.kind === "error") throw new BenchError("EBENCHRUN", `flint exit-loop run failed: ${r.reason.message}`);
  if (d?.status !== EXIT_LOOP_END_OK || d.markNs === undefined || d.exitNs === undefined) {
    throw new BenchError("EBENCHRUN", `flint exit-loop guest ended without its markers (status ${d?.status}, reason ${r.reason.kind})`);
  }
  return run.count / (Number(d.exitNs - d.markNs) / 1e9);
}

/** Median of `runs` runs. */
export async function runFlintExits(run: ExitLoopRun & { runs?: number }): Promise<FlintExitsResult> {
  const samples: number[] = [];
  for (let i = 0; i < (run.runs ?? 3); i++) samples.push(await flintExitsOnce(run));
  return { exitsPerSecond: median(samples), exitsPerSecondSamples: samples };
}
