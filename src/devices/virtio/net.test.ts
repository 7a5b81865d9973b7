import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  POLLIN, VIRTIO_ID_NET, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_S_LINK_UP, virtio_net_config, virtio_net_hdr_v1,
} from "../../linux/abi.generated.js";
import { dataView, getU16 } from "../../memory/le.js";
import {
  checkTap, createBackend, NET_HDR_BYTES, NET_MAX_FRAME_BYTES, NET_RX_QUEUE, NET_TX_QUEUE, NetError, parseMac,
} from "./net.js";
import { concat, ethFrame, fakeTap, netHeader, netRig, readPacket, RX_CHAIN_BYTES, writePacket } from "./net-test-rig.js";
import type { TapScenarioReport } from "./net-tap-scenario.js";

const bit = (n: number) => 1n << BigInt(n);
const GUEST_MAC = parseMac("06:00:ac:10:00:02");
const HOST_MAC = parseMac("06:00:ac:10:00:01");
const pattern = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 13 + seed) & 0xff);
const frame = (n: number, seed = 1) => ethFrame(HOST_MAC, GUEST_MAC, 0x0800, pattern(n - 14, seed));

function withRig(fn: (r: ReturnType<typeof netRig>, peer: number) => void, options = {}): void {
  const tap = fakeTap();
  const r = netRig(tap.device, options);
  try {
    fn(r, tap.peer);
  } finally {
    r.dispose();
    tap.close();
  }
}

test("offers MAC, STATUS (link up) and MTU only when given; no offloads", () => {
  withRig((r) => {
    const f = r.net.deviceFeatures;
    assert.equal(r.net.deviceId, VIRTIO_ID_NET);
    assert.deepEqual(r.net.queueMaxSizes.length, 2);
    assert.ok(f & bit(VIRTIO_NET_F_MAC));
    assert.ok(f & bit(VIRTIO_NET_F_STATUS));
    assert.ok(!(f & bit(VIRTIO_NET_F_MTU)));
    for (const off of [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MRG_RXBUF]) {
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

test("TX: a batch of chains is sent in order with one notification", () => {
  withRig((r, peer) => {
    const pkts = Array.from({ length: 10 }, (_, i) => concat(netHeader(), frame(60 + i, i)));
    for (const p of pkts) r.tx.addChain({ readable: [p] });
    r.net.onNotify(NET_TX_QUEUE);
    assert.equal(r.tx.popAllUsed().length, 10);
    for (const p of pkts) assert.deepEqual(readPacket(peer), p);
    assert.deepEqual(r.ctx.usedNotifications, [NET_TX_QUEUE]);
  });
});

test("TX: malformed, oversized and offload-requesting packets are dropped and counted, never sent", () => {
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
  });
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
    assert.equal(r.ctx.failures.length, 0);
  });
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

const ipAvailable = (() => {
  try {
    execFileSync("ip", ["netns", "list"], { stdio: "ignore" });
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
})();

test("a real TAP in a private network namespace: guest ARP and ping get answered by the kernel", { skip: !ipAvailable && "needs root and iproute2" }, () => {
  const ns = `flint-net-${process.pid}`;
  const tap = "ftap0";
  const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
  ip("netns", "add", ns);
  try {
    ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap");
    ip("-n", ns, "addr", "add", "10.77.0.1/24", "dev", tap);
    ip("-n", ns, "link", "set", "lo", "up");
    ip("-n", ns, "link", "set", tap, "up");
    const script = fileURLToPath(new URL("./net-tap-scenario.js", import.meta.url));
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
  } finally {
    spawnSync("ip", ["netns", "del", ns]);
  }
});
