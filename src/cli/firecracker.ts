/**
 * `flint` with no subcommand: Firecracker's process flags
 * (src/firecracker/src/main.rs in Firecracker's tree), so tools that start a
 * `firecracker` binary can start flint. Today only the config-file mode runs:
 * `flint --no-api --config-file vm.json` boots the VM the file describes with
 * its serial console on stdout and `flint run`'s exit codes. The API socket
 * (the default without --no-api) answers with a one-line "not yet".
 *
 * Flags accepted and not acted on yet (logging, metrics, seccomp, start-time
 * stamps, payload and MMDS size limits) change nothing a guest can see.
 */
import { readFileSync } from "node:fs";
import { toFlintMachine } from "../config/convert.js";
import { ConfigError, parseVmConfig } from "../config/schema.js";
import { checkVirtioDevices } from "./devices.js";
import { runVm } from "./run.js";

/** A Firecracker process flag flint refuses; `code` is stable. */
export class FlagError extends Error {
  readonly code: "EFLAG" | "EFLAGNOTYET";
  constructor(code: FlagError["code"], message: string) {
    super(message);
    this.name = "FlagError";
    this.code = code;
  }
}

/** The flags as commander parses them (camelCase of Firecracker's names). */
export interface FirecrackerFlags {
  apiSock: string;
  id: string;
  configFile?: string;
  /** False with --no-api. */
  api: boolean;
  metadata?: string;
  bootTimer?: boolean;
  seccompFilter?: string;
  /** False with --no-seccomp. */
  seccomp: boolean;
  describeSnapshot?: string;
  snapshotVersion?: boolean;
}

/** Longest instance id Firecracker takes (utils/src/validators.rs). */
export const FC_MAX_INSTANCE_ID_LEN = 64;

/** Checks an instance id as Firecracker does: 1..64 characters, ASCII letters, digits and '-'. */
export function checkInstanceId(id: string): void {
  if (id.length < 1 || id.length > FC_MAX_INSTANCE_ID_LEN) throw new FlagError("EFLAG", `Invalid --id: must be 1 to ${FC_MAX_INSTANCE_ID_LEN} characters, got ${id.length}`);
  const bad = /[^A-Za-z0-9-]/.exec(id);
  if (bad) throw new FlagError("EFLAG", `Invalid --id: character '${bad[0]}' is not an ASCII letter, digit or '-'`);
}

/** Runs flint as Firecracker's binary would run with these flags; returns the exit code. */
export async function runFirecracker(o: FirecrackerFlags): Promise<number> {
  checkInstanceId(o.id);
  if (o.seccompFilter !== undefined && !o.seccomp) throw new FlagError("EFLAG", "--seccomp-filter and --no-seccomp cannot be given together");
  if (o.describeSnapshot !== undefined || o.snapshotVersion) throw new FlagError("EFLAGNOTYET", "Snapshots are not supported yet: --describe-snapshot and --snapshot-version have nothing to describe");
  if (o.metadata !== undefined) throw new FlagError("EFLAGNOTYET", "--metadata is not supported yet: flint has no MMDS");
  if (o.api) {
    throw new FlagError("EFLAGNOTYET", `The API socket is not supported yet (--api-sock ${o.apiSock}): start with --no-api --config-file FILE`);
  }
  if (o.configFile === undefined) throw new FlagError("EFLAG", "--no-api needs --config-file FILE");

  let text: string;
  try {
    text = readFileSync(o.configFile, "utf8");
  } catch (e) {
    throw new ConfigError("ECONFIGFILE", `Cannot read config file '${o.configFile}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const spec = toFlintMachine(parseVmConfig(text));
  checkVirtioDevices(spec.virtioDevices);
  for (const note of spec.ignored) process.stderr.write(`flint: config ${note}\n`);
  return runVm({
    kernel: spec.kernelPath, ...(spec.initrdPath !== undefined ? { initrd: spec.initrdPath } : {}),
    cmdline: spec.cmdline, cpus: spec.cpus, memoryMib: spec.memoryMib, bootMode: spec.bootMode,
    acpi: true, hugePages: spec.hugePages, mergeable: false, bootTime: !!o.bootTimer,
    virtioDevices: spec.virtioDevices,
  });
}
