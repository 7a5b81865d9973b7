/**
 * A trivial virtio backend for testing the transport and the device thread
 * without a real device: one queue; each chain's readable bytes are copied
 * into its writable buffers (as far as they fit) and the chain is returned.
 *
 * Config space (ECHO_CONFIG_BYTES): u32 `chains` echoed so far (read-only,
 * published with a config-change interrupt every `configEvery` chains), then
 * u32 `scratch` the driver may write (read back by tests; a write of
 * ECHO_FAIL_MAGIC makes the backend call ctx.fail, to test NEEDS_RESET).
 */
import { writeFileSync } from "node:fs";
import { EFD_CLOEXEC, EFD_NONBLOCK, POLLIN, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from "../../../linux/abi.generated.js";
import { eventfd, sys } from "../../../sys/native.js";
import { dataView } from "../../../memory/le.js";
import { readChain, writeChain } from "../chain-io.js";
import { serveQueue } from "../queue.js";
import type { VirtioBackend, VirtioDeviceContext } from "../types.js";

/** Options (JSON): the device id to claim, the queue size, ring features to offer. */
export interface EchoOptions {
  /** Default 0x3fff: not a real device type, so no guest driver binds to it. */
  deviceId?: number;
  queueSize?: number;
  eventIdx?: boolean;
  indirect?: boolean;
  /** Raise a config-change interrupt every this many chains (default: never). */
  configEvery?: number;
  /** Chains echoed per kick before the backend yields and asks to be called again (default: no limit). */
  budget?: number;
  /** Report this many host errors (ctx.hostError) per chain echoed (default 0). */
  hostErrorsPerChain?: number;
  /** On shutdown, write this file (tests that stop() waits for shutdown). */
  shutdownMarker?: string;
  /** Throw this message from onNotify (a backend bug: tests that it fails only this device). */
  throwOnNotify?: string;
  /** End the whole device thread on a notify (process.exit in a worker ends the thread): tests of a thread that dies under its devices. */
  exitThreadOnNotify?: boolean;
  /**
   * Instead of echoing, write the u32 count of chains every echo device on
   * this device thread had served before this one (threadChains): tests of
   * fairness between devices sharing a thread count with it.
   */
  stampThreadChains?: boolean;
  /**
   * On every notify, stop watching an idle eventfd and watch it again: the
   * device changes the thread's poll set on every pass (as a backend whose
   * watches follow its connections does).
   */
  rewatchOnNotify?: boolean;
}

/** Chains served by every echo device of this module instance, i.e. of one device thread (module state is per thread). */
let threadChains = 0;

export const ECHO_DEFAULT_DEVICE_ID = 0x3fff;
export const ECHO_CONFIG_CHAINS = 0;
export const ECHO_CONFIG_SCRATCH = 4;
export const ECHO_CONFIG_BYTES = 8;
/** Writing this to `scratch` makes the device fail (tests of DEVICE_NEEDS_RESET). */
export const ECHO_FAIL_MAGIC = 0xdead;

export function createBackend(options: unknown): VirtioBackend {
  const o = (options ?? {}) as EchoOptions;
  let ctx: VirtioDeviceContext | undefined;
  let chains = 0;
  let idleFd: number | undefined;
  const bit = (n: number) => 1n << BigInt(n);
  return {
    deviceId: o.deviceId ?? ECHO_DEFAULT_DEVICE_ID,
    queueMaxSizes: [o.queueSize ?? 256],
    deviceFeatures: (o.eventIdx ? bit(VIRTIO_RING_F_EVENT_IDX) : 0n) | (o.indirect ? bit(VIRTIO_RING_F_INDIRECT_DESC) : 0n),
    initialConfig: () => new Uint8Array(ECHO_CONFIG_BYTES),
    configWritable: (offset, length) => offset >= ECHO_CONFIG_SCRATCH && offset + length <= ECHO_CONFIG_BYTES,
    activate(c) {
      ctx = c;
    },
    onNotify(queue) {
      if (o.throwOnNotify !== undefined) throw new Error(o.throwOnNotify);
      if (o.exitThreadOnNotify) process.exit(1);
      if (!ctx) return;
      const c = ctx;
      if (o.rewatchOnNotify) {
        idleFd ??= eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        c.unwatch(idleFd);
        c.watch(idleFd, POLLIN, () => undefined);
      }
      const q = c.queues[queue]!;
      const r = serveQueue(q, o.budget ?? Number.MAX_SAFE_INTEGER, (chain) => {
        const data = o.stampThreadChains
          ? new Uint8Array(Uint32Array.of(threadChains).buffer)
          : readChain(c.memory, chain, 0, chain.readableBytes);
        q.pushUsed(chain.head, writeChain(c.memory, chain, 0, data));
        chains++;
        threadChains++;
        for (let i = 0; i < (o.hostErrorsPerChain ?? 0); i++) c.hostError?.(`host error ${i} on chain ${chains}`);
        dataView(c.config).setUint32(ECHO_CONFIG_CHAINS, chains, true);
        if (o.configEvery && chains % o.configEvery === 0) c.notifyConfigChange();
      });
      if (r.served > 0) c.notifyUsed(queue);
      if (r.more) c.kick(queue);
    },
    onConfigWrite(offset) {
      if (ctx && offset <= ECHO_CONFIG_SCRATCH && dataView(ctx.config).getUint32(ECHO_CONFIG_SCRATCH, true) === ECHO_FAIL_MAGIC) {
        ctx.fail("the driver asked the echo device to fail");
      }
    },
    reset() {
      ctx = undefined;
      chains = 0;
    },
    shutdown() {
      if (idleFd !== undefined) sys.close(idleFd);
      if (o.shutdownMarker) writeFileSync(o.shutdownMarker, `chains ${chains}\n`);
    },
  };
}
