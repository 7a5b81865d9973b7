import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { closeSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  EINVAL, POLLIN, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, VIRTIO_ID_NET, VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_S_LINK_UP, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
  virtio_net_config, virtio_net_hdr_v1,
} from "../../linux/abi.generated.js";
import { dataView, getU16, setU16 } from "../../memory/le.js";
import {
  checkTap, createBackend, NET_HDR_BYTES, NET_MAX_FRAME_BYTES, NET_RX_QUEUE, NET_TX_QUEUE, NetError, openTap, parseMac,
} from "./net.js";
import { NET_OFFLOAD_FEATURES } from "./net-offload.js";
import { sys } from "../../sys/native.js";
import {
  concat, ethFrame, fakeTap, netHeader, netRig, readNetHeader, readPacket, RX_CHAIN_BYTES, tcpFrame, writePacket,
  type NetRigOptions,
} from "./testing/net-test-rig.js";
import type { UsedEntry } from "./testing/fake-driver.js";
import type { TapScenarioReport } from "./testing/net-tap-scenario.js";
import type { VirtQueue } from "./types.js";
import { netnsAvailable, withTapNamespace } from "./testing/tap-namespace.js";

const bit = (n: number) => 1n << BigInt(n);
const bits = (...ns: number[]) => ns.reduce((s, n) => s | bit(n), 0n);
/** A driver that accepted no offloads. */
const NO_OFFLOAD_DRIVER: NetRigOptions = { features: (offered) => offered & ~NET_OFFLOAD_FEATURES };
/** A driver that accepted no offloads and no mergeable receive buffers: each packet needs one chain. */
const NO_MRG_DRIVER: NetRigOptions = { features: (offered) => offered & ~NET_OFFLOAD_FEATURES & ~bit(VIRTIO_NET_F_MRG_RXBUF) };
/** The big receive buffer a driver with GUEST_TSO posts (§5.1.6.3.1: 65601 bytes). */
const BIG_RX_CHAIN_BYTES = NET_HDR_BYTES + NET_MAX_FRAME_BYTES;
const ALL_TUN_FLAGS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
const GUEST_MAC = parseMac("06:00:ac:10:00:02");
const HOST_MAC = parseMac("06:00:ac:10:00:01");
const pattern = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 13 + seed) & 0xff);
const frame = (n: number, seed = 1) => ethFrame(HOST_MAC, GUEST_MAC, 0x0800, pattern(n - 14, seed));

function withRig(fn: (r: ReturnType<typeof netRig>, peer: number) => void, options = {}, rig: NetRigOptions = {}): void {
  const tap = fakeTap();
  const r = netRig(tap.device, options, rig);
  try {
    fn(r, tap.peer);
  } finally {
    r.dispose();
    tap.close();
  }
}

test("offers MAC, STATUS (link up), MTU only when given, checksum and TSO offloads both ways, MRG_RXBUF; no UFO", () => {
  withRig((r) => {
    const f = r.net.deviceFeatures;
    assert.equal(r.net.deviceId, VIRTIO_ID_NET);
    assert.deepEqual(r.net.queueMaxSizes.length, 2);
    assert.ok(f & bit(VIRTIO_NET_F_MAC));
    assert.ok(f & bit(VIRTIO_NET_F_STATUS));
    assert.ok(!(f & bit(VIRTIO_NET_F_MTU)));
    for (const on of [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN,
      VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_MRG_RXBUF]) {
      assert.ok(f & bit(on), `feature ${on} is offered`);
    }
    assert.ok(f & bit(VIRTIO_RING_F_INDIRECT_DESC) && f & bit(VIRTIO_RING_F_EVENT_IDX), "ring features for big receive buffers");
    for (const off of [VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_GUEST_UFO]) {
      assert.ok(!(f & bit(off)), `feature ${off} is not offered`);
    }
    const c = r.net.initialConfig();
    assert.equal(c.length, virtio_net_config.SIZE);
    assert.deepEqual(c.subarray(virtio_net_config.mac, virtio_net_config.mac + 6), GUEST_MAC);
    assert.equal(getU16(dataView(c), virtio_net_config.status), VIRTIO_NET_S_LINK_UP);
  });
  withRig((r) => {
    assert.ok(r.net.deviceFeatures & bit(VIRTIO_NET_F_MTU));
    assert.equal(getU16(dataView(r.net.initialConfig()), virtio_net_config.mtu), 9000);
  }, { mtu: 9000 });
});

test("MAC addresses and MTUs are checked with one-line messages", () => {
  assert.deepEqual(parseMac("06:00:AC:10:00:02"), Uint8Array.of(6, 0, 0xac, 0x10, 0, 2));
  for (const bad of ["", "06:00:ac:10:00", "06:00:ac:10:00:02:03", "06-00-ac-10-00-02", "0g:00:ac:10:00:02", "6:0:ac:10:0:2"]) {
    assert.throws(() => parseMac(bad), (e: unknown) => e instanceof NetError && e.code === "ENETCONFIG" && /not six hex bytes/.test(e.message), bad);
  }
  assert.throws(() => parseMac("01:00:5e:00:00:01"), /multicast/);
  assert.throws(() => parseMac("00:00:00:00:00:00"), /all zeros/);
  const tap = fakeTap();
  for (const mtu of [0, 67, 65536, 1500.5]) {
    assert.throws(() => netRig(tap.device, { mtu }), /MTU/);
  }
  tap.close();
});

test("a missing TAP, a non-TAP interface and a bad name fail before /dev/net/tun is touched", () => {
  assert.throws(() => checkTap("flintnope0"), (e: unknown) => e instanceof NetError && e.code === "ENETTAP" &&
    e.message.startsWith("Cannot attach network: TAP interface 'flintnope0' does not exist") && !e.message.includes("\n"));
  assert.throws(() => createBackend({ tap: "flintnope0", mac: "06:00:ac:10:00:02" }), /does not exist/);
  assert.throws(() => checkTap("lo"), /interface 'lo' is not a TAP device/);
  assert.throws(() => checkTap("a/b"), /not a valid interface name/);
  assert.throws(() => checkTap("x".repeat(16)), /not a valid interface name/);
  assert.throws(() => createBackend({ tap: "lo", mac: "01:00:00:00:00:00" }), /multicast/, "the MAC is checked first");
});

test("without /sys/class/net (a jail): a TAP is found with SIOCGIFINDEX and attached; a missing one, a TUN and a multi-queue TAP are refused in one line", (t) => {
  if (process.getuid?.() !== 0) return t.skip("needs root to make TAP and TUN interfaces");
  const id = process.pid % 100000;
  const names = { tap: `flsys${id}`, tun: `flsyu${id}`, mq: `flsym${id}` };
  try {
    execFileSync("ip", ["tuntap", "add", "dev", names.tap, "mode", "tap"]);
    execFileSync("ip", ["tuntap", "add", "dev", names.tun, "mode", "tun"]);
    execFileSync("ip", ["tuntap", "add", "dev", names.mq, "mode", "tap", "multi_queue"]);
    const noSysfs = "/nonexistent/sys/class/net";
    checkTap(names.tap, noSysfs);
    const fd = openTap(names.tap, noSysfs);
    try {
      assert.match(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"), new RegExp(`^iff:\\s+${names.tap}$`, "m"), "attached to the TAP");
    } finally {
      closeSync(fd);
    }
    assert.throws(() => checkTap("flintnope0", noSysfs), (e: unknown) => e instanceof NetError && e.code === "ENETTAP" &&
      e.message === "Cannot attach network: TAP interface 'flintnope0' does not exist in this network namespace (create it with 'ip tuntap add dev flintnope0 mode tap')");
    for (const name of [names.tun, names.mq, "lo"]) {
      assert.throws(() => openTap(name, noSysfs), (e: unknown) => e instanceof NetError && e.code === "ENETTAP" &&
        e.message === `Cannot attach network: TAP '${name}' cannot be attached (TUNSETIFF: EINVAL, it is not a single-queue TAP)`, name);
    }
    assert.throws(() => execFileSync("ip", ["link", "show", "flintnope0"], { stdio: "ignore" }), "no interface was made for the missing name");
  } finally {
    for (const n of Object.values(names)) spawnSync("ip", ["link", "del", n]);
  }
});

test("TX: header + frame, split anywhere, reach the TAP as one packet; the chain comes back with length 0", () => {
  withRig((r, peer) => {
    const f = frame(200);
    const pkt = concat(netHeader(), f);
    const u = r.send([pkt.subarray(0, 5), pkt.subarray(5, 30), pkt.subarray(30)]);
    assert.ok(u);
    assert.equal(u.len, 0);
    assert.deepEqual(readPacket(peer), pkt);
    assert.deepEqual(r.ctx.usedNotifications, [NET_TX_QUEUE]);
    assert.equal(r.net.metrics.txFrames, 1);
    assert.equal(r.net.metrics.txBytes, 200);
    assert.equal(r.ctx.faults.length, 0);
  });
});

test("TX: a batch of chains is sent in order with one notification, and returned with one used idx update", () => {
  withRig((r, peer) => {
    const publishes = recordPublishes(r.ctx.queues[NET_TX_QUEUE]!);
    const pkts = Array.from({ length: 10 }, (_, i) => concat(netHeader(), frame(60 + i, i)));
    const heads = pkts.map((p) => r.tx.addChain({ readable: [p] }));
    r.net.onNotify(NET_TX_QUEUE);
    assert.deepEqual(r.tx.popAllUsed().map((u) => [u.head, u.len]), heads.map((h) => [h, 0]));
    for (const p of pkts) assert.deepEqual(readPacket(peer), p);
    assert.deepEqual(r.ctx.usedNotifications, [NET_TX_QUEUE]);
    assert.deepEqual(publishes, [10]);
  });
});

test("TX: malformed, oversized and un-negotiated offload packets are dropped and counted, never sent", () => {
  withRig((r, peer) => {
    const hdr = netHeader();
    assert.equal(r.send([hdr.subarray(0, 11)])?.len, 0, "short header");
    assert.equal(r.send([hdr, frame(60).subarray(0, 13)])?.len, 0, "short Ethernet header");
    r.tx.addChain({ readable: [hdr, frame(60)], writable: [16] });
    r.net.onNotify(NET_TX_QUEUE);
    assert.equal(r.tx.popUsed()?.len, 0, "device-writable buffer in a TX chain");
    assert.equal(r.send([hdr, new Uint8Array(NET_MAX_FRAME_BYTES + 1)])?.len, 0, "frame over 64 KiB");
    assert.equal(r.send([netHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM), frame(100)])?.len, 0, "NEEDS_CSUM not negotiated");
    assert.equal(r.send([netHeader(0, VIRTIO_NET_HDR_GSO_TCPV4), frame(100)])?.len, 0, "GSO not negotiated");
    assert.equal(readPacket(peer), undefined, "nothing reached the TAP");
    assert.equal(r.net.metrics.txDropped, 6);
    assert.equal(r.ctx.faults.length, 6);
    assert.equal(r.ctx.failures.length, 0);
    // The largest frame still goes.
    const max = concat(hdr, new Uint8Array(NET_MAX_FRAME_BYTES).fill(7));
    assert.equal(r.send([max])?.len, 0);
    assert.deepEqual(readPacket(peer), max);
  }, {}, NO_OFFLOAD_DRIVER);
});

test("RX: a packet from the TAP lands in a receive chain with num_buffers = 1", () => {
  withRig((r, peer) => {
    r.addRx(2, [4, 100, RX_CHAIN_BYTES - 104]);
    assert.ok(r.ctx.watches.has(r.fd), "the device polls the TAP");
    const f = frame(300, 9);
    const sent = concat(netHeader(), f);
    sent[virtio_net_hdr_v1.num_buffers] = 0xaa; // the kernel leaves these bytes alone; the device must set them
    assert.equal(writePacket(peer, sent), sent.length);
    r.ctx.fire(r.fd);
    const u = r.rx.popUsed();
    assert.ok(u);
    assert.equal(u.len, NET_HDR_BYTES + 300);
    const hdr = dataView(u.written.subarray(0, NET_HDR_BYTES));
    assert.equal(getU16(hdr, virtio_net_hdr_v1.num_buffers), 1);
    assert.equal(hdr.getUint8(virtio_net_hdr_v1.flags), 0);
    assert.equal(hdr.getUint8(virtio_net_hdr_v1.gso_type), 0);
    assert.deepEqual(u.written.subarray(NET_HDR_BYTES), f);
    assert.deepEqual(r.ctx.usedNotifications, [NET_RX_QUEUE]);
    assert.equal(r.net.metrics.rxFrames, 1);
  });
});

test("RX: without buffers the device stops polling the TAP, keeps the packet, and resumes on a queue-0 kick", () => {
  withRig((r, peer) => {
    r.addRx(1);
    const pkts = [1, 2, 3].map((i) => concat(netHeader(), frame(100 + i, i)));
    for (const p of pkts) writePacket(peer, p);
    r.ctx.fire(r.fd);
    assert.equal(r.rx.popAllUsed().length, 1);
    assert.ok(!r.ctx.watches.has(r.fd), "no buffers left: the TAP is not polled (no busy loop)");
    r.addRx(4);
    assert.ok(r.ctx.watches.has(r.fd), "buffers again: polling again");
    const used = r.rx.popAllUsed();
    assert.equal(used.length, 2, "the held packet and the one behind it were delivered on the kick");
    assert.deepEqual(used[0]!.written.subarray(NET_HDR_BYTES), pkts[1]!.subarray(NET_HDR_BYTES));
    assert.deepEqual(used[1]!.written.subarray(NET_HDR_BYTES), pkts[2]!.subarray(NET_HDR_BYTES));
    r.ctx.fire(r.fd);
    assert.equal(r.rx.popUsed(), undefined);
    assert.ok(r.ctx.watches.has(r.fd), "free buffers remain: still polling");
  });
});

test("RX: a packet too big for the buffer is dropped (chain returned empty); readable RX buffers are a guest fault", () => {
  withRig((r, peer) => {
    r.addRx(1);
    writePacket(peer, concat(netHeader(), frame(RX_CHAIN_BYTES)));
    r.ctx.fire(r.fd);
    assert.equal(r.rx.popUsed()?.len, 0);
    assert.equal(r.ctx.faults.length, 0, "an MTU mismatch is not the guest's fault");
    r.rx.addChain({ readable: [new Uint8Array(4)], writable: [RX_CHAIN_BYTES] });
    r.net.onNotify(NET_RX_QUEUE);
    writePacket(peer, concat(netHeader(), frame(60)));
    r.ctx.fire(r.fd);
    assert.equal(r.rx.popUsed()?.len, 0);
    assert.equal(r.ctx.faults.length, 1);
    assert.equal(r.net.metrics.rxDropped, 2);
    // Runts from the host and headers claiming offloads never reach the guest.
    r.addRx(1);
    writePacket(peer, new Uint8Array(NET_HDR_BYTES + 10));
    writePacket(peer, concat(netHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM), frame(60)));
    r.ctx.fire(r.fd);
    assert.equal(r.rx.popUsed(), undefined);
    assert.equal(r.net.metrics.rxDropped, 4);
    assert.equal(r.net.metrics.rxOffloadDropped, 1);
    assert.equal(r.ctx.failures.length, 0);
  }, {}, NO_MRG_DRIVER);
});

/** Records how the device returns chains on `q`: one entry per publish, the number of chains in it. */
function recordPublishes(q: VirtQueue): number[] {
  const publishes: number[] = [];
  const one = q.pushUsed.bind(q), many = q.pushUsedMany.bind(q);
  q.pushUsed = (head, n) => { publishes.push(1); one(head, n); };
  q.pushUsedMany = (heads, lens, count) => { publishes.push(count); many(heads, lens, count); };
  return publishes;
}

/** Checks that `used` holds `packet` as mergeable buffers (§5.1.6.4): all but the last full, num_buffers in the first. */
function assertMerged(used: UsedEntry[], packet: Uint8Array, chainBytes: number[]): void {
  const want = packet.slice();
  setU16(dataView(want), virtio_net_hdr_v1.num_buffers, used.length);
  let at = 0;
  used.forEach((u, i) => {
    const expectLen = Math.min(chainBytes[i]!, want.length - at);
    assert.equal(u.len, expectLen, `chain ${i} of ${used.length}: used len`);
    assert.deepEqual(u.written, want.subarray(at, at + expectLen), `chain ${i} of ${used.length}: bytes`);
    at += expectLen;
  });
  assert.equal(at, want.length, "the chains hold the whole packet and no more");
}

test("RX with MRG_RXBUF: a packet spans 1..N chains, all but the last full, num_buffers in the first, published at once", () => {
  withRig((r, peer) => {
    const q = r.ctx.queues[NET_RX_QUEUE]!;
    const publishes = recordPublishes(q);
    const chainBytes = 256;
    r.addRx(60, [chainBytes]);
    // Exactly one chain, one byte more, exactly three chains, many chains.
    for (const [n, bytes] of [[1, chainBytes], [2, chainBytes + 1], [3, 3 * chainBytes], [23, 5700]] as const) {
      publishes.length = 0;
      const pkt = concat(netHeader(), frame(bytes - NET_HDR_BYTES, n));
      pkt[virtio_net_hdr_v1.num_buffers] = 0xaa;
      writePacket(peer, pkt);
      r.ctx.fire(r.fd);
      const used = r.rx.popAllUsed();
      assert.equal(used.length, n, `a ${bytes}-byte packet takes ${n} chains`);
      assertMerged(used, pkt, new Array(n).fill(chainBytes));
      assert.equal(getU16(dataView(used[0]!.written), virtio_net_hdr_v1.num_buffers), n);
      assert.deepEqual(publishes, [n], "one used idx update for the whole packet");
    }
    assert.equal(r.net.metrics.rxFrames, 4);
    assert.equal(r.net.metrics.rxDropped, 0);
    // Chains of different sizes (a driver's moving average changes them): filled in order.
    const sizes = [100, 3000, 40];
    for (const len of sizes) r.rx.addChain({ writable: [len] });
    r.net.onNotify(NET_RX_QUEUE);
    r.rx.popAllUsed();
    // What is left of the 60 chains first: 60 - 29 = 31 chains of 256 bytes, then the three.
    const big = concat(netHeader(), frame(31 * chainBytes + 100 + 5 - NET_HDR_BYTES, 7));
    writePacket(peer, big);
    r.ctx.fire(r.fd);
    const used = r.rx.popAllUsed();
    assert.equal(used.length, 33);
    assertMerged(used, big, [...new Array(31).fill(chainBytes), 100, 3000]);
  }, {}, { queueSize: 128 });
});

test("RX with MRG_RXBUF: a packet larger than the chains available waits, whole, and arrives when the driver adds more", () => {
  withRig((r, peer) => {
    r.addRx(2, [200]);
    const first = concat(netHeader(), frame(1000, 3)), second = concat(netHeader(), frame(150, 4));
    writePacket(peer, first);
    writePacket(peer, second);
    r.ctx.fire(r.fd);
    assert.deepEqual(r.rx.popAllUsed(), [], "nothing published while the packet does not fit");
    assert.ok(!r.ctx.watches.has(r.fd), "no buffers: the TAP is not polled");
    r.addRx(3, [200]);
    assert.deepEqual(r.rx.popAllUsed(), [], "still 2 bytes short");
    r.addRx(2, [200]);
    const used = r.rx.popAllUsed();
    assert.equal(used.length, 7, "six chains for the first packet, the seventh for the one behind it");
    assertMerged(used.slice(0, 6), first, new Array(6).fill(200));
    assertMerged(used.slice(6), second, [200]);
    assert.equal(r.net.metrics.rxDropped, 0);
    assert.equal(r.net.metrics.rxFrames, 2);
    assert.ok(r.ctx.watches.has(r.fd), "polling again");
  });
});

test("RX with MRG_RXBUF: a ring too small for a packet drops it, keeps its chains held, and goes on with the next", () => {
  withRig((r, peer) => {
    r.addRx(8, [64]);
    const huge = concat(netHeader(), frame(8 * 64, 5)), small = concat(netHeader(), frame(60, 6)), third = concat(netHeader(), frame(100, 7));
    writePacket(peer, huge);
    writePacket(peer, small);
    r.ctx.fire(r.fd);
    const used = r.rx.popAllUsed();
    assert.equal(r.net.metrics.rxDropped, 1);
    assert.equal(r.ctx.faults.length, 0, "a small ring is not a fault");
    assert.equal(used.length, 2, "the guest sees no trace of the dropped packet");
    assertMerged(used, small, [64, 64]);
    writePacket(peer, third);
    r.ctx.fire(r.fd);
    assertMerged(r.rx.popAllUsed(), third, [64, 64]);
  }, {}, { queueSize: 8 });
});

/** Counts the device's reads of the TAP: into its own buffer (read) and in place (readv). */
function countReads(): { read: number; readv: number; restore(): void } {
  const read = sys.read, readv = sys.readv;
  const counts = {
    read: 0, readv: 0,
    restore() { sys.read = read; sys.readv = readv; },
  };
  sys.read = (...a) => { counts.read++; return read(...a); };
  sys.readv = (...a) => { counts.readv++; return readv(...a); };
  return counts;
}

test("RX with MRG_RXBUF: with chains for a 64 KiB frame held, frames are read in place and publish only the chains they fill", () => {
  const reads = countReads();
  try {
    withRig((r, peer) => {
      const q = r.ctx.queues[NET_RX_QUEUE]!;
      const publishes = recordPublishes(q);
      // Linux's mergeable buffers: about an MTU each. 48 of 1536 bytes hold a 64 KiB frame.
      r.addRx(60, [1536]);
      reads.read = reads.readv = 0; // the kick's pass found the TAP empty
      const small = concat(netHeader(), frame(60, 1));
      const mid = concat(netHeader(), frame(5000, 2));
      const tso = tcpFrame({ payload: Uint8Array.from({ length: 0xffff - 40 }, (_, i) => i * 7) });
      const big = concat(netHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, { csumStart: tso.csumStart, csumOffset: tso.csumOffset, gsoSize: 1448, hdrLen: tso.headerBytes }), tso.frame);
      for (const pkt of [small, mid, big]) {
        pkt[virtio_net_hdr_v1.num_buffers] = 0xaa;
        writePacket(peer, pkt);
      }
      r.ctx.fire(r.fd);
      const used = r.rx.popAllUsed();
      const chains = (pkt: Uint8Array) => Math.ceil(pkt.length / 1536);
      assert.deepEqual(publishes, [1, 4, chains(big)], "one used idx update per frame, with only its chains");
      assertMerged(used.slice(0, 1), small, [1536]);
      assertMerged(used.slice(1, 5), mid, new Array(4).fill(1536));
      assertMerged(used.slice(5), big, new Array(chains(big)).fill(1536));
      assert.equal(readNetHeader(used[5]!.written).gsoType, VIRTIO_NET_HDR_GSO_TCPV4, "the kernel's offloads reach a guest that took them");
      assert.deepEqual([r.net.metrics.rxFrames, r.net.metrics.rxDropped], [3, 0]);
      // The last look at the TAP found it empty; with 12 chains left, it read into the host buffer.
      assert.deepEqual([reads.readv, reads.read], [3, 1], "the three frames read in place");
    }, {}, { queueSize: 128 });
  } finally {
    reads.restore();
  }
});
test("RX with MRG_RXBUF, read in place: an oversized frame or one with offloads the guest did not take is dropped, its chains kept for the next", () => {
  withRig((r, peer) => {
    const q = r.ctx.queues[NET_RX_QUEUE]!;
    const publishes = recordPublishes(q);
    r.addRx(50, [1536]);
    const first = r.rx.popAllUsed();
    assert.equal(first.length, 0);
    writePacket(peer, concat(netHeader(), frame(NET_MAX_FRAME_BYTES + 100, 1)));
    writePacket(peer, concat(netHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM), frame(200, 2)));
    const ok = concat(netHeader(), frame(2000, 3));
    writePacket(peer, ok);
    r.ctx.fire(r.fd);
    assert.deepEqual(publishes, [2], "only the good frame's chains come back");
    assertMerged(r.rx.popAllUsed(), ok, [1536, 1536]);
    assert.deepEqual([r.net.metrics.rxDropped, r.net.metrics.rxOffloadDropped, r.net.metrics.rxFrames], [2, 1, 1]);
    assert.equal(r.ctx.faults.length, 0);
  }, {}, { ...NO_OFFLOAD_DRIVER, queueSize: 64 });
});

test("RX with MRG_RXBUF: chains too fragmented for one readv (over IOV_MAX pieces) get the frame through the host buffer", () => {
  const reads = countReads();
  try {
    withRig((r, peer) => {
      // Nine chains of 128 pieces of 64 bytes: room for 64 KiB in 1152 pieces.
      for (let i = 0; i < 9; i++) r.rx.addChain({ writable: new Array(128).fill(64), indirect: true });
      r.net.onNotify(NET_RX_QUEUE);
      const pkt = concat(netHeader(), frame(20_000, 4));
      writePacket(peer, pkt);
      r.ctx.fire(r.fd);
      const used = r.rx.popAllUsed();
      assertMerged(used, pkt, new Array(used.length).fill(128 * 64));
      assert.equal(reads.readv, 0, "never read in place");
      assert.equal(r.ctx.faults.length, 0);
    }, {}, { queueSize: 128, rxRing: { indirect: true } });
  } finally {
    reads.restore();
  }
});

test("RX with MRG_RXBUF: while the device holds room for a 64 KiB frame the driver's refills need no kick; once the ring runs dry, they do", () => {
  for (const eventIdx of [true, false]) {
    withRig((r, peer) => {
      // 50 buffers of 1536 bytes: the device takes 43 (room for 64 KiB) and asks for no kicks.
      r.addRx(50, [1536]);
      r.rx.needsKick();
      r.rx.addChain({ writable: [1536] });
      assert.equal(r.rx.needsKick(), false, `a refill while the device holds enough costs no exit (EVENT_IDX ${eventIdx})`);
      // A 64 KiB frame takes 43 chains; the 8 left in the ring are not enough, so kicks are wanted again.
      const tso = tcpFrame({ payload: new Uint8Array(0xffff - 40) });
      writePacket(peer, concat(netHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, { csumStart: tso.csumStart, csumOffset: tso.csumOffset, gsoSize: 1448, hdrLen: tso.headerBytes }), tso.frame));
      r.ctx.fire(r.fd);
      assert.equal(r.rx.popAllUsed().length, 43);
      r.rx.addChain({ writable: [1536] });
      assert.equal(r.rx.needsKick(), true, `the ring ran dry: a refill kicks (EVENT_IDX ${eventIdx})`);
      // The kick: the device takes the new chain and still holds less than 64 KiB, so it keeps asking.
      r.net.onNotify(NET_RX_QUEUE);
      r.rx.addChain({ writable: [1536] });
      assert.equal(r.rx.needsKick(), true);
      assert.equal(r.ctx.faults.length, 0);
    }, {}, { queueSize: 128, rxRing: { eventIdx } });
  }
});

test("RX with MRG_RXBUF, read in place: the chains' pages are marked dirty for a Diff snapshot", () => {
  withRig((r, peer) => {
    r.addRx(48, [4096]);
    r.mem.clearDirty();
    writePacket(peer, concat(netHeader(), frame(3 * 4096, 5)));
    r.ctx.fire(r.fd);
    const used = r.rx.popAllUsed();
    assert.equal(used.length, 4);
    const dirty = r.mem.regions[0]!.dirty!;
    // Every page the frame was written to (each chain's first `len` bytes).
    for (const u of used) {
      let left = u.len;
      for (const b of u.writable) {
        const n = Math.min(b.len, left);
        for (let page = Math.floor(b.addr / 4096); page * 4096 < b.addr + n; page++) assert.equal(dirty[page], 1, `page ${page} of chain ${u.head}`);
        left -= n;
      }
    }
  }, {}, { queueSize: 64, trackDirty: true });
});

test("RX with MRG_RXBUF: chains with readable buffers, no writable bytes or less than a header are faults, returned empty; the packet goes on", () => {
  withRig((r, peer) => {
    const q = r.ctx.queues[NET_RX_QUEUE]!;
    const publishes = recordPublishes(q);
    const good1 = r.rx.addChain({ writable: [100] }, false);
    const readable = r.rx.addChain({ readable: [new Uint8Array(4)], writable: [500] }, false);
    const empty = r.rx.addChain({ writable: [0] }, false);
    const tiny = r.rx.addChain({ writable: [4, 4, 3] }, false);
    const good2 = r.rx.addChain({ writable: [6, 6, 500] }, false);
    r.rx.publish();
    r.net.onNotify(NET_RX_QUEUE);
    const pkt = concat(netHeader(), frame(300, 8));
    writePacket(peer, pkt);
    r.ctx.fire(r.fd);
    const used = r.rx.popAllUsed();
    assert.deepEqual(used.map((u) => u.head), [readable, empty, tiny, good1, good2], "bad chains come back at once, the packet's together after");
    assert.deepEqual(used.slice(0, 3).map((u) => u.len), [0, 0, 0]);
    assertMerged(used.slice(3), pkt, [100, 512]);
    assert.deepEqual(publishes, [1, 1, 1, 2]);
    assert.equal(r.ctx.faults.length, 3);
    assert.equal(r.net.metrics.rxDropped, 0);
    assert.equal(r.ctx.failures.length, 0);
  });
});

test("RX with MRG_RXBUF: a guest that keeps adding bad chains gets one bounded pass, then another after a poll", () => {
  withRig((r, peer) => {
    const q = r.ctx.queues[NET_RX_QUEUE]!;
    const pop = q.pop.bind(q);
    let pops = 0;
    // A second vCPU refills the ring as fast as the device takes from it.
    q.pop = () => {
      // Without a budget the pass would never end: stop it here (the device then fails, and the test with it).
      if (++pops > 100_000) throw new Error("the device kept popping");
      r.rx.popAllUsed();
      if (!q.hasAvailable()) r.rx.addChain({ readable: [new Uint8Array(4)], writable: [64] });
      return pop();
    };
    writePacket(peer, concat(netHeader(), frame(100, 1)));
    r.ctx.fire(r.fd);
    assert.ok(pops > 100 && pops < 10_000, `the pass ended (${pops} chains)`);
    assert.deepEqual(r.ctx.kicks, [NET_RX_QUEUE], "and asked to be called again");
    assert.equal(r.ctx.failures.length, 0);
  }, {}, { queueSize: 16 });
});

test("RX without MRG_RXBUF: num_buffers is 1 and a packet needs one chain that holds it", () => {
  withRig((r, peer) => {
    r.addRx(3, [200]);
    const pkt = concat(netHeader(), frame(300, 2));
    writePacket(peer, pkt);
    r.ctx.fire(r.fd);
    assert.deepEqual(r.rx.popAllUsed().map((u) => u.len), [0], "too big for one chain: dropped, not spread");
    writePacket(peer, concat(netHeader(), frame(100, 2)));
    r.ctx.fire(r.fd);
    const [u] = r.rx.popAllUsed();
    assert.equal(getU16(dataView(u!.written), virtio_net_hdr_v1.num_buffers), 1);
  }, {}, NO_MRG_DRIVER);
});

test("activation sets the TAP's offloads from the driver's GUEST_* acceptance; reset and shutdown turn them off", () => {
  const cases: [string, bigint | undefined, number[]][] = [
    ["everything offered", undefined, [ALL_TUN_FLAGS]],
    ["GUEST_CSUM only", bits(VIRTIO_NET_F_GUEST_CSUM), [TUN_F_CSUM]],
    ["GUEST_CSUM + GUEST_TSO4", bits(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4), [TUN_F_CSUM | TUN_F_TSO4]],
    ["GUEST_CSUM + GUEST_TSO6 + GUEST_ECN", bits(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN), [TUN_F_CSUM | TUN_F_TSO6 | TUN_F_TSO_ECN]],
    // Host-side offloads do not change what the kernel sends the guest: the TAP stays at 0, no call.
    ["TX offloads only", bits(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN), []],
    ["GUEST_TSO4 without GUEST_CSUM (§5.1.3.1)", bits(VIRTIO_NET_F_GUEST_TSO4), []],
  ];
  for (const [what, features, calls] of cases) {
    withRig((r) => {
      assert.deepEqual(r.offloads.calls, calls, what);
      assert.equal(r.net.metrics.tapOffloads, calls[0] ?? 0);
      r.net.reset();
      assert.deepEqual(r.offloads.calls, calls.length ? [...calls, 0] : [], `${what}: reset`);
      r.net.activate(r.ctx);
      r.net.shutdown();
      assert.deepEqual(r.offloads.calls, calls.length ? [...calls, 0, ...calls, 0] : [], `${what}: activate again, shut down`);
      assert.equal(r.net.metrics.hostErrors, 0);
    }, {}, features === undefined ? {} : { features: bits(VIRTIO_NET_F_MAC) | features });
  }
});

test("a TAP that refuses TUNSETOFFLOAD is a counted host error; the device keeps working without RX offloads from the kernel", () => {
  withRig((r, peer) => {
    assert.deepEqual(r.offloads.calls, [ALL_TUN_FLAGS]);
    assert.equal(r.net.metrics.hostErrors, 1);
    assert.equal(r.net.metrics.lastHostError, "EINVAL");
    assert.equal(r.net.metrics.tapOffloads, 0);
    assert.equal(r.ctx.failures.length, 0);
    // Complete frames still flow both ways.
    r.addRx(1);
    writePacket(peer, concat(netHeader(), frame(200)));
    r.ctx.fire(r.fd);
    assert.equal(r.rx.popUsed()?.len, NET_HDR_BYTES + 200);
    assert.equal(r.send([netHeader(), frame(100)])?.len, 0);
    assert.ok(readPacket(peer));
  }, {}, { offloadFail: -EINVAL });
});

test("a driver that accepts TSO or ECN without what they require (§5.1.3.1) gets a fault, and those offloads stay refused", () => {
  withRig((r, peer) => {
    assert.equal(r.ctx.faults.length, 2);
    assert.match(r.ctx.faults[0]!, /^virtio-net: driver accepted VIRTIO_NET_F_HOST_TSO4 without VIRTIO_NET_F_CSUM/);
    assert.match(r.ctx.faults[1]!, /GUEST_ECN without VIRTIO_NET_F_GUEST_TSO4 or VIRTIO_NET_F_GUEST_TSO6/);
    assert.deepEqual(r.offloads.calls, [TUN_F_CSUM]);
    const t = tcpFrame({ payload: pattern(3000, 1) });
    const tso = concat(netHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, { csumStart: t.csumStart, csumOffset: t.csumOffset, gsoSize: 1448 }), t.frame);
    assert.equal(r.send([tso])?.len, 0);
    assert.equal(readPacket(peer), undefined);
    assert.equal(r.net.metrics.txDropped, 1);
  }, {}, { features: bits(VIRTIO_NET_F_MAC, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN) });
});

test("TX with offloads negotiated: partial-checksum and 64 KiB TSO packets reach the TAP with only the checked header fields", () => {
  withRig((r, peer) => {
    const NC = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    const small = tcpFrame({ payload: pattern(500, 2) });
    const partial = concat(netHeader(NC | VIRTIO_NET_HDR_F_DATA_VALID, 0, { csumStart: small.csumStart, csumOffset: small.csumOffset, gsoSize: 9, numBuffers: 5 }), small.frame);
    assert.equal(r.send([partial.subarray(0, 7), partial.subarray(7)])?.len, 0);
    const got = readPacket(peer)!;
    assert.deepEqual(readNetHeader(got), { flags: NC, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: small.csumStart, csumOffset: small.csumOffset, numBuffers: 0 });
    assert.deepEqual(got.subarray(NET_HDR_BYTES), small.frame);
    // The largest TSO packet: an IPv6 header and a 64 KiB payload.
    const big = tcpFrame({ ipv6: true, payload: pattern(NET_MAX_FRAME_BYTES - 14 - 40 - 20, 3) });
    assert.equal(big.frame.length, NET_MAX_FRAME_BYTES);
    const fields = { csumStart: big.csumStart, csumOffset: big.csumOffset, gsoSize: 1440, hdrLen: big.headerBytes };
    const tso = concat(netHeader(NC, VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN, fields), big.frame);
    const pieces = [tso.subarray(0, 12), tso.subarray(12, 4096), tso.subarray(4096, 40000), tso.subarray(40000)];
    assert.equal(r.send(pieces)?.len, 0);
    const gotBig = readPacket(peer, 70_000)!;
    assert.deepEqual(readNetHeader(gotBig), { flags: NC, gsoType: VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN, ...fields, numBuffers: 0 });
    assert.ok(Buffer.from(gotBig.subarray(NET_HDR_BYTES)).equals(Buffer.from(big.frame)));
    assert.equal(r.net.metrics.txFrames, 2);
    assert.equal(r.ctx.faults.length, 0);
    // One byte more is not a frame the device moves.
    assert.equal(r.send([concat(tso, Uint8Array.of(0))])?.len, 0);
    assert.equal(readPacket(peer), undefined);
  });
});

test("TX: a hostile header is dropped as a guest fault even when every offload is negotiated", () => {
  withRig((r, peer) => {
    const NC = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    const t = tcpFrame({ payload: pattern(3000, 4) });
    const ok = { csumStart: t.csumStart, csumOffset: t.csumOffset, gsoSize: 1448, hdrLen: t.headerBytes };
    const lies: [number, number, Partial<typeof ok>][] = [
      [NC, 0, { csumStart: t.frame.length }],
      [NC, 0, { csumStart: 2, csumOffset: 2 }],
      [NC, VIRTIO_NET_HDR_GSO_TCPV4, { gsoSize: 0 }],
      [0, VIRTIO_NET_HDR_GSO_TCPV4, {}],
      [NC, VIRTIO_NET_HDR_GSO_TCPV6, {}],
      [NC, VIRTIO_NET_HDR_GSO_TCPV4, { csumOffset: 6 }],
      [NC, VIRTIO_NET_HDR_GSO_TCPV4, { hdrLen: t.frame.length + 1 }],
      [NC, 3, {}],
    ];
    for (const [flags, gso, fields] of lies) assert.equal(r.send([netHeader(flags, gso, { ...ok, ...fields }), t.frame])?.len, 0);
    assert.equal(readPacket(peer), undefined);
    assert.equal(r.net.metrics.txDropped, lies.length);
    assert.equal(r.ctx.faults.length, lies.length);
    assert.equal(r.ctx.failures.length, 0);
  });
});

test("RX: GSO and partial-checksum frames from the TAP reach a guest that negotiated them, a 64 KiB one in one big buffer", () => {
  withRig((r, peer) => {
    const NC = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    const big = tcpFrame({ ipv6: true, payload: pattern(NET_MAX_FRAME_BYTES - 14 - 40 - 20, 5) });
    const fields = { csumStart: big.csumStart, csumOffset: big.csumOffset, gsoSize: 1440, hdrLen: big.headerBytes };
    const gso = concat(netHeader(NC, VIRTIO_NET_HDR_GSO_TCPV6, fields), big.frame);
    const small = tcpFrame({ payload: pattern(300, 6) });
    const partial = concat(netHeader(NC, 0, { csumStart: small.csumStart, csumOffset: small.csumOffset }), small.frame);
    // Linux's big-packets buffers: the header, then page-sized pieces.
    r.addRx(2, [NET_HDR_BYTES, ...Array<number>(16).fill(4096), BIG_RX_CHAIN_BYTES - NET_HDR_BYTES - 16 * 4096]);
    assert.equal(writePacket(peer, gso), gso.length);
    assert.equal(writePacket(peer, partial), partial.length);
    r.ctx.fire(r.fd);
    const [u1, u2] = r.rx.popAllUsed();
    assert.ok(u1 && u2);
    assert.equal(u1.len, gso.length);
    assert.deepEqual(readNetHeader(u1.written), { flags: NC, gsoType: VIRTIO_NET_HDR_GSO_TCPV6, ...fields, numBuffers: 1 });
    assert.ok(Buffer.from(u1.written.subarray(NET_HDR_BYTES, u1.len)).equals(Buffer.from(big.frame)));
    assert.equal(u2.len, partial.length);
    assert.deepEqual(readNetHeader(u2.written), { flags: NC, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: small.csumStart, csumOffset: small.csumOffset, numBuffers: 1 });
    assert.equal(r.net.metrics.rxFrames, 2);
    assert.equal(r.net.metrics.rxDropped, 0);
  });
});

test("RX: offloaded frames are dropped and counted for a guest that did not negotiate them; DATA_VALID is cleared", () => {
  withRig((r, peer) => {
    const NC = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    const t = tcpFrame({ payload: pattern(3000, 7) });
    const csum = { csumStart: t.csumStart, csumOffset: t.csumOffset };
    r.addRx(4, [BIG_RX_CHAIN_BYTES]);
    writePacket(peer, concat(netHeader(NC, VIRTIO_NET_HDR_GSO_TCPV4, { ...csum, gsoSize: 1448 }), t.frame)); // TSO4 not negotiated
    writePacket(peer, concat(netHeader(NC, VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN, { ...csum, gsoSize: 1448 }), t.frame)); // ECN not negotiated
    writePacket(peer, concat(netHeader(NC, VIRTIO_NET_HDR_GSO_TCPV6, { ...csum, gsoSize: 1448 }), t.frame)); // accepted
    writePacket(peer, concat(netHeader(VIRTIO_NET_HDR_F_DATA_VALID), t.frame)); // kept: GUEST_CSUM negotiated
    r.ctx.fire(r.fd);
    const used = r.rx.popAllUsed();
    assert.equal(used.length, 2);
    assert.equal(readNetHeader(used[0]!.written).gsoType, VIRTIO_NET_HDR_GSO_TCPV6);
    assert.equal(readNetHeader(used[1]!.written).flags, VIRTIO_NET_HDR_F_DATA_VALID);
    assert.equal(r.net.metrics.rxOffloadDropped, 2);
    assert.equal(r.ctx.faults.length, 0, "what the kernel sends is not the guest's fault");
  }, {}, { features: bits(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO6) });
  withRig((r, peer) => {
    r.addRx(2);
    const t = tcpFrame({ payload: pattern(100, 8) });
    writePacket(peer, concat(netHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, { csumStart: t.csumStart, csumOffset: t.csumOffset }), t.frame));
    writePacket(peer, concat(netHeader(VIRTIO_NET_HDR_F_DATA_VALID), t.frame));
    r.ctx.fire(r.fd);
    const used = r.rx.popAllUsed();
    assert.equal(used.length, 1, "the partial checksum is dropped");
    assert.equal(readNetHeader(used[0]!.written).flags, 0, "§5.1.6.4.1: flags are zero without GUEST_CSUM");
    assert.deepEqual(used[0]!.written.subarray(NET_HDR_BYTES), t.frame);
    assert.equal(r.net.metrics.rxOffloadDropped, 1);
  }, {}, NO_OFFLOAD_DRIVER);
});

test("a broken ring fails the device and stops polling; reset drops the held packet", () => {
  withRig((r, peer) => {
    r.addRx(1);
    r.rx.setAvailIdx(r.rx.availIdx + 100); // more than the queue size ahead
    writePacket(peer, concat(netHeader(), frame(60)));
    r.ctx.fire(r.fd);
    assert.equal(r.ctx.failures.length, 1);
    assert.match(r.ctx.failures[0]!, /^virtio-net: /);
    assert.ok(!r.ctx.watches.has(r.fd));
    r.net.onNotify(NET_TX_QUEUE); // after failure: ignored, no throw
    r.net.reset();
  });
});

test("after reset and re-activation the device polls the TAP again", () => {
  withRig((r, peer) => {
    r.net.reset();
    r.ctx.watches.clear();
    r.net.activate(r.ctx);
    assert.equal(r.ctx.watches.get(r.fd)?.events, POLLIN);
    r.addRx(1);
    writePacket(peer, concat(netHeader(), frame(80)));
    r.ctx.fire(r.fd);
    assert.equal(r.rx.popUsed()?.len, NET_HDR_BYTES + 80);
  });
});

test("a real TAP in a private network namespace: ARP, ping, and TCP both ways with and without offloads", { skip: !netnsAvailable && "needs root and iproute2" }, () => {
  const ns = `flint-net-${process.pid}`;
  const tap = "ftap0";
  withTapNamespace({ ns, tap, address: "10.77.0.1/24", loopbackUp: true }, () => {
    const script = fileURLToPath(new URL("./testing/net-tap-scenario.js", import.meta.url));
    const run = spawnSync("ip", ["netns", "exec", ns, process.execPath, script, tap], { encoding: "utf8", timeout: 30_000 });
    assert.equal(run.status, 0, `scenario failed:\n${run.stdout}\n${run.stderr}`);
    const report = JSON.parse(run.stdout) as TapScenarioReport;
    assert.equal(report.missingTapError?.startsWith("Cannot attach network: TAP interface 'ftapnone' does not exist"), true, report.missingTapError);
    assert.equal(report.tapRxPacketsDelta, 2, "both guest frames arrived on the TAP (its rx_packets)");
    assert.ok(report.arpReply, "the kernel answered the guest's ARP request");
    assert.equal(report.arpReply.senderMac, report.hostMac, "from the TAP's MAC");
    assert.equal(report.arpReply.numBuffers, 1);
    assert.equal(report.arpReply.usedLen, NET_HDR_BYTES + report.arpReply.frameLen);
    assert.ok(report.echoReply, "the kernel answered the guest's ping");
    assert.equal(report.echoReply.payloadIntact, true);
    assert.equal(report.echoReply.numBuffers, 1);
    assert.equal(report.echoReply.gsoType, 0);
    assert.equal(report.faults, 0);
    assert.equal(report.failures, 0);
    assert.deepEqual(report.pingOffloadCalls, [ALL_TUN_FLAGS, 0], "offloads on at activation, off at shutdown");

    // Every offload negotiated: the kernel hands the device GSO and partial-checksum frames.
    const on = report.tcpOffloaded!;
    const why = JSON.stringify(on);
    assert.equal(on.error, undefined, why);
    assert.deepEqual(on.tunOffloadCalls, [ALL_TUN_FLAGS, 0], why);
    assert.equal(on.downloadIntact, true, why);
    assert.ok(on.rxGsoFrames > 0 && on.rxPartialCsumFrames > 0 && on.rxMaxFrame > 1514, why);
    assert.equal(on.rxChecksumsValid, true, "completing csum_start/csum_offset gives valid TCP checksums");
    assert.deepEqual(on.server, { n: on.uploadBytes, sha: on.uploadSha }, "the kernel took the guest's TSO packet");
    assert.equal(on.hostErrors, 0, why);
    assert.deepEqual([on.faults, on.failures, on.txDropped], [[], [], 0], why);

    // No offloads negotiated: the TAP's offloads stay off and the kernel sends complete frames only.
    const off = report.tcpPlain!;
    const why2 = JSON.stringify(off);
    assert.equal(off.error, undefined, why2);
    assert.deepEqual(off.tunOffloadCalls, [], why2);
    assert.equal(off.downloadIntact, true, why2);
    assert.ok(off.rxTcpFrames > 0, why2);
    assert.deepEqual([off.rxGsoFrames, off.rxPartialCsumFrames], [0, 0], why2);
    assert.ok(off.rxMaxFrame <= 1514, why2);
    assert.equal(off.rxChecksumsValid, true, why2);
    assert.deepEqual(off.server, { n: off.uploadBytes, sha: off.uploadSha }, why2);
    assert.deepEqual([off.faults, off.failures, off.hostErrors], [[], [], 0], why2);
  });
});
