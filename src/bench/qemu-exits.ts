/**
 * QEMU on the exit-loop guest: the same ELF and command line as the C
 * ceiling and flint, booted by `qemu-system-x86_64 -accel kvm -M microvm`.
 *
 * QEMU cannot timestamp the guest's start marker, so exits per second come
 * from differencing: the median wall time of whole QEMU runs with `count`
 * exits minus the median with none (start-up, boot and teardown cancel out),
 * divided into `count`. The runs alternate so that drift hits both sides.
 *
 * Memory: one more run in which the end marker goes to an isa-debugcon
 * instead of isa-debug-exit, so QEMU stays up (the guest spins in ring 3)
 * and can be inspected: peak RSS (VmHWM in /proc/<pid>/status) minus what
 * the guest RAM mapping has resident (its Rss in /proc/<pid>/smaps) is the
 * host memory QEMU itself needs.
 */
import { spawn, execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { BenchError } from "./bench-error.js";
import {
  EXIT_LOOP_END_MARKER_PORT,
  EXIT_LOOP_END_OK,
  type ExitLoopMode,
  type ExitLoopRun,
  buildExitLoopGuest,
  checkExitLoopRun,
  exitLoopCmdline,
} from "../guest/programs/exit-loop.js";
import { median, runTimed, tail } from "./process.js";

/**
 * microvm boots a PVH ELF given to -kernel (verified with QEMU 7.2): its
 * x86_load_linux runs with PVH enabled, loads the PT_LOAD segments and reads
 * the Xen PHYS32_ENTRY note, and its qboot firmware enters the kernel in
 * 32-bit protected mode with EBX = hvm_start_info. Every device the guest
 * never uses is switched off (serial, RTC, PIT, PIC, ACPI tables: about
 * 5 MiB of RSS, no effect on exit handling), and auto-kernel-cmdline=off
 * keeps QEMU from appending virtio-mmio words to the command line. The
 * default CPU model is kept: `-cpu host` makes QEMU abort on hosts whose KVM
 * refuses some MSRs (e.g. kvm_pvm and MSR_IA32_ARCH_CAPABILITIES).
 */
export const QEMU_MACHINE = "microvm,isa-serial=off,rtc=off,pit=off,pic=off,acpi=off,auto-kernel-cmdline=off";

/** QEMU's isa-debug-exit turns an end-marker value v into exit status 2v + 1. */
const QEMU_EXIT_OK = 2 * EXIT_LOOP_END_OK + 1;

/** Options for {@link runQemuExits}. */
export interface QemuExitsOptions extends ExitLoopRun {
  /** Runs with `count` exits and runs with none, each (default 3). */
  runs?: number;
  /** Guest RAM (default 64). */
  memSizeMib?: number;
  /** Default `qemu-system-x86_64` from PATH. */
  qemuBinary?: string;
  /** Per QEMU run; default two minutes plus a millisecond per hundred exits. */
  timeoutMs?: number;
}

/** What QEMU measured. */
export interface QemuExitsResult {
  mode: ExitLoopMode;
  count: number;
  runs: number;
  exitsPerSecond: number;
  /** Median seconds with `count` exits minus median seconds with none. */
  seconds: number;
  /** Wall seconds of each run with `count` exits, in run order. */
  secondsWithExits: number[];
  /** Wall seconds of each run with no exits, in run order. */
  secondsBaseline: number[];
  /** peakRssKib - guestRamTouchedKib. */
  memoryOverheadKib: number;
  /** VmHWM of the QEMU process. */
  peakRssKib: number;
  /** Resident part of the guest RAM mapping (transparent huge pages count whole). */
  guestRamTouchedKib: number;
  memSizeMib: number;
  machine: string;
  qemuVersion: string;
}

/** QEMU's arguments for one run; `end` chooses what sits on the end-marker port. */
export function qemuExitsArgs(
  guestElf: string,
  run: ExitLoopRun,
  memSizeMib: number,
  end: "debug-exit" | "debugcon-stdout",
): string[] {
  const port = `0x${EXIT_LOOP_END_MARKER_PORT.toString(16)}`;
  const endDevice =
    end === "debug-exit"
      ? ["-device", `isa-debug-exit,iobase=${port},iosize=4`]
      : ["-chardev", "stdio,id=endmarker", "-device", `isa-debugcon,iobase=${port},chardev=endmarker`];
  return [
    "-accel", "kvm",
    "-M", QEMU_MACHINE,
    "-nodefaults", "-no-user-config", "-nographic",
    "-m", String(memSizeMib),
    "-kernel", guestElf,
    "-append", exitLoopCmdline(run),
    ...endDevice,
  ];
}

/** Runs QEMU with and without exits, `runs` times each, and once more for memory. */
export async function runQemuExits(options: QemuExitsOptions): Promise<QemuExitsResult> {
  checkExitLoopRun(options);
  if (options.count === 0) {
    throw new BenchError("EBENCHARG", "Cannot measure QEMU's exit rate: count must be above 0 (it is differenced against 0)");
  }
  const runs = options.runs ?? 3;
  const memSizeMib = options.memSizeMib ?? 64;
  const qemu = options.qemuBinary ?? "qemu-system-x86_64";
  const timeoutMs = options.timeoutMs ?? 120_000 + options.count / 100;
  if (!Number.isInteger(runs) || runs < 1) throw new BenchError("EBENCHARG", `Cannot run QEMU ${runs} times`);
  const guest = buildExitLoopGuest();
  const qemuVersion = qemuVersionOf(qemu);

  const once = async (count: number): Promise<number> => {
    const run = { mode: options.mode, count };
    const result = await runTimed(qemu, qemuExitsArgs(guest, run, memSizeMib, "debug-exit"), { timeoutMs });
    if (result.exitCode !== QEMU_EXIT_OK) {
      const how = result.signal ?? `status ${result.exitCode}`;
      throw new BenchError("EBENCHRUN", `QEMU did not reach the end marker with '${exitLoopCmdline(run)}' (${how}; status 1 is success):\n${tail(result.stderr)}`);
    }
    return result.seconds;
  };
  const secondsWithExits: number[] = [];
  const secondsBaseline: number[] = [];
  for (let i = 0; i < runs; i++) {
    secondsBaseline.push(await once(0));
    secondsWithExits.push(await once(options.count));
  }
  const seconds = median(secondsWithExits) - median(secondsBaseline);
  if (!(seconds > 0)) {
    throw new BenchError("EBENCHRUN", `Cannot measure QEMU's exit rate: ${options.count} exits took no measurable time over none; use a larger count`);
  }

  const memory = await measureQemuMemory(
    qemu,
    qemuExitsArgs(guest, { mode: options.mode, count: Math.min(options.count, 10_000) }, memSizeMib, "debugcon-stdout"),
    memSizeMib,
    timeoutMs,
  );
  return {
    mode: options.mode,
    count: options.count,
    runs,
    exitsPerSecond: options.count / seconds,
    seconds,
    secondsWithExits,
    secondsBaseline,
    memoryOverheadKib: memory.peakRssKib - memory.guestRamTouchedKib,
    ...memory,
    memSizeMib,
    machine: QEMU_MACHINE,
    qemuVersion,
  };
}

function qemuVersionOf(qemu: string): string {
  try {
    return execFileSync(qemu, ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).split("\n")[0]!.trim();
  } catch (error) {
    throw new BenchError("EBENCHRUN", `Cannot run ${qemu}: ${(error as Error).message} (apt-get install qemu-system-x86)`, { cause: error });
  }
}

/**
 * Starts QEMU with the end marker on a debugcon to stdout, waits for that
 * byte (the guest has finished and spins in ring 3), reads the process's
 * peak RSS and guest-RAM residency, and kills it.
 */
function measureQemuMemory(
  qemu: string,
  args: string[],
  memSizeMib: number,
  timeoutMs: number,
): Promise<{ peakRssKib: number; guestRamTouchedKib: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(qemu, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stderr = "";
    let outcome: { ok: { peakRssKib: number; guestRamTouchedKib: number } } | { error: Error } | undefined;
    const finish = (result: NonNullable<typeof outcome>): void => {
      if (outcome) return;
      outcome = result;
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    };
    const timer = setTimeout(() => {
      finish({ error: new BenchError("EBENCHTIMEOUT", `QEMU did not reach the end marker within ${timeoutMs} ms:\n${tail(stderr)}`) });
    }, timeoutMs);
    child.stderr!.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    child.stdout!.once("data", (chunk: Buffer) => {
      if (chunk[0] !== EXIT_LOOP_END_OK) {
        finish({ error: new BenchError("EBENCHRUN", `The guest ended with code ${chunk[0]} under QEMU`) });
        return;
      }
      try {
        const pid = child.pid!;
        const peakRssKib = parseStatusKib(readFileSync(`/proc/${pid}/status`, "utf8"), "VmHWM");
        const guestRamTouchedKib = parseSmapsRssKib(readFileSync(`/proc/${pid}/smaps`, "utf8"), memSizeMib * 1024);
        finish({ ok: { peakRssKib, guestRamTouchedKib } });
      } catch (error) {
        finish({ error: error as Error });
      }
    });
    child.on("error", (error) => {
      // 'close' may not follow a failed spawn: settle here too.
      finish({ error: new BenchError("EBENCHRUN", `Cannot run ${qemu}: ${error.message}`, { cause: error }) });
      if ("error" in outcome!) reject(outcome.error);
    });
    child.on("close", (exitCode, signal) => {
      finish({ error: new BenchError("EBENCHRUN", `QEMU exited (${signal ?? `status ${exitCode}`}) before the end marker:\n${tail(stderr)}`) });
      if ("ok" in outcome!) resolve(outcome.ok);
      else reject(outcome!.error);
    });
  });
}

/** A `Name:   1234 kB` field of /proc/<pid>/status, in KiB. */
export function parseStatusKib(status: string, field: string): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status);
  if (!match) throw new BenchError("EBENCHRUN", `Cannot find ${field} in /proc/<pid>/status`);
  return Number(match[1]);
}

/**
 * The Rss of the anonymous mapping of exactly `sizeKib` in /proc/<pid>/smaps:
 * QEMU's guest RAM. The largest, if there are several.
 */
export function parseSmapsRssKib(smaps: string, sizeKib: number): number {
  let best: number | undefined;
  let anonymous = false;
  let size = -1;
  for (const line of smaps.split("\n")) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) {
      anonymous = header[1] === "";
      size = -1;
      continue;
    }
    const field = /^(Size|Rss):\s+(\d+) kB$/.exec(line);
    if (!field) continue;
    if (field[1] === "Size") size = Number(field[2]);
    else if (anonymous && size === sizeKib) best = Math.max(best ?? 0, Number(field[2]));
  }
  if (best === undefined) {
    throw new BenchError("EBENCHRUN", `Cannot find QEMU's guest RAM: no anonymous mapping of ${sizeKib} KiB in /proc/<pid>/smaps`);
  }
  return best;
}
