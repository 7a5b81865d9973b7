import assert from "node:assert/strict";
import { after, test } from "node:test";
import {
  VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
} from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { readChain, writeChain } from "./chain-io.js";
import {
  availRingBytes, descTableBytes, QueueError, type QueueErrorCode, serveQueue, SplitQueue, usedRingBytes, vringNeedEvent,
} from "./queue.js";
import { FakeDriver } from "./testing/fake-driver.js";
import type { QueueLayout, VirtQueue } from "./types.js";

// Two regions with a gap: [0, 1 MiB) and [2 MiB, 2 MiB + 64 KiB).
const MiB = 1 << 20;
const HIGH = 2 * MiB;
const mem = GuestMemory.create([{ guestBase: 0, size: MiB }, { guestBase: HIGH, size: 0x10000 }]);
after(() => mem.dispose());

const EVENT_IDX = { eventIdx: true, indirect: false };
const INDIRECT = { eventIdx: false, indirect: true };
const NONE = { eventIdx: false, indirect: false };

function driver(queueSize = 8, features = NONE): FakeDriver {
  mem.fill(0, MiB, 0);
  return new FakeDriver(mem, { base: 0x1000, bytes: 0x40000, queueSize, features });
}

const bytes = (...xs: number[]): Uint8Array => Uint8Array.from(xs);

/** Asserts `fn` throws QueueError `code` and changes neither guest memory nor the queue's indices. */
function refuses(q: SplitQueue | undefined, code: QueueErrorCode, fn: () => unknown): void {
  const before = mem.read(0, MiB);
  const avail = q?.lastAvailIdx, used = q?.usedIdx;
  assert.throws(fn, (e: unknown) => e instanceof QueueError && e.code === code, `expected ${code}`);
  assert.ok(Buffer.from(mem.read(0, MiB)).equals(before), "guest memory is untouched");
  assert.equal(q?.lastAvailIdx, avail);
  assert.equal(q?.usedIdx, used);
}

function layout(size: number, descTable: number, availRing: number, usedRing: number): QueueLayout {
  return { size, descTable, availRing, usedRing };
}

test("a well-formed layout is accepted and sizes include the EVENT_IDX trailing fields", () => {
  assert.equal(descTableBytes(256), 4096);
  assert.equal(availRingBytes(256), 6 + 512);
  assert.equal(usedRingBytes(256), 6 + 2048);
  const q = new SplitQueue(mem, layout(256, 0x1000, 0x2000, 0x3000), NONE, 256);
  assert.equal(q.layout.size, 256);
});

test("layouts with a bad size, alignment, overlap or range are refused with EQUEUELAYOUT", () => {
  const ok = (size: number) => layout(size, 0x1000, 0x3000, 0x4000);
  for (const size of [0, 3, 6, 100, -8, 1.5, Number.NaN]) refuses(undefined, "EQUEUELAYOUT", () => new SplitQueue(mem, ok(size), NONE, 256));
  refuses(undefined, "EQUEUELAYOUT", () => new SplitQueue(mem, ok(512), NONE, 256)); // above the device's maximum
  refuses(undefined, "EQUEUELAYOUT", () => new SplitQueue(mem, ok(8), NONE, 65536)); // maximum above 32768
  refuses(undefined, "EQUEUELAYOUT", () => new SplitQueue(mem, layout(8, 0x1008, 0x3000, 0x4000), NONE, 8)); // desc 16-aligned
  refuses(undefined, "EQUEUELAYOUT", () => new SplitQueue(mem, layout(8, 0x1000, 0x3001, 0x4000), NONE, 8)); // avail 2-aligned
  refuses(undefined, "EQUEUELAYOUT", () => new SplitQueue(mem, layout(8, 0x1000, 0x3000, 0x4002), NONE, 8)); // used 4-aligned
  refuses(undefined, "EQUEUELAYOUT", () => new SplitQueue(mem, layout(8, 0x1000, 0x1040, 0x4000), NONE, 8)); // avail inside desc table
  refuses(undefined, "EQUEUELAYOUT", () => new SplitQueue(mem, layout(8, 0x1000, 0x3000, 0x3010), NONE, 8)); // used overlaps avail
  for (const bad of [-16, MiB, HIGH - 16, 2 ** 53, Number.NaN, Infinity]) {
    refuses(undefined, "EQUEUELAYOUT", () => new SplitQueue(mem, layout(8, bad, 0x3000, 0x4000), NONE, 8));
  }
  // The used ring would fit without avail_event, which is still counted.
  const used = MiB - (4 + 8 * 8);
  refuses(undefined, "EQUEUELAYOUT", () => new SplitQueue(mem, layout(8, 0x1000, 0x3000, used), EVENT_IDX, 8));
  new SplitQueue(mem, layout(8, 0x1000, 0x3000, used - 4), EVENT_IDX, 8);
  // Rings in the second region are fine.
  new SplitQueue(mem, layout(8, HIGH, HIGH + 0x100, HIGH + 0x200), EVENT_IDX, 8);
});

test("a direct chain round-trips: readable payloads in, written bytes and length back", () => {
  const drv = driver(8);
  const q = drv.createQueue();
  assert.equal(q.pop(), undefined, "an empty ring gives nothing");
  assert.equal(q.hasAvailable(), false);
  const head = drv.addChain({ readable: [bytes(1, 2, 3), bytes(4, 5)], writable: [3, 4] });
  assert.equal(q.hasAvailable(), true);
  const chain = q.pop()!;
  assert.equal(chain.head, head);
  assert.equal(chain.readable.length, 2);
  assert.equal(chain.readableBytes, 5);
  assert.equal(chain.writableBytes, 7);
  assert.deepEqual(readChain(mem, chain, 0, 100), bytes(1, 2, 3, 4, 5));
  assert.deepEqual(readChain(mem, chain, 2, 2), bytes(3, 4), "reads span buffer boundaries");
  assert.equal(writeChain(mem, chain, 0, bytes(9, 8, 7, 6, 5, 4, 3, 2, 1)), 7, "writes stop at the writable total");
  q.pushUsed(chain.head, 5);
  assert.equal(q.inFlightCount, 0);
  const used = drv.popUsed()!;
  assert.equal(used.head, head);
  assert.equal(used.len, 5);
  assert.deepEqual(used.written, bytes(9, 8, 7, 6, 5));
  assert.deepEqual(used.buffers, [bytes(9, 8, 7), bytes(6, 5, 4, 3)]);
  assert.equal(drv.freeDescriptors, 8, "the driver got its descriptors back");
});

test("an indirect chain round-trips when VIRTIO_RING_F_INDIRECT_DESC is negotiated", () => {
  const drv = driver(4, INDIRECT);
  const q = drv.createQueue();
  const payloads = Array.from({ length: 2 }, (_, i) => bytes(i, i, i));
  for (let i = 0; i < 4; i++) drv.addChain({ readable: [bytes(9)] }); // the table fills up …
  for (let i = 0; i < 4; i++) q.pushUsed(q.pop()!.head, 0);
  drv.popAllUsed();
  for (let i = 0; i < 3; i++) drv.addChain({ readable: [bytes(9)] });
  drv.addChain({ readable: payloads, writable: [2, 2], indirect: true }); // … 4 buffers through the last descriptor
  for (let i = 0; i < 3; i++) q.pop();
  const chain = q.pop()!;
  assert.deepEqual(readChain(mem, chain, 0, 12), bytes(0, 0, 0, 1, 1, 1));
  assert.equal(chain.writable.length, 2);
  writeChain(mem, chain, 0, bytes(7, 7, 7));
  q.pushUsed(chain.head, 3);
  assert.deepEqual(drv.popUsed()!.written, bytes(7, 7, 7));
});

test("zero-length buffers are allowed and skipped, whatever their address", () => {
  const drv = driver(4);
  const q = drv.createQueue();
  drv.writeDescriptor(0, { addr: 2n ** 63n, len: 0, flags: VRING_DESC_F_NEXT, next: 1 });
  drv.writeDescriptor(1, { addr: 0x2000, len: 4, flags: VRING_DESC_F_NEXT, next: 2 });
  drv.writeDescriptor(2, { addr: 0, len: 0, flags: VRING_DESC_F_WRITE, next: 0 });
  drv.setAvailRing(0, 0);
  drv.setAvailIdx(1);
  const chain = q.pop()!;
  assert.deepEqual(chain.readable, [{ addr: 0x2000, len: 4 }]);
  assert.deepEqual(chain.writable, []);
});

/** A driver with one chain 0 → 1 → … available, descriptors all pointing at valid buffers. */
function hostile(size: number, features = NONE): { drv: FakeDriver; q: SplitQueue } {
  const drv = driver(size, features);
  const q = drv.createQueue();
  for (let i = 0; i < size; i++) drv.writeDescriptor(i, { addr: 0x80000 + 64 * i, len: 64, flags: 0, next: 0 });
  drv.setAvailRing(0, 0);
  drv.setAvailIdx(1);
  return { drv, q };
}

test("an avail idx more than the queue size ahead is refused with EQUEUEINDEX", () => {
  const { drv, q } = hostile(8);
  drv.setAvailIdx(9);
  refuses(q, "EQUEUEINDEX", () => q.pop());
  drv.setAvailIdx(0xffff); // "behind" is just as far ahead modulo 2^16
  refuses(q, "EQUEUEINDEX", () => q.pop());
  drv.setAvailIdx(8);
  assert.ok(q.pop(), "exactly size ahead is fine");
});

test("a head or next index not below the queue size is refused with EQUEUEINDEX", () => {
  const { drv, q } = hostile(8);
  drv.setAvailRing(0, 8);
  refuses(q, "EQUEUEINDEX", () => q.pop());
  drv.setAvailRing(0, 0xffff);
  refuses(q, "EQUEUEINDEX", () => q.pop());
  drv.setAvailRing(0, 0);
  drv.writeDescriptor(0, { addr: 0x80000, len: 64, flags: VRING_DESC_F_NEXT, next: 8 });
  refuses(q, "EQUEUEINDEX", () => q.pop());
});

test("descriptor loops and chains longer than the queue are refused with EQUEUECHAIN", () => {
  const { drv, q } = hostile(4);
  drv.writeDescriptor(0, { addr: 0x80000, len: 64, flags: VRING_DESC_F_NEXT, next: 0 });
  refuses(q, "EQUEUECHAIN", () => q.pop());
  for (let i = 0; i < 4; i++) drv.writeDescriptor(i, { addr: 0x80000, len: 64, flags: VRING_DESC_F_NEXT, next: (i + 1) % 4 });
  refuses(q, "EQUEUECHAIN", () => q.pop());
  drv.writeDescriptor(3, { addr: 0x80000, len: 64, flags: 0, next: 0 });
  assert.equal(q.pop()!.readable.length, 4, "a chain of exactly the queue size is fine");
});

test("a readable buffer after a writable one is refused with EQUEUECHAIN", () => {
  const { drv, q } = hostile(4);
  drv.writeDescriptor(0, { addr: 0x80000, len: 64, flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, next: 1 });
  drv.writeDescriptor(1, { addr: 0x81000, len: 64, flags: 0, next: 0 });
  refuses(q, "EQUEUECHAIN", () => q.pop());
  drv.writeDescriptor(0, { addr: 0x80000, len: 0, flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, next: 1 });
  refuses(q, "EQUEUECHAIN", () => q.pop()); // even an empty writable buffer sets the order
});

test("buffers outside guest memory are refused with EQUEUERANGE", () => {
  const { drv, q } = hostile(4);
  const cases: [bigint | number, number][] = [
    [MiB, 1], [MiB - 8, 16], [MiB + 0x1000, 16], [HIGH + 0x10000 - 4, 8], [2n ** 63n, 16], [2n ** 64n - 1n, 2],
    [2 ** 52, 1], [0, 0xffffffff], [HIGH - 1, 2],
  ];
  for (const [addr, len] of cases) {
    drv.writeDescriptor(0, { addr, len, flags: VRING_DESC_F_WRITE, next: 0 });
    refuses(q, "EQUEUERANGE", () => q.pop());
  }
  drv.writeDescriptor(0, { addr: HIGH + 0x10000 - 8, len: 8, flags: 0, next: 0 });
  assert.deepEqual(q.pop()!.readable, [{ addr: HIGH + 0x10000 - 8, len: 8 }], "the last bytes of a region are fine");
});

test("indirect descriptors are refused unless negotiated, nested, with NEXT, badly sized or outside memory", () => {
  const plain = hostile(4);
  plain.drv.writeDescriptor(0, { addr: 0x90000, len: 32, flags: VRING_DESC_F_INDIRECT, next: 0 });
  refuses(plain.q, "EQUEUECHAIN", () => plain.q.pop());

  const { drv, q } = hostile(4, INDIRECT);
  const table = 0x90000;
  drv.writeDescriptorAt(table, { addr: 0x80000, len: 8, flags: VRING_DESC_F_NEXT, next: 1 });
  drv.writeDescriptorAt(table + 16, { addr: 0x80000, len: 8, flags: VRING_DESC_F_WRITE, next: 0 });
  for (const [len, flags, code] of [
    [32, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, "EQUEUECHAIN"],
    [0, VRING_DESC_F_INDIRECT, "EQUEUECHAIN"],
    [24, VRING_DESC_F_INDIRECT, "EQUEUECHAIN"],
  ] as const) {
    drv.writeDescriptor(0, { addr: table, len, flags, next: 1 });
    refuses(q, code, () => q.pop());
  }
  for (const addr of [MiB - 16, 2n ** 63n]) {
    drv.writeDescriptor(0, { addr, len: 32, flags: VRING_DESC_F_INDIRECT, next: 0 });
    refuses(q, "EQUEUERANGE", () => q.pop());
  }
  drv.writeDescriptor(0, { addr: table, len: 32, flags: VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE, next: 0 });
  assert.equal(q.pop()!.writableBytes, 8, "WRITE on the indirect descriptor itself is ignored (§2.7.5.3.2)");
  q.pushUsed(0, 0);
  drv.setAvailRing(1, 0);
  drv.setAvailIdx(2);
  // Nested: an entry of the table is itself indirect.
  drv.writeDescriptorAt(table + 16, { addr: table, len: 32, flags: VRING_DESC_F_INDIRECT, next: 0 });
  refuses(q, "EQUEUECHAIN", () => q.pop());
  // A loop inside the table, and a next beyond the table (though below the queue size).
  drv.writeDescriptorAt(table + 16, { addr: 0x80000, len: 8, flags: VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, next: 1 });
  refuses(q, "EQUEUECHAIN", () => q.pop());
  drv.writeDescriptorAt(table + 16, { addr: 0x80000, len: 8, flags: VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, next: 2 });
  refuses(q, "EQUEUEINDEX", () => q.pop());
});

test("an indirect table longer than the queue size is refused with EQUEUECHAIN", () => {
  const { drv, q } = hostile(2, INDIRECT);
  const table = 0x90000;
  for (let i = 0; i < 3; i++) drv.writeDescriptorAt(table + 16 * i, { addr: 0x80000, len: 8, flags: i < 2 ? VRING_DESC_F_NEXT : 0, next: i + 1 });
  drv.writeDescriptor(0, { addr: table, len: 48, flags: VRING_DESC_F_INDIRECT, next: 0 });
  refuses(q, "EQUEUECHAIN", () => q.pop());
});

test("a head made available again while in flight is refused; pushUsed refuses heads not in flight", () => {
  const { drv, q } = hostile(4);
  const chain = q.pop()!;
  drv.setAvailRing(1, 0);
  drv.setAvailIdx(2);
  refuses(q, "EQUEUECHAIN", () => q.pop());
  refuses(q, "EQUEUEUSED", () => q.pushUsed(1, 0));
  refuses(q, "EQUEUEUSED", () => q.pushUsed(4, 0));
  refuses(q, "EQUEUEUSED", () => q.pushUsed(-1, 0));
  refuses(q, "EQUEUEUSED", () => q.pushUsed(chain.head, 1)); // no writable bytes
  q.pushUsed(chain.head, 0);
  refuses(q, "EQUEUEUSED", () => q.pushUsed(chain.head, 0)); // twice
  assert.equal(q.pop()!.head, 0, "once returned, the head may come again");
});

test("pushUsedMany publishes several chains with one used idx store, in order, each with its own length", () => {
  const drv = driver(8, EVENT_IDX);
  const q = drv.createQueue();
  // Start near the end of the used ring so the batch wraps around it.
  for (let i = 0; i < 7; i++) { drv.addChain({ writable: [1] }); q.pushUsed(q.pop()!.head, 1); }
  drv.popAllUsed();
  for (let i = 0; i < 3; i++) drv.addChain({ writable: [8, 8] });
  const chains = [q.pop()!, q.pop()!, q.pop()!];
  for (const [i, c] of chains.entries()) writeChain(mem, c, 0, new Uint8Array(16).fill(i + 1));
  const lens = [16, 16, 5];
  q.pushUsedMany(chains.map((c) => c.head), lens, 3);
  assert.equal(q.usedIdx, 10);
  assert.equal(q.inFlightCount, 0);
  const used = drv.popAllUsed();
  assert.deepEqual(used.map((u) => u.head), chains.map((c) => c.head));
  assert.deepEqual(used.map((u) => u.len), lens);
  assert.deepEqual([...used[2]!.written], [3, 3, 3, 3, 3]);
  assert.equal(q.needsInterrupt(), true);
  q.pushUsedMany([], [], 0);
  assert.equal(q.usedIdx, 10, "an empty batch publishes nothing");
});

test("pushUsedMany refuses a batch with any bad entry and publishes none of it", () => {
  const drv = driver(8);
  const q = drv.createQueue();
  for (let i = 0; i < 3; i++) drv.addChain({ writable: [4] });
  const [a, b, c] = [q.pop()!, q.pop()!, q.pop()!];
  refuses(q, "EQUEUEUSED", () => q.pushUsedMany([a.head, b.head, a.head], [1, 1, 1], 3)); // a head twice
  refuses(q, "EQUEUEUSED", () => q.pushUsedMany([a.head, b.head, 7], [1, 1, 1], 3)); // not in flight
  refuses(q, "EQUEUEUSED", () => q.pushUsedMany([a.head, b.head], [1, 5], 2)); // more than writable
  refuses(q, "EQUEUEUSED", () => q.pushUsedMany([a.head], [1], 2)); // count beyond the arrays
  assert.equal(q.inFlightCount, 3, "nothing left flight");
  q.pushUsedMany([c.head, a.head, b.head], [4, 0, 2], 3);
  assert.deepEqual(drv.popAllUsed().map((u) => [u.head, u.len]), [[c.head, 4], [a.head, 0], [b.head, 2]]);
});

test("vringNeedEvent matches Linux's vring_need_event, including across wraparound", () => {
  // (__u16)(new_idx - event_idx - 1) < (__u16)(new_idx - old)
  const ref = (e: number, n: number, o: number) => ((n - e - 1) & 0xffff) < ((n - o) & 0xffff);
  for (const [e, n, o, want] of [
    [0, 1, 0, true], [1, 1, 0, false], [4, 6, 3, true], [6, 6, 3, false], [2, 6, 3, false],
    [0xffff, 0, 0xfffe, true], [0xfffe, 1, 0xffff, false], [0, 0, 0, false],
  ] as const) {
    assert.equal(vringNeedEvent(e, n, o), want, `${e} ${n} ${o}`);
    assert.equal(ref(e, n, o), want);
  }
});

test("with EVENT_IDX, needsInterrupt follows used_event exactly like vring_need_event", () => {
  const drv = driver(8, EVENT_IDX);
  const q = drv.createQueue();
  let old = 0, first = true, interrupts = 0;
  for (let round = 0; round < 60; round++) {
    const pushes = (round * 5) % 4;
    for (let i = 0; i < pushes; i++) {
      drv.addChain({ writable: [1] });
      q.pushUsed(q.pop()!.head, 0);
    }
    drv.popAllUsed();
    drv.usedEvent = (old + ((round * 7) % 6)) & 0xffff; // before, at or after the pushed range
    const want: boolean = pushes === 0 ? false : first ? true : vringNeedEvent(drv.usedEvent, q.usedIdx, old);
    assert.equal(q.needsInterrupt(), want, `round ${round}`);
    if (want) interrupts++;
    first = false;
    old = q.usedIdx;
  }
  assert.ok(interrupts > 5 && interrupts < 40, `some interrupts suppressed, some not (${interrupts})`);
});

test("without EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT suppresses interrupts", () => {
  const drv = driver(4);
  const q = drv.createQueue();
  drv.addChain({ writable: [1] });
  q.pushUsed(q.pop()!.head, 1);
  assert.equal(q.needsInterrupt(), true);
  assert.equal(q.needsInterrupt(), false, "already signalled");
  drv.setCallbacks(false);
  assert.equal(drv.availFlags & VRING_AVAIL_F_NO_INTERRUPT, VRING_AVAIL_F_NO_INTERRUPT);
  drv.addChain({ writable: [1] });
  q.pushUsed(q.pop()!.head, 1);
  assert.equal(q.needsInterrupt(), false);
});

test("setNotifications toggles VRING_USED_F_NO_NOTIFY, or moves avail_event with EVENT_IDX", () => {
  const plain = driver(4);
  const q = plain.createQueue();
  q.setNotifications(false);
  assert.equal(plain.usedFlags & VRING_USED_F_NO_NOTIFY, VRING_USED_F_NO_NOTIFY);
  plain.addChain({ readable: [bytes(1)] });
  assert.equal(plain.needsKick(), false);
  q.setNotifications(true);
  assert.equal(plain.usedFlags, 0);
  plain.addChain({ readable: [bytes(1)] });
  assert.equal(plain.needsKick(), true);

  const drv = driver(4, EVENT_IDX);
  const e = drv.createQueue();
  drv.addChain({ readable: [bytes(1)] });
  assert.equal(drv.needsKick(), true, "avail_event starts at 0: the first chain kicks");
  e.pop();
  assert.equal(drv.availEvent, 1, "each pop asks for a kick after the next chain");
  e.setNotifications(false);
  e.pushUsed(0, 0);
  drv.popAllUsed();
  drv.addChain({ readable: [bytes(2)] });
  drv.addChain({ readable: [bytes(3)] });
  assert.equal(drv.needsKick(), true, "the driver passes the stale avail_event once");
  e.pop();
  assert.equal(drv.availEvent, 1, "disabled: pops leave avail_event alone");
  drv.addChain({ readable: [bytes(4)] });
  assert.equal(drv.needsKick(), false);
  e.setNotifications(true);
  assert.equal(drv.availEvent, 2);
  assert.equal(e.hasAvailable(), true, "re-check after enabling: chains added meanwhile are still there");
});

for (const [name, features] of [["EVENT_IDX", EVENT_IDX], ["NO_NOTIFY", NONE]] as const) {
  test(`serveQueue (${name}): chains added while the device serves cost no kick, and kicks are back on afterwards`, () => {
    const drv = driver(16, features);
    const q = drv.createQueue();
    drv.addChain({ readable: [bytes(0)] });
    assert.equal(drv.needsKick(), true);
    const seen: number[] = [];
    const r = serveQueue(q, 64, (chain) => {
      seen.push(readChain(mem, chain, 0, 1)[0]!);
      q.pushUsed(chain.head, 0);
      // The driver keeps adding while the device works: the last one lands after the device's final pop.
      if (seen.length <= 3) {
        drv.addChain({ readable: [bytes(seen.length)] });
        assert.equal(drv.needsKick(), false, `chain ${seen.length} needs no kick: the device is busy`);
      }
    });
    assert.deepEqual(r, { served: 4, more: false, refused: false });
    assert.deepEqual(seen, [0, 1, 2, 3]);
    assert.equal(q.hasAvailable(), false);
    drv.addChain({ readable: [bytes(9)] });
    assert.equal(drv.needsKick(), true, "idle again: the next chain kicks");
  });

  test(`serveQueue (${name}): a chain made available between the last pop and re-enabling kicks is still served`, () => {
    const drv = driver(16, features);
    const q = drv.createQueue();
    drv.addChain({ readable: [bytes(0)] });
    assert.equal(drv.needsKick(), true);
    // A queue whose first "empty" answer comes just before the driver adds a chain without kicking.
    let raced = false;
    const racy: VirtQueue = {
      layout: q.layout,
      pushUsed: (head, n) => q.pushUsed(head, n),
      pushUsedMany: (heads, lens, count) => q.pushUsedMany(heads, lens, count),
      needsInterrupt: () => q.needsInterrupt(),
      setNotifications: (on) => q.setNotifications(on),
      hasAvailable: () => q.hasAvailable(),
      undoPop: () => q.undoPop(),
      pop: () => {
        const c = q.pop();
        if (!c && !raced) {
          raced = true;
          drv.addChain({ readable: [bytes(1)] });
          assert.equal(drv.needsKick(), false, "kicks were off when the driver looked");
        }
        return c;
      },
    };
    const seen: number[] = [];
    const r = serveQueue(racy, 64, (chain) => { seen.push(readChain(mem, chain, 0, 1)[0]!); q.pushUsed(chain.head, 0); });
    assert.deepEqual(seen, [0, 1]);
    assert.deepEqual(r, { served: 2, more: false, refused: false });
  });

  test(`serveQueue (${name}): a refused chain goes back to the ring, kicks stay off, and the next pass starts with it`, () => {
    const drv = driver(16, features);
    const q = drv.createQueue();
    for (let i = 0; i < 5; i++) drv.addChain({ readable: [bytes(i)] });
    drv.needsKick();
    const seen: number[] = [];
    let allow = 2;
    const serve = (chain: ReturnType<SplitQueue["pop"]> & object): false | void => {
      if (allow-- <= 0) return false;
      seen.push(readChain(mem, chain, 0, 1)[0]!);
      q.pushUsed(chain.head, 0);
    };
    assert.deepEqual(serveQueue(q, 64, serve), { served: 2, more: false, refused: true });
    assert.equal(q.inFlightCount, 0, "the refused chain is not held");
    assert.equal(q.hasAvailable(), true);
    drv.addChain({ readable: [bytes(5)] });
    assert.equal(drv.needsKick(), false, "a throttled device wants no kicks");
    allow = 64;
    assert.deepEqual(serveQueue(q, 64, serve), { served: 4, more: false, refused: false });
    assert.deepEqual(seen, [0, 1, 2, 3, 4, 5], "nothing lost or reordered");
    assert.deepEqual([...Array(6)].map(() => drv.popUsed()?.head), [0, 1, 2, 3, 4, 5]);
  });

  test(`undoPop (${name}): only right after a pop`, () => {
    const drv = driver(16, features);
    const q = drv.createQueue();
    assert.throws(() => q.undoPop(), QueueError, "nothing popped");
    drv.addChain({ readable: [bytes(0)] });
    const c = q.pop()!;
    q.pushUsed(c.head, 0);
    assert.throws(() => q.undoPop(), QueueError, "already used");
  });

  test(`serveQueue (${name}): stops at its budget with kicks still off and says there is more`, () => {
    const drv = driver(16, features);
    const q = drv.createQueue();
    for (let i = 0; i < 10; i++) drv.addChain({ readable: [bytes(i)] });
    drv.needsKick();
    const seen: number[] = [];
    const serve = (chain: ReturnType<SplitQueue["pop"]> & object) => { seen.push(readChain(mem, chain, 0, 1)[0]!); q.pushUsed(chain.head, 0); };
    assert.deepEqual(serveQueue(q, 4, serve), { served: 4, more: true, refused: false });
    drv.addChain({ readable: [bytes(10)] });
    assert.equal(drv.needsKick(), false, "the device will come back by itself: no kick");
    assert.deepEqual(serveQueue(q, 4, serve), { served: 4, more: true, refused: false });
    assert.deepEqual(serveQueue(q, 4, serve), { served: 3, more: false, refused: false });
    assert.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    drv.addChain({ readable: [bytes(11)] });
    assert.equal(drv.needsKick(), true);
    assert.deepEqual(serveQueue(q, 1, serve), { served: 1, more: false, refused: false }, "budget reached on the last chain: nothing more");
    drv.addChain({ readable: [bytes(12)] });
    assert.equal(drv.needsKick(), true, "and kicks are back on");
  });
}

test("used idx and avail idx wrap around at 65535", () => {
  const drv = driver(4);
  const q = drv.createQueue();
  for (let i = 0; i < 0x10000 + 3; i++) {
    drv.addChain({ readable: [bytes(i & 0xff)], writable: [1] });
    const chain = q.pop()!;
    if (i >= 0xfffe) assert.deepEqual(readChain(mem, chain, 0, 1), bytes(i & 0xff));
    q.pushUsed(chain.head, 1);
    const used = drv.popUsed()!;
    assert.equal(used.head, chain.head);
    if (i === 0xfffe) assert.equal(drv.usedIdx, 0xffff);
    if (i === 0xffff) assert.equal(drv.usedIdx, 0);
  }
  assert.equal(q.usedIdx, 3);
  assert.equal(q.lastAvailIdx, 3);
});

test("reset forgets indices and in-flight chains without touching guest memory", () => {
  const drv = driver(4);
  const q = drv.createQueue();
  drv.addChain({ writable: [4] });
  q.pop();
  const before = mem.read(0, MiB);
  q.reset();
  assert.ok(Buffer.from(mem.read(0, MiB)).equals(before));
  assert.equal(q.lastAvailIdx, 0);
  assert.equal(q.inFlightCount, 0);
  assert.equal(q.pop()!.head, 0, "the chain is seen again from index 0");
});

test("a queue restored from its saved state over the same rings goes on where it stopped: next avail, next used, chains in flight", () => {
  const drv = driver(8, EVENT_IDX);
  const q = drv.createQueue();
  const heads = [0, 1, 2].map(() => drv.addChain({ writable: [16] }));
  const a = q.pop()!, b = q.pop()!;
  q.pushUsed(a.head, 4);
  assert.equal(q.needsInterrupt(), true);
  const saved = JSON.parse(JSON.stringify(q.saveState())) as ReturnType<SplitQueue["saveState"]>;
  assert.deepEqual(saved, {
    nextAvail: 2, nextUsed: 1, inFlight: [[b.head, 16]], signalledUsed: 1, signalledUsedValid: true, pushedSinceSignal: 0, notifications: true,
  });
  const r = drv.createQueue();
  r.restoreState(saved);
  assert.deepEqual(r.saveState(), saved, "the record comes back unchanged");
  assert.equal(r.pop()!.head, heads[2], "the next pop is the chain not yet taken");
  r.pushUsed(b.head, 16);
  assert.throws(() => r.pushUsed(a.head, 0), (e: unknown) => (e as QueueError).code === "EQUEUEUSED", "a chain already returned is not in flight");
  const used = drv.popAllUsed();
  assert.deepEqual(used.map((u) => u.head), [a.head, b.head], "the used ring goes on at index 1");
});

test("a queue refuses a saved state that does not add up (EVIRTIOSNAPMISMATCH), changing nothing", () => {
  const drv = driver(8);
  const q = drv.createQueue();
  const base = q.saveState();
  const refused = (s: Partial<ReturnType<SplitQueue["saveState"]>>, pattern: RegExp) =>
    assert.throws(() => q.restoreState({ ...base, ...s }), (e: unknown) => (e as { code?: string }).code === "EVIRTIOSNAPMISMATCH" && pattern.test((e as Error).message));
  refused({ nextAvail: 2, nextUsed: 1, inFlight: [] }, /0 chains in flight, but next avail 2 and next used 1 say 1/);
  refused({ nextAvail: 1, inFlight: [[8, 0]] }, /head 8 is not below the queue size/);
  refused({ nextAvail: 2, inFlight: [[3, 0], [3, 0]] }, /head 3 is in flight twice/);
  assert.deepEqual(q.saveState(), base);
});

test("with dirty tracking, used-ring writes after a snapshot's clear are marked again (the queue keeps its ring view)", () => {
  const tracked = GuestMemory.create([{ guestBase: 0, size: MiB }], { trackDirty: true });
  try {
    const page = (a: number) => Math.floor(a / 4096);
    const marked = () => [...tracked.regions[0]!.dirty!.keys()].filter((p) => tracked.regions[0]!.dirty![p] !== 0);
    for (const features of [NONE, EVENT_IDX]) {
      const drv = new FakeDriver(tracked, { base: 0x1000, bytes: 0x40000, queueSize: 8, features });
      const q = drv.createQueue();
      const used = q.layout.usedRing;
      drv.addChain({ readable: [bytes(1)], writable: [] });
      drv.addChain({ readable: [bytes(2)], writable: [] });
      tracked.clearDirty(); // a snapshot was taken here
      const a = q.pop()!; // with EVENT_IDX this moves avail_event, in the used ring
      assert.deepEqual(marked(), features.eventIdx ? [page(used)] : [], "a pop writes the used ring only with EVENT_IDX");
      tracked.clearDirty();
      q.pushUsed(a.head, 0);
      assert.deepEqual(marked(), [page(used)], "the used element and used idx are in the next Diff");
      tracked.clearDirty();
      q.setNotifications(false);
      q.setNotifications(true);
      assert.deepEqual(marked(), [page(used)], "the flags or avail_event change is too");
      tracked.clearDirty();
      const b = q.pop()!;
      tracked.clearDirty();
      q.pushUsedMany([b.head], [0], 1);
      assert.deepEqual(marked(), [page(used)]);
      tracked.clearDirty();
    }
  } finally {
    tracked.dispose();
  }
});
