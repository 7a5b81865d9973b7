/**
 * Firecracker's pre-boot resources and its `--config-file` JSON, as one zod
 * schema from which both the validator and the TypeScript types come.
 *
 * Facts from Firecracker's swagger (src/firecracker/swagger/firecracker.yaml,
 * definitions) and from its serde structs (src/vmm/src/vmm_config/*.rs,
 * src/vmm/src/resources.rs VmmConfig), which decide what its parser takes:
 *   - a Rust `Option<T>` field takes a missing key or JSON `null` (the sample
 *     config files write `"partuuid": null`): `.nullish()` here;
 *   - a `#[serde(default)]` field that is not an Option takes a missing key but
 *     not `null`: `.optional()`;
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
import { z } from "zod";

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
const u8 = () => z.number().int().min(0).max(0xff);
const u16 = () => z.number().int().min(0).max(0xffff);
const u32 = () => z.number().int().min(0).max(0xffff_ffff);
const u64 = () => z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** Firecracker's vCPU limit (machine_config.rs MAX_SUPPORTED_VCPUS). */
export const FC_MAX_VCPUS = 32;

/** swagger TokenBucket: one bucket of a rate limiter; size or refill_time 0 turns it off. */
export const TokenBucketSchema = z.strictObject({
  size: u64(),
  one_time_burst: u64().nullish(),
  refill_time: u64(),
});
/** swagger RateLimiter: a bandwidth (bytes) and an ops bucket. */
export const RateLimiterSchema = z.strictObject({
  bandwidth: TokenBucketSchema.nullish(),
  ops: TokenBucketSchema.nullish(),
});

/** swagger BootSource (boot_source.rs BootSourceConfig). */
export const BootSourceSchema = z.strictObject({
  kernel_image_path: z.string(),
  initrd_path: z.string().nullish(),
  boot_args: z.string().nullish(),
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
  vcpu_count: u8().min(1).max(FC_MAX_VCPUS),
  mem_size_mib: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  smt: z.boolean().optional(),
  cpu_template: z.enum(CPU_TEMPLATES).nullish(),
  track_dirty_pages: z.boolean().optional(),
  huge_pages: z.enum(HUGE_PAGES).optional(),
}).superRefine((m, ctx) => {
  if (m.smt && m.vcpu_count > 1 && m.vcpu_count % 2 === 1) {
    ctx.addIssue({ code: "custom", path: ["vcpu_count"], message: `must be 1 or even when smt is true, got ${m.vcpu_count}` });
  }
  if ((m.huge_pages ?? "None") !== "None" && m.mem_size_mib % 2 !== 0) {
    ctx.addIssue({ code: "custom", path: ["mem_size_mib"], message: `must be a multiple of 2 with huge_pages '${m.huge_pages}', got ${m.mem_size_mib}` });
  }
});

/** swagger Drive (drive.rs BlockDeviceConfig): a virtio-blk drive, or vhost-user-blk with `socket`. */
export const DriveSchema = z.strictObject({
  drive_id: z.string(),
  partuuid: z.string().nullish(),
  is_root_device: z.boolean(),
  cache_type: z.enum(["Unsafe", "Writeback"]).optional(),
  is_read_only: z.boolean().nullish(),
  path_on_host: z.string().nullish(),
  rate_limiter: RateLimiterSchema.nullish(),
  io_engine: z.enum(["Sync", "Async"]).nullish(),
  socket: z.string().nullish(),
});

/** swagger NetworkInterface (net.rs NetworkInterfaceConfig); mtu as the swagger bounds it. */
export const NetworkInterfaceSchema = z.strictObject({
  iface_id: z.string(),
  host_dev_name: z.string(),
  guest_mac: z.string().regex(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/, "must be a MAC address like 06:00:ac:10:00:02").nullish(),
  mtu: z.number().int().min(68).max(65535).nullish(),
  rx_rate_limiter: RateLimiterSchema.nullish(),
  tx_rate_limiter: RateLimiterSchema.nullish(),
});

/** swagger Vsock (vsock.rs VsockDeviceConfig): CIDs 0..2 are reserved; vsock_id is deprecated but parsed. */
export const VsockSchema = z.strictObject({
  vsock_id: z.string().nullish(),
  guest_cid: u32().min(3),
  uds_path: z.string(),
});

/** swagger Balloon (balloon.rs BalloonDeviceConfig). */
export const BalloonSchema = z.strictObject({
  amount_mib: u32(),
  deflate_on_oom: z.boolean(),
  stats_polling_interval_s: u16().optional(),
  free_page_hinting: z.boolean().optional(),
  free_page_reporting: z.boolean().optional(),
});

/** swagger EntropyDevice (entropy.rs EntropyDeviceConfig). */
export const EntropySchema = z.strictObject({
  rate_limiter: RateLimiterSchema.nullish(),
});

/** Log levels as Firecracker's parser takes them: any letter case, "Warning" as well as "Warn" (logging.rs LevelFilter). */
export const LOG_LEVELS = ["off", "trace", "debug", "info", "warn", "warning", "error"] as const;

/** swagger Logger (logging.rs LoggerConfig). */
export const LoggerSchema = z.strictObject({
  log_path: z.string().nullish(),
  level: z.string().refine((s) => (LOG_LEVELS as readonly string[]).includes(s.toLowerCase()), "must be one of Error, Warning, Info, Debug, Trace, Off").nullish(),
  show_level: z.boolean().nullish(),
  show_log_origin: z.boolean().nullish(),
  module: z.string().nullish(),
});

/** swagger Metrics (metrics.rs MetricsConfig). */
export const MetricsSchema = z.strictObject({
  metrics_path: z.string(),
  emit_id: z.boolean().optional(),
  properties: z.record(z.string(), z.string()).nullish(),
});

/** swagger MmdsConfig (mmds.rs MmdsConfig); the address must be in 169.254.0.0/16 as the swagger's pattern says. */
export const MmdsConfigSchema = z.strictObject({
  version: z.enum(["V1", "V2"]).optional(),
  network_interfaces: z.array(z.string()),
  ipv4_address: z.string().regex(/^169\.254\.([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4])\.([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$/, "must be an address in 169.254.1.0-169.254.254.255").nullish(),
  imds_compat: z.boolean().optional(),
});

/** swagger Pmem: parsed so the refusal can name it (flint has no virtio-pmem). */
export const PmemSchema = z.strictObject({
  id: z.string(),
  path_on_host: z.string(),
  root_device: z.boolean().optional(),
  read_only: z.boolean().optional(),
  rate_limiter: RateLimiterSchema.nullish(),
});

/** swagger MemoryHotplugConfig: parsed so the refusal can name it (flint has no virtio-mem). */
export const MemoryHotplugSchema = z.strictObject({
  total_size_mib: u32().optional(),
  slot_size_mib: u32().min(128).optional(),
  block_size_mib: u32().min(2).optional(),
});

/**
 * The `--config-file` JSON (resources.rs VmmConfig, keys in kebab-case).
 * "boot-source" and "drives" are required, as in Firecracker (neither has a
 * serde default there). "cpu-config" is a path or a custom template: flint
 * has no custom CPU templates, so only its presence matters.
 */
export const VmConfigSchema = z.strictObject({
  "boot-source": BootSourceSchema,
  "drives": z.array(DriveSchema),
  "machine-config": MachineConfigSchema.nullish(),
  "cpu-config": z.union([z.string(), z.record(z.string(), z.unknown())]).nullish(),
  "network-interfaces": z.array(NetworkInterfaceSchema).optional(),
  "vsock": VsockSchema.nullish(),
  "balloon": BalloonSchema.nullish(),
  "entropy": EntropySchema.nullish(),
  "logger": LoggerSchema.nullish(),
  "metrics": MetricsSchema.nullish(),
  "mmds-config": MmdsConfigSchema.nullish(),
  "pmem": z.array(PmemSchema).optional(),
  "memory-hotplug": MemoryHotplugSchema.nullish(),
});

export type TokenBucket = z.infer<typeof TokenBucketSchema>;
export type RateLimiter = z.infer<typeof RateLimiterSchema>;
export type BootSource = z.infer<typeof BootSourceSchema>;
export type MachineConfiguration = z.infer<typeof MachineConfigSchema>;
export type Drive = z.infer<typeof DriveSchema>;
export type NetworkInterface = z.infer<typeof NetworkInterfaceSchema>;
export type Vsock = z.infer<typeof VsockSchema>;
export type Balloon = z.infer<typeof BalloonSchema>;
export type Entropy = z.infer<typeof EntropySchema>;
export type Logger = z.infer<typeof LoggerSchema>;
export type Metrics = z.infer<typeof MetricsSchema>;
export type MmdsConfig = z.infer<typeof MmdsConfigSchema>;
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
export function validate<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
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
