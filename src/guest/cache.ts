/**
 * The artifact cache: slow-to-make guest artifacts (kernels, unpacked Debian
 * packages, extracted sources) live outside the checkout, in
 * `FLINT_CACHE_DIR` (default `$XDG_CACHE_HOME/flint`, else `~/.cache/flint`),
 * in entries named after a key derived from all of their inputs.
 *
 * An entry is filled in a temporary sibling directory and renamed into place
 * only when complete, so an interrupted build never looks cached. The same
 * rules as scripts/kernel-source.mjs, which shares the directory.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/** How often a process waiting for another one's fill checks again. */
const LOCK_POLL_MS = 500;
/** A lock without an owner pid this old is left over from a crash. */
const LOCK_STALE_MS = 60_000;

/** Why a cache entry could not be made. */
export class CacheError extends Error {
  readonly code: "ECACHENAME" | "ECACHEFILL";
  constructor(code: CacheError["code"], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CacheError";
    this.code = code;
  }
}

/** The cache root directory (created if missing). */
export function cacheDir(): string {
  const dir =
    process.env.FLINT_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "flint");
  mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * A short hex key (16 hex digits of sha256) over the given inputs, in order.
 * Each part is length-prefixed so ["ab", "c"] and ["a", "bc"] differ.
 */
export function cacheKey(parts: readonly (string | Uint8Array)[]): string {
  const hash = createHash("sha256");
  for (const part of parts) {
    const bytes = typeof part === "string" ? Buffer.from(part, "utf8") : part;
    hash.update(`${bytes.byteLength}:`);
    hash.update(bytes);
  }
  return hash.digest("hex").slice(0, 16);
}

/** The path of the cache entry `name` (which may not exist yet). */
export function cachePath(name: string): string {
  if (name === "" || name.includes("/") || name.startsWith(".")) {
    throw new CacheError("ECACHENAME", `Cannot use cache entry '${name}': names are single, non-hidden path components`);
  }
  return join(cacheDir(), name);
}

/** True if the lock directory belongs to a live process (or is too fresh to judge). */
function lockIsHeld(lock: string): boolean {
  let pid = Number.NaN;
  try {
    pid = Number.parseInt(readFileSync(join(lock, "pid"), "utf8"), 10);
  } catch {
    // Not written yet, or the lock just went away.
  }
  if (Number.isInteger(pid) && pid > 0) {
    try {
      process.kill(pid, 0);
      return true;
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === "EPERM";
    }
  }
  try {
    return Date.now() - statSync(lock).mtimeMs < LOCK_STALE_MS;
  } catch {
    return false;
  }
}

/**
 * Takes the fill lock of `dest` (a `<dest>.lock` directory holding our pid),
 * waiting while another live process holds it. Returns false without the
 * lock if `dest` appeared meanwhile.
 */
async function acquireLock(dest: string, onWait?: () => void): Promise<boolean> {
  const lock = `${dest}.lock`;
  let waited = false;
  for (;;) {
    if (existsSync(dest)) return false;
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, "pid"), `${process.pid}\n`);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    if (!lockIsHeld(lock)) {
      rmSync(lock, { recursive: true, force: true });
      continue;
    }
    if (!waited) onWait?.();
    waited = true;
    await sleep(LOCK_POLL_MS);
  }
}

/**
 * Returns the directory of cache entry `name`, filling it first with `fill`
 * if it does not exist. `fill` receives an empty temporary directory next to
 * the entry and must put everything into it; on success it is renamed to the
 * entry, on failure it is removed and the error is passed on. One process
 * fills an entry at a time (a `<name>.lock` directory); others wait for it,
 * calling `onWait` once, and then use its result.
 */
export async function cachedDirectory(
  name: string,
  fill: (tmpDir: string) => Promise<void>,
  onWait?: () => void,
): Promise<string> {
  const dest = cachePath(name);
  if (existsSync(dest)) return dest;
  if (!(await acquireLock(dest, onWait))) return dest;
  try {
    await fillEntry(dest, fill);
  } finally {
    rmSync(`${dest}.lock`, { recursive: true, force: true });
  }
  return dest;
}

async function fillEntry(dest: string, fill: (tmpDir: string) => Promise<void>): Promise<void> {
  const tmp = `${dest}.tmp-${process.pid}-${Date.now()}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    await fill(tmp);
  } catch (error) {
    rmSync(tmp, { recursive: true, force: true });
    throw error;
  }
  try {
    renameSync(tmp, dest);
  } catch (error) {
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(dest)) {
      throw new CacheError("ECACHEFILL", `Cannot store cache entry ${dest}: ${(error as Error).message}`, { cause: error });
    }
  }
}
