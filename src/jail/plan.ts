/**
 * The jail as an ordered list of steps for the helper (native/flint_jail.c),
 * built here from checked inputs and checked again by the helper before it
 * makes its first system call. Pure: no file is touched.
 *
 * The jail root holds (paths inside the jail):
 *   /<name>                  link to flint's entry, as Firecracker's jail holds its binary at /<exec-file name>
 *   /<name>.pid              the monitor's pid (as seen from the host)
 *   /opt/flint/...           flint's package: package.json, dist/bundle, the addon, pino's packages (read-only binds)
 *   node, its interpreter and libraries at their host paths (read-only binds)
 *   /dev/kvm, /dev/net/tun, /dev/urandom, /dev/null, /dev/userfaultfd (device nodes owned by uid:gid)
 *   /run                     for the API socket
 *   /proc                    with --new-pid-ns: the new pid namespace's proc
 * and whatever the user placed there (kernel, drives...).
 */
import { JailError } from "./options.js";

/** Where flint's package appears inside the jail. */
export const JAIL_PACKAGE_DIR = "/opt/flint";
/** Directories Firecracker's jailer makes (mode 0700, owned by uid:gid), "/" being the jail root. */
export const JAIL_OWNED_DIRS = ["/", "/dev", "/dev/net", "/run"] as const;
/** Mode of those directories. */
export const JAIL_DIR_MODE = "0700";
/** Mode of the device nodes (owned by uid:gid). */
export const JAIL_DEVICE_MODE = "0600";

/** A host file or directory shown read-only at `target` (a path inside the jail). */
export interface JailBind {
  source: string;
  target: string;
  kind: "file" | "dir";
}

/** Everything the plan is built from. */
export interface JailSpec {
  /** The jail root on the host: <chroot-base-dir>/<name>/<id>/root. */
  root: string;
  /** The exec-file name. */
  name: string;
  uid: number;
  gid: number;
  binds: JailBind[];
  /** Device nodes to make (inside the jail) and their numbers (st_rdev). */
  devices: { path: string; rdev: number }[];
  netns?: string;
  noFile: number;
  fsize?: number;
  /** cgroup.procs of the jail's cgroups (v2: one; v1: one per hierarchy), in the order they are joined. */
  cgroupProcs: string[];
  daemonize: boolean;
  newPidNs: boolean;
  /** The Node binary, inside the jail. */
  node: string;
  /** The monitor's argv after node and the entry link (Firecracker's --id and time flags, then the user's). */
  monitorArgs: string[];
}

/** The helper's steps: each is its name and its arguments. */
export type JailStep = [string, ...string[]];

/** Path of a jail path on the host. */
export function hostPathOf(root: string, inside: string): string {
  return inside === "/" ? root : `${root}${inside}`;
}

/** Builds the ordered steps (Firecracker's jailer's order: netns, limits, cgroup, chroot, folders, devices, daemon, pid, exec). */
export function buildPlan(spec: JailSpec): JailStep[] {
  const steps: JailStep[] = [];
  if (spec.netns !== undefined) steps.push(["setns-net", spec.netns]);
  steps.push(["rlimit", "nofile", String(spec.noFile)]);
  if (spec.fsize !== undefined) steps.push(["rlimit", "fsize", String(spec.fsize)]);
  for (const procs of spec.cgroupProcs) steps.push(["cgroup-join", procs]);
  steps.push(["unshare-mount"], ["bind-root", spec.root]);
  for (const b of spec.binds) steps.push(["bind-ro", b.source, hostPathOf(spec.root, b.target)]);
  steps.push(["pivot"]);
  for (const d of JAIL_OWNED_DIRS) steps.push(["dir", d, JAIL_DIR_MODE]);
  for (const d of spec.devices) steps.push(["dev", d.path, String(d.rdev), JAIL_DEVICE_MODE]);
  steps.push(["symlink", `${JAIL_PACKAGE_DIR}/dist/bundle/main.js`, `/${spec.name}`]);
  if (spec.daemonize) steps.push(["daemonize"]);
  const pidFile = `/${spec.name}.pid`;
  if (spec.newPidNs) steps.push(["new-pid-ns", pidFile], ["mount-proc", "/proc"]);
  else steps.push(["pid-file", pidFile]);
  steps.push(["drop"], ["exec", spec.node, `/${spec.name}`, ...spec.monitorArgs]);
  checkPlan(steps, spec.root);
  return steps;
}

type Phase = "pre" | "pivot" | "post" | "drop" | "exec";
const PHASE: Record<string, Phase> = {
  "setns-net": "pre", rlimit: "pre", "cgroup-join": "pre", "unshare-mount": "pre", "bind-root": "pre", "bind-ro": "pre",
  pivot: "pivot", dir: "post", dev: "post", symlink: "post", daemonize: "post", "new-pid-ns": "post", "pid-file": "post",
  "mount-proc": "post", drop: "drop", exec: "exec",
};
const ORDER: Phase[] = ["pre", "pivot", "post", "drop", "exec"];

/**
 * The order rules the helper enforces, checked here too so a wrong plan is
 * a flint bug reported in TypeScript: phases in order (before the pivot,
 * the pivot, inside the jail, the drop, exec last), bind targets inside the
 * root, nothing that owns or makes nodes before the pivot.
 */
export function checkPlan(steps: JailStep[], root: string): void {
  let at = 0;
  let pivots = 0;
  steps.forEach(([name, ...args], i) => {
    const phase = PHASE[name];
    if (phase === undefined) throw new JailError("EJAILPLAN", `Jail plan step ${i + 1}: unknown step '${name}'`);
    const p = ORDER.indexOf(phase);
    if (p < at) throw new JailError("EJAILPLAN", `Jail plan step ${i + 1} '${name}' comes after the ${ORDER[at]} phase`);
    at = p;
    if (name === "pivot") pivots++;
    if (name === "bind-ro" && !(args[1] ?? "").startsWith(`${root}/`)) throw new JailError("EJAILPLAN", `Jail plan step ${i + 1}: bind target ${args[1]} is outside the jail root`);
  });
  if (pivots !== 1) throw new JailError("EJAILPLAN", "Jail plan: exactly one pivot is needed");
  if (steps[steps.length - 1]?.[0] !== "exec") throw new JailError("EJAILPLAN", "Jail plan: the last step must be exec");
}

/** The helper's command line for `steps`. */
export function helperArgv(helper: string, uid: number, gid: number, steps: JailStep[]): string[] {
  return [helper, "--uid", String(uid), "--gid", String(gid), ...steps.flat()];
}
