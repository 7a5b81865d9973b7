import assert from "node:assert/strict";
import { test } from "node:test";
import { VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RESPONSE, VIRTIO_VSOCK_OP_RST } from "../../../linux/abi.generated.js";
import { VsockConnection } from "./connection.js";
import { ControlQueue, VSOCK_MAX_PENDING_RSTS } from "./control-queue.js";

test("RSTs are coalesced per port pair and capped; taking one makes room", () => {
  const q = new ControlQueue();
  assert.equal(q.pushRst(1, 2), "queued");
  assert.equal(q.pushRst(1, 2), "coalesced");
  for (let p = 0; q.size < VSOCK_MAX_PENDING_RSTS; p++) assert.equal(q.pushRst(100, p), "queued");
  assert.equal(q.pushRst(7, 7), "dropped");
  const first = q.peek()!;
  assert.deepEqual([first.op, first.localPort, first.peerPort], [VIRTIO_VSOCK_OP_RST, 1, 2], "first come, first served");
  q.take(first);
  assert.equal(q.pushRst(7, 7), "queued");
  assert.equal(q.size, VSOCK_MAX_PENDING_RSTS);
});

test("a connection's REQUEST/RESPONSE goes with it, and one connection never has two", () => {
  const q = new ControlQueue();
  const c = new VsockConnection(-1, "connecting", 5, 6);
  q.pushForConn(VIRTIO_VSOCK_OP_REQUEST, c);
  q.pushForConn(VIRTIO_VSOCK_OP_RESPONSE, c);
  assert.equal(q.size, 1);
  q.pushRst(5, 6, c);
  q.forget(c);
  assert.equal(q.size, 1, "the RST stays: the guest must still learn the connection is gone");
  assert.equal(q.peek()?.op, VIRTIO_VSOCK_OP_RST);
  const d = new VsockConnection(-1, "established", 8, 9);
  q.pushForConn(VIRTIO_VSOCK_OP_RESPONSE, d);
  q.take(q.peek()!);
  q.take(q.peek()!);
  assert.equal(d.pendingControl, undefined);
  assert.equal(q.size, 0);
});
