/**
 * From a validated Firecracker configuration (schema.ts) to what flint's
 * Machine takes: vCPUs, memory, the boot source with Firecracker's command
 * line, and the virtio devices in the order the guest will see them.
 *
 * Pure: no file is opened here. The host checks a user can act on (the disk
 * image exists and is writable, the TAP exists, the vsock socket path is
 * free) are the caller's, with the same checks `flint run` makes
 * (src/cli/devices.ts checkVirtioDevices), so the API can run them when a
 * resource is PUT and the CLI before the guest starts.
 *
 * What Firecracker offers that flint has no device or feature for is refused
 * with ECONFIGUNSUPPORTED and a one-line reason; what only tunes the host side
 * in a way the guest cannot tell is accepted and ignored (listed in `ignored`).
 */
import { randomBytes } from "node:crypto";
import type { BalloonOptions } from "../devices/virtio/balloon.js";
import type { BlockOptions } from "../devices/virtio/block.js";
import type { NetOptions } from "../devices/virtio/net.js";
import type { RateLimiterConfig, TokenBucketConfig } from "../devices/virtio/rate-limiter.js";
import type { RngOptions } from "../devices/virtio/rng.js";
import type { VirtioDeviceConfig } from "../devices/virtio/virtio-set.js";
import type { VsockOptions } from "../devices/virtio/vsock/index.js";
import { ConfigError, VM_CONFIG_KEYS, type Drive, type RateLimiter, type TokenBucket, type VmConfig } from "./schema.js";

/**
 * Firecracker's command line when boot-source has no boot_args
 * (vmm_config/boot_source.rs DEFAULT_KERNEL_CMDLINE): no serial console.
 */
export const FC_DEFAULT_BOOT_ARGS = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";
/** Where guests reach MMDS when mmds-config gives no ipv4_address (Firecracker's default). */
export const FC_DEFAULT_MMDS_IPV4 = "169.254.169.254";
/** Firecracker's machine when machine-config is absent (machine_config.rs Default). */
export const FC_DEFAULT_VCPUS = 1;
/** Guest memory in MiB when machine-config is absent (machine_config.rs DEFAULT_MEM_SIZE_MIB). */
export const FC_DEFAULT_MEM_MIB = 128;

/** What Machine.create needs from a Firecracker configuration. */
export interface FlintMachineSpec {
  cpus: number;
  memoryMib: number;
  kernelPath: string;
  initrdPath?: string;
  /** boot_args (or Firecracker's default) with `root=` appended for a root drive, as Firecracker does. */
  cmdline: string;
  /**
   * "prefer-pvh": Firecracker enters an ELF through PVH when it has the
   * XEN_ELFNOTE_PHYS32_ENTRY note, else through the 64-bit boot protocol
   * (arch/x86_64/mod.rs load_kernel).
   */
  bootMode: "prefer-pvh";
  /** huge_pages "Transparent". */
  hugePages: boolean;
  /** track_dirty_pages: KVM's dirty log and flint's own, for Diff snapshots. */
  trackDirtyPages: boolean;
  /**
   * In Firecracker's attach order (builder.rs): balloon, drives (the root
   * drive first, so it is /dev/vda), network interfaces, vsock, entropy.
   */
  virtioDevices: VirtioDeviceConfig[];
  /** Fields accepted and not acted on, as one-line notes ("machine-config.track_dirty_pages: ignored (...)"). */
  ignored: string[];
}

function unsupported(field: string, why: string): ConfigError {
  return new ConfigError("ECONFIGUNSUPPORTED", `Unsupported config: '${field}' ${why}`, field);
}

/**
 * A bucket in flint's shape, or undefined when it limits nothing: size or
 * refill_time 0 (Firecracker's TokenBucket::new returns none then, and its
 * GET /vm/config shows no such bucket).
 */
export function tokenBucket(b: TokenBucket | null | undefined): TokenBucketConfig | undefined {
  if (!b || b.size === 0 || b.refill_time === 0) return undefined;
  const out: TokenBucketConfig = { size: b.size, refillTimeMs: b.refill_time };
  if (b.one_time_burst) out.oneTimeBurst = b.one_time_burst;
  return out;
}

/** A rate limiter in flint's shape (rate-limiter.ts), or undefined when neither bucket limits anything. */
function checkRateLimiter(r: RateLimiter | null | undefined): RateLimiterConfig | undefined {
  const bandwidth = tokenBucket(r?.bandwidth), ops = tokenBucket(r?.ops);
  if (!bandwidth && !ops) return undefined;
  return { ...(bandwidth ? { bandwidth } : {}), ...(ops ? { ops } : {}) };
}

/**
 * A run-time update (PATCH /drives, /network-interfaces) in flint's shape:
 * every bucket given is kept as given, so size or refill_time 0 removes that
 * bucket (Firecracker's RateLimiterUpdate); an absent bucket stays as it is.
 */
export function rateLimiterUpdate(r: RateLimiter): RateLimiterConfig {
  const bucket = (b: TokenBucket): TokenBucketConfig => ({ size: b.size, refillTimeMs: b.refill_time, ...(b.one_time_burst ? { oneTimeBurst: b.one_time_burst } : {}) });
  return { ...(r.bandwidth ? { bandwidth: bucket(r.bandwidth) } : {}), ...(r.ops ? { ops: bucket(r.ops) } : {}) };
}

/** A limiter as a device reports it, in Firecracker's shape (undefined when it limits nothing). */
export function toFcRateLimiter(c: RateLimiterConfig): RateLimiter | undefined {
  const bucket = (b: TokenBucketConfig): TokenBucket => ({ size: b.size, refill_time: b.refillTimeMs, ...(b.oneTimeBurst ? { one_time_burst: b.oneTimeBurst } : {}) });
  if (!c.bandwidth && !c.ops) return undefined;
  return { ...(c.bandwidth ? { bandwidth: bucket(c.bandwidth) } : {}), ...(c.ops ? { ops: bucket(c.ops) } : {}) };
}

/**
 * Firecracker's drive list after its inserts (vmm_config/drive.rs insert): a
 * drive_id given again replaces the earlier entry in place; the root device
 * goes first; a second root device is refused.
 */
function orderDrives(drives: readonly Drive[], what: string): { drive: Drive; index: number }[] {
  const list: { drive: Drive; index: number }[] = [];
  drives.forEach((drive, index) => {
    const at = list.findIndex((d) => d.drive.drive_id === drive.drive_id);
    if (at >= 0) list.splice(at, 1);
    const rootAt = list.findIndex((d) => d.drive.is_root_device);
    if (drive.is_root_device && rootAt >= 0) {
      throw new ConfigError("ECONFIGINVALID", `Invalid ${what}: 'drives[${index}].is_root_device': a root block device already exists ('${list[rootAt]!.drive.drive_id}')`, `drives[${index}].is_root_device`);
    }
    if (drive.is_root_device) list.unshift({ drive, index });
    else if (at >= 0) list.splice(at, 0, { drive, index });
    else list.push({ drive, index });
  });
  return list;
}

/** A random locally administered unicast MAC, for an interface without guest_mac. */
function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfc) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join(":");
}

/**
 * Converts a validated config to flint's machine description; throws
 * ConfigError (ECONFIGUNSUPPORTED for what flint cannot do yet,
 * ECONFIGINVALID for what Firecracker also refuses). `what` names the
 * source in messages ("config file", or the API request).
 */
export function toFlintMachine(cfg: VmConfig, what = "config file"): FlintMachineSpec {
  const ignored: string[] = [];
  for (const key of Object.keys(cfg)) if (!VM_CONFIG_KEYS.includes(key)) ignored.push(`${key}: unknown key, ignored (as Firecracker ignores it)`);
  const m = cfg["machine-config"];
  const cpus = m?.vcpu_count ?? FC_DEFAULT_VCPUS;
  const memoryMib = m?.mem_size_mib ?? FC_DEFAULT_MEM_MIB;
  if (m?.smt) throw unsupported("machine-config.smt", "is true: flint does not present SMT sibling threads to the guest");
  if (m?.cpu_template && m.cpu_template !== "None") throw unsupported("machine-config.cpu_template", `'${m.cpu_template}': flint has no CPU templates`);
  if (m?.huge_pages === "2M") throw unsupported("machine-config.huge_pages", "'2M' (hugetlbfs): flint backs guest memory with transparent huge pages only (use 'Transparent')");
  if (cfg["cpu-config"] != null) throw unsupported("cpu-config", "is set: flint has no custom CPU templates");
  if (cfg.pmem && cfg.pmem.length > 0) throw unsupported("pmem", "lists devices: flint has no virtio-pmem device");
  if (cfg["memory-hotplug"] != null) throw unsupported("memory-hotplug", "is set: flint has no virtio-mem device");

  const boot = cfg["boot-source"];
  let cmdline = boot.boot_args ?? FC_DEFAULT_BOOT_ARGS;
  const devices: VirtioDeviceConfig[] = [];

  const b = cfg.balloon;
  if (b != null) {
    if (b.free_page_hinting) throw unsupported("balloon.free_page_hinting", "is true: flint's balloon has no free page hinting");
    if (b.free_page_reporting) throw unsupported("balloon.free_page_reporting", "is true: flint's balloon has no free page reporting");
    if (b.amount_mib > memoryMib) throw new ConfigError("ECONFIGINVALID", `Invalid ${what}: 'balloon.amount_mib' ${b.amount_mib} is more than the guest's ${memoryMib} MiB`, "balloon.amount_mib");
    // flint's balloon always offers DEFLATE_ON_OOM and the statistics queue; the guest driver decides.
    if (!b.deflate_on_oom) ignored.push("balloon.deflate_on_oom false: flint's balloon offers deflate-on-OOM anyway");
    if (b.stats_polling_interval_s) ignored.push("balloon.stats_polling_interval_s: flint reads statistics when asked, not on a timer");
    const options: BalloonOptions = { targetMib: b.amount_mib };
    devices.push({ kind: "balloon", options });
  }

  for (const { drive, index } of orderDrives(cfg.drives, what)) {
    const at = `drives[${index}]`;
    if (drive.socket != null) throw unsupported(`${at}.socket`, "is set: flint has no vhost-user-blk");
    if (drive.path_on_host == null) throw new ConfigError("ECONFIGINVALID", `Invalid ${what}: '${at}.path_on_host' is required for a virtio-blk drive`, `${at}.path_on_host`);
    const rateLimiter = checkRateLimiter(drive.rate_limiter);
    const readOnly = drive.is_read_only ?? false;
    // Firecracker's boot_source.rs: `root=PARTUUID=<uuid>` or `root=/dev/vda`, then `ro` or `rw`, appended.
    if (drive.is_root_device) cmdline += ` root=${drive.partuuid != null ? `PARTUUID=${drive.partuuid}` : "/dev/vda"} ${readOnly ? "ro" : "rw"}`;
    const options: BlockOptions = { path: drive.path_on_host, readOnly, ...(rateLimiter ? { rateLimiter } : {}) };
    devices.push({ kind: "block", options });
  }
  // Both cache types are served the same: flint honours every guest flush (Writeback's contract), which
  // Unsafe leaves out; io_engine picks Firecracker's host I/O path, which the guest cannot see.
  if (cfg.drives.some((d) => d.cache_type === "Unsafe")) ignored.push("drives[].cache_type 'Unsafe': flint still honours guest flushes");
  if (cfg.drives.some((d) => d.io_engine === "Async")) ignored.push("drives[].io_engine 'Async': flint's drives do synchronous I/O on their device thread");

  // MMDS answers on the interfaces mmds-config names (Firecracker: each must exist, and the list may not be empty).
  const mmds = cfg["mmds-config"] ?? undefined;
  if (mmds) {
    const known = new Set((cfg["network-interfaces"] ?? []).map((n) => n.iface_id));
    if (mmds.network_interfaces.length === 0) {
      throw new ConfigError("ECONFIGINVALID", `Invalid ${what}: 'mmds-config.network_interfaces' is empty: name the interfaces MMDS answers on`, "mmds-config.network_interfaces");
    }
    const missing = mmds.network_interfaces.find((id) => !known.has(id));
    if (missing !== undefined) {
      throw new ConfigError("ECONFIGINVALID", `Invalid ${what}: 'mmds-config.network_interfaces' names '${missing}', which is not a configured network interface`, "mmds-config.network_interfaces");
    }
  }
  const ifaces = new Map<string, number>();
  const netList: { options: NetOptions; index: number }[] = [];
  (cfg["network-interfaces"] ?? []).forEach((n, index) => {
    const at = `network-interfaces[${index}]`;
    const rxRateLimiter = checkRateLimiter(n.rx_rate_limiter), txRateLimiter = checkRateLimiter(n.tx_rate_limiter);
    const options: NetOptions = {
      tap: n.host_dev_name, mac: n.guest_mac ?? randomMac(),
      ...(rxRateLimiter ? { rxRateLimiter } : {}), ...(txRateLimiter ? { txRateLimiter } : {}),
    };
    if (n.mtu != null) options.mtu = n.mtu;
    if (mmds && mmds.network_interfaces.includes(n.iface_id)) {
      options.mmds = { ipv4: mmds.ipv4_address ?? FC_DEFAULT_MMDS_IPV4, version: mmds.version ?? "V1", imdsCompat: mmds.imds_compat ?? false };
    }
    const same = ifaces.get(n.iface_id);
    // As Firecracker's NetBuilder: an iface_id given again replaces the earlier one.
    if (same !== undefined) netList[same] = { options, index };
    else {
      ifaces.set(n.iface_id, netList.length);
      netList.push({ options, index });
    }
  });
  const taps = new Set<string>(), macs = new Set<string>();
  for (const { options, index } of netList) {
    const at = `network-interfaces[${index}]`;
    if (taps.has(options.tap)) throw new ConfigError("ECONFIGINVALID", `Invalid ${what}: '${at}.host_dev_name' '${options.tap}' is used by another interface`, `${at}.host_dev_name`);
    const mac = options.mac.toLowerCase();
    if (macs.has(mac)) throw new ConfigError("ECONFIGINVALID", `Invalid ${what}: '${at}.guest_mac' ${options.mac} is used by another interface`, `${at}.guest_mac`);
    taps.add(options.tap);
    macs.add(mac);
    devices.push({ kind: "net", options });
  }

  if (cfg.vsock != null) {
    const options: VsockOptions = { cid: cfg.vsock.guest_cid, uds: cfg.vsock.uds_path };
    devices.push({ kind: "vsock", options });
  }

  if (cfg.entropy != null) {
    const rateLimiter = checkRateLimiter(cfg.entropy.rate_limiter);
    const options: RngOptions = rateLimiter ? { rateLimiter } : {};
    devices.push({ kind: "rng", options });
  }

  return {
    cpus, memoryMib, kernelPath: boot.kernel_image_path,
    ...(boot.initrd_path != null ? { initrdPath: boot.initrd_path } : {}),
    cmdline, bootMode: "prefer-pvh", hugePages: m?.huge_pages === "Transparent", trackDirtyPages: m?.track_dirty_pages ?? false,
    virtioDevices: devices, ignored,
  };
}
