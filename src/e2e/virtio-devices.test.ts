/**
 * End-to-end: real Linux uses flint's virtio devices, driven through the CLI
 * as a user would (`flint run --disk rootfs.ext4 --disk data.img,ro --rng`),
 * one level down in the nested harness. The root file system is a real ext4
 * image on virtio-blk; what the guest writes and syncs must be in the host
 * file after power-off, and the read-only disk must come back unchanged.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { e2eValue } from "../harness/e2e-report.js";
import { buildBusyboxRootfs } from "../harness/guest-disks.js";
import { initPrologue } from "../harness/guest-scripts.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

/** The root file system's /init: report, write a file, probe the other devices, power off. */
const ROOT_INIT = `${initPrologue("/bin")}echo "flint-guest: booted"
echo "flint-e2e: root=$(awk '$2 == "/" { print $1 " " $3 }' /proc/mounts)"
echo "written by the guest on virtio-blk" > /guest-wrote.txt
sync
echo "flint-e2e: vdb-ro=$(cat /sys/block/vdb/ro)"
if echo overwrite | dd of=/dev/vdb bs=512 count=1 conv=notrunc,fsync 2>/dev/null; then echo "flint-e2e: vdb-write=accepted"; else echo "flint-e2e: vdb-write=refused"; fi
echo "flint-e2e: vdb-head=$(head -c 20 /dev/vdb)"
echo "flint-e2e: hwrng=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \\n')"
poweroff -f
`;
describe("real Linux uses flint's virtio devices (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-virtio-"));
  const rootfs = join(share, "rootfs.ext4");
  const data = join(share, "data.img");
  const dataContent = Buffer.alloc(1 << 20, 0);
  dataContent.write("read-only data disk!", 0, "latin1");
  let out = "";
  let exitCode = -1;
  let nested: NestedResult;

  before(async () => {
    const kernel = await buildKernel();
    buildBusyboxRootfs(share, rootfs, ROOT_INIT, ["bin", "proc", "sys", "dev", "tmp"]);
    writeFileSync(data, dataContent);
    const outFile = join(share, "flint.out");
    const cmdline = "console=ttyS0 reboot=k panic=-1 pci=off quiet root=/dev/vda rw rootfstype=ext4 init=/init";
    const args = ["run", "--kernel", kernel.vmlinux, "--cmdline", cmdline, "--memory", "256", "--cpus", "2",
      "--disk", rootfs, "--disk", `${data},ro`, "--rng"];
    nested = await runNested({
      command: `timeout 300 ${q(process.execPath)} ${q(CLI)} ${args.map(q).join(" ")} </dev/null >${q(outFile)} 2>&1; echo $? >${q(outFile)}.rc`,
      timeoutMs: 12 * 60_000, shareDir: share, memoryMib: 2048, retryOnGuestCrash: [outFile],
      // The first attempt's guest may have written to the root file system: start the second from a fresh one.
      retryAfterTimeout: () => {
        for (const f of [outFile, `${outFile}.rc`, rootfs]) rmSync(f, { force: true });
        buildBusyboxRootfs(share, rootfs, ROOT_INIT, ["bin", "proc", "sys", "dev", "tmp"]);
      },
    });
    try {
      out = readFileSync(outFile, "utf8");
      exitCode = Number(readFileSync(`${outFile}.rc`, "utf8").trim());
    } catch {
      // asserted below
    }
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => `${describeNestedRun(nested)}; flint's exit status: ${exitCode < 0 ? "not recorded" : exitCode}\n${out.slice(-3000)}\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const line = (key: string) => e2eValue(key, out);

  it("boots with an ext4 root file system on virtio-blk and exits 0 on poweroff", () => {
    assert.equal(exitCode, 0, why());
    assert.ok(parseGuestReport(out).booted, why());
    assert.equal(line("root"), "/dev/root ext4", why());
  });

  it("keeps what the guest wrote and synced: the file is in the host image after power-off", () => {
    const text = execFileSync("debugfs", ["-R", "cat /guest-wrote.txt", rootfs], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    assert.equal(text, "written by the guest on virtio-blk\n");
    execFileSync("e2fsck", ["-fn", rootfs], { stdio: "ignore" }); // throws if the file system is inconsistent
  });

  it("presents the ,ro disk read-only: the guest cannot write it and the host file is unchanged", () => {
    assert.equal(line("vdb-ro"), "1", why());
    assert.equal(line("vdb-write"), "refused", why());
    assert.equal(line("vdb-head"), "read-only data disk!", why());
    const hash = (b: Buffer) => createHash("sha256").update(b).digest("hex");
    assert.equal(hash(readFileSync(data)), hash(dataContent));
  });

  it("gives the guest random bytes through virtio-rng (/dev/hwrng)", () => {
    const hex = line("hwrng") ?? "";
    assert.match(hex, /^[0-9a-f]{64}$/, why());
    assert.notEqual(hex, "0".repeat(64));
  });
});
