import assert from "node:assert/strict";
import { test } from "node:test";
import { VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_TYPE_SEQPACKET, VIRTIO_VSOCK_TYPE_STREAM, VMADDR_CID_HOST, virtio_vsock_hdr } from "../../../linux/abi.generated.js";
import { checkTxHeader, decodeVsockHeader, encodeVsockHeader, VSOCK_MAX_PKT_BYTES, type VsockHeader } from "./packet.js";

const h: VsockHeader = {
  srcCid: 3n, dstCid: BigInt(VMADDR_CID_HOST), srcPort: 0xffff_fffe, dstPort: 1, len: 100, type: VIRTIO_VSOCK_TYPE_STREAM,
  op: VIRTIO_VSOCK_OP_RW, flags: 0x8000_0001, bufAlloc: 0xffff_ffff, fwdCnt: 7,
};

test("a header round-trips through its 44 wire bytes, 64-bit cids and u32 fields included", () => {
  const b = encodeVsockHeader({ ...h, srcCid: 2n ** 64n - 1n });
  assert.equal(b.length, virtio_vsock_hdr.SIZE);
  assert.deepEqual(decodeVsockHeader(b), { ...h, srcCid: 2n ** 64n - 1n });
});

test("checkTxHeader: wrong cids and lying lengths are dropped; oversize and non-stream packets are reset", () => {
  assert.deepEqual(checkTxHeader(h, 100, 3), { kind: "ok" });
  assert.equal(checkTxHeader({ ...h, srcCid: 4n }, 100, 3).kind, "drop");
  assert.equal(checkTxHeader({ ...h, dstCid: 3n }, 100, 3).kind, "drop");
  assert.equal(checkTxHeader({ ...h, len: 101 }, 100, 3).kind, "drop");
  assert.deepEqual(checkTxHeader({ ...h, len: VSOCK_MAX_PKT_BYTES }, VSOCK_MAX_PKT_BYTES, 3), { kind: "ok" });
  // Over the cap it is reset whatever the chain holds: 16 aliased descriptors can hold 4 GiB.
  const over = checkTxHeader({ ...h, len: VSOCK_MAX_PKT_BYTES + 1 }, 2 ** 32, 3);
  assert.equal(over.kind, "rst");
  assert.ok(over.kind === "rst" && over.oversize);
  const seq = checkTxHeader({ ...h, type: VIRTIO_VSOCK_TYPE_SEQPACKET }, 100, 3);
  assert.ok(seq.kind === "rst" && !seq.oversize);
});
