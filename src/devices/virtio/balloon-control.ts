/**
 * The main thread's handle on a running virtio-balloon: the library API for
 * changing the target while the guest runs and for reading what the guest
 * reports. Each call is a request to the device thread (VirtioBalloon.control),
 * answered between guest events; the guest sees a config-change interrupt and
 * inflates or deflates towards the new target on its own time.
 */
import { BALLOON_REQUEST_INFO, BALLOON_REQUEST_SET_TARGET, BalloonError, type BalloonInfo } from "./balloon.js";
import type { VirtioDeviceHandle } from "./device-thread.js";

export type { BalloonInfo } from "./balloon.js";

/** Options for {@link BalloonControl.waitForTarget}. */
export interface BalloonWaitOptions {
  /** Give up after this long (default 30 000 ms). */
  timeoutMs?: number;
  /** Time between polls of the balloon's size (default 100 ms). */
  intervalMs?: number;
}

export class BalloonControl {
  private readonly device: VirtioDeviceHandle;
  private readonly guestMib: number;

  constructor(device: VirtioDeviceHandle, guestMib: number) {
    this.device = device;
    this.guestMib = guestMib;
  }

  /** Asks the guest to give back `targetMib` MiB (0 deflates completely); resolves with the balloon's state. */
  async setTarget(targetMib: number): Promise<BalloonInfo> {
    if (!Number.isSafeInteger(targetMib) || targetMib < 0 || targetMib > this.guestMib) {
      throw new BalloonError("EBALLOONTARGET", `Cannot set balloon target: ${targetMib} MiB is not a whole number from 0 to the guest's ${this.guestMib} MiB`);
    }
    return (await this.device.request(BALLOON_REQUEST_SET_TARGET, { targetMib })) as BalloonInfo;
  }

  /** The balloon's target, actual size, metrics and the guest's latest statistics (and asks the guest for fresh ones). */
  async info(): Promise<BalloonInfo> {
    return (await this.device.request(BALLOON_REQUEST_INFO)) as BalloonInfo;
  }

  /**
   * Resolves once the driver reports a balloon of the target's size (it may
   * never get there: a guest under memory pressure with DEFLATE_ON_OOM, or no
   * driver at all); rejects with EBALLOONTIMEOUT after `timeoutMs`.
   */
  async waitForTarget(options: BalloonWaitOptions = {}): Promise<BalloonInfo> {
    const timeoutMs = options.timeoutMs ?? 30_000, intervalMs = options.intervalMs ?? 100;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const info = await this.info();
      if (info.actualMib === info.targetMib) return info;
      if (Date.now() >= deadline) {
        throw new BalloonError("EBALLOONTIMEOUT", `Balloon did not reach its target of ${info.targetMib} MiB in ${timeoutMs} ms (the guest holds ${info.actualMib} MiB)`);
      }
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }
}
