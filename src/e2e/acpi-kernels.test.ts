/**
 * End-to-end: a guest kernel built with ACPI and one built without
 * (CONFIG_ACPI=n, as many microVM kernels are) each find and use every flint
 * virtio device with flint's defaults, no flag:
 *   flint run --disk data.ext4 --rng --balloon 0 --vsock cid=3,uds=PATH --net tap=tap0,mac=...
 * flint gives both the same machine (ACPI tables on). The kernel with ACPI
 * binds the devices the DSDT lists (LNRO0005); the kernel without ACPI binds
 * the ones the command line lists (virtio_mmio.device=..., at each device's
 * second window). See src/devices/virtio/virtio-set.ts for what Linux does
 * with each announcement.
 *
 * One outer (nested harness) boot runs both VMs, one after the other. Inside
 * it the test creates tap0 (172.16.0.1/24) and a Node helper that echoes at
 * PATH_5678 for each VM; the host's own network is never touched. Each guest
 * mounts its ext4 disk and writes a file (checked in the host image after the
 * run), reads /dev/hwrng, checks the balloon driver bound, pings tap0 and
 * echoes over AF_VSOCK; its kernel log must hold no warning, oops or failed
 * probe, and every kick must reach its device through the ioeventfd.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { DEFAULT_CMDLINE } from "../cli/defaults.js";
import { buildInitramfs, parseGuestReport } from "../guest/initramfs.js";
import { buildKernel, type KernelVariant } from "../guest/kernel-build.js";
import { compileGuestProgram } from "../harness/guest-program.js";
import { e2eValue, readTextIfAny } from "../harness/e2e-report.js";
import { E2E_GUEST_NET, ethUpSh, HWRNG_REPORT_SH, initPrologue, vsockConnectC } from "../harness/guest-scripts.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

const { mac: GUEST_MAC, cid: GUEST_CID, hostPort: HOST_PORT, hostIp: HOST_IP, guestIp: GUEST_IP } = E2E_GUEST_NET;
const SEEDED_TEXT = "seeded by the host";

/** The two kernels, by the name their files and report lines use. */
const KERNELS: readonly { name: string; variant: KernelVariant; acpi: "on" | "off" }[] = [
  { name: "acpi", variant: "default", acpi: "on" },
  { name: "noacpi", variant: "no-acpi", acpi: "off" },
];

/** virtio device ID (virtio 1.2 §5) → the Linux driver that must bind it. */
const DRIVERS: Readonly<Record<string, string>> = {
  "0x0002": "virtio_blk", "0x0001": "virtio_net", "0x0004": "virtio_rng", "0x0005": "virtio_balloon",
  "0x0013": "vmw_vsock_virtio_transport",
};

/** Kernel log lines that mean something went wrong in the guest (an extended regular expression for grep -E too). */
const KERNEL_TROUBLE = "WARNING:|BUG:|Call Trace|probe of .* failed";

/** The trouble lines among `lines`. */
function kernelTrouble(lines: readonly string[]): string[] {
  return lines.filter((l) => new RegExp(KERNEL_TROUBLE).test(l));
}

/** `vsock-connect CID PORT MESSAGE`: sends a line, prints the line that comes back. */
const GUEST_VSOCK_C = vsockConnectC();

/** The guest's /init; its first argument (from the command line) names the kernel. */
const GUEST_INIT = `${initPrologue()}echo "flint-guest: booted"
name=$(sed -n 's/.*flint_e2e_name=\\([a-z]*\\).*/\\1/p' /proc/cmdline)
if [ -d /sys/firmware/acpi/tables ]; then echo "flint-e2e: acpi=on"; else echo "flint-e2e: acpi=off"; fi
echo "flint-e2e: virtio-devices=$(ls /sys/bus/virtio/devices | wc -l)"
# Each device: its driver, and the platform device it hangs from (LNRO0005:NN from the DSDT, virtio-mmio.N from the command line).
for d in /sys/bus/virtio/devices/virtio*; do
  echo "flint-e2e: dev-$(cat $d/device)=$(basename "$(readlink $d/driver)") $(basename "$(dirname "$(readlink -f $d)")")"
done
grep -h virtio /proc/iomem | sed 's/^ */flint-e2e: iomem=/'

# virtio-blk
mkdir -p /mnt/disk
if mount -t ext4 /dev/vda /mnt/disk; then echo "flint-e2e: mount=ok"; else echo "flint-e2e: mount=failed"; fi
echo "flint-e2e: seeded=$(cat /mnt/disk/seeded.txt)"
echo "written by the $name kernel" >/mnt/disk/guest-wrote.txt && sync && echo "flint-e2e: synced=ok"
umount /mnt/disk && echo "flint-e2e: umount=ok"

${HWRNG_REPORT_SH}
# virtio-net
${ethUpSh(GUEST_IP)}ping -c 3 -W 10 ${HOST_IP} >/tmp/ping.txt 2>&1
echo "flint-e2e: ping=$(grep -c 'bytes from' /tmp/ping.txt)"

# virtio-vsock
/bin/vsock-connect 2 ${HOST_PORT} "hello from $name" || echo "flint-e2e: vsock-got=connect failed ($?)"

# The kernel log at any level (the console shows warnings and worse only).
dmesg | grep -E "virtio|${KERNEL_TROUBLE}" | sed 's/^/flint-e2e: dmesg=/'
echo "flint-e2e: end=reached"
exec </dev/null >/dev/null 2>&1
# reboot=k: the i8042 reset works with and without ACPI (a kernel without ACPI cannot power off).
reboot -f
`;

/** Inside the outer VM: echoes one line per connection at each PATH_5678 given. Reports to its own file. */
const HOST_HELPER = `
import { appendFileSync } from "node:fs";
import net from "node:net";
const [report, ...paths] = process.argv.slice(2);
const say = (k, v) => appendFileSync(report, "flint-e2e: " + k + "=" + v + "\\n");
for (const path of paths) {
  net.createServer((s) => {
    let buf = "";
    s.on("data", (d) => {
      buf += d;
      if (buf.includes("\\n")) { say("host-served", buf.trim()); s.end("host-echo:" + buf); }
    });
    s.on("error", (e) => say("host-error", e.message));
  }).listen(path, () => say("host-listening", path));
}
`;

/** What one VM's run left behind. */
interface Run {
  out: string;
  exitCode: string;
  disk: string;
}

describe("kernels with and without ACPI find every flint virtio device, no flag (nested harness)", { timeout: 50 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-acpi-"));
  const runs = new Map<string, Run>();
  let hostOut = "";
  let nested: NestedResult | undefined;

  before(async () => {
    const kernels = new Map<string, string>();
    for (const k of KERNELS) kernels.set(k.name, (await buildKernel({ variant: k.variant })).vmlinux);

    const program = compileGuestProgram(share, "vsock-connect", GUEST_VSOCK_C);
    const initrd = join(share, "initramfs.cpio.gz");
    writeFileSync(initrd, buildInitramfs({ init: GUEST_INIT, files: [{ path: "/bin/vsock-connect", hostPath: program, mode: 0o755 }] }));
    const seed = join(share, "seed");
    mkdirSync(seed);
    writeFileSync(join(seed, "seeded.txt"), `${SEEDED_TEXT}\n`);

    const helper = join(share, "host-helper.mjs");
    writeFileSync(helper, HOST_HELPER);
    const hostFile = join(share, "host.txt");
    // Unix sockets need a local file system: the outer VM's /dev/shm is a tmpfs (the share is 9p).
    const uds = (name: string) => `/dev/shm/flint-acpi-e2e/${name}/v.sock`;
    const lines = [
      "set -e",
      "ip tuntap add dev tap0 mode tap",
      `ip addr add ${HOST_IP}/24 dev tap0`,
      "ip link set tap0 up",
      ...KERNELS.map((k) => `mkdir -p ${q(`/dev/shm/flint-acpi-e2e/${k.name}`)}`),
      `${q(process.execPath)} ${q(helper)} ${q(hostFile)} ${KERNELS.map((k) => q(`${uds(k.name)}_${HOST_PORT}`)).join(" ")} & helper=$!`,
      "set +e",
      // Node starts slowly under TCG: wait for the listeners before a guest can connect.
      `n=0; until [ "$(grep -c host-listening ${q(hostFile)} 2>/dev/null)" = ${KERNELS.length} ] || [ $n -ge 150 ]; do sleep 0.2; n=$((n+1)); done`,
    ];
    for (const k of KERNELS) {
      const disk = join(share, `${k.name}.ext4`);
      execFileSync("mkfs.ext4", ["-q", "-F", "-d", seed, disk, "32M"]);
      const out = join(share, `${k.name}.out`);
      // loglevel=5: the console shows kernel warnings and errors, not the info lines.
      const cmdline = `${DEFAULT_CMDLINE} loglevel=5 rdinit=/init flint_e2e_name=${k.name}`;
      const args = ["run", "--kernel", kernels.get(k.name)!, "--initrd", initrd, "--cmdline", cmdline, "--memory", "256", "--cpus", "2",
        "--disk", disk, "--rng", "--balloon", "0", "--vsock", `cid=${GUEST_CID},uds=${uds(k.name)}`, "--net", `tap=tap0,mac=${GUEST_MAC}`];
      // FLINT_DEBUG=1: flint prints its per-device counters at the end (kicks through the ioeventfd or not).
      lines.push(`FLINT_DEBUG=1 timeout 300 ${q(process.execPath)} ${q(CLI)} ${args.map(q).join(" ")} </dev/null >${q(out)} 2>&1; echo $? >${q(out)}.rc`);
      runs.set(k.name, { out, exitCode: `${out}.rc`, disk });
    }
    lines.push("kill $helper 2>/dev/null; wait");
    // A frozen TCG outer VM (see README, Benchmarks) is retried once; a flint hang ends at its own timeout.
    const retryAfterTimeout = () => {
      for (const r of runs.values()) for (const f of [r.out, r.exitCode]) rmSync(f, { force: true });
      rmSync(hostFile, { force: true });
    };
    nested = await runNested({ command: lines.join("\n"), timeoutMs: 15 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout,
      retryOnGuestCrash: [...runs.values()].map((r) => r.out) });
    for (const r of runs.values()) {
      r.out = readTextIfAny(r.out);
      r.exitCode = readTextIfAny(r.exitCode).trim();
    }
    hostOut = readTextIfAny(hostFile);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  for (const k of KERNELS) {
    const run = () => runs.get(k.name)!;
    const why = () =>
      `${describeNestedRun(nested)}; flint's exit status: ${run().exitCode || "not recorded"}\n${run().out.slice(-4000)}\n--- host helper ---\n${hostOut}\n--- nested output ---\n${nested?.output.slice(-1500)}` +
      `\n--- outer serial tail (nested run ${nested?.durationMs} ms) ---\n${nested?.serial.slice(-1500)}`;
    const line = (key: string) => e2eValue(key, run().out);
    const label = k.acpi === "on" ? "with ACPI" : "without ACPI (CONFIG_ACPI=n)";

    it(`${label}: boots, finds all five devices (${k.acpi === "on" ? "from the DSDT" : "from the command line"}) and flint exits 0`, () => {
      assert.equal(nested?.timedOut, false, `nested harness timed out\n${why()}`);
      assert.equal(run().exitCode, "0", why());
      assert.ok(parseGuestReport(run().out).booted, why());
      assert.equal(line("acpi"), k.acpi, why());
      assert.equal(line("virtio-devices"), "5", why());
      for (const [id, driver] of Object.entries(DRIVERS)) {
        const [bound, parent] = (line(`dev-${id}`) ?? "").split(" ");
        assert.equal(bound, driver, `device ${id}\n${why()}`);
        assert.match(parent ?? "", k.acpi === "on" ? /^LNRO0005:\d+$/ : /^virtio-mmio\.\d+$/, `device ${id}\n${why()}`);
      }
      assert.equal(line("end"), "reached", why());
    });

    it(`${label}: virtio-blk, the guest mounts its ext4 disk and what it syncs is in the host image`, () => {
      assert.equal(line("mount"), "ok", why());
      assert.equal(line("seeded"), SEEDED_TEXT, why());
      assert.equal(line("synced"), "ok", why());
      assert.equal(line("umount"), "ok", why());
      const text = execFileSync("debugfs", ["-R", "cat /guest-wrote.txt", run().disk], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
      assert.equal(text, `written by the ${k.name} kernel\n`);
      execFileSync("e2fsck", ["-fn", run().disk], { stdio: "ignore" }); // throws if the file system is inconsistent
    });

    it(`${label}: virtio-rng gives bytes, virtio-balloon's driver binds, virtio-net pings, virtio-vsock echoes`, () => {
      assert.match(line("rng-current") ?? "", /^virtio_rng\.\d+$/, why());
      assert.match(line("hwrng") ?? "", /^[0-9a-f]{64}$/, why());
      assert.notEqual(line("hwrng"), "0".repeat(64));
      assert.match(line("dev-0x0005") ?? "", /^virtio_balloon /, why());
      assert.equal(line("mac"), GUEST_MAC, why());
      assert.equal(line("ping"), "3", why());
      assert.equal(line("vsock-got"), `host-echo:hello from ${k.name}`, why());
      assert.ok(hostOut.includes(`host-served=hello from ${k.name}\n`), why());
    });

    it(`${label}: no kernel warning, oops or failed probe, and every kick went through the ioeventfd`, () => {
      const dmesg = [...run().out.matchAll(/^flint-e2e: dmesg=(.*)$/gm)].map((m) => m[1]!);
      assert.ok(dmesg.some((l) => /virtio/.test(l)), `the guest's kernel log was not reported\n${why()}`);
      assert.deepEqual(kernelTrouble(dmesg), [], why());
      const console = run().out.split("\n").filter((l) => !l.includes("flint-e2e:"));
      assert.deepEqual(kernelTrouble(console), [], why());
      const counters = /^flint: counters (.*)$/m.exec(run().out);
      assert.ok(counters, why());
      const virtio = (JSON.parse(counters[1]!) as { virtio: { name: string; kicks: number; userspaceNotifies: number; failures: string[] }[] }).virtio;
      assert.equal(virtio.length, 5);
      for (const d of virtio) {
        assert.deepEqual(d.failures, [], d.name);
        assert.equal(d.userspaceNotifies, 0, `${d.name}: a kick exited to userspace (no ioeventfd at the window the guest used)`);
      }
      assert.ok(virtio.every((d) => d.kicks > 0 || d.name.startsWith("virtio-balloon")), JSON.stringify(virtio));
    });
  }
});
