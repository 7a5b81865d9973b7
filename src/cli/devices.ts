/**
 * Turning device flags into virtio device configurations, with every check a
 * user can act on done before the guest starts (one line, exit code 2):
 *   --disk PATH[,ro]   virtio-blk over a raw image file (repeatable; the first is /dev/vda)
 *   --rng              virtio-rng from the host's CSPRNG
 *   --balloon MIB      virtio-balloon with an initial target of MIB
 */
import { accessSync, constants, statSync } from "node:fs";
import type { VirtioDeviceConfig } from "../devices/virtio/virtio-set.js";

/** A device flag the user got wrong. */
export class DeviceArgError extends Error {
  readonly code = "EDEVICEARG";
  constructor(message: string) {
    super(message);
    this.name = "DeviceArgError";
  }
}

/** One --disk value: `PATH` or `PATH,ro`. */
export interface DiskSpec {
  path: string;
  readOnly: boolean;
}

/** Parses `PATH[,ro|,rw]`. */
export function parseDisk(value: string): DiskSpec {
  const parts = value.split(",");
  const path = parts[0] ?? "";
  if (path === "") throw new DeviceArgError(`Cannot attach drive: '--disk ${value}' has no file path`);
  let readOnly = false;
  for (const opt of parts.slice(1)) {
    if (opt === "ro") readOnly = true;
    else if (opt === "rw") readOnly = false;
    else throw new DeviceArgError(`Cannot attach drive '${path}': unknown option '${opt}' (use ro or rw)`);
  }
  return { path, readOnly };
}

/** Checks a disk image the way the device will use it. */
export function checkDisk(d: DiskSpec): void {
  let st;
  try {
    st = statSync(d.path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DeviceArgError(`Cannot attach drive: file '${d.path}' ${code === "ENOENT" ? "does not exist" : `cannot be read (${code})`}`);
  }
  if (!st.isFile()) throw new DeviceArgError(`Cannot attach drive: '${d.path}' is not a regular file`);
  if (st.size % 512 !== 0) throw new DeviceArgError(`Cannot attach drive: file '${d.path}' is ${st.size} bytes, not a whole number of 512-byte sectors`);
  try {
    accessSync(d.path, d.readOnly ? constants.R_OK : constants.R_OK | constants.W_OK);
  } catch {
    throw new DeviceArgError(d.readOnly
      ? `Cannot attach drive: file '${d.path}' is not readable`
      : `Cannot attach drive: file '${d.path}' is read-only (attach it with ',ro')`);
  }
}

/** The virtio devices for these flags, in the order the guest will see them. */
export function virtioDevicesFromFlags(o: { disk?: string[]; rng?: boolean; balloon?: number }): VirtioDeviceConfig[] {
  const devices: VirtioDeviceConfig[] = [];
  for (const value of o.disk ?? []) {
    const d = parseDisk(value);
    checkDisk(d);
    devices.push({ kind: "block", options: { path: d.path, readOnly: d.readOnly } });
  }
  if (o.rng) devices.push({ kind: "rng", options: {} });
  if (o.balloon !== undefined) devices.push({ kind: "balloon", options: { targetMib: o.balloon } });
  return devices;
}
