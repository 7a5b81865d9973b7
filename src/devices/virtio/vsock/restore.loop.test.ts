/**
 * virtio-vsock saved and restored in its real device thread
 * (testing/snapshot-rig.ts), as Firecracker does it (persist.ts):
 * connections do not survive, and the restored device tells the guest with
 * a TRANSPORT_RESET event when it first runs; nothing reaches the RX queue
 * until the guest acknowledges it (its next event-queue kick); a request the
 * guest posted before the snapshot is served once, against the restored
 * device's own socket path; host-initiated connections work again; and so
 * for each of two clones with their own paths.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  AF_UNIX, EAGAIN, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_RW, virtio_vsock_event, virtio_vsock_hdr,
} from "../../../linux/abi.generated.js";
import { dataView, getU32 } from "../../../memory/le.js";
import { sys } from "../../../sys/native.js";
import type { VirtioDeviceSavedState } from "../device-saved-state.js";
import type { FakeDriver } from "../testing/fake-driver.js";
import { SetRig, type SetSnapshot } from "../testing/snapshot-rig.js";
import type { VirtioDeviceConfig } from "../virtio-set.js";
import { decodeVsockHeader, VSOCK_FIRST_HOST_PORT, VSOCK_RX_QUEUE, VSOCK_TX_QUEUE, VSOCK_EVENT_QUEUE, type VsockStats } from "./index.js";
import type { VsockSavedState } from "./persist.js";
import { GUEST_CID, guestHeader, readNow, str, writeAll } from "./testing/rig.js";
import { listenUnix } from "./unix.js";

const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });
const HDR = virtio_vsock_hdr.SIZE;

/** A vsock device on a socket path of its own, and a host service for guest port `port` there. */
function vsockAt(ports: number[]): { configs: VirtioDeviceConfig[]; uds: string; services: Map<number, number> } {
  const dir = mkdtempSync(join(tmpdir(), "flint-vsock-restore-"));
  dirs.push(dir);
  const uds = join(dir, "v.sock");
  const services = new Map(ports.map((p) => [p, listenUnix(`${uds}_${p}`)]));
  return { configs: [{ kind: "vsock", options: { cid: GUEST_CID, uds } }], uds, services };
}

/** The next connection waiting on a listening socket, or -1. */
function accept(fd: number): number {
  const c = sys.accept4(fd, SOCK_NONBLOCK | SOCK_CLOEXEC);
  return c === -EAGAIN ? -1 : c;
}

/** The packets the guest received on RX (headers decoded). */
const packets = (rx: FakeDriver) => rx.popAllUsed().map((u) => ({ ...decodeVsockHeader(u.written.subarray(0, HDR)), data: u.written.subarray(HDR) }));

interface Drivers { rx: FakeDriver; tx: FakeDriver; ev: FakeDriver }

/** The guest's and host's part after a restore (see the module comment). */
async function carriesOn(
  rig: SetRig, d: Drivers, at: ReturnType<typeof vsockAt>, o: { rxUsed: number; txUsed: number; txHead: number; nextHostPort: number },
): Promise<void> {
  await rig.set.resume();
  // The event, in a buffer the guest posted before the snapshot.
  await rig.until(() => d.ev.usedIdx === 1, "the TRANSPORT_RESET event");
  const [ev] = d.ev.popAllUsed();
  assert.equal(getU32(dataView(ev!.written), virtio_vsock_event.id), VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
  // The request posted before the snapshot reached this device's own service, once.
  let conn = -1;
  await rig.until(() => (conn = accept(at.services.get(5001)!)) >= 0, "the guest's connection to port 5001");
  assert.equal(accept(at.services.get(5001)!), -1, "once");
  await rig.until(() => d.tx.usedIdx === o.txUsed + 1, "the request's chain returned");
  assert.deepEqual(d.tx.popAllUsed().map((u) => u.head), [o.txHead], "once, and no older chain again");
  // Its RESPONSE waits: the guest has not acknowledged the reset yet.
  const stats = (await rig.set.devices[0]!.request("metrics")) as VsockStats;
  assert.equal(stats.pendingControls, 1);
  assert.equal(d.rx.usedIdx, o.rxUsed, "nothing written to RX before the acknowledgement");
  // The guest handles the event, puts the buffer back and kicks: the acknowledgement.
  d.ev.addChain({ writable: [virtio_vsock_event.SIZE] });
  rig.kick(0, VSOCK_EVENT_QUEUE);
  await rig.until(() => d.rx.usedIdx === o.rxUsed + 1, "the RESPONSE after the acknowledgement");
  const [resp] = packets(d.rx);
  assert.deepEqual([resp!.op, resp!.srcPort, resp!.dstPort], [VIRTIO_VSOCK_OP_RESPONSE, 5001, 1001]);
  // The connection from before the snapshot is gone: its packets are answered with RST.
  d.tx.addChain({ readable: [guestHeader({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1000, dstPort: 5000, len: 3 }), new TextEncoder().encode("old")] });
  rig.kick(0, VSOCK_TX_QUEUE);
  await rig.until(() => d.rx.usedIdx === o.rxUsed + 2, "the RST for the old connection");
  assert.deepEqual(packets(d.rx).map((p) => [p.op, p.srcPort, p.dstPort]), [[VIRTIO_VSOCK_OP_RST, 5000, 1000]]);
  // The new connection carries data.
  d.tx.addChain({ readable: [guestHeader({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1001, dstPort: 5001, len: 3 }), new TextEncoder().encode("new")] });
  rig.kick(0, VSOCK_TX_QUEUE);
  let got = "";
  await rig.until(() => (got += str(readNow(conn).data)) === "new", "the guest's bytes at the service");
  // A host-initiated connection works, on a host port the guest has not seen before.
  const client = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  assert.equal(sys.connectUnix(client, at.uds), 0);
  writeAll(client, "CONNECT 7000\n");
  let req: ReturnType<typeof packets>[number] | undefined;
  // (Credit updates for the connection above may come first.)
  await rig.until(() => (req = packets(d.rx).find((p) => p.op === VIRTIO_VSOCK_OP_REQUEST)) !== undefined, "the host's REQUEST");
  assert.deepEqual([req!.op, req!.dstPort], [VIRTIO_VSOCK_OP_REQUEST, 7000]);
  assert.ok(req!.srcPort >= o.nextHostPort, `host port ${req!.srcPort} is new`);
  d.tx.addChain({ readable: [guestHeader({ op: VIRTIO_VSOCK_OP_RESPONSE, srcPort: 7000, dstPort: req!.srcPort })] });
  rig.kick(0, VSOCK_TX_QUEUE);
  let line = "";
  await rig.until(() => (line += str(readNow(client).data)).endsWith("\n"), "OK from the device");
  assert.equal(line, `OK ${req!.srcPort}\n`);
  sys.close(client);
  sys.close(conn);
}

test("a restored vsock resets the guest's connections with an event, holds RX until it is acknowledged, and serves what was posted before; two clones likewise", async () => {
  const atA = vsockAt([5000]);
  let d!: Drivers;
  let rxUsed = 0, txUsed = 0, txHead = -1;
  const snap = await SetRig.snapshotAfter(atA.configs, async (a) => {
    d = { rx: a.newDriver({ queueSize: 16 }), tx: a.newDriver({ queueSize: 16 }), ev: a.newDriver({ queueSize: 4 }) };
    a.bringUp(0, { drivers: [d.rx, d.tx, d.ev] });
    for (let i = 0; i < 8; i++) d.rx.addChain({ writable: [4096] });
    for (let i = 0; i < 2; i++) d.ev.addChain({ writable: [virtio_vsock_event.SIZE] });
    a.kick(0, VSOCK_EVENT_QUEUE);
    // Completed: a connection from guest port 1000 to the host's port 5000, and a few bytes on it.
    d.tx.addChain({ readable: [guestHeader({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1000, dstPort: 5000 })] });
    a.kick(0, VSOCK_TX_QUEUE);
    await a.until(() => d.rx.usedIdx === 1, "the RESPONSE");
    assert.equal(packets(d.rx)[0]!.op, VIRTIO_VSOCK_OP_RESPONSE);
    d.tx.addChain({ readable: [guestHeader({ op: VIRTIO_VSOCK_OP_RW, srcPort: 1000, dstPort: 5000, len: 2 }), new TextEncoder().encode("hi")] });
    a.kick(0, VSOCK_TX_QUEUE);
    let conn = -1, got = "";
    await a.until(() => (conn >= 0 || (conn = accept(atA.services.get(5000)!)) >= 0) && (got += str(readNow(conn).data)) === "hi", "the bytes at the service");
    sys.close(conn);
    // Posted while quiesced: a connection to port 5001, served by whichever device runs next.
    await a.set.quiesce();
    rxUsed = d.rx.usedIdx; // (a credit update may have followed the bytes)
    packets(d.rx);
    txUsed = d.tx.usedIdx;
    d.tx.popAllUsed();
    txHead = d.tx.addChain({ readable: [guestHeader({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1001, dstPort: 5001 })] });
    a.kick(0, VSOCK_TX_QUEUE);
  });
  try {
    const [rec] = snap.saved as VirtioDeviceSavedState[];
    assert.deepEqual(rec!.backend as VsockSavedState, { cid: GUEST_CID, nextHostPort: VSOCK_FIRST_HOST_PORT });
    assert.equal(d.ev.moveTo(snap.memory).usedIdx, 0, "no event was sent to the guest the snapshot was taken of");
    for (const clones of [1, 2]) {
      const ats = Array.from({ length: clones }, () => vsockAt([5001]));
      const rigs = await Promise.all(ats.map((at) => SetRig.restore(at.configs, snap)));
      try {
        await Promise.all(rigs.map((r, i) => carriesOn(r, { rx: r.driver(d.rx), tx: r.driver(d.tx), ev: r.driver(d.ev) }, ats[i]!, { rxUsed, txUsed, txHead, nextHostPort: VSOCK_FIRST_HOST_PORT })));
      } finally {
        for (const r of rigs) await r.stop();
        for (const at of ats) for (const fd of at.services.values()) sys.close(fd);
      }
    }
  } finally {
    snap.memory.dispose();
    for (const fd of atA.services.values()) sys.close(fd);
  }
});
