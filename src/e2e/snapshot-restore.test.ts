/**
 * End-to-end: real Linux saved and restored through Firecracker's API, one
 * level down in the nested harness, as the snapshot issue's test asks. flint
 * A boots a guest with 2 vCPUs, a virtio-blk disk, virtio-rng, a network
 * interface on a TAP and a vsock, that counts on its console (a line every
 * 0.2 s with its uptime) and writes each number to its own sector of the
 * disk, past the page cache. The client pauses it, PUT /snapshot/create, and
 * kills A with SIGKILL. Four new flint processes, B to E, each PUT
 * /snapshot/load the same files with resume_vm, all running at once and
 * sharing the memory file's pages; each in its own network namespace with
 * its own TAP (`network_overrides`), its own vsock socket path
 * (`vsock_override`) and its own copy of the disk bind-mounted at the disk's
 * path in its own mount namespace (as a jailer gives each clone its files).
 * One clone (UFFD_CLONE) loads with the Uffd memory backend, its memory
 * served by `flint uffd-handler`; the others map the memory file.
 * Each clone's console, appended to A's, must count on with no number missing
 * or repeated and with its uptime never going back (registers, memory, the
 * irqchip, timers and kvm-clock came back as they were); each clone's disk
 * must hold every number at its sector (no write lost or made twice across
 * the snapshot). Then each clone is told over its console (the UART came
 * back too) to ping the host through its TAP and to connect over vsock to a
 * listener at its own socket path: both must work. B then reads its restored
 * virtio-rng and powers off (exit 0); the others are killed. No kernel
 * warning on any console.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { explainClientE2e, runClientE2e } from "../harness/client-e2e.js";
import { API_CLIENT_JS, FLINT_PROCESS_HELPERS_JS } from "../harness/api-client-script.js";
import { e2eValue } from "../harness/e2e-report.js";
import { E2E_GUEST_NET, ethUpSh, initPrologue, vsockConnectC } from "../harness/guest-scripts.js";
import type { NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const NET = E2E_GUEST_NET;
const CLONES = ["b", "c", "d", "e"];
/** The clone loaded with the Uffd memory backend (`flint uffd-handler` serving the memory file); the others map it (File). */
const UFFD_CLONE = "e";

const GUEST_INIT = `${initPrologue()}${ethUpSh(NET.guestIp)}echo "flint-guest: booted"
# Each tick also goes to sector i of the disk, past the page cache: a write lost or made twice across the snapshot shows there.
( i=0; while :; do i=$((i + 1)); echo "tick=$i up=$(cut -d' ' -f1 /proc/uptime)"; printf 'tick=%08d' $i | dd of=/dev/vda bs=512 seek=$i conv=sync,notrunc oflag=direct 2>/dev/null; sleep 0.2; done ) &
ticker=$!
# Commands on the console: "go" checks the network and the vsock (after a restore), "stop" ends.
while read cmd; do
  case "$cmd" in
    go)
      if ping -c 2 -W 5 ${NET.hostIp} >/dev/null 2>&1; then echo "flint-e2e: ping=ok"; else echo "flint-e2e: ping=failed"; fi
      /bin/vsock-connect 2 ${NET.hostPort} "hello" || echo "flint-e2e: vsock-got=connect failed ($?)"
      echo "flint-e2e: urandom=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')"
      ;;
    stop) break ;;
  esac
done
kill $ticker
wait
echo "flint-e2e: hwrng=$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \\n')"
echo "flint-e2e: stopping"
poweroff -f
`;

/** Runs inside the nested VM. */
const CLIENT = `
import { spawn, spawnSync } from "node:child_process";
import { appendFileSync, copyFileSync, existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { createServer } from "node:net";
const [cli, kernel, initrd, work, report, consoles] = process.argv.slice(2);
const clones = ${JSON.stringify(CLONES)};
${API_CLIENT_JS}
const disk = work + "/disk.img";
const vms = {};
/**
 * flint with its API on work/NAME.sock, in a network namespace of its own
 * holding one TAP, tapNAME, whose host end is ${NET.hostIp} with one MAC for
 * all (clones of one guest expect the same peer), and in a mount namespace
 * where, given \\\`ownDisk\\\`, that copy of the disk is at the disk's path.
 */
function startFlint(name, ownDisk) {
  const sock = work + "/" + name + ".sock";
  const tap = "tap" + name;
  // sysfs mounted again in the new namespaces: it shows the network namespace of whoever mounts it (flint checks its TAP there).
  const setup = "mount -t sysfs sysfs /sys && ip link set lo up && ip tuntap add dev " + tap + " mode tap && ip link set " + tap + " address 02:00:00:00:00:01 && " +
    "ip addr add ${NET.hostIp}/24 dev " + tap + " && ip link set " + tap + " up && " + '{ [ -z "$0" ] || mount --bind "$0" "$1"; } && shift && exec "$@"';
  const fc = spawn("unshare", ["-m", "-n", "--propagation", "private", "sh", "-c", setup, ownDisk ?? "", disk,
    process.execPath, cli, "--api-sock", sock, "--id", "snap-" + name], { stdio: ["pipe", "pipe", "pipe"] });
  const vm = { name, sock, fc, console: "", stderr: "" };
  fc.stdout.on("data", (b) => { vm.console += b; });
  fc.stderr.on("data", (b) => { vm.stderr += b; });
  vm.exited = new Promise((resolve) => fc.on("exit", (code, signal) => resolve(code ?? signal)));
  vms[name] = vm;
  return vm;
}
/** Listens at PATH_${NET.hostPort} for the guest's vsock connections; echoes each line back. */
function vsockListener(path) {
  const server = createServer((s) => s.on("data", (d) => s.write(d)));
  server.listen(path + "_${NET.hostPort}");
  return server;
}
${FLINT_PROCESS_HELPERS_JS}
const ticks = (text) => [...text.matchAll(/tick=(\\d+) up=([0-9.]+)\\r?\\n/g)].map((m) => [Number(m[1]), Number(m[2])]);
const lastTick = (vm) => { const t = ticks(vm.console); return t.length ? t[t.length - 1][0] : 0; };
const line = (vm, key) => { const m = new RegExp("flint-e2e: " + key + "=([^\\r\\n]*)").exec(vm.console); return m ? m[1] : undefined; };
try {
  const a = startFlint("a");
  await socketUp(a);
  await must(a.sock, "PUT", "/boot-source", { kernel_image_path: kernel, initrd_path: initrd, boot_args: "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init" });
  await must(a.sock, "PUT", "/machine-config", { vcpu_count: 2, mem_size_mib: 256 });
  writeFileSync(disk, Buffer.alloc(4 << 20));
  await must(a.sock, "PUT", "/drives/data", { drive_id: "data", path_on_host: disk, is_root_device: false, is_read_only: false });
  await must(a.sock, "PUT", "/entropy", {});
  await must(a.sock, "PUT", "/network-interfaces/eth0", { iface_id: "eth0", host_dev_name: "tapa", guest_mac: "${NET.mac}" });
  await must(a.sock, "PUT", "/vsock", { guest_cid: ${NET.cid}, uds_path: work + "/a.vsock" });
  await must(a.sock, "PUT", "/actions", { action_type: "InstanceStart" });
  for (let i = 0; i < 3000 && lastTick(a) < 10; i++) await sleep(100);
  say("ticks_before_pause", lastTick(a));
  await must(a.sock, "PATCH", "/vm", { state: "Paused" });
  const snap = work + "/vm.snap", mem = work + "/vm.mem";
  const t0 = Date.now();
  await must(a.sock, "PUT", "/snapshot/create", { snapshot_type: "Full", snapshot_path: snap, mem_file_path: mem });
  say("create_ms", Date.now() - t0);
  say("state_after_create", JSON.parse((await must(a.sock, "GET", "/", undefined, 200)).text).state);
  say("mem_file_bytes", statSync(mem).size);
  say("mem_file_allocated", statSync(mem).blocks * 512);
  const inspect = spawnSync(process.execPath, [cli, "snapshot", "inspect", snap, "--json"], { encoding: "utf8" });
  say("inspect", JSON.stringify(inspect.status === 0 ? JSON.parse(inspect.stdout) : inspect.stderr));
  a.fc.kill("SIGKILL");
  await a.exited;
  say("ticks_at_snapshot", lastTick(a));
  const listeners = [];
  // Clone ${UFFD_CLONE} loads with the Uffd memory backend: flint uffd-handler serves the memory file to it.
  const handlerSock = work + "/uffd-${UFFD_CLONE}.sock";
  const handler = spawn(process.execPath, [cli, "uffd-handler", "--socket", handlerSock, "--mem-file", mem], { stdio: ["ignore", "pipe", "pipe"] });
  let handlerOut = "", handlerErr = "";
  handler.stdout.on("data", (b) => (handlerOut += b));
  const handlerExited = new Promise((resolve) => handler.on("exit", (code) => resolve(code)));
  await new Promise((resolve, reject) => {
    handler.stderr.on("data", (b) => { handlerErr += b; if (handlerErr.includes("listening on")) resolve(); });
    handler.on("exit", () => reject(new Error("uffd-handler ended: " + handlerErr)));
  });
  const running = clones.map((name) => {
    copyFileSync(disk, work + "/disk-" + name + ".img");
    listeners.push(vsockListener(work + "/" + name + ".vsock"));
    return startFlint(name, work + "/disk-" + name + ".img");
  });
  await Promise.all(running.map(socketUp));
  await Promise.all(running.map(async (vm) => {
    const t = Date.now();
    await must(vm.sock, "PUT", "/snapshot/load", {
      snapshot_path: snap, resume_vm: true,
      mem_backend: vm.name === "${UFFD_CLONE}" ? { backend_type: "Uffd", backend_path: handlerSock } : { backend_type: "File", backend_path: mem },
      network_overrides: [{ iface_id: "eth0", host_dev_name: "tap" + vm.name }], vsock_override: { uds_path: work + "/" + vm.name + ".vsock" },
    });
    say("load_ms_" + vm.name, Date.now() - t);
    say("state_" + vm.name, JSON.parse((await must(vm.sock, "GET", "/", undefined, 200)).text).state);
  }));
  const target = lastTick(a) + 10;
  for (let i = 0; i < 1200 && running.some((vm) => lastTick(vm) < target); i++) await sleep(100);
  for (const vm of running) {
    // A's console and the clone's, end to end: one count, none missing or repeated, uptime never back.
    const seq = ticks(a.console + vm.console);
    let gaps = 0, back = 0;
    for (let i = 1; i < seq.length; i++) {
      if (seq[i][0] !== seq[i - 1][0] + 1) gaps++;
      if (seq[i][1] < seq[i - 1][1]) back++;
    }
    say("ticks_" + vm.name, lastTick(vm));
    say("sequence_breaks_" + vm.name, gaps);
    say("uptime_back_" + vm.name, back);
    vm.fc.stdin.write("go\\n");
  }
  for (let i = 0; i < 1200 && running.some((vm) => line(vm, "urandom") === undefined); i++) await sleep(100);
  for (const vm of running) for (const k of ["ping", "vsock-got", "urandom"]) say(k + "_" + vm.name, line(vm, k));
  const b = vms.b;
  b.fc.stdin.write("stop\\n");
  const bEnd = await Promise.race([b.exited, sleep(60000).then(() => "none")]);
  say("b_exit", bEnd);
  for (const vm of running) vm.fc.kill("SIGKILL");
  await Promise.all(running.map((vm) => vm.exited));
  // Its VM gone, the handler ends and says what it served.
  say("uffd_exit", await Promise.race([handlerExited, sleep(60000).then(() => "none")]));
  say("uffd_stats", handlerOut.trim() || JSON.stringify(handlerErr.trim()));
  for (const l of listeners) l.close();
  // Each clone's disk: sector i holds tick i for every tick before its last (the last may not have reached the disk).
  for (const vm of running) {
    const bytes = readFileSync(work + "/disk-" + vm.name + ".img");
    const last = lastTick(vm);
    let bad = 0;
    for (let i = 1; i < last; i++) if (bytes.toString("latin1", i * 512, i * 512 + 13) !== "tick=" + String(i).padStart(8, "0")) bad++;
    say("disk_ticks_" + vm.name, last - 1);
    say("disk_bad_" + vm.name, bad);
  }
} catch (e) {
  say("client_error", JSON.stringify(e.message));
}
endFlints();
process.exit(0);
`;

describe("real Linux snapshot over the API, restored as four clones at once in new processes, each with its own disk, TAP and vsock (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-snap-"));
  let report = "";
  let consoles: Record<string, string> = {};
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    ({ nested, report, consoles } = await runClientE2e({
      share, cli: CLI, kernel: kernel.vmlinux, init: GUEST_INIT, program: { name: "vsock-connect", source: vsockConnectC() }, client: CLIENT,
      workDir: "/dev/shm/snap", names: ["a", ...CLONES], clientTimeoutS: 600, timeoutMs: 14 * 60_000, memoryMib: 2048,
    }));
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => explainClientE2e({ nested, report, consoles });
  const value = (key: string) => e2eValue(key, report, "");

  it("the guest boots and counts; PUT /snapshot/create saves it paused, and `flint snapshot inspect` reads the state file", (t) => {
    assert.equal(value("client_error"), undefined, why());
    assert.ok(parseGuestReport(consoles.a ?? "").booted, why());
    assert.ok(Number(value("ticks_before_pause")) >= 10, why());
    assert.equal(value("state_after_create"), "Paused", why());
    assert.equal(value("mem_file_bytes"), String(256 << 20), why());
    const inspect = JSON.parse(value("inspect") ?? "{}") as { cpus?: number; memoryMib?: number; formatVersion?: string };
    assert.equal(inspect.cpus, 2, why());
    assert.equal(inspect.memoryMib, 256, why());
    t.diagnostic(`create ${value("create_ms")} ms; memory file ${value("mem_file_bytes")} bytes, ${value("mem_file_allocated")} allocated; ` +
      `loads (four at once, TCG outer VM) ${CLONES.map((c) => value(`load_ms_${c}`)).join(" / ")} ms`);
  });

  for (const clone of CLONES) {
    it(`clone ${clone}: PUT /snapshot/load with resume_vm runs it on from the snapshot: its count continues A's with nothing missing or repeated, its clock never goes back`, () => {
      assert.equal(value(`state_${clone}`), "Running", why());
      assert.ok(Number(value(`ticks_${clone}`)) >= Number(value("ticks_at_snapshot")) + 10, why());
      assert.equal(value(`sequence_breaks_${clone}`), "0", why());
      assert.equal(value(`uptime_back_${clone}`), "0", why());
      assert.doesNotMatch(consoles[clone] ?? "", /booted/, `a restored guest does not boot again\n${why()}`);
    });

    it(`clone ${clone}: its own disk holds every tick before and after the snapshot, each once, at its sector`, () => {
      assert.ok(Number(value(`disk_ticks_${clone}`)) > Number(value("ticks_at_snapshot")), why());
      assert.equal(value(`disk_bad_${clone}`), "0", why());
    });

    it(`clone ${clone}: its network interface works on its own TAP (network_overrides) and its vsock at its own path (vsock_override)`, () => {
      assert.equal(value(`ping_${clone}`), "ok", why());
      assert.equal(value(`vsock-got_${clone}`), "hello", why());
    });
  }

  it(`clone ${UFFD_CLONE} loaded with mem_backend Uffd: flint uffd-handler served its pages (UFFDIO_COPY from the memory file) and ended with its VM`, () => {
    assert.equal(value("uffd_exit"), "0", why());
    const stats = JSON.parse(value("uffd_stats") ?? "{}") as { pagesCopied?: number; faults?: number; end?: string };
    assert.ok((stats.pagesCopied ?? 0) > 0, why());
    assert.ok((stats.faults ?? 0) >= (stats.pagesCopied ?? 0), why());
    assert.ok(stats.end === "closed" || stats.end === "exited", why());
  });

  it("a restored guest takes console input, reads its restored virtio-rng, and powers off; flint exits 0; no kernel warning anywhere", () => {
    assert.match(consoles.b ?? "", /flint-e2e: stopping/, why());
    assert.match(e2eValue("hwrng", "", consoles.b ?? "") ?? "", /^[0-9a-f]{32}$/, why());
    assert.equal(value("b_exit"), "0", why());
    for (const c of Object.values(consoles)) assert.doesNotMatch(c, /WARNING:|BUG:|Call Trace|soft lockup|rcu_.*stall/, why());
  });
});
