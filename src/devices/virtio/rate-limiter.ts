/**
 * Token-bucket rate limiters for virtio devices, with the semantics of
 * Firecracker's API (the `RateLimiter` and `TokenBucket` definitions of its
 * swagger file, and its rate_limiter module): pure logic, the time comes from
 * a clock the caller passes in, so that it can be tested without waiting.
 *
 * A limiter has up to two buckets, `bandwidth` (tokens are bytes) and `ops`
 * (tokens are requests); a device asks for both per request (consumeOp). A
 * bucket of `size` tokens starts full and refills continuously at
 * size / refillTimeMs tokens per millisecond, never above `size`. A bucket
 * whose size or refill time is 0 does not exist (no limit of that kind).
 * `oneTimeBurst` is an extra budget spent before the bucket's own tokens and
 * never refilled: while some of it is left, a request it covers leaves the
 * bucket untouched.
 *
 * A request larger than the bucket itself could never fit: as in
 * Firecracker, it is served at once (the device never stalls for good), the
 * bucket is emptied and the rest becomes a debt; the limiter stays blocked
 * for the time the bucket needs to refill that debt. Unlike Firecracker, the
 * bucket does not also refill during that block (Firecracker's does, so a
 * stream of oversized requests runs faster than the bucket's rate); here it
 * starts refilling when the debt is paid, so the rate holds for any request
 * size.
 *
 * When a request does not fit, the limiter is blocked until the bucket will
 * hold it (blockedForMs): the device puts the request back, stops taking
 * requests from that queue, and arms a timer for that moment. Firecracker
 * arms a fixed 100 ms timer instead; waking exactly when the tokens are back
 * lets a throttled device run at its bucket's rate rather than below it.
 * While blocked, every consume fails, so requests are served in their order.
 *
 * Updates (Firecracker's PATCH /drives and /network-interfaces): a bucket
 * absent from an update stays as it is; one present replaces it with a new,
 * full bucket (its one-time burst available again), or removes it when its
 * size or refill time is 0. An update also ends a block, so the device tries
 * again at once under the new limits.
 *
 * Snapshots (Firecracker's rate_limiter/persist.rs): a limiter's record holds
 * its buckets as configured (updates included) and what each holds, and how
 * long it stays blocked; time is counted relative to the save, so the time a
 * snapshot spends on disk neither refills a bucket nor ends a block.
 */
import { savedObject, savedUint, VirtioSavedStateError } from "./saved-state.js";

/** One bucket's parameters: Firecracker's TokenBucket {size, one_time_burst, refill_time}, in flint's camelCase. */
export interface TokenBucketConfig {
  /** Tokens the bucket holds when full (bytes, or operations). 0: no bucket. */
  size: number;
  /** Extra tokens available once, spent before the bucket's own (default 0). */
  oneTimeBurst?: number;
  /** Milliseconds to refill an empty bucket completely. 0: no bucket. */
  refillTimeMs: number;
}

/** A limiter's buckets: Firecracker's RateLimiter {bandwidth, ops}. An absent bucket does not limit. */
export interface RateLimiterConfig {
  /** Bytes. */
  bandwidth?: TokenBucketConfig;
  /** Operations (requests, frames). */
  ops?: TokenBucketConfig;
}

/** Why a limiter's configuration was refused. */
export class RateLimiterError extends Error {
  readonly code = "ERATELIMITER" as const;
  constructor(message: string) {
    super(message);
    this.name = "RateLimiterError";
  }
}

/** A monotonic clock in milliseconds (performance.now in devices; a fake one in tests). */
export type Clock = () => number;

/** Which bucket a consume draws from. */
export type TokenKind = "bandwidth" | "ops";

const BUCKET_KEYS = new Set(["size", "oneTimeBurst", "refillTimeMs"]);
const LIMITER_KEYS = new Set(["bandwidth", "ops"]);

function checkCount(value: unknown, what: string): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new RateLimiterError(`Cannot set rate limiter: ${what} must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}, not ${JSON.stringify(value)}`);
  }
  return value;
}

function checkBucket(value: unknown, what: string): TokenBucketConfig {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new RateLimiterError(`Cannot set rate limiter: ${what} must be an object { size, oneTimeBurst?, refillTimeMs }`);
  }
  for (const k of Object.keys(value)) if (!BUCKET_KEYS.has(k)) throw new RateLimiterError(`Cannot set rate limiter: ${what} has an unknown field '${k}'`);
  const v = value as Record<string, unknown>;
  const size = checkCount(v.size, `${what}.size`);
  const refillTimeMs = checkCount(v.refillTimeMs, `${what}.refillTimeMs`);
  const b: TokenBucketConfig = { size, refillTimeMs };
  if (v.oneTimeBurst !== undefined) b.oneTimeBurst = checkCount(v.oneTimeBurst, `${what}.oneTimeBurst`);
  return b;
}

/**
 * Checks a limiter configuration (or update) that arrived as JSON; returns a
 * clean copy. `what` names it in messages (e.g. "rateLimiter").
 */
export function checkRateLimiterConfig(value: unknown, what = "rateLimiter"): RateLimiterConfig {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new RateLimiterError(`Cannot set rate limiter: ${what} must be an object { bandwidth?, ops? }`);
  }
  for (const k of Object.keys(value)) if (!LIMITER_KEYS.has(k)) throw new RateLimiterError(`Cannot set rate limiter: ${what} has an unknown field '${k}'`);
  const v = value as Record<string, unknown>;
  const out: RateLimiterConfig = {};
  if (v.bandwidth !== undefined) out.bandwidth = checkBucket(v.bandwidth, `${what}.bandwidth`);
  if (v.ops !== undefined) out.ops = checkBucket(v.ops, `${what}.ops`);
  return out;
}

/** What a bucket said to a request. */
export type BucketReduction =
  /** Taken. */
  | { kind: "ok" }
  /** Not enough tokens: nothing taken; the bucket holds the request in `waitMs`. */
  | { kind: "short"; waitMs: number }
  /** Larger than the bucket: taken, the bucket emptied, and the debt takes `blockMs` to refill. */
  | { kind: "over"; blockMs: number };

/** A bucket in a limiter's record (RateLimiterSavedState). */
export interface TokenBucketSavedState extends Required<TokenBucketConfig> {
  /** Tokens in the bucket at the save, after refilling. */
  budget: number;
  /** What was left of the one-time burst. */
  burstLeft: number;
  /**
   * Milliseconds from the last counted refill to the save (negative while a
   * debt was being paid: refills start that much after it).
   */
  sinceRefillMs: number;
}

/** A limiter's record (RateLimiter.saveState): its buckets and how long it stays blocked. */
export interface RateLimiterSavedState {
  bandwidth: TokenBucketSavedState | null;
  ops: TokenBucketSavedState | null;
  /** Milliseconds the limiter stays blocked from the save on (0: not blocked). */
  blockedForMs: number;
}

/** Reads a RateLimiterSavedState from JSON (`path` names it in messages). */
export function checkRateLimiterSavedState(v: unknown, path: string): RateLimiterSavedState {
  const o = savedObject(v, path);
  const bucket = (b: unknown, p: string): TokenBucketSavedState | null => {
    if (b === null) return null;
    const x = savedObject(b, p);
    const num = (f: string, min: number): number => {
      const n = x[f];
      if (typeof n !== "number" || !Number.isFinite(n) || n < min) {
        throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field ${p}.${f} must be a number of at least ${min}`);
      }
      return n;
    };
    const size = savedUint(x.size, `${p}.size`, Number.MAX_SAFE_INTEGER);
    const refillTimeMs = savedUint(x.refillTimeMs, `${p}.refillTimeMs`, Number.MAX_SAFE_INTEGER);
    if (size === 0 || refillTimeMs === 0) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field ${p} is a bucket of size or refill time 0`);
    const budget = num("budget", 0);
    if (budget > size) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field ${p}.budget is more than the bucket's size`);
    return {
      size, refillTimeMs, oneTimeBurst: savedUint(x.oneTimeBurst, `${p}.oneTimeBurst`, Number.MAX_SAFE_INTEGER), budget,
      burstLeft: num("burstLeft", 0), sinceRefillMs: num("sinceRefillMs", -Number.MAX_VALUE),
    };
  };
  const blocked = o.blockedForMs;
  if (typeof blocked !== "number" || !Number.isFinite(blocked) || blocked < 0) {
    throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field ${path}.blockedForMs must be a number of at least 0`);
  }
  return { bandwidth: bucket(o.bandwidth, `${path}.bandwidth`), ops: bucket(o.ops, `${path}.ops`), blockedForMs: blocked };
}

/** One token bucket (see the module comment). */
export class TokenBucket {
  readonly size: number;
  readonly refillTimeMs: number;
  readonly initialOneTimeBurst: number;
  private oneTimeBurst: number;
  private budget: number;
  /** The time up to which refills have been counted (later than now while a debt is being paid). */
  private lastUpdateMs: number;

  /** A full bucket; `config` must be checked (checkRateLimiterConfig) and have a non-zero size and refill time. */
  constructor(config: TokenBucketConfig, nowMs: number) {
    this.size = config.size;
    this.refillTimeMs = config.refillTimeMs;
    this.initialOneTimeBurst = this.oneTimeBurst = config.oneTimeBurst ?? 0;
    this.budget = this.size;
    this.lastUpdateMs = nowMs;
  }

  /** A bucket for `config`, or undefined when its size or refill time is 0 (no limit). */
  static of(config: TokenBucketConfig | undefined, nowMs: number): TokenBucket | undefined {
    return config && config.size > 0 && config.refillTimeMs > 0 ? new TokenBucket(config, nowMs) : undefined;
  }

  /** Tokens in the bucket now (after refilling), not counting the one-time burst. */
  tokens(nowMs: number): number {
    this.refill(nowMs);
    return this.budget;
  }

  /** What is left of the one-time burst. */
  get burstLeft(): number {
    return this.oneTimeBurst;
  }

  /** The bucket's parameters, as configured. */
  config(): TokenBucketConfig {
    const c: TokenBucketConfig = { size: this.size, refillTimeMs: this.refillTimeMs };
    if (this.initialOneTimeBurst > 0) c.oneTimeBurst = this.initialOneTimeBurst;
    return c;
  }

  /** The bucket for a record (see TokenBucketSavedState), as of `nowMs`. */
  saveState(nowMs: number): TokenBucketSavedState {
    this.refill(nowMs);
    return {
      size: this.size, refillTimeMs: this.refillTimeMs, oneTimeBurst: this.initialOneTimeBurst,
      budget: this.budget, burstLeft: this.oneTimeBurst, sinceRefillMs: nowMs - this.lastUpdateMs,
    };
  }

  /** A bucket from its record (checkRateLimiterSavedState), going on at `nowMs` where the saved one stopped. */
  static restore(s: TokenBucketSavedState, nowMs: number): TokenBucket {
    const b = new TokenBucket(s, nowMs);
    b.budget = s.budget;
    b.oneTimeBurst = Math.min(s.burstLeft, s.oneTimeBurst);
    b.lastUpdateMs = nowMs - s.sinceRefillMs;
    return b;
  }

  /** Takes `tokens`, the one-time burst first (see BucketReduction). */
  reduce(tokens: number, nowMs: number): BucketReduction {
    if (this.oneTimeBurst > 0) {
      if (this.oneTimeBurst >= tokens) {
        this.oneTimeBurst -= tokens;
        // The bucket is full while burst is left: refills start counting when the burst is spent.
        this.lastUpdateMs = Math.max(this.lastUpdateMs, nowMs);
        return { kind: "ok" };
      }
      tokens -= this.oneTimeBurst;
      this.oneTimeBurst = 0;
    }
    this.refill(nowMs);
    if (tokens > this.size) {
      // Oversized: served, the bucket emptied, and refills wait until the debt is paid.
      const debt = tokens - this.budget;
      this.budget = 0;
      const blockMs = (debt * this.refillTimeMs) / this.size;
      this.lastUpdateMs = Math.max(this.lastUpdateMs, nowMs) + blockMs;
      return { kind: "over", blockMs };
    }
    if (tokens > this.budget) {
      // Refills count from lastUpdateMs: the fraction of a token accrued since then is
      // already on its way (or, while a debt is paid, refills have not started yet).
      const waitMs = ((tokens - this.budget) * this.refillTimeMs) / this.size - (nowMs - this.lastUpdateMs);
      return { kind: "short", waitMs: Math.max(0, waitMs) };
    }
    this.budget -= tokens;
    return { kind: "ok" };
  }

  /** Gives back `tokens` taken for a request that was not served after all (Firecracker's force_replenish). */
  replenish(tokens: number): void {
    if (this.oneTimeBurst > 0) {
      this.oneTimeBurst = Math.min(this.oneTimeBurst + tokens, this.initialOneTimeBurst);
      return;
    }
    this.budget = Math.min(this.budget + tokens, this.size);
  }

  /** Adds the whole tokens accrued since lastUpdateMs, keeping the fraction of a token for later. */
  private refill(nowMs: number): void {
    const elapsed = nowMs - this.lastUpdateMs;
    if (elapsed <= 0) return;
    if (elapsed >= this.refillTimeMs) {
      this.budget = this.size;
      this.lastUpdateMs = nowMs;
      return;
    }
    const added = Math.floor((elapsed * this.size) / this.refillTimeMs);
    if (added === 0) return;
    this.budget = Math.min(this.budget + added, this.size);
    this.lastUpdateMs += (added * this.refillTimeMs) / this.size;
  }
}

/** A device's limiter: its two buckets and whether it is blocked (see the module comment). */
export class RateLimiter {
  private bandwidth: TokenBucket | undefined;
  private ops: TokenBucket | undefined;
  /** Blocked until this time (clock ms); 0: not blocked. */
  private blockedUntilMs = 0;
  /** Requests that found the limiter blocked or short (a device's throttled count). */
  throttled = 0;

  /** `config` as JSON (checked here); absent or empty: a limiter that never limits. */
  constructor(config: unknown, private readonly clock: Clock) {
    const c = config === undefined ? {} : checkRateLimiterConfig(config);
    const now = clock();
    this.bandwidth = TokenBucket.of(c.bandwidth, now);
    this.ops = TokenBucket.of(c.ops, now);
  }

  /** True when neither bucket exists. */
  get unlimited(): boolean {
    return !this.bandwidth && !this.ops;
  }

  /** Milliseconds until the limiter takes requests again; 0 when it is not blocked. */
  blockedForMs(): number {
    if (this.blockedUntilMs === 0) return 0;
    const left = this.blockedUntilMs - this.clock();
    if (left > 0) return left;
    this.blockedUntilMs = 0;
    return 0;
  }

  /**
   * Takes `tokens` from one bucket; false (nothing taken, the limiter now
   * blocked until the bucket holds them) when they do not fit or the limiter
   * is blocked. A kind without a bucket always succeeds.
   */
  consume(tokens: number, kind: TokenKind): boolean {
    if (this.blockedForMs() > 0) {
      this.throttled++;
      return false;
    }
    const bucket = kind === "bandwidth" ? this.bandwidth : this.ops;
    if (!bucket) return true;
    const now = this.clock();
    const r = bucket.reduce(tokens, now);
    switch (r.kind) {
      case "ok": return true;
      case "over":
        this.blockedUntilMs = now + r.blockMs;
        return true;
      case "short":
        this.throttled++;
        // Never "blocked until now": a zero wait would let the caller spin.
        this.blockedUntilMs = now + Math.max(r.waitMs, 1e-3);
        return false;
    }
  }

  /** Gives `tokens` back to one bucket (a request taken but not served). */
  replenish(tokens: number, kind: TokenKind): void {
    (kind === "bandwidth" ? this.bandwidth : this.ops)?.replenish(tokens);
  }

  /**
   * One request of `bytes`: one op and `bytes` of bandwidth, both or neither
   * (the op is given back when the bytes do not fit), as Firecracker's devices ask.
   */
  consumeOp(bytes: number): boolean {
    if (!this.consume(1, "ops")) return false;
    if (this.consume(bytes, "bandwidth")) return true;
    this.replenish(1, "ops");
    return false;
  }

  /**
   * Applies an update (JSON, checked here): a bucket absent stays, one present
   * is replaced by a new full bucket, or removed when its size or refill time
   * is 0. Ends any block. Throws RateLimiterError, changing nothing, when invalid.
   */
  update(update: unknown): void {
    const u = checkRateLimiterConfig(update);
    const now = this.clock();
    if (u.bandwidth) this.bandwidth = TokenBucket.of(u.bandwidth, now);
    if (u.ops) this.ops = TokenBucket.of(u.ops, now);
    this.blockedUntilMs = 0;
  }

  /** The limiter's record for a snapshot (see the module comment). */
  saveState(): RateLimiterSavedState {
    const now = this.clock();
    return { bandwidth: this.bandwidth?.saveState(now) ?? null, ops: this.ops?.saveState(now) ?? null, blockedForMs: this.blockedForMs() };
  }

  /**
   * Takes up a saved limiter's buckets and block (checked with
   * checkRateLimiterSavedState), in place of the configured ones: a limiter
   * restored from a snapshot limits as the saved one would have.
   */
  restoreState(s: RateLimiterSavedState): void {
    const now = this.clock();
    this.bandwidth = s.bandwidth ? TokenBucket.restore(s.bandwidth, now) : undefined;
    this.ops = s.ops ? TokenBucket.restore(s.ops, now) : undefined;
    this.blockedUntilMs = s.blockedForMs > 0 ? now + s.blockedForMs : 0;
  }

  /** The limiter's buckets as configured (for GET /vm/config); {} when it never limits. */
  config(): RateLimiterConfig {
    const c: RateLimiterConfig = {};
    if (this.bandwidth) c.bandwidth = this.bandwidth.config();
    if (this.ops) c.ops = this.ops.config();
    return c;
  }
}

/** BackendRequest op: apply an update (RateLimiterRequest) to a device's limiter; answers its new RateLimiterConfig. */
export const RATE_LIMITER_REQUEST_UPDATE = "rate-limiter-update";
/** BackendRequest op: a device's limiter as configured (RateLimiterRequest without `update`); answers a RateLimiterConfig. */
export const RATE_LIMITER_REQUEST_INFO = "rate-limiter-info";

/** Which of a device's limiters: "rx" or "tx" for virtio-net, "io" (the only one) for virtio-blk and virtio-rng. */
export type RateLimiterName = "io" | "rx" | "tx";

/** The args of a rate-limiter request (JSON, from the main thread). */
export interface RateLimiterRequest {
  which: RateLimiterName;
  /** RATE_LIMITER_REQUEST_UPDATE: the update (see RateLimiter.update). */
  update?: RateLimiterConfig;
}

/** Reads a rate-limiter request's args, checking `which` against the limiters the device has. */
export function rateLimiterRequest(args: unknown, names: readonly RateLimiterName[]): RateLimiterRequest {
  const a = (typeof args === "object" && args !== null ? args : {}) as Partial<RateLimiterRequest>;
  const which = a.which ?? names[0]!;
  if (!names.includes(which)) throw new RateLimiterError(`Cannot set rate limiter: the device has no '${String(which)}' limiter (it has ${names.map((n) => `'${n}'`).join(", ")})`);
  return { which, update: a.update };
}
