/**
 * One virtio-vsock stream between a guest port and a host Unix socket: its
 * state, the guest data flint holds for the host socket, and the credit
 * accounting of both directions (virtio 1.x §5.10.6.3).
 *
 * Credit: each side advertises buf_alloc (its receive buffer) and fwd_cnt
 * (bytes it consumed) in every header; a sender keeps tx_cnt - peer_fwd_cnt
 * <= peer_buf_alloc. Toward the guest, flint never sends more than the
 * guest's credit. From the guest, flint advertises VSOCK_BUF_ALLOC and a
 * fwd_cnt that counts bytes the host socket took, and it enforces that: a
 * guest that sends more than VSOCK_BUF_ALLOC minus what flint still holds
 * has broken the protocol, and the connection is reset (pushGuestData
 * refuses; the muxer sends OP_RST). The fwd_cnt the guest last saw is never
 * ahead of the real one, so a guest that respects the credit it was told
 * never trips this (Linux's driver, virtio_transport_get_credit, does).
 *
 * So the guest data one connection makes flint hold is at most
 * VSOCK_BUF_ALLOC bytes, stored in BYTE_CHUNK-sized pieces: at most
 * VSOCK_CONN_MAX_HELD_BYTES allocated (plus flint's own "OK <port>\n" line).
 *
 * All host I/O is non-blocking; nothing here blocks or loops for longer than
 * the bytes it holds.
 */
import {
  EAGAIN, EINTR, POLLIN, POLLOUT, SHUT_WR, VIRTIO_VSOCK_SHUTDOWN_RCV, VIRTIO_VSOCK_SHUTDOWN_SEND,
} from "../../../linux/abi.generated.js";
import { sys } from "../../../sys/native.js";

/** flint's receive buffer per connection (the buf_alloc it advertises): guest bytes held until the host socket takes them. */
export const VSOCK_BUF_ALLOC = 256 * 1024;
/** Size of the pieces held guest data is stored in (a 1-byte packet costs no more than its byte). */
const BYTE_CHUNK = 32 * 1024;
/** Most bytes one connection's buffer allocates: VSOCK_BUF_ALLOC, plus one partly used piece at each end. */
export const VSOCK_CONN_MAX_HELD_BYTES = VSOCK_BUF_ALLOC + BYTE_CHUNK;
/** Longest "CONNECT <port>\n" line accepted from a host client. */
export const VSOCK_MAX_CONNECT_LINE = 32;

const u32 = (x: number): number => x >>> 0;

/** A FIFO of bytes in fixed-size pieces: memory follows the bytes held, not the number of pushes. */
export class ByteQueue {
  private readonly chunks: Uint8Array[] = [];
  /** Read offset in the first piece, write offset in the last. */
  private head = 0;
  private tail = BYTE_CHUNK;
  private bytes = 0;

  /** Bytes held. */
  get length(): number { return this.bytes; }
  /** Bytes allocated for them. */
  get allocatedBytes(): number { return this.chunks.length * BYTE_CHUNK; }

  /** Appends a copy of `data`. */
  push(data: Uint8Array): void {
    let off = 0;
    while (off < data.length) {
      if (this.tail === BYTE_CHUNK) {
        this.chunks.push(new Uint8Array(BYTE_CHUNK));
        this.tail = 0;
      }
      const n = Math.min(BYTE_CHUNK - this.tail, data.length - off);
      this.chunks[this.chunks.length - 1]!.set(data.subarray(off, off + n), this.tail);
      this.tail += n;
      off += n;
    }
    this.bytes += data.length;
  }

  /** The first contiguous run of held bytes (a view: valid until the next consume or push). */
  front(): Uint8Array {
    if (this.bytes === 0) return new Uint8Array(0);
    const end = this.chunks.length === 1 ? this.tail : BYTE_CHUNK;
    return this.chunks[0]!.subarray(this.head, end);
  }

  /** Drops `n` bytes from the front (n <= front().length). */
  consume(n: number): void {
    this.head += n;
    this.bytes -= n;
    const end = this.chunks.length === 1 ? this.tail : BYTE_CHUNK;
    if (this.head === end) {
      this.chunks.shift();
      this.head = 0;
      if (this.chunks.length === 0) this.tail = BYTE_CHUNK;
    }
  }
}

/** Where a connection is in its life. */
export type ConnState =
  /** Host client accepted, reading its CONNECT line. */
  | "handshake"
  /** OP_REQUEST sent to the guest, waiting for OP_RESPONSE. */
  | "connecting"
  | "established"
  /** Gone for the guest (RST sent, out of the port map); the host socket is flushed, then closed. */
  | "draining";

/** What the CONNECT line reader found. */
export type ConnectLine = { kind: "wait" } | { kind: "reject" } | { kind: "port"; port: number };

/** One stream; the muxer owns the map of them and the queues. */
export class VsockConnection {
  readonly fd: number;
  state: ConnState;
  /** Host-side (local) port and guest-side (peer) port. */
  localPort: number;
  peerPort: number;
  /** The guest's credit: its buf_alloc and fwd_cnt as last advertised, and what flint sent it (u32 counters). */
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  txCnt = 0;
  /** Guest bytes the host socket took (flint's fwd_cnt), and the value last told to the guest. */
  fwdCnt = 0;
  advertisedFwdCnt = 0;
  /** The host socket has data (or EOF) flint has not read yet: not polled for POLLIN meanwhile. */
  readable = false;
  /** Host sent EOF (OP_SHUTDOWN SEND told to the guest). */
  hostEof = false;
  /** The guest's OP_SHUTDOWN flags so far. */
  guestShutdown = 0;
  /** The guest asked for flint's credit, or is owed an update. */
  creditUpdateDue = false;
  /** Key of this connection's REQUEST/RESPONSE waiting in the control queue (control-queue.ts), if any. */
  pendingControl: string | undefined;
  /** Guest data (after flint's own OK line) not yet taken by the host socket. */
  private readonly out = new ByteQueue();
  /** Leading bytes of `out` that are flint's own (the OK line), not guest data. */
  private ownBytes = 0;
  private halfClosed = false;
  /** handshake: the CONNECT line so far. */
  private line = "";

  constructor(fd: number, state: ConnState, localPort: number, peerPort: number) {
    this.fd = fd;
    this.state = state;
    this.localPort = localPort;
    this.peerPort = peerPort;
  }

  /** Bytes waiting for the host socket (OK line included). */
  get pendingBytes(): number { return this.out.length; }
  /** Guest bytes flint holds: what counts against the buf_alloc it advertised. */
  get heldGuestBytes(): number { return this.out.length - this.ownBytes; }
  /** Bytes allocated for what flint holds. */
  get allocatedBytes(): number { return this.out.allocatedBytes; }
  /** The credit flint gives the guest: buf_alloc - bytes held. */
  get freeBufBytes(): number { return VSOCK_BUF_ALLOC - this.heldGuestBytes; }

  /** Every guest header carries its credit (§5.10.6.3). */
  updatePeerCredit(bufAlloc: number, fwdCnt: number): void {
    this.peerBufAlloc = bufAlloc;
    this.peerFwdCnt = fwdCnt;
  }

  /** The guest's free receive space: peer_buf_alloc - (tx_cnt - peer_fwd_cnt), never negative. */
  peerCredit(): number {
    const inFlight = u32(this.txCnt - this.peerFwdCnt);
    return inFlight >= this.peerBufAlloc ? 0 : this.peerBufAlloc - inFlight;
  }

  /** True while host data may go to the guest: established, not shut for it, and it has credit. */
  wantsRead(): boolean {
    return this.state === "established" && !this.hostEof && !(this.guestShutdown & VIRTIO_VSOCK_SHUTDOWN_RCV) && this.peerCredit() > 0;
  }

  /** True when an RX buffer has a use for this connection: data to read, or a credit update owed. */
  hasRxWork(): boolean {
    return this.state === "established" && (this.creditUpdateDue || (this.readable && this.wantsRead()));
  }

  /** What to poll the host socket for: POLLIN while its data could go to the guest, POLLOUT while data is pending. */
  pollEvents(): number {
    let events = 0;
    if (this.out.length > 0) events |= POLLOUT;
    if (this.wantsRead() && !this.readable) events |= POLLIN;
    return events;
  }

  /**
   * Takes guest payload for the host socket. Returns false, keeping nothing, when it
   * exceeds the credit flint advertised (the caller resets the connection).
   */
  pushGuestData(data: Uint8Array): boolean {
    if (data.length > this.freeBufBytes) return false;
    this.out.push(data);
    return true;
  }

  /** Queues flint's own bytes (the OK line) ahead of guest data; they do not count as credit. */
  pushOwn(data: Uint8Array): void {
    this.out.push(data);
    this.ownBytes += data.length;
  }

  /** Host data for the guest was sent: count it against the guest's credit. */
  sentToGuest(bytes: number): void {
    this.txCnt = u32(this.txCnt + bytes);
  }

  /** The fwd_cnt to put in a header now; the guest then knows it. */
  advertiseFwdCnt(): number {
    this.advertisedFwdCnt = this.fwdCnt;
    this.creditUpdateDue = false;
    return this.fwdCnt;
  }

  /**
   * Writes held data to the host socket until it would block. Returns the guest bytes
   * the socket took, or -1 when the socket failed (EPIPE, ECONNRESET: the host side is gone).
   * Once everything is out after the guest's SHUTDOWN(SEND), the socket is half-closed.
   */
  flush(): number {
    let forwarded = 0;
    while (this.out.length > 0) {
      const head = this.out.front();
      const r = sys.write(this.fd, head, head.length);
      if (r === -EINTR) continue;
      if (r === -EAGAIN) break;
      if (r < 0) return -1;
      this.out.consume(r);
      // fwd_cnt counts guest bytes only, not the "OK <port>" line in front of them.
      const ours = Math.min(r, this.ownBytes);
      this.ownBytes -= ours;
      this.fwdCnt = u32(this.fwdCnt + r - ours);
      forwarded += r - ours;
    }
    if (this.out.length === 0 && this.guestShutdown & VIRTIO_VSOCK_SHUTDOWN_SEND && !this.halfClosed) {
      this.halfClosed = true;
      sys.shutdown(this.fd, SHUT_WR);
    }
    // Tell the guest about freed space once half the buffer is free again (and whenever it drained).
    const unadvertised = u32(this.fwdCnt - this.advertisedFwdCnt);
    if (unadvertised >= VSOCK_BUF_ALLOC / 2 || (this.out.length === 0 && unadvertised > 0)) this.creditUpdateDue = true;
    return forwarded;
  }

  /** Reads the CONNECT line a byte at a time (so data after it stays in the socket for the guest). */
  readConnectLine(): ConnectLine {
    const one = new Uint8Array(1);
    for (;;) {
      const r = sys.read(this.fd, one, 1);
      if (r === -EINTR) continue;
      if (r === -EAGAIN) return { kind: "wait" };
      if (r <= 0) return { kind: "reject" };
      const ch = String.fromCharCode(one[0]!);
      if (ch !== "\n") {
        this.line += ch;
        if (this.line.length > VSOCK_MAX_CONNECT_LINE) return { kind: "reject" };
        continue;
      }
      const m = /^CONNECT (\d{1,10})\r?$/.exec(this.line);
      const port = m ? Number(m[1]) : NaN;
      return port <= 0xffff_ffff ? { kind: "port", port } : { kind: "reject" };
    }
  }
}
