/**
 * End-to-end: disk faults reach the guest, not the monitor. Real Linux (flint's
 * minimal kernel) runs in flint in the nested harness with four virtio-blk
 * disks, set up inside the outer VM just before flint starts:
 *   vda  the ext4 root file system, a healthy image file on the share;
 *   vdb  a device-mapper `error` target: every read and write fails (EIO);
 *   vdc  an ext4 file system on a device-mapper `flakey` target that is always
 *        "down" with `error_writes` (over a loop device): reads work, writes fail;
 *   vdd  an ext4 image of 64 MiB, sparse, on an 8 MiB tmpfs: writes into its
 *        holes fail with ENOSPC once the tmpfs is full; reads keep working.
 * flint hands host errors to the guest as VIRTIO_BLK_S_IOERR (virtio 1.x
 * §5.2.6), so the guest's direct I/O (`dd iflag=direct`/`oflag=direct`, which
 * the guest's page cache cannot hide; `conv=fsync` for the FLUSH that
 * reports a write-back failure) fails and ext4 reports the errors (it reads
 * the flaky disk but refuses to mount it read-write, and stops writing to the
 * full one after its journal commit fails), while flint
 * keeps running, says on stderr which drive failed, and exits 0 when the
 * guest powers off; the root disk keeps working (what the guest writes after
 * the faults is in the host image, which e2fsck finds consistent).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { e2eValue, kernelTroubleLines, readTextIfAny } from "../harness/e2e-report.js";
import { buildBusyboxRootfs, buildExt4Image } from "../harness/guest-disks.js";
import { initPrologue } from "../harness/guest-scripts.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

/** Size of every disk but the root, in 512-byte sectors (64 MiB). */
const DISK_SECTORS = 131072;
/** Size of the tmpfs that holds the full disk's image: far less than the image. */
const FULL_FS_MIB = 8;
/** Scratch directory inside the outer VM (its /dev/shm is the writable tmpfs, see nested.ts). */
const SCRATCH = "/dev/shm/flint-disk-faults";
/** The full disk's image inside the outer VM, on an FULL_FS_MIB tmpfs. */
const FULL_DISK = `${SCRATCH}/full/full.ext4`;
/** What the host put on the flaky disk's file system; the guest reads it back. */
const FLAKY_TEXT = "readable on a disk whose writes fail";
/** What the guest writes on the root disk after the faults; the host finds it after power-off. */
const AFTER_TEXT = "written on the healthy disk after the faults";

/**
 * The guest's /init. `outcome` runs a command and prints ok or failed (and,
 * on the console, what the command said); `mode` prints a mount point's
 * first option (rw or ro). The root file system is
 * remounted read-only before power-off so the host sees it clean.
 */
const ROOT_INIT = `${initPrologue("/bin")}mount -t tmpfs tmpfs /tmp
mkdir -p /mnt/flaky /mnt/full
echo "flint-guest: booted"
say() { echo "flint-e2e: $1=$2"; }
outcome() { if "$@" >/tmp/outcome 2>&1; then echo ok; else echo failed; sed "s|^|flint-e2e-log: $1: |" /tmp/outcome >&2; fi; }
mode() { awk -v m="$1" '$2 == m { split($4, o, ","); print o[1] }' /proc/mounts; }
say disks "$(cd /sys/block && echo vd*)"

# vdb, the error target: every request fails.
say error-read "$(outcome dd if=/dev/vdb of=/dev/null bs=4096 count=1 iflag=direct)"
say error-write "$(outcome dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct conv=fsync)"

# vdc, flakey with error_writes: reads work, writes fail. Read-only, ext4 reads
# its files; read-write, it must write its superblock, which fails (6.1 then
# refuses the mount).
say flaky-raw-read "$(outcome dd if=/dev/vdc of=/dev/null bs=4096 count=16 iflag=direct)"
say flaky-raw-write "$(outcome dd if=/dev/zero of=/dev/vdc bs=4096 count=1 seek=8192 oflag=direct conv=fsync)"
say flaky-mount-ro "$(outcome mount -t ext4 -o ro /dev/vdc /mnt/flaky)"
say flaky-text "$(cat /mnt/flaky/hello.txt)"
umount /mnt/flaky
say flaky-mount-rw "$(outcome mount -t ext4 -o errors=remount-ro /dev/vdc /mnt/flaky)"

# vdd, on a full file system: reads work, writes into its holes fail.
say full-read "$(outcome dd if=/dev/vdd of=/dev/null bs=1M count=8 iflag=direct)"
say full-raw-write "$(outcome dd if=/dev/zero of=/dev/vdd bs=1M count=16 seek=48 oflag=direct conv=fsync)"
say full-mount "$(outcome mount -t ext4 -o errors=remount-ro /dev/vdd /mnt/full)"
say full-write "$(outcome dd if=/dev/zero of=/mnt/full/big bs=1M count=4 oflag=direct conv=fsync)"
sync
# The failed journal commit aborts the journal and ext4 stops all writes ("Remounting
# filesystem read-only"; 6.1 stable shuts the file system down without flagging the
# mount ro, so /proc/mounts still says rw): wait for the message (at most 60 s), write again.
n=0; until dmesg | grep -q "EXT4-fs (vdd): Remounting filesystem read-only" || [ $n -ge 60 ]; do sleep 1; n=$((n+1)); done
say full-write-after "$(outcome touch /mnt/full/after-abort)"

# vda is unaffected.
echo "${AFTER_TEXT}" > /after-faults.txt
say root-sync "$(outcome sync)"
say root-text "$(cat /after-faults.txt)"
say root-mode "$(mode /)"
say dmesg-bad "$(dmesg | grep -c -E 'WARNING:|BUG:')"
say dmesg-traces "$(dmesg | grep -c 'Call Trace')"
umount /mnt/flaky /mnt/full 2>/dev/null
mount -o remount,ro /
say done yes
poweroff -f
`;

describe("disk faults reach the guest, not the monitor (nested harness)", { timeout: 40 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-disk-faults-"));
  const rootfs = join(share, "rootfs.ext4");
  const flakyImage = join(share, "flaky.ext4");
  const fullImage = join(share, "full.ext4");
  const setupLog = join(share, "setup.log");
  const consoleFile = join(share, "flint.out");
  const stderrFile = join(share, "flint.err");
  let console_ = "";
  let stderr = "";
  let exitCode = -1;
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    buildBusyboxRootfs(share, rootfs, ROOT_INIT, ["bin", "proc", "sys", "dev", "tmp", "mnt"]);
    const ext4 = { size: `${(DISK_SECTORS * 512) >> 20}M` };
    buildExt4Image(flakyImage, join(share, "flaky-files"), { "hello.txt": `${FLAKY_TEXT}\n` }, { ...ext4, label: "flaky" });
    buildExt4Image(fullImage, join(share, "full-files"), {}, { ...ext4, label: "full" });
    // loglevel=5: the console shows warnings and errors (a `quiet` console would hide WARNING lines).
    const cmdline = "console=ttyS0 reboot=k panic=-1 pci=off loglevel=5 root=/dev/vda rw rootfstype=ext4 init=/init";
    const scratch = q(SCRATCH);
    const args = ["run", "--kernel", kernel.vmlinux, "--cmdline", cmdline, "--memory", "256", "--cpus", "2",
      "--disk", rootfs, "--disk", "/dev/mapper/flint-error", "--disk", "/dev/mapper/flint-flakey", "--disk", FULL_DISK];
    // Inside the outer VM (root, the host's tools through the chroot). No udev there:
    // libdevmapper makes the /dev/mapper nodes itself and dmsetup does not wait for udev.
    const command = `
set -u
export DM_DISABLE_UDEV=1
log=${q(setupLog)}
step() { if "$@" >>"$log" 2>&1; then :; else echo "flint-e2e: setup=failed: $*" >>"$log"; exit 1; fi; }
mkdir -p ${scratch}/full
step dmsetup create --noudevsync flint-error --table "0 ${DISK_SECTORS} error"
step cp ${q(flakyImage)} ${scratch}/flaky.ext4
loop=$(losetup -f --show ${scratch}/flaky.ext4) || { echo "flint-e2e: setup=failed: losetup" >>"$log"; exit 1; }
# flakey: up 0 s, down 1 s, so always down; error_writes fails writes and passes reads.
step dmsetup create --noudevsync flint-flakey --table "0 ${DISK_SECTORS} flakey $loop 0 0 1 1 error_writes"
step mount -t tmpfs -o size=${FULL_FS_MIB}m tmpfs ${scratch}/full
step cp --sparse=always ${q(fullImage)} ${scratch}/full/full.ext4
echo "flint-e2e: setup=ok" >>"$log"
timeout 480 ${q(process.execPath)} ${q(CLI)} ${args.map(q).join(" ")} </dev/null >${q(consoleFile)} 2>${q(stderrFile)}
echo "flint-e2e: flint-exit=$?" >>"$log"
echo "flint-e2e: full-fs-free=$(df -k ${scratch}/full | awk 'NR == 2 { print $4 }')" >>"$log"
dmsetup remove flint-flakey; dmsetup remove flint-error; losetup -d "$loop"; umount ${scratch}/full
`;
    const retryAfterTimeout = () => { for (const f of [consoleFile, stderrFile, setupLog]) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 15 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: [stderrFile] });
    console_ = readTextIfAny(consoleFile);
    stderr = readTextIfAny(stderrFile);
    exitCode = Number(e2eValue("flint-exit", readTextIfAny(setupLog)) ?? -1);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () =>
    `${describeNestedRun(nested)}; flint's exit status: ${exitCode < 0 ? "not recorded" : exitCode}\n--- setup ---\n${readTextIfAny(setupLog).slice(-2000)}\n--- flint stderr ---\n${stderr.slice(-2000)}\n` +
    `--- guest console ---\n${console_.slice(-4000)}\n--- outer output ---\n${nested?.output.slice(-1000)}\n` +
    `--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const line = (key: string) => e2eValue(key, console_);

  it("keeps running through the faults: the guest finishes its script, powers off, and flint exits 0", () => {
    assert.equal(e2eValue("setup", readTextIfAny(setupLog)), "ok", why());
    assert.ok(parseGuestReport(console_).booted, why());
    assert.equal(line("disks"), "vda vdb vdc vdd", why());
    assert.equal(line("done"), "yes", why());
    assert.equal(exitCode, 0, why());
  });

  it("fails every read and write of the error-target disk in the guest", () => {
    assert.equal(line("error-read"), "failed", why());
    assert.equal(line("error-write"), "failed", why());
  });

  it("lets the guest read the flaky disk but fails its writes: ext4 reads its files, then reports the failed superblock write", () => {
    assert.equal(line("flaky-raw-read"), "ok", why());
    assert.equal(line("flaky-raw-write"), "failed", why());
    assert.equal(line("flaky-mount-ro"), "ok", why());
    assert.equal(line("flaky-text"), FLAKY_TEXT, why());
    assert.equal(line("flaky-mount-rw"), "failed", why());
    assert.match(console_, /EXT4-fs \(vdc\): I\/O error while writing superblock/, why());
  });

  it("lets the guest read the disk on a full file system but fails writes into its holes", () => {
    assert.equal(line("full-read"), "ok", why());
    assert.equal(line("full-raw-write"), "failed", why());
    assert.equal(line("full-mount"), "ok", why());
    assert.equal(line("full-write"), "failed", why());
    assert.equal(line("full-write-after"), "failed", why());
    assert.match(console_, /EXT4-fs \(vdd\): Remounting filesystem read-only/, why());
    assert.equal(e2eValue("full-fs-free", readTextIfAny(setupLog)), "0", why());
  });

  it("keeps the healthy disk working: what the guest wrote after the faults is in the host image", () => {
    assert.equal(line("root-sync"), "ok", why());
    assert.equal(line("root-mode"), "rw", why());
    const text = execFileSync("debugfs", ["-R", "cat /after-faults.txt", rootfs], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    assert.equal(text, `${AFTER_TEXT}\n`);
    execFileSync("e2fsck", ["-fn", rootfs], { stdio: "ignore" }); // throws if the file system is inconsistent
  });

  it("tells the operator on stderr which drive failed, how, and that the guest was told", () => {
    const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const reported = (drive: string, errno: string) =>
      new RegExp(`^flint: host error in virtio-block@\\S+: drive '${escape(drive)}': .* failed \\(${errno}\\); the guest got VIRTIO_BLK_S_IOERR\r?$`, "m");
    assert.match(stderr, reported("/dev/mapper/flint-error", "EIO"), why());
    assert.match(stderr, reported("/dev/mapper/flint-flakey", "EIO"), why());
    assert.match(stderr, reported(FULL_DISK, "ENOSPC"), why());
    assert.doesNotMatch(stderr, new RegExp(`drive '${escape(rootfs)}'`), why());
    // Nothing else: no exception, no device failure.
    for (const l of stderr.split("\n").filter((l) => l.trim() !== "")) {
      assert.match(l, /^flint: (host error in virtio-block@|virtio-block@\S+: \d+ host errors in all)/, why());
    }
  });

  it("leaves no kernel warning, bug or call trace on the guest console", () => {
    assert.deepEqual(kernelTroubleLines(console_), [], why());
    assert.equal(line("dmesg-bad"), "0", why());
    assert.equal(line("dmesg-traces"), "0", why());
  });
});
