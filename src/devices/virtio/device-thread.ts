/**
 * The main thread's handle on one virtio-mmio device: its shared transport
 * state, its eventfds and its device thread (device-thread-worker.ts).
 *
 *   const dev = new VirtioDeviceHandle({ name, backendModule, backendOptions, memory, mmioBase, gsi, vm });
 *   await dev.start();            // backend loaded, ioeventfds + irqfd registered
 *   ...dev.describe() to every vCPU thread (VirtioMmioTransport over its state)...
 *   await dev.stop();             // backend.shutdown() done, fds closed
 *
 * KVM wiring (api.rst §4.59 KVM_IRQFD, §4.60 KVM_IOEVENTFD): a 4-byte guest
 * write of q to mmioBase + VIRTIO_MMIO_QUEUE_NOTIFY signals queue q's eventfd
 * (datamatch q) without leaving the kernel; the device thread's writes to the
 * irqfd eventfd raise the device's GSI. Without a `vm` (unit tests) the
 * eventfds exist but are not registered: tests write the notify eventfds and
 * read the irqfd eventfd themselves.
 */
import { closeSync } from "node:fs";
import { MessageChannel, type MessagePort, Worker } from "node:worker_threads";
import {
  EFD_CLOEXEC, EFD_NONBLOCK, KVM_IOEVENTFD_FLAG_DATAMATCH, VIRTIO_MMIO_QUEUE_NOTIFY,
} from "../../linux/abi.generated.js";
import { VIRTIO_MMIO_SIZE } from "../../arch/x86_64/layout.js";
import type { VmFd } from "../../kvm/vm.js";
import type { MemoryDescriptor } from "../../memory/guest-memory.js";
import { eventfd } from "../../sys/native.js";
import { TransportState, createTransportShared, type TransportStats } from "./mmio-state.js";

/** A device's counters, for MachineResult. */
export interface VirtioDeviceStats extends TransportStats {
  name: string;
  /**
   * Why the device entered NEEDS_RESET: the first few times (the device thread
   * reports later ones as guest faults, rate-limited, so a guest breaking its
   * rings over and over cannot grow this list).
   */
  failures: string[];
}

/** workerData of a device thread. */
export interface DeviceThreadInit {
  name: string;
  /** URL (href) of the backend module; it exports `createBackend(options): VirtioBackend`. */
  backendModule: string;
  backendOptions: unknown;
  state: SharedArrayBuffer;
  controlFd: number;
  irqFd: number;
  memory: MemoryDescriptor;
  /** Host-side requests arrive here (read synchronously by the poll loop when the control eventfd fires). */
  requests: MessagePort;
}

/** A host-side request to a device thread, and its answer. */
export interface DeviceRequestMessage {
  id: number;
  op: string;
  args?: unknown;
}
export type DeviceReplyMessage = { id: number; ok: true; value: unknown } | { id: number; ok: false; message: string };

/** Device thread -> main thread. */
export type DeviceThreadMessage =
  | { type: "ready"; notifyFds: number[] }
  /** The backend could not be loaded or described. */
  | { type: "error"; message: string }
  /**
   * A guest-caused fault (bad request), or with `count` > 1 a summary of that
   * many (the thread posts only the first few, then summaries: fault-log.ts).
   * Every fault is also counted in the transport state (stats().guestFaults).
   */
  | { type: "fault"; message: string; count: number }
  /** A host-side failure reported to the guest (one of the first HOST_ERRORS_LOGGED, mmio-state.ts; all are counted). */
  | { type: "hostError"; message: string }
  /** The device went to DEVICE_NEEDS_RESET (or a backend callback threw). */
  | { type: "failed"; reason: string }
  | { type: "stopped" };

/** What a vCPU thread needs to put the device's register file on its MMIO bus. */
export interface VirtioTransportDescriptor {
  name: string;
  mmioBase: number;
  mmioSize: number;
  state: SharedArrayBuffer;
}

/** How to build one device. */
export interface VirtioDeviceSpec {
  /** For messages, e.g. "virtio-rng@0xd0001000". */
  name: string;
  /** The backend module (e.g. new URL("./rng.js", import.meta.url)). */
  backendModule: URL;
  /** JSON-serialisable options for its createBackend. */
  backendOptions?: unknown;
  memory: MemoryDescriptor;
  mmioBase: number;
  gsi: number;
  /** Registers the ioeventfds and the irqfd with this VM (omit in unit tests). */
  vm?: VmFd;
  /**
   * Guest-caused faults reported by the device thread: one fault (`count` 1), or
   * a summary line standing for `count` faults. Rate-limited (fault-log.ts).
   */
  onGuestFault?: (device: string, message: string, count: number) => void;
  /** The device entered NEEDS_RESET (or a backend callback threw). */
  onFailed?: (device: string, reason: string) => void;
  /** Host-side failures reported to the guest (the first HOST_ERRORS_LOGGED of them, mmio-state.ts). */
  onHostError?: (device: string, message: string) => void;
}

/** Why a virtio device could not start. */
export class VirtioDeviceError extends Error {
  readonly code: "EVIRTIOBACKEND" | "EVIRTIOSTATE" | "EVIRTIOREQUEST";
  constructor(code: VirtioDeviceError["code"], message: string) {
    super(message);
    this.name = "VirtioDeviceError";
    this.code = code;
  }
}

export class VirtioDeviceHandle {
  readonly spec: VirtioDeviceSpec;
  readonly state: TransportState;
  /** Written by the device thread to interrupt the guest (registered with KVM_IRQFD). */
  readonly irqFd: number;
  /** Written to wake the device thread (status changes, stop). */
  readonly controlFd: number;
  /** One per queue, once started (registered with KVM_IOEVENTFD). */
  notifyFds: number[] = [];
  /** Reasons the device failed, in order. */
  readonly failures: string[] = [];
  private worker: Worker | undefined;
  private exited: Promise<void> | undefined;
  private closed = false;
  /** stop() gave up waiting for the thread (see stop()). */
  private abandoned = false;
  private requests: MessagePort | undefined;
  private nextRequestId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; op: string }>();

  /** Creates the state and eventfds and registers the irqfd; nothing runs until start(). */
  constructor(spec: VirtioDeviceSpec) {
    this.spec = spec;
    this.state = new TransportState(createTransportShared());
    this.controlFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    this.irqFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    this.state.controlFd = this.controlFd;
    try {
      spec.vm?.irqfd(this.irqFd, spec.gsi);
    } catch (e) {
      this.closeFds();
      throw e;
    }
  }

  /** Starts the device thread; resolves once the backend is loaded and KVM knows the queues' eventfds. */
  async start(): Promise<void> {
    if (this.worker) throw new VirtioDeviceError("EVIRTIOSTATE", `Cannot start ${this.spec.name}: already started`);
    const channel = new MessageChannel();
    this.requests = channel.port1;
    this.requests.on("message", (m: DeviceReplyMessage) => this.settle(m));
    this.requests.unref(); // pending requests must not keep a stopped VM's process alive
    const init: DeviceThreadInit = {
      name: this.spec.name, backendModule: this.spec.backendModule.href, backendOptions: this.spec.backendOptions ?? {},
      state: this.state.sab, controlFd: this.controlFd, irqFd: this.irqFd, memory: this.spec.memory, requests: channel.port2,
    };
    const w = new Worker(new URL("./device-thread-worker.js", import.meta.url), { workerData: init, transferList: [channel.port2] });
    this.worker = w;
    let startError: string | undefined;
    const ready = new Promise<number[]>((resolve, reject) => {
      w.on("message", (m: DeviceThreadMessage) => {
        switch (m.type) {
          case "ready": resolve(m.notifyFds); break;
          case "error": startError = m.message; break;
          case "fault": this.spec.onGuestFault?.(this.spec.name, m.message, m.count); break;
          case "hostError": this.spec.onHostError?.(this.spec.name, m.message); break;
          case "failed": this.failures.push(m.reason); this.spec.onFailed?.(this.spec.name, m.reason); break;
          case "stopped": break;
        }
      });
      w.on("error", (e) => {
        reject(e);
        // After start, a crashed device thread is a device failure, reported like one.
        this.failures.push(`device thread failed: ${e.message}`);
        this.spec.onFailed?.(this.spec.name, `device thread failed: ${e.message}`);
      });
      w.on("exit", () => reject(new Error(startError ?? "the device thread exited")));
    });
    this.exited = new Promise((resolve) => w.on("exit", () => resolve()));
    try {
      this.notifyFds = await ready;
    } catch (e) {
      await this.exited;
      this.closeFds();
      throw new VirtioDeviceError("EVIRTIOBACKEND", `Cannot start ${this.spec.name}: ${startError ?? (e as Error).message}`);
    }
    const vm = this.spec.vm;
    if (vm) {
      this.notifyFds.forEach((fd, q) => vm.ioeventfd({
        address: this.spec.mmioBase + VIRTIO_MMIO_QUEUE_NOTIFY, length: 4, fd, flags: KVM_IOEVENTFD_FLAG_DATAMATCH, datamatch: BigInt(q),
      }));
    }
  }

  /**
   * Sends a request to the backend (VirtioBackend.control) and resolves with
   * its answer. Rejects with EVIRTIOREQUEST when the backend refuses it or
   * the device is not running.
   */
  request(op: string, args?: unknown): Promise<unknown> {
    const port = this.requests;
    if (!port || this.closed || this.state.stopRequested) {
      return Promise.reject(new VirtioDeviceError("EVIRTIOREQUEST", `Cannot ${op} on ${this.spec.name}: the device is not running`));
    }
    const id = this.nextRequestId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, op });
      port.ref(); // keep the process alive until the answer arrives
      port.postMessage({ id, op, args } satisfies DeviceRequestMessage);
      this.state.signalControl();
    });
  }

  private settle(m: DeviceReplyMessage): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.requests?.unref();
    if (m.ok) p.resolve(m.value);
    else p.reject(new VirtioDeviceError("EVIRTIOREQUEST", `Cannot ${p.op} on ${this.spec.name}: ${m.message}`));
  }

  stats(): VirtioDeviceStats {
    return { name: this.spec.name, ...this.state.stats, failures: [...this.failures] };
  }

  /** The transport description for vCPU threads. */
  describe(): VirtioTransportDescriptor {
    return { name: this.spec.name, mmioBase: this.spec.mmioBase, mmioSize: VIRTIO_MMIO_SIZE, state: this.state.sab };
  }

  /**
   * Stops the device thread after backend.shutdown() (data flushed), then
   * closes the eventfds; resolves true. A thread blocked in a host syscall
   * (a disk that does not answer) cannot be interrupted from JavaScript: if
   * `giveUp` settles first, stop() resolves false without it. The thread is
   * unref'd and left to finish: once its syscall returns it sees the stop
   * request, shuts its backend down and exits, and only then are its
   * eventfds closed (see threadExited), so a late write never lands on a
   * reused fd number.
   */
  async stop(giveUp?: Promise<void>): Promise<boolean> {
    if (this.closed || this.abandoned) return !this.abandoned;
    const w = this.worker;
    let ended = true;
    if (w && this.exited) {
      this.state.requestStop();
      ended = await Promise.race([this.exited.then(() => true), ...(giveUp ? [giveUp.then(() => false)] : [])]);
    }
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new VirtioDeviceError("EVIRTIOREQUEST", `Cannot ${p.op} on ${this.spec.name}: the device stopped`));
    }
    this.requests?.close();
    if (ended) {
      this.closeFds();
      return true;
    }
    this.abandoned = true;
    w!.unref();
    void this.exited!.then(() => this.closeFds());
    return false;
  }

  /** Settles when the device thread has exited (at once if it never started). */
  get threadExited(): Promise<void> {
    return this.exited ?? Promise.resolve();
  }

  private closeFds(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of [this.controlFd, this.irqFd, ...this.notifyFds]) closeSync(fd);
  }
}
