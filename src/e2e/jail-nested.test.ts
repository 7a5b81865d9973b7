/**
 * End-to-end: `flint jail` for real, one level down in the nested harness
 * (a clean Linux where making namespaces, device nodes and cgroups harms
 * nothing), as Firecracker's jailer is used: the kernel and disk placed in
 * <chroot-base-dir>/flint/<id>/root, then
 *   flint jail --id vm1 --uid 123 --gid 100 --chroot-base-dir /dev/shm/jail
 *              --cgroup-version 2 --cgroup memory.max=... --cgroup cpu.max=... --new-pid-ns
 *              -- --api-sock /run/api.sock
 * driven from outside over <jail root>/run/api.sock. Checked: the monitor
 * runs as uid 123 / gid 100 with no_new_privs, in its cgroup, in its own pid
 * namespace, with the jail as its root; it cannot open a host file outside
 * the jail (PUT /drives naming it is refused, the same file placed inside is
 * taken); real Linux boots in it; a second jail whose memory.max is far
 * smaller than flint needs is OOM-killed by the cgroup (memory.events
 * oom_kill > 0), and so is a third whose guest boots within its 200M and
 * then writes 300 MiB of its memory (guest memory is charged to the jail).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { buildInitramfs } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { API_CLIENT_JS } from "../harness/api-client-script.js";
import { e2eValue, readTextIfAny } from "../harness/e2e-report.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));

const JAIL_UID = 123;
const JAIL_GID = 100;
/** The first jail's limits: room enough for flint and a 128 MiB guest. */
const VM1_MEMORY_MAX = "1G";
const VM1_CPU_MAX = "max 100000";
/** The second jail: far less than flint (Node, its threads' isolates, guest memory) needs. */
const VM2_MEMORY_MAX = "40M";
/** The third: enough for flint and a booted guest (about 80 MB here), not for 300 MiB more the guest writes. */
const VM3_MEMORY_MAX = "200M";

/** vm1's guest: says it booted and powers off. */
const INIT_VM1 = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo "flint-guest: booted"
echo "flint-e2e: guest_disk=$(cat /sys/block/vda/size 2>/dev/null)"
poweroff -f
`;

/** vm2's guest, if it gets that far: fills 300 MiB of its memory (a file in its initramfs). */
const INIT_VM2 = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "flint-guest: booted"
dd if=/dev/zero of=/fill bs=1M count=300 2>&1 | tail -1
echo "flint-e2e: guest_filled=1"
free
sleep 30
poweroff -f
`;

/** Runs as root inside the nested VM. */
const CLIENT = `
import { spawn } from "node:child_process";
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:http";
const [cli, kernel, initrd1, initrd2, report] = process.argv.slice(2);
const base = "/dev/shm/jail";
const alive = (pid) => existsSync("/proc/" + pid + "/status") && !/^State:\\s+Z/m.test(readFileSync("/proc/" + pid + "/status", "utf8"));
${API_CLIENT_JS}
/** Places the guest in a jail, starts flint jail, waits for its pid file and socket. */
async function jail(id, initrd, cgroups) {
  const root = base + "/flint/" + id + "/root";
  mkdirSync(root, { recursive: true });
  copyFileSync(kernel, root + "/vmlinux");
  copyFileSync(initrd, root + "/initrd.gz");
  writeFileSync(root + "/disk.img", Buffer.alloc(1 << 20));
  const args = [cli, "jail", "--id", id, "--uid", "${JAIL_UID}", "--gid", "${JAIL_GID}", "--chroot-base-dir", base,
    "--cgroup-version", "2", ...cgroups.flatMap((c) => ["--cgroup", c]), "--new-pid-ns", "--", "--api-sock", "/run/api.sock"];
  const p = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
  const vm = { root, sock: root + "/run/api.sock", out: "", err: "", pid: 0 };
  p.stdout.on("data", (b) => { vm.out += b; process.stdout.write(b); });
  p.stderr.on("data", (b) => { vm.err += b; process.stdout.write(b); });
  const jailerExit = await new Promise((resolve) => p.on("exit", (code, signal) => resolve(code ?? signal)));
  say(id + "_jailer_exit", jailerExit);
  for (let i = 0; i < 600 && !existsSync(vm.sock); i++) await sleep(100);
  vm.pid = Number(readFileSync(root + "/flint.pid", "utf8"));
  return vm;
}
const status = (pid, field) => (new RegExp("^" + field + ":[ \\\\t]*(.*)$", "m").exec(readFileSync("/proc/" + pid + "/status", "utf8")) ?? [])[1]?.trim().split(/\\s+/).join(",");
try {
  const mounts = readFileSync("/proc/mounts", "utf8");
  say("cgroup2_mounted", / cgroup2 /.test(mounts) ? 1 : 0);
  writeFileSync(base + "-secret.txt", "host secret\\n");
  mkdirSync(base, { recursive: true });
  writeFileSync(base + "/secret.txt", "host secret\\n");

  const vm1 = await jail("vm1", initrd1, ["memory.max=${VM1_MEMORY_MAX}", "cpu.max=${VM1_CPU_MAX}"]);
  say("vm1_uid", status(vm1.pid, "Uid"));
  say("vm1_gid", status(vm1.pid, "Gid"));
  say("vm1_groups", status(vm1.pid, "Groups") ?? "");
  say("vm1_no_new_privs", status(vm1.pid, "NoNewPrivs"));
  say("vm1_nspid", status(vm1.pid, "NSpid"));
  say("vm1_cgroup", readFileSync("/proc/" + vm1.pid + "/cgroup", "utf8").trim());
  say("vm1_root_entries", (await import("node:fs")).readdirSync("/proc/" + vm1.pid + "/root").sort().join(","));
  say("vm1_memory_max", readFileSync("/sys/fs/cgroup/flint/vm1/memory.max", "utf8").trim());
  say("vm1_cpu_max", readFileSync("/sys/fs/cgroup/flint/vm1/cpu.max", "utf8").trim());
  // A host file outside the jail, by its host path and by climbing out: neither can be opened.
  for (const [key, path] of [["outside", base + "/secret.txt"], ["outside_dotdot", "/../../../secret.txt"], ["outside_shm", base + "-secret.txt"]]) {
    const r = await call(vm1.sock, "PUT", "/drives/" + key, { drive_id: key, path_on_host: path, is_root_device: false, is_read_only: true });
    say("vm1_drive_" + key, r.status);
    say("vm1_drive_" + key + "_fault", JSON.stringify(r.text));
  }
  const inside = await call(vm1.sock, "PUT", "/drives/disk", { drive_id: "disk", path_on_host: "/disk.img", is_root_device: false, is_read_only: true });
  say("vm1_drive_inside", inside.status);
  await must(vm1.sock, "PUT", "/boot-source", { kernel_image_path: "/vmlinux", initrd_path: "/initrd.gz", boot_args: "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init" });
  await must(vm1.sock, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 128 });
  await must(vm1.sock, "PUT", "/actions", { action_type: "InstanceStart" });
  for (let i = 0; i < 3000 && alive(vm1.pid); i++) await sleep(100);
  say("vm1_ended", alive(vm1.pid) ? 0 : 1);
  say("vm1_booted", /flint-guest: booted/.test(vm1.out) ? 1 : 0);
  say("vm1_stderr", JSON.stringify(vm1.err.trim()));

  // An OOM jail: configured and started if it lives long enough, then watched until it ends.
  async function oomJail(id, memoryMax) {
    const vm = await jail(id, initrd2, ["memory.max=" + memoryMax]);
    const cg = "/sys/fs/cgroup/flint/" + id;
    say(id + "_memory_max", readFileSync(cg + "/memory.max", "utf8").trim());
    try {
      await must(vm.sock, "PUT", "/boot-source", { kernel_image_path: "/vmlinux", initrd_path: "/initrd.gz", boot_args: "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init" });
      await must(vm.sock, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 512 });
      await must(vm.sock, "PUT", "/actions", { action_type: "InstanceStart" });
      say(id + "_started", 1);
    } catch (e) {
      say(id + "_api_gone", JSON.stringify(e.message));
    }
    let peakCurrent = 0;
    for (let i = 0; i < 3000 && alive(vm.pid); i++) {
      try { peakCurrent = Math.max(peakCurrent, Number(readFileSync(cg + "/memory.current", "utf8"))); } catch {}
      await sleep(100);
    }
    say(id + "_peak_memory_current", peakCurrent);
    say(id + "_ended", alive(vm.pid) ? 0 : 1);
    say(id + "_booted", /flint-guest: booted/.test(vm.out) ? 1 : 0);
    say(id + "_filled", /guest_filled=1/.test(vm.out) ? 1 : 0);
    say(id + "_stderr", JSON.stringify(vm.err.trim()));
    const events = readFileSync(cg + "/memory.events", "utf8");
    say(id + "_oom_kill", (/^oom_kill (\\d+)$/m.exec(events) ?? [])[1]);
    say(id + "_memory_events", JSON.stringify(events));
  }
  // vm2: memory.max far below what flint itself needs: killed whenever it gets there.
  await oomJail("vm2", "${VM2_MEMORY_MAX}");
  // vm3: room for flint and a booted guest, not for the 300 MiB its guest then writes: guest memory counts.
  await oomJail("vm3", "${VM3_MEMORY_MAX}");
} catch (e) {
  say("client_error", JSON.stringify(e.message));
}
process.exit(0);
`;

describe("flint jail: a jailed flint boots real Linux as an unprivileged uid, confined to its chroot and cgroup (nested harness)", { timeout: 40 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-jail-"));
  let out = "";
  let report = "";
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    const initrd1 = join(share, "initrd1.cpio.gz"), initrd2 = join(share, "initrd2.cpio.gz");
    writeFileSync(initrd1, buildInitramfs({ init: INIT_VM1 }));
    writeFileSync(initrd2, buildInitramfs({ init: INIT_VM2 }));
    const client = join(share, "client.mjs");
    writeFileSync(client, CLIENT);
    const outFile = join(share, "out.txt"), reportFile = join(share, "report.txt");
    // A cgroup v2 hierarchy, mounted where Linux puts it if the outer VM has none yet.
    const command = `(grep -q ' cgroup2 ' /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup) && timeout 900 ${q(process.execPath)} ${q(client)} ${q(CLI)} ${q(kernel.vmlinux)} ${q(initrd1)} ${q(initrd2)} ${q(reportFile)} </dev/null >${q(outFile)} 2>&1`;
    const retryAfterTimeout = () => { for (const f of [outFile, reportFile]) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 20 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: [outFile, reportFile] });
    out = readTextIfAny(outFile);
    report = readTextIfAny(reportFile);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => `${describeNestedRun(nested)}\n--- client report ---\n${report}\n--- console ---\n${out.slice(-3000)}\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const value = (key: string) => e2eValue(key, report);

  it("the jail is set up: cgroup v2 mounted, the jailer returned once the monitor started (--new-pid-ns)", () => {
    assert.equal(value("client_error"), undefined, why());
    assert.equal(value("cgroup2_mounted"), "1", why());
    assert.equal(value("vm1_jailer_exit"), "0", why());
  });

  it("the jailed flint runs as the given uid and gid, no supplementary groups, no_new_privs, pid 1 of its own pid namespace, with the jail as its root", () => {
    assert.equal(value("vm1_uid"), [JAIL_UID, JAIL_UID, JAIL_UID, JAIL_UID].join(","), why());
    assert.equal(value("vm1_gid"), [JAIL_GID, JAIL_GID, JAIL_GID, JAIL_GID].join(","), why());
    assert.equal(value("vm1_groups"), "", why());
    assert.equal(value("vm1_no_new_privs"), "1", why());
    assert.match(value("vm1_nspid") ?? "", /^\d+,1$/, why());
    // Its "/" holds what the jail holds, and none of the host's top-level directories.
    const entries = (value("vm1_root_entries") ?? "").split(",");
    for (const e of ["vmlinux", "initrd.gz", "dev", "run", "flint", "flint.pid", "opt", "usr"]) assert.ok(entries.includes(e), `no ${e} in /\n${why()}`);
    for (const e of ["etc", "home", "root", "tmp", "work", "srv", "var"]) assert.ok(!entries.includes(e), `${e} in /\n${why()}`);
  });

  it("it is in its cgroup <mount>/flint/<id> with the given memory.max and cpu.max", () => {
    assert.equal(value("vm1_cgroup"), "0::/flint/vm1", why());
    assert.equal(value("vm1_memory_max"), String(1 << 30), why());
    assert.equal(value("vm1_cpu_max"), VM1_CPU_MAX, why());
  });

  it("it cannot open a host file outside its chroot; the same kind of file inside is taken", () => {
    for (const key of ["outside", "outside_dotdot", "outside_shm"]) {
      assert.equal(value(`vm1_drive_${key}`), "400", why());
      assert.match(value(`vm1_drive_${key}_fault`) ?? "", /no such file|ENOENT|does not exist|not found/i, why());
    }
    assert.equal(value("vm1_drive_inside"), "204", why());
  });

  it("real Linux boots in the jail and powers off; flint ends with it, with no kernel warning", () => {
    assert.equal(value("vm1_booted"), "1", why());
    assert.equal(value("vm1_ended"), "1", why());
    assert.doesNotMatch(out, /WARNING:|BUG:|Call Trace/, why());
  });

  it("the cgroup's memory limit applies: a jail whose memory.max is far below what flint needs gets it OOM-killed", (t) => {
    t.diagnostic(`vm2 started=${value("vm2_started")} booted=${value("vm2_booted")} filled=${value("vm2_filled")} peak=${value("vm2_peak_memory_current")} oom_kill=${value("vm2_oom_kill")}`);
    assert.equal(value("vm2_memory_max"), String(40 << 20), why());
    assert.equal(value("vm2_ended"), "1", why());
    assert.ok(Number(value("vm2_oom_kill")) > 0, why());
    assert.notEqual(value("vm2_filled"), "1", why());
  });

  it("guest memory counts against memory.max: a guest that boots, then writes 300 MiB in a 200M jail, gets flint OOM-killed while it writes", (t) => {
    t.diagnostic(`vm3 booted=${value("vm3_booted")} filled=${value("vm3_filled")} peak=${value("vm3_peak_memory_current")} oom_kill=${value("vm3_oom_kill")}`);
    assert.equal(value("vm3_memory_max"), String(200 << 20), why());
    assert.equal(value("vm3_started"), "1", why());
    assert.equal(value("vm3_booted"), "1", why());
    assert.equal(value("vm3_ended"), "1", why());
    assert.ok(Number(value("vm3_oom_kill")) > 0, why());
    assert.notEqual(value("vm3_filled"), "1", why());
  });
});
