/**
 * The wire formats against the fake guest's independent builders and reader
 * (testing/guest-net.ts): MMDS's frames carry correct checksums, and parsing
 * refuses what it must.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { internetChecksum, parseIpv4, parseIpv4Tcp, TCP_ACK, TCP_SYN, writeTcpFrame, formatIpv4 } from "./wire.js";
import { readFrame, tcpSegment, GUEST_MAC } from "./testing/guest-net.js";

test("IPv4 addresses parse and print; malformed ones are refused", () => {
  assert.equal(parseIpv4("169.254.169.254"), 0xa9fea9fe);
  assert.equal(formatIpv4(0xa9fea9fe), "169.254.169.254");
  for (const bad of ["169.254.169", "256.1.1.1", "1.2.3.4.5", "a.b.c.d", " 1.2.3.4"]) assert.equal(parseIpv4(bad), undefined);
});

test("the RFC 1071 checksum of a header that carries it is 0 (RFC 1071's example sums to 0xddf2)", () => {
  assert.equal(internetChecksum(Uint8Array.of(0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7)), ~0xddf2 & 0xffff);
});

test("a written segment reads back with valid checksums and every field, MSS option included", () => {
  const out = new Uint8Array(2000);
  const payload = new TextEncoder().encode("hello");
  const n = writeTcpFrame(out, {
    dstMac: GUEST_MAC, srcMac: Uint8Array.of(6, 1, 2, 3, 4, 5), srcIp: 0xa9fea9fe, dstIp: 0x0a000002, srcPort: 80, dstPort: 4321,
    seq: 0xfffffff0, ack: 77, flags: TCP_SYN | TCP_ACK, window: 4096, mss: 1460, payload, id: 9,
  });
  const f = readFrame(out.subarray(0, n));
  assert.ok(f.kind === "tcp");
  assert.equal(f.checksumsOk, true);
  assert.deepEqual([f.srcPort, f.dstPort, f.seq, f.ack, f.flags, f.window, f.mss], [80, 4321, 0xfffffff0, 77, TCP_SYN | TCP_ACK, 4096, 1460]);
  assert.deepEqual(f.payload, payload);
});

test("parsing takes a good segment and refuses bad checksums, fragments, other protocols and cut lengths", () => {
  const good = parseIpv4Tcp(tcpSegment({ srcPort: 1, seq: 2, ack: 3, flags: TCP_ACK, payload: "x", mss: 536 }), true);
  assert.ok(typeof good !== "string" && good.payload.length === 1 && good.mss === undefined, "MSS read on SYN only");
  assert.equal(parseIpv4Tcp(tcpSegment({ srcPort: 1, seq: 2, flags: TCP_SYN, badIpChecksum: true }), true), "checksum");
  assert.equal(parseIpv4Tcp(tcpSegment({ srcPort: 1, seq: 2, flags: TCP_SYN, badTcpChecksum: true }), true), "checksum");
  assert.notEqual(typeof parseIpv4Tcp(tcpSegment({ srcPort: 1, seq: 2, flags: TCP_SYN, badTcpChecksum: true }), false), "string");
  assert.equal(parseIpv4Tcp(tcpSegment({ srcPort: 1, seq: 2, flags: TCP_SYN, fragment: true }), true), "fragment");
  assert.equal(parseIpv4Tcp(tcpSegment({ srcPort: 1, seq: 2, flags: TCP_SYN, protocol: 1 }), true), "not-tcp");
  const f = tcpSegment({ srcPort: 1, seq: 2, flags: TCP_SYN, payload: "abc" });
  assert.equal(parseIpv4Tcp(f.subarray(0, f.length - 1), true), "malformed");
  const doff = f.slice();
  doff[14 + 20 + 12] = 0x40; // 16-byte TCP header: shorter than the minimum
  assert.equal(parseIpv4Tcp(doff, false), "malformed");
});
