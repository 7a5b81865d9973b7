/**
 * A test rig for snapshots of virtio devices: a VirtioSet in its REAL device
 * threads over guest memory of its own, played by fake guest drivers, that
 * can be snapshotted (quiesce, saveState through JSON, a copy of guest
 * memory) and restored into a NEW set over a NEW mapping holding the same
 * bytes, as a restore from a memory file would; or into several (clones).
 *
 *   let drv!: FakeDriver;
 *   const snap = await SetRig.snapshotAfter([{ kind: "rng", options: {} }], async (a) => {
 *     drv = a.newDriver({ queueSize: 16 });
 *     a.bringUp(0, { drivers: [drv] });                   // Linux's probe of device 0, up to DRIVER_OK
 *     drv.addChain({ writable: [64] }); a.kick(0, 0);     // queue 0 of device 0
 *   });                                                   // quiesced, saved through JSON, memory copied, stopped
 *   const b = await SetRig.restore([{ kind: "rng", options: {} }], snap);
 *   const drvB = b.driver(drv);                           // the same driver over b's memory
 *   await b.set.resume();                                 // runs, kicked once
 *
 * What is real: the worker threads, their poll loops, the backends, the
 * shared transport state, the eventfds, guest memory. What is played: the
 * register files run on the test's thread (mmio-access.ts), kicks go through
 * them (QueueNotify writes the queue's eventfd), there is no KVM VM (no
 * irqfd or ioeventfd registration).
 */
import { performance } from "node:perf_hooks";
import { EAGAIN, VIRTIO_MMIO_QUEUE_NOTIFY } from "../../../linux/abi.generated.js";
import { GuestMemory } from "../../../memory/guest-memory.js";
import { sys } from "../../../sys/native.js";
import { VirtioMmioTransport } from "../mmio.js";
import { availRingBytes, descTableBytes, usedRingBytes } from "../queue.js";
import type { QueueFeatures } from "../types.js";
import { VirtioSet, type VirtioDeviceConfig, type VirtioDeviceSavedState } from "../virtio-set.js";
import { VIRTIO_V1 } from "./device-loop-rig.js";
import { FakeDriver } from "./fake-driver.js";
import { type MmioAccess, mmioAccess, probeAsLinux } from "./mmio-access.js";

const MIB = 1 << 20;
const PAGE = 4096;
/** Guest memory is copied in pieces of this size, skipping pieces that are all zeros (never touched). */
const COPY_CHUNK = 64 * 1024;

/** A snapshot of a SetRig: the devices' records (as JSON gives them back) and guest memory. */
export interface SetSnapshot {
  /** VirtioSet.saveState's records after JSON.stringify and JSON.parse. */
  saved: unknown;
  /** The JSON text itself. */
  json: string;
  /** Guest memory as it was (a mapping of its own). */
  memory: GuestMemory;
  /** Where the rig's allocator stood (guest state, like the drivers'). */
  nextFree: number;
}

/** A new mapping holding the same bytes as `mem` (untouched pages stay untouched). */
export function copyGuestMemory(mem: GuestMemory): GuestMemory {
  const copy = GuestMemory.create(mem.regions.map((r) => ({ guestBase: r.guestBase, size: r.size })));
  for (const r of mem.regions) {
    for (let off = 0; off < r.size; off += COPY_CHUNK) {
      const n = Math.min(COPY_CHUNK, r.size - off);
      const bytes = mem.slice(r.guestBase + off, n);
      if (bytes.some((b) => b !== 0)) copy.write(r.guestBase + off, bytes);
    }
  }
  return copy;
}

/** A VirtioSet and the guest's side of it. See the module comment. */
export class SetRig {
  /**
   * `faults`: guest faults the device threads reported (failures, NEEDS_RESET, among them),
   * and those the register files counted.
   */
  private constructor(readonly set: VirtioSet, readonly mem: GuestMemory, private nextFree: number, readonly faults: string[]) {
    this.mmio = set.devices.map((d) => mmioAccess(new VirtioMmioTransport(d.describe().state, d.spec.name, { guestFault: (_n, m) => this.faults.push(m) })));
  }

  /** Register access to each device, as a vCPU does it. */
  readonly mmio: MmioAccess[];

  /** A set for `configs` over `memoryBytes` (default 16 MiB) of fresh guest RAM, started. */
  static async start(configs: readonly VirtioDeviceConfig[], o: { memoryBytes?: number } = {}): Promise<SetRig> {
    const mem = GuestMemory.create([{ guestBase: 0, size: o.memoryBytes ?? 16 * MIB }]);
    return SetRig.launch(mem, 0, (m, hooks) => new VirtioSet(configs, m.describe(), undefined, hooks));
  }

  /**
   * Starts a set for `configs`, lets `play` drive it (the guest's and host's part before the
   * snapshot), takes the snapshot and stops the set, whatever happened.
   */
  static async snapshotAfter(configs: readonly VirtioDeviceConfig[], play: (rig: SetRig) => Promise<void>, o: { memoryBytes?: number } = {}): Promise<SetSnapshot> {
    const rig = await SetRig.start(configs, o);
    try {
      await play(rig);
      return await rig.snapshot();
    } finally {
      await rig.stop();
    }
  }

  /**
   * A NEW set for `configs` (the snapshot's, options possibly overridden) over a NEW copy
   * of the snapshot's memory, brought up from its records (VirtioSet.restore) and started:
   * quiesced until `set.resume()`.
   */
  static async restore(configs: readonly VirtioDeviceConfig[], snap: SetSnapshot): Promise<SetRig> {
    const mem = copyGuestMemory(snap.memory);
    return SetRig.launch(mem, snap.nextFree, (m, hooks) => VirtioSet.restore(configs, m.describe(), undefined, snap.saved, hooks));
  }

  private static async launch(
    mem: GuestMemory, nextFree: number, make: (mem: GuestMemory, hooks: ConstructorParameters<typeof VirtioSet>[3]) => VirtioSet,
  ): Promise<SetRig> {
    const faults: string[] = [];
    let set: VirtioSet;
    try {
      set = make(mem, { onGuestFault: (d, m) => faults.push(`${d}: ${m}`) });
    } catch (e) {
      mem.dispose();
      throw e;
    }
    try {
      await set.start();
    } catch (e) {
      mem.dispose();
      throw e;
    }
    return new SetRig(set, mem, nextFree, faults);
  }

  /** Takes `bytes` of guest RAM (page-aligned). */
  alloc(bytes: number): number {
    const addr = this.nextFree;
    this.nextFree += Math.ceil(bytes / PAGE) * PAGE;
    if (this.nextFree > this.mem.totalBytes) throw new Error(`SetRig: guest RAM cannot fit ${bytes} more bytes`);
    return addr;
  }

  /** A fake driver for a queue in fresh guest RAM: rings, then a buffer heap (default 64 KiB). */
  newDriver(o: { queueSize: number; heapBytes?: number; features?: Partial<QueueFeatures> }): FakeDriver {
    const bytes = descTableBytes(o.queueSize) + availRingBytes(o.queueSize) + usedRingBytes(o.queueSize) + 64 + (o.heapBytes ?? 64 * 1024);
    return new FakeDriver(this.mem, { base: this.alloc(bytes), bytes: Math.ceil(bytes / PAGE) * PAGE, queueSize: o.queueSize, features: o.features });
  }

  /** `drv` (a driver of the snapshot's guest) over this rig's memory. */
  driver(drv: FakeDriver): FakeDriver {
    return drv.moveTo(this.mem);
  }

  /** Linux's probe of device `dev` up to DRIVER_OK (mmio-access.ts probeAsLinux). */
  bringUp(dev: number, o: { features?: bigint; drivers: (FakeDriver | undefined)[] }): void {
    probeAsLinux(this.mmio[dev]!.w, o.features ?? VIRTIO_V1, o.drivers);
  }

  /** A QueueNotify write for queue `q` of device `dev`. */
  kick(dev: number, q: number): void {
    this.mmio[dev]!.w(VIRTIO_MMIO_QUEUE_NOTIFY, q);
  }

  /** Interrupts device `dev` sent since the last call (its irqfd eventfd's counter). */
  takeInterrupts(dev: number): bigint {
    const c = new BigUint64Array(1);
    const n = sys.read(this.set.devices[dev]!.irqFd, c, 8);
    return n === -EAGAIN || n !== 8 ? 0n : c[0]!;
  }

  /** Quiesces the set and takes a snapshot: the records through JSON, and a copy of guest memory. */
  async snapshot(): Promise<SetSnapshot> {
    await this.set.quiesce();
    const json = JSON.stringify(await this.set.saveState());
    return { saved: JSON.parse(json) as VirtioDeviceSavedState[], json, memory: copyGuestMemory(this.mem), nextFree: this.nextFree };
  }

  /**
   * Quiesces and saves until `cond` holds of the records (for a state the device thread
   * reaches on its own, e.g. receive chains held for a frame), resuming in between;
   * resolves with them, the set left quiesced. Rejects after `timeoutMs` naming `what`.
   */
  async savedWhen(cond: (s: VirtioDeviceSavedState[]) => boolean, what: string, timeoutMs = 10_000): Promise<VirtioDeviceSavedState[]> {
    const end = performance.now() + timeoutMs;
    for (;;) {
      await this.set.quiesce();
      const s = await this.set.saveState();
      if (cond(s)) return s;
      if (performance.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for a saved state with: ${what}`);
      await this.set.resume();
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Polls `cond` (the event loop keeps running); rejects after `timeoutMs` naming `what`. */
  async until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const end = performance.now() + timeoutMs;
    while (!cond()) {
      if (performance.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}; faults: ${this.faults.join("; ")}`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Stops the set (backends shut down) and unmaps guest RAM. */
  async stop(): Promise<void> {
    await this.set.stop();
    this.mem.dispose();
  }
}
