/**
 * `flint run` exits after Ctrl-A x even when nobody reads its console: stdout
 * is a pipe the test holds open and never reads, and the guest
 * (guest/ring3/serial-flood.S) writes to the UART forever, so the pipe fills,
 * then Node's stream buffer, then the 64 KiB serial ring, and the vCPU blocks.
 * The limit only catches a hang.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { buildSerialFloodGuest } from "../guest/programs/testing/serial-flood.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "flint-stop-cli-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const EXIT_LIMIT_MS = 20_000;

/** CPU time (user + system, clock ticks) the process has used so far. */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]); // utime, stime (proc(5) fields 14 and 15)
}

test("Ctrl-A x ends flint run within the limit while its stdout pipe is never read", async () => {
  const kernel = buildSerialFloodGuest();
  // stdout: a FIFO held open read-write by this test and never read.
  const fifo = join(dir, "console");
  execFileSync("mkfifo", [fifo]);
  const out = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
  try {
    // A one-page pipe fills sooner (best effort: the default 64 KiB works too, only slower).
    execFileSync("python3", ["-c", `import fcntl,os; fd=os.open(${JSON.stringify(fifo)}, os.O_WRONLY|os.O_NONBLOCK); fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 4096)`]);
  } catch { /* keep the default size */ }
  const child = spawn(process.execPath, [CLI, "run", "--kernel", kernel, "--boot", "pvh", "--no-acpi", "--memory", "64"], {
    stdio: ["pipe", out, "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  try {
    // Wait for the guest to be blocked on the console: flint's CPU time stops growing.
    const giveUp = Date.now() + 120_000;
    let last = -1;
    let still = 0;
    while (still < 3) {
      if (Date.now() > giveUp) assert.fail("the guest never blocked on the stalled console");
      await sleep(300);
      const ticks = cpuTicks(child.pid!);
      still = ticks - last <= 1 ? still + 1 : 0;
      last = ticks;
    }
    child.stdin!.write("\x01x");
    const code = await Promise.race([exited, sleep(EXIT_LIMIT_MS, "hung" as const, { ref: false })]);
    if (code === "hung") assert.fail(`flint did not exit within ${EXIT_LIMIT_MS} ms of Ctrl-A x; stderr: ${stderr}`);
    assert.equal(code, 0, stderr);
    assert.match(stderr, /stopped from the console/);
  } finally {
    child.kill("SIGKILL");
    closeSync(out);
  }
});
