import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ETH_HLEN, IPPROTO_TCP, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO, VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_F_RSC_INFO, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_UDP, iphdr, tcphdr, virtio_net_hdr_v1,
} from "../../linux/abi.generated.js";
import {
  checkRxHeader, checkTxHeader, NET_OFFLOAD_FEATURES, negotiatedOffloads, tunOffloadFlags, type OffloadSet,
} from "./net-offload.js";
import { concat, netHeader, readNetHeader, tcpFrame, type NetHeaderFields } from "./testing/net-test-rig.js";

const bit = (n: number) => 1n << BigInt(n);
const bits = (...ns: number[]) => ns.reduce((s, n) => s | bit(n), 0n);
const ALL: OffloadSet = { csum: true, tso4: true, tso6: true, ecn: true };
const NONE: OffloadSet = { csum: false, tso4: false, tso6: false, ecn: false };
const CSUM_ONLY: OffloadSet = { ...NONE, csum: true };
const payload = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + 1) & 0xff);

test("the offload features offered: checksum and TSO both ways, no UFO, no MRG_RXBUF", () => {
  for (const f of [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN]) {
    assert.ok(NET_OFFLOAD_FEATURES & bit(f), `feature ${f}`);
  }
  for (const f of [VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_MRG_RXBUF]) assert.ok(!(NET_OFFLOAD_FEATURES & bit(f)), `feature ${f}`);
});

test("negotiation: each direction follows the driver's acceptance; §5.1.3.1 requirements unmet leave a feature unused", () => {
  assert.deepEqual(negotiatedOffloads(NET_OFFLOAD_FEATURES), { tx: ALL, rx: ALL, unmet: [] });
  assert.deepEqual(negotiatedOffloads(0n), { tx: NONE, rx: NONE, unmet: [] });
  // Directions are independent.
  const txOnly = negotiatedOffloads(bits(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4));
  assert.deepEqual(txOnly.tx, { csum: true, tso4: true, tso6: false, ecn: false });
  assert.deepEqual(txOnly.rx, NONE);
  const rxOnly = negotiatedOffloads(bits(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN));
  assert.deepEqual(rxOnly.rx, { csum: true, tso4: false, tso6: true, ecn: true });
  assert.deepEqual(rxOnly.tx, NONE);
  // TSO without CSUM, ECN without TSO: not used, and named.
  const bad = negotiatedOffloads(bits(VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN));
  assert.deepEqual(bad.tx, NONE);
  assert.deepEqual(bad.rx, { csum: true, tso4: false, tso6: true, ecn: true });
  assert.deepEqual(bad.unmet, [
    "VIRTIO_NET_F_HOST_TSO4 without VIRTIO_NET_F_CSUM",
    "VIRTIO_NET_F_HOST_ECN without VIRTIO_NET_F_HOST_TSO4 or VIRTIO_NET_F_HOST_TSO6",
  ]);
  assert.deepEqual(negotiatedOffloads(bits(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN)).rx, CSUM_ONLY);
});

test("TUNSETOFFLOAD flags: TUN_F_CSUM iff GUEST_CSUM, TSO4/TSO6/TSO_ECN iff GUEST_TSO4/TSO6/ECN, never UFO (all 256 acceptances)", () => {
  const guest = [VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN];
  for (let m = 0; m < 256; m++) {
    const features = guest.reduce((s, f, i) => (m & (1 << i) ? s | bit(f) : s), 0n);
    const has = (f: number) => (features & bit(f)) !== 0n;
    const flags = tunOffloadFlags(negotiatedOffloads(features).rx);
    const csum = has(VIRTIO_NET_F_GUEST_CSUM);
    const tso4 = csum && has(VIRTIO_NET_F_GUEST_TSO4), tso6 = csum && has(VIRTIO_NET_F_GUEST_TSO6);
    const want = (csum ? TUN_F_CSUM : 0) | (tso4 ? TUN_F_TSO4 : 0) | (tso6 ? TUN_F_TSO6 : 0) |
      ((tso4 || tso6) && has(VIRTIO_NET_F_GUEST_ECN) ? TUN_F_TSO_ECN : 0);
    assert.equal(flags, want, `features 0x${features.toString(16)}`);
    assert.equal(flags & TUN_F_UFO, 0);
    // The kernel takes TSO flags only with TUN_F_CSUM, and TSO_ECN only with a TSO flag.
    if (flags & (TUN_F_TSO4 | TUN_F_TSO6)) assert.ok(flags & TUN_F_CSUM);
    if (flags & TUN_F_TSO_ECN) assert.ok(flags & (TUN_F_TSO4 | TUN_F_TSO6));
  }
});

/** header + frame; `fields` default to a valid TSO request for `frame` when gsoType is set. */
function txPacket(flags: number, gsoType: number, t: ReturnType<typeof tcpFrame>, fields: NetHeaderFields = {}): Uint8Array {
  const defaults: NetHeaderFields = flags & VIRTIO_NET_HDR_F_NEEDS_CSUM ? { csumStart: t.csumStart, csumOffset: t.csumOffset } : {};
  if (gsoType) Object.assign(defaults, { gsoSize: 1448, hdrLen: t.headerBytes });
  return concat(netHeader(flags, gsoType, { ...defaults, ...fields }), t.frame);
}

test("TX: a complete frame passes with every offload off; ignored flag bits and unused fields are cleared", () => {
  const t = tcpFrame({ payload: payload(100) });
  const p = txPacket(VIRTIO_NET_HDR_F_DATA_VALID | VIRTIO_NET_HDR_F_RSC_INFO | 0x80, 0, t, { csumStart: 5, csumOffset: 9, gsoSize: 77, numBuffers: 3, hdrLen: 54 });
  assert.equal(checkTxHeader(p, NONE), undefined);
  assert.deepEqual(readNetHeader(p), { flags: 0, gsoType: 0, hdrLen: 54, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 0 });
  assert.deepEqual(p.subarray(12), t.frame, "the frame is untouched");
});

test("TX: NEEDS_CSUM only with VIRTIO_NET_F_CSUM, and only with the checksum field inside the frame", () => {
  const t = tcpFrame({ payload: payload(100) });
  const len = t.frame.length;
  assert.match(checkTxHeader(txPacket(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, t), NONE)!, /VIRTIO_NET_F_CSUM was not negotiated/);
  const ok = txPacket(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID, 0, t);
  assert.equal(checkTxHeader(ok, CSUM_ONLY), undefined);
  assert.deepEqual(readNetHeader(ok), { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: t.csumStart, csumOffset: t.csumOffset, numBuffers: 0 });
  // UDP-style and other offsets are fine as long as the 16-bit field is in the frame.
  assert.equal(checkTxHeader(txPacket(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, t, { csumStart: ETH_HLEN, csumOffset: len - ETH_HLEN - 2 }), CSUM_ONLY), undefined);
  for (const [csumStart, csumOffset] of [[ETH_HLEN, len - ETH_HLEN - 1], [len - 1, 0], [len, 0], [0xffff, 0xffff], [ETH_HLEN - 1, 20], [0, 16]]) {
    assert.match(checkTxHeader(txPacket(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, t, { csumStart, csumOffset }), CSUM_ONLY)!, /not inside the/, `${csumStart}+${csumOffset}`);
  }
});

test("TX: TSO requests pass only when negotiated and consistent with the frame (IPv4/IPv6, VLAN tags, ECN)", () => {
  const v4 = tcpFrame({ payload: payload(3000) }), v6 = tcpFrame({ ipv6: true, payload: payload(3000) });
  const NC = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  const only = (o: Partial<OffloadSet>): OffloadSet => ({ ...CSUM_ONLY, ...o });
  // Accepted.
  assert.equal(checkTxHeader(txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, v4), only({ tso4: true })), undefined);
  assert.equal(checkTxHeader(txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV6, v6), only({ tso6: true })), undefined);
  for (const tags of [1, 2]) {
    assert.equal(checkTxHeader(txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, tcpFrame({ vlanTags: tags, payload: payload(3000) })), ALL), undefined, `${tags} tags`);
    assert.equal(checkTxHeader(txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV6, tcpFrame({ ipv6: true, vlanTags: tags, payload: payload(3000) })), ALL), undefined);
  }
  assert.equal(checkTxHeader(txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, v4), ALL), undefined);
  const kept = txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, v4, { gsoSize: 1000, hdrLen: 100 });
  assert.equal(checkTxHeader(kept, ALL), undefined);
  assert.deepEqual(readNetHeader(kept), { flags: NC, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, hdrLen: 100, gsoSize: 1000, csumStart: v4.csumStart, csumOffset: tcphdr.check, numBuffers: 0 });
  // Refused: not negotiated.
  const cases: [string, Uint8Array, OffloadSet, RegExp][] = [
    ["TCPV4 without HOST_TSO4", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, v4), only({ tso6: true, ecn: true }), /not negotiated/],
    ["TCPV6 without HOST_TSO6", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV6, v6), only({ tso4: true, ecn: true }), /not negotiated/],
    ["ECN without HOST_ECN", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, v4), only({ tso4: true }), /HOST_ECN/],
    ["TSO without CSUM", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, v4), { ...NONE, tso4: true }, /VIRTIO_NET_F_CSUM/],
    ["UDP (UFO) is never offered", txPacket(NC, VIRTIO_NET_HDR_GSO_UDP, v4), ALL, /not negotiated/],
    ["UDP_L4 (USO) is never offered", txPacket(NC, 5, v4), ALL, /not negotiated/],
    ["tunnel bits", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4 | 0x20, v4), ALL, /not negotiated/],
    ["ECN bit alone", txPacket(NC, VIRTIO_NET_HDR_GSO_ECN, v4), ALL, /not negotiated/],
    // Refused: lies about the frame.
    ["GSO without NEEDS_CSUM", txPacket(0, VIRTIO_NET_HDR_GSO_TCPV4, v4), ALL, /without NEEDS_CSUM/],
    ["gso_size 0", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, v4, { gsoSize: 0 }), ALL, /gso_size 0/],
    ["TCPV4 on an IPv6 frame", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, v6), ALL, /without an IPv4 header/],
    ["TCPV6 on an IPv4 frame", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV6, v4), ALL, /without an IPv6 header/],
    ["three VLAN tags", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, tcpFrame({ vlanTags: 3, payload: payload(100) })), ALL, /without an IPv4 header/],
    ["csum_offset not TCP's", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, v4, { csumOffset: 6 }), ALL, /not on a TCP header/],
    ["csum_start inside the IP header", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, v4, { csumStart: v4.l3 + 4 }), ALL, /not on a TCP header/],
    ["hdr_len past the frame", txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, v4, { hdrLen: v4.frame.length + 1 }), ALL, /hdr_len/],
    ["hdr_len past a plain frame", txPacket(0, 0, v4, { hdrLen: 0xffff }), ALL, /hdr_len/],
  ];
  for (const [what, p, set, why] of cases) assert.match(checkTxHeader(p, set) ?? "accepted", why, what);
  // An IPv4 packet that is not TCP.
  const udp = tcpFrame({ payload: payload(100) });
  udp.frame[udp.l3 + iphdr.protocol] = IPPROTO_TCP + 11;
  assert.match(checkTxHeader(txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, udp), ALL)!, /not TCP/);
  // A TCP header cut short by the end of the frame.
  const cut = tcpFrame({ payload: new Uint8Array(0) });
  const short = concat(netHeader(NC, VIRTIO_NET_HDR_GSO_TCPV4, { csumStart: cut.csumStart, csumOffset: tcphdr.check, gsoSize: 1 }), cut.frame.subarray(0, cut.csumStart + tcphdr.check + 2));
  assert.match(checkTxHeader(short, ALL)!, /not on a TCP header/);
  // A frame that ends inside a VLAN tag.
  const tagged = tcpFrame({ vlanTags: 2, payload: new Uint8Array(0) });
  assert.match(checkTxHeader(concat(netHeader(NC, VIRTIO_NET_HDR_GSO_TCPV4, { csumStart: 40, csumOffset: 16, gsoSize: 1 }), tagged.frame.subarray(0, 16)), ALL)!, /not inside|without an IPv4/);
});

test("TX: the head of a packet is checked against the whole packet's length; headers past the head are refused", () => {
  const NC = VIRTIO_NET_HDR_F_NEEDS_CSUM, NET_HDR_BYTES = virtio_net_hdr_v1.SIZE;
  const v4 = tcpFrame({ payload: payload(3000) });
  const whole = txPacket(NC, VIRTIO_NET_HDR_GSO_TCPV4, v4, { hdrLen: 1000 });
  const head = whole.slice(0, NET_HDR_BYTES + 128);
  assert.equal(checkTxHeader(head, ALL, whole.length), undefined, "hdr_len within the whole frame, not the head");
  assert.match(checkTxHeader(head, ALL)!, /hdr_len/, "against the head alone, hdr_len 1000 is past the end");
  assert.match(checkTxHeader(whole.slice(0, NET_HDR_BYTES + 1000), ALL, NET_HDR_BYTES + 999)!, /hdr_len/);
  // A head that stops inside the IP header: the check cannot see the protocol, so it refuses.
  const cut = whole.slice(0, NET_HDR_BYTES + v4.l3 + 4);
  assert.match(checkTxHeader(cut, ALL, whole.length)!, /IP header past the .* frame bytes checked/);
});

test("RX: the kernel's offloads reach the guest only when negotiated; DATA_VALID is cleared without GUEST_CSUM; num_buffers = 1", () => {
  const t = tcpFrame({ payload: payload(20000) });
  const NC = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  const gso = () => concat(netHeader(NC, VIRTIO_NET_HDR_GSO_TCPV4, { csumStart: t.csumStart, csumOffset: t.csumOffset, gsoSize: 1448, hdrLen: t.headerBytes }), t.frame);
  const p = gso();
  assert.equal(checkRxHeader(p, { ...CSUM_ONLY, tso4: true }), undefined);
  assert.deepEqual(readNetHeader(p), { flags: NC, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, hdrLen: t.headerBytes, gsoSize: 1448, csumStart: t.csumStart, csumOffset: t.csumOffset, numBuffers: 1 });
  assert.match(checkRxHeader(gso(), { ...CSUM_ONLY, tso6: true, ecn: true })!, /not negotiated by the guest/);
  assert.match(checkRxHeader(gso(), NONE)!, /GUEST_CSUM/);
  const partial = () => concat(netHeader(NC, 0, { csumStart: t.csumStart, csumOffset: t.csumOffset }), t.frame);
  assert.equal(checkRxHeader(partial(), CSUM_ONLY), undefined);
  assert.match(checkRxHeader(partial(), NONE)!, /GUEST_CSUM/);
  assert.match(checkRxHeader(concat(netHeader(NC, 0, { csumStart: t.frame.length - 1 }), t.frame), ALL)!, /outside/);
  const ecn = concat(netHeader(NC, VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN, { csumStart: 54, csumOffset: 16, gsoSize: 1 }), t.frame);
  assert.match(checkRxHeader(ecn.slice(), { ...CSUM_ONLY, tso6: true })!, /GUEST_ECN/);
  assert.equal(checkRxHeader(ecn.slice(), ALL), undefined);
  assert.match(checkRxHeader(concat(netHeader(0, VIRTIO_NET_HDR_GSO_TCPV4, { gsoSize: 1 }), t.frame), ALL)!, /without NEEDS_CSUM/);
  assert.match(checkRxHeader(concat(netHeader(NC, VIRTIO_NET_HDR_GSO_TCPV4, { csumStart: 34, csumOffset: 16 }), t.frame), ALL)!, /gso_size 0/);
  assert.match(checkRxHeader(concat(netHeader(NC, VIRTIO_NET_HDR_GSO_UDP, { csumStart: 34, csumOffset: 6, gsoSize: 1 }), t.frame), ALL)!, /not negotiated/);
  assert.match(checkRxHeader(concat(netHeader(VIRTIO_NET_HDR_F_RSC_INFO), t.frame), ALL)!, /bits the device does not know/);
  const valid = () => concat(netHeader(VIRTIO_NET_HDR_F_DATA_VALID), t.frame);
  const cleared = valid();
  assert.equal(checkRxHeader(cleared, NONE), undefined);
  assert.equal(readNetHeader(cleared).flags, 0, "§5.1.6.4.1: flags are zero without GUEST_CSUM");
  const kept = valid();
  assert.equal(checkRxHeader(kept, CSUM_ONLY), undefined);
  assert.equal(readNetHeader(kept).flags, VIRTIO_NET_HDR_F_DATA_VALID);
});
