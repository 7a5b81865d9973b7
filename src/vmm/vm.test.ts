/** The Vm library from flint-style options: create, console, start, pause, resume, kill, on /dev/kvm with the ring-3 exit-loop guest. */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { buildExitLoopGuest, EXIT_LOOP_HELLO_BYTE, exitLoopCmdline } from "../guest/programs/exit-loop.js";
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
  await vm.start();
  await hello;
  await vm.pause();
  await vm.resume();
  await assert.rejects(vm.start(), (e: unknown) => e instanceof VmError && e.code === "EPREBOOTONLY");
  const result = await vm.kill();
  assert.equal(result?.reason.kind, "poweroff");
  assert.equal((await vm.exited).reason.kind, "poweroff");
  assert.deepEqual(states, ["Running", "Paused", "Running"]);
  assert.equal(vm.console.writableEnded, true, "the console stream ends with the VM");
});

test("Vm.create refuses bad options with one line, before anything starts", async () => {
  await assert.rejects(Vm.create({ kernel: join(dir, "missing") }), /kernel file '.*missing' cannot be read/);
  await assert.rejects(Vm.create({ kernel: buildExitLoopGuest(), cpus: 0 }), /vcpu_count' must be at least 1/);
  await assert.rejects(Vm.create({ kernel: buildExitLoopGuest(), drives: [{ id: "a", path: join(dir, "nope.img") }] }), /Cannot attach drive: file '.*nope\.img' does not exist/);
  await assert.rejects(Vm.create({ kernel: buildExitLoopGuest(), memoryMib: 64, balloon: { amountMib: 128 } }), /balloon\.amount_mib' 128 is more than the guest's 64 MiB/);
});
