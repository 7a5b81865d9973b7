/**
 * The wire formats MMDS's responder reads and writes inside an Ethernet frame:
 * Ethernet II, ARP for IPv4 over Ethernet (RFC 826), IPv4 (RFC 791) and TCP
 * (RFC 9293), with the Internet checksum (RFC 1071). Parsing checks every
 * length and field it relies on and returns undefined for anything else;
 * nothing here throws for a guest's bytes. Field offsets come from the
 * kernel's headers (ethhdr, arphdr, iphdr, tcphdr); the few values the UAPI
 * headers do not carry (TCP flag bits, the MSS option, IPv4's fragment bits)
 * are the RFCs' own and cite them.
 */
import {
  ARPHRD_ETHER, ARPOP_REPLY, ARPOP_REQUEST, ETH_ALEN, ETH_HLEN, ETH_P_ARP, ETH_P_IP, IPPROTO_TCP, arphdr, ethhdr, iphdr, tcphdr,
} from "../../../linux/abi.generated.js";

/** RFC 9293 §3.1: the control bits in byte 13 of the TCP header. */
export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;
/** RFC 9293 §3.2: option kinds (end of list, no-operation, maximum segment size) and the MSS option's length. */
const TCPOPT_EOL = 0;
const TCPOPT_NOP = 1;
const TCPOPT_MSS = 2;
const TCPOLEN_MSS = 4;
/** RFC 791 §3.1: the More Fragments and Don't Fragment bits, and the fragment offset, in frag_off. */
const IP_MF = 0x2000;
const IP_DF = 0x4000;
const IP_OFFSET_MASK = 0x1fff;
/** RFC 791: IPv4 header length (IHL) in 32-bit words sits in the low nibble of byte 0; the version in the high one. */
const IPV4_VERSION = 4;
/** RFC 826: the ARP packet for IPv4 over Ethernet is the fixed header, then sha (6), spa (4), tha (6), tpa (4). */
const ARP_IPV4_BYTES = arphdr.SIZE + 2 * (ETH_ALEN + 4);
const ARP_SHA = arphdr.SIZE;
const ARP_SPA = ARP_SHA + ETH_ALEN;
const ARP_THA = ARP_SPA + 4;
const ARP_TPA = ARP_THA + ETH_ALEN;
/** Byte 12 of the TCP header holds the data offset in 32-bit words (high nibble); byte 13 the flags. */
const TCP_DOFF = 12;
const TCP_FLAGS = 13;
/** The TTL of packets MMDS sends (RFC 1700's default for IPv4). */
const DEFAULT_TTL = 64;

/** A big-endian view of `b` (the frame may sit at any offset of its buffer). */
const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** An IPv4 address as an unsigned 32-bit number; "a.b.c.d" in and out. */
export function parseIpv4(text: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!m) return undefined;
  const parts = m.slice(1).map(Number);
  if (parts.some((p) => p > 255)) return undefined;
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

/** "a.b.c.d" of an address from parseIpv4. */
export function formatIpv4(addr: number): string {
  return [addr >>> 24, (addr >>> 16) & 0xff, (addr >>> 8) & 0xff, addr & 0xff].join(".");
}

/** RFC 1071: the one's-complement sum of `bytes` folded to 16 bits, starting from `sum`. */
function onesSum(bytes: Uint8Array, sum = 0): number {
  const n = bytes.length;
  for (let i = 0; i + 1 < n; i += 2) sum += (bytes[i]! << 8) | bytes[i + 1]!;
  if (n & 1) sum += bytes[n - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** The Internet checksum of `bytes` (0 when a header that carries its checksum is intact). */
export function internetChecksum(bytes: Uint8Array, initial = 0): number {
  return ~onesSum(bytes, initial) & 0xffff;
}

/** RFC 9293 §3.1: the sum of the TCP pseudo-header (source, destination, protocol, TCP length). */
function pseudoHeaderSum(src: number, dst: number, tcpLength: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + IPPROTO_TCP + tcpLength;
}

/** The EtherType of a frame, or undefined when it is shorter than an Ethernet header. */
export function etherType(frame: Uint8Array): number | undefined {
  return frame.length < ETH_HLEN ? undefined : view(frame).getUint16(ethhdr.h_proto);
}

/**
 * Firecracker's test for a frame MMDS takes (devices/virtio/net: is_mmds_frame): an ARP
 * packet whose target protocol address is `addr`, or an IPv4 packet whose destination is
 * `addr`, judged only by those bytes; everything else (VLAN-tagged frames included) is
 * not MMDS's and goes to the TAP. A frame taken and then found malformed is dropped.
 */
export function isMmdsFrame(frame: Uint8Array, addr: number): boolean {
  const type = etherType(frame);
  if (type === ETH_P_ARP) return frame.length >= ETH_HLEN + ARP_IPV4_BYTES && view(frame).getUint32(ETH_HLEN + ARP_TPA) === addr;
  if (type === ETH_P_IP) return frame.length >= ETH_HLEN + iphdr.SIZE && view(frame).getUint32(ETH_HLEN + iphdr.daddr) === addr;
  return false;
}

/** An ARP request (RFC 826) for IPv4 over Ethernet: who asks (sha, spa) and for what (tpa). */
export interface ArpRequest {
  senderMac: Uint8Array;
  senderIp: number;
  targetIp: number;
}

/** Parses an ARP request for IPv4 over Ethernet; undefined for any other ARP packet. */
export function parseArpRequest(frame: Uint8Array): ArpRequest | undefined {
  if (etherType(frame) !== ETH_P_ARP || frame.length < ETH_HLEN + ARP_IPV4_BYTES) return undefined;
  const v = view(frame), a = ETH_HLEN;
  if (v.getUint16(a + arphdr.ar_hrd) !== ARPHRD_ETHER || v.getUint16(a + arphdr.ar_pro) !== ETH_P_IP) return undefined;
  if (v.getUint8(a + arphdr.ar_hln) !== ETH_ALEN || v.getUint8(a + arphdr.ar_pln) !== 4) return undefined;
  if (v.getUint16(a + arphdr.ar_op) !== ARPOP_REQUEST) return undefined;
  return { senderMac: frame.slice(a + ARP_SHA, a + ARP_SHA + ETH_ALEN), senderIp: v.getUint32(a + ARP_SPA), targetIp: v.getUint32(a + ARP_TPA) };
}

/** Writes an Ethernet header into `out`; returns its length. */
function writeEthernet(out: Uint8Array, dst: Uint8Array, src: Uint8Array, type: number): number {
  out.set(dst, ethhdr.h_dest);
  out.set(src, ethhdr.h_source);
  view(out).setUint16(ethhdr.h_proto, type);
  return ETH_HLEN;
}

/** Writes the ARP reply to `request` from (`mac`, `ip`) into `out`; returns the frame's length. */
export function writeArpReply(out: Uint8Array, request: ArpRequest, mac: Uint8Array, ip: number): number {
  const a = writeEthernet(out, request.senderMac, mac, ETH_P_ARP);
  const v = view(out);
  v.setUint16(a + arphdr.ar_hrd, ARPHRD_ETHER);
  v.setUint16(a + arphdr.ar_pro, ETH_P_IP);
  v.setUint8(a + arphdr.ar_hln, ETH_ALEN);
  v.setUint8(a + arphdr.ar_pln, 4);
  v.setUint16(a + arphdr.ar_op, ARPOP_REPLY);
  out.set(mac, a + ARP_SHA);
  v.setUint32(a + ARP_SPA, ip);
  out.set(request.senderMac, a + ARP_THA);
  v.setUint32(a + ARP_TPA, request.senderIp);
  return a + ARP_IPV4_BYTES;
}

/** A TCP segment received in an IPv4 packet (payload is a view of the frame). */
export interface TcpSegment {
  srcMac: Uint8Array;
  srcIp: number;
  dstIp: number;
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** The peer's MSS option (SYN only); undefined when absent. */
  mss: number | undefined;
  payload: Uint8Array;
}

/** Why parseIpv4Tcp refused a packet (for counters). */
export type Ipv4Refusal = "malformed" | "checksum" | "fragment" | "not-tcp";

/**
 * Parses an IPv4 packet carrying one TCP segment. Checks: IPv4 version and header
 * length, total length within the frame (Ethernet padding after it is ignored), the
 * header checksum, no fragment, protocol TCP, the TCP data offset, and, when
 * `verifyTcpChecksum`, the TCP checksum (a guest that uses checksum offload sends a
 * partial one, §5.1.6.2 VIRTIO_NET_HDR_F_NEEDS_CSUM, which the caller says).
 */
export function parseIpv4Tcp(frame: Uint8Array, verifyTcpChecksum: boolean): TcpSegment | Ipv4Refusal {
  if (etherType(frame) !== ETH_P_IP || frame.length < ETH_HLEN + iphdr.SIZE) return "malformed";
  const v = view(frame), ip = ETH_HLEN;
  const vihl = frame[ip]!;
  const ihl = (vihl & 0x0f) * 4;
  const total = v.getUint16(ip + iphdr.tot_len);
  if (vihl >> 4 !== IPV4_VERSION || ihl < iphdr.SIZE || total < ihl || ip + total > frame.length) return "malformed";
  if (internetChecksum(frame.subarray(ip, ip + ihl)) !== 0) return "checksum";
  const frag = v.getUint16(ip + iphdr.frag_off);
  if ((frag & IP_MF) !== 0 || (frag & IP_OFFSET_MASK) !== 0) return "fragment";
  if (v.getUint8(ip + iphdr.protocol) !== IPPROTO_TCP) return "not-tcp";
  const tcp = ip + ihl, tcpLength = total - ihl;
  if (tcpLength < tcphdr.SIZE) return "malformed";
  const doff = (frame[tcp + TCP_DOFF]! >> 4) * 4;
  if (doff < tcphdr.SIZE || doff > tcpLength) return "malformed";
  const srcIp = v.getUint32(ip + iphdr.saddr), dstIp = v.getUint32(ip + iphdr.daddr);
  if (verifyTcpChecksum && internetChecksum(frame.subarray(tcp, tcp + tcpLength), pseudoHeaderSum(srcIp, dstIp, tcpLength)) !== 0) return "checksum";
  const flags = frame[tcp + TCP_FLAGS]! & 0x3f;
  return {
    srcMac: frame.slice(ethhdr.h_source, ethhdr.h_source + ETH_ALEN),
    srcIp, dstIp,
    srcPort: v.getUint16(tcp + tcphdr.source),
    dstPort: v.getUint16(tcp + tcphdr.dest),
    seq: v.getUint32(tcp + tcphdr.seq),
    ack: v.getUint32(tcp + tcphdr.ack_seq),
    flags,
    window: v.getUint16(tcp + tcphdr.window),
    mss: (flags & TCP_SYN) !== 0 ? mssOption(frame.subarray(tcp + tcphdr.SIZE, tcp + doff)) : undefined,
    payload: frame.subarray(tcp + doff, tcp + tcpLength),
  };
}

/** The MSS option's value among TCP options (RFC 9293 §3.2), or undefined; malformed options end the walk. */
function mssOption(options: Uint8Array): number | undefined {
  for (let i = 0; i < options.length;) {
    const kind = options[i]!;
    if (kind === TCPOPT_EOL) return undefined;
    if (kind === TCPOPT_NOP) { i++; continue; }
    const len = options[i + 1];
    if (len === undefined || len < 2 || i + len > options.length) return undefined;
    if (kind === TCPOPT_MSS && len === TCPOLEN_MSS) return (options[i + 2]! << 8) | options[i + 3]!;
    i += len;
  }
  return undefined;
}

/** What writeTcpFrame puts in a segment MMDS sends. */
export interface TcpSegmentOut {
  dstMac: Uint8Array;
  srcMac: Uint8Array;
  srcIp: number;
  dstIp: number;
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** An MSS option to announce (SYN-ACK). */
  mss?: number;
  payload?: Uint8Array;
  /** The IPv4 identification field. */
  id: number;
}

/** Bytes of an Ethernet + IPv4 + TCP header with an MSS option: what a segment adds to its payload, at most. */
export const TCP_FRAME_OVERHEAD = ETH_HLEN + iphdr.SIZE + tcphdr.SIZE + TCPOLEN_MSS;

/** Writes a complete frame (both checksums computed) into `out`; returns its length. `out` must hold TCP_FRAME_OVERHEAD + payload. */
export function writeTcpFrame(out: Uint8Array, s: TcpSegmentOut): number {
  const ip = writeEthernet(out, s.dstMac, s.srcMac, ETH_P_IP);
  const optBytes = s.mss !== undefined ? TCPOLEN_MSS : 0;
  const payload = s.payload ?? new Uint8Array(0);
  const tcpLength = tcphdr.SIZE + optBytes + payload.length;
  const total = iphdr.SIZE + tcpLength;
  const v = view(out);
  out.fill(0, ip, ip + total - payload.length);
  out[ip] = (IPV4_VERSION << 4) | (iphdr.SIZE / 4);
  v.setUint16(ip + iphdr.tot_len, total);
  v.setUint16(ip + iphdr.id, s.id & 0xffff);
  v.setUint16(ip + iphdr.frag_off, IP_DF);
  v.setUint8(ip + iphdr.ttl, DEFAULT_TTL);
  v.setUint8(ip + iphdr.protocol, IPPROTO_TCP);
  v.setUint32(ip + iphdr.saddr, s.srcIp);
  v.setUint32(ip + iphdr.daddr, s.dstIp);
  v.setUint16(ip + iphdr.check, internetChecksum(out.subarray(ip, ip + iphdr.SIZE)));
  const tcp = ip + iphdr.SIZE;
  v.setUint16(tcp + tcphdr.source, s.srcPort);
  v.setUint16(tcp + tcphdr.dest, s.dstPort);
  v.setUint32(tcp + tcphdr.seq, s.seq >>> 0);
  v.setUint32(tcp + tcphdr.ack_seq, s.ack >>> 0);
  out[tcp + TCP_DOFF] = ((tcphdr.SIZE + optBytes) / 4) << 4;
  out[tcp + TCP_FLAGS] = s.flags;
  v.setUint16(tcp + tcphdr.window, s.window);
  if (s.mss !== undefined) {
    out[tcp + tcphdr.SIZE] = TCPOPT_MSS;
    out[tcp + tcphdr.SIZE + 1] = TCPOLEN_MSS;
    v.setUint16(tcp + tcphdr.SIZE + 2, s.mss);
  }
  out.set(payload, tcp + tcphdr.SIZE + optBytes);
  v.setUint16(tcp + tcphdr.check, internetChecksum(out.subarray(tcp, tcp + tcpLength), pseudoHeaderSum(s.srcIp, s.dstIp, tcpLength)));
  return tcp + tcpLength;
}
