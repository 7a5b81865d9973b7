/**
 * The state of one virtio-mmio device as it lives in one SharedArrayBuffer,
 * shared by the register file (mmio.ts, one object per vCPU thread), the
 * device thread (device-thread-worker.ts) and the main thread. Only this
 * module knows the layout; everyone else goes through TransportState.
 *
 *   [0, HEADER_BYTES)             Int32 slots: lock, registers, control words
 *   [QUEUES_OFFSET, +MAX_QUEUES)  Int32 slots per queue (QUEUE_SLOTS each)
 *   [CONFIG_OFFSET, +CONFIG_MAX)  device config space bytes (little-endian)
 *   [WRITABLE_OFFSET, +CONFIG_MAX) 1 where the driver may write config space
 *
 * Register state changes under the SpinLock. INTERRUPT_STATUS is changed with
 * Atomics (device thread sets bits, driver acknowledges them) so raising an
 * interrupt never takes the lock. The device thread learns of status changes
 * through the control eventfd, whose number is stored here too, as are the
 * queue-notify eventfds (fd numbers are process-wide, valid in every thread).
 */
import {
  VIRTIO_F_VERSION_1, VIRTIO_MMIO_CONFIG, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_TRANSPORT_F_END,
} from "../../linux/abi.generated.js";
import { VIRTIO_MMIO_SIZE } from "../../arch/x86_64/layout.js";
import { sys } from "../../sys/native.js";
import { SpinLock } from "../shared-lock.js";
import { VIRTQUEUE_MAX_SIZE } from "./queue.js";
import {
  bytesToSaved, savedArray, savedBool, savedBytes, savedObject, savedU64, savedUint, u64ToSaved, VirtioSavedStateError,
} from "./saved-state.js";
import type { QueueLayout } from "./types.js";

/** Most queues a flint virtio device may have (vsock 3, balloon 5, net 2 + control). */
export const VIRTIO_MAX_QUEUES = 16;
/** Largest config space: the rest of the device's MMIO window after VIRTIO_MMIO_CONFIG. */
export const VIRTIO_CONFIG_MAX_BYTES = VIRTIO_MMIO_SIZE - VIRTIO_MMIO_CONFIG;

/** Int32 header slots. Each index is written once, here. */
const LOCK = 0;
/** 1 once the device thread has filled in the device's identity (DeviceID reads 0 before). */
const INITIALIZED = 1;
const DEVICE_ID = 2;
const QUEUE_COUNT = 3;
const CONFIG_SIZE = 4;
const DEVICE_FEATURES_LO = 5;
const DEVICE_FEATURES_HI = 6;
const STATUS = 7;
const DEVICE_FEATURES_SEL = 8;
const DRIVER_FEATURES_SEL = 9;
const DRIVER_FEATURES_LO = 10;
const DRIVER_FEATURES_HI = 11;
const QUEUE_SEL = 12;
const INTERRUPT_STATUS = 13;
const CONFIG_GENERATION = 14;
const GUEST_FAULTS = 15;
/** Resets requested by the driver (a counter), and the last one the device thread completed. */
const RESETS_REQUESTED = 16;
const RESETS_DONE = 17;
/** 1 while the device runs on its device thread: a reset then waits for it (see requestReset). */
const THREAD_RUNNING = 18;
/** Config bytes the driver wrote since the device thread last looked: [start, end), end 0 = none. */
const CONFIG_DIRTY_START = 19;
const CONFIG_DIRTY_END = 20;
/** The control eventfd (-1: none) and the stop request. */
const CONTROL_FD = 21;
const STOP = 22;
/** Times the driver wrote DRIVER_OK (a counter, so the device thread sees every activation). */
const ACTIVATIONS = 23;
/** Counters for tests and metrics: queue kicks the device thread saw, interrupts it sent. */
const STAT_KICKS = 24;
const STAT_INTERRUPTS = 25;
/** QueueNotify writes that reached the transport (no ioeventfd caught them). */
const STAT_USER_NOTIFIES = 26;
/**
 * Bumped (under the lock) by whatever ends the device's current session from a
 * vCPU: a reset, a queue stopped while live. A device-thread session remembers
 * the value it started with, and its queues write nothing once it changed
 * (QueueSession), even while the device thread has not yet caught up.
 */
const EPOCH = 27;
/** Queues the driver stopped (QueueReady = 0) after DRIVER_OK (a counter), and the last one. */
const QUEUE_STOPS = 28;
const STOPPED_QUEUE = 29;
/** Host-side failures the backend reported to the guest as device errors (VirtioDeviceContext.hostError). */
const STAT_HOST_ERRORS = 30;
/**
 * The host's quiesce request: (sequence << 1) | 1 to quiesce, | 0 to run; the
 * sequence lets the device thread answer each request by number, so a
 * quiesce and a resume written before the thread looked are both answered.
 */
const QUIESCE = 31;
const HEADER_SLOTS = 32;

/**
 * Host errors of one device that are posted to the main thread (and logged)
 * per run; later ones are only counted (TransportStats.hostErrors), so a
 * guest that keeps retrying on a failing disk cannot flood the log or the
 * message queue.
 */
export const HOST_ERRORS_LOGGED = 10;

/** Int32 slots of each queue. */
const Q_NUM_MAX = 0;
const Q_NUM = 1;
const Q_READY = 2;
const Q_DESC_LO = 3;
const Q_DESC_HI = 4;
const Q_AVAIL_LO = 5;
const Q_AVAIL_HI = 6;
const Q_USED_LO = 7;
const Q_USED_HI = 8;
const Q_NOTIFY_FD = 9;
const QUEUE_SLOTS = 12;

const QUEUES_SLOT = HEADER_SLOTS;
const CONFIG_OFFSET = (HEADER_SLOTS + VIRTIO_MAX_QUEUES * QUEUE_SLOTS) * 4;
const WRITABLE_OFFSET = CONFIG_OFFSET + VIRTIO_CONFIG_MAX_BYTES;
const STATE_BYTES = WRITABLE_OFFSET + VIRTIO_CONFIG_MAX_BYTES;

/**
 * How long a vCPU waits for the device thread to finish a reset before going
 * on. Every queue handler has a work budget, so a pass ends well within it;
 * should it not, the old session still writes nothing into the rings after
 * the reset (EPOCH, QueueSession), though a buffer it was filling may still
 * receive data.
 */
const RESET_WAIT_MS = 1000;

/** A queue register of QueueLayout/QueueNum/QueueReady, as an offset within a queue's slots. */
export type QueueRegister = "num" | "ready" | "descLo" | "descHi" | "availLo" | "availHi" | "usedLo" | "usedHi";
const QUEUE_REGISTER_SLOT: Record<QueueRegister, number> = {
  num: Q_NUM, ready: Q_READY, descLo: Q_DESC_LO, descHi: Q_DESC_HI, availLo: Q_AVAIL_LO, availHi: Q_AVAIL_HI,
  usedLo: Q_USED_LO, usedHi: Q_USED_HI,
};

/** Counters of one device. */
export interface TransportStats {
  /** Queue notifications the device thread received (ioeventfd or not). */
  kicks: number;
  /** Interrupts sent through the irqfd. */
  interrupts: number;
  /** QueueNotify writes that reached the register file (a VM exit each); 0 when ioeventfds work. */
  userspaceNotifies: number;
  guestFaults: number;
  /** Host-side failures (the disk image's EIO, ENOSPC...) the guest was told about as device errors. */
  hostErrors: number;
}

/** What the device thread publishes about its backend. */
export interface DeviceIdentity {
  deviceId: number;
  /** The backend's feature bits; the transport keeps those it supports and adds VIRTIO_F_VERSION_1. */
  deviceFeatures: bigint;
  queueMaxSizes: readonly number[];
  config: Uint8Array;
  /** Whether the driver may write config byte `offset` (default: none). */
  configWritable?: (offset: number, length: number) => boolean;
}

/**
 * The registers of a device as the driver left them (virtio 1.x §4.2.2), for
 * a snapshot: what TransportState.saveRegisters returns and restoreRegisters
 * takes. 64-bit values are decimal strings, config space is base64
 * (saved-state.ts). Counters, control words and eventfds are not state of
 * the device: a restored device starts them afresh.
 */
export interface TransportSavedState {
  /** DeviceID, to check the record is restored into the same kind of device. */
  deviceId: number;
  /** Status (§2.1): ACKNOWLEDGE ... DRIVER_OK, NEEDS_RESET, FAILED. */
  status: number;
  /** The features offered (VERSION_1 included) and those the driver accepted. */
  deviceFeatures: string;
  driverFeatures: string;
  /** DeviceFeaturesSel, DriverFeaturesSel and QueueSel as last written. */
  deviceFeaturesSel: number;
  driverFeaturesSel: number;
  queueSel: number;
  /** InterruptStatus bits the driver has not acknowledged yet. */
  interruptStatus: number;
  configGeneration: number;
  /** Config space, all configSize bytes. */
  config: string;
  /** Every queue of the device, in order. */
  queues: TransportQueueSavedState[];
}

/** One queue's registers (QueueNumMax, to check; QueueNum, QueueReady and the ring addresses). */
export interface TransportQueueSavedState {
  numMax: number;
  size: number;
  ready: boolean;
  /** 64-bit ring addresses as the driver wrote them (decimal strings). */
  descTable: string;
  availRing: string;
  usedRing: string;
}

/** Reads a TransportSavedState from JSON (shape and ranges only; restoreRegisters checks it fits the device). */
export function checkTransportSavedState(v: unknown, path = "transport"): TransportSavedState {
  const o = savedObject(v, path);
  const queues = savedArray(o.queues, `${path}.queues`, VIRTIO_MAX_QUEUES).map((qv, i): TransportQueueSavedState => {
    const p = `${path}.queues[${i}]`;
    const q = savedObject(qv, p);
    return {
      numMax: savedUint(q.numMax, `${p}.numMax`, VIRTQUEUE_MAX_SIZE), size: savedUint(q.size, `${p}.size`, VIRTQUEUE_MAX_SIZE),
      ready: savedBool(q.ready, `${p}.ready`), descTable: u64ToSaved(savedU64(q.descTable, `${p}.descTable`)),
      availRing: u64ToSaved(savedU64(q.availRing, `${p}.availRing`)), usedRing: u64ToSaved(savedU64(q.usedRing, `${p}.usedRing`)),
    };
  });
  const config = savedBytes(o.config, `${path}.config`, VIRTIO_CONFIG_MAX_BYTES);
  return {
    deviceId: savedUint(o.deviceId, `${path}.deviceId`), status: savedUint(o.status, `${path}.status`, 0xff),
    deviceFeatures: u64ToSaved(savedU64(o.deviceFeatures, `${path}.deviceFeatures`)),
    driverFeatures: u64ToSaved(savedU64(o.driverFeatures, `${path}.driverFeatures`)),
    deviceFeaturesSel: savedUint(o.deviceFeaturesSel, `${path}.deviceFeaturesSel`),
    driverFeaturesSel: savedUint(o.driverFeaturesSel, `${path}.driverFeaturesSel`),
    queueSel: savedUint(o.queueSel, `${path}.queueSel`), interruptStatus: savedUint(o.interruptStatus, `${path}.interruptStatus`),
    configGeneration: savedUint(o.configGeneration, `${path}.configGeneration`), config: bytesToSaved(config), queues,
  };
}

/** Why a device could not be described to the transport (a backend bug, not the guest's). */
export class TransportError extends Error {
  readonly code = "EVIRTIODEVICE";
  constructor(message: string) {
    super(message);
    this.name = "TransportError";
  }
}

const bit = (n: number): bigint => 1n << BigInt(n);

/**
 * Feature bits the transport lets a backend offer: device-specific bits
 * (0..23 and VIRTIO_TRANSPORT_F_END..63, virtio 1.x §6) and the ring features
 * SplitQueue implements. Everything else in the reserved range (packed rings,
 * ACCESS_PLATFORM, NOTIFICATION_DATA...) is not implemented, so never offered.
 */
export const TRANSPORT_FEATURE_MASK: bigint =
  (bit(24) - 1n) | (((1n << 64n) - 1n) ^ (bit(VIRTIO_TRANSPORT_F_END) - 1n)) |
  bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_RING_F_EVENT_IDX);

/** The feature bits offered to the driver for a backend offering `backendFeatures`. */
export function offeredFeatures(backendFeatures: bigint): bigint {
  return (backendFeatures & TRANSPORT_FEATURE_MASK) | bit(VIRTIO_F_VERSION_1);
}

/** Makes a fresh, zeroed state block (the control fd unset). */
export function createTransportShared(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(STATE_BYTES);
  new Int32Array(sab)[CONTROL_FD] = -1;
  return sab;
}

const one = new BigUint64Array([1n]);

/** Typed access to a device's shared state. Cheap: build one per thread. */
export class TransportState {
  readonly sab: SharedArrayBuffer;
  readonly lock: SpinLock;
  private readonly i32: Int32Array;
  /** Config space, shared (the backend's VirtioDeviceContext.config is this view). */
  readonly config: Uint8Array;
  private readonly writable: Uint8Array;

  constructor(sab: SharedArrayBuffer) {
    if (sab.byteLength !== STATE_BYTES) throw new TransportError(`virtio transport state has ${sab.byteLength} bytes, expected ${STATE_BYTES}`);
    this.sab = sab;
    this.i32 = new Int32Array(sab, 0, CONFIG_OFFSET / 4);
    this.lock = new SpinLock(this.i32, LOCK);
    this.config = new Uint8Array(sab, CONFIG_OFFSET, VIRTIO_CONFIG_MAX_BYTES);
    this.writable = new Uint8Array(sab, WRITABLE_OFFSET, VIRTIO_CONFIG_MAX_BYTES);
  }

  // --- Identity (written once by the device thread before the guest runs) ---

  /** Publishes the backend's identity; queues start with QueueNum = their maximum. */
  initDevice(d: DeviceIdentity): void {
    const n = d.queueMaxSizes.length;
    if (n < 1 || n > VIRTIO_MAX_QUEUES) throw new TransportError(`a virtio device has 1 to ${VIRTIO_MAX_QUEUES} queues, not ${n}`);
    for (const s of d.queueMaxSizes) {
      if (!Number.isInteger(s) || s < 1 || s > VIRTQUEUE_MAX_SIZE || (s & (s - 1)) !== 0) {
        throw new TransportError(`virtio queue size ${s} is not a power of two from 1 to ${VIRTQUEUE_MAX_SIZE}`);
      }
    }
    if (d.config.length > VIRTIO_CONFIG_MAX_BYTES) throw new TransportError(`virtio config space of ${d.config.length} bytes is larger than ${VIRTIO_CONFIG_MAX_BYTES}`);
    const offered = offeredFeatures(d.deviceFeatures);
    this.lock.with(() => {
      const s = this.i32;
      s[DEVICE_ID] = d.deviceId;
      s[QUEUE_COUNT] = n;
      s[CONFIG_SIZE] = d.config.length;
      s[DEVICE_FEATURES_LO] = Number(offered & 0xffff_ffffn) | 0;
      s[DEVICE_FEATURES_HI] = Number(offered >> 32n) | 0;
      d.queueMaxSizes.forEach((max, q) => {
        s[this.qslot(q, Q_NUM_MAX)] = max;
        s[this.qslot(q, Q_NOTIFY_FD)] = -1;
      });
      this.config.set(d.config);
      for (let i = 0; i < d.config.length; i++) this.writable[i] = d.configWritable?.(i, 1) ? 1 : 0;
      this.resetRegisters();
      Atomics.store(s, INITIALIZED, 1);
    });
  }

  get initialized(): boolean { return Atomics.load(this.i32, INITIALIZED) === 1; }
  get deviceId(): number { return this.i32[DEVICE_ID]!; }
  get queueCount(): number { return this.i32[QUEUE_COUNT]!; }
  get configSize(): number { return this.i32[CONFIG_SIZE]!; }
  /** The features offered to the driver (VERSION_1 included). */
  get deviceFeatures(): bigint {
    return (BigInt(this.i32[DEVICE_FEATURES_HI]! >>> 0) << 32n) | BigInt(this.i32[DEVICE_FEATURES_LO]! >>> 0);
  }
  isConfigWritable(offset: number, length: number): boolean {
    if (offset < 0 || offset + length > this.configSize) return false;
    for (let i = offset; i < offset + length; i++) if (!this.writable[i]) return false;
    return true;
  }

  // --- Registers (callers hold the lock where noted) ---

  /** Raw header slot access for the register file (lock held). */
  get status(): number { return this.i32[STATUS]!; }
  set status(v: number) { this.i32[STATUS] = v; }
  get deviceFeaturesSel(): number { return this.i32[DEVICE_FEATURES_SEL]! >>> 0; }
  set deviceFeaturesSel(v: number) { this.i32[DEVICE_FEATURES_SEL] = v; }
  get driverFeaturesSel(): number { return this.i32[DRIVER_FEATURES_SEL]! >>> 0; }
  set driverFeaturesSel(v: number) { this.i32[DRIVER_FEATURES_SEL] = v; }
  get queueSel(): number { return this.i32[QUEUE_SEL]! >>> 0; }
  set queueSel(v: number) { this.i32[QUEUE_SEL] = v; }
  /** Word `sel` (0 or 1) of the driver's accepted features. */
  driverFeaturesWord(sel: number): number { return this.i32[sel === 0 ? DRIVER_FEATURES_LO : DRIVER_FEATURES_HI]! >>> 0; }
  setDriverFeaturesWord(sel: number, v: number): void { this.i32[sel === 0 ? DRIVER_FEATURES_LO : DRIVER_FEATURES_HI] = v; }
  /** The features the driver accepted. */
  get driverFeatures(): bigint {
    return (BigInt(this.driverFeaturesWord(1)) << 32n) | BigInt(this.driverFeaturesWord(0));
  }
  get configGeneration(): number { return Atomics.load(this.i32, CONFIG_GENERATION) >>> 0; }

  queueRegister(q: number, r: QueueRegister | "numMax" | "notifyFd"): number {
    const slot = r === "numMax" ? Q_NUM_MAX : r === "notifyFd" ? Q_NOTIFY_FD : QUEUE_REGISTER_SLOT[r];
    const v = this.i32[this.qslot(q, slot)]!;
    return r === "notifyFd" ? v : v >>> 0;
  }
  setQueueRegister(q: number, r: QueueRegister, v: number): void {
    this.i32[this.qslot(q, QUEUE_REGISTER_SLOT[r])] = v;
  }
  setNotifyFd(q: number, fd: number): void {
    Atomics.store(this.i32, this.qslot(q, Q_NOTIFY_FD), fd);
  }

  /** Where the driver put queue `q`'s rings (lock held or queue ready and frozen). */
  queueLayout(q: number): QueueLayout {
    const r = (lo: QueueRegister, hi: QueueRegister) => this.queueRegister(q, hi) * 2 ** 32 + this.queueRegister(q, lo);
    return { size: this.queueRegister(q, "num"), descTable: r("descLo", "descHi"), availRing: r("availLo", "availHi"), usedRing: r("usedLo", "usedHi") };
  }

  private qslot(q: number, slot: number): number {
    return QUEUES_SLOT + q * QUEUE_SLOTS + slot;
  }

  /** Device reset (virtio 1.x §2.4): every driver-visible register back to its initial value (lock held). */
  resetRegisters(): void {
    const s = this.i32;
    s[STATUS] = 0;
    s[DEVICE_FEATURES_SEL] = 0;
    s[DRIVER_FEATURES_SEL] = 0;
    s[DRIVER_FEATURES_LO] = 0;
    s[DRIVER_FEATURES_HI] = 0;
    s[QUEUE_SEL] = 0;
    Atomics.store(s, INTERRUPT_STATUS, 0);
    for (let q = 0; q < this.queueCount; q++) {
      s[this.qslot(q, Q_NUM)] = s[this.qslot(q, Q_NUM_MAX)]!;
      for (const slot of [Q_READY, Q_DESC_LO, Q_DESC_HI, Q_AVAIL_LO, Q_AVAIL_HI, Q_USED_LO, Q_USED_HI]) s[this.qslot(q, slot)] = 0;
    }
  }

  // --- Saved state (a snapshot: the device thread reads it while the device is quiesced) ---

  /** The driver-visible registers (see TransportSavedState). */
  saveRegisters(): TransportSavedState {
    return this.lock.with(() => ({
      deviceId: this.deviceId, status: this.status,
      deviceFeatures: u64ToSaved(this.deviceFeatures), driverFeatures: u64ToSaved(this.driverFeatures),
      deviceFeaturesSel: this.deviceFeaturesSel, driverFeaturesSel: this.driverFeaturesSel, queueSel: this.queueSel,
      interruptStatus: this.interruptStatus, configGeneration: this.configGeneration,
      config: bytesToSaved(this.config.subarray(0, this.configSize)),
      queues: Array.from({ length: this.queueCount }, (_, q): TransportQueueSavedState => {
        const l = this.queueLayout(q);
        return {
          numMax: this.queueRegister(q, "numMax"), size: l.size, ready: this.queueRegister(q, "ready") === 1,
          descTable: this.savedAddress(q, "descLo", "descHi"), availRing: this.savedAddress(q, "availLo", "availHi"),
          usedRing: this.savedAddress(q, "usedLo", "usedHi"),
        };
      }),
    }));
  }

  /**
   * Puts the registers of `s` (checked by checkTransportSavedState) into this
   * device, which initDevice described: after it, the driver reads what it
   * read before the snapshot. Throws VirtioSavedStateError
   * "EVIRTIOSNAPMISMATCH", changing nothing, when the record is of another
   * device: another DeviceID, queue count, queue maximum or config size, or
   * accepted features this device does not offer.
   */
  restoreRegisters(s: TransportSavedState): void {
    const mismatch = (why: string) => new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", why);
    if (s.deviceId !== this.deviceId) throw mismatch(`the snapshot's device has DeviceID ${s.deviceId}, this one ${this.deviceId}`);
    if (s.queues.length !== this.queueCount) throw mismatch(`the snapshot's device has ${s.queues.length} queues, this one ${this.queueCount}`);
    s.queues.forEach((q, i) => {
      const max = this.queueRegister(i, "numMax");
      if (q.numMax !== max) throw mismatch(`queue ${i} of the snapshot's device holds ${q.numMax} descriptors at most, this one ${max}`);
      if (q.size > max) throw mismatch(`queue ${i} of the snapshot has size ${q.size}, more than ${max}`);
    });
    const config = Buffer.from(s.config, "base64");
    if (config.length !== this.configSize) throw mismatch(`the snapshot's config space has ${config.length} bytes, this device's ${this.configSize}`);
    const accepted = BigInt(s.driverFeatures);
    const extra = accepted & ~this.deviceFeatures;
    if (extra !== 0n) throw mismatch(`the driver accepted features 0x${extra.toString(16)} that this device does not offer`);
    this.lock.with(() => {
      const i32 = this.i32;
      i32[STATUS] = s.status;
      i32[DEVICE_FEATURES_SEL] = s.deviceFeaturesSel;
      i32[DRIVER_FEATURES_SEL] = s.driverFeaturesSel;
      i32[DRIVER_FEATURES_LO] = Number(accepted & 0xffff_ffffn) | 0;
      i32[DRIVER_FEATURES_HI] = Number(accepted >> 32n) | 0;
      i32[QUEUE_SEL] = s.queueSel;
      Atomics.store(i32, INTERRUPT_STATUS, s.interruptStatus);
      Atomics.store(i32, CONFIG_GENERATION, s.configGeneration);
      this.config.set(config);
      s.queues.forEach((q, i) => {
        this.setQueueRegister(i, "num", q.size);
        this.setQueueRegister(i, "ready", q.ready ? 1 : 0);
        const halves = (v: string, lo: QueueRegister, hi: QueueRegister) => {
          const x = BigInt(v);
          this.setQueueRegister(i, lo, Number(x & 0xffff_ffffn) | 0);
          this.setQueueRegister(i, hi, Number(x >> 32n) | 0);
        };
        halves(q.descTable, "descLo", "descHi");
        halves(q.availRing, "availLo", "availHi");
        halves(q.usedRing, "usedLo", "usedHi");
      });
    });
  }

  /** A queue's 64-bit ring address register pair, for a record. */
  private savedAddress(q: number, lo: QueueRegister, hi: QueueRegister): string {
    return u64ToSaved((BigInt(this.queueRegister(q, hi)) << 32n) | BigInt(this.queueRegister(q, lo)));
  }

  // --- Interrupts (no lock: atomics) ---

  get interruptStatus(): number { return Atomics.load(this.i32, INTERRUPT_STATUS); }
  /** Sets `bits` in InterruptStatus; true when one of them was not set yet (the line goes up). */
  raiseInterrupt(bits: number): boolean { return (Atomics.or(this.i32, INTERRUPT_STATUS, bits) & bits) !== bits; }
  ackInterrupt(bits: number): void { Atomics.and(this.i32, INTERRUPT_STATUS, ~bits); }

  // --- Device-side changes ---

  /** Sets status bits from the device side (DEVICE_NEEDS_RESET). */
  orStatus(bits: number): void {
    this.lock.with(() => { this.i32[STATUS] = this.i32[STATUS]! | bits; });
  }

  /** Marks a config change visible to the driver's generation check (virtio 1.x §2.5.1). */
  bumpConfigGeneration(): void {
    this.lock.with(() => { Atomics.add(this.i32, CONFIG_GENERATION, 1); });
  }

  /** Records a driver write of config bytes [offset, offset+length) (lock held). */
  markConfigDirty(offset: number, length: number): void {
    const s = this.i32;
    if (s[CONFIG_DIRTY_END] === 0) {
      s[CONFIG_DIRTY_START] = offset;
      s[CONFIG_DIRTY_END] = offset + length;
    } else {
      s[CONFIG_DIRTY_START] = Math.min(s[CONFIG_DIRTY_START]!, offset);
      s[CONFIG_DIRTY_END] = Math.max(s[CONFIG_DIRTY_END]!, offset + length);
    }
  }

  /** The config range the driver wrote since the last call, if any. */
  takeConfigDirty(): { offset: number; length: number } | undefined {
    return this.lock.with(() => {
      const s = this.i32;
      const end = s[CONFIG_DIRTY_END]!;
      if (end === 0) return undefined;
      const offset = s[CONFIG_DIRTY_START]!;
      s[CONFIG_DIRTY_END] = 0;
      return { offset, length: end - offset };
    });
  }

  // --- Control: vCPU/main thread -> device thread ---

  get controlFd(): number { return Atomics.load(this.i32, CONTROL_FD); }
  set controlFd(fd: number) { Atomics.store(this.i32, CONTROL_FD, fd); }
  get activations(): number { return Atomics.load(this.i32, ACTIVATIONS); }
  /** The driver set DRIVER_OK (lock held). */
  noteActivation(): void { Atomics.add(this.i32, ACTIVATIONS, 1); }
  get resetsRequested(): number { return Atomics.load(this.i32, RESETS_REQUESTED); }
  get resetsDone(): number { return Atomics.load(this.i32, RESETS_DONE); }
  get stopRequested(): boolean { return Atomics.load(this.i32, STOP) !== 0; }
  get threadRunning(): boolean { return Atomics.load(this.i32, THREAD_RUNNING) !== 0; }
  set threadRunning(v: boolean) { Atomics.store(this.i32, THREAD_RUNNING, v ? 1 : 0); }

  /** Wakes the device thread to look at the control words. */
  signalControl(): void {
    const fd = this.controlFd;
    if (fd >= 0) sys.write(fd, one, 8);
  }

  /** A driver reset (lock held): counts it and ends the session; the caller signals and may wait. */
  noteResetRequest(): number {
    Atomics.add(this.i32, EPOCH, 1);
    return Atomics.add(this.i32, RESETS_REQUESTED, 1) + 1;
  }

  /** The driver stopped queue `q` while the device was live (lock held): ends the session; the caller signals. */
  noteQueueStop(q: number): void {
    Atomics.store(this.i32, STOPPED_QUEUE, q);
    Atomics.add(this.i32, EPOCH, 1);
    Atomics.add(this.i32, QUEUE_STOPS, 1);
  }

  /** See EPOCH: changes whenever a vCPU ends the device's session. */
  get epoch(): number { return Atomics.load(this.i32, EPOCH); }
  get queueStops(): number { return Atomics.load(this.i32, QUEUE_STOPS); }
  get stoppedQueue(): number { return Atomics.load(this.i32, STOPPED_QUEUE); }

  /**
   * Waits (worker threads only) until the device thread has completed reset
   * number `n`, so that when a driver's reset write returns, no old request
   * is still being processed into guest memory. Bounded: a wedged backend
   * cannot hang the vCPU forever.
   */
  waitForReset(n: number, canWait: boolean): void {
    if (!canWait || !this.threadRunning) return;
    const deadline = Date.now() + RESET_WAIT_MS;
    for (;;) {
      const done = Atomics.load(this.i32, RESETS_DONE);
      if (done - n >= 0) return;
      const left = deadline - Date.now();
      if (left <= 0 || !this.threadRunning) return;
      Atomics.wait(this.i32, RESETS_DONE, done, left);
    }
  }

  /** The device thread completed reset number `n` (clears interrupts raised meanwhile). */
  completeReset(n: number): void {
    Atomics.store(this.i32, INTERRUPT_STATUS, 0);
    Atomics.store(this.i32, RESETS_DONE, n);
    Atomics.notify(this.i32, RESETS_DONE);
  }

  /** The device has stopped on its device thread (or the thread ended): wake any vCPU waiting for a reset. */
  threadStopped(): void {
    Atomics.store(this.i32, THREAD_RUNNING, 0);
    Atomics.notify(this.i32, RESETS_DONE);
  }

  /**
   * Asks the device thread to quiesce the device (true) or to run it again
   * (false); returns the request's sequence number, which the thread's
   * answer ("quiesced"/"resumed" event) carries.
   */
  requestQuiesce(on: boolean): number {
    const seq = (Atomics.load(this.i32, QUIESCE) >>> 1) + 1;
    Atomics.store(this.i32, QUIESCE, (seq << 1) | (on ? 1 : 0));
    this.signalControl();
    return seq;
  }

  /** The host's latest quiesce request (sequence 0: none yet). */
  get quiesceRequest(): { quiesce: boolean; seq: number } {
    const v = Atomics.load(this.i32, QUIESCE);
    return { quiesce: (v & 1) !== 0, seq: v >>> 1 };
  }

  /** Asks the device thread to shut down. */
  requestStop(): void {
    Atomics.store(this.i32, STOP, 1);
    this.signalControl();
  }

  // --- Counters ---

  countKick(): void { Atomics.add(this.i32, STAT_KICKS, 1); }
  countInterrupt(): void { Atomics.add(this.i32, STAT_INTERRUPTS, 1); }
  countUserNotify(): void { Atomics.add(this.i32, STAT_USER_NOTIFIES, 1); }
  /** Counts a host error; returns how many there were before this one. */
  countHostError(): number { return Atomics.add(this.i32, STAT_HOST_ERRORS, 1); }
  /** Queue kicks seen and interrupts sent by the device thread; notifies that exited to userspace. */
  get stats(): TransportStats {
    return {
      kicks: Atomics.load(this.i32, STAT_KICKS), interrupts: Atomics.load(this.i32, STAT_INTERRUPTS),
      userspaceNotifies: Atomics.load(this.i32, STAT_USER_NOTIFIES), guestFaults: this.guestFaults,
      hostErrors: Atomics.load(this.i32, STAT_HOST_ERRORS),
    };
  }

  // --- Faults ---

  countGuestFault(): void { Atomics.add(this.i32, GUEST_FAULTS, 1); }
  get guestFaults(): number { return Atomics.load(this.i32, GUEST_FAULTS); }
}
