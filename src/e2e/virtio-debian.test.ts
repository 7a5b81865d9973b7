/**
 * End-to-end: Debian's own distro kernel (not flint's minimal one) uses every
 * flint virtio-mmio device, with its virtio drivers loaded as modules from the
 * initramfs, driven through the CLI as a user would:
 *   flint run --disk data.ext4 --rng --balloon 0 --vsock cid=3,uds=PATH --net tap=tap0,mac=...
 * One outer (nested harness) boot runs one flint VM for the whole file.
 *
 * The distro kernel has CONFIG_VIRTIO_MMIO=m without
 * CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so it can only find the devices in
 * flint's ACPI DSDT ("LNRO0005", matched by virtio_mmio's ACPI table): ACPI
 * stays on. Inside the outer VM the test creates tap0 (172.16.0.1/24) and a
 * Node helper listening at PATH_5678; the host's own network is never touched.
 * The guest mounts the ext4 disk, writes and syncs a file (checked in the
 * host image with debugfs after power-off), reads /dev/hwrng, checks the
 * balloon driver bound, pings tap0 with eth0 at the configured MAC, and
 * connects over AF_VSOCK to the host's port 5678, which echoes.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { DEFAULT_CMDLINE } from "../cli/defaults.js";
import { debianKernel, moduleClosure } from "../guest/debian-kernel.js";
import { BOOT_TIMER_GUEST_ADDR, buildInitramfs, LOAD_MODULES_SH, parseGuestReport } from "../guest/initramfs.js";
import { compileGuestProgram } from "../harness/guest-program.js";
import { e2eValue } from "../harness/e2e-report.js";
import { buildExt4Image } from "../harness/guest-disks.js";
import { E2E_GUEST_NET, ethUpSh, HWRNG_REPORT_SH, initPrologue, vsockConnectC } from "../harness/guest-scripts.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

const { mac: GUEST_MAC, cid: GUEST_CID, hostPort: HOST_PORT, hostIp: HOST_IP, guestIp: GUEST_IP } = E2E_GUEST_NET;
/** What the host wrote into the disk image before boot; the guest reads it back. */
const SEEDED_TEXT = "seeded by the host";
/** What the guest writes and syncs; the host finds it in the image after power-off. */
const GUEST_TEXT = "written by debian's kernel on virtio-blk";

/**
 * Modules the guest loads, in this order (moduleClosure adds virtio, virtio_ring,
 * jbd2, mbcache, crc16, vsock... before their users). virtio_mmio first: its
 * platform driver binds flint's LNRO0005 devices, and each device driver binds
 * its device when it registers. crc32c_generic: ext4's metadata checksums ask the
 * crypto API for "crc32c", which would otherwise need modprobe and a modules.dep.
 */
const GUEST_MODULES = [
  "virtio_mmio", "virtio_blk", "crc32c_generic", "ext4", "virtio_rng", "virtio_net",
  "vmw_vsock_virtio_transport", "virtio_balloon",
] as const;

/** Driver name (/sys/bus/virtio/drivers/<name>) for each device flint is given. */
const VIRTIO_DRIVERS = ["virtio_blk", "virtio_net", "virtio_rng", "virtio_balloon", "vmw_vsock_virtio_transport"] as const;

/** The guest's AF_VSOCK client: `vsock-connect CID PORT MESSAGE` prints its own CID, then the line that comes back. */
const GUEST_VSOCK_C = vsockConnectC({ reportLocalCid: true, detailedErrors: true });

const GUEST_INIT = `${initPrologue()}# Boot timer: flint's --boot-time reports when user space ran (for the timing in failure messages).
devmem 0x${BOOT_TIMER_GUEST_ADDR.toString(16)} 8 1
echo "flint-guest: booted"
echo "flint-e2e: kernel=$(uname -r)"
echo "flint-e2e: uptime-init=$(cut -d' ' -f1 /proc/uptime)"
${LOAD_MODULES_SH}
echo "flint-e2e: uptime-modules=$(cut -d' ' -f1 /proc/uptime)"
echo "flint-e2e: acpi-lnro=$(ls -d /sys/bus/acpi/devices/LNRO0005:* 2>/dev/null | wc -l)"
echo "flint-e2e: virtio-devices=$(ls /sys/bus/virtio/devices | wc -l)"
for d in ${VIRTIO_DRIVERS.join(" ")}; do
  echo "flint-e2e: driver-$d=$(ls /sys/bus/virtio/drivers/$d 2>/dev/null | grep -c '^virtio')"
done

# virtio-blk: mount the ext4 disk, read what the host put there, write and sync a file.
mkdir -p /mnt/disk
if mount -t ext4 /dev/vda /mnt/disk; then echo "flint-e2e: mount=ok"; else echo "flint-e2e: mount=failed"; fi
echo "flint-e2e: mounted=$(awk '$2 == "/mnt/disk" { print $1 " " $3 }' /proc/mounts)"
echo "flint-e2e: seeded=$(cat /mnt/disk/seeded.txt)"
echo "${GUEST_TEXT}" >/mnt/disk/guest-wrote.txt && sync && echo "flint-e2e: synced=ok"
umount /mnt/disk && echo "flint-e2e: umount=ok"

${HWRNG_REPORT_SH}
# virtio-net
${ethUpSh(GUEST_IP)}echo "flint-e2e: eth0-driver=$(basename "$(readlink /sys/class/net/eth0/device/driver)")"
ping -c 3 -A -W 10 ${HOST_IP} >/tmp/ping.txt 2>&1
echo "flint-e2e: ping=$(grep -c 'bytes from' /tmp/ping.txt)"

# virtio-vsock: guest-initiated connection to the host's port ${HOST_PORT}
/bin/vsock-connect 2 ${HOST_PORT} "hello from debian" || echo "flint-e2e: vsock-got=connect failed ($?)"

echo "flint-e2e: uptime-end=$(cut -d' ' -f1 /proc/uptime)"
echo "flint-e2e: end=reached"
# Closing the console descriptors waits until the UART has sent everything.
exec </dev/null >/dev/null 2>&1
poweroff -f
`;

/** Runs inside the outer VM: listens at PATH_5678 and echoes one line per connection. Reports to its own file. */
const HOST_HELPER = `
import { appendFileSync } from "node:fs";
import net from "node:net";
const [listenPath, report] = process.argv.slice(2);
const say = (k, v) => appendFileSync(report, "flint-e2e: " + k + "=" + v + "\\n");
net.createServer((s) => {
  let buf = "";
  s.on("data", (d) => {
    buf += d;
    if (buf.includes("\\n")) { say("host-served", buf.trim()); s.end("host-echo:" + buf); }
  });
  s.on("error", (e) => say("host-error", e.message));
}).listen(listenPath, () => say("host-listening", listenPath));
`;

describe("Debian's distro kernel uses flint's virtio devices (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-debian-"));
  const disk = join(share, "data.ext4");
  let out = "";
  let hostOut = "";
  let exitCode = -1;
  let nested: NestedResult | undefined;

  before(async () => {
    const debian = await debianKernel();
    const modules = moduleClosure(debian.modulesDir, GUEST_MODULES);

    const program = compileGuestProgram(share, "vsock-connect", GUEST_VSOCK_C);
    const initrd = join(share, "initramfs.cpio.gz");
    writeFileSync(initrd, buildInitramfs({
      init: GUEST_INIT, modules, files: [{ path: "/bin/vsock-connect", hostPath: program, mode: 0o755 }],
    }));

    buildExt4Image(disk, join(share, "seed"), { "seeded.txt": `${SEEDED_TEXT}\n` }, { label: "flintdata", size: "32M" });

    const helper = join(share, "host-helper.mjs");
    writeFileSync(helper, HOST_HELPER);
    const outFile = join(share, "flint.out");
    const hostFile = join(share, "host.txt");
    // Unix sockets need a local file system: the outer VM's /dev/shm is a tmpfs (the share is 9p).
    const uds = "/dev/shm/flint-debian/v.sock";
    // quiet (loglevel 4): every console byte is a nested exit, which the outer TCG VM makes expensive.
    const cmdline = `${DEFAULT_CMDLINE} quiet rdinit=/init`;
    const args = ["run", "--boot-time", "--kernel", debian.vmlinuz, "--initrd", initrd, "--cmdline", cmdline, "--memory", "384", "--cpus", "2",
      "--disk", disk, "--rng", "--balloon", "0", "--vsock", `cid=${GUEST_CID},uds=${uds}`, "--net", `tap=tap0,mac=${GUEST_MAC}`];
    const command = [
      "set -e",
      "ip tuntap add dev tap0 mode tap",
      `ip addr add ${HOST_IP}/24 dev tap0`,
      "ip link set tap0 up",
      "mkdir -p /dev/shm/flint-debian",
      `${q(process.execPath)} ${q(helper)} ${q(`${uds}_${HOST_PORT}`)} ${q(hostFile)} & helper=$!`,
      "set +e",
      // Node starts slowly under TCG: wait for the listener before the guest can connect.
      `n=0; until grep -q host-listening ${q(hostFile)} 2>/dev/null || [ $n -ge 150 ]; do sleep 0.2; n=$((n+1)); done`,
      `timeout 300 ${q(process.execPath)} ${q(CLI)} ${args.map(q).join(" ")} </dev/null >${q(outFile)} 2>&1; echo $? >${q(outFile)}.rc`,
      "kill $helper 2>/dev/null; wait",
    ].join("\n");
    const retryAfterTimeout = () => { for (const f of [outFile, `${outFile}.rc`, hostFile]) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 10 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: [outFile] });
    try {
      out = readFileSync(outFile, "utf8");
      exitCode = Number(readFileSync(`${outFile}.rc`, "utf8").trim());
      hostOut = readFileSync(hostFile, "utf8");
    } catch {
      // asserted below
    }
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () =>
    `${describeNestedRun(nested)}; flint's exit status: ${exitCode < 0 ? "not recorded" : exitCode}\n${out.slice(-3000)}\n--- host helper ---\n${hostOut}\n--- nested output ---\n${nested?.output.slice(-1500)}` +
    `\n--- outer serial tail (nested run ${nested?.durationMs} ms) ---\n${nested?.serial.slice(-1500)}`;
  /** The value of the last "flint-e2e: key=value" line from the guest console or the host helper. */
  const line = (key: string) => e2eValue(key, out, hostOut);

  it("boots Debian's kernel, loads its virtio modules, finds every device in the DSDT, and exits 0 on poweroff", () => {
    assert.equal(nested?.timedOut, false, `nested harness timed out\n${why()}`);
    assert.equal(exitCode, 0, why());
    assert.ok(parseGuestReport(out).booted, why());
    assert.doesNotMatch(out, /insmod .* failed/, why());
    assert.match(line("kernel") ?? "", /^6\.1\.0-\d+-amd64$/, why());
    assert.equal(line("acpi-lnro"), "5", why());
    assert.equal(line("virtio-devices"), "5", why());
    for (const driver of VIRTIO_DRIVERS) assert.equal(line(`driver-${driver}`), "1", `${driver} bound no device\n${why()}`);
    assert.equal(line("end"), "reached", why());
  });

  it("virtio-blk: the guest mounts the ext4 disk, reads the host's file, and what it syncs is in the host image", () => {
    assert.equal(line("mount"), "ok", why());
    assert.equal(line("mounted"), "/dev/vda ext4", why());
    assert.equal(line("seeded"), SEEDED_TEXT, why());
    assert.equal(line("synced"), "ok", why());
    assert.equal(line("umount"), "ok", why());
    const text = execFileSync("debugfs", ["-R", "cat /guest-wrote.txt", disk], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    assert.equal(text, `${GUEST_TEXT}\n`);
    execFileSync("e2fsck", ["-fn", disk], { stdio: "ignore" }); // throws if the file system is inconsistent
  });

  it("virtio-rng: /dev/hwrng is backed by virtio_rng and gives bytes", () => {
    assert.match(line("rng-current") ?? "", /^virtio_rng\.\d+$/, why());
    const hex = line("hwrng") ?? "";
    assert.match(hex, /^[0-9a-f]{64}$/, why());
    assert.notEqual(hex, "0".repeat(64));
  });

  it("virtio-balloon: the distro kernel's balloon driver binds flint's device", () => {
    assert.equal(line("driver-virtio_balloon"), "1", why());
  });

  it("virtio-net: eth0 has the configured MAC and the TAP's address answers pings", () => {
    assert.equal(line("mac"), GUEST_MAC, why());
    assert.equal(line("eth0-driver"), "virtio_net", why());
    assert.equal(line("ping"), "3", why());
  });

  it("virtio-vsock: a guest AF_VSOCK connection to host port 5678 reaches the listener at PATH_5678 and echoes", () => {
    assert.equal(line("vsock-local-cid"), String(GUEST_CID), why());
    assert.equal(line("host-served"), "hello from debian", why());
    assert.equal(line("vsock-got"), "host-echo:hello from debian", why());
  });
});
