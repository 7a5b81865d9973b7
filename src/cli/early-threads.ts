/**
 * Which threads the command will ask for first, read from its raw arguments
 * before the CLI is loaded (cli/entry.ts starts them then). A guess that
 * errs low. `flint run`: the vCPU count of `--cpus`, and one device thread
 * when any virtio device flag is given (a disk placed on a thread of its own
 * gets its own later, from Machine.prestart). Firecracker's mode (`flint
 * --api-sock ...`, `--config-file`, or started as `firecracker`): the one
 * vCPU thread the API warms for the default machine (api-server.ts; a
 * restore takes it too). Anything else (help, version, other commands, a
 * bad count) starts nothing; the CLI then does what it does.
 */

/** The virtio device flags of `flint run` (main.ts). */
const DEVICE_FLAGS = ["--disk", "--net", "--rng", "--balloon", "--vsock"];

/** Most vCPU threads started ahead (run.ts prestarts as many). */
const MAX_EARLY_VCPUS = 64;

/** Flags that print and exit, in either mode. */
const INFO_FLAGS = ["--help", "-h", "--version", "-V", "--describe-snapshot", "--snapshot-version"];

/** `args`: the arguments after the script; `invokedAs`: the name it was started as (argv[1]'s basename). */
export function earlyThreadsFor(args: readonly string[], invokedAs = "flint"): { vcpuThreads: number; deviceThreads: number } {
  const none = { vcpuThreads: 0, deviceThreads: 0 };
  if (args.some((a) => INFO_FLAGS.includes(a) || INFO_FLAGS.some((f) => a.startsWith(`${f}=`)))) return none;
  const firecracker = invokedAs.startsWith("firecracker") || args.some((a) => /^--(api-sock|config-file)(=|$)/.test(a));
  if (firecracker && !invokedAs.startsWith("jailer") && (args.length === 0 || args[0]!.startsWith("-"))) return { vcpuThreads: 1, deviceThreads: 0 };
  if (args[0] !== "run") return none;
  let cpus = 1;
  for (let i = 1; i < args.length; i++) {
    const a = args[i]!;
    const value = a === "--cpus" ? args[i + 1] : a.startsWith("--cpus=") ? a.slice("--cpus=".length) : undefined;
    if (value === undefined) continue;
    cpus = /^[1-9][0-9]*$/.test(value) ? Number(value) : 0;
  }
  if (cpus > MAX_EARLY_VCPUS) return none;
  const devices = args.some((a) => DEVICE_FLAGS.some((f) => a === f || a.startsWith(`${f}=`)));
  return { vcpuThreads: cpus, deviceThreads: devices ? 1 : 0 };
}
