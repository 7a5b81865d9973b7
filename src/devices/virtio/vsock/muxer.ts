/**
 * virtio-vsock (virtio 1.x §5.10), the device: its three queues, the
 * scheduling of RX buffers over connections, and the Unix-socket listener.
 * The wire format is packet.ts, one connection's state and credit is
 * connection.ts, the control packets owed to the guest are control-queue.ts,
 * the host sockets' conventions are unix.ts:
 *
 *   host-initiated   flint listens on `uds`. A host client connects and sends
 *                    "CONNECT <port>\n"; flint sends OP_REQUEST to the guest
 *                    (src_cid VMADDR_CID_HOST, a fresh host port) and, on
 *                    OP_RESPONSE, answers "OK <hostport>\n"; then bytes flow.
 *                    An OP_RST instead closes the client.
 *   guest-initiated  an OP_REQUEST to port P connects to the Unix socket
 *                    "<uds>_<P>": OP_RESPONSE on success, OP_RST otherwise.
 *
 * Queues: RX (0, device to guest), TX (1, guest to device), event (2).
 * Stream sockets only.
 *
 * The device thread polls: the listener, each host socket (POLLIN while the
 * guest has credit and flint is not already holding readable data, POLLOUT
 * while data is pending). All fds are non-blocking; nothing here blocks.
 *
 * The guest is hostile. What it can make flint hold is bounded, with a
 * defined policy past each bound:
 *   - a TX packet's payload: at most VSOCK_MAX_PKT_BYTES (more: OP_RST);
 *   - guest data held per connection: at most VSOCK_BUF_ALLOC, the credit
 *     flint advertises (more: a credit violation, OP_RST and the host socket
 *     closed), stored in at most VSOCK_CONN_MAX_HELD_BYTES (288 KiB);
 *   - connections (host sockets of any state): at most VSOCK_MAX_CONNECTIONS
 *     (more: a guest OP_REQUEST gets OP_RST, a host client is closed at once);
 *     so at most VSOCK_MAX_HELD_BYTES (72 MiB) of guest data per device;
 *   - control packets waiting for RX buffers: one per live connection
 *     (its REQUEST or RESPONSE), plus OP_RSTs coalesced to one per port pair
 *     and capped at VSOCK_MAX_PENDING_RSTS (more: dropped and counted). A
 *     guest that never posts RX buffers only loses its own resets.
 * Work is budgeted: at most VSOCK_TX_BUDGET TX chains and VSOCK_RX_BUDGET RX
 * packets per pass, then the device thread is asked to come back (ctx.kick)
 * after it has looked at its control eventfd and other fds. No TX chain is
 * ever held: one connection whose host socket is slow keeps its own bytes
 * (within its credit) and never stops another's. Every bad packet is a
 * counted guest fault (ctx.guestFault), never an exception.
 *
 * Snapshots (persist.ts): connections are dropped; a restored device sends
 * the driver a TRANSPORT_RESET event when first kicked and keeps the RX
 * queue quiet until the driver acknowledges it.
 */
import { unlinkSync } from "node:fs";
import {
  POLLERR, POLLHUP, POLLIN, POLLOUT, SHUT_RD, EAGAIN, EINTR, VIRTIO_ID_VSOCK, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
  VIRTIO_VSOCK_OP_CREDIT_REQUEST, VIRTIO_VSOCK_OP_CREDIT_UPDATE, VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_OP_SHUTDOWN, VIRTIO_VSOCK_SHUTDOWN_RCV, VIRTIO_VSOCK_SHUTDOWN_SEND,
  VIRTIO_VSOCK_TYPE_STREAM, VMADDR_CID_HOST, SOCK_CLOEXEC, SOCK_NONBLOCK, virtio_vsock_config, virtio_vsock_event,
  virtio_vsock_hdr,
} from "../../../linux/abi.generated.js";
import { dataView, setU32, setU64 } from "../../../memory/le.js";
import { sys } from "../../../sys/native.js";
import { readChain, writeChain } from "../chain-io.js";
import { type ServeResult, serveQueue } from "../queue.js";
import type { BackendRequest, DescriptorChain, VirtioBackend, VirtioDeviceContext } from "../types.js";
import { checkGuestCid, type VsockOptions } from "./config.js";
import { VSOCK_BUF_ALLOC, VSOCK_CONN_MAX_HELD_BYTES, VsockConnection } from "./connection.js";
import { type ControlPacket, ControlQueue } from "./control-queue.js";
import { checkTxHeader, decodeVsockHeader, encodeVsockHeader, VSOCK_MAX_PKT_BYTES, type VsockHeader } from "./packet.js";
import { checkVsockSavedState, type VsockSavedState } from "./persist.js";
import { connectService, listenUnix } from "./unix.js";

/** Queue indices (§5.10.2). */
export const VSOCK_RX_QUEUE = 0;
export const VSOCK_TX_QUEUE = 1;
export const VSOCK_EVENT_QUEUE = 2;
/** Descriptors per queue. */
export const VSOCK_QUEUE_SIZE = 256;
/** First host port of host-initiated connections (as Firecracker: far from guest ephemeral ports). */
export const VSOCK_FIRST_HOST_PORT = 1 << 30;
/** Most open host sockets (connections in any state, host clients still handshaking included). */
export const VSOCK_MAX_CONNECTIONS = 256;
/** Most guest data one device makes flint hold: every connection's buffer full. */
export const VSOCK_MAX_HELD_BYTES = VSOCK_MAX_CONNECTIONS * VSOCK_CONN_MAX_HELD_BYTES;
/** TX chains served per pass before the device thread looks at its other fds. */
export const VSOCK_TX_BUDGET = 64;
/** RX packets written per pass (each at most VSOCK_MAX_PKT_BYTES). */
export const VSOCK_RX_BUDGET = 64;
/** Host clients accepted per listener wake-up (the rest are taken on the next poll). */
const ACCEPT_BUDGET = 16;

/** Counters of what the device did. */
export interface VsockMetrics {
  /** TX chains served (every one goes back at once). */
  txPackets: number;
  /** Malformed or unexpected packets from the guest (each a guest fault). */
  badPackets: number;
  /** RST packets sent to the guest. */
  resetsSent: number;
  /** Bytes guest -> host socket, and host socket -> guest. */
  txBytes: number;
  rxBytes: number;
  /** Host clients dropped before a connection was made (bad CONNECT line). */
  hostClientsRejected: number;
  /** TX packets over VSOCK_MAX_PKT_BYTES (connection reset). */
  oversizePackets: number;
  /** RW packets beyond the credit flint advertised (connection reset). */
  creditViolations: number;
  /** Guest requests and host clients refused at VSOCK_MAX_CONNECTIONS. */
  connectionsRefused: number;
  /** RSTs not queued because one for the same port pair was already waiting. */
  resetsCoalesced: number;
  /** RSTs not queued because VSOCK_MAX_PENDING_RSTS were waiting. */
  resetsDropped: number;
  /** Passes that ran out of budget with work left (the device thread came back). */
  txYields: number;
  rxYields: number;
}

/** The counters and what the device holds now: the answer to a "metrics" request. */
export interface VsockStats extends VsockMetrics {
  /** Open host sockets (at most VSOCK_MAX_CONNECTIONS). */
  connections: number;
  /** Control packets waiting for RX buffers. */
  pendingControls: number;
  /** Bytes allocated for held guest data (at most VSOCK_MAX_HELD_BYTES). */
  heldBytes: number;
}

const pairKey = (localPort: number, peerPort: number): string => `${localPort}:${peerPort}`;
const HDR = virtio_vsock_hdr.SIZE;

/** The virtio-vsock device. */
export class VirtioVsock implements VirtioBackend {
  readonly deviceId = VIRTIO_ID_VSOCK;
  readonly queueMaxSizes = [VSOCK_QUEUE_SIZE, VSOCK_QUEUE_SIZE, VSOCK_QUEUE_SIZE] as const;
  /** Stream only: VIRTIO_VSOCK_F_SEQPACKET is not offered. */
  readonly deviceFeatures = 0n;
  readonly cid: number;
  readonly uds: string;
  readonly metrics: VsockMetrics = {
    txPackets: 0, badPackets: 0, resetsSent: 0, txBytes: 0, rxBytes: 0, hostClientsRejected: 0, oversizePackets: 0, creditViolations: 0,
    connectionsRefused: 0, resetsCoalesced: 0, resetsDropped: 0, txYields: 0, rxYields: 0,
  };
  private readonly listenFd: number;
  private ctx: VirtioDeviceContext | undefined;
  private closed = false;
  private activatedBefore = false;
  private resetEventDue = false;
  /**
   * Restored from a snapshot: nothing goes to the RX queue until the driver
   * has acknowledged the TRANSPORT_RESET event (persist.ts); `resetEventSent`
   * once it is in the event queue's used ring.
   */
  private rxGated = false;
  private resetEventSent = false;
  /** Connections the guest knows, by (local, peer) port pair. */
  private readonly conns = new Map<string, VsockConnection>();
  /** Every open host socket, including handshake and draining ones. */
  private readonly byFd = new Map<number, VsockConnection>();
  /** Control packets owed to the guest, in order (bounded: see control-queue.ts). */
  private readonly controls = new ControlQueue();
  /** Connections that may have work for an RX buffer, in round-robin order. */
  private readonly rxReady = new Set<VsockConnection>();
  private nextHostPort = VSOCK_FIRST_HOST_PORT;
  private readonly scratch = new Uint8Array(VSOCK_MAX_PKT_BYTES);

  /** Binds and listens on `uds` (in the device thread: the fds belong to it). */
  constructor(options: VsockOptions) {
    checkGuestCid(options.cid);
    this.cid = options.cid;
    this.uds = options.uds;
    this.listenFd = listenUnix(options.uds);
  }

  initialConfig(): Uint8Array {
    const config = new Uint8Array(virtio_vsock_config.SIZE);
    setU64(dataView(config), virtio_vsock_config.guest_cid, BigInt(this.cid));
    return config;
  }

  activate(ctx: VirtioDeviceContext): void {
    if (this.closed) return;
    this.ctx = ctx;
    // §5.10.6.6: after a reset the driver's connections are gone; tell it so.
    if (this.activatedBefore) this.resetEventDue = true;
    this.activatedBefore = true;
    ctx.watch(this.listenFd, POLLIN, () => this.acceptClients());
    this.sendEvent();
    this.processTx();
  }

  onNotify(queue: number): void {
    if (!this.ctx) return;
    if (queue === VSOCK_RX_QUEUE) this.fillRx();
    else if (queue === VSOCK_TX_QUEUE) this.processTx();
    else if (queue === VSOCK_EVENT_QUEUE) {
      // The driver kicks the event queue once it has handled the events and put the buffers
      // back: after a restore's TRANSPORT_RESET, that is its acknowledgement (persist.ts).
      const acknowledged = this.rxGated && this.resetEventSent;
      if (acknowledged) {
        this.rxGated = false;
        this.resetEventSent = false;
      }
      this.sendEvent();
      if (acknowledged) this.fillRx();
    }
  }

  /** The device's record for a snapshot (persist.ts): its cid and next host port; connections are not kept. */
  saveState(): VsockSavedState {
    return { cid: this.cid, nextHostPort: this.nextHostPort };
  }

  /**
   * Takes up a saved device (see VirtioBackend.restoreState): with `ctx` the
   * driver's session goes on without its connections; the TRANSPORT_RESET
   * that tells it so goes out when the device is first kicked (kick), and the
   * RX queue stays quiet until the driver acknowledges it.
   */
  restoreState(state: unknown, ctx: VirtioDeviceContext | undefined): void {
    const s = checkVsockSavedState(state, this.cid);
    this.nextHostPort = Math.max(s.nextHostPort, VSOCK_FIRST_HOST_PORT);
    if (!ctx || this.closed) return;
    this.ctx = ctx;
    this.activatedBefore = true;
    this.resetEventDue = true;
    this.rxGated = true;
    this.resetEventSent = false;
    ctx.watch(this.listenFd, POLLIN, () => this.acceptClients());
  }

  /**
   * The host's kick after a restore (VirtioBackend.kick): the TRANSPORT_RESET
   * event, the TX chains the guest posted before the snapshot (their kicks
   * were lost with the old VM), and RX once the driver has acknowledged. The
   * event queue is not "notified": a notify is the driver's acknowledgement.
   */
  kick(): void {
    this.sendEvent();
    this.processTx();
  }

  /** Device reset: every host connection is closed; the listener stays (its clients wait in the backlog). */
  reset(): void {
    this.ctx = undefined;
    this.rxGated = false;
    this.resetEventSent = false;
    this.dropAll();
  }

  /** VM stop: close every socket and remove the listener's path. */
  shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    this.ctx = undefined;
    this.dropAll();
    sys.close(this.listenFd);
    try { unlinkSync(this.uds); } catch { /* already gone */ }
  }

  /** Host-side requests: "metrics" answers VsockStats (the device thread serves it between guest events). */
  control(request: BackendRequest): VsockStats {
    if (request.op !== "metrics") throw new Error(`unknown request '${request.op}' (virtio-vsock answers 'metrics')`);
    return { ...this.metrics, connections: this.connectionCount, pendingControls: this.pendingControlCount, heldBytes: this.heldBytes };
  }

  /** Open host sockets. */
  get connectionCount(): number { return this.byFd.size; }
  /** Control packets waiting for RX buffers. */
  get pendingControlCount(): number { return this.controls.size; }
  /** Bytes allocated for guest data held across all connections. */
  get heldBytes(): number {
    let n = 0;
    for (const c of this.byFd.values()) n += c.allocatedBytes;
    return n;
  }

  private dropAll(): void {
    for (const c of this.byFd.values()) sys.close(c.fd);
    this.byFd.clear();
    this.conns.clear();
    this.controls.clear();
    this.rxReady.clear();
  }

  // --- Guest -> host (TX) ---

  /** Serves up to VSOCK_TX_BUDGET chains; every chain goes back at once (none is ever held). */
  private processTx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[VSOCK_TX_QUEUE];
    if (!ctx || !q) return;
    let r: ServeResult;
    try {
      r = serveQueue(q, VSOCK_TX_BUDGET, (chain) => {
        this.metrics.txPackets++;
        this.handleTx(ctx, chain);
        q.pushUsed(chain.head, 0);
      });
    } catch (e) {
      // Only the ring itself throws here (QueueError): the driver broke it.
      this.ctx = undefined;
      ctx.fail(`virtio-vsock: ${(e as Error).message}`);
      return;
    }
    if (r.served > 0) ctx.notifyUsed(VSOCK_TX_QUEUE);
    if (r.more) {
      this.metrics.txYields++;
      ctx.kick(VSOCK_TX_QUEUE);
    }
    this.fillRx();
  }

  /** One guest packet. */
  private handleTx(ctx: VirtioDeviceContext, chain: DescriptorChain): void {
    const mem = ctx.memory;
    if (chain.readableBytes < HDR) return this.bad(`TX packet of ${chain.readableBytes} bytes has no header`);
    let h: VsockHeader;
    try {
      h = decodeVsockHeader(readChain(mem, chain, 0, HDR));
    } catch (e) {
      return this.bad(`TX header unreadable: ${(e as Error).message}`);
    }
    const verdict = checkTxHeader(h, chain.readableBytes - HDR, this.cid);
    if (verdict.kind === "drop") return this.bad(verdict.why);
    const conn = this.conns.get(pairKey(h.dstPort, h.srcPort));
    const rst = (why: string): void => {
      this.bad(why);
      if (h.op !== VIRTIO_VSOCK_OP_RST) this.queueRst(h.dstPort, h.srcPort);
      if (conn) this.close(conn);
    };
    if (verdict.kind === "rst") {
      if (verdict.oversize) this.metrics.oversizePackets++;
      return rst(verdict.why);
    }
    if (conn) {
      // Every header carries the guest's credit (§5.10.6.3): more of it may let host data flow.
      conn.updatePeerCredit(h.bufAlloc, h.fwdCnt);
      this.markRx(conn);
    }
    const pair = `${h.srcPort}->${h.dstPort}`;

    switch (h.op) {
      case VIRTIO_VSOCK_OP_REQUEST: {
        if (conn) return rst(`REQUEST for existing connection ${pair}`);
        return this.connectGuest(h);
      }
      case VIRTIO_VSOCK_OP_RESPONSE: {
        if (conn?.state !== "connecting") return rst(`unexpected RESPONSE for ${pair}`);
        conn.state = "established";
        conn.pushOwn(new TextEncoder().encode(`OK ${conn.localPort}\n`));
        this.flushConn(conn);
        this.rewatch(conn);
        return;
      }
      case VIRTIO_VSOCK_OP_RST: {
        if (conn) this.close(conn);
        return;
      }
      case VIRTIO_VSOCK_OP_RW: {
        if (conn?.state !== "established") return rst(`RW for no established connection ${pair}`);
        if (conn.guestShutdown & VIRTIO_VSOCK_SHUTDOWN_SEND) return rst(`RW after SHUTDOWN(SEND) on ${pair}`);
        if (h.len === 0) return;
        // §5.10.6.3: the guest may send at most buf_alloc - (bytes flint still holds).
        if (h.len > conn.freeBufBytes) {
          this.metrics.creditViolations++;
          return rst(`RW of ${h.len} bytes on ${pair} exceeds flint's credit of ${conn.freeBufBytes}`);
        }
        // Bytes already waiting mean the socket was full: POLLOUT flushes them, no write(2) per packet meanwhile.
        const waiting = conn.pendingBytes > 0;
        conn.pushGuestData(readChain(mem, chain, HDR, h.len));
        if (!waiting) this.flushConn(conn);
        this.rewatch(conn);
        return;
      }
      case VIRTIO_VSOCK_OP_CREDIT_UPDATE: {
        if (!conn) return rst(`CREDIT_UPDATE for no connection ${pair}`);
        this.rewatch(conn);
        return;
      }
      case VIRTIO_VSOCK_OP_CREDIT_REQUEST: {
        if (!conn) return rst(`CREDIT_REQUEST for no connection ${pair}`);
        conn.creditUpdateDue = true;
        this.markRx(conn);
        return;
      }
      case VIRTIO_VSOCK_OP_SHUTDOWN: {
        if (conn?.state !== "established") return rst(`SHUTDOWN for no established connection ${pair}`);
        const flags = h.flags & (VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND);
        if (flags !== h.flags) this.bad(`SHUTDOWN with unknown flags 0x${h.flags.toString(16)}`);
        conn.guestShutdown |= flags;
        if (conn.guestShutdown === (VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND)) {
          // §5.10.6.5: the peer answers a full shutdown with RST; flush what the guest sent, then close.
          this.queueRst(conn.localPort, conn.peerPort, conn);
          this.drain(conn);
          return;
        }
        if (flags & VIRTIO_VSOCK_SHUTDOWN_RCV) sys.shutdown(conn.fd, SHUT_RD);
        if (flags & VIRTIO_VSOCK_SHUTDOWN_SEND) this.flushConn(conn); // SHUT_WR once pending is out
        this.rewatch(conn);
        return;
      }
      default:
        return rst(`unknown op ${h.op} on ${pair}`);
    }
  }

  /** Guest OP_REQUEST to port P: connect to `${uds}_${P}`, unless the connection table is full. */
  private connectGuest(h: VsockHeader): void {
    if (this.byFd.size >= VSOCK_MAX_CONNECTIONS) {
      this.metrics.connectionsRefused++;
      this.queueRst(h.dstPort, h.srcPort);
      return;
    }
    const fd = connectService(this.uds, h.dstPort);
    if (fd < 0) {
      // Refused, missing, or a full backlog: the guest sees ECONNRESET.
      this.queueRst(h.dstPort, h.srcPort);
      return;
    }
    const conn = new VsockConnection(fd, "established", h.dstPort, h.srcPort);
    conn.updatePeerCredit(h.bufAlloc, h.fwdCnt);
    this.byFd.set(fd, conn);
    this.conns.set(pairKey(conn.localPort, conn.peerPort), conn);
    this.controls.pushForConn(VIRTIO_VSOCK_OP_RESPONSE, conn);
    this.rewatch(conn);
  }

  /** Sends held guest data to the host socket; a failed socket resets the connection, a drained one closes. */
  private flushConn(conn: VsockConnection): void {
    const r = conn.flush();
    if (r < 0) {
      if (conn.state === "draining") this.close(conn);
      else this.resetConn(conn);
      return;
    }
    this.metrics.txBytes += r;
    if (conn.state === "draining" && conn.pendingBytes === 0) return this.close(conn);
    this.markRx(conn); // a credit update may be due
  }

  // --- Host sockets ---

  /** New host clients, at most ACCEPT_BUDGET per wake-up; past VSOCK_MAX_CONNECTIONS each is closed at once. */
  private acceptClients(): void {
    for (let i = 0; i < ACCEPT_BUDGET; i++) {
      const fd = sys.accept4(this.listenFd, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd === -EINTR) continue;
      if (fd < 0) return; // EAGAIN, or an error the next poll reports again
      if (this.byFd.size >= VSOCK_MAX_CONNECTIONS) {
        this.metrics.connectionsRefused++;
        sys.close(fd);
        continue;
      }
      const conn = new VsockConnection(fd, "handshake", 0, 0);
      this.byFd.set(fd, conn);
      this.ctx?.watch(fd, POLLIN, (ev) => this.onReady(conn, ev));
    }
  }

  private readHandshake(conn: VsockConnection): void {
    const line = conn.readConnectLine();
    if (line.kind === "wait") return;
    if (line.kind === "reject") {
      this.metrics.hostClientsRejected++;
      return this.close(conn);
    }
    conn.peerPort = line.port;
    conn.localPort = this.freshHostPort(line.port);
    conn.state = "connecting";
    this.conns.set(pairKey(conn.localPort, conn.peerPort), conn);
    // Nothing to read until the guest answers (a hang-up is noticed then).
    this.ctx?.unwatch(conn.fd);
    this.controls.pushForConn(VIRTIO_VSOCK_OP_REQUEST, conn);
    this.fillRx();
  }

  /** A host port not in use with `peerPort` (at most VSOCK_MAX_CONNECTIONS are, so this ends quickly). */
  private freshHostPort(peerPort: number): number {
    for (;;) {
      const p = this.nextHostPort;
      this.nextHostPort = this.nextHostPort >= 0xffff_fffe ? VSOCK_FIRST_HOST_PORT : this.nextHostPort + 1;
      if (!this.conns.has(pairKey(p, peerPort))) return p;
    }
  }

  private onReady(conn: VsockConnection, revents: number): void {
    if (this.byFd.get(conn.fd) !== conn) return;
    if (conn.state === "handshake") {
      if (revents & (POLLIN | POLLHUP | POLLERR)) this.readHandshake(conn);
      return;
    }
    if (revents & (POLLOUT | POLLHUP | POLLERR) && conn.pendingBytes > 0) this.flushConn(conn);
    if (this.byFd.get(conn.fd) === conn) {
      if (revents & (POLLIN | POLLHUP | POLLERR)) conn.readable = true;
      this.rewatch(conn);
      this.markRx(conn);
    }
    this.fillRx();
  }

  /** Polls the host socket for what the connection can use now (nothing: not polled at all, POLLHUP included). */
  private rewatch(conn: VsockConnection): void {
    const ctx = this.ctx;
    if (!ctx || this.byFd.get(conn.fd) !== conn) return;
    const events = conn.pollEvents();
    if (events) ctx.watch(conn.fd, events, (ev) => this.onReady(conn, ev));
    else ctx.unwatch(conn.fd);
  }

  /** The guest is done with `conn`: flush what it sent, then close. */
  private drain(conn: VsockConnection): void {
    this.conns.delete(pairKey(conn.localPort, conn.peerPort));
    this.rxReady.delete(conn);
    conn.state = "draining";
    this.flushConn(conn);
    this.rewatch(conn);
  }

  /** Closes the host socket and forgets the connection, with any REQUEST/RESPONSE it still had queued. */
  private close(conn: VsockConnection): void {
    if (this.byFd.get(conn.fd) !== conn) return;
    this.ctx?.unwatch(conn.fd);
    sys.close(conn.fd);
    this.byFd.delete(conn.fd);
    this.rxReady.delete(conn);
    const k = pairKey(conn.localPort, conn.peerPort);
    if (this.conns.get(k) === conn) this.conns.delete(k);
    this.controls.forget(conn);
  }

  /** The host side failed: RST to the guest, close the socket. */
  private resetConn(conn: VsockConnection): void {
    if (conn.state !== "handshake") this.queueRst(conn.localPort, conn.peerPort);
    this.close(conn);
  }

  /** Queues an RST for the guest (coalesced or dropped past the control queue's bounds, and counted). */
  private queueRst(localPort: number, peerPort: number, conn?: VsockConnection): void {
    const r = this.controls.pushRst(localPort, peerPort, conn);
    if (r === "coalesced") this.metrics.resetsCoalesced++;
    else if (r === "dropped") this.metrics.resetsDropped++;
  }

  // --- Host -> guest (RX) ---

  private markRx(conn: VsockConnection): void {
    if (conn.hasRxWork() && this.byFd.get(conn.fd) === conn) this.rxReady.add(conn);
  }

  /** Fills up to VSOCK_RX_BUDGET RX buffers: control packets first, then data round-robin over connections. */
  private fillRx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[VSOCK_RX_QUEUE];
    if (!ctx || !q || this.rxGated) return;
    let packets = 0;
    try {
      while (packets < VSOCK_RX_BUDGET) {
        const work = this.nextRxWork();
        if (!work) break;
        const chain = q.pop();
        if (!chain) break;
        packets++;
        if (chain.writableBytes < HDR) {
          this.bad(`RX buffer of ${chain.writableBytes} bytes cannot hold a header`);
          q.pushUsed(chain.head, 0);
          continue;
        }
        q.pushUsed(chain.head, this.fillOne(ctx, chain, work));
      }
    } catch (e) {
      this.ctx = undefined;
      ctx.fail(`virtio-vsock: ${(e as Error).message}`);
      return;
    }
    if (packets > 0) ctx.notifyUsed(VSOCK_RX_QUEUE);
    if (packets >= VSOCK_RX_BUDGET && q.hasAvailable() && this.nextRxWork()) {
      this.metrics.rxYields++;
      ctx.kick(VSOCK_RX_QUEUE);
    }
  }

  /** What the next RX buffer is for, without consuming it. */
  private nextRxWork(): ControlPacket | VsockConnection | undefined {
    const control = this.controls.peek();
    if (control) return control;
    for (const c of this.rxReady) {
      if (c.hasRxWork()) return c;
      this.rxReady.delete(c);
    }
    return undefined;
  }

  /** Writes one packet for `work` into `chain`; returns the bytes written. */
  private fillOne(ctx: VirtioDeviceContext, chain: DescriptorChain, work: ControlPacket | VsockConnection): number {
    if (!(work instanceof VsockConnection)) {
      this.controls.take(work);
      if (work.op === VIRTIO_VSOCK_OP_RST) this.metrics.resetsSent++;
      return this.writePacket(ctx, chain, work.op, work.localPort, work.peerPort, 0, work.conn, undefined);
    }
    const conn = work;
    // Round robin: this connection goes to the back of the line.
    this.rxReady.delete(conn);
    const n = this.fillFromConn(ctx, chain, conn);
    this.markRx(conn);
    return n;
  }

  private fillFromConn(ctx: VirtioDeviceContext, chain: DescriptorChain, conn: VsockConnection): number {
    if (conn.readable && conn.wantsRead()) {
      const room = Math.min(chain.writableBytes - HDR, conn.peerCredit(), VSOCK_MAX_PKT_BYTES);
      if (room > 0) {
        let r: number;
        do r = sys.read(conn.fd, this.scratch, room); while (r === -EINTR);
        if (r > 0) {
          conn.sentToGuest(r);
          this.metrics.rxBytes += r;
          const n = this.writePacket(ctx, chain, VIRTIO_VSOCK_OP_RW, conn.localPort, conn.peerPort, 0, conn, this.scratch.subarray(0, r));
          this.rewatch(conn);
          return n;
        }
        conn.readable = false;
        if (r === 0) {
          // Host EOF: the guest will get no more data (§5.10.6.5).
          conn.hostEof = true;
          this.rewatch(conn);
          return this.writePacket(ctx, chain, VIRTIO_VSOCK_OP_SHUTDOWN, conn.localPort, conn.peerPort, VIRTIO_VSOCK_SHUTDOWN_SEND, conn, undefined);
        }
        if (r !== -EAGAIN) {
          // The host socket failed: this buffer carries the RST.
          this.metrics.resetsSent++;
          this.close(conn);
          return this.writePacket(ctx, chain, VIRTIO_VSOCK_OP_RST, conn.localPort, conn.peerPort, 0, conn, undefined);
        }
        this.rewatch(conn);
      }
    }
    // Nothing to read after all: use the buffer for the credit update (always valid to send).
    return this.writePacket(ctx, chain, VIRTIO_VSOCK_OP_CREDIT_UPDATE, conn.localPort, conn.peerPort, 0, conn, undefined);
  }

  private writePacket(
    ctx: VirtioDeviceContext, chain: DescriptorChain, op: number, localPort: number, peerPort: number, flags: number,
    conn: VsockConnection | undefined, data: Uint8Array | undefined,
  ): number {
    const hdr = encodeVsockHeader({
      srcCid: BigInt(VMADDR_CID_HOST), dstCid: BigInt(this.cid), srcPort: localPort, dstPort: peerPort,
      len: data?.length ?? 0, type: VIRTIO_VSOCK_TYPE_STREAM, op, flags, bufAlloc: VSOCK_BUF_ALLOC, fwdCnt: conn?.advertiseFwdCnt() ?? 0,
    });
    try {
      let n = writeChain(ctx.memory, chain, 0, hdr);
      if (data) n += writeChain(ctx.memory, chain, n, data);
      return n;
    } catch (e) {
      this.bad(`RX buffer unwritable: ${(e as Error).message}`);
      return 0;
    }
  }

  /** Delivers a due TRANSPORT_RESET event. */
  private sendEvent(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[VSOCK_EVENT_QUEUE];
    if (!ctx || !q || !this.resetEventDue) return;
    try {
      const chain = q.pop();
      if (!chain) return;
      const ev = new Uint8Array(virtio_vsock_event.SIZE);
      setU32(dataView(ev), virtio_vsock_event.id, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
      let n = 0;
      try {
        n = writeChain(ctx.memory, chain, 0, ev);
      } catch (e) {
        this.bad(`event buffer unwritable: ${(e as Error).message}`);
      }
      if (n < ev.length) this.bad(`event buffer of ${chain.writableBytes} bytes`);
      else {
        this.resetEventDue = false;
        if (this.rxGated) this.resetEventSent = true;
      }
      q.pushUsed(chain.head, n);
    } catch (e) {
      this.ctx = undefined;
      ctx.fail(`virtio-vsock: ${(e as Error).message}`);
      return;
    }
    ctx.notifyUsed(VSOCK_EVENT_QUEUE);
  }

  private bad(why: string): void {
    this.metrics.badPackets++;
    this.ctx?.guestFault(`virtio-vsock: ${why}`);
  }
}
