/**
 * Builds busybox initramfs images (gzip-compressed newc cpio) for flint's
 * guests: the static busybox from Debian's busybox-static at /bin/busybox with
 * a symlink per applet, a shell-script /init, optional extra files, and
 * optional kernel modules (stored decompressed, since busybox insmod cannot
 * read .ko.xz/.ko.zst).
 *
 * Also defines the default guest's /init and the report lines it prints,
 * with their parser, so producer and consumers share one format.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { basename, posix } from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import { type CpioEntry, writeCpio } from "./cpio.js";

/** Where the static busybox comes from (package busybox-static). */
export const HOST_BUSYBOX = process.env.FLINT_BUSYBOX ?? "/bin/busybox";

/** The guest directory that holds modules given to {@link buildInitramfs}. */
export const INITRAMFS_MODULE_DIR = "/lib/modules";

/** File in {@link INITRAMFS_MODULE_DIR} listing module file names, one per line, in load order. */
export const INITRAMFS_MODULE_ORDER = "/lib/modules/load-order";

/** Shell lines that insmod every module in {@link INITRAMFS_MODULE_ORDER}, reporting failures. */
export const LOAD_MODULES_SH = `if [ -f ${INITRAMFS_MODULE_ORDER} ]; then
  for m in $(cat ${INITRAMFS_MODULE_ORDER}); do
    insmod ${INITRAMFS_MODULE_DIR}/$m || echo "flint-guest: insmod $m failed"
  done
fi`;

/** Guest-physical address of flint's boot-timer MMIO byte (arch/x86_64/layout.ts BOOT_TIMER_ADDR). */
export const BOOT_TIMER_GUEST_ADDR = 0xd000_0000;

/** Prefix of every report line the default /init prints. */
export const GUEST_REPORT_PREFIX = "flint-guest:";

/** Why an initramfs could not be built. */
export class InitramfsError extends Error {
  readonly code: "EBUSYBOX" | "EINITRAMFSFILE" | "EMODULE";
  constructor(code: InitramfsError["code"], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "InitramfsError";
    this.code = code;
  }
}

/** An extra file for the image: its contents given inline or read from the host. */
export interface InitramfsFile {
  /** Absolute path inside the guest, e.g. "/etc/motd". Parent directories are created. */
  path: string;
  /** Contents; exactly one of `data` and `hostPath`. */
  data?: string | Uint8Array;
  /** Host file to copy. */
  hostPath?: string;
  /** Permission bits (default 0o644, or the host file's for `hostPath`). */
  mode?: number;
}

/** Options for {@link buildInitramfs}. */
export interface InitramfsOptions {
  /** The /init shell script (should start with "#!/bin/sh"). */
  init: string;
  /** Extra files. */
  files?: readonly InitramfsFile[];
  /**
   * Host paths of kernel modules (.ko, .ko.xz, .ko.zst, .ko.gz), in load
   * order. Stored decompressed as /lib/modules/<name>.ko and listed in
   * /lib/modules/load-order; /init loads them with {@link LOAD_MODULES_SH}.
   */
  modules?: readonly string[];
  /** The static busybox binary to use (default {@link HOST_BUSYBOX}). */
  busybox?: string;
}

/** True if the ELF file has a PT_INTERP program header (needs a dynamic loader). */
function isDynamicElf(bytes: Buffer): boolean {
  // ELF64 header: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38; p_type is the first word.
  if (bytes.length < 64 || bytes.readUInt32BE(0) !== 0x7f454c46) return false;
  const phoff = Number(bytes.readBigUInt64LE(0x20));
  const phentsize = bytes.readUInt16LE(0x36);
  const phnum = bytes.readUInt16LE(0x38);
  const PT_INTERP = 3;
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 4 <= bytes.length && bytes.readUInt32LE(at) === PT_INTERP) return true;
  }
  return false;
}

function readBusybox(path: string): { binary: Buffer; applets: string[] } {
  if (!existsSync(path)) {
    throw new InitramfsError("EBUSYBOX", `Cannot build initramfs: ${path} is missing (apt-get install busybox-static)`);
  }
  const binary = readFileSync(path);
  if (isDynamicElf(binary)) {
    throw new InitramfsError(
      "EBUSYBOX",
      `Cannot build initramfs: ${path} is dynamically linked and would not run alone (apt-get install busybox-static)`,
    );
  }
  // "--list-full" gives each applet's conventional path: "bin/sh", "usr/sbin/arping"...
  const list = execFileSync(path, ["--list-full"], { encoding: "utf8" });
  const applets = list.split("\n").map((line) => line.trim()).filter((line) => line !== "" && line !== "bin/busybox");
  return { binary, applets };
}

/** Reads a module, decompressing it by its extension; returns its guest file name and bytes. */
function readModule(hostPath: string): { name: string; data: Buffer } {
  if (!existsSync(hostPath)) {
    throw new InitramfsError("EMODULE", `Cannot add module to initramfs: ${hostPath} does not exist`);
  }
  const file = basename(hostPath);
  const decompressors: [suffix: string, decompress: () => Buffer][] = [
    [".xz", () => execFileSync("xz", ["-dc", hostPath], { maxBuffer: 1 << 30 })],
    [".zst", () => execFileSync("zstd", ["-dcq", hostPath], { maxBuffer: 1 << 30 })],
    [".gz", () => gunzipSync(readFileSync(hostPath))],
  ];
  for (const [suffix, decompress] of decompressors) {
    if (file.endsWith(`.ko${suffix}`)) {
      try {
        return { name: file.slice(0, -suffix.length), data: decompress() };
      } catch (error) {
        throw new InitramfsError("EMODULE", `Cannot decompress module ${hostPath}: ${(error as Error).message}`, {
          cause: error,
        });
      }
    }
  }
  if (!file.endsWith(".ko")) {
    throw new InitramfsError("EMODULE", `Cannot add module to initramfs: ${hostPath} is not a .ko file`);
  }
  return { name: file, data: readFileSync(hostPath) };
}

/**
 * Builds a gzip-compressed newc initramfs with busybox, its applet links,
 * /init, the standard mount points, /dev/console, /dev/null and /dev/mem
 * (usable before devtmpfs is mounted), plus the given files and modules.
 * Reproducible: the same inputs give the same bytes.
 */
export function buildInitramfs(options: InitramfsOptions): Buffer {
  const { binary, applets } = readBusybox(options.busybox ?? HOST_BUSYBOX);
  const tree = new Map<string, CpioEntry>();
  const addDirectories = (path: string): void => {
    for (let dir = posix.dirname(path); dir !== "/" && dir !== "."; dir = posix.dirname(dir)) {
      if (!tree.has(dir)) tree.set(dir, { type: "directory", path: dir });
    }
  };
  const add = (entry: CpioEntry): void => {
    const path = posix.normalize(posix.join("/", entry.path));
    addDirectories(path);
    tree.set(path, { ...entry, path });
  };

  for (const dir of ["/bin", "/sbin", "/usr/bin", "/usr/sbin", "/dev", "/proc", "/sys", "/root", "/etc", "/mnt", "/run"]) {
    add({ type: "directory", path: dir });
  }
  add({ type: "directory", path: "/tmp", mode: 0o1777 });
  add({ type: "device", path: "/dev/console", kind: "char", major: 5, minor: 1 });
  add({ type: "device", path: "/dev/null", kind: "char", major: 1, minor: 3, mode: 0o666 });
  add({ type: "device", path: "/dev/mem", kind: "char", major: 1, minor: 1, mode: 0o640 });
  add({ type: "file", path: "/bin/busybox", data: binary, mode: 0o755 });
  for (const applet of applets) add({ type: "symlink", path: `/${applet}`, target: "/bin/busybox" });
  add({ type: "file", path: "/init", data: options.init, mode: 0o755 });

  for (const file of options.files ?? []) {
    if ((file.data === undefined) === (file.hostPath === undefined)) {
      throw new InitramfsError("EINITRAMFSFILE", `Cannot add '${file.path}' to initramfs: give exactly one of data and hostPath`);
    }
    if (file.hostPath !== undefined) {
      if (!existsSync(file.hostPath)) {
        throw new InitramfsError("EINITRAMFSFILE", `Cannot add '${file.path}' to initramfs: ${file.hostPath} does not exist`);
      }
      const mode = file.mode ?? statSync(file.hostPath).mode & 0o7777;
      add({ type: "file", path: file.path, data: readFileSync(file.hostPath), mode });
    } else {
      add({ type: "file", path: file.path, data: file.data!, mode: file.mode ?? 0o644 });
    }
  }

  const order: string[] = [];
  for (const hostPath of options.modules ?? []) {
    const { name, data } = readModule(hostPath);
    if (order.includes(name)) continue;
    order.push(name);
    add({ type: "file", path: `${INITRAMFS_MODULE_DIR}/${name}`, data, mode: 0o644 });
  }
  if (order.length > 0) add({ type: "file", path: INITRAMFS_MODULE_ORDER, data: order.map((n) => `${n}\n`).join("") });

  // Sorted paths put every directory before its contents.
  const entries = [...tree.keys()].sort().map((path) => tree.get(path)!);
  return gzipSync(writeCpio(entries), { level: 6 });
}

/** What the default /init does after reporting. */
export type DefaultInitFinish = "poweroff" | "reboot" | "shell";

/** Options for {@link defaultInit}. */
export interface DefaultInitOptions {
  /** "poweroff" (default): `poweroff -f`; "reboot": `reboot -f`; "shell": an interactive shell on the console, then poweroff. */
  finish?: DefaultInitFinish;
}

/**
 * The default guest's /init: mounts proc, sysfs and devtmpfs, writes 1 to
 * the boot-timer MMIO byte (errors ignored, so it also runs on other
 * monitors), prints the report lines parsed by {@link parseGuestReport},
 * then powers off, reboots or starts a shell — after the console has drained.
 */
export function defaultInit(options: DefaultInitOptions = {}): string {
  const finish = options.finish ?? "poweroff";
  // Closing init's console descriptors makes the tty's last close wait until the UART has sent
  // everything (serial core's closing_wait), so an immediate power-off loses no output.
  const drain = "exec </dev/null >/dev/null 2>&1";
  const ending = {
    poweroff: `${drain}\npoweroff -f`,
    reboot: `${drain}\nreboot -f`,
    // cttyhack gives the shell a controlling terminal so ^C works; poweroff when it exits.
    shell: `echo "${GUEST_REPORT_PREFIX} starting shell (exit to power off)"\nsetsid cttyhack sh\n${drain}\npoweroff -f`,
  }[finish];
  return `#!/bin/sh
# flint default guest init (generated by src/guest/initramfs.ts)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Boot timer: the monitor notes the time of this write (user space reached).
devmem 0x${BOOT_TIMER_GUEST_ADDR.toString(16)} 8 1 2>/dev/null
echo "${GUEST_REPORT_PREFIX} booted"
echo "${GUEST_REPORT_PREFIX} nproc=$(nproc)"
echo "${GUEST_REPORT_PREFIX} MemTotal=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) kB"
echo "${GUEST_REPORT_PREFIX} uptime=$(cut -d' ' -f1 /proc/uptime) s"
${ending}
`;
}

/** What the default /init reported, parsed from console output. */
export interface GuestReport {
  /** The "booted" line was seen. */
  booted: boolean;
  /** CPUs online in the guest. */
  nproc?: number;
  /** MemTotal from the guest's /proc/meminfo, in KiB. */
  memTotalKib?: number;
  /** Guest uptime when /init reported, in seconds. */
  uptimeSec?: number;
}

/** Parses the default /init's report lines from console output (other lines and \r are ignored). */
export function parseGuestReport(output: string): GuestReport {
  const report: GuestReport = { booted: false };
  for (const raw of output.split("\n")) {
    const at = raw.indexOf(GUEST_REPORT_PREFIX);
    if (at < 0) continue;
    const line = raw.slice(at + GUEST_REPORT_PREFIX.length).trim();
    let match: RegExpExecArray | null;
    if (line === "booted") report.booted = true;
    else if ((match = /^nproc=(\d+)$/.exec(line))) report.nproc = Number(match[1]);
    else if ((match = /^MemTotal=(\d+) kB$/.exec(line))) report.memTotalKib = Number(match[1]);
    else if ((match = /^uptime=([\d.]+) s$/.exec(line))) report.uptimeSec = Number(match[1]);
  }
  return report;
}
