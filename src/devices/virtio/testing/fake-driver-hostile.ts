/**
 * A hostile guest driver for property-based tests (fast-check), and the
 * harness that throws it at SplitQueue (queue.property.test.ts runs it in CI,
 * `npm run fuzz:virtio` runs it ten times longer).
 *
 * For device engineers:
 *   - arbChainSpec(): random well-formed requests (random payload bytes split
 *     over random buffers, random writable lengths, direct or indirect) to feed
 *     FakeDriver.addChain — map them to your device's header format, or not;
 *   - recordingMemory(mem): a GuestMemory that records every access, so a test
 *     can assert a device only read its readable buffers, only wrote its
 *     writable ones and never tried to go outside guest memory.
 *
 * The queue harness (runQueueScenario) checks, for every action:
 *   (a) every access the queue attempts lies inside guest memory;
 *   (b) constructor, pop, pushUsed, needsInterrupt, setNotifications, hasAvailable
 *       only ever throw QueueError, and a QueueError leaves memory and indices as they were;
 *   (c) the queue writes guest memory only inside the used ring (device writes through
 *       chain-io only inside the chain's writable buffers);
 *   (d) every buffer pop returns lies inside guest memory, is non-empty, and a chain has
 *       at most `size` buffers; used entries hold exactly what pushUsed was given.
 */
import fc from "fast-check";
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, vring_used, vring_used_elem } from "../../../linux/abi.generated.js";
import type { GuestMemory } from "../../../memory/guest-memory.js";
import { writeChain } from "../chain-io.js";
import { availRingBytes, descTableBytes, QueueError, SplitQueue, usedRingBytes } from "../queue.js";
import type { DescriptorChain, QueueFeatures, QueueLayout } from "../types.js";
import type { ChainSpec, RawDescriptor } from "./fake-driver.js";
import { FakeDriver } from "./fake-driver.js";

// ---------------------------------------------------------------------------
// Recording memory
// ---------------------------------------------------------------------------

/** One attempted guest memory access. */
export interface MemoryAccess {
  op: "read" | "write";
  method: string;
  addr: number;
  len: number;
}

/** A GuestMemory that records every access before performing it. */
export interface RecordingMemory {
  /** Use this in place of the real memory. */
  readonly memory: GuestMemory;
  /** Accesses since the last clear(). */
  readonly accesses: MemoryAccess[];
  /** Accesses that were attempted outside guest memory (ever; never cleared). */
  readonly outside: MemoryAccess[];
  clear(): void;
}

/** Wraps `real` so every read/write/slice is recorded (slices count as read+write). */
export function recordingMemory(real: GuestMemory): RecordingMemory {
  const accesses: MemoryAccess[] = [];
  const outside: MemoryAccess[] = [];
  const wrapper = Object.create(real) as GuestMemory;
  const record = (op: MemoryAccess["op"], method: string, addr: number, len: number) => {
    const a = { op, method, addr, len };
    accesses.push(a);
    if (!real.contains(addr, len)) outside.push(a);
  };
  const define = (name: string, fn: (...args: never[]) => unknown) => Object.defineProperty(wrapper, name, { value: fn });
  define("slice", (a: number, l: number) => { record("read", "slice", a, l); return real.slice(a, l); });
  define("read", (a: number, l: number) => { record("read", "read", a, l); return real.read(a, l); });
  define("readView", (a: number, l: number) => { record("read", "readView", a, l); return real.readView(a, l); });
  define("markWritten", (a: number, l: number) => { record("write", "markWritten", a, l); real.markWritten(a, l); });
  define("write", (a: number, d: Uint8Array) => { record("write", "write", a, d.length); real.write(a, d); });
  define("fill", (a: number, l: number, v?: number) => { record("write", "fill", a, l); real.fill(a, l, v); });
  define("discard", (a: number, l: number) => { record("write", "discard", a, l); real.discard(a, l); });
  for (const [bits, len] of [[8, 1], [16, 2], [32, 4], [64, 8]] as const) {
    const r = `readU${bits}` as "readU8", w = `writeU${bits}` as "writeU8";
    define(r, (a: number) => { record("read", r, a, len); return real[r](a); });
    define(w, (a: number, x: number) => { record("write", w, a, len); (real[w] as (a: number, x: unknown) => void)(a, x); });
  }
  return { memory: wrapper, accesses, outside, clear: () => { accesses.length = 0; } };
}

// ---------------------------------------------------------------------------
// Arbitraries
// ---------------------------------------------------------------------------

/** Options for arbChainSpec. */
export interface ChainSpecOptions {
  /** Most buffers in one chain (keep ≤ the queue size). Default 8. */
  maxBuffers?: number;
  /** Most bytes in one buffer. Default 64. */
  maxBufferBytes?: number;
  /** Generate indirect chains too (needs features.indirect). Default false. */
  indirect?: boolean;
}

/** Random well-formed requests for FakeDriver.addChain: at least one buffer, readable first. */
export function arbChainSpec(options: ChainSpecOptions = {}): fc.Arbitrary<Required<Pick<ChainSpec, "readable" | "writable" | "indirect">>> {
  const maxBuffers = options.maxBuffers ?? 8, maxBytes = options.maxBufferBytes ?? 64;
  return fc.record({
    readable: fc.array(fc.uint8Array({ maxLength: maxBytes }), { maxLength: maxBuffers }),
    writable: fc.array(fc.nat(maxBytes), { maxLength: maxBuffers }),
    indirect: options.indirect ? fc.boolean() : fc.constant(false),
  }).filter((s) => s.readable.length + s.writable.length >= 1 && s.readable.length + s.writable.length <= maxBuffers);
}

/** The guest memory map a hostile driver aims at. */
export interface MemorySpace {
  regions: readonly { guestBase: number; size: number }[];
}

/** The memory map of `mem`. */
export const spaceOf = (mem: GuestMemory): MemorySpace => ({ regions: mem.regions.map((r) => ({ guestBase: r.guestBase, size: r.size })) });

/**
 * Guest addresses: mostly inside a region (`insideWeight` to 5 for the rest), often at its
 * edges, sometimes in gaps or absurd (up to 2^64 - 1).
 */
export function arbGuestAddress(space: MemorySpace, len = 0, insideWeight = 12): fc.Arbitrary<bigint> {
  const inside = space.regions.map((r) => fc.integer({ min: r.guestBase, max: r.guestBase + Math.max(0, r.size - len) }).map(BigInt));
  const edges = space.regions.flatMap((r) => [r.guestBase, r.guestBase + r.size]).map((e) => fc.integer({ min: -16, max: 16 }).map((d) => BigInt(Math.max(0, e + d - len))));
  return fc.oneof(
    { weight: insideWeight, arbitrary: fc.oneof(...inside) },
    { weight: 3, arbitrary: fc.oneof(...edges) },
    { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) },
    { weight: 1, arbitrary: fc.constantFrom(2n ** 52n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n, BigInt(Number.MAX_SAFE_INTEGER)) },
  );
}

/** Any descriptor: random address (see arbGuestAddress), length, flags (mostly the defined ones) and next. */
export function arbRawDescriptor(space: MemorySpace, size: number): fc.Arbitrary<RawDescriptor> {
  return fc.record({
    addr: arbGuestAddress(space, 16),
    len: fc.oneof({ weight: 8, arbitrary: fc.nat(64) }, { weight: 1, arbitrary: fc.constantFrom(0, 16, 32, 48, 0x1000, 0xffffffff) }, { weight: 1, arbitrary: fc.nat(0xffffffff) }),
    flags: fc.oneof({ weight: 8, arbitrary: fc.nat(7) }, { weight: 1, arbitrary: fc.nat(0xffff) }),
    next: fc.oneof({ weight: 8, arbitrary: fc.nat(Math.max(0, size - 1)) }, { weight: 1, arbitrary: fc.nat(0xffff) }),
  });
}

/** One step of a hostile scenario: a guest write or a device call. */
export type QueueAction =
  | { kind: "chain"; start: number; buffers: { write: boolean; len: number; addr: bigint }[]; indirect: boolean; tableAddr: bigint }
  | { kind: "desc"; index: number; desc: RawDescriptor }
  | { kind: "table"; addr: bigint; descs: RawDescriptor[] }
  | { kind: "availRing"; slot: number; head: number }
  | { kind: "availIdx"; delta: number; resync: boolean }
  | { kind: "usedEvent"; value: number }
  | { kind: "availFlags"; value: number }
  | { kind: "pop" }
  | { kind: "pushUsed"; pick: number; written: number; raw: boolean }
  | { kind: "deviceWrite"; pick: number; offset: number; length: number }
  | { kind: "needsInterrupt" }
  | { kind: "setNotifications"; enabled: boolean }
  | { kind: "hasAvailable" }
  | { kind: "reset" };

/** A queue set-up and what the guest and device then do. */
export interface QueueScenario {
  layout: QueueLayout;
  maxSize: number;
  features: QueueFeatures;
  /** After pop throws, reset device and driver (as NEEDS_RESET leads to) rather than carry on. */
  resetOnError: boolean;
  actions: QueueAction[];
}

const alignUp = (x: number, a: number): number => Math.ceil(x / a) * a;

/** Layouts: mostly valid rings packed in a random place, sometimes broken in one way. */
function arbLayout(space: MemorySpace): fc.Arbitrary<{ layout: QueueLayout; maxSize: number }> {
  const sizes = fc.oneof({ weight: 10, arbitrary: fc.constantFrom(1, 2, 4, 8, 16, 32, 64) }, { weight: 1, arbitrary: fc.constantFrom(0, 3, 48, 1024, 65536, -4) });
  return fc.record({
    size: sizes,
    maxSize: fc.oneof({ weight: 10, arbitrary: fc.constantFrom(64, 256, 32768) }, { weight: 1, arbitrary: fc.constantFrom(16, 3, 65536) }),
    region: fc.nat(space.regions.length - 1),
    where: fc.double({ min: 0, max: 1, noNaN: true }),
    padA: fc.nat(3), padU: fc.nat(3),
    order: fc.constantFrom("dau", "uad", "aud"),
    breakage: fc.oneof({ weight: 8, arbitrary: fc.constant("none") }, { weight: 1, arbitrary: fc.constantFrom("misalignDesc", "misalignAvail", "misalignUsed", "overlap", "end", "gap", "nan") }),
  }).map(({ size, maxSize, region, where, padA, padU, order, breakage }) => {
    const r = space.regions[region]!;
    const n = Math.max(1, Math.min(Math.abs(size) | 0, 4096));
    const lens = { d: descTableBytes(n), a: availRingBytes(n) + 2 * padA, u: usedRingBytes(n) + 4 * padU };
    const total = lens.d + lens.a + lens.u + 32;
    let at = r.guestBase + alignUp(Math.floor(where * Math.max(0, r.size - total)), 16);
    const pos: Record<string, number> = {};
    for (const k of order) { at = alignUp(at, k === "d" ? 16 : 4); pos[k] = at; at += lens[k as "d" | "a" | "u"]; }
    const layout = { size, descTable: pos.d!, availRing: pos.a! + 2 * padA, usedRing: pos.u! + 4 * padU };
    switch (breakage) {
      case "misalignDesc": layout.descTable += 8; break;
      case "misalignAvail": layout.availRing += 1; break;
      case "misalignUsed": layout.usedRing += 2; break;
      case "overlap": layout.usedRing = alignUp(layout.availRing, 4); break;
      case "end": layout.usedRing = r.guestBase + r.size - usedRingBytes(n) + 4; break;
      case "gap": layout.descTable = r.guestBase + r.size; break;
      case "nan": layout.availRing = Number.NaN; break;
    }
    return { layout, maxSize };
  });
}

/** Random hostile scenarios over `space` with `minActions`..`maxActions` steps. */
export function arbQueueScenario(space: MemorySpace, minActions = 20, maxActions = 200): fc.Arbitrary<QueueScenario> {
  return arbLayout(space).chain(({ layout, maxSize }) => {
    const size = Math.max(1, Math.min(Math.abs(layout.size) | 0, 4096));
    const buffer = fc.record({ write: fc.boolean(), len: fc.nat(48), addr: arbGuestAddress(space, 48, 200) });
    const action: fc.Arbitrary<QueueAction> = fc.oneof(
      { weight: 30, arbitrary: fc.record({ kind: fc.constant("chain" as const), start: fc.nat(size - 1), buffers: fc.array(buffer, { minLength: 1, maxLength: Math.min(size + 1, 6) }), indirect: fc.boolean(), tableAddr: arbGuestAddress(space, 96, 100) }) },
      { weight: 4, arbitrary: fc.record({ kind: fc.constant("desc" as const), index: fc.nat(size - 1), desc: arbRawDescriptor(space, size) }) },
      { weight: 3, arbitrary: fc.record({ kind: fc.constant("table" as const), addr: arbGuestAddress(space, 96), descs: fc.array(arbRawDescriptor(space, 6), { minLength: 1, maxLength: 6 }) }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant("availRing" as const), slot: fc.nat(size - 1), head: fc.oneof(fc.nat(size - 1), fc.nat(0xffff)) }) },
      { weight: 3, arbitrary: fc.record({ kind: fc.constant("availIdx" as const), delta: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: -1, max: 3 }) }, { weight: 1, arbitrary: fc.nat(0xffff) }), resync: fc.boolean() }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant("usedEvent" as const), value: fc.nat(0xffff) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant("availFlags" as const), value: fc.nat(0xffff) }) },
      { weight: 25, arbitrary: fc.constant({ kind: "pop" as const }) },
      { weight: 14, arbitrary: fc.record({ kind: fc.constant("pushUsed" as const), pick: fc.nat(1000), written: fc.nat(300), raw: fc.oneof({ weight: 9, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }) }) },
      { weight: 5, arbitrary: fc.record({ kind: fc.constant("deviceWrite" as const), pick: fc.nat(1000), offset: fc.nat(100), length: fc.nat(200) }) },
      { weight: 5, arbitrary: fc.constant({ kind: "needsInterrupt" as const }) },
      { weight: 3, arbitrary: fc.record({ kind: fc.constant("setNotifications" as const), enabled: fc.boolean() }) },
      { weight: 3, arbitrary: fc.constant({ kind: "hasAvailable" as const }) },
      { weight: 1, arbitrary: fc.constant({ kind: "reset" as const }) },
    );
    return fc.record({
      layout: fc.constant(layout), maxSize: fc.constant(maxSize),
      features: fc.record({ eventIdx: fc.boolean(), indirect: fc.boolean() }),
      resetOnError: fc.boolean(),
      actions: fc.array(action, { minLength: minActions, maxLength: maxActions, size: "max" }),
    });
  });
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

/** What a run of scenarios did, so a test can check the generators reach every path. */
export interface HostileStats {
  scenarios: number;
  actions: number;
  layoutsRefused: number;
  /** Device + driver resets after a refused pop (scenario.resetOnError). */
  resets: number;
  chainsPopped: number;
  usedPushed: number;
  interrupts: number;
  /** QueueError codes seen, with counts. */
  errors: Record<string, number>;
}

export const newHostileStats = (): HostileStats => ({ scenarios: 0, actions: 0, layoutsRefused: 0, resets: 0, chainsPopped: 0, usedPushed: 0, interrupts: 0, errors: {} });

function fail(message: string): never {
  throw new Error(`hostile driver: ${message}`);
}

/** Byte ranges [start, end) of guest memory. */
type Range = [number, number];

function snapshot(mem: GuestMemory): Uint8Array[] {
  return mem.regions.map((r) => r.bytes.slice());
}

/** The first changed address outside `allowed`, or undefined. */
function changedOutside(mem: GuestMemory, before: Uint8Array[], allowed: readonly Range[]): number | undefined {
  for (let i = 0; i < mem.regions.length; i++) {
    const r = mem.regions[i]!, old = before[i]!;
    if (Buffer.compare(r.bytes, old) === 0) continue;
    for (let off = 0; off < r.size; off++) {
      if (r.bytes[off] !== old[off]) {
        const addr = r.guestBase + off;
        if (!allowed.some(([s, e]) => addr >= s && addr < e)) return addr;
      }
    }
  }
  return undefined;
}

const isQueueError = (e: unknown): e is QueueError => e instanceof QueueError;

/**
 * Runs one scenario against a SplitQueue over `real` (zeroed first), checking (a)–(d) from
 * the module comment after every action; throws a plain Error describing the first violation.
 */
export function runQueueScenario(real: GuestMemory, scenario: QueueScenario, stats: HostileStats): void {
  for (const r of real.regions) r.bytes.fill(0);
  stats.scenarios++;
  const rec = recordingMemory(real);
  const noteError = (e: unknown, what: string) => {
    if (!isQueueError(e)) fail(`${what} threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
    stats.errors[e.code] = (stats.errors[e.code] ?? 0) + 1;
  };
  const checkOutside = (what: string) => {
    if (rec.outside.length > 0) fail(`${what} attempted ${JSON.stringify(rec.outside[0])} outside guest memory`);
  };

  let q: SplitQueue;
  let before = snapshot(real);
  stats.actions++;
  try {
    q = new SplitQueue(rec.memory, scenario.layout, scenario.features, scenario.maxSize);
  } catch (e) {
    noteError(e, "constructor");
    checkOutside("constructor");
    if (changedOutside(real, before, []) !== undefined || rec.accesses.some((a) => a.op === "write" && a.method !== "slice")) fail("a refused layout wrote memory");
    stats.layoutsRefused++;
    return;
  }
  checkOutside("constructor");
  const { size, availRing, usedRing } = q.layout;
  const usedRange: Range = [usedRing, usedRing + usedRingBytes(size)];
  // The guest writes its own rings through a FakeDriver's raw accessors (on the real memory).
  const drv = FakeDriver.attach(real, q.layout, q.features);
  const inFlight: DescriptorChain[] = [];
  const toNumber = (a: bigint) => (a <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(a) : -1);

  for (const act of scenario.actions) {
    stats.actions++;
    switch (act.kind) {
      // ---- guest ----
      case "chain": {
        // A well-behaved driver never has more than `size` chains available or in flight.
        if (((drv.availIdx - q.lastAvailIdx) & 0xffff) + q.inFlightCount >= size) continue;
        // Heads still in flight are not reused (hostile reuse comes from "availRing").
        let head = act.start;
        for (let i = 0; i < size && inFlight.some((c) => c.head === head); i++) head = (head + 1) % size;
        const n = act.buffers.length;
        // Readable first, as a well-behaved driver does (the buffers may still be anywhere).
        const bufs = [...act.buffers].sort((x, y) => Number(x.write) - Number(y.write));
        const descs = bufs.map((b, i): RawDescriptor => ({ addr: b.addr, len: b.len, flags: (b.write ? VRING_DESC_F_WRITE : 0) | (i < n - 1 ? VRING_DESC_F_NEXT : 0), next: 0 }));
        const table = toNumber(act.tableAddr) & ~15;
        // Indirect mostly when negotiated (random descriptors cover the other case).
        if (act.indirect && (q.features.indirect || (act.start & 7) === 0) && real.contains(table, 16 * n)) {
          descs.forEach((d, i) => drv.writeDescriptorAt(table + 16 * i, { ...d, next: i + 1 }));
          drv.writeDescriptor(head, { addr: table, len: 16 * n, flags: VRING_DESC_F_INDIRECT, next: 0 });
        } else {
          descs.forEach((d, i) => drv.writeDescriptor((head + i) % size, { ...d, next: (head + i + 1) % size }));
        }
        const idx = drv.availIdx;
        drv.setAvailRing(idx, head);
        drv.setAvailIdx(idx + 1);
        continue;
      }
      case "desc": drv.writeDescriptor(act.index, act.desc); continue;
      case "table": {
        const addr = toNumber(act.addr) & ~15;
        if (real.contains(addr, 16 * act.descs.length)) act.descs.forEach((d, i) => drv.writeDescriptorAt(addr + 16 * i, d));
        continue;
      }
      case "availRing": drv.setAvailRing(act.slot, act.head); continue;
      // A driver that jumped too far may come back (the harness cheats and reads the device's index).
      case "availIdx": drv.setAvailIdx(act.resync ? q.lastAvailIdx + (act.delta & 3) : drv.availIdx + act.delta); continue;
      case "usedEvent": drv.usedEvent = act.value; continue;
      case "availFlags": drv.availFlags = act.value; continue;
      default: break;
    }
    // ---- device ----
    before = snapshot(real);
    rec.clear();
    const availBefore = q.lastAvailIdx, usedBefore = q.usedIdx;
    let allowed: Range[] = [];
    try {
      switch (act.kind) {
        case "pop": {
          allowed = [usedRange];
          const c = q.pop();
          if (c) {
            stats.chainsPopped++;
            checkChain(real, c, size);
            inFlight.push(c);
          }
          break;
        }
        case "pushUsed": {
          allowed = [usedRange];
          const c = inFlight[act.pick % Math.max(1, inFlight.length)];
          const head = act.raw || !c ? act.pick % (size + 2) : c.head;
          const written = act.raw || !c ? act.written : act.written % (c.writableBytes + 1);
          q.pushUsed(head, written);
          const i = inFlight.findIndex((x) => x.head === head);
          if (i < 0) fail(`pushUsed accepted head ${head}, which was not in flight`);
          inFlight.splice(i, 1);
          stats.usedPushed++;
          const slot = usedBefore % size;
          const elem = usedRing + vring_used.ring + slot * vring_used_elem.SIZE;
          if (real.readU32(elem + vring_used_elem.id) !== head || real.readU32(elem + vring_used_elem.len) !== written) fail("used element does not hold what pushUsed was given");
          if (real.readU16(usedRing + 2) !== ((usedBefore + 1) & 0xffff) || q.usedIdx !== real.readU16(usedRing + 2)) fail("used idx was not published");
          break;
        }
        case "deviceWrite": {
          const c = inFlight[act.pick % Math.max(1, inFlight.length)];
          if (!c) break;
          allowed = c.writable.map((b): Range => [b.addr, b.addr + b.len]);
          const n = writeChain(rec.memory, c, act.offset, new Uint8Array(act.length).fill(0xa5));
          if (n !== Math.max(0, Math.min(act.length, c.writableBytes - act.offset))) fail(`writeChain wrote ${n} bytes`);
          for (const a of rec.accesses) {
            if (a.op === "write" && !allowed.some(([s, e]) => a.addr >= s && a.addr + a.len <= e)) fail(`writeChain wrote ${a.addr}+${a.len} outside the chain's writable buffers`);
          }
          break;
        }
        case "needsInterrupt": if (q.needsInterrupt()) stats.interrupts++; break;
        case "setNotifications": allowed = [usedRange]; q.setNotifications(act.enabled); break;
        case "hasAvailable": {
          const has = q.hasAvailable();
          if (has !== (real.readU16(availRing + 2) !== q.lastAvailIdx)) fail("hasAvailable disagrees with avail idx");
          break;
        }
        case "reset": q.reset(); inFlight.length = 0; break;
      }
    } catch (e) {
      if (!isQueueError(e) && e instanceof Error && e.message.startsWith("hostile driver:")) throw e;
      noteError(e, act.kind);
      if (q.lastAvailIdx !== availBefore || q.usedIdx !== usedBefore) fail(`${act.kind} threw ${(e as QueueError).code} but changed the queue's indices`);
      const at = changedOutside(real, before, []);
      if (at !== undefined) fail(`${act.kind} threw ${(e as QueueError).code} but changed guest memory at 0x${at.toString(16)}`);
      checkOutside(act.kind);
      if (act.kind === "pop" && scenario.resetOnError) {
        // NEEDS_RESET: the driver resets the device and sets the queue up again.
        stats.resets++;
        q.reset();
        inFlight.length = 0;
        real.fill(availRing, availRingBytes(size), 0);
        real.fill(usedRing, usedRingBytes(size), 0);
      }
      continue;
    }
    checkOutside(act.kind);
    const at = changedOutside(real, before, allowed);
    if (at !== undefined) fail(`${act.kind} changed guest memory at 0x${at.toString(16)}, outside ${JSON.stringify(allowed)}`);
  }
}

/** (d): every buffer inside memory and non-empty, sums right, at most `size` buffers. */
function checkChain(mem: GuestMemory, c: DescriptorChain, size: number): void {
  let r = 0, w = 0;
  for (const b of c.readable) { if (b.len <= 0 || !mem.contains(b.addr, b.len)) fail(`readable buffer ${b.addr}+${b.len} outside memory`); r += b.len; }
  for (const b of c.writable) { if (b.len <= 0 || !mem.contains(b.addr, b.len)) fail(`writable buffer ${b.addr}+${b.len} outside memory`); w += b.len; }
  if (r !== c.readableBytes || w !== c.writableBytes) fail("chain byte counts do not match its buffers");
  if (c.readable.length + c.writable.length > size) fail(`chain of ${c.readable.length + c.writable.length} buffers in a queue of ${size}`);
  if (c.head < 0 || c.head >= size) fail(`chain head ${c.head} out of range`);
}

/**
 * Splits `data` into non-empty pieces at the given offsets (each taken modulo
 * length + 1; duplicates and the ends ignored), for tests that scatter one
 * request over several descriptors at arbitrary byte boundaries.
 */
export function splitAt(data: Uint8Array, at: readonly number[]): Uint8Array[] {
  const cuts = [...new Set(at.map((a) => a % (data.length + 1)))].filter((c) => c > 0 && c < data.length).sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of [...cuts, data.length]) { out.push(data.subarray(prev, c)); prev = c; }
  return out.filter((p) => p.length > 0);
}
