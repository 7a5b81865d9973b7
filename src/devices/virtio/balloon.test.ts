import assert from "node:assert/strict";
import { after, test } from "node:test";
import fc from "fast-check";
import {
  VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_STATS_VQ,
  VIRTIO_BALLOON_S_MEMFREE, VIRTIO_BALLOON_S_MEMTOT, virtio_balloon_config, virtio_balloon_stat,
} from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { dataView, getU32, setU16, setU32, setU64 } from "../../memory/le.js";
import {
  BALLOON_DEFLATE_QUEUE, BALLOON_INFLATE_QUEUE, BALLOON_PAGE_SIZE, BALLOON_STATS_QUEUE, BalloonError, createBackend,
  VirtioBalloon,
} from "./balloon.js";
import { FakeDriver } from "./testing/fake-driver.js";
import { recordingMemory } from "./testing/fake-driver-hostile.js";
import type { VirtioDeviceContext, VirtQueue } from "./types.js";

const MiB = 1 << 20;
// Two regions with a gap, like RAM below and above a hole.
const HIGH = 4 * MiB;
const mem = GuestMemory.create([{ guestBase: 0, size: 2 * MiB }, { guestBase: HIGH, size: MiB }]);
after(() => mem.dispose());

class Ctx implements VirtioDeviceContext {
  faults = 0;
  configChanges = 0;
  readonly failures: string[] = [];
  readonly used: number[] = [];
  constructor(readonly memory: GuestMemory, readonly queues: VirtQueue[], readonly config: Uint8Array, readonly features: bigint) {}
  notifyUsed(q: number): void { this.used.push(q); }
  notifyConfigChange(): void { this.configChanges++; }
  kick(): void {}
  fail(reason: string): void { this.failures.push(reason); }
  guestFault(): void { this.faults++; }
  watch(): void {}
  unwatch(): void {}
}

const ALL = (1n << BigInt(VIRTIO_BALLOON_F_STATS_VQ)) | (1n << BigInt(VIRTIO_BALLOON_F_MUST_TELL_HOST)) | (1n << BigInt(VIRTIO_BALLOON_F_DEFLATE_ON_OOM));

/** Three fake drivers (inflate, deflate, stats) in the first 256 KiB; pages above that are the guest's to balloon. */
function rig(options: { targetMib?: number; memory?: GuestMemory } = {}) {
  const drvs = [0, 1, 2].map((i) => new FakeDriver(mem, { base: 0x1000 + i * 0x10000, bytes: 0x10000, queueSize: 16 }));
  const b = new VirtioBalloon({ targetMib: options.targetMib ?? 0 });
  const ctx = new Ctx(options.memory ?? mem, drvs.map((d) => d.createQueue()), b.initialConfig(), ALL);
  b.activate(ctx);
  return { b, ctx, drvs };
}

const pfns = (...addrs: number[]): Uint8Array => {
  const out = new Uint8Array(4 * addrs.length);
  addrs.forEach((a, i) => setU32(dataView(out), 4 * i, a / BALLOON_PAGE_SIZE));
  return out;
};

test("the balloon offers STATS_VQ, DEFLATE_ON_OOM and MUST_TELL_HOST and starts at the configured target", () => {
  const { b, ctx } = rig({ targetMib: 1 });
  assert.equal(b.deviceFeatures, ALL);
  assert.equal(getU32(dataView(ctx.config), virtio_balloon_config.num_pages), MiB / BALLOON_PAGE_SIZE);
  assert.equal(b.queueMaxSizes.length, 3);
  assert.equal(createBackend({}).deviceId, b.deviceId);
});

test("only `actual` is driver-writable, and its value is reported", () => {
  const { b, ctx } = rig();
  assert.ok(b.configWritable(virtio_balloon_config.actual, 4));
  assert.ok(!b.configWritable(virtio_balloon_config.num_pages, 4));
  assert.ok(!b.configWritable(virtio_balloon_config.actual, 8));
  setU32(dataView(ctx.config), virtio_balloon_config.actual, 77);
  b.onConfigWrite();
  assert.equal(b.actualPages, 77);
});

test("setting the target at run time updates num_pages and raises a config interrupt; impossible targets throw", () => {
  const { b, ctx } = rig();
  b.setTargetMib(2);
  assert.equal(getU32(dataView(ctx.config), virtio_balloon_config.num_pages), (2 * MiB) / BALLOON_PAGE_SIZE);
  assert.equal(ctx.configChanges, 1);
  assert.throws(() => b.setTargetMib(4), (e: unknown) => e instanceof BalloonError && e.code === "EBALLOONTARGET", "more than guest RAM");
  assert.throws(() => b.setTargetMib(-1), BalloonError);
  assert.throws(() => b.setTargetMib(0.5), BalloonError);
  assert.equal(ctx.configChanges, 1);
});

test("inflated pages are given back to the host (read as zero); others, and deflated ones, keep their data", () => {
  const { b, ctx, drvs } = rig();
  const base = 0x100000;
  mem.fill(base, 8 * BALLOON_PAGE_SIZE, 0xab);
  mem.fill(HIGH, BALLOON_PAGE_SIZE, 0xcd);
  // Pages 0,1,2 contiguous (one discard), page 5, the first page of the high region; a duplicate.
  const p = (i: number) => base + i * BALLOON_PAGE_SIZE;
  drvs[0]!.addChain({ readable: [pfns(p(1), p(0), p(2), p(5), HIGH, p(1))] });
  b.onNotify(BALLOON_INFLATE_QUEUE);
  assert.equal(drvs[0]!.popUsed()!.len, 0);
  for (const i of [0, 1, 2, 5]) assert.ok(mem.read(p(i), BALLOON_PAGE_SIZE).every((x) => x === 0), `page ${i} discarded`);
  for (const i of [3, 4, 6, 7]) assert.ok(mem.read(p(i), BALLOON_PAGE_SIZE).every((x) => x === 0xab), `page ${i} kept`);
  assert.ok(mem.read(HIGH, BALLOON_PAGE_SIZE).every((x) => x === 0));
  assert.equal(b.metrics.inflatedPages, 5);
  assert.equal(b.metrics.discardCalls, 3, "contiguous pages are discarded together");
  assert.equal(b.metrics.badPfns, 1, "the duplicate is skipped");
  assert.deepEqual(ctx.used, [BALLOON_INFLATE_QUEUE]);
  // Deflate page 5; reuse it; inflating again discards again.
  drvs[1]!.addChain({ readable: [pfns(p(5))] });
  b.onNotify(BALLOON_DEFLATE_QUEUE);
  assert.equal(drvs[1]!.popUsed()!.len, 0);
  assert.equal(b.metrics.deflatedPages, 1);
  mem.fill(p(5), BALLOON_PAGE_SIZE, 0x11);
  drvs[0]!.addChain({ readable: [pfns(p(5))] });
  b.onNotify(BALLOON_INFLATE_QUEUE);
  assert.ok(mem.read(p(5), BALLOON_PAGE_SIZE).every((x) => x === 0));
  assert.equal(ctx.failures.length, 0);
});

test("PFNs outside guest RAM (in the gap, past the end, 2^32-1) are skipped as guest faults", () => {
  const { b, ctx, drvs } = rig();
  drvs[0]!.addChain({ readable: [pfns(2 * MiB, HIGH + MiB, 0xffffffff * BALLOON_PAGE_SIZE), new Uint8Array(3)] });
  b.onNotify(BALLOON_INFLATE_QUEUE);
  assert.equal(drvs[0]!.popUsed()!.len, 0);
  assert.equal(b.metrics.badPfns, 3);
  assert.equal(b.metrics.inflatedPages, 0);
  assert.ok(ctx.faults >= 2, "bad PFNs and a partial PFN are both faults");
});

function statsBuffer(entries: [number, bigint][]): Uint8Array {
  const out = new Uint8Array(entries.length * virtio_balloon_stat.SIZE);
  entries.forEach(([tag, val], i) => {
    const v = dataView(out.subarray(i * virtio_balloon_stat.SIZE));
    setU16(v, virtio_balloon_stat.tag, tag);
    setU64(v, virtio_balloon_stat.val, val);
  });
  return out;
}

test("the stats buffer is kept and parsed; requestStats hands it back for fresh values", () => {
  const { b, ctx, drvs } = rig();
  assert.equal(b.requestStats(), false, "nothing to give back yet");
  drvs[2]!.addChain({ readable: [statsBuffer([[VIRTIO_BALLOON_S_MEMFREE, 123456789n], [VIRTIO_BALLOON_S_MEMTOT, 2n ** 40n], [99, 5n]])] });
  b.onNotify(BALLOON_STATS_QUEUE);
  assert.equal(drvs[2]!.popUsed(), undefined, "the device holds the buffer");
  assert.equal(b.stats.updates, 1);
  assert.equal(b.stats.byName["free-memory"], 123456789n);
  assert.equal(b.stats.byName["total-memory"], 2n ** 40n);
  assert.equal(b.stats.byTag.get(99), 5n);
  assert.equal(b.stats.byName["tag-99"], 5n);
  assert.equal(b.requestStats(), true);
  assert.equal(drvs[2]!.popUsed()!.len, 0);
  assert.deepEqual(ctx.used, [BALLOON_STATS_QUEUE]);
  assert.equal(b.requestStats(), false, "only one request outstanding");
});

test("a broken ring fails the device instead of throwing", () => {
  const { b, ctx, drvs } = rig();
  drvs[0]!.setAvailIdx(500);
  assert.doesNotThrow(() => b.onNotify(BALLOON_INFLATE_QUEUE));
  assert.equal(ctx.failures.length, 1);
});

test("10^5 random inflate/deflate/stats requests never throw, never leave guest RAM, discard only listed pages", () => {
  const rec = recordingMemory(mem);
  const addr = fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: 0x40000 / BALLOON_PAGE_SIZE, max: (2 * MiB) / BALLOON_PAGE_SIZE - 1 }) },
    { weight: 2, arbitrary: fc.integer({ min: HIGH / BALLOON_PAGE_SIZE, max: (HIGH + MiB) / BALLOON_PAGE_SIZE + 2 }) },
    // Not the drivers' own ring pages (below 0x40000): ballooning those breaks the rings, as it would in a guest.
    { weight: 1, arbitrary: fc.integer({ min: 0x40000 / BALLOON_PAGE_SIZE, max: 0xffffffff }) },
  );
  const req = fc.record({
    queue: fc.constantFrom(BALLOON_INFLATE_QUEUE, BALLOON_DEFLATE_QUEUE, BALLOON_STATS_QUEUE),
    pfns: fc.array(addr, { maxLength: 40 }),
    extra: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(11) }),
    writable: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(64) }),
  });
  let requests = 0;
  fc.assert(fc.property(fc.array(req, { minLength: 20, maxLength: 20 }), (reqs) => {
    const { b, ctx, drvs } = rig({ memory: rec.memory });
    for (const r of reqs) {
      requests++;
      const raw = new Uint8Array(4 * r.pfns.length + r.extra);
      r.pfns.forEach((p, i) => setU32(dataView(raw), 4 * i, p));
      const readable = raw.length ? [raw] : [];
      const writable = r.writable ? [r.writable] : [];
      if (readable.length + writable.length === 0) continue;
      drvs[r.queue]!.addChain({ readable, writable });
      rec.clear();
      b.onNotify(r.queue);
      // Trailing bytes that make a whole word are one more PFN (0).
      const listed = new Set([...r.pfns, ...(r.extra >= 4 ? [0] : [])].map((p) => p * BALLOON_PAGE_SIZE));
      for (const a of rec.accesses) {
        if (a.method === "discard") {
          assert.equal(r.queue, BALLOON_INFLATE_QUEUE);
          for (let at = a.addr; at < a.addr + a.len; at += BALLOON_PAGE_SIZE) assert.ok(listed.has(at), `discarded page 0x${at.toString(16)} was not listed`);
        } else {
          assert.equal(a.op, "read", `the balloon never writes guest memory (${JSON.stringify(a)})`);
        }
      }
      if (r.queue === BALLOON_STATS_QUEUE) b.requestStats();
      drvs[r.queue]!.popAllUsed();
    }
    assert.equal(rec.outside.length, 0);
    assert.deepEqual(ctx.failures, []);
  }), { numRuns: 5_000, includeErrorInReport: true });
  assert.ok(requests >= 100_000);
});
