import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";
import { BenchError } from "./bench-error.js";
import { buildCeiling } from "./c-ceiling.js";
import { buildExitLoopGuest } from "../guest/programs/exit-loop.js";
import { EXIT_STATUS_ON_END, ceilingRunArgs, flintRunArgs, qemuRunArgs } from "./overhead-args.js";
import { probeMemory, probeTiming } from "./overhead-probe.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const sh = (script: string) => ({ name: "sh", file: "sh", args: ["-c", script] });

describe("probeTiming", () => {
  it("times the C ceiling's first guest byte and its exit", async () => {
    const cmd = { name: "the C ceiling", file: buildCeiling(), args: ceilingRunArgs(buildExitLoopGuest(), { mode: "pio", count: 0, hello: true }) };
    const t = await probeTiming(cmd, EXIT_STATUS_ON_END.ceiling);
    assert.ok(t.firstOutputMs > 0 && t.exitMs >= t.firstOutputMs, JSON.stringify(t));
  });

  it("sees flint's guest byte on its console and its exit with the guest's end marker", async () => {
    const args = flintRunArgs(buildExitLoopGuest(), { cpus: 1, memoryMib: 32, guest: { mode: "pio", count: 0, hello: true }, exitOnEnd: true });
    const t = await probeTiming({ name: "flint", file: process.execPath, args: [CLI, ...args] }, EXIT_STATUS_ON_END.flint);
    assert.ok(t.exitMs >= t.firstOutputMs);
  });

  it("fails on another exit status, on output that is not the guest's byte, and on no output", async () => {
    await assert.rejects(probeTiming(sh("printf H; exit 3"), 0), (e: BenchError) => e.code === "EBENCHRUN" && /status 3, not 0/.test(e.message));
    await assert.rejects(probeTiming(sh("echo oops"), 0), (e: BenchError) => e.code === "EBENCHRUN" && /printed 'oops/.test(e.message));
    await assert.rejects(probeTiming(sh("exit 0"), 0), (e: BenchError) => /before the guest's first byte/.test(e.message));
  });

  it("kills a process that outlives its time limit", async () => {
    await assert.rejects(probeTiming(sh("printf H; exec sleep 30"), 0, { timeoutMs: 300 }), (e: BenchError) => e.code === "EBENCHTIMEOUT");
  });
});

describe("probeMemory", () => {
  it("reads QEMU's peak RSS, anonymous memory and guest RAM while its guest halts, then kills it", async () => {
    const args = qemuRunArgs(buildExitLoopGuest(), { cpus: 1, memoryMib: 64, guest: { mode: "pio", count: 0, hello: true, halt: true }, exitOnEnd: false });
    const m = await probeMemory({ name: "QEMU", file: "qemu-system-x86_64", args }, 64, 50);
    assert.ok(m.guestRam.rssKib > 0 && m.guestRam.rssKib <= 64 * 1024, JSON.stringify(m));
    assert.ok(m.peakRssKib > m.guestRam.rssKib && m.peakAnonKib >= m.guestRam.rssKib, JSON.stringify(m));
    assert.ok(m.threads >= 1);
  });

  it("fails when the process ends before its memory is read", async () => {
    await assert.rejects(probeMemory(sh("printf H"), 64, 200), (e: BenchError) => e.code === "EBENCHRUN");
  });
});
