/**
 * virtio-net (virtio 1.x §5.1) over an existing TAP interface: one receive
 * queue (0) and one transmit queue (1), no control queue, no multiqueue.
 *
 * The TAP is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a vnet header
 * size of sizeof(virtio_net_hdr_v1) (12), so the header that precedes every
 * packet under VIRTIO_F_VERSION_1 (§5.1.6; with VERSION_1 it is 12 bytes
 * whether or not VIRTIO_NET_F_MRG_RXBUF is negotiated) passes between the
 * guest and the TAP: TX gathers header + frame from a chain, checks and
 * rewrites the header (net-offload.ts) and writes both with one writev(2); RX
 * reads header + frame with one read, checks the kernel's header against what
 * the guest negotiated and sets num_buffers (the kernel skips those two bytes,
 * §5.1.6.4). With mergeable receive buffers (below) the frame is read straight
 * into the guest's receive chains (one readv(2): the header into a host buffer,
 * checked there and then copied to the first chain, the frame into the chains'
 * buffers); otherwise, and for MMDS's frames, while the RX limiter is set, or
 * when the guest has posted less than a 64 KiB frame needs, it is read into a
 * bounded host buffer and copied into the chains.
 *
 * Offered: VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS (always LINK_UP),
 * VIRTIO_NET_F_MTU when an MTU is given, indirect descriptors and event
 * indices (NET_RING_FEATURES, for the big receive buffers below), and the
 * checksum and TCP segmentation offloads in both directions (net-offload.ts):
 * CSUM, HOST_TSO4/6, HOST_ECN (the guest may send partial checksums and TCP
 * segments of up to 64 KiB, which the kernel completes or segments) and
 * GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN (the guest takes them). On activation
 * the TAP's TUNSETOFFLOAD flags are set from what the driver accepted of the
 * GUEST_* features, so the kernel hands the device exactly those; on reset
 * (and shutdown) they go back to 0. UFO/USO are not offered.
 *
 * VIRTIO_NET_F_MRG_RXBUF (mergeable receive buffers, §5.1.6.3.1, §5.1.6.4) is
 * offered. Without it each receive chain holds a whole packet: a driver that
 * accepts GUEST_TSO4/6 posts buffers for 64 KiB packets (Linux's "big packets"
 * mode) and a smaller frame wastes most of one. With it the driver posts small
 * buffers (Linux: about one MTU, sized by a moving average) and a packet spans
 * num_buffers chains: every chain but the last filled to its end, each used
 * entry with its own length, num_buffers in the first chain's header. The
 * driver must see a packet's chains together (§5.1.6.4: Linux drops a packet
 * whose later chains are not yet used), so they are published with one used
 * idx update (VirtQueue.pushUsedMany). The device holds popped chains (in
 * flight, unpublished) across frames: a read in place needs room for the
 * largest frame before it knows the frame's size, so it holds chains for
 * 64 KiB and publishes only those the frame filled; the rest wait for the next
 * frame, in ring order. A frame read into the host buffer waits there while
 * chains are taken for it until enough buffers arrive; the TAP keeps the
 * frames behind it. Only when the device holds every chain the ring can have
 * and the frame still does not fit (a ring too small for one 64 KiB packet)
 * is it dropped; the chains stay held for smaller frames. (A driver whose
 * chains take several descriptors each runs out of descriptors before that; its receive path then waits until it resets the
 * device, which harms only that guest: Linux posts one descriptor per buffer.) A chain smaller than the header (§5.1.6.3.1: each buffer is at least
 * that big) or with device-readable buffers is returned empty as a guest
 * fault; the frame goes on to the next chain.
 *
 * Rate limiting (Firecracker's rx_rate_limiter and tx_rate_limiter,
 * rate-limiter.ts): each direction has its own limiter, and a frame costs one
 * op and its bytes (the virtio header included, as Firecracker counts). A TX
 * chain the limiter refuses goes back to the ring and the device sends no more
 * until its TX timer fires. A received frame the limiter refuses waits in the
 * host buffer (one frame) while the TAP is not read, so further frames wait in
 * the kernel's TAP queue (bounded by its txqueuelen, dropped there beyond it);
 * the RX timer delivers it and listens to the TAP again.
 *
 * MMDS (Firecracker's microVM metadata service, mmds/): with `options.mmds`,
 * a TX frame for the MMDS address (an ARP request for it, or IPv4 to it) goes
 * to the device's own small TCP/IP responder (mmds/stack.ts) and never to the
 * TAP, and costs nothing from the TX limiter (as in Firecracker). Its answers
 * are pulled into the receive path when the guest has buffers, one MMDS frame
 * after each TAP frame while both have some (fair interleaving), and skip the
 * RX limiter; while the guest posts no buffers they are not generated, so
 * nothing piles up: each connection keeps its bounded unsent bytes and its
 * retransmission timer (MMDS_TIMER). The data guests read reaches the device
 * thread as MMDS_REQUEST_SET_DATA (mmds/control.ts); V2 tokens are issued and
 * checked here under a key drawn per device.
 *
 * Snapshots (net-persist.ts): saveState/restoreState carry the limiters, a
 * frame waiting for receive buffers and the receive chains held.
 *
 * Nothing a guest does throws out of the device: a malformed TX chain, an
 * oversized frame, an offload it did not negotiate or a lying header, or an RX
 * buffer too small for a frame drops that frame (and is counted); only a broken
 * ring (QueueError) fails the device.
 */
import { existsSync, readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import {
  AF_UNIX, EAGAIN, EINTR, EINVAL, ENODEV, ETH_ALEN, ETH_HLEN, ETH_MAX_MTU, IFF_MULTI_QUEUE, IOV_MAX, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, IFNAMSIZ,
  O_CLOEXEC, O_NONBLOCK, O_RDWR, POLLIN, SIOCGIFINDEX, SOCK_CLOEXEC, SOCK_DGRAM, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ, VIRTIO_ID_NET,
  VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP, VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_RING_F_INDIRECT_DESC, ifreq, ipv6hdr, virtio_net_config, virtio_net_hdr_v1,
} from "../../linux/abi.generated.js";
import type { GuestMemory } from "../../memory/guest-memory.js";
import { dataView, setU16, setU32 } from "../../memory/le.js";
import { errnoName, sys } from "../../sys/native.js";
import { readChain, writeChain } from "./chain-io.js";
import { MMDS_REQUEST_SET_DATA, type MmdsSetDataArgs } from "./mmds/control.js";
import { parseMmdsData } from "./mmds/data.js";
import { MmdsStack, type MmdsStackCounters } from "./mmds/stack.js";
import { parseIpv4 } from "./mmds/wire.js";
import { checkNetSavedState, frameToSaved, type NetSavedState } from "./net-persist.js";
import { type ServeResult, serveQueue } from "./queue.js";
import {
  checkRxHeader, checkTxHeader, NET_OFFLOAD_FEATURES, negotiatedOffloads, NO_OFFLOADS, tunOffloadFlags,
  type NegotiatedOffloads,
} from "./net-offload.js";
import {
  RATE_LIMITER_REQUEST_INFO, RATE_LIMITER_REQUEST_UPDATE, RateLimiter, type RateLimiterConfig, rateLimiterRequest,
} from "./rate-limiter.js";
import type { BackendRequest, DescriptorChain, VirtioBackend, VirtioDeviceContext, VirtQueue } from "./types.js";

/** The receive queue. */
export const NET_RX_QUEUE = 0;
/** The transmit queue. */
export const NET_TX_QUEUE = 1;
/** Descriptors per queue (QueueNumMax). */
export const NET_QUEUE_SIZE = 256;
/** Bytes of the header before every packet: sizeof(struct virtio_net_hdr_v1). */
export const NET_HDR_BYTES = virtio_net_hdr_v1.SIZE;
/**
 * Largest Ethernet frame (without the virtio header) the device moves; larger ones are
 * dropped. §5.1.6.3: with TSO the largest packet is 65589 bytes, an Ethernet header, an
 * IPv6 header and the largest IPv6 payload (payload_len is 16 bits: 0xffff).
 */
export const NET_MAX_FRAME_BYTES = ETH_HLEN + ipv6hdr.SIZE + 0xffff;
/**
 * Ring features (§6) offered with the offloads. A driver with GUEST_TSO and no
 * MRG_RXBUF posts 64 KiB receive buffers of MAX_SKB_FRAGS + 2 pieces each (Linux);
 * with VIRTIO_RING_F_INDIRECT_DESC each takes one ring slot instead of 19, so a
 * 256-entry ring holds 256 of them rather than 13, and TCP's ACK clock does not
 * stall on an empty receive ring. VIRTIO_RING_F_EVENT_IDX lets both sides skip
 * most kicks and interrupts during bulk transfers. SplitQueue implements both.
 */
export const NET_RING_FEATURES: bigint = (1n << BigInt(VIRTIO_RING_F_INDIRECT_DESC)) | (1n << BigInt(VIRTIO_RING_F_EVENT_IDX));
/**
 * Bytes of a TX packet copied and checked before it is sent: the virtio header and
 * an Ethernet header with two VLAN tags, an IPv6 header and a TCP header with
 * options, with room to spare (everything checkTxHeader reads).
 */
const TX_HEAD_BYTES = NET_HDR_BYTES + 128;
/** writev buffer index of the copied TX head; guest memory region `i` is TX_GUEST_BUFFER + i. */
const TX_HEAD_BUFFER = 0;
const TX_GUEST_BUFFER = 1;
/**
 * Bytes of receive chains a read in place needs (mergeable buffers): header and largest
 * frame, plus one byte, as in rxBuf, to recognise a frame that did not fit.
 */
export const NET_RX_IN_PLACE_BYTES = NET_HDR_BYTES + NET_MAX_FRAME_BYTES + 1;
/** readv buffer index of the received header; guest memory region `i` is RX_GUEST_BUFFER + i. */
const RX_HEADER_BUFFER = 0;
const RX_GUEST_BUFFER = 1;
/** Frames read from the TAP per poll wake-up before the device thread polls again (fairness). */
const RX_BATCH = 64;
/**
 * Receive chains popped per pass (mergeable buffers take many per frame, and a guest may
 * offer chains that are returned as faults); past it the pass ends and continues after
 * the device thread has polled (ctx.kick).
 */
const RX_CHAIN_BUDGET = 4 * NET_QUEUE_SIZE;
/**
 * Frames sent per TX kick, with the driver's kicks off meanwhile (serveQueue),
 * before completions are signalled and the device thread polls again (QEMU's tx_burst).
 */
const TX_BATCH = 256;
/** Used lengths of returned TX chains: the device writes nothing into them. */
const TX_USED_LENS = new Uint32Array(NET_QUEUE_SIZE);
/** ETH_MIN_MTU (linux/if_ether.h, kernel-internal): the smallest MTU Linux accepts. */
const MIN_MTU = 68;
const TUN_DEVICE = "/dev/net/tun";
/** ctx.setTimer ids: the wake-ups of a throttled receive and transmit path. */
const RX_TIMER = 0;
const TX_TIMER = 1;
/** ctx.setTimer id: MMDS's next TCP retransmission timeout. */
const MMDS_TIMER = 2;

/** MMDS on an interface (Firecracker's PUT /mmds/config, for the interfaces it names). */
export interface NetMmdsOptions {
  /** The address guests reach MMDS at (Firecracker's ipv4_address; default there 169.254.169.254). */
  ipv4: string;
  /** V1: GETs need no token; V2: a GET needs a token from PUT /latest/api/token. */
  version: "V1" | "V2";
  /** Always answer in EC2 IMDS's plain-text form, whatever the Accept header says. */
  imdsCompat: boolean;
}

/** How to attach a network interface (JSON-serialisable: it is posted to the device thread). */
export interface NetOptions {
  /** Name of an existing TAP interface on the host. */
  tap: string;
  /** The guest's MAC address, "xx:xx:xx:xx:xx:xx" (unicast). */
  mac: string;
  /** MTU to advertise (VIRTIO_NET_F_MTU); the guest's default (1500) when absent. */
  mtu?: number;
  /** Limits frames to the guest (Firecracker's rx_rate_limiter); none when absent. */
  rxRateLimiter?: RateLimiterConfig;
  /** Limits frames from the guest (Firecracker's tx_rate_limiter); none when absent. */
  txRateLimiter?: RateLimiterConfig;
  /** Answer the guest's MMDS requests on this interface; none when absent. */
  mmds?: NetMmdsOptions;
}

/** Why a network interface could not be attached. */
export class NetError extends Error {
  readonly code: "ENETCONFIG" | "ENETTAP";
  constructor(code: NetError["code"], message: string) {
    super(message);
    this.name = "NetError";
    this.code = code;
  }
}

/** Counters of what the device did (drops and host errors are counted, never thrown). */
export interface NetMetrics {
  txFrames: number;
  txBytes: number;
  /** TX frames dropped: malformed chains, oversized frames, unsupported offloads, TAP errors. */
  txDropped: number;
  rxFrames: number;
  rxBytes: number;
  /** RX frames dropped: too big for the guest's buffer, oversized or unusable from the TAP. */
  rxDropped: number;
  /** TAP read/write errors other than EAGAIN. */
  hostErrors: number;
  /** errno name of the latest host error. */
  lastHostError?: string;
  /** Malformed requests from the guest. */
  badRequests: number;
  /** RX frames whose kernel header carried an offload the guest did not negotiate (also in rxDropped). */
  rxOffloadDropped: number;
  /** The TUN_F_* flags the TAP was last set to (TUNSETOFFLOAD). */
  tapOffloads: number;
  /** TX frames that went to MMDS instead of the TAP (not in txFrames). */
  mmdsTxFrames: number;
  /** RX frames from MMDS delivered to the guest (also in rxFrames). */
  mmdsRxFrames: number;
}

/**
 * Sets a TAP's offloads: TUNSETOFFLOAD with TUN_F_* `flags`; returns 0 or a negative
 * errno. VirtioNet takes one so that tests can watch what it asks for.
 */
export type SetTapOffload = (fd: number, flags: number) => number;

/** The real TUNSETOFFLOAD (linux/if_tun.h). */
export const tunSetOffload: SetTapOffload = (fd, flags) => sys.ioctlValue(fd, TUNSETOFFLOAD, flags);

/** Parses "xx:xx:xx:xx:xx:xx" into 6 bytes; throws NetError unless it is a unicast, non-zero MAC. */
export function parseMac(text: string): Uint8Array {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(text)) {
    throw new NetError("ENETCONFIG", `Cannot attach network: MAC address '${text}' is not six hex bytes like 06:00:ac:10:00:02`);
  }
  const mac = Uint8Array.from(text.split(":"), (h) => parseInt(h, 16));
  if (mac[0]! & 1) throw new NetError("ENETCONFIG", `Cannot attach network: MAC address '${text}' is a multicast address (the first byte must be even)`);
  if (mac.every((b) => b === 0)) throw new NetError("ENETCONFIG", `Cannot attach network: MAC address '${text}' is all zeros`);
  return mac;
}

/** Checks an MTU for VIRTIO_NET_F_MTU: what Linux accepts, what fits config space's le16 and a frame the device moves. */
export function checkMtu(mtu: number): void {
  const max = Math.min(NET_MAX_FRAME_BYTES - ETH_HLEN, ETH_MAX_MTU);
  if (!Number.isInteger(mtu) || mtu < MIN_MTU || mtu > max) {
    throw new NetError("ENETCONFIG", `Cannot attach network: MTU ${mtu} is not a whole number from ${MIN_MTU} to ${max}`);
  }
}

/** Where sysfs lists this network namespace's interfaces (a jail has no /sys). */
const SYS_CLASS_NET = "/sys/class/net";

/**
 * Checks that `name` is an existing TAP interface (in this network namespace):
 * /sys/class/net/NAME exists and its tun_flags include IFF_TAP. TUNSETIFF on a
 * missing name would create a new interface, so this runs before it. Without
 * /sys/class/net (in a jail, as Firecracker's jailer makes one) only that the
 * interface exists is checked, with SIOCGIFINDEX; TUNSETIFF then refuses an
 * interface that is not a single-queue TAP (EINVAL).
 */
export function checkTap(name: string, sysClassNet = SYS_CLASS_NET): void {
  // dev_valid_name() in net/core/dev.c.
  if (name.length === 0 || name.length >= IFNAMSIZ || name === "." || name === ".." || /[/:\s]/.test(name)) {
    throw new NetError("ENETCONFIG", `Cannot attach network: '${name}' is not a valid interface name (1 to ${IFNAMSIZ - 1} characters, no '/', ':' or spaces)`);
  }
  if (!existsSync(sysClassNet)) {
    checkInterfaceExists(name);
    return;
  }
  let flagsText: string;
  try {
    flagsText = readFileSync(`${sysClassNet}/${name}/tun_flags`, "latin1");
  } catch (e) {
    const exists = (() => { try { readFileSync(`${sysClassNet}/${name}/ifindex`); return true; } catch { return false; } })();
    throw new NetError("ENETTAP", exists
      ? `Cannot attach network: interface '${name}' is not a TAP device`
      : `Cannot attach network: TAP interface '${name}' does not exist (create it with 'ip tuntap add dev ${name} mode tap'; ${(e as NodeJS.ErrnoException).code ?? "unreadable"})`);
  }
  const flags = Number.parseInt(flagsText.trim(), 16);
  if (!Number.isFinite(flags) || !(flags & IFF_TAP)) throw new NetError("ENETTAP", `Cannot attach network: interface '${name}' is a TUN device, not a TAP`);
  if (flags & IFF_MULTI_QUEUE) throw new NetError("ENETTAP", `Cannot attach network: TAP '${name}' is multi-queue, which flint does not support`);
}

/** A zeroed struct ifreq naming interface `name` (checked by checkTap: shorter than IFNAMSIZ). */
function ifreqNamed(name: string): Uint8Array {
  const ifr = new Uint8Array(ifreq.SIZE);
  ifr.set(new TextEncoder().encode(name), ifreq.ifr_name);
  return ifr;
}

/** Throws ENETTAP unless an interface `name` exists in this network namespace (SIOCGIFINDEX, asked through a Unix socket). */
function checkInterfaceExists(name: string): void {
  const fd = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new NetError("ENETTAP", `Cannot attach network: cannot check interface '${name}' (socket: ${errnoName(-fd)})`);
  try {
    const r = sys.ioctl(fd, SIOCGIFINDEX, ifreqNamed(name));
    if (r === -ENODEV) {
      throw new NetError("ENETTAP", `Cannot attach network: TAP interface '${name}' does not exist in this network namespace (create it with 'ip tuntap add dev ${name} mode tap')`);
    }
    if (r < 0) throw new NetError("ENETTAP", `Cannot attach network: cannot check interface '${name}' (SIOCGIFINDEX: ${errnoName(-r)})`);
  } finally {
    sys.close(fd);
  }
}

/** Opens `/dev/net/tun` and attaches it to the existing TAP `name` with a 12-byte vnet header and no offloads. */
export function openTap(name: string, sysClassNet = SYS_CLASS_NET): number {
  checkTap(name, sysClassNet);
  const fd = sys.open(TUN_DEVICE, O_RDWR | O_NONBLOCK | O_CLOEXEC, 0);
  if (fd < 0) throw new NetError("ENETTAP", `Cannot attach network: ${TUN_DEVICE} cannot be opened (${errnoName(-fd)})`);
  try {
    const ifr = ifreqNamed(name);
    setU16(dataView(ifr), ifreq.ifr_flags, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    let r = sys.ioctl(fd, TUNSETIFF, ifr);
    if (r < 0) {
      const why = errnoName(-r);
      const reason = r === -EINVAL ? ", it is not a single-queue TAP" : why === "EBUSY" ? ", another process holds it" : why === "EPERM" ? ", not permitted for this user" : "";
      throw new NetError("ENETTAP", `Cannot attach network: TAP '${name}' cannot be attached (TUNSETIFF: ${why}${reason})`);
    }
    const size = new Uint8Array(4);
    setU32(dataView(size), 0, NET_HDR_BYTES);
    r = sys.ioctl(fd, TUNSETVNETHDRSZ, size);
    if (r < 0) throw new NetError("ENETTAP", `Cannot attach network: TAP '${name}' refused a ${NET_HDR_BYTES}-byte vnet header (${errnoName(-r)})`);
    // No TUN_F_* offloads: the kernel must checksum and segment before handing frames to us.
    r = sys.ioctlValue(fd, TUNSETOFFLOAD, 0);
    if (r < 0) throw new NetError("ENETTAP", `Cannot attach network: TAP '${name}' refused to turn offloads off (${errnoName(-r)})`);
    return fd;
  } catch (e) {
    sys.close(fd);
    throw e;
  }
}

/** The virtio-net device, over an fd that reads and writes one [virtio_net_hdr_v1, frame] per call (a TAP). */
export class VirtioNet implements VirtioBackend {
  readonly deviceId = VIRTIO_ID_NET;
  readonly queueMaxSizes = [NET_QUEUE_SIZE, NET_QUEUE_SIZE] as const;
  readonly deviceFeatures: bigint;
  readonly mac: Uint8Array;
  readonly mtu: number | undefined;
  readonly metrics: NetMetrics = {
    txFrames: 0, txBytes: 0, txDropped: 0, rxFrames: 0, rxBytes: 0, rxDropped: 0, hostErrors: 0, badRequests: 0,
    rxOffloadDropped: 0, tapOffloads: 0, mmdsTxFrames: 0, mmdsRxFrames: 0,
  };
  /** MMDS's responder on this interface (options.mmds), if any. */
  private readonly mmds: MmdsStack | undefined;
  /** The next frame the receive path takes comes from MMDS when it has one (fair turns with the TAP). */
  private rxMmdsTurn = false;
  /** What the current session's driver negotiated (none before activation). */
  private offloads: NegotiatedOffloads = NO_OFFLOADS;
  private ctx: VirtioDeviceContext | undefined;
  private closed = false;
  /** The head of the TX packet being sent: what checkTxHeader checked and the TAP reads. */
  private readonly txHead = new Uint8Array(new ArrayBuffer(TX_HEAD_BYTES));
  /** What writev gathers from: txHead, then each guest memory region's bytes (TX_GUEST_BUFFER + index). */
  private txBuffers: Uint8Array[] = [this.txHead];
  /** The guest memory txBuffers were made for. */
  private txMemory: GuestMemory | undefined;
  /** Heads of the TX chains sent in this pass, returned together. */
  private readonly txDone = new Uint32Array(NET_QUEUE_SIZE);
  /** writev's (buffer, offset, length) triples: the head, then the rest of the packet in guest memory. */
  private readonly txIov = new Float64Array(3 * (1 + NET_QUEUE_SIZE));
  /** Header + largest frame, plus one byte to recognise a frame that did not fit. */
  private readonly rxBuf = new Uint8Array(NET_HDR_BYTES + NET_MAX_FRAME_BYTES + 1);
  /** Bytes in rxBuf of a frame read from the TAP but not yet given to the guest (0: none). */
  private rxPending = 0;
  /** The pending frame's tokens were taken from the RX limiter. */
  private rxAdmitted = false;
  /** The receive and transmit limiters; they outlive resets, so a reset never buys a fresh budget. */
  readonly rxLimiter: RateLimiter;
  readonly txLimiter: RateLimiter;
  private rxWatching = false;
  /**
   * The receive queue asks the driver for kicks (§2.7.10). Off while the device holds
   * room for the largest frame: it takes the driver's new buffers as frames come, so a
   * refill costs the guest no exit and the device thread no wake-up (QEMU's virtio-net
   * asks for them only when it runs out, the same way).
   */
  private rxKicks = true;
  /** VIRTIO_NET_F_MRG_RXBUF negotiated in this session. */
  private mergeable = false;
  /**
   * Mergeable: receive chains popped and not yet published, in ring order (at most the
   * queue size): taken for the pending frame, or held for the next read in place.
   */
  private rxHeld: DescriptorChain[] = [];
  /** Their writable bytes in total. */
  private rxHeldBytes = 0;
  /** pushUsedMany's arguments: the held chains' heads and used lengths. */
  private readonly rxHeads = new Uint32Array(NET_QUEUE_SIZE);
  private readonly rxLens = new Uint32Array(NET_QUEUE_SIZE);
  /** The virtio header of a frame read in place (checked here, then copied to its first chain). */
  private readonly rxHeader = new Uint8Array(new ArrayBuffer(NET_HDR_BYTES));
  private readonly rxHeaderView = dataView(this.rxHeader);
  /**
   * readv's (buffer, offset, length) triples: entry 0 the header, entries 1 to rxIovEnd - 1
   * the held chains' buffers, in order. Kept as chains are held and published, so that a
   * read does not rebuild them (a small frame takes one chain of some 43 held).
   */
  private readonly rxIov = new Float64Array(3 * IOV_MAX);
  private rxIovEnd = 1;
  /** rxIov's entries are the held chains' in rxMemory (false: rebuilt before the next read in place, if they fit). */
  private rxIovValid = true;
  /** What readv scatters into: rxHeader, then each guest memory region's bytes (RX_GUEST_BUFFER + index). */
  private rxBuffers: Uint8Array[] = [this.rxHeader];
  /** The guest memory rxBuffers were made for. */
  private rxMemory: GuestMemory | undefined;

  /**
   * Takes ownership of `fd` (closed by shutdown), whose offloads are off (openTap).
   * `setOffload` changes them (TUNSETOFFLOAD unless a test watches it instead).
   */
  constructor(options: NetOptions, private readonly fd: number, private readonly setOffload: SetTapOffload = tunSetOffload) {
    this.mac = parseMac(options.mac);
    if (options.mtu !== undefined) checkMtu(options.mtu);
    this.mtu = options.mtu;
    const clock = () => performance.now();
    this.rxLimiter = new RateLimiter(options.rxRateLimiter, clock);
    this.txLimiter = new RateLimiter(options.txRateLimiter, clock);
    if (options.mmds !== undefined) {
      const { ipv4, version, imdsCompat } = checkNetMmds(options.mmds);
      this.mmds = new MmdsStack({ ipv4, version, imdsCompat, nowMs: clock });
    }
    this.rxIov.set([RX_HEADER_BUFFER, 0, NET_HDR_BYTES]);
    const bit = (n: number) => 1n << BigInt(n);
    this.deviceFeatures = bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | (options.mtu !== undefined ? bit(VIRTIO_NET_F_MTU) : 0n) |
      bit(VIRTIO_NET_F_MRG_RXBUF) | NET_OFFLOAD_FEATURES | NET_RING_FEATURES;
  }

  initialConfig(): Uint8Array {
    const config = new Uint8Array(virtio_net_config.SIZE);
    const v = dataView(config);
    config.set(this.mac.subarray(0, ETH_ALEN), virtio_net_config.mac);
    setU16(v, virtio_net_config.status, VIRTIO_NET_S_LINK_UP);
    if (this.mtu !== undefined) setU16(v, virtio_net_config.mtu, this.mtu);
    return config;
  }

  activate(ctx: VirtioDeviceContext): void {
    this.ctx = ctx;
    this.rxPending = 0;
    this.rxWatching = false;
    this.mergeable = (ctx.features & (1n << BigInt(VIRTIO_NET_F_MRG_RXBUF))) !== 0n;
    this.dropHeld();
    this.rxKicks = true;
    ctx.queues[NET_RX_QUEUE]?.setNotifications(true);
    this.offloads = negotiatedOffloads(ctx.features);
    // §5.1.3.1: a driver must not accept a feature without the ones it requires; such a
    // feature stays unused (its offload is refused), and the driver is told once per session.
    for (const why of this.offloads.unmet) this.badRequest(ctx, `driver accepted ${why} (§5.1.3.1); not used`);
    // The kernel then sends the device only what the guest takes (§5.1.6.4.1). If the TAP
    // refuses, the kernel keeps sending complete frames, which every guest takes.
    this.applyTapOffloads(tunOffloadFlags(this.offloads.rx));
    this.startRx();
  }

  onNotify(queue: number): void {
    if (!this.ctx || this.closed) return;
    if (queue === NET_TX_QUEUE) this.tx();
    else if (queue === NET_RX_QUEUE) {
      // Throttled: the RX timer takes receiving up again.
      if (this.rxThrottled()) return;
      // New receive buffers (§5.1.6.3): deliver what waits, then listen to the TAP again.
      this.startRx();
      this.rx();
    }
  }

  /** MMDS's counters on this interface, when it has MMDS. */
  get mmdsCounters(): Readonly<MmdsStackCounters> | undefined {
    return this.mmds?.counters;
  }

  /**
   * Host requests: the rx and tx rate limiters (RATE_LIMITER_REQUEST_*; Firecracker's PATCH
   * /network-interfaces) and MMDS's data (MMDS_REQUEST_SET_DATA, answered with its size).
   */
  control(request: BackendRequest): unknown {
    switch (request.op) {
      case MMDS_REQUEST_SET_DATA: {
        if (!this.mmds) throw new NetError("ENETCONFIG", "Cannot set MMDS data: this network interface has no MMDS");
        const { json } = (request.args ?? {}) as Partial<MmdsSetDataArgs>;
        this.mmds.setData(parseMmdsData(json as string));
        return { bytes: Buffer.byteLength(json as string, "utf8") };
      }
      case RATE_LIMITER_REQUEST_INFO: {
        const { which } = rateLimiterRequest(request.args, ["rx", "tx"]);
        return (which === "rx" ? this.rxLimiter : this.txLimiter).config();
      }
      case RATE_LIMITER_REQUEST_UPDATE: {
        const { which, update } = rateLimiterRequest(request.args, ["rx", "tx"]);
        const limiter = which === "rx" ? this.rxLimiter : this.txLimiter;
        limiter.update(update ?? {});
        // The block ended: the path takes up what waits (the ring, the pending frame).
        this.ctx?.clearTimer?.(which === "rx" ? RX_TIMER : TX_TIMER);
        this.ctx?.kick(which === "rx" ? NET_RX_QUEUE : NET_TX_QUEUE);
        return limiter.config();
      }
      default:
        throw new Error(`virtio-net has no request '${request.op}'`);
    }
  }

  /** True when the RX limiter is blocked: the TAP is not read and the RX timer is armed. */
  private rxThrottled(): boolean {
    const wait = this.rxLimiter.blockedForMs();
    if (wait === 0) return false;
    this.stopRx();
    this.ctx?.setTimer?.(RX_TIMER, wait, () => {
      if (this.rxThrottled()) return;
      this.startRx();
      this.rx();
    });
    return true;
  }

  /** The interface's record for a snapshot (net-persist.ts): limiters, the pending frame and the chains held for it. */
  saveState(): NetSavedState {
    return {
      rxLimiter: this.rxLimiter.saveState(), txLimiter: this.txLimiter.saveState(),
      rxPending: frameToSaved(this.rxBuf.subarray(0, this.rxPending)), rxAdmitted: this.rxAdmitted,
      rxHeld: this.rxHeld.map((c) => ({ head: c.head, writable: c.writable.map((b): [number, number] => [b.addr, b.len]) })),
    };
  }

  /**
   * Takes up a saved interface (see VirtioBackend.restoreState): its limiters,
   * and with `ctx` its session (offloads, listening to the TAP) with the
   * pending frame and held chains, which the first receive pass goes on with.
   */
  restoreState(state: unknown, ctx: VirtioDeviceContext | undefined): void {
    const mergeable = ctx !== undefined && (ctx.features & (1n << BigInt(VIRTIO_NET_F_MRG_RXBUF))) !== 0n;
    const s = checkNetSavedState(state, { maxFrameBytes: this.rxBuf.length - 1, maxHeld: NET_QUEUE_SIZE, memory: ctx?.memory, mergeable });
    this.rxLimiter.restoreState(s.rxLimiter);
    this.txLimiter.restoreState(s.txLimiter);
    if (!ctx) return;
    this.activate(ctx);
    this.rxBuf.set(s.rx.frame);
    this.rxPending = s.rx.frame.length;
    this.rxAdmitted = s.rx.admitted;
    this.rxHeld = s.rx.chains.map((c) => ({
      head: c.head, readable: [], writable: c.writable, readableBytes: 0, writableBytes: c.writable.reduce((n, b) => n + b.len, 0),
    }));
    this.rxHeldBytes = this.rxHeld.reduce((n, c) => n + c.writableBytes, 0);
    this.rxIovValid = false;
  }

  reset(): void {
    // The device thread drops every watch on reset; a frame held for the old session is lost,
    // and so are the chains taken for it (the queues start over, §2.1.2).
    this.ctx = undefined;
    this.rxPending = 0;
    this.rxAdmitted = false;
    this.rxWatching = false;
    this.dropHeld();
    // No driver, no offloads: frames the kernel queues now are complete ones; any offloaded
    // frame already queued is dropped on RX by the next session's check.
    this.offloads = NO_OFFLOADS;
    if (!this.closed) this.applyTapOffloads(0);
  }

  shutdown(): void {
    if (this.closed) return;
    this.ctx = undefined;
    this.offloads = NO_OFFLOADS;
    // Leave the TAP's offloads off, as openTap sets them for the next reader.
    this.applyTapOffloads(0);
    this.closed = true;
    // close(2) directly: the fd came from sys.open, and fs.closeSync on an fd Node did not
    // open prints a warning ("closed but not opened in unmanaged mode").
    sys.close(this.fd);
  }

  /** Sets the TAP's TUN_F_* offloads (counted as a host error when the kernel refuses). */
  private applyTapOffloads(flags: number): void {
    if (flags === this.metrics.tapOffloads) return;
    const r = this.setOffload(this.fd, flags);
    if (r < 0) this.hostError(r);
    else this.metrics.tapOffloads = flags;
  }

  // --- TX (§5.1.6.2) ---

  private tx(): void {
    const ctx = this.ctx!;
    const q = ctx.queues[NET_TX_QUEUE];
    if (!q) return;
    const limiter = this.txLimiter;
    const wait = limiter.blockedForMs();
    if (wait > 0) {
      // Throttled: the chains wait in the ring for the TX timer.
      ctx.setTimer?.(TX_TIMER, wait, () => this.tx());
      return;
    }
    let served: ServeResult;
    // The pass's chains go back together (one used idx update and one transport lock per
    // pass instead of per packet); each comes back with length 0 (§5.1.6.2).
    const done = this.txDone;
    let held = 0, mmdsFrames = 0;
    try {
      served = serveQueue(q, TX_BATCH, (chain) => {
        // Every chain costs its bytes, header included (what Firecracker counts as the frame).
        if (!limiter.unlimited && !limiter.consumeOp(chain.readableBytes)) return false;
        if (this.transmit(ctx, chain) === "mmds") {
          mmdsFrames++;
          // MMDS's frames cost nothing (Firecracker gives their tokens back).
          if (!limiter.unlimited) { limiter.replenish(1, "ops"); limiter.replenish(chain.readableBytes, "bandwidth"); }
        }
        done[held++] = chain.head;
        if (held === done.length) {
          q.pushUsedMany(done, TX_USED_LENS, held);
          held = 0;
        }
      });
      q.pushUsedMany(done, TX_USED_LENS, held);
    } catch (e) {
      this.broken(ctx, e);
      return;
    }
    if (served.served > 0) ctx.notifyUsed(NET_TX_QUEUE);
    // MMDS may have answers now: the receive path takes them if the guest has buffers.
    if (mmdsFrames > 0) this.rx();
    if (served.more) ctx.kick(NET_TX_QUEUE);
    if (served.refused) ctx.setTimer?.(TX_TIMER, limiter.blockedForMs(), () => this.tx());
  }

  /**
   * Sends one TX chain to the TAP or to MMDS ("mmds"), or drops it (counted). Never throws for a popped chain.
   *
   * Only the packet's head (the virtio header and the frame headers checkTxHeader reads)
   * is copied and checked, because the guest may change its buffers under us and what
   * the TAP is told must be what was checked. The rest is payload: writev(2) gathers it
   * straight from guest memory, as the driver's buffers lie (one copy, the kernel's).
   */
  private transmit(ctx: VirtioDeviceContext, chain: DescriptorChain): "tap" | "mmds" | "dropped" {
    const bytes = chain.readableBytes;
    const drop = (why: string, fault: boolean) => {
      this.metrics.txDropped++;
      if (fault) this.badRequest(ctx, `TX ${why}`);
      return "dropped" as const;
    };
    if (chain.writable.length > 0) return drop("chain has device-writable buffers", true);
    if (bytes < NET_HDR_BYTES + ETH_HLEN) return drop(`packet of ${bytes} bytes is shorter than header and Ethernet header`, true);
    if (bytes > NET_HDR_BYTES + NET_MAX_FRAME_BYTES) return drop(`frame of ${bytes - NET_HDR_BYTES} bytes exceeds ${NET_MAX_FRAME_BYTES}`, true);
    // A chain has at most queue-size buffers (SplitQueue): with the head, it fits txIov.
    const headLen = Math.min(bytes, TX_HEAD_BYTES);
    const memory = ctx.memory;
    if (this.txMemory !== memory) {
      this.txMemory = memory;
      this.txBuffers = [this.txHead, ...memory.regions.map((r) => r.bytes)];
    }
    let iovs = 1;
    try {
      let copied = 0;
      for (const b of chain.readable) {
        const take = Math.min(b.len, headLen - copied);
        if (take > 0) {
          this.txHead.set(memory.readView(b.addr, take), copied);
          copied += take;
        }
        if (take < b.len) {
          // Named, not marked dirty: writev only reads it.
          const at = b.addr + take, len = b.len - take;
          const region = memory.indexOfRegion(at, len);
          if (region < 0) return drop(`buffer 0x${at.toString(16)}+${len} is not in one memory region`, true);
          this.setIov(iovs++, TX_GUEST_BUFFER + region, at - memory.regions[region]!.guestBase, len);
        }
      }
    } catch (e) {
      return drop(`buffers unreadable: ${(e as Error).message}`, true);
    }
    if (this.mmds?.isMmdsFrame(this.txHead.subarray(NET_HDR_BYTES, headLen))) {
      // The whole frame is copied (it is checked and parsed from the copy, never from guest memory).
      let frame: Uint8Array;
      try {
        frame = readChain(memory, chain, NET_HDR_BYTES, bytes - NET_HDR_BYTES);
      } catch (e) {
        return drop(`buffers unreadable: ${(e as Error).message}`, true);
      }
      this.metrics.mmdsTxFrames++;
      this.mmds.receive(frame, (this.txHead[virtio_net_hdr_v1.flags]! & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0);
      return "mmds";
    }
    // §5.1.6.2: only offloads the driver negotiated, with offsets inside the frame.
    const bad = checkTxHeader(this.txHead.subarray(0, headLen), this.offloads.tx, bytes);
    if (bad !== undefined) return drop(bad, true);
    this.setIov(0, TX_HEAD_BUFFER, 0, headLen);
    for (;;) {
      const r = sys.writev(this.fd, this.txIov, iovs, ...this.txBuffers);
      if (r === -EINTR) continue;
      if (r === -EAGAIN) return drop("TAP queue full", false);
      if (r < 0) { this.hostError(r); return drop(`TAP write failed`, false); }
      this.metrics.txFrames++;
      this.metrics.txBytes += bytes - NET_HDR_BYTES;
      return "tap";
    }
  }

  /** Sets txIov[i] to `len` bytes at `offset` in txBuffers[buffer] (the addon checks the range). */
  private setIov(i: number, buffer: number, offset: number, len: number): void {
    const v = this.txIov, at = 3 * i;
    v[at] = buffer;
    v[at + 1] = offset;
    v[at + 2] = len;
  }

  // --- RX (§5.1.6.3, §5.1.6.4) ---

  private startRx(): void {
    if (this.rxWatching || !this.ctx) return;
    this.rxWatching = true;
    this.ctx.watch(this.fd, POLLIN, () => this.rx());
  }

  private stopRx(): void {
    if (!this.rxWatching) return;
    this.rxWatching = false;
    this.ctx?.unwatch(this.fd);
  }

  /** Moves frames from the TAP into receive chains until either runs out (or a batch is done). */
  private rx(): void {
    const ctx = this.ctx;
    const q = ctx?.queues[NET_RX_QUEUE];
    if (!ctx || !q) return;
    if (this.rxThrottled()) return;
    let pushed = false;
    const budget = { chains: RX_CHAIN_BUDGET };
    try {
      for (let n = 0; n < RX_BATCH;) {
        if (this.rxPending === 0 && this.rxMmdsTurn && this.takeMmdsFrame()) {
          // MMDS's turn: one of its frames, then the TAP's.
          this.rxMmdsTurn = false;
          n++;
        } else if (this.rxPending === 0) {
          if (this.mergeable && this.rxLimiter.unlimited) {
            const step = this.receiveInPlace(ctx, q, budget);
            if (step.pushed) pushed = true;
            if (step.result === "frame") {
              n++;
              this.rxMmdsTurn = this.mmds !== undefined;
              continue;
            }
            if (step.result === "empty") {
              if (!this.takeMmdsFrame()) break;
              n++;
              continue;
            }
            if (step.result === "stop") break;
            // "short": too few buffers held for the largest frame; read into rxBuf instead.
          }
          const r = sys.read(this.fd, this.rxBuf, this.rxBuf.length);
          if (r === -EINTR) continue;
          if (r === -EAGAIN) {
            if (!this.takeMmdsFrame()) break;
            n++;
            continue;
          }
          if (r < 0) {
            // The TAP is gone or broken: stop listening until the guest adds buffers again.
            this.hostError(r);
            this.stopRx();
            break;
          }
          n++;
          this.rxMmdsTurn = this.mmds !== undefined;
          if (r < NET_HDR_BYTES + ETH_HLEN || r > NET_HDR_BYTES + NET_MAX_FRAME_BYTES) { this.metrics.rxDropped++; continue; }
          // §5.1.6.4.1: pass the kernel's offloads on only when the guest negotiated them
          // (checkRxHeader also sets num_buffers = 1).
          if (checkRxHeader(this.rxBuf.subarray(0, r), this.offloads.rx) !== undefined) {
            this.metrics.rxDropped++;
            this.metrics.rxOffloadDropped++;
            continue;
          }
          this.rxPending = r;
          this.rxAdmitted = false;
        }
        if (!this.rxAdmitted) {
          // Refused: the frame waits in rxBuf and the TAP is left unread until the RX timer.
          if (!this.rxLimiter.unlimited && !this.rxLimiter.consumeOp(this.rxPending)) {
            this.rxThrottled();
            break;
          }
          this.rxAdmitted = true;
        }
        if (this.mergeable) {
          const step = this.deliverMergeable(ctx, q, budget);
          if (step.pushed) pushed = true;
          if (step.waiting) break;
          continue;
        }
        const chain = this.popRx(q);
        if (!chain) {
          // No buffers: keep the frame and stop polling the TAP until the driver kicks queue 0.
          this.stopRx();
          break;
        }
        q.pushUsed(chain.head, this.deliver(ctx, chain));
        pushed = true;
      }
    } catch (e) {
      this.broken(ctx, e);
    }
    if (pushed) ctx.notifyUsed(NET_RX_QUEUE);
    // The batch ended with MMDS frames waiting and buffers still wanted: go on after the
    // device thread has polled (nothing else would call rx() while the TAP is quiet).
    if (this.rxWatching && this.ctx === ctx && this.mmds?.hasFrame()) ctx.kick(NET_RX_QUEUE);
    this.armMmdsTimer();
  }

  /**
   * Mergeable buffers: reads the TAP's next frame straight into the held receive chains
   * (topped up to NET_RX_IN_PLACE_BYTES from the ring) and publishes the chains it filled.
   * "frame": one frame was read (given to the guest, or dropped and counted); "empty":
   * the TAP has none; "short": the chains do not hold the largest frame (the ring has too
   * few, or they are too fragmented for one readv), nothing was read; "stop": the pass
   * ends (the chain budget ran out and the thread comes back, or the TAP failed).
   * `pushed`: chains were returned. Throws QueueError for a broken ring.
   */
  private receiveInPlace(ctx: VirtioDeviceContext, q: VirtQueue, budget: { chains: number }): { result: "frame" | "empty" | "short" | "stop"; pushed: boolean } {
    let pushed = false;
    while (this.rxHeldBytes < NET_RX_IN_PLACE_BYTES && this.rxHeld.length < q.layout.size) {
      if (budget.chains <= 0) {
        ctx.kick(NET_RX_QUEUE);
        return { result: "stop", pushed };
      }
      const chain = this.popRx(q);
      if (!chain) break;
      budget.chains--;
      if (this.holdChain(ctx, q, chain)) continue;
      pushed = true;
    }
    if (this.rxHeldBytes < NET_RX_IN_PLACE_BYTES) return { result: "short", pushed };
    this.setRxKicks(q, false);
    const memory = ctx.memory;
    if (!this.rxIovValid || this.rxMemory !== memory) this.rebuildRxIov(memory);
    // Too many pieces for one readv, or a header split over buffers (Linux never does that).
    const v = this.rxIov;
    if (!this.rxIovValid || v[5]! <= NET_HDR_BYTES) return { result: "short", pushed };
    let r: number;
    // The frame goes after the header's place in the first buffer; the header into rxHeader.
    v[4] += NET_HDR_BYTES;
    v[5] -= NET_HDR_BYTES;
    try {
      do r = sys.readv(this.fd, v, this.rxIovEnd, ...this.rxBuffers); while (r === -EINTR);
    } finally {
      v[4] -= NET_HDR_BYTES;
      v[5] += NET_HDR_BYTES;
    }
    if (r === -EAGAIN) return { result: "empty", pushed };
    if (r < 0) {
      this.hostError(r);
      this.stopRx();
      return { result: "stop", pushed };
    }
    // A dropped frame leaves its bytes in held chains that the guest never sees (they stay held).
    if (r < NET_HDR_BYTES + ETH_HLEN || r > NET_HDR_BYTES + NET_MAX_FRAME_BYTES) {
      this.metrics.rxDropped++;
      return { result: "frame", pushed };
    }
    if (checkRxHeader(this.rxHeader, this.offloads.rx, r - NET_HDR_BYTES) !== undefined) {
      this.metrics.rxDropped++;
      this.metrics.rxOffloadDropped++;
      return { result: "frame", pushed };
    }
    const held = this.rxHeld, count = this.frameChains(r);
    setU16(this.rxHeaderView, virtio_net_hdr_v1.num_buffers, count);
    this.publishHeld(q, count, r, () => {
      writeChain(memory, held[0]!, 0, this.rxHeader);
      // The pages readv wrote, for a Diff snapshot (the header's were marked by writeChain).
      for (let i = 0; i < count; i++) {
        let left = this.rxLens[i]!;
        for (const b of held[i]!.writable) {
          if (left === 0) break;
          const n = Math.min(b.len, left);
          memory.markWritten(b.addr, n);
          left -= n;
        }
      }
    });
    return { result: "frame", pushed: true };
  }

  /**
   * The receive queue's next chain. When the ring is empty, kicks are asked for first
   * (if they were off) and the ring looked at once more: a chain the driver added before
   * it saw the request brings no kick.
   */
  private popRx(q: VirtQueue): DescriptorChain | undefined {
    const chain = q.pop();
    if (chain || this.rxKicks) return chain;
    this.setRxKicks(q, true);
    return q.pop();
  }

  private setRxKicks(q: VirtQueue, on: boolean): void {
    if (this.rxKicks === on) return;
    this.rxKicks = on;
    q.setNotifications(on);
  }

  /**
   * Holds a popped receive chain (true), or returns it empty as a guest fault (false):
   * §5.1.6.3.1, receive buffers are device-writable and each at least a header long.
   */
  private holdChain(ctx: VirtioDeviceContext, q: VirtQueue, chain: DescriptorChain): boolean {
    if (chain.readable.length > 0 || chain.writableBytes < NET_HDR_BYTES) {
      this.badRequest(ctx, chain.readable.length > 0
        ? "RX chain has device-readable buffers"
        : `RX buffer of ${chain.writableBytes} bytes is shorter than the ${NET_HDR_BYTES}-byte header (§5.1.6.3.1)`);
      q.pushUsed(chain.head, 0);
      return false;
    }
    this.rxHeld.push(chain);
    this.rxHeldBytes += chain.writableBytes;
    if (this.rxIovValid) this.appendRxIov(chain, ctx.memory);
    return true;
  }

  /**
   * Adds a held chain's buffers to rxIov. Past IOV_MAX entries, or for a buffer that is not
   * in one memory region, rxIov is marked invalid and frames are read into rxBuf instead.
   * Nothing is marked dirty here: the pages a read writes are marked once it has.
   */
  private appendRxIov(chain: DescriptorChain, memory: GuestMemory): void {
    if (this.rxMemory !== memory || this.rxIovEnd + chain.writable.length > IOV_MAX) {
      this.rxIovValid = false;
      return;
    }
    const v = this.rxIov;
    let end = this.rxIovEnd;
    for (const b of chain.writable) {
      const region = memory.indexOfRegion(b.addr, b.len);
      if (region < 0) {
        this.rxIovValid = false;
        return;
      }
      const i = 3 * end++;
      v[i] = RX_GUEST_BUFFER + region;
      v[i + 1] = b.addr - memory.regions[region]!.guestBase;
      v[i + 2] = b.len;
    }
    this.rxIovEnd = end;
  }

  /** Makes rxIov anew for the held chains in `memory` (rxIovValid says whether they fit). */
  private rebuildRxIov(memory: GuestMemory): void {
    if (this.rxMemory !== memory) {
      this.rxMemory = memory;
      this.rxBuffers = [this.rxHeader, ...memory.regions.map((r) => r.bytes)];
    }
    this.rxIovEnd = 1;
    this.rxIovValid = true;
    for (const chain of this.rxHeld) {
      this.appendRxIov(chain, memory);
      if (!this.rxIovValid) return;
    }
  }

  /** Forgets the first `count` held chains (published), and their rxIov entries. */
  private releaseHeld(count: number): void {
    const held = this.rxHeld;
    let entries = 0;
    for (let i = 0; i < count; i++) {
      this.rxHeldBytes -= held[i]!.writableBytes;
      entries += held[i]!.writable.length;
    }
    held.splice(0, count);
    if (this.rxIovValid) {
      this.rxIov.copyWithin(3, 3 * (1 + entries), 3 * this.rxIovEnd);
      this.rxIovEnd -= entries;
    }
  }

  /**
   * Makes MMDS's next frame the pending one (a zeroed virtio header: complete checksums,
   * no GSO, one buffer), admitted without the RX limiter; false when MMDS has none.
   */
  private takeMmdsFrame(): boolean {
    const mmds = this.mmds;
    if (!mmds?.hasFrame()) return false;
    const len = mmds.nextFrame(this.rxBuf.subarray(NET_HDR_BYTES));
    if (len === 0) return false;
    this.rxBuf.fill(0, 0, NET_HDR_BYTES);
    setU16(dataView(this.rxBuf), virtio_net_hdr_v1.num_buffers, 1);
    this.rxPending = NET_HDR_BYTES + len;
    this.rxAdmitted = true;
    this.metrics.mmdsRxFrames++;
    return true;
  }

  /** Runs MMDS's due retransmission timeouts and sets MMDS_TIMER for the next one. */
  private armMmdsTimer(): void {
    const mmds = this.mmds, ctx = this.ctx;
    if (!mmds || !ctx) return;
    const wait = mmds.tick();
    if (wait === undefined) ctx.clearTimer?.(MMDS_TIMER);
    else ctx.setTimer?.(MMDS_TIMER, wait, () => { mmds.tick(); this.rx(); });
  }

  /**
   * Mergeable buffers (§5.1.6.4): takes chains for the pending frame until they hold it, then
   * fills them and publishes them together. `waiting`: the frame is still pending (no
   * buffers: the TAP is unwatched until the driver kicks queue 0; or the pass's chain budget
   * ran out: the device thread calls again). Throws QueueError for a broken ring.
   */
  private deliverMergeable(ctx: VirtioDeviceContext, q: VirtQueue, budget: { chains: number }): { pushed: boolean; waiting: boolean } {
    let pushed = false;
    while (this.rxHeldBytes < this.rxPending) {
      if (this.rxHeld.length >= q.layout.size) {
        // Every chain the ring can hold is taken and the frame still does not fit: it never
        // will. The chains stay held for the frames after it.
        this.metrics.rxDropped++;
        this.rxPending = 0;
        return { pushed, waiting: false };
      }
      if (budget.chains <= 0) {
        ctx.kick(NET_RX_QUEUE);
        return { pushed, waiting: true };
      }
      const chain = this.popRx(q);
      if (!chain) {
        this.stopRx();
        return { pushed, waiting: true };
      }
      budget.chains--;
      if (!this.holdChain(ctx, q, chain)) pushed = true;
    }
    this.publishFrame(q);
    return { pushed: true, waiting: false };
  }

  /**
   * Publishes the pending frame (rxBuf) in the first held chains, filled in order, with
   * one used idx update; the held chains after them stay held. Clears the pending frame.
   */
  private publishFrame(q: VirtQueue): void {
    const memory = this.ctx!.memory, held = this.rxHeld, len = this.rxPending, count = this.frameChains(len);
    setU16(dataView(this.rxBuf), virtio_net_hdr_v1.num_buffers, count);
    this.rxPending = 0;
    this.publishHeld(q, count, len, () => {
      for (let i = 0, offset = 0; i < count; offset += this.rxLens[i]!, i++) {
        writeChain(memory, held[i]!, 0, this.rxBuf.subarray(offset, offset + this.rxLens[i]!));
      }
    });
  }

  /**
   * Sets rxHeads and rxLens to the first held chains a frame of `len` bytes (header
   * included) fills, in order: every chain but the last filled to its end (§5.1.6.4).
   * Returns how many (the caller made sure the held chains hold the frame).
   */
  private frameChains(len: number): number {
    const held = this.rxHeld;
    let count = 0;
    for (let left = len; left > 0; count++) {
      const n = Math.min(held[count]!.writableBytes, left);
      this.rxHeads[count] = held[count]!.head;
      this.rxLens[count] = n;
      left -= n;
    }
    return count;
  }

  /**
   * Publishes the first `count` held chains (rxHeads, rxLens) with one used idx update,
   * once `write` has put the frame of `len` bytes in them. If it cannot (pop() checked the
   * buffers: only a memory layout change gets here) they are returned empty.
   */
  private publishHeld(q: VirtQueue, count: number, len: number, write: () => void): void {
    try {
      write();
      this.metrics.rxFrames++;
      this.metrics.rxBytes += len - NET_HDR_BYTES;
    } catch (e) {
      this.metrics.rxDropped++;
      this.badRequest(this.ctx!, `RX buffers unwritable: ${(e as Error).message}`);
      this.rxLens.fill(0, 0, count);
    }
    this.releaseHeld(count);
    q.pushUsedMany(this.rxHeads, this.rxLens, count);
  }

  /** Forgets the held chains (after publishing them, or with the session that owned them). */
  private dropHeld(): void {
    this.rxHeld = [];
    this.rxHeldBytes = 0;
    this.rxIovEnd = 1;
    this.rxIovValid = true;
  }

  /** Writes the pending frame into `chain`; returns the used length (0 when dropped). */
  private deliver(ctx: VirtioDeviceContext, chain: DescriptorChain): number {
    const len = this.rxPending;
    this.rxPending = 0;
    if (chain.readable.length > 0) {
      this.metrics.rxDropped++;
      this.badRequest(ctx, "RX chain has device-readable buffers");
      return 0;
    }
    if (chain.writableBytes < len) {
      // The guest sized its buffers for a smaller MTU than the TAP's (§5.1.6.3.1): not a fault.
      this.metrics.rxDropped++;
      return 0;
    }
    try {
      const written = writeChain(ctx.memory, chain, 0, this.rxBuf.subarray(0, len));
      this.metrics.rxFrames++;
      this.metrics.rxBytes += len - NET_HDR_BYTES;
      return written;
    } catch (e) {
      this.metrics.rxDropped++;
      this.badRequest(ctx, `RX buffers unwritable: ${(e as Error).message}`);
      return 0;
    }
  }

  /** The driver broke a ring (QueueError): fail the device. */
  private broken(ctx: VirtioDeviceContext, e: unknown): void {
    this.stopRx();
    this.dropHeld();
    this.rxPending = 0;
    this.ctx = undefined;
    ctx.fail(`virtio-net: ${(e as Error).message}`);
  }

  private hostError(negErrno: number): void {
    this.metrics.hostErrors++;
    this.metrics.lastHostError = errnoName(-negErrno);
  }

  private badRequest(ctx: VirtioDeviceContext, why: string): void {
    this.metrics.badRequests++;
    ctx.guestFault(`virtio-net: ${why}`);
  }
}

/** Checks MMDS's options; throws NetError (ENETCONFIG). */
export function checkNetMmds(mmds: NetMmdsOptions): { ipv4: number; version: "V1" | "V2"; imdsCompat: boolean } {
  const ipv4 = typeof mmds?.ipv4 === "string" ? parseIpv4(mmds.ipv4) : undefined;
  if (ipv4 === undefined) throw new NetError("ENETCONFIG", `Cannot attach network: MMDS address '${String(mmds?.ipv4)}' is not an IPv4 address like 169.254.169.254`);
  if (mmds.version !== "V1" && mmds.version !== "V2") throw new NetError("ENETCONFIG", `Cannot attach network: MMDS version '${String(mmds.version)}' is not V1 or V2`);
  if (typeof mmds.imdsCompat !== "boolean") throw new NetError("ENETCONFIG", "Cannot attach network: MMDS imdsCompat must be true or false");
  return { ipv4, version: mmds.version, imdsCompat: mmds.imdsCompat };
}

/** The device thread's entry point: attaches the TAP named in `options`. */
export function createBackend(options: NetOptions): VirtioBackend {
  parseMac(options.mac);
  if (options.mtu !== undefined) checkMtu(options.mtu);
  if (options.mmds !== undefined) checkNetMmds(options.mmds);
  const fd = openTap(options.tap);
  try {
    return new VirtioNet(options, fd);
  } catch (e) {
    sys.close(fd);
    throw e;
  }
}
