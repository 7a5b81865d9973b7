import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, test } from "node:test";
import { SerialOutput } from "./serial-output.js";

const dir = mkdtempSync(join(tmpdir(), "flint-serial-output-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function write(out: SerialOutput, text: string): Promise<void> {
  return new Promise((resolve, reject) => out.write(Buffer.from(text), (e) => (e ? reject(e) : resolve())));
}

function end(out: SerialOutput): Promise<void> {
  return new Promise((resolve) => out.end(resolve));
}

test("a path: created if missing, written from its start without truncating, as Firecracker opens it", async () => {
  const fresh = join(dir, "fresh.log");
  const a = new SerialOutput({ path: fresh });
  await write(a, "hello ");
  await write(a, "guest\n");
  await end(a);
  assert.equal(readFileSync(fresh, "utf8"), "hello guest\n");
  assert.deepEqual(a.totals, { written: 12, rateLimited: 0, missed: 0 });

  const old = join(dir, "old.log");
  writeFileSync(old, "0123456789");
  const b = new SerialOutput({ path: old });
  await write(b, "abc");
  await end(b);
  assert.equal(readFileSync(old, "utf8"), "abc3456789");
});

test("a path that cannot be opened throws one line", () => {
  assert.throws(() => new SerialOutput({ path: join(dir, "no", "such", "dir", "x.log") }), /^Error: Cannot open the serial output '.*x\.log': ENOENT$/);
});

test("a full pipe nobody reads drops what it cannot take and counts it; the writer never waits", async () => {
  const fifo = join(dir, "console.fifo");
  execFileSync("mkfifo", [fifo]);
  const out = new SerialOutput({ path: fifo });
  const chunk = "x".repeat(16 * 1024);
  // A pipe holds 64 KiB by default: 40 chunks overflow it.
  for (let i = 0; i < 40; i++) await write(out, chunk);
  const t = out.totals;
  assert.equal(t.written + t.missed, 40 * chunk.length);
  assert.ok(t.missed > 0, JSON.stringify(t));
  assert.ok(t.written >= 4096, JSON.stringify(t));
  await end(out);
});

test("rate_limiter: the bytes the bucket holds go through, the rest are dropped and counted", async () => {
  let now = 0;
  const got: string[] = [];
  const target = new Writable({ write: (c: Buffer, _e, cb) => { got.push(c.toString()); cb(); } });
  const out = new SerialOutput({ target, rateLimiter: { size: 10, refillTimeMs: 1000 }, clock: () => now });
  await write(out, "abcdefghijklmnopqrstuvwxy"); // 25 bytes, 10 tokens
  assert.deepEqual(got, ["abcdefghij"]);
  assert.deepEqual(out.totals, { written: 10, rateLimited: 15, missed: 0 });
  await write(out, "z"); // no tokens left at the same instant
  now = 500; // half the bucket refilled: 5 tokens
  await write(out, "0123456789");
  assert.deepEqual(got, ["abcdefghij", "01234"]);
  assert.deepEqual(out.totals, { written: 15, rateLimited: 21, missed: 0 });
  now = 10_000; // never more than the bucket's size
  await write(out, "x".repeat(30));
  assert.deepEqual(out.totals, { written: 25, rateLimited: 41, missed: 0 });
  // one_time_burst is spent first.
  const burst = new SerialOutput({ target, rateLimiter: { size: 10, refillTimeMs: 1000, oneTimeBurst: 5 }, clock: () => 0 });
  await write(burst, "y".repeat(20));
  assert.deepEqual(burst.totals, { written: 15, rateLimited: 5, missed: 0 });
});

test("no path: the output goes to the target, whose end stays its own", async () => {
  const got: Buffer[] = [];
  const target = new Writable({ write: (c: Buffer, _e, cb) => { got.push(c); cb(); } });
  const out = new SerialOutput({ target });
  await write(out, "to stdout");
  await end(out);
  assert.equal(Buffer.concat(got).toString(), "to stdout");
  assert.equal(target.writableEnded, false);
});
