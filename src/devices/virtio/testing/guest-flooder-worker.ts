/**
 * A guest vCPU that floods one virtqueue from its own thread, for tests of
 * the device loop (device-loop-rig.ts starts it: GuestFlooder).
 *
 * The chains' descriptors were written beforehand by the test; this thread
 * only keeps making them available again: whenever fewer than
 * `maxOutstanding` chains are between the device's used idx and avail idx,
 * it puts the next head (round robin over `heads`) in the available ring,
 * publishes avail idx and, unless told not to, kicks the queue's notify
 * eventfd (what KVM's ioeventfd does for a QueueNotify write). So the device
 * finds a full ring every time it looks, for as long as the test lets it run,
 * as with a guest on another vCPU re-adding every buffer it gets back.
 *
 * Heads are only reused once the device returned them (used idx), so with
 * `maxOutstanding <= heads.length` and a device that returns chains in order
 * no head is made available while the device holds it.
 */
import { workerData } from "node:worker_threads";
import { vring_avail, vring_used } from "../../../linux/abi.generated.js";
import { GuestMemory } from "../../../memory/guest-memory.js";
import { sys } from "../../../sys/native.js";
import { FLOOD_ADDED, FLOOD_KICKS, FLOOD_PAUSE, FLOOD_PAUSED, FLOOD_RUNNING, FLOOD_STOP, type FlooderInit } from "./guest-flooder.js";

const init = workerData as FlooderInit;
const ctl = new Int32Array(init.control);
const mem = GuestMemory.attach(init.memory);
const { size, availRing, usedRing } = init.layout;
const avail = mem.slice(availRing, vring_avail.ring + 2 * size);
const avail16 = new Uint16Array(avail.buffer, avail.byteOffset, avail.byteLength / 2);
const used = mem.slice(usedRing, vring_used.ring);
const used16 = new Uint16Array(used.buffer, used.byteOffset, used.byteLength / 2);
const AVAIL_IDX = vring_avail.idx / 2, AVAIL_RING = vring_avail.ring / 2, USED_IDX = vring_used.idx / 2;
const one = new BigUint64Array([1n]);

Atomics.store(ctl, FLOOD_RUNNING, 1);
let next = 0, spins = 0;
while (Atomics.load(ctl, FLOOD_STOP) === 0) {
  if (Atomics.load(ctl, FLOOD_PAUSE) !== 0) {
    Atomics.store(ctl, FLOOD_PAUSED, 1);
    Atomics.wait(ctl, FLOOD_PAUSE, 1, 5);
    continue;
  }
  Atomics.store(ctl, FLOOD_PAUSED, 0);
  const a = Atomics.load(avail16, AVAIL_IDX);
  const u = Atomics.load(used16, USED_IDX);
  if (((a - u) & 0xffff) >= init.maxOutstanding) {
    // Full: spin like a guest polling its used ring, and now and then let other threads run.
    if (++spins % 4096 === 0) Atomics.wait(ctl, FLOOD_STOP, 0, 0.05);
    continue;
  }
  Atomics.store(avail16, AVAIL_RING + (a & (size - 1)), init.heads[next]!);
  next = (next + 1) % init.heads.length;
  // The ring entry is stored before the index that publishes it (§2.7.13).
  Atomics.store(avail16, AVAIL_IDX, (a + 1) & 0xffff);
  Atomics.add(ctl, FLOOD_ADDED, 1);
  if (init.notifyFd >= 0) {
    sys.write(init.notifyFd, one, 8);
    Atomics.add(ctl, FLOOD_KICKS, 1);
  }
}
Atomics.store(ctl, FLOOD_RUNNING, 0);
