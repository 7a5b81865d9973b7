/**
 * One virtio device inside a device thread (device-thread-worker.ts runs the
 * loop; the main thread's side is VirtioDeviceHandle in device-thread.ts).
 *
 * A runner owns everything of its device: the backend, the control eventfd
 * the vCPUs and the main thread signal, one notify eventfd per queue (the
 * main thread registers them with KVM_IOEVENTFD), the fds the backend
 * watches, the device session (DRIVER_OK to reset or failure) and its epoch,
 * the rate-limited guest-fault log and the port host-side requests arrive
 * on. The thread's loop polls every runner's fds (pollEntries) and hands
 * each ready one back to its runner:
 *   - the control eventfd: a reset (backend.reset()), DRIVER_OK (build
 *     SplitQueues over guest memory, backend.activate(ctx)), a driver write
 *     of config space (backend.onConfigWrite), host requests, or stop;
 *   - each queue's notify eventfd (backend.onNotify(q));
 *   - the fds the backend watches;
 * and when the poll returns, the backend's due timers (ctx.setTimer: a
 * throttled device's wake-up) fire; the loop's poll timeout is the next one.
 * Used buffers are signalled by setting VIRTIO_MMIO_INT_VRING and writing the
 * irqfd eventfd (KVM_IRQFD on the device's GSI), so no exit is involved.
 *
 * Quiesce (the VM's pause, and the place a snapshot will read device state):
 * on the host's request (TransportState.requestQuiesce) the runner first
 * finishes what the control words hold (a reset, an activation, config
 * writes), then has the backend complete anything in flight
 * (backend.quiesce), and from then on serves only its control eventfd: the
 * queues' notify eventfds and the backend's watched fds stay out of the poll
 * set and are left as they are (an eventfd keeps its count, a socket its
 * data), so a request the guest posted while quiesced is served once the
 * device runs again, and none is lost or served twice. Host requests are
 * still answered while quiesced.
 *
 * Snapshots (device-saved-state.ts): a quiesced device's record is read on
 * the host's request (VIRTIO_REQUEST_SAVE_STATE: registers, each queue's
 * device-side position, the backend's saveState). A device restored from a
 * record (restore(), before the thread answers "ready") comes up with the
 * registers and, if the driver's session was live, its queues at their saved
 * positions and its backend restored (restoreState instead of activate),
 * without the driver writing DRIVER_OK again; it starts quiesced, and the
 * first time it runs the runner kicks it once (kickAfterRestore).
 *
 * Anything a backend throws — a QueueError from a broken ring or a bug — puts
 * this device in DEVICE_NEEDS_RESET (virtio 1.x §2.1.2) rather than ending
 * the thread: the guest can recover by resetting the device, and the other
 * devices on the thread never see it. Each handler's work is bounded by the
 * backend's budget (serveQueue, ctx.kick), so one device cannot hold the
 * thread from the others.
 */
import { performance } from "node:perf_hooks";
import { type MessagePort, receiveMessageOnPort } from "node:worker_threads";
import {
  EFD_CLOEXEC, EFD_NONBLOCK, POLLIN, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_MMIO_INT_CONFIG,
  VIRTIO_MMIO_INT_VRING, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
} from "../../linux/abi.generated.js";
import type { GuestMemory } from "../../memory/guest-memory.js";
import { eventfd, sys } from "../../sys/native.js";
import { GUEST_FAULT_LOG_FIRST, GuestFaultLog } from "../fault-log.js";
import { type DeviceSavedParts, type QueueSavedState, VIRTIO_REQUEST_SAVE_STATE, type VirtioDeviceSavedState } from "./device-saved-state.js";
import type { DeviceEvent, DeviceInit, DeviceReplyMessage, DeviceRequestMessage } from "./device-thread.js";
import { HOST_ERRORS_LOGGED, TransportState } from "./mmio-state.js";
import { SplitQueue } from "./queue.js";
import { VirtioSavedStateError } from "./saved-state.js";
import { BACKEND_METRIC_SLOTS, type DescriptorChain, type QueueSession, type VirtioBackend, type VirtioDeviceContext, type VirtQueue } from "./types.js";

const one = new BigUint64Array([1n]);
const drained = new Uint8Array(8);

/** A queue the driver did not make ready: it never has buffers. */
const disabledQueue = (size: number): VirtQueue => ({
  layout: { size, descTable: 0, availRing: 0, usedRing: 0 },
  pop: (): DescriptorChain | undefined => undefined,
  pushUsed: (head) => { throw new Error(`pushUsed(${head}) on a queue the driver did not set up`); },
  pushUsedMany: () => { throw new Error("pushUsedMany on a queue the driver did not set up"); },
  needsInterrupt: () => false,
  setNotifications: () => undefined,
  hasAvailable: () => false,
  undoPop: () => { throw new Error("undoPop on a queue the driver did not set up"); },
});

/** An fd the backend watches. */
export interface Watch {
  events: number;
  onReady(revents: number): void;
}

/** A backend's timer (ctx.setTimer). */
interface Timer {
  /** performance.now() at or after which it fires. */
  dueMs: number;
  onFire(): void;
}

/** Timers a backend may have at once (ids 0 .. MAX_TIMERS - 1): one per queue is plenty. */
export const MAX_TIMERS = 8;

/** One fd of a runner for the thread's poll set, and what it is. */
export type PollEntry =
  | { kind: "control"; fd: number; events: number }
  | { kind: "notify"; fd: number; events: number; queue: number }
  | { kind: "watch"; fd: number; events: number; watch: Watch };

/** See the module comment. */
export class DeviceRunner {
  readonly name: string;
  /** False once stopped (shutdown ran): the loop skips whatever of it is still in a poll pass. */
  running = true;
  private readonly state: TransportState;
  private readonly memory: GuestMemory;
  private readonly controlFd: number;
  private readonly irqFd: number;
  private readonly requests: MessagePort;
  private readonly notifyFds: number[];
  private readonly queueCount: number;
  /**
   * Guest faults are counted in the shared state (TransportState.guestFaults);
   * only the first few, then a summary at most every second, are posted to the
   * main thread, so a guest faulting millions of times cannot grow its message
   * queue (issue 9, finding 2). Pending summaries are posted from the poll loop
   * (its timeout) and at stop.
   */
  readonly faultLog: GuestFaultLog;
  /** NEEDS_RESET episodes so far: past the first few, each is reported as a guest fault instead. */
  private failures = 0;
  private readonly watches = new Map<number, Watch>();
  /** The session's timers, by id (bounded by MAX_TIMERS). */
  private readonly timers = new Map<number, Timer>();

  // --- Device session: from DRIVER_OK to reset/failure ---
  private session = 0;
  private active = false;
  private queues: VirtQueue[] = [];
  /** Kicks that arrived before DRIVER_OK, delivered on activation (bit per queue). */
  private pendingKicks = 0;
  private seenResets: number;
  private seenActivations: number;
  private seenQueueStops: number;
  /** Driver resets requested when the current session started. */
  private sessionResets = -1;

  // --- Quiesce (see the module comment) ---
  private quiesced = false;
  /** The last quiesce request answered. */
  private seenQuiesce = 0;
  /** Restored from a snapshot and not yet run: the first resume kicks it (kickAfterRestore). */
  private kickDue = false;

  /**
   * Publishes the backend's identity into the transport state and creates the
   * queues' notify eventfds; throws (nothing left open) if the backend cannot
   * be described. `memory` is init.memory attached in this thread (devices of
   * one VM share it). `pollSetChanged` is called whenever the runner's fds change.
   */
  constructor(
    init: DeviceInit,
    memory: GuestMemory,
    private readonly backend: VirtioBackend,
    private readonly post: (m: DeviceEvent) => void,
    private readonly pollSetChanged: () => void,
  ) {
    this.name = init.name;
    this.state = new TransportState(init.state);
    this.memory = memory;
    this.controlFd = init.controlFd;
    this.irqFd = init.irqFd;
    this.requests = init.requests;
    this.faultLog = new GuestFaultLog((r) => post({ type: "fault", message: r.message, count: r.count }));
    this.metricsOut = new Float64Array(init.metrics);
    this.metricNames = Object.entries(backend.metrics ?? {}).filter(([, v]) => typeof v === "number").map(([k]) => k).slice(0, BACKEND_METRIC_SLOTS);
    const state = this.state;
    state.initDevice({
      deviceId: backend.deviceId,
      deviceFeatures: backend.deviceFeatures,
      queueMaxSizes: backend.queueMaxSizes,
      config: backend.initialConfig(),
      configWritable: backend.configWritable?.bind(backend),
    });
    const fds: number[] = [];
    try {
      for (let q = 0; q < backend.queueMaxSizes.length; q++) fds.push(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    } catch (e) {
      for (const fd of fds) sys.close(fd);
      throw e;
    }
    this.notifyFds = fds;
    this.queueCount = fds.length;
    fds.forEach((fd, q) => state.setNotifyFd(q, fd));
    this.seenResets = state.resetsRequested;
    this.seenActivations = state.activations;
    this.seenQueueStops = state.queueStops;
    state.threadRunning = true;
  }

  /** The queues' notify eventfds, in queue order (for KVM_IOEVENTFD). */
  get queueNotifyFds(): readonly number[] {
    return this.notifyFds;
  }

  /**
   * Brings the device up as `saved` describes (see the module comment):
   * registers, then, if the driver's session was live, its queues at their
   * saved positions and the backend through restoreState (or activate, for a
   * backend without state). The device is left quiesced. Throws
   * VirtioSavedStateError, naming the device, when the record does not fit
   * it; then call discard().
   */
  restore(saved: VirtioDeviceSavedState): void {
    try {
      if (saved.queues === null && saved.transport.status & VIRTIO_CONFIG_S_DRIVER_OK && !(saved.transport.status & VIRTIO_CONFIG_S_NEEDS_RESET)) {
        throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", "saved state field queues is null, but the status says the driver's session is live");
      }
      if (saved.queues !== null && !(saved.transport.status & VIRTIO_CONFIG_S_DRIVER_OK)) {
        throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", "saved state field queues is set, but the status says the driver never set DRIVER_OK");
      }
      this.state.restoreRegisters(saved.transport);
      if (saved.queues === null) {
        if (this.backend.restoreState) this.backend.restoreState(saved.backend, undefined);
        else if (saved.backend !== null) throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", "the saved state has a backend record, and this backend keeps none");
      } else {
        this.restoreSession(saved.queues, saved.backend);
        this.kickDue = true;
      }
    } catch (e) {
      this.active = false;
      this.queues = [];
      if (e instanceof VirtioSavedStateError) throw e.prefixed(`Cannot restore ${this.name}: `);
      throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `Cannot restore ${this.name}: ${(e as Error).message ?? e}`);
    }
    this.quiesced = true;
    this.pollSetChanged();
  }

  /** The live session of a restored device: queues at their saved positions, then the backend (see restore). */
  private restoreSession(saved: readonly (QueueSavedState | null)[], backendState: unknown): void {
    const state = this.state;
    const features = state.driverFeatures;
    const bit = (n: number) => 1n << BigInt(n);
    const qf = { eventIdx: (features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n, indirect: (features & bit(VIRTIO_RING_F_INDIRECT_DESC)) !== 0n };
    this.session++;
    this.active = true;
    this.sessionResets = state.resetsRequested;
    const qs = this.queueSession(this.session, state.epoch);
    this.queues = this.backend.queueMaxSizes.map((max, q) => {
      const layout = state.queueLayout(q);
      const s = saved[q] ?? null;
      if (state.queueRegister(q, "ready") !== 1) {
        if (s !== null) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field queues[${q}] is set for a queue that is not ready`);
        return disabledQueue(layout.size);
      }
      if (s === null) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field queues[${q}] is null for a ready queue`);
      const queue = new SplitQueue(this.memory, layout, qf, max, qs);
      queue.restoreState(s);
      return queue;
    });
    const ctx = this.makeContext(features, this.session, qs);
    if (this.backend.restoreState) this.backend.restoreState(backendState, ctx);
    else if (backendState !== null) throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", "the saved state has a backend record, and this backend keeps none");
    else this.backend.activate(ctx);
  }

  /**
   * The device's record for a snapshot (without version and kind, which the
   * main thread adds). Only while quiesced: throws VirtioSavedStateError
   * EVIRTIONOTQUIESCED otherwise.
   */
  saveState(): DeviceSavedParts {
    if (!this.quiesced) throw new VirtioSavedStateError("EVIRTIONOTQUIESCED", `Cannot save ${this.name}: it is not quiesced`);
    const transport = this.state.saveRegisters();
    if (!this.active && transport.status & VIRTIO_CONFIG_S_DRIVER_OK && !(transport.status & VIRTIO_CONFIG_S_NEEDS_RESET)) {
      // DRIVER_OK written after the device quiesced: the VM's vCPUs were not paused.
      throw new VirtioSavedStateError("EVIRTIONOTQUIESCED", `Cannot save ${this.name}: the driver set DRIVER_OK after the device quiesced (pause the vCPUs first)`);
    }
    return {
      transport,
      queues: this.active ? this.queues.map((q) => (q instanceof SplitQueue ? q.saveState() : null)) : null,
      backend: this.backend.saveState?.() ?? null,
    };
  }

  /**
   * Frees what the runner made when it is not going to run (a restore that
   * failed before the thread answered "ready"): the backend shuts down, the
   * notify eventfds are closed (the main thread never learnt them).
   */
  discard(): void {
    this.running = false;
    this.active = false;
    this.session++;
    try {
      this.backend.shutdown?.();
    } catch { /* the device is not started: nothing more to report */ }
    for (const fd of this.notifyFds) sys.close(fd);
    this.state.threadStopped();
  }

  /** The names of the backend counters this runner publishes, in slot order. */
  readonly metricNames: readonly string[];
  private readonly metricsOut: Float64Array;

  /** Copies the backend's counters to the shared block the host reads. */
  publishMetrics(): void {
    const m = this.backend.metrics as Record<string, number> | undefined;
    if (!m) return;
    const names = this.metricNames, out = this.metricsOut;
    for (let i = 0; i < names.length; i++) out[i] = m[names[i]!]!;
  }

  /** This runner's fds for the thread's poll set: control, the queues' notify fds, then watched fds. */
  pollEntries(): PollEntry[] {
    if (this.quiesced) return [{ kind: "control", fd: this.controlFd, events: POLLIN }];
    return [
      { kind: "control", fd: this.controlFd, events: POLLIN },
      ...this.notifyFds.map((fd, queue): PollEntry => ({ kind: "notify", fd, events: POLLIN, queue })),
      ...[...this.watches].map(([fd, watch]): PollEntry => ({ kind: "watch", fd, events: watch.events, watch })),
    ];
  }

  /** Serves one ready fd of a poll pass. Returns false when the device was asked to stop (call stop()). */
  dispatch(e: PollEntry, revents: number): boolean {
    switch (e.kind) {
      case "control": return this.onControl();
      // Quiesced earlier in this pass: leave the kick in its eventfd, the fd's data where it is.
      case "notify": if (!this.quiesced) this.onKick(e.queue); return true;
      case "watch":
        if (this.quiesced) return true;
        // The backend may have unwatched it (or watched it anew) earlier in this pass.
        if (this.watches.get(e.fd) === e.watch) this.guarded(`fd ${e.fd}`, () => e.watch.onReady(revents));
        return true;
    }
  }

  /** When (performance.now()) the first timer is due; undefined when none can fire. */
  nextTimerDueMs(): number | undefined {
    if (this.quiesced || !this.active || this.timers.size === 0) return undefined;
    let next: number | undefined;
    for (const t of this.timers.values()) next = next === undefined ? t.dueMs : Math.min(next, t.dueMs);
    return next;
  }

  /** Fires the timers due at `nowMs` (one shot each); none while quiesced. */
  fireTimers(nowMs: number): void {
    if (this.quiesced || !this.active || this.timers.size === 0) return;
    for (const [id, t] of [...this.timers]) {
      if (t.dueMs > nowMs || this.timers.get(id) !== t || !this.active) continue;
      this.timers.delete(id);
      this.guarded(`timer ${id}`, t.onFire);
    }
  }

  /** Runs the backend's shutdown (data flushed), posts what the fault log holds, and reports the device stopped. */
  stop(): void {
    if (!this.running) return;
    this.running = false;
    this.active = false;
    this.session++;
    this.watches.clear();
    this.timers.clear();
    try {
      this.backend.shutdown?.();
    } catch (e) {
      this.post({ type: "failed", reason: `shutdown: ${(e as Error).message}` });
    }
    this.faultLog.flush();
    this.requests.close(); // the main side rejects what is still pending
    this.state.threadStopped();
    this.post({ type: "stopped" });
  }

  /**
   * Raises `bits` in InterruptStatus, with an edge on the irqfd only when one of them was
   * not set yet. While they are all set, the driver has not acknowledged the last
   * interrupt, and it looks at the rings after it does (Linux's vm_interrupt acks, then
   * runs each queue's callback): the used buffers published before this call are seen
   * without a second interrupt. That is the line the virtio-mmio spec describes (up while
   * InterruptStatus is not 0, as QEMU's level-triggered line), and it saves the guest an
   * interrupt and two register exits (the status read and the ack) per redundant edge.
   */
  private interrupt(bits: number): void {
    if (!this.state.raiseInterrupt(bits)) return;
    this.state.countInterrupt();
    sys.write(this.irqFd, one, 8);
  }

  private fail(reason: string): void {
    if (!this.active) return;
    this.active = false;
    this.session++;
    this.clearWatches();
    // A session the driver already ended (reset) fails silently: NEEDS_RESET and the
    // interrupt would land on the driver's next session.
    if (this.state.resetsRequested !== this.sessionResets) return;
    this.state.orStatus(VIRTIO_CONFIG_S_NEEDS_RESET);
    this.interrupt(VIRTIO_MMIO_INT_CONFIG);
    this.reportFailure(reason);
  }

  private clearWatches(): void {
    this.timers.clear();
    if (this.watches.size === 0) return;
    this.watches.clear();
    this.pollSetChanged();
  }

  /** Posts a failure; a guest that breaks its rings over and over gets rate-limited guest faults instead. */
  private reportFailure(reason: string): void {
    if (++this.failures <= GUEST_FAULT_LOG_FIRST) {
      this.post({ type: "failed", reason });
      return;
    }
    this.guestFault(`device needs reset: ${reason}`);
  }

  private guestFault(message: string): void {
    this.state.countGuestFault();
    this.faultLog.fault(this.name, message);
  }

  /** Runs a backend callback; anything it throws fails this device, never the thread. */
  private guarded(what: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      const message = `${what}: ${(e as Error).message ?? e}`;
      if (this.active) this.fail(message);
      else this.reportFailure(message);
    }
  }

  /**
   * The session's view for its queues: live until the device thread ends it or a
   * vCPU asks to (a reset or a stopped queue bumps the epoch at once, before
   * this thread catches up). Ring writes check it under the transport lock,
   * which the vCPU holds while it bumps the epoch.
   */
  private queueSession(mySession: number, myEpoch: number): QueueSession {
    return {
      live: () => this.session === mySession && this.active && this.state.epoch === myEpoch,
      exclusive: (write) => this.state.lock.with(write),
    };
  }

  private makeContext(features: bigint, mySession: number, qs: QueueSession): VirtioDeviceContext {
    const live = qs.live;
    const queues = this.queues;
    return {
      memory: this.memory,
      queues,
      features,
      config: this.state.config.subarray(0, this.state.configSize),
      notifyUsed: (q) => {
        if (live() && queues[q]?.needsInterrupt()) this.interrupt(VIRTIO_MMIO_INT_VRING);
      },
      kick: (q) => {
        if (live() && this.notifyFds[q] !== undefined) sys.write(this.notifyFds[q]!, one, 8);
      },
      notifyConfigChange: () => {
        if (this.session !== mySession) return;
        this.state.bumpConfigGeneration();
        this.interrupt(VIRTIO_MMIO_INT_CONFIG);
      },
      fail: (reason) => {
        if (this.session === mySession) this.fail(reason);
      },
      guestFault: (message) => this.guestFault(message),
      hostError: (message) => {
        // A failing disk fails every request: count them all, post only the first few.
        if (this.state.countHostError() < HOST_ERRORS_LOGGED) this.post({ type: "hostError", message });
      },
      watch: (fd, events, onReady) => {
        if (!live()) return;
        this.watches.set(fd, { events, onReady });
        this.pollSetChanged();
      },
      unwatch: (fd) => {
        if (this.watches.delete(fd)) this.pollSetChanged();
      },
      setTimer: (id, delayMs, onFire) => {
        if (!Number.isInteger(id) || id < 0 || id >= MAX_TIMERS) throw new Error(`timer id ${id} is not from 0 to ${MAX_TIMERS - 1}`);
        if (!live()) return;
        // NaN would never come due, nor let the loop compute a wait: treat it as now.
        this.timers.set(id, { dueMs: performance.now() + (delayMs > 0 ? delayMs : 0), onFire });
      },
      clearTimer: (id) => {
        this.timers.delete(id);
      },
    };
  }

  private activate(): void {
    const bit = (n: number) => 1n << BigInt(n);
    const state = this.state;
    const features = state.driverFeatures;
    const qf = { eventIdx: (features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n, indirect: (features & bit(VIRTIO_RING_F_INDIRECT_DESC)) !== 0n };
    // The queues as the driver left them, and the epoch they belong to, read together.
    const { plan, epoch, resetsAtStart } = state.lock.with(() => ({
      plan: this.backend.queueMaxSizes.map((max, q) => ({ max, ready: state.queueRegister(q, "ready") === 1, layout: state.queueLayout(q) })),
      epoch: state.epoch,
      resetsAtStart: state.resetsRequested,
    }));
    this.session++;
    this.active = true;
    this.sessionResets = resetsAtStart;
    const qs = this.queueSession(this.session, epoch);
    try {
      this.queues = plan.map((p) => (p.ready ? new SplitQueue(this.memory, p.layout, qf, p.max, qs) : disabledQueue(p.layout.size)));
    } catch (e) {
      this.fail((e as Error).message);
      return;
    }
    const ctx = this.makeContext(features, this.session, qs);
    this.guarded("activate", () => this.backend.activate(ctx));
    if (this.quiesced) return; // the kicks wait for the device to run again (setQuiesced)
    const kicks = this.pendingKicks;
    this.pendingKicks = 0;
    for (let q = 0; q < this.queueCount && this.active; q++) if (kicks & (1 << q)) this.guarded(`queue ${q}`, () => this.backend.onNotify(q));
  }

  private reset(n: number): void {
    this.active = false;
    this.session++;
    this.queues = [];
    this.pendingKicks = 0;
    this.clearWatches();
    this.guarded("reset", () => this.backend.reset());
    this.state.completeReset(n);
  }

  /** Answers the host-side requests queued on the request port (never fails the device). */
  private serveRequests(): void {
    for (let m = receiveMessageOnPort(this.requests); m; m = receiveMessageOnPort(this.requests)) {
      const req = m.message as DeviceRequestMessage;
      let reply: DeviceReplyMessage;
      try {
        // The runner's own request: the device's saved state (the backend never sees it).
        if (req.op === VIRTIO_REQUEST_SAVE_STATE) reply = { id: req.id, ok: true, value: this.saveState() };
        else if (!this.backend.control) throw new Error(`the device does not take requests`);
        else reply = { id: req.id, ok: true, value: this.backend.control({ op: req.op, args: req.args }) };
      } catch (e) {
        const code = (e as { code?: unknown }).code;
        reply = { id: req.id, ok: false, message: (e as Error).message ?? String(e), ...(typeof code === "string" ? { code } : {}) };
      }
      this.requests.postMessage(reply);
    }
  }

  /** Reacts to the control words; returns false on stop. */
  private onControl(): boolean {
    const state = this.state;
    sys.read(this.controlFd, drained, 8);
    if (state.stopRequested) return false;
    // A queue stopped while live ends the session it was stopped in (before any reset that followed).
    const stops = state.queueStops;
    if (stops !== this.seenQueueStops) {
      this.seenQueueStops = stops;
      if (this.active) this.fail(`the driver stopped queue ${state.stoppedQueue} while the device was live (QueueReady = 0 after DRIVER_OK without VIRTIO_F_RING_RESET)`);
    }
    const resets = state.resetsRequested;
    if (resets !== this.seenResets) {
      this.seenResets = resets;
      this.reset(resets);
    }
    const activations = state.activations;
    if (activations !== this.seenActivations) {
      this.seenActivations = activations;
      if (!this.active && state.status & VIRTIO_CONFIG_S_DRIVER_OK && !(state.status & VIRTIO_CONFIG_S_NEEDS_RESET)) this.activate();
    }
    const dirty = state.takeConfigDirty();
    const onConfigWrite = this.backend.onConfigWrite?.bind(this.backend);
    if (dirty && onConfigWrite) this.guarded("config write", () => onConfigWrite(dirty.offset, dirty.length));
    this.serveRequests(); // so that answers see the driver's latest status and config writes
    // Last: what the control words held is done before the device quiesces.
    const q = state.quiesceRequest;
    if (q.seq !== this.seenQuiesce) {
      this.seenQuiesce = q.seq;
      this.setQuiesced(q.quiesce);
      this.post({ type: "quiesce", quiesced: q.quiesce, seq: q.seq });
    }
    return true;
  }

  /** Enters or leaves the quiesced state (see the module comment). */
  private setQuiesced(on: boolean): void {
    if (on === this.quiesced) return;
    this.pollSetChanged();
    if (on) {
      const quiesce = this.backend.quiesce?.bind(this.backend);
      if (quiesce) this.guarded("quiesce", quiesce);
      this.quiesced = true;
      return;
    }
    this.quiesced = false;
    // Kicks that arrived before an activation made while quiesced.
    const kicks = this.active ? this.pendingKicks : 0;
    if (this.active) this.pendingKicks = 0;
    if (this.kickDue) {
      this.kickDue = false;
      if (this.active) return this.kickAfterRestore(); // every queue: the pending kicks too
    }
    for (let q = 0; q < this.queueCount && this.active; q++) if (kicks & (1 << q)) this.guarded(`queue ${q}`, () => this.backend.onNotify(q));
  }

  /**
   * The host's kick of a restored device, once, when it first runs
   * (Firecracker's kick_virtio_devices on resume): kicks the guest made
   * before the snapshot that the old device had not yet served were counted
   * in the old VM's eventfds and are gone, so every queue is looked at as if
   * just kicked (backend.kick, or onNotify on each queue). An interrupt the
   * restored InterruptStatus still shows is signalled again: KVM injects an
   * irqfd's interrupt from a work queue, so one raised just before the
   * snapshot may be missing from the saved interrupt controller; a second
   * one costs the driver one look at InterruptStatus.
   */
  private kickAfterRestore(): void {
    if (this.state.interruptStatus !== 0) {
      this.state.countInterrupt();
      sys.write(this.irqFd, one, 8);
    }
    const kick = this.backend.kick?.bind(this.backend);
    if (kick) return this.guarded("kick", kick);
    for (let q = 0; q < this.queueCount && this.active; q++) this.guarded(`queue ${q}`, () => this.backend.onNotify(q));
  }

  private onKick(q: number): void {
    sys.read(this.notifyFds[q]!, drained, 8);
    this.state.countKick();
    if (this.active) this.guarded(`queue ${q}`, () => this.backend.onNotify(q));
    else this.pendingKicks |= 1 << q;
  }
}
