/**
 * MMDS's network stack with hand-built frames from a fake guest
 * (testing/guest-net.ts) on a fake clock: ARP, the TCP handshake, GETs in both
 * formats, the V2 token flow, what is dropped (bad checksums, lengths, flags,
 * fragments, other protocols and ports), every bound (connections, queued
 * RSTs, request size, response budget, retransmissions), and (property)
 * that random frames never throw nor grow what the stack holds.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { parseMmdsData } from "./data.js";
import {
  MAX_CONNECTIONS, MAX_PENDING_RESETS, MMDS_FRAME_MAX_BYTES, MMDS_MAC, MmdsStack, RESPONSE_BUDGET_BYTES, type MmdsStackOptions,
} from "./stack.js";
import { REQUESTS_PER_SEGMENT, RTO_INITIAL_MS, RTO_MAX_RETRIES, TCP_RECEIVE_BUFFER_BYTES } from "./tcp-connection.js";
import { parseIpv4 } from "./wire.js";
import {
  ACK, arpRequest, FIN, GUEST_MAC, GuestTcp, httpGet, readFrame, RST, SYN, tcpSegment, type FrameTransport,
} from "./testing/guest-net.js";

const DATA = { latest: { "meta-data": { "ami-id": "ami-87654321", "reservation-id": "r-1", placement: { zone: "a" }, count: 3 } } };

interface Rig extends FrameTransport {
  stack: MmdsStack;
  advance(ms: number): void;
}

function rig(options: Partial<MmdsStackOptions> = {}, data: unknown = DATA, partial = false): Rig {
  let now = 10_000;
  const stack = new MmdsStack({ ipv4: parseIpv4("169.254.169.254")!, version: "V1", imdsCompat: false, nowMs: () => now, ...options });
  stack.setData(parseMmdsData(JSON.stringify(data)));
  const out = new Uint8Array(MMDS_FRAME_MAX_BYTES);
  return {
    stack,
    advance(ms) { now += ms; stack.tick(); },
    send(frame) { if (stack.isMmdsFrame(frame)) stack.receive(frame, partial); },
    receive() {
      const frames: Uint8Array[] = [];
      for (let i = 0; i < 10_000; i++) {
        const n = stack.nextFrame(out);
        if (n === 0) break;
        frames.push(out.slice(0, n));
      }
      return frames;
    },
  };
}

test("an ARP request for the MMDS address is answered from MMDS's MAC; other ARP is not taken or is dropped", () => {
  const r = rig();
  r.send(arpRequest());
  const [reply, ...more] = r.receive().map(readFrame);
  assert.equal(more.length, 0);
  assert.ok(reply?.kind === "arp");
  assert.equal(reply.op, 2);
  assert.deepEqual(reply.senderMac, MMDS_MAC);
  assert.deepEqual(reply.senderIp, [169, 254, 169, 254]);
  assert.deepEqual(reply.targetMac, GUEST_MAC);
  assert.deepEqual(reply.dstMac, GUEST_MAC);
  assert.deepEqual(reply.targetIp, [10, 0, 0, 2]);
  assert.equal(r.stack.isMmdsFrame(arpRequest([10, 0, 0, 1])), false, "ARP for another address goes to the TAP");
  r.send(arpRequest(undefined, 2));
  assert.equal(r.receive().length, 0, "an ARP reply to MMDS is dropped");
  assert.equal(r.stack.counters.rxDropped, 1);
});

test("only frames for the MMDS address are MMDS's, and the configured address replaces the default", () => {
  const r = rig({ ipv4: parseIpv4("169.254.170.2")! });
  assert.equal(r.stack.isMmdsFrame(tcpSegment({ srcPort: 1, seq: 0, flags: SYN })), false);
  assert.equal(r.stack.isMmdsFrame(tcpSegment({ srcPort: 1, seq: 0, flags: SYN, dst: [169, 254, 170, 2] })), true);
  assert.equal(r.stack.isMmdsFrame(new Uint8Array(20)), false);
});

test("handshake, then a GET answers plain text listings and values, and JSON with Accept: application/json", () => {
  const r = rig();
  const c = new GuestTcp(r, 40000);
  const synAck = c.connect(1400);
  assert.equal(synAck.mss, 1460);
  assert.equal(synAck.ack, 1001);
  let res = c.request(httpGet("/latest/meta-data/"));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/plain");
  assert.equal(res.body, "ami-id\ncount\nplacement/\nreservation-id");
  res = c.request(httpGet("/latest//meta-data/ami-id"));
  assert.equal(res.body, "ami-87654321");
  res = c.request(httpGet("/latest/meta-data", { Accept: "application/json" }));
  assert.equal(res.headers.get("content-type"), "application/json");
  assert.deepEqual(JSON.parse(res.body), DATA.latest["meta-data"]);
  res = c.request(httpGet("/latest/meta-data/count"));
  assert.equal(res.status, 501, "a number has no plain-text form");
  res = c.request(httpGet("/latest/nothing"));
  assert.equal(res.status, 404);
  assert.equal(c.closedByServer, false, "HTTP/1.1 keeps the connection");
  res = c.request(httpGet("/latest/meta-data/placement/zone", { Connection: "close" }));
  assert.equal(res.body, "a");
  assert.equal(res.closed, true);
  assert.equal(res.headers.get("connection"), "close");
  c.sendAck();
  c.close();
  r.receive();
  assert.equal(r.stack.held.connections, 0, "both FINs acknowledged: the connection is gone");
});

test("a request split over many segments, and one sent out of order, are answered once complete", () => {
  const r = rig();
  const c = new GuestTcp(r, 40001);
  c.connect();
  const text = httpGet("/latest/meta-data/ami-id");
  // Out of order: the second half first is not taken; a duplicate ACK says where MMDS is.
  const half = Buffer.from(text).subarray(10);
  r.send(tcpSegment({ srcPort: 40001, seq: c.seq + 10, ack: c.ack, flags: ACK, payload: half }));
  const dup = c.pull();
  assert.equal(dup.length, 1);
  assert.equal(dup[0]!.ack, c.seq, "duplicate ACK for the next expected byte");
  const res = c.request(text);
  assert.equal(res.body, "ami-87654321");
});

test("V2: a GET needs a token from PUT /latest/api/token; forged, missing and expired tokens are 401", () => {
  const r = rig({ version: "V2" });
  const c = new GuestTcp(r, 40002);
  c.connect();
  assert.equal(c.request(httpGet("/latest/meta-data/ami-id")).status, 401);
  const put = c.request(httpGet("/latest/api/token", { "X-metadata-token-ttl-seconds": "60" }, "PUT"));
  assert.equal(put.status, 200);
  assert.equal(put.headers.get("x-metadata-token-ttl-seconds"), "60");
  const token = put.body;
  assert.match(token, /^[A-Za-z0-9_-]{20,70}$/);
  assert.equal(c.request(httpGet("/latest/meta-data/ami-id", { "X-metadata-token": token })).body, "ami-87654321");
  assert.equal(c.request(httpGet("/latest/meta-data/ami-id", { "X-aws-ec2-metadata-token": token })).status, 200, "EC2's header name");
  const forged = token.slice(0, -2) + (token.endsWith("AA") ? "BB" : "AA");
  assert.equal(c.request(httpGet("/latest/meta-data/ami-id", { "X-metadata-token": forged })).status, 401);
  assert.equal(c.request(httpGet("/latest/meta-data/ami-id", { "X-metadata-token": "x".repeat(100) })).status, 401);
  const aws = c.request(httpGet("/latest/api/token", { "X-aws-ec2-metadata-token-ttl-seconds": "1" }, "PUT"));
  assert.equal(aws.headers.get("x-aws-ec2-metadata-token-ttl-seconds"), "1");
  r.advance(60_001);
  assert.equal(c.request(httpGet("/latest/meta-data/ami-id", { "X-metadata-token": token })).status, 401, "expired");
  assert.equal(c.request(httpGet("/latest/meta-data/ami-id", { "X-metadata-token": aws.body })).status, 401, "expired");
  assert.equal(r.stack.counters.tokensIssued, 2);
  assert.ok(r.stack.counters.invalidToken >= 4 && r.stack.counters.noToken === 1);
});

test("token requests: lifetime 1..21600, a number, present; only /latest/api/token; no X-Forwarded-For; other methods 405", () => {
  const r = rig({ version: "V2" });
  const c = new GuestTcp(r, 40003);
  c.connect();
  const put = (headers: Record<string, string>, path = "/latest/api/token") => c.request(httpGet(path, headers, "PUT"));
  assert.equal(put({ "X-metadata-token-ttl-seconds": "0" }).status, 400);
  assert.equal(put({ "X-metadata-token-ttl-seconds": "21601" }).status, 400);
  assert.equal(put({ "X-metadata-token-ttl-seconds": "21600" }).status, 200);
  assert.equal(put({ "X-metadata-token-ttl-seconds": "ten" }).status, 400);
  assert.equal(put({}).status, 400);
  assert.equal(put({ "X-metadata-token-ttl-seconds": "5" }, "/latest/meta-data").status, 404);
  assert.equal(put({ "X-metadata-token-ttl-seconds": "5", "X-Forwarded-For": "10.0.0.9" }).status, 400);
  const del = c.request(httpGet("/latest", {}, "DELETE"));
  assert.equal(del.status, 405);
  assert.equal(del.headers.get("allow"), "GET, PUT");
  const bad = c.request("BREW /pot HTTP/1.1\r\n\r\n");
  assert.equal(bad.status, 501);
});

test("V1 answers GETs with or without a token; tokens can still be issued", () => {
  const r = rig();
  const c = new GuestTcp(r, 40004);
  c.connect();
  assert.equal(c.request(httpGet("/latest/meta-data/ami-id", { "X-metadata-token": "bogus" })).status, 200);
  assert.equal(c.request(httpGet("/latest/api/token", { "X-metadata-token-ttl-seconds": "5" }, "PUT")).status, 200);
  assert.equal(r.stack.counters.invalidToken, 1);
});

test("imds_compat answers plain text whatever Accept says", () => {
  const r = rig({ imdsCompat: true });
  const c = new GuestTcp(r, 40005);
  c.connect();
  const res = c.request(httpGet("/latest/meta-data", { Accept: "application/json" }));
  assert.equal(res.headers.get("content-type"), "text/plain");
  assert.equal(res.body, "ami-id\ncount\nplacement/\nreservation-id");
});

test("bad IPv4 or TCP checksums, short or cut lengths, fragments, other protocols and ports are dropped without an answer", () => {
  const r = rig();
  const syn = (more: Partial<Parameters<typeof tcpSegment>[0]>) => tcpSegment({ srcPort: 40006, seq: 1, flags: SYN, ...more });
  const cut = syn({}).subarray(0, 50);
  for (const frame of [syn({ badIpChecksum: true }), syn({ badTcpChecksum: true }), syn({ fragment: true }), syn({ protocol: 17 }), syn({ dstPort: 81 }), cut]) {
    r.send(frame);
  }
  // A header that claims a longer packet than the frame holds.
  const long = syn({});
  long[16] = 0x05; long[17] = 0xdc;
  r.send(long);
  assert.equal(r.receive().length, 0);
  assert.equal(r.stack.counters.connectionsCreated, 0);
  assert.equal(r.stack.counters.rxDropped, 7);
});

test("a partial TCP checksum (the guest's checksum offload) is not checked", () => {
  const r = rig({}, DATA, true);
  r.send(tcpSegment({ srcPort: 40007, seq: 1, flags: SYN, badTcpChecksum: true }));
  assert.equal(r.stack.counters.connectionsCreated, 1);
});

test("segments for no connection get an RST (never for an RST); SYN with other flags opens nothing", () => {
  const r = rig();
  r.send(tcpSegment({ srcPort: 40008, seq: 5, ack: 777, flags: ACK }));
  r.send(tcpSegment({ srcPort: 40008, seq: 5, flags: SYN | FIN }));
  r.send(tcpSegment({ srcPort: 40008, seq: 5, flags: RST }));
  const frames = r.receive().map(readFrame);
  assert.equal(frames.length, 2);
  assert.ok(frames[0]!.kind === "tcp" && frames[0]!.flags === RST && frames[0]!.seq === 777, "RST at the ACK's sequence number");
  assert.ok(frames[1]!.kind === "tcp" && frames[1]!.flags === (RST | ACK) && frames[1]!.ack === 7, "RST acknowledging SYN and FIN");
  assert.equal(r.stack.counters.connectionsCreated, 0);
});

test(`at most ${MAX_CONNECTIONS} connections: the next SYN is refused, until one has been silent long enough to evict`, () => {
  const r = rig();
  for (let i = 0; i < MAX_CONNECTIONS; i++) new GuestTcp(r, 41000 + i).connect();
  assert.equal(r.stack.held.connections, MAX_CONNECTIONS);
  r.send(tcpSegment({ srcPort: 42000, seq: 1, flags: SYN }));
  const refused = r.receive().map(readFrame);
  assert.ok(refused.length === 1 && refused[0]!.kind === "tcp" && refused[0]!.flags & RST && refused[0]!.dstPort === 42000);
  assert.equal(r.stack.counters.connectionsRefused, 1);
  r.advance(10_001);
  r.receive();
  const c = new GuestTcp(r, 42001);
  c.connect();
  assert.equal(r.stack.held.connections, MAX_CONNECTIONS);
  const evicted = c.received.filter((f) => f.kind === "tcp" && f.flags & RST && f.dstPort >= 41000 && f.dstPort < 42000);
  assert.equal(evicted.length, 1, "the evicted connection is told with an RST");
});

test(`queued RSTs are bounded at ${MAX_PENDING_RESETS}; more are dropped and counted`, () => {
  const r = rig();
  for (let i = 0; i < MAX_PENDING_RESETS + 50; i++) r.send(tcpSegment({ srcPort: 30000 + i, seq: 1, ack: 1, flags: ACK }));
  assert.equal(r.stack.held.resets, MAX_PENDING_RESETS);
  assert.equal(r.stack.counters.txDropped, 50);
  assert.equal(r.receive().length, MAX_PENDING_RESETS);
});

test("a request head larger than the receive buffer resets the connection; the window never lets more in", () => {
  const r = rig();
  const c = new GuestTcp(r, 40009);
  const synAck = c.connect();
  assert.equal(synAck.window, TCP_RECEIVE_BUFFER_BYTES);
  c.send(`GET /${"a".repeat(TCP_RECEIVE_BUFFER_BYTES + 100)}`);
  const frames = c.pull();
  assert.ok(frames.some((f) => f.flags & RST));
  assert.equal(r.stack.held.connections, 0);
  assert.equal(r.stack.counters.requestsRefused, 1);
});

test("responses held by all connections stay within the budget: one more resets its connection", () => {
  const size = 4 << 20;
  const r = rig({}, { big: "x".repeat(size - 1000) });
  const n = Math.floor(RESPONSE_BUDGET_BYTES / size);
  const conns = Array.from({ length: n + 1 }, (_, i) => new GuestTcp(r, 43000 + i));
  for (const c of conns) c.connect();
  for (const c of conns.slice(0, n)) c.send(httpGet("/big"));
  r.receive();
  assert.ok(r.stack.held.responseBytes <= RESPONSE_BUDGET_BYTES);
  const last = conns[n]!;
  last.send(httpGet("/big"));
  assert.ok(last.pull().some((f) => f.flags & RST));
  assert.equal(r.stack.counters.requestsRefused, 1);
  assert.ok(r.stack.held.responseBytes <= RESPONSE_BUDGET_BYTES);
});

test("unacknowledged data is sent again after the retransmission timeout, and the connection resets after too many", () => {
  const r = rig();
  const c = new GuestTcp(r, 40010);
  c.connect();
  c.send(httpGet("/latest/meta-data/ami-id"));
  const first = r.receive().map(readFrame).filter((f) => f.kind === "tcp" && f.payload.length > 0);
  assert.equal(first.length, 1);
  assert.equal(r.receive().length, 0, "nothing more until the timeout");
  r.advance(RTO_INITIAL_MS);
  const again = r.receive().map(readFrame).filter((f) => f.kind === "tcp" && f.payload.length > 0);
  assert.equal(again.length, 1);
  assert.ok(again[0]!.kind === "tcp" && first[0]!.kind === "tcp" && again[0]!.seq === first[0]!.seq);
  for (let i = 0; i < RTO_MAX_RETRIES + 1; i++) { r.advance(60_000); r.receive(); }
  assert.equal(r.stack.held.connections, 0);
});

test(`pipelined requests in one segment: at most ${REQUESTS_PER_SEGMENT} answered per segment, the rest as the guest acknowledges`, () => {
  const r = rig();
  const c = new GuestTcp(r, 40012);
  c.connect();
  c.send(httpGet("/latest/meta-data/ami-id").repeat(10));
  const count = (frames: { payload: Uint8Array }[]) => frames.reduce((n, f) => n + (new TextDecoder().decode(f.payload).match(/HTTP\/1\.1 200/g)?.length ?? 0), 0);
  let answers = count(c.pull());
  assert.equal(answers, REQUESTS_PER_SEGMENT, "one segment's budget");
  for (let i = 0; i < 20 && answers < 10; i++) { c.sendAck(); answers += count(c.pull()); }
  assert.equal(answers, 10);
});

test("a lost SYN-ACK is sent again when the SYN comes again", () => {
  const r = rig();
  r.send(tcpSegment({ srcPort: 40011, seq: 9, flags: SYN }));
  const a = r.receive().map(readFrame);
  r.send(tcpSegment({ srcPort: 40011, seq: 9, flags: SYN }));
  const b = r.receive().map(readFrame);
  assert.ok(a[0]!.kind === "tcp" && b[0]!.kind === "tcp" && a[0]!.flags === (SYN | ACK) && b[0]!.flags === (SYN | ACK) && a[0]!.seq === b[0]!.seq);
});

test("property: random and mutated frames never throw, and what the stack holds stays bounded", () => {
  const valid = [
    arpRequest(), tcpSegment({ srcPort: 1, seq: 1, flags: SYN }), tcpSegment({ srcPort: 1, seq: 2, ack: 1, flags: ACK, payload: httpGet("/latest") }),
    tcpSegment({ srcPort: 2, seq: 1, flags: SYN, mss: 1 }), tcpSegment({ srcPort: 1, seq: 2, flags: FIN | ACK }),
  ];
  const frame = fc.oneof(
    fc.uint8Array({ minLength: 0, maxLength: 120 }),
    fc.tuple(fc.constantFrom(...valid), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }), fc.nat(80))
      .map(([f, edits, cut]) => {
        const g = f.slice(0, Math.max(14, f.length - cut));
        for (const [at, v] of edits) g[at % g.length] = v;
        return g;
      }),
  );
  const action = fc.oneof(
    fc.record({ frame, partial: fc.boolean() }),
    fc.record({ pull: fc.nat(5) }),
    fc.record({ advance: fc.nat(20_000) }),
  );
  fc.assert(fc.property(fc.array(action, { maxLength: 200 }), (actions) => {
    const r = rig({ version: "V2" });
    const out = new Uint8Array(MMDS_FRAME_MAX_BYTES);
    for (const a of actions) {
      if ("frame" in a) { if (r.stack.isMmdsFrame(a.frame)) r.stack.receive(a.frame, a.partial); }
      else if ("pull" in a) for (let i = 0; i < a.pull; i++) r.stack.nextFrame(out);
      else r.advance(a.advance);
      const held = r.stack.held;
      assert.ok(held.connections <= MAX_CONNECTIONS && held.resets <= MAX_PENDING_RESETS && held.responseBytes <= RESPONSE_BUDGET_BYTES);
    }
  }), { numRuns: 500 });
});
