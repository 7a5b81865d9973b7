/** The Vm library from flint-style options: create, console, start, pause, resume, kill, on /dev/kvm with the ring-3 exit-loop guest. */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { buildExitLoopGuest, EXIT_LOOP_HELLO_BYTE, exitLoopCmdline } from "../guest/programs/exit-loop.js";
import { buildSerialFloodGuest } from "../guest/programs/testing/serial-flood.js";
import { buildVirtioBlkGuest, vblkCmdline } from "../guest/programs/virtio-blk-driver.js";
import { virtioSlot } from "../devices/virtio/virtio-set.js";
import { processDeviceThread } from "../devices/virtio/device-thread.js";
import { Vm, VmError } from "./vm.js";

const dir = mkdtempSync(join(tmpdir(), "flint-vm-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const disk = join(dir, "disk.img");
writeFileSync(disk, Buffer.alloc(1 << 20));

test("Vm.create takes flint-style options as Firecracker resources; the console stream carries the guest's output", async () => {
  const vm = await Vm.create({
    kernel: buildExitLoopGuest(), cmdline: exitLoopCmdline({ mode: "pio", count: 100, hello: true, halt: true }), cpus: 2, memoryMib: 64,
    drives: [{ id: "data", path: disk, readOnly: true, rateLimiter: { bandwidth: { size: 1e6, refillTimeMs: 1000 } } }],
    rng: true, balloon: { amountMib: 4 },
  });
  const cfg = vm.config();
  assert.deepEqual(cfg["machine-config"]?.vcpu_count, 2);
  assert.deepEqual(cfg.drives, [{ drive_id: "data", path_on_host: disk, is_root_device: false, is_read_only: true, rate_limiter: { bandwidth: { size: 1e6, refill_time: 1000 } } }]);
  assert.deepEqual(cfg.balloon, { amount_mib: 4, deflate_on_oom: true });
  let out = "";
  const hello = new Promise<void>((resolve) => vm.console.on("data", (b: Buffer) => {
    out += b.toString("latin1");
    if (out.includes(String.fromCharCode(EXIT_LOOP_HELLO_BYTE))) resolve();
  }));
  const states: string[] = [];
  vm.on("state", (s: string) => states.push(s));
  const events: Buffer[] = [];
  vm.on("console", (b) => events.push(b));
  await vm.start();
  await hello;
  await vm.pause();
  await vm.resume();
  await assert.rejects(vm.start(), (e: unknown) => e instanceof VmError && e.code === "EPREBOOTONLY");
  const result = await vm.kill();
  assert.equal(result?.reason.kind, "poweroff");
  assert.equal((await vm.exited).reason.kind, "poweroff");
  assert.deepEqual(states, ["Running", "Paused", "Running"]);
  assert.ok(Buffer.concat(events).includes(EXIT_LOOP_HELLO_BYTE), "the console event carries the guest's output too");
  assert.equal(vm.console.writableEnded, true, "the console stream ends with the VM");
});

test("Vms with deviceThread \"process\" run their devices on the process's one device thread, pause and resume there, and let go of them when killed", async () => {
  const vms = await Promise.all([0, 1].map(() => Vm.create({
    kernel: buildExitLoopGuest(), cmdline: exitLoopCmdline({ mode: "pio", count: 100, hello: true, halt: true }), cpus: 1, memoryMib: 64,
    drives: [{ id: "data", path: disk, readOnly: true }], rng: true, deviceThread: "process",
  })));
  try {
    const hellos = vms.map((vm) => new Promise<void>((resolve) => vm.console.on("data", (b: Buffer) => {
      if (b.includes(EXIT_LOOP_HELLO_BYTE)) resolve();
    })));
    for (const vm of vms) await vm.start();
    await Promise.all(hellos);
    assert.equal(processDeviceThread().devices.length, 4, "two VMs' block and rng devices on one thread");
    await vms[0]!.pause();
    assert.equal(vms[1]!.state, "Running");
    await vms[0]!.resume();
    const results = await Promise.all(vms.map((vm) => vm.kill()));
    for (const r of results) assert.equal(r?.reason.kind, "poweroff");
    assert.deepEqual(processDeviceThread().devices, []);
  } finally {
    for (const vm of vms) await vm.kill().catch(() => undefined);
  }
});

test("Vm.create refuses bad options with one line, before anything starts", async () => {
  await assert.rejects(Vm.create({ kernel: join(dir, "missing") }), /kernel file '.*missing' cannot be read/);
  await assert.rejects(Vm.create({ kernel: buildExitLoopGuest(), cpus: 0 }), /vcpu_count' must be at least 1/);
  await assert.rejects(Vm.create({ kernel: buildExitLoopGuest(), drives: [{ id: "a", path: join(dir, "nope.img") }] }), /Cannot attach drive: file '.*nope\.img' does not exist/);
  await assert.rejects(Vm.create({ kernel: buildExitLoopGuest(), memoryMib: 64, balloon: { amountMib: 128 } }), /balloon\.amount_mib' 128 is more than the guest's 64 MiB/);
});

test("PUT /serial: the console goes to a file, within its rate limit; its input is dropped; metrics count its bytes", async () => {
  const out = join(dir, "serial.log"), metrics = join(dir, "serial-metrics.json");
  writeFileSync(metrics, "");
  const vm = await Vm.create({ kernel: buildSerialFloodGuest(), cmdline: "flood", memoryMib: 32 });
  // 4000 bytes at once, then 20 bytes per millisecond: the flood guest writes far faster.
  vm.resources.putSerial({ serial_out_path: out, rate_limiter: { size: 4000, refill_time: 200 } });
  vm.setMetrics({ metrics_path: metrics });
  const sum = (k: string) => readFileSync(metrics, "utf8").split("\n").filter((l) => l !== "")
    .map((l) => JSON.parse(l) as { uart?: Record<string, number> }).reduce((n, l) => n + (l.uart?.[k] ?? 0), 0);
  await vm.start();
  try {
    assert.equal(vm.consoleInput(Buffer.from("ignored\n")), 8, "the input of a console on a file is taken and dropped");
    // Until the limiter has dropped something (FlushMetrics writes a line each time), for at most 200 rounds.
    for (let i = 0; i < 200 && sum("rate_limiter_dropped_bytes") === 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      vm.flushMetrics();
    }
  } finally {
    await vm.kill();
  }
  const text = readFileSync(out, "latin1");
  assert.match(text, /^abcdefghijklmnopqrstuvwxyz\nabc/, "the guest's output, from its first byte");
  assert.match(text, /^[a-z\n]+$/);
  assert.equal(sum("write_count"), text.length, "every byte written is in the file");
  assert.ok(sum("rate_limiter_dropped_bytes") > 0, "the flood went over the limit");
  assert.equal(sum("missed_write_count"), 0);
});

test("PUT /serial with a path that cannot be opened: InstanceStart fails with one line and the VM stays Not started", async () => {
  const vm = await Vm.create({ kernel: buildSerialFloodGuest(), memoryMib: 32 });
  vm.resources.putSerial({ serial_out_path: join(dir, "no-dir", "serial.log") });
  await assert.rejects(vm.start(), (e: unknown) => e instanceof VmError && e.code === "ESTART" && /^Start microvm error: Cannot open the serial output '.*serial\.log': ENOENT$/.test(e.message));
  assert.equal(vm.state, "Not started");
});

test("the guest-fault event names the device and what the guest did", async () => {
  // The virtio-blk driver guest's test mode ends with two reads past the end of its disk.
  const image = join(dir, "faults.img");
  writeFileSync(image, Buffer.alloc(1 << 20));
  const vm = await Vm.create({
    kernel: buildVirtioBlkGuest(), cmdline: vblkCmdline({ blkBase: virtioSlot(0).mmioBase, mode: "test", seed: 1 }), memoryMib: 64,
    drives: [{ id: "data", path: image }],
  });
  const faults: { device: string; message: string }[] = [];
  const two = new Promise<void>((resolve) => vm.on("guest-fault", (f) => { faults.push(f); if (faults.length === 2) resolve(); }));
  await vm.start();
  try {
    await Promise.race([two, vm.exited, new Promise((r) => setTimeout(r, 30_000).unref())]);
  } finally {
    await vm.kill();
  }
  assert.equal(faults.length, 2, JSON.stringify(faults));
  for (const f of faults) {
    assert.match(f.device, /virtio-block/);
    assert.match(f.message, /outside the disk/);
  }
});
