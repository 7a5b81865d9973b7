/** The guest fault log: every fault counted, the first few reported, then summaries. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { GUEST_FAULT_LOG_FIRST, GuestFaultLog, type GuestFaultReport } from "./fault-log.js";

function logWithClock() {
  let now = 0;
  const out: GuestFaultReport[] = [];
  const log = new GuestFaultLog((r) => out.push(r), { now: () => now });
  return { log, out, advance: (ms: number) => { now += ms; } };
}

test("the first faults of a device are reported one by one, the rest as a summary at most every second", () => {
  const { log, out, advance } = logWithClock();
  for (let i = 0; i < 100_000; i++) {
    log.fault("serial", `bad write ${i}`);
    if (i % 1000 === 999) advance(10); // 100 000 faults over a simulated second
  }
  assert.equal(log.total, 100_000);
  assert.deepEqual(log.counts(), { serial: 100_000 });
  const single = out.filter((r) => r.count === 1);
  assert.deepEqual(single.map((r) => r.message), Array.from({ length: GUEST_FAULT_LOG_FIRST }, (_, i) => `bad write ${i}`));
  assert.ok(out.length <= GUEST_FAULT_LOG_FIRST + 2, `${out.length} reports for 1 s of faults`);
  log.flush();
  assert.equal(out.reduce((s, r) => s + r.count, 0), 100_000, "reports account for every fault");
  assert.match(out.at(-1)!.message, /^\d+ more guest faults in serial, last: bad write 99999$/);
});

test("devices are counted and limited separately; a pending summary says when it is due", () => {
  const { log, out, advance } = logWithClock();
  for (let i = 0; i < 20; i++) { log.fault("a", "x"); log.fault("b", "y"); }
  assert.equal(out.length, 2 * GUEST_FAULT_LOG_FIRST);
  assert.equal(log.nextSummaryInMs(), 1000);
  advance(400);
  assert.equal(log.nextSummaryInMs(), 600);
  advance(600);
  log.tick();
  assert.deepEqual(out.slice(-2).map((r) => [r.device, r.count]), [["a", 10], ["b", 10]]);
  assert.equal(log.nextSummaryInMs(), undefined);
  assert.deepEqual(log.counts(), { a: 20, b: 20 });
});

test("a summary from another log is counted with its count and passed on; long messages are clipped", () => {
  const { log, out } = logWithClock();
  log.fault("virtio-rng", "500 more guest faults in virtio-rng, last: z", 500);
  log.fault("virtio-rng", "m".repeat(10_000));
  assert.equal(log.total, 501);
  assert.equal(out[0]!.count, 500);
  assert.ok(out[1]!.message.length < 300);
});
