/**
 * VirtioSet.saveState and VirtioSet.restore (device-saved-state.ts), with
 * every kind of device in its real device thread: each record survives
 * JSON and a restore unchanged; a record of another version, of another
 * kind or malformed is refused with a one-line message and a stable code,
 * and nothing is left running; a save is refused unless the set is quiesced.
 * (The per-device loop tests, *.restore.loop.test.ts, check that the guest
 * carries on after a restore.)
 */
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  ETH_P_IP, VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_S_MEMFREE, VIRTIO_BLK_T_GET_ID, VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_VSOCK_OP_REQUEST, virtio_balloon_stat,
} from "../../linux/abi.generated.js";
import { dataView, setU16, setU64 } from "../../memory/le.js";
import { BALLOON_PAGE_SIZE } from "./balloon.js";
import type { VirtioDeviceSavedState } from "./device-saved-state.js";
import { VirtioSavedStateError } from "./saved-state.js";
import { blkHeader } from "./testing/block-requests.js";
import { VIRTIO_V1 } from "./testing/device-loop-rig.js";
import { concat, ethFrame, fakeTap, netHeader, writePacket } from "./testing/net-test-rig.js";
import { SetRig, type SetSnapshot } from "./testing/snapshot-rig.js";
import { VirtioSet, type VirtioDeviceConfig } from "./virtio-set.js";
import { GUEST_CID, guestHeader } from "./vsock/testing/rig.js";
import { GuestMemory } from "../../memory/guest-memory.js";

const FAKE_TAP_NET = new URL("./testing/net-fake-tap-backend.js", import.meta.url);
const MAC = "52:54:00:12:34:56";
const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), "flint-virtio-restore-"));
  dirs.push(d);
  return d;
}

/** A raw image of `bytes`, every byte 0xab. */
function image(bytes = 1 << 20): string {
  const path = join(tmp(), "disk.img");
  const fd = openSync(path, "w");
  writeSync(fd, new Uint8Array(bytes).fill(0xab));
  closeSync(fd);
  return path;
}

/** One device of every kind, and a second rng the driver never probes; `fd` is a fake TAP's device end. */
function allKinds(o: { disk: string; fd: number; uds: string }): VirtioDeviceConfig[] {
  return [
    { kind: "block", options: { path: o.disk, readOnly: false } },
    { kind: "net", options: { tap: "fake", mac: MAC, fd: o.fd }, backendModule: FAKE_TAP_NET },
    { kind: "vsock", options: { cid: GUEST_CID, uds: o.uds } },
    { kind: "rng", options: {} },
    { kind: "balloon", options: { targetMib: 1 } },
    { kind: "rng", options: {} },
  ];
}

/** A stats buffer (struct virtio_balloon_stat[]) with one entry. */
function statsBuffer(tag: number, value: bigint): Uint8Array {
  const b = new Uint8Array(virtio_balloon_stat.SIZE);
  setU16(dataView(b), virtio_balloon_stat.tag, tag);
  setU64(dataView(b), virtio_balloon_stat.val, value);
  return b;
}

test("every kind's record comes back unchanged through JSON and a restore (save, stringify, parse, restore, save)", async () => {
  const tapA = fakeTap();
  const disk = image();
  const snap = await SetRig.snapshotAfter(allKinds({ disk, fd: tapA.device, uds: join(tmp(), "v.sock") }), async (a) => {
    // virtio-blk: one request served.
    const blk = a.newDriver({ queueSize: 16 });
    a.bringUp(0, { drivers: [blk] });
    blk.addChain({ readable: [blkHeader(VIRTIO_BLK_T_GET_ID, 0)], writable: [20, 1] });
    a.kick(0, 0);
    // virtio-net, mergeable receive buffers: a frame larger than the two buffers posted is held with them.
    const rx = a.newDriver({ queueSize: 16 }), tx = a.newDriver({ queueSize: 16 });
    a.bringUp(1, { features: VIRTIO_V1 | (1n << BigInt(VIRTIO_NET_F_MRG_RXBUF)), drivers: [rx, tx] });
    rx.addChain({ writable: [512] });
    rx.addChain({ writable: [512] });
    a.kick(1, 0);
    const mac = Uint8Array.from(MAC.split(":"), (h) => parseInt(h, 16));
    writePacket(tapA.peer, concat(netHeader(), ethFrame(mac, new Uint8Array([2, 0, 0, 0, 0, 1]), ETH_P_IP, new Uint8Array(1500).fill(7))));
    // virtio-vsock: a request to a port nobody serves (answered with RST).
    const vrx = a.newDriver({ queueSize: 16 }), vtx = a.newDriver({ queueSize: 16 }), vev = a.newDriver({ queueSize: 4 });
    a.bringUp(2, { drivers: [vrx, vtx, vev] });
    for (let i = 0; i < 4; i++) vrx.addChain({ writable: [4096] });
    vev.addChain({ writable: [8] });
    vtx.addChain({ readable: [guestHeader({ op: VIRTIO_VSOCK_OP_REQUEST, srcPort: 1000, dstPort: 9 })] });
    a.kick(2, 1);
    // virtio-rng: one request.
    const rng = a.newDriver({ queueSize: 8 });
    a.bringUp(3, { drivers: [rng] });
    rng.addChain({ writable: [64] });
    a.kick(3, 0);
    // virtio-balloon with statistics: two pages inflated, a stats buffer held.
    const inflate = a.newDriver({ queueSize: 8 }), deflate = a.newDriver({ queueSize: 8 }), stats = a.newDriver({ queueSize: 8 });
    a.bringUp(4, { features: VIRTIO_V1 | (1n << BigInt(VIRTIO_BALLOON_F_STATS_VQ)), drivers: [inflate, deflate, stats] });
    const pfns = new Uint8Array(8);
    new DataView(pfns.buffer).setUint32(0, (24 << 20) / BALLOON_PAGE_SIZE, true);
    new DataView(pfns.buffer).setUint32(4, (24 << 20) / BALLOON_PAGE_SIZE + 1, true);
    inflate.addChain({ readable: [pfns] });
    a.kick(4, 0);
    stats.addChain({ readable: [statsBuffer(VIRTIO_BALLOON_S_MEMFREE, 123_456_789_012n)] });
    a.kick(4, 2);
    await a.savedWhen((s) => {
      const net = s[1]!.backend as { rxHeld: unknown[] };
      const balloon = s[4]!.backend as { statsHead: number | null; inflated: unknown[] };
      return blk.usedIdx === 1 && rng.usedIdx === 1 && vrx.usedIdx === 1 && net.rxHeld.length === 2 && balloon.statsHead !== null && balloon.inflated.length === 1;
    }, "every device's traffic done");
  }, { memoryBytes: 32 << 20 }).finally(() => tapA.close());
  const tapB = fakeTap();
  try {
    const saved = snap.saved as VirtioDeviceSavedState[];
    assert.deepEqual(saved.map((s) => [s.kind, s.queues === null]), [
      ["block", false], ["net", false], ["vsock", false], ["rng", false], ["balloon", false], ["rng", true],
    ]);
    assert.equal((saved[1]!.backend as { rxPending: string }).rxPending.length > 0, true, "the held frame is in the record");
    const b = await SetRig.restore(allKinds({ disk, fd: tapB.device, uds: join(tmp(), "v.sock") }), snap);
    try {
      // A restored set starts quiesced: it can be saved at once, and says what it was given.
      assert.deepEqual(JSON.parse(JSON.stringify(await b.set.saveState())), snap.saved);
    } finally {
      await b.stop();
    }
  } finally {
    tapB.close();
    snap.memory.dispose();
  }
});

test("saveState is refused unless the set is quiesced (EVIRTIONOTQUIESCED), and after a resume again", async () => {
  const rig = await SetRig.start([{ kind: "rng", options: {} }]);
  try {
    const notQuiesced = (e: unknown) => e instanceof VirtioSavedStateError && e.code === "EVIRTIONOTQUIESCED" && /not quiesced/.test(e.message);
    await assert.rejects(rig.set.saveState(), notQuiesced);
    await rig.set.quiesce();
    const [rec] = await rig.set.saveState();
    assert.equal(rec!.version, 1);
    await rig.set.resume();
    await assert.rejects(rig.set.saveState(), notQuiesced);
  } finally {
    await rig.stop();
  }
});

/** A snapshot of one probed rng, for the tests that spoil it. */
function rngSnapshot(): Promise<SetSnapshot> {
  return SetRig.snapshotAfter([{ kind: "rng", options: {} }], async (a) => {
    const drv = a.newDriver({ queueSize: 8 });
    a.bringUp(0, { drivers: [drv] });
    drv.addChain({ writable: [16] });
    a.kick(0, 0);
    await a.until(() => drv.usedIdx === 1, "the request");
  });
}

test("a record of another version, of another kind, for another device count, or malformed is refused before anything is made", async () => {
  const snap = await rngSnapshot();
  const mem = GuestMemory.create([{ guestBase: 0, size: 16 << 20 }]);
  try {
    const [rec] = snap.saved as Record<string, unknown>[];
    const refused = (saved: unknown, code: string, pattern: RegExp, configs: VirtioDeviceConfig[] = [{ kind: "rng", options: {} }]) => {
      assert.throws(() => VirtioSet.restore(configs, mem.describe(), undefined, saved), (e: unknown) => {
        assert.ok(e instanceof VirtioSavedStateError, String(e));
        assert.equal(e.code, code);
        assert.match(e.message, pattern);
        assert.ok(!e.message.includes("\n"), "one line");
        return true;
      });
    };
    refused([{ ...rec, version: 2 }], "EVIRTIOSNAPVERSION", /^Cannot restore virtio device 0 \(rng\): its saved state has version 2; this flint reads version 1$/);
    refused([{ ...rec, version: undefined }], "EVIRTIOSNAPVERSION", /version undefined/);
    refused([rec], "EVIRTIOSNAPMISMATCH", /saved state is of a "rng" device/, [{ kind: "balloon", options: {} }]);
    refused([rec, rec], "EVIRTIOSNAPMISMATCH", /the snapshot has 2 devices, the configuration 1/);
    refused({ devices: [rec] }, "EVIRTIOSNAPFORMAT", /must be an array/);
    refused(["x"], "EVIRTIOSNAPFORMAT", /must be an object/);
    const transport = rec!.transport as Record<string, unknown>;
    refused([{ ...rec, transport: { ...transport, status: "live" } }], "EVIRTIOSNAPFORMAT", /field transport\.status must be a whole number/);
    refused([{ ...rec, transport: { ...transport, driverFeatures: 4294967296 } }], "EVIRTIOSNAPFORMAT", /transport\.driverFeatures must be a 64-bit unsigned integer as a decimal string/);
    refused([{ ...rec, transport: { ...transport, config: "not base64!" } }], "EVIRTIOSNAPFORMAT", /transport\.config must be base64/);
    refused([{ ...rec, queues: [{ nextAvail: 70000 }] }], "EVIRTIOSNAPFORMAT", /queues\[0\]/);
    const { backend: _b, ...noBackend } = rec!;
    refused([noBackend], "EVIRTIOSNAPFORMAT", /field backend is missing/);
  } finally {
    mem.dispose();
    snap.memory.dispose();
  }
});

test("a record that is well-formed but does not fit its device, or whose backend part is malformed, fails start() with its code and leaves nothing running", async () => {
  const snap = await rngSnapshot();
  try {
    const [rec] = snap.saved as VirtioDeviceSavedState[];
    const startRefused = async (saved: unknown, code: string, pattern: RegExp) => {
      const mem = GuestMemory.create([{ guestBase: 0, size: 16 << 20 }]);
      try {
        const set = VirtioSet.restore([{ kind: "rng", options: {} }], mem.describe(), undefined, saved);
        await assert.rejects(set.start(), (e: unknown) => {
          assert.ok(e instanceof VirtioSavedStateError, String(e));
          assert.equal(e.code, code);
          assert.match(e.message, pattern);
          assert.ok(!e.message.includes("\n"), "one line");
          return true;
        });
        assert.ok(set.devices.every((d) => !d.quiesced), "no device runs");
        await Promise.all(set.threads.map((t) => t.exited));
      } finally {
        mem.dispose();
      }
    };
    const q = rec!.queues![0]!;
    await startRefused([{ ...rec, backend: { limiter: "fast" } }], "EVIRTIOSNAPFORMAT", /^Cannot restore virtio-rng@0x[0-9a-f]+: saved state field backend\.limiter must be an object$/);
    await startRefused([{ ...rec, queues: [{ ...q, nextAvail: q.nextAvail + 1 }] }], "EVIRTIOSNAPMISMATCH", /0 chains in flight, but next avail 2 and next used 1 say 1/);
    await startRefused([{ ...rec, transport: { ...rec!.transport, deviceId: 2 } }], "EVIRTIOSNAPMISMATCH", /DeviceID 2/);
    await startRefused([{ ...rec, transport: { ...rec!.transport, queues: [{ ...rec!.transport.queues[0]!, usedRing: String(1 << 30) }] } }], "EVIRTIOSNAPMISMATCH", /outside guest memory/);
  } finally {
    snap.memory.dispose();
  }
});
