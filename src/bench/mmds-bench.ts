/**
 * MMDS's guest side, host CPU per request (no reference to compare with:
 * Firecracker does not run here): a fake guest (devices/virtio/mmds/testing)
 * drives the stack directly and through virtio-net's rings (fake drivers,
 * fake TAP), and a flood of random frames shows what the stack holds
 * afterwards. Printed, never asserted. Run alone: node dist/bench/mmds-bench.js.
 */
import { pathToFileURL } from "node:url";
import { parseMmdsData } from "../devices/virtio/mmds/data.js";
import { MMDS_FRAME_MAX_BYTES, MmdsStack } from "../devices/virtio/mmds/stack.js";
import { GuestTcp, httpGet, type FrameTransport } from "../devices/virtio/mmds/testing/guest-net.js";
import { arpRequest, SYN, ACK, tcpSegment } from "../devices/virtio/mmds/testing/guest-net.js";
import { parseIpv4 } from "../devices/virtio/mmds/wire.js";
import { MMDS_REQUEST_SET_DATA } from "../devices/virtio/mmds/control.js";
import { NET_HDR_BYTES } from "../devices/virtio/net.js";
import { fakeTap, netHeader, netRig } from "../devices/virtio/testing/net-test-rig.js";

/** The figures of one run. */
export interface MmdsBench {
  /** A V2 GET with its token on an open connection, through the stack alone. */
  stackGetUs: number;
  /** Connect, GET, close (three-way handshake and both FINs), through the stack alone. */
  stackConnectGetCloseUs: number;
  /** A V1 GET on an open connection through virtio-net's TX and RX rings. */
  ringsGetUs: number;
  /** RSS before and after 10^5 random and mutated frames, in MiB, and what the stack held then. */
  floodRssMib: [number, number];
  floodHeld: { connections: number; resets: number; responseBytes: number };
}

const DATA = { latest: { "meta-data": { "ami-id": "ami-1", "instance-id": "i-2", placement: { zone: "z" } } } };

/** Measures the figures above. */
export function measureMmds(requests = 5000): MmdsBench {
  const stack = new MmdsStack({ ipv4: parseIpv4("169.254.169.254")!, version: "V2", imdsCompat: false, nowMs: () => performance.now() });
  stack.setData(parseMmdsData(JSON.stringify(DATA)));
  const out = new Uint8Array(MMDS_FRAME_MAX_BYTES);
  const direct: FrameTransport = {
    send: (f) => stack.receive(f, false),
    receive: () => { const r: Uint8Array[] = []; for (let n = stack.nextFrame(out); n > 0; n = stack.nextFrame(out)) r.push(out.slice(0, n)); return r; },
  };
  const c = new GuestTcp(direct, 1);
  c.connect();
  const token = c.request(httpGet("/latest/api/token", { "X-metadata-token-ttl-seconds": "600" }, "PUT")).body;
  let t0 = performance.now();
  for (let i = 0; i < requests; i++) c.request(httpGet("/latest/meta-data/ami-id", { "X-metadata-token": token }));
  const stackGetUs = ((performance.now() - t0) * 1000) / requests;
  t0 = performance.now();
  for (let i = 0; i < requests; i++) {
    const k = new GuestTcp(direct, 2000 + (i % 20_000));
    k.connect();
    k.request(httpGet("/latest/meta-data/", { Connection: "close", "X-metadata-token": token }));
    k.sendAck();
    k.close();
    direct.receive();
  }
  const stackConnectGetCloseUs = ((performance.now() - t0) * 1000) / requests;

  const tap = fakeTap();
  const r = netRig(tap.device, { mmds: { ipv4: "169.254.169.254", version: "V1", imdsCompat: false } });
  let ringsGetUs: number;
  try {
    r.net.control({ op: MMDS_REQUEST_SET_DATA, args: { json: JSON.stringify(DATA) } });
    const rings: FrameTransport = {
      send: (f) => { r.send([netHeader(), f]); },
      receive: () => {
        const frames: Uint8Array[] = [];
        for (;;) {
          r.addRx(Math.max(0, 16 - r.rx.outstandingChains));
          const used = r.rx.popAllUsed().filter((u) => u.len > 0);
          for (const u of used) frames.push(u.written.subarray(NET_HDR_BYTES).slice());
          if (used.length === 0) return frames;
        }
      },
    };
    const g = new GuestTcp(rings, 5);
    g.connect();
    t0 = performance.now();
    for (let i = 0; i < requests; i++) g.request(httpGet("/latest/meta-data/ami-id"));
    ringsGetUs = ((performance.now() - t0) * 1000) / requests;
  } finally {
    r.dispose();
    tap.close();
  }

  // A deterministic flood (xorshift): random bytes, and valid frames with one byte changed.
  let x = 0x2545f491;
  const rand = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
  const valid = [arpRequest(), tcpSegment({ srcPort: 1, seq: 1, flags: SYN }), tcpSegment({ srcPort: 1, seq: 2, ack: 1, flags: ACK, payload: "GET / HTTP/1.1\r\n\r\n" })];
  const rss0 = process.memoryUsage().rss;
  for (let i = 0; i < 100_000; i++) {
    let f: Uint8Array;
    if (rand() & 1) { f = new Uint8Array(20 + (rand() % 100)); for (let j = 0; j < f.length; j++) f[j] = rand() & 0xff; } else { f = valid[i % valid.length]!.slice(); f[rand() % f.length] = rand() & 0xff; }
    if (stack.isMmdsFrame(f)) stack.receive(f, (rand() & 1) === 1);
    if (i % 7 === 0) stack.nextFrame(out);
  }
  const mib = (b: number) => Math.round(b / 1048576);
  return { stackGetUs, stackConnectGetCloseUs, ringsGetUs, floodRssMib: [mib(rss0), mib(process.memoryUsage().rss)], floodHeld: stack.held };
}

/** Prints the section; returns its figures. */
export function printMmdsSection(out: (line: string) => void, requests = 5000): MmdsBench {
  const r = measureMmds(requests);
  out(`MMDS guest side (host CPU per request, ${requests} requests, fake guest):`);
  out(`  V2 GET on an open connection, stack alone: ${r.stackGetUs.toFixed(1)} us; connect + GET + close: ${r.stackConnectGetCloseUs.toFixed(1)} us`);
  out(`  V1 GET through virtio-net's rings: ${r.ringsGetUs.toFixed(1)} us`);
  out(`  10^5 random frames: RSS ${r.floodRssMib[0]} -> ${r.floodRssMib[1]} MiB; the stack then holds ${JSON.stringify(r.floodHeld)}`);
  return r;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) printMmdsSection(console.log);
