/**
 * virtio-vsock (virtio 1.x §5.10) with the host side on Unix sockets, in the
 * convention microVM users know from Firecracker:
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
 * Stream sockets only. Every packet starts with a virtio_vsock_hdr.
 *
 * Flow control (§5.10.6.3): each side advertises buf_alloc (its receive
 * buffer) and fwd_cnt (bytes it consumed) in every header; a sender keeps
 * tx_cnt - peer_fwd_cnt <= peer_buf_alloc. flint never sends the guest more
 * than that credit; what the guest sends flint is held per connection until
 * the host socket takes it (fwd_cnt counts bytes the socket took). A guest
 * that overruns flint's credit stalls the TX queue (the chain is held, not
 * dropped) until that connection drains.
 *
 * The device thread polls: the listener, each host socket (POLLIN while the
 * guest has credit and flint is not already holding readable data, POLLOUT
 * while data is pending). All fds are non-blocking; nothing here blocks.
 *
 * A guest can be hostile: every header field is checked, a bad packet is a
 * counted guest fault (answered with OP_RST where a connection is named),
 * never an exception.
 */
import { lstatSync, unlinkSync } from "node:fs";
import {
  AF_UNIX, EAGAIN, ECONNREFUSED, EINTR, POLLERR, POLLHUP, POLLIN, POLLOUT, SHUT_RD, SHUT_WR, SOCK_CLOEXEC,
  SOCK_NONBLOCK, SOCK_STREAM, VIRTIO_ID_VSOCK, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, VIRTIO_VSOCK_OP_CREDIT_REQUEST,
  VIRTIO_VSOCK_OP_CREDIT_UPDATE, VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RESPONSE, VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_OP_SHUTDOWN, VIRTIO_VSOCK_SHUTDOWN_RCV, VIRTIO_VSOCK_SHUTDOWN_SEND,
  VIRTIO_VSOCK_TYPE_STREAM, VMADDR_CID_HOST, virtio_vsock_config, virtio_vsock_event, virtio_vsock_hdr,
} from "../../linux/abi.generated.js";
import { dataView, getU16, getU32, getU64, setU16, setU32, setU64 } from "../../memory/le.js";
import { errnoName, sys } from "../../sys/native.js";
import { readChain, writeChain } from "./chain-io.js";
import type { DescriptorChain, VirtioBackend, VirtioDeviceContext } from "./types.js";

/** Queue indices (§5.10.2). */
export const VSOCK_RX_QUEUE = 0;
export const VSOCK_TX_QUEUE = 1;
export const VSOCK_EVENT_QUEUE = 2;
/** Descriptors per queue. */
export const VSOCK_QUEUE_SIZE = 256;
/** flint's receive buffer per connection (buf_alloc): guest data held until the host socket takes it. */
export const VSOCK_BUF_ALLOC = 256 * 1024;
/** Largest payload flint puts in one RX packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). */
export const VSOCK_MAX_PKT_BYTES = 64 * 1024;
/** First host port of host-initiated connections (as Firecracker: far from guest ephemeral ports). */
export const VSOCK_FIRST_HOST_PORT = 1 << 30;
/** Longest "CONNECT <port>\n" line accepted from a host client. */
const MAX_CONNECT_LINE = 32;
/** Smallest and largest guest CID (0-2 are reserved, 0xffffffff is VMADDR_CID_ANY). */
export const VSOCK_MIN_GUEST_CID = 3;
export const VSOCK_MAX_GUEST_CID = 0xffff_fffe;

/** How to attach a vsock device (JSON-serialisable: it is posted to the device thread). */
export interface VsockOptions {
  /** The guest's context id (3 .. 2^32-2). */
  cid: number;
  /** Path of the Unix socket flint listens on; guest connections to port P go to `${uds}_${P}`. */
  uds: string;
}

/** Why a vsock device could not be attached. */
export class VsockError extends Error {
  readonly code: "EVSOCKCONFIG" | "EVSOCKBIND";
  constructor(code: VsockError["code"], message: string) {
    super(message);
    this.name = "VsockError";
    this.code = code;
  }
}

/** Counters of what the device did. */
export interface VsockMetrics {
  /** Malformed or unexpected packets from the guest. */
  badPackets: number;
  /** RST packets sent to the guest. */
  resetsSent: number;
  /** Bytes guest -> host socket, and host socket -> guest. */
  txBytes: number;
  rxBytes: number;
  /** Host clients dropped before a connection was made (bad CONNECT line, refused). */
  hostClientsRejected: number;
  /** TX chains held because the guest exceeded flint's credit. */
  txStalls: number;
}

/** A decoded virtio_vsock_hdr (cids as bigint: they are 64-bit on the wire). */
export interface VsockHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

/** Encodes a header (tests use it as the guest). */
export function encodeVsockHeader(h: VsockHeader): Uint8Array {
  const b = new Uint8Array(virtio_vsock_hdr.SIZE);
  const v = dataView(b);
  setU64(v, virtio_vsock_hdr.src_cid, BigInt.asUintN(64, h.srcCid));
  setU64(v, virtio_vsock_hdr.dst_cid, BigInt.asUintN(64, h.dstCid));
  setU32(v, virtio_vsock_hdr.src_port, h.srcPort);
  setU32(v, virtio_vsock_hdr.dst_port, h.dstPort);
  setU32(v, virtio_vsock_hdr.len, h.len);
  setU16(v, virtio_vsock_hdr.type, h.type);
  setU16(v, virtio_vsock_hdr.op, h.op);
  setU32(v, virtio_vsock_hdr.flags, h.flags);
  setU32(v, virtio_vsock_hdr.buf_alloc, h.bufAlloc);
  setU32(v, virtio_vsock_hdr.fwd_cnt, h.fwdCnt);
  return b;
}

/** Decodes a header from its VIRTIO_VSOCK_HDR bytes. */
export function decodeVsockHeader(b: Uint8Array): VsockHeader {
  const v = dataView(b);
  return {
    srcCid: getU64(v, virtio_vsock_hdr.src_cid), dstCid: getU64(v, virtio_vsock_hdr.dst_cid),
    srcPort: getU32(v, virtio_vsock_hdr.src_port), dstPort: getU32(v, virtio_vsock_hdr.dst_port),
    len: getU32(v, virtio_vsock_hdr.len), type: getU16(v, virtio_vsock_hdr.type), op: getU16(v, virtio_vsock_hdr.op),
    flags: getU32(v, virtio_vsock_hdr.flags), bufAlloc: getU32(v, virtio_vsock_hdr.buf_alloc),
    fwdCnt: getU32(v, virtio_vsock_hdr.fwd_cnt),
  };
}

type ConnState =
  /** Host client accepted, reading its CONNECT line. */
  | "handshake"
  /** OP_REQUEST sent to the guest, waiting for OP_RESPONSE. */
  | "connecting"
  | "established"
  /** Gone for the guest (RST sent, out of the port map); the host socket is flushed, then closed. */
  | "draining";

/** One stream between a guest port and a host Unix socket. */
interface Conn {
  fd: number;
  state: ConnState;
  /** Host-side (local) port and guest-side (peer) port. */
  localPort: number;
  peerPort: number;
  /** The guest's credit: its buf_alloc and fwd_cnt as last advertised, and what flint sent (u32 counters). */
  peerBufAlloc: number;
  peerFwdCnt: number;
  txCnt: number;
  /** Bytes the host socket took (flint's fwd_cnt) and the value last told to the guest. */
  fwdCnt: number;
  advertisedFwdCnt: number;
  /** Guest data (and the OK line) not yet taken by the host socket. */
  pending: Uint8Array[];
  pendingBytes: number;
  /** The host socket has data (or EOF) flint has not read yet: not polled for POLLIN meanwhile. */
  readable: boolean;
  /** Host sent EOF (OP_SHUTDOWN SEND told to the guest). */
  hostEof: boolean;
  /** Guest's OP_SHUTDOWN flags so far. */
  guestShutdown: number;
  /** The guest asked for our credit, or we owe it an update. */
  creditUpdateDue: boolean;
  /** handshake: the CONNECT line so far. */
  line: string;
  /** Leading pending bytes that are flint's own (the OK line), not guest data. */
  ownBytes: number;
}

/** A control packet queued for the RX queue. */
interface Control {
  op: number;
  localPort: number;
  peerPort: number;
  flags: number;
  /** The connection whose fwd_cnt to advertise, if it still exists. */
  conn?: Conn;
}

const u32 = (x: number): number => x >>> 0;
const key = (localPort: number, peerPort: number): string => `${localPort}:${peerPort}`;

/** The virtio-vsock device. */
export class VirtioVsock implements VirtioBackend {
  readonly deviceId = VIRTIO_ID_VSOCK;
  readonly queueMaxSizes = [VSOCK_QUEUE_SIZE, VSOCK_QUEUE_SIZE, VSOCK_QUEUE_SIZE] as const;
  /** Stream only: VIRTIO_VSOCK_F_SEQPACKET is not offered. */
  readonly deviceFeatures = 0n;
  readonly cid: number;
  readonly uds: string;
  readonly metrics: VsockMetrics = { badPackets: 0, resetsSent: 0, txBytes: 0, rxBytes: 0, hostClientsRejected: 0, txStalls: 0 };
  private readonly listenFd: number;
  private ctx: VirtioDeviceContext | undefined;
  private closed = false;
  private activatedBefore = false;
  private resetEventDue = false;
  private readonly conns = new Map<string, Conn>();
  /** Every open host socket, including handshake and draining ones. */
  private readonly byFd = new Map<number, Conn>();
  private readonly controls: Control[] = [];
  /** Round-robin position for RX data. */
  private rxTurn = 0;
  private nextHostPort = VSOCK_FIRST_HOST_PORT;
  /** A TX chain held because its connection cannot take more yet. */
  private stalled: { chain: DescriptorChain; conn: Conn } | undefined;
  private scratch = new Uint8Array(VSOCK_MAX_PKT_BYTES);

  /** Binds and listens on `uds` (in the device thread: the fds belong to it). */
  constructor(options: VsockOptions) {
    const { cid, uds } = options;
    if (!Number.isInteger(cid) || cid < VSOCK_MIN_GUEST_CID || cid > VSOCK_MAX_GUEST_CID) {
      throw new VsockError("EVSOCKCONFIG", `Cannot attach vsock: cid ${cid} is outside ${VSOCK_MIN_GUEST_CID}..${VSOCK_MAX_GUEST_CID}`);
    }
    this.cid = cid;
    this.uds = uds;
    this.listenFd = listenUnix(uds);
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
    else if (queue === VSOCK_EVENT_QUEUE) this.sendEvent();
  }

  /** Device reset: every host connection is closed; the listener stays (its clients wait in the backlog). */
  reset(): void {
    this.ctx = undefined;
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

  /** Open host sockets (tests). */
  get connectionCount(): number { return this.byFd.size; }

  private dropAll(): void {
    for (const c of this.byFd.values()) sys.close(c.fd);
    this.byFd.clear();
    this.conns.clear();
    this.controls.length = 0;
    this.stalled = undefined;
  }

  // --- Guest -> host (TX) ---

  private processTx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[VSOCK_TX_QUEUE];
    if (!ctx || !q) return;
    let pushed = false;
    try {
      if (this.stalled) {
        const { chain, conn } = this.stalled;
        const alive = this.byFd.get(conn.fd) === conn && conn.state === "established";
        if (alive && !this.fits(conn, chain)) return;
        this.stalled = undefined;
        // A connection that went away meanwhile was reset already: its held data goes with it.
        if (alive) this.handleTx(ctx, chain, true);
        q.pushUsed(chain.head, 0);
        pushed = true;
      }
      for (let chain = q.pop(); chain && this.ctx === ctx; chain = q.pop()) {
        if (this.handleTx(ctx, chain, false) === "stall") break;
        q.pushUsed(chain.head, 0);
        pushed = true;
      }
    } catch (e) {
      // Only the ring itself throws here (QueueError): the driver broke it.
      this.ctx = undefined;
      ctx.fail(`virtio-vsock: ${(e as Error).message}`);
      return;
    }
    if (pushed) ctx.notifyUsed(VSOCK_TX_QUEUE);
    this.fillRx();
  }

  /** True when an RW chain's payload fits flint's buffer for `conn` (or the buffer is empty). */
  private fits(conn: Conn, chain: DescriptorChain): boolean {
    const len = Math.max(0, chain.readableBytes - virtio_vsock_hdr.SIZE);
    return conn.pendingBytes === 0 || conn.pendingBytes + len <= VSOCK_BUF_ALLOC;
  }

  /** One guest packet. Returns "stall" (chain held) when an RW does not fit its connection's buffer. */
  private handleTx(ctx: VirtioDeviceContext, chain: DescriptorChain, resumed: boolean): "done" | "stall" {
    const mem = ctx.memory;
    if (chain.readableBytes < virtio_vsock_hdr.SIZE) return this.bad(`TX packet of ${chain.readableBytes} bytes has no header`);
    let h: VsockHeader;
    try {
      h = decodeVsockHeader(readChain(mem, chain, 0, virtio_vsock_hdr.SIZE));
    } catch (e) {
      return this.bad(`TX header unreadable: ${(e as Error).message}`);
    }
    if (h.srcCid !== BigInt(this.cid)) return this.bad(`TX packet from cid ${h.srcCid}, the guest is ${this.cid}`);
    if (h.dstCid !== BigInt(VMADDR_CID_HOST)) return this.bad(`TX packet to cid ${h.dstCid}: only the host (${VMADDR_CID_HOST}) is reachable`);
    const payload = chain.readableBytes - virtio_vsock_hdr.SIZE;
    if (h.len > payload) return this.bad(`TX packet says len ${h.len}, the chain holds ${payload}`);
    const conn = this.conns.get(key(h.dstPort, h.srcPort));
    const rst = (why: string): "done" => {
      this.bad(why);
      if (h.op !== VIRTIO_VSOCK_OP_RST) this.queueRst(h.dstPort, h.srcPort);
      if (conn) this.close(conn);
      return "done";
    };
    if (h.type !== VIRTIO_VSOCK_TYPE_STREAM) return rst(`TX packet of type ${h.type}: only streams are supported`);
    if (conn) {
      // Every header carries the guest's credit (§5.10.6.3).
      conn.peerBufAlloc = h.bufAlloc;
      conn.peerFwdCnt = h.fwdCnt;
    }

    switch (h.op) {
      case VIRTIO_VSOCK_OP_REQUEST: {
        if (conn) return rst(`REQUEST for existing connection ${h.srcPort}->${h.dstPort}`);
        this.connectGuest(h);
        return "done";
      }
      case VIRTIO_VSOCK_OP_RESPONSE: {
        if (conn?.state !== "connecting") return rst(`unexpected RESPONSE for ${h.srcPort}->${h.dstPort}`);
        conn.state = "established";
        const ok = new TextEncoder().encode(`OK ${conn.localPort}\n`);
        this.queueWrite(conn, ok);
        conn.ownBytes = ok.length;
        this.flush(conn);
        this.rewatch(conn);
        return "done";
      }
      case VIRTIO_VSOCK_OP_RST: {
        if (conn) this.close(conn);
        return "done";
      }
      case VIRTIO_VSOCK_OP_RW: {
        if (conn?.state !== "established") return rst(`RW for no established connection ${h.srcPort}->${h.dstPort}`);
        if (conn.guestShutdown & VIRTIO_VSOCK_SHUTDOWN_SEND) return rst(`RW after SHUTDOWN(SEND) on ${h.srcPort}->${h.dstPort}`);
        if (h.len === 0) return "done";
        if (!resumed && !this.fits(conn, chain)) {
          this.metrics.txStalls++;
          this.stalled = { chain, conn };
          return "stall";
        }
        this.queueWrite(conn, readChain(mem, chain, virtio_vsock_hdr.SIZE, h.len));
        this.flush(conn);
        if (this.byFd.get(conn.fd) === conn) this.rewatch(conn);
        return "done";
      }
      case VIRTIO_VSOCK_OP_CREDIT_UPDATE: {
        if (!conn) return rst(`CREDIT_UPDATE for no connection ${h.srcPort}->${h.dstPort}`);
        if (conn.state === "established") this.rewatch(conn);
        return "done";
      }
      case VIRTIO_VSOCK_OP_CREDIT_REQUEST: {
        if (!conn) return rst(`CREDIT_REQUEST for no connection ${h.srcPort}->${h.dstPort}`);
        conn.creditUpdateDue = true;
        return "done";
      }
      case VIRTIO_VSOCK_OP_SHUTDOWN: {
        if (conn?.state !== "established") return rst(`SHUTDOWN for no established connection ${h.srcPort}->${h.dstPort}`);
        const flags = h.flags & (VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND);
        if (flags !== h.flags) this.bad(`SHUTDOWN with unknown flags 0x${h.flags.toString(16)}`);
        conn.guestShutdown |= flags;
        if (conn.guestShutdown === (VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND)) {
          // §5.10.6.5: the peer answers a full shutdown with RST; flush what the guest sent, then close.
          this.queueRst(conn.localPort, conn.peerPort, conn);
          this.drain(conn);
          return "done";
        }
        if (flags & VIRTIO_VSOCK_SHUTDOWN_RCV) sys.shutdown(conn.fd, SHUT_RD);
        if (flags & VIRTIO_VSOCK_SHUTDOWN_SEND) this.flush(conn); // SHUT_WR once pending is out
        if (this.byFd.get(conn.fd) === conn) this.rewatch(conn);
        return "done";
      }
      default:
        return rst(`unknown op ${h.op} on ${h.srcPort}->${h.dstPort}`);
    }
  }

  /** Guest OP_REQUEST to port P: connect to `${uds}_${P}`. */
  private connectGuest(h: VsockHeader): void {
    const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      this.queueRst(h.dstPort, h.srcPort);
      return;
    }
    const r = sys.connectUnix(fd, `${this.uds}_${h.dstPort}`);
    if (r < 0) {
      // Refused, missing, or a full backlog (EAGAIN): the guest sees ECONNRESET.
      sys.close(fd);
      this.queueRst(h.dstPort, h.srcPort);
      return;
    }
    const conn = this.newConn(fd, "established", h.dstPort, h.srcPort);
    conn.peerBufAlloc = h.bufAlloc;
    conn.peerFwdCnt = h.fwdCnt;
    this.conns.set(key(conn.localPort, conn.peerPort), conn);
    this.controls.push({ op: VIRTIO_VSOCK_OP_RESPONSE, localPort: conn.localPort, peerPort: conn.peerPort, flags: 0, conn });
    this.rewatch(conn);
  }

  // --- Host sockets ---

  private newConn(fd: number, state: ConnState, localPort: number, peerPort: number): Conn {
    const conn: Conn = {
      fd, state, localPort, peerPort, peerBufAlloc: 0, peerFwdCnt: 0, txCnt: 0, fwdCnt: 0, advertisedFwdCnt: 0,
      pending: [], pendingBytes: 0, readable: false, hostEof: false, guestShutdown: 0, creditUpdateDue: false, line: "", ownBytes: 0,
    };
    this.byFd.set(fd, conn);
    return conn;
  }

  private acceptClients(): void {
    for (;;) {
      const fd = sys.accept4(this.listenFd, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd === -EINTR) continue;
      if (fd < 0) return; // EAGAIN, or an error the next poll reports again
      const conn = this.newConn(fd, "handshake", 0, 0);
      this.ctx?.watch(fd, POLLIN, (ev) => this.onReady(conn, ev));
    }
  }

  /** Reads the CONNECT line a byte at a time, so data after it stays in the socket. */
  private readConnectLine(conn: Conn): void {
    const one = new Uint8Array(1);
    for (;;) {
      const r = sys.read(conn.fd, one, 1);
      if (r === -EINTR) continue;
      if (r === -EAGAIN) return;
      if (r <= 0) return this.rejectClient(conn);
      const ch = String.fromCharCode(one[0]!);
      if (ch !== "\n") {
        conn.line += ch;
        if (conn.line.length > MAX_CONNECT_LINE) return this.rejectClient(conn);
        continue;
      }
      const m = /^CONNECT (\d{1,10})\r?$/.exec(conn.line);
      const port = m ? Number(m[1]) : NaN;
      if (!(port <= 0xffff_ffff)) return this.rejectClient(conn);
      conn.peerPort = port;
      conn.localPort = this.freshHostPort(port);
      conn.state = "connecting";
      this.conns.set(key(conn.localPort, conn.peerPort), conn);
      // Nothing to read until the guest answers (a hang-up is noticed then).
      this.ctx?.unwatch(conn.fd);
      this.controls.push({ op: VIRTIO_VSOCK_OP_REQUEST, localPort: conn.localPort, peerPort: port, flags: 0, conn });
      this.fillRx();
      return;
    }
  }

  private rejectClient(conn: Conn): void {
    this.metrics.hostClientsRejected++;
    this.close(conn);
  }

  private freshHostPort(peerPort: number): number {
    for (;;) {
      const p = this.nextHostPort;
      this.nextHostPort = this.nextHostPort >= 0xffff_fffe ? VSOCK_FIRST_HOST_PORT : this.nextHostPort + 1;
      if (!this.conns.has(key(p, peerPort))) return p;
    }
  }

  private onReady(conn: Conn, revents: number): void {
    if (this.byFd.get(conn.fd) !== conn) return;
    if (conn.state === "handshake") {
      if (revents & (POLLIN | POLLHUP | POLLERR)) this.readConnectLine(conn);
      return;
    }
    if (revents & (POLLOUT | POLLHUP | POLLERR) && conn.pendingBytes > 0) this.flush(conn);
    if (this.byFd.get(conn.fd) === conn) {
      if (revents & (POLLIN | POLLHUP | POLLERR)) conn.readable = true;
      this.rewatch(conn);
    }
    // A held TX chain may fit now (or its connection is gone); either way RX may have work.
    if (this.stalled) this.processTx();
    else this.fillRx();
  }

  /** What to poll a connection for: POLLIN while its data could go to the guest, POLLOUT while data is pending. */
  private rewatch(conn: Conn): void {
    const ctx = this.ctx;
    if (!ctx || this.byFd.get(conn.fd) !== conn) return;
    let events = 0;
    if (conn.pendingBytes > 0) events |= POLLOUT;
    if (conn.state === "established" && this.wantsRead(conn) && !conn.readable) events |= POLLIN;
    // POLLHUP is reported whatever `events` says: an fd with nothing to wait for is not polled at all.
    if (events) ctx.watch(conn.fd, events, (ev) => this.onReady(conn, ev));
    else ctx.unwatch(conn.fd);
  }

  private wantsRead(conn: Conn): boolean {
    return !conn.hostEof && !(conn.guestShutdown & VIRTIO_VSOCK_SHUTDOWN_RCV) && this.credit(conn) > 0;
  }

  /** The guest's free receive space: peer_buf_alloc - (tx_cnt - peer_fwd_cnt), never negative. */
  private credit(conn: Conn): number {
    const inFlight = u32(conn.txCnt - conn.peerFwdCnt);
    return inFlight >= conn.peerBufAlloc ? 0 : conn.peerBufAlloc - inFlight;
  }

  private queueWrite(conn: Conn, data: Uint8Array): void {
    if (data.length === 0) return;
    conn.pending.push(data);
    conn.pendingBytes += data.length;
  }

  /** Writes pending data to the host socket until it would block; a dead socket resets the connection. */
  private flush(conn: Conn): void {
    while (conn.pending.length > 0) {
      const head = conn.pending[0]!;
      const r = sys.write(conn.fd, head, head.length);
      if (r === -EINTR) continue;
      if (r === -EAGAIN) break;
      if (r < 0) {
        // EPIPE / ECONNRESET: the host side is gone.
        if (conn.state === "draining") this.close(conn);
        else this.resetConn(conn);
        return;
      }
      conn.pendingBytes -= r;
      // fwd_cnt counts guest bytes only, not the "OK <port>" line in front of them.
      const ours = Math.min(r, conn.ownBytes);
      conn.ownBytes -= ours;
      conn.fwdCnt = u32(conn.fwdCnt + r - ours);
      this.metrics.txBytes += r - ours;
      if (r === head.length) conn.pending.shift();
      else conn.pending[0] = head.subarray(r);
    }
    if (conn.pendingBytes === 0) {
      if (conn.state === "draining") return this.close(conn);
      if (conn.guestShutdown & VIRTIO_VSOCK_SHUTDOWN_SEND) sys.shutdown(conn.fd, SHUT_WR);
    }
    // Tell the guest about freed space once half the buffer is free again (and whenever it drained).
    if (u32(conn.fwdCnt - conn.advertisedFwdCnt) >= VSOCK_BUF_ALLOC / 2 || (conn.pendingBytes === 0 && conn.fwdCnt !== conn.advertisedFwdCnt)) {
      conn.creditUpdateDue = true;
    }
  }

  /** The guest is done with `conn`: flush what it sent, then close. */
  private drain(conn: Conn): void {
    this.conns.delete(key(conn.localPort, conn.peerPort));
    conn.state = "draining";
    this.flush(conn);
    if (this.byFd.get(conn.fd) === conn) this.rewatch(conn);
  }

  /** Closes the host socket and forgets the connection. */
  private close(conn: Conn): void {
    if (this.byFd.get(conn.fd) !== conn) return;
    this.ctx?.unwatch(conn.fd);
    sys.close(conn.fd);
    this.byFd.delete(conn.fd);
    if (this.conns.get(key(conn.localPort, conn.peerPort)) === conn) this.conns.delete(key(conn.localPort, conn.peerPort));
  }

  /** The host side failed: RST to the guest, close the socket. */
  private resetConn(conn: Conn): void {
    if (conn.state !== "handshake") this.queueRst(conn.localPort, conn.peerPort);
    this.close(conn);
  }

  private queueRst(localPort: number, peerPort: number, conn?: Conn): void {
    this.controls.push({ op: VIRTIO_VSOCK_OP_RST, localPort, peerPort, flags: 0, ...(conn ? { conn } : {}) });
  }

  // --- Host -> guest (RX) ---

  /** Fills RX buffers: control packets first, then data round-robin over connections with credit. */
  private fillRx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[VSOCK_RX_QUEUE];
    if (!ctx || !q) return;
    let pushed = false;
    try {
      for (;;) {
        const work = this.nextRxWork();
        if (!work) break;
        const chain = q.pop();
        if (!chain) break;
        if (chain.writableBytes < virtio_vsock_hdr.SIZE) {
          this.bad(`RX buffer of ${chain.writableBytes} bytes cannot hold a header`);
          q.pushUsed(chain.head, 0);
          pushed = true;
          continue;
        }
        q.pushUsed(chain.head, this.fillOne(ctx, chain, work));
        pushed = true;
      }
    } catch (e) {
      this.ctx = undefined;
      ctx.fail(`virtio-vsock: ${(e as Error).message}`);
      return;
    }
    if (pushed) ctx.notifyUsed(VSOCK_RX_QUEUE);
  }

  /** What the next RX buffer is for, without consuming it. */
  private nextRxWork(): Control | Conn | undefined {
    if (this.controls.length > 0) return this.controls[0];
    const conns = [...this.byFd.values()];
    for (let i = 0; i < conns.length; i++) {
      const c = conns[(this.rxTurn + i) % conns.length]!;
      if (c.state !== "established") continue;
      if (c.creditUpdateDue || (c.readable && this.wantsRead(c))) {
        this.rxTurn = (this.rxTurn + i + 1) % conns.length;
        return c;
      }
    }
    return undefined;
  }

  /** Writes one packet for `work` into `chain`; returns the bytes written. */
  private fillOne(ctx: VirtioDeviceContext, chain: DescriptorChain, work: Control | Conn): number {
    if ("op" in work) {
      this.controls.shift();
      if (work.op === VIRTIO_VSOCK_OP_RST) this.metrics.resetsSent++;
      return this.writePacket(ctx, chain, work.op, work.localPort, work.peerPort, work.flags, work.conn, undefined);
    }
    const conn = work;
    if (conn.readable && this.wantsRead(conn)) {
      const room = Math.min(chain.writableBytes - virtio_vsock_hdr.SIZE, this.credit(conn), VSOCK_MAX_PKT_BYTES);
      if (room > 0) {
        let r: number;
        do r = sys.read(conn.fd, this.scratch, room); while (r === -EINTR);
        if (r > 0) {
          conn.txCnt = u32(conn.txCnt + r);
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
    conn: Conn | undefined, data: Uint8Array | undefined,
  ): number {
    const fwdCnt = conn?.fwdCnt ?? 0;
    if (conn) {
      conn.advertisedFwdCnt = fwdCnt;
      conn.creditUpdateDue = false;
    }
    const hdr = encodeVsockHeader({
      srcCid: BigInt(VMADDR_CID_HOST), dstCid: BigInt(this.cid), srcPort: localPort, dstPort: peerPort,
      len: data?.length ?? 0, type: VIRTIO_VSOCK_TYPE_STREAM, op, flags, bufAlloc: VSOCK_BUF_ALLOC, fwdCnt,
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
      else this.resetEventDue = false;
      q.pushUsed(chain.head, n);
    } catch (e) {
      this.ctx = undefined;
      ctx.fail(`virtio-vsock: ${(e as Error).message}`);
      return;
    }
    ctx.notifyUsed(VSOCK_EVENT_QUEUE);
  }

  private bad(why: string): "done" {
    this.metrics.badPackets++;
    this.ctx?.guestFault(`virtio-vsock: ${why}`);
    return "done";
  }
}

/** A non-blocking listening Unix socket at `path`; a stale socket file (nobody listening) is replaced. */
export function listenUnix(path: string): number {
  const fail = (why: string): never => { throw new VsockError("EVSOCKBIND", `Cannot attach vsock: socket '${path}' ${why}`); };
  const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail(`cannot be created (${errnoName(-fd)})`);
  let r = sys.bindUnix(fd, path);
  if (r < 0 && isSocketFile(path) && probeUnix(path) === "stale") {
    try { unlinkSync(path); } catch { /* raced away */ }
    r = sys.bindUnix(fd, path);
  }
  if (r >= 0) r = sys.listen(fd, 64);
  if (r < 0) {
    sys.close(fd);
    const name = errnoName(-r);
    fail(name === "EADDRINUSE" ? (isSocketFile(path) ? "is in use by a listening socket" : "exists and is not a socket")
      : name === "ENOENT" ? "cannot be created: its directory does not exist"
      : name === "ENAMETOOLONG" ? "is too long for a Unix socket address" : `cannot be bound (${name})`);
  }
  return fd;
}

/** True when `path` is a socket file (never replace anything else). */
function isSocketFile(path: string): boolean {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

/** Whether something listens at `path`: "listening", "stale" (a socket file nobody listens on) or "none". */
export function probeUnix(path: string): "listening" | "stale" | "none" {
  const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return "none";
  const r = sys.connectUnix(fd, path);
  sys.close(fd);
  if (r === 0 || r === -EAGAIN) return "listening";
  return r === -ECONNREFUSED ? "stale" : "none";
}

/** The device thread's entry point: binds the listener named in `options`. */
export function createBackend(options: VsockOptions): VirtioBackend {
  return new VirtioVsock(options);
}
