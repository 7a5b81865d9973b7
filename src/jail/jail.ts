/**
 * `flint jail` (and the `jailer` executable): prepares the jail on the host
 * (its directory, the mount points of what is shown in it, the cgroup), then
 * hands this process to the helper native/flint_jail.c with the plan, which
 * enters the jail and execs flint inside it. On success it never returns.
 */
import { closeSync, constants as fsConstants, existsSync, lstatSync, mkdirSync, openSync, realpathSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { packageRoot, sys } from "../sys/native.js";
import { applyCgroupPlan, type CgroupPlan, hostCgroup2, hostCgroupV1, planCgroupV1, planCgroupV2 } from "./cgroup.js";
import { charDeviceNumber, lookupName, packageEntries, resolveExecFile, sharedObjects } from "./host.js";
import { JailError, type JailFlags, type JailOptions, parseJailFlags } from "./options.js";
import { buildPlan, helperArgv, hostPathOf, JAIL_PACKAGE_DIR, type JailBind, type JailSpec, type JailStep } from "./plan.js";

/** Devices placed in the jail: /dev/kvm must exist on the host, the others are placed when it has them. */
const JAIL_DEVICES: { path: string; required: boolean }[] = [
  { path: "/dev/kvm", required: true },
  { path: "/dev/net/tun", required: false },
  { path: "/dev/urandom", required: false },
  { path: "/dev/null", required: false },
  { path: "/dev/userfaultfd", required: false },
];

/** The helper executable built beside the addon (binding.gyp). */
export function helperPath(): string {
  return join(packageRoot(), "build", "Release", "flint_jail");
}

/** Parses the flags with the host's user and group names. */
export function jailOptionsFromFlags(flags: JailFlags, monitorArgs: string[]): JailOptions {
  return parseJailFlags(flags, monitorArgs, (n) => lookupName("/etc/passwd", n), (n) => lookupName("/etc/group", n));
}

/**
 * Makes `inside`'s parent directories under `root` (mode 0755, owned by the
 * caller, root) and the mount point itself: an empty file or directory. A
 * symbolic link anywhere on the way is refused, so nothing is ever made
 * outside the root.
 */
export function makeMountPoint(root: string, inside: string, kind: "file" | "dir"): void {
  const parts = inside.split("/").filter((p) => p !== "");
  let at = root;
  parts.forEach((part, i) => {
    at = join(at, part);
    const last = i === parts.length - 1;
    let st;
    try {
      st = lstatSync(at);
    } catch {
      st = undefined;
    }
    if (st !== undefined) {
      if (st.isSymbolicLink()) throw new JailError("EJAILEXISTS", `Cannot prepare the jail: ${at} is a symbolic link`);
      if (!last || kind === "dir") {
        if (!st.isDirectory()) throw new JailError("EJAILEXISTS", `Cannot prepare the jail: ${at} is not a directory`);
        return;
      }
      throw new JailError("EJAILEXISTS", `Cannot prepare the jail: ${at} exists already (from an earlier run?)`);
    }
    if (!last || kind === "dir") mkdirSync(at, 0o755);
    else closeSync(openSync(at, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o644));
  });
}

/** Everything a jail needs from the host, and the plan; prepares nothing. */
export interface PreparedJail {
  spec: JailSpec;
  steps: JailStep[];
  /** The cgroup to set up before the helper runs. */
  cgroup?: CgroupPlan;
}

function microseconds(ns: bigint): string {
  return String(ns / 1000n);
}

/** Looks at the host and builds the jail's plan (nothing is created yet). */
export function prepareJail(o: JailOptions, ownEntry: string, startNs: bigint): PreparedJail {
  const exec = resolveExecFile(o.execFile, ownEntry);
  let base: string;
  try {
    base = realpathSync(o.chrootBaseDir);
  } catch (e) {
    throw new JailError("EJAILARG", `Failed to canonicalize path ${o.chrootBaseDir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!statSync(base).isDirectory()) throw new JailError("EJAILARG", `${base} is not a directory`);
  const root = join(base, exec.name, o.id, "root");
  for (const left of ["dev", "run", `${exec.name}.pid`, exec.name, JAIL_PACKAGE_DIR.slice(1)]) {
    const p = join(root, left);
    let there = false;
    try {
      lstatSync(p);
      there = true;
    } catch {
      // not there: good
    }
    if (there) throw new JailError("EJAILEXISTS", `The jail ${root} holds ${left} from an earlier run: remove ${dirname(root)} first`);
  }

  const node = realpathSync(process.execPath);
  const addon = join(exec.packageRoot, "build", "Release", "flint_sys.node");
  const binds = new Map<string, JailBind>();
  const add = (source: string, target: string, kind: "file" | "dir") => {
    if (!binds.has(target)) binds.set(target, { source: realpathSync(source), target, kind });
  };
  add(node, node, "file");
  for (const lib of [...sharedObjects(node), ...sharedObjects(addon)]) add(lib, lib, "file");
  for (const e of packageEntries(exec.packageRoot)) add(join(exec.packageRoot, e.path), `${JAIL_PACKAGE_DIR}/${e.path}`, e.kind);

  const devices: JailSpec["devices"] = [];
  for (const d of JAIL_DEVICES) {
    const rdev = charDeviceNumber(d.path);
    if (rdev === undefined) {
      if (d.required) throw new JailError("EJAILHOST", `Cannot jail flint: the host has no ${d.path} character device`);
      continue;
    }
    devices.push({ path: d.path, rdev });
  }

  let cgroup: PreparedJail["cgroup"];
  let cgroupProcs: string[] = [];
  const parent = o.parentCgroup ?? exec.name;
  if (o.cgroups.length > 0) {
    if (o.cgroupVersion === 2) {
      const host = hostCgroup2();
      cgroup = planCgroupV2(host.mount, host.controllers, parent, o.id, o.cgroups);
    } else {
      cgroup = planCgroupV1(hostCgroupV1(), parent, o.id, o.cgroups);
    }
    cgroupProcs = cgroup.procs;
  } else if (o.cgroupVersion === 2) {
    // As Firecracker's jailer: with no settings, into the parent cgroup when it exists (v1: none).
    const host = hostCgroup2();
    const procs = join(host.mount, parent, "cgroup.procs");
    if (existsSync(procs)) cgroupProcs = [procs];
  }

  const cpuUs = (() => {
    const u = process.cpuUsage();
    return String(u.user + u.system);
  })();
  const spec: JailSpec = {
    root, name: exec.name, uid: o.uid, gid: o.gid, binds: [...binds.values()], devices,
    netns: o.netns, noFile: o.noFile, fsize: o.fsize, cgroupProcs, daemonize: o.daemonize, newPidNs: o.newPidNs,
    node,
    monitorArgs: ["--id", o.id, "--start-time-us", microseconds(startNs), "--start-time-cpu-us", cpuUs, "--parent-cpu-time-us", cpuUs, ...o.monitorArgs],
  };
  return { spec, steps: buildPlan(spec), cgroup };
}

/** Makes the jail's directory, mount points and cgroup; then becomes the helper. Returns only by throwing. */
export function enterJail(p: PreparedJail): never {
  const helper = helperPath();
  if (!existsSync(helper)) throw new JailError("EJAILHOST", `Cannot jail flint: the helper ${helper} is missing (run 'npm ci')`);
  try {
    mkdirSync(p.spec.root, { recursive: true });
  } catch (e) {
    throw new JailError("EJAILARG", `Failed to create directory ${p.spec.root}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  for (const b of p.spec.binds) makeMountPoint(p.spec.root, b.target, b.kind);
  if (p.cgroup) applyCgroupPlan(p.cgroup);
  const argv = helperArgv(helper, p.spec.uid, p.spec.gid, p.steps);
  const r = sys.execve(helper, argv, []);
  throw new JailError("EJAILEXEC", `Cannot start the jail helper ${helper}: errno ${-r}`);
}

/** `flint jail`: checks the flags, prepares the jail and enters it. */
export function runJail(flags: JailFlags, monitorArgs: string[], ownEntry: string): never {
  const startNs = sys.monotonicNs();
  const o = jailOptionsFromFlags(flags, monitorArgs);
  if (process.getuid?.() !== 0) throw new JailError("EJAILHOST", "flint jail must run as root (it makes namespaces, device nodes and a chroot, then drops to --uid/--gid)");
  const prepared = prepareJail(o, ownEntry, startNs);
  return enterJail(prepared);
}

export { hostPathOf };
