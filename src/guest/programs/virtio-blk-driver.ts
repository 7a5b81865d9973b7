/**
 * The virtio-blk driver guest (guest/ring3/virtio-blk-entry.S +
 * virtio-blk-driver.c): a PVH kernel that drops to ring 3 and drives one
 * virtio-blk device over virtio-mmio (Version 2) by polling — no interrupts,
 * kicks through QueueNotify. flint's direct-KVM device test
 * (virtio-blk-driver.test.ts, beside this file) runs it in `test` mode and
 * the benchmark (src/bench/virtio-blk-bench.ts) in `bench` mode, under
 * flint and under QEMU -M microvm alike.
 *
 * The protocol between the guest and its monitor is defined here, once; the
 * guest gets the numbers through a generated header (vblk-protocol.h):
 *   - command line: `blk=<register window> mode=test|bench seed=N
 *     [qd1=N qd32=N seq=N] [features=min]` (see vblkCmdline);
 *   - output: lines `vblk KEY=VALUE` on the COM1 UART (parseVblkReport);
 *   - the end code on VBLK_END_PORT (QEMU's isa-debug-exit port, flint's
 *     --debug-exit), and in bench mode one write to VBLK_MARK_PORT that
 *     starts the TSC calibration window (see the report keys below).
 *
 * Test mode (run_tests in the C): GET_ID; a write of a seeded xorshift32
 * pattern (vblkWritePattern) to VBLK_TEST_WRITE_SECTOR; a read back, compared
 * in the guest; a read of VBLK_TEST_HOST_SECTOR (FNV-1a 32 of it reported:
 * fnv1a32); FLUSH; a read at the capacity and one across it.
 *
 * Bench mode: three phases of reads, each completion checked against the
 * sector stamps of a stamped image (writeStampedImage): 4 KiB random at
 * queue depth 1, 4 KiB random at depth VBLK_MAX_DEPTH, 64 KiB sequential at
 * depth 1, timed with the TSC; the TSC is calibrated by the host against the
 * two marker timestamps.
 */
import { execFileSync } from "node:child_process";
import { closeSync, openSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { COM1_PORT, DEBUG_EXIT_PORT, DEBUG_MARK_PORT } from "../../arch/x86_64/layout.js";
import { GuestProgramError } from "./program-error.js";
import { cachedArtifact, gcc, packagePath, readSources } from "./build-cache.js";
import { cHeader, flintAbiHeader } from "./c-header.js";

/** Where the PVH image is linked and loaded (guest-physical). */
export const VBLK_LOAD_ADDR = 0x10_0000;
/** Bench mode: the guest writes one byte here when the calibration window opens (flint's debug-exit mark port). */
export const VBLK_MARK_PORT = DEBUG_MARK_PORT;
/** The end code goes here: QEMU's isa-debug-exit (status 2v+1), flint's debug-exit (status v). */
export const VBLK_END_PORT = DEBUG_EXIT_PORT;
/** The UART the guest reports on (a 16550 in both monitors). */
export const VBLK_SERIAL_PORT = COM1_PORT;

/** End codes. */
export const VBLK_END_OK = 0;
export const VBLK_END_BAD_MAGIC = 1;
export const VBLK_END_BAD_CMDLINE = 2;
/** The device was missing or wrong, refused the driver, or a request could not be made. */
export const VBLK_END_DEVICE = 3;
/** The device did not complete a request within VBLK_POLL_SPIN_LIMIT polls. */
export const VBLK_END_TIMEOUT = 4;

/** Descriptors in queue 0 (a power of two; flint and QEMU offer 256). */
export const VBLK_QUEUE_SIZE = 128;
/** Requests in flight in the deep phase (three descriptors each). */
export const VBLK_MAX_DEPTH = 32;
/** Bytes per random read. */
export const VBLK_RANDOM_BYTES = 4096;
/** Bytes per sequential read. */
export const VBLK_SEQ_BYTES = 65536;
/** Test mode: where the guest writes its pattern, and how much (two 4 KiB descriptors). */
export const VBLK_TEST_WRITE_SECTOR = 64;
export const VBLK_TEST_WRITE_BYTES = 8192;
/** Test mode: where the guest reads the host's pattern, and how much. */
export const VBLK_TEST_HOST_SECTOR = 128;
export const VBLK_TEST_HOST_BYTES = 4096;
/** Smallest disk the test mode works on (its sectors, and the reads at the end). */
export const VBLK_TEST_MIN_DISK_BYTES = 1 << 20;
/** The C driver's stack. */
export const VBLK_STACK_BYTES = 16384;
/** LSR polls before a byte is sent anyway. */
export const VBLK_SERIAL_SPIN_LIMIT = 1_000_000;
/** used->idx polls (each with a `pause`) before a request counts as lost: several seconds. */
export const VBLK_POLL_SPIN_LIMIT = 400_000_000;
/** Bytes per sector (virtio-blk's unit, §5.2.4). */
export const VBLK_SECTOR_BYTES = 512;

/** What the guest runs. */
export type VblkMode = "test" | "bench";

/** One run of the guest. */
export interface VblkRun {
  /** Guest-physical base of the device's virtio-mmio register window. */
  blkBase: number;
  mode: VblkMode;
  /** Non-zero u32: the test pattern's seed, or the bench's offset generator's. */
  seed: number;
  /** Bench mode: requests in each phase. */
  qd1?: number;
  qd32?: number;
  seq?: number;
  /**
   * Accept VIRTIO_F_VERSION_1 only; by default the guest also accepts
   * VIRTIO_BLK_F_FLUSH (write-back cache) and VIRTIO_BLK_F_RO when offered.
   */
  minimalFeatures?: boolean;
}

const u32ok = (n: number | undefined): boolean => n === undefined || (Number.isSafeInteger(n) && n >= 0 && n <= 0xffff_ffff);

/** The guest's command line for `run`; throws EPROGARG on values it would refuse. */
export function vblkCmdline(run: VblkRun): string {
  if (run.mode !== "test" && run.mode !== "bench") throw new GuestProgramError("EPROGARG", `Cannot run the virtio-blk guest: mode '${String(run.mode)}' is not test or bench`);
  if (!u32ok(run.blkBase) || run.blkBase === 0) throw new GuestProgramError("EPROGARG", `Cannot run the virtio-blk guest: register window 0x${run.blkBase.toString(16)} is not a 32-bit address`);
  if (!u32ok(run.seed) || run.seed === 0) throw new GuestProgramError("EPROGARG", `Cannot run the virtio-blk guest: seed ${run.seed} is not a non-zero u32`);
  const words = [`blk=0x${run.blkBase.toString(16)}`, `mode=${run.mode}`, `seed=0x${run.seed.toString(16)}`];
  for (const key of ["qd1", "qd32", "seq"] as const) {
    const n = run[key];
    if (n === undefined) continue;
    if (!u32ok(n)) throw new GuestProgramError("EPROGARG", `Cannot run the virtio-blk guest: ${key}=${n} is not a u32`);
    words.push(`${key}=${n}`);
  }
  if (run.minimalFeatures) words.push("features=min");
  return words.join(" ");
}

/** `vblk-protocol.h`: the constants above for the C and assembly. */
export function vblkProtocolHeader(): string {
  return cHeader("the virtio-blk driver guest protocol (src/guest/programs/virtio-blk-driver.ts)", {
    VBLK_LOAD_ADDR, VBLK_MARK_PORT, VBLK_END_PORT, VBLK_SERIAL_PORT,
    VBLK_END_OK, VBLK_END_BAD_MAGIC, VBLK_END_BAD_CMDLINE, VBLK_END_DEVICE, VBLK_END_TIMEOUT,
    VBLK_QUEUE_SIZE, VBLK_MAX_DEPTH, VBLK_RANDOM_BYTES, VBLK_SEQ_BYTES,
    VBLK_TEST_WRITE_SECTOR, VBLK_TEST_WRITE_BYTES, VBLK_TEST_HOST_SECTOR, VBLK_TEST_HOST_BYTES,
    VBLK_STACK_BYTES, VBLK_SERIAL_SPIN_LIMIT, VBLK_POLL_SPIN_LIMIT,
  });
}

const SOURCES = ["guest/ring3/virtio-blk-entry.S", "guest/ring3/virtio-blk-driver.c", "guest/ring3/virtio-blk.ld", "guest/ring3/pvh-ring3.h"] as const;

/** Bump when the build steps change in a way that changes the output. */
const RECIPE_VERSION = "virtio-blk-guest 2";

/** Where the Linux UAPI headers' asm/ directory lives (Debian multiarch), for a -m32 build without multilib. */
function multiarchInclude(): string {
  try {
    const triple = execFileSync("gcc", ["-print-multiarch"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    return triple ? `/usr/include/${triple}` : "/usr/include";
  } catch {
    return "/usr/include"; // gcc missing: gcc() below reports it
  }
}

function gccArgs(dir: string, asmInclude: string): string[] {
  return [
    // 32-bit code: the PVH entry is 32-bit protected mode, and ring 3 stays there.
    "-m32", "-march=i686", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
    "-ffreestanding", "-fno-pic", "-fno-pie", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
    // No SSE/x87: CR4.OSFXSR is clear at the PVH entry. Keep memset loops from calling memset.
    "-mgeneral-regs-only", "-fno-tree-loop-distribute-patterns",
    `-idirafter`, asmInclude, `-I${dir}`,
    "-nostdlib", "-static", "-no-pie",
    "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
    `-Wl,-T,${packagePath(SOURCES[2])}`, `-Wl,--defsym=VBLK_LOAD_ADDR=${VBLK_LOAD_ADDR}`,
    packagePath(SOURCES[0]), packagePath(SOURCES[1]),
    "-o", join(dir, "virtio-blk-guest32.elf"),
  ];
}

/**
 * Returns the path of the guest ELF (ELF64 wrapper around 32-bit code, as
 * flint's loader takes x86-64 images only), building it with gcc and objcopy
 * unless the cache holds one built from the same sources, headers and flags.
 */
export function buildVirtioBlkGuest(): string {
  const asmInclude = multiarchInclude();
  return cachedArtifact({
    name: "virtio-blk-guest",
    keyParts: [RECIPE_VERSION, ...readSources(SOURCES), flintAbiHeader(), vblkProtocolHeader(), ...gccArgs("DIR", asmInclude)],
    fileName: "virtio-blk.elf",
    build(dir) {
      writeVblkHeaders(dir);
      gcc(gccArgs(dir, asmInclude), "the virtio-blk driver guest");
      try {
        execFileSync("objcopy", ["-O", "elf64-x86-64", join(dir, "virtio-blk-guest32.elf"), join(dir, "virtio-blk.elf")],
          { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
      } catch (error) {
        const e = error as NodeJS.ErrnoException & { stderr?: string };
        throw new GuestProgramError("EPROGBUILD", `Cannot build the virtio-blk driver guest: objcopy failed: ${(e.stderr ?? e.message).trim()}`, { cause: error });
      }
    },
  });
}

/** Writes flint-abi.h and vblk-protocol.h into `dir`. */
export function writeVblkHeaders(dir: string): void {
  writeFileSync(join(dir, "flint-abi.h"), flintAbiHeader());
  writeFileSync(join(dir, "vblk-protocol.h"), vblkProtocolHeader());
}

// ---------------------------------------------------------------------------
// The guest's report
// ---------------------------------------------------------------------------

/**
 * The guest's `vblk KEY=VALUE` lines. Keys (numbers are 0x-hex):
 *   magic version device_id vendor_id device_features driver_features
 *   queue_num_max queue_size capacity status     device set-up, in order
 *   error                                         why the guest gave up (text)
 *   NAME.status NAME.used_len                     test requests: get_id write
 *                                                 readback host_read flush
 *                                                 read_end read_across_end
 *   get_id.data host_read.data                    hex bytes
 *   readback.match host_read.fnv1a kicks kicks_suppressed
 *   tsc.mark tsc.end                              bench: the calibration window
 *   P.bytes_per_request P.depth P.requests P.ticks P.errors P.bad_len
 *   P.bad_data P.kicks P.kicks_suppressed         bench phases P = qd1 qd32 seq
 *   done                                          1: everything ran
 */
export class VblkReport {
  readonly values: ReadonlyMap<string, string>;
  /** Everything the guest printed, for messages. */
  readonly text: string;

  constructor(text: string) {
    this.text = text;
    const values = new Map<string, string>();
    for (const line of text.split("\n")) {
      const m = /^vblk ([a-z0-9_.]+)=(.*)$/.exec(line.trim());
      if (m) values.set(m[1]!, m[2]!);
    }
    this.values = values;
  }

  has(key: string): boolean {
    return this.values.has(key);
  }

  /** A numeric value; throws EPROGRUN if missing or not 0x-hex. */
  big(key: string): bigint {
    const v = this.values.get(key);
    if (v === undefined || !/^0x[0-9a-f]+$/.test(v)) {
      throw new GuestProgramError("EPROGRUN", `The virtio-blk guest reported no number '${key}'${this.error ? ` (guest error: ${this.error})` : ""}:\n${this.text.split("\n").slice(-12).join("\n")}`);
    }
    return BigInt(v);
  }

  /** A numeric value that fits a double exactly. */
  num(key: string): number {
    const v = this.big(key);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new GuestProgramError("EPROGRUN", `The virtio-blk guest reported ${key}=${v}, too large`);
    return Number(v);
  }

  /** A `.data` value as bytes. */
  bytes(key: string): Uint8Array {
    const v = this.values.get(key) ?? "";
    if (!/^([0-9a-f]{2})*$/.test(v) || !this.values.has(key)) throw new GuestProgramError("EPROGRUN", `The virtio-blk guest reported no bytes '${key}'`);
    return Uint8Array.from(Buffer.from(v, "hex"));
  }

  /** The guest's `error=` text, if it gave up. */
  get error(): string | undefined {
    return this.values.get("error");
  }
}

// ---------------------------------------------------------------------------
// Host-side twins of the guest's computations
// ---------------------------------------------------------------------------

/** Marsaglia's xorshift32, as in the guest. */
export function xorshift32(x: number): number {
  x ^= x << 13;
  x >>>= 0;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

/** The bytes the test-mode guest writes for `seed`: successive xorshift32 states, little-endian. */
export function vblkWritePattern(seed: number, bytes = VBLK_TEST_WRITE_BYTES): Uint8Array {
  const out = new Uint8Array(bytes);
  const view = new DataView(out.buffer);
  let x = seed >>> 0;
  for (let i = 0; i + 4 <= bytes; i += 4) {
    x = xorshift32(x);
    view.setUint32(i, x, true);
  }
  return out;
}

/** FNV-1a 32-bit, as the guest hashes the host's pattern. */
export function fnv1a32(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

/**
 * Writes a raw image of `bytes` (a multiple of 512) at `path` whose every
 * sector starts with its own number as a little-endian u64 (the rest zero):
 * the bench-mode guest checks these stamps on every read.
 */
export function writeStampedImage(path: string, bytes: number): void {
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % VBLK_SECTOR_BYTES !== 0) {
    throw new GuestProgramError("EPROGARG", `Cannot make a stamped image of ${bytes} bytes: not a positive multiple of ${VBLK_SECTOR_BYTES}`);
  }
  const chunkBytes = 1 << 20;
  const chunk = Buffer.alloc(Math.min(chunkBytes, bytes));
  const fd = openSync(path, "w");
  try {
    for (let off = 0; off < bytes; off += chunk.length) {
      const n = Math.min(chunk.length, bytes - off);
      for (let s = 0; s < n; s += VBLK_SECTOR_BYTES) chunk.writeBigUInt64LE(BigInt((off + s) / VBLK_SECTOR_BYTES), s);
      writeSync(fd, chunk, 0, n, off);
    }
  } finally {
    closeSync(fd);
  }
}
