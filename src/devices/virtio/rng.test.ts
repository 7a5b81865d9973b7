import assert from "node:assert/strict";
import { after, test } from "node:test";
import fc from "fast-check";
import { VIRTIO_ID_RNG } from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { createBackend, RNG_MAX_BYTES_PER_REQUEST, VirtioRng } from "./rng.js";
import { FakeDriver } from "./testing/fake-driver.js";
import { arbChainSpec, recordingMemory } from "./testing/fake-driver-hostile.js";
import type { DescriptorChain, VirtioDeviceContext, VirtQueue } from "./types.js";

const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
after(() => mem.dispose());

class Ctx implements VirtioDeviceContext {
  faults = 0;
  readonly failures: string[] = [];
  readonly used: number[] = [];
  constructor(readonly memory: GuestMemory, readonly queues: VirtQueue[], readonly config = new Uint8Array(0), readonly features = 0n) {}
  notifyUsed(q: number): void { this.used.push(q); }
  notifyConfigChange(): void {}
  kick(): void {}
  fail(reason: string): void { this.failures.push(reason); }
  guestFault(): void { this.faults++; }
  watch(): void {}
  unwatch(): void {}
}

function rig(memory: GuestMemory = mem, queueSize = 16) {
  const drv = new FakeDriver(mem, { base: 0x1000, bytes: (1 << 20) - 0x1000, queueSize, features: { eventIdx: false, indirect: true } });
  const rng = new VirtioRng();
  const ctx = new Ctx(memory, [drv.createQueue()]);
  rng.activate(ctx);
  return { drv, rng, ctx };
}

test("virtio-rng fills every writable buffer with fresh random bytes and reports their length", () => {
  const { drv, rng, ctx } = rig();
  assert.equal(createBackend().deviceId, VIRTIO_ID_RNG);
  drv.addChain({ writable: [64, 200], fill: 0 });
  drv.addChain({ writable: [264], fill: 0 });
  rng.onNotify(0);
  const [a, b] = drv.popAllUsed();
  assert.equal(a!.len, 264);
  assert.equal(b!.len, 264);
  assert.ok(!Buffer.from(a!.written).equals(Buffer.from(b!.written)), "two requests get different bytes");
  assert.ok(a!.buffers.every((buf) => buf.some((x) => x !== 0)), "each buffer is filled");
  assert.deepEqual(ctx.used, [0]);
  assert.equal(ctx.faults, 0);
});

test("one request gets at most RNG_MAX_BYTES_PER_REQUEST bytes; the rest of its buffers is untouched", () => {
  const { drv, rng } = rig();
  drv.addChain({ writable: [RNG_MAX_BYTES_PER_REQUEST - 10, 100], fill: 0xee });
  rng.onNotify(0);
  const u = drv.popUsed()!;
  assert.equal(u.len, RNG_MAX_BYTES_PER_REQUEST);
  assert.ok(u.buffers[1]!.subarray(10).every((x) => x === 0xee));
});

test("device-readable buffers are a guest fault and are left alone", () => {
  const { drv, rng, ctx } = rig();
  drv.addChain({ readable: [new Uint8Array(16).fill(7)], writable: [8] });
  drv.addChain({ readable: [new Uint8Array(4)] });
  rng.onNotify(0);
  const [a, b] = drv.popAllUsed();
  assert.equal(a!.len, 8);
  assert.equal(b!.len, 0);
  assert.equal(ctx.faults, 2);
});

test("a broken ring fails the device instead of throwing", () => {
  const { drv, rng, ctx } = rig();
  drv.setAvailIdx(1000);
  assert.doesNotThrow(() => rng.onNotify(0));
  assert.equal(ctx.failures.length, 1);
  assert.doesNotThrow(() => rng.onNotify(0), "a failed device ignores further kicks");
});

test("10^5 random requests: writes only into writable buffers, never outside guest memory", () => {
  const rec = recordingMemory(mem);
  let requests = 0;
  fc.assert(fc.property(fc.array(arbChainSpec({ maxBufferBytes: 4096, indirect: true }), { minLength: 10, maxLength: 10 }), (specs) => {
    const drv = new FakeDriver(mem, { base: 0x1000, bytes: (1 << 20) - 0x1000, queueSize: 16, features: { eventIdx: false, indirect: true } });
    const popped: DescriptorChain[] = [];
    const q = drv.createQueue();
    const rq: VirtQueue = { layout: q.layout, pop: () => { const c = q.pop(); if (c) popped.push(c); return c; }, pushUsed: (h, n) => q.pushUsed(h, n), pushUsedMany: (h, n, c) => q.pushUsedMany(h, n, c), needsInterrupt: () => q.needsInterrupt(), setNotifications: (e) => q.setNotifications(e), hasAvailable: () => q.hasAvailable(), undoPop: () => q.undoPop() };
    const rng = new VirtioRng();
    const ctx = new Ctx(rec.memory, [rq]);
    rng.activate(ctx);
    for (const spec of specs) {
      requests++;
      drv.addChain(spec);
      rec.clear();
      popped.length = 0;
      rng.onNotify(0);
      const u = drv.popUsed()!;
      const c = popped[0]!;
      assert.equal(u.len, Math.min(c.writableBytes, RNG_MAX_BYTES_PER_REQUEST));
      for (const a of rec.accesses) {
        assert.ok(c.writable.some((b) => a.addr >= b.addr && a.addr + a.len <= b.addr + b.len), `access ${JSON.stringify(a)} outside writable buffers`);
      }
    }
    assert.equal(rec.outside.length, 0);
    assert.deepEqual(ctx.failures, []);
  }), { numRuns: 10_000 });
  assert.equal(requests, 100_000);
});
