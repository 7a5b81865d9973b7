/**
 * virtio-net (virtio 1.x §5.1) over an existing TAP interface: one receive
 * queue (0) and one transmit queue (1), no control queue, no multiqueue.
 *
 * The TAP is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a vnet header
 * size of sizeof(virtio_net_hdr_v1) (12), so the header that precedes every
 * packet under VIRTIO_F_VERSION_1 (§5.1.6) passes straight between the guest
 * and the TAP: TX gathers header + frame from a chain and writes them with one
 * write(2); RX reads header + frame with one read(2) into a host buffer, sets
 * num_buffers = 1 (the kernel skips those two bytes, §5.1.6.4) and copies the
 * result into one receive chain (no VIRTIO_NET_F_MRG_RXBUF: each chain holds a
 * whole packet).
 *
 * Offered: VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS (always LINK_UP) and
 * VIRTIO_NET_F_MTU when an MTU is given. No checksum or segmentation offload
 * is offered (TUNSETOFFLOAD 0), so the kernel hands us only complete,
 * checksummed frames of at most the TAP's MTU, and a header asking for
 * NEEDS_CSUM or GSO on TX is a guest fault.
 *
 * Nothing a guest does throws out of the device: a malformed TX chain, an
 * oversized frame or an RX buffer too small for a frame drops that frame (and
 * is counted); only a broken ring (QueueError) fails the device.
 */
import { closeSync, readFileSync } from "node:fs";
import {
  EAGAIN, EINTR, ETH_ALEN, ETH_HLEN, IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, IFNAMSIZ, O_CLOEXEC,
  O_NONBLOCK, O_RDWR, POLLIN, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ, VIRTIO_ID_NET, VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_S_LINK_UP, ifreq, virtio_net_config, virtio_net_hdr_v1,
} from "../../linux/abi.generated.js";
import { dataView, getU8, setU16, setU32 } from "../../memory/le.js";
import { errnoName, sys } from "../../sys/native.js";
import { writeChain } from "./chain-io.js";
import type { DescriptorChain, VirtioBackend, VirtioDeviceContext } from "./types.js";

/** The receive queue. */
export const NET_RX_QUEUE = 0;
/** The transmit queue. */
export const NET_TX_QUEUE = 1;
/** Descriptors per queue (QueueNumMax). */
export const NET_QUEUE_SIZE = 256;
/** Bytes of the header before every packet: sizeof(struct virtio_net_hdr_v1). */
export const NET_HDR_BYTES = virtio_net_hdr_v1.SIZE;
/** Largest Ethernet frame (without the virtio header) the device moves; larger ones are dropped. */
export const NET_MAX_FRAME_BYTES = 64 * 1024;
/** Frames read from the TAP per poll wake-up before the device thread polls again (fairness). */
const RX_BATCH = 64;
/** ETH_MIN_MTU (linux/if_ether.h, kernel-internal): the smallest MTU Linux accepts. */
const MIN_MTU = 68;
const TUN_DEVICE = "/dev/net/tun";

/** How to attach a network interface (JSON-serialisable: it is posted to the device thread). */
export interface NetOptions {
  /** Name of an existing TAP interface on the host. */
  tap: string;
  /** The guest's MAC address, "xx:xx:xx:xx:xx:xx" (unicast). */
  mac: string;
  /** MTU to advertise (VIRTIO_NET_F_MTU); the guest's default (1500) when absent. */
  mtu?: number;
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
}

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

/** Checks an MTU for VIRTIO_NET_F_MTU: what Linux accepts and what fits a frame the device moves. */
export function checkMtu(mtu: number): void {
  const max = NET_MAX_FRAME_BYTES - ETH_HLEN;
  if (!Number.isInteger(mtu) || mtu < MIN_MTU || mtu > max) {
    throw new NetError("ENETCONFIG", `Cannot attach network: MTU ${mtu} is not a whole number from ${MIN_MTU} to ${max}`);
  }
}

/**
 * Checks that `name` is an existing TAP interface (in this network namespace):
 * /sys/class/net/NAME exists and its tun_flags include IFF_TAP. TUNSETIFF on a
 * missing name would create a new interface, so this runs before it.
 */
export function checkTap(name: string): void {
  // dev_valid_name() in net/core/dev.c.
  if (name.length === 0 || name.length >= IFNAMSIZ || name === "." || name === ".." || /[/:\s]/.test(name)) {
    throw new NetError("ENETCONFIG", `Cannot attach network: '${name}' is not a valid interface name (1 to ${IFNAMSIZ - 1} characters, no '/', ':' or spaces)`);
  }
  let flagsText: string;
  try {
    flagsText = readFileSync(`/sys/class/net/${name}/tun_flags`, "latin1");
  } catch (e) {
    const exists = (() => { try { readFileSync(`/sys/class/net/${name}/ifindex`); return true; } catch { return false; } })();
    throw new NetError("ENETTAP", exists
      ? `Cannot attach network: interface '${name}' is not a TAP device`
      : `Cannot attach network: TAP interface '${name}' does not exist (create it with 'ip tuntap add dev ${name} mode tap'; ${(e as NodeJS.ErrnoException).code ?? "unreadable"})`);
  }
  const flags = Number.parseInt(flagsText.trim(), 16);
  if (!Number.isFinite(flags) || !(flags & IFF_TAP)) throw new NetError("ENETTAP", `Cannot attach network: interface '${name}' is a TUN device, not a TAP`);
  if (flags & IFF_MULTI_QUEUE) throw new NetError("ENETTAP", `Cannot attach network: TAP '${name}' is multi-queue, which flint does not support`);
}

/** Opens `/dev/net/tun` and attaches it to the existing TAP `name` with a 12-byte vnet header and no offloads. */
export function openTap(name: string): number {
  checkTap(name);
  const fd = sys.open(TUN_DEVICE, O_RDWR | O_NONBLOCK | O_CLOEXEC, 0);
  if (fd < 0) throw new NetError("ENETTAP", `Cannot attach network: ${TUN_DEVICE} cannot be opened (${errnoName(-fd)})`);
  try {
    const ifr = new Uint8Array(ifreq.SIZE);
    ifr.set(new TextEncoder().encode(name), ifreq.ifr_name);
    setU16(dataView(ifr), ifreq.ifr_flags, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    let r = sys.ioctl(fd, TUNSETIFF, ifr);
    if (r < 0) {
      const why = errnoName(-r);
      throw new NetError("ENETTAP", `Cannot attach network: TAP '${name}' cannot be attached (TUNSETIFF: ${why}${why === "EBUSY" ? ", another process holds it" : why === "EPERM" ? ", not permitted for this user" : ""})`);
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
  };
  private ctx: VirtioDeviceContext | undefined;
  private closed = false;
  /** Header + largest frame. */
  private readonly txBuf = new Uint8Array(NET_HDR_BYTES + NET_MAX_FRAME_BYTES);
  /** Header + largest frame, plus one byte to recognise a frame that did not fit. */
  private readonly rxBuf = new Uint8Array(NET_HDR_BYTES + NET_MAX_FRAME_BYTES + 1);
  /** Bytes in rxBuf of a frame read from the TAP but not yet given to the guest (0: none). */
  private rxPending = 0;
  private rxWatching = false;

  /** Takes ownership of `fd` (closed by shutdown). */
  constructor(options: NetOptions, private readonly fd: number) {
    this.mac = parseMac(options.mac);
    if (options.mtu !== undefined) checkMtu(options.mtu);
    this.mtu = options.mtu;
    const bit = (n: number) => 1n << BigInt(n);
    this.deviceFeatures = bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | (options.mtu !== undefined ? bit(VIRTIO_NET_F_MTU) : 0n);
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
    this.startRx();
  }

  onNotify(queue: number): void {
    if (!this.ctx || this.closed) return;
    if (queue === NET_TX_QUEUE) this.tx();
    else if (queue === NET_RX_QUEUE) {
      // New receive buffers (§5.1.6.3): deliver what waits, then listen to the TAP again.
      this.startRx();
      this.rx();
    }
  }

  reset(): void {
    // The device thread drops every watch on reset; a frame held for the old session is lost.
    this.ctx = undefined;
    this.rxPending = 0;
    this.rxWatching = false;
  }

  shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    this.ctx = undefined;
    closeSync(this.fd);
  }

  // --- TX (§5.1.6.2) ---

  private tx(): void {
    const ctx = this.ctx!;
    const q = ctx.queues[NET_TX_QUEUE];
    if (!q) return;
    let pushed = false;
    try {
      for (let chain = q.pop(); chain; chain = q.pop()) {
        this.transmit(ctx, chain);
        q.pushUsed(chain.head, 0);
        pushed = true;
      }
    } catch (e) {
      this.broken(ctx, e);
    }
    if (pushed) ctx.notifyUsed(NET_TX_QUEUE);
  }

  /** Sends one TX chain to the TAP, or drops it (counted). Never throws for a popped chain. */
  private transmit(ctx: VirtioDeviceContext, chain: DescriptorChain): void {
    const bytes = chain.readableBytes;
    const drop = (why: string, fault: boolean) => {
      this.metrics.txDropped++;
      if (fault) this.badRequest(ctx, `TX ${why}`);
    };
    if (chain.writable.length > 0) return drop("chain has device-writable buffers", true);
    if (bytes < NET_HDR_BYTES + ETH_HLEN) return drop(`packet of ${bytes} bytes is shorter than header and Ethernet header`, true);
    if (bytes > this.txBuf.length) return drop(`frame of ${bytes - NET_HDR_BYTES} bytes exceeds ${NET_MAX_FRAME_BYTES}`, true);
    // Copy first, then validate the copy: the guest may change its buffers under us.
    try {
      let off = 0;
      for (const b of chain.readable) {
        this.txBuf.set(ctx.memory.slice(b.addr, b.len), off);
        off += b.len;
      }
    } catch (e) {
      return drop(`buffers unreadable: ${(e as Error).message}`, true);
    }
    const flags = getU8(dataView(this.txBuf), virtio_net_hdr_v1.flags);
    const gso = getU8(dataView(this.txBuf), virtio_net_hdr_v1.gso_type);
    if (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM || gso !== VIRTIO_NET_HDR_GSO_NONE) {
      return drop(`header asks for an offload that was not offered (flags 0x${flags.toString(16)}, gso_type 0x${gso.toString(16)})`, true);
    }
    for (;;) {
      const r = sys.write(this.fd, this.txBuf, bytes);
      if (r === -EINTR) continue;
      if (r === -EAGAIN) return drop("TAP queue full", false);
      if (r < 0) { this.hostError(r); return drop(`TAP write failed`, false); }
      this.metrics.txFrames++;
      this.metrics.txBytes += bytes - NET_HDR_BYTES;
      return;
    }
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
    let pushed = false;
    try {
      for (let n = 0; n < RX_BATCH;) {
        if (this.rxPending === 0) {
          const r = sys.read(this.fd, this.rxBuf, this.rxBuf.length);
          if (r === -EINTR) continue;
          if (r === -EAGAIN) break;
          if (r < 0) {
            // The TAP is gone or broken: stop listening until the guest adds buffers again.
            this.hostError(r);
            this.stopRx();
            break;
          }
          n++;
          if (r < NET_HDR_BYTES + ETH_HLEN || r > NET_HDR_BYTES + NET_MAX_FRAME_BYTES) { this.metrics.rxDropped++; continue; }
          const v = dataView(this.rxBuf);
          // Offloads are off, so the kernel never sends partial checksums or GSO: drop rather than mislead the guest.
          if (getU8(v, virtio_net_hdr_v1.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM || getU8(v, virtio_net_hdr_v1.gso_type) !== VIRTIO_NET_HDR_GSO_NONE) {
            this.metrics.rxDropped++;
            continue;
          }
          setU16(v, virtio_net_hdr_v1.num_buffers, 1);
          this.rxPending = r;
        }
        const chain = q.pop();
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

/** The device thread's entry point: attaches the TAP named in `options`. */
export function createBackend(options: NetOptions): VirtioBackend {
  parseMac(options.mac);
  if (options.mtu !== undefined) checkMtu(options.mtu);
  const fd = openTap(options.tap);
  try {
    return new VirtioNet(options, fd);
  } catch (e) {
    sys.close(fd);
    throw e;
  }
}
