/**
 * The control packets virtio-vsock owes the guest (OP_REQUEST, OP_RESPONSE,
 * OP_RST), waiting for RX buffers in the order they were queued. The guest
 * decides when RX buffers come, possibly never, so the queue is bounded by
 * construction:
 *   - a live connection has at most one REQUEST or RESPONSE queued, and it
 *     goes when the connection goes (forget): at most one per connection;
 *   - an OP_RST is queued at most once per (local, peer) port pair (a second
 *     is coalesced: the guest learns the same thing), and at most
 *     VSOCK_MAX_PENDING_RSTS in all (more are dropped: a guest that posts no
 *     RX buffers only loses answers to its own bad packets).
 */
import { VIRTIO_VSOCK_OP_RST } from "../../../linux/abi.generated.js";
import type { VsockConnection } from "./connection.js";

/** Most OP_RSTs waiting for RX buffers. */
export const VSOCK_MAX_PENDING_RSTS = 1024;

/** A control packet waiting for an RX buffer. */
export interface ControlPacket {
  /** Its key in the queue: op and port pair. */
  key: string;
  op: number;
  localPort: number;
  peerPort: number;
  /** The connection whose fwd_cnt to advertise, if any. */
  conn?: VsockConnection;
}

/** What pushRst did with an RST. */
export type RstQueued = "queued" | "coalesced" | "dropped";

const keyOf = (op: number, localPort: number, peerPort: number): string => `${op}:${localPort}:${peerPort}`;

/** See the module comment. */
export class ControlQueue {
  /** Insertion-ordered: the RX queue takes them first come, first served. */
  private readonly packets = new Map<string, ControlPacket>();
  private rsts = 0;

  /** Packets waiting. */
  get size(): number { return this.packets.size; }

  /** Queues an OP_RST for the pair, unless one waits already or VSOCK_MAX_PENDING_RSTS do. */
  pushRst(localPort: number, peerPort: number, conn?: VsockConnection): RstQueued {
    const key = keyOf(VIRTIO_VSOCK_OP_RST, localPort, peerPort);
    if (this.packets.has(key)) return "coalesced";
    if (this.rsts >= VSOCK_MAX_PENDING_RSTS) return "dropped";
    this.rsts++;
    this.packets.set(key, { key, op: VIRTIO_VSOCK_OP_RST, localPort, peerPort, ...(conn ? { conn } : {}) });
    return "queued";
  }

  /** Queues a live connection's REQUEST or RESPONSE (it has at most one: conn.pendingControl). */
  pushForConn(op: number, conn: VsockConnection): void {
    this.forget(conn);
    const key = keyOf(op, conn.localPort, conn.peerPort);
    this.packets.set(key, { key, op, localPort: conn.localPort, peerPort: conn.peerPort, conn });
    conn.pendingControl = key;
  }

  /** The connection is gone: its REQUEST or RESPONSE is no longer owed. */
  forget(conn: VsockConnection): void {
    if (conn.pendingControl === undefined) return;
    this.packets.delete(conn.pendingControl);
    conn.pendingControl = undefined;
  }

  /** The oldest packet, left in the queue. */
  peek(): ControlPacket | undefined {
    const first = this.packets.values().next();
    return first.done ? undefined : first.value;
  }

  /** Removes `p` once it is written to an RX buffer. */
  take(p: ControlPacket): void {
    if (!this.packets.delete(p.key)) return;
    if (p.op === VIRTIO_VSOCK_OP_RST) this.rsts--;
    if (p.conn?.pendingControl === p.key) p.conn.pendingControl = undefined;
  }

  clear(): void {
    this.packets.clear();
    this.rsts = 0;
  }
}
