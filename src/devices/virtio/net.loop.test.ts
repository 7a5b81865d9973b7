/**
 * virtio-net in its real device thread over a real TAP (in a private network
 * namespace, so a separate process: testing/net-loop-scenario.ts): a hostile
 * driver on both queues, receive buffers mostly never posted, a second guest
 * thread sending well-formed frames; control answered, memory bounded,
 * well-formed frames still sent (issue 9).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { actionCount } from "./testing/device-loop-rig.js";
import { netnsAvailable, withTapNamespace } from "./testing/tap-namespace.js";

test(`a hostile driver (${actionCount()} actions) against virtio-net on a real TAP leaves it answering, bounded and sending`, { skip: !netnsAvailable && "needs root and iproute2" }, () => {
  const ns = `flint-netloop-${process.pid}`;
  const tap = "fltap0";
  withTapNamespace({ ns, tap, address: "10.78.0.1/24" }, () => {
    const script = fileURLToPath(new URL("./testing/net-loop-scenario.js", import.meta.url));
    const run = spawnSync("ip", ["netns", "exec", ns, process.execPath, script, tap], { encoding: "utf8", timeout: 300_000, env: process.env });
    assert.equal(run.status, 0, `scenario failed:\n${run.stdout}\n${run.stderr}`);
    const report = JSON.parse(run.stdout) as { line: string; actions: number };
    console.log(report.line);
    assert.equal(report.actions, actionCount());
  });
});
