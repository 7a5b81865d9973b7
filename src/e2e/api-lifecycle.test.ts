/**
 * End-to-end: real Linux configured, started, paused and resumed through
 * Firecracker's API (`flint --api-sock`), one level down in the nested
 * harness, driven by a client that makes the calls Firecracker's clients
 * make (PUT /boot-source, /machine-config, /drives/rootfs, /entropy, then
 * PUT /actions InstanceStart, PATCH /vm). The guest counts on its console;
 * while paused the count must stop (flint's CPU time meanwhile is reported),
 * after resume it must go on, and the guest's clock must have run on through
 * the pause (kvm-clock follows the host's; Firecracker does not set the
 * clock back on resume, it only tells the guest it was stopped, with
 * KVM_KVMCLOCK_CTRL, so its watchdogs stay quiet). The metrics file
 * (PUT /metrics) must hold the VM's counters. At the end the client asks the guest to power off
 * over its console and flint exits 0, removing its socket.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { buildInitramfs, parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { API_CLIENT_JS } from "../harness/api-client-script.js";
import { e2eValue, readTextIfAny } from "../harness/e2e-report.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

/** The drive's bytes, and its bandwidth bucket: 256 KiB refilled every 250 ms, 1 MiB/s. */
const DISK_BYTES = 2 << 20;
const BUCKET_BYTES = 256 << 10;
const REFILL_MS = 250;

const DISK_SECTORS = DISK_BYTES / 512;
/** The drive's new backing file after the swap: larger, and starting with this marker. */
const SWAP_BYTES = 4 << 20;
const SWAP_MARKER = "FLINT-SWAP-1";

/** Counts on the console until told to stop (a line on the console's input), then powers off. */
const GUEST_INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "flint-guest: booted"
echo "flint-e2e: disk=$(cat /sys/block/vda/size 2>/dev/null)"
echo "flint-e2e: rng=$(cat /sys/devices/virtual/misc/hw_random/rng_current 2>/dev/null)"
# The drive is rate-limited: reading all of it, past the page cache, takes at least what its bucket allows.
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=64k iflag=direct 2>/dev/null
echo "flint-e2e: read_s=$(echo "$(cut -d' ' -f1 /proc/uptime) $t0" | awk '{ printf "%.2f", $1 - $2 }')"
( i=0; while :; do i=$((i + 1)); echo "tick=$i up=$(cut -d' ' -f1 /proc/uptime)"; sleep 0.2; done ) &
read stop
kill $!
# The host gave the drive a new, larger backing file before saying stop: a config-change interrupt.
old=${DISK_SECTORS}
i=0; while [ $i -lt 50 ] && [ "$(cat /sys/block/vda/size)" = "$old" ]; do sleep 0.2; i=$((i + 1)); done
echo "flint-e2e: new_size=$(cat /sys/block/vda/size)"
echo "flint-e2e: marker=$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c ${SWAP_MARKER.length})"
echo "flint-e2e: stopping"
poweroff -f
`;

/** Runs inside the nested VM: flint as Firecracker's clients start it, driven over its socket. */
const CLIENT = `
import { spawn } from "node:child_process";
import { appendFileSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:http";
const [cli, kernel, initrd, disk, sock, report, swapDisk, metrics] = process.argv.slice(2);
${API_CLIENT_JS}
const fc = spawn(process.execPath, [cli, "--api-sock", sock, "--id", "e2e-vm"], { stdio: ["pipe", "pipe", "pipe"] });
let consoleText = "", stderr = "";
fc.stdout.on("data", (b) => { consoleText += b; process.stdout.write(b); });
fc.stderr.on("data", (b) => { stderr += b; });
const exited = new Promise((resolve) => fc.on("exit", (code, signal) => resolve(code ?? signal)));
const lastTick = () => { const m = [...consoleText.matchAll(/tick=(\\d+)/g)]; return m.length ? Number(m[m.length - 1][1]) : 0; };
const uptimeAt = (tick) => { const m = new RegExp("tick=" + tick + " up=([0-9.]+)").exec(consoleText); return m ? Number(m[1]) : NaN; };
const metricsSum = (group, key) => readFileSync(metrics, "utf8").split("\\n").filter(Boolean).map((l) => JSON.parse(l)).reduce((n, l) => n + (l[group]?.[key] ?? 0), 0);
const cpuTicks = () => { const f = readFileSync("/proc/" + fc.pid + "/stat", "utf8").split(") ")[1].split(" "); return Number(f[11]) + Number(f[12]); };
try {
  for (let i = 0; i < 600 && !existsSync(sock); i++) await sleep(100);
  await must(sock, "GET", "/", undefined, 200);
  await must(sock, "PUT", "/boot-source", { kernel_image_path: kernel, initrd_path: initrd, boot_args: "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init" });
  await must(sock, "PUT", "/machine-config", { vcpu_count: 2, mem_size_mib: 256 });
  await must(sock, "PUT", "/drives/rootfs", { drive_id: "rootfs", path_on_host: disk, is_root_device: false, is_read_only: true,
    rate_limiter: { bandwidth: { size: ${BUCKET_BYTES}, refill_time: ${REFILL_MS} } } });
  await must(sock, "PUT", "/entropy", {});
  writeFileSync(metrics, "");
  await must(sock, "PUT", "/metrics", { metrics_path: metrics });
  const t0 = Date.now();
  await must(sock, "PUT", "/actions", { action_type: "InstanceStart" });
  say("start_ms", Date.now() - t0);
  for (let i = 0; i < 2400 && lastTick() < 5; i++) await sleep(100);
  say("ticks_before_pause", lastTick());
  await must(sock, "PATCH", "/vm", { state: "Paused" });
  const pausedAt = Date.now();
  say("state_paused", JSON.parse((await must(sock, "GET", "/", undefined, 200)).text).state);
  await sleep(1500); // what the guest printed before the pause drains
  const paused = lastTick();
  const cpu0 = cpuTicks();
  await sleep(3000);
  say("ticks_during_pause", lastTick() - paused);
  say("cpu_ticks_during_pause", cpuTicks() - cpu0);
  say("pause_host_ms", Date.now() - pausedAt);
  await must(sock, "PATCH", "/vm", { state: "Resumed" });
  say("state_resumed", JSON.parse((await must(sock, "GET", "/", undefined, 200)).text).state);
  for (let i = 0; i < 600 && lastTick() < paused + 5; i++) await sleep(100);
  say("ticks_after_resume", lastTick() - paused);
  // The guest's uptime from its last line before the pause to its first after: the pause is inside it.
  say("guest_ms_across_pause", Math.round((uptimeAt(paused + 1) - uptimeAt(paused)) * 1000));
  await must(sock, "PUT", "/actions", { action_type: "FlushMetrics" });
  say("metrics_block_kicks", metricsSum("block_rootfs", "kicks"));
  say("metrics_block_read_bytes", metricsSum("block_rootfs", "read_bytes"));
  say("metrics_vcpu_exits", metricsSum("vcpu", "exits"));
  say("metrics_pause_us", metricsSum("latencies_us", "pause_vm"));
  say("metrics_put_drives", metricsSum("put_api_requests", "drive_count"));
  say("config_vcpus", JSON.parse((await must(sock, "GET", "/vm/config", undefined, 200)).text)["machine-config"].vcpu_count);
  await must(sock, "PATCH", "/drives/rootfs", { drive_id: "rootfs", path_on_host: swapDisk });
  fc.stdin.write("stop\\n");
} catch (e) {
  say("client_error", JSON.stringify(e.message));
  fc.kill("SIGTERM");
}
const code = await exited;
say("flint_exit", code);
say("socket_left", existsSync(sock) ? 1 : 0);
say("flint_stderr", JSON.stringify(stderr.trim()));
process.exit(0);
`;

describe("real Linux through Firecracker's API: configure, start, pause, resume (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-api-"));
  let out = "";
  let report = "";
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    const initrd = join(share, "initramfs.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: GUEST_INIT }));
    const disk = join(share, "disk.img");
    writeFileSync(disk, Buffer.alloc(DISK_BYTES));
    const swapDisk = join(share, "swap.img");
    const swapped = Buffer.alloc(SWAP_BYTES);
    swapped.write(SWAP_MARKER);
    writeFileSync(swapDisk, swapped);
    const client = join(share, "client.mjs");
    writeFileSync(client, CLIENT);
    const outFile = join(share, "out.txt"), reportFile = join(share, "report.txt");
    // Unix sockets need a local file system: the nested VM's /dev/shm is a tmpfs (the share is 9p).
    const command = `mkdir -p /dev/shm/flint-api && timeout 400 ${q(process.execPath)} ${q(client)} ${q(CLI)} ${q(kernel.vmlinux)} ${q(initrd)} ${q(disk)} /dev/shm/flint-api/fc.sock ${q(reportFile)} ${q(swapDisk)} /dev/shm/flint-api/metrics.json </dev/null >${q(outFile)} 2>&1`;
    const retryAfterTimeout = () => { for (const f of [outFile, reportFile]) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 12 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: [outFile, reportFile] });
    out = readTextIfAny(outFile);
    report = readTextIfAny(reportFile);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => `${describeNestedRun(nested)}\n--- client report ---\n${report}\n--- console ---\n${out.slice(-2500)}\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const value = (key: string) => e2eValue(key, report, out);

  it("the guest configured over the API boots with its drive and entropy device", () => {
    assert.equal(value("client_error"), undefined, why());
    assert.ok(parseGuestReport(out).booted, why());
    assert.equal(value("disk"), String(DISK_BYTES / 512), why());
    assert.match(value("rng") ?? "", /virtio_rng/, why());
    assert.equal(value("config_vcpus"), "2", why());
  });

  it("reading the rate-limited drive takes at least what its bucket allows", (t) => {
    // A full bucket at the start, then refills: (bytes - size) / rate is a lower bound no slow machine breaks.
    const floorS = (DISK_BYTES - BUCKET_BYTES) / (BUCKET_BYTES * (1000 / REFILL_MS));
    t.diagnostic(`read ${DISK_BYTES} bytes in ${value("read_s")} s; the bucket allows no less than ${floorS.toFixed(2)} s`);
    assert.ok(Number(value("read_s")) >= floorS - 0.02, `read took ${value("read_s")} s, less than ${floorS} s\n${why()}`);
  });

  it("paused, the guest's count stops; resumed, it counts again", (t) => {
    t.diagnostic(`start ${value("start_ms")} ms; CPU ticks while paused ${value("cpu_ticks_during_pause")}`);
    assert.equal(value("state_paused"), "Paused", why());
    assert.ok(Number(value("ticks_before_pause")) >= 5, why());
    assert.equal(value("ticks_during_pause"), "0", why());
    assert.equal(value("state_resumed"), "Running", why());
    assert.ok(Number(value("ticks_after_resume")) >= 5, why());
  });

  it("the guest's clock ran on through the pause, as under Firecracker, and no watchdog fired", (t) => {
    const guestMs = Number(value("guest_ms_across_pause")), hostMs = Number(value("pause_host_ms"));
    t.diagnostic(`paused ${hostMs} ms on the host; the guest's uptime moved ${guestMs} ms across it`);
    // A lower bound: both lines bracket the pause. A monitor that hid the pause from the guest's clock would show ~200 ms.
    assert.ok(guestMs >= 0.9 * hostMs, `guest ${guestMs} ms across a ${hostMs} ms pause\n${why()}`);
    assert.doesNotMatch(out, /soft lockup|rcu_.*stall|hung_task|clocksource.*unstable/i, why());
  });

  it("the metrics file (PUT /metrics, FlushMetrics) holds the VM's counters", () => {
    assert.ok(Number(value("metrics_block_kicks")) > 0, why());
    // The guest read the whole drive past its page cache.
    assert.ok(Number(value("metrics_block_read_bytes")) >= DISK_BYTES, why());
    assert.ok(Number(value("metrics_vcpu_exits")) > 0, why());
    assert.ok(Number(value("metrics_pause_us")) > 0, why());
    assert.equal(value("metrics_put_drives"), "1", why());
  });

  it("PATCH /drives gives the running guest's drive a new backing file: it sees the new size and reads the new data", () => {
    assert.equal(value("new_size"), String(SWAP_BYTES / 512), why());
    assert.equal(value("marker"), SWAP_MARKER, why());
  });

  it("a line on flint's stdin reaches the guest, which powers off; flint exits 0, its socket removed, with no kernel warning", () => {
    assert.match(out, /flint-e2e: stopping/, why());
    assert.equal(value("flint_exit"), "0", why());
    assert.equal(value("socket_left"), "0", why());
    assert.doesNotMatch(out, /WARNING:|BUG:|Call Trace/, why());
  });
});
