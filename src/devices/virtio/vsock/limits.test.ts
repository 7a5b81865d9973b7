/**
 * The bounds a hostile guest (or a flood of host clients) meets in
 * virtio-vsock (issue 9, findings 1-3): what it can make flint allocate and
 * queue, and that one connection cannot stall another. Each test fails on
 * the device as it was before the bounds (a 4 GiB allocation, a held TX
 * chain, an RST queue that grows without end, no connection limit).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  SOCK_CLOEXEC, SOCK_NONBLOCK, VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RESPONSE, VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_RW,
  VRING_DESC_F_NEXT,
} from "../../../linux/abi.generated.js";
import { sys } from "../../../sys/native.js";
import {
  VSOCK_CONN_MAX_HELD_BYTES, VSOCK_MAX_CONNECTIONS, VSOCK_MAX_PENDING_RSTS, VSOCK_TX_QUEUE,
} from "./index.js";
import { collectGarbage } from "../testing/device-loop-rig.js";
import { guestHeader, hostConnect, readNow, str, VsockRig, type RxPacket } from "./testing/rig.js";

const MiB = 1024 * 1024;

/** Everything the host peer reads until EOF (or `timeoutMs`). */
function readToEof(r: VsockRig, fd: number, timeoutMs = 2000): { bytes: number; eof: boolean } {
  let bytes = 0, eof = false;
  r.pump(() => { const x = readNow(fd); bytes += x.data.length; eof = x.eof; return eof; }, timeoutMs);
  return { bytes, eof };
}

/** The packets the guest gets, giving RX buffers until none come back. */
function drainRx(r: VsockRig, batch = 32): RxPacket[] {
  const all: RxPacket[] = [];
  for (;;) {
    r.giveRx(batch, 64);
    const got = r.received();
    all.push(...got);
    if (got.length < batch) return all;
  }
}

test("a TX packet of len near 4 GiB over 16 aliased descriptors is reset, and flint allocates nothing of its size", () => {
  const aliased = 256 * MiB;
  const r = new VsockRig({ memBytes: aliased });
  try {
    const { client, hostPort } = hostConnect(r, 7000);
    // The header, then 16 descriptors that all cover the same 256 MiB of guest RAM: 4 GiB readable.
    const len = 0xffff_0000;
    const head = r.tx.addChain({ readable: [guestHeader({ op: VIRTIO_VSOCK_OP_RW, srcPort: 7000, dstPort: hostPort, len }),
      ...Array.from({ length: 16 }, () => new Uint8Array(1))] }, false);
    let d = r.tx.readDescriptor(head).next;
    for (let i = 0; i < 16; i++) {
      const desc = r.tx.readDescriptor(d);
      r.tx.writeDescriptor(d, { ...desc, addr: 0, len: aliased });
      d = desc.next;
    }
    r.giveRx(4);
    const before = process.memoryUsage();
    r.tx.publish();
    r.notify(VSOCK_TX_QUEUE);
    const after = process.memoryUsage();
    assert.equal(r.tx.popAllUsed().length, 1, "the chain comes back at once");
    const rst = r.received().find((p) => p.hdr.op === VIRTIO_VSOCK_OP_RST);
    assert.ok(rst, "the guest gets OP_RST");
    assert.equal(rst.hdr.srcPort, hostPort);
    assert.equal(rst.hdr.dstPort, 7000);
    assert.ok(readToEof(r, client).eof, "the host socket is closed");
    assert.equal(r.dev.connectionCount, 0);
    assert.equal(r.dev.metrics.oversizePackets, 1);
    assert.equal(r.ctx.faults.length, 1, "a counted guest fault");
    // Generous: the packet alone would have been 4 GiB; what flint may take for it is one 64 KiB packet.
    const grewBy = (after.arrayBuffers - before.arrayBuffers) + (after.heapUsed - before.heapUsed);
    assert.ok(grewBy < 16 * MiB, `memory grew by ${grewBy} bytes for one packet`);
  } finally {
    r.close();
  }
});

test("a guest that sends past flint's credit has that connection reset; flint never holds more than one connection's buffer", () => {
  const r = new VsockRig();
  try {
    const { client, hostPort } = hostConnect(r, 7001);
    r.giveRx(4);
    // The host reads nothing; the guest ignores the credit flint advertises.
    let rst: RxPacket | undefined;
    let sent = 0;
    for (let i = 0; i < 64 && !rst; i++) {
      if (r.rx.outstandingChains < 4) r.giveRx(4);
      assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 7001, dstPort: hostPort }, new Uint8Array(32 * 1024).fill(i)),
        `chain ${i} comes back at once: no chain is held`);
      sent += 32 * 1024;
      assert.ok(r.dev.heldBytes <= VSOCK_CONN_MAX_HELD_BYTES, `${r.dev.heldBytes} bytes held`);
      rst = r.received().find((p) => p.hdr.op === VIRTIO_VSOCK_OP_RST);
    }
    assert.ok(rst, `the guest gets OP_RST (after ${sent} bytes)`);
    assert.equal(rst.hdr.srcPort, hostPort);
    assert.equal(r.dev.metrics.creditViolations, 1);
    assert.equal(r.dev.connectionCount, 0, "the host socket is closed");
    const got = readToEof(r, client);
    assert.ok(got.eof && got.bytes < sent, `the host peer read ${got.bytes} bytes, then EOF`);
  } finally {
    r.close();
  }
});

test("a flood of 1-byte packets within the credit costs flint about its bytes, not an allocation per packet", () => {
  const r = new VsockRig({ queueSize: 256 });
  try {
    const { hostPort } = hostConnect(r, 7006);
    // The host reads nothing: fill its socket until flint itself holds bytes.
    for (let i = 0; i < 64 && r.dev.heldBytes === 0; i++) {
      assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 7006, dstPort: hostPort }, new Uint8Array(16 * 1024)));
    }
    assert.ok(r.dev.heldBytes > 0);
    collectGarbage();
    const before = process.memoryUsage();
    // Then as many 1-byte packets as the credit allows (the guest stops at 200000: well within 256 KiB).
    // 100 two-descriptor chains (header, one byte), written once and made available again and again.
    const tx = r.tx;
    const hdrAddr = tx.alloc(64), byteAddr = tx.alloc(8);
    r.mem.write(hdrAddr, guestHeader({ op: VIRTIO_VSOCK_OP_RW, srcPort: 7006, dstPort: hostPort, len: 1 }));
    for (let i = 0; i < 100; i++) {
      tx.writeDescriptor(2 * i, { addr: hdrAddr, len: 44, flags: VRING_DESC_F_NEXT, next: 2 * i + 1 });
      tx.writeDescriptor(2 * i + 1, { addr: byteAddr, len: 1, flags: 0, next: 0 });
    }
    let idx = tx.availIdx;
    for (let sent = 0; sent < 200_000; sent += 100) {
      for (let i = 0; i < 100; i++) tx.setAvailRing(idx++, 2 * i);
      tx.setAvailIdx(idx);
      r.notify(VSOCK_TX_QUEUE);
      assert.equal(tx.usedIdx, idx & 0xffff, "every chain comes back");
    }
    collectGarbage();
    const after = process.memoryUsage();
    // Generous: 200000 one-byte arrays would take tens of MiB of heap; the bytes themselves are 200 KB.
    const grewBy = (after.heapUsed - before.heapUsed) + (after.arrayBuffers - before.arrayBuffers);
    assert.ok(grewBy < 8 * MiB, `memory grew by ${grewBy} bytes for 200000 one-byte packets`);
    assert.ok(r.dev.heldBytes <= VSOCK_CONN_MAX_HELD_BYTES, `${r.dev.heldBytes} bytes held`);
    assert.equal(r.dev.metrics.creditViolations, 0);
  } finally {
    r.close();
  }
});

test("one connection overrun by the guest is reset and another connection's data still flows", () => {
  const r = new VsockRig();
  try {
    const slow = hostConnect(r, 7002);
    const fast = hostConnect(r, 7003);
    r.giveRx(8);
    // The slow connection's host reads nothing; the guest pushes 2 MiB at it regardless.
    for (let i = 0; i < 64; i++) {
      if (r.rx.outstandingChains < 4) r.giveRx(4);
      if (!r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 7002, dstPort: slow.hostPort }, new Uint8Array(32 * 1024))) break;
    }
    assert.equal(r.tx.outstandingChains, 0, "no TX chain is held");
    assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 7003, dstPort: fast.hostPort }, new TextEncoder().encode("still flowing")));
    let line = "";
    r.pump(() => (line += str(readNow(fast.client).data)).length >= 13, 2000);
    assert.equal(line, "still flowing");
    assert.ok(r.received().some((p) => p.hdr.op === VIRTIO_VSOCK_OP_RST && p.hdr.srcPort === slow.hostPort), "the overrun connection was reset");
  } finally {
    r.close();
  }
});

test("a guest within its credit on a stalled connection does not stall another connection", () => {
  const r = new VsockRig();
  try {
    const stalled = hostConnect(r, 7004);
    const other = hostConnect(r, 7005);
    // Fill the stalled connection's credit exactly (its host never reads; the socket buffer takes some too).
    let held = 0;
    for (let i = 0; i < 64; i++) {
      const free = VSOCK_CONN_MAX_HELD_BYTES - r.dev.heldBytes;
      if (free < 64 * 1024) break;
      r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 7004, dstPort: stalled.hostPort }, new Uint8Array(16 * 1024));
      held = r.dev.heldBytes;
    }
    assert.ok(held > 0, "flint holds the stalled connection's bytes");
    assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 7005, dstPort: other.hostPort }, new TextEncoder().encode("other")));
    let line = "";
    r.pump(() => (line += str(readNow(other.client).data)).length >= 5, 2000);
    assert.equal(line, "other");
    assert.equal(r.dev.metrics.creditViolations, 0);
  } finally {
    r.close();
  }
});

test("malformed packets with no RX buffers posted queue at most one RST per port pair and VSOCK_MAX_PENDING_RSTS in all", () => {
  const r = new VsockRig({ queueSize: 256 });
  try {
    const packets = 20_480; // 160 batches of 128
    const batch = 128;
    for (let sent = 0; sent < packets; sent += batch) {
      // Half on one port pair (coalesced), half each on a new pair (capped).
      for (let i = 0; i < batch; i++) {
        const n = sent + i;
        const srcPort = n % 2 === 0 ? 1 : 100_000 + n;
        r.tx.addChain({ readable: [guestHeader({ op: 99, srcPort, dstPort: 2 })] }, false);
      }
      r.tx.publish();
      r.notify(VSOCK_TX_QUEUE);
      assert.equal(r.tx.popAllUsed().length, batch);
      assert.ok(r.dev.pendingControlCount <= VSOCK_MAX_PENDING_RSTS, `${r.dev.pendingControlCount} control packets queued`);
    }
    const rsts = drainRx(r).filter((p) => p.hdr.op === VIRTIO_VSOCK_OP_RST);
    assert.ok(rsts.length <= VSOCK_MAX_PENDING_RSTS, `${rsts.length} RSTs queued for ${packets} packets`);
    assert.equal(rsts.filter((p) => p.hdr.dstPort === 1).length, 1, "one RST for the pair that was hit 10240 times");
    const m = r.dev.metrics;
    assert.equal(m.badPackets, packets);
    assert.equal(m.resetsSent, rsts.length);
    assert.equal(m.resetsSent + m.resetsCoalesced + m.resetsDropped, packets);
    assert.ok(m.resetsDropped > 0 && m.resetsCoalesced > 0, JSON.stringify(m));
    // Once the guest posts buffers again, new resets are answered.
    assert.ok(r.send({ op: 99, srcPort: 5, dstPort: 6 }));
    r.giveRx(1, 64);
    assert.equal(r.received()[0]?.hdr.op, VIRTIO_VSOCK_OP_RST);
  } finally {
    r.close();
  }
});

test("connections are capped at VSOCK_MAX_CONNECTIONS: guest requests past it get RST, host clients are closed", () => {
  const r = new VsockRig({ queueSize: 256 });
  const served: number[] = [];
  try {
    const listener = r.listen(80);
    let responses = 0, resets = 0;
    const extra = 20;
    for (let i = 0; i < VSOCK_MAX_CONNECTIONS + extra; i++) {
      assert.ok(r.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 50_000 + i, dstPort: 80 }));
      for (let fd = sys.accept4(listener, SOCK_NONBLOCK | SOCK_CLOEXEC); fd >= 0; fd = sys.accept4(listener, SOCK_NONBLOCK | SOCK_CLOEXEC)) served.push(fd);
      r.giveRx(1, 64);
      for (const p of r.received()) {
        if (p.hdr.op === VIRTIO_VSOCK_OP_RESPONSE) responses++;
        if (p.hdr.op === VIRTIO_VSOCK_OP_RST) resets++;
      }
    }
    assert.equal(responses, VSOCK_MAX_CONNECTIONS);
    assert.equal(resets, extra);
    assert.equal(r.dev.connectionCount, VSOCK_MAX_CONNECTIONS);
    // A host client now: accepted and closed at once, counted.
    const client = r.connectClient();
    assert.ok(readToEof(r, client).eof, "the host client sees EOF");
    assert.equal(r.dev.metrics.connectionsRefused, extra + 1);
    assert.equal(r.dev.connectionCount, VSOCK_MAX_CONNECTIONS);
    // Closing one makes room again.
    assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RST, srcPort: 50_000, dstPort: 80 }));
    assert.ok(r.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 60_000, dstPort: 80 }));
    r.giveRx(1, 64);
    assert.equal(r.received()[0]?.hdr.op, VIRTIO_VSOCK_OP_RESPONSE);
  } finally {
    for (const fd of served) sys.close(fd);
    r.close();
  }
});
