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
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

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

/**
 * Returns the directory of cache entry `name`, filling it first with `fill`
 * if it does not exist. `fill` receives an empty temporary directory next to
 * the entry and must put everything into it; on success it is renamed to the
 * entry, on failure it is removed and the error is passed on. When two
 * processes fill the same entry at once, the first rename wins and the other
 * process's work is discarded.
 */
export async function cachedDirectory(name: string, fill: (tmpDir: string) => Promise<void>): Promise<string> {
  const dest = cachePath(name);
  if (existsSync(dest)) return dest;
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
  return dest;
}
