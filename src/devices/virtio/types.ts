/**
 * The contracts between flint's virtio pieces (virtio 1.x, "modern" virtio-mmio):
 *
 *   vCPU threads          MMIO register accesses -> VirtioMmioTransport (mmio.ts),
 *                         whose state lives in a SharedArrayBuffer (TransportState)
 *   KVM                   QueueNotify writes go to an ioeventfd per queue (no exit);
 *                         interrupts come from an irqfd per device (no exit)
 *   device thread         one worker for a VM's devices (device-thread.ts): poll(2)s the
 *                         queue-notify eventfds, a control eventfd and the backend's
 *                         fds; on DRIVER_OK builds SplitQueues over guest memory and
 *                         calls the VirtioBackend; after used-ring writes, raises
 *                         VIRTIO_MMIO_INT_VRING and writes the irqfd
 *
 * A guest can be hostile: every queue address, index and length is checked
 * (queue.ts). A malformed request fails that request, or puts the device in
 * NEEDS_RESET; nothing a guest does can throw out of a device or touch memory
 * outside guest RAM.
 */
import type { GuestMemory } from "../../memory/guest-memory.js";

/** One guest buffer of a descriptor chain, already checked to lie inside guest memory. */
export interface GuestBuffer {
  /** Guest-physical address. */
  addr: number;
  /** Length in bytes. */
  len: number;
}

/** A descriptor chain popped from the available ring: device-readable buffers first, then device-writable. */
export interface DescriptorChain {
  /** Index of the head descriptor: what goes back in the used ring. */
  head: number;
  readable: GuestBuffer[];
  writable: GuestBuffer[];
  /** Sums of the lengths above. */
  readableBytes: number;
  writableBytes: number;
}

/** Where the driver put a queue's rings (virtio 1.x §2.7), as set through the transport. */
export interface QueueLayout {
  /** Number of descriptors (QueueNum), a power of two <= the device's maximum. */
  size: number;
  descTable: number;
  availRing: number;
  usedRing: number;
}

/** Features that change how a queue behaves. */
export interface QueueFeatures {
  /** VIRTIO_RING_F_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC negotiated. */
  indirect: boolean;
}

/** A split virtqueue as a device sees it (implemented by SplitQueue in queue.ts). */
export interface VirtQueue {
  readonly layout: QueueLayout;
  /**
   * The next available chain, or undefined when the driver has none. Throws
   * QueueError when the driver broke the ring (the device then fails).
   */
  pop(): DescriptorChain | undefined;
  /** Returns a chain to the driver with `writtenBytes` written into its writable buffers. */
  pushUsed(head: number, writtenBytes: number): void;
  /**
   * Returns `count` chains at once (heads[i] with lens[i] bytes written), published by one
   * used idx update so that the driver sees all of them or none (virtio-net's mergeable
   * receive buffers, §5.1.6.4). Throws QueueError, with nothing published, if any is invalid.
   */
  pushUsedMany(heads: ArrayLike<number>, lens: ArrayLike<number>, count: number): void;
  /** True when the driver wants an interrupt for the used buffers pushed so far (EVENT_IDX aware). */
  needsInterrupt(): boolean;
  /** Asks the driver for (or to stop) notifications of new available buffers. */
  setNotifications(enabled: boolean): void;
  /** True when the driver has made chains available that pop() has not taken yet. */
  hasAvailable(): boolean;
  /**
   * Puts the chain the last pop() returned back at the front of the available
   * ring, as if it had not been taken (a device that cannot serve it yet, e.g.
   * throttled by its rate limiter, rate-limiter.ts); the next pop() reads it
   * again. Only right after that pop(), with nothing pushed in between.
   */
  undoPop(): void;
}

/**
 * The device session a queue belongs to (from DRIVER_OK to a reset), so that
 * a queue of an ended session never touches guest memory again: the driver
 * may already have put new rings where the old ones were.
 */
export interface QueueSession {
  /** False once the session ended (a reset or a stopped queue was requested, from any thread). */
  live(): boolean;
  /** Runs a ring write so that the session cannot end between a live() check and the write. */
  exclusive<T>(write: () => T): T;
}

/** What a backend may do while it runs (provided by the device thread). */
export interface VirtioDeviceContext {
  readonly memory: GuestMemory;
  /** The device's queues, in order, once the driver set DRIVER_OK. */
  readonly queues: readonly VirtQueue[];
  /** Negotiated features (driver's acknowledgement of the device's offer). */
  readonly features: bigint;
  /** Signals the driver that `queue` has new used buffers (honours EVENT_IDX / NO_INTERRUPT). */
  notifyUsed(queue: number): void;
  /**
   * Has the device thread call onNotify(queue) again once it has looked at its other fds:
   * for a backend that stops after a batch with chains still available (see serveQueue).
   */
  kick(queue: number): void;
  /** Raises a configuration-change interrupt (after updating config space). */
  notifyConfigChange(): void;
  /** The device's config space (shared with the transport, little-endian). */
  readonly config: Uint8Array;
  /** Puts the device in NEEDS_RESET and stops processing (a broken driver). */
  fail(reason: string): void;
  /** Counts a guest-caused fault (bad request): logged, never fatal. */
  guestFault(message: string): void;
  /**
   * Counts a host-side failure the guest was told about as a device error
   * (e.g. the disk image's EIO or ENOSPC): not the guest's fault, never fatal;
   * the first few per device are logged. Absent in backend test rigs.
   */
  hostError?(message: string): void;
  /** Watches a host fd: `onReady(revents)` is called from the device thread's poll loop. */
  watch(fd: number, events: number, onReady: (revents: number) => void): void;
  unwatch(fd: number): void;
  /**
   * Calls `onFire` once from the device thread's loop, `delayMs` from now or
   * later (a throttled device's wake-up, rate-limiter.ts). A timer replaces
   * the device's timer of the same `id` (a small number per device). Timers
   * belong to the session, as watches do: a reset or failure drops them, and
   * none fires while the device is quiesced (a due one fires once it runs
   * again). Absent in backend test rigs.
   */
  setTimer?(id: number, delayMs: number, onFire: () => void): void;
  /** Drops the timer `id`, if any. */
  clearTimer?(id: number): void;
}

/**
 * A request from the host side (the library API, e.g. a new balloon target),
 * delivered on the device thread between guest events. `op` names it; `args`
 * is JSON-serialisable.
 */
export interface BackendRequest {
  op: string;
  args?: unknown;
}

/** A virtio device's behaviour, independent of the transport. */
export interface VirtioBackend {
  /** VIRTIO_ID_*. */
  readonly deviceId: number;
  /** Maximum size of each queue; the array length is the number of queues. */
  readonly queueMaxSizes: readonly number[];
  /** Feature bits the device offers (VIRTIO_F_VERSION_1 is added by the transport). */
  readonly deviceFeatures: bigint;
  /** Initial config space contents (its length is the config space size). */
  initialConfig(): Uint8Array;
  /** Which config bytes the driver may write (default: none). */
  configWritable?(offset: number, length: number): boolean;
  /** DRIVER_OK: queues are ready. */
  activate(ctx: VirtioDeviceContext): void;
  /** The driver kicked `queue` (through its ioeventfd). */
  onNotify(queue: number): void;
  /** The driver wrote config space (only bytes allowed by configWritable). */
  onConfigWrite?(offset: number, length: number): void;
  /** Device reset: drop all in-flight state; the device may be activated again. */
  reset(): void;
  /** The VM is stopping: flush what must not be lost (e.g. fdatasync). */
  shutdown?(): void;
  /**
   * The host quiesces the device (a pause, and before a snapshot reads its
   * state): complete anything the backend started outside a handler, so that
   * no request is half-done while the device thread stops serving queues and
   * watched fds. Optional. The built-in backends have no hook: each finishes
   * its work inside the handler that took it, and a chain one holds across
   * passes (see saveState) stays popped and owed, listed in its record.
   */
  quiesce?(): void;
  /**
   * The backend's own state for a snapshot (JSON-serialisable; 64-bit values
   * as decimal strings, bytes as base64: saved-state.ts), read on the device
   * thread while the device is quiesced. It must list every chain the
   * backend has popped and not returned (the queue's record lists them as in
   * flight, and only the backend knows what it still owes them). Optional: a
   * backend without state has none (its record is null).
   */
  saveState?(): unknown;
  /**
   * Brings the backend up from `state` (what saveState returned, from JSON:
   * the backend checks it) in a device restored from a snapshot, once, before
   * the device first runs. With `ctx` the driver's session was live: this
   * replaces activate(ctx) (the queues are already at their saved positions;
   * nothing may be served and no interrupt raised yet: the device is
   * quiesced until the host resumes it, and then kicked). Without `ctx` the
   * device was not active. Throws VirtioSavedStateError (EVIRTIOSNAPFORMAT,
   * EVIRTIOSNAPMISMATCH) when the state is malformed or does not fit (the
   * device then does not start). A backend without this hook is activated
   * with activate(ctx), and its record must be null.
   */
  restoreState?(state: unknown, ctx: VirtioDeviceContext | undefined): void;
  /**
   * The host's kick of an active device restored from a snapshot, once, when
   * it first runs (Firecracker's VirtioDevice::kick on resume): kicks the
   * guest made before the snapshot that the old device had not served were
   * in the old VM's eventfds, so every queue must be looked at as if just
   * kicked. Optional: the default calls onNotify for every queue.
   */
  kick?(): void;
  /**
   * Answers a host-side request; the value returned (JSON-serialisable) goes
   * back to the caller, an error thrown rejects the request and leaves the
   * device as it was. Runs whether or not the driver has activated the device.
   */
  control?(request: BackendRequest): unknown;
  /**
   * The backend's own counters (bytes, requests...), which the device thread
   * copies to shared memory after each pass for the host's metrics: the first
   * BACKEND_METRIC_SLOTS keys whose values are numbers, in their order. Optional.
   */
  readonly metrics?: object;
}

/** How many backend counters a device publishes at most (device-thread.ts DeviceInit.metrics). */
export const BACKEND_METRIC_SLOTS = 16;
