/**
 * MMDS on virtio-net through the fake guest drivers and a fake TAP (net-test-rig):
 * MMDS's frames never reach the TAP and other frames still do, a whole V1 and V2
 * exchange through the rings, fair turns between MMDS's and the TAP's frames on
 * the receive queue, nothing lost or piling up while the guest posts no receive
 * buffers, the data request (MMDS_REQUEST_SET_DATA) with its limit, and MMDS's
 * frames costing nothing from the TX limiter.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { sys } from "../../sys/native.js";
import { MMDS_REQUEST_SET_DATA } from "./mmds/control.js";
import { MMDS_DATA_MAX_BYTES } from "./mmds/data.js";
import { MAX_CONNECTIONS, MAX_PENDING_RESETS } from "./mmds/stack.js";
import { NET_HDR_BYTES, NET_RX_QUEUE, NetError, type NetOptions } from "./net.js";
import { concat, fakeTap, netHeader, netRig, readPacket, writePacket, type NetRig } from "./testing/net-test-rig.js";
import {
  ACK, arpRequest, GuestTcp, httpGet, readFrame, SYN, tcpSegment, type FrameTransport,
} from "./mmds/testing/guest-net.js";

const DATA = { latest: { "meta-data": { "ami-id": "ami-1", "instance-id": "i-2" } } };

function setData(r: NetRig, data: unknown): unknown {
  return r.net.control({ op: MMDS_REQUEST_SET_DATA, args: { json: JSON.stringify(data) } });
}

/** Frames between the fake guest and the device: TX chains in, RX chains out (the header checked and removed). */
function transport(r: NetRig, rxBuffers = 16): FrameTransport & { tapFrames: Uint8Array[] } {
  const tapFrames: Uint8Array[] = [];
  return {
    tapFrames,
    send(frame) { r.send([netHeader(), frame]); },
    receive() {
      const frames: Uint8Array[] = [];
      for (let round = 0; round < 100; round++) {
        // Keep `rxBuffers` posted (the ring never fills with unused ones).
        r.addRx(Math.max(0, rxBuffers - r.rx.outstandingChains));
        const used = r.rx.popAllUsed();
        const got = used.filter((u) => u.len > 0);
        for (const u of got) {
          const hdr = u.written.subarray(0, NET_HDR_BYTES);
          assert.deepEqual([...hdr.subarray(0, 10)], new Array(10).fill(0), "MMDS frames carry no offload");
          const frame = u.written.subarray(NET_HDR_BYTES);
          if (frame[0] === 0x06 && frame[6] === 0x06 && frame[7] === 0x01) frames.push(frame.slice()); else tapFrames.push(frame.slice());
        }
        if (got.length === 0) break;
      }
      return frames;
    },
  };
}

const mmds = (version: "V1" | "V2" = "V1", imdsCompat = false): Partial<NetOptions> => ({ mmds: { ipv4: "169.254.169.254", version, imdsCompat } });

test("frames for MMDS never reach the TAP, other frames still do, and the TAP's frames still reach the guest", () => {
  const tap = fakeTap();
  const r = netRig(tap.device, mmds());
  try {
    setData(r, DATA);
    r.send([netHeader(), arpRequest()]);
    r.send([netHeader(), tcpSegment({ srcPort: 5000, seq: 1, flags: SYN })]);
    assert.equal(readPacket(tap.peer), undefined, "nothing for MMDS on the TAP");
    const other = tcpSegment({ srcPort: 5000, seq: 1, flags: SYN, dst: [10, 0, 0, 1] });
    r.send([netHeader(), other]);
    assert.deepEqual(readPacket(tap.peer)?.subarray(NET_HDR_BYTES), other);
    r.send([netHeader(), arpRequest([10, 0, 0, 1])]);
    assert.ok(readPacket(tap.peer), "ARP for the gateway goes to the TAP");
    assert.equal(r.net.metrics.mmdsTxFrames, 2);
    assert.equal(r.net.metrics.txFrames, 2);
    const t = transport(r);
    writePacket(tap.peer, concat(netHeader(), other));
    const fromMmds = t.receive().map(readFrame);
    assert.deepEqual(fromMmds.map((f) => f.kind), ["arp", "tcp"]);
    assert.equal(t.tapFrames.length, 1);
  } finally {
    r.dispose();
    tap.close();
  }
});

test("a V2 exchange through the rings: token, then GET with it; without it 401", () => {
  const tap = fakeTap();
  const r = netRig(tap.device, mmds("V2"));
  try {
    setData(r, DATA);
    const c = new GuestTcp(transport(r), 5001);
    c.connect();
    assert.equal(c.request(httpGet("/latest/meta-data/ami-id")).status, 401);
    const token = c.request(httpGet("/latest/api/token", { "X-metadata-token-ttl-seconds": "21600" }, "PUT")).body;
    const res = c.request(httpGet("/latest/meta-data/", { "X-metadata-token": token }));
    assert.equal(res.status, 200);
    assert.equal(res.body, "ami-id\ninstance-id");
    assert.equal(readPacket(tap.peer), undefined);
  } finally {
    r.dispose();
    tap.close();
  }
});

test("new data replaces the old whole; data over the limit is refused and the old data stays", () => {
  const tap = fakeTap();
  const r = netRig(tap.device, mmds());
  try {
    assert.deepEqual(setData(r, DATA), { bytes: JSON.stringify(DATA).length });
    const c = new GuestTcp(transport(r), 5002);
    c.connect();
    assert.equal(c.request(httpGet("/latest/meta-data/ami-id")).body, "ami-1");
    setData(r, { latest: { "meta-data": { "ami-id": "ami-9" } } });
    assert.equal(c.request(httpGet("/latest/meta-data/")).body, "ami-id");
    assert.throws(() => setData(r, { big: "x".repeat(MMDS_DATA_MAX_BYTES) }), { code: "EMMDSDATA" });
    assert.throws(() => r.net.control({ op: MMDS_REQUEST_SET_DATA, args: { json: "{nope" } }), { code: "EMMDSDATA" });
    assert.equal(c.request(httpGet("/latest/meta-data/ami-id")).body, "ami-9");
  } finally {
    r.dispose();
    tap.close();
  }
  const tap2 = fakeTap();
  const plain = netRig(tap2.device);
  try {
    assert.throws(() => setData(plain, DATA), NetError, "no MMDS on this interface");
  } finally {
    plain.dispose();
    tap2.close();
  }
});

test("MMDS's frames and the TAP's take turns on the receive queue", () => {
  const tap = fakeTap();
  const r = netRig(tap.device, mmds());
  try {
    // No receive buffers yet: six RSTs wait in MMDS, six frames in the TAP.
    for (let i = 0; i < 6; i++) r.send([netHeader(), tcpSegment({ srcPort: 6000 + i, seq: 1, ack: 1, flags: ACK })]);
    const other = tcpSegment({ srcPort: 1, seq: 1, flags: SYN, dst: [10, 0, 0, 1] });
    for (let i = 0; i < 6; i++) writePacket(tap.peer, concat(netHeader(), other));
    r.addRx(12);
    const order = r.rx.popAllUsed().map((u) => (u.written[NET_HDR_BYTES + 7] === 0x01 ? "M" : "T")).join("");
    assert.match(order, /^(TM){6}$|^(MT){6}$/, "one from each in turn");
  } finally {
    r.dispose();
    tap.close();
  }
});

test("with no receive buffers MMDS's answers wait (bounded) and arrive once the guest posts buffers", () => {
  const tap = fakeTap();
  const r = netRig(tap.device, mmds());
  try {
    r.send([netHeader(), tcpSegment({ srcPort: 7000, seq: 1, flags: SYN })]);
    for (let i = 0; i < MAX_PENDING_RESETS + 20; i++) r.send([netHeader(), tcpSegment({ srcPort: 8000 + i, seq: 1, ack: 1, flags: ACK })]);
    assert.equal(r.rx.popAllUsed().length, 0);
    assert.equal(r.net.mmdsCounters?.txDropped, 20, "RSTs past the queue's bound are dropped and counted");
    const frames = transport(r).receive().map(readFrame);
    assert.equal(frames.length, MAX_PENDING_RESETS + 1);
    assert.ok(frames.some((f) => f.kind === "tcp" && f.flags === (SYN | ACK) && f.dstPort === 7000), "the SYN-ACK waited");
  } finally {
    r.dispose();
    tap.close();
  }
});

test("a receive pass takes a bounded batch of MMDS frames and asks to be called again for the rest", () => {
  const tap = fakeTap();
  const r = netRig(tap.device, mmds(), { queueSize: 256 });
  try {
    for (let i = 0; i < MAX_PENDING_RESETS; i++) r.send([netHeader(), tcpSegment({ srcPort: 8000 + i, seq: 1, ack: 1, flags: ACK })]);
    r.ctx.kicks.length = 0;
    r.addRx(MAX_PENDING_RESETS + 10);
    const first = r.rx.popAllUsed().length;
    assert.ok(first > 0 && first < MAX_PENDING_RESETS, `one pass is bounded (${first})`);
    assert.ok(r.ctx.kicks.includes(NET_RX_QUEUE), "the device asks to go on");
    r.net.onNotify(NET_RX_QUEUE); // what the device thread does for the kick
    assert.equal(first + r.rx.popAllUsed().length, MAX_PENDING_RESETS);
  } finally {
    r.dispose();
    tap.close();
  }
});

test("MMDS's frames cost nothing from the TX rate limiter", () => {
  const tap = fakeTap();
  const r = netRig(tap.device, { ...mmds(), txRateLimiter: { ops: { size: 2, refillTimeMs: 1_000_000 } } });
  try {
    for (let i = 0; i < 5; i++) assert.ok(r.send([netHeader(), arpRequest()]), "MMDS frame taken");
    assert.ok(r.send([netHeader(), arpRequest([10, 0, 0, 1])]));
    assert.ok(r.send([netHeader(), arpRequest([10, 0, 0, 1])]));
    assert.equal(r.send([netHeader(), arpRequest([10, 0, 0, 1])]), undefined, "the third TAP frame waits for the bucket");
  } finally {
    r.dispose();
    tap.close();
  }
});

test("property: random and mutated frames for MMDS through the device never fail it, and what MMDS holds stays bounded", () => {
  const tap = fakeTap();
  const r = netRig(tap.device, mmds("V2"), { queueSize: 256 });
  try {
    setData(r, DATA);
    const valid = [arpRequest(), tcpSegment({ srcPort: 1, seq: 1, flags: SYN }), tcpSegment({ srcPort: 1, seq: 2, ack: 1, flags: ACK, payload: httpGet("/latest/meta-data/") })];
    const frame = fc.tuple(fc.constantFrom(...valid), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), fc.nat(40))
      .map(([f, edits, cut]) => {
        const g = f.slice(0, Math.max(14, f.length - cut));
        // Keep most frames addressed to MMDS (bytes 30..33 are IPv4's destination).
        for (const [at, v] of edits) if (at % g.length < 30 || at % g.length > 33) g[at % g.length] = v;
        return g;
      });
    const action = fc.oneof(fc.record({ frame, flags: fc.integer({ min: 0, max: 7 }) }), fc.record({ rx: fc.nat(6) }));
    fc.assert(fc.property(fc.array(action, { maxLength: 60 }), (actions) => {
      for (const a of actions) {
        if ("frame" in a) r.send([netHeader(a.flags & 1), a.frame]);
        else { r.addRx(Math.max(0, Math.min(a.rx, 32 - r.rx.outstandingChains))); r.rx.popAllUsed(); }
      }
      assert.deepEqual(r.ctx.failures, []);
      for (let p = readPacket(tap.peer); p; p = readPacket(tap.peer)) {
        const f = p.subarray(NET_HDR_BYTES), type = (f[12]! << 8) | f[13]!;
        const to = (at: number) => f.length >= at + 4 && f[at] === 169 && f[at + 1] === 254 && f[at + 2] === 169 && f[at + 3] === 254;
        assert.ok(!(type === 0x0806 && f.length >= 42 && to(38)) && !(type === 0x0800 && to(30)), "a frame for MMDS reached the TAP");
      }
      const c = r.net.mmdsCounters!;
      assert.ok(c.connectionsCreated - c.connectionsDestroyed <= MAX_CONNECTIONS);
    }), { numRuns: 300 });
  } finally {
    r.dispose();
    tap.close();
  }
});

test("MMDS options are checked when the device is made", () => {
  const tap = fakeTap();
  try {
    for (const bad of [{ ipv4: "169.254.169", version: "V1", imdsCompat: false }, { ipv4: "169.254.169.254", version: "V3", imdsCompat: false },
      { ipv4: "169.254.169.254", version: "V2", imdsCompat: "yes" }]) {
      assert.throws(() => netRig(tap.device, { mmds: bad as never }), { code: "ENETCONFIG" });
    }
  } finally {
    sys.close(tap.device);
    tap.close();
  }
});
