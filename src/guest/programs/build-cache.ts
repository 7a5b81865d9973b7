/**
 * Builds small native artifacts (the ring-3 guest programs' ELFs, the
 * benchmark's C ceiling) on demand with gcc, into the artifact cache outside
 * the checkout: `FLINT_CACHE_DIR` (default `$XDG_CACHE_HOME/flint`, else
 * `~/.cache/flint`), one directory per artifact named `<name>-<key>`, the
 * key a hash of every input (sources, generated headers, compiler
 * arguments). Same rules as scripts/kernel-source.mjs: an entry is filled in
 * a temporary sibling and renamed into place only when complete. Synchronous,
 * because a build takes well under a second and callers want a path.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cacheDir, cacheKey } from "../cache.js";
import { GuestProgramError } from "./program-error.js";

/**
 * The package root (this file is <root>/dist*\/guest/programs/build-cache.js;
 * no bundle under dist/bundle/ includes it, so the depth holds).
 */
export const PACKAGE_ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** A path under the package root, e.g. `guest/ring3/exit-loop.S`. */
export function packagePath(relative: string): string {
  return join(PACKAGE_ROOT, relative);
}

// One cache for all of flint's artifacts: the same root and key rules as guest builds.
export { cacheDir, cacheKey } from "../cache.js";

/** What {@link cachedArtifact} needs to find or make one file. */
export interface ArtifactRecipe {
  /** Entry name prefix, e.g. `exit-loop-guest`. */
  name: string;
  /** Everything the output depends on; the entry is keyed by their hash. */
  keyParts: readonly (string | Uint8Array)[];
  /** The file inside the entry that is returned. */
  fileName: string;
  /** Fills the empty directory `dir`, which must then hold `fileName`. */
  build(dir: string): void;
}

/** Returns the artifact's path, building it first unless cached. */
export function cachedArtifact(recipe: ArtifactRecipe): string {
  const dest = join(cacheDir(), `${recipe.name}-${cacheKey(recipe.keyParts)}`);
  const file = join(dest, recipe.fileName);
  if (existsSync(file)) return file;
  const tmp = `${dest}.tmp-${process.pid}-${Date.now()}`;
  mkdirSync(tmp, { recursive: true });
  try {
    recipe.build(tmp);
    if (!existsSync(join(tmp, recipe.fileName))) {
      throw new GuestProgramError("EPROGBUILD", `Cannot build ${recipe.name}: the build made no ${recipe.fileName}`);
    }
    renameSync(tmp, dest);
  } catch (error) {
    rmSync(tmp, { recursive: true, force: true });
    // Another process may have won the race to the same entry.
    if (!existsSync(file)) throw error;
  }
  return file;
}

/** Reads the given package files, for use as key parts. */
export function readSources(relativePaths: readonly string[]): Buffer[] {
  return relativePaths.map((p) => readFileSync(packagePath(p)));
}

/** Runs gcc with `args`, turning a failure into EPROGBUILD with its output. */
export function gcc(args: readonly string[], what: string): void {
  try {
    execFileSync("gcc", args, { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
  } catch (error) {
    const e = error as NodeJS.ErrnoException & { stderr?: string };
    const why = e.code === "ENOENT" ? "gcc is not installed (apt-get install gcc)" : (e.stderr ?? e.message).trim();
    throw new GuestProgramError("EPROGBUILD", `Cannot build ${what}: ${why}`, { cause: error });
  }
}
