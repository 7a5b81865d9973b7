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
import { AF_UNIX, EAGAIN, EINTR, POLLIN, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, pollfd, virtio_net_hdr_v1 } from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { dataView, setU16 } from "../../memory/le.js";
import { check, sys } from "../../sys/native.js";
import { NET_HDR_BYTES, NET_RX_QUEUE, NET_TX_QUEUE, VirtioNet, type NetOptions } from "./net.js";
import { FakeDriver, type UsedEntry } from "./testing/fake-driver.js";
import type { VirtioDeviceContext, VirtQueue } from "./types.js";

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

/** A device with its two fake drivers over 4 MiB of guest memory. */
export interface NetRig {
  net: VirtioNet;
  mem: GuestMemory;
  rx: FakeDriver;
  tx: FakeDriver;
  ctx: NetContext;
  fd: number;
  /** Queues a TX packet (header + frame, split as given) and kicks queue 1; returns the used entry. */
  send(pieces: Uint8Array[]): UsedEntry | undefined;
  /** Adds `count` receive chains of `lengths` writable bytes and kicks queue 0. */
  addRx(count: number, lengths?: number[]): void;
  dispose(): void;
}

/** The default receive buffer: header + 1514-byte frame (what Linux posts without MRG_RXBUF and MTU). */
export const RX_CHAIN_BYTES = NET_HDR_BYTES + 1514;

/** A VirtioNet over `fd`, activated with fresh RX and TX fake drivers of `queueSize` descriptors. */
export function netRig(fd: number, options: Partial<NetOptions> = {}, queueSize = 64): NetRig {
  const net = new VirtioNet({ tap: "fake", mac: "06:00:ac:10:00:02", ...options }, fd);
  const mem = GuestMemory.create([{ guestBase: 0, size: 4 << 20 }]);
  const rx = new FakeDriver(mem, { base: 0x1000, bytes: (2 << 20) - 0x1000, queueSize });
  const tx = new FakeDriver(mem, { base: 2 << 20, bytes: 2 << 20, queueSize });
  const ctx = new NetContext(mem, [rx.createQueue(), tx.createQueue()], net.initialConfig(), net.deviceFeatures);
  net.activate(ctx);
  return {
    net, mem, rx, tx, ctx, fd,
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

/** A virtio_net_hdr_v1 (all zero: no offloads) with the given flags and gso_type. */
export function netHeader(flags = 0, gsoType = 0): Uint8Array {
  const h = new Uint8Array(virtio_net_hdr_v1.SIZE);
  h[virtio_net_hdr_v1.flags] = flags;
  h[virtio_net_hdr_v1.gso_type] = gsoType;
  setU16(dataView(h), virtio_net_hdr_v1.num_buffers, 0);
  return h;
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
