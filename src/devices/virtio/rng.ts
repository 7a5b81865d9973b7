/**
 * virtio-rng / entropy device (virtio 1.x §5.4): one request queue; the
 * driver posts device-writable buffers and the device fills them with random
 * bytes from the host's CSPRNG (crypto.randomFillSync: OpenSSL seeded by the
 * kernel's getrandom). No features, no config space.
 *
 * Each request gets at most RNG_MAX_BYTES_PER_REQUEST bytes (the used length
 * says how many, §5.4.6.1 lets the device fill less), so a guest posting huge
 * buffers cannot make the device thread spend long on one request, and at
 * most RNG_SERVE_BUDGET units of work are done per pass (serveQueue; a
 * request costs its buffers or its 4 KiB pages, whichever is more), so a
 * guest re-adding buffers from another vCPU as fast as they are filled cannot
 * keep the device thread from its control requests (reset, stop).
 *
 * Rate limiting (Firecracker's entropy `rate_limiter`, rate-limiter.ts): a
 * request costs one op and the bytes it will be given (Firecracker charges
 * the buffer's whole length, then gives at most 64 KiB; charging what is
 * given keeps the limit on the entropy served). A refused request goes back
 * to the ring and the device waits for its timer, as virtio-blk does.
 *
 * Snapshots: every request is completed in the pass that took it, so the
 * device's record is its rate limiter alone (RngSavedState).
 */
import { randomFillSync } from "node:crypto";
import { performance } from "node:perf_hooks";
import { VIRTIO_ID_RNG } from "../../linux/abi.generated.js";
import { type ServeResult, serveQueue } from "./queue.js";
import {
  checkRateLimiterSavedState, RATE_LIMITER_REQUEST_INFO, RATE_LIMITER_REQUEST_UPDATE, RateLimiter, type RateLimiterConfig,
  type RateLimiterSavedState, rateLimiterRequest,
} from "./rate-limiter.js";
import { savedObject } from "./saved-state.js";
import type { BackendRequest, DescriptorChain, VirtioBackend, VirtioDeviceContext } from "./types.js";

/** Descriptors per queue (QueueNumMax). */
export const RNG_QUEUE_SIZE = 256;
/** Most random bytes given for one request (64 KiB). */
export const RNG_MAX_BYTES_PER_REQUEST = 64 * 1024;
/**
 * Work per pass before the device thread looks at its other fds, in units of one
 * buffer filled or 4 KiB given (at most 1 MiB of random bytes, or 256 fills).
 */
export const RNG_SERVE_BUDGET = 256;
const RNG_COST_BYTES = 4096;

/** Options (JSON). */
export interface RngOptions {
  /** Limits the entropy served (Firecracker's entropy rate_limiter); none when absent. */
  rateLimiter?: RateLimiterConfig;
}

/** Counters of what the device did. */
export interface RngMetrics {
  requests: number;
  bytes: number;
  /** Requests with device-readable buffers (ignored) or no writable space. */
  badRequests: number;
}

/** virtio-rng's part of a device's saved state (device-saved-state.ts). */
export interface RngSavedState {
  /** The device's rate limiter (updates included). */
  limiter: RateLimiterSavedState;
}

/** The virtio-rng device. */
export class VirtioRng implements VirtioBackend {
  readonly deviceId = VIRTIO_ID_RNG;
  readonly queueMaxSizes = [RNG_QUEUE_SIZE] as const;
  readonly deviceFeatures = 0n;
  readonly metrics: RngMetrics = { requests: 0, bytes: 0, badRequests: 0 };
  private ctx: VirtioDeviceContext | undefined;
  /** The device's limiter; it outlives resets, so a reset never buys a guest a fresh budget. */
  readonly limiter: RateLimiter;

  constructor(options: RngOptions = {}) {
    this.limiter = new RateLimiter(options.rateLimiter, () => performance.now());
  }

  initialConfig(): Uint8Array {
    return new Uint8Array(0);
  }

  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
  }

  onNotify(queue: number): void {
    const ctx = this.ctx;
    const q = ctx?.queues[queue];
    if (!ctx || !q || queue !== 0) return;
    let served: ServeResult = { served: 0, more: false, refused: false };
    const limiter = this.limiter;
    const blocked = limiter.blockedForMs() > 0;
    try {
      if (!blocked) served = serveQueue(q, RNG_SERVE_BUDGET, (chain) => {
        if (!limiter.unlimited && !limiter.consumeOp(Math.min(chain.writableBytes, RNG_MAX_BYTES_PER_REQUEST))) return false;
        const given = this.fill(ctx, chain);
        q.pushUsed(chain.head, given);
        return Math.max(chain.writable.length, Math.ceil(given / RNG_COST_BYTES));
      });
    } catch (e) {
      // Only the ring itself throws here (QueueError): the driver broke it.
      this.ctx = undefined;
      ctx.fail(`virtio-rng: ${(e as Error).message}`);
      return;
    }
    if (served.served > 0) ctx.notifyUsed(0);
    if (served.more) ctx.kick(0);
    if (blocked || served.refused) ctx.setTimer?.(0, limiter.blockedForMs(), () => this.onNotify(0));
  }

  /** Host requests: the device's rate limiter (RATE_LIMITER_REQUEST_*). */
  control(request: BackendRequest): unknown {
    switch (request.op) {
      case RATE_LIMITER_REQUEST_INFO:
        rateLimiterRequest(request.args, ["io"]);
        return this.limiter.config();
      case RATE_LIMITER_REQUEST_UPDATE:
        this.limiter.update(rateLimiterRequest(request.args, ["io"]).update ?? {});
        this.ctx?.clearTimer?.(0);
        this.ctx?.kick(0);
        return this.limiter.config();
      default:
        throw new Error(`virtio-rng has no request '${request.op}'`);
    }
  }

  /** The device's record for a snapshot: its limiter (no request outlives its pass). */
  saveState(): RngSavedState {
    return { limiter: this.limiter.saveState() };
  }

  /** Takes up a saved device (see VirtioBackend.restoreState). */
  restoreState(state: unknown, ctx: VirtioDeviceContext | undefined): void {
    this.limiter.restoreState(checkRateLimiterSavedState(savedObject(state, "backend").limiter, "backend.limiter"));
    if (ctx) this.activate(ctx);
  }

  reset(): void {
    this.ctx = undefined;
  }

  /** Fills the chain's writable buffers in place (no copy); returns the bytes given. Never throws. */
  private fill(ctx: VirtioDeviceContext, chain: DescriptorChain): number {
    this.metrics.requests++;
    if (chain.readableBytes > 0 || chain.writableBytes === 0) {
      this.metrics.badRequests++;
      ctx.guestFault(`virtio-rng: request with ${chain.readableBytes} readable and ${chain.writableBytes} writable bytes`);
    }
    let given = 0;
    try {
      for (const b of chain.writable) {
        const n = Math.min(b.len, RNG_MAX_BYTES_PER_REQUEST - given);
        if (n === 0) break;
        randomFillSync(ctx.memory.slice(b.addr, n));
        given += n;
      }
    } catch (e) {
      this.metrics.badRequests++;
      ctx.guestFault(`virtio-rng: ${(e as Error).message}`);
    }
    this.metrics.bytes += given;
    return given;
  }
}

/** The device thread's entry point. */
export function createBackend(options: RngOptions = {}): VirtioBackend {
  return new VirtioRng(options);
}
