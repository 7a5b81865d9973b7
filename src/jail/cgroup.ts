/**
 * The jail's cgroup (cgroup v2, Documentation/admin-guide/cgroup-v2.rst):
 * `<cgroup2 mount>/<parent-cgroup or exec-file name>/<id>`, as Firecracker's
 * jailer places it. flint writes the cgroup's files here, before the jail is
 * entered; the helper then moves itself in (cgroup.procs) before it execs, so
 * the monitor and every thread it starts are inside from their first instruction.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type CgroupSetting, JailError } from "./options.js";

/** The first cgroup2 mount in /proc/mounts' text (octal escapes undone), or undefined. */
export function findCgroup2Mount(procMounts: string): string | undefined {
  for (const line of procMounts.split("\n")) {
    const f = line.split(" ");
    if (f.length >= 3 && f[2] === "cgroup2") return f[1]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  }
  return undefined;
}

/** What to do in the cgroup file system, in order. */
export interface CgroupPlan {
  /** The jail's cgroup directory. */
  dir: string;
  /** cgroup.subtree_control files to write `+<controller>` to, from the mount down to the jail's parent. */
  enable: { file: string; controller: string }[];
  /** Files of the jail's cgroup and their values. */
  writes: { file: string; value: string }[];
  /** The file the helper writes its pid to. */
  procs: string;
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
  return { dir, enable, writes: settings.map((s) => ({ file: join(dir, s.file), value: s.value })), procs: join(dir, "cgroup.procs") };
}

function write(file: string, text: string): void {
  try {
    writeFileSync(file, text);
  } catch (e) {
    throw new JailError("ECGROUP", `Failed to write to ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** Makes the cgroup directories, hands the controllers down and writes the settings. */
export function applyCgroupPlan(plan: CgroupPlan): void {
  try {
    mkdirSync(plan.dir, { recursive: true });
  } catch (e) {
    throw new JailError("ECGROUP", `Failed to create directory ${plan.dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  for (const { file, controller } of plan.enable) {
    const already = existsSync(file) && readFileSync(file, "utf8").split(/\s+/).includes(controller);
    if (!already) write(file, `+${controller}\n`);
  }
  for (const { file, value } of plan.writes) {
    if (!existsSync(file)) throw new JailError("ECGROUP", `Cgroup file ${file} does not exist (is the name right, and its controller enabled?)`);
    write(file, `${value}\n`);
  }
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
