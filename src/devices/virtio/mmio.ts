/**
 * The virtio-mmio version 2 register file (virtio 1.x §4.2.2; register names
 * from linux/virtio_mmio.h), as a BusDevice on a vCPU thread's MMIO bus.
 *
 * Every vCPU thread builds its own VirtioMmioTransport over the device's
 * shared state (mmio-state.ts); the device thread reads the same state. This
 * object owns the register protocol and the device-status state machine
 * (§2.1, §3.1.1):
 *
 *   0 --ACKNOWLEDGE--> --DRIVER--> --FEATURES_OK--> --DRIVER_OK-->
 *
 * each step keeping the bits before it. FEATURES_OK is refused (the bit stays
 * clear, which the driver reads back, §3.1.1 step 6) when the driver accepted
 * a feature that was not offered or did not accept VIRTIO_F_VERSION_1.
 * FAILED may be set at any time. Writing 0 resets the device: registers,
 * queues, features and interrupt status here, and the backend's state on the
 * device thread — this vCPU waits (bounded) for the device thread to finish,
 * so no request of the old session is still written into guest memory after
 * the driver's reset write returns.
 *
 * A guest cannot make this throw: accesses of the wrong size or alignment,
 * to legacy (version 1) registers, to queues the device does not have, or
 * that break the protocol are ignored (reads return 0) and counted as guest
 * faults. QueueNotify writes normally never get here — KVM signals the
 * queue's ioeventfd — but without one the write signals that same eventfd.
 */
import { isMainThread } from "node:worker_threads";
import {
  VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
  VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL,
  VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES, VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INTERRUPT_ACK,
  VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
  VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM,
  VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH,
  VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_SHM_BASE_HIGH, VIRTIO_MMIO_SHM_BASE_LOW, VIRTIO_MMIO_SHM_LEN_HIGH,
  VIRTIO_MMIO_SHM_LEN_LOW, VIRTIO_MMIO_SHM_SEL, VIRTIO_MMIO_STATUS, VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_VERSION,
} from "../../linux/abi.generated.js";
import { dataView, getUint, setUint } from "../../memory/le.js";
import { sys } from "../../sys/native.js";
import type { BusDevice } from "../bus.js";
import { TransportState, type QueueRegister } from "./mmio-state.js";

/** MagicValue: the bytes "virt" read as a little-endian u32 (§4.2.2). */
export const VIRTIO_MMIO_MAGIC = new DataView(new TextEncoder().encode("virt").buffer).getUint32(0, true);
/** The non-legacy virtio-mmio interface (§4.2.2: Version 0x2). */
export const VIRTIO_MMIO_VERSION_2 = 2;
/** VendorID: "FLNT" little-endian (any value; Linux only prints it). */
export const FLINT_VIRTIO_VENDOR_ID = new DataView(new TextEncoder().encode("FLNT").buffer).getUint32(0, true);
/** A shared memory region length of all ones means "no such region" (§4.2.2, SHMLen). */
const SHM_ABSENT = 0xffff_ffff;

/** The status bits the driver may set, each requiring the ones before it. */
const STATUS_STEPS = [VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_DRIVER_OK];
const KNOWN_STATUS = STATUS_STEPS.reduce((a, b) => a | b, 0) | VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET;

/** Queue registers writable by the driver, by offset. */
const QUEUE_WRITES = new Map<number, QueueRegister>([
  [VIRTIO_MMIO_QUEUE_NUM, "num"],
  [VIRTIO_MMIO_QUEUE_DESC_LOW, "descLo"], [VIRTIO_MMIO_QUEUE_DESC_HIGH, "descHi"],
  [VIRTIO_MMIO_QUEUE_AVAIL_LOW, "availLo"], [VIRTIO_MMIO_QUEUE_AVAIL_HIGH, "availHi"],
  [VIRTIO_MMIO_QUEUE_USED_LOW, "usedLo"], [VIRTIO_MMIO_QUEUE_USED_HIGH, "usedHi"],
]);

/** Where guest faults go (a DeviceContext fits). */
export interface TransportFaultSink {
  guestFault(device: string, message: string): void;
}

const one = new BigUint64Array([1n]);
const hex = (n: number) => `0x${n.toString(16)}`;

export class VirtioMmioTransport implements BusDevice {
  readonly state: TransportState;
  private readonly name: string;
  private readonly faults: TransportFaultSink;
  /** Atomics.wait is not allowed on the main thread (tests drive transports there). */
  private readonly canWait = !isMainThread;

  /** `name` labels guest faults, e.g. "virtio-rng@0xd0001000". */
  constructor(shared: SharedArrayBuffer, name: string, faults: TransportFaultSink) {
    this.state = new TransportState(shared);
    this.name = name;
    this.faults = faults;
  }

  private fault(message: string): void {
    this.state.countGuestFault();
    this.faults.guestFault(this.name, message);
  }

  read(offset: number, data: Uint8Array): void {
    if (offset >= VIRTIO_MMIO_CONFIG) {
      this.readConfig(offset - VIRTIO_MMIO_CONFIG, data);
      return;
    }
    data.fill(0);
    if (data.length !== 4 || offset % 4 !== 0) {
      this.fault(`${data.length}-byte read at register ${hex(offset)}: registers are 32-bit aligned`);
      return;
    }
    const v = this.state.lock.with(() => this.readRegister(offset));
    if (v === undefined) this.fault(`read of unknown or legacy register ${hex(offset)}`);
    else setUint(dataView(data), 0, 4, v);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset >= VIRTIO_MMIO_CONFIG) {
      this.writeConfig(offset - VIRTIO_MMIO_CONFIG, data);
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) {
      this.fault(`${data.length}-byte write at register ${hex(offset)}: registers are 32-bit aligned`);
      return;
    }
    const value = getUint(dataView(data), 0, 4);
    if (offset === VIRTIO_MMIO_QUEUE_NOTIFY) {
      this.notify(value);
      return;
    }
    let resetNumber = 0;
    const problem = this.state.lock.with(() => {
      if (offset === VIRTIO_MMIO_STATUS && value === 0) {
        resetNumber = this.reset();
        return undefined;
      }
      return this.writeRegister(offset, value);
    });
    if (problem) this.fault(problem);
    if (resetNumber) this.state.waitForReset(resetNumber, this.canWait);
  }

  /** A register's value (lock held), or undefined for an unknown register. */
  private readRegister(offset: number): number | undefined {
    const s = this.state;
    const q = s.queueSel;
    const queueExists = q < s.queueCount;
    switch (offset) {
      case VIRTIO_MMIO_MAGIC_VALUE: return VIRTIO_MMIO_MAGIC;
      case VIRTIO_MMIO_VERSION: return VIRTIO_MMIO_VERSION_2;
      // DeviceID 0 = "no device here" until the device thread has described it.
      case VIRTIO_MMIO_DEVICE_ID: return s.initialized ? s.deviceId : 0;
      case VIRTIO_MMIO_VENDOR_ID: return FLINT_VIRTIO_VENDOR_ID;
      case VIRTIO_MMIO_DEVICE_FEATURES: {
        const sel = s.deviceFeaturesSel;
        return sel > 1 ? 0 : Number((s.deviceFeatures >> BigInt(32 * sel)) & 0xffff_ffffn);
      }
      // Reading a queue the device lacks returns 0: that is how drivers find out (§4.2.3.2).
      case VIRTIO_MMIO_QUEUE_NUM_MAX: return queueExists ? s.queueRegister(q, "numMax") : 0;
      case VIRTIO_MMIO_QUEUE_READY: return queueExists ? s.queueRegister(q, "ready") : 0;
      case VIRTIO_MMIO_INTERRUPT_STATUS: return s.interruptStatus;
      case VIRTIO_MMIO_STATUS: return s.status;
      case VIRTIO_MMIO_CONFIG_GENERATION: return s.configGeneration;
      // No shared memory regions (§4.2.2: SHMLen all ones); SHMSel is write-only.
      case VIRTIO_MMIO_SHM_LEN_LOW: case VIRTIO_MMIO_SHM_LEN_HIGH:
      case VIRTIO_MMIO_SHM_BASE_LOW: case VIRTIO_MMIO_SHM_BASE_HIGH:
        return SHM_ABSENT;
      default: return undefined;
    }
  }

  /** Applies a register write (lock held); returns a fault message when it is ignored. */
  private writeRegister(offset: number, value: number): string | undefined {
    const s = this.state;
    switch (offset) {
      case VIRTIO_MMIO_DEVICE_FEATURES_SEL: s.deviceFeaturesSel = value; return undefined;
      case VIRTIO_MMIO_DRIVER_FEATURES_SEL: s.driverFeaturesSel = value; return undefined;
      case VIRTIO_MMIO_DRIVER_FEATURES: {
        const st = s.status;
        if (!(st & VIRTIO_CONFIG_S_DRIVER) || st & VIRTIO_CONFIG_S_FEATURES_OK) {
          return `DriverFeatures written in status ${hex(st)} (only between DRIVER and FEATURES_OK)`;
        }
        const sel = s.driverFeaturesSel;
        if (sel > 1) return value === 0 ? undefined : `DriverFeatures word ${sel} set to ${hex(value)}: no such features`;
        s.setDriverFeaturesWord(sel, value);
        return undefined;
      }
      case VIRTIO_MMIO_QUEUE_SEL: s.queueSel = value; return undefined;
      case VIRTIO_MMIO_QUEUE_READY: return this.writeQueueReady(value);
      case VIRTIO_MMIO_INTERRUPT_ACK: s.ackInterrupt(value); return undefined;
      case VIRTIO_MMIO_STATUS: return this.writeStatus(value);
      case VIRTIO_MMIO_SHM_SEL: return undefined;
      default: {
        const reg = QUEUE_WRITES.get(offset);
        if (reg) return this.writeQueueRegister(reg, value);
        return `write of ${hex(value)} to read-only, unknown or legacy register ${hex(offset)}`;
      }
    }
  }

  private selectedQueue(what: string): number | string {
    const q = this.state.queueSel;
    if (q >= this.state.queueCount) return `${what} for queue ${q}: the device has ${this.state.queueCount}`;
    return q;
  }

  private writeQueueRegister(reg: QueueRegister, value: number): string | undefined {
    const q = this.selectedQueue(reg);
    if (typeof q === "string") return q;
    const s = this.state;
    if (s.queueRegister(q, "ready")) return `queue ${q} ${reg} written while the queue is ready`;
    if (s.status & VIRTIO_CONFIG_S_DRIVER_OK) return `queue ${q} ${reg} written after DRIVER_OK`;
    if (reg === "num") {
      const max = s.queueRegister(q, "numMax");
      // Split rings: a power of two no larger than QueueNumMax (§2.7).
      if (value === 0 || value > max || (value & (value - 1)) !== 0) return `queue ${q} size ${value} is not a power of two <= ${max}`;
    }
    s.setQueueRegister(q, reg, value);
    return undefined;
  }

  /**
   * QueueReady (§4.2.2). Before DRIVER_OK the driver sets queues up and may
   * take one down again (Linux's error path writes 0). After DRIVER_OK the
   * device is using its queues: making one ready is refused, and stopping one
   * needs VIRTIO_F_RING_RESET (§2.6.1), which flint does not offer. A driver
   * that writes 0 anyway wants the device off that queue's rings: the
   * register reads 0 back, the session ends at once (EPOCH: the device writes
   * nothing more into any ring) and the device thread puts the device in
   * DEVICE_NEEDS_RESET (§2.1.2); it is a guest fault.
   */
  private writeQueueReady(value: number): string | undefined {
    const q = this.selectedQueue("QueueReady");
    if (typeof q === "string") return q;
    const s = this.state;
    if (value > 1) return `QueueReady set to ${value}`;
    if (s.status & VIRTIO_CONFIG_S_DRIVER_OK) {
      if (value === 1) return `queue ${q} made ready after DRIVER_OK`;
      if (s.queueRegister(q, "ready") === 0) return `queue ${q} stopped after DRIVER_OK, but it was not ready`;
      s.setQueueRegister(q, "ready", 0);
      s.noteQueueStop(q);
      s.signalControl();
      return `queue ${q} stopped (QueueReady = 0) while the device is live: VIRTIO_F_RING_RESET is not offered, the device needs a reset`;
    }
    s.setQueueRegister(q, "ready", value);
    return undefined;
  }

  /** The device-status state machine (lock held; 0 is handled by reset()). */
  private writeStatus(value: number): string | undefined {
    const s = this.state;
    const old = s.status;
    if (value & ~KNOWN_STATUS) return `status ${hex(value)} has unknown bits`;
    if ((value & old) !== old) return `status ${hex(value)} clears bits of ${hex(old)} (only a reset may)`;
    if (old & VIRTIO_CONFIG_S_FAILED && value !== old) return `status ${hex(value)} after FAILED (reset first)`;
    // Every driver-set bit needs the ones before it in the sequence.
    for (let i = 1; i < STATUS_STEPS.length; i++) {
      if (value & STATUS_STEPS[i]! && !(value & STATUS_STEPS[i - 1]!)) {
        return `status ${hex(value)} skips a step before ${hex(STATUS_STEPS[i]!)}`;
      }
    }
    let next = value;
    let problem: string | undefined;
    if (value & VIRTIO_CONFIG_S_FEATURES_OK && !(old & VIRTIO_CONFIG_S_FEATURES_OK)) {
      const accepted = s.driverFeatures;
      const extra = accepted & ~s.deviceFeatures;
      if (extra !== 0n || !(accepted & (1n << BigInt(VIRTIO_F_VERSION_1)))) {
        // Refuse by leaving FEATURES_OK clear; the driver reads status back and gives up (§3.1.1).
        next &= ~(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        problem = extra !== 0n
          ? `driver accepted features 0x${extra.toString(16)} that were not offered`
          : "driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)";
      }
    }
    s.status = next;
    if (next & VIRTIO_CONFIG_S_DRIVER_OK && !(old & VIRTIO_CONFIG_S_DRIVER_OK)) {
      s.noteActivation();
      s.signalControl();
    }
    return problem;
  }

  /** Writing 0 to Status (lock held): back to the initial state; the device thread resets the backend. */
  private reset(): number {
    this.state.resetRegisters();
    const n = this.state.noteResetRequest();
    this.state.signalControl();
    return n;
  }

  /** QueueNotify reached userspace (no ioeventfd): signal the queue's eventfd ourselves. */
  private notify(value: number): void {
    const s = this.state;
    // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index (§4.2.3.3).
    if (value >= s.queueCount) {
      this.fault(`QueueNotify for queue ${value}: the device has ${s.queueCount}`);
      return;
    }
    s.countUserNotify();
    const fd = s.queueRegister(value, "notifyFd");
    if (fd >= 0) sys.write(fd, one, 8);
  }

  private readConfig(offset: number, data: Uint8Array): void {
    const size = data.length;
    if (size === 8 || offset % size !== 0 || offset + size > this.state.configSize) {
      data.fill(0);
      this.fault(`${size}-byte config read at ${hex(offset)} (config space is ${this.state.configSize} bytes; 1/2/4-byte aligned accesses)`);
      return;
    }
    this.state.lock.with(() => data.set(this.state.config.subarray(offset, offset + size)));
  }

  private writeConfig(offset: number, data: Uint8Array): void {
    const size = data.length;
    const s = this.state;
    if (size === 8 || offset % size !== 0 || !s.isConfigWritable(offset, size)) {
      this.fault(`${size}-byte config write at ${hex(offset)}: not a writable field`);
      return;
    }
    s.lock.with(() => {
      s.config.set(data, offset);
      s.markConfigDirty(offset, size);
    });
    s.signalControl();
  }
}
