/**
 * The main thread's handle on a running device's rate limiters (the library
 * API behind Firecracker's PATCH /drives/{id} and
 * PATCH /network-interfaces/{id}): each call is a request to the device
 * thread (the backend's control, RATE_LIMITER_REQUEST_*), answered between
 * guest events even while the device is throttled.
 */
import type { VirtioDeviceKind } from "./backends.js";
import type { VirtioDeviceHandle } from "./device-thread.js";
import {
  RATE_LIMITER_REQUEST_INFO, RATE_LIMITER_REQUEST_UPDATE, RateLimiterError, checkRateLimiterConfig,
  type RateLimiterConfig, type RateLimiterName, type RateLimiterRequest,
} from "./rate-limiter.js";

export type { RateLimiterConfig, RateLimiterName, TokenBucketConfig } from "./rate-limiter.js";

/** The limiters each kind of device has ("io": its only one). */
export const RATE_LIMITERS: Readonly<Partial<Record<VirtioDeviceKind, readonly RateLimiterName[]>>> = {
  block: ["io"],
  rng: ["io"],
  net: ["rx", "tx"],
};

/** See the module comment. */
export class RateLimiterControl {
  constructor(private readonly device: VirtioDeviceHandle, private readonly kind: VirtioDeviceKind) {}

  /** The control of device `index` of a VM's virtio devices; throws RateLimiterError when there is none. */
  static of(set: { readonly devices: readonly VirtioDeviceHandle[]; readonly kinds: readonly VirtioDeviceKind[] }, index: number): RateLimiterControl {
    const device = set.devices[index];
    if (!Number.isInteger(index) || !device) throw new RateLimiterError(`Cannot set rate limiter: the VM has no virtio device ${index} (it has ${set.devices.length})`);
    return new RateLimiterControl(device, set.kinds[index]!);
  }

  /** Checks that the device has limiter `which`; throws RateLimiterError (ERATELIMITER) otherwise. */
  private check(which: RateLimiterName): void {
    const names = RATE_LIMITERS[this.kind];
    if (!names) throw new RateLimiterError(`Cannot set rate limiter: a ${this.kind} device has none`);
    if (!names.includes(which)) throw new RateLimiterError(`Cannot set rate limiter: a ${this.kind} device has no '${which}' limiter (it has ${names.map((n) => `'${n}'`).join(", ")})`);
  }

  /**
   * Applies `update` to limiter `which` (Firecracker's semantics: a bucket
   * absent stays, one present is replaced by a full new bucket or removed
   * when its size or refill time is 0); resolves with the limiter's new
   * configuration. A bad update rejects (ERATELIMITER) and changes nothing.
   */
  async update(which: RateLimiterName, update: RateLimiterConfig): Promise<RateLimiterConfig> {
    this.check(which);
    const args: RateLimiterRequest = { which, update: checkRateLimiterConfig(update) };
    return (await this.device.request(RATE_LIMITER_REQUEST_UPDATE, args)) as RateLimiterConfig;
  }

  /** Limiter `which` as configured now ({} when it limits nothing). */
  async info(which: RateLimiterName): Promise<RateLimiterConfig> {
    this.check(which);
    return (await this.device.request(RATE_LIMITER_REQUEST_INFO, { which } satisfies RateLimiterRequest)) as RateLimiterConfig;
  }
}
