/**
 * virtio-vsock in its real device thread (DeviceLoopRig): a guest on another
 * vCPU that keeps the TX ring full cannot keep the device thread from its
 * control eventfd (issue 9, finding 3). Before TX was budgeted, the device
 * popped chains for as long as the flooder added them, and neither a host
 * request nor a device reset was ever served.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { VIRTIO_VSOCK_OP_REQUEST, VRING_DESC_F_NEXT } from "../../../linux/abi.generated.js";
import { DeviceLoopRig, LatencyLog } from "../testing/device-loop-rig.js";
import { VSOCK_TX_BUDGET, type VsockStats } from "./index.js";
import { GUEST_CID, guestHeader } from "./testing/rig.js";

const VSOCK = new URL("./index.js", import.meta.url);

test("a TX flood from another vCPU does not starve host requests or a device reset", async () => {
  const dir = mkdtempSync(join(tmpdir(), "flint-vsock-loop-"));
  const rig = await DeviceLoopRig.start({ backendModule: VSOCK, backendOptions: { cid: GUEST_CID, uds: join(dir, "v.sock") }, name: "virtio-vsock" });
  try {
    const rx = rig.newDriver(0, { queueSize: 64 });
    const tx = rig.newDriver(1, { queueSize: 256, heapBytes: 1 << 20 });
    const ev = rig.newDriver(2, { queueSize: 4 });
    rig.bringUp({ drivers: [rx, tx, ev] });
    // 128 heads, each a header followed by the same 128 tail descriptors (aliased, all pointing at one
    // 4 KiB buffer): every chain costs the device a 129-descriptor walk, so a flooder re-adding them
    // from its own thread stays ahead of the device however it is scheduled.
    const hdrAddr = tx.alloc(64), payloadAddr = tx.alloc(4096);
    // A REQUEST to a port nobody serves: the device tries a connect(2) for each, and answers RST.
    rig.mem.write(hdrAddr, guestHeader({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 3, dstPort: 4 }));
    const HEADS = 128;
    for (let i = 0; i < 256; i++) {
      const isHead = i < HEADS;
      tx.writeDescriptor(i, {
        addr: isHead ? hdrAddr : payloadAddr, len: isHead ? 44 : 4096,
        flags: i < 255 ? VRING_DESC_F_NEXT : 0, next: isHead ? HEADS : i + 1,
      });
    }
    const flood = await rig.flood(1, { heads: Array.from({ length: HEADS }, (_, i) => i) });
    await rig.until(() => flood.added > 10_000, "the flood is under way");
    const lat = new LatencyLog();
    for (let i = 0; i < 5; i++) {
      // The device thread answers after the pass it is in (a budget of chains), however many the
      // flooder keeps adding; measured in chains, not time. The 10 s limit only catches a hang.
      const addedBefore = flood.added;
      const r = await rig.timedRequest("metrics", undefined, 10_000);
      lat.add(r.ms);
      assert.equal(r.ok, true, String(r.value));
      const servedAfter = (r.value as VsockStats).txPackets - addedBefore;
      assert.ok(servedAfter <= 2 * VSOCK_TX_BUDGET, `${servedAfter} chains served after the request was sent, before its answer`);
    }
    const stats = (await rig.dev.request("metrics")) as VsockStats;
    assert.ok(stats.txYields > 0, "the device yielded with chains still available");
    assert.ok(stats.pendingControls <= 1, "the RSTs for the one port pair are coalesced");
    const before = flood.added;
    const resetMs = await rig.timedReset(10_000);
    console.log(`${lat.report("vsock metrics requests under a TX flood")}; reset ${resetMs.toFixed(2)} ms; ${before} chains flooded`);
    await flood.stop();
  } finally {
    await rig.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
