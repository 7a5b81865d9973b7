/**
 * Command lines for the per-VM overhead section (per-vm-overhead.ts): the
 * same exit-loop guest under `flint run`, QEMU microvm and the C ceiling,
 * each with a serial console on its stdout, with no devices or with one of
 * every virtio device. Pure functions, so that a test can read exactly what
 * each monitor is asked to do.
 */
import { BenchError } from "./bench-error.js";
import { EXIT_LOOP_END_MARKER_PORT, EXIT_LOOP_END_OK, type ExitLoopRun, exitLoopCmdline } from "../guest/programs/exit-loop.js";
import { QEMU_MACHINE } from "./qemu-exits.js";

/** One of every virtio device, as the host backs them. */
export interface OverheadDevices {
  /** A raw image file for virtio-blk. */
  diskPath: string;
  /** An existing TAP interface for virtio-net; absent when this host cannot make one. */
  tap?: string;
  /** The guest's MAC on that TAP. */
  mac: string;
  /** flint's vsock: guest CID and the host Unix socket. */
  vsockCid: number;
  vsockUds: string;
  /** QEMU's vsock (vhost-vsock-device) needs /dev/vhost-vsock; without it QEMU runs without vsock. */
  qemuVsock: boolean;
}

/** What one monitor run is configured with. */
export interface OverheadRun {
  cpus: number;
  memoryMib: number;
  /** The guest's command line words. */
  guest: ExitLoopRun;
  /** One of every device, or none. */
  devices?: OverheadDevices;
  /**
   * End the process when the guest writes its end marker (flint's
   * --debug-exit, QEMU's isa-debug-exit); without it the monitor stays up
   * (the guest halts) until it is killed.
   */
  exitOnEnd: boolean;
}

/**
 * QEMU_MACHINE with its legacy serial port on: the guest's first output
 * goes to COM1, and QEMU shows it on stdio (-serial stdio).
 */
export const QEMU_SERIAL_MACHINE = QEMU_MACHINE.replace("isa-serial=off", "isa-serial=on");

function checkRun(run: OverheadRun): void {
  if (!Number.isInteger(run.cpus) || run.cpus < 1) throw new BenchError("EBENCHARG", `Cannot run a VM with ${run.cpus} vCPUs`);
  if (!Number.isInteger(run.memoryMib) || run.memoryMib < 1) throw new BenchError("EBENCHARG", `Cannot run a VM with ${run.memoryMib} MiB`);
}

/** `flint run` arguments (after `node <cli>`), devices in the CLI's own order. */
export function flintRunArgs(guestElf: string, run: OverheadRun): string[] {
  checkRun(run);
  const args = [
    "run", "--kernel", guestElf, "--boot", "pvh", "--no-acpi",
    "--cpus", String(run.cpus), "--memory", String(run.memoryMib),
    "--cmdline", exitLoopCmdline(run.guest),
  ];
  if (run.exitOnEnd) args.push("--debug-exit");
  const d = run.devices;
  if (d) {
    args.push("--disk", d.diskPath);
    if (d.tap !== undefined) args.push("--net", `tap=${d.tap},mac=${d.mac}`);
    args.push("--rng", "--balloon", "0", "--vsock", `cid=${d.vsockCid},uds=${d.vsockUds}`);
  }
  return args;
}

/** qemu-system-x86_64 arguments for the same VM: microvm, virtio-mmio devices, COM1 on stdio. */
export function qemuRunArgs(guestElf: string, run: OverheadRun): string[] {
  checkRun(run);
  const args = [
    "-accel", "kvm",
    "-M", QEMU_SERIAL_MACHINE,
    "-nodefaults", "-no-user-config", "-display", "none",
    "-serial", "stdio",
    "-smp", String(run.cpus),
    "-m", String(run.memoryMib),
    "-kernel", guestElf,
    "-append", exitLoopCmdline(run.guest),
  ];
  if (run.exitOnEnd) args.push("-device", `isa-debug-exit,iobase=0x${EXIT_LOOP_END_MARKER_PORT.toString(16)},iosize=4`);
  const d = run.devices;
  if (d) {
    // A file name with a comma would split QEMU's option string: double it (QEMU's escape).
    args.push("-drive", `if=none,id=disk0,format=raw,file=${d.diskPath.replaceAll(",", ",,")}`, "-device", "virtio-blk-device,drive=disk0");
    if (d.tap !== undefined) {
      args.push("-netdev", `tap,id=net0,ifname=${d.tap},script=no,downscript=no`, "-device", `virtio-net-device,netdev=net0,mac=${d.mac}`);
    }
    args.push("-device", "virtio-rng-device", "-device", "virtio-balloon-device");
    if (d.qemuVsock) args.push("-device", `vhost-vsock-device,guest-cid=${d.vsockCid}`);
  }
  return args;
}

/** The C ceiling's arguments: count 0, with the guest's first-output byte. */
export function ceilingRunArgs(guestElf: string, guest: ExitLoopRun): string[] {
  exitLoopCmdline(guest); // checks mode and count
  return [guestElf, guest.mode, String(guest.count), ...(guest.hello ? ["hello"] : [])];
}

/** The process exit status with which each monitor reports the guest's successful end marker. */
export const EXIT_STATUS_ON_END = {
  flint: EXIT_LOOP_END_OK, // --debug-exit: the value written
  qemu: 2 * EXIT_LOOP_END_OK + 1, // isa-debug-exit
  ceiling: 0,
} as const;
