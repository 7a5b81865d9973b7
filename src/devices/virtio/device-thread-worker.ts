/**
 * Entry point of a virtio device thread (one worker per device; the main
 * thread's side is VirtioDeviceHandle in device-thread.ts).
 *
 * It loads the backend module (`createBackend(options)`), publishes the
 * device's identity into the transport state, creates one notify eventfd per
 * queue (the main thread registers them with KVM_IOEVENTFD), and then runs a
 * blocking poll(2) loop over:
 *   - the control eventfd: a reset (backend.reset()), DRIVER_OK (build
 *     SplitQueues over guest memory, backend.activate(ctx)), a driver write
 *     of config space (backend.onConfigWrite) or stop (backend.shutdown());
 *   - each queue's notify eventfd (backend.onNotify(q));
 *   - the fds the backend watches.
 * Used buffers are signalled by setting VIRTIO_MMIO_INT_VRING and writing the
 * irqfd eventfd (KVM_IRQFD on the device's GSI), so no exit is involved.
 *
 * Anything a backend throws — a QueueError from a broken ring or a bug — puts
 * the device in DEVICE_NEEDS_RESET (virtio 1.x §2.1.2) rather than ending the
 * thread: the guest can recover by resetting the device.
 */
import { parentPort, receiveMessageOnPort, workerData } from "node:worker_threads";
import {
  EFD_CLOEXEC, EFD_NONBLOCK, EINTR, POLLIN, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_MMIO_INT_CONFIG,
  VIRTIO_MMIO_INT_VRING, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, pollfd,
} from "../../linux/abi.generated.js";
import { dataView } from "../../memory/le.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { errnoName, eventfd, sys } from "../../sys/native.js";
import { GUEST_FAULT_LOG_FIRST, GuestFaultLog } from "../fault-log.js";
import type { DeviceReplyMessage, DeviceRequestMessage, DeviceThreadInit, DeviceThreadMessage } from "./device-thread.js";
import { HOST_ERRORS_LOGGED, TransportState } from "./mmio-state.js";
import { SplitQueue } from "./queue.js";
import type { DescriptorChain, QueueSession, VirtioBackend, VirtioDeviceContext, VirtQueue } from "./types.js";

const init = workerData as DeviceThreadInit;
const port = parentPort!;
const post = (m: DeviceThreadMessage) => port.postMessage(m);
const state = new TransportState(init.state);
const memory = GuestMemory.attach(init.memory);
const one = new BigUint64Array([1n]);
const drained = new Uint8Array(8);
/**
 * Guest faults are counted in the shared state (TransportState.guestFaults);
 * only the first few, then a summary at most every second, are posted to the
 * main thread, so a guest faulting millions of times cannot grow its message
 * queue (issue 9, finding 2). Pending summaries are posted from the poll loop
 * (its timeout) and at stop.
 */
const faultLog = new GuestFaultLog((r) => post({ type: "fault", message: r.message, count: r.count }));
/** NEEDS_RESET episodes so far: past the first few, each is reported as a guest fault instead. */
let failures = 0;

/** A queue the driver did not make ready: it never has buffers. */
const disabledQueue = (size: number): VirtQueue => ({
  layout: { size, descTable: 0, availRing: 0, usedRing: 0 },
  pop: (): DescriptorChain | undefined => undefined,
  pushUsed: (head) => { throw new Error(`pushUsed(${head}) on a queue the driver did not set up`); },
  needsInterrupt: () => false,
  setNotifications: () => undefined,
  hasAvailable: () => false,
});

async function loadBackend(): Promise<VirtioBackend> {
  const mod = (await import(init.backendModule)) as { createBackend?: (options: unknown) => VirtioBackend };
  if (typeof mod.createBackend !== "function") throw new Error(`${init.backendModule} does not export createBackend`);
  return mod.createBackend(init.backendOptions);
}

let backend: VirtioBackend;
let notifyFds: number[];
try {
  backend = await loadBackend();
  state.initDevice({
    deviceId: backend.deviceId,
    deviceFeatures: backend.deviceFeatures,
    queueMaxSizes: backend.queueMaxSizes,
    config: backend.initialConfig(),
    configWritable: backend.configWritable?.bind(backend),
  });
  notifyFds = backend.queueMaxSizes.map(() => eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  notifyFds.forEach((fd, q) => state.setNotifyFd(q, fd));
} catch (e) {
  post({ type: "error", message: (e as Error).message });
  throw e;
}

/** An fd the backend watches. */
interface Watch {
  events: number;
  onReady(revents: number): void;
}
const watches = new Map<number, Watch>();
let watchesChanged = true;
let pollBuf = new Uint8Array(0);
let pollView = dataView(pollBuf);
let watchOrder: number[] = [];
const queueCount = notifyFds.length;

/** Lays out struct pollfd[]: control, the queues' notify fds, then watched fds. */
function rebuildPollSet(): void {
  watchOrder = [...watches.keys()];
  const fds = [init.controlFd, ...notifyFds, ...watchOrder];
  pollBuf = new Uint8Array(fds.length * pollfd.SIZE);
  pollView = dataView(pollBuf);
  fds.forEach((fd, i) => {
    pollView.setInt32(i * pollfd.SIZE + pollfd.fd, fd, true);
    pollView.setInt16(i * pollfd.SIZE + pollfd.events, i <= queueCount ? POLLIN : watches.get(fd)!.events, true);
  });
  watchesChanged = false;
}

// --- Device session: from DRIVER_OK to reset/failure ---
let session = 0;
let active = false;
let queues: VirtQueue[] = [];
/** Kicks that arrived before DRIVER_OK, delivered on activation (bit per queue). */
let pendingKicks = 0;
let seenResets = state.resetsRequested;
let seenActivations = state.activations;
let seenQueueStops = state.queueStops;
/** Driver resets requested when the current session started. */
let sessionResets = -1;

function interrupt(bits: number): void {
  state.raiseInterrupt(bits);
  state.countInterrupt();
  sys.write(init.irqFd, one, 8);
}

function fail(reason: string): void {
  if (!active) return;
  active = false;
  session++;
  watches.clear();
  watchesChanged = true;
  // A session the driver already ended (reset) fails silently: NEEDS_RESET and the
  // interrupt would land on the driver's next session.
  if (state.resetsRequested !== sessionResets) return;
  state.orStatus(VIRTIO_CONFIG_S_NEEDS_RESET);
  interrupt(VIRTIO_MMIO_INT_CONFIG);
  reportFailure(reason);
}

/** Posts a failure; a guest that breaks its rings over and over gets rate-limited guest faults instead. */
function reportFailure(reason: string): void {
  if (++failures <= GUEST_FAULT_LOG_FIRST) {
    post({ type: "failed", reason });
    return;
  }
  guestFault(`device needs reset: ${reason}`);
}

function guestFault(message: string): void {
  state.countGuestFault();
  faultLog.fault(init.name, message);
}

/** Runs a backend callback; anything it throws fails the device, never the thread. */
function guarded(what: string, fn: () => void): void {
  try {
    fn();
  } catch (e) {
    const message = `${what}: ${(e as Error).message ?? e}`;
    if (active) fail(message);
    else reportFailure(message);
  }
}

/**
 * The session's view for its queues: live until the device thread ends it or a
 * vCPU asks to (a reset or a stopped queue bumps the epoch at once, before
 * this thread catches up). Ring writes check it under the transport lock,
 * which the vCPU holds while it bumps the epoch.
 */
function queueSession(mySession: number, myEpoch: number): QueueSession {
  return {
    live: () => session === mySession && active && state.epoch === myEpoch,
    exclusive: (write) => state.lock.with(write),
  };
}

function makeContext(features: bigint, mySession: number, qs: QueueSession): VirtioDeviceContext {
  const live = qs.live;
  return {
    memory,
    queues,
    features,
    config: state.config.subarray(0, state.configSize),
    notifyUsed(q) {
      if (live() && queues[q]?.needsInterrupt()) interrupt(VIRTIO_MMIO_INT_VRING);
    },
    kick(q) {
      if (live() && notifyFds[q] !== undefined) sys.write(notifyFds[q]!, one, 8);
    },
    notifyConfigChange() {
      if (session !== mySession) return;
      state.bumpConfigGeneration();
      interrupt(VIRTIO_MMIO_INT_CONFIG);
    },
    fail(reason) {
      if (session === mySession) fail(reason);
    },
    guestFault,
    hostError(message) {
      // A failing disk fails every request: count them all, post only the first few.
      if (state.countHostError() < HOST_ERRORS_LOGGED) post({ type: "hostError", message });
    },
    watch(fd, events, onReady) {
      if (!live()) return;
      watches.set(fd, { events, onReady });
      watchesChanged = true;
    },
    unwatch(fd) {
      if (watches.delete(fd)) watchesChanged = true;
    },
  };
}

function activate(): void {
  const bit = (n: number) => 1n << BigInt(n);
  const features = state.driverFeatures;
  const qf = { eventIdx: (features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n, indirect: (features & bit(VIRTIO_RING_F_INDIRECT_DESC)) !== 0n };
  // The queues as the driver left them, and the epoch they belong to, read together.
  const { plan, epoch, resetsAtStart } = state.lock.with(() => ({
    plan: backend.queueMaxSizes.map((max, q) => ({ max, ready: state.queueRegister(q, "ready") === 1, layout: state.queueLayout(q) })),
    epoch: state.epoch,
    resetsAtStart: state.resetsRequested,
  }));
  session++;
  active = true;
  sessionResets = resetsAtStart;
  const qs = queueSession(session, epoch);
  try {
    queues = plan.map((p) => (p.ready ? new SplitQueue(memory, p.layout, qf, p.max, qs) : disabledQueue(p.layout.size)));
  } catch (e) {
    fail((e as Error).message);
    return;
  }
  const ctx = makeContext(features, session, qs);
  guarded("activate", () => backend.activate(ctx));
  const kicks = pendingKicks;
  pendingKicks = 0;
  for (let q = 0; q < queueCount && active; q++) if (kicks & (1 << q)) guarded(`queue ${q}`, () => backend.onNotify(q));
}

function reset(n: number): void {
  active = false;
  session++;
  queues = [];
  pendingKicks = 0;
  watches.clear();
  watchesChanged = true;
  guarded("reset", () => backend.reset());
  state.completeReset(n);
}

/** Answers the host-side requests queued on the request port (never fails the device). */
function serveRequests(): void {
  for (let m = receiveMessageOnPort(init.requests); m; m = receiveMessageOnPort(init.requests)) {
    const req = m.message as DeviceRequestMessage;
    let reply: DeviceReplyMessage;
    try {
      if (!backend.control) throw new Error(`the device does not take requests`);
      reply = { id: req.id, ok: true, value: backend.control({ op: req.op, args: req.args }) };
    } catch (e) {
      reply = { id: req.id, ok: false, message: (e as Error).message ?? String(e) };
    }
    init.requests.postMessage(reply);
  }
}

/** Reacts to the control words; returns false on stop. */
function onControl(): boolean {
  sys.read(init.controlFd, drained, 8);
  if (state.stopRequested) return false;
  // A queue stopped while live ends the session it was stopped in (before any reset that followed).
  const stops = state.queueStops;
  if (stops !== seenQueueStops) {
    seenQueueStops = stops;
    if (active) fail(`the driver stopped queue ${state.stoppedQueue} while the device was live (QueueReady = 0 after DRIVER_OK without VIRTIO_F_RING_RESET)`);
  }
  const resets = state.resetsRequested;
  if (resets !== seenResets) {
    seenResets = resets;
    reset(resets);
  }
  const activations = state.activations;
  if (activations !== seenActivations) {
    seenActivations = activations;
    if (!active && state.status & VIRTIO_CONFIG_S_DRIVER_OK && !(state.status & VIRTIO_CONFIG_S_NEEDS_RESET)) activate();
  }
  const dirty = state.takeConfigDirty();
  if (dirty && backend.onConfigWrite) guarded("config write", () => backend.onConfigWrite!(dirty.offset, dirty.length));
  serveRequests(); // last, so that answers see the driver's latest status and config writes
  return true;
}

function onKick(q: number): void {
  sys.read(notifyFds[q]!, drained, 8);
  state.countKick();
  if (active) guarded(`queue ${q}`, () => backend.onNotify(q));
  else pendingKicks |= 1 << q;
}

function loop(): void {
  for (;;) {
    if (watchesChanged) rebuildPollSet();
    // Wake up for a due fault summary even when nothing else happens.
    const summaryIn = faultLog.nextSummaryInMs();
    const n = sys.poll(pollBuf, pollBuf.length / pollfd.SIZE, summaryIn === undefined ? -1 : Math.ceil(summaryIn));
    if (n === -EINTR) continue;
    if (n < 0) throw new Error(`poll failed: ${errnoName(-n)}`);
    if (summaryIn !== undefined) faultLog.tick();
    if (n === 0) continue;
    const order = watchOrder;
    const view = pollView;
    for (let i = 0; i < pollBuf.length / pollfd.SIZE; i++) {
      const revents = view.getInt16(i * pollfd.SIZE + pollfd.revents, true);
      if (revents === 0) continue;
      if (i === 0) {
        if (!onControl()) return;
      } else if (i <= queueCount) {
        onKick(i - 1);
      } else {
        const fd = order[i - 1 - queueCount]!;
        const w = watches.get(fd);
        if (w) guarded(`fd ${fd}`, () => w.onReady(revents));
      }
      if (view !== pollView) break; // the poll set changed under us: poll again
    }
  }
}

state.threadRunning = true;
post({ type: "ready", notifyFds });
try {
  loop();
} finally {
  try {
    backend.shutdown?.();
  } catch (e) {
    post({ type: "failed", reason: `shutdown: ${(e as Error).message}` });
  }
  faultLog.flush();
  state.threadStopped();
  post({ type: "stopped" });
}
