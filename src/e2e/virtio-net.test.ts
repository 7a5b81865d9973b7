/**
 * End-to-end: real Linux uses flint's virtio-net over a TAP, driven through the
 * CLI (`flint run --net tap=tap0,mac=...`), one level down in the nested
 * harness. Everything network-related happens inside the outer VM: it creates
 * tap0 (172.16.0.1/24) and two TCP listeners; the guest configures eth0 as
 * 172.16.0.2/24, reports the virtio features its driver negotiated, pings the
 * outer side, sends a known payload with busybox nc and then receives another
 * one (printing its SHA-256). With checksum and TSO offloads negotiated, both
 * bulk transfers move in GSO packets larger than an Ethernet frame, which the
 * test checks from the guest's interface counters. The host's own network is
 * never touched.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { buildInitramfs, parseGuestReport } from "../guest/initramfs.js";
import {
  ETH_FRAME_LEN, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_MRG_RXBUF,
} from "../linux/abi.generated.js";
import { readTextIfAny } from "../harness/e2e-report.js";
import { buildKernel } from "../guest/kernel-build.js";
import { describeNestedRun, runNested, type NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const GUEST_MAC = "06:00:ac:10:00:02";
/** The outer side listens here for the guest's upload... */
const PORT = 7777;
/** ...and here to send the guest its download. */
const RECV_PORT = 7778;
/** Bytes the guest receives: many 64 KiB GSO packets. */
const RECV_BYTES = 4 << 20;

/** A deterministic payload (xorshift32), large enough to need many TCP segments. */
function payload(bytes: number, seed = 0x2545f491): Buffer {
  const out = Buffer.alloc(bytes);
  let x = seed;
  for (let i = 0; i < bytes; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

const GUEST_INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "flint-guest: booted"
ip link set lo up
ip link set eth0 up
ip addr add 172.16.0.2/24 dev eth0
echo "flint-e2e: mac=$(cat /sys/class/net/eth0/address)"
# The features the driver negotiated: one 0/1 per bit, bit 0 first (virtio_dev's features file).
for d in /sys/bus/virtio/devices/virtio*; do
  [ "$(cat $d/device)" = 0x0001 ] && echo "flint-e2e: features=$(cat $d/features)"
done
counter() { cat /sys/class/net/eth0/statistics/$1; }
ping -c 3 -W 10 172.16.0.1 >/tmp/ping.txt
echo "flint-e2e: ping=$(grep -c 'bytes from' /tmp/ping.txt)"
echo "flint-e2e: rtt=$(tail -n 1 /tmp/ping.txt | cut -d= -f2 | tr -d ' ')"
echo "flint-e2e: payload=$(wc -c </payload)"
start=$(date +%s)
tx_b=$(counter tx_bytes) tx_p=$(counter tx_packets)
nc 172.16.0.1 ${PORT} </payload
echo "flint-e2e: nc=$?"
# nc returns once its data is queued: wait until the peer has acknowledged all of it
# (our FIN acked: FIN_WAIT2 or TIME_WAIT) before the power goes.
i=0
while [ $i -lt 120 ] && netstat -tn | grep ':${PORT} ' | grep -qvE 'FIN_WAIT2|TIME_WAIT'; do sleep 1; i=$((i + 1)); done
echo "flint-e2e: acked_after_s=$(( $(date +%s) - start ))"
# Average bytes per packet the driver handed the device (TSO makes them larger than a frame).
echo "flint-e2e: tx_avg=$(( ($(counter tx_bytes) - tx_b) / ($(counter tx_packets) - tx_p) ))"
# The download: the outer listener sends, then half-closes; our nc exits at that EOF. Its stdin
# is a FIFO we hold open, so it never half-closes first (the sender would stop at our EOF).
mkfifo /tmp/hold
exec 3<>/tmp/hold
rx_b=$(counter rx_bytes) rx_p=$(counter rx_packets)
t0=$(cut -d' ' -f1 /proc/uptime)
nc 172.16.0.1 ${RECV_PORT} </tmp/hold >/tmp/received
echo "flint-e2e: recv_nc=$?"
echo "flint-e2e: recv_s=$(echo "$(cut -d' ' -f1 /proc/uptime) $t0" | awk '{ printf "%.2f", $1 - $2 }')"
echo "flint-e2e: rx_avg=$(( ($(counter rx_bytes) - rx_b) / ($(counter rx_packets) - rx_p) ))"
echo "flint-e2e: recv_bytes=$(wc -c </tmp/received)"
echo "flint-e2e: recv_sha256=$(sha256sum /tmp/received | cut -d' ' -f1)"
echo "flint-e2e: rx_errors=$(counter rx_errors) tx_errors=$(counter tx_errors)"
echo "flint-e2e: rx_length_errors=$(counter rx_length_errors)"
poweroff -f
`;

describe("real Linux uses flint's virtio-net over a TAP (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-net-"));
  const data = payload(256 * 1024);
  const download = payload(RECV_BYTES, 0x9e3779b9);
  let out = "";
  let exitCode = -1;
  let received: Buffer | undefined;
  let nested: NestedResult;

  before(async () => {
    const kernel = await buildKernel();
    const initrd = join(share, "initramfs.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: GUEST_INIT, files: [{ path: "/payload", data }] }));
    const outFile = join(share, "flint.out"), recvFile = join(share, "received"), downloadFile = join(share, "download");
    writeFileSync(downloadFile, download);
    const cmdline = "console=ttyS0 reboot=k panic=-1 pci=off loglevel=4 rdinit=/init";
    const args = ["run", "--kernel", kernel.vmlinux, "--initrd", initrd, "--cmdline", cmdline, "--memory", "256", "--cpus", "2",
      "--net", `tap=tap0,mac=${GUEST_MAC}`];
    // Inside the outer VM: the TAP, the listener, then flint.
    const command = [
      "set -e",
      "ip tuntap add dev tap0 mode tap",
      "ip addr add 172.16.0.1/24 dev tap0",
      "ip link set tap0 up",
      // busybox nc half-closes when its stdin ends, and the guest's nc then stops sending:
      // keep the listener's stdin open; it exits when the guest's side ends.
      `(sleep 600 | busybox nc -l -p ${PORT} >${q(recvFile)}) & listener=$!`,
      // The download: sent when the guest connects, then a half-close ends the guest's nc.
      `busybox nc -l -p ${RECV_PORT} <${q(downloadFile)} >/dev/null & sender=$!`,
      "set +e",
      `timeout 240 ${q(process.execPath)} ${q(CLI)} ${args.map(q).join(" ")} </dev/null >${q(outFile)} 2>&1; echo $? >${q(outFile)}.rc`,
      "sleep 1; kill $listener $sender 2>/dev/null; wait",
    ].join("\n");
    const retryAfterTimeout = () => { for (const f of [outFile, `${outFile}.rc`, recvFile]) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 12 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: [outFile] });
    out = readTextIfAny(outFile);
    const rc = readTextIfAny(`${outFile}.rc`).trim();
    exitCode = rc === "" ? -1 : Number(rc);
    if (existsSync(recvFile)) received = readFileSync(recvFile);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => `${describeNestedRun(nested)}; flint's exit status: ${exitCode < 0 ? "not recorded" : exitCode}\n${out.slice(-3000)}\n--- nested output ---\n${nested?.output.slice(-1500)}\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const line = (key: string) => new RegExp(`flint-e2e: ${key}=(\\S*)`).exec(out)?.[1]?.trim();

  it("boots with --net and exits 0 on poweroff; the guest's eth0 has the configured MAC", () => {
    assert.equal(exitCode, 0, why());
    assert.ok(parseGuestReport(out).booted, why());
    assert.equal(line("mac"), GUEST_MAC, why());
  });

  it("the guest's pings to the TAP's address are answered", () => {
    assert.equal(line("ping"), "3", why());
  });

  it("a TCP transfer from the guest arrives intact on the outer side", () => {
    assert.equal(line("nc"), "0", why());
    assert.ok(received, why());
    const hash = (b: Buffer) => createHash("sha256").update(b).digest("hex");
    assert.equal(received.length, data.length, why());
    assert.equal(hash(received), hash(data));
    assert.equal(line("rx_errors"), "0", why());
  });

  it("the guest negotiated CSUM, GUEST_CSUM, HOST_TSO4, GUEST_TSO4 and MRG_RXBUF (so downloads arrive in mergeable buffers)", () => {
    const features = line("features");
    assert.ok(features && /^[01]{64}$/.test(features), why());
    for (const f of [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MRG_RXBUF]) {
      assert.equal(features[f], "1", `feature bit ${f} in ${features}`);
    }
  });

  it("a TCP transfer from the outer side arrives intact in the guest", () => {
    assert.equal(line("recv_nc"), "0", why());
    assert.equal(line("recv_bytes"), String(download.length), why());
    assert.equal(line("recv_sha256"), createHash("sha256").update(download).digest("hex"), why());
    assert.equal(line("rx_length_errors"), "0", why());
  });

  it("both bulk transfers moved in TSO/GSO packets larger than an Ethernet frame", (t) => {
    t.diagnostic(["features", "acked_after_s", "tx_avg", "recv_s", "rx_avg"].map((k) => `${k}=${line(k)}`).join(" "));
    assert.ok(Number(line("tx_avg")) > ETH_FRAME_LEN, `guest sent ${line("tx_avg")} bytes per packet on average\n${why()}`);
    assert.ok(Number(line("rx_avg")) > ETH_FRAME_LEN, `guest received ${line("rx_avg")} bytes per packet on average\n${why()}`);
  });
});
