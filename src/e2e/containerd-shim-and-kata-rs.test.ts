/**
 * End-to-end: two more of Firecracker's clients drive flint's `firecracker`
 * executable with real Linux, one after the other in one outer VM of the
 * nested harness (one outer boot for both: CI time). Their facts are in
 * src/vmm/client-flows.test.ts's header; each flow here is that test's, with
 * a guest that reports what it sees on its console.
 *
 * firecracker-containerd's shim (runtime/service.go, noop_jailer.go,
 * drive_handler.go; facts only), in its debug mode (the VMM's stdout and
 * stderr piped to its log): `firecracker --api-sock firecracker.sock --id
 * VMID` in the shim's directory; the log and metrics FIFOs it makes and
 * leaves to its caller (PUT /logger, PUT /metrics); its default kernel
 * parameters; the root drive read-only; two container stub drives, named
 * by base32 of their file names and holding the agent's magic bytes and
 * the drive's id; the vsock "agent_api" with the CID left 0; InstanceStart;
 * then metadata (PUT, PATCH, GET /mmds), pause and resume (PATCH /vm), a
 * container's disk put on the first stub (PATCH /drives) and the stub put
 * back by its base name, GET /, and SIGKILL (there is no agent in this
 * guest to shut it down). The guest must boot from the read-only root,
 * find the stubs as the agent does (by their first bytes), count on through
 * the pause, read the container's disk, then the stub again.
 * The shim's kernel parameters hold `noapic`. On a hardware-reduced ACPI
 * platform (flint's FADT says so, as Firecracker's does since 1.8) Linux
 * sets up no legacy PIC, so an ACPI kernel told `noapic` has no interrupt
 * controller for its devices ("IRQ index 0 not found" for each virtio
 * device, then no root device): the shim's guest is flint's kernel built
 * without ACPI, as microVM kernels were before Firecracker had ACPI; it
 * boots on the MP table, the legacy PIC and the command line's devices.
 *
 * Kata's runtime-rs (crates/hypervisor/src/firecracker/): `firecracker
 * --api-sock <vm>/run/fc.sock`, stderr piped; PUT /boot-source with its
 * kernel parameters (root=/dev/vda1 on its partitioned image, plus
 * console=ttyS0 from the configured ones), /machine-config, /drives/rootfs
 * (read-only, not root), /drives/drive1..drive5 (empty files), /vsock
 * (vsock_id "root"), InstanceStart, each call retried every 10 ms up to 500
 * times, refused or not answered; a container disk with PATCH
 * /drives/drive1 {drive_id, path_on_host, rate_limiter: null}; SIGKILL.
 * The guest must boot from partition 1 of the rootfs drive, see six disks
 * and the vsock driver, and read the container disk.
 *
 * Both: no call refused, flint alive until the SIGKILL ends it, and no
 * kernel warning on the guest's console.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { buildKernel } from "../guest/kernel-build.js";
import { e2eValue, kernelTroubleLines, readTextIfAny } from "../harness/e2e-report.js";
import { buildSbinInitRootfs } from "../harness/guest-disks.js";
import { awaitDiskChangeSh, initPrologue, kataGuestInit, ROOT_DISKS_VSOCK_REPORT_SH } from "../harness/guest-scripts.js";
import { describeNestedRun, runNested, shellQuote as q, type NestedResult } from "../harness/nested.js";
import { base32NoPadding, installFirecrackerBinary } from "../vmm/testing/client-flows.js";

/** What each container disk holds at its start, for the guest to read back. */
const SHIM_MARKER = "containerd-task-1";
const RS_MARKER = "kata-rs-container-1";

/** firecracker-containerd's stub drives: their file names (CreateContainerStubs, a CreateVM with ContainerCount 2). */
const STUB_NAMES = ["ctrstub0", "ctrstub1"] as const;
/** The magic bytes the shim writes at the start of a stub drive, for its agent to find it. */
const STUB_MAGIC = [214, 244, 216, 245, 215, 177, 177, 177];

/** A stub drive's content: magic bytes, the drive id's length and the id, padded to a whole sector. */
function stubDrive(name: string): Buffer {
  const id = base32NoPadding(Buffer.from(name));
  const content = Buffer.concat([Buffer.from(STUB_MAGIC), Buffer.from([id.length]), Buffer.from(id)]);
  return Buffer.concat([content, Buffer.alloc(512 - content.length)]);
}

/** What the guest reports for a stub drive: its size in sectors, its magic bytes in hex and the id after them. */
function stubReport(name: string): string {
  return `1:${Buffer.from(STUB_MAGIC).toString("hex")}:${base32NoPadding(Buffer.from(name))}`;
}

/**
 * /sbin/init of the shim's guest (a root drive with busybox and no agent):
 * its root and disks, each stub as the agent reads it, a counter on the
 * console (`tick=N` twice a second), then the container's disk on vdb and
 * the stub back on it.
 */
const SHIM_GUEST_INIT = `${initPrologue("/bin")}mount -t tmpfs tmpfs /tmp
${ROOT_DISKS_VSOCK_REPORT_SH}# A stub drive as the agent reads it: sectors, magic bytes (hex), then the id (its length in the byte after them).
stub() {
  dd if=/dev/$1 of=/tmp/$1 bs=512 count=1 iflag=direct 2>/dev/null
  echo "$(cat /sys/block/$1/size):$(head -c 8 /tmp/$1 | od -An -tx1 | tr -d ' \\n'):$(dd if=/tmp/$1 bs=1 skip=9 count=$(od -An -tu1 -j8 -N1 /tmp/$1 | tr -d ' ') 2>/dev/null)"
}
echo "flint-e2e: stub_vdb=$(stub vdb)"
echo "flint-e2e: stub_vdc=$(stub vdc)"
( i=0; while :; do i=$((i + 1)); echo "tick=$i"; sleep 0.5; done ) &
echo "flint-e2e: ready=1"
${awaitDiskChangeSh("vdb", 1, "container_disk", SHIM_MARKER.length)}i=0
while [ $i -lt 900 ] && [ "$(cat /sys/block/vdb/size)" != "1" ]; do sleep 0.1; i=$((i + 1)); done
echo "flint-e2e: stub_back=$(stub vdb)"
while :; do sleep 1; done
`;

/** The start of both clients: arguments, the rig, `say` for report lines. */
const CLIENT_START = `
import { appendFileSync, closeSync, constants, existsSync, mkdirSync, openSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
const [flowsUrl, bin, kernel, rootfs, containerDisk, work, report, consoleOut] = process.argv.slice(2);
const { ClientSession, pollUntil, sleep, startVmm, waitExit, waitForBoot } = await import(flowsUrl);
const say = (k, v) => appendFileSync(report, "flint-e2e: " + k + "=" + v + "\\n");
const waitConsole = (text, ms) => pollUntil(vmm, 100, ms, async () => vmm.stdout().includes(text));
let vmm;
try {
`;

/** The end of both clients: both stop flint with SIGKILL; how it ended, the console and flint's stderr. */
const CLIENT_END = `
} catch (e) {
  say("client_error", JSON.stringify(e.message));
}
if (vmm) {
  say("alive_before_kill", vmm.hasExited() ? 0 : 1);
  vmm.child.kill("SIGKILL");
  const end = await waitExit(vmm, 15000);
  say("flint_exit", end ? (end.code ?? end.signal) : "none");
  writeFileSync(consoleOut, vmm.stdout());
  say("flint_stderr", JSON.stringify(vmm.stderr().trim().slice(-800)));
}
process.exit(0);
`;

/** firecracker-containerd's shim, step by step (inside the nested VM; `work` is the shim's directory). */
const SHIM_CLIENT = `${CLIENT_START}
  const [stubIds] = process.argv.slice(10).map((a) => JSON.parse(a));
  // buildVMConfiguration: the FIFOs (mkfifo 0700); the caller gets their paths and may read them or not.
  const logFifo = join(work, "fc-logs.fifo"), metricsFifo = join(work, "fc-metrics.fifo");
  execFileSync("mkfifo", ["-m", "0700", logFifo, metricsFifo]);
  // The noop jailer (debug mode: the VMM's output to the shim's log): paths relative to the shim's directory.
  vmm = startVmm(bin, ["--api-sock", "firecracker.sock", "--id", "fc-ctr-e2e"], { stdout: "pipe", stderr: "pipe", cwd: work });
  const sock = join(work, "firecracker.sock");
  const s = new ClientSession(sock, "go-swagger");
  // waitForSocket: the file, then GET /machine-config, every 10 ms.
  const up = await pollUntil(vmm, 10, 120000, async () => existsSync(sock) && (await s.probe("GET", "/machine-config")).status === 200);
  say("socket_up", up ? 1 : 0);
  // CreateLogFilesHandler: open each O_RDWR|O_CREATE|O_APPEND and close; BootstrapLoggingHandler.
  for (const f of [metricsFifo, logFifo]) closeSync(openSync(f, constants.O_RDWR | constants.O_CREAT | constants.O_APPEND));
  await s.call("PUT", "/logger", { log_path: logFifo, show_level: true, show_log_origin: false });
  await s.call("PUT", "/metrics", { metrics_path: metricsFifo });
  await s.call("PUT", "/machine-config", { mem_size_mib: 128, smt: false, vcpu_count: 1 });
  await s.call("GET", "/machine-config");
  await s.call("PUT", "/boot-source", { boot_args: "console=ttyS0 noapic reboot=k panic=1 pci=off nomodules rw", kernel_image_path: kernel });
  await s.call("PUT", "/drives/root_drive", { drive_id: "root_drive", is_read_only: true, is_root_device: true, path_on_host: rootfs });
  for (const [name, id] of Object.entries(stubIds)) {
    await s.call("PUT", "/drives/" + id, { drive_id: id, is_read_only: false, is_root_device: false, path_on_host: join(work, name) });
  }
  await s.call("PUT", "/vsock", { guest_cid: 0, uds_path: "firecracker.vsock", vsock_id: "agent_api" });
  await s.call("PUT", "/actions", { action_type: "InstanceStart" });
  // The agent would say the guest is up; here its console does.
  say("guest_ready", (await waitForBoot(vmm, "flint-e2e: ready=1", say, { limitMs: 300000 })) ? 1 : 0);
  // CreateVM's metadata, then UpdateVMMetadata and GetVMMetadata.
  await s.call("PUT", "/mmds", { task: { id: "t1", image: "busybox" } });
  await s.call("PATCH", "/mmds", { task: { id: "t2" } });
  say("mmds", JSON.stringify((await s.call("GET", "/mmds")).json));
  // PauseVM and ResumeVM: the guest's counter goes on from where it stopped.
  const lastTick = () => Math.max(0, ...[...vmm.stdout().matchAll(/^tick=(\\d+)/gm)].map((m) => Number(m[1])));
  await pollUntil(vmm, 100, 60000, async () => lastTick() >= 2);
  await s.call("PATCH", "/vm", { state: "Paused" });
  const paused = lastTick();
  await sleep(2000);
  await s.call("PATCH", "/vm", { state: "Resumed" });
  say("tick_at_pause", paused);
  say("ticks_after_resume", (await pollUntil(vmm, 100, 60000, async () => lastTick() >= paused + 4)) ? 1 : 0);
  say("tick_last", lastTick());
  // Reserve: UpdateGuestDrive puts the container's disk on the first stub; Release puts the stub back, by its base name.
  const [stub0, id0] = Object.entries(stubIds)[0];
  const attach = await s.call("PATCH", "/drives/" + id0, { drive_id: id0, path_on_host: containerDisk });
  // The agent mounts the disk once the PATCH was taken; waiting on a refused one would find nothing.
  if (attach.status === 204) await waitConsole("flint-e2e: container_disk=", 120000);
  await s.call("PATCH", "/drives/" + id0, { drive_id: id0, path_on_host: stub0 });
  await waitConsole("flint-e2e: stub_back=", 120000);
  // terminate(): isPaused, then the agent's Shutdown (none here), so forceTerminate: SIGKILL.
  say("state", (await s.call("GET", "/")).json?.state);
  say("refused", JSON.stringify(s.refused()));
  s.close();
${CLIENT_END}`;

/** Kata's runtime-rs, step by step (inside the nested VM; `work` is its vm_path). */
const RS_CLIENT = `${CLIENT_START}
  const run = join(work, "run"), root = join(work, "root");
  mkdirSync(run, { recursive: true });
  mkdirSync(root, { recursive: true });
  const sock = join(run, "fc.sock");
  vmm = startVmm(bin, ["--api-sock", sock], { stdout: "pipe", stderr: "pipe" });
  const s = new ClientSession(sock, "hyper");
  // request_with_retry: every 10 ms, 500 times, until the call is answered with success.
  let gaveUp = [];
  const call = async (method, path, body) => {
    for (let i = 0; i < 500; i++) {
      const r = await s.call(method, path, body).catch(() => undefined);
      if (r && r.status >= 200 && r.status < 300) return r;
      await sleep(10);
    }
    gaveUp.push(method + " " + path);
  };
  await call("PUT", "/boot-source", { kernel_image_path: kernel, boot_args: "reboot=k panic=1 systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket pci=off iommu=off root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 console=ttyS0" });
  await call("PUT", "/machine-config", { mem_size_mib: 256, vcpu_count: 2 });
  await call("PUT", "/drives/rootfs", { drive_id: "rootfs", path_on_host: rootfs, is_root_device: false, is_read_only: true });
  // The disk pool: empty placeholders, to be patched while the VM runs.
  for (let i = 1; i < 6; i++) {
    writeFileSync(join(root, "drive" + i), "");
    await call("PUT", "/drives/drive" + i, { drive_id: "drive" + i, path_on_host: join(root, "drive" + i), is_root_device: false, is_read_only: false });
  }
  await call("PUT", "/vsock", { guest_cid: 3, uds_path: join(work, "kata.hvsock"), vsock_id: "root" });
  await call("PUT", "/actions", { action_type: "InstanceStart" });
  say("guest_ready", (await waitForBoot(vmm, "flint-e2e: ready=1", say, { limitMs: 300000 })) ? 1 : 0);
  // hotplug_block_device for the container's rootfs (block index 1), no disk rate limits configured.
  await call("PATCH", "/drives/drive1", { drive_id: "drive1", path_on_host: containerDisk, rate_limiter: null });
  await waitConsole("flint-e2e: container_disk=", 120000);
  say("gave_up", JSON.stringify(gaveUp));
  say("refused", JSON.stringify([...new Set(s.refused())]));
  s.close();
${CLIENT_END}`;

/** A 1 MiB container disk that starts with `marker`. */
function containerDisk(path: string, marker: string): string {
  writeFileSync(path, Buffer.concat([Buffer.from(marker), Buffer.alloc((1 << 20) - marker.length)]));
  return path;
}

describe("firecracker-containerd's shim and Kata's runtime-rs drive flint with real Linux (nested harness)", { timeout: 30 * 60_000 }, () => {
  const share = mkdtempSync(join(tmpdir(), "flint-e2e-shim-rs-"));
  const files = {
    shimConsole: join(share, "shim-console.txt"), shimReport: join(share, "shim-report.txt"),
    rsConsole: join(share, "rs-console.txt"), rsReport: join(share, "rs-report.txt"),
  };
  const text = { shimConsole: "", shimReport: "", rsConsole: "", rsReport: "" };
  let nested: NestedResult | undefined;

  before(async () => {
    const kernel = await buildKernel(), noAcpiKernel = await buildKernel({ variant: "no-acpi" });
    const shimRoot = join(share, "shim-rootfs.ext4");
    buildSbinInitRootfs(shimRoot, SHIM_GUEST_INIT, { partitioned: false });
    const rsRoot = join(share, "kata-rootfs.img");
    buildSbinInitRootfs(rsRoot, kataGuestInit(RS_MARKER.length), { partitioned: true });
    const bin = installFirecrackerBinary(join(share, "bin"));
    const shimClient = join(share, "shim-client.mjs"), rsClient = join(share, "rs-client.mjs");
    writeFileSync(shimClient, SHIM_CLIENT);
    writeFileSync(rsClient, RS_CLIENT);
    const flows = new URL("../vmm/testing/client-flows.js", import.meta.url).href;
    const stubIds = Object.fromEntries(STUB_NAMES.map((n) => [n, base32NoPadding(Buffer.from(n))]));
    for (const n of STUB_NAMES) writeFileSync(join(share, n), stubDrive(n));
    const shimDisk = containerDisk(join(share, "shim-container.img"), SHIM_MARKER);
    const rsDisk = containerDisk(join(share, "rs-container.img"), RS_MARKER);
    // The shim's directory and Kata's vm_path on the nested VM's tmpfs (sockets and FIFOs cannot be on the 9p share).
    const shimDir = "/dev/shm/fc-ctr", rsDir = "/dev/shm/kata-rs";
    const client = (script: string, vmlinux: string, rootfs: string, disk: string, dir: string, report: string, console: string) =>
      `timeout 420 ${[process.execPath, script, flows, bin, vmlinux, rootfs, disk, dir, report, console].map(q).join(" ")}`;
    const command = [
      `mkdir -p ${shimDir} ${rsDir}`,
      `cp ${STUB_NAMES.map((n) => q(join(share, n))).join(" ")} ${shimDir}/`,
      `${client(shimClient, noAcpiKernel.vmlinux, shimRoot, shimDisk, shimDir, files.shimReport, files.shimConsole)} ${q(JSON.stringify(stubIds))} </dev/null >>${q(files.shimReport)} 2>&1`,
      `${client(rsClient, kernel.vmlinux, rsRoot, rsDisk, rsDir, files.rsReport, files.rsConsole)} </dev/null >>${q(files.rsReport)} 2>&1`,
    ].join("\n");
    const retryAfterTimeout = () => { for (const f of Object.values(files)) rmSync(f, { force: true }); };
    nested = await runNested({ command, timeoutMs: 20 * 60_000, shareDir: share, memoryMib: 2048, retryAfterTimeout, retryOnGuestCrash: Object.values(files) });
    for (const k of Object.keys(files) as (keyof typeof files)[]) text[k] = readTextIfAny(files[k]);
  });

  after(() => rmSync(share, { recursive: true, force: true }));

  const why = (flow: "shim" | "rs") => () =>
    `${describeNestedRun(nested)}\n--- client report ---\n${text[`${flow}Report`]}\n--- console ---\n${text[`${flow}Console`].slice(-2500)}`
    + `\n--- outer serial tail ---\n${nested?.serial.slice(-1500)}`;

  describe("firecracker-containerd's shim", () => {
    const value = (key: string) => e2eValue(key, text.shimReport, text.shimConsole);
    const whyShim = why("shim");

    it("every call of the shim is answered: set-up from a relative socket, FIFOs, stub drives, vsock with CID 0; metadata; pause and resume; UpdateGuestDrive", (t) => {
      t.diagnostic(describeNestedRun(nested));
      assert.equal(value("client_error"), undefined, whyShim());
      assert.equal(value("socket_up"), "1", whyShim());
      assert.equal(value("refused"), "[]", whyShim());
      // JSON merge patch: PATCH /mmds changes the id and keeps the image.
      assert.equal(value("mmds"), JSON.stringify({ task: { id: "t2", image: "busybox" } }), whyShim());
    });

    it("the guest boots from the read-only root drive and finds both stub drives by their magic bytes and ids", () => {
      assert.equal(value("guest_ready"), "1", whyShim());
      assert.match(value("root_mount") ?? "", /^\/dev\/root \/ ext4 ro[, ]/, whyShim());
      assert.equal(value("disks"), "3", whyShim());
      assert.equal(value("vsock_driver"), "1", whyShim());
      assert.equal(value("stub_vdb"), stubReport(STUB_NAMES[0]), whyShim());
      assert.equal(value("stub_vdc"), stubReport(STUB_NAMES[1]), whyShim());
    });

    it("the guest's counter goes on after pause and resume (PATCH /vm)", () => {
      assert.ok(Number(value("tick_at_pause")) >= 2, whyShim());
      assert.equal(value("ticks_after_resume"), "1", whyShim());
    });

    it("a container's disk on a stub (PATCH /drives) is read by the guest, and so is the stub put back by its base name", () => {
      assert.equal(value("container_disk"), SHIM_MARKER, whyShim());
      assert.equal(value("stub_back"), stubReport(STUB_NAMES[0]), whyShim());
    });

    it("flint runs until the shim's SIGKILL ends it, and the guest's kernel warned of nothing", () => {
      assert.equal(value("state"), "Running", whyShim());
      assert.equal(value("alive_before_kill"), "1", whyShim());
      assert.equal(value("flint_exit"), "SIGKILL", whyShim());
      assert.deepEqual(kernelTroubleLines(text.shimConsole), [], whyShim());
    });
  });

  describe("Kata's runtime-rs", () => {
    const value = (key: string) => e2eValue(key, text.rsReport, text.rsConsole);
    const whyRs = why("rs");

    it("every call is taken at once: boot source, machine, rootfs, the pool of five drives, vsock, InstanceStart, PATCH /drives", () => {
      assert.equal(value("client_error"), undefined, whyRs());
      assert.equal(value("gave_up"), "[]", whyRs());
      assert.equal(value("refused"), "[]", whyRs());
    });

    it("the guest boots from partition 1 of the read-only rootfs drive and sees six disks, the empty pool and the vsock", () => {
      assert.equal(value("guest_ready"), "1", whyRs());
      assert.match(value("root_mount") ?? "", /^\/dev\/root \/ ext4 ro[, ]/, whyRs());
      assert.equal(value("disks"), "6", whyRs());
      assert.equal(value("placeholder_size"), "0", whyRs());
      assert.equal(value("vsock_driver"), "1", whyRs());
    });

    it("the container disk patched onto drive1 is read by the guest", () => {
      assert.equal(value("container_disk"), RS_MARKER, whyRs());
    });

    it("flint runs until runtime-rs's SIGKILL ends it, and the guest's kernel warned of nothing", () => {
      assert.equal(value("alive_before_kill"), "1", whyRs());
      assert.equal(value("flint_exit"), "SIGKILL", whyRs());
      assert.deepEqual(kernelTroubleLines(text.rsConsole), [], whyRs());
    });
  });
});
