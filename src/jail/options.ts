/**
 * `flint jail` / `jailer`: the flags of Firecracker's jailer (src/jailer in
 * Firecracker's tree, read for its flags, defaults and rules) parsed and
 * checked into {@link JailOptions}. Everything here is pure: no file is
 * touched, so every rule is unit-tested.
 */
import { isAbsolute } from "node:path";

/** Why `flint jail` refused or failed; `code` is stable. */
export class JailError extends Error {
  readonly code: "EJAILARG" | "EJAILHOST" | "EJAILEXISTS" | "ECGROUP" | "EJAILPLAN" | "EJAILEXEC";
  constructor(code: JailError["code"], message: string) {
    super(message);
    this.name = "JailError";
    this.code = code;
  }
}

/** Firecracker's jailer default for --chroot-base-dir. */
export const DEFAULT_CHROOT_BASE = "/srv/jailer";
/** Firecracker's jailer default for --cgroup-version. */
export const DEFAULT_CGROUP_VERSION = 1;
/** Firecracker's jailer default file-descriptor limit (RLIMIT_NOFILE) when --resource-limit no-file is not given. */
export const DEFAULT_NO_FILE = 2048;
/** Longest jail id (Firecracker's instance id rule). */
export const MAX_JAIL_ID_LEN = 64;

/** A cgroup file and the value written to it (`--cgroup memory.max=256M`). */
export interface CgroupSetting {
  file: string;
  value: string;
  /** The controller the file belongs to: the part before the first '.'. */
  controller: string;
}

/** The jail's parameters, checked. */
export interface JailOptions {
  id: string;
  /** --exec-file as given (undefined: flint's own entry). */
  execFile?: string;
  uid: number;
  gid: number;
  chrootBaseDir: string;
  netns?: string;
  daemonize: boolean;
  newPidNs: boolean;
  cgroups: CgroupSetting[];
  cgroupVersion: 1 | 2;
  parentCgroup?: string;
  /** RLIMIT_NOFILE (always set, as Firecracker's jailer does). */
  noFile: number;
  /** RLIMIT_FSIZE, when given. */
  fsize?: number;
  /** The monitor's flags (after `--`); paths in them are inside the jail. */
  monitorArgs: string[];
}

/** The flags as the command line gives them (strings, repeatable ones as lists). */
export interface JailFlags {
  id?: string;
  execFile?: string;
  uid?: string;
  gid?: string;
  chrootBaseDir?: string;
  netns?: string;
  daemonize?: boolean;
  newPidNs?: boolean;
  cgroup?: string[];
  cgroupVersion?: string;
  parentCgroup?: string;
  resourceLimit?: string[];
}

/** Looks a user or group name up (numbers never reach it); undefined when unknown. */
export type NameLookup = (name: string) => number | undefined;

/** Checks a jail id: 1 to 64 ASCII letters, digits or '-' (Firecracker's instance id rule). */
export function checkJailId(id: string): void {
  if (id.length < 1 || id.length > MAX_JAIL_ID_LEN) throw new JailError("EJAILARG", `Invalid --id: must be 1 to ${MAX_JAIL_ID_LEN} characters, got ${id.length}`);
  const bad = /[^A-Za-z0-9-]/.exec(id);
  if (bad) throw new JailError("EJAILARG", `Invalid --id: character '${bad[0]}' is not an ASCII letter, digit or '-'`);
}

const MAX_ID_NUMBER = 0xffff_fffe; // (uid_t)-1 means "unchanged" to setresuid

/** A uid or gid: a whole number, or a name `lookup` knows. */
export function parseOwner(flag: "--uid" | "--gid", text: string | undefined, lookup: NameLookup): number {
  if (text === undefined || text === "") throw new JailError("EJAILARG", `Missing ${flag}: the jailed monitor runs as this ${flag === "--uid" ? "user" : "group"}`);
  if (/^\d+$/.test(text)) {
    const n = Number(text);
    if (n > MAX_ID_NUMBER) throw new JailError("EJAILARG", `Invalid ${flag}: ${text} is larger than ${MAX_ID_NUMBER}`);
    return n;
  }
  const found = lookup(text);
  if (found === undefined) throw new JailError("EJAILARG", `Invalid ${flag}: no ${flag === "--uid" ? "user" : "group"} named '${text}'`);
  return found;
}

/** True when a relative path has no '.', '..' or empty component (cgroup names and files). */
function plainRelative(path: string): boolean {
  return path.length > 0 && !isAbsolute(path) && path.split("/").every((c) => c !== "" && c !== "." && c !== "..");
}

/** `file=value` for --cgroup: exactly one '=', a value, a file name with no '/', '.' or '..' path parts. */
export function parseCgroupSetting(text: string): CgroupSetting {
  const parts = text.split("=");
  if (parts.length !== 2 || parts[1] === "") throw new JailError("EJAILARG", `Invalid format for cgroups: ${text} (expected <file>=<value>, e.g. memory.max=256M)`);
  const [file, value] = parts as [string, string];
  if (!plainRelative(file) || file.includes("/")) throw new JailError("EJAILARG", `Cgroup invalid file: ${text}`);
  const dot = file.indexOf(".");
  if (dot <= 0 || dot === file.length - 1) throw new JailError("EJAILARG", `Cgroup invalid file: ${text} (expected <controller>.<name>)`);
  if (/[\n\0]/.test(value)) throw new JailError("EJAILARG", `Cgroup invalid value: ${JSON.stringify(value)}`);
  return { file, value, controller: file.slice(0, dot) };
}

/** `--resource-limit` (Firecracker's names): fsize=N (bytes) or no-file=N. */
export function parseResourceLimit(text: string): { name: "fsize" | "no-file"; value: number } {
  const eq = text.indexOf("=");
  if (eq < 0) throw new JailError("EJAILARG", `Invalid format for resources limits: ${text} (expected fsize=N or no-file=N)`);
  const name = text.slice(0, eq);
  const value = text.slice(eq + 1);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) throw new JailError("EJAILARG", `Invalid limit value for resource: ${name}: '${value}' is not a whole number`);
  if (name !== "fsize" && name !== "no-file") throw new JailError("EJAILARG", `Invalid resource argument: ${name} (fsize or no-file)`);
  return { name, value: Number(value) };
}

/** Checks every flag and returns the jail's parameters. */
export function parseJailFlags(flags: JailFlags, monitorArgs: string[], lookupUser: NameLookup, lookupGroup: NameLookup): JailOptions {
  if (flags.id === undefined) throw new JailError("EJAILARG", "Missing --id: the jail's name (letters, digits and '-', at most 64)");
  checkJailId(flags.id);
  if (flags.execFile !== undefined && flags.execFile === "") throw new JailError("EJAILARG", "Invalid --exec-file: empty path");
  const uid = parseOwner("--uid", flags.uid, lookupUser);
  const gid = parseOwner("--gid", flags.gid, lookupGroup);
  const versionText = flags.cgroupVersion ?? String(DEFAULT_CGROUP_VERSION);
  if (versionText !== "1" && versionText !== "2") throw new JailError("EJAILARG", `${versionText} is an invalid cgroup version specifier (1 or 2)`);
  const cgroupVersion = Number(versionText) as 1 | 2;
  const cgroups = (flags.cgroup ?? []).map(parseCgroupSetting);
  if (flags.parentCgroup !== undefined && !plainRelative(flags.parentCgroup)) {
    throw new JailError("EJAILARG", "Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'");
  }
  let noFile = DEFAULT_NO_FILE;
  let fsize: number | undefined;
  for (const r of (flags.resourceLimit ?? []).map(parseResourceLimit)) {
    if (r.name === "no-file") noFile = r.value;
    else fsize = r.value;
  }
  if (flags.netns !== undefined && !isAbsolute(flags.netns)) throw new JailError("EJAILARG", `Invalid --netns: '${flags.netns}' is not an absolute path (e.g. /var/run/netns/NAME)`);
  const chrootBaseDir = flags.chrootBaseDir ?? DEFAULT_CHROOT_BASE;
  if (chrootBaseDir === "") throw new JailError("EJAILARG", "Invalid --chroot-base-dir: empty path");
  return {
    id: flags.id, execFile: flags.execFile, uid, gid, chrootBaseDir,
    netns: flags.netns, daemonize: !!flags.daemonize, newPidNs: !!flags.newPidNs,
    cgroups, cgroupVersion, parentCgroup: flags.parentCgroup, noFile, fsize, monitorArgs,
  };
}
