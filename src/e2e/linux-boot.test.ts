/**
 * End-to-end: flint boots real Linux. This host's /dev/kvm emulates guest
 * ring 0, so every case runs one level down in the nested harness (QEMU with
 * an emulated SVM CPU, real KVM inside), where flint runs as a user would run
 * it: `flint run --kernel ... --initrd ...`. One outer boot runs all cases in
 * sequence; each case's console output and exit code come back through the
 * shared directory.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { debianKernel } from "../guest/debian-kernel.js";
import { defaultInit, buildInitramfs, parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";
import { DEFAULT_CMDLINE } from "../cli/defaults.js";

/** `quiet`: every console byte is a nested exit, which the outer TCG VM makes expensive. */
const QUIET = `${DEFAULT_CMDLINE} quiet`;

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

interface Case {
  name: string;
  args: string[];
}

interface CaseResult {
  exitCode: number;
  output: string;
}

describe("flint boots real Linux (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-"));
  const results = new Map<string, CaseResult>();
  let nested: NestedResult;

  before(async () => {
    const kernel = await buildKernel();
    const debian = await debianKernel();
    const poweroff = join(share, "poweroff.cpio.gz");
    const reboot = join(share, "reboot.cpio.gz");
    writeFileSync(poweroff, buildInitramfs({ init: defaultInit({ finish: "poweroff" }) }));
    writeFileSync(reboot, buildInitramfs({ init: defaultInit({ finish: "reboot" }) }));
    const shell = join(share, "shell.cpio.gz");
    writeFileSync(shell, buildInitramfs({ init: defaultInit({ finish: "shell" }) }));
    const cases: Case[] = [
      { name: "vmlinux-1cpu-poweroff", args: ["--kernel", kernel.vmlinux, "--initrd", poweroff, "--cpus", "1", "--memory", "128", "--cmdline", QUIET] },
      { name: "vmlinux-2cpu-poweroff", args: ["--kernel", kernel.vmlinux, "--initrd", poweroff, "--cpus", "2", "--memory", "256", "--cmdline", QUIET] },
      { name: "bzimage-2cpu-reboot-k", args: ["--kernel", kernel.bzImage, "--initrd", reboot, "--cpus", "2", "--memory", "192", "--cmdline", QUIET] },
      { name: "vmlinux-reboot-t", args: ["--kernel", kernel.vmlinux, "--initrd", reboot, "--cmdline", "console=ttyS0 reboot=t panic=-1 quiet", "--memory", "128"] },
      { name: "mptable-only-2cpu", args: ["--kernel", kernel.vmlinux, "--initrd", reboot, "--cpus", "2", "--memory", "128", "--no-acpi", "--cmdline", QUIET] },
      { name: "pvh-1cpu-poweroff", args: ["--kernel", kernel.vmlinux, "--initrd", poweroff, "--boot", "pvh", "--memory", "128", "--cmdline", QUIET] },
      { name: "debian-2cpu-poweroff", args: ["--kernel", debian.vmlinuz, "--initrd", poweroff, "--cpus", "2", "--memory", "384", "--cmdline", QUIET] },
    ];
    const script = cases
      .map((c) => {
        const out = join(share, `${c.name}.out`);
        return `timeout 240 ${q(process.execPath)} ${q(CLI)} run ${c.args.map(q).join(" ")} </dev/null >${q(out)} 2>&1; echo $? >${q(out)}.rc`;
      })
      .join("\n");
    // Console input: type into the guest's shell through flint's stdin once the
    // shell has started (input sent earlier would be flushed by the driver's
    // FIFO reset at open), then let it exit so /init powers off.
    const stdinOut = join(share, "shell-stdin.out");
    const stdinScript = [
      `fifo=$TMPDIR/flint-e2e-stdin; rm -f $fifo; mkfifo $fifo`,
      `(timeout 240 ${q(process.execPath)} ${q(CLI)} run --kernel ${q(kernel.vmlinux)} --initrd ${q(shell)} --memory 128 --cmdline ${q(QUIET)} <$fifo >${q(stdinOut)} 2>&1; echo $? >${q(stdinOut)}.rc) &`,
      `exec 3>$fifo`,
      `n=0; until grep -q "starting shell" ${q(stdinOut)} 2>/dev/null || [ $n -ge 400 ]; do sleep 0.5; n=$((n+1)); done`,
      `sleep 1; printf 'echo flint-stdin-$((6 * 7))\nexit\n' >&3`,
      `wait; exec 3>&-`,
    ].join("\n");
    results.set("shell-stdin", { exitCode: -1, output: "" });
    const retryAfterTimeout = () => {
      for (const c of [...cases, { name: "shell-stdin" }]) for (const ext of [".out", ".out.rc"]) rmSync(join(share, `${c.name}${ext}`), { force: true });
    };
    nested = await runNested({ command: `${script}\n${stdinScript}`, timeoutMs: 18 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout,
      retryOnGuestCrash: [...cases, { name: "shell-stdin" }].map((c) => join(share, `${c.name}.out`)) });
    for (const c of [...cases, { name: "shell-stdin" }]) {
      let exitCode = -1;
      let output = "";
      try {
        output = readFileSync(join(share, `${c.name}.out`), "utf8");
        exitCode = Number(readFileSync(join(share, `${c.name}.out.rc`), "utf8").trim());
      } catch {
        // missing: the nested run ended early; asserted below
      }
      results.set(c.name, { exitCode, output });
    }
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  function check(name: string): { result: CaseResult; report: ReturnType<typeof parseGuestReport> } {
    const result = results.get(name)!;
    const tail = `${describeNestedRun(nested)}\n${result.output.slice(-3000)}\n--- outer serial tail ---\n${nested.serial.slice(-1500)}`;
    assert.equal(nested.timedOut, false, `nested harness timed out\n${tail}`);
    assert.equal(result.exitCode, 0, `flint exit code ${result.exitCode}\n${tail}`);
    const report = parseGuestReport(result.output);
    assert.ok(report.booted, `guest never reached /init\n${tail}`);
    return { result, report };
  }

  it("boots an ELF vmlinux on 1 vCPU, sees its memory, and exits 0 on poweroff", () => {
    const { report } = check("vmlinux-1cpu-poweroff");
    assert.equal(report.nproc, 1);
    assert.ok(report.memTotalKib! > 100 * 1024 && report.memTotalKib! <= 128 * 1024, `MemTotal ${report.memTotalKib} kB`);
  });

  it("boots an ELF vmlinux on 2 vCPUs: both come online", () => {
    const { report } = check("vmlinux-2cpu-poweroff");
    assert.equal(report.nproc, 2);
    assert.ok(report.memTotalKib! > 200 * 1024 && report.memTotalKib! <= 256 * 1024, `MemTotal ${report.memTotalKib} kB`);
  });

  it("boots a bzImage on 2 vCPUs and exits 0 when the guest reboots through the i8042", () => {
    const { report } = check("bzimage-2cpu-reboot-k");
    assert.equal(report.nproc, 2);
  });

  it("exits 0 when the guest reboots by triple fault (reboot=t)", () => {
    check("vmlinux-reboot-t");
  });

  it("without ACPI, finds both vCPUs from the MP table alone (and reboots through the i8042)", () => {
    const { report } = check("mptable-only-2cpu");
    assert.equal(report.nproc, 2);
  });

  it("boots through the PVH entry point", () => {
    const { report } = check("pvh-1cpu-poweroff");
    assert.equal(report.nproc, 1);
  });

  it("feeds stdin to the guest's serial console: a shell in the guest runs typed commands", () => {
    const { result } = check("shell-stdin");
    assert.match(result.output, /^flint-stdin-42\r?$/m, result.output.slice(-2000));
  });

  it("boots Debian's own distro kernel on 2 vCPUs", () => {
    const { report } = check("debian-2cpu-poweroff");
    assert.equal(report.nproc, 2);
    assert.ok(report.memTotalKib! > 300 * 1024, `MemTotal ${report.memTotalKib} kB`);
  });
});
