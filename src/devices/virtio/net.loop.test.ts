/**
 * virtio-net in its real device thread over a real TAP (in a private network
 * namespace, so a separate process: testing/net-loop-scenario.ts): a hostile
 * driver on both queues, receive buffers mostly never posted, a second guest
 * thread sending well-formed frames; control answered, memory bounded,
 * well-formed frames still sent (issue 9).
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { actionCount } from "./testing/device-loop-rig.js";

const ipAvailable = (() => {
  try {
    execFileSync("ip", ["netns", "list"], { stdio: "ignore" });
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
})();

test(`a hostile driver (${actionCount()} actions) against virtio-net on a real TAP leaves it answering, bounded and sending`, { skip: !ipAvailable && "needs root and iproute2" }, () => {
  const ns = `flint-netloop-${process.pid}`;
  const tap = "fltap0";
  const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
  ip("netns", "add", ns);
  try {
    ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap");
    ip("-n", ns, "addr", "add", "10.78.0.1/24", "dev", tap);
    ip("-n", ns, "link", "set", tap, "up");
    const script = fileURLToPath(new URL("./testing/net-loop-scenario.js", import.meta.url));
    const run = spawnSync("ip", ["netns", "exec", ns, process.execPath, script, tap], { encoding: "utf8", timeout: 300_000, env: process.env });
    assert.equal(run.status, 0, `scenario failed:\n${run.stdout}\n${run.stderr}`);
    const report = JSON.parse(run.stdout) as { line: string; actions: number };
    console.log(report.line);
    assert.equal(report.actions, actionCount());
  } finally {
    spawnSync("ip", ["netns", "del", ns]);
  }
});
