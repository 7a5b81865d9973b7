#!/usr/bin/env node
/**
 * The flint command line: a table of commands over the library. Bad input
 * ends with one line on stderr and exit code 2; a failed VM run with exit
 * code 1 and one line saying why; a guest that powers off or reboots, 0.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { basename } from "node:path";
import { FLINT_VERSION } from "../sys/version.js";
import { describeError, isUserError } from "./errors.js";
import { DEFAULT_CMDLINE } from "./defaults.js";
import { DeviceArgError, virtioDevicesFromFlags } from "./devices.js";
import { runDemo } from "./demo.js";
import { printDoctor } from "./doctor.js";
import { buildKernelCommand, buildInitramfsCommand } from "./guest.js";
import { runVm } from "./run.js";

/** Firecracker's default API socket path (main.rs DEFAULT_API_SOCK_PATH). */
const FC_DEFAULT_API_SOCK = "/run/firecracker.socket";
/** Firecracker's instance id when --id is not given (logger DEFAULT_INSTANCE_ID). */
const FC_DEFAULT_INSTANCE_ID = "anonymous-instance";
/**
 * The Firecracker release whose API flint answers (the swagger flint follows
 * is that of Firecracker's main branch after 1.16.1; every request a 1.16.1
 * client sends, flint parses).
 */
const FC_COMPAT_VERSION = "1.16.1";

const pkg = { version: FLINT_VERSION };


function wholeNumber(name: string) {
  return (value: string): number => {
    if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`${name} must be a whole number, got '${value}'`);
    return Number(value);
  };
}

/**
 * True when this process was started as `firecracker` (the package installs
 * that name beside `flint`, and tools exec "firecracker" from PATH, or a name
 * like "firecracker-v1.16.1-x86_64" as Firecracker's release files are called).
 */
function startedAsFirecracker(argv: string[]): boolean {
  return argv[1] !== undefined && basename(argv[1]).startsWith("firecracker");
}

/** True when this process was started as `jailer` (installed beside `flint`): it behaves as `flint jail`. */
function startedAsJailer(argv: string[]): boolean {
  return argv[1] !== undefined && basename(argv[1]).startsWith("jailer");
}

/** Collects a repeatable flag's values. */
const collect = (v: string, prev: string[] = []) => [...prev, v];

/**
 * What `--version` prints. As `firecracker`, Firecracker's own format
 * ("Firecracker v1.16.1" and a blank line, main.rs): Kata Containers' Go
 * runtime (virtcontainers/fc.go parseVersion) runs `<hypervisor_path>
 * --version`, splits the first line at spaces, strips the "v" of the second
 * word, parses that as semver and refuses anything below 0.21.1; flint's own
 * version (0.x) would fail that check, so the name tools look for reports the
 * Firecracker API version flint answers, and flint's own version follows on
 * the third line for people. As `flint`, flint's own version alone, as before.
 */
function versionText(asFirecracker: boolean): string {
  return asFirecracker ? `Firecracker v${FC_COMPAT_VERSION}\n\nflint ${pkg.version}` : pkg.version;
}

function buildProgram(asFirecracker: boolean): Command {
  const program = new Command("flint")
    .description("flint: a KVM microVM monitor")
    .version(versionText(asFirecracker), "-V, --version")
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s.startsWith("error:") ? `flint: ${s}` : s) })
    // Program options only before a subcommand, so `flint run ...` parses as it always did.
    .enablePositionalOptions();

  // Firecracker's process flags (firecracker.ts), for `flint` without a subcommand.
  program
    .option("--api-sock <path>", "serve Firecracker's API on this Unix socket", FC_DEFAULT_API_SOCK)
    .option("--id <id>", "instance id (letters, digits, '-'; at most 64)", FC_DEFAULT_INSTANCE_ID)
    .option("--config-file <path>", "boot the VM a Firecracker config file describes")
    .option("--no-api", "no API socket (needs --config-file)")
    .option("--metadata <path>", "a JSON file to fill the MMDS data store with")
    .option("--boot-timer", "print the time until the guest wrote the boot-timer address")
    .option("--seccomp-filter <path>", "refused: flint builds its own seccomp filters")
    .option("--no-seccomp", "no seccomp filters (on by default; FLINT_SECCOMP_AUDIT=1 logs instead of killing)")
    .option("--log-path <path>", "accepted, ignored (no log file yet)")
    .option("--level <level>", "accepted, ignored")
    .option("--module <module>", "accepted, ignored")
    .option("--show-level", "accepted, ignored")
    .option("--show-log-origin", "accepted, ignored")
    .option("--metrics-path <path>", "accepted, ignored (no metrics file yet)")
    .option("--start-time-us <us>", "accepted, ignored")
    .option("--start-time-cpu-us <us>", "accepted, ignored")
    .option("--parent-cpu-time-us <us>", "accepted, ignored")
    .option("--http-api-max-payload-size <bytes>", "largest API request body (default 51200)", wholeNumber("--http-api-max-payload-size"))
    .option("--mmds-size-limit <bytes>", "largest MMDS data store (default: the payload limit)", wholeNumber("--mmds-size-limit"))
    .option("--enable-pci", "accepted, ignored (flint's devices are virtio-mmio)")
    .option("--describe-snapshot <path>", "print the data format version of a snapshot state file")
    .option("--snapshot-version", "print the snapshot data format version this flint writes")
    .allowExcessArguments(true)
    .action(async (o, cmd: Command) => {
      if (cmd.args.length > 0) program.error(`error: unknown command '${cmd.args[0]}'`);
      // Loaded only here: the schema library costs every other command start-up time.
      const { runFirecracker } = await import("./firecracker.js");
      process.exitCode = await runFirecracker({ ...o, version: pkg.version });
    });

  program
    .command("run")
    .description("boot a guest kernel with its serial console on this terminal (Ctrl-A x quits)")
    .requiredOption("--kernel <path>", "guest kernel: ELF vmlinux (64-bit or PVH entry) or bzImage")
    .option("--initrd <path>", "initial ramdisk (cpio, optionally compressed)")
    .option("--cmdline <string>", "kernel command line", DEFAULT_CMDLINE)
    .option("--cpus <n>", "number of vCPUs", wholeNumber("--cpus"), 1)
    .option("--memory <mib>", "guest memory in MiB", wholeNumber("--memory"), 256)
    .addOption(new Option("--boot <mode>", "kernel entry: auto (64-bit boot protocol), linux64, or pvh").choices(["auto", "linux64", "pvh"]).default("auto"))
    .option("--no-acpi", "no ACPI tables: MP table only, virtio devices on the kernel command line only (kernels built without ACPI need no flag)")
    .option("--huge-pages", "back guest memory with transparent huge pages")
    .option("--ksm", "let KSM merge identical guest pages")
    .option("--boot-time", "print the time until the guest wrote the boot-timer address")
    .option("--debug-exit", "add a debug-exit device: a guest write of v to port 0xf4 ends flint with exit code v")
    .option("--disk <path[,ro][,thread=own]>", "virtio-blk drive over a raw image or a block device (repeatable; the first is /dev/vda; thread=own: on a device thread of its own)", (v: string, prev: string[] = []) => [...prev, v])
    .option("--rng", "virtio-rng device fed from the host's CSPRNG")
    .option("--balloon <mib>", "virtio-balloon device with an initial target in MiB", wholeNumber("--balloon"))
    .option("--net <tap=NAME,mac=MAC[,mtu=N]>", "virtio-net over an existing TAP interface (repeatable)", (v: string, prev: string[] = []) => [...prev, v])
    .option("--vsock <cid=N,uds=PATH>", "virtio-vsock: guest CID and host Unix socket (guest port P connects to PATH_P; repeatable)", (v: string, prev: string[] = []) => [...prev, v])
    .option("--no-seccomp", "no seccomp filters (on by default; FLINT_SECCOMP_AUDIT=1 logs instead of killing)")
    .exitOverride()
    .action(async (o) => {
      if (o.balloon !== undefined && o.balloon > o.memory) {
        throw new DeviceArgError(`Cannot add balloon: --balloon ${o.balloon} MiB is more than the guest's --memory ${o.memory} MiB`);
      }
      process.exitCode = await runVm({
        kernel: o.kernel, initrd: o.initrd, cmdline: o.cmdline, cpus: o.cpus, memoryMib: o.memory,
        bootMode: o.boot, acpi: o.acpi, hugePages: !!o.hugePages, mergeable: !!o.ksm, bootTime: !!o.bootTime, debugExit: !!o.debugExit,
        virtioDevices: virtioDevicesFromFlags({ disk: o.disk, rng: !!o.rng, balloon: o.balloon, net: o.net, vsock: o.vsock }),
        seccomp: o.seccomp !== false,
      });
    });

  const snapshot = program.command("snapshot").description("look into snapshots (PUT /snapshot/create, Vm.snapshot) and merge Diffs");
  snapshot
    .command("inspect <state-file>")
    .description("what a snapshot's state file holds: format version, checksum, vCPUs, memory, devices")
    .option("--json", "print it as JSON")
    .exitOverride()
    .action(async (path: string, o) => {
      const { inspectSnapshot } = await import("./snapshot.js");
      process.stdout.write(`${inspectSnapshot(path, !!o.json)}\n`);
    });
  snapshot
    .command("rebase")
    .description("merge a Diff snapshot's memory file onto its base (Firecracker's rebase-snap): the base becomes the Diff's memory")
    .requiredOption("--base <memory-file>", "the memory file the Diff was taken after (written in place)")
    .requiredOption("--diff <memory-file>", "the Diff's memory file")
    .exitOverride()
    .action(async (o: { base: string; diff: string }) => {
      const { rebaseSnapshot } = await import("./snapshot.js");
      process.stdout.write(`${rebaseSnapshot(o.base, o.diff)}\n`);
    });

  program
    .command("uffd-handler")
    .description("serve a snapshot's memory file to a VM restored with the Uffd memory backend (a page-fault handler, Firecracker's protocol)")
    .requiredOption("--socket <path>", "the Unix socket to listen on (the load's mem_backend backend_path; removed at the end)")
    .requiredOption("--mem-file <path>", "the snapshot's memory file")
    .exitOverride()
    .action(async (o: { socket: string; memFile: string }) => {
      const { runUffdHandler } = await import("../snapshot/uffd-handler.js");
      const stats = runUffdHandler({
        socketPath: o.socket, memFilePath: o.memFile,
        onListening: () => process.stderr.write(`flint uffd-handler: listening on ${o.socket}\n`),
      });
      process.stdout.write(`${JSON.stringify(stats)}\n`);
    });

  program
    .command("jail")
    .description("run flint jailed, as Firecracker's jailer runs firecracker: [flags] -- [the monitor's flags, with paths inside the jail]")
    .option("--id <id>", "the jail's id (letters, digits and '-', at most 64); also the monitor's --id")
    .option("--exec-file <path>", "flint's entry to run (the installed 'flint' or 'firecracker', or a dist/bundle/main.js); default: this flint")
    .option("--uid <uid>", "user the monitor runs as (a number or a name)")
    .option("--gid <gid>", "group the monitor runs as (a number or a name)")
    .option("--chroot-base-dir <dir>", "the jail is <dir>/<exec-file name>/<id>/root", "/srv/jailer")
    .option("--netns <path>", "network namespace to join (e.g. /var/run/netns/NAME)")
    .option("--daemonize", "detach (setsid) with /dev/null as stdin, stdout and stderr")
    .option("--new-pid-ns", "run the monitor as pid 1 of a new pid namespace (the jailer exits once it started)")
    .option("--cgroup <file=value>", "a cgroup setting, e.g. memory.max=512M (v2) or memory.limit_in_bytes=536870912 (v1) (repeatable)", collect)
    .option("--cgroup-version <1|2>", "cgroup version, as Firecracker's jailer (default 1)", "1")
    .option("--parent-cgroup <path>", "the jail's cgroup is <cgroup mount>/<path>/<id> (default path: the exec-file name)")
    .option("--resource-limit <name=value>", "fsize=BYTES or no-file=N (repeatable; no-file defaults to 2048)", collect)
    .option("--version", "print the jailer's version (Firecracker's jailer format, then flint's)")
    .allowExcessArguments(true)
    .exitOverride()
    .action(async (o, cmd: Command) => {
      if (o.version) {
        process.stdout.write(`Jailer v${FC_COMPAT_VERSION}\n\nflint ${pkg.version}\n`);
        return;
      }
      if (cmd.args.length > 0) cmd.error(`error: unexpected argument '${cmd.args[0]}' (the monitor's flags go after --)`);
      const { runJail } = await import("../jail/jail.js");
      const { fileURLToPath } = await import("node:url");
      // flint's own executable (the entry, cli/entry.ts), from dist/cli/ and from dist/bundle/ alike.
      runJail(o, monitorArgsAfterDashes, fileURLToPath(new URL("../bundle/main.js", import.meta.url)));
    });

  program
    .command("doctor")
    .description("can this host run microVMs, and how well?")
    .option("--json", "print the report as JSON")
    .option("--no-probe", "skip the guest speed probe")
    .exitOverride()
    .action((o) => {
      process.exitCode = printDoctor({ json: !!o.json, probe: o.probe });
    });

  program
    .command("build-kernel")
    .description("build (or find cached) the minimal microVM guest kernel from linux-source-6.1")
    .option("--json", "print the artifact paths as JSON")
    .option("--no-acpi", "build the variant without ACPI (CONFIG_ACPI=n), as many microVM kernels are built")
    .exitOverride()
    .action(async (o) => {
      await buildKernelCommand({ json: !!o.json, acpi: o.acpi !== false });
    });

  program
    .command("build-initramfs")
    .description("build a busybox initramfs with the default /init or your own")
    .requiredOption("-o, --output <path>", "where to write the .cpio.gz")
    .option("--init <script>", "a shell script to use as /init (default: report, then power off)")
    .addOption(new Option("--finish <what>", "what the default /init does at the end").choices(["poweroff", "reboot", "shell"]).default("poweroff"))
    .exitOverride()
    .action((o) => {
      buildInitramfsCommand({ output: o.output, init: o.init, finish: o.finish });
    });

  program
    .command("demo")
    .description("build the default guest and boot it: directly, or in the nested harness when this host emulates guest kernel mode")
    .option("--cpus <n>", "number of vCPUs", wholeNumber("--cpus"), 2)
    .option("--memory <mib>", "guest memory in MiB", wholeNumber("--memory"), 256)
    .option("--nested", "always use the nested harness")
    .exitOverride()
    .action(async (o) => {
      process.exitCode = await runDemo({ cpus: o.cpus, memoryMib: o.memory, forceNested: !!o.nested });
    });

  return program;
}

/** `flint jail ... -- <these>`: the monitor's arguments, cut off before commander parses the rest. */
let monitorArgsAfterDashes: string[] = [];

async function main(argv: string[]): Promise<void> {
  if (startedAsJailer(argv)) argv = [argv[0]!, argv[1]!, "jail", ...argv.slice(2)];
  if (argv[2] === "jail") {
    const dashes = argv.indexOf("--", 3);
    if (dashes >= 0) {
      monitorArgsAfterDashes = argv.slice(dashes + 1);
      argv = argv.slice(0, dashes);
    }
  }
  const asFirecracker = startedAsFirecracker(argv);
  const program = buildProgram(asFirecracker);
  // Bare `flint` shows the help on stderr (exit code 2), as before Firecracker's flags were added;
  // bare `firecracker` serves the API on /run/firecracker.socket, as Firecracker's binary does.
  if (argv.length <= 2 && !asFirecracker) {
    program.outputHelp({ error: true });
    process.exitCode = 2;
    return;
  }
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version end with code 0; usage errors were already printed.
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    process.stderr.write(`flint: ${describeError(e)}\n`);
    if (process.env.FLINT_DEBUG) process.stderr.write(`${(e as Error).stack}\n`);
    process.exitCode = isUserError(e) ? 2 : 1;
  }
}

await main(process.argv);
