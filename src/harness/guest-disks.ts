/**
 * Disk images for end-to-end guests (src/e2e/): ext4 images made with
 * mkfs.ext4 -d (e2fsprogs) from a staging folder, so no loop mount and no
 * root are needed on the host.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
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
