/**
 * The token-bucket logic on a fake clock: refill, one-time burst, oversized
 * requests, blocking, updates, and (property) that what a limiter lets
 * through never exceeds burst + size + rate * elapsed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { RateLimiter, RateLimiterError, TokenBucket, checkRateLimiterConfig, checkRateLimiterSavedState } from "./rate-limiter.js";

/** A clock the test moves by hand. */
function fakeClock(start = 1000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => { t += ms; } };
}

test("a bucket starts full and refills at size / refillTimeMs, never above size", () => {
  const b = new TokenBucket({ size: 1000, refillTimeMs: 100 }, 0);
  assert.deepEqual(b.reduce(1000, 0), { kind: "ok" });
  assert.equal(b.tokens(0), 0);
  assert.equal(b.tokens(25), 250, "a quarter of the refill time gives a quarter of the bucket");
  assert.equal(b.tokens(50), 500);
  assert.equal(b.tokens(10_000), 1000, "capped at size");
});

test("a short bucket takes nothing and says how long until the request fits", () => {
  const b = new TokenBucket({ size: 1000, refillTimeMs: 100 }, 0);
  b.reduce(900, 0);
  const r = b.reduce(300, 0);
  assert.equal(r.kind, "short");
  assert.ok(r.kind === "short" && Math.abs(r.waitMs - 20) < 1e-9, "200 tokens missing at 10 tokens/ms: 20 ms");
  assert.equal(b.tokens(0), 100, "nothing taken");
  assert.deepEqual(b.reduce(300, 20), { kind: "ok" }, "and it fits after that wait");
});

test("fractions of a token are not lost between refills", () => {
  const b = new TokenBucket({ size: 3, refillTimeMs: 10 }, 0);
  b.reduce(3, 0);
  let got = 0;
  for (let t = 1; t <= 10; t++) if (b.reduce(1, t).kind === "ok") got++;
  assert.equal(got, 3, "3 tokens over one refill time, taken one ms at a time");
});

test("the one-time burst is spent first, leaves the bucket full, and never refills", () => {
  const b = new TokenBucket({ size: 100, oneTimeBurst: 250, refillTimeMs: 1000 }, 0);
  assert.deepEqual(b.reduce(200, 0), { kind: "ok" });
  assert.equal(b.burstLeft, 50);
  assert.equal(b.tokens(0), 100, "burst covered it: bucket untouched");
  assert.deepEqual(b.reduce(120, 0), { kind: "ok" }, "50 from the burst, 70 from the bucket");
  assert.equal(b.burstLeft, 0);
  assert.equal(b.tokens(0), 30);
  assert.equal(b.tokens(5000), 100, "the bucket refills");
  assert.equal(b.burstLeft, 0, "the burst does not");
});

test("an oversized request is served, empties the bucket and blocks until its debt is refilled", () => {
  const clock = fakeClock(0);
  const rl = new RateLimiter({ bandwidth: { size: 1000, refillTimeMs: 100 } }, clock.now);
  assert.ok(rl.consume(400, "bandwidth"));
  assert.ok(rl.consume(5000, "bandwidth"), "larger than the bucket: served (it could never fit)");
  // 600 left in the bucket, 4400 owed: 440 ms at 10 tokens/ms.
  assert.ok(Math.abs(rl.blockedForMs() - 440) < 1e-9);
  assert.equal(rl.consume(1, "bandwidth"), false, "blocked");
  clock.advance(440);
  assert.equal(rl.blockedForMs(), 0);
  // Refills start once the debt is paid: nothing accrued during the block.
  assert.equal(rl.consume(10, "bandwidth"), false, "the bucket is empty when the block ends");
  clock.advance(1);
  assert.ok(rl.consume(10, "bandwidth"));
});

test("a limiter blocked by one short request refuses everything until that request fits", () => {
  const clock = fakeClock();
  const rl = new RateLimiter({ bandwidth: { size: 100, refillTimeMs: 100 } }, clock.now);
  assert.ok(rl.consume(100, "bandwidth"));
  assert.equal(rl.consume(50, "bandwidth"), false);
  assert.ok(Math.abs(rl.blockedForMs() - 50) < 1e-9, "50 tokens at 1 token/ms");
  clock.advance(10);
  assert.equal(rl.consume(1, "bandwidth"), false, "a smaller request does not pass the blocked one");
  assert.equal(rl.consume(1, "ops"), false, "nor does a request of the other kind");
  clock.advance(40);
  assert.ok(rl.consume(50, "bandwidth"));
  assert.equal(rl.throttled, 3);
});

test("consumeOp takes one op and the bytes, or neither", () => {
  const clock = fakeClock();
  const rl = new RateLimiter({ bandwidth: { size: 100, refillTimeMs: 1000 }, ops: { size: 2, refillTimeMs: 1000 } }, clock.now);
  assert.ok(rl.consumeOp(60));
  assert.equal(rl.consumeOp(60), false, "bytes short: the op is given back");
  clock.advance(600); // 60 bytes and 1.2 ops refilled
  assert.ok(rl.consumeOp(60));
  assert.ok(rl.consumeOp(0), "the second op was never spent");
  assert.equal(rl.consumeOp(0), false, "ops exhausted");
});

test("a kind without a bucket, and a bucket of size or refill time 0, never limit", () => {
  const clock = fakeClock();
  const rl = new RateLimiter({ bandwidth: { size: 0, refillTimeMs: 100 }, ops: { size: 5, refillTimeMs: 0 } }, clock.now);
  assert.ok(rl.unlimited);
  for (let i = 0; i < 100; i++) assert.ok(rl.consumeOp(1e9));
  assert.deepEqual(rl.config(), {});
  assert.ok(new RateLimiter(undefined, clock.now).unlimited);
});

test("an update replaces present buckets with full ones, keeps absent ones, removes zero ones, and ends a block", () => {
  const clock = fakeClock();
  const rl = new RateLimiter({ bandwidth: { size: 100, refillTimeMs: 1000 }, ops: { size: 10, refillTimeMs: 1000 } }, clock.now);
  assert.ok(rl.consume(100, "bandwidth"));
  assert.equal(rl.consume(100, "bandwidth"), false);
  assert.ok(rl.blockedForMs() > 0);
  rl.update({ bandwidth: { size: 500, oneTimeBurst: 50, refillTimeMs: 10 } });
  assert.equal(rl.blockedForMs(), 0, "the block ends");
  assert.deepEqual(rl.config(), { bandwidth: { size: 500, oneTimeBurst: 50, refillTimeMs: 10 }, ops: { size: 10, refillTimeMs: 1000 } });
  assert.ok(rl.consume(550, "bandwidth"), "new bucket full, burst available");
  rl.update({});
  assert.deepEqual(rl.config().ops, { size: 10, refillTimeMs: 1000 }, "an empty update changes nothing");
  rl.update({ ops: { size: 0, refillTimeMs: 0 } });
  assert.equal(rl.config().ops, undefined, "size 0 removes the bucket");
  assert.throws(() => rl.update({ ops: { size: -1, refillTimeMs: 1 } }), RateLimiterError);
  assert.equal(rl.config().bandwidth?.size, 500, "a refused update changes nothing");
});

test("configurations are checked: whole non-negative numbers, known fields only", () => {
  assert.deepEqual(checkRateLimiterConfig({ ops: { size: 1, refillTimeMs: 2, oneTimeBurst: 3 } }), { ops: { size: 1, refillTimeMs: 2, oneTimeBurst: 3 } });
  for (const bad of [null, [], { bw: {} }, { bandwidth: { size: 1 } }, { bandwidth: { size: 1.5, refillTimeMs: 1 } },
    { ops: { size: 1, refillTimeMs: 1, refill_time: 1 } }, { ops: { size: 2 ** 60, refillTimeMs: 1 } }, { ops: { size: "1", refillTimeMs: 1 } }]) {
    assert.throws(() => checkRateLimiterConfig(bad), (e: unknown) => e instanceof RateLimiterError && e.code === "ERATELIMITER", JSON.stringify(bad));
  }
});

test("property: what a limiter lets through by time t never exceeds burst + size + rate * t (+ one oversized request)", () => {
  fc.assert(fc.property(
    fc.integer({ min: 1, max: 1 << 20 }), fc.integer({ min: 1, max: 5000 }), fc.integer({ min: 0, max: 1 << 16 }),
    fc.array(fc.record({ bytes: fc.integer({ min: 0, max: 1 << 21 }), advanceMs: fc.double({ min: 0, max: 50, noNaN: true }) }), { maxLength: 200 }),
    (size, refillTimeMs, burst, steps) => {
      const clock = fakeClock(0);
      const rl = new RateLimiter({ bandwidth: { size, oneTimeBurst: burst, refillTimeMs } }, clock.now);
      let served = 0, largest = 0, pending: number | undefined;
      for (const s of steps) {
        // A device retries its refused request before any other (nothing reordered).
        const bytes = pending ?? s.bytes;
        if (rl.consume(bytes, "bandwidth")) {
          served += bytes;
          largest = Math.max(largest, bytes);
          pending = undefined;
        } else pending = bytes;
        // An oversized request is served whole and paid for afterwards: at most one is outstanding.
        const bound = burst + size + (size / refillTimeMs) * clock.now() + (largest > size ? largest : 0);
        if (served > bound + 1e-6) return false;
        clock.advance(s.advanceMs);
      }
      return true;
    },
  ), { numRuns: 300, seed: 11 });
});

test("property: a limiter that is refused only while short lets a steady stream through at the bucket's rate", () => {
  // Requests of `chunk` bytes retried exactly when blockedForMs says: after a warm-up the
  // achieved rate is the bucket's (within one request per elapsed span).
  fc.assert(fc.property(fc.integer({ min: 1000, max: 1 << 20 }), fc.integer({ min: 10, max: 2000 }), fc.integer({ min: 1, max: 16 }), (size, refillTimeMs, parts) => {
    const clock = fakeClock(0);
    const rl = new RateLimiter({ bandwidth: { size, refillTimeMs } }, clock.now);
    const chunk = Math.max(1, Math.floor(size / parts));
    let served = 0;
    for (let i = 0; i < 400; i++) {
      if (rl.consume(chunk, "bandwidth")) served += chunk;
      else clock.advance(rl.blockedForMs());
    }
    const expected = size + (size / refillTimeMs) * clock.now();
    return served <= expected + 1e-6 && served >= expected - 2 * chunk - 1;
  }), { numRuns: 200, seed: 12 });
});

test("a limiter restored from its saved state limits as the saved one would have: budgets, burst, a debt and a block carry over", () => {
  const clock = fakeClock();
  const a = new RateLimiter({ bandwidth: { size: 1000, refillTimeMs: 100, oneTimeBurst: 300 }, ops: { size: 10, refillTimeMs: 1000 } }, clock.now);
  assert.equal(a.consumeOp(200), true); // from the burst: 100 left of it
  assert.equal(a.consumeOp(2500), true); // oversized: the rest of the burst, the bucket, and a debt
  assert.ok(a.blockedForMs() > 0);
  clock.advance(40);
  const saved = JSON.parse(JSON.stringify(a.saveState()));
  // Restored elsewhere, at another time: the time in between does not count.
  const other = fakeClock(5_000_000);
  const b = new RateLimiter({}, other.now);
  b.restoreState(checkRateLimiterSavedState(saved, "limiter"));
  assert.deepEqual(b.saveState(), saved, "the record comes back unchanged");
  assert.deepEqual(b.config(), a.config(), "the buckets as configured");
  assert.equal(b.blockedForMs(), a.blockedForMs());
  for (const step of [100, 20_000]) {
    clock.advance(step);
    other.advance(step);
    assert.equal(b.blockedForMs(), a.blockedForMs());
    assert.equal(b.consumeOp(300), a.consumeOp(300));
    assert.deepEqual(b.saveState(), a.saveState());
  }
  assert.throws(() => checkRateLimiterSavedState({ ...saved, ops: { ...saved.ops, budget: 11 } }, "limiter"), /limiter\.ops\.budget is more than the bucket's size/);
  assert.throws(() => checkRateLimiterSavedState({ ...saved, blockedForMs: -1 }, "limiter"), /limiter\.blockedForMs must be a number of at least 0/);
});
