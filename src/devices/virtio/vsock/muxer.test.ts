import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  SHUT_WR, VIRTIO_ID_VSOCK, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, VIRTIO_VSOCK_OP_CREDIT_REQUEST,
  VIRTIO_VSOCK_OP_CREDIT_UPDATE, VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RESPONSE, VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_OP_SHUTDOWN, VIRTIO_VSOCK_SHUTDOWN_RCV, VIRTIO_VSOCK_SHUTDOWN_SEND,
  VIRTIO_VSOCK_TYPE_SEQPACKET, VIRTIO_VSOCK_TYPE_STREAM, VMADDR_CID_HOST, virtio_vsock_config,
} from "../../../linux/abi.generated.js";
import { dataView, getU32, getU64 } from "../../../memory/le.js";
import { sys } from "../../../sys/native.js";
import { createBackend, listenUnix, VsockError, VSOCK_BUF_ALLOC, VSOCK_CONN_MAX_HELD_BYTES, VSOCK_EVENT_QUEUE, VSOCK_FIRST_HOST_PORT } from "./index.js";
import { assertFromHost, concat, GUEST_CID, guestRead, hostConnect, readNow, str, VsockRig, writeAll, type RxPacket } from "./testing/rig.js";

const BOTH = VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND;

test("config space holds the guest cid; three queues; stream only", () => {
  const r = new VsockRig();
  assert.equal(r.dev.deviceId, VIRTIO_ID_VSOCK);
  assert.equal(r.dev.queueMaxSizes.length, 3);
  assert.equal(r.dev.deviceFeatures, 0n);
  assert.equal(getU64(dataView(r.dev.initialConfig()), virtio_vsock_config.guest_cid), BigInt(GUEST_CID));
  r.close();
  assert.ok(!existsSync(r.uds), "shutdown removes the listener's path");
});

test("host-initiated: CONNECT <port>, OK <hostport>, then an echo both ways", () => {
  const r = new VsockRig();
  const { client, hostPort } = hostConnect(r, 5000);
  assert.equal(writeAll(client, "ping from host"), 14);
  const got = guestRead(r, 14);
  assert.equal(str(got.data), "ping from host");
  for (const p of got.packets) { assertFromHost(p); assert.equal(p.hdr.srcPort, hostPort); assert.equal(p.hdr.dstPort, 5000); }
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 5000, dstPort: hostPort }, new TextEncoder().encode("pong from guest")));
  let echoed = "";
  r.pump(() => (echoed += str(readNow(client).data)).length >= 15);
  assert.equal(echoed, "pong from guest");
  assert.deepEqual(r.ctx.faults, []);
  r.close();
});

test("bytes after the CONNECT line are kept for the guest", () => {
  const r = new VsockRig();
  r.giveRx(4);
  const client = r.connectClient();
  writeAll(client, "CONNECT 7\nearly bytes");
  let req: RxPacket | undefined;
  r.pump(() => (req = r.received().find((p) => p.hdr.op === VIRTIO_VSOCK_OP_REQUEST)) !== undefined);
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RESPONSE, srcPort: 7, dstPort: req!.hdr.srcPort }));
  assert.equal(str(guestRead(r, 11).data), "early bytes");
  r.close();
});

test("a bad CONNECT line closes the client; a guest RST closes a connecting client", () => {
  const r = new VsockRig();
  r.giveRx(4);
  const bad = r.connectClient();
  writeAll(bad, "HELLO\n");
  assert.ok(r.pump(() => readNow(bad).eof), "the client sees EOF");
  assert.equal(r.dev.metrics.hostClientsRejected, 1);
  const refused = r.connectClient();
  writeAll(refused, "CONNECT 99\n");
  let req: RxPacket | undefined;
  r.pump(() => (req = r.received().find((p) => p.hdr.op === VIRTIO_VSOCK_OP_REQUEST)) !== undefined);
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RST, srcPort: 99, dstPort: req!.hdr.srcPort }));
  assert.ok(r.pump(() => readNow(refused).eof), "the client is closed on RST");
  assert.equal(r.dev.connectionCount, 0);
  r.close();
});

test("guest-initiated: REQUEST to port P connects to <uds>_P, then data both ways", () => {
  const r = new VsockRig();
  const listener = r.listen(1234);
  r.giveRx(4);
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 40000, dstPort: 1234 }));
  const [resp] = r.received();
  assert.ok(resp);
  assertFromHost(resp);
  assert.equal(resp.hdr.op, VIRTIO_VSOCK_OP_RESPONSE);
  assert.equal(resp.hdr.srcPort, 1234);
  assert.equal(resp.hdr.dstPort, 40000);
  const server = r.accept(listener);
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 40000, dstPort: 1234 }, new TextEncoder().encode("hello")));
  let got = "";
  r.pump(() => (got += str(readNow(server).data)).length >= 5);
  assert.equal(got, "hello");
  writeAll(server, "world");
  assert.equal(str(guestRead(r, 5).data), "world");
  r.close();
});

test("a guest REQUEST nobody listens for is answered with RST", () => {
  const r = new VsockRig();
  r.giveRx(4);
  writeFileSync(`${r.uds}_81`, "not a socket");
  for (const port of [80, 81]) {
    assert.ok(r.send({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 40001, dstPort: port }));
    const [rst] = r.received();
    assert.equal(rst?.hdr.op, VIRTIO_VSOCK_OP_RST);
    assert.equal(rst.hdr.srcPort, port);
    assert.equal(rst.hdr.dstPort, 40001);
  }
  assert.equal(r.dev.connectionCount, 0);
  r.close();
});

test("the device never exceeds the guest's credit and resumes after CREDIT_UPDATE", () => {
  const r = new VsockRig();
  const { client, hostPort } = hostConnect(r, 6000, 1000);
  const data = Uint8Array.from({ length: 3000 }, (_, i) => i & 0xff);
  assert.equal(writeAll(client, data), 3000);
  const first = guestRead(r, 3000, 150);
  assert.equal(first.data.length, 1000, "exactly buf_alloc bytes while the guest forwarded nothing");
  // The guest consumed 600: 600 more may come.
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_CREDIT_UPDATE, srcPort: 6000, dstPort: hostPort, bufAlloc: 1000, fwdCnt: 600 }));
  const second = guestRead(r, 3000, 150);
  assert.equal(second.data.length, 600);
  // A larger buffer and everything consumed: the rest flows.
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_CREDIT_UPDATE, srcPort: 6000, dstPort: hostPort, bufAlloc: 4096, fwdCnt: 1600 }));
  const third = guestRead(r, 1400);
  assert.deepEqual(concat([first.data, second.data, third.data]), data);
  r.close();
});

test("CREDIT_REQUEST is answered with CREDIT_UPDATE carrying flint's buf_alloc and fwd_cnt", () => {
  const r = new VsockRig();
  const { client, hostPort } = hostConnect(r, 6001);
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 6001, dstPort: hostPort }, new Uint8Array(300)));
  assert.ok(r.pump(() => readNow(client).data.length === 300));
  r.received();
  r.giveRx(2);
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_CREDIT_REQUEST, srcPort: 6001, dstPort: hostPort }));
  const upd = r.received().find((p) => p.hdr.op === VIRTIO_VSOCK_OP_CREDIT_UPDATE);
  assert.ok(upd);
  assertFromHost(upd);
  assert.equal(upd.hdr.fwdCnt, 300, "fwd_cnt counts guest bytes the host socket took (not the OK line)");
  r.close();
});

test("backpressure: a host that does not read makes flint hold up to its credit; a guest within the credit loses nothing and no chain is held", () => {
  const r = new VsockRig();
  const { client, hostPort } = hostConnect(r, 6002);
  const chunk = 32 * 1024;
  const total = 2 * 1024 * 1024;
  const data = Uint8Array.from({ length: total }, (_, j) => (j * 31 + (j >> 13)) & 0xff);
  let sent = 0;
  /** flint's fwd_cnt as the guest last saw it (Linux's peer_fwd_cnt). */
  let peerFwdCnt = 0;
  const learnCredit = () => {
    if (r.rx.outstandingChains < 4) r.giveRx(4);
    for (const p of r.received()) {
      assert.notEqual(p.hdr.op, VIRTIO_VSOCK_OP_RST, "a guest within the credit is never reset");
      peerFwdCnt = Math.max(peerFwdCnt, p.hdr.fwdCnt);
    }
  };
  /** The guest sends while flint's credit allows (Linux's virtio_transport_get_credit). */
  const sendWithinCredit = () => {
    while (sent < total && sent - peerFwdCnt + chunk <= VSOCK_BUF_ALLOC) {
      assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 6002, dstPort: hostPort }, data.subarray(sent, sent + chunk)), "every chain comes back at once");
      sent += chunk;
    }
  };
  // The host reads nothing: the guest runs out of credit, flint holds at most its buffer.
  for (let i = 0; i < 20; i++) { sendWithinCredit(); r.pump(() => false, 5); learnCredit(); }
  assert.ok(sent < total, "the guest ran out of credit");
  assert.ok(r.dev.heldBytes > 0 && r.dev.heldBytes <= VSOCK_CONN_MAX_HELD_BYTES, `${r.dev.heldBytes} bytes held`);
  assert.equal(r.tx.outstandingChains, 0, "no chain is held");
  // Now the host reads: every byte arrives, in order.
  const got: Uint8Array[] = [];
  let n = 0;
  r.pump(() => {
    const d = readNow(client).data;
    got.push(d);
    n += d.length;
    learnCredit();
    sendWithinCredit();
    return n >= total;
  }, 5000);
  assert.deepEqual(concat(got), data);
  assert.equal(r.dev.metrics.creditViolations, 0);
  // The guest learns the freed space.
  r.pump(() => { learnCredit(); return peerFwdCnt === total; }, 500);
  assert.equal(peerFwdCnt, total);
  r.close();
});

test("shutdown: guest SEND half-closes the host socket, host EOF becomes SHUTDOWN(SEND), both -> RST and close", () => {
  const r = new VsockRig();
  const { client, hostPort } = hostConnect(r, 6003);
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: 6003, dstPort: hostPort }, new TextEncoder().encode("last")));
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_SHUTDOWN, srcPort: 6003, dstPort: hostPort, flags: VIRTIO_VSOCK_SHUTDOWN_SEND }));
  let all = "";
  let eof = false;
  r.pump(() => { const x = readNow(client); all += str(x.data); eof = x.eof; return eof; });
  assert.equal(all, "last");
  assert.ok(eof, "the client reads EOF after the guest's data");
  // The other direction still works.
  writeAll(client, "still here");
  assert.equal(str(guestRead(r, 10).data), "still here");
  sys.shutdown(client, SHUT_WR);
  let shut: RxPacket | undefined;
  r.pump(() => {
    if (r.rx.outstandingChains < 2) r.giveRx(2);
    return (shut = r.received().find((p) => p.hdr.op === VIRTIO_VSOCK_OP_SHUTDOWN)) !== undefined;
  });
  assert.equal(shut?.hdr.flags, VIRTIO_VSOCK_SHUTDOWN_SEND);
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_SHUTDOWN, srcPort: 6003, dstPort: hostPort, flags: BOTH }));
  r.giveRx(2);
  const rst = r.received().find((p) => p.hdr.op === VIRTIO_VSOCK_OP_RST);
  assert.ok(rst, "a full shutdown is answered with RST");
  assert.equal(r.dev.connectionCount, 0);
  assert.deepEqual(r.ctx.faults, []);
  r.close();
});

test("device reset closes host sockets; the next activation sends TRANSPORT_RESET on the event queue", () => {
  const r = new VsockRig();
  const { client } = hostConnect(r, 6004);
  r.ev.addChain({ writable: [4] });
  r.dev.onNotify(VSOCK_EVENT_QUEUE);
  assert.equal(r.ev.popUsed(), undefined, "no event on the first activation");
  r.dev.reset();
  assert.equal(r.dev.connectionCount, 0);
  assert.ok(readNow(client).eof, "the host client sees the connection end");
  r.activate();
  const ev = r.ev.popUsed();
  assert.ok(ev);
  assert.equal(ev.len, 4);
  assert.equal(getU32(dataView(ev.written), 0), VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
  // The listener still works after the reset.
  hostConnect(r, 6005);
  r.close();
});

test("bad headers are guest faults: wrong cids and short or lying lengths are dropped, unknown ops and types get RST", () => {
  const r = new VsockRig();
  r.giveRx(8);
  const base = { srcPort: 1, dstPort: 2 };
  assert.ok(r.send({ ...base, op: VIRTIO_VSOCK_OP_REQUEST, srcCid: 7n }));
  assert.ok(r.send({ ...base, op: VIRTIO_VSOCK_OP_REQUEST, dstCid: 5n }));
  assert.ok(r.send({ ...base, op: VIRTIO_VSOCK_OP_RW, len: 10 }, new Uint8Array(4)));
  r.tx.addChain({ readable: [new Uint8Array(20)] });
  r.notify(1);
  assert.equal(r.tx.popAllUsed().length, 1);
  assert.equal(r.received().length, 0, "no answer to packets not addressed properly");
  assert.ok(r.send({ ...base, op: 99 }));
  assert.ok(r.send({ ...base, op: VIRTIO_VSOCK_OP_REQUEST, type: VIRTIO_VSOCK_TYPE_SEQPACKET }));
  assert.ok(r.send({ ...base, op: VIRTIO_VSOCK_OP_RW }, new Uint8Array(3)));
  assert.ok(r.send({ ...base, op: VIRTIO_VSOCK_OP_RST }));
  const answers = r.received();
  assert.deepEqual(answers.map((p) => p.hdr.op), [VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_RST]);
  assert.equal(r.ctx.faults.length, 7);
  assert.deepEqual(r.ctx.failures, []);
  r.close();
});

test("an RX buffer too small for a header is a guest fault and comes back empty; the packet waits for the next", () => {
  const r = new VsockRig();
  r.rx.addChain({ writable: [10] });
  assert.ok(r.send({ srcPort: 1, dstPort: 2, op: 42 }));
  r.giveRx(1);
  const back = r.received();
  assert.equal(back[0]?.usedLen, 0);
  assert.equal(back[1]?.hdr.op, VIRTIO_VSOCK_OP_RST);
  assert.equal(r.ctx.faults.length, 2);
  r.close();
});

test("attaching: a bad cid, a missing directory, a too-long path or a path in use fail with VsockError", () => {
  const dir = mkdtempSync(join(tmpdir(), "flint-vsock-attach-"));
  try {
    const is = (code: string) => (e: unknown) => e instanceof VsockError && e.code === code;
    assert.throws(() => createBackend({ cid: -1, uds: join(dir, "a") }), is("EVSOCKCONFIG"));
    assert.throws(() => createBackend({ cid: 2 ** 32, uds: join(dir, "a") }), is("EVSOCKCONFIG"));
    assert.throws(() => createBackend({ cid: 3.5, uds: join(dir, "a") }), is("EVSOCKCONFIG"));
    assert.throws(() => createBackend({ cid: 3, uds: join(dir, "no", "a") }), /directory does not exist/);
    assert.throws(() => createBackend({ cid: 3, uds: join(dir, "x".repeat(120)) }), /too long/);
    const held = listenUnix(join(dir, "busy"));
    assert.throws(() => createBackend({ cid: 3, uds: join(dir, "busy") }), /in use by a listening socket/);
    sys.close(held);
    // Now nobody listens: the stale socket file is replaced.
    const b = createBackend({ cid: 3, uds: join(dir, "busy") });
    b.shutdown?.();
    // A reserved CID is taken, as Firecracker takes it (firecracker-containerd sends 0).
    createBackend({ cid: 0, uds: join(dir, "zero") }).shutdown?.();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
