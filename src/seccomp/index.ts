/**
 * flint's seccomp-BPF filters (seccomp(2)), built in TypeScript from the
 * allow-lists in lists.ts and installed through the addon:
 *   - `installProcessSeccomp()` on the main thread, once per process, with
 *     SECCOMP_FILTER_FLAG_TSYNC: every thread of the process (Node's libuv
 *     pool and V8's platform threads included) gets the process-wide list,
 *     and every thread created later inherits it;
 *   - `installThreadSeccomp("vcpu" | "device")` inside a worker, before it
 *     runs guest work: a narrower list stacked on the process-wide one.
 * The order matters: TSYNC fails while any thread has a filter the main
 * thread lacks, so a worker installs its own only when the process-wide one
 * is in place (`processSeccompAction()` says so; the worker's init carries it).
 *
 * A call outside a list kills the process (SECCOMP_RET_KILL_PROCESS, SIGSYS),
 * as in Firecracker; FLINT_SECCOMP_AUDIT=1 makes it SECCOMP_RET_LOG instead
 * (the call runs, the kernel logs it: `dmesg | grep type=1326`), for finding a
 * gap. Library users opt in (MachineConfig.seccomp); the CLI's monitor modes
 * install it by default.
 */
import { SECCOMP_FILTER_FLAG_TSYNC } from "../linux/abi.generated.js";
import { check, sys, SysError } from "../sys/native.js";
import { compile, type DefaultAction } from "./bpf.js";
import { ALLOW_LISTS, type ThreadKind } from "./lists.js";

export type { DefaultAction } from "./bpf.js";
export type { ThreadKind } from "./lists.js";

/** A filter the kernel refused (no seccomp, a thread that could not be synchronized). */
export class SeccompError extends Error {
  readonly code: "ESECCOMP";
  constructor(message: string) {
    super(message);
    this.name = "SeccompError";
    this.code = "ESECCOMP";
  }
}

/** The action for a call outside the lists: "log" when FLINT_SECCOMP_AUDIT=1, else "kill". */
export function seccompActionFromEnv(env: NodeJS.ProcessEnv = process.env): DefaultAction {
  return env.FLINT_SECCOMP_AUDIT === "1" ? "log" : "kill";
}

/** The library's default for MachineConfig.seccomp: on when FLINT_SECCOMP=1 (off otherwise). */
export function seccompDefaultFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.FLINT_SECCOMP === "1";
}

let processAction: DefaultAction | undefined;

/** The process-wide filter's action once installed (undefined before). */
export function processSeccompAction(): DefaultAction | undefined {
  return processAction;
}

function install(kind: ThreadKind, action: DefaultAction, flags: number): void {
  const program = compile(ALLOW_LISTS[kind], action);
  const r = sys.installSeccompFilter(program.bytes, program.count, flags);
  if (r > 0) throw new SeccompError(`Cannot install the ${kind} seccomp filter: thread ${r} could not be synchronized`);
  try {
    check(r, `seccomp(${kind} filter)`);
  } catch (e) {
    throw new SeccompError(`Cannot install the ${kind} seccomp filter: ${(e as SysError).code}`);
  }
}

/**
 * Installs the process-wide filter on every thread (TSYNC), once: later
 * calls do nothing (and keep the first call's action). Call it on the main
 * thread once start-up is done and before guest code runs.
 */
export function installProcessSeccomp(action: DefaultAction = seccompActionFromEnv()): void {
  if (processAction !== undefined) return;
  install("process", action, SECCOMP_FILTER_FLAG_TSYNC);
  processAction = action;
}

/** Stacks a vCPU or device thread's own filter on the calling thread (a worker, before guest work). */
export function installThreadSeccomp(kind: "vcpu" | "device", action: DefaultAction): void {
  install(kind, action, 0);
}
