/**
 * The main thread's side of virtio devices and their device threads.
 *
 *   const thread = new DeviceThread("virtio devices");        // one worker for several devices
 *   const blk = new VirtioDeviceHandle({ name, kind: "block", backendOptions, memory, mmioBase, gsi, vm, thread });
 *   const rng = new VirtioDeviceHandle({ name, kind: "rng", memory, mmioBase, gsi, vm, thread });
 *   await Promise.all([blk.start(), rng.start()]); // the thread starts once: backends created, ioeventfds + irqfds registered
 *   ...dev.describe() to every vCPU thread (VirtioMmioTransport over its state)...
 *   await blk.quiesce(); ... await blk.resume();       // the VM's pause: nothing served, nothing lost
 *   const saved = await blk.saveState();               // while quiesced: the device's record for a snapshot
 *   await Promise.all([blk.stop(), rng.stop()]);   // each backend.shutdown() done, fds closed, thread exited
 *
 * Without `thread`, a device gets a thread of its own. Which devices share a
 * thread is decided in one place, the device manager (virtio-set.ts). A
 * device thread costs a V8 isolate (~9 MiB and ~100 ms to start with its
 * module graph), so a VM's devices share one by default; every device keeps
 * its own state, fds, session and failure on it (device-runner.ts), and one
 * device failing never fails another.
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
import { eventfd, sys } from "../../sys/native.js";
import { WorkerPool } from "../../sys/worker-pool.js";
import { processSeccompAction, type DefaultAction } from "../../seccomp/index.js";
import type { VirtioDeviceKind } from "./backends.js";
import { type DeviceSavedParts, VIRTIO_REQUEST_SAVE_STATE, type VirtioDeviceSavedState, VirtioSavedStateError } from "./device-saved-state.js";
import { TransportState, createTransportShared, type TransportStats } from "./mmio-state.js";
import { BACKEND_METRIC_SLOTS } from "./types.js";

/** Device threads: started from a booted spare when Machine.keepWarm asked for some (worker-pool.ts). */
export const DEVICE_THREAD_POOL = WorkerPool.for(new URL("./device-thread-worker.js", import.meta.url));

/** A device's counters, for MachineResult. */
export interface VirtioDeviceStats extends TransportStats {
  name: string;
  /**
   * Why the device entered NEEDS_RESET: the first few times (the device thread
   * reports later ones as guest faults, rate-limited, so a guest breaking its
   * rings over and over cannot grow this list).
   */
  failures: string[];
  /** The backend's own counters (its `metrics`: bytes, requests...), as its thread last published them. */
  backend: Record<string, number>;
}

/** How a device thread gets a device's backend. */
export type DeviceBackendSource =
  /** A built-in kind, from the thread's static registry (backends.ts). */
  | { kind: VirtioDeviceKind }
  /** URL (href) of a module exporting `createBackend(options): VirtioBackend` (test backends). */
  | { module: string };

/** One device of a device thread's workerData. */
export interface DeviceInit {
  /** The device's number on its thread (its events carry it), unique for the thread's life. */
  id: number;
  name: string;
  backend: DeviceBackendSource;
  backendOptions: unknown;
  state: SharedArrayBuffer;
  controlFd: number;
  /** The backend's counters (BACKEND_METRIC_SLOTS float64s), written by the device thread, read by the host at any time. */
  metrics: SharedArrayBuffer;
  irqFd: number;
  memory: MemoryDescriptor;
  /** Host-side requests arrive here (read synchronously by the poll loop when the control eventfd fires). */
  requests: MessagePort;
  /** Bring the device up from this record (a restore from a snapshot) instead of fresh. */
  restore?: VirtioDeviceSavedState;
}

/** Devices handed to a device thread together; its "ready" answer names the batch. */
export interface DeviceBatch {
  batch: number;
  devices: DeviceInit[];
}

/** workerData of a device thread: its first devices, and how it runs. */
export interface DeviceThreadInit extends DeviceBatch {
  /** The thread's own seccomp filter to stack once its devices are created, before its loop (when the process has one; not on a shared thread). */
  seccomp?: DefaultAction;
  /** A shared thread (DeviceThread `shared`): its channel for more batches (SharedThreadRequest), signalled through `fd`. */
  shared?: { fd: number; port: MessagePort };
}

/** Main thread -> a shared device thread, on its channel: devices of another VM. */
export type SharedThreadRequest = { type: "add" } & DeviceBatch;

/** A host-side request to a device thread, and its answer. */
export interface DeviceRequestMessage {
  id: number;
  op: string;
  args?: unknown;
}
export type DeviceReplyMessage = { id: number; ok: true; value: unknown } | { id: number; ok: false; message: string; code?: string };

/** How one device of a thread started: its queues' notify eventfds, or why its backend could not be created. */
export type DeviceStartResult = { ok: true; notifyFds: number[]; metricNames: string[] } | { ok: false; message: string; code?: string };

/** What a device on a device thread reports about itself. */
export type DeviceEvent =
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
  /** The device was stopped: backend.shutdown() ran and the thread no longer uses its fds. */
  | { type: "stopped" }
  /** The thread carried out quiesce request `seq` (TransportState.requestQuiesce): the device is now quiesced, or running again. */
  | { type: "quiesce"; quiesced: boolean; seq: number };

/** Device thread -> main thread: "ready" once per batch (results in its order), and events of the device whose DeviceInit id is `device`. */
export type DeviceThreadMessage = { type: "ready"; batch: number; devices: DeviceStartResult[] } | (DeviceEvent & { device: number });

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
  /** A built-in backend (backends.ts). Give this or backendModule. */
  kind?: VirtioDeviceKind;
  /** A backend module instead (tests: e.g. new URL("./testing/test-backend.js", import.meta.url)). */
  backendModule?: URL;
  /** JSON-serialisable options for its createBackend. */
  backendOptions?: unknown;
  memory: MemoryDescriptor;
  mmioBase: number;
  gsi: number;
  /** Registers the ioeventfds and the irqfd with this VM (omit in unit tests). */
  vm?: VmFd;
  /** The device thread to run on, shared with other devices (default: a thread of its own). */
  thread?: DeviceThread;
  /**
   * Guest-caused faults reported by the device thread: one fault (`count` 1), or
   * a summary line standing for `count` faults. Rate-limited (fault-log.ts).
   */
  onGuestFault?: (device: string, message: string, count: number) => void;
  /** The device entered NEEDS_RESET (or a backend callback threw). */
  onFailed?: (device: string, reason: string) => void;
  /** Host-side failures reported to the guest (the first HOST_ERRORS_LOGGED of them, mmio-state.ts). */
  onHostError?: (device: string, message: string) => void;
  /**
   * Bring the device up from this record (checked: checkVirtioDeviceSavedState)
   * instead of fresh: start() then resolves with the device as it was saved,
   * active without the driver writing DRIVER_OK again, and quiesced; the
   * first resume() kicks it once (device-runner.ts).
   */
  restore?: VirtioDeviceSavedState;
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

/** How a DeviceThread runs. */
export interface DeviceThreadOptions {
  /**
   * Shared by several VMs (processDeviceThread): devices join while it runs
   * and start in a batch of their own, and the thread stays up, unref'd,
   * once its last device stops, waiting for more. It has no seccomp filter
   * of its own (the process's still applies): devices that join later open
   * their files and TAPs on it.
   */
  shared?: boolean;
}

/**
 * One device thread (a worker running device-thread-worker.ts) and the
 * devices placed on it. A VM's thread: devices join before it starts; the
 * first VirtioDeviceHandle.start() starts it for all of them (one worker,
 * one "ready" answer), and it ends once every device on it has been stopped.
 * A shared thread (options.shared) also takes devices that join after it
 * started: each start() sends the devices waiting to join as one batch.
 * Where devices go is the device manager's decision (virtio-set.ts).
 */
export class DeviceThread {
  readonly name: string;
  readonly shared: boolean;
  private members: VirtioDeviceHandle[] = [];
  /** Joined and not yet sent to the worker. */
  private waiting: VirtioDeviceHandle[] = [];
  /** Sent to the worker and not yet let go of (by its DeviceInit id): where its events go. */
  private readonly onThread = new Map<number, VirtioDeviceHandle>();
  /** Each sent device's answer from its batch's "ready". */
  private readonly sent = new WeakMap<VirtioDeviceHandle, Promise<DeviceStartResult>>();
  /** Batches sent and not yet answered. */
  private readonly answers = new Map<number, { ids: number[]; resolve: (r: DeviceStartResult[]) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private nextBatch = 0;
  private worker: Worker | undefined;
  /** A shared thread's channel (DeviceThreadInit.shared). */
  private channel: { fd: number; port: MessagePort } | undefined;
  private exitedPromise: Promise<void> | undefined;
  private hasExited = false;

  /** `name` appears in messages about the thread itself. */
  constructor(name = "virtio device thread", options: DeviceThreadOptions = {}) {
    this.name = name;
    this.shared = options.shared ?? false;
  }

  /** The devices on this thread (in the order they joined; a shared thread's only until each is let go of). */
  get devices(): readonly VirtioDeviceHandle[] {
    return this.members;
  }

  /** Settles when the worker has exited (at once if it never started). */
  get exited(): Promise<void> {
    return this.exitedPromise ?? Promise.resolve();
  }

  /** The worker has exited (a shared thread: crashed, or closed): nothing more can join it. */
  get gone(): boolean {
    return this.hasExited;
  }

  /** @internal VirtioDeviceHandle's constructor: a device joins before the thread starts (or, on a shared thread, at any time before it is gone). */
  join(device: VirtioDeviceHandle): void {
    if (this.hasExited || (this.worker && !this.shared)) {
      throw new VirtioDeviceError("EVIRTIOSTATE", `Cannot add ${device.spec.name} to ${this.name}: the thread has ${this.hasExited ? "exited" : "started"}`);
    }
    this.members.push(device);
    this.waiting.push(device);
  }

  /**
   * Starts `device` on the thread: sends it, with every other device waiting
   * to join and not closed, as one batch (the first batch starts the worker),
   * unless it was sent already. Resolves with its result; rejects if the
   * thread ended before answering, or the device was never sent (closed
   * before its thread started).
   */
  startDevice(device: VirtioDeviceHandle): Promise<DeviceStartResult> {
    let answer = this.sent.get(device);
    if (!answer && this.waiting.includes(device)) {
      const batch = this.waiting.filter((d) => !d.closedBeforeStart);
      this.waiting = [];
      const results = this.send(batch);
      batch.forEach((d, i) => this.sent.set(d, results.then((r) => r[i]!)));
      answer = this.sent.get(device);
    }
    return answer ?? Promise.reject(new VirtioDeviceError("EVIRTIOSTATE", `${device.spec.name} is not on ${this.name}`));
  }

  /** The device's batch answer once it was sent to the worker (undefined before). */
  startOf(device: VirtioDeviceHandle): Promise<DeviceStartResult> | undefined {
    return this.sent.get(device);
  }

  private send(batch: VirtioDeviceHandle[]): Promise<DeviceStartResult[]> {
    if (this.hasExited) return Promise.reject(new Error("the device thread exited"));
    const devices = batch.map((d) => {
      const id = this.nextId++;
      this.onThread.set(id, d);
      return d.threadInit(id);
    });
    const number = this.nextBatch++;
    const ids = devices.map((d) => d.id);
    const answer = new Promise<DeviceStartResult[]>((resolve, reject) => this.answers.set(number, { ids, resolve, reject }));
    const ports = devices.map((d) => d.requests);
    if (!this.worker) this.launch({ batch: number, devices }, ports);
    else {
      this.worker.ref(); // until the batch is answered
      this.channel!.port.postMessage({ type: "add", batch: number, devices } satisfies SharedThreadRequest, ports);
      sys.write(this.channel!.fd, ONE, 8);
    }
    return answer;
  }

  /** The devices on the worker whose thread-side runner has not ended. */
  private get running(): VirtioDeviceHandle[] {
    return [...this.onThread.values()].filter((d) => d.runningOnThread);
  }

  /**
   * After a member stopped: when no member runs any more, waits for the
   * worker to exit (true), or for `giveUp` (false: the worker is still inside
   * some device's handler, e.g. blocked in a host syscall). A shared thread
   * does not exit: true at once.
   */
  async idle(giveUp?: Promise<void>): Promise<boolean> {
    if (this.shared || this.running.length > 0 || !this.worker || this.hasExited) return true;
    return Promise.race([this.exited.then(() => true), ...(giveUp ? [giveUp.then(() => false)] : [])]);
  }

  /** @internal A member was given up on: once every member has stopped or been given up on, the worker must not keep the process alive. */
  released(): void {
    if (this.running.every((d) => d.givenUp) && this.answers.size === 0) this.worker?.unref();
  }

  /** @internal The device's fds are closed: a shared thread forgets it. */
  forget(device: VirtioDeviceHandle): void {
    if (!this.shared) return;
    this.members = this.members.filter((d) => d !== device);
    this.waiting = this.waiting.filter((d) => d !== device);
  }

  private launch(first: DeviceBatch, ports: MessagePort[]): void {
    const seccomp = processSeccompAction();
    let shared: DeviceThreadInit["shared"];
    if (this.shared) {
      const { port1, port2 } = new MessageChannel();
      this.channel = { fd: eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), port: port1 };
      port1.unref();
      shared = { fd: this.channel.fd, port: port2 };
      ports = [...ports, port2];
    }
    const init: DeviceThreadInit = { ...first, ...(seccomp && !this.shared ? { seccomp } : {}), ...(shared ? { shared } : {}) };
    const w = DEVICE_THREAD_POOL.take(init, ports);
    this.worker = w;
    w.on("message", (m: DeviceThreadMessage) => {
      if (m.type === "ready") {
        const answer = this.answers.get(m.batch);
        if (!answer) return;
        this.answers.delete(m.batch);
        answer.ids.forEach((id, i) => {
          const d = this.onThread.get(id);
          if (d && m.devices[i]?.ok) d.runningOnThread = true;
          else this.onThread.delete(id); // not started: the thread closed what it made for it
        });
        answer.resolve(m.devices);
        this.settleRef();
      } else {
        const d = this.onThread.get(m.device);
        d?.onEvent(m);
        if (m.type === "stopped") {
          this.onThread.delete(m.device);
          this.settleRef();
        }
      }
    });
    w.on("error", (e) => {
      // After start, a crashed device thread is a failure of every device still on it.
      for (const d of this.running) d.onThreadFailed(e);
      this.failAnswers(e);
    });
    this.exitedPromise = new Promise((resolve) => w.on("exit", () => {
      this.hasExited = true;
      this.failAnswers(new Error("the device thread exited"));
      for (const d of this.onThread.values()) d.onThreadExit();
      this.onThread.clear();
      if (this.channel) {
        this.channel.port.close();
        closeSync(this.channel.fd);
      }
      resolve();
    }));
  }

  private failAnswers(e: Error): void {
    for (const a of this.answers.values()) a.reject(e);
    this.answers.clear();
  }

  /** A shared thread keeps the process alive only while it has devices running or a batch unanswered. */
  private settleRef(): void {
    if (!this.shared || !this.worker) return;
    if (this.answers.size > 0 || this.running.some((d) => !d.givenUp)) this.worker.ref();
    else this.worker.unref();
  }
}

/** What a write to an eventfd adds. */
const ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

let processThread: DeviceThread | undefined;

/**
 * The process's shared device thread (MachineConfig.deviceThread "process"):
 * one worker for the devices of every VM that asks for it, so that a library
 * running many VMs pays one device isolate instead of one per VM. A new one
 * when the last one is gone (it crashed).
 */
export function processDeviceThread(): DeviceThread {
  if (!processThread || processThread.gone) processThread = new DeviceThread("the process's device thread", { shared: true });
  return processThread;
}

/**
 * The main thread's handle on one virtio-mmio device: its shared transport
 * state, its eventfds, and its place on a device thread.
 */
export class VirtioDeviceHandle {
  readonly spec: VirtioDeviceSpec;
  readonly state: TransportState;
  /** The thread the device runs on (its own unless spec.thread was given). */
  readonly thread: DeviceThread;
  /** Written by the device thread to interrupt the guest (registered with KVM_IRQFD). */
  readonly irqFd: number;
  /** Written to wake the device thread (status changes, stop). */
  readonly controlFd: number;
  /** One per queue, once started (registered with KVM_IOEVENTFD). */
  notifyFds: number[] = [];
  /** The backend's counters as its thread last published them, and their names. */
  private readonly backendMetrics = new Float64Array(new SharedArrayBuffer(BACKEND_METRIC_SLOTS * 8));
  private metricNames: string[] = [];
  /** Reasons the device failed, in order. */
  readonly failures: string[] = [];
  /** @internal Closed before its thread started: the thread leaves it out. */
  closedBeforeStart = false;
  /** @internal The device's runner on the thread was created and has not ended (stopped, or thread gone). */
  runningOnThread = false;
  private startCalled = false;
  private closed = false;
  /** stop() gave up waiting for the thread (see stop()). */
  private abandoned = false;
  private requests: MessagePort | undefined;
  private nextRequestId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; op: string }>();
  /** The last quiesce request the thread answered, and who waits for an answer. */
  private quiesceAnswered = 0;
  /** The thread said the device is quiesced (its last quiesce answer, or a restored start), and no resume was asked since. */
  private quiescedOnThread = false;
  private quiesceWaiters: { seq: number; resolve: () => void }[] = [];
  private markStopped!: () => void;
  /** Settles when the thread reported this device stopped, or the thread is gone. */
  private readonly stoppedOnThread = new Promise<void>((resolve) => (this.markStopped = resolve));

  /** Creates the state and eventfds, registers the irqfd and joins the thread; nothing runs until start(). */
  constructor(spec: VirtioDeviceSpec) {
    if (!spec.kind === !spec.backendModule) {
      throw new VirtioDeviceError("EVIRTIOBACKEND", `Cannot create ${spec.name}: give either a backend kind or a backend module`);
    }
    this.spec = spec;
    this.thread = spec.thread ?? new DeviceThread(`device thread of ${spec.name}`);
    this.state = new TransportState(createTransportShared());
    this.controlFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    this.irqFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    this.state.controlFd = this.controlFd;
    try {
      spec.vm?.irqfd(this.irqFd, spec.gsi);
      this.thread.join(this);
    } catch (e) {
      this.closeFds();
      throw e;
    }
  }

  /** @internal What the thread's worker needs for this device (its request port is transferred). */
  threadInit(id: number): DeviceInit {
    const channel = new MessageChannel();
    this.requests = channel.port1;
    this.requests.on("message", (m: DeviceReplyMessage) => this.settle(m));
    this.requests.unref(); // pending requests must not keep a stopped VM's process alive
    const s = this.spec;
    return {
      id, name: s.name, backend: s.kind ? { kind: s.kind } : { module: s.backendModule!.href }, backendOptions: s.backendOptions ?? {},
      state: this.state.sab, controlFd: this.controlFd, irqFd: this.irqFd, memory: s.memory, requests: channel.port2,
      metrics: this.backendMetrics.buffer as SharedArrayBuffer, ...(s.restore ? { restore: s.restore } : {}),
    };
  }

  /**
   * Starts the device's thread if it has not started (with every device on
   * it; on a shared thread, sends it with the devices waiting to join), and
   * resolves once this device's backend is created and KVM knows its queues'
   * eventfds.
   */
  async start(): Promise<void> {
    if (this.startCalled) throw new VirtioDeviceError("EVIRTIOSTATE", `Cannot start ${this.spec.name}: already started`);
    this.startCalled = true;
    if (this.closed) throw new VirtioDeviceError("EVIRTIOSTATE", `Cannot start ${this.spec.name}: it was stopped`);
    let mine: DeviceStartResult;
    try {
      mine = await this.thread.startDevice(this);
    } catch (e) {
      // The thread ended before answering: nothing of it runs any more.
      await this.thread.exited;
      this.markStopped();
      this.closeFds();
      throw new VirtioDeviceError("EVIRTIOBACKEND", `Cannot start ${this.spec.name}: ${(e as Error).message}`);
    }
    if (!mine.ok) {
      // The thread never touches this device's fds (it closed those it made for it).
      this.markStopped();
      this.closeFds();
      if (mine.code?.startsWith("EVIRTIOSNAP")) throw new VirtioSavedStateError(mine.code as VirtioSavedStateError["code"], mine.message);
      throw new VirtioDeviceError("EVIRTIOBACKEND", `Cannot start ${this.spec.name}: ${mine.message}`);
    }
    // A restored device starts quiesced (device-runner.ts restore).
    this.quiescedOnThread = this.spec.restore !== undefined;
    this.notifyFds = mine.notifyFds;
    this.metricNames = mine.metricNames;
    const vm = this.spec.vm;
    if (vm) {
      this.notifyFds.forEach((fd, q) => vm.ioeventfd({
        address: this.spec.mmioBase + VIRTIO_MMIO_QUEUE_NOTIFY, length: 4, fd, flags: KVM_IOEVENTFD_FLAG_DATAMATCH, datamatch: BigInt(q),
      }));
    }
  }

  /** @internal An event the device thread posted about this device (after its "ready"). */
  onEvent(m: DeviceEvent): void {
    switch (m.type) {
      case "fault": this.spec.onGuestFault?.(this.spec.name, m.message, m.count); break;
      case "hostError": this.spec.onHostError?.(this.spec.name, m.message); break;
      case "failed": this.failures.push(m.reason); this.spec.onFailed?.(this.spec.name, m.reason); break;
      case "stopped": this.runningOnThread = false; this.markStopped(); break;
      case "quiesce": this.answerQuiesce(m.seq); break;
    }
  }

  private answerQuiesce(seq: number): void {
    this.quiesceAnswered = Math.max(this.quiesceAnswered, seq);
    const done = this.quiesceWaiters.filter((w) => w.seq <= this.quiesceAnswered);
    this.quiesceWaiters = this.quiesceWaiters.filter((w) => w.seq > this.quiesceAnswered);
    for (const w of done) w.resolve();
  }

  /**
   * Quiesces the device on its thread (device-runner.ts): resolves once the
   * thread has finished what it had started for the device and no longer
   * serves its queues or watched fds. Requests the guest posts meanwhile wait
   * in their rings and are served after resume(). Resolves at once when the
   * device does not run on a thread (never started, stopped, or its thread
   * gone), and when it stops while quiescing.
   */
  quiesce(): Promise<void> {
    return this.askQuiesce(true);
  }

  /** Lets a quiesced device serve its queues again; resolves once its thread has. Same rules as quiesce(). */
  resume(): Promise<void> {
    return this.askQuiesce(false);
  }

  private askQuiesce(on: boolean): Promise<void> {
    if (!this.runningOnThread || this.closed) return Promise.resolve();
    if (!on) this.quiescedOnThread = false;
    const seq = this.state.requestQuiesce(on);
    const answered = new Promise<void>((resolve) => this.quiesceWaiters.push({
      seq, resolve: () => {
        // Only the latest request decides (a resume asked meanwhile wins).
        if (on && this.state.quiesceRequest.seq === seq) this.quiescedOnThread = true;
        resolve();
      },
    }));
    return Promise.race([answered, this.stoppedOnThread]);
  }

  /** True while the device is quiesced on its thread (quiesce() resolved, or a restored start) and running there. */
  get quiesced(): boolean {
    return this.quiescedOnThread && this.runningOnThread && !this.closed;
  }

  /**
   * The device's record for a snapshot, read on its thread (device-runner.ts
   * saveState): its registers, its queues' positions and its backend's state.
   * Rejects with VirtioSavedStateError EVIRTIONOTQUIESCED unless quiesce()
   * resolved (and no resume() was asked since), and with EVIRTIOREQUEST when
   * the device does not run.
   */
  async saveState(): Promise<DeviceSavedParts> {
    if (!this.runningOnThread || this.closed) {
      throw new VirtioDeviceError("EVIRTIOREQUEST", `Cannot save ${this.spec.name}: the device is not running`);
    }
    if (!this.quiescedOnThread) {
      throw new VirtioSavedStateError("EVIRTIONOTQUIESCED", `Cannot save ${this.spec.name}: it is not quiesced (quiesce() first)`);
    }
    return (await this.request(VIRTIO_REQUEST_SAVE_STATE)) as DeviceSavedParts;
  }

  /** @internal The worker crashed after start. */
  onThreadFailed(e: Error): void {
    this.failures.push(`device thread failed: ${e.message}`);
    this.spec.onFailed?.(this.spec.name, `device thread failed: ${e.message}`);
  }

  /** @internal The worker has exited: nothing of this device runs any more. */
  onThreadExit(): void {
    this.runningOnThread = false;
    this.markStopped();
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
    // The runner's own refusal of a save (device-runner.ts saveState) keeps its code and message.
    else if (m.code && (m.code.startsWith("EVIRTIOSNAP") || m.code === "EVIRTIONOTQUIESCED")) p.reject(new VirtioSavedStateError(m.code as VirtioSavedStateError["code"], m.message));
    else p.reject(new VirtioDeviceError("EVIRTIOREQUEST", `Cannot ${p.op} on ${this.spec.name}: ${m.message}`));
  }

  stats(): VirtioDeviceStats {
    const backend: Record<string, number> = {};
    this.metricNames.forEach((k, i) => (backend[k] = this.backendMetrics[i]!));
    return { name: this.spec.name, ...this.state.stats, failures: [...this.failures], backend };
  }

  /** The transport description for vCPU threads. */
  describe(): VirtioTransportDescriptor {
    return { name: this.spec.name, mmioBase: this.spec.mmioBase, mmioSize: VIRTIO_MMIO_SIZE, state: this.state.sab };
  }

  /**
   * Stops the device on its thread after backend.shutdown() (data flushed)
   * and closes its eventfds; resolves true. The last device of a VM's thread
   * to stop also waits for the thread to exit. A thread blocked in a host
   * syscall (a disk that does not answer) cannot be interrupted from
   * JavaScript: if `giveUp` settles first, stop() resolves false without it,
   * and so does every other device of that thread still waiting. The thread
   * is unref'd once none of its devices runs and left to finish: once its
   * syscall returns it sees the stop requests, shuts the backends down and
   * exits, and only then are the given-up devices' eventfds closed (see
   * letGo), so a late write never lands on a reused fd number.
   */
  async stop(giveUp?: Promise<void>): Promise<boolean> {
    if (this.closed || this.abandoned) return !this.abandoned;
    const sent = this.thread.startOf(this);
    if (!sent) {
      this.closedBeforeStart = true; // not sent to its thread: it will leave this device out
      this.markStopped();
    } else if (!(await sent.then(() => true, () => false))) {
      await this.thread.exited; // it ended before answering: its fds are free once it is gone
    }
    let ended = true;
    if (this.runningOnThread) {
      this.state.requestStop();
      const race = (p: Promise<boolean>) => Promise.race([p, ...(giveUp ? [giveUp.then(() => false)] : [])]);
      ended = await race(this.stoppedOnThread.then(() => true));
      if (ended) ended = await this.thread.idle(giveUp);
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
    this.thread.released();
    void this.letGo.then(() => this.closeFds());
    return false;
  }

  /** @internal stop() gave up waiting for the thread. */
  get givenUp(): boolean {
    return this.abandoned;
  }

  /** Settles when the device's thread has exited (at once if it never started; a shared thread runs on). */
  get threadExited(): Promise<void> {
    return this.thread.exited;
  }

  /**
   * Settles when the device's thread no longer touches the device or its
   * guest memory: it stopped the device, or never started it, or exited.
   */
  get letGo(): Promise<void> {
    return this.stoppedOnThread;
  }

  private closeFds(): void {
    if (this.closed) return;
    this.closed = true;
    this.state.controlFd = -1; // a late status write must not signal a reused fd number
    for (const fd of [this.controlFd, this.irqFd, ...this.notifyFds]) closeSync(fd);
    this.thread.forget(this);
  }
}
