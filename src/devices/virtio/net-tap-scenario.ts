/**
 * Run by net.test.ts inside a private network namespace (`ip netns exec NS node
 * net-tap-scenario.js TAP`), where TAP exists, is up and has 10.77.0.1/24: a
 * VirtioNet over the real TAP, driven by fake guest drivers, sends an ARP
 * request and a ping for 10.77.0.1 from 10.77.0.2 and reports (JSON on stdout)
 * what the kernel sent back through the device. A TAP can only be attached from
 * its own namespace, hence a separate process.
 */
import { readFileSync } from "node:fs";
import { virtio_net_hdr_v1 } from "../../linux/abi.generated.js";
import { dataView, getU16 } from "../../memory/le.js";
import { createBackend, NET_HDR_BYTES, NET_TX_QUEUE, openTap, parseMac } from "./net.js";
import { concat, ethFrame, netHeader, netRig, waitReadable } from "./net-test-rig.js";
import type { UsedEntry } from "./testing/fake-driver.js";

/** What the scenario saw. */
export interface TapScenarioReport {
  missingTapError?: string;
  hostMac: string;
  tapRxPacketsDelta: number;
  arpReply?: { senderMac: string; numBuffers: number; usedLen: number; frameLen: number };
  echoReply?: { payloadIntact: boolean; numBuffers: number; gsoType: number };
  faults: number;
  failures: number;
}

const GUEST_IP = [10, 77, 0, 2], HOST_IP = [10, 77, 0, 1];
const macText = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join(":");

/** The Internet checksum (RFC 1071). */
function inetChecksum(b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < b.length; i += 2) sum += (b[i]! << 8) | (b[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function arpRequest(guestMac: Uint8Array): Uint8Array {
  const a = new Uint8Array(28);
  a.set([0, 1, 8, 0, 6, 4, 0, 1]);
  a.set(guestMac, 8);
  a.set(GUEST_IP, 14);
  a.set(HOST_IP, 24);
  return ethFrame(new Uint8Array(6).fill(0xff), guestMac, 0x0806, a);
}

function echoRequest(guestMac: Uint8Array, hostMac: Uint8Array, payload: Uint8Array): Uint8Array {
  const icmp = new Uint8Array(8 + payload.length);
  icmp.set([8, 0, 0, 0, 0x12, 0x34, 0, 1]);
  icmp.set(payload, 8);
  const c = inetChecksum(icmp);
  icmp[2] = c >> 8; icmp[3] = c & 0xff;
  const ip = new Uint8Array(20);
  const total = 20 + icmp.length;
  ip.set([0x45, 0, total >> 8, total & 0xff, 0, 1, 0x40, 0, 64, 1, 0, 0, ...GUEST_IP, ...HOST_IP]);
  const ic = inetChecksum(ip);
  ip[10] = ic >> 8; ip[11] = ic & 0xff;
  return ethFrame(hostMac, guestMac, 0x0800, concat(ip, icmp));
}

function main(tap: string): TapScenarioReport {
  const report: TapScenarioReport = { hostMac: "", tapRxPacketsDelta: 0, faults: 0, failures: 0 };
  try {
    createBackend({ tap: "ftapnone", mac: "06:00:ac:10:00:02" });
  } catch (e) {
    report.missingTapError = (e as Error).message;
  }
  const hostMac = parseMac(readFileSync(`/sys/class/net/${tap}/address`, "latin1").trim());
  report.hostMac = macText(hostMac);
  const rxPackets = () => Number(readFileSync(`/sys/class/net/${tap}/statistics/rx_packets`, "latin1"));
  const before = rxPackets();
  const r = netRig(openTap(tap), { mac: "06:00:ac:10:00:02" });
  const guestMac = r.net.mac;
  r.addRx(32);

  /** Feeds TAP readiness to the device until `match` accepts a received frame (or 5 s pass). */
  const receive = (match: (frame: Uint8Array, u: UsedEntry) => boolean): boolean => {
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      if (!waitReadable(r.fd, 200)) continue;
      r.ctx.fire(r.fd);
      for (const u of r.rx.popAllUsed()) {
        if (u.len > NET_HDR_BYTES && match(u.written.subarray(NET_HDR_BYTES), u)) return true;
        r.rx.addChain({ writable: [NET_HDR_BYTES + 1514] });
      }
    }
    return false;
  };
  const hdrOf = (u: UsedEntry) => dataView(u.written.subarray(0, NET_HDR_BYTES));

  r.tx.addChain({ readable: [netHeader(), arpRequest(guestMac)] });
  r.net.onNotify(NET_TX_QUEUE);
  receive((f, u) => {
    if (f[12] !== 0x08 || f[13] !== 0x06 || f[21] !== 2) return false;
    report.arpReply = { senderMac: macText(f.subarray(22, 28)), numBuffers: getU16(hdrOf(u), virtio_net_hdr_v1.num_buffers), usedLen: u.len, frameLen: f.length };
    return true;
  });

  const payload = Uint8Array.from({ length: 56 }, (_, i) => (i * 7 + 3) & 0xff);
  r.tx.addChain({ readable: [netHeader(), echoRequest(guestMac, hostMac, payload)] });
  r.net.onNotify(NET_TX_QUEUE);
  receive((f, u) => {
    if (f[12] !== 0x08 || f[13] !== 0x00 || f[23] !== 1 || f[34] !== 0) return false;
    report.echoReply = {
      payloadIntact: Buffer.from(f.subarray(42, 42 + payload.length)).equals(Buffer.from(payload)),
      numBuffers: getU16(hdrOf(u), virtio_net_hdr_v1.num_buffers),
      gsoType: hdrOf(u).getUint8(virtio_net_hdr_v1.gso_type),
    };
    return true;
  });
  report.tapRxPacketsDelta = rxPackets() - before;
  report.faults = r.ctx.faults.length;
  report.failures = r.ctx.failures.length;
  r.dispose();
  return report;
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split("/").pop()!)) {
  process.stdout.write(JSON.stringify(main(process.argv[2] ?? "tap0")));
}
