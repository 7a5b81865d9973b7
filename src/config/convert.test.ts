/** A Firecracker config as flint's machine: Firecracker's boot-args rules, device order, and every refusal named. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FC_DEFAULT_BOOT_ARGS, toFlintMachine } from "./convert.js";
import { ConfigError, parseVmConfig, type VmConfig } from "./schema.js";
import { vmConfigJson, vmConfigNetworkJson } from "./testing/firecracker-samples.js";

const base = (extra: Record<string, unknown> = {}): VmConfig =>
  parseVmConfig(JSON.stringify({ "boot-source": { kernel_image_path: "vmlinux", boot_args: "console=ttyS0" }, "drives": [], ...extra }));

const drive = (id: string, more: Record<string, unknown> = {}) => ({ drive_id: id, path_on_host: `${id}.img`, is_root_device: false, ...more });

function refuses(cfg: VmConfig, field: string, message: RegExp, code: ConfigError["code"] = "ECONFIGUNSUPPORTED"): void {
  assert.throws(() => toFlintMachine(cfg), (e: unknown) => {
    assert.ok(e instanceof ConfigError, String(e));
    assert.equal(e.code, code);
    assert.equal(e.field, field);
    assert.match(e.message, message);
    assert.ok(!e.message.includes("\n"));
    return true;
  });
}

test("Firecracker's vm_config.json: 2 vCPUs, 1 GiB, the root drive as /dev/vda rw on the command line", () => {
  const m = toFlintMachine(parseVmConfig(vmConfigJson("/k/vmlinux.bin", "/d/rootfs.ext4")));
  assert.equal(m.cpus, 2);
  assert.equal(m.memoryMib, 1024);
  assert.equal(m.kernelPath, "/k/vmlinux.bin");
  assert.equal(m.initrdPath, undefined);
  assert.equal(m.cmdline, "console=ttyS0 reboot=k panic=1 root=/dev/vda rw");
  assert.equal(m.bootMode, "prefer-pvh");
  assert.equal(m.hugePages, false);
  assert.deepEqual(m.virtioDevices, [{ kind: "block", options: { path: "/d/rootfs.ext4", readOnly: false } }]);
});

test("Firecracker's vm_config_network.json: the drive, then virtio-net on tap0 with the guest MAC", () => {
  const m = toFlintMachine(parseVmConfig(vmConfigNetworkJson("vmlinux.bin", "rootfs.ext4")));
  assert.deepEqual(m.virtioDevices.map((d) => d.kind), ["block", "net"]);
  assert.deepEqual(m.virtioDevices[1]!.options, { tap: "tap0", mac: "06:00:c0:a8:00:02" });
});

test("without machine-config or boot_args: Firecracker's defaults (1 vCPU, 128 MiB, its command line)", () => {
  const m = toFlintMachine(parseVmConfig(JSON.stringify({ "boot-source": { kernel_image_path: "k", initrd_path: "i.cpio" }, "drives": [] })));
  assert.equal(m.cpus, 1);
  assert.equal(m.memoryMib, 128);
  assert.equal(m.cmdline, FC_DEFAULT_BOOT_ARGS);
  assert.equal(m.initrdPath, "i.cpio");
  assert.deepEqual(m.virtioDevices, []);
});

test("root device: read-only gives 'ro', a partuuid gives root=PARTUUID=, and it becomes the first drive (/dev/vda)", () => {
  const ro = toFlintMachine(base({ drives: [drive("data"), drive("root", { is_root_device: true, is_read_only: true })] }));
  assert.equal(ro.cmdline, "console=ttyS0 root=/dev/vda ro");
  assert.deepEqual(ro.virtioDevices.map((d) => (d.options as { path: string }).path), ["root.img", "data.img"]);
  const uuid = toFlintMachine(base({ drives: [drive("root", { is_root_device: true, partuuid: "0eaa91a0-01" })] }));
  assert.equal(uuid.cmdline, "console=ttyS0 root=PARTUUID=0eaa91a0-01 rw");
  const none = toFlintMachine(base({ drives: [drive("data", { partuuid: "0eaa91a0-01" })] }));
  assert.equal(none.cmdline, "console=ttyS0", "no root= without a root device");
});

test("a drive_id given again replaces the earlier drive in place; a second root device is refused", () => {
  const m = toFlintMachine(base({ drives: [drive("a"), drive("b"), drive("a", { path_on_host: "new.img", is_read_only: true })] }));
  assert.deepEqual(m.virtioDevices.map((d) => d.options), [{ path: "new.img", readOnly: true }, { path: "b.img", readOnly: false }]);
  refuses(base({ drives: [drive("r1", { is_root_device: true }), drive("r2", { is_root_device: true })] }), "drives[1].is_root_device", /a root block device already exists \('r1'\)/, "ECONFIGINVALID");
});

test("devices come in Firecracker's attach order: balloon, drives, interfaces, vsock, entropy; Transparent huge pages", () => {
  const m = toFlintMachine(base({
    "machine-config": { vcpu_count: 4, mem_size_mib: 512, huge_pages: "Transparent" },
    "network-interfaces": [{ iface_id: "eth0", host_dev_name: "tap7", guest_mac: "06:00:00:00:00:01", mtu: 9000 }],
    "vsock": { guest_cid: 7, uds_path: "/tmp/fc.vsock" },
    "balloon": { amount_mib: 64, deflate_on_oom: true },
    "entropy": {},
    "drives": [drive("d")],
  }));
  assert.equal(m.hugePages, true);
  assert.deepEqual(m.virtioDevices, [
    { kind: "balloon", options: { targetMib: 64 } },
    { kind: "block", options: { path: "d.img", readOnly: false } },
    { kind: "net", options: { tap: "tap7", mac: "06:00:00:00:00:01", mtu: 9000 } },
    { kind: "vsock", options: { cid: 7, uds: "/tmp/fc.vsock" } },
    { kind: "rng", options: {} },
  ]);
});

test("an interface without guest_mac gets a random locally administered unicast MAC", () => {
  const m = toFlintMachine(base({ "network-interfaces": [{ iface_id: "eth0", host_dev_name: "tap0" }] }));
  const mac = (m.virtioDevices[0]!.options as { mac: string }).mac;
  assert.match(mac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
  const first = parseInt(mac.slice(0, 2), 16);
  assert.equal(first & 0x03, 0x02, `locally administered, unicast: ${mac}`);
});

test("interfaces: an iface_id given again replaces; a TAP or MAC used twice is refused", () => {
  const m = toFlintMachine(base({ "network-interfaces": [
    { iface_id: "eth0", host_dev_name: "tap0", guest_mac: "06:00:00:00:00:01" },
    { iface_id: "eth0", host_dev_name: "tap1", guest_mac: "06:00:00:00:00:02" },
  ] }));
  assert.deepEqual(m.virtioDevices.map((d) => d.options), [{ tap: "tap1", mac: "06:00:00:00:00:02" }]);
  refuses(base({ "network-interfaces": [{ iface_id: "a", host_dev_name: "tap0" }, { iface_id: "b", host_dev_name: "tap0" }] }),
    "network-interfaces[1].host_dev_name", /'tap0' is used by another interface/, "ECONFIGINVALID");
  refuses(base({ "network-interfaces": [{ iface_id: "a", host_dev_name: "tap0", guest_mac: "06:00:00:00:00:01" }, { iface_id: "b", host_dev_name: "tap1", guest_mac: "06:00:00:00:00:01" }] }),
    "network-interfaces[1].guest_mac", /is used by another interface/, "ECONFIGINVALID");
});

test("rate limiters pass through to the devices' options in flint's shape; buckets that limit nothing are left out", () => {
  const bucket = { size: 1000, refill_time: 100 };
  const m = toFlintMachine(base({
    drives: [drive("d", { rate_limiter: { bandwidth: { ...bucket, one_time_burst: 5000 }, ops: { size: 0, refill_time: 10 } } })],
    "network-interfaces": [{ iface_id: "e", host_dev_name: "t", guest_mac: "06:00:00:00:00:01", rx_rate_limiter: { ops: bucket }, tx_rate_limiter: { bandwidth: bucket, ops: null } }],
    entropy: { rate_limiter: { bandwidth: { size: 10, refill_time: 0 } } },
  }));
  assert.deepEqual(m.virtioDevices.map((d) => d.options), [
    { path: "d.img", readOnly: false, rateLimiter: { bandwidth: { size: 1000, oneTimeBurst: 5000, refillTimeMs: 100 } } },
    { tap: "t", mac: "06:00:00:00:00:01", rxRateLimiter: { ops: { size: 1000, refillTimeMs: 100 } }, txRateLimiter: { bandwidth: { size: 1000, refillTimeMs: 100 } } },
    {},
  ]);
});

test("what flint has no device or feature for is refused with one line naming the field", () => {
  refuses(base({ "machine-config": { vcpu_count: 2, mem_size_mib: 128, smt: true } }), "machine-config.smt", /SMT/);
  refuses(base({ "machine-config": { vcpu_count: 1, mem_size_mib: 128, cpu_template: "T2" } }), "machine-config.cpu_template", /'T2': flint has no CPU templates/);
  refuses(base({ "machine-config": { vcpu_count: 1, mem_size_mib: 128, huge_pages: "2M" } }), "machine-config.huge_pages", /hugetlbfs/);
  refuses(base({ "cpu-config": "/tmp/template.json" }), "cpu-config", /custom CPU templates/);
  refuses(base({ pmem: [{ id: "p", path_on_host: "p.img" }] }), "pmem", /virtio-pmem/);
  refuses(base({ "memory-hotplug": { total_size_mib: 1024 } }), "memory-hotplug", /virtio-mem/);
  refuses(base({ drives: [{ drive_id: "v", is_root_device: false, socket: "/tmp/vhost.sock" }] }), "drives[0].socket", /vhost-user-blk/);
  refuses(base({ balloon: { amount_mib: 1, deflate_on_oom: true, free_page_hinting: true } }), "balloon.free_page_hinting", /free page hinting/);
  refuses(base({ balloon: { amount_mib: 1, deflate_on_oom: true, free_page_reporting: true } }), "balloon.free_page_reporting", /free page reporting/);
});

test("mmds-config turns MMDS on for the interfaces it names, with Firecracker's defaults; unknown or no interfaces are refused", () => {
  const net = [{ iface_id: "eth0", host_dev_name: "t0", guest_mac: "06:00:00:00:00:01" }, { iface_id: "eth1", host_dev_name: "t1", guest_mac: "06:00:00:00:00:02" }];
  const spec = toFlintMachine(base({ "network-interfaces": net, "mmds-config": { network_interfaces: ["eth1"] } }));
  const opts = spec.virtioDevices.filter((d) => d.kind === "net").map((d) => (d.options as { mmds?: unknown }).mmds);
  assert.deepEqual(opts, [undefined, { ipv4: "169.254.169.254", version: "V1", imdsCompat: false }]);
  const v2 = toFlintMachine(base({ "network-interfaces": net, "mmds-config": { network_interfaces: ["eth0"], version: "V2", ipv4_address: "169.254.170.2", imds_compat: true } }));
  assert.deepEqual((v2.virtioDevices.find((d) => d.kind === "net")!.options as { mmds?: unknown }).mmds, { ipv4: "169.254.170.2", version: "V2", imdsCompat: true });
  refuses(base({ "network-interfaces": net, "mmds-config": { network_interfaces: ["eth7"] } }), "mmds-config.network_interfaces", /'eth7', which is not a configured network interface/, "ECONFIGINVALID");
  refuses(base({ "network-interfaces": net, "mmds-config": { network_interfaces: [] } }), "mmds-config.network_interfaces", /is empty/, "ECONFIGINVALID");
});

test("what Firecracker also refuses: a drive without path_on_host, a balloon bigger than the guest", () => {
  refuses(base({ drives: [{ drive_id: "d", is_root_device: false }] }), "drives[0].path_on_host", /required for a virtio-blk drive/, "ECONFIGINVALID");
  refuses(base({ "machine-config": { vcpu_count: 1, mem_size_mib: 128 }, "balloon": { amount_mib: 129, deflate_on_oom: false } }), "balloon.amount_mib", /129 is more than the guest's 128 MiB/, "ECONFIGINVALID");
});

test("host-side tuning the guest cannot see is accepted and listed as ignored", () => {
  const m = toFlintMachine(base({
    "machine-config": { vcpu_count: 1, mem_size_mib: 128, track_dirty_pages: true, cpu_template: "None" },
    "drives": [drive("d", { cache_type: "Unsafe", io_engine: "Async", rate_limiter: { bandwidth: { size: 0, refill_time: 100 }, ops: { size: 10, refill_time: 0 } } })],
    "logger": { log_path: "/tmp/fc.log", level: "Debug" },
    "metrics": { metrics_path: "/tmp/fc.metrics" },
    "balloon": { amount_mib: 0, deflate_on_oom: false, stats_polling_interval_s: 5 },
    "x-tool-annotations": { owner: "ci" },
  }));
  assert.equal(m.virtioDevices.length, 2);
  assert.equal(m.trackDirtyPages, true, "track_dirty_pages is acted on (Diff snapshots)");
  for (const what of ["cache_type", "io_engine", "deflate_on_oom", "stats_polling_interval_s", "x-tool-annotations: unknown key"]) {
    assert.ok(m.ignored.some((n) => n.includes(what)), `${what} listed in ${JSON.stringify(m.ignored)}`);
  }
  // The logger and metrics are applied by whoever runs the VM (src/cli/firecracker.ts), not ignored.
  assert.ok(!m.ignored.some((n) => n.startsWith("logger") || n.startsWith("metrics")), JSON.stringify(m.ignored));
});
