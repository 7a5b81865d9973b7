/**
 * A test backend module (DeviceLoopRig's backendModule): virtio-net in its
 * real device thread over a fake TAP (net-test-rig.ts's fakeTap, a datagram
 * socket whose fd is passed in the options; fds are shared by the process's
 * threads), with TUNSETOFFLOAD a no-op. For tests of the device loop that do
 * not need a real TAP, such as its rate limiters.
 */
import { type NetOptions, VirtioNet } from "../net.js";
import type { VirtioBackend } from "../types.js";

/** NetOptions and the fake TAP's device fd (the device closes it at shutdown). */
export interface FakeTapNetOptions extends NetOptions {
  fd: number;
}

/** The device thread's entry point. */
export function createBackend(options: FakeTapNetOptions): VirtioBackend {
  return new VirtioNet(options, options.fd, () => 0);
}
