/**
 * Machine.stop() ends a VM from any state within a bounded time: a vCPU in
 * KVM_RUN, one spinning on MMIO exits, one blocked on a full serial ring
 * whose console stopped reading, and a device thread blocked in a host
 * syscall; and a VM the guest ends while another vCPU waits on a console
 * that stopped reading. Each scenario (testing/stop-scenarios.ts) is a ring-3 guest on
 * this host's /dev/kvm. The limit only catches a hang; the latency itself
 * is measured by `npm run bench` (src/bench/stop-latency.ts).
 */
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Machine, type MachineResult } from "./machine.js";
import { assemble } from "../kvm/testing/assemble.js";
import { RING3_LAYOUT } from "../arch/x86_64/ring3.js";
import { processDeviceThread } from "../devices/virtio/device-thread.js";
import { virtioSlot } from "../devices/virtio/virtio-set.js";
import { enterDeviceIo, enterGuestEndsWithStalledConsole, STOP_SCENARIOS, type StopScenario, type StopScenarioRun } from "./testing/stop-scenarios.js";

/** Generous: stop() is meant to take milliseconds (one second for a device stuck in a syscall; a guest-ended VM here is given 1.5 s). */
const HANG_LIMIT_MS = 10_000;

async function withinLimit(p: Promise<MachineResult>, what: string): Promise<MachineResult> {
  const hung = sleep(HANG_LIMIT_MS, "hung" as const, { ref: false });
  const r = await Promise.race([p, hung]);
  if (r === "hung") assert.fail(`${what}: run() did not resolve within ${HANG_LIMIT_MS} ms of the VM ending`);
  return r;
}

/** The result of a run with a device stuck in a syscall (within the hang limit); the device is let go either way. */
async function resultThenRelease(run: StopScenarioRun, what: string): Promise<MachineResult> {
  try {
    return await withinLimit(run.running, what);
  } finally {
    await run.release();
  }
}

function scenario(name: StopScenario["name"]): StopScenario {
  return STOP_SCENARIOS.find((s) => s.name === name)!;
}

test("stop() ends a vCPU in a tight ring-3 loop", async () => {
  const { machine, running, release } = await scenario("ring3-loop").enter();
  machine.stop({ kind: "poweroff" });
  const r = await withinLimit(running, "ring-3 loop");
  await release();
  assert.deepEqual(r.reason, { kind: "poweroff" });
  assert.deepEqual(r.unstoppedDevices, []);
});

test("stop() ends a vCPU spinning on MMIO exits", async () => {
  const { machine, running, release } = await scenario("mmio-spin").enter();
  machine.stop({ kind: "poweroff" });
  const r = await withinLimit(running, "MMIO spin");
  await release();
  assert.deepEqual(r.reason, { kind: "poweroff" });
  assert.ok(r.stats[0]!.unhandledMmio > 0, "the guest really made MMIO exits");
});

test("stop() ends a vCPU blocked on a full serial ring whose console never completes a write", async () => {
  const { machine, running, release } = await scenario("stalled-console").enter();
  machine.stop({ kind: "poweroff" });
  const r = await withinLimit(running, "stalled console");
  await release();
  assert.deepEqual(r.reason, { kind: "poweroff" });
  // The bytes the stalled console never took are counted, not silently lost.
  assert.ok(r.consoleDroppedBytes > 0, `consoleDroppedBytes ${r.consoleDroppedBytes}`);
});

test("stop() gives up on a device thread blocked in a host syscall, reports it, and cleans up once it returns", async () => {
  const fdsBefore = readdirSync("/proc/self/fd").length;
  const run = await scenario("device-io").enter();
  run.machine.stop({ kind: "poweroff" });
  const r = await resultThenRelease(run, "device thread blocked in a syscall");
  assert.deepEqual(r.reason, { kind: "poweroff" });
  assert.equal(r.unstoppedDevices.length, 1);
  assert.match(r.unstoppedDevices[0]!, /^virtio-block@/);
  // Once its syscall returned, the thread shut its backend down and its fds were closed.
  assert.equal(readdirSync("/proc/self/fd").length, fdsBefore, "fds left open after the stuck thread ended");
});

test("a VM the guest powers off does not wait forever for a device thread stuck in a host syscall: it is reported unstopped", async () => {
  const slow: string[] = [];
  const run = await enterDeviceIo([], { endTimeoutMs: 1500, slowEndReportMs: 200, onSlowEnd: (m) => slow.push(m) });
  run.machine.consoleInput(Buffer.from("x")); // the guest powers off when it sees a byte
  const r = await resultThenRelease(run, "device thread blocked in a syscall after a guest poweroff");
  assert.deepEqual(r.reason, { kind: "poweroff" });
  assert.equal(r.unstoppedDevices.length, 1);
  assert.match(r.unstoppedDevices[0]!, /^virtio-block@/);
  // Before giving up, flint said what the ending VM was waiting for.
  assert.equal(slow.length, 1, JSON.stringify(slow));
  assert.match(slow[0]!, /still waiting for device\(s\) virtio-block@0x[0-9a-f]+ to stop/);
});

test("stop() with one device stuck on the shared device thread reports every device of that thread unstopped, not one on its own thread", async () => {
  const fdsBefore = readdirSync("/proc/self/fd").length;
  const echo = new URL("../devices/virtio/testing/test-backend.js", import.meta.url);
  const run = await enterDeviceIo([
    { kind: "rng", options: {}, backendModule: echo },
    { kind: "rng", options: {}, backendModule: echo, thread: "own" },
  ]);
  run.machine.stop({ kind: "poweroff" });
  const r = await resultThenRelease(run, "shared device thread blocked in a syscall");
  const name = (kind: string, i: number) => `virtio-${kind}@0x${virtioSlot(i).mmioBase.toString(16)}`;
  // The rng device could not stop: its thread was inside the block device's read(2).
  assert.deepEqual(r.unstoppedDevices, [name("block", 0), name("rng", 1)]);
  assert.equal(readdirSync("/proc/self/fd").length, fdsBefore, "fds left open after the stuck thread ended");
});

test("on the process's device thread, stop() gives up on a device stuck in a host syscall; once it returns the device's fds close, and the thread serves the next VM", async () => {
  // A VM that powers off at once, with an rng on the process's device thread: that thread (and its own fds) exists from here on.
  const poweroff = async () => {
    const m = Machine.create({
      cpus: 1, memoryMib: 64, deviceThread: "process", virtioDevices: [{ kind: "rng", options: {} }],
      boot: { kind: "ring3", program: assemble("mov dx, 0x600\n mov al, 0x34\n out dx, al\n 1: jmp 1b", RING3_LAYOUT.code) },
    });
    const r = await m.run();
    assert.deepEqual(r.reason, { kind: "poweroff" });
    assert.deepEqual(r.unstoppedDevices, []);
  };
  await poweroff();
  const thread = processDeviceThread();
  const fdsBefore = readdirSync("/proc/self/fd").length;
  const run = await enterDeviceIo([], { deviceThread: "process" });
  run.machine.stop({ kind: "poweroff" });
  const r = await resultThenRelease(run, "the process's device thread blocked in a syscall");
  assert.deepEqual(r.reason, { kind: "poweroff" });
  assert.equal(r.unstoppedDevices.length, 1);
  assert.match(r.unstoppedDevices[0]!, /^virtio-block@/);
  // release() waited until the thread let go of the device: its fds are closed, the thread runs on.
  assert.equal(readdirSync("/proc/self/fd").length, fdsBefore, "fds left open after the stuck device was let go of");
  assert.equal(processDeviceThread(), thread);
  assert.equal(thread.gone, false);
  await poweroff();
});

test("a VM the guest ends while another vCPU is blocked on a console that stopped reading still ends: the vCPU drops its byte, the output is given up", async () => {
  const { running } = await enterGuestEndsWithStalledConsole({ endTimeoutMs: 1500 });
  const r = await withinLimit(running, "guest reset with a stalled console");
  assert.deepEqual(r.reason, { kind: "reset", source: "i8042" });
  // What the stalled console never took is counted, not silently lost.
  assert.ok(r.consoleDroppedBytes > 0, `consoleDroppedBytes ${r.consoleDroppedBytes}`);
});
