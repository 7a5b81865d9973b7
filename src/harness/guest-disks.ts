/**
 * Disk images for end-to-end guests (src/e2e/): ext4 images made with
 * mkfs.ext4 -d (e2fsprogs) from a staging folder, so no loop mount and no
 * root are needed on the host.
 */
import { execFileSync } from "node:child_process";
import { closeSync, copyFileSync, mkdirSync, openSync, rmSync, symlinkSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { HOST_BUSYBOX } from "../guest/initramfs.js";

/** mkfs.ext4 `image` (created or overwritten) of `size` (mkfs's notation, e.g. "64M"), labelled `label`, holding what is in `dir`. */
export function mkfsExt4(image: string, dir: string, o: { label: string; size: string }): void {
  execFileSync("mkfs.ext4", ["-q", "-F", "-L", o.label, "-d", dir, image, o.size]);
}

/** Writes `files` (name → text) into `dir` (made if missing), then mkfsExt4 over it. */
export function buildExt4Image(image: string, dir: string, files: Record<string, string>, o: { label: string; size: string }): void {
  mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  mkfsExt4(image, dir, o);
}

/**
 * Stages a busybox root in `root`: `dirs` made empty, the host's busybox
 * with a link per applet in /bin, `init` at `initPath` (mode 755), and with
 * `console` a /dev/console node (the kernel opens it for init before
 * anything is mounted; mknod needs root).
 */
export function stageBusyboxRoot(root: string, init: string, o: { dirs: readonly string[]; initPath: string; console?: boolean }): void {
  for (const d of ["bin", ...o.dirs]) mkdirSync(join(root, d), { recursive: true });
  copyFileSync(HOST_BUSYBOX, join(root, "bin/busybox"));
  execFileSync("chmod", ["755", join(root, "bin/busybox")]);
  for (const applet of execFileSync(HOST_BUSYBOX, ["--list"], { encoding: "utf8" }).split("\n").map((a) => a.trim()).filter(Boolean)) {
    if (applet !== "busybox") symlinkSync("busybox", join(root, "bin", applet));
  }
  mkdirSync(join(root, o.initPath, ".."), { recursive: true });
  writeFileSync(join(root, o.initPath), init, { mode: 0o755 });
  if (o.console) execFileSync("mknod", [join(root, "dev", "console"), "c", "5", "1"]);
}

/**
 * A 64 MiB ext4 root image labelled flintroot: `dirs` made empty, the host's
 * /bin/busybox with a link per applet in /bin, and `init` as /init (mode 755).
 * It is staged in `work`/rootfs.
 */
export function buildBusyboxRootfs(work: string, image: string, init: string, dirs: readonly string[]): void {
  const root = join(work, "rootfs");
  stageBusyboxRoot(root, init, { dirs, initPath: "init" });
  mkfsExt4(image, root, { label: "flintroot", size: "64M" });
}

/** Where a partitioning tool places the first partition: 1 MiB into the disk. */
const PARTITION_OFFSET = 1 << 20;
/** The file system of a {@link buildSbinInitRootfs} image. */
const SBIN_INIT_FS_BYTES = 32 << 20;

/**
 * A root image booted the way Firecracker's clients boot theirs: a 32 MiB
 * ext4 file system labelled flint-root holding static busybox, its applet
 * links, /dev/console, empty /proc, /sys and /tmp, and `init` as /sbin/init
 * (the kernel's default init, so no init= is needed). It is staged next to
 * `image` and written there.
 *
 * With `partitioned`, the image is a disk as Kata's rootfs images are (booted
 * with root=/dev/vda1): an MBR with one Linux partition (type 0x83) at 1 MiB
 * holding the file system. Without, the file system is the whole image (root=/dev/vda).
 */
export function buildSbinInitRootfs(image: string, init: string, o: { partitioned: boolean }): void {
  const tree = `${image}.tree`;
  stageBusyboxRoot(tree, init, { dirs: ["sbin", "dev", "proc", "sys", "tmp"], initPath: "sbin/init", console: true });
  const offset = o.partitioned ? PARTITION_OFFSET : 0;
  writeFileSync(image, Buffer.alloc(0));
  execFileSync("mkfs.ext4", ["-q", "-F", "-L", "flint-root", "-E", `offset=${offset}`, "-d", tree, image, `${SBIN_INIT_FS_BYTES / 1024}k`]);
  rmSync(tree, { recursive: true, force: true });
  if (!o.partitioned) return;
  // The MBR (sector 0): one partition entry at 0x1be (type, then LBA start and sector count), signature 0x55aa.
  const mbr = Buffer.alloc(512);
  mbr[0x1be + 4] = 0x83;
  mbr.writeUInt32LE(PARTITION_OFFSET / 512, 0x1be + 8);
  mbr.writeUInt32LE(SBIN_INIT_FS_BYTES / 512, 0x1be + 12);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  const fd = openSync(image, "r+");
  writeSync(fd, mbr, 0, 512, 0);
  closeSync(fd);
}
