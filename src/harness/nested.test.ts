import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { describeNestedRun, guestStall, NestedError, outerKernelLockup, retryReason, runNested, unrequestedTripleFault, type NestedResult } from "./nested.js";

/** Generous: a round trip is ~10-20 s alone, several times that when other TCG VMs share the 2 cores. */
const TIMEOUT_MS = 180_000;

/** The serial log's tail, to explain a failure. */
function tail(serial: string): string {
  return serial.split("\n").slice(-25).join("\n");
}

describe("runNested", { timeout: 5 * TIMEOUT_MS + 20 * 60_000 }, () => {
  it("returns the command's output and exit status", async (t) => {
    const result = await runNested({ command: "echo hi; echo oops >&2; exit 3", timeoutMs: TIMEOUT_MS });
    t.diagnostic(`nested round trip: ${result.durationMs} ms`);
    assert.equal(result.timedOut, false, tail(result.serial));
    assert.equal(result.exitCode, 3, tail(result.serial));
    assert.match(result.output, /^hi$/m);
    assert.match(result.output, /^oops$/m);
    // The harness created and removed its own share.
    assert.equal(existsSync(result.shareDir), false);
  });

  it("gives the command a /dev/kvm and a working node in the checkout", async () => {
    const result = await runNested({
      command: "test -c /dev/kvm || exit 10; node -e 'console.log(\"node \" + 6 * 7)' && pwd",
      timeoutMs: TIMEOUT_MS,
    });
    assert.equal(result.exitCode, 0, `${result.output}\n${tail(result.serial)}`);
    assert.match(result.output, /^node 42$/m);
    assert.match(result.output, new RegExp(`^${process.cwd()}$`, "m"));
  });

  it("makes a file written to shareDir inside appear on the host at the same path", async () => {
    const shareDir = mkdtempSync(join(tmpdir(), "flint-nested-test-"));
    try {
      const file = join(shareDir, "sub", "hello.txt");
      const result = await runNested({
        command: `mkdir -p ${shareDir}/sub && echo "written inside" > ${file}`,
        timeoutMs: TIMEOUT_MS,
        shareDir,
        kvm: false,
      });
      assert.equal(result.exitCode, 0, `${result.output}\n${tail(result.serial)}`);
      assert.equal(readFileSync(file, "utf8"), "written inside\n");
    } finally {
      rmSync(shareDir, { recursive: true, force: true });
    }
  });

  it("kills the VM at timeoutMs and reports timedOut", async () => {
    const timeoutMs = 4000;
    const result = await runNested({ command: "sleep 600", timeoutMs, kvm: false });
    assert.equal(result.timedOut, true);
    assert.equal(result.exitCode, -1);
    assert.ok(result.durationMs >= timeoutMs, `${result.durationMs} ms`);
  });

  it("with retryAfterTimeout, runs a timed-out command once more in a fresh outer VM, and says so", async () => {
    let retries = 0;
    const result = await runNested({ command: "sleep 600", timeoutMs: 3000, kvm: false, retryAfterTimeout: () => void retries++ });
    assert.equal(retries, 1);
    assert.equal(result.attempts, 2);
    assert.equal(result.timedOut, true);
    assert.match(describeNestedRun(result), /killed at its time limit .*second outer VM/);
    const once = await runNested({ command: "exit 3", timeoutMs: TIMEOUT_MS, kvm: false, retryAfterTimeout: () => void retries++ });
    assert.equal(retries, 1, "a run that ended in time is not retried");
    assert.equal(once.attempts, 1);
    assert.match(describeNestedRun(once), /^the nested command exited 3 after \d+ s$/);
  });

  it("a frozen outer VM (its heartbeat stops) is killed long before timeoutMs, reported as frozen, and retried with retryAfterTimeout", async () => {
    // Freeze QEMU itself (SIGSTOP) once the command runs: nothing inside runs any more, as in a TCG freeze.
    let stopped = false, serial = "";
    const freeze = (text: string): void => {
      serial += text; // the line may come in two chunks
      if (stopped || !serial.includes("flint-nested: running")) return;
      stopped = true;
      const pid = execFileSync("pgrep", ["-n", "-f", "mount_tag=flintctl"], { encoding: "utf8" }).trim();
      process.kill(Number(pid), "SIGSTOP");
    };
    let retries = 0;
    const result = await runNested({
      command: "sleep 600", timeoutMs: 10 * 60_000, kvm: false, frozenAfterMs: 20_000, onSerial: freeze,
      retryAfterTimeout: () => { retries++; stopped = false; serial = ""; },
    });
    // A freeze is the emulated machine's failure, not the command's: up to four outer VMs.
    assert.equal(retries, 3);
    assert.equal(result.attempts, 4);
    assert.equal(result.frozen, true);
    assert.equal(result.timedOut, true);
    assert.ok(result.durationMs < 120_000, `${result.durationMs} ms: killed long before its 10-minute limit`);
    assert.match(describeNestedRun(result), /^the outer VM froze \(its heartbeat stopped\) and was killed after \d+ s, in a fourth outer VM because the first froze, and the second froze, and the third froze$/);
    // A run that only sleeps (a heartbeat all along) is not taken for frozen.
    const calm = await runNested({ command: "sleep 40; exit 4", timeoutMs: TIMEOUT_MS, kvm: false, frozenAfterMs: 20_000 });
    assert.equal(calm.frozen, false);
    assert.equal(calm.exitCode, 4);
  });

  it("with retryOnGuestCrash, runs once more when a listed file shows a guest's unrequested triple fault, and says so", async () => {
    const shareDir = mkdtempSync(join(tmpdir(), "flint-nested-test-"));
    try {
      const out = join(shareDir, "flint.out"), marker = join(shareDir, "first-done");
      // The first run leaves flint's report of a triple fault with no restart before it; the second a clean exit.
      const command = `if [ -e ${marker} ]; then echo "flint-guest: booted" > ${out}; else touch ${marker}; `
        + `printf '[    1.7\\nflint: the guest reset the VM (triple fault): vCPU 0: rip 0xfff0\\n' > ${out}; fi`;
      let cleanups = 0;
      const result = await runNested({ command, timeoutMs: TIMEOUT_MS, shareDir, kvm: false, retryOnGuestCrash: [out], retryAfterTimeout: () => void cleanups++ });
      assert.equal(result.exitCode, 0, `${result.output}\n${tail(result.serial)}`);
      assert.equal(result.attempts, 2);
      assert.equal(cleanups, 1);
      assert.equal(readFileSync(out, "utf8"), "flint-guest: booted\n");
      assert.match(describeNestedRun(result), /second outer VM because a guest died in the first \(flint\.out: flint: the guest reset the VM \(triple fault\): vCPU 0/);
      // An outer VM that ends before the command's status (here it powers itself off) is made again too.
      rmSync(marker);
      const off = `if [ -e ${marker} ]; then exit 0; else touch ${marker}; echo o > /proc/sysrq-trigger; sleep 60; fi`;
      const revived = await runNested({ command: off, timeoutMs: TIMEOUT_MS, shareDir, kvm: false, retryOnGuestCrash: [out], retryAfterTimeout: () => void cleanups++ });
      assert.equal(revived.exitCode, 0, `${revived.output}\n${tail(revived.serial)}`);
      assert.equal(revived.attempts, 2);
      assert.match(describeNestedRun(revived), /second outer VM because the first ended without the command's exit status/);
      cleanups = 1;
      // A run whose file shows nothing wrong is not made again.
      const again = await runNested({ command: "true", timeoutMs: TIMEOUT_MS, shareDir, kvm: false, retryOnGuestCrash: [out], retryAfterTimeout: () => void cleanups++ });
      assert.equal(again.attempts, 1);
      assert.equal(cleanups, 1);
    } finally {
      rmSync(shareDir, { recursive: true, force: true });
    }
  });

  it("with retryOnGuestCrash, ends an outer VM whose kernel reports a lockup at once, and makes the run again", async () => {
    const shareDir = mkdtempSync(join(tmpdir(), "flint-nested-test-"));
    try {
      const marker = join(shareDir, "first-started"), late = join(shareDir, "first-went-on");
      // The first outer VM's kernel prints a soft-lockup report (as the emulated machine's do), then the command
      // waits 90 s and leaves a file: ended at the report, that file never comes. The second one just succeeds.
      const command = `if [ -e ${marker} ]; then echo second; else touch ${marker}; `
        + `echo '<0>watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [node:191]' > /dev/kmsg; sleep 90; touch ${late}; fi`;
      const result = await runNested({ command, timeoutMs: TIMEOUT_MS, shareDir, kvm: false, retryOnGuestCrash: [], retryAfterTimeout: () => {} });
      assert.equal(result.exitCode, 0, `${result.output}\n${tail(result.serial)}`);
      assert.equal(result.attempts, 2);
      assert.match(result.output, /^second$/m);
      assert.equal(existsSync(late), false, "the first outer VM was ended at its kernel's report, not after the command");
      assert.match(describeNestedRun(result), /the first one's kernel reported "watchdog: BUG: soft lockup - CPU#1 stuck for 23s!/);
    } finally {
      rmSync(shareDir, { recursive: true, force: true });
    }
  });

  it("rejects a relative shareDir before starting QEMU", async () => {
    await assert.rejects(
      runNested({ command: "true", timeoutMs: 1000, shareDir: "relative/dir" }),
      (error: unknown) => error instanceof NestedError && error.code === "EBADOPTION",
    );
  });
});

describe("unrequestedTripleFault", () => {
  it("finds flint's report of a triple fault the guest did not ask for, from the CLI or a library script", () => {
    const cli = "[    1.71] Last level dTLB entries: 4KB 512\n[    1.7\nflint: the guest reset the VM (triple fault): vCPU 0: rip 0xfff0 rsp 0x0\n";
    assert.equal(unrequestedTripleFault(cli), "flint: the guest reset the VM (triple fault): vCPU 0: rip 0xfff0 rsp 0x0");
    assert.equal(unrequestedTripleFault('flint-e2e: exit=reset\nflint-e2e: reset="triple-fault vCPU 0: rip 0xfff0"\n'), '"triple-fault vCPU 0: rip 0xfff0"');
    assert.equal(unrequestedTripleFault("flint-e2e: exit=reset/triple-fault\n"), "reset/triple-fault");
  });

  it("leaves alone a restart Linux asked for (reboot=t), other resets and clean ends", () => {
    assert.equal(unrequestedTripleFault("[    2.54] reboot: Restarting system\n[    2.55] reboot: machine restart\nflint: the guest reset the VM (triple fault): vCPU 0: rip 0xfff0\n"), undefined);
    assert.equal(unrequestedTripleFault("flint: the guest reset the VM (i8042 keyboard-controller reset)\n"), undefined);
    assert.equal(unrequestedTripleFault("flint-e2e: exit=reset/i8042\n"), undefined);
    assert.equal(unrequestedTripleFault("flint-guest: booted\n"), undefined);
  });
});

describe("guestStall", () => {
  it("finds a client's report of a guest stopped in its early boot, and nothing in a clean report", () => {
    assert.equal(guestStall('flint-e2e: running=1\nflint-e2e: guest_stalled="[    0.0546] setup_percpu: NR_CPUS:64"\n'), 'flint-e2e: guest_stalled="[    0.0546] setup_percpu: NR_CPUS:64"');
    assert.equal(guestStall("flint-e2e: running=1\nflint-e2e: ready=1\n"), undefined);
  });

  it("makes a run that ended in time another outer VM's work, once per attempt, naming the file", () => {
    const dir = mkdtempSync(join(tmpdir(), "flint-nested-stall-"));
    try {
      const report = join(dir, "report.txt");
      writeFileSync(report, 'flint-e2e: running=1\nflint-e2e: guest_stalled="[    0.02] ACPI: Early table"\n');
      const ended: NestedResult = { exitCode: 0, output: "", durationMs: 1, timedOut: false, frozen: false, attempts: 1, serial: "", shareDir: dir };
      assert.equal(retryReason(ended, { command: "true", timeoutMs: 1, retryOnGuestCrash: [report] }, 1),
        'a guest stalled in its early boot in the first (report.txt: flint-e2e: guest_stalled="[    0.02] ACPI: Early table")');
      // Only for runs that list the file; a clean report is no reason.
      assert.equal(retryReason(ended, { command: "true", timeoutMs: 1 }, 1), undefined);
      writeFileSync(report, "flint-e2e: running=1\nflint-e2e: ready=1\n");
      assert.equal(retryReason(ended, { command: "true", timeoutMs: 1, retryOnGuestCrash: [report] }, 1), undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the outer VM's kernel", () => {
  const run = (serial: string): NestedResult => ({ exitCode: 0, output: "", durationMs: 910_000, timedOut: false, frozen: false, attempts: 1, serial, shareDir: "/tmp/x" });

  it("a lockup or a stall it reports is found (what makes runNested try again)", () => {
    assert.equal(outerKernelLockup("[  905.0] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [node:301]\n[  905.0] Call Trace:\n"),
      "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [node:301]");
    assert.equal(outerKernelLockup("[  60.1] rcu: INFO: rcu_preempt self-detected stall on CPU\n"), "rcu: INFO: rcu_preempt self-detected stall on CPU");
    assert.equal(outerKernelLockup("[ 242.0] INFO: task node:88 blocked for more than 120 seconds.\n"), "INFO: task node:88 blocked for more than 120 seconds.");
    assert.equal(outerKernelLockup("[ 2.9] kvm: Nested Virtualization enabled\nflint-nested: exit 0\n"), undefined);
    assert.equal(outerKernelLockup("[ 3.0] WARNING: CPU: 0 PID: 1 at arch/x86/kvm/svm/nested.c:1 x\n"), undefined, "a WARNING is reported, not retried");
  });

  it("describeNestedRun says the first trouble it reported", () => {
    assert.equal(describeNestedRun(run("[ 1.0] ok\n[ 905.0] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [node:301]\n")),
      'the nested command exited 0 after 910 s; the outer VM\'s kernel said "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [node:301]"');
    assert.equal(describeNestedRun(run("[ 3.0] WARNING: CPU: 0 PID: 1 at arch/x86/kvm/svm/nested.c:1 x\n")),
      'the nested command exited 0 after 910 s; the outer VM\'s kernel said "WARNING: CPU: 0 PID: 1 at arch/x86/kvm/svm/nested.c:1 x"');
    assert.equal(describeNestedRun(run("[ 1.0] all quiet\n")), "the nested command exited 0 after 910 s");
  });
});
