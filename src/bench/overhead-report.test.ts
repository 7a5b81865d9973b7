import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BenchError } from "./bench-error.js";
import type { MemoryProbe, TimingProbe } from "./overhead-probe.js";
import {
  type LibraryVmSample, type LibraryVmsReport, type OverheadSamples,
  formatOverheadSection, libraryAdditions, parseLibraryVmsReport, summarizeOverhead,
} from "./overhead-report.js";

const mem = (peakRssKib: number, peakAnonKib: number, guestKib: number): MemoryProbe => ({
  firstOutputMs: 1, peakRssKib, peakAnonKib, guestRam: { rssKib: guestKib, mappings: 1, mergedExtraKib: 0 }, threads: 5,
});
const time = (firstOutputMs: number, exitMs: number): TimingProbe => ({ firstOutputMs, exitMs });

const vm = (n: number, rssKib: number, anonKib: number, guestRamKib: number, firstOutputMs = 10): LibraryVmSample => ({
  vm: n, createMs: 1, firstOutputMs, rssKib, anonKib, guestRamKib, mergedExtraKib: 0, threads: 10,
});

const library: LibraryVmsReport = {
  baseline: { rssKib: 40_000, anonKib: 8_000, guestRamKib: 0, mergedExtraKib: 0, threads: 7 },
  vms: [vm(1, 60_000, 20_000, 100), vm(2, 70_100, 26_100, 200, 12), vm(3, 82_200, 34_200, 300, 30)],
  peakRssKib: 90_000,
  stops: [{ vm: 2, ms: 5, reason: "poweroff" }, { vm: 1, ms: 7, reason: "poweroff" }, { vm: 3, ms: 9, reason: "error" }],
};

/** The same run with every VM's devices on the process's device thread: VMs 2 and 3 add 5 and 6 MiB beyond guest RAM. */
const libraryShared: LibraryVmsReport = {
  ...library,
  vms: [vm(1, 60_000, 20_000, 100), vm(2, 65_220, 24_000, 200, 8), vm(3, 71_464, 28_000, 300, 14)],
  stops: [{ vm: 1, ms: 5, reason: "poweroff" }, { vm: 2, ms: 6, reason: "poweroff" }, { vm: 3, ms: 7, reason: "poweroff" }],
};

const samples: OverheadSamples = {
  memoryMib: 64,
  memory: {
    // flint: beyond guest 40 MiB with 1 vCPU (medians of 3), 46 MiB with 2.
    flint: { 1: [mem(41_060, 21_060, 100), mem(41_160, 21_160, 200), mem(99_999, 99_999, 0)], 2: [mem(47_204, 27_204, 100)] },
    qemu: { 1: [mem(22_528, 10_240, 2048)], 2: [mem(22_628, 10_340, 2048)] },
  },
  timing: {
    flint: { none: [time(100, 120), time(300, 330), time(200, 220)], devices: [time(400, 500)] },
    qemu: { none: [time(50, 60)], devices: [time(80, 100)] },
    ceiling: [time(5, 7)],
  },
  library: [library],
  libraryShared: [libraryShared],
};

describe("summarizeOverhead", () => {
  const s = summarizeOverhead(samples);

  it("takes guest RAM out of each run before the median", () => {
    assert.equal(s.memory.flint[1].rssBeyondGuestKib, 40_960);
    assert.equal(s.memory.flint[1].anonBeyondGuestKib, 20_960);
    assert.equal(s.memory.qemu[1].rssBeyondGuestKib, 20_480);
    assert.equal(s.memory.flint[1].peakRssKib, 41_160);
  });

  it("gives the cost of a further vCPU as 2 vCPUs minus 1", () => {
    assert.deepEqual(s.perVcpu.flint, { rssKib: 47_104 - 40_960, anonKib: 27_104 - 20_960 });
    assert.deepEqual(s.perVcpu.qemu, { rssKib: 100, anonKib: 100 });
  });

  it("takes the median of each time", () => {
    assert.deepEqual(s.timing.flint.none, { firstOutputMs: 200, exitMs: 220 });
    assert.deepEqual(s.timing.ceiling, { firstOutputMs: 5, exitMs: 7 });
  });

  it("pools VMs 2..N of the library runs against QEMU's whole-process overhead", () => {
    assert.deepEqual(s.library?.addedRssKib, { median: 11_000, max: 12_000 });
    assert.deepEqual(s.library?.addedAnonKib, { median: 7_000, max: 8_000 });
    assert.deepEqual(s.library?.firstOutputMs, { median: 21, max: 30 });
    assert.equal(s.library?.qemuProcessOverheadKib, 20_480);
    assert.deepEqual(s.library?.badStops, ["VM 3: error"]);
    assert.deepEqual(s.libraryShared?.addedRssKib, { median: 5_632, max: 6_144 });
    assert.deepEqual(s.libraryShared?.firstOutputMs, { median: 11, max: 14 });
    assert.deepEqual(s.libraryShared?.badStops, []);
  });
});

describe("libraryAdditions", () => {
  it("is each VM's memory beyond guest RAM minus the previous VM's", () => {
    assert.deepEqual(libraryAdditions(library), [
      { vm: 2, rssKib: 10_000, anonKib: 6_000 },
      { vm: 3, rssKib: 12_000, anonKib: 8_000 },
    ]);
  });
});

describe("parseLibraryVmsReport", () => {
  const line = JSON.stringify(library);

  it("takes the last line and checks it has one sample and one stop per VM", () => {
    assert.deepEqual(parseLibraryVmsReport(`noise\n${line}\n`, 3), library);
    assert.throws(() => parseLibraryVmsReport(line, 4), (e: BenchError) => e.code === "EBENCHRUN");
    assert.throws(() => parseLibraryVmsReport(line.replace('"rssKib":70100', '"rssKib":null'), 3), BenchError);
    assert.throws(() => parseLibraryVmsReport(line.replace('"vm":2,"createMs"', '"vm":5,"createMs"'), 3), BenchError);
    assert.throws(() => parseLibraryVmsReport("Error: boom", 3), BenchError);
  });
});

describe("formatOverheadSection", () => {
  const lines = formatOverheadSection(summarizeOverhead(samples), { runs: 3, memoryMib: 64, leftOut: ["vsock on QEMU: no /dev/vhost-vsock"], libraryRuns: 1 });
  const line = (start: string) => lines.find((l) => l.startsWith(start)) ?? assert.fail(`no line starting '${start}' in:\n${lines.join("\n")}`);

  it("prints each goal row as a ratio next to its goal", () => {
    assert.match(line("peak RSS beyond touched guest RAM"), /flint 40\.0 MiB, QEMU 20\.0 MiB {2}\(flint\/QEMU 2\.00x, goal <= 1\.3x\)/);
    assert.match(line("each further vCPU"), /flint \+6\.0 MiB RSS, \+6\.0 MiB private {2}\(goal <= 8 MiB\)/);
    assert.match(line("start to first guest instruction (its first COM1 byte on stdout), no devices"), /flint 200\.0 ms, QEMU 50\.0 ms, C ceiling 5\.0 ms {2}\(flint\/QEMU 4\.00x, goal <= 1\.0x; flint\/ceiling 40\.00x\)/);
    assert.match(line("start to exit after the guest's end marker, every device"), /flint 500\.0 ms, QEMU 100\.0 ms.*flint\/QEMU 5\.00x, goal <= 1\.0x/);
    assert.match(line("library, 3 VMs with every device in one Node process, a device thread per VM"), /each adds 10\.7 MiB RSS beyond guest RAM \(max 11\.7 MiB\), 0\.54x QEMU's whole-process 20\.0 MiB {2}\(goal <= 0\.5x\)/);
    assert.match(line("library, 3 VMs with every device in one Node process, every VM's devices on the process's device thread"), /each adds 5\.5 MiB RSS beyond guest RAM \(max 6\.0 MiB\), 0\.28x QEMU's whole-process 20\.0 MiB {2}\(goal <= 0\.5x\)/);
    assert.match(line("  Machine.create to the guest's first console byte"), /21\.0 ms \(max 30\.0 ms\) {2}\(goal <= 20 ms\)/);
    assert.match(line("  stopped in random order"), /not powered off: VM 3: error/);
  });

  it("says what was left out", () => {
    assert.ok(lines.includes("  (left out: vsock on QEMU: no /dev/vhost-vsock)"));
  });
});
