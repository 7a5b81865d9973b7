/** `flint` with Firecracker's process flags: a config file boots a guest; bad input is one line and exit code 2. */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { buildExitLoopGuest, EXIT_LOOP_HELLO_BYTE, exitLoopCmdline } from "../guest/programs/exit-loop.js";

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
  const child = spawn(process.execPath, [CLI, "--no-api", "--config-file", cfg, "--id", "vm-1", "--level", "Debug", "--no-seccomp"], { stdio: ["ignore", "pipe", "pipe"] });
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
    /^flint: Unsupported config: 'mmds-config' is set: flint has no MMDS yet$/);
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
  expectUserError(["--no-api", "--config-file", configFile("cid.json", { ...minimal, vsock: { guest_cid: 0xffff_ffff, uds_path: join(dir, "v.sock") } })],
    /^flint: Cannot attach vsock: cid 4294967295 is reserved or too large/);
  expectUserError(["--no-api", "--config-file", configFile("kernel.json", minimal)], /neither an ELF vmlinux nor a bzImage/);
});

test("Firecracker's other flags are taken by the parser; the API socket and snapshots answer 'not yet'", () => {
  const cfg = configFile("flags.json", minimal);
  // Every accepted flag, then the config's kernel error: the parser took them all.
  expectUserError(["--no-api", "--config-file", cfg, "--id", "a-1", "--log-path", join(dir, "log"), "--level", "Warning", "--module", "api_server",
    "--show-level", "--show-log-origin", "--metrics-path", join(dir, "metrics"), "--boot-timer", "--seccomp-filter", join(dir, "filter.bpf"),
    "--start-time-us", "1", "--start-time-cpu-us", "2", "--parent-cpu-time-us", "3", "--http-api-max-payload-size", "51200",
    "--mmds-size-limit", "51200", "--enable-pci"], /neither an ELF vmlinux nor a bzImage/);
  expectUserError(["--api-sock", join(dir, "fc.sock"), "--id", "vm1"], /^flint: The API socket is not supported yet \(--api-sock .*fc\.sock\): start with --no-api --config-file FILE$/);
  expectUserError(["--config-file", cfg], /^flint: The API socket is not supported yet \(--api-sock \/run\/firecracker\.socket\)/);
  expectUserError(["--no-api"], /^flint: --no-api needs --config-file FILE$/);
  expectUserError(["--no-api", "--config-file", cfg, "--id", "vm_1"], /^flint: Invalid --id: character '_' is not an ASCII letter, digit or '-'$/);
  expectUserError(["--no-api", "--config-file", cfg, "--id", "x".repeat(65)], /^flint: Invalid --id: must be 1 to 64 characters, got 65$/);
  expectUserError(["--no-api", "--config-file", cfg, "--seccomp-filter", "f", "--no-seccomp"], /cannot be given together/);
  expectUserError(["--describe-snapshot", join(dir, "snap")], /^flint: Snapshots are not supported yet/);
  expectUserError(["--no-api", "--config-file", cfg, "--metadata", join(dir, "mmds.json")], /^flint: --metadata is not supported yet/);
  expectUserError(["--no-api", "--config-file", cfg, "--mmds-size-limit", "lots"], /--mmds-size-limit must be a whole number/);
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
