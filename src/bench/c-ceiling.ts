/**
 * The C ceiling (ceiling/kvm-exit-ceiling.c): the exit-loop guest on
 * /dev/kvm with a KVM_RUN loop that does nothing but count, which is as fast
 * as any monitor can handle these exits on this host. flint's own numbers are
 * read against it.
 */
import { join } from "node:path";
import { BenchError } from "./bench-error.js";
import { cachedArtifact, gcc, packagePath, readSources } from "../guest/programs/build-cache.js";
import { flintAbiHeader } from "../guest/programs/c-header.js";
import {
  type ExitLoopMode,
  type ExitLoopRun,
  buildExitLoopGuest,
  checkExitLoopRun,
  exitLoopProtocolHeader,
  writeExitLoopHeaders,
} from "../guest/programs/exit-loop.js";
import { runTimed, tail } from "./process.js";

/** What the ceiling measured, timed from the guest's start to its end marker. */
export interface CeilingResult {
  mode: ExitLoopMode;
  count: number;
  /** Loop exits seen between the markers (always equal to count). */
  exits: number;
  seconds: number;
  exitsPerSecond: number;
  /** First KVM_RUN to the start marker: the guest's ring-0 set-up. */
  bootSeconds: number;
  /** Any other exits between the markers (normally 0). */
  otherExits: number;
  /** exitsPerSecond of every run; the fields above are the median run's. */
  exitsPerSecondSamples: number[];
}

const CEILING_SOURCE = "ceiling/kvm-exit-ceiling.c";

/** Bump when the build steps change in a way that changes the output. */
const CEILING_RECIPE_VERSION = "kvm-exit-ceiling 2";

function ceilingGccArgs(dir: string): string[] {
  return ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", `-I${dir}`, packagePath(CEILING_SOURCE), "-o", join(dir, "kvm-exit-ceiling")];
}

/** Returns the path of the C ceiling binary, building it with gcc unless cached. */
export function buildCeiling(): string {
  return cachedArtifact({
    name: "kvm-exit-ceiling",
    keyParts: [CEILING_RECIPE_VERSION, ...readSources([CEILING_SOURCE]), flintAbiHeader(), exitLoopProtocolHeader(), ...ceilingGccArgs("DIR")],
    fileName: "kvm-exit-ceiling",
    build(dir) {
      writeExitLoopHeaders(dir);
      gcc(ceilingGccArgs(dir), "the C exit ceiling");
    },
  });
}

/** Options for {@link runCeiling}. */
export interface CeilingOptions extends ExitLoopRun {
  /** How many times to run; the median run is reported (default 3). */
  runs?: number;
  /** Per run; default two minutes plus a millisecond per hundred exits. */
  timeoutMs?: number;
}

/**
 * Runs the C ceiling on the exit-loop guest `runs` times and returns the
 * median run (needs read/write access to /dev/kvm).
 */
export async function runCeiling(options: CeilingOptions): Promise<CeilingResult> {
  checkExitLoopRun(options);
  const runs = options.runs ?? 3;
  if (!Number.isInteger(runs) || runs < 1) throw new BenchError("EBENCHARG", `Cannot run the C ceiling ${runs} times`);
  const binary = buildCeiling();
  const guest = buildExitLoopGuest();
  const timeoutMs = options.timeoutMs ?? 120_000 + options.count / 100;
  const results: Omit<CeilingResult, "exitsPerSecondSamples">[] = [];
  for (let i = 0; i < runs; i++) {
    const run = await runTimed(binary, [guest, options.mode, String(options.count)], { timeoutMs });
    if (run.exitCode !== 0) {
      throw new BenchError("EBENCHRUN", `The C exit ceiling failed (${run.signal ?? `status ${run.exitCode}`}):\n${tail(run.stderr)}`);
    }
    results.push(parseCeilingOutput(run.stdout, options));
  }
  const samples = results.map((r) => r.exitsPerSecond);
  const byRate = [...results].sort((a, b) => a.exitsPerSecond - b.exitsPerSecond);
  return { ...byRate[(byRate.length - 1) >> 1]!, exitsPerSecondSamples: samples };
}

/** Checks and parses the ceiling's JSON line. */
export function parseCeilingOutput(stdout: string, expected: ExitLoopRun): Omit<CeilingResult, "exitsPerSecondSamples"> {
  let value: unknown;
  try {
    value = JSON.parse(stdout);
  } catch {
    throw new BenchError("EBENCHRUN", `The C exit ceiling printed no JSON: '${stdout.trim().slice(0, 200)}'`);
  }
  const r = value as Partial<Record<keyof CeilingResult, unknown>>;
  const numbers = ["count", "exits", "seconds", "exitsPerSecond", "bootSeconds", "otherExits"] as const;
  const bad = numbers.filter((k) => typeof r[k] !== "number" || !Number.isFinite(r[k]));
  if (bad.length > 0 || r.mode !== expected.mode || r.count !== expected.count || r.exits !== expected.count) {
    throw new BenchError("EBENCHRUN", `The C exit ceiling printed an unexpected result: ${stdout.trim()}`);
  }
  return r as Omit<CeilingResult, "exitsPerSecondSamples">;
}
