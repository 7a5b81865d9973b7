import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BenchError } from "./bench-error.js";
import { TOUCH_START, touchAndReadProgram, touchRange } from "./snapshot-guest.js";

describe("snapshot benchmark guest", () => {
  it("touches from 1 MiB, a number of MiB or to the end of its RAM", () => {
    assert.deepEqual(touchRange(64, 32), { start: TOUCH_START, end: 33 << 20 });
    assert.deepEqual(touchRange(1024, "all"), { start: TOUCH_START, end: 1 << 30 });
    assert.deepEqual(touchRange(64, 63), { start: TOUCH_START, end: 64 << 20 });
  });

  it("refuses a range past its RAM or no range", () => {
    for (const [mib, touch] of [[64, 64], [64, 0], [64, 1.5], [1, "all"]] as const) {
      assert.throws(() => touchRange(mib, touch), (e: unknown) => e instanceof BenchError && e.code === "EBENCHARG");
    }
  });

  it("assembles, with the range's end as an immediate", () => {
    const end = Buffer.alloc(4);
    end.writeUInt32LE(33 << 20);
    assert.ok(Buffer.from(touchAndReadProgram(64, 32)).includes(end));
    end.writeUInt32LE(34 << 20);
    assert.ok(Buffer.from(touchAndReadProgram(64, 33)).includes(end));
  });
});
