/**
 * Random and hostile virtio-net traffic (fast-check) through the real
 * SplitQueue and fake drivers, over a fake TAP (a datagram socket pair),
 * checked against a model: the device never throws, never fails for a
 * well-formed ring, sends exactly the valid TX packets (in order, byte for
 * byte), and fills receive chains in order with exactly the packets that fit.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, virtio_net_hdr_v1 } from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { NET_HDR_BYTES, NET_MAX_FRAME_BYTES, NET_RX_QUEUE, NET_TX_QUEUE, VirtioNet } from "./net.js";
import { concat, fakeTap, NetContext, readPacket, writePacket } from "./net-test-rig.js";
import { FakeDriver } from "./testing/fake-driver.js";
import { arbRawDescriptor, recordingMemory, spaceOf, splitAt as split } from "./testing/fake-driver-hostile.js";

interface Packet {
  flags: number;
  gso: number;
  frameLen: number;
  seed: number;
  splitAt: number[];
}

type Action =
  | { kind: "tx"; p: Packet; writable: number }
  | { kind: "rxBuffers"; chains: { lengths: number[]; readable: boolean }[] }
  | { kind: "inject"; p: Packet };

const packetArb: fc.Arbitrary<Packet> = fc.record({
  flags: fc.oneof({ weight: 12, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_DATA_VALID, 0xff) }),
  gso: fc.oneof({ weight: 15, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(VIRTIO_NET_HDR_GSO_TCPV4, 0x80, 0xff) }),
  frameLen: fc.oneof(
    { weight: 12, arbitrary: fc.integer({ min: 14, max: 1514 }) },
    { weight: 1, arbitrary: fc.nat(13) },
    { weight: 1, arbitrary: fc.integer({ min: 1515, max: 3000 }) },
  ),
  seed: fc.nat(255),
  splitAt: fc.array(fc.nat(4000), { maxLength: 3 }),
});

const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("tx" as const), p: packetArb, writable: fc.oneof({ weight: 20, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 64 }) }) }) },
  { weight: 2, arbitrary: fc.record({
    kind: fc.constant("rxBuffers" as const),
    chains: fc.array(fc.record({
      lengths: fc.array(fc.integer({ min: 1, max: 1600 }), { minLength: 1, maxLength: 3 }),
      readable: fc.oneof({ weight: 20, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    }), { minLength: 1, maxLength: 4 }),
  }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("inject" as const), p: packetArb }) },
);

function packetBytes(p: Packet): Uint8Array {
  const b = Uint8Array.from({ length: NET_HDR_BYTES + p.frameLen }, (_, i) => (i * 31 + p.seed) & 0xff);
  b.fill(0, 0, NET_HDR_BYTES);
  b[virtio_net_hdr_v1.flags] = p.flags;
  b[virtio_net_hdr_v1.gso_type] = p.gso;
  return b;
}

const offloadFree = (p: Packet) => (p.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) === 0 && p.gso === 0;

test("10^5 random TX/RX requests: the TAP sees exactly the valid packets, guests get exactly what fits", () => {
  const tap = fakeTap();
  const net = new VirtioNet({ tap: "fake", mac: "06:00:ac:10:00:02" }, tap.device);
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
  let requests = 0;
  const seen = { sent: 0, delivered: 0, tooSmall: 0 };
  try {
    fc.assert(fc.property(fc.array(actionArb, { minLength: 40, maxLength: 40 }), fc.record({ eventIdx: fc.boolean(), indirect: fc.boolean() }), (actions, features) => {
      const rx = new FakeDriver(mem, { base: 0x1000, bytes: 0x7f000, queueSize: 16, features });
      const tx = new FakeDriver(mem, { base: 0x80000, bytes: 0x80000, queueSize: 16, features });
      const ctx = new NetContext(mem, [rx.createQueue(), tx.createQueue()], net.initialConfig(), net.deviceFeatures);
      net.reset();
      net.activate(ctx);
      // Drain what a previous run left in the socket.
      while (readPacket(tap.peer)) { /* discard */ }
      while (readPacket(tap.device)) { /* discard */ }
      /** RX chains the device has not returned, in order, and packets it has not delivered. */
      const chains: { bytes: number; readable: boolean }[] = [];
      const packets: Uint8Array[] = [];
      const settle = () => {
        // Take what a kick delivered, then let the device poll the TAP until nothing moves.
        for (let guard = 0; guard < 100; guard++) {
          const used = rx.popAllUsed();
          if (used.length === 0) {
            if (!ctx.fire(tap.device)) break;
            const more = rx.popAllUsed();
            if (more.length === 0) break;
            used.push(...more);
          }
          for (const u of used) {
            const c = chains.shift(), p = packets.shift();
            assert.ok(c && p, "a chain came back with a packet");
            const fits = !c.readable && c.bytes >= p.length;
            assert.equal(u.len, fits ? p.length : 0);
            if (fits) seen.delivered++; else seen.tooSmall++;
            if (fits) {
              const want = p.slice();
              want[virtio_net_hdr_v1.num_buffers] = 1;
              want[virtio_net_hdr_v1.num_buffers + 1] = 0;
              assert.ok(Buffer.from(u.written).equals(Buffer.from(want)), "the guest got the packet with num_buffers = 1");
            }
          }
        }
        // Whatever is left waits either for a chain or in the socket.
        assert.ok(chains.length === 0 || packets.length === 0, "no chain and packet left unpaired");
      };
      for (const a of actions) {
        requests++;
        if (a.kind === "tx") {
          const pkt = packetBytes(a.p);
          const pieces = split(pkt, a.p.splitAt);
          if (pieces.length + (a.writable ? 1 : 0) > 4 && !features.indirect) continue;
          if (tx.freeDescriptors < (features.indirect ? 1 : pieces.length + 1)) continue;
          tx.addChain({ readable: pieces, writable: a.writable ? [a.writable] : [], indirect: features.indirect && pieces.length > 1 });
          net.onNotify(NET_TX_QUEUE);
          const u = tx.popUsed();
          assert.ok(u);
          assert.equal(u.len, 0);
          const valid = a.writable === 0 && a.p.frameLen >= 14 && offloadFree(a.p);
          const got = readPacket(tap.peer);
          if (valid) seen.sent++;
          if (valid) assert.ok(got && Buffer.from(got).equals(Buffer.from(pkt)), "a valid TX packet reaches the TAP intact");
          else assert.equal(got, undefined, "an invalid TX packet is not sent");
        } else if (a.kind === "rxBuffers") {
          for (const c of a.chains) {
            const n = c.lengths.length + (c.readable ? 1 : 0);
            if (rx.freeDescriptors < (features.indirect ? 1 : n)) break;
            rx.addChain({ readable: c.readable ? [new Uint8Array(8)] : [], writable: c.lengths, indirect: features.indirect && n > 1 });
            chains.push({ bytes: c.lengths.reduce((s, x) => s + x, 0), readable: c.readable });
          }
          net.onNotify(NET_RX_QUEUE);
        } else {
          const pkt = packetBytes(a.p);
          if (writePacket(tap.peer, pkt) !== pkt.length) continue; // socket queue full: not injected
          // The device drops runts and offload headers when it reads them.
          if (a.p.frameLen >= 14 && offloadFree(a.p)) packets.push(pkt);
        }
        settle();
      }
      assert.deepEqual(ctx.failures, []);
    }), { numRuns: 2500, includeErrorInReport: true });
  } finally {
    net.shutdown();
    tap.close();
    mem.dispose();
  }
  assert.ok(requests >= 100_000, `${requests} requests`);
  // The generators reach every path often.
  assert.ok(seen.sent > 20_000 && seen.delivered > 10_000 && seen.tooSmall > 1000, JSON.stringify(seen));
});

test("hostile rings on both queues (random raw descriptors and indices) never throw or touch memory outside the guest", () => {
  const tap = fakeTap();
  const net = new VirtioNet({ tap: "fake", mac: "06:00:ac:10:00:02" }, tap.device);
  const real = GuestMemory.create([{ guestBase: 0, size: 0x10000 }, { guestBase: 0x20000, size: 0x20000 }]);
  const rec = recordingMemory(real);
  const space = spaceOf(real);
  const frame = concat(new Uint8Array(NET_HDR_BYTES), new Uint8Array(100).fill(0x5a));
  try {
    fc.assert(fc.property(
      fc.array(fc.tuple(fc.boolean(), fc.nat(15), arbRawDescriptor(space, 16)), { minLength: 1, maxLength: 24 }),
      fc.array(fc.tuple(fc.boolean(), fc.nat(0xffff)), { minLength: 1, maxLength: 6 }),
      fc.integer({ min: -2, max: 20 }), fc.integer({ min: -2, max: 20 }),
      fc.record({ eventIdx: fc.boolean(), indirect: fc.boolean() }),
      fc.nat(3),
      (descs, heads, rxIdx, txIdx, features, inject) => {
        const rx = new FakeDriver(real, { base: 0x20000, bytes: 0x800, queueSize: 16, features });
        const tx = new FakeDriver(real, { base: 0x21000, bytes: 0x800, queueSize: 16, features });
        const ctx = new NetContext(rec.memory, [rx.createQueue(), tx.createQueue()], net.initialConfig(), net.deviceFeatures);
        while (readPacket(tap.device)) { /* discard */ }
        net.reset();
        net.activate(ctx);
        for (const [isTx, i, d] of descs) (isTx ? tx : rx).writeDescriptor(i, d);
        heads.forEach(([isTx, h], i) => (isTx ? tx : rx).setAvailRing(i, h));
        rx.setAvailIdx(rxIdx & 0xffff);
        tx.setAvailIdx(txIdx & 0xffff);
        for (let i = 0; i < inject; i++) writePacket(tap.peer, frame);
        rec.clear();
        net.onNotify(NET_TX_QUEUE);
        net.onNotify(NET_RX_QUEUE);
        ctx.fire(tap.device);
        net.onNotify(NET_TX_QUEUE);
        while (readPacket(tap.peer)) { /* discard what was sent */ }
        assert.equal(rec.outside.length, 0);
        assert.ok(ctx.failures.length <= 2);
      }), { numRuns: 10_000 });
  } finally {
    net.shutdown();
    tap.close();
    real.dispose();
  }
  assert.ok(NET_MAX_FRAME_BYTES > 0);
});
