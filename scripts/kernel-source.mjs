// Access to Debian's linux-source-6.1 tarball, with extracted files cached
// outside the checkout (FLINT_CACHE_DIR, default ~/.cache/flint), keyed by the
// tarball's identity and the requested file list.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

export const KERNEL_TARBALL = process.env.FLINT_KERNEL_TARBALL ?? "/usr/src/linux-source-6.1.tar.xz";
export const KERNEL_TOPDIR = "linux-source-6.1";

export function cacheDir() {
  const dir = process.env.FLINT_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "flint");
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** A short key for the tarball: its size and modification time. */
export function tarballKey() {
  if (!existsSync(KERNEL_TARBALL)) {
    throw new Error(`Cannot read kernel source: ${KERNEL_TARBALL} is missing (apt-get install linux-source-6.1)`);
  }
  const st = statSync(KERNEL_TARBALL);
  return `${st.size}-${Math.floor(st.mtimeMs)}`;
}

/**
 * Extracts the given paths (relative to the source top directory; shell
 * wildcards allowed) once, and returns the directory that holds them.
 */
export function kernelSourceFiles(paths) {
  const key = createHash("sha256").update(tarballKey()).update(paths.join("\n")).digest("hex").slice(0, 16);
  const dest = join(cacheDir(), `kernel-headers-${key}`);
  if (existsSync(join(dest, ".complete"))) return join(dest, KERNEL_TOPDIR);
  const tmp = `${dest}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  execFileSync("tar", ["-xJf", KERNEL_TARBALL, "-C", tmp, "--wildcards", ...paths.map((p) => `${KERNEL_TOPDIR}/${p}`)], {
    stdio: ["ignore", "inherit", "inherit"],
  });
  execFileSync("touch", [join(tmp, ".complete")]);
  rmSync(dest, { recursive: true, force: true });
  renameSync(tmp, dest);
  return join(dest, KERNEL_TOPDIR);
}
