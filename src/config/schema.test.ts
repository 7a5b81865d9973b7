/** Firecracker's resources as the schema takes and refuses them: one line naming the field, a stable code. */
import assert from "node:assert/strict";
import { test } from "node:test";
import type * as z from "zod/mini";
import {
  BalloonSchema, BootSourceSchema, ConfigError, DriveSchema, EntropySchema, LoggerSchema, MachineConfigSchema, MetricsSchema,
  MmdsConfigSchema, NetworkInterfaceSchema, parseVmConfig, validate, VmConfigSchema, VsockSchema,
} from "./schema.js";

/** Asserts validate() throws a ConfigError with this code, field and message. */
function rejects(schema: z.ZodMiniType, value: unknown, field: string | undefined, message: RegExp, code: ConfigError["code"] = "ECONFIGINVALID"): void {
  assert.throws(() => validate(schema, value, "body"), (e: unknown) => {
    assert.ok(e instanceof ConfigError, `a ConfigError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.field, field);
    assert.match(e.message, message);
    assert.equal(e.message.split("\n").length, 1, "one line");
    return true;
  });
}

interface Case {
  name: string;
  schema: z.ZodMiniType;
  valid: Record<string, unknown>;
  required: string;
  wrongType: [string, unknown];
  outOfRange?: [string, unknown, RegExp];
}

const CASES: Case[] = [
  { name: "boot-source", schema: BootSourceSchema, valid: { kernel_image_path: "vmlinux", boot_args: "console=ttyS0", initrd_path: null },
    required: "kernel_image_path", wrongType: ["boot_args", 7] },
  { name: "machine-config", schema: MachineConfigSchema, valid: { vcpu_count: 2, mem_size_mib: 256, smt: false, track_dirty_pages: true, huge_pages: "Transparent", cpu_template: "None" },
    required: "mem_size_mib", wrongType: ["vcpu_count", "2"], outOfRange: ["vcpu_count", 33, /at most 32, got 33/] },
  { name: "drive", schema: DriveSchema, valid: { drive_id: "rootfs", path_on_host: "a.img", is_root_device: true, is_read_only: false, cache_type: "Writeback", io_engine: "Async", partuuid: null },
    required: "is_root_device", wrongType: ["is_read_only", "yes"], outOfRange: ["cache_type", "Fast", /one of "Unsafe", "Writeback", got "Fast"/] },
  { name: "network-interface", schema: NetworkInterfaceSchema, valid: { iface_id: "eth0", host_dev_name: "tap0", guest_mac: "06:00:ac:10:00:02", mtu: 1500 },
    required: "host_dev_name", wrongType: ["mtu", 1500.5], outOfRange: ["mtu", 67, /at least 68, got 67/] },
  { name: "vsock", schema: VsockSchema, valid: { guest_cid: 3, uds_path: "/tmp/v.sock", vsock_id: "vsock0" },
    required: "uds_path", wrongType: ["guest_cid", "3"], outOfRange: ["guest_cid", 2 ** 32, /at most 4294967295, got 4294967296/] },
  { name: "balloon", schema: BalloonSchema, valid: { amount_mib: 64, deflate_on_oom: true, stats_polling_interval_s: 1 },
    required: "deflate_on_oom", wrongType: ["amount_mib", true], outOfRange: ["stats_polling_interval_s", 65536, /at most 65535/] },
  { name: "entropy", schema: EntropySchema, valid: { rate_limiter: { bandwidth: { size: 1000, refill_time: 100 }, ops: null } },
    required: "", wrongType: ["rate_limiter", 5], outOfRange: ["rate_limiter", { ops: { size: -1, refill_time: 1 } }, /at least 0, got -1/] },
  { name: "logger", schema: LoggerSchema, valid: { log_path: "/tmp/log", level: "Warning", show_level: true, show_log_origin: false, module: "api_server" },
    required: "", wrongType: ["show_level", "true"], outOfRange: ["level", "Loud", /one of Error, Warning/] },
  { name: "metrics", schema: MetricsSchema, valid: { metrics_path: "/tmp/m", emit_id: true, properties: { a: "b" } },
    required: "metrics_path", wrongType: ["properties", { a: 1 }] },
  { name: "mmds-config", schema: MmdsConfigSchema, valid: { version: "V2", network_interfaces: ["eth0"], ipv4_address: "169.254.170.2", imds_compat: true },
    required: "network_interfaces", wrongType: ["network_interfaces", "eth0"], outOfRange: ["ipv4_address", "10.0.0.1", /169\.254/] },
];

for (const c of CASES) {
  test(`${c.name}: a valid body passes, typed as given`, () => {
    assert.deepEqual(validate(c.schema, c.valid, c.name), c.valid);
  });
  if (c.required) {
    test(`${c.name}: a missing required field is named`, () => {
      const { [c.required]: _gone, ...rest } = c.valid;
      rejects(c.schema, rest, c.required, new RegExp(`'${c.required}' is required`));
    });
  }
  test(`${c.name}: a wrong type is named`, () => {
    const [key, value] = c.wrongType;
    const field = key === "properties" ? "properties.a" : key;
    rejects(c.schema, { ...c.valid, [key]: value }, field, new RegExp(`'${field.replace(/\./g, "\\.")}' must be`));
  });
  test(`${c.name}: an unknown field is refused`, () => {
    rejects(c.schema, { ...c.valid, speed: "fast" }, "speed", /unknown field 'speed'/);
  });
  if (c.outOfRange) {
    test(`${c.name}: an out-of-range value is named`, () => {
      const [key, value, message] = c.outOfRange!;
      const r = c.schema.safeParse({ ...c.valid, [key]: value });
      assert.equal(r.success, false);
      assert.throws(() => validate(c.schema, { ...c.valid, [key]: value }, c.name), (e: unknown) => e instanceof ConfigError && e.field!.startsWith(key) && message.test(e.message));
    });
  }
}

test("machine-config: vcpu_count 0 is refused; odd counts above 1 with smt; odd memory with huge pages", () => {
  rejects(MachineConfigSchema, { vcpu_count: 0, mem_size_mib: 128 }, "vcpu_count", /at least 1, got 0/);
  rejects(MachineConfigSchema, { vcpu_count: 3, mem_size_mib: 128, smt: true }, "vcpu_count", /1 or even when smt/);
  assert.ok(validate(MachineConfigSchema, { vcpu_count: 1, mem_size_mib: 128, smt: true }, "m"));
  rejects(MachineConfigSchema, { vcpu_count: 1, mem_size_mib: 129, huge_pages: "2M" }, "mem_size_mib", /multiple of 2 with huge_pages '2M'/);
  rejects(MachineConfigSchema, { vcpu_count: 1, mem_size_mib: 0 }, "mem_size_mib", /at least 1/);
  rejects(MachineConfigSchema, { vcpu_count: 1, mem_size_mib: 128, huge_pages: "1G" }, "huge_pages", /one of "None", "Transparent", "2M"/);
});

test("an Option field takes null, a defaulted field does not (as serde does)", () => {
  assert.ok(validate(DriveSchema, { drive_id: "a", is_root_device: false, path_on_host: "x", partuuid: null, rate_limiter: null }, "d"));
  rejects(MachineConfigSchema, { vcpu_count: 1, mem_size_mib: 128, smt: null }, "smt", /'smt' must be a boolean, got null/);
});

test("deprecated and lenient forms Firecracker's code still takes are accepted", () => {
  assert.ok(validate(VsockSchema, { vsock_id: "v", guest_cid: 3, uds_path: "/tmp/v" }, "vsock"));
  for (const level of ["Warning", "warn", "INFO", "error", "Off", "trace", "Debug"]) assert.ok(validate(LoggerSchema, { level }, "logger"), level);
});

test("a nested unknown field is named with its path", () => {
  rejects(DriveSchema, { drive_id: "a", is_root_device: false, path_on_host: "x", rate_limiter: { bandwidth: { size: 1, refill_time: 1, burst: 2 } } },
    "rate_limiter.bandwidth.burst", /unknown field 'rate_limiter\.bandwidth\.burst'/);
  rejects(NetworkInterfaceSchema, { iface_id: "e", host_dev_name: "t", guest_mac: "06:00:ac:10:00" }, "guest_mac", /MAC address/);
});

test("the config file: boot-source and drives are required, unknown top-level keys pass (as in Firecracker), fields named with their path", () => {
  const ok = { "boot-source": { kernel_image_path: "k" }, "drives": [] };
  assert.deepEqual(parseVmConfig(JSON.stringify(ok)), ok);
  rejects(VmConfigSchema, { drives: [] }, "boot-source", /'boot-source' is required/);
  rejects(VmConfigSchema, { "boot-source": { kernel_image_path: "k" } }, "drives", /'drives' is required/);
  assert.deepEqual(parseVmConfig(JSON.stringify({ ...ok, "machine_config": {} })), { ...ok, "machine_config": {} });
  rejects(VmConfigSchema, { ...ok, drives: [{ drive_id: "a", is_root_device: "yes" }] }, "drives[0].is_root_device", /'drives\[0\]\.is_root_device' must be a boolean, got "yes"/);
  rejects(VmConfigSchema, { ...ok, "machine-config": { vcpu_count: 64, mem_size_mib: 128 } }, "machine-config.vcpu_count", /at most 32/);
  rejects(VmConfigSchema, [ok], undefined, /'\(document\)' must be an object/);
});

test("text that is not JSON is ECONFIGJSON, one line", () => {
  assert.throws(() => parseVmConfig("{\"boot-source\": "), (e: unknown) => e instanceof ConfigError && e.code === "ECONFIGJSON" && /^Invalid config file: not JSON/.test(e.message) && !e.message.includes("\n"));
});
