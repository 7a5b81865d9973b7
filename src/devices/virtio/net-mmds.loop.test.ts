/**
 * MMDS on virtio-net in its real device thread (testing/device-loop-rig.ts,
 * over a fake TAP): the data arrives by the control request, a guest's GET is
 * answered through the rings, an answer waits while no receive buffers are
 * posted, and an unacknowledged segment is sent again by the device thread's
 * own retransmission timer.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { MMDS_REQUEST_SET_DATA } from "./mmds/control.js";
import { ACK, httpGet, PSH, readFrame, SYN, tcpSegment, type FrameFromMmds } from "./mmds/testing/guest-net.js";
import { NET_HDR_BYTES, NET_RX_QUEUE, NET_TX_QUEUE } from "./net.js";
import { DeviceLoopRig, VIRTIO_V1 } from "./testing/device-loop-rig.js";
import { concat, fakeTap, netHeader, readPacket, RX_CHAIN_BYTES } from "./testing/net-test-rig.js";

const FAKE_TAP_NET = new URL("./testing/net-fake-tap-backend.js", import.meta.url);
/** Hang-catching limit for each wait (never a timing assertion). */
const LIMIT_MS = 20_000;

test("in the real device thread: data by control request, a GET answered, an answer kept while no buffers, a lost segment sent again", async () => {
  const tap = fakeTap();
  const rig = await DeviceLoopRig.start({
    backendModule: FAKE_TAP_NET, name: "virtio-net",
    backendOptions: { fd: tap.device, tap: "fake", mac: "06:00:ac:10:00:02", mmds: { ipv4: "169.254.169.254", version: "V1", imdsCompat: false } },
  });
  try {
    const rx = rig.newDriver(NET_RX_QUEUE, { queueSize: 64 }), tx = rig.newDriver(NET_TX_QUEUE, { queueSize: 64 });
    rig.bringUp({ features: VIRTIO_V1, drivers: [rx, tx] });
    const set = await rig.timedRequest(MMDS_REQUEST_SET_DATA, { json: JSON.stringify({ "ami-id": "ami-loop" }) });
    assert.ok(set.ok, "the data request is answered");
    const send = (f: Uint8Array) => { tx.addChain({ readable: [concat(netHeader(), f)] }); rig.kick(NET_TX_QUEUE); };
    const post = (n: number) => { for (let i = 0; i < n; i++) rx.addChain({ writable: [RX_CHAIN_BYTES] }); rig.kick(NET_RX_QUEUE); };
    const got: (FrameFromMmds & { kind: "tcp" })[] = [];
    const take = () => {
      for (let u = rx.popUsed(); u; u = rx.popUsed()) {
        const f = readFrame(u.written.subarray(NET_HDR_BYTES));
        if (f.kind === "tcp") got.push(f);
      }
    };

    // No receive buffers: the SYN-ACK waits in MMDS until some are posted.
    send(tcpSegment({ srcPort: 9000, seq: 100, flags: SYN }));
    await rig.until(() => tx.usedIdx === 1, "the SYN is taken", LIMIT_MS);
    post(4);
    await rig.until(() => { take(); return got.some((f) => f.flags === (SYN | ACK)); }, "the SYN-ACK arrives once buffers are posted", LIMIT_MS);
    const synAck = got.find((f) => f.flags === (SYN | ACK))!;
    const request = httpGet("/ami-id", { Connection: "close" });
    send(tcpSegment({ srcPort: 9000, seq: 101, ack: synAck.seq + 1, flags: ACK | PSH, payload: request }));
    await rig.until(() => { take(); return got.some((f) => f.payload.length > 0); }, "the response arrives", LIMIT_MS);
    const first = got.find((f) => f.payload.length > 0)!;
    assert.match(new TextDecoder().decode(first.payload), /^HTTP\/1\.1 200 OK[\s\S]*\r\n\r\nami-loop$/);
    // Not acknowledged: the device thread's timer sends it again.
    post(8);
    await rig.until(() => { take(); return got.filter((f) => f.payload.length > 0).length >= 2; }, "the unacknowledged response is sent again", LIMIT_MS);
    const again = got.filter((f) => f.payload.length > 0)[1]!;
    assert.equal(again.seq, first.seq);
    assert.deepEqual(again.payload, first.payload);
    assert.equal(readPacket(tap.peer), undefined, "nothing reached the TAP");
  } finally {
    await rig.stop();
    tap.close();
  }
});
