/**
 * End-to-end: Kata Containers' Go runtime (src/runtime/virtcontainers/fc.go,
 * facts only) against flint's `firecracker` executable with real Linux, one
 * level down in the nested harness: `firecracker --version` passes Kata's
 * minimum-version check; Kata's config file (its rootfs image as a read-only
 * drive that is not the root device, with root=/dev/vda1 and Kata's other
 * kernel parameters; eight empty placeholder drives; the vsock with vsock_id
 * "root"; logger and metrics on FIFOs) is started with `firecracker
 * --api-sock S --config-file C`; GET / is polled until "Running"; the vsock's
 * socket is chmod'ed; a container disk is attached with PATCH
 * /drives/drive_0 and the guest must read it (a config-change interrupt tells
 * it the new size); the placeholder is patched back; SIGTERM ends flint.
 * Kata's debug mode is used, which puts the guest console on ttyS0.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { buildKernel } from "../guest/kernel-build.js";
import { e2eValue, readTextIfAny } from "../harness/e2e-report.js";
import { buildSbinInitRootfs } from "../harness/guest-disks.js";
import { kataGuestInit } from "../harness/guest-scripts.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";
import { installFirecrackerBinary } from "../vmm/testing/client-flows.js";

/** What the container disk holds at its start, for the guest to read back. */
const CONTAINER_MARKER = "kata-container-1";

/** /sbin/init on Kata's (read-only, partitioned) rootfs image. */
const GUEST_INIT = kataGuestInit(CONTAINER_MARKER.length);

/** Runs inside the nested VM: Kata's Go runtime, step by step. */
const CLIENT = `
import { execFileSync, spawnSync } from "node:child_process";
import { appendFileSync, chmodSync, existsSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
const [flowsUrl, bin, kernel, rootfs, containerDisk, work, report, consoleOut] = process.argv.slice(2);
const { ClientSession, pollUntil, startVmm, waitExit, waitForBoot, clientEnv } = await import(flowsUrl);
const say = (k, v) => appendFileSync(report, "flint-e2e: " + k + "=" + v + "\\n");
let vmm;
try {
  // getVersionNumber + checkVersion.
  const v = spawnSync(bin, ["--version"], { encoding: "utf8", env: clientEnv() });
  say("version_word", (v.stdout.split("\\n")[0].split(" ")[1] ?? "").replace(/^v/, ""));
  // fcListenToFifo: the FIFOs, read from before the config is written.
  const logFifo = join(work, "logs.fifo"), metricsFifo = join(work, "metrics.fifo");
  execFileSync("mkfifo", [logFifo, metricsFifo]);
  const readers = [logFifo, metricsFifo].map((f) => startVmm("cat", [f], { stdout: "pipe", stderr: "ignore" }));
  // createDiskPool: eight empty placeholders.
  const drives = [{ drive_id: "rootfs", is_read_only: true, is_root_device: false, path_on_host: rootfs }];
  for (let i = 0; i < 8; i++) {
    const p = join(work, "drive_" + i);
    writeFileSync(p, "");
    drives.push({ drive_id: "drive_" + i, is_read_only: false, is_root_device: false, path_on_host: p });
  }
  const vsockPath = join(work, "kata.hvsock");
  const config = {
    "boot-source": { boot_args: "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on console=ttyS0", kernel_image_path: kernel },
    "machine-config": { mem_size_mib: 256, smt: false, vcpu_count: 2 },
    "vsock": { guest_cid: 3, uds_path: vsockPath, vsock_id: "root" },
    "logger": { level: "Debug", log_path: logFifo },
    "metrics": { metrics_path: metricsFifo },
    drives,
  };
  const cfg = join(work, "fcConfig.json");
  writeFileSync(cfg, JSON.stringify(config, null, "\\t"));
  const sock = join(work, "firecracker.socket");
  vmm = startVmm(bin, ["--api-sock", sock, "--config-file", cfg], { stdout: "pipe", stderr: "pipe" });
  const s = new ClientSession(sock, "go-swagger");
  const running = await pollUntil(vmm, 10, 120000, async () => existsSync(sock) && (await s.probe("GET", "/")).json?.state === "Running");
  say("running", running ? 1 : 0);
  say("vsock_socket", existsSync(vsockPath) && statSync(vsockPath).isSocket() ? 1 : 0);
  if (existsSync(vsockPath)) chmodSync(vsockPath, 0o640);
  // The agent would say the guest is up; here its console does.
  await waitForBoot(vmm, "flint-e2e: ready=1", say, { limitMs: 300000 });
  const attach = await s.call("PATCH", "/drives/drive_0", { drive_id: "drive_0", path_on_host: containerDisk });
  // Kata goes on to the agent only once the PATCH was taken; waiting on a refused one would find nothing.
  if (attach.status === 204) await pollUntil(vmm, 100, 90000, async () => vmm.stdout().includes("flint-e2e: container_disk="));
  await s.call("PATCH", "/drives/drive_0", { drive_id: "drive_0", path_on_host: join(work, "drive_0") });
  say("refused", JSON.stringify(s.refused()));
  s.close();
  // fcEnd: SIGTERM, then up to 15 s.
  vmm.child.kill("SIGTERM");
  const end = await waitExit(vmm, 15000);
  say("flint_exit", end ? (end.code ?? end.signal) : "none");
  if (!end) vmm.child.kill("SIGKILL");
  for (const r of readers) r.child.kill("SIGKILL");
} catch (e) {
  say("client_error", JSON.stringify(e.message));
  vmm?.child.kill("SIGKILL");
}
if (vmm) {
  await waitExit(vmm, 10000);
  writeFileSync(consoleOut, vmm.stdout());
  say("flint_stderr", JSON.stringify(vmm.stderr().trim().slice(-800)));
}
process.exit(0);
`;

describe("Kata Containers' Go runtime drives flint with real Linux: config file, Running, container disk by PATCH /drives, SIGTERM (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-kata-"));
  let out = "";
  let report = "";
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    const rootfs = join(share, "kata-rootfs.img");
    buildSbinInitRootfs(rootfs, GUEST_INIT, { partitioned: true });
    const containerDisk = join(share, "container.img");
    writeFileSync(containerDisk, Buffer.concat([Buffer.from(CONTAINER_MARKER), Buffer.alloc((1 << 20) - CONTAINER_MARKER.length)]));
    const bin = installFirecrackerBinary(join(share, "bin"));
    const client = join(share, "client.mjs");
    writeFileSync(client, CLIENT);
    const outFile = join(share, "console.txt"), reportFile = join(share, "report.txt");
    const flows = new URL("../vmm/testing/client-flows.js", import.meta.url).href;
    // Sockets and FIFOs on the nested VM's tmpfs (the share is 9p).
    const command = [
      "mkdir -p /dev/shm/kata",
      `timeout 500 ${q(process.execPath)} ${q(client)} ${q(flows)} ${q(bin)} ${q(kernel.vmlinux)} ${q(rootfs)} ${q(containerDisk)} /dev/shm/kata ${q(reportFile)} ${q(outFile)} </dev/null >>${q(reportFile)} 2>&1`,
    ].join(" && ");
    const retryAfterTimeout = () => { for (const f of [outFile, reportFile]) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 14 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: [outFile, reportFile] });
    out = readTextIfAny(outFile);
    report = readTextIfAny(reportFile);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => `${describeNestedRun(nested)}\n--- client report ---\n${report}\n--- console ---\n${out.slice(-2500)}\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const value = (key: string) => e2eValue(key, report, out);

  it("`firecracker --version` passes Kata's check, and the config file's VM reaches Running with its vsock socket", () => {
    assert.equal(value("client_error"), undefined, why());
    const [major, minor, patch] = (value("version_word") ?? "").split(".").map(Number);
    assert.ok(major! > 0 || minor! > 21 || (minor === 21 && patch! >= 1), why());
    assert.equal(value("running"), "1", why());
    assert.equal(value("vsock_socket"), "1", why());
  });

  it("the guest boots from partition 1 of the rootfs drive, read-only, and sees the eight empty placeholders and the vsock", () => {
    assert.match(value("root_mount") ?? "", /^\/dev\/root \/ ext4 ro[, ]/, why());
    assert.equal(value("disks"), "9", why());
    assert.equal(value("placeholder_size"), "0", why());
    assert.equal(value("vsock_driver"), "1", why());
  });

  it("a container disk attached with PATCH /drives/drive_0 is read by the guest (its new size comes with a config-change interrupt)",
    () => {
      assert.equal(value("refused"), "[]", why());
      assert.equal(value("container_disk"), CONTAINER_MARKER, why());
    });

  it("Kata's stop (SIGTERM, then up to 15 s) ends flint", () => {
    assert.ok(["143", "SIGTERM"].includes(value("flint_exit") ?? ""), why());
  });
});
