/**
 * The per-VM overhead section's arithmetic and its printed rows, apart from
 * the runs that feed them (per-vm-overhead.ts), so that a test can check
 * every figure against samples it makes up. Memory is in KiB, times in ms.
 */
import { BenchError } from "./bench-error.js";
import type { OverheadDevices } from "./overhead-args.js";
import type { MemoryProbe, TimingProbe } from "./overhead-probe.js";
import { median } from "./process.js";

/** What the library child (library-vms.ts) is given, as JSON in argv[2]. */
export interface LibraryVmsInput {
  /** dist/bundle/index.js. */
  bundle: string;
  /** The exit-loop guest ELF. */
  guest: string;
  memoryMib: number;
  /** How long to wait after each VM's first byte (and after loading the library) before reading memory. */
  settleMs: number;
  /** One entry per VM: its devices. */
  vms: OverheadDevices[];
  /** MachineConfig.deviceThread of every VM: a device thread each, or the process's one. */
  deviceThread: "vm" | "process";
}

/** One VM of the library run, and the process's memory once it had settled. */
export interface LibraryVmSample {
  /** 1-based, in start order. */
  vm: number;
  /** Machine.create() returned. */
  createMs: number;
  /** Machine.create() called to the guest's first console byte. */
  firstOutputMs: number;
  rssKib: number;
  anonKib: number;
  /** Resident guest RAM of all VMs so far. */
  guestRamKib: number;
  mergedExtraKib: number;
  threads: number;
}

/** The library child's report. */
export interface LibraryVmsReport {
  /** The process with the library loaded, before any VM. */
  baseline: Pick<LibraryVmSample, "rssKib" | "anonKib" | "guestRamKib" | "mergedExtraKib" | "threads">;
  vms: LibraryVmSample[];
  /** VmHWM with every VM up. */
  peakRssKib: number;
  /** In the (random) order they were stopped: Machine.stop() to run() resolved. */
  stops: { vm: number; ms: number; reason: string }[];
}

/** Parses and checks the library child's JSON line. */
export function parseLibraryVmsReport(stdout: string, vms: number): LibraryVmsReport {
  let value: unknown;
  try {
    value = JSON.parse(stdout.trim().split("\n").pop() ?? "");
  } catch {
    throw new BenchError("EBENCHRUN", `The library run printed no report: '${stdout.trim().slice(0, 200)}'`);
  }
  const r = value as Partial<LibraryVmsReport>;
  const finite = (x: unknown) => typeof x === "number" && Number.isFinite(x);
  const sampleOk = (s: Partial<LibraryVmSample> | undefined) =>
    s !== undefined && finite(s.rssKib) && finite(s.anonKib) && finite(s.guestRamKib) && finite(s.mergedExtraKib);
  if (!sampleOk(r.baseline) || !Array.isArray(r.vms) || r.vms.length !== vms || !Array.isArray(r.stops) || r.stops.length !== vms ||
    !finite(r.peakRssKib) || !r.vms.every((s, i) => sampleOk(s) && s.vm === i + 1 && finite(s.createMs) && finite(s.firstOutputMs))) {
    throw new BenchError("EBENCHRUN", `The library run printed an unexpected report: ${stdout.trim().slice(0, 300)}`);
  }
  return r as LibraryVmsReport;
}

/** Memory a VM added to the library process, beyond the guest RAM it touched. */
export interface LibraryAddition {
  vm: number;
  rssKib: number;
  anonKib: number;
}

/** What each VM from the second on added: its sample minus the one before, guest RAM taken out of both. */
export function libraryAdditions(report: LibraryVmsReport): LibraryAddition[] {
  const beyond = (s: LibraryVmsReport["baseline"]) => ({ rss: s.rssKib - s.guestRamKib, anon: s.anonKib - s.guestRamKib });
  return report.vms.slice(1).map((s, i) => {
    const now = beyond(s), before = beyond(report.vms[i]!);
    return { vm: s.vm, rssKib: now.rss - before.rss, anonKib: now.anon - before.anon };
  });
}

/** Every run of the section, as measured. */
export interface OverheadSamples {
  memoryMib: number;
  /** Memory runs, with every device: by vCPU count (1 and 2). */
  memory: { flint: Record<"1" | "2", MemoryProbe[]>; qemu: Record<"1" | "2", MemoryProbe[]> };
  /** Timing runs, with no devices and with every device (the ceiling has none). */
  timing: { flint: Record<"none" | "devices", TimingProbe[]>; qemu: Record<"none" | "devices", TimingProbe[]>; ceiling: TimingProbe[] };
  /** Library runs with a device thread per VM (deviceThread "vm"). */
  library?: LibraryVmsReport[];
  /** Library runs with every VM's devices on the process's device thread (deviceThread "process"). */
  libraryShared?: LibraryVmsReport[];
}

/** A monitor's memory figures: medians over runs. */
export interface MemoryFigures {
  peakRssKib: number;
  peakAnonKib: number;
  guestRamKib: number;
  /** peak RSS - guest RAM (per run, then the median). */
  rssBeyondGuestKib: number;
  anonBeyondGuestKib: number;
  threads: number;
}

function memoryFigures(runs: readonly MemoryProbe[]): MemoryFigures {
  return {
    peakRssKib: median(runs.map((r) => r.peakRssKib)),
    peakAnonKib: median(runs.map((r) => r.peakAnonKib)),
    guestRamKib: median(runs.map((r) => r.guestRam.rssKib)),
    rssBeyondGuestKib: median(runs.map((r) => r.peakRssKib - r.guestRam.rssKib)),
    anonBeyondGuestKib: median(runs.map((r) => r.peakAnonKib - r.guestRam.rssKib)),
    threads: median(runs.map((r) => r.threads)),
  };
}

/** Medians of spawn to first byte and spawn to exit. */
export interface TimingFigures {
  firstOutputMs: number;
  exitMs: number;
}

function timingFigures(runs: readonly TimingProbe[]): TimingFigures {
  return { firstOutputMs: median(runs.map((r) => r.firstOutputMs)), exitMs: median(runs.map((r) => r.exitMs)) };
}

/** The section's figures: what the goal rows print, and what --json keeps next to the samples. */
export interface OverheadSummary {
  memory: { flint: Record<"1" | "2", MemoryFigures>; qemu: Record<"1" | "2", MemoryFigures> };
  /** Median beyond-guest memory with 2 vCPUs minus with 1. */
  perVcpu: { flint: { rssKib: number; anonKib: number }; qemu: { rssKib: number; anonKib: number } };
  timing: { flint: Record<"none" | "devices", TimingFigures>; qemu: Record<"none" | "devices", TimingFigures>; ceiling: TimingFigures };
  /** Library runs, device thread per VM. */
  library?: LibrarySummary;
  /** Library runs, the process's device thread. */
  libraryShared?: LibrarySummary;
}

/** One kind of library run's figures. */
export interface LibrarySummary {
    vms: number;
    /** VMs 2..N of every library run, pooled. */
    addedRssKib: { median: number; max: number };
    addedAnonKib: { median: number; max: number };
    firstOutputMs: { median: number; max: number };
    /** The goal's reference: QEMU's whole-process overhead (median peak RSS beyond guest RAM, 1 vCPU, every device). */
    qemuProcessOverheadKib: number;
    stopMs: { median: number; max: number };
    /** Stops whose run() did not end with "poweroff". */
    badStops: string[];
}

const spread = (xs: readonly number[]) => ({ median: median(xs), max: Math.max(...xs) });

/** Medians, differences and the library's pooled figures. */
export function summarizeOverhead(s: OverheadSamples): OverheadSummary {
  const memory = {
    flint: { 1: memoryFigures(s.memory.flint[1]), 2: memoryFigures(s.memory.flint[2]) },
    qemu: { 1: memoryFigures(s.memory.qemu[1]), 2: memoryFigures(s.memory.qemu[2]) },
  };
  const perVcpu = (m: Record<"1" | "2", MemoryFigures>) => ({
    rssKib: m[2].rssBeyondGuestKib - m[1].rssBeyondGuestKib,
    anonKib: m[2].anonBeyondGuestKib - m[1].anonBeyondGuestKib,
  });
  const summary: OverheadSummary = {
    memory,
    perVcpu: { flint: perVcpu(memory.flint), qemu: perVcpu(memory.qemu) },
    timing: {
      flint: { none: timingFigures(s.timing.flint.none), devices: timingFigures(s.timing.flint.devices) },
      qemu: { none: timingFigures(s.timing.qemu.none), devices: timingFigures(s.timing.qemu.devices) },
      ceiling: timingFigures(s.timing.ceiling),
    },
  };
  if (s.library?.length) summary.library = summarizeLibrary(s.library, memory.qemu[1].rssBeyondGuestKib);
  if (s.libraryShared?.length) summary.libraryShared = summarizeLibrary(s.libraryShared, memory.qemu[1].rssBeyondGuestKib);
  return summary;
}

/** VMs 2..N of every run pooled, against QEMU's whole-process overhead. */
function summarizeLibrary(runs: readonly LibraryVmsReport[], qemuProcessOverheadKib: number): LibrarySummary {
  const added = runs.flatMap(libraryAdditions);
  const later = runs.flatMap((r) => r.vms.slice(1));
  const stops = runs.flatMap((r) => r.stops);
  return {
    vms: runs[0]!.vms.length,
    addedRssKib: spread(added.map((a) => a.rssKib)),
    addedAnonKib: spread(added.map((a) => a.anonKib)),
    firstOutputMs: spread(later.map((v) => v.firstOutputMs)),
    qemuProcessOverheadKib,
    stopMs: spread(stops.map((x) => x.ms)),
    badStops: stops.filter((x) => x.reason !== "poweroff").map((x) => `VM ${x.vm}: ${x.reason}`),
  };
}

const mib = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;
const ms = (x: number) => `${x.toFixed(1)} ms`;
const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`;

/** How the section's runs were set up, for its heading. */
export interface OverheadSetup {
  runs: number;
  memoryMib: number;
  /** Devices QEMU or flint ran without, and why. */
  leftOut: string[];
  libraryRuns: number;
}

/** The section's printed rows. */
export function formatOverheadSection(sum: OverheadSummary, setup: OverheadSetup): string[] {
  const lines: string[] = [];
  const f1 = sum.memory.flint[1], q1 = sum.memory.qemu[1];
  lines.push(`== per-VM overhead: exit-loop guest (PVH, count=0), ${setup.memoryMib} MiB, median of ${setup.runs} interleaved runs ==`);
  lines.push("devices (\"every device\"): virtio-blk on a raw image, virtio-net on a TAP, virtio-vsock, virtio-rng, virtio-balloon; QEMU microvm with virtio-mmio; a serial console on both");
  for (const l of setup.leftOut) lines.push(`  (left out: ${l})`);
  lines.push(`peak RSS beyond touched guest RAM, 1 vCPU, every device: flint ${mib(f1.rssBeyondGuestKib)}, QEMU ${mib(q1.rssBeyondGuestKib)}  ` +
    `(flint/QEMU ${ratio(f1.rssBeyondGuestKib, q1.rssBeyondGuestKib)}, goal <= 1.3x)`);
  lines.push(`  private (anonymous) memory beyond guest RAM: flint ${mib(f1.anonBeyondGuestKib)}, QEMU ${mib(q1.anonBeyondGuestKib)}  ` +
    `(flint/QEMU ${ratio(f1.anonBeyondGuestKib, q1.anonBeyondGuestKib)}, reference)`);
  lines.push(`  whole process: peak RSS flint ${mib(f1.peakRssKib)}, QEMU ${mib(q1.peakRssKib)}; guest RAM touched flint ${f1.guestRamKib} KiB, QEMU ${q1.guestRamKib} KiB; ` +
    `threads flint ${f1.threads}, QEMU ${q1.threads}`);
  const pf = sum.perVcpu.flint, pq = sum.perVcpu.qemu;
  lines.push(`each further vCPU (2 vCPUs minus 1): flint +${mib(pf.rssKib)} RSS, +${mib(pf.anonKib)} private  (goal <= 8 MiB); ` +
    `QEMU +${mib(pq.rssKib)} RSS, +${mib(pq.anonKib)} private (reference)`);
  const c = sum.timing.ceiling;
  for (const set of ["none", "devices"] as const) {
    const f = sum.timing.flint[set], q = sum.timing.qemu[set];
    const label = set === "none" ? "no devices" : "every device";
    lines.push(`start to first guest instruction (its first COM1 byte on stdout), ${label}: flint ${ms(f.firstOutputMs)}, QEMU ${ms(q.firstOutputMs)}, ` +
      `C ceiling ${ms(c.firstOutputMs)}  (flint/QEMU ${ratio(f.firstOutputMs, q.firstOutputMs)}, goal <= 1.0x; flint/ceiling ${ratio(f.firstOutputMs, c.firstOutputMs)})`);
    lines.push(`start to exit after the guest's end marker, ${label}: flint ${ms(f.exitMs)}, QEMU ${ms(q.exitMs)}, ` +
      `C ceiling ${ms(c.exitMs)}  (flint/QEMU ${ratio(f.exitMs, q.exitMs)}, goal <= 1.0x; flint/ceiling ${ratio(f.exitMs, c.exitMs)})`);
  }
  const libraries = [
    { lib: sum.library, how: "a device thread per VM; one vCPU thread, one device thread and one KVM VM kept ready" },
    { lib: sum.libraryShared, how: "every VM's devices on the process's device thread (deviceThread \"process\"); one vCPU thread and one KVM VM kept ready" },
  ];
  for (const { lib, how } of libraries) {
    if (!lib) continue;
    lines.push(`library, ${lib.vms} VMs with every device in one Node process, ${how} (${setup.libraryRuns} run(s); VMs 2..${lib.vms} pooled): ` +
      `each adds ${mib(lib.addedRssKib.median)} RSS beyond guest RAM (max ${mib(lib.addedRssKib.max)}), ` +
      `${(lib.addedRssKib.median / lib.qemuProcessOverheadKib).toFixed(2)}x QEMU's whole-process ${mib(lib.qemuProcessOverheadKib)}  (goal <= 0.5x)`);
    lines.push(`  private memory each adds: ${mib(lib.addedAnonKib.median)} (max ${mib(lib.addedAnonKib.max)})`);
    lines.push(`  Machine.create to the guest's first console byte: ${ms(lib.firstOutputMs.median)} (max ${ms(lib.firstOutputMs.max)})  (goal <= 20 ms)`);
    lines.push(`  stopped in random order: stop() to run() resolved ${ms(lib.stopMs.median)} (max ${ms(lib.stopMs.max)})` +
      (lib.badStops.length ? `; not powered off: ${lib.badStops.join(", ")}` : "; every VM powered off"));
  }
  return lines;
}
