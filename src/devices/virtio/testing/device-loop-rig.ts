/**
 * A test rig that runs a virtio backend in its REAL device thread
 * (VirtioDeviceHandle, device-thread-worker.ts) and plays the guest against
 * it, for tests of the device loop as a whole: budgets, control latency,
 * resets mid-request, memory bounds under a hostile driver.
 *
 *   const rig = await DeviceLoopRig.start({ backendModule: new URL("../rng.js", import.meta.url) });
 *   const drv = rig.newDriver(0, { queueSize: 64 });      // rings + buffer heap in guest RAM
 *   rig.bringUp({ features: VIRTIO_V1, drivers: [drv] });  // Linux's probe sequence, up to DRIVER_OK
 *   drv.addChain({ writable: [16] }); rig.kick(0);
 *   await rig.until(() => drv.usedIdx === 1, "rng answers");
 *   const flood = await rig.flood(0, { heads });           // a second "vCPU" keeps re-adding chains
 *   const { ms } = await rig.timedRequest("info");         // a control request, answered while flooded
 *   await flood.stop(); await rig.stop();
 *
 * What is real: the worker thread, its poll loop, the backend, the shared
 * transport state, the notify and irq eventfds, guest memory (an mmap shared
 * by every thread). What is played: the MMIO register file runs on the test's
 * thread (as on a vCPU thread, mmio-access.ts), the driver's rings are
 * FakeDrivers in a guest RAM region owned by the rig, QueueNotify writes go
 * through the transport (which writes the queue's notify eventfd, as KVM's
 * ioeventfd would), and interrupts are read from the irqfd eventfd.
 *
 * Hostile driving: `arbLoopAction` generates actions (raw ring writes from
 * fake-driver-hostile.ts, chains whose buffers alias one range with maximal
 * lengths, kicks, resets mid-request, config writes) and `rig.apply` plays
 * one. `MemoryWatch` measures process heap and RSS (current and peak,
 * /proc/self/status VmHWM) against stated bounds; `timedRequest` and
 * `timedReset` measure how long the device thread takes to answer.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Worker } from "node:worker_threads";
import fc from "fast-check";
import {
  EAGAIN, POLLIN, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_STATUS, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
  pollfd,
} from "../../../linux/abi.generated.js";
import { GuestMemory } from "../../../memory/guest-memory.js";
import { sys } from "../../../sys/native.js";
import { DeviceThread, VirtioDeviceHandle } from "../device-thread.js";
import { VirtioMmioTransport } from "../mmio.js";
import { availRingBytes, descTableBytes, usedRingBytes } from "../queue.js";
import type { QueueFeatures } from "../types.js";
import { FakeDriver, type RawDescriptor } from "./fake-driver.js";
import { arbGuestAddress, arbRawDescriptor, spaceOf } from "./fake-driver-hostile.js";
import { FLOOD_ADDED, FLOOD_KICKS, FLOOD_PAUSE, FLOOD_PAUSED, FLOOD_RUNNING, FLOOD_SLOTS, FLOOD_STOP, type FlooderInit } from "./guest-flooder.js";
import { type MmioAccess, mmioAccess, probeAsLinux } from "./mmio-access.js";

/** VIRTIO_F_VERSION_1 as a feature bit (every driver accepts it). */
export const VIRTIO_V1 = 1n << BigInt(VIRTIO_F_VERSION_1);
const MIB = 1024 * 1024;
const PAGE = 4096;

/** How to start a rig. */
export interface DeviceLoopRigOptions {
  /** The backend module (it exports `createBackend(options)`), e.g. new URL("../rng.js", import.meta.url). */
  backendModule: URL;
  /** JSON options for its createBackend. */
  backendOptions?: unknown;
  /** For messages (default "virtio-rig"). */
  name?: string;
  /** Guest RAM the rig maps, one region at guest address 0 (default 16 MiB; MAP_NORESERVE, so untouched pages cost nothing). */
  memoryBytes?: number;
}

/** Keeps a count and the last few messages of a stream (a rig running 10^6 actions must not grow). */
export class BoundedLog {
  count = 0;
  readonly last: string[] = [];
  constructor(readonly keep = 20) {}
  push(m: string): void {
    this.count++;
    this.last.push(m);
    if (this.last.length > this.keep) this.last.shift();
  }
}

/** A driver queue set-up for bringUp: the rings of `driver`, or not ready. */
export type QueueSetup = FakeDriver | undefined;

/** The device in its real thread, and the guest's side of it. See the module comment. */
export class DeviceLoopRig {
  readonly dev: VirtioDeviceHandle;
  readonly mem: GuestMemory;
  readonly transport: VirtioMmioTransport;
  /** Register access on this thread, as a vCPU does it. */
  readonly mmio: MmioAccess;
  /** Guest fault reports the device thread posted (one fault or a summary each), and those the register file counted. */
  readonly deviceFaults = new BoundedLog();
  /** Faults the device thread's reports stand for (a summary stands for many). */
  deviceFaultsReported = 0;
  readonly transportFaults = new BoundedLog();
  /** Failures (NEEDS_RESET reasons) the device thread reported. */
  readonly failureLog = new BoundedLog();
  /** The drivers of the last bringUp, by queue. */
  drivers: QueueSetup[] = [];
  /** The features of the last bringUp. */
  features = VIRTIO_V1;
  private nextFree = 0;
  private readonly floods = new Set<GuestFlooder>();

  private constructor(dev: VirtioDeviceHandle, mem: GuestMemory) {
    this.dev = dev;
    this.mem = mem;
    this.transport = new VirtioMmioTransport(dev.describe().state, dev.spec.name, { guestFault: (_d, m) => this.transportFaults.push(m) });
    this.mmio = mmioAccess(this.transport);
  }

  /** Maps guest RAM and starts the backend in a device thread of its own. */
  static async start(o: DeviceLoopRigOptions): Promise<DeviceLoopRig> {
    const [rig] = await DeviceLoopRig.startShared([o]);
    return rig!;
  }

  /**
   * One rig per options, each with its own guest RAM, all devices on ONE
   * device thread (started once for all of them), as a VM's devices are;
   * `thread` to put them on a given one (a shared thread already running).
   */
  static async startShared(options: readonly DeviceLoopRigOptions[], thread = new DeviceThread("rig device thread")): Promise<DeviceLoopRig[]> {
    const rigs = options.map((o) => DeviceLoopRig.build(o, thread));
    const started = await Promise.allSettled(rigs.map((r) => r.dev.start()));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) {
      for (const r of rigs) await r.stop();
      throw failed.reason;
    }
    return rigs;
  }

  private static build(o: DeviceLoopRigOptions, thread: DeviceThread): DeviceLoopRig {
    const mem = GuestMemory.create([{ guestBase: 0, size: o.memoryBytes ?? 16 * MIB }]);
    let rig: DeviceLoopRig | undefined;
    let dev: VirtioDeviceHandle;
    try {
      dev = new VirtioDeviceHandle({
        name: o.name ?? "virtio-rig", backendModule: o.backendModule, backendOptions: o.backendOptions ?? {},
        memory: mem.describe(), mmioBase: 0, gsi: 5, thread,
        onGuestFault: (_d, m, count) => {
          if (!rig) return;
          rig.deviceFaults.push(m);
          rig.deviceFaultsReported += count;
        },
        onFailed: (_d, r) => rig?.failureLog.push(r),
      });
    } catch (e) {
      mem.dispose();
      throw e;
    }
    rig = new DeviceLoopRig(dev, mem);
    return rig;
  }

  /** Stops floods and the device thread (backend.shutdown ran), then unmaps guest RAM. */
  async stop(): Promise<void> {
    for (const f of [...this.floods]) await f.stop();
    await this.dev.stop();
    this.mem.dispose();
  }

  get queueCount(): number { return this.dev.state.queueCount; }
  queueMaxSize(q: number): number { return this.dev.state.queueRegister(q, "numMax"); }
  /** The device status register as the driver reads it. */
  get status(): number { return this.mmio.r(VIRTIO_MMIO_STATUS); }
  get needsReset(): boolean { return (this.status & VIRTIO_CONFIG_S_NEEDS_RESET) !== 0; }
  /** Guest faults counted in the shared state (device thread and register file). */
  get guestFaults(): number { return this.dev.state.guestFaults; }

  /** Takes `bytes` of guest RAM (page-aligned), for rings, buffers, aliased ranges. Never given back. */
  alloc(bytes: number): number {
    const addr = this.nextFree;
    const end = addr + Math.ceil(bytes / PAGE) * PAGE;
    if (end > this.mem.totalBytes) throw new Error(`DeviceLoopRig: guest RAM cannot fit ${bytes} more bytes (raise memoryBytes)`);
    this.nextFree = end;
    return addr;
  }

  /**
   * A fake driver for queue `q` in fresh guest RAM (rings, then a buffer heap of `heapBytes`,
   * default 64 KiB). Pass it to bringUp.
   */
  newDriver(q: number, o: { queueSize?: number; heapBytes?: number; features?: Partial<QueueFeatures> } = {}): FakeDriver {
    const queueSize = o.queueSize ?? this.queueMaxSize(q);
    const bytes = descTableBytes(queueSize) + availRingBytes(queueSize) + usedRingBytes(queueSize) + 64 + (o.heapBytes ?? 64 * 1024);
    return new FakeDriver(this.mem, { base: this.alloc(bytes), bytes: Math.ceil(bytes / PAGE) * PAGE, queueSize, features: o.features });
  }

  /**
   * Linux's virtio_mmio probe and virtio_dev_probe: reset, ACKNOWLEDGE, DRIVER, features,
   * FEATURES_OK, each queue with a driver set up and made ready, DRIVER_OK. The device thread
   * activates asynchronously; kicks sent before that are delivered on activation.
   */
  bringUp(o: { features?: bigint; drivers: QueueSetup[] }): void {
    const { w } = this.mmio;
    const features = o.features ?? VIRTIO_V1;
    this.features = features;
    this.drivers = [...o.drivers];
    probeAsLinux(w, features, o.drivers);
  }

  /**
   * Fresh rings for every queue of the last bringUp (same places, zeroed: a driver
   * re-initialising its virtqueues after a reset) and brings the device up again.
   */
  bringUpAgain(): FakeDriver[] {
    const fresh = this.drivers.map((d) => d && new FakeDriver(this.mem, {
      base: d.layout.descTable, bytes: d.heapEnd - d.layout.descTable, queueSize: d.layout.size, features: d.features,
    }));
    this.bringUp({ features: this.features, drivers: fresh });
    return fresh.filter((d): d is FakeDriver => d !== undefined);
  }

  /** A QueueNotify write for queue `q` (the transport signals the queue's eventfd). */
  kick(q: number): void {
    this.mmio.w(VIRTIO_MMIO_QUEUE_NOTIFY, q);
  }

  /** Writes 0 to Status; returns the reset's number (see untilReset). */
  reset(): number {
    this.mmio.w(VIRTIO_MMIO_STATUS, 0);
    return this.dev.state.resetsRequested;
  }

  /** Resolves once the device thread has completed reset `n` (or every one requested). */
  async untilReset(n = this.dev.state.resetsRequested, timeoutMs = 10_000): Promise<void> {
    await this.until(() => this.dev.state.resetsDone - n >= 0, `reset ${n} completed by the device thread`, timeoutMs);
  }

  /**
   * Resets the device and measures how long the device thread takes to complete it
   * (the vCPU's bounded wait, RESET_WAIT_MS, is not involved: the test thread never waits).
   * Rejects after `timeoutMs`, naming the device.
   */
  async timedReset(timeoutMs = 10_000): Promise<number> {
    const t0 = performance.now();
    const n = this.reset();
    await this.untilReset(n, timeoutMs);
    return performance.now() - t0;
  }

  /**
   * Sends a control request (VirtioDeviceHandle.request) and measures how long the device
   * thread takes to answer it; an answer that is a refusal (EVIRTIOREQUEST) counts as an
   * answer (`ok: false`). Rejects when there is none within `timeoutMs`.
   */
  async timedRequest(op: string, args?: unknown, timeoutMs = 10_000): Promise<{ ms: number; ok: boolean; value: unknown }> {
    const t0 = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.dev.spec.name}: request '${op}' not answered within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      const answer = this.dev.request(op, args).then((value) => ({ ok: true, value }), (e: Error) => ({ ok: false, value: e.message }));
      const r = await Promise.race([answer, timeout]);
      return { ms: performance.now() - t0, ...r };
    } finally {
      clearTimeout(timer);
    }
  }

  /** Interrupts the device sent since the last call (the irqfd eventfd's counter; non-blocking). */
  takeInterrupts(): bigint {
    const c = new BigUint64Array(1);
    const n = sys.read(this.dev.irqFd, c, 8);
    if (n === -EAGAIN) return 0n;
    return n === 8 ? c[0]! : 0n;
  }

  /** Blocks this thread up to `timeoutMs` for an interrupt; returns the irqfd counter (0 on timeout). */
  waitInterrupt(timeoutMs = 5000): bigint {
    const p = new Uint8Array(pollfd.SIZE);
    const v = new DataView(p.buffer);
    v.setInt32(pollfd.fd, this.dev.irqFd, true);
    v.setInt16(pollfd.events, POLLIN, true);
    if (sys.poll(p, 1, timeoutMs) <= 0) return 0n;
    return this.takeInterrupts();
  }

  /** Reads and acknowledges InterruptStatus, as the guest's interrupt handler does. */
  ackInterrupts(): number {
    const s = this.mmio.r(VIRTIO_MMIO_INTERRUPT_STATUS);
    if (s) this.mmio.w(VIRTIO_MMIO_INTERRUPT_ACK, s);
    return s;
  }

  /** Polls `cond` every couple of milliseconds (the event loop keeps running); rejects after `timeoutMs`. */
  async until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const start = performance.now(), end = start + timeoutMs;
    while (!cond()) {
      const now = performance.now();
      if (now > end) throw new Error(`${this.dev.spec.name}: timed out after ${timeoutMs} ms waiting for: ${what}`);
      // Most waits are short (a reset, a request): poll without a timer's delay at first.
      await new Promise((r) => (now - start < 2 ? setImmediate(r) : setTimeout(r, 1)));
    }
  }

  /**
   * Starts a second "vCPU" (a worker thread on the same guest memory) that keeps the ring of
   * queue `q` full with `heads` (chains whose descriptors the test already wrote, e.g. with
   * FakeDriver.addChain(spec, false)) and kicks after every chain. The queue must be set up
   * with `driver`'s rings (default: the last bringUp's driver for `q`).
   */
  async flood(q: number, o: { heads: number[]; driver?: FakeDriver; maxOutstanding?: number; kick?: boolean }): Promise<GuestFlooder> {
    const drv = o.driver ?? this.drivers[q];
    if (!drv) throw new Error(`DeviceLoopRig: queue ${q} has no driver to flood`);
    if (o.heads.length === 0) throw new Error("DeviceLoopRig: a flood needs at least one head");
    const f = new GuestFlooder(this, {
      memory: this.mem.describe(), layout: drv.layout, heads: o.heads,
      maxOutstanding: Math.min(o.maxOutstanding ?? o.heads.length, o.heads.length, drv.layout.size),
      notifyFd: o.kick === false ? -1 : this.dev.notifyFds[q]!, control: new SharedArrayBuffer(FLOOD_SLOTS * 4),
    });
    this.floods.add(f);
    await f.started;
    return f;
  }

  /** @internal GuestFlooder.stop */
  forget(f: GuestFlooder): void { this.floods.delete(f); }

  // --- Hostile driving ---

  /**
   * Plays one action against the device (see LoopAction). Ring actions on a queue
   * without a driver are skipped. Returns after the guest's part: the device thread
   * works concurrently. Resets are awaited (bounded) and followed by a fresh bring-up.
   */
  async apply(a: LoopAction, o: { resetTimeoutMs?: number } = {}): Promise<void> {
    const drv = "queue" in a ? this.drivers[a.queue % Math.max(1, this.drivers.length)] : undefined;
    switch (a.kind) {
      case "kick": this.kick(a.queue % this.queueCount); return;
      case "reset": {
        const n = this.reset();
        if (a.wait) await this.untilReset(n, o.resetTimeoutMs);
        this.bringUpAgain();
        return;
      }
      case "config": this.mmio.w(VIRTIO_MMIO_CONFIG + a.offset, a.value, a.size); return;
      default: break;
    }
    if (!drv) return;
    const size = drv.layout.size;
    switch (a.kind) {
      case "chain": {
        // Well-behaved counts: no more than `size` chains between used idx and avail idx.
        if (((drv.availIdx - drv.usedIdx) & 0xffff) >= size) return;
        const n = Math.min(a.buffers.length, size);
        const bufs = a.buffers.slice(0, n).sort((x, y) => Number(x.write) - Number(y.write));
        const head = a.start % size;
        bufs.forEach((b, i) => drv.writeDescriptor((head + i) % size, {
          addr: b.addr, len: b.len, flags: (b.write ? VRING_DESC_F_WRITE : 0) | (i < n - 1 ? VRING_DESC_F_NEXT : 0), next: (head + i + 1) % size,
        }));
        this.publish(drv, head);
        return;
      }
      case "aliased": {
        // Every descriptor points at the same guest range, each as long as allowed (§2.7.5 does not forbid it).
        if (((drv.availIdx - drv.usedIdx) & 0xffff) >= size) return;
        const n = Math.max(1, Math.min(a.buffers, size));
        const len = Math.min(a.len, this.aliasBytes);
        const base = this.aliasRange();
        const head = a.start % size;
        for (let i = 0; i < n; i++) {
          const write = i >= n - a.writable;
          drv.writeDescriptor((head + i) % size, { addr: base, len, flags: (write ? VRING_DESC_F_WRITE : 0) | (i < n - 1 ? VRING_DESC_F_NEXT : 0), next: (head + i + 1) % size });
        }
        this.publish(drv, head);
        return;
      }
      case "desc": drv.writeDescriptor(a.index % size, a.desc); return;
      case "availRing": drv.setAvailRing(a.slot % size, a.head); return;
      case "availIdx": drv.setAvailIdx(a.resync ? drv.usedIdx + (a.delta & 3) : drv.availIdx + a.delta); return;
      case "usedEvent": drv.usedEvent = a.value; return;
      case "availFlags": drv.availFlags = a.value; return;
    }
  }

  private aliasBase = -1;
  /** Size of the range aliased chains point at. */
  readonly aliasBytes = 1 * MIB;
  private aliasRange(): number {
    if (this.aliasBase < 0) this.aliasBase = this.alloc(this.aliasBytes);
    return this.aliasBase;
  }

  private publish(drv: FakeDriver, head: number): void {
    const idx = drv.availIdx;
    drv.setAvailRing(idx, head);
    drv.setAvailIdx(idx + 1);
  }
}

/** A second guest thread flooding one queue (see DeviceLoopRig.flood and guest-flooder-worker.ts). */
export class GuestFlooder {
  readonly started: Promise<void>;
  private readonly worker: Worker;
  private readonly ctl: Int32Array;
  private readonly exited: Promise<void>;
  private stopped = false;

  constructor(private readonly rig: DeviceLoopRig, init: FlooderInit) {
    this.ctl = new Int32Array(init.control);
    this.worker = new Worker(new URL("./guest-flooder-worker.js", import.meta.url), { workerData: init });
    this.exited = new Promise((resolve) => this.worker.once("exit", () => resolve()));
    this.started = new Promise((resolve, reject) => {
      this.worker.once("error", reject);
      this.worker.once("online", () => {
        const wait = () => (Atomics.load(this.ctl, FLOOD_RUNNING) === 1 ? resolve() : setTimeout(wait, 1));
        wait();
      });
    });
  }

  /** Chains made available so far. */
  get added(): number { return Atomics.load(this.ctl, FLOOD_ADDED); }
  /** Kicks sent so far. */
  get kicks(): number { return Atomics.load(this.ctl, FLOOD_KICKS); }

  /** Stops adding chains until resume(); resolves once the thread has stopped writing. */
  async pause(): Promise<void> {
    Atomics.store(this.ctl, FLOOD_PAUSE, 1);
    while (Atomics.load(this.ctl, FLOOD_PAUSED) !== 1 && !this.stopped) await new Promise((r) => setTimeout(r, 1));
  }

  /** Carries on after pause(), from the ring indices as they are in guest memory now. */
  resume(): void {
    Atomics.store(this.ctl, FLOOD_PAUSED, 0);
    Atomics.store(this.ctl, FLOOD_PAUSE, 0);
    Atomics.notify(this.ctl, FLOOD_PAUSE);
  }

  /** Ends the thread; resolves with the chains it added. */
  async stop(): Promise<number> {
    if (!this.stopped) {
      this.stopped = true;
      Atomics.store(this.ctl, FLOOD_STOP, 1);
      Atomics.notify(this.ctl, FLOOD_STOP);
      await this.exited;
      this.rig.forget(this);
    }
    return this.added;
  }
}

// ---------------------------------------------------------------------------
// Hostile actions
// ---------------------------------------------------------------------------

/** One step of a hostile guest against a device in its real thread. */
export type LoopAction =
  /** A chain of random buffers (anywhere, any length), well-behaved only in how many are outstanding. */
  | { kind: "chain"; queue: number; start: number; buffers: { write: boolean; len: number; addr: bigint }[] }
  /** `buffers` descriptors (the last `writable` device-writable) that all point at the same `len` bytes. */
  | { kind: "aliased"; queue: number; start: number; buffers: number; writable: number; len: number }
  /** Raw ring writes. */
  | { kind: "desc"; queue: number; index: number; desc: RawDescriptor }
  | { kind: "availRing"; queue: number; slot: number; head: number }
  | { kind: "availIdx"; queue: number; delta: number; resync: boolean }
  | { kind: "usedEvent"; queue: number; value: number }
  | { kind: "availFlags"; queue: number; value: number }
  | { kind: "kick"; queue: number }
  /** A driver reset (Status = 0), mid-request or not, then a fresh bring-up; `wait` for the device thread first. */
  | { kind: "reset"; wait: boolean }
  /** A config space write (most are refused and counted). */
  | { kind: "config"; offset: number; value: number; size: 1 | 2 | 4 };

/** Relative weights of the action kinds (0 leaves one out). */
export type LoopActionWeights = Partial<Record<LoopAction["kind"], number>>;

const DEFAULT_WEIGHTS: Required<LoopActionWeights> = {
  chain: 30, aliased: 8, desc: 6, availRing: 2, availIdx: 3, usedEvent: 2, availFlags: 1, kick: 30, reset: 1, config: 2,
};

/**
 * Random hostile actions against a device with `queues` queues of at most `maxQueueSize`
 * descriptors in guest RAM `mem`. Addresses point mostly into guest RAM (often at its edges),
 * sometimes anywhere up to 2^64 - 1; lengths up to 0xffffffff.
 */
export function arbLoopAction(mem: GuestMemory, o: { queues: number; maxQueueSize: number; configBytes?: number; weights?: LoopActionWeights }): fc.Arbitrary<LoopAction> {
  const space = spaceOf(mem);
  const weights = { ...DEFAULT_WEIGHTS, ...o.weights };
  const queue = fc.nat(o.queues - 1);
  const size = o.maxQueueSize;
  const length = fc.oneof({ weight: 6, arbitrary: fc.nat(4096) }, { weight: 2, arbitrary: fc.constantFrom(0, 1, 16, 512, 65536, 0xffffffff) }, { weight: 1, arbitrary: fc.nat(0xffffffff) });
  const buffer = fc.record({ write: fc.boolean(), len: length, addr: arbGuestAddress(space, 4096, 30) });
  const all: { weight: number; arbitrary: fc.Arbitrary<LoopAction> }[] = [
    { weight: weights.chain, arbitrary: fc.record({ kind: fc.constant("chain" as const), queue, start: fc.nat(size - 1), buffers: fc.array(buffer, { minLength: 1, maxLength: 4 }) }) },
    { weight: weights.aliased, arbitrary: fc.record({ kind: fc.constant("aliased" as const), queue, start: fc.nat(size - 1), buffers: fc.integer({ min: 1, max: size }), writable: fc.nat(size), len: fc.oneof(fc.constant(MIB), fc.nat(MIB)) }) },
    { weight: weights.desc, arbitrary: fc.record({ kind: fc.constant("desc" as const), queue, index: fc.nat(size - 1), desc: arbRawDescriptor(space, size) }) },
    { weight: weights.availRing, arbitrary: fc.record({ kind: fc.constant("availRing" as const), queue, slot: fc.nat(size - 1), head: fc.oneof(fc.nat(size - 1), fc.nat(0xffff)) }) },
    { weight: weights.availIdx, arbitrary: fc.record({ kind: fc.constant("availIdx" as const), queue, delta: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: -1, max: 3 }) }, { weight: 1, arbitrary: fc.nat(0xffff) }), resync: fc.boolean() }) },
    { weight: weights.usedEvent, arbitrary: fc.record({ kind: fc.constant("usedEvent" as const), queue, value: fc.nat(0xffff) }) },
    { weight: weights.availFlags, arbitrary: fc.record({ kind: fc.constant("availFlags" as const), queue, value: fc.nat(0xffff) }) },
    { weight: weights.kick, arbitrary: fc.record({ kind: fc.constant("kick" as const), queue: fc.oneof({ weight: 9, arbitrary: queue }, { weight: 1, arbitrary: fc.nat(0xffff) }) }) },
    { weight: weights.reset, arbitrary: fc.record({ kind: fc.constant("reset" as const), wait: fc.boolean() }) },
    {
      weight: weights.config, arbitrary: fc.record({
        kind: fc.constant("config" as const), offset: fc.nat(Math.max(0, (o.configBytes ?? 8) - 1)), value: fc.nat(0xffffffff), size: fc.constantFrom(1 as const, 2 as const, 4 as const),
      }).map((c) => ({ ...c, offset: c.offset - (c.offset % c.size), value: c.size === 4 ? c.value : c.value % 2 ** (8 * c.size) })),
    },
  ];
  return fc.oneof(...all.filter((x) => x.weight > 0));
}

/**
 * `count` actions from `arb`, generated lazily and reproducibly from `seed` (10^6 actions
 * would not fit in memory as one fast-check array).
 */
export function* loopActions(arb: fc.Arbitrary<LoopAction>, count: number, seed: number): Generator<LoopAction> {
  const batch = 1000;
  for (let done = 0, round = 0; done < count; round++) {
    const n = Math.min(batch, count - done);
    for (const a of fc.sample(arb, { numRuns: n, seed: seed + round })) yield a;
    done += n;
  }
}

/** How many actions a property run does: 10^5 in CI, FLINT_FUZZ_ACTIONS (e.g. 1000000 for `npm run fuzz:devices`). */
export function actionCount(ciDefault = 100_000): number {
  const env = Number(process.env.FLINT_FUZZ_ACTIONS);
  return Number.isSafeInteger(env) && env > 0 ? env : ciDefault;
}

// ---------------------------------------------------------------------------
// Memory figures
// ---------------------------------------------------------------------------

/** The process's memory now (all threads for RSS; this thread's V8 heap). */
export interface MemoryFigures {
  /** V8 heap in use on this thread, after a full GC when one can be forced. */
  heapUsedBytes: number;
  /** Off-heap memory V8 knows about (ArrayBuffers, Buffers). */
  externalBytes: number;
  /** Resident set of the whole process (every thread). */
  rssBytes: number;
  /** Peak resident set (VmHWM) since start or the last resetPeakRss(). */
  peakRssBytes: number;
}

let forcedGc: (() => void) | undefined | null = null;
/** A full GC, when one can be had (--expose-gc at runtime, as node:test cannot pass flags). */
export function collectGarbage(): boolean {
  if (forcedGc === null) {
    try {
      setFlagsFromString("--expose-gc");
      forcedGc = runInNewContext("gc") as () => void;
    } catch {
      forcedGc = undefined;
    }
  }
  forcedGc?.();
  return forcedGc !== undefined;
}

function procStatusKib(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) : 0;
}

/** Current memory figures (forces a GC first when it can, so heap figures are live data). */
export function memoryFigures(): MemoryFigures {
  collectGarbage();
  const u = process.memoryUsage();
  return { heapUsedBytes: u.heapUsed, externalBytes: u.external, rssBytes: procStatusKib("VmRSS") * 1024, peakRssBytes: procStatusKib("VmHWM") * 1024 };
}

/** Resets the process's peak RSS to its current RSS (writing 5 to /proc/self/clear_refs); false where not allowed. */
export function resetPeakRss(): boolean {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

/** Growth bounds for a MemoryWatch, in bytes over its baseline. */
export interface MemoryBounds {
  heapGrowthBytes: number;
  rssGrowthBytes: number;
  /** Peak RSS over the baseline RSS (default: rssGrowthBytes). */
  peakRssGrowthBytes?: number;
}

const mib = (b: number) => `${(b / MIB).toFixed(1)} MiB`;

/**
 * Measures heap and RSS growth from a baseline against stated bounds. Take the
 * baseline after the rig is warm (threads started, guest RAM touched), sample
 * as often as you like, and check() throws an Error with the figures when a
 * bound was crossed.
 */
export class MemoryWatch {
  readonly baseline: MemoryFigures;
  /** Largest growth seen in any sample. */
  readonly worst = { heapGrowthBytes: 0, rssGrowthBytes: 0, peakRssGrowthBytes: 0 };
  readonly peakResettable: boolean;

  constructor(readonly label: string, readonly bounds: MemoryBounds) {
    this.peakResettable = resetPeakRss();
    this.baseline = memoryFigures();
  }

  /** Takes figures now and records the growth. */
  sample(): MemoryFigures {
    const f = memoryFigures();
    this.worst.heapGrowthBytes = Math.max(this.worst.heapGrowthBytes, f.heapUsedBytes - this.baseline.heapUsedBytes);
    this.worst.rssGrowthBytes = Math.max(this.worst.rssGrowthBytes, f.rssBytes - this.baseline.rssBytes);
    // Without a resettable peak, VmHWM may predate the baseline: only growth past it counts.
    const peakBase = this.peakResettable ? this.baseline.rssBytes : this.baseline.peakRssBytes;
    this.worst.peakRssGrowthBytes = Math.max(this.worst.peakRssGrowthBytes, f.peakRssBytes - peakBase);
    return f;
  }

  /** Samples, then throws when any growth so far exceeds its bound. */
  check(): void {
    this.sample();
    const b = this.bounds, w = this.worst;
    const over: string[] = [];
    if (w.heapGrowthBytes > b.heapGrowthBytes) over.push(`heap grew ${mib(w.heapGrowthBytes)} (bound ${mib(b.heapGrowthBytes)})`);
    if (w.rssGrowthBytes > b.rssGrowthBytes) over.push(`RSS grew ${mib(w.rssGrowthBytes)} (bound ${mib(b.rssGrowthBytes)})`);
    const peak = b.peakRssGrowthBytes ?? b.rssGrowthBytes;
    if (w.peakRssGrowthBytes > peak) over.push(`peak RSS grew ${mib(w.peakRssGrowthBytes)} (bound ${mib(peak)})`);
    if (over.length > 0) throw new Error(`${this.label}: ${over.join("; ")}; baseline heap ${mib(this.baseline.heapUsedBytes)}, RSS ${mib(this.baseline.rssBytes)}`);
  }

  /** One line for the test's log: the worst growths against their bounds. */
  report(): string {
    const w = this.worst;
    return `${this.label}: heap +${mib(w.heapGrowthBytes)}, RSS +${mib(w.rssGrowthBytes)}, peak RSS +${mib(w.peakRssGrowthBytes)} (bounds heap ${mib(this.bounds.heapGrowthBytes)}, RSS ${mib(this.bounds.rssGrowthBytes)})`;
  }
}

/** Latencies of answered requests/resets, for a test's log (printed, never asserted beyond a hang limit). */
export class LatencyLog {
  private readonly samples: number[] = [];
  add(ms: number): void { if (this.samples.length < 100_000) this.samples.push(ms); }
  get count(): number { return this.samples.length; }
  get maxMs(): number { return this.samples.reduce((a, b) => Math.max(a, b), 0); }
  percentile(p: number): number {
    if (this.samples.length === 0) return 0;
    const s = [...this.samples].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
  }
  report(label: string): string {
    return `${label}: ${this.count} answered, p50 ${this.percentile(50).toFixed(2)} ms, p99 ${this.percentile(99).toFixed(2)} ms, max ${this.maxMs.toFixed(2)} ms`;
  }
}
