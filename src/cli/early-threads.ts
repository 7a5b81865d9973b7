/**
 * Which threads `flint run` will ask for, read from its raw arguments before
 * the CLI is loaded (cli/entry.ts starts them then). A guess that errs low:
 * the vCPU count of `--cpus`, and one device thread when any virtio device
 * flag is given (a disk placed on a thread of its own gets its own later,
 * from Machine.prestart). Anything that is not a plain `run` (help, a bad
 * count) starts nothing; the CLI then reports what is wrong as usual.
 */

/** The virtio device flags of `flint run` (main.ts). */
const DEVICE_FLAGS = ["--disk", "--net", "--rng", "--balloon", "--vsock"];

/** Most vCPU threads started ahead (run.ts prestarts as many). */
const MAX_EARLY_VCPUS = 64;

export function earlyThreadsFor(args: readonly string[]): { vcpuThreads: number; deviceThreads: number } {
  const none = { vcpuThreads: 0, deviceThreads: 0 };
  if (args[0] !== "run" || args.includes("--help") || args.includes("-h")) return none;
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
