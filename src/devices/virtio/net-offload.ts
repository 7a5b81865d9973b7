/**
 * virtio-net checksum and TCP segmentation offloads (virtio 1.x §5.1.3, §5.1.6.2,
 * §5.1.6.4) over a TAP's vnet header (linux/if_tun.h, linux/virtio_net.h): which
 * offloads the driver's acceptance allows in each direction, the TUN_F_* flags
 * that make the kernel send the guest exactly those, and the checks every packet
 * header passes before it crosses the device.
 *
 * Directions, in the spec's words: TX is what the *device* receives from the
 * driver (VIRTIO_NET_F_CSUM, HOST_TSO4/6, HOST_ECN); RX is what the *driver*
 * receives (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN). UFO/USO are never offered.
 *
 * TX headers come from an untrusted guest. The kernel's tun validates what it
 * is given too, but the device must never pass on an offload that was not
 * negotiated, so a TX header is checked against the negotiated set and the
 * frame, then rewritten with only the fields that were checked (§5.1.6.2.2:
 * unknown flag bits are ignored, csum_start/csum_offset are not used without
 * NEEDS_CSUM). RX headers come from the host kernel and are passed on only
 * when they match what the guest negotiated.
 */
import {
  ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_TLEN, IPPROTO_TCP, TUN_F_CSUM, TUN_F_TSO4,
  TUN_F_TSO6, TUN_F_TSO_ECN, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, iphdr, ipv6hdr,
  ovs_action_push_vlan, tcphdr, virtio_net_hdr_v1,
} from "../../linux/abi.generated.js";
import { dataView, getU16, getU8, setU16, setU8 } from "../../memory/le.js";

/** Offloads allowed in one direction, after §5.1.3.1's dependencies. */
export interface OffloadSet {
  /** Partial checksums (VIRTIO_NET_HDR_F_NEEDS_CSUM). */
  csum: boolean;
  /** VIRTIO_NET_HDR_GSO_TCPV4. */
  tso4: boolean;
  /** VIRTIO_NET_HDR_GSO_TCPV6. */
  tso6: boolean;
  /** The VIRTIO_NET_HDR_GSO_ECN bit on a TCP GSO packet. */
  ecn: boolean;
}

/** The offloads a driver's accepted features allow. */
export interface NegotiatedOffloads {
  /** What the driver may ask of the device on the transmit queue (CSUM, HOST_*). */
  tx: OffloadSet;
  /** What the device may hand the driver on the receive queue (GUEST_*). */
  rx: OffloadSet;
  /** Accepted features left unused because a feature they require was not accepted (§5.1.3.1). */
  unmet: string[];
}

const bit = (n: number): bigint => 1n << BigInt(n);

/** The offload features virtio-net offers (all of them need the vnet header, which flint's TAP always has). */
export const NET_OFFLOAD_FEATURES: bigint =
  bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM) |
  bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6) | bit(VIRTIO_NET_F_HOST_ECN) |
  bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6) | bit(VIRTIO_NET_F_GUEST_ECN);

/** No offloads in either direction. */
export const NO_OFFLOADS: NegotiatedOffloads = Object.freeze({
  tx: Object.freeze({ csum: false, tso4: false, tso6: false, ecn: false }),
  rx: Object.freeze({ csum: false, tso4: false, tso6: false, ecn: false }),
  unmet: [],
}) as NegotiatedOffloads;

/**
 * The offloads `features` (the driver's acceptance) allows. A feature whose
 * requirement (§5.1.3.1: TSO needs CSUM, ECN needs TSO4 or TSO6) was not
 * accepted is treated as not negotiated and named in `unmet`; the transport
 * already refuses features that were not offered.
 */
export function negotiatedOffloads(features: bigint): NegotiatedOffloads {
  const has = (f: number) => (features & bit(f)) !== 0n;
  const unmet: string[] = [];
  const direction = (csumF: number, tso4F: number, tso6F: number, ecnF: number, names: readonly string[]): OffloadSet => {
    const csum = has(csumF);
    const needCsum = (f: number, name: string) => {
      if (has(f) && !csum) unmet.push(`${name} without ${names[0]}`);
      return has(f) && csum;
    };
    const tso4 = needCsum(tso4F, names[1]!), tso6 = needCsum(tso6F, names[2]!);
    if (has(ecnF) && !tso4 && !tso6) unmet.push(`${names[3]} without ${names[1]} or ${names[2]}`);
    return { csum, tso4, tso6, ecn: has(ecnF) && (tso4 || tso6) };
  };
  return {
    tx: direction(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN,
      ["VIRTIO_NET_F_CSUM", "VIRTIO_NET_F_HOST_TSO4", "VIRTIO_NET_F_HOST_TSO6", "VIRTIO_NET_F_HOST_ECN"]),
    rx: direction(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN,
      ["VIRTIO_NET_F_GUEST_CSUM", "VIRTIO_NET_F_GUEST_TSO4", "VIRTIO_NET_F_GUEST_TSO6", "VIRTIO_NET_F_GUEST_ECN"]),
    unmet,
  };
}

/**
 * The TUNSETOFFLOAD argument that lets the kernel hand the TAP's reader (and so
 * the guest) exactly the RX offloads in `rx`: TUN_F_CSUM iff GUEST_CSUM,
 * TUN_F_TSO4/6 iff GUEST_TSO4/6, TUN_F_TSO_ECN iff GUEST_ECN. The kernel only
 * takes TSO flags together with TUN_F_CSUM, which `rx` already guarantees.
 */
export function tunOffloadFlags(rx: OffloadSet): number {
  return (rx.csum ? TUN_F_CSUM : 0) | (rx.tso4 ? TUN_F_TSO4 : 0) | (rx.tso6 ? TUN_F_TSO6 : 0) | (rx.ecn ? TUN_F_TSO_ECN : 0);
}

/** A ones' complement checksum field is 16 bits (§5.1.6.2). */
const CSUM_BYTES = Uint16Array.BYTES_PER_ELEMENT;
/** 802.1Q/802.1ad tags skipped before the network header (a double-tagged frame has two). */
const MAX_VLAN_TAGS = 2;

const hex = (n: number) => `0x${n.toString(16)}`;

/** The network header of an Ethernet frame: its EtherType and offset, after up to two VLAN tags. */
function networkHeader(frame: DataView): { etherType: number; offset: number } | undefined {
  let offset = ETH_HLEN;
  for (let tags = 0; ; tags++) {
    if (offset > frame.byteLength) return undefined;
    const etherType = frame.getUint16(offset - ETH_TLEN, false);
    if ((etherType !== ETH_P_8021Q && etherType !== ETH_P_8021AD) || tags === MAX_VLAN_TAGS) return { etherType, offset };
    offset += ovs_action_push_vlan.SIZE;
  }
}

/**
 * Checks the TX header at the start of `packet` (header + frame, as gathered from a
 * chain, or only its first bytes when `packetLength` gives the whole length) against
 * the negotiated TX offloads and the frame, and on success rewrites it as the TAP
 * must see it. Returns why the packet must be dropped, or undefined. Frame headers
 * it must read and that lie past the bytes given make it refuse the packet.
 *
 * - flags: only NEEDS_CSUM is acted on, and only with VIRTIO_NET_F_CSUM; other bits
 *   (DATA_VALID, RSC_INFO: the driver must not set them) are ignored and cleared.
 * - NEEDS_CSUM: the checksum starts after the Ethernet header and its 16-bit field
 *   (csum_start + csum_offset) lies inside the frame.
 * - gso_type: TCPV4/TCPV6 only with HOST_TSO4/HOST_TSO6, the ECN bit only with
 *   HOST_ECN, anything else (UDP, UDP_L4, tunnels, unknown) never. A GSO packet
 *   must also ask for NEEDS_CSUM (§5.1.6.2.1), have gso_size > 0, carry IPv4
 *   (TCPV4, protocol TCP) or IPv6 (TCPV6) after up to two VLAN tags, and point
 *   csum_start/csum_offset at a whole TCP header's checksum after the IP header.
 * - hdr_len is only a hint (§5.1.6.2.2) but must lie within the frame (tun refuses
 *   it otherwise).
 */
export function checkTxHeader(packet: Uint8Array, tx: OffloadSet, packetLength = packet.length): string | undefined {
  const v = dataView(packet);
  const frameLen = packetLength - virtio_net_hdr_v1.SIZE;
  const frame = dataView(packet.subarray(virtio_net_hdr_v1.SIZE));
  const needsCsum = (getU8(v, virtio_net_hdr_v1.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
  const gsoType = getU8(v, virtio_net_hdr_v1.gso_type);
  const hdrLen = getU16(v, virtio_net_hdr_v1.hdr_len);
  const gsoSize = getU16(v, virtio_net_hdr_v1.gso_size);
  const csumStart = getU16(v, virtio_net_hdr_v1.csum_start);
  const csumOffset = getU16(v, virtio_net_hdr_v1.csum_offset);
  if (needsCsum) {
    if (!tx.csum) return "header asks for a partial checksum (NEEDS_CSUM) but VIRTIO_NET_F_CSUM was not negotiated";
    if (csumStart < ETH_HLEN || csumStart + csumOffset + CSUM_BYTES > frameLen) {
      return `checksum at csum_start ${csumStart} + csum_offset ${csumOffset} is not inside the ${frameLen}-byte frame after the Ethernet header`;
    }
  }
  if (gsoType !== VIRTIO_NET_HDR_GSO_NONE) {
    const base = gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
    const ipv4 = base === VIRTIO_NET_HDR_GSO_TCPV4;
    if (!(ipv4 && tx.tso4) && !(base === VIRTIO_NET_HDR_GSO_TCPV6 && tx.tso6)) {
      return `gso_type ${hex(gsoType)} was not negotiated`;
    }
    if (gsoType & VIRTIO_NET_HDR_GSO_ECN && !tx.ecn) return `gso_type ${hex(gsoType)} has the ECN bit but VIRTIO_NET_F_HOST_ECN was not negotiated`;
    if (!needsCsum) return `gso_type ${hex(gsoType)} without NEEDS_CSUM`;
    if (gsoSize === 0) return `gso_type ${hex(gsoType)} with gso_size 0`;
    const l3 = networkHeader(frame);
    const l3Size = ipv4 ? iphdr.SIZE : ipv6hdr.SIZE;
    if (!l3 || l3.etherType !== (ipv4 ? ETH_P_IP : ETH_P_IPV6) || l3.offset + l3Size > frameLen) {
      return `gso_type ${hex(gsoType)} on a frame without an ${ipv4 ? "IPv4" : "IPv6"} header`;
    }
    if (l3.offset + l3Size > frame.byteLength) return `gso_type ${hex(gsoType)} with its IP header past the ${frame.byteLength} frame bytes checked`;
    if (ipv4 && frame.getUint8(l3.offset + iphdr.protocol) !== IPPROTO_TCP) return `gso_type ${hex(gsoType)} on an IPv4 packet that is not TCP`;
    if (csumOffset !== tcphdr.check || csumStart < l3.offset + l3Size || csumStart + tcphdr.SIZE > frameLen) {
      return `gso_type ${hex(gsoType)} with csum_start ${csumStart} / csum_offset ${csumOffset} not on a TCP header inside the ${frameLen}-byte frame`;
    }
  }
  if (hdrLen > frameLen) return `hdr_len ${hdrLen} exceeds the ${frameLen}-byte frame`;
  // What the TAP gets: only checked fields, the rest zero (num_buffers is unused on TX).
  setU8(v, virtio_net_hdr_v1.flags, needsCsum ? VIRTIO_NET_HDR_F_NEEDS_CSUM : 0);
  if (!needsCsum) {
    setU16(v, virtio_net_hdr_v1.csum_start, 0);
    setU16(v, virtio_net_hdr_v1.csum_offset, 0);
  }
  if (gsoType === VIRTIO_NET_HDR_GSO_NONE) setU16(v, virtio_net_hdr_v1.gso_size, 0);
  setU16(v, virtio_net_hdr_v1.num_buffers, 0);
  return undefined;
}

/**
 * Checks the header the kernel put before a frame read from the TAP (`packet`:
 * header + frame, or the header alone with the frame's length in `frameLen`
 * when the frame went elsewhere) against the RX offloads the guest negotiated, and on success
 * fixes it up for the guest (§5.1.6.4.1): DATA_VALID is cleared without
 * GUEST_CSUM (the frame is complete, and flags must then be zero); num_buffers
 * is 1. Returns why the frame must be dropped, or undefined. A partial checksum
 * or a GSO type the guest did not negotiate (e.g. queued before a reset turned
 * the TAP's offloads off) cannot be delivered.
 */
export function checkRxHeader(packet: Uint8Array, rx: OffloadSet, frameLen = packet.length - virtio_net_hdr_v1.SIZE): string | undefined {
  const v = dataView(packet);
  let flags = getU8(v, virtio_net_hdr_v1.flags);
  const gsoType = getU8(v, virtio_net_hdr_v1.gso_type);
  if (flags & ~(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) return `flags ${hex(flags)} has bits the device does not know`;
  const needsCsum = (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
  if (needsCsum) {
    if (!rx.csum) return "partial checksum but VIRTIO_NET_F_GUEST_CSUM was not negotiated";
    const csumStart = getU16(v, virtio_net_hdr_v1.csum_start), csumOffset = getU16(v, virtio_net_hdr_v1.csum_offset);
    if (csumStart + csumOffset + CSUM_BYTES > frameLen) return `checksum at ${csumStart}+${csumOffset} is outside the ${frameLen}-byte frame`;
  }
  if (gsoType !== VIRTIO_NET_HDR_GSO_NONE) {
    const base = gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
    if (!(base === VIRTIO_NET_HDR_GSO_TCPV4 && rx.tso4) && !(base === VIRTIO_NET_HDR_GSO_TCPV6 && rx.tso6)) {
      return `gso_type ${hex(gsoType)} was not negotiated by the guest`;
    }
    if (gsoType & VIRTIO_NET_HDR_GSO_ECN && !rx.ecn) return `gso_type ${hex(gsoType)} has the ECN bit but VIRTIO_NET_F_GUEST_ECN was not negotiated`;
    if (!needsCsum) return `gso_type ${hex(gsoType)} without NEEDS_CSUM`;
    if (getU16(v, virtio_net_hdr_v1.gso_size) === 0) return `gso_type ${hex(gsoType)} with gso_size 0`;
  }
  if (flags & VIRTIO_NET_HDR_F_DATA_VALID && !rx.csum) flags &= ~VIRTIO_NET_HDR_F_DATA_VALID;
  setU8(v, virtio_net_hdr_v1.flags, flags);
  setU16(v, virtio_net_hdr_v1.num_buffers, 1);
  return undefined;
}
