/**
 * Machine.pause()/resume() on this host's /dev/kvm with ring-3 guests
 * (testing/pause-guest.ts: every vCPU counts in guest memory): a paused VM's
 * counters stop and its vCPU threads sleep, a resumed one counts again, over
 * many cycles and with several vCPUs; stop() ends a paused VM; calls in the
 * wrong state reject with stable codes; a device that cannot quiesce (its
 * thread blocked in a host syscall) makes pause() give up and leave the VM
 * running; console output in the ring drains while paused. Limits only catch hangs; latencies
 * are measured by `npm run bench` (src/bench/pause-latency.ts).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { RING3_LAYOUT } from "../arch/x86_64/ring3.js";
import { SERIAL_TX_RING_BYTES } from "../devices/legacy/serial-state.js";
import { MSR_KVM_SYSTEM_TIME_NEW } from "../linux/abi.generated.js";
import { Machine, MachineError, type MachineResult } from "./machine.js";
import { enterDeviceIo } from "./testing/stop-scenarios.js";
import { busiestTasks, consoleWriterProgram, counterProgram, counters, sampleTasks, startCounterVm, until } from "./testing/pause-guest.js";

/** Guest RAM for the vCPUs' kvm-clock areas (a page past the counters). */
const KVMCLOCK_AREA = RING3_LAYOUT.data + 0x1000;

/** Generous: pause, resume and stop take milliseconds. */
const HANG_LIMIT_MS = 10_000;

async function within<T>(p: Promise<T>, what: string): Promise<T> {
  const hung = sleep(HANG_LIMIT_MS, "hung" as const, { ref: false });
  const r = await Promise.race([p, hung]);
  if (r === "hung") assert.fail(`${what} did not finish within ${HANG_LIMIT_MS} ms`);
  return r as T;
}

async function stopAndWait(machine: Machine, running: Promise<MachineResult>): Promise<MachineResult> {
  machine.stop({ kind: "poweroff" });
  return within(running, "run() after stop()");
}

async function rejectsWith(p: Promise<unknown>, code: MachineError["code"]): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof MachineError && e.code === code && !e.message.includes("\n"));
}

test("a paused VM's vCPUs stop counting and their threads sleep; resumed, they count again (2 vCPUs)", async () => {
  const { machine, running } = await startCounterVm(2);
  try {
    // The vCPU threads are the two that burn CPU while the guest counts.
    const s0 = sampleTasks();
    await sleep(300);
    const vcpuThreads = busiestTasks(s0, sampleTasks(), 2);
    assert.ok(vcpuThreads.every((t) => t.ticks > 0), `vCPU threads not found: ${JSON.stringify(vcpuThreads)}`);

    await within(machine.pause(), "pause()");
    assert.equal(machine.state, "paused");
    const frozen = counters(machine);
    const p0 = sampleTasks();
    await sleep(500);
    const p1 = sampleTasks();
    assert.deepEqual(counters(machine), frozen, "a counter moved while paused");
    for (const { tid } of vcpuThreads) {
      const a = p0.get(tid)!, b = p1.get(tid)!;
      // Parked on Atomics.wait: asleep, and no CPU used (a spinning thread would use ~50 ticks here).
      assert.equal(b.state, "S", `vCPU thread ${tid} is not asleep while paused`);
      assert.ok(b.ticks - a.ticks <= 5, `vCPU thread ${tid} used ${b.ticks - a.ticks} ticks while paused`);
    }

    await within(machine.resume(), "resume()");
    assert.equal(machine.state, "running");
    await until("every counter to move after resume", () => counters(machine).every((c, i) => c > frozen[i]!), HANG_LIMIT_MS);
  } finally {
    const r = await stopAndWait(machine, running);
    assert.deepEqual(r.reason, { kind: "poweroff" });
  }
});

test("pause and resume 50 times in a row: each pause freezes every counter, each resume lets all move", async () => {
  const cycles = 50;
  const { machine, running } = await startCounterVm(2);
  let r: MachineResult;
  try {
    for (let i = 0; i < cycles; i++) {
      await within(machine.pause(), `pause() #${i}`);
      const frozen = counters(machine);
      await sleep(1);
      assert.deepEqual(counters(machine), frozen, `a counter moved while paused (cycle ${i})`);
      await within(machine.resume(), `resume() #${i}`);
      await until(`the counters to move after resume #${i}`, () => counters(machine).every((c, k) => c > frozen[k]!), HANG_LIMIT_MS);
    }
  } finally {
    r = await stopAndWait(machine, running);
  }
  // Every vCPU parked once per pause, no more (a pause it slept through would show as fewer).
  assert.deepEqual(r.stats.map((s) => s.parks), [cycles, cycles]);
  // Ring-3 guests never enable kvm-clock: KVM_KVMCLOCK_CTRL was tried on each park and refused.
  assert.deepEqual(r.stats.map((s) => s.kvmclockCtrlFails), [cycles, cycles]);
});

test("with the guest's kvm-clock enabled, every pause's KVM_KVMCLOCK_CTRL succeeds (Firecracker's pause does the same)", async () => {
  const cycles = 5;
  const machine = Machine.create({ cpus: 2, memoryMib: 64, boot: { kind: "ring3", program: counterProgram() } });
  // What a Linux guest's kvm-clock driver does at boot, done from the host: each vCPU's
  // pvclock area in guest RAM, enabled (Documentation/virt/kvm/x86/msr.rst, bit 0).
  machine.vcpus.forEach((v) => v.setMsrs([{ index: MSR_KVM_SYSTEM_TIME_NEW, data: BigInt(KVMCLOCK_AREA + v.id * 64) | 1n }]));
  const running = machine.run();
  await until("every vCPU to count", () => counters(machine).every((c) => c > 0n), HANG_LIMIT_MS);
  for (let i = 0; i < cycles; i++) {
    await within(machine.pause(), "pause()");
    await within(machine.resume(), "resume()");
  }
  const r = await stopAndWait(machine, running);
  assert.deepEqual(r.stats.map((s) => s.parks), [cycles, cycles]);
  assert.deepEqual(r.stats.map((s) => s.kvmclockCtrlFails), [0, 0]);
});

test("stop() ends a paused VM: run() resolves with the stop's reason", async () => {
  const { machine, running } = await startCounterVm(2);
  await within(machine.pause(), "pause()");
  const r = await stopAndWait(machine, running);
  assert.deepEqual(r.reason, { kind: "poweroff" });
  assert.equal(machine.state, "ended");
});

test("stop() while pause() is under way: pause() rejects with EENDED and run() resolves", async () => {
  const { machine, running } = await startCounterVm(2);
  const pausing = machine.pause();
  machine.stop({ kind: "poweroff" });
  await within(rejectsWith(pausing, "EENDED"), "pause()");
  const r = await within(running, "run() after stop()");
  assert.deepEqual(r.reason, { kind: "poweroff" });
});

test("run() stays pending while paused: a guest that cannot run cannot end the VM", async () => {
  const { machine, running } = await startCounterVm(1);
  await within(machine.pause(), "pause()");
  const r = await Promise.race([running.then(() => "ended" as const), sleep(300, "pending" as const)]);
  assert.equal(r, "pending");
  await stopAndWait(machine, running);
});

test("pause and resume in the wrong state: ENOTSTARTED before run(), EENDED after the VM ended; repeats are no-ops as in Firecracker", async () => {
  const machine = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program: counterProgram() } });
  assert.equal(machine.state, "not-started");
  await rejectsWith(machine.pause(), "ENOTSTARTED");
  await rejectsWith(machine.resume(), "ENOTSTARTED");
  const running = machine.run();
  await until("the vCPU to count", () => counters(machine)[0]! > 0n);
  assert.equal(machine.state, "running");
  await within(machine.resume(), "resume() of a running VM"); // nothing to do
  assert.equal(machine.state, "running");
  await within(machine.pause(), "pause()");
  await within(machine.pause(), "pause() of a paused VM"); // nothing to do
  assert.equal(machine.state, "paused");
  await stopAndWait(machine, running);
  assert.equal(machine.state, "ended");
  await rejectsWith(machine.pause(), "EENDED");
  await rejectsWith(machine.resume(), "EENDED");
});

test("calls made without awaiting run in order: pause, resume, pause leaves the VM paused", async () => {
  const { machine, running } = await startCounterVm(2);
  try {
    await within(Promise.all([machine.pause(), machine.resume(), machine.pause()]), "pause/resume/pause");
    assert.equal(machine.state, "paused");
    const frozen = counters(machine);
    await sleep(50);
    assert.deepEqual(counters(machine), frozen);
  } finally {
    await stopAndWait(machine, running);
  }
});

test("a VM with a virtio device pauses and resumes: its device thread quiesces and answers", async () => {
  const { machine, running } = await startCounterVm(1, { virtioDevices: [{ kind: "rng", options: {} }] });
  try {
    for (let i = 0; i < 5; i++) {
      await within(machine.pause(), "pause()");
      await within(machine.resume(), "resume()");
    }
  } finally {
    const r = await stopAndWait(machine, running);
    assert.deepEqual(r.unstoppedDevices, []);
  }
});

test("pause() gives up with ETIMEOUT on a device thread blocked in a host syscall, and the VM runs on", async () => {
  // Device 0's backend blocks its thread in read(2) (stall-backend.ts): it cannot quiesce.
  const run = await enterDeviceIo([], { pauseTimeoutMs: 500 });
  const { machine, running } = run;
  try {
    await within(rejectsWith(machine.pause(), "ETIMEOUT"), "pause() of a VM whose device cannot quiesce");
    assert.equal(machine.state, "running");
    // The vCPU was parked and is released: the guest powers off once a byte arrives on its console.
    machine.consoleInput(Uint8Array.of(0x41));
    await until("the guest to power off", () => machine.state === "ended", HANG_LIMIT_MS);
  } finally {
    machine.stop();
    const [r] = await Promise.all([within(running, "run()"), run.release()]);
    assert.deepEqual(r.reason, { kind: "poweroff" });
  }
});

test("console output already in the serial ring still drains while the VM is paused", async () => {
  // A slow console (each chunk takes 200 ms): the guest fills the ring long before it drains, so
  // the ring holds bytes when the vCPU parks, and the console takes them after pause() resolved.
  let taken = 0;
  const slow = new Writable({ highWaterMark: 1, write(chunk: Buffer, _e, cb) { taken += chunk.length; setTimeout(cb, 200); } });
  const machine = Machine.create({ cpus: 1, memoryMib: 64, consoleOutput: slow, boot: { kind: "ring3", program: consoleWriterProgram() } });
  const running = machine.run();
  try {
    await until("the guest to fill the ring", () => counters(machine)[0]! >= BigInt(SERIAL_TX_RING_BYTES / 4096), HANG_LIMIT_MS);
    await within(machine.pause(), "pause()");
    const atPause = taken;
    await until("output to keep draining while paused", () => taken > atPause, HANG_LIMIT_MS);
    assert.equal(machine.state, "paused");
  } finally {
    await stopAndWait(machine, running);
  }
});
