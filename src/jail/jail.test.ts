/**
 * `flint jail` for real on this host, each run inside `unshare -m` (so no
 * mount can reach the host's namespace) with its chroot base in a fresh
 * temporary directory: a jailed flint serves Firecracker's API as uid 65534
 * from pid 1 of its own pid namespace, boots the ring-3 exit-loop guest,
 * cannot open a host file outside its jail nor a root-only file inside it;
 * a second jail with the same id is refused; bad flags are one line each.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { buildExitLoopGuest } from "../guest/programs/exit-loop.js";
import { findCgroupV1Mounts } from "./cgroup.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const UID = 65534;
const GID = 65534;
const canJail = process.getuid?.() === 0 && existsSync("/dev/kvm");
const skip = canJail ? false : "needs root and /dev/kvm";

const base = mkdtempSync(join(tmpdir(), "flint-jail-"));
after(() => {
  // Mount points and nodes the jail left are plain files here (its mounts lived in its own namespace).
  rmSync(base, { recursive: true, force: true });
});

function call(sock: string, method: string, path: string, body?: unknown): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const req = request({ socketPath: sock, method, path, headers: text ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) } : {} }, (res) => {
      let out = "";
      res.on("data", (c: Buffer) => (out += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text: out }));
    });
    req.on("error", reject);
    if (text) req.write(text);
    req.end();
  });
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const statusField = (pid: number, field: string) => new RegExp(`^${field}:[ \\t]*(.*)$`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]?.trim().split(/\s+/).join(",");

function jailCli(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync("unshare", ["-m", process.execPath, CLI, "jail", ...args], { encoding: "utf8", timeout: 60_000 });
  return { status: r.status, stderr: r.stderr };
}

/** unshare's argv for `flint jail` of a flint serving the API at /run/api.sock in its own pid namespace (so the jailer returns). */
const jailedApiArgv = (id: string, jailArgs: string[] = []) => ["-m", process.execPath, CLI, "jail", "--id", id, "--uid", String(UID), "--gid", String(GID),
  "--chroot-base-dir", base, ...jailArgs, "--new-pid-ns", "--", "--api-sock", "/run/api.sock"];

/**
 * A jailed flint serving the API at /run/api.sock, with its console and stderr; returns as soon
 * as the socket appears (looked for every millisecond).
 */
async function startJailedApi(id: string, jailArgs: string[] = []): Promise<{ sock: string; pid: number; out(): string; err(): string }> {
  const child = spawn("unshare", jailedApiArgv(id, jailArgs), { stdio: ["ignore", "pipe", "pipe"] });
  let out = "", err = "";
  child.stdout.on("data", (b: Buffer) => (out += b.toString("latin1")));
  child.stderr.on("data", (b: Buffer) => (err += b));
  const jailerExit = await new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  assert.equal(jailerExit, 0, err);
  const root = join(base, "flint", id, "root");
  const sock = join(root, "run", "api.sock");
  for (let i = 0; i < 10_000 && !existsSync(sock); i++) await sleep(1);
  return { sock, pid: Number(readFileSync(join(root, "flint.pid"), "utf8")), out: () => out, err: () => err };
}

/** Boots the jail's /guest.elf (the exit-loop guest) over the API and waits for its hello on the console. */
async function bootHello(jailed: { sock: string; out(): string; err(): string }): Promise<void> {
  const { sock } = jailed;
  assert.equal((await call(sock, "PUT", "/boot-source", { kernel_image_path: "/guest.elf", boot_args: "mode=pio count=0 hello halt" })).status, 204);
  assert.equal((await call(sock, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 32 })).status, 204);
  const start = await call(sock, "PUT", "/actions", { action_type: "InstanceStart" });
  assert.equal(start.status, 204, start.text);
  for (let i = 0; i < 200 && !jailed.out().includes("H"); i++) await sleep(50);
  assert.ok(jailed.out().includes("H"), `no hello on the console: ${JSON.stringify(jailed.out())} ${jailed.err()}`);
}

/** SIGTERM to a jailed flint; waits for it to end. */
async function endJailed(pid: number): Promise<void> {
  process.kill(pid, "SIGTERM");
  for (let i = 0; i < 200 && existsSync(`/proc/${pid}`); i++) await sleep(50);
}

describe("flint jail on this host (inside unshare -m, chroot base under /tmp)", { skip, timeout: 180_000 }, () => {
  const root = join(base, "flint", "vm1", "root");
  const secret = join(base, "secret.img");

  it("a jailed flint runs as the given uid in its own pid namespace, boots a guest, and opens nothing outside its jail", async () => {
    mkdirSync(root, { recursive: true });
    copyFileSync(buildExitLoopGuest(), join(root, "guest.elf"));
    writeFileSync(join(root, "inside.img"), Buffer.alloc(4096));
    writeFileSync(join(root, "private.img"), Buffer.alloc(4096));
    chmodSync(join(root, "private.img"), 0o600); // root's, inside the jail
    writeFileSync(secret, Buffer.alloc(4096)); // the host's, outside the jail
    const jailed = await startJailedApi("vm1");
    const { sock, pid } = jailed;
    try {
      assert.equal(statusField(pid, "Uid"), [UID, UID, UID, UID].join(","), jailed.err());
      assert.equal(statusField(pid, "Gid"), [GID, GID, GID, GID].join(","));
      assert.equal(statusField(pid, "Groups") ?? "", "");
      assert.equal(statusField(pid, "NoNewPrivs"), "1");
      assert.match(statusField(pid, "NSpid") ?? "", /^\d+,1$/);
      assert.equal(statusField(pid, "CapEff"), "0000000000000000");
      // Its "/" is the jail: what was placed there, none of the host's directories.
      const entries = readdirSync(`/proc/${pid}/root`);
      for (const e of ["guest.elf", "dev", "run", "opt", "usr", "flint", "flint.pid", "proc"]) assert.ok(entries.includes(e), entries.join(" "));
      for (const e of ["etc", "tmp", "root", "home", "work"]) assert.ok(!entries.includes(e), entries.join(" "));
      assert.equal(readFileSync(`/proc/${pid}/limits`, "utf8").match(/^Max open files\s+(\d+)\s+(\d+)/m)?.slice(1).join(","), "2048,2048");

      // The host file by its host path, or by climbing: not there. A root-only file inside: not for uid 65534.
      for (const path of [secret, `/../../..${secret}`, "/etc/passwd"]) {
        const r = await call(sock, "PUT", "/drives/x", { drive_id: "x", path_on_host: path, is_root_device: false, is_read_only: true });
        assert.equal(r.status, 400, `${path}: ${r.text}`);
        assert.match(r.text, /does not exist/, path);
      }
      const priv = await call(sock, "PUT", "/drives/p", { drive_id: "p", path_on_host: "/private.img", is_root_device: false, is_read_only: true });
      assert.equal(priv.status, 400, priv.text);
      assert.match(priv.text, /is not readable/, priv.text);
      const inside = await call(sock, "PUT", "/drives/d", { drive_id: "d", path_on_host: "/inside.img", is_root_device: false, is_read_only: true });
      assert.equal(inside.status, 204, inside.text);

      // The guest boots in the jail (flint opens /dev/kvm there) and says hello on the console.
      await bootHello(jailed);
    } finally {
      await endJailed(pid);
    }
    assert.ok(!existsSync(`/proc/${pid}`), "flint did not end at SIGTERM");
  });

  it("--daemonize: the jailer returns at once; the monitor runs detached, its stdio the jail's /dev/null, with the resource limits given", async () => {
    const droot = join(base, "flint", "d1", "root");
    mkdirSync(droot, { recursive: true });
    copyFileSync(buildExitLoopGuest(), join(droot, "guest.elf"));
    const r = spawnSync("unshare", ["-m", process.execPath, CLI, "jail", "--id", "d1", "--uid", String(UID), "--gid", String(GID), "--chroot-base-dir", base,
      "--daemonize", "--resource-limit", "fsize=1000", "--resource-limit", "no-file=512",
      "--", "run", "--kernel", "/guest.elf", "--boot", "pvh", "--no-acpi", "--cpus", "1", "--memory", "32", "--cmdline", "mode=pio count=0 hello halt"], { encoding: "utf8", timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "");
    for (let i = 0; i < 100 && !existsSync(join(droot, "flint.pid")); i++) await sleep(50);
    const pid = Number(readFileSync(join(droot, "flint.pid"), "utf8"));
    try {
      // The helper writes the pid file before it drops privileges and execs: look once it runs node.
      const exe = () => { try { return readlinkSync(`/proc/${pid}/exe`); } catch { return ""; } };
      for (let i = 0; i < 100 && !/node$/.test(exe()); i++) await sleep(20);
      assert.equal(statusField(pid, "Uid"), [UID, UID, UID, UID].join(","));
      assert.notEqual(statusField(pid, "NSsid"), String(process.pid));
      for (const fd of [0, 1, 2]) assert.equal(readlinkSync(`/proc/${pid}/fd/${fd}`), "/dev/null");
      const limits = readFileSync(`/proc/${pid}/limits`, "utf8");
      assert.match(limits, /^Max file size\s+1000\s+1000\s+bytes/m);
      assert.match(limits, /^Max open files\s+512\s+512/m);
    } finally {
      await endJailed(pid);
    }
  });

  it("--netns: a jailed flint attaches the TAP its caller made in that network namespace (no /sys in the jail) and refuses a missing one in one line", async () => {
    const ns = `flintjail${process.pid % 100000}`;
    const nroot = join(base, "flint", "n1", "root");
    mkdirSync(nroot, { recursive: true });
    copyFileSync(buildExitLoopGuest(), join(nroot, "guest.elf"));
    execFileSync("ip", ["netns", "add", ns]);
    let pid = 0;
    try {
      // As with Firecracker's jailer: the caller makes the TAP in the namespace, owned by the jail's user.
      execFileSync("ip", ["-n", ns, "tuntap", "add", "dev", "tapj", "mode", "tap", "user", String(UID), "group", String(GID)]);
      const jailed = await startJailedApi("n1", ["--netns", `/var/run/netns/${ns}`]);
      const { sock } = jailed;
      pid = jailed.pid;
      assert.ok(!readdirSync(`/proc/${pid}/root`).includes("sys"), "the jail shows no /sys");
      const missing = await call(sock, "PUT", "/network-interfaces/eth1", { iface_id: "eth1", host_dev_name: "tapnope" });
      assert.equal(missing.status, 400, missing.text);
      assert.equal(JSON.parse(missing.text).fault_message,
        "Cannot attach network: TAP interface 'tapnope' does not exist in this network namespace (create it with 'ip tuntap add dev tapnope mode tap')");
      const eth0 = await call(sock, "PUT", "/network-interfaces/eth0", { iface_id: "eth0", host_dev_name: "tapj", guest_mac: "06:00:ac:10:00:02" });
      assert.equal(eth0.status, 204, eth0.text);
      await bootHello(jailed);
      // The monitor holds /dev/net/tun attached to the namespace's TAP.
      const attached = readdirSync(`/proc/${pid}/fd`).filter((fd) => /^iff:\s+tapj$/m.test(readFileSync(`/proc/${pid}/fdinfo/${fd}`, "utf8")));
      assert.equal(attached.length, 1, jailed.err());
    } finally {
      if (pid > 0) await endJailed(pid);
      spawnSync("ip", ["netns", "del", ns]);
    }
  });

  it("a SIGTERM sent the moment the API socket appears ends the jailed flint (the first process of its pid namespace)", async () => {
    // As the first process of a pid namespace, a signal with no handler yet would be dropped by the kernel.
    const { pid } = await startJailedApi("s1");
    await endJailed(pid);
    const alive = existsSync(`/proc/${pid}`);
    if (alive) process.kill(pid, "SIGKILL");
    assert.ok(!alive, "the jailed flint ignored SIGTERM");
  });

  it("refuses a jail left by an earlier run with the same id, in one line", () => {
    const r = jailCli(["--id", "vm1", "--uid", String(UID), "--gid", String(GID), "--chroot-base-dir", base, "--", "--version"]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /^flint: The jail .*\/flint\/vm1\/root holds \S+ from an earlier run: remove .*\/flint\/vm1 first\n$/);
  });

  it("refuses bad input with one line and exit code 2", () => {
    const ok = ["--uid", "1", "--gid", "1", "--chroot-base-dir", base];
    const cases: [string[], RegExp][] = [
      [[...ok], /Missing --id/],
      [["--id", "a/b", ...ok], /Invalid --id: character '\/'/],
      [["--id", "a", "--uid", "no-such-user-x", "--gid", "1", "--chroot-base-dir", base], /Invalid --uid: no user named 'no-such-user-x'/],
      [["--id", "a", "--uid", "1", "--chroot-base-dir", base], /Missing --gid/],
      [["--id", "a", ...ok, "--exec-file", join(base, "missing")], /Invalid --exec-file: .*missing: no such file/],
      [["--id", "a", ...ok, "--exec-file", "/etc/passwd"], /is not flint's entry/],
      [["--id", "a", "--uid", "1", "--gid", "1", "--chroot-base-dir", join(base, "nope")], /Failed to canonicalize path .*nope: ENOENT/],
      [["--id", "a", ...ok, "--cgroup", "memory.max"], /Invalid format for cgroups: memory\.max/],
      [["--id", "a", ...ok, "--cgroup", "hugetlb.limit_in_bytes=1M"], /Controller hugetlb is unavailable \(no cgroup v1 hierarchy mounts it; mounted: /],
      [["--id", "a", ...ok, "--cgroup-version", "2", "--cgroup", "memory.max=1M"], /Controller memory is unavailable/],
      [["--id", "a", ...ok, "--cgroup-version", "3"], /3 is an invalid cgroup version specifier/],
      [["--id", "a", ...ok, "--resource-limit", "cores=1"], /Invalid resource argument: cores/],
      [["--id", "a", ...ok, "stray"], /unexpected argument 'stray' \(the monitor's flags go after --\)/],
    ];
    for (const [args, msg] of cases) {
      const r = jailCli(args);
      assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, msg, args.join(" "));
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
    // None of them made a jail.
    assert.deepEqual(readdirSync(join(base, "flint")).sort(), ["d1", "n1", "s1", "vm1"]);
  });

  it("--exec-file naming the installed `firecracker` jails it under <base>/firecracker/<id> and runs flint in its Firecracker mode", () => {
    const dir = mkdtempSync(join(tmpdir(), "flint-jail-fc-"));
    try {
      const link = join(dir, "firecracker");
      spawnSync("ln", ["-s", CLI, link]);
      const r = spawnSync("unshare", ["-m", process.execPath, CLI, "jail", "--id", "fc1", "--uid", String(UID), "--gid", String(GID), "--chroot-base-dir", base,
        "--exec-file", link, "--", "--version"], { encoding: "utf8", timeout: 30_000 });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /^Firecracker v\d+\.\d+\.\d+\n/);
      const fcRoot = join(base, "firecracker", "fc1", "root");
      assert.ok(existsSync(join(fcRoot, "firecracker.pid")));
      assert.equal(readlinkSync(join(fcRoot, "firecracker")), "/opt/flint/dist/bundle/main.js");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("`jailer` installed beside flint behaves as `flint jail`", () => {
    const dir = mkdtempSync(join(tmpdir(), "flint-jailer-bin-"));
    try {
      const link = join(dir, "jailer");
      spawnSync("ln", ["-s", CLI, link]);
      const help = spawnSync(process.execPath, [link, "--help"], { encoding: "utf8" });
      assert.equal(help.status, 0, help.stderr);
      for (const flag of ["--id", "--exec-file", "--uid", "--gid", "--chroot-base-dir", "--netns", "--daemonize", "--new-pid-ns", "--cgroup ", "--cgroup-version", "--parent-cgroup", "--resource-limit"]) {
        assert.ok(help.stdout.includes(flag), `${flag} missing from:\n${help.stdout}`);
      }
      const version = spawnSync(process.execPath, [link, "--version"], { encoding: "utf8" });
      assert.equal(version.status, 0, version.stderr);
      assert.match(version.stdout, /^Jailer v\d+\.\d+\.\d+\n\nflint \d+\.\d+\.\d+\n$/);
      const bad = spawnSync(process.execPath, [link, "--uid", "1", "--gid", "1"], { encoding: "utf8" });
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /Missing --id/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** This host's cgroup v1 hierarchy of `controller`, if one is mounted. */
const v1Hierarchy = (controller: string) => findCgroupV1Mounts(readFileSync("/proc/mounts", "utf8")).find((m) => m.options.includes(controller))?.dir;
const V1_MEMORY = v1Hierarchy("memory"), V1_CPUSET = v1Hierarchy("cpuset");

describe("flint jail with cgroup v1 on this host (Firecracker's jailer default)", {
  skip: skip || (!V1_MEMORY || !V1_CPUSET ? "needs cgroup v1 memory and cpuset hierarchies" : false), timeout: 180_000,
}, () => {
  // A parent cgroup of this run's own, removed at the end (after every jailed process has ended).
  const parent = `flint-test-${process.pid}`;
  after(() => {
    for (const h of [V1_MEMORY!, V1_CPUSET!]) {
      for (const id of ["c1", "c2"]) spawnSync("rmdir", [join(h, parent, id)]);
      spawnSync("rmdir", [join(h, parent)]);
    }
  });

  it("the monitor starts inside <hierarchy>/<parent>/<id> of each controller named, with the values given (cpuset filled down from the root), and boots", async () => {
    const root = join(base, "flint", "c1", "root");
    mkdirSync(root, { recursive: true });
    copyFileSync(buildExitLoopGuest(), join(root, "guest.elf"));
    const jailed = await startJailedApi("c1", ["--parent-cgroup", parent,
      "--cgroup", "memory.limit_in_bytes=536870912", "--cgroup", "cpuset.cpus=0", "--cgroup", "cpuset.mems=0"]);
    try {
      const cgroups = readFileSync(`/proc/${jailed.pid}/cgroup`, "utf8");
      assert.match(cgroups, new RegExp(`^\\d+:memory:/${parent}/c1$`, "m"), cgroups);
      assert.match(cgroups, new RegExp(`^\\d+:cpuset:/${parent}/c1$`, "m"), cgroups);
      const read = (h: string, f: string) => readFileSync(join(h, parent, "c1", f), "utf8").trim();
      assert.equal(read(V1_MEMORY!, "memory.limit_in_bytes"), "536870912");
      assert.equal(read(V1_CPUSET!, "cpuset.cpus"), "0");
      assert.equal(read(V1_CPUSET!, "cpuset.mems"), "0");
      // The parent took the root's CPUs, so its child could take one of them.
      assert.equal(readFileSync(join(V1_CPUSET!, parent, "cpuset.cpus"), "utf8").trim(), readFileSync(join(V1_CPUSET!, "cpuset.cpus"), "utf8").trim());
      assert.equal(statusField(jailed.pid, "Cpus_allowed_list"), "0");
      await bootHello(jailed);
    } finally {
      await endJailed(jailed.pid);
    }
  });

  it("the memory limit applies: a jail whose memory.limit_in_bytes is far below what flint needs is OOM-killed", async () => {
    mkdirSync(join(base, "flint", "c2", "root"), { recursive: true });
    const r = spawnSync("unshare", jailedApiArgv("c2", ["--parent-cgroup", parent, "--cgroup", "memory.limit_in_bytes=16777216"]), { encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    const oomKills = () => Number(/^oom_kill (\d+)$/m.exec(readFileSync(join(V1_MEMORY!, parent, "c2", "memory.oom_control"), "utf8"))?.[1] ?? 0);
    for (let i = 0; i < 400 && oomKills() === 0; i++) await sleep(50);
    assert.ok(oomKills() > 0, readFileSync(join(V1_MEMORY!, parent, "c2", "memory.oom_control"), "utf8"));
    // Everything in the jail ends (its pid namespace's first process was killed).
    const procs = () => readFileSync(join(V1_MEMORY!, parent, "c2", "cgroup.procs"), "utf8").trim();
    for (let i = 0; i < 200 && procs() !== ""; i++) await sleep(50);
    assert.equal(procs(), "");
  });
});
