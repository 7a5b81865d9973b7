/**
 * `flint run` on a real terminal (tmux gives it a TTY): the console is in raw
 * mode while the guest runs, Ctrl-A x stops the VM with exit code 0, and the
 * terminal's settings are restored afterwards. The guest is the PVH
 * exit-loop program told to loop for hours, so only the escape can end it.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { buildExitLoopGuest, exitLoopCmdline } from "../guest/programs/exit-loop.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "flint-tty-"));
const session = `flint-test-${process.pid}`;
const tmux = (...args: string[]) => execFileSync("tmux", args, { encoding: "utf8" });
after(() => {
  try { tmux("kill-session", "-t", session); } catch { /* already gone */ }
  rmSync(dir, { recursive: true, force: true });
});

async function until(what: string, fn: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

test("Ctrl-A x quits flint run from a terminal, with exit code 0 and the terminal restored", async () => {
  const kernel = buildExitLoopGuest();
  const rc = join(dir, "rc");
  const stty = join(dir, "stty");
  const q = (s: string) => `'${s}'`;
  const flint = [process.execPath, CLI, "run", "--kernel", kernel, "--boot", "pvh", "--no-acpi", "--memory", "64",
    "--cmdline", exitLoopCmdline({ mode: "pio", count: 2_000_000_000 })].map(q).join(" ");
  // Record stty before, while flint runs (raw), and after.
  const script = `stty -g > ${stty}.before; ${flint}; echo $? > ${rc}; stty -g > ${stty}.after`;
  tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "30", "sh", "-c", `${script}; sleep 30`);
  const panePid = tmux("display-message", "-p", "-t", session, "#{pane_pid}").trim();
  // While the guest runs, the pane's terminal is in raw mode (no icanon, no echo).
  await until("raw mode", () => {
    try {
      const tty = tmux("display-message", "-p", "-t", session, "#{pane_tty}").trim();
      const mode = execFileSync("stty", ["-F", tty, "-a"], { encoding: "utf8" });
      return /-icanon/.test(mode) && /-echo\b/.test(mode);
    } catch {
      return false;
    }
  });
  tmux("send-keys", "-t", session, "C-a", "x");
  await until("flint to exit", () => {
    try { return readFileSync(rc, "utf8").trim() !== ""; } catch { return false; }
  });
  assert.equal(readFileSync(rc, "utf8").trim(), "0");
  assert.equal(readFileSync(`${stty}.after`, "utf8"), readFileSync(`${stty}.before`, "utf8"), "terminal settings restored");
  assert.match(tmux("capture-pane", "-p", "-t", session), /flint: stopped from the console/);
  assert.ok(panePid);
});
