/**
 * The built-in virtio backends, by kind: what a device thread
 * (device-thread-worker.ts) creates for a device of that kind.
 *
 * Plain static imports, not `import(url)` at run time, so that the device
 * thread's whole module graph is known before it runs: a bundler can put one
 * thread kind (every built-in backend and the loop) in one file, and a thread
 * does not resolve modules one by one while the VM starts. A test backend is
 * still loaded by URL (VirtioDeviceSpec.backendModule).
 *
 * Loaded only in device threads: the main thread imports this module's types.
 */
import { createBackend as createBalloon, type BalloonOptions } from "./balloon.js";
import { createBackend as createBlock, type BlockOptions } from "./block.js";
import { createBackend as createNet, type NetOptions } from "./net.js";
import { createBackend as createRng, type RngOptions } from "./rng.js";
import type { VirtioBackend } from "./types.js";
import { createBackend as createVsock, type VsockOptions } from "./vsock/index.js";

/** The device types flint offers. */
export type VirtioDeviceKind = "block" | "net" | "vsock" | "rng" | "balloon";

/**
 * Each kind's createBackend. The options come from the main thread as JSON
 * (VirtioDeviceConfig.options); each backend checks its own.
 */
export const VIRTIO_BACKENDS: Readonly<Record<VirtioDeviceKind, (options: unknown) => VirtioBackend>> = {
  block: (o) => createBlock(o as BlockOptions),
  net: (o) => createNet(o as NetOptions),
  vsock: (o) => createVsock(o as VsockOptions),
  rng: (o) => createRng(o as RngOptions),
  balloon: (o) => createBalloon(o as BalloonOptions),
};
