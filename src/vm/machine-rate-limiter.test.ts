/**
 * A rate-limited drive in a real Machine on this host's /dev/kvm: the ring-3
 * virtio-blk driver guest (guest/programs/virtio-blk-driver.ts, bench mode:
 * every completion checked in the guest) reads through a drive with a
 * bandwidth bucket (BlockOptions.rateLimiter, Firecracker's rate_limiter).
 * The run takes at least the time the bucket allows for what the guest read,
 * (bytes - size) / rate, measured from before the Machine (and so the
 * bucket) existed: a lower bound a slow machine cannot break. The limiter is
 * read back and changed while the guest runs (Machine.rateLimiter,
 * updateRateLimiter: Firecracker's PATCH /drives).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Writable } from "node:stream";
import { after, test } from "node:test";
import { RateLimiterError, type RateLimiterConfig } from "../devices/virtio/rate-limiter.js";
import { virtioSlot } from "../devices/virtio/virtio-set.js";
import { VBLK_END_OK, VblkReport, buildVirtioBlkGuest, vblkCmdline, writeStampedImage } from "../guest/programs/virtio-blk-driver.js";
import { Machine } from "./machine.js";

const dir = mkdtempSync(join(tmpdir(), "flint-rl-vm-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const image = join(dir, "stamped.img");
writeStampedImage(image, 16 * 1024 * 1024);
/** A guest that hangs is stopped after this long. */
const RUN_TIMEOUT_MS = 120_000;
/** About 2.3 MiB of reads: 16 and 64 4 KiB reads at QD1 and QD32, 32 sequential 64 KiB reads. */
const COUNTS = { qd1: 16, qd32: 64, seq: 32 };

function machine(rateLimiter: RateLimiterConfig, chunks: Buffer[]): Machine {
  return Machine.create({
    cpus: 1,
    memoryMib: 64,
    boot: { kind: "linux", kernelPath: buildVirtioBlkGuest(), cmdline: vblkCmdline({ blkBase: virtioSlot(0).mmioBase, mode: "bench", seed: 7, ...COUNTS }), acpi: false, mode: "pvh" },
    debugExit: true,
    consoleOutput: new Writable({ write(c: Buffer, _e, cb) { chunks.push(Buffer.from(c)); cb(); } }),
    virtioDevices: [{ kind: "block", options: { path: image, readOnly: true, rateLimiter } }],
  });
}

/** Bytes the guest read, from its report (each completion was checked in the guest). */
function bytesRead(report: VblkReport): number {
  return ["qd1", "qd32", "seq"].reduce((s, p) => s + report.num(`${p}.requests`) * report.num(`${p}.bytes_per_request`), 0);
}

/** Resolves with `ask()`'s answer once the device thread runs (a request before that is refused). */
async function whenRunning<T>(ask: () => Promise<T>, running: () => boolean): Promise<T | undefined> {
  while (running()) {
    try {
      return await ask();
    } catch (e) {
      if (e instanceof RateLimiterError) throw e;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  return undefined;
}

test("a rate-limited disk read takes at least the time its bucket allows, and the limiter is read back while the guest runs", async () => {
  const bucket = { size: 256 * 1024, refillTimeMs: 250 }; // 1 MiB/s: the reads take at least 2 s
  const chunks: Buffer[] = [];
  const t0 = performance.now();
  const m = machine({ bandwidth: bucket }, chunks);
  let ended = false;
  const timer = setTimeout(() => m.stop({ kind: "error", message: `guest still running after ${RUN_TIMEOUT_MS} ms` }), RUN_TIMEOUT_MS);
  const run = m.run().finally(() => { ended = true; clearTimeout(timer); });
  const seen = await whenRunning(() => m.rateLimiter(0, "io"), () => !ended);
  await assert.rejects(m.rateLimiter(0, "rx"), RateLimiterError, "a drive has no rx limiter");
  await assert.rejects(m.updateRateLimiter(1, "io", {}), RateLimiterError, "there is no device 1");
  const result = await run;
  const elapsedMs = performance.now() - t0;
  const report = new VblkReport(Buffer.concat(chunks).toString("latin1"));
  assert.equal(result.debugExit?.status, VBLK_END_OK, report.text);
  assert.deepEqual(seen, { bandwidth: bucket }, "read back while the guest ran (throttled, it runs for at least 2 s)");
  const bytes = bytesRead(report);
  const leastMs = ((bytes - bucket.size) / bucket.size) * bucket.refillTimeMs;
  assert.ok(bytes > 2 * 1024 * 1024, `the guest read ${bytes} bytes`);
  assert.ok(elapsedMs >= leastMs, `${bytes} bytes in ${elapsedMs.toFixed(0)} ms; the bucket allows them in no less than ${leastMs.toFixed(0)} ms`);
});

test("a limiter removed at run time (PATCH /drives with a zero bucket) frees a guest its bucket would hold for minutes", async () => {
  const bucket = { size: 64 * 1024, refillTimeMs: 60_000 }; // 64 KiB a minute: ~2.3 MiB would take over half an hour
  const chunks: Buffer[] = [];
  const m = machine({ bandwidth: bucket, ops: { size: 1000, refillTimeMs: 1000 } }, chunks);
  let ended = false;
  const timer = setTimeout(() => m.stop({ kind: "error", message: `guest still running after ${RUN_TIMEOUT_MS} ms` }), RUN_TIMEOUT_MS);
  const run = m.run().finally(() => { ended = true; clearTimeout(timer); });
  const updated = await whenRunning(() => m.updateRateLimiter(0, "io", { bandwidth: { size: 0, refillTimeMs: 0 } }), () => !ended);
  assert.deepEqual(updated, { ops: { size: 1000, refillTimeMs: 1000 } }, "the bandwidth bucket is gone, the ops bucket (absent from the update) stays");
  const result = await run;
  const report = new VblkReport(Buffer.concat(chunks).toString("latin1"));
  assert.equal(result.debugExit?.status, VBLK_END_OK, `the guest finished within ${RUN_TIMEOUT_MS} ms:\n${report.text}`);
});
