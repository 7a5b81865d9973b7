/**
 * Entry point of a virtio device thread: one worker running every device
 * placed on it (by default all virtio devices of a VM; a device may have a
 * thread of its own, see virtio-set.ts). The main thread's side is
 * DeviceThread in device-thread.ts.
 *
 * It creates each device's backend (a built-in kind from the static registry,
 * backends.ts, or a test backend by dynamic import of its module), wraps it
 * in a DeviceRunner (device-runner.ts: the device's fds, session and fault
 * log), answers "ready" once with every device's notify eventfds (or why it
 * could not start), and then runs one blocking poll(2) loop over the union of
 * its runners' fds, handing each ready fd to its runner. The loop ends when
 * every device has been stopped.
 *
 * A shared thread (DeviceThreadInit.shared: the process's device thread,
 * which several VMs' devices use) also polls its own channel's eventfd:
 * devices of another VM arrive there as a batch while the others run, are
 * created between two poll passes and answered with a "ready" of their own;
 * and it does not end when its last device stops, but waits for more in its
 * event loop (nextRequest), where the process can end it.
 *
 * Fairness between devices: a pass serves every fd that poll(2) reported
 * ready, in order, before polling again, even when a handler changed the poll
 * set meanwhile (the set is rebuilt for the next poll). Each handler's work is
 * bounded by its backend's budget, so a device the guest floods gets one
 * budget per pass and the others get theirs in the same pass.
 */
import { performance } from "node:perf_hooks";
import { parentPort, receiveMessageOnPort } from "node:worker_threads";
import { EINTR, POLLIN, pollfd } from "../../linux/abi.generated.js";
import { GuestMemory, type MemoryDescriptor } from "../../memory/guest-memory.js";
import { dataView } from "../../memory/le.js";
import { errnoName, sys } from "../../sys/native.js";
import { workerInit } from "../../sys/worker-pool.js";
import { installThreadSeccomp } from "../../seccomp/index.js";
import { VIRTIO_BACKENDS } from "./backends.js";
import { DeviceRunner, type PollEntry } from "./device-runner.js";
import type {
  DeviceBatch, DeviceEvent, DeviceInit, DeviceStartResult, DeviceThreadInit, DeviceThreadMessage, SharedThreadRequest,
} from "./device-thread.js";
import type { VirtioBackend } from "./types.js";

// workerData, or the first message when this thread was booted ahead as a spare (worker-pool.ts).
const init = await workerInit<DeviceThreadInit>();
const port = parentPort!;
const post = (m: DeviceThreadMessage) => port.postMessage(m);

async function createBackend(d: DeviceInit): Promise<VirtioBackend> {
  if ("kind" in d.backend) {
    const create = VIRTIO_BACKENDS[d.backend.kind];
    if (!create) throw new Error(`no backend of kind '${d.backend.kind}'`);
    return create(d.backendOptions);
  }
  const mod = (await import(d.backend.module)) as { createBackend?: (options: unknown) => VirtioBackend };
  if (typeof mod.createBackend !== "function") throw new Error(`${d.backend.module} does not export createBackend`);
  return mod.createBackend(d.backendOptions);
}

/** The longest poll(2) wait when something is due (a timer further out is looked at again after it). */
const MAX_POLL_WAIT_MS = 60_000;

let pollSetChanged = true;
const markChanged = () => { pollSetChanged = true; };
const runners: DeviceRunner[] = [];
/** A shared thread's channel (DeviceThreadInit.shared): batches of more devices arrive on it while the loop runs. */
const shared = init.shared;
/** Batches read from the shared channel, for the loop's caller to start (see loop()). */
const arrived: DeviceBatch[] = [];
const drained = new Uint8Array(8);
/** The thread's own seccomp filter is on (after its first batch). */
let seccompInstalled = false;

/**
 * Creates a batch's devices, in order, and answers "ready" with how each
 * started. Guest memory is attached once per VM: a VM's devices in a batch
 * share one descriptor object (structured clone keeps identity within a
 * message).
 */
async function startBatch(batch: DeviceBatch): Promise<void> {
  const attached = new Map<MemoryDescriptor, GuestMemory>();
  const attach = (desc: MemoryDescriptor): GuestMemory => {
    let m = attached.get(desc);
    if (!m) attached.set(desc, (m = GuestMemory.attach(desc)));
    return m;
  };
  const results: DeviceStartResult[] = [];
  for (const d of batch.devices) {
    const device = d.id;
    let backend: VirtioBackend | undefined;
    let runner: DeviceRunner | undefined;
    try {
      backend = await createBackend(d);
      runner = new DeviceRunner(d, attach(d.memory), backend, (m: DeviceEvent) => post({ ...m, device }), markChanged);
      // A restored device comes up as saved, quiesced, before the main side learns its eventfds.
      if (d.restore) runner.restore(d.restore);
      runners.push(runner);
      pollSetChanged = true;
      results.push({ ok: true, notifyFds: [...runner.queueNotifyFds], metricNames: [...runner.metricNames] });
    } catch (e) {
      // This device does not start; the others on the thread do (the main side decides what to do
      // with them). What it opened is closed: its backend's files and sockets, its eventfds.
      if (runner) runner.discard();
      else try { backend?.shutdown?.(); } catch { /* not started: nothing to report */ }
      const code = (e as { code?: unknown }).code;
      results.push({ ok: false, message: (e as Error).message ?? String(e), ...(typeof code === "string" ? { code } : {}) });
    }
  }
  // The devices exist (files and sockets open): the thread's own filter before it serves the guest.
  // A filter the kernel refuses fails the thread (the main side sees its error) rather than run unfiltered.
  // A shared thread has none of its own (devices it creates later open files and TAPs; the process's applies).
  if (init.seccomp && !shared && !seccompInstalled) {
    installThreadSeccomp("device", init.seccomp);
    seccompInstalled = true;
  }
  post({ type: "ready", batch: batch.batch, devices: results });
}

/** The poll set: struct pollfd[] over every running device's fds (after the shared channel's, if any), and who owns each slot. */
let pollBuf = new Uint8Array(0);
/** A view of pollBuf, made with it (the loop reads revents on every pass). */
let pollView = dataView(pollBuf);
let owners: ({ runner: DeviceRunner; entry: PollEntry } | undefined)[] = [];

function rebuildPollSet(): void {
  const channel = shared ? [undefined] : [];
  owners = [...channel, ...runners.flatMap((runner) => runner.pollEntries().map((entry) => ({ runner, entry })))];
  pollBuf = new Uint8Array(owners.length * pollfd.SIZE);
  pollView = dataView(pollBuf);
  const view = pollView;
  owners.forEach((owner, i) => {
    view.setInt32(i * pollfd.SIZE + pollfd.fd, owner ? owner.entry.fd : shared!.fd, true);
    view.setInt16(i * pollfd.SIZE + pollfd.events, owner ? owner.entry.events : POLLIN, true);
  });
  pollSetChanged = false;
}

/** Reads what the main side posted on the shared channel (the loop polls its eventfd): batches to start after this pass. */
function readChannel(): void {
  sys.read(shared!.fd, drained, 8);
  for (let m = receiveMessageOnPort(shared!.port); m; m = receiveMessageOnPort(shared!.port)) arrived.push(m.message as SharedThreadRequest);
}

/**
 * A shared thread without devices waits for the next request in its event
 * loop, not in poll(2): a worker blocked in a system call cannot be ended,
 * and a process exiting by itself ends (and joins) its idle workers.
 */
function nextRequest(): Promise<void> {
  return new Promise((resolve) => shared!.port.once("message", (m: SharedThreadRequest) => {
    arrived.push(m);
    resolve();
  }));
}

function stopRunner(r: DeviceRunner): void {
  r.stop();
  r.publishMetrics();
  runners.splice(runners.indexOf(r), 1);
  pollSetChanged = true;
}

function nextSummaryInMs(): number | undefined {
  let next: number | undefined;
  for (const r of runners) {
    const due = r.faultLog.nextSummaryInMs();
    if (due !== undefined) next = next === undefined ? due : Math.min(next, due);
  }
  return next;
}

/** Milliseconds until the first device timer (ctx.setTimer) is due. */
function nextTimerInMs(): number | undefined {
  // The clock is read only when a timer is set: the loop asks on every pass.
  let next: number | undefined;
  for (const r of runners) {
    const due = r.nextTimerDueMs();
    if (due !== undefined) next = next === undefined ? due : Math.min(next, due);
  }
  return next === undefined ? undefined : Math.max(0, next - performance.now());
}

function fireTimers(): void {
  const now = performance.now();
  for (const r of [...runners]) {
    if (!r.running) continue;
    r.fireTimers(now);
    r.publishMetrics();
  }
}

/**
 * Serves the devices until none is left (false), or, on a shared thread,
 * until batches arrived on its channel (true, after the pass that read them:
 * the caller starts them and comes back).
 */
function loop(): boolean {
  while (runners.length > 0) {
    if (pollSetChanged) rebuildPollSet();
    // Wake up for a due fault summary or device timer even when nothing else happens
    // (rounded up: poll(2) counts whole milliseconds, and a timer must not fire early).
    const summaryIn = nextSummaryInMs();
    const timerIn = nextTimerInMs();
    const wakeIn = summaryIn === undefined ? timerIn : timerIn === undefined ? summaryIn : Math.min(summaryIn, timerIn);
    const buf = pollBuf, view = pollView, slots = owners;
    // poll(2) takes an int: a far timer (a rate limiter's long debt) wakes the loop early, to look again.
    const n = sys.poll(buf, slots.length, wakeIn === undefined ? -1 : Math.min(Math.ceil(wakeIn), MAX_POLL_WAIT_MS));
    if (n === -EINTR) continue;
    if (n < 0) throw new Error(`poll failed: ${errnoName(-n)}`);
    if (summaryIn !== undefined) for (const r of runners) r.faultLog.tick();
    if (timerIn !== undefined) fireTimers();
    if (n === 0) continue;
    // Serve every ready slot of this pass (see the module comment), from this pass's snapshot.
    for (let i = 0; i < slots.length; i++) {
      const revents = view.getInt16(i * pollfd.SIZE + pollfd.revents, true);
      if (revents === 0) continue;
      const owner = slots[i];
      if (!owner) {
        readChannel();
        continue;
      }
      const { runner, entry } = owner;
      if (!runner.running) continue; // stopped earlier in this pass: its fds may already be closed
      if (!runner.dispatch(entry, revents)) stopRunner(runner);
      // What this handler counted, for the host's metrics (a few numbers; idle devices are not touched).
      else runner.publishMetrics();
    }
    if (arrived.length > 0) return true;
  }
  return false;
}

try {
  await startBatch(init);
  for (;;) {
    // A VM's thread ends with its last device; a shared one waits for more (it ends with the process).
    if (!loop()) {
      if (!shared) break;
      await nextRequest();
    }
    while (arrived.length > 0) await startBatch(arrived.shift()!);
  }
} finally {
  // Ending for any reason (all stopped, or poll failed): every backend still running shuts down.
  for (const r of [...runners]) stopRunner(r);
}
