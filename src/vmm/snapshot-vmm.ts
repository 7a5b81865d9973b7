/**
 * What the API layer keeps in a snapshot beside the Machine (SnapshotPaths.vmm),
 * and how PUT /snapshot/load's overrides apply to the snapshot's devices:
 * the configuration the VM ran with (GET /vm/config after a load) and each
 * virtio device's API id (drive_id, iface_id), by which
 * `network_overrides` name interfaces and metrics name device groups.
 */
import type { SnapshotLoadSchema, VmConfig } from "../config/schema.js";
import type * as z from "zod/mini";
import type { VirtioDeviceConfig } from "../devices/virtio/virtio-set.js";
import type { NetOptions } from "../devices/virtio/net.js";
import { readMachineSnapshot, type MachineSnapshot } from "../vm/machine-snapshot.js";

/** PUT /snapshot/load's body. */
export type SnapshotLoad = z.infer<typeof SnapshotLoadSchema>;

/** The API's part of a snapshot. */
export interface SavedVmm {
  /** The configuration the VM ran with, as a config file (GET /vm/config). */
  config: VmConfig;
  /** Each virtio device's API id (drive_id, iface_id), in device order; undefined for a device with none. */
  deviceIds: (string | undefined)[];
}

/** Why a load's overrides do not fit the snapshot. */
export class SnapshotOverrideError extends Error {
  readonly code = "ESNAPOVERRIDE";
  constructor(message: string) {
    super(message);
    this.name = "SnapshotOverrideError";
  }
}

/**
 * Reads the API's part of a snapshot and its virtio device configurations
 * (the state file's checks: SnapshotError), and the whole snapshot, for
 * Machine.restore not to read it again. A snapshot written by the
 * library without the API has no API part: its devices then have no ids.
 */
export function readSavedVmm(statePath: string): SavedVmm & { virtioDevices: VirtioDeviceConfig[]; snapshot: MachineSnapshot } {
  const { snapshot } = readMachineSnapshot(statePath);
  const virtioDevices = snapshot.virtio.configs.map((c) => ({ ...c, backendModule: c.backendModule !== undefined ? new URL(c.backendModule) : undefined }));
  const vmm = snapshot.vmm as Partial<SavedVmm> | undefined;
  const ids = Array.isArray(vmm?.deviceIds) ? vmm.deviceIds : [];
  return {
    config: vmm?.config as VmConfig,
    deviceIds: virtioDevices.map((_, i) => (typeof ids[i] === "string" ? ids[i] : undefined)),
    virtioDevices,
    snapshot,
  };
}

/**
 * The snapshot's devices and configuration with a load's overrides applied:
 * each `network_overrides` entry gives the interface with that iface_id a
 * new TAP (an id the snapshot does not have is an error, as in Firecracker),
 * `vsock_override` the vsock device a new socket path (an error without a
 * vsock device). Throws SnapshotOverrideError.
 */
export function applyOverrides(saved: ReturnType<typeof readSavedVmm>, l: Pick<SnapshotLoad, "network_overrides" | "vsock_override">): { virtioDevices: VirtioDeviceConfig[]; config: VmConfig } {
  const virtioDevices = saved.virtioDevices.map((d) => ({ ...d, options: { ...(d.options as object) } }));
  const config: VmConfig | undefined = saved.config ? structuredClone(saved.config) : undefined;
  for (const o of l.network_overrides ?? []) {
    const i = virtioDevices.findIndex((d, k) => d.kind === "net" && saved.deviceIds[k] === o.iface_id);
    if (i < 0) throw new SnapshotOverrideError(`Invalid network override: the snapshot has no network interface '${o.iface_id}'`);
    (virtioDevices[i]!.options as NetOptions).tap = o.host_dev_name;
    const iface = config?.["network-interfaces"]?.find((n) => n.iface_id === o.iface_id);
    if (iface) iface.host_dev_name = o.host_dev_name;
  }
  if (l.vsock_override != null) {
    const v = virtioDevices.find((d) => d.kind === "vsock");
    if (!v) throw new SnapshotOverrideError("Invalid vsock override: the snapshot has no vsock device");
    (v.options as { uds: string }).uds = l.vsock_override.uds_path;
    if (config?.vsock) config.vsock.uds_path = l.vsock_override.uds_path;
  }
  return { virtioDevices, config: config ?? ({} as VmConfig) };
}
