/**
 * virtio-net saved and restored in its real device thread
 * (testing/snapshot-rig.ts), over a fake TAP (net-fake-tap-backend.js, as
 * the rate-limiter loop tests use; each set gets its own, as a restored VM
 * gets its own TAP): with mergeable receive buffers, a frame that arrived
 * while the driver had posted too few buffers for it is held, with the
 * chains already taken for it, across the snapshot, and delivered once by
 * the restored device when the driver posts more; TX frames posted before
 * the snapshot go out once, on the restored device's TAP; both rings go on
 * at the right index; and so for each of two clones.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ETH_P_IP, VIRTIO_NET_F_MRG_RXBUF } from "../../linux/abi.generated.js";
import type { VirtioDeviceSavedState } from "./device-saved-state.js";
import type { NetSavedState } from "./net-persist.js";
import { NET_HDR_BYTES, NET_RX_QUEUE, NET_TX_QUEUE } from "./net.js";
import { VIRTIO_V1 } from "./testing/device-loop-rig.js";
import type { FakeDriver } from "./testing/fake-driver.js";
import { concat, ethFrame, fakeTap, type FakeTap, netHeader, readNetHeader, readPacket, waitReadable, writePacket } from "./testing/net-test-rig.js";
import { SetRig, type SetSnapshot } from "./testing/snapshot-rig.js";
import type { VirtioDeviceConfig } from "./virtio-set.js";

const FAKE_TAP_NET = new URL("./testing/net-fake-tap-backend.js", import.meta.url);
const MAC = "52:54:00:12:34:56";
const mac = Uint8Array.from(MAC.split(":"), (h) => parseInt(h, 16));
const peerMac = new Uint8Array([2, 0, 0, 0, 0, 1]);
const RX_BUFFER = 1024;
const FEATURES = VIRTIO_V1 | (1n << BigInt(VIRTIO_NET_F_MRG_RXBUF));

const netOn = (tap: FakeTap): VirtioDeviceConfig[] => [{ kind: "net", options: { tap: "fake", mac: MAC, fd: tap.device }, backendModule: FAKE_TAP_NET }];
/** A frame to the guest: header and an Ethernet frame of `payloadBytes` of `fill`. */
const toGuest = (payloadBytes: number, fill: number) => concat(netHeader(), ethFrame(mac, peerMac, ETH_P_IP, new Uint8Array(payloadBytes).fill(fill)));
/** A TX packet from the guest: header and a 60-byte frame marked `mark`. */
const fromGuest = (mark: number) => concat(netHeader(), ethFrame(peerMac, mac, ETH_P_IP, new Uint8Array(46).fill(mark)));

/** The packets the peer end of `tap` has (waiting up to a few seconds for `n`), then checks no more follow. */
function received(tap: FakeTap, n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  while (out.length < n && waitReadable(tap.peer, 10_000)) out.push(readPacket(tap.peer)!);
  return out;
}

/**
 * The guest's part after a restore: the two TX frames posted before the snapshot go out on
 * `tap` once; the held frame is delivered once more buffers come, in the held chains and the
 * new one, published together; then a new frame each way works.
 */
async function carriesOn(rig: SetRig, rx: FakeDriver, tx: FakeDriver, tap: FakeTap, o: { held: number[]; big: Uint8Array; txHeads: number[] }): Promise<void> {
  await rig.set.resume();
  assert.deepEqual(received(tap, 2), [fromGuest(2), fromGuest(3)], "the TX frames posted before the snapshot, once each, in order");
  await rig.until(() => tx.usedIdx === 3, "the TX chains returned");
  assert.deepEqual(tx.popAllUsed().map((u) => u.head), o.txHeads);
  assert.equal(rx.usedIdx, 1, "the held frame waits for buffers");
  const more = [rx.addChain({ writable: [RX_BUFFER] }), rx.addChain({ writable: [RX_BUFFER] })];
  rig.kick(0, NET_RX_QUEUE);
  await rig.until(() => rx.usedIdx === 4, "the held frame delivered");
  const used = rx.popAllUsed();
  assert.deepEqual(used.map((u) => u.head), [...o.held, more[0]], "in the chains held for it, then one new");
  assert.deepEqual(used.map((u) => u.len), [RX_BUFFER, RX_BUFFER, o.big.length - 2 * RX_BUFFER]);
  const bytes = concat(...used.map((u) => u.written));
  assert.equal(readNetHeader(bytes).numBuffers, 3);
  assert.deepEqual(bytes.subarray(NET_HDR_BYTES), o.big.subarray(NET_HDR_BYTES), "the frame, whole");
  // New traffic both ways.
  writePacket(tap.peer, toGuest(50, 9));
  await rig.until(() => rx.usedIdx === 5, "a new frame to the guest");
  assert.deepEqual(rx.popAllUsed().map((u) => u.head), [more[1]]);
  tx.addChain({ readable: [fromGuest(4)] });
  rig.kick(0, NET_TX_QUEUE);
  assert.deepEqual(received(tap, 1), [fromGuest(4)]);
}

test("a frame held with its receive chains across a snapshot is delivered once; TX posted before it goes out once on the new TAP; two clones likewise", async () => {
  const tapA = fakeTap();
  let rx!: FakeDriver, tx!: FakeDriver;
  const held: number[] = [];
  const txHeads: number[] = [];
  const big = toGuest(3000 - 14, 5);
  const snap = await SetRig.snapshotAfter(netOn(tapA), async (a) => {
    rx = a.newDriver({ queueSize: 16, heapBytes: 16 * RX_BUFFER });
    tx = a.newDriver({ queueSize: 16 });
    a.bringUp(0, { features: FEATURES, drivers: [rx, tx] });
    // Completed: a frame each way.
    rx.addChain({ writable: [RX_BUFFER] });
    a.kick(0, NET_RX_QUEUE);
    txHeads.push(tx.addChain({ readable: [fromGuest(1)] }));
    a.kick(0, NET_TX_QUEUE);
    assert.deepEqual(received(tapA, 1), [fromGuest(1)]);
    writePacket(tapA.peer, toGuest(100, 1));
    await a.until(() => rx.usedIdx === 1 && tx.usedIdx === 1, "a frame each way");
    assert.equal(rx.popAllUsed().length, 1);
    assert.equal(tx.popAllUsed().length, 1);
    txHeads.length = 0;
    // Two buffers of 1 KiB for a frame of 3 KiB: the device takes them and holds them for it.
    held.push(rx.addChain({ writable: [RX_BUFFER] }), rx.addChain({ writable: [RX_BUFFER] }));
    a.kick(0, NET_RX_QUEUE);
    writePacket(tapA.peer, big);
    // The device holds the two chains as soon as the kick comes (before it reads the frame): wait for both.
    await a.savedWhen((s) => {
      const net = s[0]!.backend as NetSavedState;
      return net.rxHeld.length === 2 && net.rxPending !== "";
    }, "two receive chains held, and the frame");
    // Posted while quiesced: two TX frames (their kick dies with this VM's eventfd).
    txHeads.push(tx.addChain({ readable: [fromGuest(2)] }), tx.addChain({ readable: [fromGuest(3)] }));
    a.kick(0, NET_TX_QUEUE);
  });
  assert.equal(readPacket(tapA.peer), undefined, "nothing was sent on the old TAP after the quiesce");
  tapA.close();
  try {
    const [rec] = snap.saved as VirtioDeviceSavedState[];
    const net = rec!.backend as NetSavedState;
    assert.deepEqual(net.rxHeld.map((c) => c.head), held);
    assert.equal(Buffer.from(net.rxPending, "base64").length, big.length);
    assert.deepEqual(rec!.queues![0]!.inFlight.map(([h]) => h), held, "the held chains are in flight in the queue's record");
    for (const clones of [1, 2]) {
      const taps = Array.from({ length: clones }, () => fakeTap());
      const rigs = await Promise.all(taps.map((t) => SetRig.restore(netOn(t), snap)));
      try {
        await Promise.all(rigs.map((r, i) => carriesOn(r, r.driver(rx), r.driver(tx), taps[i]!, { held, big, txHeads })));
        for (const r of rigs) assert.deepEqual(r.faults, []);
      } finally {
        for (const r of rigs) await r.stop();
        for (const t of taps) t.close();
      }
    }
  } finally {
    snap.memory.dispose();
  }
});

test("receive chains held for reads in place (no frame pending) across a snapshot are filled in ring order by the restored device", async () => {
  const tapA = fakeTap();
  const MTU_BUFFER = 1536;
  let rx!: FakeDriver;
  const posted: number[] = [];
  let savedHeld: number[] = [];
  const snap = await SetRig.snapshotAfter(netOn(tapA), async (a) => {
    rx = a.newDriver({ queueSize: 64, heapBytes: 60 * MTU_BUFFER });
    const tx = a.newDriver({ queueSize: 16 });
    a.bringUp(0, { features: FEATURES, drivers: [rx, tx] });
    // Linux's mergeable buffers: 60 of about an MTU, more than a 64 KiB frame needs.
    for (let i = 0; i < 60; i++) posted.push(rx.addChain({ writable: [MTU_BUFFER] }));
    a.kick(0, NET_RX_QUEUE);
    writePacket(tapA.peer, toGuest(100, 1));
    await a.until(() => rx.usedIdx === 1, "a frame read in place");
    assert.deepEqual(rx.popAllUsed().map((u) => u.head), [posted[0]]);
    await a.savedWhen((s) => {
      const net = s[0]!.backend as NetSavedState;
      savedHeld = net.rxHeld.map((c) => c.head);
      return net.rxPending === "" && savedHeld.length > 0;
    }, "receive chains held without a pending frame");
  });
  tapA.close();
  try {
    const held = Math.ceil((NET_HDR_BYTES + 14 + 40 + 0xffff + 1) / MTU_BUFFER);
    assert.deepEqual(savedHeld, posted.slice(1, 1 + held), "the chains for one 64 KiB frame, in ring order, after the one used");
    const tap = fakeTap();
    const rig = await SetRig.restore(netOn(tap), snap);
    try {
      const rxB = rig.driver(rx);
      await rig.set.resume();
      const frame = toGuest(4000, 7);
      writePacket(tap.peer, frame);
      await rig.until(() => rxB.usedIdx === 4, "a frame delivered after the restore");
      const used = rxB.popAllUsed();
      assert.deepEqual(used.map((u) => u.head), posted.slice(1, 4), "in the held chains, from the first");
      const bytes = concat(...used.map((u) => u.written));
      assert.equal(readNetHeader(bytes).numBuffers, 3);
      assert.deepEqual(bytes.subarray(NET_HDR_BYTES), frame.subarray(NET_HDR_BYTES));
      assert.deepEqual(rig.faults, []);
    } finally {
      await rig.stop();
      tap.close();
    }
  } finally {
    snap.memory.dispose();
  }
});
