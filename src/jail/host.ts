/**
 * What the jail needs from the host, found out without changing anything:
 * the Node binary and the shared libraries it and the addon load, flint's
 * own files, the device numbers of /dev/kvm and friends, user and group names.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, realpathSync, statSync } from "node:fs";
import { dirname, isAbsolute, join } from "node:path";
import { JailError } from "./options.js";

/**
 * The shared objects `binary` loads, as absolute paths the dynamic loader
 * finds them under (the interpreter first), from `ldd`: glibc's loader
 * resolves them exactly as it will inside the jail, where the same paths hold
 * the same files. The vDSO (no path) is left out.
 */
export function sharedObjects(binary: string): string[] {
  const r = spawnSync("ldd", [binary], { encoding: "utf8", env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C" } });
  if (r.error) throw new JailError("EJAILHOST", `Cannot list the libraries of ${binary}: ldd: ${r.error.message}`);
  const out = r.stdout ?? "";
  if (r.status !== 0) {
    // A static binary: nothing to place.
    if (/not a dynamic executable|statically linked/.test(`${out}${r.stderr ?? ""}`)) return [];
    throw new JailError("EJAILHOST", `Cannot list the libraries of ${binary}: ldd: ${(r.stderr ?? "").trim().split("\n")[0]}`);
  }
  return parseLdd(out, binary);
}

/** The absolute paths in `ldd` output (interpreter and `name => path` lines); a library not found is an error. */
export function parseLdd(text: string, binary: string): string[] {
  const paths: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.includes("statically linked")) continue;
    const arrow = /^(\S+) => (.*?)(?: \(0x[0-9a-f]+\))?$/.exec(line);
    if (arrow) {
      if (arrow[2] === "not found") throw new JailError("EJAILHOST", `Cannot place ${binary} in the jail: its library ${arrow[1]} is not found`);
      if (isAbsolute(arrow[2]!)) paths.push(arrow[2]!);
      continue;
    }
    const bare = /^(\/\S+) \(0x[0-9a-f]+\)$/.exec(line);
    if (bare) paths.unshift(bare[1]!); // the interpreter
  }
  return [...new Set(paths)];
}

/** A character device's number (st_rdev, as mknod takes it), or undefined when the host has no such device. */
export function charDeviceNumber(path: string): number | undefined {
  try {
    const st = statSync(path);
    return st.isCharacterDevice() ? st.rdev : undefined;
  } catch {
    return undefined;
  }
}

/** Looks `name` up in an /etc/passwd- or /etc/group-format file (name:x:id:...). */
export function lookupName(file: string, name: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f[0] === name && f.length >= 3 && /^\d+$/.test(f[2]!)) return Number(f[2]);
  }
  return undefined;
}

/** A file or directory of flint's package to place in the jail, relative to the package root. */
export interface PackageEntry {
  path: string;
  kind: "file" | "dir";
}

/**
 * What a flint package needs at run time: package.json (the version), the
 * bundles (dist/bundle: the CLI, the library, the vCPU and device threads),
 * the addon, and the packages pino needs (loaded from node_modules only when
 * a VM has a log file).
 */
export function packageEntries(root: string): PackageEntry[] {
  const entries: PackageEntry[] = [
    { path: "package.json", kind: "file" },
    { path: "dist/bundle", kind: "dir" },
    { path: "build/Release/flint_sys.node", kind: "file" },
  ];
  for (const e of entries) {
    if (!existsSync(join(root, e.path))) throw new JailError("EJAILHOST", `Cannot place flint in the jail: ${join(root, e.path)} is missing (run 'npm ci && npm run build')`);
  }
  for (const name of dependencyClosure(root, ["pino"])) entries.push({ path: `node_modules/${name}`, kind: "dir" });
  return entries;
}

/** The packages under root/node_modules that `names` need, with theirs (a flat node_modules, as npm lays it out). */
export function dependencyClosure(root: string, names: string[]): string[] {
  const seen = new Set<string>();
  const queue = [...names];
  while (queue.length > 0) {
    const name = queue.shift()!;
    if (seen.has(name)) continue;
    const manifest = join(root, "node_modules", name, "package.json");
    if (!existsSync(manifest)) continue; // optional, or not installed: flint says so if it is ever needed
    seen.add(name);
    const deps = (JSON.parse(readFileSync(manifest, "utf8")) as { dependencies?: Record<string, string> }).dependencies ?? {};
    queue.push(...Object.keys(deps));
  }
  return [...seen].sort();
}

/**
 * flint's entry behind `--exec-file` (or this package's own when omitted):
 * the resolved path must be a `dist/bundle/main.js` of a flint package. The
 * name is the file name as given, so `--exec-file /usr/local/bin/firecracker`
 * runs flint as `firecracker` and jails under <base>/firecracker/<id>.
 */
export function resolveExecFile(given: string | undefined, ownEntry: string): { name: string; entry: string; packageRoot: string } {
  const path = given ?? ownEntry;
  let real: string;
  try {
    real = realpathSync(path);
  } catch (e) {
    throw new JailError("EJAILARG", `Invalid --exec-file: ${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
  }
  if (!statSync(real).isFile()) throw new JailError("EJAILARG", `Invalid --exec-file: ${path} is not a file`);
  const packageRoot = dirname(dirname(dirname(real)));
  const isFlint = real.endsWith("/dist/bundle/main.js") && (() => {
    try {
      return (JSON.parse(readFileSync(join(packageRoot, "package.json"), "utf8")) as { name?: string }).name === "flint";
    } catch {
      return false;
    }
  })();
  if (!isFlint) throw new JailError("EJAILARG", `Invalid --exec-file: ${path} is not flint's entry (dist/bundle/main.js of a flint package, or a link to one such as the installed 'flint' or 'firecracker')`);
  const name = given === undefined ? "flint" : path.split("/").filter((c) => c !== "").pop()!;
  if (!/^[A-Za-z0-9._-]+$/.test(name) || name === "." || name === "..") throw new JailError("EJAILARG", `Invalid --exec-file: its name '${name}' must be letters, digits, '.', '_' or '-'`);
  return { name, entry: real, packageRoot };
}
