import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BenchError } from "./bench-error.js";
import { buildCeiling, parseCeilingOutput, runCeiling } from "./c-ceiling.js";
import { EXIT_LOOP_HELLO_BYTE, buildExitLoopGuest } from "../guest/programs/exit-loop.js";
import { runTimed } from "./process.js";


describe("buildCeiling", () => {
  it("builds once and then returns the cached binary", () => {
    assert.equal(buildCeiling(), buildCeiling());
  });
});

describe("runCeiling", () => {
  for (const mode of ["pio", "mmio"] as const) {
    it(`times exactly count ${mode} exits between the guest's markers`, async () => {
      const result = await runCeiling({ mode, count: 20_000, runs: 1 });
      assert.equal(result.mode, mode);
      assert.equal(result.exits, 20_000);
      assert.equal(result.otherExits, 0);
      assert.ok(result.seconds > 0);
      assert.ok(result.exitsPerSecond > 1000, `${result.exitsPerSecond} exits/s`);
    });
  }

  it("with hello, prints the guest's COM1 byte before its JSON line, which counts the same exits", async () => {
    const run = await runTimed(buildCeiling(), [buildExitLoopGuest(), "pio", "7", "hello"], { timeoutMs: 60_000 });
    assert.equal(run.exitCode, 0, run.stderr);
    assert.equal(run.stdout.charCodeAt(0), EXIT_LOOP_HELLO_BYTE);
    assert.equal(parseCeilingOutput(run.stdout.slice(1), { mode: "pio", count: 7 }).exits, 7);
  });

  it("refuses an unknown fourth argument", async () => {
    const run = await runTimed(buildCeiling(), [buildExitLoopGuest(), "pio", "7", "hullo"], { timeoutMs: 60_000 });
    assert.equal(run.exitCode, 1);
    assert.match(run.stderr, /usage/);
  });

  it("handles a loop of zero exits", async () => {
    const result = await runCeiling({ mode: "pio", count: 0, runs: 1 });
    assert.equal(result.exits, 0);
  });
});

describe("parseCeilingOutput", () => {
  it("rejects output that does not match the run", () => {
    const line = '{"mode":"pio","count":5,"exits":5,"seconds":1,"exitsPerSecond":5,"bootSeconds":0,"otherExits":0}';
    assert.equal(parseCeilingOutput(line, { mode: "pio", count: 5 }).exitsPerSecond, 5);
    assert.throws(() => parseCeilingOutput(line, { mode: "mmio", count: 5 }), (e: BenchError) => e.code === "EBENCHRUN");
    assert.throws(() => parseCeilingOutput(line.replace('"exits":5', '"exits":4'), { mode: "pio", count: 5 }), BenchError);
    assert.throws(() => parseCeilingOutput("oops", { mode: "pio", count: 5 }), BenchError);
  });
});
