/**
 * A VM's configuration before it starts, in Firecracker's terms (its
 * VmResources): what PUT /boot-source, /machine-config, /drives/{id},
 * /network-interfaces/{id}, /vsock, /balloon, /entropy and /serial set, and what
 * GET /vm/config and --config-file read and write. Each change is checked as
 * a whole configuration (toFlintMachine: what flint cannot do is refused
 * here, not at InstanceStart) and, for the device it touches, against the
 * host (the image exists, the TAP exists, the socket path is free); a change
 * that fails changes nothing.
 *
 * Firecracker's update rules kept here (vmm_config/*.rs in its tree):
 *   - PUT /machine-config replaces every field, the optional ones with their
 *     defaults; PATCH changes only the fields given (and refuses an empty body);
 *   - a drive or interface PUT again under its id replaces it in place; a
 *     second root drive is refused; the root drive is listed first;
 *   - vsock, balloon and entropy are single devices: PUT replaces.
 */
import { accessSync, constants, statSync } from "node:fs";
import { devicePlacement, type VirtioDeviceConfig } from "../devices/virtio/virtio-set.js";
import { FC_DEFAULT_MEM_MIB, FC_DEFAULT_VCPUS, toFlintMachine, type FlintMachineSpec } from "../config/convert.js";
import {
  BalloonSchema, BootSourceSchema, ConfigError, DriveSchema, EntropySchema, MachineConfigSchema, MachineConfigUpdateSchema,
  MmdsConfigSchema, NetworkInterfaceSchema, SerialSchema, validate, VsockSchema,
  type Balloon, type BootSource, type MmdsConfig, type Drive, type Entropy, type MachineConfiguration, type NetworkInterface, type Serial, type Vsock,
  type VmConfig,
} from "../config/schema.js";
import { checkVirtioDevices } from "./host-checks.js";

/** PATCH /machine-config's body (every field optional). */
export type MachineConfigUpdate = Partial<MachineConfiguration>;

/** Firecracker's machine-config when none was given (machine_config.rs MachineConfig::default). */
export function defaultMachineConfig(): MachineConfiguration {
  return { vcpu_count: FC_DEFAULT_VCPUS, mem_size_mib: FC_DEFAULT_MEM_MIB, smt: false, track_dirty_pages: false, huge_pages: "None" };
}

/** How requests name what they configure in error messages. */
const WHAT = "request";

/** A kernel path that only stands in while no boot source is set, so the rest can be checked. */
const NO_KERNEL_YET = "";

/** The pre-boot configuration of one VM. */
export class VmResources {
  private bootSource: BootSource | undefined;
  private machine: MachineConfiguration = defaultMachineConfig();
  private drives: Drive[] = [];
  private ifaces: NetworkInterface[] = [];
  private vsock: Vsock | undefined;
  private balloon: Balloon | undefined;
  private entropy: Entropy | undefined;
  private mmdsConfig: MmdsConfig | undefined;
  private serial: Serial | undefined;
  private configured = false;

  /**
   * Whether anything that configures a boot was given (boot source, machine
   * config, a device, MMDS config, a config file): Firecracker's `boot_path`,
   * after which a snapshot can no longer be loaded instead.
   */
  get bootConfigured(): boolean {
    return this.configured;
  }

  /** Takes a whole validated --config-file document (every check made as for the API), or throws and changes nothing. */
  load(cfg: VmConfig, what = "config file"): void {
    this.commit(cfg, what);
  }

  /** GET /vm/config: the configuration as a --config-file document (Firecracker's VmmConfig keys). */
  toConfig(): VmConfig {
    return {
      "balloon": this.balloon ?? null,
      "drives": this.drives.map((d) => ({ ...d })),
      "boot-source": this.bootSource ? { ...this.bootSource } : { kernel_image_path: "" },
      "cpu-config": null,
      "logger": null,
      "machine-config": { ...this.machine },
      "metrics": null,
      "mmds-config": this.mmdsConfig ? { ...this.mmdsConfig, network_interfaces: [...this.mmdsConfig.network_interfaces] } : null,
      "network-interfaces": this.ifaces.map((n) => ({ ...n })),
      "vsock": this.vsock ?? null,
      "entropy": this.entropy ?? null,
      "pmem": [],
      "memory-hotplug": null,
    };
  }

  /** GET /machine-config. */
  machineConfig(): MachineConfiguration {
    return { ...this.machine };
  }

  /** The balloon as configured (GET /balloon before boot). */
  balloonConfig(): Balloon | undefined {
    return this.balloon ? { ...this.balloon } : undefined;
  }

  /** The drives in guest order (the root first). */
  driveList(): readonly Drive[] {
    return this.drives;
  }

  /** The network interfaces in guest order. */
  interfaceList(): readonly NetworkInterface[] {
    return this.ifaces;
  }

  /**
   * The vCPU and device threads the configuration so far (or `spec`, already
   * made from it) would run on, and whether some device is placed "shared"
   * (on the VM's shared device thread, or the process's); before a boot
   * source is set too.
   */
  plannedThreads(spec: FlintMachineSpec = toFlintMachine(this.toConfig(), WHAT)): { vcpuThreads: number; deviceThreads: number; sharedDevices: boolean } {
    const placement = devicePlacement(spec.virtioDevices);
    return { vcpuThreads: spec.cpus, deviceThreads: placement.threads, sharedDevices: placement.shared !== undefined };
  }

  /** What Machine.create needs; throws ConfigError if there is no boot source yet. */
  spec(): FlintMachineSpec {
    if (!this.bootSource) throw new ConfigError("ECONFIGINVALID", "Cannot start the VM: no boot source (PUT /boot-source first)", "boot-source");
    return toFlintMachine(this.toConfig(), WHAT);
  }

  /** PUT /boot-source: the kernel (and initrd) must be readable now, as Firecracker opens them here. */
  putBootSource(given: BootSource): void {
    const b = validate(BootSourceSchema, given, "boot-source");
    checkReadable(b.kernel_image_path, "kernel_image_path", "kernel");
    if (b.initrd_path != null) checkReadable(b.initrd_path, "initrd_path", "initrd");
    this.change({ "boot-source": b });
  }

  putMachineConfig(given: MachineConfiguration): void {
    const m = validate(MachineConfigSchema, given, "machine-config");
    this.change({ "machine-config": { ...defaultMachineConfig(), ...m } });
  }

  patchMachineConfig(given: MachineConfigUpdate): void {
    const m = validate(MachineConfigUpdateSchema, given, "machine-config");
    if (Object.keys(m).length === 0) throw new ConfigError("ECONFIGINVALID", "Empty PATCH request.");
    const merged: MachineConfiguration = { ...this.machine };
    for (const [k, v] of Object.entries(m)) if (v !== undefined) (merged as Record<string, unknown>)[k] = v;
    this.change({ "machine-config": merged });
  }

  putDrive(given: Drive): void {
    const d = validate(DriveSchema, given, "drive");
    const drives = [...this.drives];
    const at = drives.findIndex((x) => x.drive_id === d.drive_id);
    if (at >= 0) drives[at] = d;
    else drives.push(d);
    // Replayed as Firecracker inserts them: the root drive goes first (convert.ts orderDrives).
    const ordered = toFlintOrder(drives);
    this.change({ drives: ordered }, (spec) => spec.virtioDevices.filter((v) => v.kind === "block" && (v.options as { path: string }).path === d.path_on_host));
  }

  putNetworkInterface(given: NetworkInterface): void {
    const n = validate(NetworkInterfaceSchema, given, "network-interface");
    const ifaces = [...this.ifaces];
    const at = ifaces.findIndex((x) => x.iface_id === n.iface_id);
    if (at >= 0) ifaces[at] = n;
    else ifaces.push(n);
    this.change({ "network-interfaces": ifaces }, (spec) => spec.virtioDevices.filter((v) => v.kind === "net" && (v.options as { tap: string }).tap === n.host_dev_name));
  }

  putVsock(given: Vsock): void {
    const v = validate(VsockSchema, given, "vsock");
    this.change({ vsock: v }, (spec) => spec.virtioDevices.filter((d) => d.kind === "vsock"));
  }

  putBalloon(given: Balloon): void {
    this.change({ balloon: validate(BalloonSchema, given, "balloon") });
  }

  /** PUT /mmds/config: the interfaces MMDS answers on (they must exist already), its version and address. */
  putMmdsConfig(given: MmdsConfig): void {
    this.change({ "mmds-config": validate(MmdsConfigSchema, given, "mmds-config") });
  }

  putEntropy(given: Entropy): void {
    this.change({ entropy: validate(EntropySchema, given, "entropy") });
  }

  /**
   * PUT /serial: where the console's output goes and its rate limit (see
   * serial-output.ts). As in Firecracker, it replaces the last one, the file
   * is opened at InstanceStart, and it is not part of GET /vm/config or of a
   * config file.
   */
  putSerial(given: Serial): void {
    this.serial = validate(SerialSchema, given, "serial");
  }

  /** The last PUT /serial, if any. */
  serialConfig(): Serial | undefined {
    return this.serial ? { ...this.serial } : undefined;
  }

  /**
   * Applies `patch` to a copy of the configuration, checks the whole (and the
   * devices `touched` picks against the host), and keeps it only if all pass.
   */
  private change(patch: Partial<VmConfig>, touched?: (spec: FlintMachineSpec) => VirtioDeviceConfig[]): void {
    const next: VmConfig = { ...this.toConfig(), ...patch };
    const spec = toFlintMachine(next, WHAT);
    if (touched) checkVirtioDevices(touched(spec));
    this.adopt(next);
  }

  /** Checks a whole document, then takes it. */
  private commit(cfg: VmConfig, what: string): void {
    const spec = toFlintMachine(cfg, what);
    checkVirtioDevices(spec.virtioDevices);
    this.adopt({ ...cfg, drives: toFlintOrder(cfg.drives) });
  }

  private adopt(cfg: VmConfig): void {
    this.configured = true;
    const boot = cfg["boot-source"];
    this.bootSource = boot.kernel_image_path === NO_KERNEL_YET ? undefined : { ...boot };
    this.machine = { ...defaultMachineConfig(), ...(cfg["machine-config"] ?? {}) };
    this.drives = cfg.drives.map((d) => ({ ...d }));
    this.ifaces = (cfg["network-interfaces"] ?? []).map((n) => ({ ...n }));
    this.vsock = cfg.vsock ?? undefined;
    this.balloon = cfg.balloon ?? undefined;
    this.entropy = cfg.entropy ?? undefined;
    this.mmdsConfig = cfg["mmds-config"] ?? undefined;
  }
}

function checkReadable(path: string, field: string, what: string): void {
  try {
    accessSync(path, constants.R_OK);
    if (!statSync(path).isFile()) throw new Error("not a file");
  } catch {
    throw new ConfigError("ECONFIGINVALID", `Invalid ${WHAT}: '${field}': the ${what} file '${path}' cannot be read`, field);
  }
}

/** Drives in Firecracker's list order after its inserts: the root drive first, the rest as given. */
function toFlintOrder(drives: readonly Drive[]): Drive[] {
  const root = drives.filter((d) => d.is_root_device);
  if (root.length > 1) {
    throw new ConfigError("ECONFIGINVALID", `Invalid ${WHAT}: a root block device already exists ('${root[0]!.drive_id}')`, "is_root_device");
  }
  return [...root, ...drives.filter((d) => !d.is_root_device)];
}
