/**
 * virtio-blk, virtio-net (RX and TX) and virtio-rng under rate limiters, each
 * in its real device thread (testing/device-loop-rig.ts) with its real timers:
 * what a device serves by the time the test observes it never exceeds
 * size + rate * elapsed, elapsed measured from before the limiter existed (so
 * a slow machine only loosens the bound, never breaks it); nothing is lost or
 * reordered; a throttled device answers host requests and resets, and a
 * run-time update takes effect.
 */
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { after, test } from "node:test";
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN } from "../../linux/abi.generated.js";
import { SECTOR_SIZE } from "./block.js";
import { NET_HDR_BYTES, NET_RX_QUEUE, NET_TX_QUEUE } from "./net.js";
import { RATE_LIMITER_REQUEST_INFO, RATE_LIMITER_REQUEST_UPDATE, RateLimiterError, type RateLimiterConfig } from "./rate-limiter.js";
import { RateLimiterControl } from "./rate-limiter-control.js";
import { blkHeader } from "./testing/block-requests.js";
import { DeviceLoopRig, VIRTIO_V1 } from "./testing/device-loop-rig.js";
import type { UsedEntry } from "./testing/fake-driver.js";
import { concat, ethFrame, fakeTap, netHeader, readPacket, writePacket } from "./testing/net-test-rig.js";

const LIMIT_MS = 20_000;
const KIB = 1024;
const BLOCK = new URL("./block.js", import.meta.url);
const RNG = new URL("./rng.js", import.meta.url);
const FAKE_TAP_NET = new URL("./testing/net-fake-tap-backend.js", import.meta.url);
const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

/** An image of `blocks` 4 KiB blocks, block i filled with byte i + 1. */
function image(blocks: number): string {
  const dir = mkdtempSync(join(tmpdir(), "flint-rl-"));
  dirs.push(dir);
  const path = join(dir, "disk.img");
  const fd = openSync(path, "w");
  for (let i = 0; i < blocks; i++) writeSync(fd, new Uint8Array(4 * KIB).fill((i + 1) & 0xff), 0, 4 * KIB, i * 4 * KIB);
  closeSync(fd);
  return path;
}

/**
 * The most a bucket {size, refillTimeMs} lets through `elapsedMs` after it was
 * made full: size + rate * elapsed (no one-time burst, no request larger than size).
 */
const bound = (b: { size: number; refillTimeMs: number }, elapsedMs: number) => b.size + (b.size / b.refillTimeMs) * elapsedMs;

/** Checks, at every observation, that `served()` is within the bucket's bound since `t0`; returns the checks made. */
function boundChecker(b: { size: number; refillTimeMs: number }, t0: number, what: string): (served: number) => void {
  return (served) => {
    const elapsed = performance.now() - t0; // taken after the device served: only ever too long
    assert.ok(served <= bound(b, elapsed), `${what}: ${served} served ${elapsed.toFixed(1)} ms after the bucket was made; at most ${bound(b, elapsed).toFixed(0)} allowed`);
  };
}

test("virtio-blk under a bandwidth limiter: reads never run ahead of the bucket, and none is lost or reordered", async () => {
  const blocks = 24;
  const path = image(blocks);
  const bucket = { size: 16 * KIB, refillTimeMs: 100 }; // 160 KiB/s: the 96 KiB take at least 0.5 s
  const t0 = performance.now();
  const rig = await DeviceLoopRig.start({ backendModule: BLOCK, backendOptions: { path, readOnly: true, rateLimiter: { bandwidth: bucket } }, name: "virtio-blk" });
  try {
    const drv = rig.newDriver(0, { queueSize: 128, heapBytes: 256 * KIB });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    const heads = Array.from({ length: blocks }, (_, i) => drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_IN, (i * 4 * KIB) / SECTOR_SIZE)], writable: [4 * KIB, 1] }));
    rig.kick(0);
    const check = boundChecker(bucket, t0, "bytes read");
    const used: UsedEntry[] = [];
    await rig.until(() => {
      for (let u = drv.popUsed(); u; u = drv.popUsed()) used.push(u);
      check(used.length * 4 * KIB);
      return used.length === blocks;
    }, "every read completes", LIMIT_MS);
    assert.deepEqual(used.map((u) => u.head), heads, "completed in the order posted");
    used.forEach((u, i) => {
      assert.equal(u.buffers[1]![0], VIRTIO_BLK_S_OK);
      assert.ok(u.buffers[0]!.every((b) => b === ((i + 1) & 0xff)), `read ${i} holds block ${i}`);
    });
  } finally {
    await rig.stop();
  }
});

test("virtio-blk under an ops limiter: requests of any kind are counted", async () => {
  const bucket = { size: 2, refillTimeMs: 50 }; // 40 requests/s: 12 take at least 0.25 s
  const t0 = performance.now();
  const rig = await DeviceLoopRig.start({ backendModule: BLOCK, backendOptions: { path: image(1), readOnly: true, rateLimiter: { ops: bucket } }, name: "virtio-blk" });
  try {
    const drv = rig.newDriver(0, { queueSize: 64 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    const heads = Array.from({ length: 12 }, () => drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_GET_ID, 0)], writable: [20, 1] }));
    rig.kick(0);
    const check = boundChecker(bucket, t0, "requests");
    const done: number[] = [];
    await rig.until(() => {
      for (let u = drv.popUsed(); u; u = drv.popUsed()) done.push(u.head);
      check(done.length);
      return done.length === heads.length;
    }, "every GET_ID completes", LIMIT_MS);
    assert.deepEqual(done, heads);
  } finally {
    await rig.stop();
  }
});

test("a throttled virtio-blk answers host requests and resets at once, and a run-time update frees what waits", async () => {
  const slow: RateLimiterConfig = { bandwidth: { size: 4 * KIB, refillTimeMs: 600_000 } }; // 4 KiB per 10 minutes
  const rig = await DeviceLoopRig.start({ backendModule: BLOCK, backendOptions: { path: image(8), readOnly: true, rateLimiter: slow }, name: "virtio-blk" });
  try {
    const drv = rig.newDriver(0, { queueSize: 16, heapBytes: 128 * KIB });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    for (let i = 0; i < 4; i++) drv.addChain({ readable: [blkHeader(VIRTIO_BLK_T_IN, (i * 4 * KIB) / SECTOR_SIZE)], writable: [4 * KIB, 1] });
    rig.kick(0);
    await rig.until(() => drv.usedIdx === 1, "the first read (the bucket's whole budget) completes", LIMIT_MS);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(drv.usedIdx, 1, "the others wait: the bucket is empty");
    const info = await rig.timedRequest(RATE_LIMITER_REQUEST_INFO, { which: "io" });
    assert.deepEqual(info.value, slow, "a host request is answered while throttled");
    const bad = await rig.timedRequest(RATE_LIMITER_REQUEST_UPDATE, { which: "rx", update: {} });
    assert.equal(bad.ok, false, "a drive has no rx limiter");
    await rig.timedReset(); // rejects if the device thread does not complete it
    const [fresh] = rig.bringUpAgain();
    const heads = [0, 1, 2].map((i) => fresh!.addChain({ readable: [blkHeader(VIRTIO_BLK_T_IN, (i * 4 * KIB) / SECTOR_SIZE)], writable: [4 * KIB, 1] }));
    rig.kick(0);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(fresh!.usedIdx, 0, "a reset buys the guest no fresh budget");
    // Firecracker's PATCH /drives: a present bucket of size 0 removes it.
    const upd = await rig.timedRequest(RATE_LIMITER_REQUEST_UPDATE, { which: "io", update: { bandwidth: { size: 0, refillTimeMs: 0 } } });
    assert.deepEqual(upd, { ms: upd.ms, ok: true, value: {} });
    await rig.until(() => fresh!.usedIdx === 3, "the waiting reads complete once the limit is lifted (else: 20 minutes)", LIMIT_MS);
    assert.deepEqual(fresh!.popAllUsed().map((u) => u.head), heads);
  } finally {
    await rig.stop();
  }
});

test("virtio-rng under a bandwidth limiter: entropy never runs ahead of the bucket, requests in order", async () => {
  const bucket = { size: 4 * KIB, refillTimeMs: 100 }; // 40 KiB/s: 24 KiB take at least 0.5 s
  const t0 = performance.now();
  const rig = await DeviceLoopRig.start({ backendModule: RNG, backendOptions: { rateLimiter: { bandwidth: bucket } }, name: "virtio-rng" });
  try {
    const drv = rig.newDriver(0, { queueSize: 32, heapBytes: 64 * KIB });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    const heads = Array.from({ length: 24 }, () => drv.addChain({ writable: [KIB] }));
    rig.kick(0);
    const check = boundChecker(bucket, t0, "random bytes");
    const done: UsedEntry[] = [];
    await rig.until(() => {
      for (let u = drv.popUsed(); u; u = drv.popUsed()) done.push(u);
      check(done.reduce((s, u) => s + u.len, 0));
      return done.length === heads.length;
    }, "every request is filled", LIMIT_MS);
    assert.deepEqual(done.map((u) => u.head), heads);
    assert.ok(done.every((u) => u.len === KIB));
  } finally {
    await rig.stop();
  }
});

test("a throttled device's timer does not fire while the device is quiesced (a paused VM), and fires once it runs again", async () => {
  const bucket = { size: 1 * KIB, refillTimeMs: 50 }; // one 1 KiB request per 50 ms
  const rig = await DeviceLoopRig.start({ backendModule: RNG, backendOptions: { rateLimiter: { bandwidth: bucket } }, name: "virtio-rng" });
  try {
    const drv = rig.newDriver(0, { queueSize: 32, heapBytes: 64 * KIB });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    const heads = Array.from({ length: 8 }, () => drv.addChain({ writable: [KIB] }));
    rig.kick(0);
    await rig.until(() => drv.usedIdx >= 1, "the first request (the bucket's budget) is served", LIMIT_MS);
    await rig.dev.quiesce();
    const atQuiesce = drv.usedIdx;
    assert.ok(atQuiesce < heads.length, "the device was throttled when it quiesced");
    await new Promise((r) => setTimeout(r, 300)); // six refill times: the timer is long due
    assert.equal(drv.usedIdx, atQuiesce, "nothing served while quiesced");
    await rig.dev.resume();
    await rig.until(() => drv.usedIdx === heads.length, "the rest is served after resume", LIMIT_MS);
    assert.deepEqual(drv.popAllUsed().map((u) => u.head), heads);
  } finally {
    await rig.stop();
  }
});

test("a request whose debt blocks the device for months leaves the device thread answering and resettable", async () => {
  // One token per 10^7 ms: a 1 KiB request (served whole, larger than the bucket) owes ~10^10 ms,
  // more than poll(2)'s int timeout can say.
  const rig = await DeviceLoopRig.start({ backendModule: RNG, backendOptions: { rateLimiter: { bandwidth: { size: 1, refillTimeMs: 1e7 } } }, name: "virtio-rng" });
  try {
    const drv = rig.newDriver(0, { queueSize: 16 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });
    drv.addChain({ writable: [KIB] });
    drv.addChain({ writable: [KIB] });
    rig.kick(0);
    await rig.until(() => drv.usedIdx === 1, "the oversized request is served", LIMIT_MS);
    const info = await rig.timedRequest(RATE_LIMITER_REQUEST_INFO, { which: "io" });
    assert.equal(info.ok, true, "the device thread still answers");
    await rig.timedReset();
    assert.equal(drv.usedIdx, 1, "the second request waited for the debt");
    assert.equal(rig.failureLog.count, 0, rig.failureLog.last.join("; "));
  } finally {
    await rig.stop();
  }
});

const MAC = "06:00:ac:10:00:02";
const macBytes = Uint8Array.from(MAC.split(":"), (h) => parseInt(h, 16));
/** Packet `seq`: a virtio-net header and a frame of `frameBytes`, numbered in its first payload bytes. */
function packet(seq: number, frameBytes: number): Uint8Array {
  const payload = new Uint8Array(frameBytes - 14);
  new DataView(payload.buffer).setUint32(0, seq);
  return concat(netHeader(), ethFrame(new Uint8Array(6).fill(0xff), macBytes, 0x0800, payload));
}
const seqOf = (p: Uint8Array) => new DataView(p.buffer, p.byteOffset).getUint32(NET_HDR_BYTES + 14);

test("virtio-net TX under a limiter: frames reach the TAP no faster than the bucket allows, all of them, in order", async () => {
  const tap = fakeTap();
  const bucket = { size: 8 * KIB, refillTimeMs: 100 }; // 80 KiB/s: 40 KiB take at least 0.4 s
  const t0 = performance.now();
  const rig = await DeviceLoopRig.start({ backendModule: FAKE_TAP_NET, backendOptions: { fd: tap.device, tap: "fake", mac: MAC, txRateLimiter: { bandwidth: bucket } }, name: "virtio-net" });
  try {
    const rx = rig.newDriver(NET_RX_QUEUE, { queueSize: 16 }), tx = rig.newDriver(NET_TX_QUEUE, { queueSize: 64, heapBytes: 128 * KIB });
    rig.bringUp({ features: VIRTIO_V1, drivers: [rx, tx] });
    const frames = 40;
    for (let i = 0; i < frames; i++) tx.addChain({ readable: [packet(i, KIB - NET_HDR_BYTES)] });
    rig.kick(NET_TX_QUEUE);
    const check = boundChecker(bucket, t0, "bytes sent");
    const seen: number[] = [];
    let bytes = 0;
    await rig.until(() => {
      for (let p = readPacket(tap.peer); p; p = readPacket(tap.peer)) {
        seen.push(seqOf(p));
        bytes += p.length; // the header included: what the limiter counts
      }
      check(bytes);
      return seen.length === frames;
    }, "every frame reaches the TAP", LIMIT_MS);
    assert.deepEqual(seen, Array.from({ length: frames }, (_, i) => i));
    await rig.until(() => tx.usedIdx === frames, "every TX chain is returned", LIMIT_MS);
    const info = await rig.timedRequest(RATE_LIMITER_REQUEST_INFO, { which: "tx" });
    assert.deepEqual(info.value, { bandwidth: bucket });
  } finally {
    await rig.stop();
    tap.close();
  }
});

test("virtio-net RX under a limiter: frames reach the guest no faster than the bucket allows, all of them, in order", async () => {
  const tap = fakeTap();
  const bucket = { size: 8 * KIB, refillTimeMs: 100 };
  const t0 = performance.now();
  const rig = await DeviceLoopRig.start({ backendModule: FAKE_TAP_NET, backendOptions: { fd: tap.device, tap: "fake", mac: MAC, rxRateLimiter: { bandwidth: bucket } }, name: "virtio-net" });
  try {
    const frames = 40;
    const rx = rig.newDriver(NET_RX_QUEUE, { queueSize: 64, heapBytes: 128 * KIB }), tx = rig.newDriver(NET_TX_QUEUE, { queueSize: 16 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [rx, tx] });
    for (let i = 0; i < frames; i++) rx.addChain({ writable: [NET_HDR_BYTES + 1514] });
    rig.kick(NET_RX_QUEUE);
    const check = boundChecker(bucket, t0, "bytes received");
    let written = 0;
    const seen: number[] = [];
    let bytes = 0;
    await rig.until(() => {
      // The host side keeps the "TAP" queue full (10 datagrams: the kernel's bound, not the device's).
      while (written < frames && writePacket(tap.peer, packet(written, KIB - NET_HDR_BYTES)) > 0) written++;
      for (let u = rx.popUsed(); u; u = rx.popUsed()) {
        seen.push(seqOf(u.written));
        bytes += u.len;
      }
      check(bytes);
      return seen.length === frames;
    }, "every frame reaches the guest", LIMIT_MS);
    assert.deepEqual(seen, Array.from({ length: frames }, (_, i) => i));
    // The library's handle (Machine.updateRateLimiter): checked on the main side, applied in the device thread.
    const control = RateLimiterControl.of({ devices: [rig.dev], kinds: ["net"] }, 0);
    assert.deepEqual(await control.info("tx"), {}, "TX is not limited");
    await assert.rejects(control.update("io", {}), (e: unknown) => e instanceof RateLimiterError && /no 'io' limiter/.test(e.message));
    await assert.rejects(control.update("tx", { ops: { size: -1, refillTimeMs: 1 } }), RateLimiterError);
    assert.throws(() => RateLimiterControl.of({ devices: [rig.dev], kinds: ["net"] }, 1), RateLimiterError);
    assert.deepEqual(await control.update("tx", { ops: { size: 5, refillTimeMs: 10 } }), { ops: { size: 5, refillTimeMs: 10 } });
    assert.deepEqual(await control.update("rx", { ops: { size: 7, refillTimeMs: 10 } }), { bandwidth: bucket, ops: { size: 7, refillTimeMs: 10 } }, "an absent bucket stays");
  } finally {
    await rig.stop();
    tap.close();
  }
});

test("a throttled virtio-net RX path leaves frames in the TAP's queue, survives a reset, and an update delivers the rest in order", async () => {
  const tap = fakeTap();
  const slow = { size: 2 * KIB, refillTimeMs: 600_000 }; // two 1 KiB packets, then 2 KiB per 10 minutes
  const rig = await DeviceLoopRig.start({ backendModule: FAKE_TAP_NET, backendOptions: { fd: tap.device, tap: "fake", mac: MAC, rxRateLimiter: { bandwidth: slow } }, name: "virtio-net" });
  try {
    const rx = rig.newDriver(NET_RX_QUEUE, { queueSize: 16, heapBytes: 64 * KIB }), tx = rig.newDriver(NET_TX_QUEUE, { queueSize: 16 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [rx, tx] });
    for (let i = 0; i < 8; i++) rx.addChain({ writable: [NET_HDR_BYTES + 1514] });
    rig.kick(NET_RX_QUEUE);
    for (let i = 0; i < 6; i++) assert.ok(writePacket(tap.peer, packet(i, KIB - NET_HDR_BYTES)) > 0);
    await rig.until(() => rx.usedIdx === 2, "the bucket's two packets arrive", LIMIT_MS);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(rx.usedIdx, 2, "no more: the device holds packet 2 and leaves 3..5 in the TAP's queue");
    assert.deepEqual(rx.popAllUsed().map((u) => seqOf(u.written)), [0, 1]);
    await rig.timedReset(); // the held packet goes with the session, as any frame held for it (net.ts)
    const [rx2] = rig.bringUpAgain();
    for (let i = 0; i < 8; i++) rx2!.addChain({ writable: [NET_HDR_BYTES + 1514] });
    rig.kick(NET_RX_QUEUE);
    const upd = await rig.timedRequest(RATE_LIMITER_REQUEST_UPDATE, { which: "rx", update: { bandwidth: { size: 0, refillTimeMs: 0 } } });
    assert.deepEqual(upd.value, {});
    await rig.until(() => rx2!.usedIdx === 3, "the packets the TAP kept arrive once the limit is lifted", LIMIT_MS);
    assert.deepEqual(rx2!.popAllUsed().map((u) => seqOf(u.written)), [3, 4, 5], "in order");
  } finally {
    await rig.stop();
    tap.close();
  }
});
