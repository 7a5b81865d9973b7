/**
 * Firecracker's pre-boot resources and its `--config-file` JSON, as one zod
 * schema from which both the validator and the TypeScript types come.
 *
 * Facts from Firecracker's swagger (src/firecracker/swagger/firecracker.yaml,
 * definitions) and from its serde structs (src/vmm/src/vmm_config/*.rs,
 * src/vmm/src/resources.rs VmmConfig), which decide what its parser takes:
 *   - a Rust `Option<T>` field takes a missing key or JSON `null` (the sample
 *     config files write `"partuuid": null`): `z.nullish` here;
 *   - a `#[serde(default)]` field that is not an Option takes a missing key but
 *     not `null`: `z.optional`;
 *   - integer ranges follow the Rust type (u8, u16, u32, u64) where the
 *     swagger gives none, and the swagger's minimum/maximum where it does;
 *   - deprecated fields the code still parses are accepted (vsock `vsock_id`,
 *     log level "Warning" and any letter case).
 * Unknown keys are refused at every level. Firecracker ignores them at the top
 * level and in token buckets and metrics (no deny_unknown_fields there); flint
 * refuses them so a misspelt key is never silently ignored.
 *
 * Every rejection is a ConfigError with a one-line message naming the field,
 * fit for Firecracker's 400 `{"fault_message": ...}`.
 */
// zod's "mini" build: the same validator core and inferred types as zod's chained API, in a
// fraction of the code (the CLI bundle grew by ~770 KB and ~0.1 s of start-up with the full one).
import * as z from "zod/mini";

/** Why a configuration was refused; `code` is stable, `field` names the JSON path ("drives[0].path_on_host"). */
export class ConfigError extends Error {
  readonly code: "ECONFIGJSON" | "ECONFIGINVALID" | "ECONFIGUNSUPPORTED" | "ECONFIGFILE";
  /** The offending field's path, when there is one. */
  readonly field?: string;
  constructor(code: ConfigError["code"], message: string, field?: string) {
    super(message);
    this.name = "ConfigError";
    this.code = code;
    if (field !== undefined) this.field = field;
  }
}

/** Rust integer types as JSON numbers (u64 is capped at what a JS number holds exactly). */
const u8 = () => z.int().check(z.gte(0), z.lte(0xff));
const u16 = () => z.int().check(z.gte(0), z.lte(0xffff));
const u32 = () => z.int().check(z.gte(0), z.lte(0xffff_ffff));
const u64 = () => z.int().check(z.gte(0));

/** Firecracker's vCPU limit (machine_config.rs MAX_SUPPORTED_VCPUS). */
export const FC_MAX_VCPUS = 32;

/** swagger TokenBucket: one bucket of a rate limiter; size or refill_time 0 turns it off. */
export const TokenBucketSchema = z.strictObject({
  size: u64(),
  one_time_burst: z.nullish(u64()),
  refill_time: u64(),
});
/** swagger RateLimiter: a bandwidth (bytes) and an ops bucket. */
export const RateLimiterSchema = z.strictObject({
  bandwidth: z.nullish(TokenBucketSchema),
  ops: z.nullish(TokenBucketSchema),
});

/** swagger BootSource (boot_source.rs BootSourceConfig). */
export const BootSourceSchema = z.strictObject({
  kernel_image_path: z.string(),
  initrd_path: z.nullish(z.string()),
  boot_args: z.nullish(z.string()),
});

/** The static CPU templates (swagger CpuTemplate). */
export const CPU_TEMPLATES = ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"] as const;
/** Page backing of guest memory (machine_config.rs HugePageConfig). */
export const HUGE_PAGES = ["None", "Transparent", "2M"] as const;

/**
 * swagger MachineConfiguration (machine_config.rs MachineConfig): vcpu_count
 * 1..32 and, with SMT, 1 or even; mem_size_mib above 0 and a multiple of 2
 * when backed by huge pages (HugePageConfig::is_valid_mem_size).
 */
export const MachineConfigSchema = z.strictObject({
  vcpu_count: u8().check(z.gte(1), z.lte(FC_MAX_VCPUS)),
  mem_size_mib: z.int().check(z.gte(1)),
  smt: z.optional(z.boolean()),
  cpu_template: z.nullish(z.enum(CPU_TEMPLATES)),
  track_dirty_pages: z.optional(z.boolean()),
  huge_pages: z.optional(z.enum(HUGE_PAGES)),
}).check(z.superRefine((m, ctx) => {
  if (m.smt && m.vcpu_count > 1 && m.vcpu_count % 2 === 1) {
    ctx.addIssue({ code: "custom", path: ["vcpu_count"], message: `must be 1 or even when smt is true, got ${m.vcpu_count}` });
  }
  if ((m.huge_pages ?? "None") !== "None" && m.mem_size_mib % 2 !== 0) {
    ctx.addIssue({ code: "custom", path: ["mem_size_mib"], message: `must be a multiple of 2 with huge_pages '${m.huge_pages}', got ${m.mem_size_mib}` });
  }
}));

/** swagger Drive (drive.rs BlockDeviceConfig): a virtio-blk drive, or vhost-user-blk with `socket`. */
export const DriveSchema = z.strictObject({
  drive_id: z.string(),
  partuuid: z.nullish(z.string()),
  is_root_device: z.boolean(),
  cache_type: z.optional(z.enum(["Unsafe", "Writeback"])),
  is_read_only: z.nullish(z.boolean()),
  path_on_host: z.nullish(z.string()),
  rate_limiter: z.nullish(RateLimiterSchema),
  io_engine: z.nullish(z.enum(["Sync", "Async"])),
  socket: z.nullish(z.string()),
});

/** swagger NetworkInterface (net.rs NetworkInterfaceConfig); mtu as the swagger bounds it. */
export const NetworkInterfaceSchema = z.strictObject({
  iface_id: z.string(),
  host_dev_name: z.string(),
  guest_mac: z.nullish(z.string().check(z.regex(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/, "must be a MAC address like 06:00:ac:10:00:02"))),
  mtu: z.nullish(z.int().check(z.gte(68), z.lte(65535))),
  rx_rate_limiter: z.nullish(RateLimiterSchema),
  tx_rate_limiter: z.nullish(RateLimiterSchema),
});

/**
 * swagger Vsock (vsock.rs VsockDeviceConfig); vsock_id is deprecated but
 * parsed. The swagger's minimum CID of 3 is not what Firecracker's code
 * checks: it takes any u32, and firecracker-containerd leaves the CID 0.
 */
export const VsockSchema = z.strictObject({
  vsock_id: z.nullish(z.string()),
  guest_cid: u32(),
  uds_path: z.string(),
});

/** swagger Balloon (balloon.rs BalloonDeviceConfig). */
export const BalloonSchema = z.strictObject({
  amount_mib: u32(),
  deflate_on_oom: z.boolean(),
  stats_polling_interval_s: z.optional(u16()),
  free_page_hinting: z.optional(z.boolean()),
  free_page_reporting: z.optional(z.boolean()),
});

/** swagger EntropyDevice (entropy.rs EntropyDeviceConfig). */
export const EntropySchema = z.strictObject({
  rate_limiter: z.nullish(RateLimiterSchema),
});

/** Log levels as Firecracker's parser takes them: any letter case, "Warning" as well as "Warn" (logging.rs LevelFilter). */
export const LOG_LEVELS = ["off", "trace", "debug", "info", "warn", "warning", "error"] as const;

/** swagger Logger (logging.rs LoggerConfig). */
export const LoggerSchema = z.strictObject({
  log_path: z.nullish(z.string()),
  level: z.nullish(z.string().check(z.refine((s) => (LOG_LEVELS as readonly string[]).includes(s.toLowerCase()), "must be one of Error, Warning, Info, Debug, Trace, Off"))),
  show_level: z.nullish(z.boolean()),
  show_log_origin: z.nullish(z.boolean()),
  module: z.nullish(z.string()),
});

/** swagger Metrics (metrics.rs MetricsConfig). */
export const MetricsSchema = z.strictObject({
  metrics_path: z.string(),
  emit_id: z.optional(z.boolean()),
  properties: z.nullish(z.record(z.string(), z.string())),
});

/** swagger MmdsConfig (mmds.rs MmdsConfig); the address must be in 169.254.0.0/16 as the swagger's pattern says. */
export const MmdsConfigSchema = z.strictObject({
  version: z.optional(z.enum(["V1", "V2"])),
  network_interfaces: z.array(z.string()),
  ipv4_address: z.nullish(z.string().check(z.regex(/^169\.254\.([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4])\.([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$/, "must be an address in 169.254.1.0-169.254.254.255"))),
  imds_compat: z.optional(z.boolean()),
});

/** swagger Pmem: parsed so the refusal can name it (flint has no virtio-pmem). */
export const PmemSchema = z.strictObject({
  id: z.string(),
  path_on_host: z.string(),
  root_device: z.optional(z.boolean()),
  read_only: z.optional(z.boolean()),
  rate_limiter: z.nullish(RateLimiterSchema),
});

/** swagger MemoryHotplugConfig: parsed so the refusal can name it (flint has no virtio-mem). */
export const MemoryHotplugSchema = z.strictObject({
  total_size_mib: z.optional(u32()),
  slot_size_mib: z.optional(u32().check(z.gte(128))),
  block_size_mib: z.optional(u32().check(z.gte(2))),
});

/**
 * The `--config-file` JSON (resources.rs VmmConfig, keys in kebab-case).
 * "boot-source" and "drives" are required, as in Firecracker (neither has a
 * serde default there). "cpu-config" is a path or a custom template: flint
 * has no custom CPU templates, so only its presence matters. Unlike every
 * resource inside it, the top level takes unknown keys: Firecracker's
 * VmmConfig does not deny them, and tools that write config files rely on
 * that; the converter names them as ignored (VM_CONFIG_KEYS).
 */
export const VmConfigSchema = z.looseObject({
  "boot-source": BootSourceSchema,
  "drives": z.array(DriveSchema),
  "machine-config": z.nullish(MachineConfigSchema),
  "cpu-config": z.nullish(z.union([z.string(), z.record(z.string(), z.unknown())])),
  "network-interfaces": z.optional(z.array(NetworkInterfaceSchema)),
  "vsock": z.nullish(VsockSchema),
  "balloon": z.nullish(BalloonSchema),
  "entropy": z.nullish(EntropySchema),
  "logger": z.nullish(LoggerSchema),
  "metrics": z.nullish(MetricsSchema),
  "mmds-config": z.nullish(MmdsConfigSchema),
  "pmem": z.optional(z.array(PmemSchema)),
  "memory-hotplug": z.nullish(MemoryHotplugSchema),
});

// Bodies only the API takes (swagger definitions of the same names).

/** swagger InstanceActionInfo: PUT /actions. */
export const ActionSchema = z.strictObject({
  action_type: z.enum(["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]),
});

/** swagger Vm: PATCH /vm. */
export const VmStateSchema = z.strictObject({
  state: z.enum(["Paused", "Resumed"]),
});

/** swagger MachineConfiguration as PATCH /machine-config takes it: every field optional (MachineConfigUpdate). */
export const MachineConfigUpdateSchema = z.strictObject({
  vcpu_count: z.optional(u8().check(z.gte(1), z.lte(FC_MAX_VCPUS))),
  mem_size_mib: z.optional(z.int().check(z.gte(1))),
  smt: z.optional(z.boolean()),
  cpu_template: z.nullish(z.enum(CPU_TEMPLATES)),
  track_dirty_pages: z.optional(z.boolean()),
  huge_pages: z.optional(z.enum(HUGE_PAGES)),
});

/** swagger PartialDrive: PATCH /drives/{id} (a new backing file, a new rate limiter). */
export const PartialDriveSchema = z.strictObject({
  drive_id: z.string(),
  path_on_host: z.nullish(z.string()),
  rate_limiter: z.nullish(RateLimiterSchema),
});

/** swagger PartialNetworkInterface: PATCH /network-interfaces/{id}. */
export const PartialNetworkInterfaceSchema = z.strictObject({
  iface_id: z.string(),
  rx_rate_limiter: z.nullish(RateLimiterSchema),
  tx_rate_limiter: z.nullish(RateLimiterSchema),
});

/** swagger BalloonUpdate: PATCH /balloon. */
export const BalloonUpdateSchema = z.strictObject({ amount_mib: u32() });

/** swagger BalloonStatsUpdate: PATCH /balloon/statistics. */
export const BalloonStatsUpdateSchema = z.strictObject({ stats_polling_interval_s: u16() });

/** swagger SerialDevice: PUT /serial. */
export const SerialSchema = z.strictObject({
  serial_out_path: z.nullish(z.string()),
  rate_limiter: z.nullish(TokenBucketSchema),
});

/** swagger SnapshotCreateParams: PUT /snapshot/create. */
export const SnapshotCreateSchema = z.strictObject({
  snapshot_type: z.optional(z.enum(["Full", "Diff"])),
  snapshot_path: z.string(),
  mem_file_path: z.string(),
  version: z.nullish(z.string()),
});

/**
 * swagger SnapshotLoadParams: PUT /snapshot/load, with the deprecated
 * mem_file_path and enable_diff_snapshots its parser still takes
 * (vmm_config/snapshot.rs LoadSnapshotConfig).
 */
export const SnapshotLoadSchema = z.strictObject({
  snapshot_path: z.string(),
  mem_file_path: z.nullish(z.string()),
  mem_backend: z.nullish(z.strictObject({ backend_type: z.enum(["File", "Uffd"]), backend_path: z.string() })),
  enable_diff_snapshots: z.optional(z.boolean()),
  track_dirty_pages: z.optional(z.boolean()),
  resume_vm: z.optional(z.boolean()),
  network_overrides: z.optional(z.array(z.strictObject({ iface_id: z.string(), host_dev_name: z.string() }))),
  vsock_override: z.nullish(z.strictObject({ uds_path: z.string() })),
  clock_realtime: z.optional(z.boolean()),
  huge_pages: z.optional(z.enum(HUGE_PAGES)),
});

/** swagger MemoryHotplugSizeUpdate: PATCH /hotplug/memory. */
export const MemoryHotplugSizeUpdateSchema = z.strictObject({ requested_size_mib: u32() });

/** swagger BalloonStartCmd: PATCH /balloon/hinting/start (an empty body is allowed). */
export const BalloonHintingStartSchema = z.strictObject({ acknowledge_on_stop: z.optional(z.boolean()) });

/** The top-level keys flint knows; any other is ignored, as Firecracker ignores it. */
export const VM_CONFIG_KEYS: readonly string[] = Object.keys(VmConfigSchema.def.shape);

/** A token bucket as given (swagger TokenBucket). */
export type TokenBucket = z.infer<typeof TokenBucketSchema>;
/** A rate limiter as given (swagger RateLimiter). */
export type RateLimiter = z.infer<typeof RateLimiterSchema>;
/** PUT /boot-source and the config file's "boot-source". */
export type BootSource = z.infer<typeof BootSourceSchema>;
/** PUT /machine-config and the config file's "machine-config". */
export type MachineConfiguration = z.infer<typeof MachineConfigSchema>;
/** PUT /drives/{id} and one entry of the config file's "drives". */
export type Drive = z.infer<typeof DriveSchema>;
/** PUT /network-interfaces/{id} and one entry of "network-interfaces". */
export type NetworkInterface = z.infer<typeof NetworkInterfaceSchema>;
/** PUT /vsock and the config file's "vsock". */
export type Vsock = z.infer<typeof VsockSchema>;
/** PUT /balloon and the config file's "balloon". */
export type Balloon = z.infer<typeof BalloonSchema>;
/** PUT /entropy and the config file's "entropy". */
export type Entropy = z.infer<typeof EntropySchema>;
/** PUT /logger and the config file's "logger". */
export type Logger = z.infer<typeof LoggerSchema>;
/** PUT /metrics and the config file's "metrics". */
export type Metrics = z.infer<typeof MetricsSchema>;
/** PUT /mmds/config and the config file's "mmds-config". */
export type MmdsConfig = z.infer<typeof MmdsConfigSchema>;
/** PUT /serial's body. */
export type Serial = z.infer<typeof SerialSchema>;
/** A validated `--config-file` document. */
export type VmConfig = z.infer<typeof VmConfigSchema>;

/** A JSON path as text: `drives[0].path_on_host`. */
function fieldPath(path: readonly PropertyKey[]): string {
  let s = "";
  for (const p of path) s += typeof p === "number" ? `[${p}]` : `${s ? "." : ""}${String(p)}`;
  return s;
}

/** What zod said, as one line naming the field. */
function describeIssue(issue: z.core.$ZodIssue, what: string): ConfigError {
  const at = fieldPath(issue.path);
  if (issue.code === "unrecognized_keys") {
    const key = issue.keys[0]!;
    const full = at ? `${at}.${key}` : key;
    return new ConfigError("ECONFIGINVALID", `Invalid ${what}: unknown field '${full}'`, full);
  }
  let reason: string;
  if (issue.code === "invalid_type" && issue.input === undefined) reason = "is required";
  else if (issue.code === "invalid_type") reason = `must be ${article(issue.expected === "int" ? "integer" : issue.expected)}, got ${describeValue(issue.input)}`;
  else if (issue.code === "too_small") reason = `must be at least ${String(issue.minimum)}, got ${describeValue(issue.input)}`;
  else if (issue.code === "too_big") reason = `must be at most ${String(issue.maximum)}, got ${describeValue(issue.input)}`;
  else if (issue.code === "invalid_value") reason = `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}, got ${describeValue(issue.input)}`;
  else reason = issue.message;
  return new ConfigError("ECONFIGINVALID", `Invalid ${what}: '${at || "(document)"}' ${reason}`, at || undefined);
}

function article(noun: string): string {
  return `${/^[aeiou]/.test(noun) ? "an" : "a"} ${noun}`;
}

function describeValue(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") return "an object";
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

/**
 * Validates a value against one of the schemas above and returns it typed;
 * throws ConfigError (ECONFIGINVALID) naming the first bad field. `what`
 * names the document in the message ("config file", "boot-source"...).
 */
export function validate<S extends z.ZodMiniType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(value, { reportInput: true });
  if (r.success) return r.data;
  throw describeIssue(r.error.issues[0]!, what);
}

/** Parses and validates the text of a `--config-file`; throws ConfigError (ECONFIGJSON, ECONFIGINVALID). */
export function parseVmConfig(text: string): VmConfig {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError("ECONFIGJSON", `Invalid config file: not JSON (${(e as Error).message.split("\n")[0]})`);
  }
  return validate(VmConfigSchema, json, "config file");
}
