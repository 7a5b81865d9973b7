/**
 * Builds flint's minimal microVM guest kernel from Debian's linux-source-6.1
 * tarball: `make tinyconfig`, the committed fragment
 * guest/kernel/microvm-x86_64.config merged on top with the kernel's own
 * scripts/kconfig/merge_config.sh, `make olddefconfig`, then
 * `make -j<cpus> bzImage` (which also links vmlinux). The "no-acpi" variant
 * merges guest/kernel/microvm-x86_64-noacpi.config after it.
 *
 * Both the extracted source and the finished kernel are cached (see cache.ts):
 * the source under the tarball's identity, each kernel under
 * sha256(fragments + tarball identity + recipe version). A second call with
 * the same inputs returns at once.
 */
import { copyFileSync, existsSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cachedDirectory, cacheDir, cacheKey } from "./cache.js";
import type { ProgressCallback } from "./progress.js";
import { runCommand } from "./run.js";

/**
 * Bump when the build steps below change in a way that changes the output,
 * so old cache entries are not reused.
 */
export const KERNEL_RECIPE_VERSION = 1;

/** Debian's kernel source tarball (package linux-source-6.1). */
export const KERNEL_TARBALL = process.env.FLINT_KERNEL_TARBALL ?? "/usr/src/linux-source-6.1.tar.xz";

/** The top-level directory inside the tarball. */
export const KERNEL_TOPDIR = "linux-source-6.1";

/** The committed config fragment, relative to the package root. */
export const KERNEL_CONFIG_FRAGMENT = fileURLToPath(new URL("../../guest/kernel/microvm-x86_64.config", import.meta.url));

/**
 * The committed fragment of the "no-acpi" variant, merged after
 * {@link KERNEL_CONFIG_FRAGMENT}: the same kernel with CONFIG_ACPI=n.
 */
export const KERNEL_NOACPI_CONFIG_FRAGMENT = fileURLToPath(
  new URL("../../guest/kernel/microvm-x86_64-noacpi.config", import.meta.url),
);

/**
 * Which committed kernel to build: "default" (with ACPI: flint's own guest
 * kernel) or "no-acpi" (CONFIG_ACPI=n, as many microVM kernels are built; the
 * tests use it to check that such a kernel still finds every device).
 */
export type KernelVariant = "default" | "no-acpi";

/** The committed fragments of a variant, in merge order (later settings win). */
export function kernelConfigFragments(variant: KernelVariant = "default"): string[] {
  return variant === "no-acpi" ? [KERNEL_CONFIG_FRAGMENT, KERNEL_NOACPI_CONFIG_FRAGMENT] : [KERNEL_CONFIG_FRAGMENT];
}

/** Expected number of make output lines (CC, LD, ...) when nothing better is known. */
const DEFAULT_BUILD_STEPS = 1850;

/** Host programs the build runs, and the Debian package that provides each. */
const REQUIRED_TOOLS: readonly [tool: string, debianPackage: string][] = [
  ["make", "make"],
  ["gcc", "gcc"],
  ["flex", "flex"],
  ["bison", "bison"],
  ["bc", "bc"],
  ["tar", "tar"],
  ["xz", "xz-utils"],
  ["perl", "perl"],
];

/** Why the kernel could not be built. */
export class KernelBuildError extends Error {
  readonly code: "EKERNELSOURCE" | "EKERNELTOOL" | "EKERNELCONFIG" | "EKERNELBUILD";
  constructor(code: KernelBuildError["code"], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "KernelBuildError";
    this.code = code;
  }
}

/** Options for {@link buildKernel}. */
export interface BuildKernelOptions {
  /** Receives progress reports (phases: "wait", "extract", "configure", "compile", "done"). */
  onProgress?: ProgressCallback;
  /** Parallel make jobs (default: the number of host CPUs). */
  jobs?: number;
  /** Which committed kernel to build (default: "default"). */
  variant?: KernelVariant;
  /** A config fragment to use instead of the committed ones (for experiments and tests). */
  configFragment?: string;
}

/** A built kernel in the cache. */
export interface KernelArtifacts {
  /** The uncompressed ELF kernel (with the PVH entry note). */
  vmlinux: string;
  /** The compressed kernel in the x86 boot protocol format. */
  bzImage: string;
  /** The final kernel .config. */
  config: string;
  /** The cache key: sha256 over the fragments, tarball identity and recipe version. */
  cacheKey: string;
}

/** The tarball's identity: its size and modification time (hashing 130 MiB would cost seconds). */
export function kernelTarballIdentity(tarball: string = KERNEL_TARBALL): string {
  if (!existsSync(tarball)) {
    throw new KernelBuildError(
      "EKERNELSOURCE",
      `Cannot build kernel: ${tarball} is missing (apt-get install linux-source-6.1)`,
    );
  }
  const st = statSync(tarball);
  return `${st.size}-${Math.floor(st.mtimeMs)}`;
}

/**
 * Extracts the kernel source tarball into the cache once and returns the
 * source top directory.
 */
export async function kernelSourceDir(onProgress?: ProgressCallback): Promise<string> {
  const identity = kernelTarballIdentity();
  const entry = await cachedDirectory(`kernel-source-${identity}`, async (tmp) => {
    onProgress?.({ phase: "extract", message: `Extracting ${KERNEL_TARBALL}`, done: 0, total: 84000 });
    let files = 0;
    await runCommand("tar", ["-xvJf", KERNEL_TARBALL, "-C", tmp], {
      onLine: (line) => {
        files += 1;
        if (files % 500 === 0) onProgress?.({ phase: "extract", message: line, done: files, total: 84000 });
      },
      maxOutputChars: 4096,
    }).catch((error: unknown) => {
      throw new KernelBuildError("EKERNELSOURCE", `Cannot extract ${KERNEL_TARBALL}: ${(error as Error).message}`, {
        cause: error,
      });
    });
    // Marker shared with scripts/kernel-source.mjs conventions.
    writeFileSync(join(tmp, ".complete"), "");
  }, () => onProgress?.({ phase: "wait", message: `Waiting for another process extracting ${KERNEL_TARBALL}` }));
  return join(entry, KERNEL_TOPDIR);
}

/** Parses a kernel .config (or fragment) into symbol → value ("n" for "is not set"). */
export function parseKernelConfig(text: string): Map<string, string> {
  const values = new Map<string, string>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    const unset = /^# (CONFIG_[A-Za-z0-9_]+) is not set$/.exec(line);
    if (unset) {
      values.set(unset[1], "n");
      continue;
    }
    const set = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (set) values.set(set[1], set[2]);
  }
  return values;
}

/**
 * Lists the fragment's settings that the final config does not have, as
 * "CONFIG_X=want (got have)" strings; empty when all of them took effect.
 * olddefconfig silently drops settings whose dependencies are unmet.
 */
export function missingConfigSettings(fragment: string, finalConfig: string): string[] {
  const want = parseKernelConfig(fragment);
  const have = parseKernelConfig(finalConfig);
  const missing: string[] = [];
  for (const [symbol, value] of want) {
    const actual = have.get(symbol) ?? "n";
    if (actual !== value) missing.push(`${symbol}=${value} (got ${actual === "n" ? "not set" : actual})`);
  }
  return missing;
}

/** The make step count of the last finished build, to scale the progress bar. */
function expectedBuildSteps(): number {
  let best = DEFAULT_BUILD_STEPS;
  for (const name of readdirSync(cacheDir())) {
    if (!/^kernel-[0-9a-f]{16}$/.test(name)) continue;
    const file = join(cacheDir(), name, "build-steps");
    if (existsSync(file)) {
      const steps = Number.parseInt(readFileSync(file, "utf8"), 10);
      if (Number.isFinite(steps) && steps > 0) best = steps;
    }
  }
  return best;
}

async function checkTools(): Promise<void> {
  for (const [tool, debianPackage] of REQUIRED_TOOLS) {
    try {
      await runCommand("sh", ["-c", `command -v ${tool}`]);
    } catch {
      throw new KernelBuildError(
        "EKERNELTOOL",
        `Cannot build kernel: '${tool}' is missing (apt-get install ${debianPackage})`,
      );
    }
  }
}

/**
 * The cache key of the kernel built from `fragments` (the texts of config
 * fragments, in merge order). One fragment gives the key earlier versions
 * gave, so the default kernel's cache entry stays valid.
 */
export function kernelCacheKey(fragments: string | readonly string[]): string {
  const texts = typeof fragments === "string" ? [fragments] : fragments;
  return cacheKey([...texts, kernelTarballIdentity(), `recipe-${KERNEL_RECIPE_VERSION}`]);
}

/** The fragment files a build uses: `configFragment` alone, or the variant's committed ones. */
function fragmentPaths(options: Pick<BuildKernelOptions, "variant" | "configFragment">): string[] {
  return options.configFragment !== undefined ? [options.configFragment] : kernelConfigFragments(options.variant);
}

function artifactsIn(dir: string, key: string): KernelArtifacts {
  return { vmlinux: join(dir, "vmlinux"), bzImage: join(dir, "bzImage"), config: join(dir, "config"), cacheKey: key };
}

/**
 * The already-built kernel of a variant (or of `configFragment`), or
 * undefined if {@link buildKernel} has not built it yet. Never builds.
 */
export function findCachedKernel(
  options: Pick<BuildKernelOptions, "variant" | "configFragment"> = {},
): KernelArtifacts | undefined {
  const paths = fragmentPaths(options);
  if (!paths.every((path) => existsSync(path))) return undefined;
  const key = kernelCacheKey(paths.map((path) => readFileSync(path, "utf8")));
  const dir = join(cacheDir(), `kernel-${key}`);
  return existsSync(dir) ? artifactsIn(dir, key) : undefined;
}

/**
 * Builds (or finds in the cache) the microVM guest kernel and returns the
 * paths of its vmlinux and bzImage. Prints nothing; progress goes to
 * `onProgress`. Takes a few minutes on 2 cores the first time.
 */
export async function buildKernel(options: BuildKernelOptions = {}): Promise<KernelArtifacts> {
  const { onProgress } = options;
  const paths = fragmentPaths(options);
  for (const path of paths) {
    if (!existsSync(path)) {
      throw new KernelBuildError("EKERNELCONFIG", `Cannot build kernel: config fragment ${path} is missing`);
    }
  }
  const fragments = paths.map((path) => readFileSync(path, "utf8"));
  const key = kernelCacheKey(fragments);
  const entryName = `kernel-${key}`;
  const cached = findCachedKernel(options);
  if (cached) {
    onProgress?.({ phase: "done", message: `Kernel ${key} is cached` });
    return cached;
  }

  await checkTools();
  const source = await kernelSourceDir(onProgress);
  const jobs = options.jobs ?? availableParallelism();
  const totalSteps = expectedBuildSteps();

  const entry = await cachedDirectory(entryName, async (tmp) => {
    const out = join(tmp, "build");
    // Fixed build identity makes `uname -v` and the banner independent of who built it.
    const env = {
      ARCH: "x86_64",
      KBUILD_BUILD_USER: "flint",
      KBUILD_BUILD_HOST: "flint",
      KBUILD_BUILD_TIMESTAMP: "2024-01-01",
    };
    const make = (args: string[], onLine?: (line: string) => void) =>
      runCommand("make", [`O=${out}`, "ARCH=x86_64", ...args], { cwd: source, env, onLine }).catch((error: unknown) => {
        throw new KernelBuildError("EKERNELBUILD", `Cannot build kernel: ${(error as Error).message}`, { cause: error });
      });

    onProgress?.({ phase: "configure", message: "make tinyconfig" });
    await make(["tinyconfig"]);
    onProgress?.({ phase: "configure", message: `merging ${paths.join(" + ")}` });
    // Kept in the entry: the exact fragments this kernel was built from.
    const fragmentCopies = fragments.map((text, i) => {
      const copy = join(tmp, i === 0 ? "fragment.config" : `fragment-${i}.config`);
      writeFileSync(copy, text);
      return copy;
    });
    await runCommand(join(source, "scripts/kconfig/merge_config.sh"), ["-m", "-O", out, join(out, ".config"), ...fragmentCopies], {
      cwd: source,
      env,
    }).catch((error: unknown) => {
      throw new KernelBuildError("EKERNELCONFIG", `Cannot merge kernel config: ${(error as Error).message}`, {
        cause: error,
      });
    });
    onProgress?.({ phase: "configure", message: "make olddefconfig" });
    await make(["olddefconfig"]);
    const finalConfig = readFileSync(join(out, ".config"), "utf8");
    // Concatenated, later fragments' settings override earlier ones, as in merge_config.sh.
    const missing = missingConfigSettings(fragments.join("\n"), finalConfig);
    if (missing.length > 0) {
      throw new KernelBuildError(
        "EKERNELCONFIG",
        `Cannot build kernel: olddefconfig dropped settings of ${paths.join(" + ")} (unmet dependencies?): ${missing.join(", ")}`,
      );
    }

    let steps = 0;
    onProgress?.({ phase: "compile", message: `make -j${jobs} bzImage`, done: 0, total: totalSteps });
    await make([`-j${jobs}`, "bzImage"], (line) => {
      // Kbuild's quiet output: "  CC      kernel/fork.o", "  LD      vmlinux", ...
      const step = /^\s+([A-Z][A-Z0-9_-]*)\s+(\S.*)$/.exec(line);
      if (!step) return;
      steps += 1;
      onProgress?.({ phase: "compile", message: `${step[1]} ${step[2]}`, done: steps, total: Math.max(totalSteps, steps) });
    });

    copyFileSync(join(out, "vmlinux"), join(tmp, "vmlinux"));
    copyFileSync(join(out, "arch/x86/boot/bzImage"), join(tmp, "bzImage"));
    copyFileSync(join(out, "System.map"), join(tmp, "System.map"));
    copyFileSync(join(out, ".config"), join(tmp, "config"));
    writeFileSync(join(tmp, "build-steps"), `${steps}\n`);
    rmSync(out, { recursive: true, force: true });
  }, () => onProgress?.({ phase: "wait", message: `Waiting for another process building kernel ${key}` }));
  onProgress?.({ phase: "done", message: `Kernel ${key} built` });
  return artifactsIn(entry, key);
}

