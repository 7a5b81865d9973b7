/**
 * End-to-end: real Linux reads MMDS through flint's virtio-net, one level down
 * in the nested harness, with flint as a library (Machine with two net devices
 * and Machine.setMmdsData). eth0 (tap0) has MMDS V2 at 169.254.169.254, eth1
 * (tap1) MMDS V1 at 169.254.170.2. The guest, with busybox: a V1 GET with wget
 * (a listing and a value, and JSON by Accept); on V2 a GET without a token
 * (refused), a token from PUT /latest/api/token (busybox wget cannot PUT: a
 * hand-written request through nc), then GETs with X-metadata-token; and pings
 * the TAP's address, so ordinary traffic still flows through the TAP.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { buildInitramfs, parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { e2eValue, readTextIfAny } from "../harness/e2e-report.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

/** The library as users import it (package.json main: the bundle; the tsc output is a module graph slow to load in the outer VM). */
const LIBRARY = fileURLToPath(new URL("../bundle/index.js", import.meta.url));
const DATA = { latest: { "meta-data": { "ami-id": "ami-e2e", "local-ipv4": "172.16.0.2", placement: { zone: "z1" } } } };

const GUEST_INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "flint-guest: booted"
ip link set lo up
ip link set eth0 up
ip link set eth1 up
ip addr add 172.16.0.2/24 dev eth0
ip addr add 172.16.1.2/24 dev eth1
# MMDS sits on the link itself (Firecracker's guide: a route to its address through the interface).
ip route add 169.254.169.254 dev eth0
ip route add 169.254.170.2 dev eth1
echo "flint-e2e: net-up=1"
# The host sets the data, then says go.
read go
one() { tr '\\n' '|' ; }
echo "flint-e2e: v1_list=$(wget -q -O - http://169.254.170.2/latest/meta-data/ | one)"
echo "flint-e2e: v1_value=$(wget -q -O - http://169.254.170.2/latest/meta-data/ami-id)"
echo "flint-e2e: v1_json=$(wget -q -O - --header 'Accept: application/json' http://169.254.170.2/latest/meta-data/placement)"
wget -q -O /tmp/no-token http://169.254.169.254/latest/meta-data/ami-id 2>/tmp/no-token.err
echo "flint-e2e: v2_without_token_rc=$?"
echo "flint-e2e: v2_without_token_err=$(grep -c 401 /tmp/no-token.err)"
printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nX-metadata-token-ttl-seconds: 300\\r\\n\\r\\n' | nc -w 20 169.254.169.254 80 >/tmp/token.http
echo "flint-e2e: v2_put_status=$(head -n 1 /tmp/token.http | cut -d' ' -f2)"
TOKEN=$(tail -n 1 /tmp/token.http)
echo "flint-e2e: v2_token_chars=\${#TOKEN}"
echo "flint-e2e: v2_value=$(wget -q -O - --header "X-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/ami-id)"
echo "flint-e2e: v2_list=$(wget -q -O - --header "X-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/ | one)"
ping -c 3 -W 10 172.16.0.1 >/tmp/ping.txt
echo "flint-e2e: ping=$(grep -c 'bytes from' /tmp/ping.txt)"
echo "flint-e2e: done=1"
poweroff -f
`;

/** Runs inside the nested VM: flint as a library with MMDS on both interfaces. */
const HOST_SCRIPT = `
import { appendFileSync } from "node:fs";
import { Writable } from "node:stream";
const [library, kernelPath, initrdPath, report, data] = process.argv.slice(2);
const { Machine } = await import(library);
const say = (k, v) => appendFileSync(report, "flint-e2e: " + k + "=" + v + "\\n");
let consoleText = "";
const consoleOutput = new Writable({ write(chunk, _e, cb) { consoleText += chunk; process.stdout.write(chunk); cb(); } });
const waitFor = async (text, ms) => {
  const end = Date.now() + ms;
  while (!consoleText.includes(text)) {
    if (Date.now() > end) throw new Error("guest never printed " + text);
    await new Promise((r) => setTimeout(r, 50));
  }
};
const vm = Machine.create({
  cpus: 2, memoryMib: 256, consoleOutput,
  boot: { kind: "linux", kernelPath, initrdPath, cmdline: "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init" },
  virtioDevices: [
    { kind: "net", options: { tap: "tap0", mac: "06:00:ac:10:00:02", mmds: { ipv4: "169.254.169.254", version: "V2", imdsCompat: false } } },
    { kind: "net", options: { tap: "tap1", mac: "06:00:ac:10:01:02", mmds: { ipv4: "169.254.170.2", version: "V1", imdsCompat: false } } },
  ],
  onSlowEnd: (m) => say("slow_end", JSON.stringify(m)),
});
const done = vm.run();
try {
  await waitFor("flint-e2e: net-up=1", 300_000);
  await vm.setMmdsData(JSON.parse(data));
  say("data_set", 1);
  vm.consoleInput(Buffer.from("go\\n"));
} catch (e) {
  say("host_error", JSON.stringify(e.message));
  vm.stop();
}
const result = await done;
say("exit", result.reason.kind);
process.exit(0);
`;

describe("real Linux reads MMDS (V1 and V2) through flint's virtio-net (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-mmds-"));
  let out = "";
  let hostOut = "";
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    const initrd = join(share, "initramfs.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: GUEST_INIT }));
    const script = join(share, "host.mjs");
    writeFileSync(script, HOST_SCRIPT);
    const outFile = join(share, "out.txt"), hostFile = join(share, "host.txt");
    const command = [
      "set -e",
      "ip tuntap add dev tap0 mode tap", "ip addr add 172.16.0.1/24 dev tap0", "ip link set tap0 up",
      "ip tuntap add dev tap1 mode tap", "ip addr add 172.16.1.1/24 dev tap1", "ip link set tap1 up",
      "set +e",
      `timeout 500 ${q(process.execPath)} ${q(script)} ${q(LIBRARY)} ${q(kernel.vmlinux)} ${q(initrd)} ${q(hostFile)} ${q(JSON.stringify(DATA))} </dev/null >${q(outFile)} 2>&1`,
    ].join("\n");
    const retryAfterTimeout = () => { for (const f of [outFile, hostFile]) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 12 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: [outFile] });
    out = readTextIfAny(outFile);
    hostOut = readTextIfAny(hostFile);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => `${describeNestedRun(nested)}\n${out.slice(-2500)}\n--- host ---\n${hostOut}\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const value = (key: string) => e2eValue(key, out, hostOut);

  it("boots with two MMDS interfaces, takes the data from Machine.setMmdsData and powers off", () => {
    assert.ok(parseGuestReport(out).booted, why());
    assert.equal(value("host_error"), undefined, why());
    assert.equal(value("data_set"), "1", why());
    assert.equal(value("done"), "1", why());
    assert.equal(value("exit"), "poweroff", why());
  });

  it("V1: busybox wget reads a listing, a value and JSON by Accept", () => {
    assert.equal(value("v1_list"), "ami-id|local-ipv4|placement/", why());
    assert.equal(value("v1_value"), "ami-e2e", why());
    assert.equal(value("v1_json"), JSON.stringify({ zone: "z1" }), why());
  });

  it("V2: a GET without a token is refused with 401; PUT /latest/api/token gives one; GETs with it are answered", () => {
    assert.notEqual(value("v2_without_token_rc"), "0", why());
    assert.equal(value("v2_without_token_err"), "1", why());
    assert.equal(value("v2_put_status"), "200", why());
    assert.ok(Number(value("v2_token_chars")) > 16, why());
    assert.equal(value("v2_value"), "ami-e2e", why());
    assert.equal(value("v2_list"), "ami-id|local-ipv4|placement/", why());
  });

  it("the guest's pings to the TAP's address are still answered", (t) => {
    t.diagnostic(["v1_list", "v1_value", "v1_json", "v2_without_token_rc", "v2_put_status", "v2_token_chars", "v2_value", "ping"].map((k) => `${k}=${value(k)}`).join(" "));
    assert.equal(value("ping"), "3", why());
  });
});
