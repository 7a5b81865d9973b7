/**
 * Snapshots through the Vm library and its API operations (createSnapshot,
 * loadSnapshot, Vm.snapshot, Vm.restore) on /dev/kvm with the PVH exit-loop
 * guest (it says hello on its console, then halts in ring 0: a vCPU in the
 * HLT state, which a restore must keep). Whether the guest goes on exactly
 * where it was is machine-snapshot.test.ts's and the nested e2e's business;
 * here: the pre- and post-boot rules, the states, what GET /vm/config says,
 * and that a refused load changes nothing.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { buildExitLoopGuest, EXIT_LOOP_HELLO_BYTE, exitLoopCmdline } from "../guest/programs/exit-loop.js";
import { rebaseMemoryFile } from "../snapshot/memory-file.js";
import { Machine } from "../vm/machine.js";
import { Vm, VmError } from "./vm.js";

const dir = mkdtempSync(join(tmpdir(), "flint-vm-snap-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const HELLO = String.fromCharCode(EXIT_LOOP_HELLO_BYTE);

async function helloVm(o: { trackDirtyPages?: boolean } = {}): Promise<Vm> {
  const vm = await Vm.create({ kernel: buildExitLoopGuest(), cmdline: exitLoopCmdline({ mode: "pio", count: 100, hello: true, halt: true }), cpus: 2, memoryMib: 64 });
  if (o.trackDirtyPages) vm.resources.putMachineConfig({ ...vm.resources.machineConfig(), track_dirty_pages: true });
  let out = "";
  const hello = new Promise<void>((resolve) => vm.console.on("data", (b: Buffer) => {
    out += b.toString("latin1");
    if (out.includes(HELLO)) resolve();
  }));
  await vm.start();
  await hello;
  return vm;
}

const code = (c: VmError["code"], message?: RegExp) => (e: unknown) => e instanceof VmError && e.code === c && (!message || message.test(e.message));

test("PUT /snapshot/create needs a started, paused VM; the snapshot loads in a new Vm, paused or running, with the same configuration", async () => {
  const fresh = new Vm();
  await assert.rejects(fresh.createSnapshot({ snapshot_path: join(dir, "x.snap"), mem_file_path: join(dir, "x.mem") }), code("EPOSTBOOTONLY"));
  const vm = await helloVm();
  const files = { snapshot_path: join(dir, "a.snap"), mem_file_path: join(dir, "a.mem") };
  await assert.rejects(vm.createSnapshot(files), code("EINVALID", /must be paused/));
  await vm.pause();
  await assert.rejects(vm.createSnapshot({ ...files, snapshot_type: "Diff" }),
    code("ENOTSUPPORTED", /^The requested operation is not supported: Diff snapshots are not allowed on uVMs with dirty page tracking disabled\.$/));
  await vm.createSnapshot(files);
  assert.equal(vm.state, "Paused");
  const config = vm.config();
  await vm.kill();

  const paused = new Vm();
  await paused.loadSnapshot({ snapshot_path: files.snapshot_path, mem_backend: { backend_type: "File", backend_path: files.mem_file_path } });
  assert.equal(paused.state, "Paused", "resume_vm defaults to false");
  assert.deepEqual(paused.config(), config, "GET /vm/config is what the snapshotted VM ran with");
  await assert.rejects(paused.loadSnapshot({ snapshot_path: files.snapshot_path, mem_file_path: files.mem_file_path }), code("EPREBOOTONLY"));
  await paused.resume();
  assert.equal(paused.state, "Running");
  await paused.kill();

  // The deprecated mem_file_path form, resumed at once.
  // As an idle `firecracker --api-sock` process: warmed up, it makes a bare KVM VM ahead, which the load takes.
  const running = new Vm();
  running.warmUp();
  await new Promise((r) => setImmediate(r));
  assert.equal(Machine.spareKvmVm, true, "a KVM VM made ahead");
  await running.loadSnapshot({ snapshot_path: files.snapshot_path, mem_file_path: files.mem_file_path, resume_vm: true });
  assert.equal(Machine.spareKvmVm, false, "taken by the load");
  assert.equal(running.state, "Running");
  const end = await running.kill();
  assert.equal(end?.reason.kind, "poweroff");
});

test("PUT /snapshot/create with snapshot_type Diff works with track_dirty_pages (machine-config or load), and the rebased Diff loads", async () => {
  const vm = await helloVm({ trackDirtyPages: true });
  await vm.pause();
  const full = { snapshot_path: join(dir, "full.snap"), mem_file_path: join(dir, "full.mem") };
  await vm.createSnapshot(full);
  await vm.resume();
  await vm.pause();
  const diff = { snapshot_path: join(dir, "diff.snap"), mem_file_path: join(dir, "diff.mem"), snapshot_type: "Diff" as const };
  await vm.createSnapshot(diff);
  await vm.kill();
  assert.ok(statSync(diff.mem_file_path).blocks * 512 < statSync(full.mem_file_path).blocks * 512 / 4, "the Diff is a few pages");
  rebaseMemoryFile(full.mem_file_path, diff.mem_file_path);

  // Loaded with track_dirty_pages, the VM can take a Diff again; GET /vm/config says tracking is on.
  const loaded = new Vm();
  await loaded.loadSnapshot({ snapshot_path: diff.snapshot_path, mem_file_path: full.mem_file_path, track_dirty_pages: true });
  assert.equal(loaded.config()["machine-config"]?.track_dirty_pages, true);
  await loaded.createSnapshot({ snapshot_path: join(dir, "diff2.snap"), mem_file_path: join(dir, "diff2.mem"), snapshot_type: "Diff" });
  await loaded.resume();
  assert.equal(loaded.state, "Running");
  await loaded.kill();

  const untracked = new Vm();
  await untracked.loadSnapshot({ snapshot_path: diff.snapshot_path, mem_file_path: full.mem_file_path });
  await assert.rejects(untracked.createSnapshot({ snapshot_path: join(dir, "diff3.snap"), mem_file_path: join(dir, "diff3.mem"), snapshot_type: "Diff" }), code("ENOTSUPPORTED", /dirty page tracking disabled/));
  await untracked.kill();
});

test("a load is refused once a boot resource was configured, and a refused load changes nothing", async () => {
  const vm = await helloVm();
  await vm.pause();
  const files = { snapshot_path: join(dir, "b.snap"), mem_file_path: join(dir, "b.mem") };
  await vm.createSnapshot(files);
  await vm.kill();

  const configured = new Vm();
  configured.resources.putMachineConfig({ vcpu_count: 1, mem_size_mib: 64 });
  await assert.rejects(configured.loadSnapshot({ ...files }), code("EPREBOOTONLY", /not allowed after configuring boot-specific resources/));

  const target = new Vm();
  const corrupt = join(dir, "corrupt.snap");
  writeFileSync(corrupt, "FLINTSNP but not really");
  await assert.rejects(target.loadSnapshot({ snapshot_path: corrupt, mem_file_path: files.mem_file_path }), code("ESTART", /^Load snapshot error: Cannot load/));
  await assert.rejects(target.loadSnapshot({ ...files, network_overrides: [{ iface_id: "eth0", host_dev_name: "tap9" }] }), code("ESTART", /no network interface 'eth0'/));
  await assert.rejects(target.loadSnapshot({ ...files, vsock_override: { uds_path: "/tmp/v.sock" } }), code("ESTART", /no vsock device/));
  // The Uffd backend with no page-fault handler at its socket: one line, nothing starts.
  const noHandler = join(dir, "no-handler.sock");
  await assert.rejects(target.loadSnapshot({ ...files, mem_backend: { backend_type: "Uffd", backend_path: noHandler }, mem_file_path: undefined }),
    code("ESTART", new RegExp(`^Load snapshot error: Cannot connect to the page-fault handler at '${noHandler}': no such socket \\(ENOENT\\)$`)));
  assert.equal(target.state, "Not started");
  assert.equal(target.resources.bootConfigured, false);
  await target.loadSnapshot({ ...files, resume_vm: true });
  assert.equal(target.state, "Running");
  await target.kill();
});

test("the library: vm.snapshot({ dir }) pauses, saves and resumes; Vm.restore(snap) starts clones", async () => {
  const vm = await helloVm();
  const snap = await vm.snapshot({ dir: join(dir, "lib") });
  assert.equal(vm.state, "Running", "a running VM is resumed after its snapshot");
  const clones = await Promise.all([0, 1, 2].map(() => Vm.restore(snap)));
  assert.deepEqual(clones.map((c) => c.state), ["Running", "Running", "Running"]);
  const pausedClone = await Vm.restore(snap, { paused: true });
  assert.equal(pausedClone.state, "Paused");
  for (const v of [vm, ...clones, pausedClone]) assert.equal((await v.kill())?.reason.kind, "poweroff");
  const kept = await helloVm();
  await kept.snapshot({ dir: join(dir, "lib2"), resume: false });
  assert.equal(kept.state, "Paused");
  await kept.kill();
});
