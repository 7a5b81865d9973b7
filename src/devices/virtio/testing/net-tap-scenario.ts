/**
 * Run by net.test.ts inside a private network namespace (`ip netns exec NS node
 * net-tap-scenario.js TAP`), where TAP exists, is up and has 10.77.0.1/24: a
 * VirtioNet over the real TAP, driven by fake guest drivers, sends an ARP
 * request and a ping for 10.77.0.1 from 10.77.0.2, then (each time with a fresh
 * device on the same TAP) plays a minimal TCP client against a Node server on
 * 10.77.0.1: it downloads a payload, uploads one and closes, once with every
 * offload negotiated (the kernel should send GSO and partial-checksum frames; the
 * upload is one TSO packet) and once with none (only complete frames; the upload
 * is MSS-sized, fully checksummed segments). It reports (JSON on stdout) what
 * went through the device. A TAP can only be attached from its own namespace,
 * hence a separate process.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ETH_P_IP, IPPROTO_TCP, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, iphdr, tcphdr, virtio_net_hdr_v1,
} from "../../../linux/abi.generated.js";
import { dataView, getU16 } from "../../../memory/le.js";
import { createBackend, NET_HDR_BYTES, NET_MAX_FRAME_BYTES, NET_RX_QUEUE, NET_TX_QUEUE, openTap, parseMac } from "../net.js";
import { NET_OFFLOAD_FEATURES } from "../net-offload.js";
import { concat, ethFrame, netHeader, netRig, readNetHeader, waitReadable, type NetRig } from "./net-test-rig.js";
import type { UsedEntry } from "./fake-driver.js";

/** What one TCP session through the device saw. */
export interface TcpSessionReport {
  /** Every TUNSETOFFLOAD argument the device used, from activation to shutdown. */
  tunOffloadCalls: number[];
  /** The downloaded payload arrived complete and intact. */
  downloadIntact: boolean;
  downloadBytes: number;
  /** TCP frames from the server, and how many of them were GSO, partial-checksum, bigger than 1514 bytes. */
  rxTcpFrames: number;
  rxGsoFrames: number;
  rxPartialCsumFrames: number;
  rxMaxFrame: number;
  /** Every received TCP checksum verified, after completing the partial ones from csum_start/csum_offset. */
  rxChecksumsValid: boolean;
  /** The server's count and SHA-256 of what the client uploaded, and what was uploaded. */
  server?: { n?: number; sha?: string; error?: string };
  uploadBytes: number;
  uploadSha: string;
  /** TX frames the device sent (a TSO packet counts once). */
  txFrames: number;
  txDropped: number;
  rxOffloadDropped: number;
  hostErrors: number;
  faults: string[];
  failures: string[];
  error?: string;
}

/** What the scenario saw. */
export interface TapScenarioReport {
  missingTapError?: string;
  hostMac: string;
  tapRxPacketsDelta: number;
  arpReply?: { senderMac: string; numBuffers: number; usedLen: number; frameLen: number };
  echoReply?: { payloadIntact: boolean; numBuffers: number; gsoType: number };
  faults: number;
  failures: number;
  /** TUNSETOFFLOAD arguments of the ARP/ping device. */
  pingOffloadCalls: number[];
  /** All offloads negotiated. */
  tcpOffloaded?: TcpSessionReport;
  /** No offloads negotiated. */
  tcpPlain?: TcpSessionReport;
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
  const report: TapScenarioReport = { hostMac: "", tapRxPacketsDelta: 0, faults: 0, failures: 0, pingOffloadCalls: [] };
  try {
    createBackend({ tap: "ftapnone", mac: "06:00:ac:10:00:02" });
  } catch (e) {
    report.missingTapError = (e as Error).message;
  }
  const hostMac = parseMac(readFileSync(`/sys/class/net/${tap}/address`, "latin1").trim());
  report.hostMac = macText(hostMac);
  const rxPackets = () => Number(readFileSync(`/sys/class/net/${tap}/statistics/rx_packets`, "latin1"));
  const before = rxPackets();
  const r = netRig(openTap(tap), { mac: "06:00:ac:10:00:02" }, { realTap: true });
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

  // Attaching the TAP turns its carrier on, but the kernel activates its transmit queue later
  // (link watch); until then what it sends to the TAP, like the ARP reply, is dropped.
  // operstate turns "up" in the same step, so wait for it (busy: this process has nothing else to do).
  const upBy = Date.now() + 5000;
  while (readFileSync(`/sys/class/net/${tap}/operstate`, "latin1").trim() !== "up" && Date.now() < upBy) waitReadable(r.fd, 20);
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
  report.pingOffloadCalls = r.offloads.calls;

  report.tcpOffloaded = tcpSession(tap, hostMac, { offloads: true, port: 7000, download: 300_000, upload: 30_000 });
  report.tcpPlain = tcpSession(tap, hostMac, { offloads: false, port: 7001, download: 100_000, upload: 5000 });
  return report;
}

// --- A minimal TCP client over the device (RFC 793 just far enough for one transfer each way) ---

const TCP_FIN = 0x01, TCP_SYN = 0x02, TCP_RST = 0x04, TCP_PSH = 0x08, TCP_ACK = 0x10;
/** TCP option: maximum segment size (RFC 793 §3.1, kind 2, length 4). */
const TCPOPT_MSS = [2, 4];
const CLIENT_MSS = 1460;
const WINDOW = 0xffff;

/** The 16-bit ones' complement sum of `b` added to `sum` (RFC 1071), not folded. */
function sum16(b: Uint8Array, sum = 0): number {
  for (let i = 0; i + 1 < b.length; i += 2) sum += (b[i]! << 8) | b[i + 1]!;
  if (b.length & 1) sum += b[b.length - 1]! << 8;
  return sum;
}
const fold = (sum: number) => {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
};

/** The TCP pseudo-header sum (RFC 793 §3.1) for an IPv4 packet at `ip`, folded and not inverted. */
function pseudoSum(ip: Uint8Array): number {
  const ihl = (ip[0]! & 0x0f) * 4, total = dataView(ip).getUint16(iphdr.tot_len, false);
  return fold(sum16(ip.subarray(12, 20)) + IPPROTO_TCP + (total - ihl));
}

/** True when the TCP checksum of the IPv4 packet `ip` verifies. */
function tcpChecksumOk(ip: Uint8Array): boolean {
  const ihl = (ip[0]! & 0x0f) * 4, total = dataView(ip).getUint16(iphdr.tot_len, false);
  return fold(sum16(ip.subarray(ihl, total), pseudoSum(ip))) === 0xffff;
}

interface Segment { seq: number; ack: number; flags: number; payload: Uint8Array; mss?: number }

function tcpSession(tap: string, hostMac: Uint8Array, o: { offloads: boolean; port: number; download: number; upload: number }): TcpSessionReport {
  const rep: TcpSessionReport = {
    tunOffloadCalls: [], downloadIntact: false, downloadBytes: 0, rxTcpFrames: 0, rxGsoFrames: 0, rxPartialCsumFrames: 0,
    rxMaxFrame: 0, rxChecksumsValid: true, uploadBytes: o.upload, uploadSha: "", txFrames: 0, txDropped: 0,
    rxOffloadDropped: 0, hostErrors: 0, faults: [], failures: [],
  };
  const dir = mkdtempSync(join(tmpdir(), "flint-tcp-"));
  const result = join(dir, "result.json");
  const server = spawn(process.execPath, ["-e", SERVER, String(o.port), String(o.download), result], { stdio: "ignore" });
  const r: NetRig = netRig(openTap(tap), { mac: "06:00:ac:10:00:02" }, {
    realTap: true, features: o.offloads ? undefined : (offered) => offered & ~NET_OFFLOAD_FEATURES,
  });
  const bigChain = [NET_HDR_BYTES + NET_MAX_FRAME_BYTES];
  const chainLengths = o.offloads ? bigChain : [NET_HDR_BYTES + 1514];
  r.addRx(16, chainLengths);
  const guestMac = r.net.mac, guestIp = GUEST_IP, hostIp = HOST_IP;
  const clientPort = 40000 + o.port % 1000;
  const iss = 0x1000_0000;
  let sndNxt = iss, rcvNxt = 0, irs = -1, peerMss = 536, finReceived = false, reset = false;
  const download: Uint8Array[] = [];
  const expected = Buffer.from(Uint8Array.from({ length: o.download }, (_, i) => (i * 7 + o.port) & 0xff));

  /** Sends one TCP segment; `tso` makes it a GSO packet with a partial checksum. */
  const send = (seg: Segment, tso?: { mss: number }) => {
    const opts = seg.mss ? Uint8Array.of(...TCPOPT_MSS, seg.mss >> 8, seg.mss & 0xff) : new Uint8Array(0);
    const tcp = new Uint8Array(tcphdr.SIZE + opts.length + seg.payload.length);
    const tv = dataView(tcp);
    tv.setUint16(0, clientPort, false);
    tv.setUint16(2, o.port, false);
    tv.setUint32(4, seg.seq >>> 0, false);
    tv.setUint32(8, seg.ack >>> 0, false);
    tcp[12] = ((tcphdr.SIZE + opts.length) / 4) << 4;
    tcp[13] = seg.flags;
    tv.setUint16(14, WINDOW, false);
    tcp.set(opts, tcphdr.SIZE);
    tcp.set(seg.payload, tcphdr.SIZE + opts.length);
    const ip = new Uint8Array(iphdr.SIZE + tcp.length);
    ip.set([0x45, 0, ip.length >> 8, ip.length & 0xff, 0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0, ...guestIp, ...hostIp]);
    const ic = ~fold(sum16(ip.subarray(0, iphdr.SIZE))) & 0xffff;
    ip[10] = ic >> 8; ip[11] = ic & 0xff;
    ip.set(tcp, iphdr.SIZE);
    const tcpAt = iphdr.SIZE + tcphdr.check;
    let hdr: Uint8Array;
    if (tso) {
      // §5.1.6.2: the checksum field holds the pseudo-header sum; the device side completes it.
      const ps = pseudoSum(ip);
      ip[tcpAt] = ps >> 8; ip[tcpAt + 1] = ps & 0xff;
      const csumStart = 14 + iphdr.SIZE;
      hdr = netHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, { csumStart, csumOffset: tcphdr.check, gsoSize: tso.mss, hdrLen: csumStart + tcphdr.SIZE });
    } else {
      const c = ~fold(sum16(ip.subarray(iphdr.SIZE), pseudoSum(ip))) & 0xffff;
      ip[tcpAt] = c >> 8; ip[tcpAt + 1] = c & 0xff;
      hdr = netHeader();
    }
    r.tx.addChain({ readable: [hdr, ethFrame(hostMac, guestMac, ETH_P_IP, ip)] });
    r.net.onNotify(NET_TX_QUEUE);
    r.tx.popAllUsed();
  };

  /** Handles one received frame: ARP requests for us, TCP segments of this connection. */
  const onFrame = (u: UsedEntry) => {
    const f = u.written.subarray(NET_HDR_BYTES, u.len);
    const v = dataView(f);
    if (f.length >= 42 && v.getUint16(12, false) === 0x0806 && f[21] === 1 && Buffer.from(f.subarray(38, 42)).equals(Buffer.from(guestIp))) {
      const a = new Uint8Array(28);
      a.set([0, 1, 8, 0, 6, 4, 0, 2]);
      a.set(guestMac, 8); a.set(guestIp, 14); a.set(f.subarray(22, 28), 18); a.set(f.subarray(28, 32), 24);
      r.tx.addChain({ readable: [netHeader(), ethFrame(f.subarray(22, 28), guestMac, 0x0806, a)] });
      r.net.onNotify(NET_TX_QUEUE);
      r.tx.popAllUsed();
      return;
    }
    if (f.length < 14 + iphdr.SIZE + tcphdr.SIZE || v.getUint16(12, false) !== ETH_P_IP || f[14 + iphdr.protocol] !== IPPROTO_TCP) return;
    const ip = f.subarray(14, 14 + v.getUint16(14 + iphdr.tot_len, false));
    const ihl = (ip[0]! & 0x0f) * 4;
    const tv = dataView(ip.subarray(ihl));
    if (tv.getUint16(0, false) !== o.port || tv.getUint16(2, false) !== clientPort) return;
    rep.rxTcpFrames++;
    rep.rxMaxFrame = Math.max(rep.rxMaxFrame, f.length);
    const h = readNetHeader(u.written);
    if (h.gsoType !== 0) rep.rxGsoFrames++;
    if (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
      rep.rxPartialCsumFrames++;
      // §5.1.6.4: a ones' complement sum from csum_start to the end, stored at csum_offset.
      const at = h.csumStart + h.csumOffset;
      const c = ~fold(sum16(f.subarray(h.csumStart))) & 0xffff;
      f[at] = c >> 8; f[at + 1] = c & 0xff;
    }
    if (!tcpChecksumOk(ip)) rep.rxChecksumsValid = false;
    const seq = tv.getUint32(4, false), flags = ip[ihl + 13]!, doff = (ip[ihl + 12]! >> 4) * 4;
    const payload = ip.subarray(ihl + doff);
    if (flags & TCP_RST) { reset = true; return; }
    if (flags & TCP_SYN) {
      if (irs < 0 && flags & TCP_ACK) {
        irs = seq;
        rcvNxt = (seq + 1) >>> 0;
        sndNxt = (iss + 1) >>> 0;
        // The server's MSS option, if it is the first one (kind 2).
        if (doff > tcphdr.SIZE && ip[ihl + tcphdr.SIZE] === TCPOPT_MSS[0]) peerMss = dataView(ip).getUint16(ihl + tcphdr.SIZE + 2, false);
      }
      return;
    }
    if (seq === rcvNxt && payload.length > 0) {
      download.push(payload.slice());
      rcvNxt = (rcvNxt + payload.length) >>> 0;
    }
    if (seq + payload.length === rcvNxt && flags & TCP_FIN && !finReceived) {
      finReceived = true;
      rcvNxt = (rcvNxt + 1) >>> 0;
    }
  };

  /** Runs the device until `done` or `ms` pass; ACKs what arrived. Returns `done()`. */
  const pump = (done: () => boolean, ms: number): boolean => {
    const deadline = Date.now() + ms;
    while (!done() && !reset && Date.now() < deadline) {
      if (!waitReadable(r.fd, 20)) continue;
      r.ctx.fire(r.fd);
      const used = r.rx.popAllUsed();
      const before = rcvNxt;
      for (const u of used) {
        if (u.len > NET_HDR_BYTES) onFrame(u);
        r.rx.addChain({ writable: chainLengths });
      }
      // New receive buffers: kick queue 0 (the device stops polling the TAP when it runs out).
      if (used.length > 0) r.net.onNotify(NET_RX_QUEUE);
      if (irs >= 0 && rcvNxt !== before) send({ seq: sndNxt, ack: rcvNxt, flags: TCP_ACK, payload: new Uint8Array(0) });
    }
    return done();
  };

  try {
    if (!pump(() => existsSync(`${result}.ready`), 10_000)) throw new Error("the TCP server did not start");
    send({ seq: iss, ack: 0, flags: TCP_SYN, payload: new Uint8Array(0), mss: CLIENT_MSS });
    if (!pump(() => irs >= 0, 5000)) throw new Error("no SYN-ACK");
    send({ seq: sndNxt, ack: rcvNxt, flags: TCP_ACK, payload: new Uint8Array(0) });
    const got = () => download.reduce((s, d) => s + d.length, 0);
    pump(() => got() >= o.download, 10_000);
    const data = Buffer.concat(download);
    rep.downloadBytes = data.length;
    rep.downloadIntact = data.equals(expected);
    // Upload: one TSO packet when negotiated, else segments of at most the server's MSS.
    const up = Uint8Array.from({ length: o.upload }, (_, i) => (i * 13 + 5) & 0xff);
    rep.uploadSha = createHash("sha256").update(up).digest("hex");
    const mss = Math.min(peerMss, CLIENT_MSS);
    if (o.offloads) send({ seq: sndNxt, ack: rcvNxt, flags: TCP_ACK | TCP_PSH, payload: up }, { mss });
    else for (let off = 0; off < up.length; off += mss) send({ seq: sndNxt + off, ack: rcvNxt, flags: TCP_ACK, payload: up.subarray(off, off + mss) });
    sndNxt = (sndNxt + up.length) >>> 0;
    send({ seq: sndNxt, ack: rcvNxt, flags: TCP_FIN | TCP_ACK, payload: new Uint8Array(0) });
    sndNxt = (sndNxt + 1) >>> 0;
    pump(() => existsSync(result), 10_000);
    if (finReceived) send({ seq: sndNxt, ack: rcvNxt, flags: TCP_ACK, payload: new Uint8Array(0) });
    if (existsSync(result)) rep.server = JSON.parse(readFileSync(result, "utf8")) as TcpSessionReport["server"];
    if (reset) rep.error = "the server reset the connection";
  } catch (e) {
    rep.error = (e as Error).message;
  } finally {
    rep.txFrames = r.net.metrics.txFrames;
    rep.txDropped = r.net.metrics.txDropped;
    rep.rxOffloadDropped = r.net.metrics.rxOffloadDropped;
    rep.hostErrors = r.net.metrics.hostErrors;
    rep.faults = r.ctx.faults;
    rep.failures = r.ctx.failures;
    r.net.reset();
    r.dispose();
    rep.tunOffloadCalls = r.offloads.calls;
    server.kill();
    rmSync(dir, { recursive: true, force: true });
  }
  return rep;
}

/** The server (node -e SERVER port bytes resultFile): sends `bytes` bytes, records what it receives until EOF. */
const SERVER = `
const net = require("node:net"), crypto = require("node:crypto"), fs = require("node:fs");
const [port, bytes, out] = process.argv.slice(1);
const data = Buffer.alloc(Number(bytes));
for (let i = 0; i < data.length; i++) data[i] = (i * 7 + Number(port)) & 0xff;
const srv = net.createServer((s) => {
  const h = crypto.createHash("sha256");
  let n = 0;
  s.on("data", (d) => { h.update(d); n += d.length; });
  s.on("end", () => { fs.writeFileSync(out, JSON.stringify({ n, sha: h.digest("hex") })); s.end(); srv.close(); });
  s.on("error", (e) => { fs.writeFileSync(out, JSON.stringify({ error: String(e) })); process.exit(1); });
  s.write(data);
});
srv.listen(Number(port), "10.77.0.1", () => fs.writeFileSync(out + ".ready", ""));
setTimeout(() => process.exit(2), 30000).unref();
`;

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split("/").pop()!)) {
  process.stdout.write(JSON.stringify(main(process.argv[2] ?? "tap0")));
}
