/**
 * The virtio-vsock wire format (virtio 1.x §5.10.6): every packet on the RX
 * and TX queues starts with a struct virtio_vsock_hdr (little-endian, 44
 * bytes), followed by `len` payload bytes for OP_RW.
 *
 * This module only encodes, decodes and judges headers; it holds no state.
 * A header from the guest is untrusted: checkTxHeader says whether a TX
 * packet is usable, to be dropped (it names no connection flint could
 * answer), or to be answered with OP_RST (it names one, and breaks a rule).
 */
import { VIRTIO_VSOCK_TYPE_STREAM, VMADDR_CID_HOST, virtio_vsock_hdr } from "../../../linux/abi.generated.js";
import { dataView, getU16, getU32, getU64, setU16, setU32, setU64 } from "../../../memory/le.js";

/**
 * Largest payload of one packet, both ways (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE:
 * its driver never sends more in one packet). A TX packet saying more is reset,
 * so no guest-chosen length ever sizes a host allocation beyond this.
 */
export const VSOCK_MAX_PKT_BYTES = 64 * 1024;

/** A decoded virtio_vsock_hdr (cids as bigint: they are 64-bit on the wire). */
export interface VsockHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

/** Encodes a header (the device's RX packets; tests use it as the guest). */
export function encodeVsockHeader(h: VsockHeader): Uint8Array {
  const b = new Uint8Array(virtio_vsock_hdr.SIZE);
  const v = dataView(b);
  setU64(v, virtio_vsock_hdr.src_cid, BigInt.asUintN(64, h.srcCid));
  setU64(v, virtio_vsock_hdr.dst_cid, BigInt.asUintN(64, h.dstCid));
  setU32(v, virtio_vsock_hdr.src_port, h.srcPort);
  setU32(v, virtio_vsock_hdr.dst_port, h.dstPort);
  setU32(v, virtio_vsock_hdr.len, h.len);
  setU16(v, virtio_vsock_hdr.type, h.type);
  setU16(v, virtio_vsock_hdr.op, h.op);
  setU32(v, virtio_vsock_hdr.flags, h.flags);
  setU32(v, virtio_vsock_hdr.buf_alloc, h.bufAlloc);
  setU32(v, virtio_vsock_hdr.fwd_cnt, h.fwdCnt);
  return b;
}

/** Decodes a header from its virtio_vsock_hdr.SIZE bytes (a copy: the guest may change its own). */
export function decodeVsockHeader(b: Uint8Array): VsockHeader {
  const v = dataView(b);
  return {
    srcCid: getU64(v, virtio_vsock_hdr.src_cid), dstCid: getU64(v, virtio_vsock_hdr.dst_cid),
    srcPort: getU32(v, virtio_vsock_hdr.src_port), dstPort: getU32(v, virtio_vsock_hdr.dst_port),
    len: getU32(v, virtio_vsock_hdr.len), type: getU16(v, virtio_vsock_hdr.type), op: getU16(v, virtio_vsock_hdr.op),
    flags: getU32(v, virtio_vsock_hdr.flags), bufAlloc: getU32(v, virtio_vsock_hdr.buf_alloc),
    fwdCnt: getU32(v, virtio_vsock_hdr.fwd_cnt),
  };
}

/** What to do with a TX packet, judged on its header alone. */
export type TxVerdict =
  | { kind: "ok" }
  /** Not addressed to flint from this guest, or its length lies: a guest fault, no answer. */
  | { kind: "drop"; why: string }
  /** Names a connection but breaks a rule (oversize, wrong type): a guest fault answered with OP_RST. */
  | { kind: "rst"; why: string; oversize: boolean };

/**
 * Checks a TX header against the chain it came in (`payloadBytes`: the chain's
 * readable bytes after the header) and the guest's cid (§5.10.6.1: src_cid is
 * the guest's, dst_cid the host's). Op-specific rules are the connection's.
 */
export function checkTxHeader(h: VsockHeader, payloadBytes: number, guestCid: number): TxVerdict {
  if (h.srcCid !== BigInt(guestCid)) return { kind: "drop", why: `TX packet from cid ${h.srcCid}, the guest is ${guestCid}` };
  if (h.dstCid !== BigInt(VMADDR_CID_HOST)) {
    return { kind: "drop", why: `TX packet to cid ${h.dstCid}: only the host (${VMADDR_CID_HOST}) is reachable` };
  }
  if (h.len > VSOCK_MAX_PKT_BYTES) {
    return { kind: "rst", why: `TX packet of ${h.len} bytes on ${h.srcPort}->${h.dstPort}: more than ${VSOCK_MAX_PKT_BYTES}`, oversize: true };
  }
  if (h.len > payloadBytes) return { kind: "drop", why: `TX packet says len ${h.len}, the chain holds ${payloadBytes}` };
  if (h.type !== VIRTIO_VSOCK_TYPE_STREAM) {
    return { kind: "rst", why: `TX packet of type ${h.type} on ${h.srcPort}->${h.dstPort}: only streams are supported`, oversize: false };
  }
  return { kind: "ok" };
}
