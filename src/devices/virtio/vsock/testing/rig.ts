/**
 * A test rig for virtio-vsock: the fake driver plays the guest on the three
 * queues, a context polls the fds the device watches (as the device thread's
 * poll loop does), and host peers are plain non-blocking Unix sockets.
 * Used by the vsock unit and property tests only.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AF_UNIX, EAGAIN, EINTR, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_TYPE_STREAM, VMADDR_CID_HOST,
  pollfd, virtio_vsock_hdr,
} from "../../../../linux/abi.generated.js";
import { GuestMemory } from "../../../../memory/guest-memory.js";
import { dataView, getU16, setU16, setU32 } from "../../../../memory/le.js";
import { sys } from "../../../../sys/native.js";
import { FakeDriver } from "../../testing/fake-driver.js";
import type { VirtioDeviceContext, VirtQueue } from "../../types.js";
import {
  decodeVsockHeader, encodeVsockHeader, VirtioVsock, VSOCK_BUF_ALLOC, VSOCK_EVENT_QUEUE, VSOCK_FIRST_HOST_PORT, VSOCK_RX_QUEUE,
  VSOCK_TX_QUEUE, type VsockHeader,
} from "../index.js";

/** A context that records faults and polls watched fds on demand. */
export class PollingContext implements VirtioDeviceContext {
  readonly faults: string[] = [];
  readonly failures: string[] = [];
  readonly watches = new Map<number, { events: number; onReady: (revents: number) => void }>();
  constructor(readonly memory: GuestMemory, readonly queues: VirtQueue[], readonly config: Uint8Array, readonly features = 0n) {}
  notifyUsed(): void {}
  notifyConfigChange(): void {}
  /** Queues the device asked to be called again for (ctx.kick), delivered by the rig's notify(). */
  readonly kicks = new Set<number>();
  kick(queue: number): void { this.kicks.add(queue); }
  fail(reason: string): void { this.failures.push(reason); }
  guestFault(message: string): void { this.faults.push(message); }
  watch(fd: number, events: number, onReady: (revents: number) => void): void { this.watches.set(fd, { events, onReady }); }
  unwatch(fd: number): void { this.watches.delete(fd); }

  /** One poll(2) over the watched fds; dispatches and returns how many were ready. */
  pollOnce(timeoutMs: number): number {
    const fds = [...this.watches.keys()];
    if (fds.length === 0) return 0;
    const buf = new Uint8Array(fds.length * pollfd.SIZE);
    const v = dataView(buf);
    fds.forEach((fd, i) => {
      setU32(v, i * pollfd.SIZE + pollfd.fd, fd);
      setU16(v, i * pollfd.SIZE + pollfd.events, this.watches.get(fd)!.events);
    });
    const n = sys.poll(buf, fds.length, timeoutMs);
    if (n <= 0) return 0;
    fds.forEach((fd, i) => {
      const revents = getU16(v, i * pollfd.SIZE + pollfd.revents);
      const w = this.watches.get(fd);
      if (revents && w) w.onReady(revents);
    });
    return n;
  }
}

/** A packet the guest received. */
export interface RxPacket {
  hdr: VsockHeader;
  data: Uint8Array;
  /** used.len */
  usedLen: number;
}

export const GUEST_CID = 3;
const text = new TextEncoder();

/** A guest's TX header: the fields given, the rest those of a valid stream packet from the guest to the host. */
export function guestHeader(h: Partial<VsockHeader> & Pick<VsockHeader, "op" | "srcPort" | "dstPort">): Uint8Array {
  return encodeVsockHeader({
    srcCid: BigInt(GUEST_CID), dstCid: BigInt(VMADDR_CID_HOST), len: 0, type: VIRTIO_VSOCK_TYPE_STREAM,
    flags: 0, bufAlloc: 1 << 20, fwdCnt: 0, ...h,
  });
}

/** A device with a fake guest on its queues. */
export class VsockRig {
  readonly dir: string;
  readonly uds: string;
  readonly mem: GuestMemory;
  readonly rx: FakeDriver;
  readonly tx: FakeDriver;
  readonly ev: FakeDriver;
  ctx: PollingContext;
  readonly dev: VirtioVsock;
  private readonly peers: number[] = [];

  /** `memBytes` (default 1 MiB): guest memory, all of it usable by raw descriptors (the queues live in the first MiB). */
  constructor(options: { queueSize?: number; memBytes?: number } = {}) {
    this.dir = mkdtempSync(join(tmpdir(), "flint-vsock-"));
    this.uds = join(this.dir, "v.sock");
    this.dev = new VirtioVsock({ cid: GUEST_CID, uds: this.uds });
    // 1 MiB of guest memory: RX buffers, TX packets (a few of 32 KiB at a time), the event queue.
    this.mem = GuestMemory.create([{ guestBase: 0, size: Math.max(1 << 20, options.memBytes ?? 0) }]);
    const queueSize = options.queueSize ?? 64;
    this.rx = new FakeDriver(this.mem, { base: 0x1000, bytes: 0x7f000, queueSize });
    this.tx = new FakeDriver(this.mem, { base: 0x80000, bytes: 0x70000, queueSize });
    this.ev = new FakeDriver(this.mem, { base: 0xf0000, bytes: 0x10000, queueSize: 4 });
    this.ctx = this.activate();
  }

  /** DRIVER_OK with fresh queues over the same rings. */
  activate(): PollingContext {
    this.ctx = new PollingContext(this.mem, [this.rx.createQueue(), this.tx.createQueue(), this.ev.createQueue()], this.dev.initialConfig());
    this.dev.activate(this.ctx);
    return this.ctx;
  }

  /** The guest sends one packet (header fields default to a valid stream packet); returns whether its chain came back. */
  send(h: Partial<VsockHeader> & Pick<VsockHeader, "op" | "srcPort" | "dstPort">, payload = new Uint8Array(0)): boolean {
    const hdr = guestHeader({ len: payload.length, ...h });
    const head = this.tx.addChain({ readable: payload.length ? [hdr, payload] : [hdr] });
    this.notify(VSOCK_TX_QUEUE);
    return this.tx.popAllUsed().some((u) => u.head === head);
  }

  /** Gives the device `n` RX buffers (header and data in separate descriptors, as Linux does). */
  giveRx(n: number, dataBytes = 4096): void {
    for (let i = 0; i < n; i++) this.rx.addChain({ writable: [virtio_vsock_hdr.SIZE, dataBytes] });
    this.notify(VSOCK_RX_QUEUE);
  }

  /**
   * A driver kick of `queue`, then the device's own kicks (ctx.kick after a budgeted pass)
   * until it has none, as the device thread's poll loop delivers them.
   */
  notify(queue: number): void {
    this.dev.onNotify(queue);
    this.runKicks();
  }

  /** Delivers the device's own kicks until it has none. */
  runKicks(): void {
    for (let rounds = 0; this.ctx.kicks.size > 0; rounds++) {
      if (rounds > 100_000) throw new Error("the device keeps kicking itself");
      const [q] = this.ctx.kicks;
      this.ctx.kicks.delete(q!);
      this.dev.onNotify(q!);
    }
  }

  /** Packets the device returned on RX. */
  received(): RxPacket[] {
    return this.rx.popAllUsed().map((u) => {
      // A buffer the device returned empty decodes as an all-zero header (op INVALID).
      const raw = new Uint8Array(virtio_vsock_hdr.SIZE);
      raw.set(u.written.subarray(0, virtio_vsock_hdr.SIZE));
      const hdr = decodeVsockHeader(raw);
      return { hdr, data: u.written.slice(virtio_vsock_hdr.SIZE, virtio_vsock_hdr.SIZE + hdr.len), usedLen: u.len };
    });
  }

  /** Polls until `done()` or `timeoutMs`; returns done()'s last value. */
  pump(done: () => boolean = () => false, timeoutMs = 200): boolean {
    const end = Date.now() + timeoutMs;
    while (!done()) {
      if (Date.now() >= end) return false;
      this.ctx.pollOnce(10);
      this.runKicks();
    }
    return true;
  }

  /** A host client connected to the device's listener. */
  connectClient(): number {
    return this.peer((fd) => sys.connectUnix(fd, this.uds));
  }

  /** A host service listening at `${uds}_${port}`. */
  listen(port: number): number {
    return this.peer((fd) => {
      const r = sys.bindUnix(fd, `${this.uds}_${port}`);
      return r < 0 ? r : sys.listen(fd, 8);
    });
  }

  accept(listener: number): number {
    let fd = -EAGAIN;
    this.pump(() => (fd = sys.accept4(listener, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0, 500);
    if (fd < 0) throw new Error(`accept failed: ${fd}`);
    this.peers.push(fd);
    return fd;
  }

  private peer(setup: (fd: number) => number): number {
    const fd = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const r = setup(fd);
    if (r < 0) throw new Error(`socket setup failed: ${r}`);
    this.peers.push(fd);
    return fd;
  }

  close(): void {
    this.dev.shutdown();
    for (const fd of this.peers) sys.close(fd);
    this.mem.dispose();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export { VSOCK_EVENT_QUEUE, VSOCK_RX_QUEUE, VSOCK_TX_QUEUE };

/** Writes all of `data` to a non-blocking socket (spins on EAGAIN: the peer is draining it). */
export function writeAll(fd: number, data: Uint8Array | string): number {
  const bytes = typeof data === "string" ? text.encode(data) : data;
  const r = sys.write(fd, bytes, bytes.length);
  return r;
}

/** Everything readable now: bytes, and whether EOF was seen (or the error). */
export function readNow(fd: number): { data: Uint8Array; eof: boolean; errno: number } {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  for (;;) {
    const r = sys.read(fd, buf, buf.length);
    if (r === -EINTR) continue;
    if (r === -EAGAIN) return { data: concat(parts), eof: false, errno: 0 };
    if (r < 0) return { data: concat(parts), eof: true, errno: -r };
    if (r === 0) return { data: concat(parts), eof: true, errno: 0 };
    parts.push(buf.slice(0, r));
  }
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  parts.reduce((off, p) => (out.set(p, off), off + p.length), 0);
  return out;
}

export const str = (b: Uint8Array): string => new TextDecoder().decode(b);

/** Checks what every packet to the guest must say about addresses and flint's credit. */
export function assertFromHost(p: RxPacket): void {
  assert.equal(p.hdr.srcCid, BigInt(VMADDR_CID_HOST));
  assert.equal(p.hdr.dstCid, BigInt(GUEST_CID));
  assert.equal(p.hdr.type, VIRTIO_VSOCK_TYPE_STREAM);
  assert.equal(p.hdr.bufAlloc, VSOCK_BUF_ALLOC);
  assert.equal(p.usedLen, 44 + p.hdr.len);
}

/** Host client connects with CONNECT <port>; the guest accepts. Returns the client fd and host port. */
export function hostConnect(r: VsockRig, guestPort: number, guestBufAlloc = 1 << 20): { client: number; hostPort: number } {
  r.giveRx(4);
  const client = r.connectClient();
  assert.ok(writeAll(client, `CONNECT ${guestPort}\n`) > 0);
  let req: RxPacket | undefined;
  r.pump(() => (req = r.received().find((p) => p.hdr.op === VIRTIO_VSOCK_OP_REQUEST)) !== undefined);
  assert.ok(req, "the guest got OP_REQUEST");
  assertFromHost(req);
  assert.equal(req.hdr.dstPort, guestPort);
  assert.ok(req.hdr.srcPort >= VSOCK_FIRST_HOST_PORT);
  const hostPort = req.hdr.srcPort;
  assert.ok(r.send({ op: VIRTIO_VSOCK_OP_RESPONSE, srcPort: guestPort, dstPort: hostPort, bufAlloc: guestBufAlloc }));
  let line = "";
  r.pump(() => (line += str(readNow(client).data)).endsWith("\n"));
  assert.equal(line, `OK ${hostPort}\n`);
  return { client, hostPort };
}

/** RW packets the guest receives (giving RX buffers as needed) until `bytes` arrived or nothing more comes. */
export function guestRead(r: VsockRig, bytes: number, timeoutMs = 300): { data: Uint8Array; packets: RxPacket[] } {
  const packets: RxPacket[] = [];
  let got = 0;
  r.pump(() => {
    if (r.rx.outstandingChains < 4) r.giveRx(4);
    for (const p of r.received()) { packets.push(p); if (p.hdr.op === VIRTIO_VSOCK_OP_RW) got += p.hdr.len; }
    return got >= bytes;
  }, timeoutMs);
  return { data: concat(packets.filter((p) => p.hdr.op === VIRTIO_VSOCK_OP_RW).map((p) => p.data)), packets };
}

