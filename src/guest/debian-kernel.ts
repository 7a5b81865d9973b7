/**
 * Debian's own distro kernel (linux-image-6.1.0-<abi>-amd64), for the nested
 * end-to-end harness: a kernel with SVM-backed KVM, 9p and virtio as modules.
 *
 * The package is fetched with `apt-get download` (Debian's ordinary client),
 * unpacked with `dpkg-deb -x`, and `depmod` generates modules.dep (the package
 * leaves that to its postinst). Everything is cached per package version.
 */
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import { cachedDirectory, cacheDir } from "./cache.js";
import type { ProgressCallback } from "./progress.js";
import { RunError, runCommand } from "./run.js";

/** Package names this module considers: the generic amd64 flavour of Debian 12's 6.1 kernel. */
export const DEBIAN_KERNEL_PACKAGE_PATTERN = /^linux-image-(6\.1\.0-(\d+)-amd64)$/;

/** Bump when the unpacking steps change, so old cache entries are not reused. */
const DEBIAN_KERNEL_RECIPE_VERSION = 1;

/** Why the Debian kernel could not be provided. */
export class DebianKernelError extends Error {
  readonly code: "EAPTLOOKUP" | "EAPTDOWNLOAD" | "EUNPACK" | "EMODULENOTFOUND" | "EMODULEDEP";
  constructor(code: DebianKernelError["code"], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DebianKernelError";
    this.code = code;
  }
}

/** An unpacked Debian kernel in the cache. */
export interface DebianKernel {
  /** The compressed kernel image (bzImage format), /boot/vmlinuz-<version>. */
  vmlinuz: string;
  /** /lib/modules/<version> of the unpacked package, with modules.dep. */
  modulesDir: string;
  /** The kernel release (`uname -r`), e.g. "6.1.0-56-amd64". */
  version: string;
  /** The Debian package name, e.g. "linux-image-6.1.0-56-amd64". */
  packageName: string;
  /** The Debian package version, e.g. "6.1.192-2". */
  packageVersion: string;
}

/** Options for {@link debianKernel}. */
export interface DebianKernelOptions {
  /** Receives progress reports (phases: "lookup", "wait", "download", "unpack", "done"). */
  onProgress?: ProgressCallback;
}

interface PackageChoice {
  packageName: string;
  release: string;
  packageVersion: string;
}

/** Picks the highest ABI number among `apt-cache search` result lines ("name - description"). */
export function newestKernelPackage(searchOutput: string): { packageName: string; release: string } | undefined {
  let best: { packageName: string; release: string; abi: number } | undefined;
  for (const line of searchOutput.split("\n")) {
    const name = line.split(" - ")[0].trim();
    const match = DEBIAN_KERNEL_PACKAGE_PATTERN.exec(name);
    if (!match) continue;
    const abi = Number(match[2]);
    if (!best || abi > best.abi) best = { packageName: name, release: match[1], abi };
  }
  return best && { packageName: best.packageName, release: best.release };
}

async function lookUpPackage(): Promise<PackageChoice | undefined> {
  const search = await runCommand("apt-cache", ["search", "--names-only", "^linux-image-6\\.1\\.0-[0-9]+-amd64$"]);
  const newest = newestKernelPackage(search.stdout);
  if (!newest) return undefined;
  const policy = await runCommand("apt-cache", ["policy", newest.packageName]);
  const candidate = /^\s*Candidate:\s*(\S+)/m.exec(policy.stdout)?.[1];
  if (!candidate || candidate === "(none)") return undefined;
  return { ...newest, packageVersion: candidate };
}

/** The newest Debian kernel already in the cache, for use when apt cannot answer (offline). */
function newestCachedKernel(): DebianKernel | undefined {
  let best: { kernel: DebianKernel; abi: number } | undefined;
  for (const name of readdirSync(cacheDir())) {
    const match = /^debian-kernel-v\d+-(linux-image-6\.1\.0-(\d+)-amd64)_([A-Za-z0-9+~_-]+(?:\.[A-Za-z0-9+~_-]+)*)$/.exec(name);
    if (!match || name.includes(".tmp-") || name.endsWith(".lock")) continue;
    const abi = Number(match[2]);
    if (best && abi <= best.abi) continue;
    best = { kernel: kernelIn(join(cacheDir(), name), match[1], match[3]), abi };
  }
  return best?.kernel;
}

function kernelIn(entry: string, packageName: string, packageVersion: string): DebianKernel {
  const release = packageName.replace(/^linux-image-/, "");
  return {
    vmlinuz: join(entry, "root/boot", `vmlinuz-${release}`),
    modulesDir: join(entry, "root/lib/modules", release),
    version: release,
    packageName,
    packageVersion,
  };
}

/**
 * Returns Debian's current linux-image-6.1.0-*-amd64, downloading and
 * unpacking it into the cache the first time. Runs `apt-get update` only if
 * apt knows no such package; falls back to the newest cached kernel if apt
 * cannot be asked at all. Prints nothing.
 */
export async function debianKernel(options: DebianKernelOptions = {}): Promise<DebianKernel> {
  const { onProgress } = options;
  onProgress?.({ phase: "lookup", message: "apt-cache search linux-image-6.1.0-*-amd64" });
  let choice: PackageChoice | undefined;
  let lookupError: unknown;
  try {
    choice = await lookUpPackage();
    if (!choice) {
      onProgress?.({ phase: "lookup", message: "apt-get update" });
      await runCommand("apt-get", ["update"]);
      choice = await lookUpPackage();
    }
  } catch (error) {
    lookupError = error;
  }
  if (!choice) {
    const cached = newestCachedKernel();
    if (cached) return cached;
    const why = lookupError instanceof Error ? `: ${lookupError.message}` : "";
    throw new DebianKernelError(
      "EAPTLOOKUP",
      `Cannot find Debian's kernel: apt knows no linux-image-6.1.0-*-amd64 package${why}`,
      { cause: lookupError },
    );
  }

  const { packageName, packageVersion, release } = choice;
  const entryName = `debian-kernel-v${DEBIAN_KERNEL_RECIPE_VERSION}-${packageName}_${packageVersion}`.replace(/[^A-Za-z0-9._+-]/g, "_");
  const entry = await cachedDirectory(entryName, async (tmp) => {
    onProgress?.({ phase: "download", message: `apt-get download ${packageName}=${packageVersion}` });
    await runCommand("apt-get", ["download", `${packageName}=${packageVersion}`], { cwd: tmp }).catch((error: unknown) => {
      throw new DebianKernelError("EAPTDOWNLOAD", `Cannot download ${packageName}: ${(error as Error).message}`, {
        cause: error,
      });
    });
    const deb = readdirSync(tmp).find((name) => name.endsWith(".deb"));
    if (!deb) throw new DebianKernelError("EAPTDOWNLOAD", `Cannot download ${packageName}: apt-get produced no .deb`);
    try {
      onProgress?.({ phase: "unpack", message: `dpkg-deb -x ${deb}` });
      await runCommand("dpkg-deb", ["-x", join(tmp, deb), join(tmp, "root")]);
      onProgress?.({ phase: "unpack", message: `depmod ${release}` });
      await runCommand("depmod", ["-b", join(tmp, "root"), release]);
    } catch (error) {
      const hint = error instanceof RunError && error.code === "ENOTOOL" ? " (apt-get install dpkg kmod)" : "";
      throw new DebianKernelError("EUNPACK", `Cannot unpack ${deb}${hint}: ${(error as Error).message}`, { cause: error });
    }
    const unpacked = kernelIn(tmp, packageName, packageVersion);
    if (!existsSync(unpacked.vmlinuz) || !existsSync(join(unpacked.modulesDir, "modules.dep"))) {
      throw new DebianKernelError("EUNPACK", `Cannot unpack ${deb}: no /boot/vmlinuz-${release} or modules.dep in it`);
    }
  }, () => onProgress?.({ phase: "wait", message: `Waiting for another process fetching ${packageName}` }));
  onProgress?.({ phase: "done", message: `${packageName} ${packageVersion}` });
  return kernelIn(entry, packageName, packageVersion);
}

/** Kernel module names treat "-" and "_" alike ("kvm-amd" is "kvm_amd"). */
function canonicalModuleName(name: string): string {
  return name.replace(/\.ko(\.(xz|zst|gz))?$/, "").replace(/-/g, "_");
}

/**
 * Resolves `names` and everything they depend on, from the modules.dep in
 * `modulesDir`, into absolute module file paths in a valid load order
 * (dependencies first, each module once). Names may use "-" or "_". Modules
 * built into the kernel (modules.builtin) are skipped; unknown names throw.
 */
export function moduleClosure(modulesDir: string, names: readonly string[]): string[] {
  const depFile = join(modulesDir, "modules.dep");
  if (!existsSync(depFile)) {
    throw new DebianKernelError("EMODULEDEP", `Cannot resolve modules: ${depFile} is missing (run depmod)`);
  }
  // "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko"
  const deps = new Map<string, { path: string; deps: string[] }>();
  for (const line of readFileSync(depFile, "utf8").split("\n")) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const path = line.slice(0, colon).trim();
    const moduleDeps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean);
    deps.set(canonicalModuleName(path.split("/").pop()!), { path, deps: moduleDeps.map((d) => canonicalModuleName(d.split("/").pop()!)) });
  }
  const builtinFile = join(modulesDir, "modules.builtin");
  const builtin = new Set(
    existsSync(builtinFile)
      ? readFileSync(builtinFile, "utf8").split("\n").filter(Boolean).map((p) => canonicalModuleName(p.split("/").pop()!))
      : [],
  );

  const order: string[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (name: string, wantedBy: string | undefined): void => {
    if (done.has(name)) return;
    const module = deps.get(name);
    if (!module) {
      if (builtin.has(name)) return;
      const by = wantedBy ? ` (needed by ${wantedBy})` : "";
      throw new DebianKernelError("EMODULENOTFOUND", `Cannot find module '${name}'${by} in ${depFile}`);
    }
    if (visiting.has(name)) throw new DebianKernelError("EMODULEDEP", `Cannot order modules: '${name}' depends on itself`);
    visiting.add(name);
    for (const dep of module.deps) visit(dep, name);
    visiting.delete(name);
    done.add(name);
    order.push(isAbsolute(module.path) ? module.path : join(modulesDir, module.path));
  };
  for (const name of names) visit(canonicalModuleName(name), undefined);
  return order;
}
