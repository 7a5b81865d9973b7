/**
 * Turning device flags into virtio device configurations, with every check a
 * user can act on done before the guest starts (one line, exit code 2):
 *   --disk PATH[,ro][,thread=own]
 *                      virtio-blk over a raw image file or a host block device (repeatable; the first is /dev/vda);
 *                      thread=own runs it on a device thread of its own instead of the VM's shared one
 *   --rng              virtio-rng from the host's CSPRNG
 *   --balloon MIB      virtio-balloon with an initial target of MIB
 *   --net tap=NAME,mac=XX:XX:XX:XX:XX:XX[,mtu=N]
 *                      virtio-net over an existing TAP interface (repeatable)
 *   --vsock cid=N,uds=PATH
 *                      virtio-vsock: the guest's CID and the Unix socket host clients
 *                      connect to (guest connections to port P go to PATH_P; repeatable)
 */
import { VSOCK_MAX_GUEST_CID, VSOCK_MIN_GUEST_CID, type VsockOptions } from "../devices/virtio/vsock/index.js";
import { checkMtu, checkTap, NetError, parseMac, type NetOptions } from "../devices/virtio/net.js";
import type { DeviceThreadPlacement, VirtioDeviceConfig } from "../devices/virtio/virtio-set.js";
import { checkDisk, checkVsock, DeviceArgError } from "../vmm/host-checks.js";

export { checkDisk, checkVirtioDevices, checkVsock, DeviceArgError, MAX_UDS_PATH_BYTES } from "../vmm/host-checks.js";

/** One --disk value: `PATH`, `PATH,ro`, `PATH,thread=own`... */
export interface DiskSpec {
  path: string;
  readOnly: boolean;
  /** Which device thread runs the disk (VirtioDeviceConfig.thread). */
  thread: DeviceThreadPlacement;
}

/** Parses `PATH[,ro|,rw][,thread=own|,thread=shared]`. */
export function parseDisk(value: string): DiskSpec {
  const parts = value.split(",");
  const path = parts[0] ?? "";
  if (path === "") throw new DeviceArgError(`Cannot attach drive: '--disk ${value}' has no file path`);
  let readOnly = false;
  let thread: DeviceThreadPlacement = "shared";
  for (const opt of parts.slice(1)) {
    if (opt === "ro") readOnly = true;
    else if (opt === "rw") readOnly = false;
    else if (opt === "thread=own" || opt === "thread=shared") thread = opt === "thread=own" ? "own" : "shared";
    else throw new DeviceArgError(`Cannot attach drive '${path}': unknown option '${opt}' (use ro, rw or thread=own)`);
  }
  return { path, readOnly, thread };
}

/** Parses and checks one --net value, `tap=NAME,mac=XX:XX:XX:XX:XX:XX[,mtu=N]`: the TAP must exist. */
export function parseNet(value: string): NetOptions {
  const fields = new Map<string, string>();
  for (const part of value.split(",")) {
    const eq = part.indexOf("=");
    const key = eq < 0 ? part : part.slice(0, eq);
    if (eq < 0 || !["tap", "mac", "mtu"].includes(key)) {
      throw new DeviceArgError(`Cannot attach network: '--net ${value}' has an unknown option '${part}' (use tap=NAME,mac=XX:XX:XX:XX:XX:XX[,mtu=N])`);
    }
    if (fields.has(key)) throw new DeviceArgError(`Cannot attach network: '--net ${value}' gives ${key} twice`);
    fields.set(key, part.slice(eq + 1));
  }
  const tap = fields.get("tap"), mac = fields.get("mac"), mtu = fields.get("mtu");
  if (!tap) throw new DeviceArgError(`Cannot attach network: '--net ${value}' has no tap=NAME`);
  if (!mac) throw new DeviceArgError(`Cannot attach network: '--net ${value}' has no mac=XX:XX:XX:XX:XX:XX`);
  try {
    parseMac(mac);
    const options: NetOptions = { tap, mac };
    if (mtu !== undefined) {
      options.mtu = /^\d+$/.test(mtu) ? Number(mtu) : Number.NaN;
      checkMtu(options.mtu);
    }
    checkTap(tap);
    return options;
  } catch (e) {
    if (e instanceof NetError) throw new DeviceArgError(e.message);
    throw e;
  }
}

/** Parses one --vsock value, `cid=N,uds=PATH` (in any order). */
export function parseVsock(value: string): VsockOptions {
  let cid: number | undefined, uds: string | undefined;
  for (const part of value.split(",")) {
    const eq = part.indexOf("=");
    const k = eq < 0 ? part : part.slice(0, eq), v = eq < 0 ? "" : part.slice(eq + 1);
    if (k === "cid") {
      if (!/^\d+$/.test(v)) throw new DeviceArgError(`Cannot attach vsock: cid '${v}' is not a whole number`);
      cid = Number(v);
    } else if (k === "uds") {
      uds = v;
    } else {
      throw new DeviceArgError(`Cannot attach vsock: '--vsock ${value}' has an unknown option '${k}' (use cid=N,uds=PATH)`);
    }
  }
  if (cid === undefined || !uds) throw new DeviceArgError(`Cannot attach vsock: '--vsock ${value}' needs cid=N and uds=PATH`);
  if (cid < VSOCK_MIN_GUEST_CID || cid > VSOCK_MAX_GUEST_CID) {
    throw new DeviceArgError(`Cannot attach vsock: cid ${cid} is reserved or too large (use ${VSOCK_MIN_GUEST_CID}..${VSOCK_MAX_GUEST_CID})`);
  }
  return { cid, uds };
}

/** The virtio devices for these flags, in the order the guest will see them. */
export function virtioDevicesFromFlags(o: { disk?: string[]; rng?: boolean; balloon?: number; net?: string[]; vsock?: string[] }): VirtioDeviceConfig[] {
  const devices: VirtioDeviceConfig[] = [];
  for (const value of o.disk ?? []) {
    const d = parseDisk(value);
    checkDisk(d);
    devices.push({ kind: "block", options: { path: d.path, readOnly: d.readOnly }, ...(d.thread === "own" ? { thread: "own" as const } : {}) });
  }
  const taps = new Set<string>();
  for (const value of o.net ?? []) {
    const n = parseNet(value);
    if (taps.has(n.tap)) throw new DeviceArgError(`Cannot attach network: TAP '${n.tap}' is given to more than one --net`);
    taps.add(n.tap);
    devices.push({ kind: "net", options: n });
  }
  if (o.rng) devices.push({ kind: "rng", options: {} });
  if (o.balloon !== undefined) devices.push({ kind: "balloon", options: { targetMib: o.balloon } });
  const cids = new Set<number>(), paths = new Set<string>();
  for (const value of o.vsock ?? []) {
    const v = parseVsock(value);
    if (cids.has(v.cid)) throw new DeviceArgError(`Cannot attach vsock: cid ${v.cid} is given to more than one --vsock`);
    if (paths.has(v.uds)) throw new DeviceArgError(`Cannot attach vsock: socket '${v.uds}' is given to more than one --vsock`);
    cids.add(v.cid);
    paths.add(v.uds);
    checkVsock(v);
    devices.push({ kind: "vsock", options: v });
  }
  return devices;
}
