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
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parseGuestReport } from "../guest/initramfs.js";
import { buildKernel } from "../guest/kernel-build.js";
import { explainClientE2e, runClientE2e } from "../harness/client-e2e.js";
import { API_CLIENT_JS, flintProcessesJs } from "../harness/api-client-script.js";
import { e2eValue } from "../harness/e2e-report.js";
import { initPrologue } from "../harness/guest-scripts.js";
import type { NestedResult } from "../harness/nested.js";

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
${flintProcessesJs("genid-")}
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
endFlints();
process.exit(0);
`;

describe("VMGenID: four clones restored from one snapshot of real Linux each reseed their RNG (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-vmgenid-"));
  let report = "";
  let consoles: Record<string, string> = {};
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel();
    ({ nested, report, consoles } = await runClientE2e({
      share, cli: CLI, kernel: kernel.vmlinux, init: GUEST_INIT, program: { name: "crng-reseed", source: CRNG_RESEED_C }, client: CLIENT,
      workDir: "/dev/shm/genid", names: ["a", ...CLONES], clientTimeoutS: 600, timeoutMs: 14 * 60_000, memoryMib: 1536,
    }));
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = () => explainClientE2e({ nested, report, consoles });
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
