/**
 * The library entry as a user imports it — the package's "exports", the
 * bundle scripts/bundle.mjs makes of `src/index.ts`, with its vCPU and device
 * threads bundled too: a VM built and steered through it alone — a ring-3 guest program on this host's KVM, a balloon
 * whose target is changed while the guest runs, and a stop from the host.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { test } from "node:test";
import { RING3_LAYOUT } from "./arch/x86_64/ring3.js";

/** The bundled library (dist/bundle/index.js), typed as its source. */
const flint = (await import(new URL("./bundle/index.js", import.meta.url).href)) as typeof import("./index.js");
import { assemble } from "./kvm/testing/assemble.js";

test("the entry exports the machine, its errors and the guest tooling", () => {
  for (const name of ["Machine", "MachineError", "BalloonControl", "BalloonError", "BlockError", "NetError", "VsockError", "KvmError", "BootError",
    "VirtioDeviceError", "runDoctor", "buildKernel", "buildInitramfs", "defaultInit", "parseGuestReport", "maxVcpus", "runUffdHandler", "parseUffdMappings"] as const) {
    assert.equal(typeof flint[name], "function", name);
  }
});

test("a VM from the library entry: balloon target changed at run time, then stopped by the host", async () => {
  const program = assemble("1: pause\n jmp 1b", RING3_LAYOUT.code);
  const vm = flint.Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, virtioDevices: [{ kind: "balloon", options: { targetMib: 4 } }] });
  assert.ok(vm.balloon instanceof flint.BalloonControl);
  const done = vm.run();
  // The guest has no driver: the target is kept for when one activates the device.
  assert.equal((await vm.balloon.setTarget(16)).targetMib, 16);
  const info = await vm.balloon.info();
  assert.deepEqual([info.targetMib, info.actualMib, info.statsUpdates], [16, 0, 0]);
  await assert.rejects(vm.balloon.setTarget(65), { code: "EBALLOONTARGET" });
  vm.stop();
  const result = await done;
  assert.equal(result.reason.kind, "poweroff");
  await assert.rejects(vm.balloon.info(), { code: "EVIRTIOREQUEST" });
});

test("a VM from the library entry pauses and resumes on the bundled vCPU and device threads", async () => {
  const program = assemble(`1: inc qword ptr [${RING3_LAYOUT.data}]\n jmp 1b`, RING3_LAYOUT.code);
  const vm = flint.Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, virtioDevices: [{ kind: "rng", options: {} }] });
  const done = vm.run();
  const count = () => vm.memory.readU64(RING3_LAYOUT.data);
  const until = async (what: string, fn: () => boolean) => {
    for (const end = Date.now() + 10_000; !fn(); await new Promise((r) => setTimeout(r, 2))) if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
  };
  await until("the guest to count", () => count() > 0n);
  await vm.pause();
  assert.equal(vm.state, "paused");
  const frozen = count();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(count(), frozen);
  await vm.resume();
  await until("the guest to count again", () => count() > frozen);
  vm.stop();
  assert.equal((await done).stats[0]!.parks, 1);
});

test("the bundled library runs its guest on the bundled vCPU thread and starts every device backend: console output, then ACPI power-off", async () => {
  const program = assemble("mov dx, 0x3f8\n mov al, 'k'\n out dx, al\n mov dx, 0x600\n mov al, 0x34\n out dx, al\n 1: jmp 1b", RING3_LAYOUT.code);
  let text = "";
  const consoleOutput = new Writable({ write(chunk: Buffer, _e, cb) { text += chunk.toString("latin1"); cb(); } });
  const dir = mkdtempSync(join(tmpdir(), "flint-bundle-"));
  try {
    const disk = join(dir, "disk.img");
    writeFileSync(disk, Buffer.alloc(1 << 20));
    const result = await flint.Machine.create({
      cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, consoleOutput,
      virtioDevices: [
        { kind: "block", options: { path: disk, readOnly: false } },
        { kind: "vsock", options: { cid: 3, uds: join(dir, "v.sock") } },
        { kind: "rng", options: {} },
        { kind: "balloon", options: { targetMib: 0 } },
      ],
    }).run();
    assert.deepEqual(result.reason, { kind: "poweroff" });
    assert.equal(text, "k");
    assert.deepEqual(result.virtio.map((d) => d.failures), [[], [], [], []]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a VM without a balloon has no balloon controls", () => {
  const vm = flint.Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program: assemble("hlt", RING3_LAYOUT.code) } });
  assert.equal(vm.balloon, undefined);
});
