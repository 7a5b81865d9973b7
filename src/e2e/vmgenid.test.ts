/**
 * End-to-end: VMGenID with real Linux, one level down in the nested harness.
 * flint A boots a guest (1 vCPU, so every read of /dev/urandom uses the same
 * per-CPU CRNG; virtio-rng, so the CRNG is ready and a VM-fork notification
 * reseeds it) whose vmgenid driver must be bound to the DSDT's VGEN, with the
 * Generic Event Device bound too. The guest waits until it has been up for
 * UPTIME_BEFORE_SNAPSHOT_S seconds, so that Linux's own time-based reseed
 * interval (uptime / 2 in early boot, drivers/char/random.c
 * crng_reseed_interval) is far longer than the rest of the test, has its
 * CRNG reseeded then (ioctl RNDRESEEDCRNG, so the next time-based reseed is
 * that interval away; without it one fell inside the test window and made
 * the clones differ even with no VMGenID) and says it is ready.
 * The client snapshots A and restores four clones at once from the one
 * snapshot; each is told on its console to wait (up to FORK_WAIT_S) for
 * the kernel's "crng reseeded due to virtual machine fork" and then to read
 * 16 bytes of /dev/urandom. The four must differ. Without a new id and the GED
 * interrupt on restore (break-test, README), nothing else reseeds the CRNG in
 * that window and all four print the same bytes. No kernel warning anywhere.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { buildInitramfs, parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { API_CLIENT_JS } from "../harness/api-client-script.js";
import { e2eValue, readTextIfAny } from "../harness/e2e-report.js";
import { initPrologue } from "../harness/guest-scripts.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";

const CLI = fileURLToPath(new URL("../bundle/main.js", import.meta.url));
const CLONES = ["b", "c", "d", "e"];
/** Guest uptime before the snapshot: Linux's reseed interval is then uptime/2 = 20 s. */
const UPTIME_BEFORE_SNAPSHOT_S = 40;
/** How long a clone waits for the VM-fork reseed before it reads /dev/urandom anyway. */
const FORK_WAIT_S = 5;

/** Reseeds the guest's CRNG now (random(4): RNDRESEEDCRNG, root only). */
const CRNG_RESEED_C = `#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <sys/ioctl.h>
int main(void) {
  int fd = open("/dev/urandom", O_RDONLY);
  if (fd < 0 || ioctl(fd, RNDRESEEDCRNG) != 0) { perror("crng-reseed"); return 1; }
  return 0;
}
`;

const hex16 = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
const GUEST_INIT = `${initPrologue()}echo "flint-guest: booted"
echo "flint-e2e: vmgenid-bound=$(ls /sys/bus/acpi/drivers/vmgenid 2>/dev/null | grep -c '^VMGENCTR:')"
echo "flint-e2e: ged-bound=$(ls /sys/bus/platform/drivers/acpi-ged 2>/dev/null | grep -c '^ACPI0013:')"
i=0; while [ $i -lt 600 ] && ! dmesg | grep -q "crng init done"; do sleep 0.1; i=$((i + 1)); done
echo "flint-e2e: crng-ready=$(dmesg | grep -c 'crng init done')"
while [ "$(cut -d. -f1 /proc/uptime)" -lt ${UPTIME_BEFORE_SNAPSHOT_S} ]; do sleep 1; done
/bin/crng-reseed || echo "flint-e2e: reseed-failed"
echo "flint-e2e: ready"
while read cmd; do
  case "$cmd" in
    r)
      i=0; while [ $i -lt ${FORK_WAIT_S * 10} ] && ! dmesg | grep -q "virtual machine fork"; do sleep 0.1; i=$((i + 1)); done
      echo "flint-e2e: forked=$(dmesg | grep -c 'crng reseeded due to virtual machine fork')"
      echo "flint-e2e: urandom=$(${hex16})"
      ;;
    stop) break ;;
  esac
done
dmesg | grep -E "WARNING:|BUG:|Call Trace" | sed 's/^/flint-e2e: dmesg-problem=/'
echo "flint-e2e: stopping"
poweroff -f
`;

/** Runs inside the nested VM. */
const CLIENT = `
import { spawn } from "node:child_process";
import { appendFileSync, existsSync, writeFileSync } from "node:fs";
import { request } from "node:http";
const [cli, kernel, initrd, work, report, consoles] = process.argv.slice(2);
const clones = ${JSON.stringify(CLONES)};
${API_CLIENT_JS}
const vms = {};
function startFlint(name) {
  const sock = work + "/" + name + ".sock";
  const fc = spawn(process.execPath, [cli, "--api-sock", sock, "--id", "genid-" + name], { stdio: ["pipe", "pipe", "pipe"] });
  const vm = { name, sock, fc, console: "", stderr: "" };
  fc.stdout.on("data", (b) => { vm.console += b; });
  fc.stderr.on("data", (b) => { vm.stderr += b; });
  vm.exited = new Promise((resolve) => fc.on("exit", (code, signal) => resolve(code ?? signal)));
  vms[name] = vm;
  return vm;
}
async function socketUp(vm) {
  for (let i = 0; i < 600 && !existsSync(vm.sock); i++) await sleep(100);
  await must(vm.sock, "GET", "/", undefined, 200);
}
// Whole lines only: a line still arriving must not be read half.
const line = (vm, key) => { const m = new RegExp("flint-e2e: " + key + "=([^\\r\\n]*)\\r?\\n").exec(vm.console); return m ? m[1] : undefined; };
try {
  const a = startFlint("a");
  await socketUp(a);
  await must(a.sock, "PUT", "/boot-source", { kernel_image_path: kernel, initrd_path: initrd, boot_args: "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init" });
  await must(a.sock, "PUT", "/machine-config", { vcpu_count: 1, mem_size_mib: 128 });
  await must(a.sock, "PUT", "/entropy", {});
  await must(a.sock, "PUT", "/actions", { action_type: "InstanceStart" });
  for (let i = 0; i < 3000 && !/flint-e2e: ready/.test(a.console); i++) await sleep(100);
  say("a_ready", /flint-e2e: ready/.test(a.console));
  await must(a.sock, "PATCH", "/vm", { state: "Paused" });
  const snap = work + "/vm.snap", mem = work + "/vm.mem";
  await must(a.sock, "PUT", "/snapshot/create", { snapshot_type: "Full", snapshot_path: snap, mem_file_path: mem });
  a.fc.kill("SIGKILL");
  await a.exited;
  const running = clones.map((name) => startFlint(name));
  await Promise.all(running.map(socketUp));
  await Promise.all(running.map(async (vm) => {
    await must(vm.sock, "PUT", "/snapshot/load", { snapshot_path: snap, mem_backend: { backend_type: "File", backend_path: mem }, resume_vm: true });
    vm.fc.stdin.write("r\\n");
  }));
  for (let i = 0; i < 1200 && running.some((vm) => line(vm, "urandom") === undefined); i++) await sleep(100);
  for (const vm of running) for (const k of ["forked", "urandom"]) say(k + "_" + vm.name, line(vm, k));
  for (const vm of running) vm.fc.stdin.write("stop\\n");
  await Promise.race([Promise.all(running.map((vm) => vm.exited)), sleep(60000)]);
  for (const vm of running) say("stopped_" + vm.name, /flint-e2e: stopping/.test(vm.console));
} catch (e) {
  say("client_error", JSON.stringify(e.message));
}
for (const vm of Object.values(vms)) {
  vm.fc.kill("SIGKILL");
  writeFileSync(consoles + "." + vm.name, vm.console);
  say("stderr_" + vm.name, JSON.stringify(vm.stderr.trim().slice(-600)));
}
process.exit(0);
`;

describe("VMGenID: four clones restored from one snapshot of real Linux each reseed their RNG (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-vmgenid-"));
  let report = "";
  const consoles: Record<string, string> = {};
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    const initrd = join(share, "initramfs.cpio.gz");
    const program = join(share, "crng-reseed");
    writeFileSync(`${program}.c`, CRNG_RESEED_C);
    execFileSync("gcc", ["-static", "-O2", "-o", program, `${program}.c`]);
    writeFileSync(initrd, buildInitramfs({ init: GUEST_INIT, files: [{ path: "/bin/crng-reseed", hostPath: program, mode: 0o755 }] }));
    const client = join(share, "client.mjs");
    writeFileSync(client, CLIENT);
    const reportFile = join(share, "report.txt"), consoleBase = join(share, "console");
    const names = ["a", ...CLONES];
    // Sockets and the snapshot files on the nested VM's tmpfs (the share is 9p, and the memory file is mapped).
    const command = `mkdir -p /dev/shm/genid && timeout 600 ${q(process.execPath)} ${q(client)} ${q(CLI)} ${q(kernel.vmlinux)} ${q(initrd)} /dev/shm/genid ${q(reportFile)} ${q(consoleBase)} </dev/null >>${q(reportFile)} 2>&1`;
    const files = [reportFile, ...names.map((n) => `${consoleBase}.${n}`)];
    const retryAfterTimeout = () => { for (const f of files) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 14 * 60_000, shareDir: share, memoryMib: 1536, retryAfterTimeout, retryOnGuestCrash: files });
    report = readTextIfAny(reportFile);
    for (const n of names) consoles[n] = readTextIfAny(`${consoleBase}.${n}`);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => `${describeNestedRun(nested)}\n--- client report ---\n${report}\n` +
    Object.entries(consoles).map(([n, c]) => `--- console ${n} ---\n${c.slice(-1500)}`).join("\n") + `\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;
  const value = (key: string) => e2eValue(key, report, "");

  it("the guest's vmgenid driver is bound to the DSDT's VGEN and the Generic Event Device to GED0; its CRNG is ready", () => {
    assert.equal(value("client_error"), undefined, why());
    assert.ok(parseGuestReport(consoles.a ?? "").booted, why());
    assert.equal(e2eValue("vmgenid-bound", consoles.a ?? ""), "1", why());
    assert.equal(e2eValue("ged-bound", consoles.a ?? ""), "1", why());
    assert.equal(e2eValue("crng-ready", consoles.a ?? ""), "1", why());
    assert.equal(value("a_ready"), "true", why());
    assert.equal(e2eValue("reseed-failed", consoles.a ?? ""), undefined, why());
  });

  it("each clone's kernel reseeds its CRNG for the VM fork, and /dev/urandom then gives different bytes in every clone", (t) => {
    const bytes = CLONES.map((c) => value(`urandom_${c}`));
    t.diagnostic(`urandom after restore: ${bytes.join(" ")}; VM-fork reseeds: ${CLONES.map((c) => value(`forked_${c}`)).join(" ")}`);
    for (const b of bytes) assert.match(b ?? "", /^[0-9a-f]{32}$/, why());
    assert.equal(new Set(bytes).size, CLONES.length, `four clones, four different reads: ${bytes.join(" ")}\n${why()}`);
    for (const c of CLONES) assert.equal(value(`forked_${c}`), "1", `clone ${c} was told of the VM fork\n${why()}`);
  });

  it("every clone powers off on request; no kernel warning on any console", () => {
    for (const c of CLONES) assert.equal(value(`stopped_${c}`), "true", why());
    for (const c of Object.values(consoles)) {
      assert.doesNotMatch(c, /WARNING:|BUG:|Call Trace|dmesg-problem=/, why());
    }
  });
});
