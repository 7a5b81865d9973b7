/**
 * virtio-vsock's part of a device's saved state (device-saved-state.ts):
 * what VirtioVsock.saveState writes and restoreState reads (muxer.ts).
 *
 * Connections do not survive a snapshot, as in Firecracker (its
 * vsock/persist.rs keeps only the socket path and the last host port): a
 * connection's other end is a host socket of the process that took the
 * snapshot, and the stream protocol cannot lose a packet. So the record
 * holds only the guest's cid (the guest knows it from config space) and the
 * next host port (so that a restored device does not hand out ports the
 * guest may still know), and the restored device tells the driver that its
 * connections are gone: a VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event
 * queue (§5.10.6.6), sent when the device is first kicked. Until the driver
 * acknowledges it (its next kick of the event queue, once it has handled
 * the event and put the buffer back) nothing is written to the RX queue, so
 * that no new connection reaches the guest before it has dropped the old
 * ones (Firecracker's pending_event_ack). No chain is ever held across
 * passes (muxer.ts): the queues' records are all there is of them.
 */
import { savedObject, savedUint, VirtioSavedStateError } from "../saved-state.js";

/** virtio-vsock's record. */
export interface VsockSavedState {
  /** The guest's cid (config guest_cid): the restored device must have the same. */
  cid: number;
  /** The next host port handed to a host-initiated connection. */
  nextHostPort: number;
}

/** Reads virtio-vsock's record from JSON, for a device whose guest cid is `cid`. Throws VirtioSavedStateError. */
export function checkVsockSavedState(v: unknown, cid: number): VsockSavedState {
  const o = savedObject(v, "backend");
  const saved = savedUint(o.cid, "backend.cid");
  if (saved !== cid) throw new VirtioSavedStateError("EVIRTIOSNAPMISMATCH", `the snapshot's guest has cid ${saved}, this device ${cid}`);
  return { cid: saved, nextHostPort: savedUint(o.nextHostPort, "backend.nextHostPort") };
}
