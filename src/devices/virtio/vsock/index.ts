/**
 * virtio-vsock, whose createBackend a device thread calls (VIRTIO_BACKENDS in
 * backends.ts): createBackend, and what the rest of flint uses of the
 * device. The device is split as the reference monitors split it:
 *   packet.ts         the wire format (virtio_vsock_hdr) and header checks
 *   connection.ts     one stream's state, held bytes and credit accounting
 *   control-queue.ts  the bounded queue of control packets owed to the guest
 *   muxer.ts          the VirtioBackend: queues, RX scheduling, limits, listener
 *   unix.ts           the host side's Unix sockets
 *   config.ts         options and attach errors
 */
import type { VirtioBackend } from "../types.js";
import type { VsockOptions } from "./config.js";
import { VirtioVsock } from "./muxer.js";

export { checkGuestCid, VsockError, VSOCK_MAX_GUEST_CID, VSOCK_MIN_GUEST_CID, type VsockOptions } from "./config.js";
export { VSOCK_BUF_ALLOC, VSOCK_CONN_MAX_HELD_BYTES } from "./connection.js";
export { VSOCK_MAX_PENDING_RSTS } from "./control-queue.js";
export {
  VirtioVsock, VSOCK_EVENT_QUEUE, VSOCK_FIRST_HOST_PORT, VSOCK_MAX_CONNECTIONS, VSOCK_MAX_HELD_BYTES,
  VSOCK_QUEUE_SIZE, VSOCK_RX_BUDGET, VSOCK_RX_QUEUE, VSOCK_TX_BUDGET, VSOCK_TX_QUEUE, type VsockMetrics, type VsockStats,
} from "./muxer.js";
export { decodeVsockHeader, encodeVsockHeader, VSOCK_MAX_PKT_BYTES, type VsockHeader } from "./packet.js";
export { listenUnix, probeUnix } from "./unix.js";

/** The device thread's entry point: binds the listener named in `options`. */
export function createBackend(options: VsockOptions): VirtioBackend {
  return new VirtioVsock(options);
}
