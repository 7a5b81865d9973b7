/**
 * One TCP connection to MMDS, the passive side only (RFC 9293), kept as small
 * as Firecracker's own (its dumbo TCP: no options but MSS, no window scaling,
 * no out-of-order queue, no congestion control, fixed receive buffer):
 *
 * - Opened by a SYN; the SYN-ACK announces our MSS and a receive window equal to
 *   the free room of a fixed request buffer, so the guest can never send more
 *   than it holds. Only the next expected bytes are taken; anything else is
 *   answered with an ACK for what we have (the guest retransmits).
 * - Each complete request in the buffer is answered (`serve`); responses are
 *   queued in order and sent in segments of at most the peer's MSS within its
 *   window. A buffer full without a complete request resets the connection.
 * - After a response whose request asked to close (or the guest's FIN, once
 *   everything is answered) we send FIN; the connection is done when both FINs
 *   are acknowledged, or at once on an acceptable RST.
 * - Unacknowledged data, SYN or FIN is sent again from the oldest byte (go back
 *   N) after a retransmission timeout that doubles each time; after
 *   RTO_MAX_RETRIES timeouts in a row the connection resets. A zero window is
 *   probed with one byte at each timeout.
 *
 * Sequence numbers are unsigned 32-bit and compared modulo 2^32 (RFC 9293 §3.4).
 */
import { TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, type TcpSegment } from "./wire.js";

/** Bytes of a connection's request buffer: the largest request head MMDS takes (Firecracker takes 2500). */
export const TCP_RECEIVE_BUFFER_BYTES = 4096;
/** The MSS we announce and the largest we use (an Ethernet MTU of 1500 less IPv4 and TCP headers). */
export const TCP_MSS_MAX = 1460;
/** RFC 9293 §3.7.1: the MSS assumed when the peer sends none. */
export const TCP_MSS_DEFAULT = 536;
/** First retransmission timeout, in ms; it doubles with each retry up to RTO_MAX_MS. */
export const RTO_INITIAL_MS = 200;
const RTO_MAX_MS = 6400;
/**
 * Requests answered per segment received (a work budget: a segment can pack many small
 * requests, each answer may be the whole data); the rest wait for the next segment, which
 * the guest sends anyway to acknowledge the answers.
 */
export const REQUESTS_PER_SEGMENT = 4;
/** Timeouts in a row after which the connection resets (about 25 s of silence). */
export const RTO_MAX_RETRIES = 8;

/** seq a comes before b (mod 2^32). */
export const seqLt = (a: number, b: number): boolean => ((a - b) | 0) < 0;
const seqLe = (a: number, b: number): boolean => ((a - b) | 0) <= 0;
const add = (a: number, n: number): number => (a + n) >>> 0;

/** One segment to send: the stack fills in addresses and ports. */
export interface SegmentOut {
  seq: number;
  ack: number;
  flags: number;
  window: number;
  mss?: number;
  payload?: Uint8Array;
}

/** Answers one request: the response bytes and whether to close after them; undefined to reset the connection. */
export type ServeFn = (request: Uint8Array) => { kind: "incomplete" } | { kind: "answer"; response: Uint8Array; consumed: number; close: boolean } | { kind: "reset" };

/** See the module comment. */
export class TcpConnection {
  private readonly iss: number;
  private sndUna: number;
  private sndNxt: number;
  /** The highest sequence number sent (sndNxt goes back on a retransmission timeout). */
  private sndMax: number;
  private sndWnd: number;
  private readonly mss: number;
  private rcvNxt: number;
  private readonly irs: number;
  private established = false;
  private readonly recv = new Uint8Array(TCP_RECEIVE_BUFFER_BYTES);
  private recvLen = 0;
  /** Response bytes not yet acknowledged; out[0] has sequence number outSeq. */
  private out: Uint8Array = new Uint8Array(0);
  private outSeq: number;
  private closeAfterOut = false;
  /** Our FIN is counted as sent (until a timeout sends it again). */
  private finSent = false;
  /** Its sequence number, once it was first sent. */
  private finSeq: number | undefined;
  private finAcked = false;
  private peerFin = false;
  private ackPending = false;
  private rtoAt: number | undefined;
  private retries = 0;
  private probe = false;
  /** The connection reset itself (the stack sends a RST and forgets it). */
  resetting = false;
  /** The peer reset it (the stack forgets it without a word). */
  aborted = false;
  /** Time of the latest segment from the peer (eviction). */
  lastHeardMs: number;

  constructor(syn: TcpSegment, iss: number, nowMs: number) {
    this.iss = iss >>> 0;
    this.sndUna = this.iss;
    this.sndNxt = this.iss;
    this.sndMax = this.iss;
    this.outSeq = add(this.iss, 1);
    this.sndWnd = syn.window;
    this.mss = Math.max(64, Math.min(syn.mss ?? TCP_MSS_DEFAULT, TCP_MSS_MAX));
    this.irs = syn.seq;
    this.rcvNxt = add(syn.seq, 1);
    this.lastHeardMs = nowMs;
  }

  /** Both sides have closed, or the connection reset: the stack forgets it. */
  get done(): boolean {
    return this.resetting || this.aborted || (this.finAcked && this.peerFin && !this.ackPending);
  }

  /** Response bytes held (the stack's budget over all connections). */
  get heldBytes(): number {
    return this.out.length;
  }

  /** Takes one segment for this connection; `serve` answers complete requests; `budget` is the response bytes still allowed. */
  receive(s: TcpSegment, nowMs: number, serve: ServeFn, budget: number): void {
    if (this.resetting || this.aborted) return;
    this.lastHeardMs = nowMs;
    if (s.flags & TCP_RST) {
      // RFC 9293 §3.10.7.4 (simplified as RFC 5961 allows): only an RST at the next expected byte is taken.
      if (s.seq === this.rcvNxt) this.aborted = true;
      return;
    }
    if (s.flags & TCP_SYN) {
      // The peer's SYN again: our SYN-ACK was lost; anything else is a new connection on a used tuple.
      if (!this.established && s.seq === this.irs) this.rewind();
      else this.resetting = true;
      return;
    }
    if (!(s.flags & TCP_ACK)) return;
    if (seqLt(this.sndMax, s.ack)) {
      // It acknowledges what we never sent: tell it where we are (RFC 9293 §3.10.7.4).
      this.ackPending = true;
      return;
    }
    if (!this.established) {
      if (s.ack !== add(this.iss, 1)) { this.resetting = true; return; }
      this.established = true;
    }
    this.takeAck(s.ack, s.window, nowMs);
    this.takeData(s, serve, budget);
  }

  private takeAck(ack: number, window: number, nowMs: number): void {
    this.sndWnd = window;
    if (seqLt(this.sndUna, ack)) {
      const dataEnd = add(this.outSeq, this.out.length);
      const acked = seqLe(ack, dataEnd) ? (ack - this.outSeq) | 0 : this.out.length;
      if (acked > 0) {
        this.out = this.out.subarray(acked);
        this.outSeq = add(this.outSeq, acked);
      }
      if (this.finSeq !== undefined && ack === add(this.finSeq, 1)) this.finAcked = this.finSent = true;
      this.sndUna = ack;
      if (seqLt(this.sndNxt, ack)) this.sndNxt = ack;
      this.retries = 0;
      this.rtoAt = this.sndUna === this.sndNxt ? undefined : nowMs + RTO_INITIAL_MS;
    }
    if (this.rtoAt === undefined && this.sndWnd === 0 && this.unsent() > 0) this.rtoAt = nowMs + RTO_INITIAL_MS;
  }

  private takeData(s: TcpSegment, serve: ServeFn, budget: number): void {
    let len = s.payload.length;
    if (len > 0 || s.flags & TCP_FIN) {
      if (s.seq !== this.rcvNxt || this.peerFin) {
        // Out of order, a duplicate or after the peer's FIN: acknowledge what we have.
        this.ackPending = true;
        return;
      }
      len = Math.min(len, this.recv.length - this.recvLen);
      this.recv.set(s.payload.subarray(0, len), this.recvLen);
      this.recvLen += len;
      this.rcvNxt = add(this.rcvNxt, len);
      // The FIN counts only when every byte before it was taken.
      if (s.flags & TCP_FIN && len === s.payload.length) {
        this.peerFin = true;
        this.rcvNxt = add(this.rcvNxt, 1);
      }
      this.ackPending = true;
    }
    this.serveRequests(serve, budget);
  }

  /** Answers the complete requests in the buffer (each takes bytes out of it, so this ends). */
  private serveRequests(serve: ServeFn, budget: number): void {
    let served = 0;
    for (; this.recvLen > 0 && !this.closeAfterOut && served < REQUESTS_PER_SEGMENT; served++) {
      const r = serve(this.recv.subarray(0, this.recvLen));
      if (r.kind === "reset") { this.resetting = true; return; }
      if (r.kind === "incomplete") { served = 0; break; }
      if (r.response.length > budget) { this.resetting = true; return; }
      budget -= r.response.length;
      const out = new Uint8Array(this.out.length + r.response.length);
      out.set(this.out);
      out.set(r.response, this.out.length);
      this.out = out;
      this.recv.copyWithin(0, r.consumed, this.recvLen);
      this.recvLen -= r.consumed;
      // The window opens by what was taken out (sent with the next ACK).
      this.ackPending = true;
      if (r.close) this.closeAfterOut = true;
    }
    if (this.recvLen === this.recv.length && !this.closeAfterOut) {
      // Full, and no request ends in it: larger than MMDS takes.
      this.resetting = true;
      return;
    }
    // The peer closed: once every complete request in the buffer is answered, we close too.
    // (A request cut off by the FIN never completes; one left by the per-segment budget waits.)
    if (this.peerFin && served < REQUESTS_PER_SEGMENT) this.closeAfterOut = true;
  }

  /** Response bytes not yet sent. */
  private unsent(): number {
    return this.out.length - ((this.sndNxt - this.outSeq) | 0);
  }

  /** Time (ms) of the next retransmission timeout, if one is armed. */
  get timeoutAt(): number | undefined {
    return this.rtoAt;
  }

  /** Runs a due retransmission timeout: go back to the oldest unacknowledged byte, or reset after too many. */
  tick(nowMs: number): void {
    if (this.rtoAt === undefined || nowMs < this.rtoAt || this.resetting) return;
    if (++this.retries > RTO_MAX_RETRIES) { this.resetting = true; return; }
    if (this.sndWnd === 0 && this.unsent() > 0) this.probe = true;
    this.rewind();
    this.rtoAt = nowMs + Math.min(RTO_INITIAL_MS << this.retries, RTO_MAX_MS);
  }

  /** Sends from the oldest unacknowledged byte again (SYN-ACK, data, FIN). */
  private rewind(): void {
    this.sndNxt = this.sndUna;
    if (this.finSent && !this.finAcked) this.finSent = false;
  }

  /** Something to send now (the stack then calls nextSegment). */
  get wantsToSend(): boolean {
    if (this.resetting || this.aborted) return false;
    if (this.sndNxt === this.iss) return true;
    const unsent = this.unsent();
    if (unsent > 0 && (this.windowLeft() > 0 || this.probe)) return true;
    if (this.closeAfterOut && unsent === 0 && !this.finSent) return true;
    return this.ackPending;
  }

  private windowLeft(): number {
    return Math.max(0, ((add(this.sndUna, this.sndWnd) - this.sndNxt) | 0));
  }

  /** The next segment to send, or undefined; advances the send state as if it left. */
  nextSegment(nowMs: number): SegmentOut | undefined {
    if (!this.wantsToSend) return undefined;
    const window = this.recv.length - this.recvLen;
    this.ackPending = false;
    if (this.sndNxt === this.iss) {
      this.sndNxt = add(this.iss, 1);
      this.sent(nowMs);
      return { seq: this.iss, ack: this.rcvNxt, flags: TCP_SYN | TCP_ACK, window, mss: TCP_MSS_MAX };
    }
    const unsent = this.unsent();
    const room = this.probe ? Math.max(1, this.windowLeft()) : this.windowLeft();
    if (unsent > 0 && room > 0) {
      this.probe = false;
      const offset = (this.sndNxt - this.outSeq) | 0;
      const len = Math.min(unsent, room, this.mss);
      const seq = this.sndNxt;
      this.sndNxt = add(this.sndNxt, len);
      this.sent(nowMs);
      return { seq, ack: this.rcvNxt, flags: TCP_ACK | (len === unsent ? TCP_PSH : 0), window, payload: this.out.subarray(offset, offset + len) };
    }
    if (this.closeAfterOut && unsent === 0 && !this.finSent) {
      this.finSent = true;
      this.finSeq = this.sndNxt;
      this.sndNxt = add(this.sndNxt, 1);
      this.sent(nowMs);
      return { seq: this.finSeq, ack: this.rcvNxt, flags: TCP_FIN | TCP_ACK, window };
    }
    return { seq: this.sndNxt, ack: this.rcvNxt, flags: TCP_ACK, window };
  }

  /** After sending up to sndNxt: remember the highest, arm the timeout. */
  private sent(nowMs: number): void {
    if (seqLt(this.sndMax, this.sndNxt)) this.sndMax = this.sndNxt;
    this.rtoAt ??= nowMs + RTO_INITIAL_MS;
  }

  /** The RST that ends this connection from our side (RFC 9293 §3.10.7: our next sequence number). */
  resetSegment(): SegmentOut {
    return { seq: this.sndNxt, ack: this.rcvNxt, flags: TCP_RST | TCP_ACK, window: 0 };
  }
}

/** RFC 9293 §3.10.7.1: the RST answering segment `s`, which belongs to no connection. */
export function resetFor(s: TcpSegment): SegmentOut {
  if (s.flags & TCP_ACK) return { seq: s.ack, ack: 0, flags: TCP_RST, window: 0 };
  const len = s.payload.length + (s.flags & TCP_SYN ? 1 : 0) + (s.flags & TCP_FIN ? 1 : 0);
  return { seq: 0, ack: add(s.seq, len), flags: TCP_RST | TCP_ACK, window: 0 };
}
