/**
 * A seeded fuzz of Firecracker's API: 10^4 requests mixing valid bodies,
 * mutated ones, random JSON and garbage on every path and method, plus
 * abusive HTTP (huge bodies, cut-off requests, a stalled client, deeply
 * nested JSON). Never a 5xx, never a crash; the socket still answers and a
 * configuration read back is always one the schema accepts.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { validate, VmConfigSchema } from "../config/schema.js";
import { ApiServer } from "./api-server.js";
import { api, rawExchange } from "./testing/api-client.js";
import { Vm } from "./vm.js";

const SEED = Number(process.env.FLINT_FUZZ_SEED ?? 20261202);
const RUNS = 10_000;

const dir = mkdtempSync(join(tmpdir(), "flint-api-fuzz-"));
const disk = join(dir, "disk.img");
writeFileSync(disk, Buffer.alloc(1 << 16));
const kernel = join(dir, "kernel");
writeFileSync(kernel, Buffer.alloc(4096));

const PATHS = [
  "/", "/actions", "/balloon", "/balloon/statistics", "/balloon/hinting/start", "/balloon/hinting/status", "/balloon/hinting/stop",
  "/boot-source", "/cpu-config", "/drives/rootfs", "/drives/data", "/drives/", "/drives/a-b", "/pmem/p0", "/logger", "/machine-config", "/metrics",
  "/mmds", "/mmds/config", "/entropy", "/serial", "/hotplug/memory", "/network-interfaces/eth0", "/snapshot/create", "/snapshot/load",
  "/snapshot/x", "/version", "/vm", "/vm/config", "/vsock", "/nowhere", "//boot-source", "/boot-source/", "/%00", "/drives/%E2%82%AC",
];
const METHODS = ["GET", "PUT", "PATCH", "DELETE", "POST", "HEAD", "OPTIONS"];
/** Bodies close to valid ones, so the fuzz reaches past the schema checks. */
const SEEDS: unknown[] = [
  { kernel_image_path: kernel, boot_args: "console=ttyS0" }, { vcpu_count: 2, mem_size_mib: 64 }, { mem_size_mib: 128 },
  { drive_id: "rootfs", path_on_host: disk, is_root_device: true }, { drive_id: "data", path_on_host: disk, is_root_device: false, is_read_only: true },
  { iface_id: "eth0", host_dev_name: "nope0" }, { guest_cid: 3, uds_path: join(dir, "v.sock") }, { amount_mib: 8, deflate_on_oom: false },
  { state: "Paused" }, { state: "Resumed" }, { action_type: "FlushMetrics" }, { action_type: "SendCtrlAltDel" }, { latest: { a: 1 } },
  { snapshot_path: "s", mem_file_path: "m" }, {},
];

const jsonValue = fc.jsonValue({ maxDepth: 4 });
const body: fc.Arbitrary<string | undefined> = fc.oneof(
  fc.constant(undefined),
  fc.constantFrom(...SEEDS).map((v) => JSON.stringify(v)),
  // A seed with one field changed to a random value, or a random field added.
  fc.tuple(fc.constantFrom(...SEEDS.filter((s) => Object.keys(s as object).length > 0)), fc.string({ maxLength: 12 }), jsonValue, fc.boolean())
    .map(([s, key, value, replace]) => {
      const o = { ...(s as Record<string, unknown>) };
      const keys = Object.keys(o);
      o[replace ? keys[key.length % keys.length]! : key] = value;
      return JSON.stringify(o);
    }),
  jsonValue.map((v) => JSON.stringify(v)),
  fc.string({ maxLength: 64 }),
);

describe("Firecracker's API under a seeded fuzz and abusive HTTP", { timeout: 10 * 60_000 }, () => {
  let sock: string, server: ApiServer, vm: Vm;
  before(async () => {
    vm = new Vm({ id: "fuzz" });
    sock = join(dir, "api.sock");
    server = await ApiServer.listen(vm, sock);
  });
  after(async () => {
    await vm.kill();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it(`${RUNS} random requests (seed ${SEED}): never a 5xx, and the configuration stays valid`, async () => {
    // InstanceStart is left out: this kernel is no kernel, and a started VM is the next test's business.
    const request = fc.tuple(fc.constantFrom(...METHODS), fc.constantFrom(...PATHS), body)
      .filter(([, , b]) => !(b ?? "").includes("InstanceStart"));
    await fc.assert(fc.asyncProperty(request, async ([method, path, text]) => {
      const r = await api(sock, method, path, text);
      assert.ok(r.status < 500, `${method} ${path} ${text} answered ${r.status} ${r.text}`);
      if (r.status >= 400 && method !== "HEAD") {
        const fault = (r.json as { fault_message?: unknown } | undefined)?.fault_message;
        assert.equal(typeof fault, "string", `${method} ${path} ${text}: ${r.text}`);
      }
    }), { seed: SEED, numRuns: RUNS });
    const cfg = (await api(sock, "GET", "/vm/config")).json;
    const withKernel = { ...(cfg as Record<string, unknown>), "boot-source": { kernel_image_path: kernel } };
    validate(VmConfigSchema, withKernel, "configuration read back");
    assert.equal((await api(sock, "GET", "/")).status, 200);
  });

  it("deeply nested JSON, huge and cut-off bodies, and a stalled client leave the socket answering", async () => {
    const deep = "[".repeat(20_000) + "]".repeat(20_000);
    assert.equal((await api(sock, "PUT", "/mmds", deep)).status, 400);
    const deepObject = '{"a":'.repeat(8000) + "1" + "}".repeat(8000);
    const r = await api(sock, "PATCH", "/mmds", deepObject);
    assert.ok(r.status === 204 || r.status === 400 || r.status === 413, `${r.status} ${r.text}`);
    // A declared length far over the limit is refused before the body is read.
    const huge = await rawExchange(sock, "PUT /mmds HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{");
    assert.match(huge, /^HTTP\/1\.1 400/);
    // A request cut off in its body: the client goes away; nothing is applied.
    await rawExchange(sock, "PUT /machine-config HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"vcpu_count\":", 100);
    // A stalled client holding a half-sent request does not block others.
    const stalled = createConnection(sock);
    stalled.write("PUT /boot-source HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{");
    const v = await api(sock, "GET", "/version");
    assert.equal(v.status, 200);
    stalled.destroy();
    assert.equal((await api(sock, "GET", "/")).status, 200);
  });
});
