/**
 * `npm run bench`: every figure is measured in this run, next to its
 * reference, and printed as a ratio.
 *
 *   1. native boundary: flint's N-API addon vs koffi (FFI), same ioctls
 *   2. VM exits/s, port I/O and MMIO: flint vs a C program on the same
 *      /dev/kvm (the ceiling) vs QEMU, all running the same PVH guest
 *   3. host memory per VM beyond guest RAM: flint vs QEMU, same guest
 *   4. Linux boot to /init in the nested harness: flint vs QEMU -M microvm,
 *      same kernel and initramfs (skip with --no-boot: it takes minutes)
 *   5. virtio-blk device path: a ring-3 polled driver guest reading through
 *      flint's virtio-blk vs QEMU's (skip with --no-blk)
 *   5b. rate-limited disk read: the same guest under a bandwidth bucket on
 *      its drive, achieved rate / bucket rate (skip with --no-ratelimit)
 *   6. virtio devices with real Linux in the nested harness: virtio-blk
 *      O_DIRECT reads (4 KiB random at QD1 and QD32, 64 KiB sequential) and
 *      virtio-net TCP throughput both ways, flint vs QEMU -M microvm with
 *      virtio-mmio devices (skip with --no-virtio: it takes minutes; run it
 *      alone with --virtio-only, and only some figures with
 *      --virtio-figures KEY,KEY, e.g. netTxMegabytesPerSecond,netRxMegabytesPerSecond)
 *   7. stop latency: Machine.stop() to run() resolved, from each state a VM
 *      can be stuck in (skip with --no-stop); pause and resume latency of a
 *      running VM (skip with --no-pause); API socket ready (spawn → GET /
 *      answered) vs a bare `node -e 0`, and InstanceStart → first guest
 *      byte over the API (skip with --no-api-ready); MMDS's guest side, host CPU
 *      per request (skip with --no-mmds)
 *   8. per-VM overhead (issue 10's goal rows): memory beyond guest RAM with
 *      every device, per further vCPU, start to first guest instruction and
 *      to exit, and 8 VMs in one process through the library; flint vs QEMU
 *      microvm vs the C ceiling (skip with --no-overhead; run it alone with
 *      --overhead-only, i.e. `npm run bench:overhead`)
 *   9. snapshots: in-process clone latency (restore + run until the guest
 *      runs) and its steps, restore in a new process vs QEMU restoring its
 *      migration file, restore time against memory size, snapshot create
 *      time, and the memory of 8 clones of one snapshot (skip with
 *      --no-snapshot; run it alone with --snapshot-only, i.e.
 *      `npm run bench:snapshot`)
 *
 * Options: --count N (exits per run, default 300000), --runs R (default 3),
 * --no-boot, --no-blk, --no-ratelimit, --no-virtio, --no-stop, --no-pause, --no-api-ready, --no-mmds, --no-overhead, --overhead-only,
 * --virtio-only, --virtio-figures KEYS, --virtio-rounds R (section 6's rounds, default 5), --overhead-runs R
 * (section 8's rounds, default 7), --no-snapshot, --snapshot-only, --snapshot-clones N (section 9's clones
 * per shape, default 30), --snapshot-runs R (its new-process restores, default 7), --json FILE (also write
 * all results as JSON).
 */
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { benchBootNested } from "./boot-nested.js";
import { runCeiling } from "./c-ceiling.js";
import { runFlintExits } from "./flint-exits.js";
import { buildExitLoopGuest, EXIT_LOOP_MODES, exitLoopCmdline } from "../guest/programs/exit-loop.js";
import { measureNativeBoundary } from "./native-boundary.js";
import { median } from "./process.js";
import { runQemuExits } from "./qemu-exits.js";
import { printOverheadSection } from "./per-vm-overhead.js";
import { printApiReadySection } from "./api-ready.js";
import { printMmdsSection } from "./mmds-bench.js";
import { printPauseLatencySection } from "./pause-latency.js";
import { printStopLatencySection } from "./stop-latency.js";
import { type VirtioFigureKey, benchVirtioNested, selectFigures } from "./virtio-nested.js";
import { printVirtioBlkSection } from "./virtio-blk-bench.js";
import { printRateLimitSection } from "./rate-limit-bench.js";
import { printSnapshotSection } from "./snapshot-bench.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
const k = (x: number) => `${(x / 1000).toFixed(1)}k`;
/** A rate with three significant digits (IOPS, MB/s). */
const rate = (x: number | undefined) => (x === undefined ? "n/a" : x >= 100 ? x.toFixed(0) : x.toPrecision(3));

/** Peak RSS (KiB) of `flint run` booting the exit-loop guest with no exits. */
function flintPeakRssKib(memoryMib: number): number {
  const r = spawnSync("/usr/bin/time", ["-f", "%M", process.execPath, CLI, "run", "--kernel", buildExitLoopGuest(), "--boot", "pvh",
    "--no-acpi", "--memory", String(memoryMib), "--debug-exit", "--cmdline", exitLoopCmdline({ mode: "pio", count: 0 })], { encoding: "utf8", timeout: 60_000 });
  const last = r.stderr.trim().split("\n").pop() ?? "";
  const kib = Number(last);
  if (r.status !== 0 || !Number.isFinite(kib)) throw new Error(`flint memory run failed (${r.status}): ${r.stderr.slice(-300)}`);
  return kib;
}

async function main(): Promise<void> {
  const count = arg("--count", 300_000);
  const runs = arg("--runs", 3);
  const results: Record<string, unknown> = {};
  const out = (s: string) => process.stdout.write(`${s}\n`);
  const json = process.argv.indexOf("--json");
  const writeJson = () => {
    if (json > 0) writeFileSync(process.argv[json + 1]!, JSON.stringify(results, (_k, v) => (typeof v === "bigint" ? v.toString() : v), 2));
  };
  // Per-VM overhead (src/bench/per-vm-overhead.ts): alone with --overhead-only, skipped with --no-overhead.
  const overhead = async () => {
    results.overhead = await printOverheadSection(out, { runs: arg("--overhead-runs", 7) });
  };
  if (process.argv.includes("--overhead-only")) {
    await overhead();
    writeJson();
    return;
  }
  // Snapshots (src/bench/snapshot-bench.ts): alone with --snapshot-only, skipped with --no-snapshot.
  const snapshots = async () => {
    results.snapshots = await printSnapshotSection(out, { clones: arg("--snapshot-clones", 30), processRuns: arg("--snapshot-runs", 7) });
  };
  if (process.argv.includes("--snapshot-only")) {
    await snapshots();
    writeJson();
    return;
  }
  // Nested virtio devices (src/bench/virtio-nested.ts): alone with --virtio-only, skipped with --no-virtio.
  const virtio = async () => {
    out("\n== virtio devices in the nested harness (TCG outer VM: compare ratios only) ==");
    const figuresArg = process.argv.indexOf("--virtio-figures");
    const figures = figuresArg > 0 ? (process.argv[figuresArg + 1] ?? "").split(",") as VirtioFigureKey[] : undefined;
    const v = await benchVirtioNested({ rounds: arg("--virtio-rounds", 5), figures });
    results.virtio = v;
    const o = v.options;
    out(`same kernel and initramfs, ${o.cpus} vCPUs, ${o.memoryMib} MiB each; both VMs up at once, taking turns test by test, ${o.rounds} rounds after ${o.warmupRounds} uncounted warm-up round(s); ` +
      `O_DIRECT reads of a ${o.imageMib} MiB raw image in the outer VM's tmpfs in ${o.runMs} ms windows; ${o.netMs} ms TCP streams; ` +
      "medians, ratio = median of per-round ratios");
    const nics = (m: "flint" | "qemu") => (v.nics[m] ?? []).map((n) => `${n.dev} [${n.offloads.join(",") || "no offloads"}]`).join(", ");
    out(`negotiated: flint ${nics("flint")}; QEMU ${nics("qemu")}`);
    for (const f of selectFigures(figures)) {
      const s = v.figures[f.key];
      if (!s) continue;
      const ratios = s.samples.flint.map((x, i) => (x !== undefined && s.samples.qemu[i] !== undefined ? x / s.samples.qemu[i]! : undefined));
      const measured = ratios.filter((x): x is number => x !== undefined);
      const spread = measured.length > 1 ? `, rounds ${Math.min(...measured).toFixed(2)}-${Math.max(...measured).toFixed(2)}x` : "";
      out(`${f.label}: flint ${rate(s.flint)} ${f.unit}, QEMU microvm ${rate(s.qemu)} ${f.unit}  ` +
        `(flint/QEMU ${s.ratio === undefined ? "n/a" : `${s.ratio.toFixed(2)}x`}${spread}${f.reference ? ", reference" : ", goal >= 1.0x"})`);
      out(`  per round: ${s.samples.flint.map((x, i) => `${rate(x)}/${rate(s.samples.qemu[i])}=${ratios[i] === undefined ? "n/a" : `${ratios[i]!.toFixed(2)}x`}`).join("  ")}`);
      const per = f.unit === "IOPS" ? "1000 requests" : "MB";
      const cpu = (m: "flint" | "qemu") => {
        const c = s.cpu?.[m];
        return c ? `guest ${c.guest.toFixed(1)} + vCPU threads ${c.vcpu.toFixed(1)} + others ${c.other.toFixed(1)} ms (busiest ${c.busiestOther.toFixed(1)})` : "n/a";
      };
      if (s.cpu?.flint || s.cpu?.qemu) out(`  monitor CPU per ${per}: flint ${cpu("flint")}, QEMU ${cpu("qemu")}`);
      const counted = (m: "flint" | "qemu") => {
        const c = s.cpu?.[m];
        return c?.irqs === undefined ? "n/a" : `${c.irqs.toFixed(0)} interrupts, ${c.packets?.toFixed(0) ?? "?"} packets`;
      };
      if (s.cpu?.flint?.irqs !== undefined || s.cpu?.qemu?.irqs !== undefined) out(`  guest per ${per}: flint ${counted("flint")}, QEMU ${counted("qemu")}`);
      const calls = (m: "flint" | "qemu") => {
        const c = s.cpu?.[m]?.calls;
        return c ? `${c.reads.toFixed(0)} reads, ${c.writes.toFixed(0)} writes, ${c.sleeps.toFixed(0)} sleeps` : "n/a";
      };
      if (s.cpu?.flint?.calls || s.cpu?.qemu?.calls) out(`  busiest other thread per ${per} (system calls): flint ${calls("flint")}, QEMU ${calls("qemu")}`);
      const exits = (m: "flint" | "qemu") => {
        const e = s.cpu?.[m]?.exits;
        return e ? `${e.exits.toFixed(0)} (to the monitor: ${e.mmioExits.toFixed(0)} MMIO, ${e.ioExits.toFixed(0)} port I/O; ${e.haltExits.toFixed(0)} halts; ${e.irqInjections.toFixed(0)} interrupts injected)` : "n/a";
      };
      if (s.cpu?.flint?.exits || s.cpu?.qemu?.exits) out(`  VM exits per ${per}: flint ${exits("flint")}, QEMU ${exits("qemu")}`);
    }
    for (const failure of v.failures) out(`  (left out: ${failure})`);
  };
  if (process.argv.includes("--virtio-only")) {
    await virtio();
    writeJson();
    return;
  }

  out("== native boundary (same ioctls, same run) ==");
  const nb = measureNativeBoundary(50_000, 1_000_000);
  results.nativeBoundary = nb;
  out(`ioctl(KVM_CHECK_EXTENSION): addon ${nb.addonNsPerIoctl.toFixed(0)} ns, koffi ${nb.koffiNsPerIoctl.toFixed(0)} ns  (addon/koffi time ${ratio(nb.addonNsPerIoctl, nb.koffiNsPerIoctl)})`);
  out(`ring-3 exit round trips: addon ${k(nb.addonExitsPerSecond)}/s, koffi ${k(nb.koffiExitsPerSecond)}/s  (addon/koffi ${ratio(nb.addonExitsPerSecond, nb.koffiExitsPerSecond)})`);

  out(`\n== VM exits/s: same PVH guest, ${count} exits per run, median of ${runs} ==`);
  const exits: Record<string, unknown> = {};
  for (const mode of EXIT_LOOP_MODES) {
    // Interleave the monitors round by round so host drift hits all three alike.
    const f: number[] = [], c: number[] = [], qs: Awaited<ReturnType<typeof runQemuExits>>[] = [];
    for (let i = 0; i < runs; i++) {
      f.push((await runFlintExits({ mode, count, runs: 1 })).exitsPerSecond);
      c.push((await runCeiling({ mode, count, runs: 1 })).exitsPerSecond);
      qs.push(await runQemuExits({ mode, count, runs: 1 }));
    }
    const flint = { exitsPerSecond: median(f), samples: f };
    const ceiling = { exitsPerSecond: median(c), samples: c };
    const qemuRate = median(qs.map((x) => x.exitsPerSecond));
    const qemu = { ...qs.find((x) => x.exitsPerSecond === qemuRate)!, samples: qs.map((x) => x.exitsPerSecond) };
    exits[mode] = { flint, ceiling, qemu };
    out(`${mode.padEnd(4)}: flint ${k(flint.exitsPerSecond)}/s, C ceiling ${k(ceiling.exitsPerSecond)}/s, QEMU ${k(qemu.exitsPerSecond)}/s` +
      `  -> flint/ceiling ${ratio(flint.exitsPerSecond, ceiling.exitsPerSecond)} (goal >= 0.8x), flint/QEMU ${ratio(flint.exitsPerSecond, qemu.exitsPerSecond)} (goal >= 1.0x)`);
    if (mode === "pio") {
      const flintRss = flintPeakRssKib(64);
      exits.memory = { flintPeakRssKib: flintRss, qemuPeakRssKib: qemu.peakRssKib, qemuOverheadKib: qemu.memoryOverheadKib, guestRamTouchedKib: qemu.guestRamTouchedKib };
      const guest = qemu.guestRamTouchedKib;
      out(`\n== host memory per VM (same guest, 64 MiB configured, ~${guest} KiB touched) ==`);
      out(`peak RSS: flint ${(flintRss / 1024).toFixed(1)} MiB (Node.js runtime included), QEMU ${(qemu.peakRssKib / 1024).toFixed(1)} MiB; ` +
        `beyond guest RAM: flint ${((flintRss - guest) / 1024).toFixed(1)} MiB vs QEMU ${(qemu.memoryOverheadKib / 1024).toFixed(1)} MiB (${ratio(flintRss - guest, qemu.memoryOverheadKib)})\n`);
    }
  }
  results.exits = exits;
  if (!process.argv.includes("--no-overhead")) await overhead();

  // virtio-blk device path (src/bench/virtio-blk-bench.ts); --no-blk skips it.
  if (!process.argv.includes("--no-blk")) results.virtioBlk = await printVirtioBlkSection(out, { runs });
  // Rate-limited disk read (src/bench/rate-limit-bench.ts); --no-ratelimit skips it.
  if (!process.argv.includes("--no-ratelimit")) results.rateLimitedRead = await printRateLimitSection(out, runs);

  if (!process.argv.includes("--no-boot")) {
    out("== Linux boot to /init in the nested harness (TCG outer VM: compare ratios only) ==");
    const boot = await benchBootNested({ runs });
    results.boot = boot;
    const f = boot.median.flint, q = boot.median.qemu;
    out(`guest uptime at /init: flint ${f.guestUptimeSec.toFixed(2)} s, QEMU microvm ${q.guestUptimeSec.toFixed(2)} s  (QEMU/flint ${ratio(q.guestUptimeSec, f.guestUptimeSec)}, goal >= 1.0x)`);
    out(`process start to exit: flint ${f.wallSec.toFixed(2)} s, QEMU ${q.wallSec.toFixed(2)} s  (QEMU/flint ${ratio(q.wallSec, f.wallSec)})`);
    out(`peak RSS (${boot.memoryMib} MiB guest): flint ${(f.peakRssKib / 1024).toFixed(1)} MiB, QEMU ${(q.peakRssKib / 1024).toFixed(1)} MiB`);
    const st = boot.startToInit.median;
    out(`start request to /init's first line: flint ${st.flint.toFixed(0)} ms (API InstanceStart: builds the VM, then boots), QEMU microvm ${st.qemu.toFixed(0)} ms (-S, QMP cont: built before)  (flint/QEMU ${ratio(st.flint, st.qemu)}); QEMU from spawning it ${st.qemuSpawn.toFixed(0)} ms  (flint/QEMU ${ratio(st.flint, st.qemuSpawn)})`);
  }
  if (!process.argv.includes("--no-virtio")) await virtio();
  // Stop latency from each state (src/bench/stop-latency.ts); --no-stop skips it.
  if (!process.argv.includes("--no-stop")) {
    out("");
    results.stopLatency = await printStopLatencySection(out, Math.max(runs, 5));
  }
  // API socket ready vs a bare node, InstanceStart → guest (src/bench/api-ready.ts); --no-api-ready skips it.
  if (!process.argv.includes("--no-api-ready")) {
    out("");
    results.apiReady = await printApiReadySection(out, Math.max(runs, 7));
  }
  // MMDS's guest side, host CPU per request (src/bench/mmds-bench.ts); --no-mmds skips it.
  if (!process.argv.includes("--no-mmds")) {
    out("");
    results.mmds = printMmdsSection(out);
  }
  // Pause/resume latency (src/bench/pause-latency.ts); --no-pause skips it.
  if (!process.argv.includes("--no-pause")) {
    out("");
    results.pauseLatency = await printPauseLatencySection(out, 50);
  }
  if (!process.argv.includes("--no-snapshot")) {
    out("");
    await snapshots();
  }
  writeJson();
}

await main();
