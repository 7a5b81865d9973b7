/**
 * What the per-VM overhead section's VMs attach to on the host: a scratch
 * directory in the system's temporary directory (Unix sockets cannot live
 * on some shared file systems), a sparse raw image per VM, and a TAP
 * interface per VM made with `ip tuntap add` (root and iproute2 needed;
 * left down, with no address, so no traffic reaches it) — all removed by
 * close().
 */
import { execFileSync, spawnSync } from "node:child_process";
import { accessSync, closeSync, constants, ftruncateSync, mkdtempSync, openSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { OverheadDevices } from "./overhead-args.js";

/** Size of each VM's raw disk image (sparse: nothing is written to it). */
const DISK_BYTES = 16 * 1024 * 1024;

/** The host side of the section's devices. */
export interface OverheadHost {
  /** VM `vm`'s devices; a fresh vsock socket path on every call (a killed monitor leaves its socket file). */
  devices(vm: number): OverheadDevices;
  /** Why there is no TAP (then no VM has virtio-net), if there is none. */
  readonly tapMissing?: string;
  /** Why QEMU runs without vsock, if it does. */
  readonly qemuVsockMissing?: string;
  /** Removes the TAPs and the scratch directory. */
  close(): void;
}

/** A TAP name (at most IFNAMSIZ - 1 = 15 characters) unique to this process and VM. */
export function tapName(pid: number, vm: number): string {
  return `flb${pid % 100_000}t${vm}`;
}

/** A locally administered unicast MAC for VM `vm` (0..255). */
export function vmMac(vm: number): string {
  if (!Number.isInteger(vm) || vm < 0 || vm > 255) throw new RangeError(`no MAC for VM ${vm}`);
  return `52:54:00:f1:1b:${vm.toString(16).padStart(2, "0")}`;
}

/** Makes disks (and TAPs, where it can) for `vms` VMs. */
export function prepareOverheadHost(vms: number): OverheadHost {
  const dir = mkdtempSync(join(tmpdir(), "flint-overhead-"));
  const taps: string[] = [];
  let tapMissing: string | undefined;
  try {
    for (let vm = 0; vm < vms; vm++) {
      const fd = openSync(join(dir, `disk${vm}.img`), "w");
      try {
        ftruncateSync(fd, DISK_BYTES);
      } finally {
        closeSync(fd);
      }
    }
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  for (let vm = 0; vm < vms && tapMissing === undefined; vm++) {
    const name = tapName(process.pid, vm);
    try {
      execFileSync("ip", ["tuntap", "add", "dev", name, "mode", "tap"], { stdio: ["ignore", "ignore", "pipe"] });
      taps.push(name);
    } catch (error) {
      const e = error as NodeJS.ErrnoException & { stderr?: Buffer };
      tapMissing = e.code === "ENOENT" ? "iproute2 ('ip') is not installed" : `ip tuntap add failed: ${(e.stderr?.toString() ?? e.message).trim()}`;
    }
  }
  if (tapMissing !== undefined) {
    for (const t of taps.splice(0)) spawnSync("ip", ["link", "del", t]);
  }
  let qemuVsockMissing: string | undefined;
  try {
    accessSync("/dev/vhost-vsock", constants.R_OK | constants.W_OK);
  } catch (error) {
    qemuVsockMissing = `/dev/vhost-vsock is not usable here (${(error as NodeJS.ErrnoException).code}; vhost_vsock module not loaded)`;
  }
  let sockets = 0;
  const removeAll = () => {
    for (const t of taps.splice(0)) spawnSync("ip", ["link", "del", t]);
    rmSync(dir, { recursive: true, force: true });
  };
  // Ctrl-C during the section: leave no TAP behind, then die of the signal as usual.
  const onSignal = (signal: NodeJS.Signals) => {
    removeAll();
    process.kill(process.pid, signal);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  return {
    tapMissing,
    qemuVsockMissing,
    devices(vm) {
      return {
        diskPath: join(dir, `disk${vm}.img`),
        tap: taps[vm],
        mac: vmMac(vm),
        vsockCid: 3,
        vsockUds: join(dir, `vsock${sockets++}.sock`),
        qemuVsock: qemuVsockMissing === undefined,
      };
    },
    close() {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      removeAll();
    },
  };
}
