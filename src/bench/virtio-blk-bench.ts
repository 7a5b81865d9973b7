/**
 * The virtio-blk device-path benchmark: the ring-3 polled driver guest
 * (src/guest/programs/virtio-blk-driver.ts) reads a stamped raw image
 * through flint's virtio-blk (vCPU thread -> ioeventfd -> device thread ->
 * pread into guest memory) and through QEMU's (`-M microvm`,
 * virtio-blk-device on virtio-mmio, ioeventfd on, default aio=threads and
 * cache=writeback; once more with an iothread), the same ELF, image and
 * command line in each, runs interleaved round by round so that host drift
 * hits every monitor alike.
 *
 * Phases (all reads, every completion checked in the guest: status, used
 * length, the sector stamps): 4 KiB random at queue depth 1, 4 KiB random at
 * depth 32, 64 KiB sequential at depth 1.
 *
 * Timing: the guest times each phase with the TSC; the host converts ticks
 * to seconds with a rate calibrated in the same run against two host
 * timestamps that lag the guest's first and last TSC reads by the same
 * amount (one report line each): flint's debug-exit mark and exit
 * timestamps, and for QEMU the arrival of those two report lines on its
 * serial pipe. There is no C ceiling for this path (unlike the exit
 * benchmark): the device model is the monitor's own work, so QEMU is the
 * reference.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { BenchError } from "./bench-error.js";
import { median, runTimed, tail } from "./process.js";
import {
  VBLK_END_OK, VBLK_MAX_DEPTH, VblkReport, buildVirtioBlkGuest, vblkCmdline, writeStampedImage, type VblkRun,
} from "../guest/programs/virtio-blk-driver.js";
import type { RateLimiterConfig } from "../devices/virtio/rate-limiter.js";
import { virtioSlot } from "../devices/virtio/virtio-set.js";
import { Machine } from "../vm/machine.js";

/** The benchmark's phases, in run order, as the guest names them. */
export const VBLK_PHASES = ["qd1", "qd32", "seq"] as const;
export type VblkPhase = (typeof VBLK_PHASES)[number];

/** Human names of the phases. */
export const VBLK_PHASE_TITLES: Readonly<Record<VblkPhase, string>> = {
  qd1: "4 KiB random read, QD1",
  qd32: `4 KiB random read, QD${VBLK_MAX_DEPTH}`,
  seq: "64 KiB sequential read, QD1",
};

/** Which monitor, and how it was set up. */
export type VblkMonitor = "flint" | "qemu" | "qemu-iothread";

/**
 * QEMU microvm with its devices off except the ones the guest uses: the
 * COM1 UART (isa-serial, on by default) for the report, isa-debug-exit for
 * the end code, virtio-mmio transports in their modern form
 * (force-legacy=false: the guest is a Version 2 driver). The first transport,
 * virtio-mmio-bus.0, sits at QEMU_MICROVM_VIRTIO_MMIO_BASE (hw/i386/microvm.h
 * VIRTIO_MMIO_BASE).
 */
export const QEMU_VBLK_MACHINE = "microvm,rtc=off,pit=off,pic=off,acpi=off,auto-kernel-cmdline=off";
export const QEMU_MICROVM_VIRTIO_MMIO_BASE = 0xfeb0_0000;

/** One phase measured in one run. */
export interface VblkPhaseRate {
  requests: number;
  bytesPerRequest: number;
  seconds: number;
  requestsPerSecond: number;
  /** Data read per second, in MB (10^6 bytes). */
  megabytesPerSecond: number;
  /** Mean time from submit to completion at depth 1; at depth D, D times the mean issue interval. */
  microsecondsPerRequest: number;
  /** QueueNotify writes the driver made. */
  kicks: number;
}

/** One run of the guest in one monitor. */
export interface VblkRunResult {
  monitor: VblkMonitor;
  /** The calibrated guest TSC rate. */
  tscHz: number;
  phases: Record<VblkPhase, VblkPhaseRate>;
  /** Everything the guest reported. */
  report: Record<string, string>;
}

/** Request counts of the three phases. */
export interface VblkCounts {
  qd1: number;
  qd32: number;
  seq: number;
}

/** Options for {@link benchVirtioBlk}. */
export interface VblkBenchOptions {
  counts?: VblkCounts;
  /** Rounds (each runs every monitor once); medians are reported. Default 3. */
  runs?: number;
  /** Size of the stamped image (default 256). */
  diskMib?: number;
  /** Which monitors (default all three). */
  monitors?: readonly VblkMonitor[];
  qemuBinary?: string;
  /** Per run (default 3 minutes). */
  timeoutMs?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

/** Per monitor: the median of each phase's rates over the runs, and every run. */
export interface VblkBenchResult {
  counts: VblkCounts;
  diskMib: number;
  runs: Partial<Record<VblkMonitor, VblkRunResult[]>>;
  median: Partial<Record<VblkMonitor, Record<VblkPhase, { requestsPerSecond: number; megabytesPerSecond: number; microsecondsPerRequest: number }>>>;
}

/** Default request counts: a few seconds per run on a CI-class host. */
export const VBLK_DEFAULT_COUNTS: VblkCounts = { qd1: 10_000, qd32: 30_000, seq: 3_000 };

const GUEST_MEMORY_MIB = 64;
const SEED = 0x2545f491;

/** Turns the guest's report into rates, given the calibrated TSC rate; throws EBENCHRUN on any failed request. */
export function vblkRates(monitor: VblkMonitor, report: VblkReport, tscHz: number): VblkRunResult {
  if (report.error) throw new BenchError("EBENCHRUN", `The virtio-blk guest failed under ${monitor}: ${report.error}`);
  const phases = {} as Record<VblkPhase, VblkPhaseRate>;
  for (const p of VBLK_PHASES) {
    const requests = report.num(`${p}.requests`);
    const bad = ["errors", "bad_len", "bad_data"].map((k) => [k, report.num(`${p}.${k}`)] as const).filter(([, n]) => n > 0);
    if (bad.length > 0) {
      throw new BenchError("EBENCHRUN", `The virtio-blk guest saw failed requests under ${monitor} in phase ${p}: ${bad.map(([k, n]) => `${k}=${n}`).join(", ")}`);
    }
    const bytesPerRequest = report.num(`${p}.bytes_per_request`);
    const seconds = report.num(`${p}.ticks`) / tscHz;
    const depth = report.num(`${p}.depth`);
    phases[p] = {
      requests, bytesPerRequest, seconds,
      requestsPerSecond: requests / seconds,
      megabytesPerSecond: (requests * bytesPerRequest) / seconds / 1e6,
      microsecondsPerRequest: ((seconds / requests) * 1e6) * depth,
      kicks: report.num(`${p}.kicks`),
    };
  }
  return { monitor, tscHz, phases, report: Object.fromEntries(report.values) };
}

/** TSC ticks between the guest's tsc.mark and tsc.end readings. */
function calibrationTicks(report: VblkReport): number {
  return Number(report.big("tsc.end") - report.big("tsc.mark"));
}

/** One flint run: Machine with PVH boot, debug-exit, one read-only virtio-blk over `image` (under `rateLimiter`, if given). */
export async function runFlintVblk(image: string, counts: VblkCounts, timeoutMs = 180_000, rateLimiter?: RateLimiterConfig): Promise<VblkRunResult> {
  const run: VblkRun = { blkBase: virtioSlot(0).mmioBase, mode: "bench", seed: SEED, ...counts };
  const chunks: Buffer[] = [];
  const m = Machine.create({
    cpus: 1,
    memoryMib: GUEST_MEMORY_MIB,
    boot: { kind: "linux", kernelPath: buildVirtioBlkGuest(), cmdline: vblkCmdline(run), acpi: false, mode: "pvh" },
    debugExit: true,
    consoleOutput: new Writable({ write(c: Buffer, _e, cb) { chunks.push(Buffer.from(c)); cb(); } }),
    virtioDevices: [{ kind: "block", options: { path: image, readOnly: true, ...(rateLimiter ? { rateLimiter } : {}) } }],
  });
  const timer = setTimeout(() => m.stop({ kind: "error", message: `the virtio-blk guest ran longer than ${timeoutMs} ms` }), timeoutMs);
  const r = await m.run().finally(() => clearTimeout(timer));
  const report = new VblkReport(Buffer.concat(chunks).toString("latin1"));
  const d = r.debugExit;
  if (r.reason.kind === "error" || d?.status !== VBLK_END_OK || d.markNs === undefined || d.exitNs === undefined) {
    const why = r.reason.kind === "error" ? r.reason.message : `end code ${d?.status}`;
    throw new BenchError("EBENCHRUN", `flint's virtio-blk run failed (${why}${report.error ? `; guest: ${report.error}` : ""}):\n${tail(report.text)}`);
  }
  const windowSeconds = Number(d.exitNs - d.markNs) / 1e9;
  return vblkRates("flint", report, calibrationTicks(report) / windowSeconds);
}

/** QEMU's arguments for one bench run over `image`. */
export function qemuVblkArgs(guest: string, image: string, counts: VblkCounts, iothread: boolean): string[] {
  const run: VblkRun = { blkBase: QEMU_MICROVM_VIRTIO_MMIO_BASE, mode: "bench", seed: SEED, ...counts };
  // The drive's path goes inside a -drive option string, where a comma would split it.
  if (image.includes(",")) throw new BenchError("EBENCHARG", `Cannot give QEMU the image '${image}': its path contains a comma`);
  return [
    "-accel", "kvm",
    "-M", QEMU_VBLK_MACHINE,
    "-nodefaults", "-no-user-config", "-display", "none",
    "-m", String(GUEST_MEMORY_MIB),
    "-kernel", guest,
    "-append", vblkCmdline(run),
    "-serial", "stdio",
    "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
    "-global", "virtio-mmio.force-legacy=false",
    "-drive", `file=${image},format=raw,if=none,id=vblk0,readonly=on`,
    ...(iothread ? ["-object", "iothread,id=vblkio0"] : []),
    "-device", `virtio-blk-device,drive=vblk0,bus=virtio-mmio-bus.0${iothread ? ",iothread=vblkio0" : ""}`,
  ];
}

/** One QEMU run, calibrated by when the tsc.mark and tsc.end lines arrive on its serial pipe. */
export async function runQemuVblk(image: string, counts: VblkCounts, iothread: boolean, qemuBinary = "qemu-system-x86_64", timeoutMs = 180_000): Promise<VblkRunResult> {
  const args = qemuVblkArgs(buildVirtioBlkGuest(), image, counts, iothread);
  const monitor: VblkMonitor = iothread ? "qemu-iothread" : "qemu";
  let text = "";
  let markNs: bigint | undefined;
  let endNs: bigint | undefined;
  const run = await runTimed(qemuBinary, args, {
    timeoutMs,
    installHint: "apt-get install qemu-system-x86",
    onStdout(chunk, now) {
      const before = text.length;
      text += chunk.toString("latin1");
      // A line counts when its newline arrives: find the two calibration lines' ends.
      const stamp = (prefix: string): boolean => {
        const at = text.indexOf(`vblk ${prefix}=`);
        return at >= 0 && text.indexOf("\n", at) >= before;
      };
      if (markNs === undefined && stamp("tsc.mark")) markNs = now;
      if (endNs === undefined && stamp("tsc.end")) endNs = now;
    },
  });
  const report = new VblkReport(text);
  // isa-debug-exit: end code v -> exit status 2v + 1.
  if (run.exitCode !== 2 * VBLK_END_OK + 1 || markNs === undefined || endNs === undefined) {
    throw new BenchError("EBENCHRUN", `QEMU's virtio-blk run failed (${run.signal ?? `status ${run.exitCode}`}; 1 is success${report.error ? `; guest: ${report.error}` : ""}):\n${tail(text)}\n${tail(run.stderr)}`);
  }
  return vblkRates(monitor, report, calibrationTicks(report) / (Number(endNs - markNs) / 1e9));
}

/** Runs every monitor `runs` times, interleaved, over one stamped image in a temporary directory. */
export async function benchVirtioBlk(options: VblkBenchOptions = {}): Promise<VblkBenchResult> {
  const counts = options.counts ?? VBLK_DEFAULT_COUNTS;
  const runs = options.runs ?? 3;
  const diskMib = options.diskMib ?? 256;
  const monitors = options.monitors ?? (["flint", "qemu", "qemu-iothread"] as const);
  if (!Number.isInteger(runs) || runs < 1) throw new BenchError("EBENCHARG", `Cannot run the virtio-blk benchmark ${runs} times`);
  const dir = mkdtempSync(join(tmpdir(), "flint-vblk-bench-"));
  try {
    const image = join(dir, "stamped.img");
    writeStampedImage(image, diskMib * 1024 * 1024);
    buildVirtioBlkGuest();
    const all: Partial<Record<VblkMonitor, VblkRunResult[]>> = {};
    for (let i = 0; i < runs; i++) {
      for (const monitor of monitors) {
        const r = monitor === "flint"
          ? await runFlintVblk(image, counts, options.timeoutMs)
          : await runQemuVblk(image, counts, monitor === "qemu-iothread", options.qemuBinary, options.timeoutMs);
        (all[monitor] ??= []).push(r);
        options.log?.(`  round ${i + 1}/${runs} ${monitor}: ${VBLK_PHASES.map((p) => `${p} ${(r.phases[p].requestsPerSecond / 1000).toFixed(1)}k req/s`).join(", ")}`);
      }
    }
    const med: VblkBenchResult["median"] = {};
    for (const monitor of monitors) {
      const rs = all[monitor]!;
      const m = {} as Record<VblkPhase, { requestsPerSecond: number; megabytesPerSecond: number; microsecondsPerRequest: number }>;
      for (const p of VBLK_PHASES) {
        m[p] = {
          requestsPerSecond: median(rs.map((r) => r.phases[p].requestsPerSecond)),
          megabytesPerSecond: median(rs.map((r) => r.phases[p].megabytesPerSecond)),
          microsecondsPerRequest: median(rs.map((r) => r.phases[p].microsecondsPerRequest)),
        };
      }
      med[monitor] = m;
    }
    return { counts, diskMib, runs: all, median: med };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `npm run bench`'s section: prints each phase for flint and QEMU (default
 * and with an iothread) with flint/QEMU ratios, and returns the results for
 * the JSON file.
 */
export async function printVirtioBlkSection(out: (line: string) => void, options: VblkBenchOptions = {}): Promise<VblkBenchResult> {
  const counts = options.counts ?? VBLK_DEFAULT_COUNTS;
  const runs = options.runs ?? 3;
  out(`\n== virtio-blk device path: ring-3 polled driver ==`);
  out(`same PVH guest, ${options.diskMib ?? 256} MiB stamped raw image (page cache), read-only; requests per run: ` +
    `${counts.qd1} QD1, ${counts.qd32} QD${VBLK_MAX_DEPTH}, ${counts.seq} sequential; median of ${runs}, monitors interleaved`);
  const r = await benchVirtioBlk(options);
  const f = r.median.flint, q = r.median.qemu, qi = r.median["qemu-iothread"];
  const k = (x: number) => `${(x / 1000).toFixed(1)}k`;
  const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
  for (const p of VBLK_PHASES) {
    const parts: string[] = [];
    if (f) parts.push(`flint ${k(f[p].requestsPerSecond)} req/s ${f[p].megabytesPerSecond.toFixed(0)} MB/s`);
    if (q) parts.push(`QEMU ${k(q[p].requestsPerSecond)} req/s ${q[p].megabytesPerSecond.toFixed(0)} MB/s`);
    if (qi) parts.push(`QEMU+iothread ${k(qi[p].requestsPerSecond)} req/s ${qi[p].megabytesPerSecond.toFixed(0)} MB/s`);
    const ratios: string[] = [];
    if (f && q) ratios.push(`flint/QEMU ${ratio(f[p].requestsPerSecond, q[p].requestsPerSecond)}`);
    if (f && qi) ratios.push(`flint/QEMU+iothread ${ratio(f[p].requestsPerSecond, qi[p].requestsPerSecond)}`);
    out(`${VBLK_PHASE_TITLES[p]}: ${parts.join(", ")}${ratios.length ? `  -> ${ratios.join(", ")}` : ""}`);
  }
  if (f) {
    out(`flint latency at QD1: ${f.qd1.microsecondsPerRequest.toFixed(1)} us per 4 KiB read` +
      (q ? ` (QEMU ${q.qd1.microsecondsPerRequest.toFixed(1)} us${qi ? `, with iothread ${qi.qd1.microsecondsPerRequest.toFixed(1)} us` : ""})` : ""));
  }
  out("(no C ceiling for this path: the device model is the monitor's own work, so QEMU is the reference)\n");
  return r;
}
