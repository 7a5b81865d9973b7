/**
 * Guest faults at the machine level (direct KVM, ring-3 guest program): every
 * fault is counted per device in MachineResult, and onGuestFault (the log)
 * gets the first few of each device, then summaries (issue 9, finding 2).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { RING3_LAYOUT } from "../arch/x86_64/ring3.js";
import { GUEST_FAULT_LOG_FIRST } from "../devices/fault-log.js";
import { assemble } from "../kvm/testing/assemble.js";
import { Machine } from "./machine.js";

const FAULTS = 20_000;

test("a guest making 20 000 bad serial accesses is counted per device and logged only a few times", async () => {
  // 2-byte writes to the UART's data register: each is ignored and counted as a guest fault.
  const program = assemble(`
       mov ecx, ${FAULTS}
       mov dx, 0x3f8
    1: out dx, ax
       dec ecx
       jnz 1b
       mov dx, 0x600
       mov al, 0x34
       out dx, al
    2: jmp 2b`, RING3_LAYOUT.code);
  const logged: { device: string; message: string }[] = [];
  const t0 = performance.now();
  const m = Machine.create({
    cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, onGuestFault: (device, message) => logged.push({ device, message }),
  });
  const r = await m.run();
  const seconds = (performance.now() - t0) / 1000;
  assert.deepEqual(r.reason, { kind: "poweroff" });
  const serial = logged.filter((l) => l.device === "serial");
  assert.ok(serial.length <= GUEST_FAULT_LOG_FIRST + Math.ceil(seconds) + 2, `${serial.length} lines logged in ${seconds.toFixed(1)} s`);
  assert.equal(r.guestFaultsByDevice.serial, FAULTS);
  assert.equal(r.guestFaults, FAULTS);
  assert.match(serial.at(-1)!.message, /^\d+ more guest faults in serial, last: 2-byte write/);
  console.log(`${FAULTS} serial faults in ${seconds.toFixed(1)} s: ${serial.length} log lines`);
});
