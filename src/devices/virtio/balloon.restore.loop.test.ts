/**
 * virtio-balloon saved and restored in its real device thread
 * (testing/snapshot-rig.ts): the statistics buffer the device held at the
 * snapshot is given back once, when the host asks the restored device for
 * fresh statistics; inflate and deflate requests posted before the snapshot
 * are served once; the target, the latest statistics and the inflated pages
 * carry over (a page inflated before the snapshot cannot be inflated again);
 * and so for each of two clones.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_S_MEMFREE, virtio_balloon_stat } from "../../linux/abi.generated.js";
import { dataView, setU16, setU64 } from "../../memory/le.js";
import type { BalloonSavedState } from "./balloon-persist.js";
import { BALLOON_DEFLATE_QUEUE, BALLOON_INFLATE_QUEUE, BALLOON_PAGE_SIZE, BALLOON_STATS_QUEUE, type BalloonInfo } from "./balloon.js";
import type { VirtioDeviceSavedState } from "./device-saved-state.js";
import { VIRTIO_V1 } from "./testing/device-loop-rig.js";
import type { FakeDriver } from "./testing/fake-driver.js";
import { SetRig, type SetSnapshot } from "./testing/snapshot-rig.js";
import type { VirtioDeviceConfig } from "./virtio-set.js";

const CONFIGS: VirtioDeviceConfig[] = [{ kind: "balloon", options: {} }];
const FEATURES = VIRTIO_V1 | (1n << BigInt(VIRTIO_BALLOON_F_STATS_VQ));
/** Balloon pages from 8 MiB up (the rings and buffers live below). */
const PFN0 = (8 << 20) / BALLOON_PAGE_SIZE;
const FREE_BYTES = 123_456_789_012n;

const pfnList = (...pfns: number[]) => Uint8Array.from(new Uint8Array(Uint32Array.from(pfns).buffer));
function statsBuffer(value: bigint): Uint8Array {
  const b = new Uint8Array(virtio_balloon_stat.SIZE);
  setU16(dataView(b), virtio_balloon_stat.tag, VIRTIO_BALLOON_S_MEMFREE);
  setU64(dataView(b), virtio_balloon_stat.val, value);
  return b;
}

interface Drivers { inflate: FakeDriver; deflate: FakeDriver; stats: FakeDriver }

/** The guest's and host's part after a restore (see the module comment). */
async function carriesOn(rig: SetRig, d: Drivers, o: { statsHead: number; deflateHead: number; inflateHead: number }): Promise<void> {
  await rig.set.resume();
  await rig.until(() => d.deflate.usedIdx === 1 && d.inflate.usedIdx === 2, "the requests posted before the snapshot");
  assert.deepEqual(d.deflate.popAllUsed().map((u) => u.head), [o.deflateHead]);
  assert.deepEqual(d.inflate.popAllUsed().map((u) => u.head), [o.inflateHead]);
  assert.equal(d.stats.usedIdx, 0, "the statistics buffer stays held until the host asks");
  const info = (await rig.set.devices[0]!.request("info")) as BalloonInfo;
  assert.equal(info.targetMib, 2);
  assert.equal(info.statsUpdates, 1);
  assert.equal(info.stats["free-memory"], Number(FREE_BYTES));
  assert.equal(info.metrics.inflatedPages, 2, "the two pages posted before the snapshot");
  await rig.until(() => d.stats.usedIdx === 1, "the held statistics buffer given back");
  assert.deepEqual(d.stats.popAllUsed().map((u) => u.head), [o.statsHead], "once");
  // A page inflated before the snapshot (and not deflated) is still in the balloon.
  d.inflate.addChain({ readable: [pfnList(PFN0 + 3)] });
  rig.kick(0, BALLOON_INFLATE_QUEUE);
  await rig.until(() => d.inflate.usedIdx === 3, "a new inflate request");
  d.inflate.popAllUsed();
  const after = (await rig.set.devices[0]!.request("info")) as BalloonInfo;
  assert.equal(after.metrics.badPfns, 1, "inflating it again is refused");
  assert.equal(after.metrics.inflatedPages, 2);
}

test("the held statistics buffer comes back once after a restore; posted requests are served once; target, statistics and inflated pages carry over; two clones likewise", async () => {
  let d!: Drivers;
  const heads = { statsHead: -1, deflateHead: -1, inflateHead: -1 };
  const snap = await SetRig.snapshotAfter(CONFIGS, async (a) => {
    d = { inflate: a.newDriver({ queueSize: 8 }), deflate: a.newDriver({ queueSize: 8 }), stats: a.newDriver({ queueSize: 8 }) };
    a.bringUp(0, { features: FEATURES, drivers: [d.inflate, d.deflate, d.stats] });
    await a.set.devices[0]!.request("setTarget", { targetMib: 2 });
    // Completed: four pages inflated.
    d.inflate.addChain({ readable: [pfnList(PFN0, PFN0 + 1, PFN0 + 2, PFN0 + 3)] });
    a.kick(0, BALLOON_INFLATE_QUEUE);
    await a.until(() => d.inflate.usedIdx === 1, "the first inflate");
    d.inflate.popAllUsed();
    // The statistics buffer, which the device keeps.
    heads.statsHead = d.stats.addChain({ readable: [statsBuffer(FREE_BYTES)] });
    a.kick(0, BALLOON_STATS_QUEUE);
    await a.savedWhen((s) => (s[0]!.backend as BalloonSavedState).statsHead === heads.statsHead, "the statistics buffer held");
    // Posted while quiesced: deflate two of the pages, inflate two others.
    heads.deflateHead = d.deflate.addChain({ readable: [pfnList(PFN0, PFN0 + 1)] });
    heads.inflateHead = d.inflate.addChain({ readable: [pfnList(PFN0 + 8, PFN0 + 9)] });
    a.kick(0, BALLOON_DEFLATE_QUEUE);
    a.kick(0, BALLOON_INFLATE_QUEUE);
  });
  try {
    const [rec] = snap.saved as VirtioDeviceSavedState[];
    const balloon = rec!.backend as BalloonSavedState;
    assert.deepEqual(
      { target: balloon.targetPages, inflated: balloon.inflated, statsHead: balloon.statsHead, stats: balloon.stats },
      { target: (2 << 20) / BALLOON_PAGE_SIZE, inflated: [[8 << 20, 4]], statsHead: heads.statsHead, stats: [[VIRTIO_BALLOON_S_MEMFREE, String(FREE_BYTES)]] },
    );
    assert.deepEqual(rec!.queues![BALLOON_STATS_QUEUE]!.inFlight.map(([h]) => h), [heads.statsHead]);
    for (const clones of [1, 2]) {
      const rigs = await Promise.all(Array.from({ length: clones }, () => SetRig.restore(CONFIGS, snap)));
      try {
        await Promise.all(rigs.map((r) => carriesOn(r, { inflate: r.driver(d.inflate), deflate: r.driver(d.deflate), stats: r.driver(d.stats) }, heads)));
        for (const r of rigs) assert.deepEqual(r.faults.filter((f) => !/PFNs outside guest RAM or already inflated/.test(f)), []);
      } finally {
        for (const r of rigs) await r.stop();
      }
    }
  } finally {
    snap.memory.dispose();
  }
});
