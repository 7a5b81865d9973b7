/**
 * Builds flint's minimal microVM guest kernel from Debian's linux-source-6.1
 * tarball: `make tinyconfig`, the committed fragment
 * guest/kernel/microvm-x86_64.config merged on top with the kernel's own
 * scripts/kconfig/merge_config.sh, `make olddefconfig`, then
 * `make -j<cpus> bzImage` (which also links vmlinux).
 *
 * Both the extracted source and the finished kernel are cached (see cache.ts):
 * the source under the tarball's identity, the kernel under
 * sha256(fragment + tarball identity + recipe version). A second call with the
 * same inputs returns at once.
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
  /** A config fragment to use instead of the committed one (for experiments and tests). */
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
  /** The cache key: sha256 over fragment, tarball identity and recipe version. */
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

/** The cache key of the kernel built from `fragment` (the text of a config fragment). */
export function kernelCacheKey(fragment: string): string {
  return cacheKey([fragment, kernelTarballIdentity(), `recipe-${KERNEL_RECIPE_VERSION}`]);
}

function artifactsIn(dir: string, key: string): KernelArtifacts {
  return { vmlinux: join(dir, "vmlinux"), bzImage: join(dir, "bzImage"), config: join(dir, "config"), cacheKey: key };
}

/**
 * The already-built kernel for the committed fragment (or `configFragment`),
 * or undefined if {@link buildKernel} has not built it yet. Never builds.
 */
export function findCachedKernel(configFragment: string = KERNEL_CONFIG_FRAGMENT): KernelArtifacts | undefined {
  if (!existsSync(configFragment)) return undefined;
  const key = kernelCacheKey(readFileSync(configFragment, "utf8"));
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
  const fragmentPath = options.configFragment ?? KERNEL_CONFIG_FRAGMENT;
  if (!existsSync(fragmentPath)) {
    throw new KernelBuildError("EKERNELCONFIG", `Cannot build kernel: config fragment ${fragmentPath} is missing`);
  }
  const fragment = readFileSync(fragmentPath, "utf8");
  const key = kernelCacheKey(fragment);
  const entryName = `kernel-${key}`;
  const cached = findCachedKernel(options.configFragment);
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
    onProgress?.({ phase: "configure", message: `merging ${fragmentPath}` });
    // Kept in the entry: the exact fragment this kernel was built from.
    const fragmentCopy = join(tmp, "fragment.config");
    writeFileSync(fragmentCopy, fragment);
    await runCommand(join(source, "scripts/kconfig/merge_config.sh"), ["-m", "-O", out, join(out, ".config"), fragmentCopy], {
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
    const missing = missingConfigSettings(fragment, finalConfig);
    if (missing.length > 0) {
      throw new KernelBuildError(
        "EKERNELCONFIG",
        `Cannot build kernel: olddefconfig dropped settings of ${fragmentPath} (unmet dependencies?): ${missing.join(", ")}`,
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

