/**
 * Linux boot benchmark in the nested harness: flint vs QEMU `-M microvm`,
 * same kernel, same initramfs, same vCPUs and memory, alternating runs in one
 * outer VM. Everything in the nested VM runs under TCG, so only ratios
 * measured in the same run mean anything.
 *
 * Per VM it records: the guest's uptime when /init reported (kernel boot
 * time as the guest sees it), wall time from process start to exit, and the
 * process's peak RSS (`/usr/bin/time -f %M`).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildInitramfs, defaultInit, parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { runNested } from "../harness/nested.js";
import { BenchError } from "./bench-error.js";
import { median } from "./process.js";

export interface BootSample {
  /** Guest uptime at /init's report, seconds. */
  guestUptimeSec: number;
  /** Process start to exit, seconds. */
  wallSec: number;
  /** Peak RSS of the monitor process, KiB. */
  peakRssKib: number;
}

export interface BootBenchResult {
  flint: BootSample[];
  qemu: BootSample[];
  median: { flint: BootSample; qemu: BootSample };
  memoryMib: number;
  cpus: number;
}

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

/**
 * The same guest for both: reboot through a triple fault (microvm has no
 * i8042); `quiet` because each console byte is a costly nested exit.
 */
const CMDLINE = "console=ttyS0 reboot=t panic=-1 pci=off quiet";

function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function parseSample(out: string, timeLine: string): BootSample {
  const report = parseGuestReport(out);
  const [wall, rss] = timeLine.trim().split(/\s+/).map(Number);
  if (!report.booted || report.uptimeSec === undefined || wall === undefined || rss === undefined) {
    throw new BenchError("EBENCHRUN", `a boot run did not report (tail: ${out.slice(-400)})`);
  }
  return { guestUptimeSec: report.uptimeSec, wallSec: wall, peakRssKib: rss };
}

function medianSample(xs: BootSample[]): BootSample {
  return {
    guestUptimeSec: median(xs.map((x) => x.guestUptimeSec)),
    wallSec: median(xs.map((x) => x.wallSec)),
    peakRssKib: median(xs.map((x) => x.peakRssKib)),
  };
}

/** Runs `runs` boots of each monitor, alternating, inside one nested VM. */
export async function benchBootNested(opts: { runs?: number; cpus?: number; memoryMib?: number } = {}): Promise<BootBenchResult> {
  const runs = opts.runs ?? 3;
  const cpus = opts.cpus ?? 2;
  const memoryMib = opts.memoryMib ?? 256;
  const kernel = await buildKernel();
  const share = mkdtempSync(join(tmpdir(), "flint-bench-boot-"));
  try {
    const initrd = join(share, "reboot.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: defaultInit({ finish: "reboot" }) }));
    const flintCmd = [process.execPath, CLI, "run", "--kernel", kernel.vmlinux, "--initrd", initrd,
      "--cmdline", CMDLINE, "--cpus", String(cpus), "--memory", String(memoryMib)];
    const qemuCmd = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,pcie=off", "-accel", "kvm", "-cpu", "host",
      "-smp", String(cpus), "-m", String(memoryMib), "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
      "-serial", "stdio", "-kernel", kernel.vmlinux, "-initrd", initrd, "-append", CMDLINE];
    const lines: string[] = [];
    for (let i = 0; i < runs; i++) {
      for (const [name, cmd] of [["flint", flintCmd], ["qemu", qemuCmd]] as const) {
        const out = join(share, `${name}-${i}`);
        lines.push(`/usr/bin/time -f '%e %M' -o ${q(out)}.time timeout 300 ${cmd.map(q).join(" ")} </dev/null >${q(out)}.out 2>&1`);
      }
    }
    const res = await runNested({ command: lines.join("\n"), timeoutMs: 30 * 60_000, shareDir: share, memoryMib: 2048 });
    if (res.timedOut) throw new BenchError("EBENCHTIMEOUT", "the nested boot benchmark timed out");
    const result: BootBenchResult = { flint: [], qemu: [], median: undefined!, memoryMib, cpus };
    for (let i = 0; i < runs; i++) {
      for (const name of ["flint", "qemu"] as const) {
        const out = join(share, `${name}-${i}`);
        result[name].push(parseSample(readFileSync(`${out}.out`, "utf8"), readFileSync(`${out}.time`, "utf8").split("\n").filter(Boolean).pop() ?? ""));
      }
    }
    result.median = { flint: medianSample(result.flint), qemu: medianSample(result.qemu) };
    return result;
  } finally {
    rmSync(share, { recursive: true, force: true });
  }
}
