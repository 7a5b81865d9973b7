import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { sys } from "../../sys/native.js";
import { BootTimer, bootTimerReading, createBootTimerShared, whenBooted } from "./boot-timer.js";

describe("boot timer", () => {
  it("records only the first write's time and reads as 0", () => {
    const shared = createBootTimerShared();
    let now = 1000n;
    const timer = new BootTimer(shared, () => now);
    assert.equal(bootTimerReading(shared), undefined);
    const b = Uint8Array.of(0xff);
    timer.read(0, b);
    assert.equal(b[0], 0);
    timer.write(0, Uint8Array.of(1));
    now = 2000n;
    timer.write(0x10, Uint8Array.of(1, 2, 3, 4));
    assert.equal(bootTimerReading(shared), 1000n);
  });

  it("wakes the main thread when a vCPU worker writes, with a CLOCK_MONOTONIC time", async () => {
    const shared = createBootTimerShared();
    const before = sys.monotonicNs();
    const booted = whenBooted(shared);
    const worker = new Worker(
      `const { workerData } = require("node:worker_threads");
       import(workerData.url).then(({ BootTimer }) => new BootTimer(workerData.shared).write(0, Uint8Array.of(1)));`,
      { eval: true, workerData: { shared, url: new URL("./boot-timer.js", import.meta.url).href } },
    );
    const t = await booted;
    await new Promise((r) => worker.once("exit", r));
    assert.ok(t >= before && t <= sys.monotonicNs(), `${t} not within the test's run`);
    assert.equal(bootTimerReading(shared), t);
  });
});
