/**
 * Random and hostile virtio-vsock traffic (fast-check) through the real
 * SplitQueue and fake driver, with real host sockets on the other side: a
 * guest sending headers with any field wrong (cids, ports, ops, types, flags,
 * lengths, credit), RX buffers of any size, host clients and services coming
 * and going. The device never throws, never fails for a well-formed ring,
 * returns every TX chain at once (none is held), and
 * everything it puts on RX is a well-formed packet from the host.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import {
  SOCK_CLOEXEC, SOCK_NONBLOCK, VIRTIO_VSOCK_OP_CREDIT_REQUEST, VIRTIO_VSOCK_OP_CREDIT_UPDATE, VIRTIO_VSOCK_OP_INVALID,
  VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RESPONSE, VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_TYPE_STREAM, VMADDR_CID_HOST, virtio_vsock_hdr,
} from "../../../linux/abi.generated.js";
import { sys } from "../../../sys/native.js";
import { encodeVsockHeader, VSOCK_BUF_ALLOC, VSOCK_FIRST_HOST_PORT, VSOCK_RX_QUEUE, VSOCK_TX_QUEUE, type VsockHeader } from "./index.js";
import { GUEST_CID, readNow, VsockRig, writeAll } from "./testing/rig.js";

const SERVICE_PORT = 7;
const HOST_OPS = new Set([VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RESPONSE, VIRTIO_VSOCK_OP_RST, VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_OP_CREDIT_UPDATE]);

type Action =
  | { kind: "tx"; hdr: VsockHeader; payload: number; splitAt: number }
  | { kind: "rx"; count: number; bytes: number }
  | { kind: "host-connect"; line: string }
  | { kind: "host-io"; bytes: number; close: boolean };

const u32 = fc.nat(0xffff_ffff);
const ops = fc.oneof({ weight: 10, arbitrary: fc.integer({ min: VIRTIO_VSOCK_OP_INVALID, max: VIRTIO_VSOCK_OP_CREDIT_REQUEST + 1 }) },
  { weight: 1, arbitrary: fc.nat(0xffff) });
const hostPorts = fc.integer({ min: VSOCK_FIRST_HOST_PORT, max: VSOCK_FIRST_HOST_PORT + 3 });

const hdrArb: fc.Arbitrary<VsockHeader> = fc.record({
  srcCid: fc.oneof({ weight: 20, arbitrary: fc.constant(BigInt(GUEST_CID)) }, { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
  dstCid: fc.oneof({ weight: 20, arbitrary: fc.constant(BigInt(VMADDR_CID_HOST)) }, { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
  srcPort: fc.oneof(fc.constantFrom(SERVICE_PORT, 40000, 40001), u32),
  dstPort: fc.oneof({ weight: 3, arbitrary: fc.constantFrom(SERVICE_PORT, 8) }, { weight: 3, arbitrary: hostPorts }, { weight: 1, arbitrary: u32 }),
  len: fc.constant(-1), // -1: the payload's length
  type: fc.oneof({ weight: 20, arbitrary: fc.constant(VIRTIO_VSOCK_TYPE_STREAM) }, { weight: 1, arbitrary: fc.nat(0xffff) }),
  op: ops,
  flags: fc.oneof(fc.nat(3), u32),
  bufAlloc: fc.oneof(fc.nat(4096), u32),
  fwdCnt: fc.oneof(fc.nat(4096), u32),
});

const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 12, arbitrary: fc.record({
    kind: fc.constant("tx" as const),
    hdr: fc.tuple(hdrArb, fc.oneof({ weight: 8, arbitrary: fc.constant(-1) }, { weight: 1, arbitrary: u32 }))
      .map(([h, len]) => ({ ...h, len })),
    payload: fc.oneof(fc.nat(64), fc.nat(2000)),
    splitAt: fc.nat(60),
  }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant("rx" as const), count: fc.integer({ min: 1, max: 4 }),
    bytes: fc.oneof({ weight: 6, arbitrary: fc.constant(4096 + 44) }, { weight: 1, arbitrary: fc.nat(200) }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("host-connect" as const),
    line: fc.oneof(fc.constant(`CONNECT ${SERVICE_PORT}\n`), fc.constant("CONNECT 99\n"), fc.string({ maxLength: 40 })) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("host-io" as const), bytes: fc.nat(3000), close: fc.boolean() }) },
);

interface Stats { packets: number; rxBytes: number; txBytes: number; resets: number }

function run(actions: Action[], stats: Stats): void {
  const r = new VsockRig({ queueSize: 32 });
  const service = r.listen(SERVICE_PORT);
  const hostFds: number[] = [];
  try {
    for (const a of actions) {
      switch (a.kind) {
        case "tx": {
          const payload = new Uint8Array(a.payload).fill(0x5a);
          const h = { ...a.hdr, len: a.hdr.len < 0 ? payload.length : a.hdr.len };
          const bytes = new Uint8Array(virtio_vsock_hdr.SIZE + payload.length);
          bytes.set(encodeVsockHeader(h));
          bytes.set(payload, virtio_vsock_hdr.SIZE);
          const cut = Math.min(a.splitAt, bytes.length - 1);
          if (r.tx.freeDescriptors < 2) break;
          r.tx.addChain({ readable: cut > 0 ? [bytes.subarray(0, cut), bytes.subarray(cut)] : [bytes] });
          r.notify(VSOCK_TX_QUEUE);
          stats.packets++;
          break;
        }
        case "rx":
          for (let i = 0; i < a.count && r.rx.freeDescriptors > 0; i++) r.rx.addChain({ writable: [a.bytes] });
          r.notify(VSOCK_RX_QUEUE);
          break;
        case "host-connect": {
          const fd = r.connectClient();
          hostFds.push(fd);
          writeAll(fd, a.line);
          break;
        }
        case "host-io": {
          for (let fd = sys.accept4(service, SOCK_NONBLOCK | SOCK_CLOEXEC); fd >= 0; fd = sys.accept4(service, SOCK_NONBLOCK | SOCK_CLOEXEC)) hostFds.push(fd);
          const fd = hostFds[a.bytes % Math.max(1, hostFds.length)];
          if (fd === undefined) break;
          readNow(fd);
          if (a.bytes) writeAll(fd, new Uint8Array(a.bytes));
          if (a.close) { sys.close(fd); hostFds.splice(hostFds.indexOf(fd), 1); }
          break;
        }
      }
      r.ctx.pollOnce(0);
      r.runKicks();
      for (const u of r.rx.popAllUsed()) {
        if (u.len === 0) continue;
        assert.ok(u.len >= virtio_vsock_hdr.SIZE, `RX used length ${u.len}`);
        const raw = u.written;
        const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
        assert.equal(v.getBigUint64(virtio_vsock_hdr.src_cid, true), BigInt(VMADDR_CID_HOST));
        assert.equal(v.getBigUint64(virtio_vsock_hdr.dst_cid, true), BigInt(GUEST_CID));
        assert.equal(v.getUint16(virtio_vsock_hdr.type, true), VIRTIO_VSOCK_TYPE_STREAM);
        assert.ok(HOST_OPS.has(v.getUint16(virtio_vsock_hdr.op, true)));
        assert.equal(v.getUint32(virtio_vsock_hdr.buf_alloc, true), VSOCK_BUF_ALLOC);
        assert.equal(u.len, virtio_vsock_hdr.SIZE + v.getUint32(virtio_vsock_hdr.len, true));
      }
      r.tx.popAllUsed();
      assert.equal(r.tx.outstandingChains, 0, `${r.tx.outstandingChains} TX chains held`);
    }
    assert.deepEqual(r.ctx.failures, []);
    stats.rxBytes += r.dev.metrics.rxBytes;
    stats.txBytes += r.dev.metrics.txBytes;
    stats.resets += r.dev.metrics.resetsSent;
  } finally {
    for (const fd of hostFds) sys.close(fd);
    r.close();
  }
}

test("hostile guests and random host peers never make the device throw or fail", () => {
  const stats: Stats = { packets: 0, rxBytes: 0, txBytes: 0, resets: 0 };
  const start = Date.now();
  fc.assert(fc.property(fc.array(actionArb, { minLength: 100, maxLength: 220 }), (actions) => run(actions, stats)),
    { numRuns: 1_200, includeErrorInReport: true });
  assert.ok(stats.packets >= 100_000, `${stats.packets} packets`);
  const ms = Date.now() - start; // reported, not asserted: speed belongs in benchmarks, and CI machines are shared
  // The random traffic reaches established connections in both directions, not only the error paths.
  assert.ok(stats.rxBytes > 0 && stats.txBytes > 0 && stats.resets > 0, JSON.stringify(stats));
  console.log(`${stats.packets} packets in ${ms} ms: ${JSON.stringify(stats)}`);
});
