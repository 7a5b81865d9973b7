import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { acquireHostLock } from "./host-lock.js";

const work = mkdtempSync(join(tmpdir(), "flint-lock-test-"));
after(() => rmSync(work, { recursive: true, force: true }));

test("holders take turns: the second waits until the first releases", async () => {
  const dir = join(work, "turns");
  const order: string[] = [];
  const release1 = await acquireHostLock(dir, 1000, 10);
  assert.equal(readFileSync(join(dir, "pid"), "utf8"), String(process.pid));
  const second = acquireHostLock(dir, 5000, 10).then((release) => { order.push("second"); return release; });
  await new Promise((r) => setTimeout(r, 100));
  order.push("first releases");
  release1();
  (await second)();
  assert.deepEqual(order, ["first releases", "second"]);
  assert.equal(existsSync(dir), false);
});

test("a held lock times out with ELOCKTIMEOUT", async () => {
  const dir = join(work, "held");
  const release = await acquireHostLock(dir, 1000, 10);
  await assert.rejects(acquireHostLock(dir, 100, 10), { code: "ELOCKTIMEOUT" });
  release();
});

test("a lock whose owner died is taken over", async () => {
  const dir = join(work, "stale");
  const child = spawn(process.execPath, ["-e", "0"]);
  await new Promise((r) => child.on("exit", r));
  mkdirSync(dir);
  writeFileSync(join(dir, "pid"), String(child.pid));
  const release = await acquireHostLock(dir, 1000, 10);
  assert.equal(readFileSync(join(dir, "pid"), "utf8"), String(process.pid));
  release();
});
