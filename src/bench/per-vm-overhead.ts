/**
 * The per-VM overhead section of `npm run bench` (issue 10's goal rows),
 * all on this host's /dev/kvm with the exit-loop guest (count=0), flint as
 * users run it (`node dist/bundle/main.js run`), QEMU microvm and the C
 * ceiling side by side, runs interleaved round by round (the order flipped
 * every round) so that host drift hits all alike:
 *
 *   1. peak RSS beyond the touched guest RAM, 1 vCPU, every device, and
 *      private (anonymous) memory next to it;
 *   2. the same with 2 vCPUs, minus 1: what each further vCPU costs;
 *   3. process start to the guest's first instruction (its `hello` byte on
 *      COM1, seen on the monitor's stdout) and to the process's exit after
 *      the guest's end marker, with no devices and with every device;
 *   4. flint as a library: N VMs in one Node process (library-vms.ts), with
 *      a device thread per VM and with every VM's devices on the process's
 *      device thread, interleaved run by run.
 *
 * Only the memory and multi-VM runs keep the guest up; it then halts
 * (`halt`), so no guest spins a core while memory is read.
 */
import { fileURLToPath } from "node:url";
import { BenchError } from "./bench-error.js";
import { buildCeiling } from "./c-ceiling.js";
import { buildExitLoopGuest, type ExitLoopRun } from "../guest/programs/exit-loop.js";
import { EXIT_STATUS_ON_END, type OverheadRun, ceilingRunArgs, flintRunArgs, qemuRunArgs } from "./overhead-args.js";
import { type OverheadHost, prepareOverheadHost } from "./overhead-host.js";
import { type ProbeCommand, probeMemory, probeTiming } from "./overhead-probe.js";
import {
  type LibraryVmsInput, type LibraryVmsReport, type OverheadSamples, type OverheadSetup, type OverheadSummary,
  formatOverheadSection, parseLibraryVmsReport, summarizeOverhead,
} from "./overhead-report.js";
import { runTimed, tail } from "./process.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const LIBRARY = fileURLToPath(new URL("../bundle/index.js", import.meta.url));
const LIBRARY_CHILD = fileURLToPath(new URL("./library-vms.js", import.meta.url));

/** Options for {@link measureOverhead}. */
export interface OverheadOptions {
  /** Rounds of interleaved runs (default 7). */
  runs?: number;
  /** Guest RAM of every VM (default 64). */
  memoryMib?: number;
  /** How long a memory run waits after the guest's first byte before reading /proc (default 300). */
  settleMs?: number;
  /** VMs in the library process (default 8; 0 skips figure 4). */
  libraryVms?: number;
  /** Library runs (default 3). */
  libraryRuns?: number;
  /** Called before each round, e.g. for progress. */
  onRound?: (round: number) => void;
}

/** The section's results: samples, figures and how they were made, for --json. */
export interface OverheadResult {
  setup: OverheadSetup;
  summary: OverheadSummary;
  samples: OverheadSamples;
  qemuVersion: string;
}

/** Runs every figure of the section and returns samples and medians. */
export async function measureOverhead(options: OverheadOptions = {}): Promise<OverheadResult> {
  const runs = options.runs ?? 7;
  const memoryMib = options.memoryMib ?? 64;
  const settleMs = options.settleMs ?? 300;
  const libraryVms = options.libraryVms ?? 8;
  const libraryRuns = libraryVms > 0 ? (options.libraryRuns ?? 3) : 0;
  if (!Number.isInteger(runs) || runs < 1) throw new BenchError("EBENCHARG", `Cannot run the overhead section ${runs} times`);
  const guest = buildExitLoopGuest();
  const ceiling = buildCeiling();
  const qemuVersion = (await runTimed("qemu-system-x86_64", ["--version"], { timeoutMs: 30_000, installHint: "apt-get install qemu-system-x86" }))
    .stdout.split("\n")[0]!.trim();
  const host = prepareOverheadHost(Math.max(1, libraryVms));
  try {
    const leftOut: string[] = [];
    if (host.tapMissing) leftOut.push(`virtio-net on both monitors: ${host.tapMissing}`);
    if (host.qemuVsockMissing) leftOut.push(`vsock on QEMU (vhost-vsock-device): ${host.qemuVsockMissing}; flint keeps its vsock, which costs it`);
    const samples: OverheadSamples = {
      memoryMib,
      memory: { flint: { 1: [], 2: [] }, qemu: { 1: [], 2: [] } },
      timing: { flint: { none: [], devices: [] }, qemu: { none: [], devices: [] }, ceiling: [] },
    };
    const up: ExitLoopRun = { mode: "pio", count: 0, hello: true, halt: true };
    const ends: ExitLoopRun = { mode: "pio", count: 0, hello: true };
    const commands = (run: OverheadRun) => ({
      flint: { name: "flint", file: process.execPath, args: [CLI, ...flintRunArgs(guest, run)] } satisfies ProbeCommand,
      qemu: { name: "QEMU", file: "qemu-system-x86_64", args: qemuRunArgs(guest, run) } satisfies ProbeCommand,
    });
    for (let round = 0; round < runs; round++) {
      options.onRound?.(round);
      // Flip who goes first every round: a monitor's run may warm the page cache or the CPU for the next one.
      const monitors = round % 2 === 0 ? (["flint", "qemu"] as const) : (["qemu", "flint"] as const);
      for (const cpus of [1, 2] as const) {
        const cmd = commands({ cpus, memoryMib, guest: up, devices: host.devices(0), exitOnEnd: false });
        for (const m of monitors) samples.memory[m][cpus].push(await probeMemory(cmd[m], memoryMib, settleMs));
      }
      for (const set of ["none", "devices"] as const) {
        const cmd = commands({ cpus: 1, memoryMib, guest: ends, devices: set === "devices" ? host.devices(0) : undefined, exitOnEnd: true });
        for (const m of monitors) samples.timing[m][set].push(await probeTiming(cmd[m], EXIT_STATUS_ON_END[m]));
      }
      samples.timing.ceiling.push(await probeTiming({ name: "the C ceiling", file: ceiling, args: ceilingRunArgs(guest, ends) }, EXIT_STATUS_ON_END.ceiling));
    }
    if (libraryRuns > 0) {
      samples.library = [];
      samples.libraryShared = [];
      // Interleaved, so that both kinds see the same machine.
      for (let i = 0; i < libraryRuns; i++) {
        samples.library.push(await runLibraryVms(host, guest, memoryMib, settleMs, libraryVms, "vm"));
        samples.libraryShared.push(await runLibraryVms(host, guest, memoryMib, settleMs, libraryVms, "process"));
      }
    }
    const setup: OverheadSetup = { runs, memoryMib, leftOut, libraryRuns };
    return { setup, summary: summarizeOverhead(samples), samples, qemuVersion };
  } finally {
    host.close();
  }
}

/** Figure 4: one library process with `vms` VMs (library-vms.ts), their devices on a thread each or on the process's one. */
async function runLibraryVms(
  host: OverheadHost, guest: string, memoryMib: number, settleMs: number, vms: number, deviceThread: LibraryVmsInput["deviceThread"],
): Promise<LibraryVmsReport> {
  const input: LibraryVmsInput = { bundle: LIBRARY, guest, memoryMib, settleMs, vms: Array.from({ length: vms }, (_, i) => host.devices(i)), deviceThread };
  const r = await runTimed(process.execPath, [LIBRARY_CHILD, JSON.stringify(input)], { timeoutMs: 120_000 + vms * 10_000 });
  if (r.exitCode !== 0) throw new BenchError("EBENCHRUN", `The library run failed (${r.signal ?? `status ${r.exitCode}`}):\n${tail(r.stderr)}`);
  return parseLibraryVmsReport(r.stdout, vms);
}

/** Measures and prints the section; returns everything for --json. */
export async function printOverheadSection(out: (line: string) => void, options: OverheadOptions = {}): Promise<OverheadResult> {
  const started = performance.now();
  const result = await measureOverhead(options);
  for (const line of formatOverheadSection(result.summary, result.setup)) out(line);
  out(`  (${result.qemuVersion}; section took ${((performance.now() - started) / 1000).toFixed(0)} s)`);
  return result;
}
