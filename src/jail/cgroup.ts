/**
 * The jail's cgroup, as Firecracker's jailer places it:
 * `<hierarchy>/<parent-cgroup or exec-file name>/<id>`. With cgroup v2
 * (Documentation/admin-guide/cgroup-v2.rst) that is one directory under the
 * cgroup2 mount, and each controller used is handed down from the mount to the
 * jail's parent (cgroup.subtree_control). With cgroup v1
 * (Documentation/admin-guide/cgroup-v1/) each controller has its own
 * hierarchy, found by its name in the mount options of a `cgroup` mount; the
 * jail gets that directory in each hierarchy a setting names, and before a
 * file is written its value is first copied down from the parent, level by
 * level as far as the parent cgroup goes, wherever a level's file is empty
 * (Firecracker's inherit_from_parent: a new cpuset cgroup has no CPUs or
 * memory nodes, and a child's cpuset must lie within its parent's).
 * flint writes the cgroup's files here, before the jail is entered; the
 * helper then moves itself into each (cgroup.procs) before it execs, so the
 * monitor and every thread it starts are inside from their first instruction.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { type CgroupSetting, JailError } from "./options.js";

/** /proc/mounts' fields of each line of file system type `type`: [mount point (octal escapes undone), options]. */
function mountsOfType(procMounts: string, type: string): [dir: string, options: string][] {
  const out: [string, string][] = [];
  for (const line of procMounts.split("\n")) {
    const f = line.split(" ");
    if (f.length >= 4 && f[2] === type) out.push([f[1]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))), f[3]!]);
  }
  return out;
}

/** The first cgroup2 mount in /proc/mounts' text (octal escapes undone), or undefined. */
export function findCgroup2Mount(procMounts: string): string | undefined {
  return mountsOfType(procMounts, "cgroup2")[0]?.[0];
}

/** A cgroup v1 hierarchy: where it is mounted and its mount options (which name its controllers). */
export interface CgroupV1Mount {
  dir: string;
  options: string[];
}

/** Every cgroup v1 mount in /proc/mounts' text, in order. */
export function findCgroupV1Mounts(procMounts: string): CgroupV1Mount[] {
  return mountsOfType(procMounts, "cgroup").map(([dir, options]) => ({ dir, options: options.split(",") }));
}

/** What to do in the cgroup file system, in order. */
export interface CgroupPlan {
  /** The jail's cgroup directories (one per hierarchy used). */
  dirs: string[];
  /** v2: cgroup.subtree_control files to write `+<controller>` to, from the mount down to the jail's parent. */
  enable: { file: string; controller: string }[];
  /**
   * Files of the jail's cgroups and their values. v1: with `inheritLevels`, the file's value
   * is first copied down from the parent cgroup, filling up to that many empty levels above
   * (Firecracker's inherit_from_parent).
   */
  writes: { file: string; value: string; inheritLevels?: number }[];
  /** The cgroup.procs files the helper writes its pid to. */
  procs: string[];
}

/**
 * Plans the jail's cgroup. `available` is the mount's cgroup.controllers; a
 * setting of a controller not in it is refused (Firecracker's "Controller X
 * is unavailable").
 */
export function planCgroupV2(mount: string, available: string, parent: string, id: string, settings: CgroupSetting[]): CgroupPlan {
  const controllers = new Set(available.split(/\s+/).filter((c) => c !== ""));
  const dir = join(mount, parent, id);
  const used: string[] = [];
  for (const s of settings) {
    if (!controllers.has(s.controller)) throw new JailError("ECGROUP", `Controller ${s.controller} is unavailable (${join(mount, "cgroup.controllers")} has: ${[...controllers].join(" ") || "none"})`);
    if (!used.includes(s.controller)) used.push(s.controller);
  }
  // Every level from the mount down to the jail's parent hands the controllers on.
  const levels = [mount];
  for (const part of parent.split("/")) levels.push(join(levels[levels.length - 1]!, part));
  const enable = used.flatMap((controller) => levels.map((level) => ({ file: join(level, "cgroup.subtree_control"), controller })));
  return { dirs: [dir], enable, writes: settings.map((s) => ({ file: join(dir, s.file), value: s.value })), procs: [join(dir, "cgroup.procs")] };
}

/**
 * Plans the jail's cgroups on cgroup v1: for each setting, the hierarchy whose mount
 * options name its controller (the first such mount; Firecracker's "Controller X is
 * unavailable" when none does), the jail's directory `<hierarchy>/<parent>/<id>` in it,
 * the value copied down from the parent, then written. Settings are applied in order.
 */
export function planCgroupV1(mounts: CgroupV1Mount[], parent: string, id: string, settings: CgroupSetting[]): CgroupPlan {
  const dirs: string[] = [];
  const plan: CgroupPlan = { dirs, enable: [], writes: [], procs: [] };
  const levels = parent.split("/").filter((p) => p !== "").length;
  for (const s of settings) {
    const mount = mounts.find((m) => m.options.includes(s.controller));
    if (!mount) {
      const offered = [...new Set(mounts.flatMap((m) => m.options))].filter((o) => !/^(rw|ro|relatime|noatime|nosuid|nodev|noexec|name=.*)$/.test(o));
      throw new JailError("ECGROUP", `Controller ${s.controller} is unavailable (no cgroup v1 hierarchy mounts it; mounted: ${offered.join(" ") || "none"})`);
    }
    const dir = join(mount.dir, parent, id);
    if (!dirs.includes(dir)) {
      dirs.push(dir);
      plan.procs.push(join(dir, "cgroup.procs"));
    }
    plan.writes.push({ file: join(dir, s.file), value: s.value, inheritLevels: levels });
  }
  return plan;
}

/** The first line of a cgroup file ("" when it is empty). */
function firstLine(file: string): string {
  try {
    return readFileSync(file, "utf8").split("\n")[0]!.trim();
  } catch (e) {
    throw new JailError("ECGROUP", `Failed to read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/**
 * Copies the first line of `file` in the parent of cgroup `dir` into `dir`'s; when the
 * parent's is empty, first fills the parent's from its own parent, up to `levels` levels.
 */
function inheritFromParent(dir: string, file: string, levels: number): void {
  const parent = dirname(dir);
  let line = firstLine(join(parent, file));
  if (line === "" && levels > 0) {
    // Another jail may fill the parent at the same time: only the result matters.
    try { inheritFromParent(parent, file, levels - 1); } catch { /* looked at again below */ }
    line = firstLine(join(parent, file));
  }
  if (line === "") throw new JailError("ECGROUP", `Failed to inherit ${file} from the parent of ${dir}: it is empty there`);
  write(join(dir, file), `${line}\n`);
}

function write(file: string, text: string): void {
  try {
    writeFileSync(file, text);
  } catch (e) {
    throw new JailError("ECGROUP", `Failed to write to ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** Makes the cgroup directories, hands the controllers down (v2) and writes the settings, each value copied from the parent first (v1). */
export function applyCgroupPlan(plan: CgroupPlan): void {
  for (const dir of plan.dirs) {
    try {
      mkdirSync(dir, { recursive: true });
    } catch (e) {
      throw new JailError("ECGROUP", `Failed to create directory ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  for (const { file, controller } of plan.enable) {
    const already = existsSync(file) && readFileSync(file, "utf8").split(/\s+/).includes(controller);
    if (!already) write(file, `+${controller}\n`);
  }
  for (const { file, value, inheritLevels } of plan.writes) {
    if (!existsSync(file)) throw new JailError("ECGROUP", `Cgroup file ${file} does not exist (is the name right, and its controller enabled?)`);
    if (inheritLevels !== undefined) inheritFromParent(dirname(file), basename(file), inheritLevels);
    write(file, `${value}\n`);
  }
}

/** Reads the host's cgroup v1 hierarchies; refuses when there is none. */
export function hostCgroupV1(procMountsPath = "/proc/mounts"): CgroupV1Mount[] {
  const mounts = findCgroupV1Mounts(readFileSync(procMountsPath, "utf8"));
  if (mounts.length === 0) throw new JailError("ECGROUP", "Hierarchy not found: no cgroup v1 hierarchy is mounted (use --cgroup-version 2 on a cgroup2 host)");
  return mounts;
}

/** Reads the cgroup2 mount and its controllers from the host; refuses when there is none. */
export function hostCgroup2(procMountsPath = "/proc/mounts"): { mount: string; controllers: string } {
  const mount = findCgroup2Mount(readFileSync(procMountsPath, "utf8"));
  if (mount === undefined) throw new JailError("ECGROUP", "Hierarchy not found: no cgroup2 file system is mounted (mount -t cgroup2 none /sys/fs/cgroup)");
  let controllers = "";
  try {
    controllers = readFileSync(join(mount, "cgroup.controllers"), "utf8");
  } catch {
    // none
  }
  return { mount, controllers };
}
