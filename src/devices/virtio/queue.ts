/**
 * A split virtqueue, device side (virtio 1.x §2.7 "Split Virtqueues"; Linux's
 * drivers/virtio/virtio_ring.c is the reference driver, drivers/vhost/vhost.c
 * the reference device).
 *
 * The driver is untrusted. Every index, address, length and flag read from
 * guest memory is checked before use, and a broken ring throws QueueError (the
 * device then goes to NEEDS_RESET). A QueueError leaves the queue and guest
 * memory exactly as they were. The queue only ever touches the three rings
 * (through views taken once with GuestMemory.slice) and indirect tables
 * (through GuestMemory.slice after a bounds check); it writes only the used
 * ring.
 *
 * Ordering (§2.7.13): ring indices are read and written with Atomics on
 * Uint16Array/Uint32Array views, which V8 never reorders with other memory
 * accesses and compiles to sequentially consistent instructions (a locked
 * xchg on x86 for stores). So the avail idx is read before the ring entries
 * it covers, a used element is written before the used idx that publishes
 * it, and the used idx (or avail_event) is visible before the device reads
 * used_event/flags (or re-reads avail idx) — the full barrier the spec asks
 * for around notification suppression.
 */
import {
  VRING_AVAIL_ALIGN_SIZE, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_ALIGN_SIZE, VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_ALIGN_SIZE, VRING_USED_F_NO_NOTIFY,
  vring_avail, vring_desc, vring_used, vring_used_elem,
} from "../../linux/abi.generated.js";
import type { GuestMemory } from "../../memory/guest-memory.js";
import { dataView, getU16, getU32 } from "../../memory/le.js";
import { savedArray, savedBool, savedObject, savedUint, VirtioSavedStateError } from "./saved-state.js";
import type { DescriptorChain, GuestBuffer, QueueFeatures, QueueLayout, QueueSession, VirtQueue } from "./types.js";

/** The largest queue size a split virtqueue can have (§2.7: Queue Size ≤ 32768). */
export const VIRTQUEUE_MAX_SIZE = 32768;

/** Why a queue refused a layout, a chain or a device call. */
export type QueueErrorCode =
  /** The ring addresses or size are unusable (alignment, bounds, overlap, size). */
  | "EQUEUELAYOUT"
  /** An index from the driver is out of range: avail idx too far ahead, head or next ≥ size. */
  | "EQUEUEINDEX"
  /** A chain is malformed: loop/too long, readable after writable, bad indirect use. */
  | "EQUEUECHAIN"
  /** A buffer or indirect table is not inside guest memory. */
  | "EQUEUERANGE"
  /** The device misused pushUsed (head not in flight, more bytes than the chain could take). */
  | "EQUEUEUSED";

/** A virtqueue error with a stable `code`; the message names what the driver did wrong. */
export class QueueError extends Error {
  readonly code: QueueErrorCode;
  constructor(code: QueueErrorCode, message: string) {
    super(message);
    this.name = "QueueError";
    this.code = code;
  }
}

// Ring geometry (§2.7, Linux vring_size): all three trailing EVENT_IDX fields
// are counted whether or not the feature is negotiated, as drivers allocate them.
/** Bytes of the descriptor table for `size` entries. */
export const descTableBytes = (size: number): number => vring_desc.SIZE * size;
/** Bytes of the available ring, including used_event. */
export const availRingBytes = (size: number): number => vring_avail.ring + 2 * size + 2;
/** Bytes of the used ring, including avail_event. */
export const usedRingBytes = (size: number): number => vring_used.ring + vring_used_elem.SIZE * size + 2;

const U16_IDX = vring_avail.idx / 2; // avail.idx and used.idx: same offset in both rings
const U16_FLAGS = vring_avail.flags / 2;
const AVAIL_RING_U16 = vring_avail.ring / 2;
const USED_RING_U32 = vring_used.ring / 4;
const ELEM_ID_U32 = vring_used_elem.id / 4;
const ELEM_LEN_U32 = vring_used_elem.len / 4;
const ELEM_U32S = vring_used_elem.SIZE / 4;
/** Guest addresses above this cannot be guest RAM (GuestMemory: addresses < 2^52). */
const ADDR_HI_LIMIT = 2 ** 20;

/** "0x<addr>+<len>" for a 64-bit guest address given as two 32-bit halves (messages only). */
const hexRange = (hi: number, lo: number, len: number): string => `0x${((BigInt(hi) << 32n) | BigInt(lo)).toString(16)}+${len}`;

const isPowerOfTwo = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** Linux's vring_need_event (include/uapi/linux/virtio_ring.h): has `eventIdx` been passed going old → new? */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/**
 * The device's side of a split virtqueue, for a snapshot (SplitQueue.saveState):
 * everything that is not in guest memory. The rings themselves are guest
 * memory and travel with it; a queue restored over the same bytes (restoreState)
 * goes on exactly where this one stopped.
 */
export interface QueueSavedState {
  /** The next available-ring index to pop (vhost's last_avail_idx), 0..65535. */
  nextAvail: number;
  /** The next used-ring index to fill (the used idx published), 0..65535. */
  nextUsed: number;
  /**
   * Chains popped and not yet returned, as [head, writable bytes]: the device
   * (its backend) still owes the driver their completion. There are exactly
   * (nextAvail - nextUsed) mod 2^16 of them.
   */
  inFlight: [number, number][];
  /** EVENT_IDX signalling (vhost's signalled_used and whether it still says anything). */
  signalledUsed: number;
  signalledUsedValid: boolean;
  /** Used entries pushed since the driver was last asked whether it wants an interrupt. */
  pushedSinceSignal: number;
  /** Whether the device last asked the driver for kicks (setNotifications). */
  notifications: boolean;
}

/** Reads a QueueSavedState from JSON (its shape; restoreState checks it against the queue). */
export function checkQueueSavedState(v: unknown, path: string): QueueSavedState {
  const o = savedObject(v, path);
  const inFlight = savedArray(o.inFlight, `${path}.inFlight`, VIRTQUEUE_MAX_SIZE).map((e, i): [number, number] => {
    const pair = savedArray(e, `${path}.inFlight[${i}]`, 2);
    if (pair.length !== 2) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field ${path}.inFlight[${i}] must be [head, writable bytes]`);
    return [savedUint(pair[0], `${path}.inFlight[${i}][0]`, VIRTQUEUE_MAX_SIZE - 1), savedUint(pair[1], `${path}.inFlight[${i}][1]`, Number.MAX_SAFE_INTEGER)];
  });
  return {
    nextAvail: savedUint(o.nextAvail, `${path}.nextAvail`, 0xffff), nextUsed: savedUint(o.nextUsed, `${path}.nextUsed`, 0xffff), inFlight,
    signalledUsed: savedUint(o.signalledUsed, `${path}.signalledUsed`, 0xffff), signalledUsedValid: savedBool(o.signalledUsedValid, `${path}.signalledUsedValid`),
    pushedSinceSignal: savedUint(o.pushedSinceSignal, `${path}.pushedSinceSignal`, Number.MAX_SAFE_INTEGER),
    notifications: savedBool(o.notifications, `${path}.notifications`),
  };
}

/** A split virtqueue over guest memory, as a device uses it. See the module comment for guarantees. */
export class SplitQueue implements VirtQueue {
  readonly layout: QueueLayout;
  readonly features: QueueFeatures;
  private readonly mem: GuestMemory;
  private readonly size: number;
  private readonly desc: DataView;
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  /** Marks the used ring dirty for Diff snapshots (the view above outlives slice()'s marks). */
  private readonly markUsed: (() => void) | undefined;
  /** avail.ring[size] is used_event; used.ring[size] is followed by avail_event. */
  private readonly usedEventU16: number;
  private readonly availEventU16: number;
  /** Writable bytes of each popped chain still in flight, keyed by head; -1 when not in flight. */
  private readonly inFlightWritable: Float64Array;
  private inFlight = 0;
  private nextAvail = 0;
  private nextUsed = 0;
  /** Head of the chain the last pop() returned, for undoPop (-1: none, or it was put back or used). */
  private lastPopped = -1;
  /** used idx when the driver was last interrupted (or asked about), vhost's signalled_used. */
  private signalledUsed = 0;
  private signalledUsedValid = false;
  /** Used entries pushed since needsInterrupt was last asked. */
  private pushedSinceSignal = 0;
  private notifications = true;

  /** The device session this queue belongs to; undefined: always live (unit tests). */
  private readonly session: QueueSession | undefined;

  /**
   * Validates `layout` against guest memory (throws QueueError "EQUEUELAYOUT") and maps the rings.
   * With a `session`, the queue goes quiet once it ends: pop() and hasAvailable() find nothing,
   * and pushUsed/setNotifications/avail_event writes are dropped, each checked atomically with
   * the write, so a late completion of an old session never lands in a new session's rings.
   */
  constructor(mem: GuestMemory, layout: QueueLayout, features: QueueFeatures, maxSize: number, session?: QueueSession) {
    this.session = session;
    const { size, descTable, availRing, usedRing } = layout;
    if (!isPowerOfTwo(maxSize) || maxSize > VIRTQUEUE_MAX_SIZE) {
      throw new QueueError("EQUEUELAYOUT", `Cannot set up queue: maximum size ${maxSize} is not a power of two ≤ ${VIRTQUEUE_MAX_SIZE}`);
    }
    if (!isPowerOfTwo(size) || size > maxSize) {
      throw new QueueError("EQUEUELAYOUT", `Cannot set up queue: size ${size} is not a power of two in 1..${maxSize}`);
    }
    const rings: [string, number, number, number][] = [
      ["descriptor table", descTable, descTableBytes(size), VRING_DESC_ALIGN_SIZE],
      ["available ring", availRing, availRingBytes(size), VRING_AVAIL_ALIGN_SIZE],
      ["used ring", usedRing, usedRingBytes(size), VRING_USED_ALIGN_SIZE],
    ];
    for (const [name, addr, bytes, align] of rings) {
      if (!Number.isSafeInteger(addr) || addr < 0 || addr % align !== 0) {
        throw new QueueError("EQUEUELAYOUT", `Cannot set up queue: ${name} address ${addr} is not ${align}-byte aligned`);
      }
      if (!mem.contains(addr, bytes)) {
        throw new QueueError("EQUEUELAYOUT", `Cannot set up queue: ${name} 0x${addr.toString(16)}+${bytes} is outside guest memory`);
      }
    }
    for (let i = 0; i < rings.length; i++) {
      for (let j = i + 1; j < rings.length; j++) {
        const [na, a, la] = rings[i]!, [nb, b, lb] = rings[j]!;
        if (a < b + lb && b < a + la) throw new QueueError("EQUEUELAYOUT", `Cannot set up queue: ${na} overlaps ${nb}`);
      }
    }
    this.mem = mem;
    this.layout = { size, descTable, availRing, usedRing };
    this.features = { eventIdx: features.eventIdx, indirect: features.indirect };
    this.size = size;
    this.desc = dataView(mem.slice(descTable, descTableBytes(size)));
    const avail = mem.slice(availRing, availRingBytes(size));
    const used = mem.slice(usedRing, usedRingBytes(size));
    this.avail16 = new Uint16Array(avail.buffer, avail.byteOffset, avail.byteLength / 2);
    this.used16 = new Uint16Array(used.buffer, used.byteOffset, used.byteLength / 2);
    this.used32 = new Uint32Array(used.buffer, used.byteOffset, (used.byteLength - 2) / 4);
    this.markUsed = mem.writeMarker(usedRing, usedRingBytes(size));
    this.usedEventU16 = AVAIL_RING_U16 + size;
    this.availEventU16 = (vring_used.ring + vring_used_elem.SIZE * size) / 2;
    this.inFlightWritable = new Float64Array(size).fill(-1);
  }

  /** The device's next index into the available ring (vhost's last_avail_idx). */
  get lastAvailIdx(): number { return this.nextAvail; }
  /** The used idx the device has published. */
  get usedIdx(): number { return this.nextUsed; }
  /** Chains popped and not yet pushed back. */
  get inFlightCount(): number { return this.inFlight; }

  /** True when the driver has made chains available that pop() has not taken yet. */
  hasAvailable(): boolean {
    if (this.session && !this.session.live()) return false;
    return Atomics.load(this.avail16, U16_IDX) !== this.nextAvail;
  }

  pop(): DescriptorChain | undefined {
    if (this.session && !this.session.live()) return undefined;
    const availIdx = Atomics.load(this.avail16, U16_IDX);
    const pending = (availIdx - this.nextAvail) & 0xffff;
    if (pending === 0) return undefined;
    if (pending > this.size) {
      throw new QueueError("EQUEUEINDEX", `Driver error: avail idx ${availIdx} is ${pending} ahead of ${this.nextAvail}, more than the queue size ${this.size}`);
    }
    const head = Atomics.load(this.avail16, AVAIL_RING_U16 + (this.nextAvail & (this.size - 1)));
    if (head >= this.size) {
      throw new QueueError("EQUEUEINDEX", `Driver error: available head ${head} is not below the queue size ${this.size}`);
    }
    if (this.inFlightWritable[head]! >= 0) {
      throw new QueueError("EQUEUECHAIN", `Driver error: head ${head} is made available again while the device still holds it`);
    }
    const chain = this.walk(head);
    this.lastPopped = head;
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    this.inFlightWritable[head] = chain.writableBytes;
    this.inFlight++;
    // §2.7.10: with EVENT_IDX, avail_event says which avail idx the device wants a kick for.
    if (this.features.eventIdx && this.notifications) this.ringWrite(() => Atomics.store(this.used16, this.availEventU16, this.nextAvail));
    return chain;
  }

  /** See VirtQueue.undoPop: only right after pop(), which is checked (a device bug otherwise). */
  undoPop(): void {
    const head = this.lastPopped;
    if (head < 0 || this.inFlightWritable[head]! < 0) throw new QueueError("EQUEUEUSED", "Cannot put a chain back: the last pop() returned nothing or it was already pushed");
    this.lastPopped = -1;
    this.inFlightWritable[head] = -1;
    this.inFlight--;
    this.nextAvail = (this.nextAvail - 1) & 0xffff;
  }

  /** Runs a write to the used ring unless the queue's session has ended (see the constructor). */
  private ringWrite(write: () => void): void {
    const s = this.session;
    if (!s) this.writeUsedRing(write);
    else s.exclusive(() => { if (s.live()) this.writeUsedRing(write); });
  }

  private writeUsedRing(write: () => void): void {
    write();
    this.markUsed?.();
  }

  /** Follows the chain at `head`, checking every descriptor (§2.7.5, §2.7.5.3). */
  private walk(head: number): DescriptorChain {
    const readable: GuestBuffer[] = [];
    const writable: GuestBuffer[] = [];
    let readableBytes = 0, writableBytes = 0, buffers = 0, sawWritable = false;
    // The table being read: the ring's, or an indirect one read in place through its region's view.
    let table = this.desc, tableBase = 0, tableLen = this.size, indirect = false;
    let idx = head;
    // Every pass reads one buffer descriptor, except the single (never nested) indirect one,
    // and buffers are capped at the queue size, so the walk always ends.
    for (;;) {
      const off = tableBase + idx * vring_desc.SIZE;
      const addrLo = getU32(table, off + vring_desc.addr), addrHi = getU32(table, off + vring_desc.addr + 4);
      const len = getU32(table, off + vring_desc.len);
      const flags = getU16(table, off + vring_desc.flags);
      const next = getU16(table, off + vring_desc.next);
      const addr = addrHi < ADDR_HI_LIMIT ? addrHi * 2 ** 32 + addrLo : -1;
      if (flags & VRING_DESC_F_INDIRECT) {
        // §2.7.5.3.1: only when negotiated, never nested, never with NEXT; the table is whole descriptors.
        if (!this.features.indirect) throw new QueueError("EQUEUECHAIN", `Driver error: indirect descriptor in chain ${head} but VIRTIO_RING_F_INDIRECT_DESC was not negotiated`);
        if (indirect) throw new QueueError("EQUEUECHAIN", `Driver error: nested indirect descriptor in chain ${head}`);
        if (flags & VRING_DESC_F_NEXT) throw new QueueError("EQUEUECHAIN", `Driver error: indirect descriptor in chain ${head} also has NEXT`);
        if (len === 0 || len % vring_desc.SIZE !== 0) throw new QueueError("EQUEUECHAIN", `Driver error: indirect table length ${len} in chain ${head} is not a non-zero multiple of ${vring_desc.SIZE}`);
        const region = addr < 0 ? undefined : this.mem.findRegion(addr, len);
        if (!region) throw new QueueError("EQUEUERANGE", `Driver error: indirect table ${hexRange(addrHi, addrLo, len)} in chain ${head} is outside guest memory`);
        table = region.view;
        tableBase = addr - region.guestBase;
        tableLen = len / vring_desc.SIZE;
        indirect = true;
        idx = 0;
        continue;
      }
      // §2.7.5.3.1 / §2.7.4.2: a chain, indirect descriptors included, is never longer than the
      // queue size (this also ends any loop).
      if (++buffers > this.size) throw new QueueError("EQUEUECHAIN", `Driver error: chain ${head} is longer than the queue size ${this.size} (a loop?)`);
      if (len > 0 && (addr < 0 || !this.mem.contains(addr, len))) {
        throw new QueueError("EQUEUERANGE", `Driver error: buffer ${hexRange(addrHi, addrLo, len)} in chain ${head} is outside guest memory`);
      }
      if (flags & VRING_DESC_F_WRITE) {
        sawWritable = true;
        if (len > 0) { writable.push({ addr, len }); writableBytes += len; }
      } else {
        // §2.7.4.2: device-readable descriptors come before device-writable ones.
        if (sawWritable) throw new QueueError("EQUEUECHAIN", `Driver error: chain ${head} has a device-readable buffer after a device-writable one`);
        if (len > 0) { readable.push({ addr, len }); readableBytes += len; }
      }
      if (!(flags & VRING_DESC_F_NEXT)) break;
      if (next >= tableLen) {
        throw new QueueError("EQUEUEINDEX", `Driver error: next ${next} in chain ${head} is not below the ${indirect ? "indirect table" : "queue"} size ${tableLen}`);
      }
      idx = next;
    }
    return { head, readable, writable, readableBytes, writableBytes };
  }

  pushUsed(head: number, writtenBytes: number): void {
    this.ringWrite(() => this.publishUsed(head, writtenBytes));
  }

  pushUsedMany(heads: ArrayLike<number>, lens: ArrayLike<number>, count: number): void {
    if (!Number.isInteger(count) || count < 0 || count > heads.length || count > lens.length || count > this.inFlight) {
      throw new QueueError("EQUEUEUSED", `Cannot return ${count} chains: ${this.inFlight} are in flight`);
    }
    this.ringWrite(() => this.publishUsedMany(heads, lens, count));
  }

  private publishUsed(head: number, writtenBytes: number): void {
    this.checkUsed(head, writtenBytes);
    this.lastPopped = -1;
    this.writeUsedElem(0, head, writtenBytes);
    this.inFlightWritable[head] = -1;
    this.advanceUsed(1);
  }

  private publishUsedMany(heads: ArrayLike<number>, lens: ArrayLike<number>, count: number): void {
    // Check everything first (a head twice is caught by marking each as returned), so that a
    // QueueError publishes nothing and leaves the queue as it was.
    let i = 0;
    try {
      for (; i < count; i++) {
        this.checkUsed(heads[i]!, lens[i]!);
        this.inFlightWritable[heads[i]!] = -1 - this.inFlightWritable[heads[i]!]!;
      }
    } finally {
      for (let j = 0; j < i; j++) this.inFlightWritable[heads[j]!] = -1 - this.inFlightWritable[heads[j]!]!;
    }
    this.lastPopped = -1;
    for (i = 0; i < count; i++) {
      this.writeUsedElem(i, heads[i]!, lens[i]!);
      this.inFlightWritable[heads[i]!] = -1;
    }
    this.advanceUsed(count);
  }

  /** Throws unless `head` is in flight and `writtenBytes` fits its writable buffers. */
  private checkUsed(head: number, writtenBytes: number): void {
    if (!Number.isInteger(head) || head < 0 || head >= this.size || this.inFlightWritable[head]! < 0) {
      throw new QueueError("EQUEUEUSED", `Cannot return chain ${head}: it is not in flight`);
    }
    const max = this.inFlightWritable[head]!;
    if (!Number.isInteger(writtenBytes) || writtenBytes < 0 || writtenBytes > max || writtenBytes > 0xffffffff) {
      throw new QueueError("EQUEUEUSED", `Cannot return chain ${head}: ${writtenBytes} bytes written but it has ${max} writable bytes`);
    }
  }

  /** Writes the used element `offset` places after the next one (not yet published). */
  private writeUsedElem(offset: number, head: number, writtenBytes: number): void {
    const elem = USED_RING_U32 + ((this.nextUsed + offset) & (this.size - 1)) * ELEM_U32S;
    Atomics.store(this.used32, elem + ELEM_ID_U32, head);
    Atomics.store(this.used32, elem + ELEM_LEN_U32, writtenBytes);
  }

  /** Publishes the next `count` used elements (already written, their chains out of flight) with one used idx store. */
  private advanceUsed(count: number): void {
    this.nextUsed = (this.nextUsed + count) & 0xffff;
    // The element stores above are ordered before this store (§2.7.8.2).
    Atomics.store(this.used16, U16_IDX, this.nextUsed);
    this.inFlight -= count;
    // vhost: once 2^16 entries pass unsignalled, old/new no longer say anything.
    this.pushedSinceSignal += count;
    if (this.pushedSinceSignal >= 0x10000) this.signalledUsedValid = false;
  }

  /**
   * True when the driver wants an interrupt for the entries pushed since the last call
   * (vhost_notify): with EVENT_IDX, vring_need_event(used_event, used idx, used idx at the
   * last call); otherwise unless VRING_AVAIL_F_NO_INTERRUPT. False when nothing was pushed.
   */
  needsInterrupt(): boolean {
    const oldIdx = this.signalledUsed, valid = this.signalledUsedValid, pushed = this.pushedSinceSignal;
    this.signalledUsed = this.nextUsed;
    this.signalledUsedValid = true;
    this.pushedSinceSignal = 0;
    if (pushed === 0) return false;
    if (!this.features.eventIdx) return (Atomics.load(this.avail16, U16_FLAGS) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
    if (!valid) return true;
    return vringNeedEvent(Atomics.load(this.avail16, this.usedEventU16), this.nextUsed, oldIdx);
  }

  /**
   * Asks the driver to kick (or not) when it makes buffers available (§2.7.10). After
   * enabling, call hasAvailable() again: buffers added before the driver saw the change
   * get no kick (the race virtio_ring.c's virtqueue_enable_cb closes the same way).
   */
  setNotifications(enabled: boolean): void {
    this.notifications = enabled;
    // With EVENT_IDX, disabling writes nothing (no lock taken: serveQueue does it every pass).
    if (this.features.eventIdx && !enabled) return;
    this.ringWrite(() => {
      if (this.features.eventIdx) {
        // Disabling leaves avail_event behind, so the driver stops kicking once past it.
        if (enabled) Atomics.store(this.used16, this.availEventU16, this.nextAvail);
      } else {
        const flags = Atomics.load(this.used16, U16_FLAGS);
        Atomics.store(this.used16, U16_FLAGS, enabled ? flags & ~VRING_USED_F_NO_NOTIFY : flags | VRING_USED_F_NO_NOTIFY);
      }
    });
  }

  /** The device-side state (see QueueSavedState); the queue is unchanged. */
  saveState(): QueueSavedState {
    const inFlight: [number, number][] = [];
    this.inFlightWritable.forEach((w, head) => { if (w >= 0) inFlight.push([head, w]); });
    return {
      nextAvail: this.nextAvail, nextUsed: this.nextUsed, inFlight,
      signalledUsed: this.signalledUsed, signalledUsedValid: this.signalledUsedValid,
      pushedSinceSignal: this.pushedSinceSignal, notifications: this.notifications,
    };
  }

  /**
   * Takes up the device-side state of a queue saved over the same rings (a
   * restore from a snapshot): pop() goes on at s.nextAvail, the next push
   * lands at s.nextUsed, and the chains in flight can be returned. Guest
   * memory is not touched (the rings came with it). Throws
   * VirtioSavedStateError "EVIRTIOSNAPMISMATCH", changing nothing, when `s`
   * does not fit this queue (a head beyond its size, or in-flight chains
   * that do not add up to nextAvail - nextUsed).
   */
  restoreState(s: QueueSavedState): void {
    const mismatch = (why: string) => new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `queue of size ${this.size}: ${why}`);
    const owed = (s.nextAvail - s.nextUsed) & 0xffff;
    if (s.inFlight.length !== owed) throw mismatch(`${s.inFlight.length} chains in flight, but next avail ${s.nextAvail} and next used ${s.nextUsed} say ${owed}`);
    const seen = new Set<number>();
    for (const [head] of s.inFlight) {
      if (head >= this.size) throw mismatch(`in-flight head ${head} is not below the queue size`);
      if (seen.has(head)) throw mismatch(`head ${head} is in flight twice`);
      seen.add(head);
    }
    this.inFlightWritable.fill(-1);
    for (const [head, writable] of s.inFlight) this.inFlightWritable[head] = writable;
    this.inFlight = s.inFlight.length;
    this.nextAvail = s.nextAvail;
    this.nextUsed = s.nextUsed;
    this.lastPopped = -1;
    this.signalledUsed = s.signalledUsed;
    this.signalledUsedValid = s.signalledUsedValid;
    this.pushedSinceSignal = s.pushedSinceSignal;
    this.notifications = s.notifications;
  }

  /** Forgets all device-side state (device reset, §2.1.2): indices back to 0, nothing in flight. */
  reset(): void {
    this.lastPopped = -1;
    this.nextAvail = 0;
    this.nextUsed = 0;
    this.inFlightWritable.fill(-1);
    this.inFlight = 0;
    this.signalledUsed = 0;
    this.signalledUsedValid = false;
    this.pushedSinceSignal = 0;
    this.notifications = true;
  }
}

/** What {@link serveQueue} did. */
export interface ServeResult {
  /** Chains handed to `serve` and taken by it. */
  served: number;
  /** The budget ran out with chains still available: kicks stay off, so the caller must come back (ctx.kick). */
  more: boolean;
  /**
   * `serve` refused a chain (its rate limiter is blocked): the chain went back
   * to the ring (undoPop) and the pass ended. Kicks stay off, since the device
   * would not serve them; the caller comes back when it can (its timer).
   */
  refused: boolean;
}

/**
 * Serves the queue's available chains with the driver's kicks suppressed
 * while the device is busy anyway (§2.7.10; vhost's handle_tx and QEMU's
 * virtio_blk_handle_vq work the same way): every chain the driver adds while
 * the device serves is found by the next pop() instead of costing an exit.
 * Kicks are asked for again before returning, and the ring is looked at once
 * more after that, so a chain added in between is never left without one.
 *
 * At most `budget` units of work are done, so that a guest adding chains
 * from another vCPU as fast as they are served cannot hold the device thread
 * (its control eventfd — reset, stop, host requests — is served between two
 * passes); `more` then says the caller has to come back (ctx.kick). A chain
 * costs what `serve` returns (e.g. the PFNs of a balloon request), 1 when it
 * returns nothing; a chain is never cut short, so a pass may overrun the
 * budget by one chain's cost. `serve` returns false to refuse a chain for now
 * (ServeResult.refused): it is put back where it was, so nothing is lost or
 * reordered.
 */
export function serveQueue(q: VirtQueue, budget: number, serve: (chain: DescriptorChain) => number | void | false): ServeResult {
  let served = 0, spent = 0;
  for (;;) {
    q.setNotifications(false);
    for (let chain = q.pop(); chain; chain = q.pop()) {
      const cost = serve(chain);
      if (cost === false) {
        q.undoPop();
        return { served, more: false, refused: true };
      }
      served++;
      spent += Math.max(1, cost ?? 1);
      if (spent < budget) continue;
      if (q.hasAvailable()) return { served, more: true, refused: false };
      q.setNotifications(true);
      return { served, more: q.hasAvailable(), refused: false };
    }
    q.setNotifications(true);
    if (!q.hasAvailable()) return { served, more: false, refused: false };
  }
}
