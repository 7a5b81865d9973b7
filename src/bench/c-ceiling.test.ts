import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BenchError } from "./bench-error.js";
import { buildCeiling, parseCeilingOutput, runCeiling } from "./c-ceiling.js";


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
