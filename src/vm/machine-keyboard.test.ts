/**
 * Machine.sendCtrlAltDel() on this host's /dev/kvm with a ring-3 guest that
 * never reads the keyboard (testing/pause-guest.ts counters): the keys go
 * into the i8042 through the main thread's view of its shared state, also
 * while paused (as Firecracker accepts the action in any post-boot state);
 * a buffer the guest leaves full and the wrong states reject with stable
 * codes. That a real Linux guest sees the keys and reboots is
 * src/e2e/ctrl-alt-del.test.ts.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Machine, MachineError, type MachineResult } from "./machine.js";
import { counterProgram, counters, startCounterVm, until } from "./testing/pause-guest.js";

/** Generous: every step here takes milliseconds. */
const HANG_LIMIT_MS = 10_000;

async function within<T>(p: Promise<T>, what: string): Promise<T> {
  const hung = sleep(HANG_LIMIT_MS, "hung" as const, { ref: false });
  const r = await Promise.race([p, hung]);
  if (r === "hung") assert.fail(`${what} did not finish within ${HANG_LIMIT_MS} ms`);
  return r as T;
}

async function rejectsWith(p: Promise<unknown>, code: MachineError["code"]): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof MachineError && e.code === code && !e.message.includes("\n"));
}

test("sendCtrlAltDel: queued while running and while paused, EBUFFERFULL once the unread buffer is full, EENDED after the end", async () => {
  const { machine, running } = await startCounterVm(1);
  let result: MachineResult;
  try {
    // 8 bytes each (set 1: the controller translates after "BIOS POST"); the guest never reads them.
    await within(machine.sendCtrlAltDel(), "sendCtrlAltDel() while running");
    await within(machine.pause(), "pause()");
    await within(machine.sendCtrlAltDel(), "sendCtrlAltDel() while paused");
    await rejectsWith(machine.sendCtrlAltDel(), "EBUFFERFULL");
    await within(machine.resume(), "resume()");
  } finally {
    machine.stop({ kind: "poweroff" });
    result = await within(running, "run() after stop()");
  }
  assert.deepEqual(result.reason, { kind: "poweroff" });
  assert.equal(result.guestFaultsByDevice.i8042 ?? 0, 0, "refusing is not an overrun");
  await rejectsWith(machine.sendCtrlAltDel(), "EENDED");
});

test("sendCtrlAltDel before run() rejects with ENOTSTARTED", async () => {
  const machine = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program: counterProgram() } });
  await rejectsWith(machine.sendCtrlAltDel(), "ENOTSTARTED");
  const running = machine.run();
  await until("the vCPU to count", () => counters(machine)[0]! > 0n);
  machine.stop({ kind: "poweroff" });
  await within(running, "run() after stop()");
});
