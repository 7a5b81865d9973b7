/**
 * A fake guest driver for one split virtqueue (virtio 1.x §2.7), for device tests.
 * It plays the part of Linux's drivers/virtio/virtio_ring.c: it lays out the
 * rings in a slice of guest memory it owns, puts requests (chains of
 * device-readable payloads and device-writable buffers, direct or indirect) in
 * the available ring, reads back the used ring and the bytes the device wrote,
 * and produces/consumes the EVENT_IDX fields the way Linux does.
 *
 * Typical device test:
 *
 *     const mem = GuestMemory.create([{ guestBase: 0, size: 1 << 20 }]);
 *     const drv = new FakeDriver(mem, { base: 0x1000, bytes: 0x40000, queueSize: 16 });
 *     const q = drv.createQueue();            // a SplitQueue over the driver's rings
 *     drv.addChain({ readable: [header], writable: [512, 1] });
 *     device.onNotify(0);                     // the device pops, works, pushes used
 *     const used = drv.popUsed();             // { head, len, written, buffers }
 *
 * For hostile tests, the raw accessors (writeDescriptor, setAvailRing, setAvailIdx,
 * alloc) write whatever you like; fake-driver-hostile.ts has fast-check arbitraries.
 */
import {
  VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
  VRING_USED_F_NO_NOTIFY, vring_avail, vring_desc, vring_used, vring_used_elem,
} from "../../../linux/abi.generated.js";
import type { GuestMemory } from "../../../memory/guest-memory.js";
import { availRingBytes, descTableBytes, SplitQueue, usedRingBytes, vringNeedEvent } from "../queue.js";
import type { QueueFeatures, QueueLayout } from "../types.js";

/** Where the fake driver lives and what it negotiated. */
export interface FakeDriverOptions {
  /** First guest address the driver owns: the rings start here (rounded up to 16). */
  base: number;
  /** Bytes from `base` the driver owns: rings first, the rest is its buffer heap. */
  bytes: number;
  /** Queue size (a power of two). */
  queueSize: number;
  /** Negotiated ring features (default: neither). */
  features?: Partial<QueueFeatures>;
  /** Alignment of the used ring: 4 (virtio 1.x, the default) or 4096 (legacy vring_init). */
  usedAlign?: number;
}

/** A request as the driver builds it (virtio_ring.c's virtqueue_add_sgs). */
export interface ChainSpec {
  /** Device-readable buffers, in order; each becomes one descriptor holding these bytes. */
  readable?: readonly Uint8Array[];
  /** Lengths of the device-writable buffers that follow (filled with `fill` first). */
  writable?: readonly number[];
  /** Put the chain in an indirect table (needs features.indirect). */
  indirect?: boolean;
  /** Byte the writable buffers are filled with before the device sees them (default 0xee). */
  fill?: number;
}

/** One raw descriptor (struct vring_desc). `addr` may be any 64-bit value. */
export interface RawDescriptor {
  addr: bigint | number;
  len: number;
  flags: number;
  next: number;
}

/** A chain the device returned, as the driver sees it (virtqueue_get_buf). */
export interface UsedEntry {
  /** used_elem.id: the head descriptor index. */
  head: number;
  /** used_elem.len: bytes the device says it wrote. */
  len: number;
  /** The first `len` bytes of the writable buffers, concatenated (clamped to their total). */
  written: Uint8Array;
  /** Every writable buffer's full current contents, in order. */
  buffers: Uint8Array[];
  /** Where those buffers are in guest memory. */
  writable: { addr: number; len: number }[];
}

interface Outstanding {
  descs: number[];
  allocations: { addr: number; len: number }[];
  writable: { addr: number; len: number }[];
}

const alignUp = (x: number, a: number): number => Math.ceil(x / a) * a;

/** A guest driver for one split virtqueue. See the module comment. */
export class FakeDriver {
  readonly mem: GuestMemory;
  readonly layout: QueueLayout;
  readonly features: QueueFeatures;
  /** Start and end of the driver's buffer heap (after the rings). */
  readonly heapStart: number;
  readonly heapEnd: number;
  private readonly freeDescs: number[];
  private readonly outstanding = new Map<number, Outstanding>();
  /** Free heap ranges [start, end), sorted. */
  private heap: [number, number][];
  private availShadow = 0;
  private lastUsed = 0;
  /** avail idx at the last needsKick (virtio_ring.c's num_added bookkeeping). */
  private kickedAt = 0;
  private callbacks = true;

  /** Lays out and zeroes the rings at `options.base`; the rest of the range becomes the heap. */
  constructor(mem: GuestMemory, options: FakeDriverOptions) {
    const { base, bytes, queueSize: size } = options;
    const descTable = alignUp(base, 16);
    const availRing = descTable + descTableBytes(size);
    const usedRing = alignUp(availRing + availRingBytes(size), options.usedAlign ?? 4);
    const ringsEnd = usedRing + usedRingBytes(size);
    if (ringsEnd > base + bytes || !mem.contains(base, bytes)) {
      throw new Error(`FakeDriver: ${bytes} bytes at 0x${base.toString(16)} cannot hold a queue of ${size} (or lie outside memory)`);
    }
    this.mem = mem;
    this.layout = { size, descTable, availRing, usedRing };
    this.features = { eventIdx: options.features?.eventIdx ?? false, indirect: options.features?.indirect ?? false };
    mem.fill(descTable, ringsEnd - descTable, 0);
    this.heapStart = alignUp(ringsEnd, 16);
    this.heapEnd = base + bytes;
    this.heap = this.heapStart < this.heapEnd ? [[this.heapStart, this.heapEnd]] : [];
    this.freeDescs = Array.from({ length: size }, (_, i) => size - 1 - i); // pop() yields 0, 1, ...
  }

  /**
   * A driver over rings that already exist (e.g. a queue under test), for the raw ring
   * accessors only: it owns no descriptors or heap, so addChain fails. Memory is not touched.
   */
  static attach(mem: GuestMemory, layout: QueueLayout, features: QueueFeatures): FakeDriver {
    const d = Object.create(FakeDriver.prototype) as FakeDriver;
    Object.assign(d, {
      mem, layout, features, heapStart: 0, heapEnd: 0, freeDescs: [], outstanding: new Map(), heap: [],
      availShadow: 0, lastUsed: 0, kickedAt: 0, callbacks: true,
    });
    return d;
  }

  /**
   * The same driver over `mem`, another mapping holding the same bytes (a VM
   * restored from a snapshot: a real driver's bookkeeping lives in guest RAM
   * and comes with it; this one's is copied). The two go their own ways after.
   */
  moveTo(mem: GuestMemory): FakeDriver {
    const d = Object.create(FakeDriver.prototype) as FakeDriver;
    const outstanding = new Map([...this.outstanding].map(([head, o]) => [head, {
      descs: [...o.descs], allocations: o.allocations.map((a) => ({ ...a })), writable: o.writable.map((w) => ({ ...w })),
    }]));
    Object.assign(d, {
      mem, layout: this.layout, features: this.features, heapStart: this.heapStart, heapEnd: this.heapEnd,
      freeDescs: [...this.freeDescs], outstanding, heap: this.heap.map(([a, b]) => [a, b]),
      availShadow: this.availShadow, lastUsed: this.lastUsed, kickedAt: this.kickedAt, callbacks: this.callbacks,
    });
    return d;
  }

  /** A SplitQueue over this driver's rings, with the same features. */
  createQueue(maxSize = this.layout.size): SplitQueue {
    return new SplitQueue(this.mem, this.layout, this.features, maxSize);
  }

  /** Descriptors not used by outstanding chains. */
  get freeDescriptors(): number { return this.freeDescs.length; }
  /** Chains added and not yet returned through popUsed. */
  get outstandingChains(): number { return this.outstanding.size; }

  /**
   * Adds a request and (unless `publish` is false) makes it available by bumping avail idx.
   * Returns the head descriptor index. Throws a plain Error when descriptors or heap run out.
   */
  addChain(spec: ChainSpec, publish = true): number {
    const readable = spec.readable ?? [], writable = spec.writable ?? [];
    const n = readable.length + writable.length;
    if (n === 0) throw new Error("FakeDriver: a chain needs at least one buffer");
    const needDescs = spec.indirect ? 1 : n;
    if (spec.indirect && !this.features.indirect) throw new Error("FakeDriver: indirect chains need features.indirect");
    if (needDescs > this.freeDescs.length) throw new Error(`FakeDriver: ${needDescs} descriptors needed, ${this.freeDescs.length} free`);
    const out: Outstanding = { descs: [], allocations: [], writable: [] };
    try {
      const bufs: RawDescriptor[] = [];
      for (const data of readable) {
        const addr = this.allocFor(out, data.length, 8);
        this.mem.write(addr, data);
        bufs.push({ addr, len: data.length, flags: 0, next: 0 });
      }
      for (const len of writable) {
        const addr = this.allocFor(out, len, 8);
        this.mem.fill(addr, len, spec.fill ?? 0xee);
        out.writable.push({ addr, len });
        bufs.push({ addr, len, flags: VRING_DESC_F_WRITE, next: 0 });
      }
      let head: number;
      if (spec.indirect) {
        const table = this.allocFor(out, n * vring_desc.SIZE, 16);
        bufs.forEach((d, i) => this.writeDescriptorAt(table + i * vring_desc.SIZE,
          { ...d, flags: d.flags | (i < n - 1 ? VRING_DESC_F_NEXT : 0), next: i + 1 < n ? i + 1 : 0 }));
        head = this.freeDescs.pop()!;
        out.descs.push(head);
        this.writeDescriptor(head, { addr: table, len: n * vring_desc.SIZE, flags: VRING_DESC_F_INDIRECT, next: 0 });
      } else {
        const ids = bufs.map(() => this.freeDescs.pop()!);
        out.descs.push(...ids);
        bufs.forEach((d, i) => this.writeDescriptor(ids[i]!,
          { ...d, flags: d.flags | (i < n - 1 ? VRING_DESC_F_NEXT : 0), next: i < n - 1 ? ids[i + 1]! : 0 }));
        head = ids[0]!;
      }
      this.outstanding.set(head, out);
      this.setAvailRing(this.availShadow, head);
      this.availShadow = (this.availShadow + 1) & 0xffff;
      if (publish) this.publish();
      return head;
    } catch (e) {
      this.release(out);
      throw e;
    }
  }

  /** Makes every chain added so far visible to the device (writes avail idx). */
  publish(): void {
    this.setAvailIdx(this.availShadow);
  }

  /**
   * Whether the device wants a kick for the chains published since the last call
   * (virtqueue_kick_prepare_split): vring_need_event(avail_event, new, old) with
   * EVENT_IDX, otherwise unless the device set VRING_USED_F_NO_NOTIFY.
   */
  needsKick(): boolean {
    const oldIdx = this.kickedAt, newIdx = this.availIdx;
    this.kickedAt = newIdx;
    if (this.features.eventIdx) return vringNeedEvent(this.availEvent, newIdx, oldIdx);
    return (this.usedFlags & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /**
   * The next used entry, or undefined when the device has returned nothing new
   * (virtqueue_get_buf). Frees the chain's descriptors and buffers; with EVENT_IDX and
   * callbacks enabled it then moves used_event to the new last-used index, as Linux does.
   * Throws a plain Error when the device returned something no driver would accept.
   */
  popUsed(): UsedEntry | undefined {
    if (this.usedIdx === this.lastUsed) return undefined;
    const elem = this.layout.usedRing + vring_used.ring + (this.lastUsed % this.layout.size) * vring_used_elem.SIZE;
    const head = this.mem.readU32(elem + vring_used_elem.id);
    const len = this.mem.readU32(elem + vring_used_elem.len);
    const out = this.outstanding.get(head);
    if (!out) throw new Error(`FakeDriver: device returned head ${head}, which is not outstanding`);
    const buffers = out.writable.map((b) => this.mem.read(b.addr, b.len));
    const all = new Uint8Array(buffers.reduce((s, b) => s + b.length, 0));
    buffers.reduce((off, b) => (all.set(b, off), off + b.length), 0);
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    this.outstanding.delete(head);
    this.release(out);
    if (this.features.eventIdx && this.callbacks) this.usedEvent = this.lastUsed;
    return { head, len, written: all.slice(0, Math.min(len, all.length)), buffers, writable: out.writable.map((b) => ({ addr: b.addr, len: b.len })) };
  }

  /** Every used entry available now. */
  popAllUsed(): UsedEntry[] {
    const out: UsedEntry[] = [];
    for (let u = this.popUsed(); u; u = this.popUsed()) out.push(u);
    return out;
  }

  /**
   * Asks for (or stops) used-buffer interrupts (virtqueue_enable_cb/disable_cb): with
   * EVENT_IDX moves used_event to the last used index seen, otherwise toggles
   * VRING_AVAIL_F_NO_INTERRUPT.
   */
  setCallbacks(enabled: boolean): void {
    this.callbacks = enabled;
    if (this.features.eventIdx) {
      if (enabled) this.usedEvent = this.lastUsed;
    } else {
      this.availFlags = enabled ? this.availFlags & ~VRING_AVAIL_F_NO_INTERRUPT : this.availFlags | VRING_AVAIL_F_NO_INTERRUPT;
    }
  }

  // --- Ring fields, raw (no checks: hostile tests write anything) ---

  /** avail.idx as in memory. */
  get availIdx(): number { return this.mem.readU16(this.layout.availRing + vring_avail.idx); }
  /** The avail idx the next addChain will publish up to (the driver's shadow). */
  get availShadowIdx(): number { return this.availShadow; }
  /** avail.flags. */
  get availFlags(): number { return this.mem.readU16(this.layout.availRing + vring_avail.flags); }
  set availFlags(x: number) { this.mem.writeU16(this.layout.availRing + vring_avail.flags, x); }
  /** used_event (avail.ring[size]): the used idx the driver wants an interrupt after. */
  get usedEvent(): number { return this.mem.readU16(this.layout.availRing + vring_avail.ring + 2 * this.layout.size); }
  set usedEvent(x: number) { this.mem.writeU16(this.layout.availRing + vring_avail.ring + 2 * this.layout.size, x & 0xffff); }
  /** used.idx as the device published it. */
  get usedIdx(): number { return this.mem.readU16(this.layout.usedRing + vring_used.idx); }
  /** The next used index the driver will read. */
  get lastUsedIdx(): number { return this.lastUsed; }
  /** used.flags (VRING_USED_F_NO_NOTIFY). */
  get usedFlags(): number { return this.mem.readU16(this.layout.usedRing + vring_used.flags); }
  /** avail_event (after used.ring[size]): the avail idx the device wants a kick after. */
  get availEvent(): number {
    return this.mem.readU16(this.layout.usedRing + vring_used.ring + vring_used_elem.SIZE * this.layout.size);
  }

  /** Writes avail.idx. */
  setAvailIdx(idx: number): void { this.mem.writeU16(this.layout.availRing + vring_avail.idx, idx & 0xffff); }
  /** Writes avail.ring[slot % size]. */
  setAvailRing(slot: number, head: number): void {
    this.mem.writeU16(this.layout.availRing + vring_avail.ring + 2 * (slot % this.layout.size), head & 0xffff);
  }
  /** Writes descriptor `index` of the descriptor table. */
  writeDescriptor(index: number, d: RawDescriptor): void {
    this.writeDescriptorAt(this.layout.descTable + (index % this.layout.size) * vring_desc.SIZE, d);
  }
  /** Writes a descriptor anywhere (an indirect table entry). */
  writeDescriptorAt(addr: number, d: RawDescriptor): void {
    this.mem.writeU64(addr + vring_desc.addr, BigInt.asUintN(64, BigInt(d.addr)));
    this.mem.writeU32(addr + vring_desc.len, d.len);
    this.mem.writeU16(addr + vring_desc.flags, d.flags & 0xffff);
    this.mem.writeU16(addr + vring_desc.next, d.next & 0xffff);
  }
  /** Reads descriptor `index`. */
  readDescriptor(index: number): RawDescriptor {
    const a = this.layout.descTable + (index % this.layout.size) * vring_desc.SIZE;
    return {
      addr: this.mem.readU64(a + vring_desc.addr), len: this.mem.readU32(a + vring_desc.len),
      flags: this.mem.readU16(a + vring_desc.flags), next: this.mem.readU16(a + vring_desc.next),
    };
  }
  /** The used element at `slot % size` as the device wrote it. */
  usedElem(slot: number): { id: number; len: number } {
    const a = this.layout.usedRing + vring_used.ring + (slot % this.layout.size) * vring_used_elem.SIZE;
    return { id: this.mem.readU32(a + vring_used_elem.id), len: this.mem.readU32(a + vring_used_elem.len) };
  }

  /** Takes `len` bytes (aligned) from the heap for the caller's own use; throws when full. */
  alloc(len: number, align = 8): number {
    for (let i = 0; i < this.heap.length; i++) {
      const [start, end] = this.heap[i]!;
      const addr = alignUp(start, align);
      if (addr + len <= end) {
        const pieces: [number, number][] = [];
        if (addr > start) pieces.push([start, addr]);
        if (addr + len < end) pieces.push([addr + len, end]);
        this.heap.splice(i, 1, ...pieces);
        return addr;
      }
    }
    throw new Error(`FakeDriver: heap cannot fit ${len} more bytes`);
  }

  /** Gives heap bytes from alloc back. */
  free(addr: number, len: number): void {
    if (len === 0) return;
    this.heap.push([addr, addr + len]);
    this.heap.sort((a, b) => a[0] - b[0]);
    const merged: [number, number][] = [];
    for (const r of this.heap) {
      const last = merged[merged.length - 1];
      if (last && last[1] >= r[0]) last[1] = Math.max(last[1], r[1]);
      else merged.push([r[0], r[1]]);
    }
    this.heap = merged;
  }

  private allocFor(out: Outstanding, len: number, align: number): number {
    const addr = this.alloc(len, align);
    out.allocations.push({ addr, len });
    return addr;
  }

  private release(out: Outstanding): void {
    for (const a of out.allocations) this.free(a.addr, a.len);
    for (const d of out.descs) this.freeDescs.push(d);
    out.allocations = [];
    out.descs = [];
  }
}
