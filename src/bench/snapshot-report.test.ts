import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BenchError } from "./bench-error.js";
import {
  type CloneSample, type ProcessRestoreSamples, type ProcessSharingSample, type SmapsRollup, type SnapshotClonesReport, type SnapshotShape,
  findFileMapping, formatSnapshotSection, parseSmapsRollup, parseSnapshotClonesReport, percentile, shapeName, summarizeSnapshots,
} from "./snapshot-report.js";

const SMALL: SnapshotShape = { memoryMib: 64, touch: 32 };
const LARGE: SnapshotShape = { memoryMib: 1024, touch: 32 };
const MiB = 1 << 20;

/** A clone whose steps are 1 + 0.5 + kvmVm + 2 + 0.5 + thread + first ms. */
const clone = (shape: SnapshotShape, pool: CloneSample["pool"], kvmVmMs: number, threadStartMs = 2, firstInstructionMs = 1): CloneSample => {
  const steps = { stateMs: 1, mapMs: 0.5, kvmVmMs, registerMs: 2, vcpuStateMs: 0.5, threadStartMs, firstInstructionMs };
  return { shape: shapeName(shape), pool, ...steps, totalMs: Object.values(steps).reduce((a, b) => a + b, 0) };
};

const made = (shape: SnapshotShape, createMs: number, dataMib: number) => ({
  shape, createMs, stateBytes: 26_000, memoryBytes: shape.memoryMib * MiB, memoryDataBytes: dataMib * MiB, passes: 3,
});

const latency: SnapshotClonesReport = {
  job: "latency",
  snapshots: [made(SMALL, 30, 32), made(LARGE, 40, 32), made(SMALL, 50, 32), made(LARGE, 60, 32)],
  clones: [
    // SMALL warm totals 13, 15, 23 (KVM VM 6, 8, 16 ms): median 15, p90 23; LARGE 14, 16, 19.
    clone(SMALL, "warm", 6), clone(LARGE, "warm", 7), clone(SMALL, "warm", 8), clone(LARGE, "warm", 9),
    clone(SMALL, "warm", 16), clone(LARGE, "warm", 12), clone(SMALL, "cold", 6, 80),
  ],
};

const rollup = (pssKib: number, rssKib = pssKib * 2): SmapsRollup => ({ rssKib, pssKib, pssAnonKib: pssKib / 2, pssFileKib: pssKib / 2, privateDirtyKib: 1 });

const sharing: SnapshotClonesReport = {
  job: "sharing",
  snapshots: [made({ memoryMib: 256, touch: 200 }, 500, 200)],
  clones: [],
  sharing: { clones: 8, baseline: rollup(40 * 1024), withClones: rollup(300 * 1024), readMs: 900, statePath: "/s", memoryPath: "/m" },
};

const processRestore: ProcessRestoreSamples = {
  memoryMib: 64, flintStateBytes: 26_000, qemuFileBytes: 200_000,
  flintSpawn: [200, 180, 220], qemuSpawn: [40, 45, 50], flintLoad: [30, 20, 40], qemuLoad: [10, 12, 11],
};

const processSharing: ProcessSharingSample = { clones: 2, each: [rollup(250 * 1024), rollup(150 * 1024)], readMs: 1000 };

describe("snapshot section report", () => {
  it("names a guest shape by its RAM and what it wrote", () => {
    assert.equal(shapeName(SMALL), "64 MiB, 32 MiB written");
    assert.equal(shapeName({ memoryMib: 1024, touch: "all" }), "1024 MiB, all written");
  });

  it("takes the nearest-rank percentile", () => {
    assert.equal(percentile([5, 1, 4, 2, 3], 90), 5);
    assert.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90), 9);
    assert.equal(percentile([7], 50), 7);
    assert.throws(() => percentile([], 50), RangeError);
  });

  it("parses smaps_rollup and refuses one without Pss", () => {
    const text = "55d0c0000000-7ffd00000000 ---p 00000000 00:00 0                          [rollup]\n" +
      "Rss:              71316 kB\nPss:              39297 kB\nPss_Anon:         28084 kB\nPss_File:         11213 kB\nPss_Shmem:            0 kB\n" +
      "Shared_Clean:     33000 kB\nPrivate_Dirty:    28084 kB\n";
    assert.deepEqual(parseSmapsRollup(text), { rssKib: 71316, pssKib: 39297, pssAnonKib: 28084, pssFileKib: 11213, privateDirtyKib: 28084 });
    assert.throws(() => parseSmapsRollup("Rss: 1 kB\n"), (e: unknown) => e instanceof BenchError && /Pss/.test(e.message));
  });

  it("finds a guest address in a process's mapping of the memory file, by file offset", () => {
    const maps = [
      "5581a0000000-5581a0021000 r--p 00000000 fe:01 123   /usr/bin/node",
      "7f0000000000-7f0010000000 rw-p 00000000 fe:01 777   /tmp/x/s0.mem",
      "7f0020000000-7f0030000000 rw-p 10000000 fe:01 777   /tmp/x/s0.mem",
      "7f0040000000-7f0040001000 rw-p 00000000 fe:01 778   /tmp/x/s0.mem.other",
    ].join("\n");
    assert.equal(findFileMapping(maps, "/tmp/x/s0.mem", 0x90008), 0x7f0000090008);
    assert.equal(findFileMapping(maps, "/tmp/x/s0.mem", 0x1000_0010), 0x7f0020000010);
    assert.equal(findFileMapping(maps, "/tmp/x/s0.mem", 0x2000_0000), undefined);
    assert.equal(findFileMapping(maps, "/tmp/y.mem", 0), undefined);
  });

  it("parses the clones child's report and refuses one of the wrong job or with a bad sample", () => {
    const line = JSON.stringify(latency);
    assert.deepEqual(parseSnapshotClonesReport(`noise\n${line}\n`, "latency"), latency);
    assert.throws(() => parseSnapshotClonesReport(line, "sharing"), (e: unknown) => e instanceof BenchError && e.code === "EBENCHRUN");
    assert.throws(() => parseSnapshotClonesReport(JSON.stringify({ ...latency, clones: [{ ...latency.clones[0], totalMs: null }] }), "latency"), BenchError);
    assert.throws(() => parseSnapshotClonesReport("not json", "latency"), /printed no report/);
    assert.deepEqual(parseSnapshotClonesReport(JSON.stringify(sharing), "sharing"), sharing);
  });

  it("summarizes: clone median, p90 and step shares, flatness, creates, new-process ratios and sharing", () => {
    const s = summarizeSnapshots({ latency, flatPairs: [[SMALL, LARGE]], sharing, processRestore, processSharing });
    assert.equal(s.clone.shape, "64 MiB, 32 MiB written");
    assert.deepEqual({ count: s.clone.warm.count, median: s.clone.warm.medianMs, p90: s.clone.warm.p90Ms }, { count: 3, median: 15, p90: 23 });
    assert.deepEqual(s.clone.warm.steps.map((x) => x.medianMs), [1, 0.5, 8, 2, 0.5, 2, 1]);
    assert.equal(s.clone.warm.steps[2]!.share, 8 / 15);
    assert.equal(s.clone.cold!.medianMs, 91);
    // Round by round 14/13, 16/15, 19/23: the median ratio is 16/15, not the ratio of the medians.
    assert.deepEqual(s.flat, [{ small: "64 MiB, 32 MiB written", large: "1024 MiB, 32 MiB written", smallMs: 15, largeMs: 16, ratio: 16 / 15 }]);
    assert.deepEqual(s.creates.map((c) => [c.shape, c.count, c.medianMs, c.dataBytes]), [
      ["64 MiB, 32 MiB written", 2, 40, 32 * MiB], ["1024 MiB, 32 MiB written", 2, 50, 32 * MiB],
    ]);
    assert.deepEqual(s.process, { memoryMib: 64, runs: 3, flintSpawnMs: 200, qemuSpawnMs: 45, spawnRatio: 45 / 200, flintLoadMs: 30, qemuLoadMs: 11, loadRatio: 11 / 30 });
    assert.equal(s.sharing!.oneGuestKib, 200 * 1024);
    assert.equal(s.sharing!.inProcess.ratio, 1.5);
    assert.equal(s.sharing!.inProcess.addedRatio, 1.3);
    assert.deepEqual(s.sharing!.processes, { pssKib: 400 * 1024, rssKib: 800 * 1024, ratio: 2 });
  });

  it("refuses to summarize a shape with no warm clones", () => {
    assert.throws(() => summarizeSnapshots({ latency: { ...latency, clones: latency.clones.filter((c) => c.shape !== shapeName(LARGE)) }, flatPairs: [[SMALL, LARGE]] }),
      (e: unknown) => e instanceof BenchError && /1024 MiB, 32 MiB written/.test(e.message));
  });

  it("prints each goal row with its ratio, and leaves out what was not run", () => {
    const lines = formatSnapshotSection(summarizeSnapshots({ latency, flatPairs: [[SMALL, LARGE]], sharing, processRestore, processSharing }));
    const text = lines.join("\n");
    assert.match(lines[0]!, /median 15\.0 ms, p90 23\.0 ms of 3 {2}\(1\.50x the 10 ms goal\)/);
    assert.match(text, /KVM VM, irqchip and PIT created\s+8\.00 ms\s+53 %/);
    assert.match(text, /cold threads \(no pool\): median 91\.0 ms/);
    assert.match(text, /1024 MiB, 32 MiB written vs 64 MiB, 32 MiB written: medians 16\.0 vs 15\.0 ms {2}\(1\.07x, median of the rounds' ratios; goal <= 1\.2x\)/);
    assert.match(text, /QEMU -incoming exec:cat 45\.0 ms {2}\(QEMU\/flint 0\.23x, goal >= 10x\)/);
    assert.match(text, /in one process: PSS 300\.0 MiB .* 1\.50x one guest's memory \(goal <= 2x\)/);
    assert.match(text, /one process each .* PSS summed 400\.0 MiB .* 2\.00x/);
    const bare = formatSnapshotSection(summarizeSnapshots({ latency, flatPairs: [] })).join("\n");
    assert.doesNotMatch(bare, /new process|clones of one snapshot/);
  });
});
