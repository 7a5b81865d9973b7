import assert from "node:assert/strict";
import { test } from "node:test";
import { ByteQueue, VSOCK_BUF_ALLOC, VSOCK_CONN_MAX_HELD_BYTES, VsockConnection } from "./connection.js";

test("ByteQueue keeps bytes in order across pieces and frees pieces as they are consumed", () => {
  const q = new ByteQueue();
  const data = Uint8Array.from({ length: 100_000 }, (_, i) => (i * 31) & 0xff);
  q.push(data.subarray(0, 1));
  q.push(data.subarray(1, 70_000));
  q.push(data.subarray(70_000));
  assert.equal(q.length, data.length);
  const out: number[] = [];
  while (q.length > 0) {
    const f = q.front();
    const n = Math.min(f.length, 12_345);
    out.push(...f.subarray(0, n));
    q.consume(n);
  }
  assert.deepEqual(Uint8Array.from(out), data);
  assert.equal(q.allocatedBytes, 0);
});

test("one-byte packets cost a connection no more memory than their bytes (pieces, not one array per packet)", () => {
  const c = new VsockConnection(-1, "established", 1, 2);
  const one = new Uint8Array(1);
  let accepted = 0;
  while (c.pushGuestData(one)) accepted++;
  assert.equal(accepted, VSOCK_BUF_ALLOC, "exactly buf_alloc bytes fit");
  assert.ok(c.allocatedBytes <= VSOCK_CONN_MAX_HELD_BYTES, `${c.allocatedBytes} bytes allocated`);
  assert.equal(c.freeBufBytes, 0);
});

test("flint's own OK line does not count against the guest's credit; a packet past the credit is refused whole", () => {
  const c = new VsockConnection(-1, "established", 1, 2);
  c.pushOwn(new TextEncoder().encode("OK 1073741824\n"));
  assert.equal(c.heldGuestBytes, 0);
  assert.ok(c.pushGuestData(new Uint8Array(VSOCK_BUF_ALLOC - 10)));
  assert.equal(c.pushGuestData(new Uint8Array(11)), false);
  assert.equal(c.heldGuestBytes, VSOCK_BUF_ALLOC - 10, "nothing of the refused packet is kept");
  assert.ok(c.pushGuestData(new Uint8Array(10)));
});

test("the guest's credit is computed in u32 arithmetic: counters that wrap, and a peer that claims more than it was sent", () => {
  const c = new VsockConnection(-1, "established", 1, 2);
  c.updatePeerCredit(1000, 0xffff_ff00);
  c.txCnt = 0xffff_ff00;
  c.sentToGuest(0x200); // wraps past 2^32
  assert.equal(c.txCnt, 0x100);
  assert.equal(c.peerCredit(), 1000 - 0x200);
  c.updatePeerCredit(100, 0);
  assert.equal(c.peerCredit(), 0, "in flight beyond buf_alloc: no credit, never negative");
});
