/**
 * A fake guest for MMDS tests: builds the frames a guest's network stack sends
 * (ARP requests, TCP segments with correct or broken checksums) and reads the
 * frames MMDS answers with, written apart from mmds/wire.ts so the two check
 * each other. GuestTcp runs one HTTP exchange over any transport that moves
 * frames (the stack itself, or a virtio-net device through its fake drivers).
 */

export const GUEST_MAC = Uint8Array.of(0x06, 0, 0xac, 0x10, 0, 2);
export const GUEST_IP = [10, 0, 0, 2] as const;
export const MMDS_IP = [169, 254, 169, 254] as const;
export const FIN = 0x01, SYN = 0x02, RST = 0x04, PSH = 0x08, ACK = 0x10;

const be16 = (b: Uint8Array, at: number, v: number) => { b[at] = (v >>> 8) & 0xff; b[at + 1] = v & 0xff; };
const be32 = (b: Uint8Array, at: number, v: number) => { be16(b, at, v >>> 16); be16(b, at + 2, v & 0xffff); };
const rd16 = (b: Uint8Array, at: number) => (b[at]! << 8) | b[at + 1]!;
const rd32 = (b: Uint8Array, at: number) => ((rd16(b, at) << 16) | rd16(b, at + 2)) >>> 0;

/** RFC 1071 checksum, written out long-hand. */
export function checksum(bytes: Uint8Array, initial = 0): number {
  let sum = initial;
  for (let i = 0; i < bytes.length; i += 2) sum += (bytes[i]! << 8) | (bytes[i + 1] ?? 0);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** An ARP request from the guest for `target`. */
export function arpRequest(target: readonly number[] = MMDS_IP, op = 1): Uint8Array {
  const f = new Uint8Array(42);
  f.fill(0xff, 0, 6);
  f.set(GUEST_MAC, 6);
  be16(f, 12, 0x0806);
  be16(f, 14, 1); be16(f, 16, 0x0800); f[18] = 6; f[19] = 4; be16(f, 20, op);
  f.set(GUEST_MAC, 22); f.set(GUEST_IP, 28); f.set(target, 38);
  return f;
}

/** What tcpSegment puts in a frame from the guest. */
export interface GuestSegment {
  srcPort: number;
  seq: number;
  ack?: number;
  flags: number;
  window?: number;
  payload?: Uint8Array | string;
  mss?: number;
  dst?: readonly number[];
  dstPort?: number;
  badIpChecksum?: boolean;
  badTcpChecksum?: boolean;
  /** IPv4 protocol (6 TCP). */
  protocol?: number;
  /** Set IPv4's More Fragments bit. */
  fragment?: boolean;
}

/** An Ethernet + IPv4 + TCP frame from the guest. */
export function tcpSegment(s: GuestSegment): Uint8Array {
  const payload = typeof s.payload === "string" ? new TextEncoder().encode(s.payload) : s.payload ?? new Uint8Array(0);
  const opt = s.mss !== undefined ? 4 : 0;
  const tcpLen = 20 + opt + payload.length;
  const f = new Uint8Array(14 + 20 + tcpLen);
  f.set(MMDS_MAC_GUESS, 0);
  f.set(GUEST_MAC, 6);
  be16(f, 12, 0x0800);
  const ip = 14, dst = s.dst ?? MMDS_IP;
  f[ip] = 0x45; be16(f, ip + 2, 20 + tcpLen); be16(f, ip + 4, 1); be16(f, ip + 6, s.fragment ? 0x2000 : 0x4000);
  f[ip + 8] = 64; f[ip + 9] = s.protocol ?? 6;
  f.set(GUEST_IP, ip + 12); f.set(dst, ip + 16);
  be16(f, ip + 10, checksum(f.subarray(ip, ip + 20)) ^ (s.badIpChecksum ? 1 : 0));
  const t = ip + 20;
  be16(f, t, s.srcPort); be16(f, t + 2, s.dstPort ?? 80); be32(f, t + 4, s.seq >>> 0); be32(f, t + 8, (s.ack ?? 0) >>> 0);
  f[t + 12] = ((20 + opt) / 4) << 4; f[t + 13] = s.flags; be16(f, t + 14, s.window ?? 65535);
  if (s.mss !== undefined) { f[t + 20] = 2; f[t + 21] = 4; be16(f, t + 22, s.mss); }
  f.set(payload, t + 20 + opt);
  const pseudo = (GUEST_IP[0] << 8 | GUEST_IP[1]) + (GUEST_IP[2] << 8 | GUEST_IP[3]) + (dst[0]! << 8 | dst[1]!) + (dst[2]! << 8 | dst[3]!) + 6 + tcpLen;
  be16(f, t + 16, checksum(f.subarray(t, t + tcpLen), pseudo) ^ (s.badTcpChecksum ? 1 : 0));
  return f;
}
/** The guest addresses frames to MMDS's MAC once ARP told it; the stack does not look. */
const MMDS_MAC_GUESS = Uint8Array.of(0x06, 0x01, 0x23, 0x45, 0x67, 0x01);

/** A frame MMDS sent, as the guest reads it (checksums verified). */
export type FrameFromMmds =
  | { kind: "arp"; op: number; senderMac: Uint8Array; senderIp: number[]; targetMac: Uint8Array; targetIp: number[]; dstMac: Uint8Array }
  | { kind: "tcp"; dstMac: Uint8Array; srcPort: number; dstPort: number; seq: number; ack: number; flags: number; window: number; mss?: number; payload: Uint8Array; checksumsOk: boolean };

/** Reads a frame from MMDS; throws when it is neither ARP nor IPv4/TCP (a test failure). */
export function readFrame(f: Uint8Array): FrameFromMmds {
  const type = rd16(f, 12);
  if (type === 0x0806) {
    return { kind: "arp", dstMac: f.slice(0, 6), op: rd16(f, 20), senderMac: f.slice(22, 28), senderIp: [...f.subarray(28, 32)], targetMac: f.slice(32, 38), targetIp: [...f.subarray(38, 42)] };
  }
  if (type !== 0x0800) throw new Error(`frame of type ${type.toString(16)} from MMDS`);
  const ip = 14, ihl = (f[ip]! & 15) * 4, total = rd16(f, ip + 2), t = ip + ihl, tcpLen = total - ihl;
  const src = f.subarray(ip + 12, ip + 16), dst = f.subarray(ip + 16, ip + 20);
  const pseudo = (src[0]! << 8 | src[1]!) + (src[2]! << 8 | src[3]!) + (dst[0]! << 8 | dst[1]!) + (dst[2]! << 8 | dst[3]!) + 6 + tcpLen;
  const checksumsOk = checksum(f.subarray(ip, ip + ihl)) === 0 && checksum(f.subarray(t, t + tcpLen), pseudo) === 0 && f[ip + 9] === 6;
  const doff = (f[t + 12]! >> 4) * 4;
  const mss = doff > 20 && f[t + 20] === 2 ? rd16(f, t + 22) : undefined;
  return {
    kind: "tcp", dstMac: f.slice(0, 6), srcPort: rd16(f, t), dstPort: rd16(f, t + 2), seq: rd32(f, t + 4), ack: rd32(f, t + 8),
    flags: f[t + 13]!, window: rd16(f, t + 14), mss, payload: f.slice(t + doff, ip + total), checksumsOk,
  };
}

/** Moves frames between the fake guest and MMDS. */
export interface FrameTransport {
  send(frame: Uint8Array): void;
  /** Every frame MMDS has for the guest now. */
  receive(): Uint8Array[];
}

/** A parsed HTTP response. */
export interface GuestHttpResponse {
  status: number;
  headers: Map<string, string>;
  body: string;
  /** The server closed (FIN) after it. */
  closed: boolean;
}

/** Parses a complete HTTP response, or undefined when more bytes are needed. */
export function parseHttpResponse(text: string, closed: boolean): GuestHttpResponse | undefined {
  const end = text.indexOf("\r\n\r\n");
  if (end < 0) return undefined;
  const [status, ...lines] = text.slice(0, end).split("\r\n");
  const headers = new Map(lines.map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()] as [string, string]));
  const length = Number(headers.get("content-length") ?? "NaN");
  const body = text.slice(end + 4);
  if (Number.isFinite(length) ? Buffer.byteLength(body) < length : !closed) return undefined;
  return { status: Number(status!.split(" ")[1]), headers, body, closed };
}

/** One TCP connection from the fake guest: handshake, a request, the response, close. */
export class GuestTcp {
  seq: number;
  ack = 0;
  readonly received: FrameFromMmds[] = [];
  private data = "";
  private serverFin = false;

  constructor(private readonly net: FrameTransport, readonly port: number, iss = 1000, private readonly window = 65535) {
    this.seq = iss;
  }

  /** Sends SYN, expects SYN-ACK, sends ACK. Returns the SYN-ACK. */
  connect(mss = 1460): FrameFromMmds & { kind: "tcp" } {
    this.net.send(tcpSegment({ srcPort: this.port, seq: this.seq, flags: SYN, mss, window: this.window }));
    const synAck = this.pull().find((f) => f.flags === (SYN | ACK));
    if (!synAck) throw new Error("no SYN-ACK");
    this.seq = (this.seq + 1) >>> 0;
    this.ack = (synAck.seq + 1) >>> 0;
    this.net.send(tcpSegment({ srcPort: this.port, seq: this.seq, ack: this.ack, flags: ACK, window: this.window }));
    return synAck;
  }

  /** Frames for this port from MMDS now (all checked), taking their data in order. */
  pull(): (FrameFromMmds & { kind: "tcp" })[] {
    const out: (FrameFromMmds & { kind: "tcp" })[] = [];
    for (const raw of this.net.receive()) {
      const f = readFrame(raw);
      this.received.push(f);
      if (f.kind !== "tcp" || f.dstPort !== this.port) continue;
      if (!f.checksumsOk) throw new Error("MMDS sent a bad checksum");
      out.push(f);
      if (f.payload.length > 0 && f.seq === this.ack) {
        this.data += new TextDecoder().decode(f.payload);
        this.ack = (this.ack + f.payload.length) >>> 0;
      }
      if (f.flags & FIN && ((f.seq + f.payload.length) >>> 0) === this.ack) {
        this.serverFin = true;
        this.ack = (this.ack + 1) >>> 0;
      }
    }
    return out;
  }

  /** Sends `bytes` as data segments of at most `segment` bytes. */
  send(bytes: string, segment = 1460): void {
    const b = new TextEncoder().encode(bytes);
    for (let i = 0; i < b.length; i += segment) {
      const part = b.subarray(i, i + segment);
      this.net.send(tcpSegment({ srcPort: this.port, seq: this.seq, ack: this.ack, flags: ACK | PSH, payload: part, window: this.window }));
      this.seq = (this.seq + part.length) >>> 0;
    }
  }

  /** Acknowledges everything received so far. */
  sendAck(): void {
    this.net.send(tcpSegment({ srcPort: this.port, seq: this.seq, ack: this.ack, flags: ACK, window: this.window }));
  }

  /** Sends a request and reads the response, acknowledging as it goes (at most `rounds` pulls). */
  request(text: string, rounds = 200): GuestHttpResponse {
    this.data = "";
    this.send(text);
    for (let i = 0; i < rounds; i++) {
      this.pull();
      this.sendAck();
      const r = parseHttpResponse(this.data, this.serverFin);
      if (r) return r;
    }
    throw new Error(`no complete response; got ${JSON.stringify(this.data.slice(0, 200))}`);
  }

  /** The server sent FIN. */
  get closedByServer(): boolean {
    return this.serverFin;
  }

  /** Sends FIN (with an ACK of everything). */
  close(): void {
    this.net.send(tcpSegment({ srcPort: this.port, seq: this.seq, ack: this.ack, flags: FIN | ACK, window: this.window }));
    this.seq = (this.seq + 1) >>> 0;
  }
}

/** "GET path" with `headers`, HTTP/1.1. */
export function httpGet(path: string, headers: Record<string, string> = {}, method = "GET"): string {
  return `${method} ${path} HTTP/1.1\r\nHost: 169.254.169.254\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("")}\r\n`;
}
