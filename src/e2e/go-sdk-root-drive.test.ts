/**
 * End-to-end: firecracker-go-sdk's Machine (the flow of src/vmm/testing/
 * go-sdk.ts: `firecracker --api-sock --id --no-seccomp`, waitForSocket,
 * PUT /machine-config, GET /machine-config, PUT /boot-source, PUT
 * /drives/root_drive with is_root_device, InstanceStart, then Wait) against
 * flint's `firecracker` executable, one level down in the nested harness,
 * booting real Linux from an ext4 root drive with no initrd. The guest's
 * /sbin/init reports how its root is mounted, writes a file to it and powers
 * off; flint must then exit 0 on its own (go-sdk's Wait returns), and the
 * file must be in the image afterwards.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { buildKernel } from "../guest/kernel-build.js";
import { e2eValue, readTextIfAny } from "../harness/e2e-report.js";
import { buildSbinInitRootfs } from "../harness/guest-disks.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";
import { installFirecrackerBinary } from "../vmm/testing/client-flows.js";

/** /sbin/init on the root drive. */
const GUEST_INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "flint-e2e: cmdline_root=$(grep -o 'root=[^ ]*' /proc/cmdline | tail -n 1)"
echo "flint-e2e: root_mount=$(grep ' / ' /proc/mounts | grep -v rootfs | tail -n 1 | cut -d ' ' -f 1-4)"
echo written-by-the-guest > /flint-e2e-wrote
sync
echo "flint-e2e: wrote=1"
poweroff -f
`;

/** Runs inside the nested VM: the go-sdk flow, then Wait() until the process ends. */
const CLIENT = `
import { appendFileSync, existsSync, writeFileSync } from "node:fs";
const [goSdkUrl, flowsUrl, bin, kernel, rootfs, work, report, consoleOut] = process.argv.slice(2);
const { goSdkStart } = await import(goSdkUrl);
const { waitExit } = await import(flowsUrl);
const say = (k, v) => appendFileSync(report, "flint-e2e: " + k + "=" + v + "\\n");
try {
  const m = await goSdkStart(bin, work, {
    vmid: "0f8e6c52-63b4-4f0e-8d0a-2a4f5b9c1d7e", kernelImagePath: kernel, kernelArgs: "console=ttyS0 reboot=k panic=1 pci=off",
    vcpuCount: 2, memSizeMib: 256, extraDrives: [], rootDrive: rootfs, startLimitMs: 120000,
  });
  say("refused", JSON.stringify(m.s.refused()));
  m.s.close();
  // Machine.Wait(): the guest powers off, the process ends on its own (hang catcher 300 s).
  const end = await waitExit(m.vmm, 300000);
  say("flint_exit", end ? (end.code ?? end.signal) : "none");
  if (!end) { m.vmm.child.kill("SIGKILL"); await waitExit(m.vmm, 10000); }
  say("socket_left", existsSync(m.sock) ? 1 : 0);
  say("flint_stderr", JSON.stringify(m.vmm.stderr().trim()));
  writeFileSync(consoleOut, m.vmm.stdout());
} catch (e) {
  say("client_error", JSON.stringify(e.message));
}
process.exit(0);
`;

describe("firecracker-go-sdk boots real Linux from a root drive on flint and the guest powers off (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-gosdk-"));
  let out = "";
  let report = "";
  let nested: NestedResult | undefined;
  let rootfs = "";

  before(async () => {
    const kernel = await buildKernel();
    rootfs = join(share, "rootfs.ext4");
    buildSbinInitRootfs(rootfs, GUEST_INIT, { partitioned: false });
    const bin = installFirecrackerBinary(join(share, "bin"));
    const client = join(share, "client.mjs");
    writeFileSync(client, CLIENT);
    const outFile = join(share, "console.txt"), reportFile = join(share, "report.txt");
    const goSdk = new URL("../vmm/testing/go-sdk.js", import.meta.url).href;
    const flows = new URL("../vmm/testing/client-flows.js", import.meta.url).href;
    // Sockets and the writable image on the nested VM's tmpfs (the share is 9p); the image is copied back to be read here.
    const command = [
      "mkdir -p /dev/shm/gosdk",
      `cp ${q(rootfs)} /dev/shm/gosdk/rootfs.ext4`,
      `timeout 400 ${q(process.execPath)} ${q(client)} ${q(goSdk)} ${q(flows)} ${q(bin)} ${q(kernel.vmlinux)} /dev/shm/gosdk/rootfs.ext4 /dev/shm/gosdk ${q(reportFile)} ${q(outFile)} </dev/null >>${q(reportFile)} 2>&1`,
      `cp /dev/shm/gosdk/rootfs.ext4 ${q(rootfs)}`,
    ].join(" && ");
    const retryAfterTimeout = () => { for (const f of [outFile, reportFile]) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 12 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: [outFile, reportFile] });
    out = readTextIfAny(outFile);
    report = readTextIfAny(reportFile);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => `${describeNestedRun(nested)}\n--- client report ---\n${report}\n--- console ---\n${out.slice(-2500)}\n--- share ---\n${readdirSync(share).join(" ")}\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const value = (key: string) => e2eValue(key, report, out);

  it("every call of the go-sdk flow up to InstanceStart is accepted", () => {
    assert.equal(value("client_error"), undefined, why());
    assert.equal(value("refused"), "[]", why());
  });

  it("the guest's root is the root drive, mounted read-write (root=/dev/vda rw appended as Firecracker does)", () => {
    assert.equal(value("cmdline_root"), "root=/dev/vda", why());
    assert.match(value("root_mount") ?? "", /^\/dev\/root \/ ext4 rw[, ]/, why());
  });

  it("the guest powers off, flint exits 0 (go-sdk's Wait returns) and removes its socket; the guest's write is in the image", (t) => {
    t.diagnostic(`flint's stderr: ${value("flint_stderr")}`);
    assert.equal(value("wrote"), "1", why());
    assert.equal(value("flint_exit"), "0", why());
    // A power-off, not a reset (flint names a reset on stderr; exit 0 either way).
    assert.doesNotMatch(value("flint_stderr") ?? "", /reset/, why());
    assert.equal(value("socket_left"), "0", why());
    const wrote = execFileSync("debugfs", ["-R", "cat /flint-e2e-wrote", rootfs], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    assert.equal(wrote, "written-by-the-guest\n", why());
  });
});
