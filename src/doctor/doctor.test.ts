import assert from "node:assert/strict";
import { test } from "node:test";
import { assemble } from "../kvm/testing/assemble.js";
import { loopProgram, runDoctor } from "./doctor.js";

test("the hand-encoded probe program is what binutils assembles", () => {
  const expected = assemble("mov rcx, 123456\n 1: dec rcx\n jnz 1b\n out 0x80, al\n 2: jmp 2b", 0x10000);
  assert.deepEqual(loopProgram(123456), expected);
});

test("doctor finds KVM usable here and measures both guest rings", () => {
  const report = runDoctor();
  assert.equal(report.usable, true, report.verdict);
  assert.ok(report.ring3InstrPerSecond! > 1e8, `ring 3 at ${report.ring3InstrPerSecond} instr/s`);
  assert.ok(report.ring0InstrPerSecond! > 0);
  assert.equal(typeof report.kernelModeEmulated, "boolean");
  assert.ok(report.checks.every((c) => c.ok || !c.required));
});
