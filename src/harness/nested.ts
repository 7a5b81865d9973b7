/**
 * The nested end-to-end harness: runs a shell command inside a QEMU (TCG)
 * virtual machine whose emulated CPU has SVM, so that the command sees a real
 * hardware-virtualization /dev/kvm — which the development machines' own
 * /dev/kvm (kvm_pvm, ring 0 emulated) cannot provide for booting Linux.
 * See /work/shared/notes/kvm-on-these-machines.md.
 *
 * The outer VM boots Debian's distro kernel with a busybox initramfs whose
 * /init loads 9p, virtio-pci, tun, loop, device-mapper and (optionally) kvm-amd, mounts the host's root
 * file system read-only at /host, mounts proc/sys/dev/tmp inside it, mounts a
 * writable share at the same absolute path it has on the host, and runs the
 * command with `chroot /host /bin/sh -c`. The command's combined stdout and
 * stderr and its exit status come back through a third, private 9p share (the
 * run's control directory); the serial console is captured too.
 *
 * Layout inside the outer VM:
 *   /host            host "/" (9p "hostroot", read-only)
 *   /host/proc,sys   fresh proc and sysfs
 *   /host/dev        devtmpfs (has /dev/kvm once kvm-amd is loaded), devpts, /dev/shm tmpfs
 *   /host/tmp        the host's /tmp, read-only like the rest (checkouts and shares
 *                    under /tmp stay visible); writable scratch is TMPDIR=/dev/shm
 *   /host<shareDir>  host shareDir (9p "flintshare", writable)
 *   /ctl             the run's control directory (9p "flintctl", outside the chroot)
 */
import { spawn } from "node:child_process";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { cachedDirectory, cacheKey } from "../guest/cache.js";
import { debianKernel, moduleClosure } from "../guest/debian-kernel.js";
import { buildInitramfs, HOST_BUSYBOX, LOAD_MODULES_SH } from "../guest/initramfs.js";
import type { ProgressCallback } from "../guest/progress.js";
import { acquireHostLock } from "./host-lock.js";

/** The QEMU binary (package qemu-system-x86). */
export const QEMU_BINARY = process.env.FLINT_QEMU ?? "qemu-system-x86_64";

/** Modules for the 9p shares over virtio-pci (9p2000.L over the virtio transport). */
export const NESTED_9P_MODULES = ["9p", "9pnet_virtio", "virtio_pci"] as const;

/** Modules for TAP interfaces (/dev/net/tun), for virtio-net end-to-end tests. */
export const NESTED_NET_MODULES = ["tun"] as const;

/**
 * Modules for failing and full disks in disk-fault tests: loop devices, and
 * device-mapper with its built-in `error` target and the `flakey` target
 * (driven with the host's dmsetup and losetup through the chroot).
 */
export const NESTED_DISK_MODULES = ["loop", "dm_mod", "dm_flakey"] as const;

/** Modules for SVM-backed KVM; moduleClosure adds irqbypass, ccp and kvm before kvm-amd. */
export const NESTED_KVM_MODULES = ["irqbypass", "ccp", "kvm", "kvm_amd"] as const;

/** Prefix of the lines the outer VM's /init prints on the console. */
export const NESTED_REPORT_PREFIX = "flint-nested:";

/** 9p message size: large messages make reading Node and the repo over 9p much faster. */
const NINEP_MSIZE = 512000;

/** Bump when the outer VM's /init changes in a way the cache key would not see. */
const NESTED_INITRAMFS_RECIPE_VERSION = 2;

/**
 * The outer VM's /init writes a new count to the control share's `heartbeat`
 * every HEARTBEAT_S seconds while the command runs. The TCG outer VM has been
 * seen to freeze (README, Tests): nothing in it runs any more, its heartbeat
 * included, and before this a frozen run waited for its test's whole time
 * limit (up to 20 minutes). A heartbeat that has not changed for
 * FROZEN_AFTER_MS (from QEMU's start until the first one) marks the run
 * frozen: QEMU is killed and the run ends as a timed-out one (retried once
 * when the caller asked for that). A busy outer VM still runs a shell loop
 * that sleeps 5 s well within it: its kernel would report a soft lockup first.
 */
const HEARTBEAT_S = 5;
const FROZEN_AFTER_MS = 150_000;

/**
 * Outer VMs run one at a time on a host (see host-lock.ts for why); this lock
 * directory is shared by every process using the harness.
 */
export const NESTED_LOCK_DIR = process.env.FLINT_NESTED_LOCK ?? join(tmpdir(), "flint-nested.lock");

/** How long a run waits for the outer VMs before it to finish. */
const NESTED_LOCK_WAIT_MS = 60 * 60_000;

/** Why the nested harness could not run. */
export class NestedError extends Error {
  readonly code: "ENOQEMU" | "EBADOPTION" | "EQEMU";
  constructor(code: NestedError["code"], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NestedError";
    this.code = code;
  }
}

/** Options for {@link runNested}. */
export interface NestedOptions {
  /** Shell command run by /bin/sh (the host's dash) inside the chroot. */
  command: string;
  /** Wall-clock limit for the whole run, boot included (not the wait for other outer VMs); QEMU is killed when it passes. */
  timeoutMs: number;
  /** vCPUs of the outer VM (default 2; TCG runs one host thread per vCPU). */
  cpus?: number;
  /** Memory of the outer VM in MiB (default 2048). */
  memoryMib?: number;
  /**
   * Host directory shared writable at the same absolute path inside. Default:
   * a fresh temporary directory, deleted after the run.
   */
  shareDir?: string;
  /** Load kvm-amd so /dev/kvm exists inside (default true). */
  kvm?: boolean;
  /**
   * Working directory of the command inside (default: this process's cwd). It
   * must exist on the host (the command exits with 125 if it cannot change to it).
   */
  cwd?: string;
  /** Extra environment variables for the command. */
  env?: Record<string, string>;
  /** Receives the outer VM's console output as it arrives. */
  onSerial?: (text: string) => void;
  /** Receives progress of the Debian kernel download the first time. */
  onProgress?: ProgressCallback;
  /**
   * When given, a run stopped at `timeoutMs` is run once more in a fresh outer
   * VM, after this is called (it removes what the first attempt wrote). The TCG
   * outer VM has been seen to freeze; a command whose own steps have shorter
   * time limits (`timeout 240 flint ...`) tells a frozen outer VM, which times
   * out here, from a hang of what it runs, which ends within its own limit.
   * A run found frozen by its heartbeat is made again whether or not this is
   * given (and this is called first when it is).
   */
  retryAfterTimeout?: () => void;
  /**
   * Files (absolute host paths) where the command leaves flint's reports and
   * guest consoles. When a run ends in time but one of them shows a guest that
   * died in a triple fault it did not ask for ({@link unrequestedTripleFault}),
   * the run is made once more in a fresh outer VM, after `retryAfterTimeout`
   * (the clean-up) is called. The outer VM's emulated SVM kills nested guests
   * now and then, under QEMU's microvm as under flint (README, Tests), or
   * stops it in its early boot, which a client reports as
   * `flint-e2e: guest_stalled=` ({@link guestStall}); that is made again the
   * same way. A guest that dies twice, or in any other way, fails the test. A run whose
   * outer VM's kernel reports a lockup ({@link outerKernelLockup}) is made
   * again too: its nested guests stop with it; that outer VM is ended as
   * soon as its kernel says so, not when the command gives up.
   */
  retryOnGuestCrash?: readonly string[];
  /** How long an unchanged heartbeat means a frozen outer VM (default FROZEN_AFTER_MS; for the harness's own test). */
  frozenAfterMs?: number;
}

/** The outcome of {@link runNested}. */
export interface NestedResult {
  /** The command's exit status; -1 if it never finished (timeout, guest failure). */
  exitCode: number;
  /** The command's stdout and stderr, interleaved as written. */
  output: string;
  /** Wall-clock time from starting QEMU to its exit, in milliseconds. */
  durationMs: number;
  /** True if the (last) run was stopped at `timeoutMs`, or as frozen (see `frozen`). */
  timedOut: boolean;
  /** True if the (last) run was stopped because its outer VM's heartbeat stopped (FROZEN_AFTER_MS). */
  frozen: boolean;
  /** Outer VMs booted: 2 when the first timed out or its guest crashed, and the run was made again. */
  attempts: number;
  /** Why the run was made a second time, when it was. */
  retryReason?: string;
  /** The outer VM's whole console log (kernel messages and /init's report lines). */
  serial: string;
  /** The host directory that was shared writable (deleted already if the harness created it). */
  shareDir: string;
}

/** Quotes a string for POSIX sh (for the commands run inside). */
export function shellQuote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

/** The outer VM's /init. Writes nothing but the report lines to the console. */
function nestedInit(kvm: boolean): string {
  const say = (text: string) => `echo "${NESTED_REPORT_PREFIX} ${text}"`;
  const mount9p = (tag: string, where: string, readOnly: boolean) =>
    `mount -t 9p -o trans=virtio,version=9p2000.L,msize=${NINEP_MSIZE}${readOnly ? ",ro" : ""} ${tag} ${where}`;
  return `#!/bin/sh
# Outer VM init for the nested harness (generated by src/harness/nested.ts).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
# Closing the console descriptors waits for the UART to drain before power-off.
drain() { exec </dev/null >/dev/null 2>&1; }
fail() { ${say("setup failed: $*")}; drain; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
${LOAD_MODULES_SH}
${kvm ? `[ -c /dev/kvm ] || fail "/dev/kvm did not appear after loading kvm-amd"` : ""}
mkdir -p /host /ctl
${mount9p("hostroot", "/host", true)} || fail "cannot mount the host root (9p hostroot)"
${mount9p("flintctl", "/ctl", false)} || fail "cannot mount the control share (9p flintctl)"
mount -t proc proc /host/proc || fail "cannot mount /host/proc"
mount -t sysfs sysfs /host/sys || fail "cannot mount /host/sys"
mount -t devtmpfs devtmpfs /host/dev || fail "cannot mount /host/dev"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
share=$(cat /ctl/share-path)
mkdir -p "/host$share" 2>/dev/null
${mount9p("flintshare", '"/host$share"', false)} || fail "cannot mount the share at $share"
${say("running")}
(n=0; while :; do n=$((n + 1)); echo $n >/ctl/heartbeat; sleep ${HEARTBEAT_S}; done) </dev/null >/dev/null 2>&1 &
heartbeat=$!
chroot /host /bin/sh -c "$(cat /ctl/command.sh)" </dev/null >/ctl/output 2>&1
echo $? >/ctl/exit-code
kill $heartbeat
${say("exit $(cat /ctl/exit-code)")}
umount "/host$share" /ctl
drain
poweroff -f
`;
}

/** Memoized per process: the outer VM's kernel and initramfs paths for a `kvm` setting. */
const preparedBoot = new Map<boolean, Promise<{ kernel: string; initramfs: string }>>();

async function prepareBoot(kvm: boolean, onProgress?: ProgressCallback): Promise<{ kernel: string; initramfs: string }> {
  const kernel = await debianKernel({ onProgress });
  const modules = moduleClosure(kernel.modulesDir, [...NESTED_9P_MODULES, ...NESTED_NET_MODULES, ...NESTED_DISK_MODULES, ...(kvm ? NESTED_KVM_MODULES : [])]);
  const init = nestedInit(kvm);
  const busybox = statSync(HOST_BUSYBOX);
  const key = cacheKey([
    init,
    kernel.packageVersion,
    modules.join("\n"),
    `${busybox.size}-${Math.floor(busybox.mtimeMs)}`,
    `recipe-${NESTED_INITRAMFS_RECIPE_VERSION}`,
  ]);
  const entry = await cachedDirectory(`nested-initramfs-${key}`, async (tmp) => {
    writeFileSync(join(tmp, "initramfs.cpio.gz"), buildInitramfs({ init, modules }));
  });
  return { kernel: kernel.vmlinuz, initramfs: join(entry, "initramfs.cpio.gz") };
}

/** The QEMU command line for one run, one documented option at a time. */
function qemuArgs(options: {
  kernel: string;
  initramfs: string;
  cpus: number;
  memoryMib: number;
  shareDir: string;
  controlDir: string;
}): string[] {
  const virtfs = (path: string, tag: string, extra: string) =>
    // security_model=none: files are created as QEMU's user (root) and host permissions apply;
    // multidevs=remap: host "/" spans several file systems, remap inode numbers to keep them unique.
    `local,path=${path.replace(/,/g, ",,")},mount_tag=${tag},security_model=none,multidevs=remap${extra}`;
  return [
    // Pure emulation: this host's /dev/kvm cannot run a Linux kernel at usable speed.
    "-accel", "tcg",
    // Every feature TCG can emulate, including SVM: the guest's kvm-amd gives a real /dev/kvm.
    // But no XSAVE: QEMU's SVM emulation has no XSETBV intercept, so a nested guest's XSETBV
    // bypasses the KVM inside, which keeps its own (stale) idea of the guest's XCR0 and loads
    // it at every VM entry: the nested guest's XCR0 changes under it, and Linux warns
    // "XSAVE consistency problem" at boot. Without XSAVE, nested guests use FXSAVE.
    "-cpu", "max,xsave=off",
    "-smp", String(options.cpus),
    "-m", `${options.memoryMib}M`,
    // No default NIC, VGA, CD-ROM, floppy, parallel port or monitor; ignore /etc/qemu configs.
    "-nodefaults", "-no-user-config",
    "-display", "none",
    // COM1 (the guest's ttyS0) on our stdout pipe.
    "-serial", "stdio",
    // A guest reboot (panic=-1 reboots at once on a panic) ends QEMU instead of restarting.
    "-no-reboot",
    // Direct kernel boot: Debian's bzImage and our busybox initramfs.
    "-kernel", options.kernel,
    "-initrd", options.initramfs,
    // mitigations=off: nothing to protect in a throwaway VM, and TCG runs faster without them.
    "-append", "console=ttyS0 panic=-1 mitigations=off rdinit=/init",
    // The host root, read-only: Node, the checkout and every tool appear under /host.
    "-virtfs", virtfs("/", "hostroot", ",readonly=on"),
    // The writable share, mounted at its host path inside the chroot.
    "-virtfs", virtfs(options.shareDir, "flintshare", ""),
    // The run's private control directory: command in, output and exit code out.
    "-virtfs", virtfs(options.controlDir, "flintctl", ""),
  ];
}

/** The script the chroot's /bin/sh runs: environment, working directory, then the command. */
function commandScript(command: string, cwd: string, env: Record<string, string>): string {
  const path = [dirname(process.execPath), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];
  // The host root is read-only inside; /dev/shm is the writable scratch space.
  const vars: Record<string, string> = { PATH: [...new Set(path)].join(":"), HOME: "/root", TERM: "dumb", TMPDIR: "/dev/shm", ...env };
  const exports = Object.entries(vars).map(([name, value]) => {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      throw new NestedError("EBADOPTION", `Cannot run nested command: '${name}' is not a valid environment variable name`);
    }
    return `export ${name}=${shellQuote(value)}`;
  });
  return `${exports.join("\n")}\ncd ${shellQuote(cwd)} || exit 125\n${command}\n`;
}

/**
 * Boots the outer VM, runs `command` inside, and resolves when QEMU has
 * exited (or was killed at `timeoutMs`). Rejects only when the harness itself
 * cannot run (QEMU missing, bad options, kernel unavailable); a command or
 * guest failure is reported in the result. Prints nothing; with
 * FLINT_NESTED_TIMES=FILE in the environment it appends each outer VM's time
 * (ms, the test file, the command's start) and each retry's reason to FILE,
 * which shows where a CI run's time went.
 */
export async function runNested(options: NestedOptions): Promise<NestedResult> {
  const reasons: string[] = [];
  for (let attempt = 1; ; attempt++) {
    const result = await runNestedOnce(options);
    const why = attempt < MAX_ATTEMPTS ? retryReason(result, options, attempt) : undefined;
    if (why === undefined) return { ...result, attempts: attempt, ...(reasons.length > 0 ? { retryReason: reasons.join(", and ") } : {}) };
    reasons.push(why);
    if (process.env.FLINT_NESTED_TIMES) appendFileSync(process.env.FLINT_NESTED_TIMES, `retry: ${why}\n`);
    options.retryAfterTimeout?.();
  }
}

/**
 * Outer VMs a run may take: the emulated machine fails in ways unrelated to
 * what runs in it (a freeze, a lockup, a nested guest killed, the outer VM
 * resetting in its own boot), and CI has seen two of those in one test's two
 * outer VMs, and three in the Kata test's three (a triple-faulted guest in two
 * of them). A plain time-out (the heartbeat went on, so the command itself
 * hung) is retried once only.
 */
const MAX_ATTEMPTS = 4;

const ORDINAL = ["first", "second", "third", "fourth"] as const;

/** Why `result` (the outer VM numbered `attempt`) should be run again, or undefined. */
export function retryReason(result: NestedResult, options: NestedOptions, attempt: number): string | undefined {
  const nth = ORDINAL[attempt - 1]!;
  if (result.timedOut) {
    // A frozen outer VM ran nothing for its last FROZEN_AFTER_MS: always worth another one.
    if (result.frozen) return `the ${nth} froze`;
    if (!options.retryAfterTimeout) return undefined;
    return attempt === 1 ? `the ${nth} timed out` : undefined;
  }
  if (options.retryOnGuestCrash === undefined) return undefined;
  const stuck = outerKernelLockup(result.serial);
  if (stuck !== undefined) return `the ${nth} one's kernel reported "${stuck}"`;
  for (const file of options.retryOnGuestCrash) {
    const text = existsSync(file) ? readFileSync(file, "utf8") : "";
    const crash = unrequestedTripleFault(text);
    if (crash !== undefined) return `a guest died in the ${nth} (${file.split("/").pop()}: ${crash})`;
    const stall = guestStall(text);
    if (stall !== undefined) return `a guest stalled in its early boot in the ${nth} (${file.split("/").pop()}: ${stall})`;
  }
  // QEMU exited (the outer VM powered off or reset) before /init wrote the command's status.
  if (result.exitCode < 0 && !result.serial.includes(`${NESTED_REPORT_PREFIX} setup failed`)) return `the ${nth} ended without the command's exit status`;
  return undefined;
}

/** The outer VM's kernel finding itself stuck (a CPU that does not schedule, an RCU grace period that never ends). */
const OUTER_LOCKUP = /(watchdog: BUG: soft lockup|rcu: INFO: rcu_\w+ (self-)?detected stall|rcu_\w+ self-detected stall|INFO: task .* blocked for more than \d+ seconds)[^\n]*/;

/** Anything the outer VM's kernel said that means trouble: a lockup or stall, a BUG or a WARNING. */
const OUTER_TROUBLE = new RegExp(`${OUTER_LOCKUP.source}|(BUG:|WARNING:|Kernel panic)[^\\n]*`);

/**
 * The first line in which the outer VM's kernel reported that it is stuck
 * (see OUTER_LOCKUP), or undefined. A user-space program (flint included)
 * cannot make a kernel lock up: the emulated machine under it failed, and
 * the nested guest on its KVM with it.
 */
export function outerKernelLockup(serial: string): string | undefined {
  return OUTER_LOCKUP.exec(serial)?.[0].trim();
}

/** How flint reports a guest reset by triple fault: its CLI's stderr line, or a library script's exit report. */
const TRIPLE_FAULT_REPORT = /flint: the guest reset the VM \(triple fault\)[^\n]*|reset\/triple-fault|"triple-fault[^"\n]*"/;

/** What Linux prints (at KERN_EMERG, so even with `quiet`) when it restarts on purpose, reboot=t included. */
const REQUESTED_RESTART = /reboot: (Restarting system|machine restart)/;

/** How an end-to-end client reports a guest whose console stopped in its early boot (waitForConsole in client-flows.ts). */
const GUEST_STALL_REPORT = /flint-e2e: guest_stalled=[^\n]*/;

/** The report of a guest that stalled in its early boot in `text`, or undefined. */
export function guestStall(text: string): string | undefined {
  return GUEST_STALL_REPORT.exec(text)?.[0];
}

/**
 * The report of a guest reset by triple fault in `text` (flint's output and
 * the guest's console) that the guest did not ask for: no restart message
 * from Linux before it. Such a guest died (a crash its kernel could not even
 * report); undefined when there is no such report.
 */
export function unrequestedTripleFault(text: string): string | undefined {
  const m = TRIPLE_FAULT_REPORT.exec(text);
  if (!m) return undefined;
  return REQUESTED_RESTART.test(text.slice(0, m.index)) ? undefined : m[0];
}

/**
 * One line that says how a nested run ended, for the start of an end-to-end
 * test's failure message (a CI summary shows the start of it).
 */
export function describeNestedRun(result: NestedResult | undefined): string {
  if (!result) return "the nested run never ended (its set-up failed)";
  const s = (result.durationMs / 1000).toFixed(0);
  const retried = result.attempts > 1 ? `, in a ${ORDINAL[result.attempts - 1]} outer VM because ${result.retryReason ?? "the first timed out"}` : "";
  const trouble = OUTER_TROUBLE.exec(result.serial)?.[0].trim();
  const said = trouble ? `; the outer VM's kernel said "${trouble}"` : "";
  if (result.frozen) return `the outer VM froze (its heartbeat stopped) and was killed after ${s} s${retried}${said}`;
  if (result.timedOut) return `the outer VM was killed at its time limit after ${s} s${retried}${said}`;
  if (result.exitCode < 0) return `the outer VM ended after ${s} s without the command's exit status${retried}${said}`;
  return `the nested command exited ${result.exitCode} after ${s} s${retried}${said}`;
}

async function runNestedOnce(options: NestedOptions): Promise<NestedResult> {
  const cpus = options.cpus ?? 2;
  const memoryMib = options.memoryMib ?? 2048;
  const kvm = options.kvm ?? true;
  const cwd = resolve(options.cwd ?? process.cwd());
  if (!Number.isInteger(cpus) || cpus < 1) throw new NestedError("EBADOPTION", `Cannot run nested VM: cpus must be a positive integer, not ${cpus}`);
  if (!Number.isInteger(memoryMib) || memoryMib < 256) {
    throw new NestedError("EBADOPTION", `Cannot run nested VM: memoryMib must be an integer of at least 256, not ${memoryMib}`);
  }
  if (!(options.timeoutMs > 0)) throw new NestedError("EBADOPTION", `Cannot run nested VM: timeoutMs must be positive, not ${options.timeoutMs}`);
  if (options.shareDir !== undefined && (!isAbsolute(options.shareDir) || !existsSync(options.shareDir))) {
    throw new NestedError("EBADOPTION", `Cannot share '${options.shareDir}' with the nested VM: it must be an existing absolute directory`);
  }

  let prepared = preparedBoot.get(kvm);
  if (!prepared) {
    prepared = prepareBoot(kvm, options.onProgress);
    preparedBoot.set(kvm, prepared);
    prepared.catch(() => preparedBoot.delete(kvm));
  }
  const { kernel, initramfs } = await prepared;

  const release = await acquireHostLock(NESTED_LOCK_DIR, NESTED_LOCK_WAIT_MS);
  const controlDir = mkdtempSync(join(tmpdir(), "flint-nested-ctl-"));
  const ownShare = options.shareDir === undefined;
  const shareDir = options.shareDir ?? mkdtempSync(join(tmpdir(), "flint-nested-share-"));
  try {
    writeFileSync(join(controlDir, "share-path"), shareDir);
    writeFileSync(join(controlDir, "command.sh"), commandScript(options.command, cwd, options.env ?? {}));
    mkdirSync(shareDir, { recursive: true });

    const started = performance.now();
    const { serial, timedOut, frozen } = await runQemu(
      qemuArgs({ kernel, initramfs, cpus, memoryMib, shareDir, controlDir }),
      options.timeoutMs,
      { path: join(controlDir, "heartbeat"), frozenAfterMs: options.frozenAfterMs ?? FROZEN_AFTER_MS },
      options.onSerial,
      // A lockup makes a run with retryOnGuestCrash another outer VM's work anyway: end it when the kernel says so.
      options.retryOnGuestCrash !== undefined,
    );
    const durationMs = Math.round(performance.now() - started);
    if (process.env.FLINT_NESTED_TIMES) appendFileSync(process.env.FLINT_NESTED_TIMES, `${durationMs} ${process.argv[1]} ${options.command.slice(0, 100).replace(/\n/g, " ")}\n`);

    const exitFile = join(controlDir, "exit-code");
    const exitText = existsSync(exitFile) ? readFileSync(exitFile, "utf8").trim() : "";
    const outputFile = join(controlDir, "output");
    return {
      exitCode: !timedOut && /^\d+$/.test(exitText) ? Number(exitText) : -1,
      output: existsSync(outputFile) ? readFileSync(outputFile, "utf8") : "",
      durationMs,
      timedOut,
      frozen,
      attempts: 1,
      serial,
      shareDir,
    };
  } finally {
    release();
    rmSync(controlDir, { recursive: true, force: true });
    if (ownShare) rmSync(shareDir, { recursive: true, force: true });
  }
}

/** The heartbeat file's content, or undefined while there is none. */
function readHeartbeat(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/**
 * Runs QEMU to completion, until `timeoutMs`, or until the outer VM's
 * heartbeat (written to `heartbeat.path`) stops for `heartbeat.frozenAfterMs`,
 * collecting the serial console.
 */
function runQemu(
  args: string[],
  timeoutMs: number,
  heartbeat: { path: string; frozenAfterMs: number },
  onSerial?: (text: string) => void,
  stopOnLockup = false,
): Promise<{ serial: string; timedOut: boolean; frozen: boolean }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(QEMU_BINARY, args, { stdio: ["ignore", "pipe", "pipe"] });
    let serial = "";
    let stderr = "";
    let timedOut = false;
    let frozen = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    let beat = readHeartbeat(heartbeat.path), beatAt = performance.now();
    const watch = setInterval(() => {
      const now = readHeartbeat(heartbeat.path);
      if (now !== beat) {
        beat = now;
        beatAt = performance.now();
      } else if (performance.now() - beatAt > heartbeat.frozenAfterMs && !timedOut) {
        timedOut = frozen = true;
        child.kill("SIGKILL");
      }
    }, HEARTBEAT_S * 1000);
    let lockedUp = false;
    child.stdout.setEncoding("utf8").on("data", (text: string) => {
      serial += text;
      onSerial?.(text);
      // The outer kernel said it is stuck: what runs in it is stalled too, and the run will be made again.
      // Whole lines only, so that the report that names the retry is not cut off mid-line.
      const recent = serial.slice(-(text.length + 512));
      if (stopOnLockup && !lockedUp && outerKernelLockup(recent.slice(0, recent.lastIndexOf("\n") + 1)) !== undefined) {
        lockedUp = true;
        child.kill("SIGKILL");
      }
    });
    child.stderr.setEncoding("utf8").on("data", (text: string) => {
      stderr += text;
    });
    child.on("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      clearInterval(watch);
      reject(
        error.code === "ENOENT"
          ? new NestedError("ENOQEMU", `Cannot run nested VM: ${QEMU_BINARY} is missing (apt-get install qemu-system-x86)`)
          : new NestedError("EQEMU", `Cannot run nested VM: ${error.message}`, { cause: error }),
      );
    });
    child.on("close", (exitCode, signal) => {
      clearTimeout(timer);
      clearInterval(watch);
      // QEMU exits 0 on guest poweroff and on -no-reboot resets; anything else is QEMU's own failure.
      if (!timedOut && !lockedUp && exitCode !== 0) {
        const how = signal ? `was killed by ${signal}` : `exited with status ${exitCode}`;
        reject(new NestedError("EQEMU", `Cannot run nested VM: ${QEMU_BINARY} ${how}: ${stderr.trim()}`));
        return;
      }
      resolvePromise({ serial, timedOut, frozen });
    });
  });
}
