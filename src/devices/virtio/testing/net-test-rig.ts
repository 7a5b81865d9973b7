/**
 * Test rig for virtio-net (net.test.ts, net.property.test.ts, net-tap-scenario.ts):
 * a VirtioNet over a fake TAP or a real one, a fake guest driver per queue and a
 * context that records what the device asks for (watches, notifications, faults).
 *
 * The fake TAP is a connected pair of AF_UNIX datagram sockets: like a TAP fd,
 * each read or write moves exactly one packet ([virtio_net_hdr_v1, frame]).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AF_UNIX, EAGAIN, EINTR, ETH_ALEN, ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_TLEN, IPPROTO_TCP, POLLIN,
  SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, iphdr, ipv6hdr, ovs_action_push_vlan, pollfd, tcphdr, virtio_net_hdr_v1,
} from "../../../linux/abi.generated.js";
import { GuestMemory } from "../../../memory/guest-memory.js";
import { dataView, getU16, setU16 } from "../../../memory/le.js";
import { check, sys } from "../../../sys/native.js";
import { NET_HDR_BYTES, NET_RX_QUEUE, NET_TX_QUEUE, tunSetOffload, VirtioNet, type NetOptions, type SetTapOffload } from "../net.js";
import { FakeDriver, type UsedEntry } from "./fake-driver.js";
import type { VirtioDeviceContext, VirtQueue } from "../types.js";

/** Two connected, non-blocking AF_UNIX datagram sockets: `device` plays the TAP fd, `peer` the host network. */
export interface FakeTap {
  device: number;
  peer: number;
  close(): void;
}

/** A fresh fake TAP; close() closes the peer (the device fd belongs to the device under test). */
export function fakeTap(): FakeTap {
  const dir = mkdtempSync(join(tmpdir(), "flint-net-"));
  const mk = (name: string) => {
    const fd = check(sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket");
    check(sys.bindUnix(fd, join(dir, name)), "bind");
    return fd;
  };
  const device = mk("device"), peer = mk("peer");
  check(sys.connectUnix(device, join(dir, "peer")), "connect");
  check(sys.connectUnix(peer, join(dir, "device")), "connect");
  let closed = false;
  return {
    device, peer,
    close() {
      if (closed) return;
      closed = true;
      sys.close(peer);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A VirtioDeviceContext that records what the device asks of it. */
export class NetContext implements VirtioDeviceContext {
  readonly faults: string[] = [];
  readonly failures: string[] = [];
  readonly usedNotifications: number[] = [];
  readonly watches = new Map<number, { events: number; onReady: (revents: number) => void }>();
  constructor(readonly memory: GuestMemory, readonly queues: VirtQueue[], readonly config: Uint8Array, readonly features = 0n) {}
  notifyUsed(queue: number): void { this.usedNotifications.push(queue); }
  notifyConfigChange(): void {}
  /** Queues the device asked to be called again for (ctx.kick). */
  readonly kicks: number[] = [];
  kick(queue: number): void { this.kicks.push(queue); }
  fail(reason: string): void { this.failures.push(reason); }
  guestFault(message: string): void { this.faults.push(message); }
  watch(fd: number, events: number, onReady: (revents: number) => void): void { this.watches.set(fd, { events, onReady }); }
  unwatch(fd: number): void { this.watches.delete(fd); }
  /** Calls the watch on `fd` as the device thread's poll loop would; false when nothing watches it. */
  fire(fd: number, revents = POLLIN): boolean {
    const w = this.watches.get(fd);
    w?.onReady(revents);
    return !!w;
  }
}

/**
 * A TAP offload setter that records every TUNSETOFFLOAD argument in `calls`, and
 * passes it to the kernel only when `real` (a real TAP); otherwise it succeeds,
 * or fails with `fail` (a negative errno) when that is set.
 */
export interface OffloadRecorder {
  set: SetTapOffload;
  calls: number[];
  fail?: number;
}

/** A fresh OffloadRecorder (see there). */
export function offloadRecorder(real = false): OffloadRecorder {
  const rec: OffloadRecorder = {
    calls: [],
    set: (fd, flags) => {
      rec.calls.push(flags);
      if (rec.fail !== undefined) return rec.fail;
      return real ? tunSetOffload(fd, flags) : 0;
    },
  };
  return rec;
}

/** How netRig builds its device and driver. */
export interface NetRigOptions {
  /** The features the fake driver accepted (default: everything the device offers). */
  features?: bigint | ((offered: bigint) => bigint);
  /** Descriptors per queue (default 64). */
  queueSize?: number;
  /** Pass TUNSETOFFLOAD on to the kernel (a real TAP); recorded either way. */
  realTap?: boolean;
  /** Make every TUNSETOFFLOAD fail with this negative errno. */
  offloadFail?: number;
  /** The receive ring's features (default neither): with `indirect`, a chain may have up to queueSize buffers. */
  rxRing?: { indirect?: boolean; eventIdx?: boolean };
  /** Guest memory keeps a dirty-page map of the device's writes (MemoryOptions.trackDirty). */
  trackDirty?: boolean;
}

/** A device with its two fake drivers over 4 MiB of guest memory. */
export interface NetRig {
  net: VirtioNet;
  mem: GuestMemory;
  rx: FakeDriver;
  tx: FakeDriver;
  ctx: NetContext;
  fd: number;
  /** Every TUNSETOFFLOAD argument the device asked for, in order. */
  offloads: OffloadRecorder;
  /** Queues a TX packet (header + frame, split as given) and kicks queue 1; returns the used entry. */
  send(pieces: Uint8Array[]): UsedEntry | undefined;
  /** Adds `count` receive chains of `lengths` writable bytes and kicks queue 0. */
  addRx(count: number, lengths?: number[]): void;
  dispose(): void;
}

/** The default receive buffer: header + 1514-byte frame (what Linux posts without MRG_RXBUF and MTU). */
export const RX_CHAIN_BYTES = NET_HDR_BYTES + 1514;

/** A VirtioNet over `fd`, activated with fresh RX and TX fake drivers that accepted `rig.features`. */
export function netRig(fd: number, options: Partial<NetOptions> = {}, rig: NetRigOptions = {}): NetRig {
  const queueSize = rig.queueSize ?? 64;
  const offloads = offloadRecorder(rig.realTap);
  offloads.fail = rig.offloadFail;
  const net = new VirtioNet({ tap: "fake", mac: "06:00:ac:10:00:02", ...options }, fd, offloads.set);
  const mem = GuestMemory.create([{ guestBase: 0, size: 4 << 20 }], { trackDirty: rig.trackDirty });
  const rx = new FakeDriver(mem, { base: 0x1000, bytes: (2 << 20) - 0x1000, queueSize, features: rig.rxRing ?? {} });
  const tx = new FakeDriver(mem, { base: 2 << 20, bytes: 2 << 20, queueSize });
  const features = typeof rig.features === "function" ? rig.features(net.deviceFeatures) : rig.features ?? net.deviceFeatures;
  const ctx = new NetContext(mem, [rx.createQueue(), tx.createQueue()], net.initialConfig(), features);
  net.activate(ctx);
  return {
    net, mem, rx, tx, ctx, fd, offloads,
    send(pieces) {
      tx.addChain({ readable: pieces });
      net.onNotify(NET_TX_QUEUE);
      return tx.popUsed();
    },
    addRx(count, lengths = [RX_CHAIN_BYTES]) {
      for (let i = 0; i < count; i++) rx.addChain({ writable: lengths });
      net.onNotify(NET_RX_QUEUE);
    },
    dispose() {
      net.shutdown();
      mem.dispose();
    },
  };
}

/** The other fields of a virtio_net_hdr_v1 (all 0 when absent). */
export interface NetHeaderFields {
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
  numBuffers?: number;
}

/** A virtio_net_hdr_v1 (all zero: no offloads) with the given flags, gso_type and fields. */
export function netHeader(flags = 0, gsoType = 0, fields: NetHeaderFields = {}): Uint8Array {
  const h = new Uint8Array(virtio_net_hdr_v1.SIZE);
  const v = dataView(h);
  h[virtio_net_hdr_v1.flags] = flags;
  h[virtio_net_hdr_v1.gso_type] = gsoType;
  setU16(v, virtio_net_hdr_v1.hdr_len, fields.hdrLen ?? 0);
  setU16(v, virtio_net_hdr_v1.gso_size, fields.gsoSize ?? 0);
  setU16(v, virtio_net_hdr_v1.csum_start, fields.csumStart ?? 0);
  setU16(v, virtio_net_hdr_v1.csum_offset, fields.csumOffset ?? 0);
  setU16(v, virtio_net_hdr_v1.num_buffers, fields.numBuffers ?? 0);
  return h;
}

/** Reads the fields of the virtio_net_hdr_v1 at the start of `packet`. */
export function readNetHeader(packet: Uint8Array): Required<NetHeaderFields> & { flags: number; gsoType: number } {
  const v = dataView(packet.subarray(0, virtio_net_hdr_v1.SIZE));
  return {
    flags: v.getUint8(virtio_net_hdr_v1.flags),
    gsoType: v.getUint8(virtio_net_hdr_v1.gso_type),
    hdrLen: getU16(v, virtio_net_hdr_v1.hdr_len),
    gsoSize: getU16(v, virtio_net_hdr_v1.gso_size),
    csumStart: getU16(v, virtio_net_hdr_v1.csum_start),
    csumOffset: getU16(v, virtio_net_hdr_v1.csum_offset),
    numBuffers: getU16(v, virtio_net_hdr_v1.num_buffers),
  };
}

/** Reads one packet from `fd` (non-blocking): undefined when none is waiting. */
export function readPacket(fd: number, max = 70_000): Uint8Array | undefined {
  const buf = new Uint8Array(max);
  for (;;) {
    const r = sys.read(fd, buf, buf.length);
    if (r === -EINTR) continue;
    if (r === -EAGAIN) return undefined;
    return buf.slice(0, check(r, "read"));
  }
}

/** Writes one packet to `fd`; returns the byte count or a negative errno. */
export function writePacket(fd: number, packet: Uint8Array): number {
  return sys.write(fd, packet, packet.length);
}

/** Waits up to `timeoutMs` for `fd` to become readable. */
export function waitReadable(fd: number, timeoutMs: number): boolean {
  const p = new Uint8Array(pollfd.SIZE);
  const v = dataView(p);
  v.setInt32(pollfd.fd, fd, true);
  v.setInt16(pollfd.events, POLLIN, true);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    const n = sys.poll(p, 1, left);
    if (n === -EINTR) continue;
    return n > 0;
  }
}

/** The bytes of `parts`, one after another. */
export const concat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  parts.reduce((o, p) => (out.set(p, o), o + p.length), 0);
  return out;
};

/** An Ethernet frame: dst, src, ethertype, payload. */
export function ethFrame(dst: Uint8Array, src: Uint8Array, etherType: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + payload.length);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = etherType >> 8;
  f[13] = etherType & 0xff;
  f.set(payload, 14);
  return f;
}

/** A TCP segment in an Ethernet frame, as tcpFrame builds it. */
export interface TcpFrameSpec {
  /** IPv6 instead of IPv4. */
  ipv6?: boolean;
  /** 802.1Q tags between the MAC addresses and the EtherType. */
  vlanTags?: number;
  /** TCP payload bytes. */
  payload: Uint8Array;
  dst?: Uint8Array;
  src?: Uint8Array;
}

/** A TCP frame with its header offsets: csumStart is the TCP header, csumOffset its checksum field. */
export interface TcpFrame {
  frame: Uint8Array;
  /** Offset of the IP header. */
  l3: number;
  csumStart: number;
  csumOffset: number;
  /** Ethernet + IP + TCP header bytes. */
  headerBytes: number;
}

/** An Ethernet frame carrying a TCP segment (checksums left 0; fine for the device's checks). */
export function tcpFrame(spec: TcpFrameSpec): TcpFrame {
  const tags = spec.vlanTags ?? 0;
  const l3 = ETH_HLEN + tags * ovs_action_push_vlan.SIZE;
  const ipLen = spec.ipv6 ? ipv6hdr.SIZE : iphdr.SIZE;
  const csumStart = l3 + ipLen;
  const f = new Uint8Array(csumStart + tcphdr.SIZE + spec.payload.length);
  const v = dataView(f);
  f.set(spec.dst ?? Uint8Array.of(6, 0, 0xac, 0x10, 0, 1), 0);
  f.set(spec.src ?? Uint8Array.of(6, 0, 0xac, 0x10, 0, 2), ETH_ALEN);
  for (let i = 0; i < tags; i++) v.setUint16(ETH_HLEN - ETH_TLEN + i * ovs_action_push_vlan.SIZE, ETH_P_8021Q, false);
  v.setUint16(l3 - ETH_TLEN, spec.ipv6 ? ETH_P_IPV6 : ETH_P_IP, false);
  if (spec.ipv6) {
    f[l3] = 0x60; // version 6
    v.setUint16(l3 + ipv6hdr.payload_len, tcphdr.SIZE + spec.payload.length, false);
    f[l3 + ipv6hdr.nexthdr] = IPPROTO_TCP;
  } else {
    f[l3] = 0x45; // version 4, 5 words
    v.setUint16(l3 + iphdr.tot_len, iphdr.SIZE + tcphdr.SIZE + spec.payload.length, false);
    f[l3 + iphdr.protocol] = IPPROTO_TCP;
  }
  f[csumStart + 12] = (tcphdr.SIZE / 4) << 4; // data offset in 32-bit words
  f.set(spec.payload, csumStart + tcphdr.SIZE);
  return { frame: f, l3, csumStart, csumOffset: tcphdr.check, headerBytes: csumStart + tcphdr.SIZE };
}
