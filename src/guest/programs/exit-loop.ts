/**
 * The exit-loop guest (guest/ring3/exit-loop.S): a minimal PVH kernel that
 * makes `count` VM exits from ring 3, either port writes or MMIO writes, and
 * marks the start and end of the loop on two ports so that a monitor can
 * time exactly the exits. Every runner (the C ceiling, QEMU, flint) boots
 * the same ELF with the same command line.
 *
 * The protocol constants are defined here, once: the assembly and the C
 * ceiling get them through a generated header (exit-loop-protocol.h).
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { COM1_PORT } from "../../arch/x86_64/layout.js";
import { GuestProgramError } from "./program-error.js";
import { cachedArtifact, gcc, packagePath, readSources } from "./build-cache.js";
import { cHeader, flintAbiHeader } from "./c-header.js";

/** Which kind of exit the guest makes. */
export type ExitLoopMode = "pio" | "mmio";

/** All modes, in report order. */
export const EXIT_LOOP_MODES: readonly ExitLoopMode[] = ["pio", "mmio"];

/** The guest writes one byte here from ring 3 right before its first exit. */
export const EXIT_LOOP_START_MARKER_PORT = 0xf0;
/** mode=pio: each exit is an `outb` to this port. */
export const EXIT_LOOP_PIO_EXIT_PORT = 0x80;
/**
 * mode=mmio: each exit is a 4-byte write to this guest-physical address,
 * which a monitor must leave unbacked (no RAM, no device).
 */
export const EXIT_LOOP_MMIO_EXIT_ADDR = 0xd000_0800;
/**
 * The guest writes one byte here after its last exit (or instead of
 * starting, on a bad boot): QEMU's isa-debug-exit port, so that QEMU exits
 * with status 2 * value + 1.
 */
export const EXIT_LOOP_END_MARKER_PORT = 0xf4;
/** End-marker values. */
export const EXIT_LOOP_END_OK = 0;
export const EXIT_LOOP_END_BAD_MAGIC = 1;
export const EXIT_LOOP_END_BAD_CMDLINE = 2;
/**
 * With the `hello` word, the guest's first output: one byte to COM1's
 * transmit register, from ring 3, right after it has read its command line.
 * Every monitor under test has a serial console on its stdout (the C ceiling
 * prints this port's bytes), so the byte's arrival there marks the guest's
 * first instruction the same way for all of them.
 */
export const EXIT_LOOP_HELLO_PORT = COM1_PORT;
/** The byte the guest writes for `hello` ('H'). */
export const EXIT_LOOP_HELLO_BYTE = 0x48;
/** The largest count the guest accepts (it counts in a signed 32-bit register). */
export const EXIT_LOOP_MAX_COUNT = 0x7fff_ffff;

/** Where the PVH image is linked and loaded (guest-physical). */
export const EXIT_LOOP_LOAD_ADDR = 0x10_0000;

/** One run of the guest: which exits, how many. */
export interface ExitLoopRun {
  mode: ExitLoopMode;
  count: number;
  /** Write EXIT_LOOP_HELLO_BYTE to COM1 first (start-up latency runs). */
  hello?: boolean;
  /**
   * After the end marker, halt in ring 0 (IF = 0) instead of spinning in
   * ring 3, so that a VM kept up for measuring sleeps (a monitor with an
   * in-kernel irqchip never sees the hlt).
   */
  halt?: boolean;
}

/** Throws EPROGARG unless `run` is a mode and count the guest accepts. */
export function checkExitLoopRun(run: ExitLoopRun): void {
  if (!EXIT_LOOP_MODES.includes(run.mode)) {
    throw new GuestProgramError("EPROGARG", `Cannot run the exit loop: mode '${String(run.mode)}' is not pio or mmio`);
  }
  if (!Number.isSafeInteger(run.count) || run.count < 0 || run.count > EXIT_LOOP_MAX_COUNT) {
    throw new GuestProgramError("EPROGARG", `Cannot run the exit loop: count ${run.count} is not an integer in 0..2^31-1`);
  }
}

/** The guest's command line for `run`, e.g. `mode=pio count=1000000` or `mode=pio count=0 hello halt`. */
export function exitLoopCmdline(run: ExitLoopRun): string {
  checkExitLoopRun(run);
  return `mode=${run.mode} count=${run.count}${run.hello ? " hello" : ""}${run.halt ? " halt" : ""}`;
}

/** `exit-loop-protocol.h`: the constants above for C and assembly. */
export function exitLoopProtocolHeader(): string {
  return cHeader("the exit-loop guest protocol (src/guest/programs/exit-loop.ts)", {
    EXIT_LOOP_START_MARKER_PORT,
    EXIT_LOOP_PIO_EXIT_PORT,
    EXIT_LOOP_MMIO_EXIT_ADDR,
    EXIT_LOOP_END_MARKER_PORT,
    EXIT_LOOP_END_OK,
    EXIT_LOOP_END_BAD_MAGIC,
    EXIT_LOOP_END_BAD_CMDLINE,
    EXIT_LOOP_HELLO_PORT,
    EXIT_LOOP_HELLO_BYTE,
    EXIT_LOOP_LOAD_ADDR,
  });
}

/** Writes flint-abi.h and exit-loop-protocol.h into `dir`. */
export function writeExitLoopHeaders(dir: string): void {
  writeFileSync(join(dir, "flint-abi.h"), flintAbiHeader());
  writeFileSync(join(dir, "exit-loop-protocol.h"), exitLoopProtocolHeader());
}

const GUEST_SOURCES = ["guest/ring3/exit-loop.S", "guest/ring3/exit-loop.ld", "guest/ring3/pvh-ring3.h"] as const;

/** Bump when the build steps change in a way that changes the output. */
const GUEST_RECIPE_VERSION = "exit-loop-guest 2";

function guestGccArgs(dir: string): string[] {
  return [
    "-nostdlib", "-static", "-no-pie",
    "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
    `-Wl,-T,${packagePath(GUEST_SOURCES[1])}`,
    `-Wl,--defsym=EXIT_LOOP_LOAD_ADDR=${EXIT_LOOP_LOAD_ADDR}`,
    `-I${dir}`,
    packagePath(GUEST_SOURCES[0]),
    "-o", join(dir, "exit-loop.elf"),
  ];
}

/**
 * Returns the path of the exit-loop guest ELF, building it with gcc first
 * unless the cache holds one built from the same sources and headers.
 */
export function buildExitLoopGuest(): string {
  return cachedArtifact({
    name: "exit-loop-guest",
    keyParts: [GUEST_RECIPE_VERSION, ...readSources(GUEST_SOURCES), flintAbiHeader(), exitLoopProtocolHeader(), ...guestGccArgs("DIR")],
    fileName: "exit-loop.elf",
    build(dir) {
      writeExitLoopHeaders(dir);
      gcc(guestGccArgs(dir), "the exit-loop guest");
    },
  });
}
