/**
 * Firecracker's API on a Unix socket, driven as its clients drive it: every
 * operation of its swagger file with a valid request (read back through the
 * GETs) and with bad input (malformed JSON, missing field, wrong type,
 * unknown field, out of range, wrong method, wrong state), which must change
 * nothing; then a real VM (the ring-3 exit-loop guest on /dev/kvm) started,
 * paused and resumed over the API.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, watch, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { buildExitLoopGuest, exitLoopCmdline } from "../guest/programs/exit-loop.js";
import { ApiServer, HTTP_MAX_PAYLOAD_SIZE } from "./api-server.js";
import { api, rawExchange } from "./testing/api-client.js";
import { Vm } from "./vm.js";

const dir = mkdtempSync(join(tmpdir(), "flint-api-test-"));
const disk = join(dir, "disk.img");
writeFileSync(disk, Buffer.alloc(1 << 20));
const tap = `flapi${process.pid % 100000}`;
const kernel = buildExitLoopGuest();
const bootArgs = exitLoopCmdline({ mode: "pio", count: 1000, hello: true, halt: true });

let seq = 0;
/** A fresh Vm and its API on a new socket. */
async function serve(): Promise<{ sock: string; vm: Vm; server: ApiServer }> {
  const vm = new Vm({ id: "api-test", version: "9.9.9" });
  const sock = join(dir, `api${seq++}.sock`);
  const server = await ApiServer.listen(vm, sock);
  return { sock, vm, server };
}

before(() => execFileSync("ip", ["tuntap", "add", "dev", tap, "mode", "tap"], { stdio: ["ignore", "ignore", "pipe"] }));
after(() => {
  spawnSync("ip", ["link", "del", tap]);
  rmSync(dir, { recursive: true, force: true });
});

describe("Firecracker's API before boot", () => {
  let sock: string, server: ApiServer;
  before(async () => ({ sock, server } = await serve()));
  after(() => server.close());

  const config = async () => (await api(sock, "GET", "/vm/config")).json as Record<string, unknown>;

  it("GET / and GET /version describe the instance", async () => {
    const r = await api(sock, "GET", "/");
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { id: "api-test", state: "Not started", vmm_version: "9.9.9", app_name: "Firecracker" });
    assert.deepEqual((await api(sock, "GET", "/version")).json, { firecracker_version: "9.9.9" });
  });

  // Each operation: a valid body (204, then read back), then bad bodies that must answer 400 and change nothing.
  const ops: { name: string; method: string; path: string; valid: unknown; check: (cfg: Record<string, unknown>) => void; bad: unknown[] }[] = [
    {
      name: "boot-source", method: "PUT", path: "/boot-source",
      valid: { kernel_image_path: kernel, boot_args: bootArgs },
      check: (c) => assert.deepEqual(c["boot-source"], { kernel_image_path: kernel, boot_args: bootArgs }),
      bad: [{}, { kernel_image_path: 5 }, { kernel_image_path: kernel, extra: 1 }, { kernel_image_path: join(dir, "missing") }],
    },
    {
      name: "machine-config (PUT)", method: "PUT", path: "/machine-config",
      valid: { vcpu_count: 2, mem_size_mib: 64 },
      check: (c) => assert.deepEqual(c["machine-config"], { vcpu_count: 2, mem_size_mib: 64, smt: false, track_dirty_pages: false, huge_pages: "None" }),
      bad: [{ vcpu_count: 2 }, { vcpu_count: 0, mem_size_mib: 64 }, { vcpu_count: 33, mem_size_mib: 64 }, { vcpu_count: "2", mem_size_mib: 64 },
        { vcpu_count: 3, mem_size_mib: 64, smt: true }, { vcpu_count: 1, mem_size_mib: 64, cpu_template: "T2" }, { vcpu_count: 1, mem_size_mib: 64, foo: 1 }],
    },
    {
      name: "machine-config (PATCH)", method: "PATCH", path: "/machine-config",
      valid: { mem_size_mib: 96 },
      check: (c) => assert.equal((c["machine-config"] as { mem_size_mib: number }).mem_size_mib, 96),
      bad: [{}, { mem_size_mib: -1 }, { vcpu_count: 1.5 }, { huge_pages: "1G" }],
    },
    {
      name: "drives", method: "PUT", path: "/drives/rootfs",
      valid: { drive_id: "rootfs", path_on_host: disk, is_root_device: true, is_read_only: false },
      check: (c) => assert.deepEqual(c["drives"], [{ drive_id: "rootfs", path_on_host: disk, is_root_device: true, is_read_only: false }]),
      bad: [{ drive_id: "other", path_on_host: disk, is_root_device: false }, { drive_id: "rootfs", path_on_host: disk },
        { drive_id: "rootfs", path_on_host: join(dir, "missing.img"), is_root_device: true }, { drive_id: "rootfs", path_on_host: disk, is_root_device: true, socket: "/x" },
        { drive_id: "rootfs", path_on_host: disk, is_root_device: true, cache_type: "Fast" }],
    },
    {
      name: "network-interfaces", method: "PUT", path: "/network-interfaces/eth0",
      valid: { iface_id: "eth0", host_dev_name: tap, guest_mac: "06:00:ac:10:00:02" },
      check: (c) => assert.deepEqual(c["network-interfaces"], [{ iface_id: "eth0", host_dev_name: tap, guest_mac: "06:00:ac:10:00:02" }]),
      bad: [{ iface_id: "eth1", host_dev_name: tap }, { iface_id: "eth0", host_dev_name: "flint-no-such-tap" },
        { iface_id: "eth0", host_dev_name: tap, guest_mac: "zz:00:ac:10:00:02" }, { iface_id: "eth0" }, { iface_id: "eth0", host_dev_name: tap, mtu: 10 }],
    },
    {
      name: "vsock", method: "PUT", path: "/vsock",
      valid: { guest_cid: 3, uds_path: join(dir, "v.sock") },
      check: (c) => assert.deepEqual(c["vsock"], { guest_cid: 3, uds_path: join(dir, "v.sock") }),
      bad: [{ guest_cid: -1, uds_path: join(dir, "v.sock") }, { guest_cid: 2 ** 32, uds_path: join(dir, "v.sock") }, { guest_cid: 3 }, { guest_cid: 3, uds_path: join(dir, "no", "v.sock") }, { guest_cid: 3, uds_path: "x", y: 1 }],
    },
    {
      name: "balloon", method: "PUT", path: "/balloon",
      valid: { amount_mib: 16, deflate_on_oom: true },
      check: (c) => assert.deepEqual(c["balloon"], { amount_mib: 16, deflate_on_oom: true }),
      bad: [{ amount_mib: 16 }, { amount_mib: 4096, deflate_on_oom: true }, { amount_mib: -1, deflate_on_oom: true }, { amount_mib: 1, deflate_on_oom: true, free_page_hinting: true }],
    },
    {
      name: "entropy", method: "PUT", path: "/entropy",
      valid: {},
      check: (c) => assert.deepEqual(c["entropy"], {}),
      bad: [{ rate_limiter: { bandwidth: { size: "a", refill_time: 1 } } }, { foo: 1 }],
    },
  ];

  for (const op of ops) {
    it(`${op.method} ${op.path}: a valid body is taken and read back; bad ones answer 400 and change nothing`, async () => {
      const r = await api(sock, op.method, op.path, op.valid);
      assert.equal(r.status, 204, r.text);
      const cfg = await config();
      op.check(cfg);
      for (const bad of [...op.bad, "{not json", "[]", "null"]) {
        const b = await api(sock, op.method, op.path, bad);
        assert.equal(b.status, 400, `${JSON.stringify(bad)} answered ${b.status} ${b.text}`);
        const fault = (b.json as { fault_message?: unknown })?.fault_message;
        assert.ok(typeof fault === "string" && fault.length > 0 && !fault.includes("\n"), `one-line fault_message for ${JSON.stringify(bad)}: ${b.text}`);
        assert.deepEqual(await config(), cfg, `${JSON.stringify(bad)} changed the configuration`);
      }
    });
  }

  it("GET /machine-config and GET /balloon read what was configured; GET /vm/config round-trips through PUTs", async () => {
    assert.deepEqual((await api(sock, "GET", "/machine-config")).json, (await config())["machine-config"]);
    assert.deepEqual((await api(sock, "GET", "/balloon")).json, { amount_mib: 16, deflate_on_oom: true, stats_polling_interval_s: 0 });
  });

  it("a drive PUT again under its id replaces it; a second root drive is refused", async () => {
    const second = join(dir, "data.img");
    writeFileSync(second, Buffer.alloc(1 << 20));
    assert.equal((await api(sock, "PUT", "/drives/data", { drive_id: "data", path_on_host: second, is_root_device: false })).status, 204);
    assert.equal((await api(sock, "PUT", "/drives/data", { drive_id: "data", path_on_host: second, is_root_device: false, is_read_only: true })).status, 204);
    const drives = (await config())["drives"] as { drive_id: string; is_read_only?: boolean }[];
    assert.deepEqual(drives.map((d) => d.drive_id), ["rootfs", "data"]);
    assert.equal(drives[1]!.is_read_only, true);
    const r = await api(sock, "PUT", "/drives/data", { drive_id: "data", path_on_host: second, is_root_device: true });
    assert.equal(r.status, 400, r.text);
  });

  it("PUT /mmds/config names existing interfaces only; GET /vm/config reports it", async () => {
    const bad = await api(sock, "PUT", "/mmds/config", { network_interfaces: ["eth9"], version: "V2" });
    assert.equal(bad.status, 400);
    assert.match((bad.json as { fault_message: string }).fault_message, /'eth9', which is not a configured network interface/);
    assert.equal((await api(sock, "PUT", "/mmds/config", { network_interfaces: [] })).status, 400);
    assert.equal((await api(sock, "PUT", "/mmds/config", { network_interfaces: ["eth0"], ipv4_address: "10.0.0.1" })).status, 400);
    assert.equal((await api(sock, "PUT", "/mmds/config", { network_interfaces: ["eth0"], version: "V2", ipv4_address: "169.254.170.2" })).status, 204);
    assert.deepEqual((await config())["mmds-config"], { network_interfaces: ["eth0"], version: "V2", ipv4_address: "169.254.170.2" });
  });

  it("MMDS: PUT replaces, PATCH merges (RFC 7396), GET reads; a non-object is refused", async () => {
    assert.equal((await api(sock, "PUT", "/mmds", { latest: { "meta-data": { a: 1, b: 2 } } })).status, 204);
    assert.equal((await api(sock, "PATCH", "/mmds", { latest: { "meta-data": { b: null, c: 3 } } })).status, 204);
    assert.deepEqual((await api(sock, "GET", "/mmds")).json, { latest: { "meta-data": { a: 1, c: 3 } } });
    assert.equal((await api(sock, "PUT", "/mmds", "[1,2]")).status, 400);
    const big = await api(sock, "PUT", "/mmds", { blob: "x".repeat(HTTP_MAX_PAYLOAD_SIZE - 100) });
    assert.equal(big.status, 204, "a store just under the limit is taken");
    const over = await api(sock, "PATCH", "/mmds", { more: "y".repeat(200) });
    assert.equal(over.status, 413, over.text);
    assert.equal(((await api(sock, "GET", "/mmds")).json as Record<string, unknown>)["more"], undefined, "a refused patch changes nothing");
  });

  it("PUT /serial takes an output path and a rate limiter (the file is opened at InstanceStart); a bad body is refused", async () => {
    const path = join(dir, "serial-out.log");
    const r = await api(sock, "PUT", "/serial", { serial_out_path: path, rate_limiter: { size: 1000, refill_time: 100 } });
    assert.equal(r.status, 204, r.text);
    assert.equal(existsSync(path), false, "nothing is opened before InstanceStart");
    for (const body of [{ serial_out_path: 3 }, { rate_limiter: { size: "a", refill_time: 1 } }, { serial_out_path: path, tty: true }]) {
      const bad = await api(sock, "PUT", "/serial", body);
      assert.equal(bad.status, 400, `${JSON.stringify(body)}: ${bad.text}`);
    }
  });

  it("post-boot operations are refused before boot, with Firecracker's message", async () => {
    for (const [method, path, body] of [
      ["PATCH", "/vm", { state: "Paused" }], ["PUT", "/snapshot/create", { snapshot_path: "s", mem_file_path: "m" }], ["PATCH", "/balloon", { amount_mib: 1 }], ["GET", "/balloon/statistics", undefined],
      ["PUT", "/actions", { action_type: "SendCtrlAltDel" }],
      ["PATCH", "/drives/rootfs", { drive_id: "rootfs", path_on_host: disk }], ["PATCH", "/network-interfaces/eth0", { iface_id: "eth0" }],
    ] as const) {
      const r = await api(sock, method, path, body);
      assert.equal(r.status, 400, `${method} ${path}: ${r.text}`);
      assert.match((r.json as { fault_message: string }).fault_message, /not supported before starting the microVM/, `${method} ${path}`);
    }
  });

  it("what flint does not have answers 400 with a precise reason, never 5xx", async () => {
    for (const [method, path, body, why] of [
      ["PUT", "/snapshot/create", { snapshot_path: "s", mem_file_path: "m", snapshot_type: "Diff" }, /not supported before starting|Diff snapshots/],
      ["PUT", "/pmem/p0", { id: "p0", path_on_host: disk }, /virtio-pmem/],
      ["PUT", "/hotplug/memory", { total_size_mib: 1024 }, /virtio-mem/],
      ["GET", "/hotplug/memory", undefined, /virtio-mem/],
      ["PUT", "/cpu-config", { cpuid_modifiers: [] }, /CPU templates/],
      ["DELETE", "/drives/rootfs", undefined, /hot-plug/],
      ["PATCH", "/balloon/hinting/start", undefined, /hinting/],
    ] as const) {
      const r = await api(sock, method, path, body);
      assert.equal(r.status, 400, `${method} ${path}: ${r.text}`);
      assert.match((r.json as { fault_message: string }).fault_message, why, `${method} ${path}`);
    }
  });

  it("wrong paths, methods and bodies: 400 with Firecracker's messages", async () => {
    const cases: [string, string, unknown, RegExp][] = [
      ["GET", "/nowhere", undefined, /Invalid request method and\/or path: GET nowhere/],
      ["POST", "/actions", { action_type: "InstanceStart" }, /Invalid request method and\/or path/],
      ["GET", "/machine-config", { vcpu_count: 1 }, /GET request cannot have a body/],
      ["PUT", "/boot-source", undefined, /Empty PUT request/],
      ["PATCH", "/vm", undefined, /Empty PATCH request/],
      ["PUT", "/drives", { drive_id: "x", is_root_device: false }, /The ID cannot be empty/],
      ["PUT", "/drives/a-b", { drive_id: "a-b", is_root_device: false }, /alphanumeric characters and underscores/],
      ["PUT", "/actions", { action_type: "Reboot" }, /action_type/],
      ["PUT", "/snapshot/load", { snapshot_path: "s" }, /either `mem_backend` or `mem_file_path` is required/],
    ];
    for (const [method, path, body, message] of cases) {
      const r = await api(sock, method, path, body);
      assert.equal(r.status, 400, `${method} ${path}: ${r.text}`);
      assert.match((r.json as { fault_message: string }).fault_message, message, `${method} ${path}`);
    }
  });

  it("a body over the payload limit is refused and the socket still answers", async () => {
    const r = await api(sock, "PUT", "/mmds", { blob: "x".repeat(HTTP_MAX_PAYLOAD_SIZE + 10) });
    assert.equal(r.status, 400, r.text);
    assert.match((r.json as { fault_message: string }).fault_message, /larger than the limit of 51200/);
    const garbage = await rawExchange(sock, "THIS IS NOT HTTP\r\n\r\n");
    assert.match(garbage, /^HTTP\/1\.1 400/);
    assert.equal((await api(sock, "GET", "/")).status, 200);
  });

  it("pipelined requests on one connection are answered in order", async () => {
    const req = (path: string) => `GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`;
    const out = await rawExchange(sock, req("/version") + req("/machine-config") + req("/"));
    const bodies = out.split(/HTTP\/1\.1 /).slice(1).map((r) => r.slice(r.indexOf("\r\n\r\n") + 4));
    assert.equal(bodies.length, 3, out);
    assert.match(bodies[0]!, /firecracker_version/);
    assert.match(bodies[1]!, /vcpu_count/);
    assert.match(bodies[2]!, /"state":"Not started"/);
  });
});

describe("the API socket file", () => {
  it("appears only once flint listens: bound under another name, then renamed into place; a stale file is replaced", async () => {
    const where = mkdtempSync(join(dir, "sock-"));
    const sock = join(where, "api.sock");
    writeFileSync(sock, "stale");
    const names: string[] = [];
    const watcher = watch(where, (_event, name) => { if (name) names.push(String(name)); });
    const server = await ApiServer.listen(new Vm({ id: "sock-test" }), sock);
    try {
      assert.equal((await api(sock, "GET", "/")).status, 200);
      await new Promise((resolve) => setTimeout(resolve, 100));
      // The directory's events: the socket was first made under a temporary name (the stale file's removal aside).
      const temporary = names.find((n) => n !== "api.sock");
      assert.ok(temporary !== undefined && names.indexOf(temporary) < names.lastIndexOf("api.sock"), `events: ${names.join(", ")}`);
      assert.deepEqual(readdirSync(where), ["api.sock"]);
    } finally {
      watcher.close();
      await server.close();
    }
    assert.deepEqual(readdirSync(where), []);
  });

  it("a path whose temporary name would not fit a socket address is bound as it is", async () => {
    const where = mkdtempSync(join(dir, "s"));
    const fill = 107 - Buffer.byteLength(where) - 1;
    assert.ok(fill > 0);
    const sock = join(where, "x".repeat(fill));
    const server = await ApiServer.listen(new Vm({ id: "sock-test" }), sock);
    try {
      assert.equal((await api(sock, "GET", "/")).status, 200);
      assert.deepEqual(readdirSync(where), ["x".repeat(fill)]);
    } finally {
      await server.close();
    }
  });
});

describe("PUT /snapshot/load before anything is configured", () => {
  let sock = "", server: ApiServer;
  before(async () => ({ sock, server } = await serve()));
  after(() => server.close());

  it("answers 400 with the reason for what it cannot load, and the load path stays open", async () => {
    for (const [body, why] of [
      [{ snapshot_path: "/nonexistent/s", mem_backend: { backend_type: "Uffd", backend_path: "m" } }, /^Load snapshot error: Cannot read snapshot '\/nonexistent\/s': ENOENT$/],
      [{ snapshot_path: "/nonexistent/s", mem_file_path: "m" }, /^Load snapshot error: Cannot read snapshot '\/nonexistent\/s': ENOENT$/],
    ] as const) {
      const r = await api(sock, "PUT", "/snapshot/load", body);
      assert.equal(r.status, 400, r.text);
      assert.match((r.json as { fault_message: string }).fault_message, why);
    }
    assert.equal(((await api(sock, "GET", "/")).json as { state: string }).state, "Not started");
    const r = await api(sock, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 64 });
    assert.equal(r.status, 204, r.text);
    const refused = await api(sock, "PUT", "/snapshot/load", { snapshot_path: "s", mem_file_path: "m" });
    assert.equal(refused.status, 400);
    assert.match((refused.json as { fault_message: string }).fault_message, /not allowed after configuring boot-specific resources/);
  });
});

describe("a start that fails", () => {
  it("answers 400 with the reason, leaves the VM 'Not started', and a corrected configuration then starts", async () => {
    const { sock, server, vm } = await serve();
    try {
      const gone = join(dir, "gone.img");
      writeFileSync(gone, Buffer.alloc(1 << 20));
      assert.equal((await api(sock, "PUT", "/boot-source", { kernel_image_path: kernel, boot_args: bootArgs })).status, 204);
      assert.equal((await api(sock, "PUT", "/drives/d", { drive_id: "d", path_on_host: gone, is_root_device: false })).status, 204);
      rmSync(gone);
      // The device thread cannot open the image: run() fails before any vCPU runs.
      const r = await api(sock, "PUT", "/actions", { action_type: "InstanceStart" });
      assert.equal(r.status, 400, r.text);
      assert.match((r.json as { fault_message: string }).fault_message, /^Start microvm error: .*gone\.img/);
      assert.equal(((await api(sock, "GET", "/")).json as { state: string }).state, "Not started");
      writeFileSync(gone, Buffer.alloc(1 << 20));
      assert.equal((await api(sock, "PUT", "/actions", { action_type: "InstanceStart" })).status, 204);
      assert.equal(((await api(sock, "GET", "/")).json as { state: string }).state, "Running");
    } finally {
      await vm.kill();
      await server.close();
    }
  });
});

describe("Firecracker's API starts, pauses and resumes a real VM (ring-3 guest on /dev/kvm)", () => {
  let sock: string, server: ApiServer, vm: Vm;
  before(async () => ({ sock, server, vm } = await serve()));
  after(async () => {
    await vm.kill();
    await server.close();
  });

  const logPath = join(dir, "vm.log"), metricsPath = join(dir, "vm.metrics");

  it("PUT /logger and PUT /metrics take existing files (a missing one is refused); FlushMetrics waits for boot", async () => {
    writeFileSync(logPath, "");
    writeFileSync(metricsPath, "");
    assert.equal((await api(sock, "PUT", "/logger", { log_path: join(dir, "absent.log") })).status, 400);
    assert.equal((await api(sock, "PUT", "/logger", { log_path: logPath, level: "Warning", show_level: true, show_log_origin: true, bogus: 1 })).status, 400);
    assert.equal((await api(sock, "PUT", "/logger", { log_path: logPath, level: "Info", show_level: true, show_log_origin: true })).status, 204);
    assert.equal((await api(sock, "PUT", "/metrics", { metrics_path: join(dir, "absent.metrics") })).status, 400);
    assert.equal((await api(sock, "PUT", "/metrics", { metrics_path: metricsPath })).status, 204);
    const flush = await api(sock, "PUT", "/actions", { action_type: "FlushMetrics" });
    assert.equal(flush.status, 400);
    assert.match((flush.json as { fault_message: string }).fault_message, /not supported before starting the microVM/);
  });

  it("InstanceStart boots the configured guest; state goes Not started → Running → Paused → Running", async () => {
    assert.equal((await api(sock, "PATCH", "/vm", { state: "Resumed" })).status, 400, "resume before boot");
    assert.equal((await api(sock, "PUT", "/actions", { action_type: "InstanceStart" })).status, 400, "start without a boot source");
    assert.equal((await api(sock, "PUT", "/boot-source", { kernel_image_path: kernel, boot_args: bootArgs })).status, 204);
    assert.equal((await api(sock, "PUT", "/machine-config", { vcpu_count: 2, mem_size_mib: 64 })).status, 204);
    assert.equal((await api(sock, "PUT", "/entropy", {})).status, 204);
    assert.equal((await api(sock, "PUT", "/drives/scratch", { drive_id: "scratch", path_on_host: disk, is_root_device: false })).status, 204);
    const start = await api(sock, "PUT", "/actions", { action_type: "InstanceStart" });
    assert.equal(start.status, 204, start.text);
    const state = async () => ((await api(sock, "GET", "/")).json as { state: string }).state;
    assert.equal(await state(), "Running");
    assert.equal(vm.state, "Running");
    assert.equal((await api(sock, "PATCH", "/vm", { state: "Paused" })).status, 204);
    assert.equal(await state(), "Paused");
    assert.equal((await api(sock, "PATCH", "/vm", { state: "Paused" })).status, 204, "pausing a paused VM succeeds (as Firecracker)");
    assert.equal((await api(sock, "PATCH", "/vm", { state: "Resumed" })).status, 204);
    assert.equal(await state(), "Running");
  });

  it("SendCtrlAltDel types the keys (204) until the guest leaves no room in the keyboard buffer (400, never 5xx)", async () => {
    // This ring-3 guest never reads its keyboard: the controller's 16-byte buffer fills up.
    const first = await api(sock, "PUT", "/actions", { action_type: "SendCtrlAltDel" });
    assert.equal(first.status, 204, first.text);
    let refused: string | undefined;
    for (let i = 0; i < 5 && !refused; i++) {
      const r = await api(sock, "PUT", "/actions", { action_type: "SendCtrlAltDel" });
      assert.ok(r.status === 204 || r.status === 400, r.text);
      if (r.status === 400) refused = (r.json as { fault_message: string }).fault_message;
    }
    assert.match(refused ?? "", /buffer/);
  });

  it("after boot, configuration is refused and GET /vm/config reports what booted", async () => {
    const before = (await api(sock, "GET", "/vm/config")).json;
    for (const [method, path, body] of [
      ["PUT", "/boot-source", { kernel_image_path: kernel }], ["PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 64 }],
      ["PATCH", "/machine-config", { vcpu_count: 1 }], ["PUT", "/vsock", { guest_cid: 3, uds_path: join(dir, "v2.sock") }],
      ["PUT", "/actions", { action_type: "InstanceStart" }], ["PUT", "/drives/rootfs", { drive_id: "rootfs", path_on_host: disk, is_root_device: true }],
      ["PUT", "/serial", { serial_out_path: join(dir, "late-serial.log") }],
    ] as const) {
      const r = await api(sock, method, path, body);
      assert.equal(r.status, 400, `${method} ${path}: ${r.text}`);
      assert.match((r.json as { fault_message: string }).fault_message, /not supported after starting the microVM/, `${method} ${path}`);
    }
    const cfg = (await api(sock, "GET", "/vm/config")).json as Record<string, unknown>;
    assert.deepEqual(cfg, before);
    assert.deepEqual((cfg["machine-config"] as { vcpu_count: number }).vcpu_count, 2);
  });

  it("PATCH /drives after boot changes the drive's rate limiter and backing file (read back in GET /vm/config)", async () => {
    const limiter = { bandwidth: { size: 1_000_000, refill_time: 100 }, ops: { size: 100, refill_time: 1000, one_time_burst: 50 } };
    const r = await api(sock, "PATCH", "/drives/scratch", { drive_id: "scratch", rate_limiter: limiter });
    assert.equal(r.status, 204, r.text);
    const drive = () => ((async () => ((await api(sock, "GET", "/vm/config")).json as { drives: { drive_id: string; rate_limiter?: unknown }[] }).drives.find((d) => d.drive_id === "scratch"))());
    assert.deepEqual((await drive())?.rate_limiter, limiter);
    // A bucket of size 0 removes that bucket; the other stays.
    assert.equal((await api(sock, "PATCH", "/drives/scratch", { drive_id: "scratch", rate_limiter: { ops: { size: 0, refill_time: 0 } } })).status, 204);
    assert.deepEqual((await drive())?.rate_limiter, { bandwidth: limiter.bandwidth });
    const missing = await api(sock, "PATCH", "/drives/scratch", { drive_id: "scratch", path_on_host: join(dir, "other.img") });
    assert.equal(missing.status, 400);
    assert.match((missing.json as { fault_message: string }).fault_message, /does not exist/);
    const other = join(dir, "other.img");
    writeFileSync(other, Buffer.alloc(2 << 20));
    const swap = await api(sock, "PATCH", "/drives/scratch", { drive_id: "scratch", path_on_host: other });
    assert.equal(swap.status, 204, swap.text);
    assert.equal(((await api(sock, "GET", "/vm/config")).json as { drives: { drive_id: string; path_on_host: string }[] }).drives.find((d) => d.drive_id === "scratch")?.path_on_host, other);
    assert.equal((await api(sock, "PATCH", "/drives/nodrive", { drive_id: "nodrive", rate_limiter: limiter })).status, 400);
    assert.equal((await api(sock, "PATCH", "/drives/scratch", { drive_id: "scratch", rate_limiter: { bandwidth: { size: -1, refill_time: 1 } } })).status, 400);
    assert.deepEqual((await drive())?.rate_limiter, { bandwidth: limiter.bandwidth }, "a refused PATCH changes nothing");
  });

  it("FlushMetrics writes a JSON line: API request counts since the last line, pause/resume latencies, device counters", async () => {
    assert.equal((await api(sock, "PUT", "/actions", { action_type: "FlushMetrics" })).status, 204);
    const lines = readFileSync(metricsPath, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, Record<string, number>>);
    assert.equal(lines.length, 1);
    const m = lines[0]!;
    assert.ok(m["put_api_requests"]!["boot_source_count"]! >= 1, JSON.stringify(m));
    assert.ok(m["put_api_requests"]!["machine_cfg_fails"]! >= 1, JSON.stringify(m));
    assert.ok(m["patch_api_requests"]!["vm_count"]! >= 4, JSON.stringify(m));
    assert.ok(m["latencies_us"]!["pause_vm"]! > 0 && m["latencies_us"]!["resume_vm"]! > 0, JSON.stringify(m));
    assert.equal(typeof m["entropy"]?.["kicks"], "number", JSON.stringify(m));
    // The device's own counters, as its thread published them.
    assert.equal(typeof m["entropy"]?.["bytes"], "number", JSON.stringify(m));
    assert.equal(typeof m["entropy"]?.["requests"], "number", JSON.stringify(m));
    // The vCPUs' exits, read while they run; the ring-3 guest has no kvm-clock, so each park's KVM_KVMCLOCK_CTRL failed.
    assert.ok(m["vcpu"]!["exits"]! > 0 && m["vcpu"]!["exits"]! >= m["vcpu"]!["exit_io"]! + m["vcpu"]!["exit_mmio"]!, JSON.stringify(m));
    assert.ok(m["vcpu"]!["kvmclock_ctrl_fails"]! > 0, JSON.stringify(m));
    // Counters are deltas: a second line right away counts only the FlushMetrics request itself.
    assert.equal((await api(sock, "PUT", "/actions", { action_type: "FlushMetrics" })).status, 204);
    const second = JSON.parse(readFileSync(metricsPath, "utf8").trim().split("\n")[1]!) as Record<string, Record<string, number>>;
    assert.deepEqual(second["put_api_requests"], { actions_count: 1 });
  });

  it("the log file has one JSON line per event, with the level and origin asked for", () => {
    const lines = readFileSync(logPath, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, string>);
    assert.ok(lines.length > 10, `${lines.length} lines`);
    for (const l of lines) {
      assert.equal(l["id"], "api-test");
      assert.ok(l["level"] && l["origin"] && l["msg"] && l["time"], JSON.stringify(l));
    }
    assert.ok(lines.some((l) => l["origin"] === "api_server" && /PUT request on "\/boot-source"/.test(l["msg"]!)), "request logged");
    assert.ok(lines.some((l) => l["level"] === "error" && /Status code: 400/.test(l["msg"]!)), "refusal logged as an error");
    assert.ok(lines.some((l) => l["origin"] === "vmm" && /Paused the VM/.test(l["msg"]!)), "pause logged");
  });
});
