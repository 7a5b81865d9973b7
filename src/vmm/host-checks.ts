/**
 * The host checks a user can act on, made before a guest starts (flint run's
 * flags) or when a device is configured (a Firecracker config file, an API
 * request): the disk image is there and as writable as asked, the TAP
 * exists, the vsock CID is usable and its socket path free. Each failure is
 * one line (DeviceArgError).
 */
import { Buffer } from "node:buffer";
import { accessSync, constants, lstatSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { sockaddr_un } from "../linux/abi.generated.js";
import { probeUnix, type VsockOptions } from "../devices/virtio/vsock/index.js";
import { checkMtu, checkTap, NetError, parseMac, type NetOptions } from "../devices/virtio/net.js";
import type { VirtioDeviceConfig } from "../devices/virtio/virtio-set.js";

/** A device flag the user got wrong. */
export class DeviceArgError extends Error {
  readonly code = "EDEVICEARG";
  constructor(message: string) {
    super(message);
    this.name = "DeviceArgError";
  }
}

/** Checks a disk image the way the device will use it. */
export function checkDisk(d: { path: string; readOnly: boolean }): void {
  let st;
  try {
    st = statSync(d.path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DeviceArgError(`Cannot attach drive: file '${d.path}' ${code === "ENOENT" ? "does not exist" : `cannot be read (${code})`}`);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new DeviceArgError(`Cannot attach drive: '${d.path}' is neither a regular file nor a block device`);
  // A block device's size is a whole number of sectors; stat gives 0 for it (the device reads it with BLKGETSIZE64).
  if (st.isFile() && st.size % 512 !== 0) throw new DeviceArgError(`Cannot attach drive: file '${d.path}' is ${st.size} bytes, not a whole number of 512-byte sectors`);
  try {
    accessSync(d.path, d.readOnly ? constants.R_OK : constants.R_OK | constants.W_OK);
  } catch {
    throw new DeviceArgError(d.readOnly
      ? `Cannot attach drive: file '${d.path}' is not readable`
      : `Cannot attach drive: file '${d.path}' is read-only (attach it with ',ro')`);
  }
}

/** Longest socket path bind() takes here: sun_path less its NUL (flint's addon keeps one byte more). */
export const MAX_UDS_PATH_BYTES = sockaddr_un.SIZE - sockaddr_un.sun_path - 2;

/** Checks that the device will be able to listen at the socket path. */
export function checkVsock(v: VsockOptions): void {
  const what = `Cannot attach vsock: socket '${v.uds}'`;
  const bytes = Buffer.byteLength(v.uds);
  if (bytes > MAX_UDS_PATH_BYTES) throw new DeviceArgError(`${what} is ${bytes} bytes, more than a Unix socket address holds (${MAX_UDS_PATH_BYTES})`);
  const dir = dirname(v.uds);
  let isDir = false;
  try { isDir = statSync(dir).isDirectory(); } catch { /* reported below */ }
  if (!isDir) throw new DeviceArgError(`${what} cannot be created: directory '${dir}' does not exist`);
  let st;
  try { st = lstatSync(v.uds); } catch { return; } // nothing there yet
  if (!st.isSocket()) throw new DeviceArgError(`${what} exists and is not a socket`);
  if (probeUnix(v.uds) === "listening") throw new DeviceArgError(`${what} is in use by a listening socket`);
  // A socket file nobody listens on is stale: the device replaces it.
}

/**
 * Runs the host checks of `flint run`'s device flags on devices that came
 * from elsewhere (a Firecracker config file, src/config/convert.ts): the
 * disk image is there and as writable as asked, the TAP exists, the vsock
 * CID is usable and its socket path free. Throws DeviceArgError.
 */
export function checkVirtioDevices(devices: readonly VirtioDeviceConfig[]): void {
  for (const d of devices) {
    if (d.kind === "block") {
      const o = d.options as { path: string; readOnly: boolean };
      checkDisk({ path: o.path, readOnly: o.readOnly });
    } else if (d.kind === "net") {
      const o = d.options as NetOptions;
      try {
        parseMac(o.mac);
        if (o.mtu !== undefined) checkMtu(o.mtu);
        checkTap(o.tap);
      } catch (e) {
        if (e instanceof NetError) throw new DeviceArgError(e.message);
        throw e;
      }
    } else if (d.kind === "vsock") {
      // Any 32-bit CID, as Firecracker takes it (the API schema checked that); flint's own --vsock flag wants 3 or more.
      checkVsock(d.options as VsockOptions);
    }
  }
}
