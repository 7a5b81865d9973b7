/**
 * MMDS's network stack on one virtio-net device: the frames the guest sends to
 * the MMDS address come here instead of the TAP (virtio-net asks isMmdsFrame),
 * and the frames MMDS answers with are pulled by the device's receive path
 * (nextFrame) whenever the guest has buffers, interleaved with the TAP's.
 *
 * Why home-made: no npm package was found that is a maintained, small
 * user-space TCP/IP stack taking and emitting raw Ethernet frames in a Node
 * worker (searched 2026-12-02 in the registry's package list: "tcpip" is a
 * placeholder, the rest are unrelated or whole-network emulators). MMDS needs
 * only a passive TCP listener on one port of one address with one small
 * request at a time, which is also why Firecracker writes its own (its
 * "dumbo"); a general stack would bring state and code a guest could drive
 * that MMDS never uses. What it does, following Firecracker's behaviour:
 *
 * - ARP: a request for the MMDS address is answered from MMDS's own MAC
 *   (06:01:23:45:67:01); one reply waits at a time (a newer request replaces
 *   it, counted). Other ARP frames for the address are dropped.
 * - IPv4 to the MMDS address: checked (wire.ts); TCP to port 80 goes to its
 *   connection (tcp-connection.ts) or opens one on a SYN; any other IPv4 to
 *   the address (ping, UDP, another port) is dropped and counted.
 * - A segment that belongs to no connection and is not an RST is answered with
 *   an RST, queued up to MAX_PENDING_RESETS (more are dropped and counted).
 * - At most MAX_CONNECTIONS connections (Firecracker's 30); a SYN beyond that
 *   evicts one silent for EVICT_AFTER_MS (it is reset) or is refused with an RST.
 * - The response bytes held by all connections are bounded by
 *   RESPONSE_BUDGET_BYTES; a request whose answer would pass it resets its
 *   connection (counted).
 *
 * Frames are generated when pulled, so nothing piles up while the guest posts
 * no receive buffers: the connections keep their unsent bytes (bounded above)
 * and their retransmission timers; a connection that hears nothing for its
 * whole retry budget resets. Work per call is bounded: receive() handles one
 * frame (one connection's request buffer at most), nextFrame() one segment.
 */
import { randomBytes } from "node:crypto";
import { findRequest, closesAfter, writeResponse } from "./http.js";
import type { Json } from "./data.js";
import { type MmdsHttpCounters, type MmdsVersion, respond } from "./responder.js";
import { TokenAuthority } from "./token.js";
import { resetFor, type SegmentOut, type ServeFn, TcpConnection } from "./tcp-connection.js";
import {
  type ArpRequest, etherType, isMmdsFrame, parseArpRequest, parseIpv4Tcp, TCP_FRAME_OVERHEAD, TCP_RST, TCP_SYN, writeArpReply, writeTcpFrame,
} from "./wire.js";
import { ETH_P_ARP } from "../../../linux/abi.generated.js";

/** MMDS's MAC address (Firecracker's). */
export const MMDS_MAC = Uint8Array.of(0x06, 0x01, 0x23, 0x45, 0x67, 0x01);
/** The TCP port MMDS listens on. */
export const MMDS_PORT = 80;
/** Connections at once. */
export const MAX_CONNECTIONS = 30;
/** RSTs waiting to be sent. */
export const MAX_PENDING_RESETS = 100;
/** A connection silent this long may be evicted by a new one when the table is full. */
export const EVICT_AFTER_MS = 10_000;
/** Response bytes held by all connections together. */
export const RESPONSE_BUDGET_BYTES = 16 << 20;
/** Bytes a frame from nextFrame can take: a full-MSS segment. */
export const MMDS_FRAME_MAX_BYTES = TCP_FRAME_OVERHEAD + 1460;

/** How the stack is set up (Firecracker's /mmds/config for this interface). */
export interface MmdsStackOptions {
  /** The MMDS address, as a 32-bit number (wire.parseIpv4). */
  ipv4: number;
  version: MmdsVersion;
  imdsCompat: boolean;
  /** A monotonic clock in ms. */
  nowMs: () => number;
}

/** What the stack did (Firecracker's mmds metrics where they match). */
export interface MmdsStackCounters extends MmdsHttpCounters {
  /** Frames taken from the guest. */
  rxFrames: number;
  /** Frames taken and dropped: malformed, bad checksum, fragment, not TCP, wrong port, unexpected ARP. */
  rxDropped: number;
  /** Frames sent to the guest. */
  txFrames: number;
  connectionsCreated: number;
  connectionsDestroyed: number;
  /** SYNs refused because every connection was busy. */
  connectionsRefused: number;
  /** RSTs or ARP replies dropped because their queue was full. */
  txDropped: number;
  /** Connections reset because their answer would pass RESPONSE_BUDGET_BYTES, or their request did not fit. */
  requestsRefused: number;
}

interface PendingReset {
  mac: Uint8Array;
  ip: number;
  port: number;
  segment: SegmentOut;
}

interface Entry {
  mac: Uint8Array;
  ip: number;
  port: number;
  conn: TcpConnection;
}

/** See the module comment. */
export class MmdsStack {
  readonly counters: MmdsStackCounters = {
    rxFrames: 0, rxDropped: 0, txFrames: 0, connectionsCreated: 0, connectionsDestroyed: 0, connectionsRefused: 0,
    txDropped: 0, requestsRefused: 0, noToken: 0, invalidToken: 0, tokensIssued: 0,
  };
  private readonly connections = new Map<string, Entry>();
  private readonly resets: PendingReset[] = [];
  private arpReply: ArpRequest | undefined;
  private data: Json = null;
  private readonly tokens: TokenAuthority;
  private ipId = 0;
  /** Round-robin start among the connections in nextFrame. */
  private turn = 0;

  constructor(private readonly options: MmdsStackOptions) {
    this.tokens = new TokenAuthority(options.nowMs);
  }

  /** Replaces the data guests read (parsed and bounded by data.ts). */
  setData(data: Json): void {
    this.data = data;
  }

  /** Is this frame (without the virtio header) MMDS's? */
  isMmdsFrame(frame: Uint8Array): boolean {
    return isMmdsFrame(frame, this.options.ipv4);
  }

  /**
   * Takes one frame isMmdsFrame accepted. `tcpChecksumPartial`: the guest left the TCP
   * checksum to the device (VIRTIO_NET_HDR_F_NEEDS_CSUM), so it is not checked.
   */
  receive(frame: Uint8Array, tcpChecksumPartial: boolean): void {
    this.counters.rxFrames++;
    if (etherType(frame) === ETH_P_ARP) {
      const req = parseArpRequest(frame);
      if (!req || req.targetIp !== this.options.ipv4) { this.counters.rxDropped++; return; }
      if (this.arpReply) this.counters.txDropped++;
      this.arpReply = req;
      return;
    }
    const s = parseIpv4Tcp(frame, !tcpChecksumPartial);
    if (typeof s === "string" || s.dstIp !== this.options.ipv4 || s.dstPort !== MMDS_PORT) { this.counters.rxDropped++; return; }
    const now = this.options.nowMs();
    const key = `${s.srcIp}:${s.srcPort}`;
    const entry = this.connections.get(key);
    if (entry) {
      entry.mac = s.srcMac;
      entry.conn.receive(s, now, (bytes) => this.serve(bytes), RESPONSE_BUDGET_BYTES - this.heldBytes(entry.conn));
      this.settle(key, entry);
      return;
    }
    // Firecracker opens a connection only for a segment whose flags are exactly SYN.
    if (s.flags !== TCP_SYN) {
      if (!(s.flags & TCP_RST)) this.queueReset({ mac: s.srcMac, ip: s.srcIp, port: s.srcPort, segment: resetFor(s) });
      else this.counters.rxDropped++;
      return;
    }
    if (this.connections.size >= MAX_CONNECTIONS && !this.evictOne(now)) {
      this.counters.connectionsRefused++;
      this.queueReset({ mac: s.srcMac, ip: s.srcIp, port: s.srcPort, segment: resetFor(s) });
      return;
    }
    const iss = randomBytes(4).readUInt32BE();
    this.connections.set(key, { mac: s.srcMac, ip: s.srcIp, port: s.srcPort, conn: new TcpConnection(s, iss, now) });
    this.counters.connectionsCreated++;
  }

  /** The HTTP layer for one connection's buffer. */
  private serve(bytes: Uint8Array): ReturnType<ServeFn> {
    const scan = findRequest(bytes);
    if (scan.kind === "incomplete") return scan;
    const version = scan.kind === "request" ? scan.request.version : "HTTP/1.1";
    const response = scan.kind === "request"
      ? respond(scan.request, { data: this.data, version: this.options.version, imdsCompat: this.options.imdsCompat, tokens: this.tokens }, this.counters)
      : { status: scan.status, contentType: "text/plain" as const, body: scan.message };
    const close = scan.kind === "bad" || closesAfter(scan.request);
    return { kind: "answer", response: writeResponse(response, version, close), consumed: scan.consumed, close };
  }

  private heldBytes(except?: TcpConnection): number {
    let n = 0;
    for (const e of this.connections.values()) if (e.conn !== except) n += e.conn.heldBytes;
    return n;
  }

  /** After a connection changed: a reset sends its RST, a finished one is forgotten. */
  private settle(key: string, entry: Entry): void {
    const c = entry.conn;
    if (!c.done) return;
    if (c.resetting) {
      this.counters.requestsRefused++;
      this.queueReset({ mac: entry.mac, ip: entry.ip, port: entry.port, segment: c.resetSegment() });
    }
    this.connections.delete(key);
    this.counters.connectionsDestroyed++;
  }

  /** Resets the oldest connection silent for EVICT_AFTER_MS; false when there is none. */
  private evictOne(now: number): boolean {
    let victim: [string, Entry] | undefined;
    for (const kv of this.connections) {
      if (now - kv[1].conn.lastHeardMs > EVICT_AFTER_MS && (!victim || kv[1].conn.lastHeardMs < victim[1].conn.lastHeardMs)) victim = kv;
    }
    if (!victim) return false;
    this.queueReset({ mac: victim[1].mac, ip: victim[1].ip, port: victim[1].port, segment: victim[1].conn.resetSegment() });
    this.connections.delete(victim[0]);
    this.counters.connectionsDestroyed++;
    return true;
  }

  private queueReset(r: PendingReset): void {
    if (this.resets.length >= MAX_PENDING_RESETS) { this.counters.txDropped++; return; }
    this.resets.push(r);
  }

  /** Runs due retransmission timeouts; returns ms until the next one, or undefined when none is armed. */
  tick(): number | undefined {
    const now = this.options.nowMs();
    let next: number | undefined;
    for (const [key, e] of this.connections) {
      e.conn.tick(now);
      this.settle(key, e);
      const at = e.conn.timeoutAt;
      if (at !== undefined && this.connections.has(key)) next = Math.min(next ?? Infinity, Math.max(0, at - now));
    }
    return next;
  }

  /** Something waits to be sent. */
  hasFrame(): boolean {
    if (this.arpReply || this.resets.length > 0) return true;
    for (const e of this.connections.values()) if (e.conn.wantsToSend) return true;
    return false;
  }

  /** Writes the next frame for the guest into `out` (at least MMDS_FRAME_MAX_BYTES); returns its length, 0 when there is none. */
  nextFrame(out: Uint8Array): number {
    const mmdsIp = this.options.ipv4;
    if (this.arpReply) {
      const req = this.arpReply;
      this.arpReply = undefined;
      this.counters.txFrames++;
      return writeArpReply(out, req, MMDS_MAC, mmdsIp);
    }
    const frame = (mac: Uint8Array, ip: number, port: number, s: SegmentOut) => {
      this.counters.txFrames++;
      this.ipId = (this.ipId + 1) & 0xffff;
      return writeTcpFrame(out, { ...s, dstMac: mac, srcMac: MMDS_MAC, srcIp: mmdsIp, dstIp: ip, srcPort: MMDS_PORT, dstPort: port, id: this.ipId });
    };
    const r = this.resets.shift();
    if (r) return frame(r.mac, r.ip, r.port, r.segment);
    const entries = [...this.connections];
    const now = this.options.nowMs();
    for (let i = 0; i < entries.length; i++) {
      const [key, e] = entries[(this.turn + i) % entries.length]!;
      const s = e.conn.nextSegment(now);
      if (!s) continue;
      this.turn = (this.turn + i + 1) % Math.max(1, entries.length);
      const n = frame(e.mac, e.ip, e.port, s);
      this.settle(key, e);
      return n;
    }
    return 0;
  }

  /** What the stack holds now (each bounded above: connections, queued RSTs, response bytes). */
  get held(): { connections: number; resets: number; responseBytes: number } {
    return { connections: this.connections.size, resets: this.resets.length, responseBytes: this.heldBytes() };
  }
}
