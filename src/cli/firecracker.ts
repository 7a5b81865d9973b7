/**
 * `flint` with no subcommand: Firecracker's process flags
 * (src/firecracker/src/main.rs in Firecracker's tree), so tools that start a
 * `firecracker` binary can start flint:
 *   - `--api-sock PATH` (the default mode) serves Firecracker's API on PATH
 *     (src/vmm/api-server.ts); with `--config-file` as well, the VM the file
 *     describes boots first and the API then serves it;
 *   - `--no-api --config-file vm.json` boots that VM with no socket.
 * The guest's serial console is on stdout; the process ends with the VM,
 * with `flint run`'s exit codes (0 when the guest powered off or reset, 1
 * when the VM failed), and on SIGTERM or SIGINT, which end the VM at once.
 *
 * seccomp filters are on unless `--no-seccomp` (src/seccomp: flint builds its
 * own; Firecracker's `--seccomp-filter FILE` is refused): the process-wide
 * one once the socket listens and the config file is read, before any guest
 * code runs. Flags accepted and not acted on (start-time stamps, PCI) change
 * nothing a guest can see.
 */
import { readFileSync } from "node:fs";
import { toFlintMachine } from "../config/convert.js";
import { ConfigError, parseVmConfig } from "../config/schema.js";
import { ApiServer } from "../vmm/api-server.js";
import { Vm } from "../vmm/vm.js";
import { installProcessSeccomp } from "../seccomp/index.js";
import { exitCode, forwardStdin, reportRun } from "./run.js";
import { describeSnapshotVersion, formatVersionString } from "./snapshot.js";

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
  logPath?: string;
  level?: string;
  module?: string;
  showLevel?: boolean;
  showLogOrigin?: boolean;
  metricsPath?: string;
  httpApiMaxPayloadSize?: number;
  mmdsSizeLimit?: number;
  /** flint's version, reported by GET / and GET /version. */
  version?: string;
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
  // As Firecracker's main: these two print and end before anything else is looked at.
  if (o.snapshotVersion) {
    process.stdout.write(`${formatVersionString()}\n`);
    return 0;
  }
  if (o.describeSnapshot !== undefined) {
    process.stdout.write(`${describeSnapshotVersion(o.describeSnapshot)}\n`);
    return 0;
  }
  checkInstanceId(o.id);
  if (o.seccompFilter !== undefined && !o.seccomp) throw new FlagError("EFLAG", "--seccomp-filter and --no-seccomp cannot be given together");
  if (o.seccompFilter !== undefined) {
    throw new FlagError("EFLAGNOTYET", "--seccomp-filter is not supported: flint builds its own seccomp filters per thread (--no-seccomp turns them off)");
  }
  if (!o.api && o.metadata !== undefined) throw new FlagError("EFLAG", "--metadata needs the API (MMDS data is served through it): drop --no-api");
  if (!o.api && o.configFile === undefined) throw new FlagError("EFLAG", "--no-api needs --config-file FILE");
  return serveVm(o);
}

function readConfigFile(path: string): ReturnType<typeof parseVmConfig> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new ConfigError("ECONFIGFILE", `Cannot read config file '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseVmConfig(text);
}

/**
 * One Vm, as Firecracker's process runs it: the log and metrics files from
 * the flags first, then the config file's VM (booted), then the API on
 * --api-sock unless --no-api. Resolves with the exit code once the VM has
 * ended (or the process was told to stop); bad flags or a bad config file
 * throw before the socket exists.
 */
async function serveVm(o: FirecrackerFlags): Promise<number> {
  const vm = new Vm({
    id: o.id, version: o.version ?? "0.0.0", consoleOutput: process.stdout,
    ...(o.mmdsSizeLimit !== undefined ? { mmdsSizeLimit: o.mmdsSizeLimit } : {}),
    onHostError: (device, message) => process.stderr.write(`flint: host error in ${device}: ${message}\n`),
    onSlowEnd: (message) => process.stderr.write(`flint: ${message}\n`),
  });
  // SIGTERM and SIGINT end the VM. They are caught from here on, before the socket exists: a
  // client may signal as soon as it sees the socket, and as the first process of a jail's pid
  // namespace (jailer --new-pid-ns) flint would not die of a signal it has no handler for either:
  // the kernel drops it, and the VM would run on.
  let signalled: NodeJS.Signals | undefined;
  let onSignal: ((sig: NodeJS.Signals) => void) | undefined;
  const catchSignal = (sig: NodeJS.Signals) => {
    if (signalled) return;
    signalled = sig;
    process.stderr.write(`flint: ${sig}: ending the VM\n`);
    onSignal?.(sig);
  };
  process.once("SIGTERM", catchSignal);
  process.once("SIGINT", catchSignal);
  if (o.logPath !== undefined) {
    await vm.setLogger({ log_path: o.logPath, level: o.level ?? null, show_level: !!o.showLevel, show_log_origin: !!o.showLogOrigin, module: o.module ?? null });
  }
  if (o.metricsPath !== undefined) vm.setMetrics({ metrics_path: o.metricsPath });
  const config = o.configFile !== undefined ? readConfigFile(o.configFile) : undefined;
  if (config) {
    const spec = toFlintMachine(config);
    for (const note of spec.ignored) process.stderr.write(`flint: config ${note}\n`);
    vm.resources.load(config);
    // The file's logger and metrics, as Firecracker applies them (flags given as well win, as they were set first).
    if (config.logger != null && o.logPath === undefined) await vm.setLogger(config.logger);
    if (config.metrics != null && o.metricsPath === undefined) vm.setMetrics(config.metrics);
  }
  const api = !o.api ? undefined : await ApiServer.listen(vm, o.apiSock, {
    ...(o.httpApiMaxPayloadSize !== undefined ? { maxPayloadBytes: o.httpApiMaxPayloadSize } : {}),
    onError: (line) => { if (process.env.FLINT_DEBUG) process.stderr.write(`flint: ${line}\n`); },
  });
  // Start-up is done (flags, files, socket): from here every thread of the process is filtered
  // (src/seccomp), and each vCPU and device thread the VM starts adds its own filter.
  if (o.seccomp) installProcessSeccomp();
  // The default machine's vCPU thread boots while the client configures (more as PUTs ask: api-server.ts).
  if (!config) vm.warmUp();
  try {
    if (o.metadata !== undefined) {
      let data: unknown;
      try {
        data = JSON.parse(readFileSync(o.metadata, "utf8"));
      } catch (e) {
        throw new FlagError("EFLAG", `Invalid --metadata '${o.metadata}': ${(e as Error).message.split("\n")[0]}`);
      }
      await vm.putMmds(data);
    }
    if (config) await vm.start();
    let quit = false;
    const detach = forwardStdin(vm, () => {
      quit = true;
      void vm.kill();
    });
    // The process ends with the VM (as Firecracker's does), or at SIGTERM/SIGINT (then with 128 + the
    // signal's number), also one that came while the process was starting.
    const code = await new Promise<number>((resolve) => {
      onSignal = (sig) => void vm.kill().finally(() => resolve(sig === "SIGINT" ? 130 : 143));
      if (signalled) onSignal(signalled);
      void vm.exited.then((result) => {
        detach();
        reportRun(result, !!o.bootTimer);
        if (!signalled) resolve(exitCode(result, quit));
      });
    });
    setTimeout(() => process.exit(code), 1000).unref();
    return code;
  } finally {
    await api?.close();
  }
}
