/**
 * `flint run`: boots a guest with its serial console on this terminal. When
 * stdin is a TTY it is put in raw mode so keys reach the guest unchanged;
 * Ctrl-A x quits (see escape.ts). The exit code is 0 when the guest powers
 * off or reboots, 1 when the VM fails.
 */
import type { BootMode } from "../boot/index.js";
import { HOST_ERRORS_LOGGED } from "../devices/virtio/mmio-state.js";
import { devicePlacement, type VirtioDeviceConfig } from "../devices/virtio/virtio-set.js";
import { Machine, type MachineResult } from "../vm/machine.js";
import { ESCAPE_HELP, EscapeParser } from "./escape.js";

export interface RunOptions {
  kernel: string;
  initrd?: string;
  cmdline: string;
  cpus: number;
  memoryMib: number;
  bootMode: BootMode;
  acpi: boolean;
  hugePages: boolean;
  mergeable: boolean;
  bootTime: boolean;
  /** Add the debug-exit device; its status becomes flint's exit code. */
  debugExit?: boolean;
  /** virtio devices, in guest order. */
  virtioDevices?: VirtioDeviceConfig[];
  /** seccomp filters (MachineConfig.seccomp); `--no-seccomp` turns them off. */
  seccomp?: boolean;
}

/** Runs the VM to its end and returns the process exit code. Throws for bad input (before the guest starts). */
export async function runVm(o: RunOptions): Promise<number> {
  // The threads' isolates boot while the VM is built (most of start-up otherwise).
  // A count Machine.create will refuse boots nothing here.
  if (Number.isInteger(o.cpus) && o.cpus >= 1 && o.cpus <= 64) {
    Machine.prestart({ vcpuThreads: o.cpus, deviceThreads: devicePlacement(o.virtioDevices ?? []).threads });
  }
  const machine = Machine.create({
    cpus: o.cpus,
    memoryMib: o.memoryMib,
    boot: { kind: "linux", kernelPath: o.kernel, initrdPath: o.initrd, cmdline: o.cmdline, acpi: o.acpi, mode: o.bootMode },
    consoleOutput: process.stdout,
    hugePages: o.hugePages,
    mergeable: o.mergeable,
    debugExit: o.debugExit,
    virtioDevices: o.virtioDevices,
    // Already rate-limited by the Machine: the first few per device, then a summary a second at most.
    onGuestFault: (device, message) => {
      if (process.env.FLINT_DEBUG) process.stderr.write(`flint: guest fault in ${device}: ${message}\r\n`);
    },
    // Always shown: a failing or full host disk is the operator's to fix (the guest carries on).
    onHostError: (device, message) => process.stderr.write(`flint: host error in ${device}: ${message}\r\n`),
    onSlowEnd: (message) => process.stderr.write(`flint: ${message}\r\n`),
    seccomp: o.seccomp ?? false,
  });
  let quit = false;
  const detach = forwardStdin(machine, () => {
    quit = true;
    machine.stop({ kind: "poweroff" });
  });
  let result: MachineResult;
  try {
    result = await machine.run();
  } finally {
    detach();
  }
  reportRun(result, o.bootTime);
  const code = exitCode(result, quit);
  // The VM is over: nothing may keep this process alive now. Console bytes a
  // reader never took (a pipe nobody reads) are pending writes that would, and
  // so would any handle left behind: give them a grace, then exit.
  setTimeout(() => process.exit(code), EXIT_FLUSH_GRACE_MS).unref();
  return code;
}

/** Where console input goes: a Machine, or a Vm (which holds it until the VM has started). */
export interface ConsoleTarget {
  consoleInput(bytes: Uint8Array): number;
  consoleWritable(): Promise<void>;
}

/**
 * Forwards this process's stdin to the guest's console (raw mode on a TTY,
 * Ctrl-A escapes: `onQuit` for Ctrl-A x); when the guest's receive FIFO is
 * full, stdin pauses until there is room. Returns the function that detaches.
 */
export function forwardStdin(target: ConsoleTarget, onQuit: () => void): () => void {
  const stdin = process.stdin;
  const raw = stdin.isTTY === true;
  const parser = new EscapeParser();
  const onData = (chunk: Buffer) => {
    for (const action of parser.feed(chunk)) {
      if (action.kind === "quit") {
        onQuit();
        return;
      }
      if (action.kind === "help") {
        process.stderr.write(ESCAPE_HELP);
        continue;
      }
      let bytes = action.bytes;
      const taken = target.consoleInput(bytes);
      if (taken < bytes.length) {
        // The guest's receive FIFO is full: hold the rest and pause stdin until there is room.
        bytes = bytes.subarray(taken);
        stdin.pause();
        const retry = async () => {
          while (bytes.length) {
            await target.consoleWritable();
            bytes = bytes.subarray(target.consoleInput(bytes));
          }
          stdin.resume();
        };
        void retry();
      }
    }
  };
  if (raw) stdin.setRawMode(true);
  stdin.on("data", onData);
  return () => {
    stdin.off("data", onData);
    if (raw) stdin.setRawMode(false);
    stdin.pause();
    stdin.unref?.();
  };
}

/** What `flint run` says on stderr after a VM ended: boot time, host errors in all, debug counters, stuck devices. */
export function reportRun(result: MachineResult, bootTime: boolean): void {
  if (bootTime && result.bootTimeMs !== undefined) {
    process.stderr.write(`flint: guest reached the boot marker after ${result.bootTimeMs.toFixed(1)} ms\n`);
  }
  for (const d of result.virtio) {
    if (d.hostErrors > HOST_ERRORS_LOGGED) process.stderr.write(`flint: ${d.name}: ${d.hostErrors} host errors in all (the first ${HOST_ERRORS_LOGGED} shown)\n`);
  }
  if (process.env.FLINT_DEBUG) {
    // Counters for whoever debugs a run: exits per vCPU, kicks and interrupts per virtio device.
    process.stderr.write(`flint: counters ${JSON.stringify({ vcpus: result.stats, virtio: result.virtio, guestFaults: result.guestFaultsByDevice })}\n`);
  }
  if (result.unstoppedDevices.length > 0) {
    process.stderr.write(`flint: device threads still blocked in host I/O at exit: ${result.unstoppedDevices.join(", ")}\n`);
  }
}

/** After the VM ended, how long stdout may take to accept the console's last bytes (and any handle left to close) before flint exits anyway. */
const EXIT_FLUSH_GRACE_MS = 1000;

const RESET_SOURCES = {
  "i8042": "i8042 keyboard-controller reset",
  "acpi": "ACPI reset register",
  "triple-fault": "triple fault",
  "kvm": "KVM system-event reset",
} as const;

/** Says on stderr how the VM ended (for a reset or a failure) and returns flint's exit code for it. */
export function exitCode(result: MachineResult, quit = false): number {
  const r = result.reason;
  if (result.debugExit?.status !== undefined) return result.debugExit.status;
  switch (r.kind) {
    case "poweroff":
      if (quit) process.stderr.write("flint: stopped from the console\n");
      return 0;
    case "reset":
      // A reset ends the VM (flint has no reboot): say who asked, and where a triple fault hit.
      process.stderr.write(`flint: the guest reset the VM (${RESET_SOURCES[r.source]})${r.detail ? `: ${r.detail}` : ""}\n`);
      return 0;
    case "error":
      process.stderr.write(`flint: VM failed: ${r.message.split("\n")[0]}\n`);
      return 1;
  }
}
