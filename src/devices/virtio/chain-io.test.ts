import assert from "node:assert/strict";
import { after, test } from "node:test";
import { GuestMemory } from "../../memory/guest-memory.js";
import { ChainIoError, ChainReader, ChainWriter, readChain, writeChain } from "./chain-io.js";
import { FakeDriver } from "./testing/fake-driver.js";

const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
after(() => mem.dispose());

/** A popped chain with the given readable payloads and writable lengths. */
function chainOf(readable: Uint8Array[], writable: number[]) {
  const drv = new FakeDriver(mem, { base: 0x1000, bytes: 0x10000, queueSize: 8 });
  const q = drv.createQueue();
  drv.addChain({ readable, writable, fill: 0 });
  return { drv, q, chain: q.pop()! };
}

const isShort = (e: unknown) => e instanceof ChainIoError && e.code === "ECHAINSHORT";

test("a reader parses a little-endian header split across buffers, then the payload", () => {
  const { chain } = chainOf([Uint8Array.of(0x01, 0x02), Uint8Array.of(0x03, 0x04, 0xaa, 0xbb, 0, 0, 0, 0, 0, 0), Uint8Array.of(7, 8, 9)], [1]);
  const r = new ChainReader(mem, chain);
  assert.equal(r.readU32(), 0x04030201);
  assert.equal(r.readU16(), 0xbbaa);
  r.skip(2);
  assert.equal(r.readU32(), 0);
  assert.equal(r.remaining, 3);
  assert.deepEqual(r.readUpTo(10), Uint8Array.of(7, 8, 9));
  assert.equal(r.position, chain.readableBytes);
  assert.throws(() => r.readU8(), isShort);
  assert.throws(() => r.skip(1), isShort);
});

test("reading past the readable bytes fails without moving the cursor", () => {
  const { chain } = chainOf([Uint8Array.of(1, 2, 3)], [4]);
  const r = new ChainReader(mem, chain);
  assert.throws(() => r.readU64(), isShort);
  assert.equal(r.position, 0);
  assert.deepEqual(readChain(mem, chain, 2, 10), Uint8Array.of(3), "readChain returns what there is");
  assert.equal(readChain(mem, chain, 5, 10).length, 0);
});

test("a writer fills writable buffers in order and its count is what the driver sees", () => {
  const { drv, q, chain } = chainOf([Uint8Array.of(1)], [2, 3, 4]);
  const w = new ChainWriter(mem, chain);
  w.writeU16(0x1234);
  w.writeU32(0xdeadbeef);
  assert.throws(() => w.write(new Uint8Array(4)), isShort);
  assert.equal(w.written, 6, "a refused write writes nothing");
  assert.equal(w.writeUpTo(Uint8Array.of(9, 9, 9, 9, 9)), 3);
  assert.equal(w.remaining, 0);
  q.pushUsed(chain.head, w.written);
  const used = drv.popUsed()!;
  assert.deepEqual(used.buffers, [Uint8Array.of(0x34, 0x12), Uint8Array.of(0xef, 0xbe, 0xad), Uint8Array.of(0xde, 9, 9, 9)]);
  assert.equal(used.len, 9);
});

test("writeChain never writes past the writable buffers, even from an offset", () => {
  const { chain } = chainOf([Uint8Array.of(5)], [2, 2]);
  const guard = chain.writable[1]!.addr + 2;
  mem.writeU8(guard, 0x55);
  assert.equal(writeChain(mem, chain, 3, Uint8Array.of(1, 2, 3)), 1);
  assert.equal(writeChain(mem, chain, 4, Uint8Array.of(1)), 0);
  assert.equal(mem.readU8(guard), 0x55);
  assert.equal(mem.readU8(chain.readable[0]!.addr), 5, "readable buffers are never written");
});
