import assert from "node:assert/strict";
import { once } from "node:events";
import { test } from "node:test";
import { MessageChannel, type MessagePort, type Worker } from "node:worker_threads";
import { startEarlyWorkers, WorkerPool } from "./worker-pool.js";

const ECHO = new URL("./testing/init-echo-worker.js", import.meta.url);

async function initOf(w: Worker): Promise<unknown> {
  // Listen for the exit first: a worker that ends right after posting has its last messages
  // delivered by Node's exit handling, which emits "exit" in the same turn, before a listener
  // added after the message could exist.
  const exited = once(w, "exit");
  const [m] = (await once(w, "message")) as [{ init: unknown }];
  await exited;
  return m.init;
}

test("without spares, take() starts a new worker with its init as workerData", async () => {
  const pool = WorkerPool.for(ECHO);
  assert.equal(pool.spareCount, 0);
  assert.deepEqual(await initOf(pool.take({ job: 1 })), { job: 1 });
});

test("a spare is booted ahead, handed its init (and transferred ports) by message, and replaced", async () => {
  const pool = WorkerPool.for(ECHO);
  pool.keepSpares(2);
  assert.equal(pool.spareCount, 2);
  const { port1, port2 } = new MessageChannel();
  const w = pool.take({ job: 2, port: port2 }, [port2]);
  assert.equal(pool.spareCount, 1, "the spare taken is replaced later, not while the job that took it starts");
  const init = (await initOf(w)) as { job: number; port: MessagePort };
  assert.equal(init.job, 2);
  assert.ok(init.port, "the transferred port arrived");
  for (let i = 0; i < 200 && pool.spareCount < 2; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(pool.spareCount, 2, "the spare taken was replaced");
  pool.keepSpares(0);
  assert.equal(pool.spareCount, 0);
  port1.close();
});

test("a pool refuses a spare count it cannot mean", () => {
  assert.throws(() => WorkerPool.for(ECHO).keepSpares(-1), RangeError);
  assert.throws(() => WorkerPool.for(ECHO).keepSpares(1.5), RangeError);
});

test("prestart boots spares for the next jobs once: each is taken with its init, none is replaced", async () => {
  const pool = WorkerPool.for(ECHO);
  pool.prestart(2);
  assert.equal(pool.spareCount, 2);
  const a = pool.take({ job: "a" });
  assert.equal(pool.spareCount, 1, "a prestarted spare taken is not replaced");
  const b = pool.take({ job: "b" });
  assert.equal(pool.spareCount, 0);
  assert.deepEqual(await Promise.all([initOf(a), initOf(b)]), [{ job: "a" }, { job: "b" }]);
  assert.throws(() => pool.prestart(65), RangeError);
});

test("prestart adopts the workers an entry point started early for its script, and boots only the rest", async () => {
  const script = new URL("./testing/init-echo-worker.js?early", import.meta.url);
  startEarlyWorkers(script, 2);
  const early = (globalThis as unknown as Record<symbol, Map<string, Worker[]>>)[Symbol.for("flint.earlyWorkers")]!.get(script.href)!;
  const started = [...early];
  assert.equal(started.length, 2);
  const pool = WorkerPool.for(script);
  pool.prestart(3);
  assert.equal(pool.spareCount, 3);
  assert.equal(early.length, 0, "both early workers were adopted");
  // The pool hands out the early workers first, each with its init.
  for (const [i, w] of started.entries()) {
    const taken = pool.take({ job: `early ${i}` });
    assert.equal(taken, w);
    assert.deepEqual(await initOf(taken), { job: `early ${i}` });
  }
  const booted = pool.take({ job: "booted" });
  assert.ok(!started.includes(booted));
  assert.deepEqual(await initOf(booted), { job: "booted" });
  assert.throws(() => startEarlyWorkers(script, 65), RangeError);
});
