/**
 * A virtio device's saved state: the record a snapshot keeps for each device
 * of a VM (VirtioSet.saveState), and from which a device of a new VM is
 * brought up where this one stopped (VirtioSet.restore). Version 1:
 *
 *   {
 *     version: 1,
 *     kind: "block" | "net" | "vsock" | "rng" | "balloon",
 *     transport: TransportSavedState,    // registers (mmio-state.ts)
 *     queues: (QueueSavedState | null)[] | null,
 *                                        // the driver's session: each queue's device-side
 *                                        // position (queue.ts), null for a queue it did not
 *                                        // make ready; null when the device was not active
 *     backend: unknown,                  // the backend's own record (its saveState), or null
 *   }
 *
 * Conventions (saved-state.ts): 64-bit values as decimal strings, bytes as
 * base64. A record is taken only from a quiesced device of a paused VM, so
 * nothing in it is half done: every chain a backend popped and still holds
 * is either listed in its record (virtio-blk's WRITE_ZEROES written over
 * several passes, virtio-net's receive chains held for one frame, the
 * balloon's statistics buffer) or was completed before the device quiesced.
 * One version covers the whole record, backends' parts included: a change
 * to any part makes it version 2.
 */
import type { VirtioDeviceKind } from "./backends.js";
import { checkTransportSavedState, type TransportSavedState } from "./mmio-state.js";
import { checkQueueSavedState, type QueueSavedState } from "./queue.js";
import { savedArray, savedObject, VirtioSavedStateError } from "./saved-state.js";

export { VirtioSavedStateError } from "./saved-state.js";
export type { TransportSavedState } from "./mmio-state.js";
export type { QueueSavedState } from "./queue.js";

/** The version of the record this flint writes and reads. */
export const VIRTIO_SAVED_STATE_VERSION = 1;

/**
 * The host-side request (VirtioDeviceHandle.request) that the device thread's
 * runner answers itself, with the device's DeviceSavedParts: never passed to
 * a backend's control.
 */
export const VIRTIO_REQUEST_SAVE_STATE = "virtio-save-state";

/** One device's record (see the module comment). */
export interface VirtioDeviceSavedState {
  version: typeof VIRTIO_SAVED_STATE_VERSION;
  kind: VirtioDeviceKind;
  transport: TransportSavedState;
  queues: (QueueSavedState | null)[] | null;
  backend: unknown;
}

/** What a device thread saves of a device; the main thread adds the version and kind. */
export type DeviceSavedParts = Omit<VirtioDeviceSavedState, "version" | "kind">;

/**
 * Reads the record of device `index` (for messages) from JSON: its version,
 * its kind against `kind` (the configuration it is restored into), and the
 * shape of its transport and queue parts (the backend checks its own part
 * when the device starts). Throws VirtioSavedStateError with a one-line
 * message: EVIRTIOSNAPVERSION, EVIRTIOSNAPFORMAT or EVIRTIOSNAPMISMATCH.
 */
export function checkVirtioDeviceSavedState(v: unknown, kind: VirtioDeviceKind, index: number): VirtioDeviceSavedState {
  const prefix = `Cannot restore virtio device ${index} (${kind}): `;
  try {
    const o = savedObject(v, "(the record)");
    if (o.version !== VIRTIO_SAVED_STATE_VERSION) {
      throw new VirtioSavedStateError("EVIRTIOSNAPVERSION", `its saved state has version ${JSON.stringify(o.version)}; this flint reads version ${VIRTIO_SAVED_STATE_VERSION}`);
    }
    if (o.kind !== kind) throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `its saved state is of a ${JSON.stringify(o.kind)} device`);
    const transport = checkTransportSavedState(o.transport);
    let queues: (QueueSavedState | null)[] | null = null;
    if (o.queues !== null) {
      const list = savedArray(o.queues, "queues", transport.queues.length);
      if (list.length !== transport.queues.length) {
        throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", `saved state field queues has ${list.length} entries for ${transport.queues.length} queues`);
      }
      queues = list.map((q, i) => (q === null ? null : checkQueueSavedState(q, `queues[${i}]`)));
    }
    if (!("backend" in o)) throw new VirtioSavedStateError("EVIRTIOSNAPFORMAT", "saved state field backend is missing (null when the backend has none)");
    return { version: VIRTIO_SAVED_STATE_VERSION, kind, transport, queues, backend: o.backend };
  } catch (e) {
    if (e instanceof VirtioSavedStateError) throw e.prefixed(prefix);
    throw e;
  }
}
