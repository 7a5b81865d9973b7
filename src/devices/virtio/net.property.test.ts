/**
 * Random and hostile virtio-net traffic (fast-check) through the real
 * SplitQueue and fake drivers, over a fake TAP (a datagram socket pair), with a
 * random set of offloads and, in half the runs, mergeable receive buffers
 * negotiated, checked against a model: the device never throws, never fails
 * for a well-formed ring, sends every complete frame and every well-formed TSO
 * packet it negotiated (in order, frame byte for byte) and nothing that asks
 * for an offload it did not negotiate, and fills receive chains in order with
 * exactly the packets that fit and that the guest may receive (with
 * MRG_RXBUF: each packet over as many chains as it needs, §5.1.6.4). A direct
 * property throws arbitrary header bytes at the checks.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import {
  ETH_HLEN, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_UDP, virtio_net_hdr_v1,
} from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { dataView, setU16 } from "../../memory/le.js";
import { NET_HDR_BYTES, NET_MAX_FRAME_BYTES, NET_RX_IN_PLACE_BYTES, NET_RX_QUEUE, NET_TX_QUEUE, VirtioNet } from "./net.js";
import { checkRxHeader, checkTxHeader, negotiatedOffloads, type OffloadSet } from "./net-offload.js";
import {
  concat, fakeTap, NetContext, netHeader, offloadRecorder, readNetHeader, readPacket, tcpFrame, writePacket,
  type NetHeaderFields,
} from "./testing/net-test-rig.js";
import { FakeDriver, type UsedEntry } from "./testing/fake-driver.js";
import { arbRawDescriptor, recordingMemory, spaceOf, splitAt as split } from "./testing/fake-driver-hostile.js";

const bit = (n: number) => 1n << BigInt(n);
const OFFLOAD_BITS = [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN];
/** A random driver acceptance of the offload features (dependencies not always met, as a hostile driver would). */
const featuresArb = fc.subarray(OFFLOAD_BITS).map((fs) => fs.reduce((s, f) => s | bit(f), 0n));
const NC = VIRTIO_NET_HDR_F_NEEDS_CSUM;

/** What the guest may use, straight from §5.1.3/§5.1.3.1 (the model; the device has its own code). */
function allowed(features: bigint): { tx: OffloadSet; rx: OffloadSet } {
  const has = (f: number) => (features & bit(f)) !== 0n;
  const side = (csum: boolean, tso4: boolean, tso6: boolean, ecn: boolean): OffloadSet =>
    ({ csum, tso4: csum && tso4, tso6: csum && tso6, ecn: csum && (tso4 || tso6) && ecn });
  return {
    tx: side(has(VIRTIO_NET_F_CSUM), has(VIRTIO_NET_F_HOST_TSO4), has(VIRTIO_NET_F_HOST_TSO6), has(VIRTIO_NET_F_HOST_ECN)),
    rx: side(has(VIRTIO_NET_F_GUEST_CSUM), has(VIRTIO_NET_F_GUEST_TSO4), has(VIRTIO_NET_F_GUEST_TSO6), has(VIRTIO_NET_F_GUEST_ECN)),
  };
}

/** True when a header (as the TAP or guest gets it) asks only for offloads in `set`, with sane offsets. */
function offloadsWithin(packet: Uint8Array, set: OffloadSet, direction: "tx" | "rx"): boolean {
  const h = readNetHeader(packet);
  const frameLen = packet.length - NET_HDR_BYTES;
  const known = direction === "tx" ? NC : NC | VIRTIO_NET_HDR_F_DATA_VALID;
  if (h.flags & ~known) return false;
  if (h.flags & (NC | VIRTIO_NET_HDR_F_DATA_VALID) && !set.csum) return false;
  if (h.flags & NC && h.csumStart + h.csumOffset + 2 > frameLen) return false;
  if (h.gsoType !== VIRTIO_NET_HDR_GSO_NONE) {
    const base = h.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
    if (!(base === VIRTIO_NET_HDR_GSO_TCPV4 && set.tso4) && !(base === VIRTIO_NET_HDR_GSO_TCPV6 && set.tso6)) return false;
    if (h.gsoType & VIRTIO_NET_HDR_GSO_ECN && !set.ecn) return false;
    if (!(h.flags & NC) || h.gsoSize === 0) return false;
  }
  return direction === "rx" ? h.numBuffers === 1 : h.hdrLen <= frameLen && h.numBuffers === 0;
}

interface Packet {
  /** raw: random bytes under the given header; tso: a well-formed TCP GSO packet (IPv4 or IPv6, maybe ECN). */
  kind: "raw" | "tso";
  flags: number;
  gso: number;
  fields: NetHeaderFields;
  ipv6: boolean;
  ecn: boolean;
  frameLen: number;
  seed: number;
  splitAt: number[];
}

type Action =
  | { kind: "tx"; p: Packet; writable: number }
  | { kind: "rxBuffers"; chains: { lengths: number[]; readable: boolean }[] }
  | { kind: "inject"; p: Packet };

const u16 = fc.oneof({ weight: 3, arbitrary: fc.nat(80) }, { weight: 1, arbitrary: fc.nat(0xffff) });
const packetArb: fc.Arbitrary<Packet> = fc.record({
  kind: fc.oneof({ weight: 5, arbitrary: fc.constant("raw" as const) }, { weight: 1, arbitrary: fc.constant("tso" as const) }),
  flags: fc.oneof({ weight: 10, arbitrary: fc.constant(0) }, { weight: 3, arbitrary: fc.constantFrom(NC, VIRTIO_NET_HDR_F_DATA_VALID, NC | VIRTIO_NET_HDR_F_DATA_VALID, 0xff) }),
  gso: fc.oneof({ weight: 12, arbitrary: fc.constant(0) }, {
    weight: 3,
    arbitrary: fc.constantFrom(VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
      VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_ECN, 0xff),
  }),
  fields: fc.oneof(
    { weight: 3, arbitrary: fc.constant({}) },
    { weight: 1, arbitrary: fc.record({ hdrLen: u16, gsoSize: u16, csumStart: u16, csumOffset: u16 }) },
  ),
  ipv6: fc.boolean(),
  ecn: fc.boolean(),
  frameLen: fc.oneof(
    { weight: 12, arbitrary: fc.integer({ min: 14, max: 1514 }) },
    { weight: 1, arbitrary: fc.nat(13) },
    { weight: 2, arbitrary: fc.integer({ min: 1515, max: 3000 }) },
  ),
  seed: fc.nat(255),
  splitAt: fc.array(fc.nat(4000), { maxLength: 3 }),
});

const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("tx" as const), p: packetArb, writable: fc.oneof({ weight: 20, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 64 }) }) }) },
  { weight: 2, arbitrary: fc.record({
    kind: fc.constant("rxBuffers" as const),
    chains: fc.array(fc.record({
      // Mostly MTU-sized, sometimes big enough that the ring holds a 64 KiB frame (a read in place).
      lengths: fc.array(fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 1600 }) }, { weight: 1, arbitrary: fc.integer({ min: 4096, max: 20000 }) }), { minLength: 1, maxLength: 3 }),
      readable: fc.oneof({ weight: 20, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    }), { minLength: 1, maxLength: 4 }),
  }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("inject" as const), p: packetArb }) },
);

function packetBytes(p: Packet): Uint8Array {
  if (p.kind === "tso") {
    const t = tcpFrame({ ipv6: p.ipv6, payload: Uint8Array.from({ length: p.frameLen }, (_, i) => (i * 31 + p.seed) & 0xff) });
    const gso = (p.ipv6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4) | (p.ecn ? VIRTIO_NET_HDR_GSO_ECN : 0);
    return concat(netHeader(NC, gso, { csumStart: t.csumStart, csumOffset: t.csumOffset, gsoSize: 1448, hdrLen: t.headerBytes }), t.frame);
  }
  const b = Uint8Array.from({ length: NET_HDR_BYTES + p.frameLen }, (_, i) => (i * 31 + p.seed) & 0xff);
  b.set(netHeader(p.flags, p.gso, p.fields));
  return b;
}

/** A TSO packet the driver negotiated, complete and well-formed. */
const tsoNegotiated = (p: Packet, tx: OffloadSet) => tx.csum && (p.ipv6 ? tx.tso6 : tx.tso4) && (!p.ecn || tx.ecn);
/** A packet that asks for no offload and whose hint fits the frame: every device must send it. */
const plain = (p: Packet) => p.kind === "raw" && !(p.flags & NC) && p.gso === 0 && (p.fields.hdrLen ?? 0) <= p.frameLen;

/** What the guest must receive for a packet the kernel hands the device (undefined: dropped), from §5.1.6.4.1. */
function rxExpected(pkt: Uint8Array, rx: OffloadSet): Uint8Array | undefined {
  if (pkt.length < NET_HDR_BYTES + ETH_HLEN) return undefined;
  const h = readNetHeader(pkt);
  const want = pkt.slice();
  want[virtio_net_hdr_v1.num_buffers] = 1;
  want[virtio_net_hdr_v1.num_buffers + 1] = 0;
  if (!rx.csum) want[virtio_net_hdr_v1.flags] = h.flags & ~VIRTIO_NET_HDR_F_DATA_VALID;
  return offloadsWithin(want, rx, "rx") ? want : undefined;
}

test("10^5 random TX/RX requests with random offloads: the TAP sees exactly the valid packets, guests get exactly what fits", () => {
  const tap = fakeTap();
  const offloads = offloadRecorder();
  const net = new VirtioNet({ tap: "fake", mac: "06:00:ac:10:00:02" }, tap.device, offloads.set);
  const mem = GuestMemory.create([{ guestBase: 0, size: 4 << 20 }]);
  let requests = 0;
  const seen = {
    sent: 0, tsoSent: 0, tsoRefused: 0, offloadSent: 0, delivered: 0, offloadDelivered: 0, rxDropped: 0, tooSmall: 0,
    merged: 0, mergedMultiple: 0, mergeBadChains: 0, mergedInPlace: 0,
  };
  const RX_QUEUE_SIZE = 16;
  try {
    fc.assert(fc.property(fc.array(actionArb, { minLength: 40, maxLength: 40 }), fc.record({ eventIdx: fc.boolean(), indirect: fc.boolean() }), featuresArb, fc.boolean(), (actions, features, offloadBits, mergeable) => {
      const rx = new FakeDriver(mem, { base: 0x1000, bytes: 0x2ff000, queueSize: RX_QUEUE_SIZE, features });
      const tx = new FakeDriver(mem, { base: 0x300000, bytes: 0x100000, queueSize: 16, features });
      const offered = offloadBits | (mergeable ? bit(VIRTIO_NET_F_MRG_RXBUF) : 0n);
      const ctx = new NetContext(mem, [rx.createQueue(), tx.createQueue()], net.initialConfig(), offered);
      const model = allowed(offered);
      net.reset();
      net.activate(ctx);
      // The TAP's offloads are exactly the guest's RX offloads.
      const tun = (model.rx.csum ? TUN_F_CSUM : 0) | (model.rx.tso4 ? TUN_F_TSO4 : 0) | (model.rx.tso6 ? TUN_F_TSO6 : 0) | (model.rx.ecn ? TUN_F_TSO_ECN : 0);
      assert.equal(net.metrics.tapOffloads, tun);
      // Drain what a previous run left in the socket.
      while (readPacket(tap.peer)) { /* discard */ }
      while (readPacket(tap.device)) { /* discard */ }
      /** RX chains the device has not returned, in order, and packets it has not delivered. */
      const chains: { head: number; bytes: number; readable: boolean }[] = [];
      const packets: Uint8Array[] = [];
      /** MRG_RXBUF: the chains the device holds, in ring order (the model's view). */
      let held: { head: number; bytes: number }[] = [];
      /** MRG_RXBUF: packets[0] was read into the host buffer and waits for chains. */
      let pendingRead = false;
      /**
       * MRG_RXBUF, from §5.1.6.3.1/§5.1.6.4 and net.ts's reads in place: what the device must
       * return now, in order. Before it reads a packet it holds chains for the largest frame
       * (or all the ring has), returning any chain with readable buffers or shorter than the
       * header empty at once. When they hold the largest frame, the packet is read into them;
       * otherwise it is read into the host buffer and waits for chains until they hold it.
       * Either way its chains come back together, all but the last full, num_buffers in the
       * first, and the held chains after them stay held. With every chain of the ring held and
       * the packet still too big, it is dropped (the chains stay held).
       */
      const mergeModel = (): { head: number; len: number; data?: Uint8Array }[] => {
        const out: { head: number; len: number; data?: Uint8Array }[] = [];
        const heldBytes = () => held.reduce((n, c) => n + c.bytes, 0);
        /** Takes the next available chain into `held`; false when there is none. */
        const take = (): boolean => {
          const c = chains.shift();
          if (!c) return false;
          if (c.readable || c.bytes < NET_HDR_BYTES) {
            out.push({ head: c.head, len: 0 });
            seen.mergeBadChains++;
          } else held.push(c);
          return true;
        };
        next: for (;;) {
          if (!pendingRead) {
            while (heldBytes() < NET_RX_IN_PLACE_BYTES && held.length < RX_QUEUE_SIZE && take()) { /* top up */ }
            if (packets.length === 0) return out;
            if (heldBytes() >= NET_RX_IN_PLACE_BYTES) seen.mergedInPlace++;
            else pendingRead = true;
          }
          const p = packets[0]!;
          while (heldBytes() < p.length) {
            if (held.length >= RX_QUEUE_SIZE) {
              packets.shift();
              pendingRead = false;
              continue next;
            }
            if (!take()) return out;
          }
          let count = 0;
          for (let at = 0; at < p.length; count++) at += Math.min(held[count]!.bytes, p.length - at);
          const want = p.slice();
          setU16(dataView(want), virtio_net_hdr_v1.num_buffers, count);
          let at = 0;
          for (const c of held.splice(0, count)) {
            const n = Math.min(c.bytes, want.length - at);
            out.push({ head: c.head, len: n, data: want.subarray(at, at + n) });
            at += n;
          }
          seen.merged++;
          if (count > 1) seen.mergedMultiple++;
          packets.shift();
          pendingRead = false;
        }
      };
      const settle = () => {
        if (mergeable) {
          const used: UsedEntry[] = [];
          for (let guard = 0; guard < 100; guard++) {
            const got = rx.popAllUsed();
            if (got.length === 0) {
              if (!ctx.fire(tap.device)) break;
              const more = rx.popAllUsed();
              if (more.length === 0) break;
              got.push(...more);
            }
            used.push(...got);
          }
          const expected = mergeModel();
          assert.deepEqual(used.map((u) => [u.head, u.len]), expected.map((e) => [e.head, e.len]), "the chains come back as the model says");
          expected.forEach((e, i) => {
            if (e.data) assert.ok(Buffer.from(used[i]!.written).equals(Buffer.from(e.data)), "each chain holds its part of the packet");
          });
          return;
        }
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
              assert.ok(Buffer.from(u.written).equals(Buffer.from(p)), "the guest got the packet as the model says");
              assert.ok(offloadsWithin(u.written, model.rx, "rx"), "never an offload the guest did not negotiate");
              const h = readNetHeader(u.written);
              if (h.flags & NC || h.gsoType) seen.offloadDelivered++;
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
          const got = readPacket(tap.peer);
          const wellFormed = a.writable === 0 && pkt.length >= NET_HDR_BYTES + ETH_HLEN;
          if (!wellFormed) assert.equal(got, undefined, "a malformed chain is not sent");
          else if (plain(a.p)) assert.ok(got, "a packet without offloads is sent");
          else if (a.p.kind === "tso") {
            assert.equal(got !== undefined, tsoNegotiated(a.p, model.tx), "a well-formed TSO packet is sent iff negotiated");
            if (got) seen.tsoSent++; else seen.tsoRefused++;
          }
          if (got) {
            seen.sent++;
            assert.ok(Buffer.from(got.subarray(NET_HDR_BYTES)).equals(Buffer.from(pkt.subarray(NET_HDR_BYTES))), "the frame reaches the TAP intact");
            assert.ok(offloadsWithin(got, model.tx, "tx"), "never an offload the driver did not negotiate");
            const h = readNetHeader(got), sent = readNetHeader(pkt);
            assert.equal(h.gsoType, sent.gsoType);
            assert.equal(h.hdrLen, sent.hdrLen);
            if (h.flags & NC) {
              seen.offloadSent++;
              assert.deepEqual([h.csumStart, h.csumOffset], [sent.csumStart, sent.csumOffset]);
            } else assert.deepEqual([h.csumStart, h.csumOffset], [0, 0]);
          }
        } else if (a.kind === "rxBuffers") {
          for (const c of a.chains) {
            const n = c.lengths.length + (c.readable ? 1 : 0);
            if (rx.freeDescriptors < (features.indirect ? 1 : n)) break;
            const head = rx.addChain({ readable: c.readable ? [new Uint8Array(8)] : [], writable: c.lengths, indirect: features.indirect && n > 1 });
            chains.push({ head, bytes: c.lengths.reduce((s, x) => s + x, 0), readable: c.readable });
          }
          net.onNotify(NET_RX_QUEUE);
        } else {
          const pkt = packetBytes(a.p);
          if (writePacket(tap.peer, pkt) !== pkt.length) continue; // socket queue full: not injected
          // The device drops runts and headers the guest may not get when it reads them.
          const want = rxExpected(pkt, model.rx);
          if (want) packets.push(want); else seen.rxDropped++;
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
  assert.ok(seen.sent > 15_000 && seen.delivered > 5000 && seen.tooSmall > 500, JSON.stringify(seen));
  assert.ok(seen.merged > 5000 && seen.mergedMultiple > 1000 && seen.mergeBadChains > 200 && seen.mergedInPlace > 500, JSON.stringify(seen));
  assert.ok(seen.tsoSent > 500 && seen.tsoRefused > 1000 && seen.offloadSent > 500 && seen.offloadDelivered > 500 && seen.rxDropped > 1000, JSON.stringify(seen));
});

test("arbitrary header bytes and frames under random negotiated features: the checks never throw and never let an un-negotiated offload through", () => {
  const stats = { txPassed: 0, txOffloadPassed: 0, rxPassed: 0, rxOffloadPassed: 0 };
  const frameArb = fc.oneof(
    fc.uint8Array({ minLength: ETH_HLEN, maxLength: 200 }),
    fc.record({ ipv6: fc.boolean(), vlanTags: fc.nat(3), n: fc.nat(3000) }).map(({ ipv6, vlanTags, n }) => tcpFrame({ ipv6, vlanTags, payload: new Uint8Array(n) }).frame),
  );
  const headerArb = fc.oneof(
    fc.uint8Array({ minLength: NET_HDR_BYTES, maxLength: NET_HDR_BYTES }),
    fc.record({
      flags: fc.constantFrom(0, NC, VIRTIO_NET_HDR_F_DATA_VALID, NC | VIRTIO_NET_HDR_F_DATA_VALID),
      gso: fc.constantFrom(0, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN),
      csumStart: fc.oneof(fc.constantFrom(34, 38, 42, 54, 58, 62), fc.nat(0xffff)),
      csumOffset: fc.oneof(fc.constant(16), fc.nat(0xffff)),
      gsoSize: fc.oneof(fc.constant(1448), fc.nat(0xffff)),
      hdrLen: fc.oneof(fc.constant(0), fc.nat(0xffff)),
    }).map(({ flags, gso, ...fields }) => netHeader(flags, gso, fields)),
  );
  /** A header made for a TCP frame (a valid TSO or checksum request), then maybe one field changed. */
  const consistentArb = fc.record({
    ipv6: fc.boolean(), vlanTags: fc.nat(2), n: fc.nat(3000), ecn: fc.boolean(), tso: fc.boolean(),
    change: fc.option(fc.tuple(fc.constantFrom(...(["hdrLen", "gsoSize", "csumStart", "csumOffset"] as const)), fc.nat(0xffff)), { freq: 3 }),
  }).map(({ ipv6, vlanTags, n, ecn, tso, change }) => {
    const t = tcpFrame({ ipv6, vlanTags, payload: new Uint8Array(n) });
    const gso = tso ? (ipv6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4) | (ecn ? VIRTIO_NET_HDR_GSO_ECN : 0) : 0;
    const fields: NetHeaderFields = { csumStart: t.csumStart, csumOffset: t.csumOffset, gsoSize: tso ? 1448 : 0, hdrLen: tso ? t.headerBytes : 0 };
    if (change) fields[change[0]] = change[1];
    return [netHeader(NC, gso, fields), t.frame] as const;
  });
  const caseArb = fc.oneof(fc.tuple(headerArb, frameArb), consistentArb);
  fc.assert(fc.property(caseArb, featuresArb, ([header, frame], features) => {
    const set = negotiatedOffloads(features);
    const model = allowed(features);
    assert.deepEqual({ tx: set.tx, rx: set.rx }, model);
    const tx = concat(header, frame);
    if (checkTxHeader(tx, set.tx) === undefined) {
      stats.txPassed++;
      assert.ok(offloadsWithin(tx, model.tx, "tx"), "TX: an un-negotiated or out-of-frame offload passed");
      assert.deepEqual(tx.subarray(NET_HDR_BYTES), frame);
      const h = readNetHeader(tx);
      if (h.flags & NC || h.gsoType) stats.txOffloadPassed++;
    }
    const rx = concat(header, frame);
    if (checkRxHeader(rx, set.rx) === undefined) {
      stats.rxPassed++;
      assert.ok(offloadsWithin(rx, model.rx, "rx"), "RX: an un-negotiated offload reached the guest");
      const h = readNetHeader(rx);
      if (h.flags & NC || h.gsoType) stats.rxOffloadPassed++;
    }
  }), { numRuns: 100_000 });
  assert.ok(Object.values(stats).every((n) => n > 1000), JSON.stringify(stats));
});

test("hostile rings on both queues (random raw descriptors and indices) never throw or touch memory outside the guest", () => {
  const tap = fakeTap();
  const net = new VirtioNet({ tap: "fake", mac: "06:00:ac:10:00:02" }, tap.device, offloadRecorder().set);
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
