/**
 * virtio-balloon, traditional memory balloon (virtio 1.x §5.5).
 *
 * The host sets a target (`num_pages` in config space, in 4 KiB balloon pages)
 * and raises a config-change interrupt; the driver inflates (hands pages to the
 * host: their PFNs on the inflate queue) or deflates (takes them back: PFNs on
 * the deflate queue) towards it, and reports the size in `actual`.
 *
 * - Inflate: every PFN is checked to be a whole page of guest RAM, pages
 *   already in the balloon are skipped, and contiguous runs are given back to
 *   the host with one MADV_DONTNEED each (GuestMemory.discard).
 * - Deflate: accepted as is. VIRTIO_BALLOON_F_MUST_TELL_HOST (the driver
 *   deflates before reusing a page) holds trivially: a discarded page is
 *   simply refaulted as a zero page whenever the guest touches it.
 * - Stats (VIRTIO_BALLOON_F_STATS_VQ, §5.5.6.3): the driver posts one buffer
 *   of virtio_balloon_stat entries; the device keeps it, parses it, and gives
 *   it back (requestStats) when it wants fresh values, which the driver then
 *   posts again.
 * - VIRTIO_BALLOON_F_DEFLATE_ON_OOM only changes what the driver does.
 * - Snapshots (balloon-persist.ts): saveState/restoreState carry the target,
 *   the statistics and the buffer held for them, and the inflated pages.
 */
import {
  VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_STATS_VQ,
  VIRTIO_BALLOON_PFN_SHIFT, VIRTIO_BALLOON_S_AVAIL, VIRTIO_BALLOON_S_CACHES,
  VIRTIO_BALLOON_S_HTLB_PGALLOC, VIRTIO_BALLOON_S_HTLB_PGFAIL, VIRTIO_BALLOON_S_MAJFLT,
  VIRTIO_BALLOON_S_MEMFREE, VIRTIO_BALLOON_S_MEMTOT, VIRTIO_BALLOON_S_MINFLT,
  VIRTIO_BALLOON_S_SWAP_IN, VIRTIO_BALLOON_S_SWAP_OUT, VIRTIO_ID_BALLOON, virtio_balloon_config,
  virtio_balloon_stat,
} from "../../linux/abi.generated.js";
import type { GuestMemory, MemoryRegion } from "../../memory/guest-memory.js";
import { dataView, getU16, getU32, getU64, setU32 } from "../../memory/le.js";
import { type BalloonSavedState, checkBalloonSavedState, statsToSaved } from "./balloon-persist.js";
import { readChain } from "./chain-io.js";
import { type ServeResult, serveQueue } from "./queue.js";
import type { BackendRequest, DescriptorChain, VirtioBackend, VirtioDeviceContext } from "./types.js";

/** Bytes per balloon page: PFNs are always in 4 KiB units, whatever the guest's page size (§5.5.6). */
export const BALLOON_PAGE_SIZE = 2 ** VIRTIO_BALLOON_PFN_SHIFT;
/** Queue indices (§5.5.2). */
export const BALLOON_INFLATE_QUEUE = 0;
export const BALLOON_DEFLATE_QUEUE = 1;
export const BALLOON_STATS_QUEUE = 2;
/** Descriptors per queue (QueueNumMax). */
export const BALLOON_QUEUE_SIZE = 256;
/** Most PFNs taken from one inflate/deflate request (Linux sends at most 256), bounding work per request. */
export const BALLOON_MAX_PFNS_PER_REQUEST = 4096;
/**
 * PFNs handled per pass before the device thread looks at its other fds (its
 * control eventfd first): four maximal requests, at most 16384 madvise calls.
 */
export const BALLOON_PFN_BUDGET = 4 * BALLOON_MAX_PFNS_PER_REQUEST;
/** Most stat entries parsed from one stats buffer (Linux sends VIRTIO_BALLOON_S_NR). */
export const BALLOON_MAX_STATS = 64;
const PFN_BYTES = 4;
const BYTES_PER_MIB = 1024 * 1024;

/** The stat tags' names, as linux/virtio_balloon.h's VIRTIO_BALLOON_S_NAMES spells them. */
export const BALLOON_STAT_NAMES: ReadonlyMap<number, string> = new Map([
  [VIRTIO_BALLOON_S_SWAP_IN, "swap-in"],
  [VIRTIO_BALLOON_S_SWAP_OUT, "swap-out"],
  [VIRTIO_BALLOON_S_MAJFLT, "major-faults"],
  [VIRTIO_BALLOON_S_MINFLT, "minor-faults"],
  [VIRTIO_BALLOON_S_MEMFREE, "free-memory"],
  [VIRTIO_BALLOON_S_MEMTOT, "total-memory"],
  [VIRTIO_BALLOON_S_AVAIL, "available-memory"],
  [VIRTIO_BALLOON_S_CACHES, "disk-caches"],
  [VIRTIO_BALLOON_S_HTLB_PGALLOC, "hugetlb-allocations"],
  [VIRTIO_BALLOON_S_HTLB_PGFAIL, "hugetlb-failures"],
]);

/** Options (JSON): the initial target size of the balloon. */
export interface BalloonOptions {
  /** MiB the guest should give back (default 0). */
  targetMib?: number;
}

/** A host-side misuse of the balloon (bad target). */
export class BalloonError extends Error {
  readonly code: "EBALLOONTARGET" | "EBALLOONTIMEOUT";
  constructor(code: BalloonError["code"], message: string) {
    super(message);
    this.name = "BalloonError";
    this.code = code;
  }
}

/** The guest's latest memory statistics. Values are bytes, or counts for faults and hugetlb. */
export interface BalloonStats {
  /** How many stats buffers the driver has sent. */
  updates: number;
  /** Value by tag (VIRTIO_BALLOON_S_*); later entries of the same tag win. */
  byTag: ReadonlyMap<number, bigint>;
  /** Value by the header's name ("free-memory"...), unknown tags as "tag-<n>". */
  byName: Readonly<Record<string, bigint>>;
}

/** Counters of what the device did. */
export interface BalloonMetrics {
  /** Pages given back to the host (MADV_DONTNEED). */
  inflatedPages: number;
  deflatedPages: number;
  /** PFNs outside guest RAM, repeated, or malformed requests. */
  badPfns: number;
  discardCalls: number;
  /** discard (madvise) failures: the pages stay in the guest's memory. */
  hostErrors: number;
  badRequests: number;
}

/** The balloon as the host sees it: an answer to the "info" and "setTarget" requests. */
export interface BalloonInfo {
  /** What the host asked for (config `num_pages`), in MiB. */
  targetMib: number;
  /** What the driver reports it holds (config `actual`), in 4 KiB balloon pages and in MiB. */
  actualPages: number;
  actualMib: number;
  /** The guest's latest statistics by name (bytes, or counts for faults), and how many reports came. */
  stats: Record<string, number>;
  statsUpdates: number;
  metrics: BalloonMetrics;
}

/** Requests the balloon answers (VirtioBackend.control). */
export const BALLOON_REQUEST_INFO = "info";
export const BALLOON_REQUEST_SET_TARGET = "setTarget";

/** Which balloon pages of each region are currently inflated. */
class PageBitmap {
  private readonly bits = new Map<MemoryRegion, Uint8Array>();

  private locate(mem: GuestMemory, addr: number): [Uint8Array, number] | undefined {
    const region = mem.findRegion(addr, BALLOON_PAGE_SIZE);
    if (!region || (addr - region.guestBase) % BALLOON_PAGE_SIZE !== 0) return undefined;
    let bits = this.bits.get(region);
    if (!bits) {
      bits = new Uint8Array(Math.ceil(region.size / BALLOON_PAGE_SIZE / 8));
      this.bits.set(region, bits);
    }
    return [bits, (addr - region.guestBase) / BALLOON_PAGE_SIZE];
  }

  /** Sets the page's bit; returns its previous value, or undefined when `addr` is not a page of guest RAM. */
  set(mem: GuestMemory, addr: number, value: boolean): boolean | undefined {
    const at = this.locate(mem, addr);
    if (!at) return undefined;
    const [bits, page] = at;
    const mask = 1 << (page & 7), byte = page >>> 3;
    const old = (bits[byte]! & mask) !== 0;
    bits[byte] = value ? bits[byte]! | mask : bits[byte]! & ~mask;
    return old;
  }

  clear(): void {
    this.bits.clear();
  }

  /** The inflated pages as runs [guest address, pages], by region and address. */
  runs(): [number, number][] {
    const out: [number, number][] = [];
    const regions = [...this.bits].sort(([a], [b]) => a.guestBase - b.guestBase);
    for (const [region, bits] of regions) {
      let start = -1;
      const pages = region.size / BALLOON_PAGE_SIZE;
      for (let page = 0; page <= pages; page++) {
        const on = page < pages && (bits[page >>> 3]! & (1 << (page & 7))) !== 0;
        if (on && start < 0) start = page;
        if (!on && start >= 0) {
          out.push([region.guestBase + start * BALLOON_PAGE_SIZE, page - start]);
          start = -1;
        }
        // Skip empty bytes quickly (most of a region is never ballooned).
        if (start < 0 && (page & 7) === 0 && bits[page >>> 3] === 0) page += 7;
      }
    }
    return out;
  }
}

/** The virtio-balloon device. */
export class VirtioBalloon implements VirtioBackend {
  readonly deviceId = VIRTIO_ID_BALLOON;
  readonly queueMaxSizes = [BALLOON_QUEUE_SIZE, BALLOON_QUEUE_SIZE, BALLOON_QUEUE_SIZE] as const;
  readonly deviceFeatures =
    (1n << BigInt(VIRTIO_BALLOON_F_MUST_TELL_HOST)) | (1n << BigInt(VIRTIO_BALLOON_F_STATS_VQ)) |
    (1n << BigInt(VIRTIO_BALLOON_F_DEFLATE_ON_OOM));
  readonly metrics: BalloonMetrics = { inflatedPages: 0, deflatedPages: 0, badPfns: 0, discardCalls: 0, hostErrors: 0, badRequests: 0 };
  private ctx: VirtioDeviceContext | undefined;
  private targetPages: number;
  private lastActualPages = 0;
  private readonly inflated = new PageBitmap();
  /** The stats buffer the device holds until it wants fresh stats. */
  private statsHead: number | undefined;
  private latest: BalloonStats = { updates: 0, byTag: new Map(), byName: {} };

  constructor(options: BalloonOptions = {}) {
    this.targetPages = VirtioBalloon.pagesOf(options.targetMib ?? 0);
  }

  private static pagesOf(mib: number): number {
    if (!Number.isSafeInteger(mib) || mib < 0) {
      throw new BalloonError("EBALLOONTARGET", `Cannot set balloon target: ${mib} MiB is not a whole number of MiB`);
    }
    return (mib * BYTES_PER_MIB) / BALLOON_PAGE_SIZE;
  }

  /** The target in balloon pages (config `num_pages`). */
  get targetPageCount(): number {
    return this.targetPages;
  }

  /** The balloon's size as last reported by the driver (config `actual`), in pages. */
  get actualPages(): number {
    if (this.ctx) this.lastActualPages = getU32(dataView(this.ctx.config), virtio_balloon_config.actual);
    return this.lastActualPages;
  }

  /** Asks the guest to give back `mib` MiB (0 deflates completely): updates `num_pages` and interrupts. */
  setTargetMib(mib: number): void {
    this.setTargetPages(VirtioBalloon.pagesOf(mib));
  }

  /** Same, in balloon pages. Throws BalloonError when the target exceeds guest RAM or a u32. */
  setTargetPages(pages: number): void {
    const limit = this.ctx ? this.ctx.memory.totalBytes / BALLOON_PAGE_SIZE : 0xffffffff;
    if (!Number.isSafeInteger(pages) || pages < 0 || pages > Math.min(limit, 0xffffffff)) {
      throw new BalloonError("EBALLOONTARGET", `Cannot set balloon target: ${pages} pages is more than the guest's ${limit} pages`);
    }
    this.targetPages = pages;
    if (!this.ctx) return; // written to config space on activation
    setU32(dataView(this.ctx.config), virtio_balloon_config.num_pages, pages);
    this.ctx.notifyConfigChange();
  }

  /** The guest's latest statistics (empty until the driver sent some). */
  get stats(): BalloonStats {
    return this.latest;
  }

  /**
   * Gives the held stats buffer back so the driver refills it with fresh
   * values (§5.5.6.3). False when the device holds none (STATS_VQ not
   * negotiated, or a request already outstanding).
   */
  requestStats(): boolean {
    const ctx = this.ctx, head = this.statsHead;
    const q = ctx?.queues[BALLOON_STATS_QUEUE];
    if (!ctx || !q || head === undefined) return false;
    this.statsHead = undefined;
    try {
      q.pushUsed(head, 0);
    } catch (e) {
      this.ctx = undefined;
      ctx.fail(`virtio-balloon: ${(e as Error).message}`);
      return false;
    }
    ctx.notifyUsed(BALLOON_STATS_QUEUE);
    return true;
  }

  /** The host's view of the balloon. */
  info(): BalloonInfo {
    const actualPages = this.actualPages;
    const stats: Record<string, number> = {};
    for (const [name, value] of Object.entries(this.latest.byName)) stats[name] = Number(value);
    return {
      targetMib: (this.targetPages * BALLOON_PAGE_SIZE) / BYTES_PER_MIB,
      actualPages, actualMib: (actualPages * BALLOON_PAGE_SIZE) / BYTES_PER_MIB,
      stats, statsUpdates: this.latest.updates, metrics: { ...this.metrics },
    };
  }

  /**
   * Host-side requests: "setTarget" {targetMib} sets a new target and answers
   * the info; "info" answers it and asks the driver for fresh statistics, so
   * that the next "info" carries them.
   */
  control(request: BackendRequest): BalloonInfo {
    switch (request.op) {
      case BALLOON_REQUEST_SET_TARGET: {
        const mib = (request.args as { targetMib?: unknown } | undefined)?.targetMib;
        if (typeof mib !== "number") throw new BalloonError("EBALLOONTARGET", "Cannot set balloon target: targetMib must be a number");
        this.setTargetMib(mib);
        return this.info();
      }
      case BALLOON_REQUEST_INFO: {
        const info = this.info();
        this.requestStats();
        return info;
      }
      default:
        throw new Error(`unknown request '${request.op}'`);
    }
  }

  initialConfig(): Uint8Array {
    const config = new Uint8Array(virtio_balloon_config.SIZE);
    setU32(dataView(config), virtio_balloon_config.num_pages, this.targetPages);
    return config;
  }

  /** Only `actual` is the driver's to write (§5.5.4). */
  configWritable(offset: number, length: number): boolean {
    return offset >= virtio_balloon_config.actual && offset + length <= virtio_balloon_config.actual + 4;
  }

  onConfigWrite(): void {
    void this.actualPages;
  }

  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
    this.statsHead = undefined;
    const v = dataView(ctx.config);
    if (getU32(v, virtio_balloon_config.num_pages) !== this.targetPages) {
      setU32(v, virtio_balloon_config.num_pages, this.targetPages);
      ctx.notifyConfigChange();
    }
  }

  onNotify(queue: number): void {
    const ctx = this.ctx;
    const q = ctx?.queues[queue];
    if (!ctx || !q) return;
    if (queue === BALLOON_STATS_QUEUE && !(ctx.features & (1n << BigInt(VIRTIO_BALLOON_F_STATS_VQ)))) return;
    let pushed = false;
    let served: ServeResult;
    try {
      // Budgeted in PFNs (a request costs its PFNs): a guest re-adding requests from another
      // vCPU cannot keep the device thread from setTarget/info, reset or stop.
      served = serveQueue(q, BALLOON_PFN_BUDGET, (chain) => {
        if (queue === BALLOON_STATS_QUEUE) {
          this.guarded(ctx, () => this.takeStats(ctx, chain));
          // Keep the newest buffer; an older one (a driver posting two) goes straight back.
          if (this.statsHead !== undefined) { q.pushUsed(this.statsHead, 0); pushed = true; }
          this.statsHead = chain.head;
          return 1;
        }
        let pfns = 0;
        this.guarded(ctx, () => { pfns = this.movePages(ctx, chain, queue === BALLOON_INFLATE_QUEUE); });
        q.pushUsed(chain.head, 0);
        pushed = true;
        return pfns;
      });
    } catch (e) {
      // Only the ring itself throws here (QueueError): the driver broke it.
      this.ctx = undefined;
      ctx.fail(`virtio-balloon: ${(e as Error).message}`);
      return;
    }
    if (pushed) ctx.notifyUsed(queue);
    if (served.more) ctx.kick(queue);
  }

  /** The balloon's record for a snapshot (balloon-persist.ts). */
  saveState(): BalloonSavedState {
    return {
      targetPages: this.targetPages, actualPages: this.actualPages, statsHead: this.statsHead ?? null,
      statsUpdates: this.latest.updates, stats: statsToSaved(this.latest.byTag), inflated: this.inflated.runs(),
    };
  }

  /**
   * Takes up a saved balloon (see VirtioBackend.restoreState): its target and
   * statistics, and with `ctx` its session: the inflated pages and the held
   * statistics buffer. Config space came with the registers: nothing is
   * written or signalled to the guest.
   */
  restoreState(state: unknown, ctx: VirtioDeviceContext | undefined): void {
    const s = checkBalloonSavedState(state, {
      queueSize: BALLOON_QUEUE_SIZE, maxStats: BALLOON_MAX_STATS, pageBytes: BALLOON_PAGE_SIZE, memory: ctx?.memory,
    });
    if (ctx && s.targetPages > ctx.memory.totalBytes / BALLOON_PAGE_SIZE) {
      throw new BalloonError("EBALLOONTARGET", `Cannot restore balloon: its target of ${s.targetPages} pages is more than the guest's memory`);
    }
    this.targetPages = s.targetPages;
    this.lastActualPages = s.actualPages;
    const byName: Record<string, bigint> = {};
    for (const [tag, value] of s.stats) byName[BALLOON_STAT_NAMES.get(tag) ?? `tag-${tag}`] = value;
    this.latest = { updates: s.statsUpdates, byTag: s.stats, byName };
    if (!ctx) return;
    this.ctx = ctx;
    this.statsHead = s.statsHead;
    for (const [addr, pages] of s.inflated) {
      for (let i = 0; i < pages; i++) this.inflated.set(ctx.memory, addr + i * BALLOON_PAGE_SIZE, true);
    }
  }

  reset(): void {
    this.ctx = undefined;
    this.statsHead = undefined;
    this.inflated.clear();
  }

  /** Inflates (discarding newly ballooned pages) or deflates the PFNs of one request; returns the PFNs looked at. */
  private movePages(ctx: VirtioDeviceContext, chain: DescriptorChain, inflate: boolean): number {
    const name = inflate ? "inflate" : "deflate";
    if (chain.readableBytes % PFN_BYTES !== 0 || chain.writableBytes !== 0) {
      this.badRequest(ctx, `${name} request of ${chain.readableBytes} readable and ${chain.writableBytes} writable bytes`);
    }
    const count = Math.min(Math.floor(chain.readableBytes / PFN_BYTES), BALLOON_MAX_PFNS_PER_REQUEST);
    if (count < chain.readableBytes / PFN_BYTES) this.badRequest(ctx, `${name} request of more than ${BALLOON_MAX_PFNS_PER_REQUEST} PFNs truncated`);
    const raw = dataView(readChain(ctx.memory, chain, 0, count * PFN_BYTES));
    const fresh: number[] = [];
    let bad = 0;
    for (let i = 0; i < count; i++) {
      const addr = getU32(raw, i * PFN_BYTES) * BALLOON_PAGE_SIZE;
      const was = this.inflated.set(ctx.memory, addr, inflate);
      if (was === undefined || (inflate && was)) { bad++; continue; }
      if (inflate) fresh.push(addr);
      else this.metrics.deflatedPages++;
    }
    if (bad > 0) {
      this.metrics.badPfns += bad;
      ctx.guestFault(`virtio-balloon: ${bad} of ${count} ${name} PFNs outside guest RAM${inflate ? " or already inflated" : ""}`);
    }
    if (inflate) this.discardRuns(ctx, fresh);
    return count;
  }

  /** Gives pages back to the host, one madvise per run of contiguous pages in one region. */
  private discardRuns(ctx: VirtioDeviceContext, pages: number[]): void {
    pages.sort((a, b) => a - b);
    for (let i = 0; i < pages.length;) {
      const start = pages[i]!;
      let len = BALLOON_PAGE_SIZE;
      for (i++; i < pages.length && pages[i] === start + len && ctx.memory.contains(start, len + BALLOON_PAGE_SIZE); i++) {
        len += BALLOON_PAGE_SIZE;
      }
      try {
        ctx.memory.discard(start, len);
        this.metrics.discardCalls++;
        this.metrics.inflatedPages += len / BALLOON_PAGE_SIZE;
      } catch {
        this.metrics.hostErrors++;
      }
    }
  }

  /** Parses a stats buffer (an array of packed virtio_balloon_stat). */
  private takeStats(ctx: VirtioDeviceContext, chain: DescriptorChain): void {
    const size = virtio_balloon_stat.SIZE;
    if (chain.readableBytes % size !== 0 || chain.readableBytes / size > BALLOON_MAX_STATS) {
      this.badRequest(ctx, `stats buffer of ${chain.readableBytes} bytes`);
    }
    const count = Math.min(Math.floor(chain.readableBytes / size), BALLOON_MAX_STATS);
    const raw = dataView(readChain(ctx.memory, chain, 0, count * size));
    const byTag = new Map<number, bigint>();
    const byName: Record<string, bigint> = {};
    for (let i = 0; i < count; i++) {
      const tag = getU16(raw, i * size + virtio_balloon_stat.tag);
      const value = getU64(raw, i * size + virtio_balloon_stat.val);
      byTag.set(tag, value);
      byName[BALLOON_STAT_NAMES.get(tag) ?? `tag-${tag}`] = value;
    }
    this.latest = { updates: this.latest.updates + 1, byTag, byName };
  }

  /** Runs one request's work; anything it throws fails that request, never the device. */
  private guarded(ctx: VirtioDeviceContext, work: () => void): void {
    try {
      work();
    } catch (e) {
      this.badRequest(ctx, `request failed: ${(e as Error).message}`);
    }
  }

  private badRequest(ctx: VirtioDeviceContext, why: string): void {
    this.metrics.badRequests++;
    ctx.guestFault(`virtio-balloon: ${why}`);
  }
}

/** The device thread's entry point. */
export function createBackend(options: BalloonOptions = {}): VirtioBackend {
  return new VirtioBalloon(options);
}
