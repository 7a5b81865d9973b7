/**
 * virtio-blk (virtio 1.x §5.2) over a raw image file, one request queue.
 *
 * A request (§5.2.6) is one descriptor chain: a device-readable
 * virtio_blk_outhdr {type, ioprio, sector}, then the data (device-readable
 * for OUT, DISCARD and WRITE_ZEROES; device-writable for IN and GET_ID), then
 * one device-writable status byte, the chain's last byte. With
 * VIRTIO_F_VERSION_1 the driver may split these across descriptors any way it
 * likes (§2.6.4 "Message Framing"), so the header and status are located by
 * byte position, never by descriptor.
 *
 * Every request is checked before the file is touched: a malformed request,
 * one outside the disk, or a write to a read-only drive completes with
 * VIRTIO_BLK_S_IOERR (and is counted as a guest fault); an unknown type with
 * VIRTIO_BLK_S_UNSUPP. Host I/O errors (EIO, ENOSPC...) also complete with
 * VIRTIO_BLK_S_IOERR; they are counted in `metrics`, never thrown.
 *
 * Data moves with pread/pwrite straight between the file and guest memory.
 *
 * Rate limiting (Firecracker's drive `rate_limiter`, rate-limiter.ts): each
 * request costs one op, and an IN or OUT request also its data bytes. A
 * request the limiter refuses goes back to the ring (nothing lost or
 * reordered) and the device takes no more until its timer fires, when the
 * bucket holds that request; the guest's requests wait in its own ring, so
 * nothing grows on the host. Resets and host requests are served meanwhile.
 *
 * Write cache (§5.2.6.2): flint always offers VIRTIO_BLK_F_FLUSH. A driver
 * that negotiates it gets a write-back cache (writes land in the page cache,
 * FLUSH makes them durable); a driver that does not must get a write-through
 * one — "a write becomes stable once it is completed and neither
 * VIRTIO_BLK_F_CONFIG_WCE nor VIRTIO_BLK_F_FLUSH were negotiated, but
 * VIRTIO_BLK_F_FLUSH was offered" — so then every OUT and WRITE_ZEROES is
 * followed by fdatasync before it completes (as QEMU does).
 *
 * Snapshots: saveState/restoreState carry the rate limiter and the
 * WRITE_ZEROES requests still being written (block-persist.ts).
 */
import { closeSync, fstatSync, openSync } from "node:fs";
import { performance } from "node:perf_hooks";
import {
  BLKGETSIZE64, EINTR, EIO, EOPNOTSUPP, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
  VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, VIRTIO_ID_BLOCK, virtio_blk_config,
  virtio_blk_discard_write_zeroes, virtio_blk_outhdr,
} from "../../linux/abi.generated.js";
import type { GuestMemory } from "../../memory/guest-memory.js";
import { dataView, getU32, getU64, setU32, setU64, setU8 } from "../../memory/le.js";
import { errnoName, sys } from "../../sys/native.js";
import { type BlockSavedState, checkBlockSavedState } from "./block-persist.js";
import { readChain, writeChain } from "./chain-io.js";
import { type ServeResult, serveQueue } from "./queue.js";
import {
  RATE_LIMITER_REQUEST_INFO, RATE_LIMITER_REQUEST_UPDATE, RateLimiter, type RateLimiterConfig, rateLimiterRequest,
} from "./rate-limiter.js";
import { u64ToSaved } from "./saved-state.js";
import type { BackendRequest, DescriptorChain, GuestBuffer, VirtioBackend, VirtioDeviceContext, VirtQueue } from "./types.js";

/**
 * Bytes per sector. virtio-blk counts capacity, request sectors and discard
 * ranges in 512-byte units whatever the block size (§5.2.4, §5.2.6);
 * linux/virtio_blk.h states the unit only in comments, so it has no macro.
 */
export const SECTOR_SIZE = 512;
/** Descriptors per queue (QueueNumMax). */
export const BLOCK_QUEUE_SIZE = 256;
/** Data segments per request: the queue size less header and status (what Linux and QEMU advertise). */
export const BLOCK_SEG_MAX = BLOCK_QUEUE_SIZE - 2;
/**
 * Requests served per kick before the completions are signalled and the
 * device thread looks at its other fds (then it comes back by itself).
 */
export const BLOCK_SERVE_BUDGET = 64;
/** Largest DISCARD / WRITE_ZEROES segment: 1 GiB, so one request cannot stall the device thread for long. */
export const BLOCK_MAX_DISCARD_SECTORS = (1 << 30) / SECTOR_SIZE;
/** Segments per DISCARD / WRITE_ZEROES request. */
export const BLOCK_MAX_DISCARD_SEG = 8;
/** Discard granularity: a 4 KiB filesystem block, in sectors. */
export const BLOCK_DISCARD_SECTOR_ALIGNMENT = 4096 / SECTOR_SIZE;
/** Size of the zero buffer used when the filesystem cannot FALLOC_FL_ZERO_RANGE. */
const ZERO_CHUNK_BYTES = 1 << 20;
/**
 * Zeros written per pass when the file system cannot zero a range itself
 * (no FALLOC_FL_ZERO_RANGE, e.g. tmpfs): a WRITE_ZEROES of up to 8 GiB
 * (BLOCK_MAX_DISCARD_SEG segments of 1 GiB) then completes over many passes,
 * while other requests and the device thread's control requests are served.
 */
export const BLOCK_ZERO_BYTES_PER_PASS = 8 * ZERO_CHUNK_BYTES;

/** How to attach a drive (JSON-serialisable: it is posted to the device thread). */
export interface BlockOptions {
  /** Path of a raw disk image: a regular file, or a host block device (a volume, a device-mapper target). */
  path: string;
  /** Offer VIRTIO_BLK_F_RO and refuse every write. */
  readOnly: boolean;
  /** GET_ID serial (ASCII, at most VIRTIO_BLK_ID_BYTES); default derived from the file's device and inode. */
  id?: string;
  /** Limits the drive's I/O (Firecracker's drive rate_limiter); none when absent. */
  rateLimiter?: RateLimiterConfig;
}

/** Why a drive could not be attached. */
export class BlockError extends Error {
  readonly code: "EBLKOPEN" | "EBLKCONFIG" | "EBLKBUSY";
  constructor(code: BlockError["code"], message: string) {
    super(message);
    this.name = "BlockError";
    this.code = code;
  }
}

/** Counters of what the device did (host errors are counted, never thrown). */
export interface BlockMetrics {
  requests: number;
  readBytes: number;
  writtenBytes: number;
  flushes: number;
  /** Requests failed by a host I/O error (EIO, ENOSPC...). */
  hostErrors: number;
  /** errno name of the latest host error. */
  lastHostError?: string;
  /** Malformed, out-of-range or forbidden requests (VIRTIO_BLK_S_IOERR). */
  badRequests: number;
  /** Unknown request types (VIRTIO_BLK_S_UNSUPP). */
  unsupported: number;
  /** fdatasyncs after writes, because the driver did not negotiate FLUSH (write-through). */
  writeThroughSyncs: number;
}

/** A byte range of guest memory. */
type Span = GuestBuffer;

/** The spans covering bytes [skip, skip+take) of a list of buffers (for pread/pwrite straight into guest memory). */
function spans(bufs: readonly GuestBuffer[], skip: number, take: number): Span[] {
  const out: Span[] = [];
  for (const b of bufs) {
    if (take === 0) break;
    if (skip >= b.len) { skip -= b.len; continue; }
    const len = Math.min(b.len - skip, take);
    out.push({ addr: b.addr + skip, len });
    take -= len;
    skip = 0;
  }
  return out;
}

/** Result of moving bytes between the file and guest memory. */
interface Transfer {
  bytes: number;
  /** 0, or the errno that stopped the transfer. */
  errno: number;
}

/** One validated DISCARD / WRITE_ZEROES segment, in bytes. */
interface ZeroRange {
  offset: number;
  length: number;
  unmap: boolean;
}

/** A WRITE_ZEROES request whose zeros are written over several passes (BLOCK_ZERO_BYTES_PER_PASS). */
interface ZeroJob {
  head: number;
  statusAddr: number;
  /** What is left to write, first range first (its offset advances). */
  ranges: ZeroRange[];
}

/** handle()'s answer for a request that completes later (a ZeroJob). */
const DEFERRED = -1;
/** zeroInPlace()'s answer when the file system cannot zero the range itself. */
const ZERO_BY_WRITING = 1;

/** The virtio-blk device. */
/** BackendRequest op: a new (or re-read) backing file, args `{ path }`; answers `{ capacitySectors }`. */
export const BLOCK_REQUEST_UPDATE_BACKING = "update-backing";

export class VirtioBlock implements VirtioBackend {
  readonly deviceId = VIRTIO_ID_BLOCK;
  readonly queueMaxSizes = [BLOCK_QUEUE_SIZE] as const;
  readonly deviceFeatures: bigint;
  readonly readOnly: boolean;
  /** Disk size in sectors (the image's size rounded down to a sector); changes with a new backing file. */
  capacitySectors: bigint;
  readonly metrics: BlockMetrics = {
    requests: 0, readBytes: 0, writtenBytes: 0, flushes: 0, hostErrors: 0, badRequests: 0, unsupported: 0,
    writeThroughSyncs: 0,
  };
  private fd: number;
  private path: string;
  private readonly id: Uint8Array;
  private ctx: VirtioDeviceContext | undefined;
  private closed = false;
  private zeros: Uint8Array | undefined;
  /** Make every write durable before completing it (the driver did not negotiate FLUSH). */
  private writeThrough = false;
  /** WRITE_ZEROES requests being written out, oldest first (at most one per descriptor: bounded by the queue). */
  private zeroJobs: ZeroJob[] = [];
  /** Ranges serve() found it must write zeros to, for handle() to make a job of. */
  private deferredRanges: ZeroRange[] | undefined;
  /** The drive's limiter; it outlives resets, so a reset never buys a guest a fresh budget. */
  readonly limiter: RateLimiter;

  /** Opens the image (in the device thread: the fd belongs to it). */
  constructor(options: BlockOptions) {
    this.readOnly = options.readOnly;
    this.limiter = new RateLimiter(options.rateLimiter, () => performance.now());
    const { fd, sectors, dev, ino } = VirtioBlock.open(options.path, options.readOnly);
    try {
      this.capacitySectors = sectors;
      this.id = VirtioBlock.makeId(options, dev, ino);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    this.fd = fd;
    this.path = options.path;
    let features = (1n << BigInt(VIRTIO_BLK_F_FLUSH)) | (1n << BigInt(VIRTIO_BLK_F_BLK_SIZE)) |
      (1n << BigInt(VIRTIO_BLK_F_SEG_MAX));
    // Discarding or zeroing a read-only disk can only fail: offer them on writable drives only.
    features |= options.readOnly
      ? 1n << BigInt(VIRTIO_BLK_F_RO)
      : (1n << BigInt(VIRTIO_BLK_F_DISCARD)) | (1n << BigInt(VIRTIO_BLK_F_WRITE_ZEROES));
    this.deviceFeatures = features;
  }

  /** Opens an image as the device uses it: its fd, its size in whole sectors, and its identity. */
  private static open(path: string, readOnly: boolean): { fd: number; sectors: bigint; dev: bigint; ino: bigint } {
    let fd: number;
    try {
      fd = openSync(path, readOnly ? "r" : "r+");
    } catch (e) {
      throw new BlockError("EBLKOPEN", `Cannot attach drive: file '${path}' cannot be opened (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    try {
      const st = fstatSync(fd, { bigint: true });
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new BlockError("EBLKOPEN", `Cannot attach drive: '${path}' is neither a regular file nor a block device`);
      }
      const bytes = st.isFile() ? st.size : VirtioBlock.blockDeviceBytes(fd, path);
      return { fd, sectors: bytes / BigInt(SECTOR_SIZE), dev: st.dev, ino: st.ino };
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /**
   * A new backing file, or the same one again after it grew or shrank
   * (Firecracker's PATCH /drives/{id} with path_on_host): writes to the old
   * one are made durable and it is closed, the new one is opened in the same
   * mode, and the guest learns the new capacity through config space and a
   * config-change interrupt (virtio 1.2 §5.2.4 capacity, §4.2.2.1
   * InterruptStatus bit 1). Requests are served synchronously on this
   * thread, so none is in flight; WRITE_ZEROES still being written refuse the
   * swap (EBLKBUSY) rather than land on the new file.
   */
  private updateBacking(path: unknown): { capacitySectors: number } {
    if (typeof path !== "string" || path === "") throw new BlockError("EBLKCONFIG", "Cannot update drive: a path to the new backing file is required");
    if (this.zeroJobs.length > 0) throw new BlockError("EBLKBUSY", "Cannot update drive: it is still writing zeros for the guest; try again");
    const next = VirtioBlock.open(path, this.readOnly);
    const r = sys.fdatasync(this.fd);
    if (r < 0) this.hostError(r, "the flush before a new backing file");
    closeSync(this.fd);
    this.fd = next.fd;
    this.path = path;
    this.capacitySectors = next.sectors;
    if (this.ctx) {
      setU64(dataView(this.ctx.config), virtio_blk_config.capacity, next.sectors);
      this.ctx.notifyConfigChange();
    }
    return { capacitySectors: Number(next.sectors) };
  }

  /** A block device's size (fstat reports 0 for it), from the BLKGETSIZE64 ioctl. */
  private static blockDeviceBytes(fd: number, path: string): bigint {
    const size = new BigUint64Array(1);
    const r = sys.ioctl(fd, BLKGETSIZE64, size);
    if (r < 0) throw new BlockError("EBLKOPEN", `Cannot attach drive: the size of block device '${path}' is unknown (${errnoName(-r)})`);
    return size[0]!;
  }

  private static makeId(options: BlockOptions, dev: bigint, ino: bigint): Uint8Array {
    const text = options.id ?? `flint-${dev.toString(16)}-${ino.toString(16)}`.slice(0, VIRTIO_BLK_ID_BYTES);
    if (text.length > VIRTIO_BLK_ID_BYTES || !/^[\x20-\x7e]*$/.test(text)) {
      throw new BlockError("EBLKCONFIG", `Cannot attach drive: id '${text}' must be at most ${VIRTIO_BLK_ID_BYTES} printable ASCII characters`);
    }
    // Shorter ids are NUL-padded; a 20-byte id has no terminator (§5.2.6).
    const id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    id.set(new TextEncoder().encode(text));
    return id;
  }

  /** The GET_ID serial (VIRTIO_BLK_ID_BYTES, NUL-padded). */
  get serial(): Uint8Array {
    return this.id.slice();
  }

  initialConfig(): Uint8Array {
    const config = new Uint8Array(virtio_blk_config.SIZE);
    const v = dataView(config);
    setU64(v, virtio_blk_config.capacity, this.capacitySectors);
    setU32(v, virtio_blk_config.seg_max, BLOCK_SEG_MAX);
    setU32(v, virtio_blk_config.blk_size, SECTOR_SIZE);
    if (!this.readOnly) {
      setU32(v, virtio_blk_config.max_discard_sectors, BLOCK_MAX_DISCARD_SECTORS);
      setU32(v, virtio_blk_config.max_discard_seg, BLOCK_MAX_DISCARD_SEG);
      setU32(v, virtio_blk_config.discard_sector_alignment, BLOCK_DISCARD_SECTOR_ALIGNMENT);
      setU32(v, virtio_blk_config.max_write_zeroes_sectors, BLOCK_MAX_DISCARD_SECTORS);
      setU32(v, virtio_blk_config.max_write_zeroes_seg, BLOCK_MAX_DISCARD_SEG);
      setU8(v, virtio_blk_config.write_zeroes_may_unmap, 1);
    }
    return config;
  }

  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
    // FLUSH is offered; without it negotiated, completed writes must be stable (module comment).
    this.writeThrough = (ctx.features & (1n << BigInt(VIRTIO_BLK_F_FLUSH))) === 0n;
  }

  onNotify(queue: number): void {
    const ctx = this.ctx;
    const q = ctx?.queues[queue];
    if (!ctx || !q || queue !== 0 || this.closed) return;
    let served: ServeResult = { served: 0, more: false, refused: false };
    let completed = 0;
    const zeroBudget = { bytes: BLOCK_ZERO_BYTES_PER_PASS };
    const limiter = this.limiter;
    // A throttled device leaves new requests in the ring until its timer (see the module comment).
    const blocked = limiter.blockedForMs() > 0;
    try {
      // Older work first: zeros still owed to earlier WRITE_ZEROES requests; then new requests,
      // and with what is left of this pass's zero budget, the zeros they asked for.
      completed = this.stepZeroJobs(ctx, q, zeroBudget);
      if (!blocked) {
        served = serveQueue(q, BLOCK_SERVE_BUDGET, (chain) => {
          if (!limiter.unlimited && !limiter.consumeOp(this.dataBytes(ctx, chain))) return false;
          const used = this.handle(ctx, chain);
          if (used !== DEFERRED) q.pushUsed(chain.head, used);
        });
      }
      completed += this.stepZeroJobs(ctx, q, zeroBudget);
    } catch (e) {
      // Only the ring itself throws here (QueueError): the driver broke it.
      this.ctx = undefined;
      this.zeroJobs = [];
      ctx.fail(`virtio-blk: ${(e as Error).message}`);
      return;
    }
    if (served.served > 0 || completed > 0) ctx.notifyUsed(0);
    if (served.more || this.zeroJobs.length > 0) ctx.kick(0);
    if (blocked || served.refused) ctx.setTimer?.(0, limiter.blockedForMs(), () => this.onNotify(0));
  }

  /**
   * What a request costs in bytes (Firecracker's rate_limit: the data of IN and OUT
   * requests, nothing for the others). Read from the header before handle() checks
   * the request; a request too malformed to say costs its op only.
   */
  private dataBytes(ctx: VirtioDeviceContext, chain: DescriptorChain): number {
    if (chain.readableBytes < virtio_blk_outhdr.SIZE) return 0;
    let type: number;
    try {
      type = getU32(dataView(readChain(ctx.memory, chain, 0, virtio_blk_outhdr.SIZE)), virtio_blk_outhdr.type);
    } catch {
      return 0;
    }
    if (type === VIRTIO_BLK_T_IN) return Math.max(0, chain.writableBytes - 1);
    if (type === VIRTIO_BLK_T_OUT) return chain.readableBytes - virtio_blk_outhdr.SIZE;
    return 0;
  }

  /** Host requests: the drive's rate limiter (RATE_LIMITER_REQUEST_*; Firecracker's PATCH /drives). */
  control(request: BackendRequest): unknown {
    switch (request.op) {
      case RATE_LIMITER_REQUEST_INFO:
        rateLimiterRequest(request.args, ["io"]);
        return this.limiter.config();
      case RATE_LIMITER_REQUEST_UPDATE: {
        this.limiter.update(rateLimiterRequest(request.args, ["io"]).update ?? {});
        // The block ended: take up the requests waiting in the ring.
        this.ctx?.clearTimer?.(0);
        this.ctx?.kick(0);
        return this.limiter.config();
      }
      case BLOCK_REQUEST_UPDATE_BACKING:
        return this.updateBacking((request.args as { path?: unknown } | undefined)?.path);
      default:
        throw new Error(`virtio-blk has no request '${request.op}'`);
    }
  }

  /** The drive's record for a snapshot (block-persist.ts): its limiter and the zero jobs it still holds. */
  saveState(): BlockSavedState {
    return {
      capacitySectors: u64ToSaved(this.capacitySectors), limiter: this.limiter.saveState(),
      zeroJobs: this.zeroJobs.map((j) => ({ head: j.head, statusAddr: j.statusAddr, ranges: j.ranges.map((r) => ({ ...r })) })),
    };
  }

  /** Takes up a saved drive (see VirtioBackend.restoreState): the same size, its limiter, and with `ctx` its session and zero jobs. */
  restoreState(state: unknown, ctx: VirtioDeviceContext | undefined): void {
    const s = checkBlockSavedState(state, this.capacitySectors, ctx?.memory);
    this.limiter.restoreState(s.limiter);
    if (!ctx) return;
    this.activate(ctx);
    this.zeroJobs = s.zeroJobs;
  }

  reset(): void {
    this.ctx = undefined;
    this.writeThrough = false;
    // The driver gave up on its outstanding requests (§2.1.2 / §3.1.1): no more zeros for them.
    this.zeroJobs = [];
  }

  /**
   * Writes up to `budget` (what is left of this pass's BLOCK_ZERO_BYTES_PER_PASS)
   * of the zeros owed to WRITE_ZEROES requests, oldest first, and completes
   * those that are done. Returns how many it completed.
   */
  private stepZeroJobs(ctx: VirtioDeviceContext, q: VirtQueue, budget: { bytes: number }): number {
    let completed = 0;
    while (this.zeroJobs.length > 0 && budget.bytes > 0) {
      const job = this.zeroJobs[0]!;
      let status: number | undefined;
      while (job.ranges.length > 0 && budget.bytes > 0) {
        const r = job.ranges[0]!;
        const step = Math.min(r.length, budget.bytes);
        const e = this.writeZeroBytes(r.offset, step);
        if (e < 0) { status = this.hostError(e, `writing ${step} zero bytes at byte ${r.offset} (WRITE_ZEROES)`); break; }
        budget.bytes -= step;
        r.offset += step;
        r.length -= step;
        if (r.length === 0) job.ranges.shift();
      }
      if (status === undefined && job.ranges.length > 0) break; // budget spent: next pass
      this.zeroJobs.shift();
      status ??= this.settleWrite();
      q.pushUsed(job.head, this.writeStatus(ctx, job.statusAddr, status) ? 1 : 0);
      completed++;
    }
    return completed;
  }
  /** Makes every completed write durable, then closes the image. */
  shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    const r = sys.fdatasync(this.fd);
    if (r < 0) this.hostError(r, "the flush at shutdown");
    this.ctx = undefined;
    closeSync(this.fd);
  }

  /** Serves one request and returns the used length (bytes written to the guest). Never throws. */
  private handle(ctx: VirtioDeviceContext, chain: DescriptorChain): number {
    this.metrics.requests++;
    // The status byte is the chain's last byte, which must be device-writable.
    let statusAddr = -1;
    for (let i = chain.writable.length - 1; i >= 0 && statusAddr < 0; i--) {
      const b = chain.writable[i]!;
      if (b.len > 0) statusAddr = b.addr + b.len - 1;
    }
    if (statusAddr < 0) {
      this.badRequest(ctx, "request without a writable status byte");
      return 0;
    }
    let written = 0;
    let status: number;
    this.deferredRanges = undefined;
    try {
      const r = this.serve(ctx, chain);
      status = r.status;
      written = r.written;
    } catch (e) {
      // Guest memory the queue accepted went away or similar: fail this request only.
      this.badRequest(ctx, `request failed: ${(e as Error).message}`);
      status = VIRTIO_BLK_S_IOERR;
    }
    const ranges = this.deferredRanges as ZeroRange[] | undefined;
    if (status === VIRTIO_BLK_S_OK && ranges && ranges.length > 0) {
      this.zeroJobs.push({ head: chain.head, statusAddr, ranges });
      return DEFERRED;
    }
    return this.writeStatus(ctx, statusAddr, status) ? written + 1 : written;
  }

  /** Writes a request's status byte; false (a guest fault) when it cannot be written. */
  private writeStatus(ctx: VirtioDeviceContext, statusAddr: number, status: number): boolean {
    try {
      ctx.memory.writeU8(statusAddr, status);
      return true;
    } catch (e) {
      this.badRequest(ctx, `status byte unwritable: ${(e as Error).message}`);
      return false;
    }
  }

  private serve(ctx: VirtioDeviceContext, chain: DescriptorChain): { status: number; written: number } {
    const mem = ctx.memory;
    const fail = (why: string) => {
      this.badRequest(ctx, why);
      return { status: VIRTIO_BLK_S_IOERR, written: 0 };
    };
    if (chain.readableBytes < virtio_blk_outhdr.SIZE) return fail(`header is ${chain.readableBytes} bytes`);
    const hdr = dataView(readChain(mem, chain, 0, virtio_blk_outhdr.SIZE));
    const type = getU32(hdr, virtio_blk_outhdr.type);
    const sector = getU64(hdr, virtio_blk_outhdr.sector);
    const payload = chain.readableBytes - virtio_blk_outhdr.SIZE; // device-readable data
    const dataIn = chain.writableBytes - 1; // device-writable data before the status byte

    switch (type) {
      case VIRTIO_BLK_T_IN: {
        if (payload !== 0) return fail("IN request with device-readable data");
        if (dataIn % SECTOR_SIZE !== 0) return fail(`IN length ${dataIn} is not a whole number of sectors`);
        if (!this.inDisk(sector, dataIn)) return fail(`IN sector ${sector}+${dataIn} is outside the disk`);
        const t = this.transfer(mem, spans(chain.writable, 0, dataIn), Number(sector) * SECTOR_SIZE, false);
        this.metrics.readBytes += t.bytes;
        if (t.errno) return { status: this.hostError(-t.errno, `reading ${dataIn} bytes at sector ${sector}`), written: t.bytes };
        return { status: VIRTIO_BLK_S_OK, written: t.bytes };
      }
      case VIRTIO_BLK_T_OUT: {
        if (dataIn !== 0) return fail("OUT request with device-writable data");
        if (this.readOnly) return fail("OUT request to a read-only drive");
        if (payload % SECTOR_SIZE !== 0) return fail(`OUT length ${payload} is not a whole number of sectors`);
        if (!this.inDisk(sector, payload)) return fail(`OUT sector ${sector}+${payload} is outside the disk`);
        const t = this.transfer(mem, spans(chain.readable, virtio_blk_outhdr.SIZE, payload), Number(sector) * SECTOR_SIZE, true);
        this.metrics.writtenBytes += t.bytes;
        return { status: t.errno ? this.hostError(-t.errno, `writing ${payload} bytes at sector ${sector}`) : this.settleWrite(), written: 0 };
      }
      case VIRTIO_BLK_T_FLUSH: {
        if (payload !== 0 || dataIn !== 0) return fail("FLUSH request with data");
        this.metrics.flushes++;
        const r = sys.fdatasync(this.fd);
        return { status: r < 0 ? this.hostError(r, "FLUSH") : VIRTIO_BLK_S_OK, written: 0 };
      }
      case VIRTIO_BLK_T_GET_ID: {
        if (payload !== 0) return fail("GET_ID request with device-readable data");
        // A shorter buffer gets the id's first bytes; the status byte stays last.
        const written = writeChain(mem, chain, 0, this.id.subarray(0, Math.min(dataIn, VIRTIO_BLK_ID_BYTES)));
        return { status: VIRTIO_BLK_S_OK, written };
      }
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES: {
        const name = type === VIRTIO_BLK_T_DISCARD ? "DISCARD" : "WRITE_ZEROES";
        if (dataIn !== 0) return fail(`${name} request with device-writable data`);
        if (this.readOnly) return fail(`${name} request to a read-only drive`);
        const seg = virtio_blk_discard_write_zeroes.SIZE;
        if (payload === 0 || payload % seg !== 0 || payload / seg > BLOCK_MAX_DISCARD_SEG) {
          return fail(`${name} payload of ${payload} bytes is not 1..${BLOCK_MAX_DISCARD_SEG} segments`);
        }
        const raw = dataView(readChain(mem, chain, virtio_blk_outhdr.SIZE, payload));
        const ranges: ZeroRange[] = [];
        for (let off = 0; off < payload; off += seg) {
          const start = getU64(raw, off + virtio_blk_discard_write_zeroes.sector);
          const count = getU32(raw, off + virtio_blk_discard_write_zeroes.num_sectors);
          const flags = getU32(raw, off + virtio_blk_discard_write_zeroes.flags);
          // §5.2.6.2: UNMAP is only meaningful for WRITE_ZEROES; other flag bits are reserved.
          const allowed = type === VIRTIO_BLK_T_WRITE_ZEROES ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
          if ((flags & ~allowed) !== 0) {
            this.badRequest(ctx, `${name} segment with reserved flags 0x${flags.toString(16)}`);
            return { status: VIRTIO_BLK_S_UNSUPP, written: 0 };
          }
          if (count > BLOCK_MAX_DISCARD_SECTORS) return fail(`${name} of ${count} sectors exceeds the limit`);
          if (!this.inDisk(start, count * SECTOR_SIZE)) return fail(`${name} sector ${start}+${count} is outside the disk`);
          ranges.push({ offset: Number(start) * SECTOR_SIZE, length: count * SECTOR_SIZE, unmap: (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0 });
        }
        const toWrite: ZeroRange[] = [];
        for (const r of ranges) {
          const e = type === VIRTIO_BLK_T_DISCARD ? this.discard(r) : this.zeroInPlace(r);
          if (e === ZERO_BY_WRITING) toWrite.push(r);
          else if (e < 0) return { status: this.hostError(e, `${name} of ${r.length} bytes at byte ${r.offset}`), written: 0 };
        }
        // Zeros the file system could not make itself are written over several passes (a ZeroJob).
        if (toWrite.length > 0) {
          this.deferredRanges = toWrite;
          return { status: VIRTIO_BLK_S_OK, written: 0 };
        }
        // Discard is a hint; zeroing is a write, stable at completion in write-through mode.
        return { status: type === VIRTIO_BLK_T_WRITE_ZEROES ? this.settleWrite() : VIRTIO_BLK_S_OK, written: 0 };
      }
      default:
        this.metrics.unsupported++;
        ctx.guestFault(`virtio-blk: unsupported request type ${type}`);
        return { status: VIRTIO_BLK_S_UNSUPP, written: 0 };
    }
  }

  /** The status of a write that succeeded: OK, after fdatasync in write-through mode (§5.2.6.2). */
  private settleWrite(): number {
    if (!this.writeThrough) return VIRTIO_BLK_S_OK;
    this.metrics.writeThroughSyncs++;
    const r = sys.fdatasync(this.fd);
    return r < 0 ? this.hostError(r, "the write-through sync") : VIRTIO_BLK_S_OK;
  }

  /** True when `bytes` (a whole number of sectors) from `sector` lie inside the disk. */
  private inDisk(sector: bigint, bytes: number): boolean {
    const sectors = BigInt(bytes / SECTOR_SIZE);
    return sector <= this.capacitySectors && sectors <= this.capacitySectors - sector;
  }

  /** pread/pwrite between the file at `offset` and guest spans; a read past end-of-file yields zeros. */
  private transfer(mem: GuestMemory, guest: Span[], offset: number, toFile: boolean): Transfer {
    let bytes = 0;
    for (const s of guest) {
      const view = mem.slice(s.addr, s.len);
      let done = 0;
      while (done < view.length) {
        const part = view.subarray(done);
        const r = toFile
          ? sys.pwrite(this.fd, part, part.length, offset + bytes + done)
          : sys.pread(this.fd, part, part.length, offset + bytes + done);
        if (r === -EINTR) continue;
        if (r < 0) return { bytes: bytes + done, errno: -r };
        if (r === 0) {
          // The image shrank under us: reads see zeros, writes cannot make progress.
          if (toFile) return { bytes: bytes + done, errno: EIO };
          part.fill(0);
          done = view.length;
          break;
        }
        done += r;
      }
      bytes += done;
    }
    return { bytes, errno: 0 };
  }

  /** DISCARD: punch a hole; a filesystem without hole punching ignores it (discard is a hint, §5.2.6.2). */
  private discard(r: ZeroRange): number {
    if (r.length === 0) return 0;
    const e = this.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r);
    return e === -EOPNOTSUPP ? 0 : e;
  }

  /**
   * WRITE_ZEROES in the file system: ZERO_RANGE (or PUNCH_HOLE when the driver
   * allows unmapping). ZERO_BY_WRITING when it can do neither: the zeros must
   * then be written (stepZeroJobs).
   */
  private zeroInPlace(r: ZeroRange): number {
    if (r.length === 0) return 0;
    if (r.unmap) {
      const e = this.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r);
      if (e !== -EOPNOTSUPP) return e;
    }
    const e = this.fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, r);
    return e === -EOPNOTSUPP ? ZERO_BY_WRITING : e;
  }

  /** Writes `length` zero bytes at `offset`; 0 or a negative errno. */
  private writeZeroBytes(offset: number, length: number): number {
    this.zeros ??= new Uint8Array(ZERO_CHUNK_BYTES);
    for (let done = 0; done < length;) {
      const n = Math.min(this.zeros.length, length - done);
      const w = sys.pwrite(this.fd, this.zeros, n, offset + done);
      if (w === -EINTR) continue;
      if (w < 0) return w;
      if (w === 0) return -EIO;
      done += w;
      this.metrics.writtenBytes += w;
    }
    return 0;
  }

  private fallocate(mode: number, r: ZeroRange): number {
    for (;;) {
      const e = sys.fallocate(this.fd, mode, r.offset, r.length);
      if (e !== -EINTR) return e;
    }
  }

  /** Counts and reports a host error (negative errno) while doing `what`; returns the status that tells the guest. */
  private hostError(negErrno: number, what: string): number {
    this.metrics.hostErrors++;
    this.metrics.lastHostError = errnoName(-negErrno);
    this.ctx?.hostError?.(`drive '${this.path}': ${what} failed (${this.metrics.lastHostError}); the guest got VIRTIO_BLK_S_IOERR`);
    return VIRTIO_BLK_S_IOERR;
  }

  private badRequest(ctx: VirtioDeviceContext, why: string): void {
    this.metrics.badRequests++;
    ctx.guestFault(`virtio-blk: ${why}`);
  }
}

/** The device thread's entry point: opens the image named in `options`. */
export function createBackend(options: BlockOptions): VirtioBackend {
  return new VirtioBlock(options);
}
