import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { describeNestedRun, NestedError, runNested } from "./nested.js";

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
    assert.ok(result.durationMs >= timeoutMs && result.durationMs < timeoutMs + 5000, `${result.durationMs} ms`);
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

  it("rejects a relative shareDir before starting QEMU", async () => {
    await assert.rejects(
      runNested({ command: "true", timeoutMs: 1000, shareDir: "relative/dir" }),
      (error: unknown) => error instanceof NestedError && error.code === "EBADOPTION",
    );
  });
});
