/** `flint` with Firecracker's process flags: a config file boots a guest; bad input is one line and exit code 2. */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { buildExitLoopGuest, EXIT_LOOP_HELLO_BYTE, exitLoopCmdline } from "../guest/programs/exit-loop.js";
import { encodeStateFile, SNAPSHOT_FORMAT_VERSION } from "../snapshot/state-file.js";
import { api } from "../vmm/testing/api-client.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "flint-fc-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function configFile(name: string, config: unknown): string {
  const path = join(dir, name);
  writeFileSync(path, typeof config === "string" ? config : JSON.stringify(config));
  return path;
}

function expectUserError(args: string[], pattern: RegExp): void {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: 30_000 });
  assert.equal(r.status, 2, `exit code for ${args.join(" ")}: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line expected, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern);
}

const notAKernel = join(dir, "not-a-kernel");
writeFileSync(notAKernel, "this is text, not a kernel image\n".repeat(100));
chmodSync(dir, 0o755);
const minimal = { "boot-source": { kernel_image_path: notAKernel }, "drives": [] };

test("--no-api --config-file boots the PVH exit-loop guest: its first byte reaches stdout through the serial console", async () => {
  // Firecracker's config has no boot mode: like Firecracker, flint enters an ELF with a PVH note through PVH.
  const cfg = configFile("exit-loop.json", {
    "boot-source": { kernel_image_path: buildExitLoopGuest(), boot_args: exitLoopCmdline({ mode: "pio", count: 1000, hello: true, halt: true }), initrd_path: null },
    "drives": [],
    "machine-config": { vcpu_count: 1, mem_size_mib: 64, smt: false, track_dirty_pages: false, huge_pages: "None" },
    "entropy": {},
  });
  const child = spawn(process.execPath, [CLI, "--no-api", "--config-file", cfg, "--id", "vm-1", "--level", "Debug"], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "", stderr = "";
  child.stderr.on("data", (b: Buffer) => { stderr += b.toString("latin1"); });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  // The guest halts after its run and never powers off (it has no way to): stop it once its byte came.
  const hello = await new Promise<boolean>((resolve) => {
    const limit = setTimeout(() => resolve(false), 30_000); // hang catcher, not a timing assertion
    child.stdout.on("data", (b: Buffer) => {
      stdout += b.toString("latin1");
      if (stdout.includes(String.fromCharCode(EXIT_LOOP_HELLO_BYTE))) { clearTimeout(limit); resolve(true); }
    });
    void exited.then(() => { clearTimeout(limit); resolve(false); });
  });
  child.kill("SIGKILL");
  const code = await exited;
  assert.ok(hello, `the guest's hello byte on stdout (exit ${code}); stdout ${JSON.stringify(stdout)}, stderr: ${stderr}`);
  assert.equal(stdout, String.fromCharCode(EXIT_LOOP_HELLO_BYTE), "nothing but the guest's console on stdout");
  assert.equal(stderr, "", "nothing on stderr for a config flint takes whole");
});

test("a config file with an unknown, wrong or unsupported field is one line and exit code 2", () => {
  expectUserError(["--no-api", "--config-file", configFile("unknown.json", { ...minimal, "machine-config": { vcpu_count: 1, mem_size_mib: 128, cpus: 2 } })],
    /^flint: Invalid config file: unknown field 'machine-config\.cpus'$/);
  expectUserError(["--no-api", "--config-file", configFile("type.json", { ...minimal, "machine-config": { vcpu_count: "1", mem_size_mib: 128 } })],
    /^flint: Invalid config file: 'machine-config\.vcpu_count' must be a number, got "1"$/);
  expectUserError(["--no-api", "--config-file", configFile("mmds.json", { ...minimal, "mmds-config": { network_interfaces: [] } })],
    /^flint: Invalid config file: 'mmds-config\.network_interfaces' is empty: name the interfaces MMDS answers on$/);
  expectUserError(["--no-api", "--config-file", configFile("broken.json", "{\"boot-source\":")], /^flint: Invalid config file: not JSON/);
  expectUserError(["--no-api", "--config-file", join(dir, "missing.json")], /^flint: Cannot read config file '.*missing\.json': ENOENT$/);
});

test("the host checks of `flint run` apply to a config file's devices, and its kernel errors are the same", () => {
  expectUserError(["--no-api", "--config-file", configFile("disk.json", { ...minimal, drives: [{ drive_id: "rootfs", path_on_host: join(dir, "nope.ext4"), is_root_device: true }] })],
    /^flint: Cannot attach drive: file '.*nope\.ext4' does not exist$/);
  expectUserError(["--no-api", "--config-file", configFile("tap.json", { ...minimal, "network-interfaces": [{ iface_id: "eth0", host_dev_name: "flint-no-such-tap0" }] })],
    /^flint: Cannot attach network: .*flint-no-such-tap0/);
  expectUserError(["--no-api", "--config-file", configFile("vsock.json", { ...minimal, vsock: { guest_cid: 3, uds_path: join(dir, "no-dir", "v.sock") } })],
    /^flint: Cannot attach vsock: socket '.*v\.sock' cannot be created: directory '.*no-dir' does not exist$/);
  expectUserError(["--no-api", "--config-file", configFile("cid.json", { ...minimal, vsock: { guest_cid: 2 ** 32, uds_path: join(dir, "v.sock") } })],
    /^flint: .*guest_cid/);
  expectUserError(["--no-api", "--config-file", configFile("kernel.json", minimal)], /neither an ELF vmlinux nor a bzImage/);
});

test("Firecracker's other flags are taken by the parser; the snapshot flags describe state files", () => {
  const cfg = configFile("flags.json", minimal);
  writeFileSync(join(dir, "log"), "");
  writeFileSync(join(dir, "metrics"), "");
  // Every accepted flag, then the config's kernel error: the parser took them all.
  expectUserError(["--no-api", "--config-file", cfg, "--id", "a-1", "--log-path", join(dir, "log"), "--level", "Warning", "--module", "api_server",
    "--show-level", "--show-log-origin", "--metrics-path", join(dir, "metrics"), "--boot-timer",
    "--start-time-us", "1", "--start-time-cpu-us", "2", "--parent-cpu-time-us", "3", "--http-api-max-payload-size", "51200",
    "--mmds-size-limit", "51200", "--enable-pci"], /neither an ELF vmlinux nor a bzImage/);
  // With the API as well, the config file's VM boots first: its kernel error ends the process the same way.
  expectUserError(["--api-sock", join(dir, "fc.sock"), "--config-file", cfg], /neither an ELF vmlinux nor a bzImage/);
  expectUserError(["--no-api"], /^flint: --no-api needs --config-file FILE$/);
  expectUserError(["--no-api", "--config-file", cfg, "--id", "vm_1"], /^flint: Invalid --id: character '_' is not an ASCII letter, digit or '-'$/);
  expectUserError(["--no-api", "--config-file", cfg, "--id", "x".repeat(65)], /^flint: Invalid --id: must be 1 to 64 characters, got 65$/);
  expectUserError(["--no-api", "--config-file", cfg, "--seccomp-filter", "f", "--no-seccomp"], /cannot be given together/);
  // flint builds its own filters: a filter file is refused, before the config file is read.
  expectUserError(["--no-api", "--config-file", cfg, "--seccomp-filter", join(dir, "filter.bpf")], /^flint: --seccomp-filter is not supported: flint builds its own seccomp filters/);
  expectUserError(["--describe-snapshot", join(dir, "snap")], /^flint: Cannot read snapshot '.*snap': ENOENT$/);
  writeFileSync(join(dir, "not-a-snap"), "{}");
  expectUserError(["--describe-snapshot", join(dir, "not-a-snap")], /^flint: Cannot load '.*not-a-snap': not a flint snapshot state file/);
  expectUserError(["--no-api", "--config-file", cfg, "--metadata", join(dir, "mmds.json")], /^flint: --metadata needs the API/);
  expectUserError(["--no-api", "--config-file", cfg, "--mmds-size-limit", "lots"], /--mmds-size-limit must be a whole number/);
  // Like Firecracker, flint opens the log and metrics files without creating them.
  expectUserError(["--no-api", "--config-file", cfg, "--log-path", join(dir, "no-log")], /^flint: Cannot open the log file '.*no-log': ENOENT$/);
  expectUserError(["--no-api", "--config-file", cfg, "--metrics-path", join(dir, "no-metrics")], /^flint: Cannot open the metrics file '.*no-metrics': ENOENT$/);
  expectUserError(["--no-api", "--config-file", cfg, "--log-path", join(dir, "log"), "--level", "Loud"], /^flint: Invalid log level 'Loud'/);
});

test("--snapshot-version prints the format version; --describe-snapshot that of a state file, checked first", () => {
  const run = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: 30_000 });
  const v = run(["--snapshot-version"]);
  assert.equal(v.status, 0, v.stderr);
  assert.equal(v.stdout, `v${SNAPSHOT_FORMAT_VERSION}.0.0\n`);
  const path = join(dir, "state.snap");
  writeFileSync(path, encodeStateFile({ anything: 1 }));
  const d = run(["--describe-snapshot", path]);
  assert.equal(d.status, 0, d.stderr);
  assert.equal(d.stdout, `v${SNAPSHOT_FORMAT_VERSION}.0.0\n`);
  const bad = Buffer.from(encodeStateFile({ anything: 1 }));
  bad[bad.length - 6]! ^= 1;
  writeFileSync(path, bad);
  expectUserError(["--describe-snapshot", path], /^flint: Cannot load '.*state\.snap': checksum mismatch/);
});

test("subcommands and bare `flint` behave as before", () => {
  expectUserError(["bogus"], /^flint: error: unknown command 'bogus'$/);
  const bare = spawnSync(process.execPath, [CLI], { encoding: "utf8", timeout: 30_000 });
  assert.equal(bare.status, 2);
  assert.match(bare.stderr, /^Usage: flint \[options\] \[command\]/);
  // A subcommand's own flags are its own: `--level` after `run` is not Firecracker's.
  const run = spawnSync(process.execPath, [CLI, "run", "--kernel", notAKernel, "--level", "Debug"], { encoding: "utf8", timeout: 30_000 });
  assert.equal(run.status, 2);
  assert.match(run.stderr, /^flint: error: unknown option '--level'/);
  expectUserError(["run", "--kernel", notAKernel], /neither an ELF vmlinux nor a bzImage/);
});

test("--api-sock serves Firecracker's API: configure, InstanceStart, pause, resume over the socket; SIGTERM ends VM and process", async () => {
  const sock = join(dir, "fc-api.sock");
  const metadata = configFile("metadata.json", { latest: { "instance-id": "i-1" } });
  const child = spawn(process.execPath, [CLI, "--api-sock", sock, "--id", "vm-api", "--metadata", metadata], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "", stderr = "";
  child.stdout.on("data", (b: Buffer) => { stdout += b.toString("latin1"); });
  child.stderr.on("data", (b: Buffer) => { stderr += b.toString("latin1"); });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  try {
    // The socket appears once the API listens (hang catcher: 30 s).
    for (let i = 0; i < 300 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 100));
    const info = await api(sock, "GET", "/");
    assert.deepEqual(info.json, { id: "vm-api", state: "Not started", vmm_version: JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")).version, app_name: "Firecracker" });
    assert.deepEqual((await api(sock, "GET", "/mmds")).json, { latest: { "instance-id": "i-1" } }, "--metadata filled the MMDS store");
    const boot = { kernel_image_path: buildExitLoopGuest(), boot_args: exitLoopCmdline({ mode: "pio", count: 1000, hello: true, halt: true }) };
    assert.equal((await api(sock, "PUT", "/boot-source", boot)).status, 204);
    assert.equal((await api(sock, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 64 })).status, 204);
    const start = await api(sock, "PUT", "/actions", { action_type: "InstanceStart" });
    assert.equal(start.status, 204, `${start.text} ${stderr}`);
    assert.equal((await api(sock, "PATCH", "/vm", { state: "Paused" })).status, 204);
    assert.equal(((await api(sock, "GET", "/")).json as { state: string }).state, "Paused");
    assert.equal((await api(sock, "PATCH", "/vm", { state: "Resumed" })).status, 204);
    // The guest's first byte reached flint's stdout through the serial console.
    for (let i = 0; i < 300 && !stdout.includes(String.fromCharCode(EXIT_LOOP_HELLO_BYTE)); i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(stdout, String.fromCharCode(EXIT_LOOP_HELLO_BYTE));
  } finally {
    child.kill("SIGTERM");
  }
  assert.equal(await exited, 143, stderr);
  assert.equal(existsSync(sock), false, "the socket file is removed at exit");
});

test("--config-file with the API boots the file's VM, then serves it: GET /vm/config returns the file, and it round-trips", async () => {
  const sock = join(dir, "fc-cfg.sock");
  const document = {
    "boot-source": { kernel_image_path: buildExitLoopGuest(), boot_args: exitLoopCmdline({ mode: "pio", count: 10, hello: true, halt: true }) },
    "drives": [],
    "machine-config": { vcpu_count: 2, mem_size_mib: 64, smt: false, track_dirty_pages: false, huge_pages: "None" },
    "entropy": {},
    "balloon": { amount_mib: 8, deflate_on_oom: true, stats_polling_interval_s: 1 },
  };
  const cfg = configFile("api-boot.json", document);
  const child = spawn(process.execPath, [CLI, "--api-sock", sock, "--config-file", cfg], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (b: Buffer) => { stderr += b.toString("latin1"); });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  try {
    let state = "";
    for (let i = 0; i < 300 && state !== "Running"; i++) {
      await new Promise((r) => setTimeout(r, 100));
      if (existsSync(sock)) state = ((await api(sock, "GET", "/").catch(() => ({ json: { state: "" } }))).json as { state: string }).state;
    }
    assert.equal(state, "Running", stderr);
    const back = (await api(sock, "GET", "/vm/config")).json as Record<string, unknown>;
    for (const key of Object.keys(document)) assert.deepEqual(back[key], (document as Record<string, unknown>)[key], key);
    // What GET /vm/config returns is itself a config file flint takes whole.
    const again = configFile("round-trip.json", back);
    const r = spawnSync(process.execPath, [CLI, "--no-api", "--config-file", again, "--describe-snapshot", "x"], { encoding: "utf8", timeout: 30_000 });
    assert.match(r.stderr, /Cannot read snapshot 'x': ENOENT/, "flags parsed");
    const b = await api(sock, "GET", "/balloon");
    assert.deepEqual(b.json, { amount_mib: 8, deflate_on_oom: true, stats_polling_interval_s: 1 });
  } finally {
    child.kill("SIGTERM");
  }
  assert.equal(await exited, 143, stderr);
});
