/**
 * Many VMs in one process (issue 10): eight Machines run at once, each with
 * one of every virtio device (block, net on its own TAP, vsock, rng,
 * balloon), and nothing one VM does reaches another: a guest that faults
 * over and over, one that triple-faults mid-run, and stops in random order
 * leave every other VM running, with its own console and its own counts;
 * with each VM's devices on a thread of its own, and with every VM's devices
 * on the process's one device thread (MachineConfig.deviceThread "process").
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import { RING3_LAYOUT } from "../arch/x86_64/ring3.js";
import { assemble } from "../kvm/testing/assemble.js";
import { processDeviceThread } from "../devices/virtio/device-thread.js";
import { Machine, type MachineResult } from "./machine.js";

const VMS = 8;
/** The VM whose guest triple-faults once the others are all running. */
const CRASHER = 3;
/** The VM whose guest also makes bad accesses (unclaimed MMIO, wide serial reads) on every pass. */
const FAULTER = 5;
const dir = mkdtempSync(join(tmpdir(), "flint-multi-vm-"));
const taps = Array.from({ length: VMS }, (_, i) => `flmv${process.pid % 10000}x${i}`);

before(() => {
  for (const tap of taps) execFileSync("ip", ["tuntap", "add", "dev", tap, "mode", "tap"], { stdio: ["ignore", "ignore", "pipe"] });
});

after(() => {
  for (const tap of taps) spawnSync("ip", ["link", "del", tap]);
  rmSync(dir, { recursive: true, force: true });
});

/**
 * VM `id`'s guest: prints its letter on the UART over and over; the crasher
 * waits for the byte the host sends it, then executes ud2 with no IDT.
 */
function guest(id: number): Uint8Array {
  const letter = `'${String.fromCharCode(65 + id)}'`;
  const crash = id === CRASHER ? "mov dx, 0x3fd\n in al, dx\n test al, 1\n jz 3f\n ud2\n 3:" : "";
  const fault = id === FAULTER ? "mov dword ptr [0xd0f00000], eax\n mov dx, 0x3f8\n in ax, dx" : "";
  return assemble(`
    1: mov dx, 0x3f8
       mov al, ${letter}
       out dx, al
       ${fault}
       ${crash}
       mov ecx, 200000
    2: dec ecx
       jnz 2b
       jmp 1b`, RING3_LAYOUT.code);
}

interface Running {
  id: number;
  vm: Machine;
  done: Promise<MachineResult>;
  text(): string;
}

function start(id: number, deviceThread: "vm" | "process"): Running {
  let text = "";
  const consoleOutput = new Writable({ write(chunk: Buffer, _e, cb) { text += chunk.toString("latin1"); cb(); } });
  const disk = join(dir, `disk${id}.img`);
  writeFileSync(disk, Buffer.alloc(1 << 20));
  const vm = Machine.create({
    cpus: 1, memoryMib: 64, boot: { kind: "ring3", program: guest(id) }, consoleOutput, deviceThread,
    virtioDevices: [
      { kind: "block", options: { path: disk, readOnly: false } },
      { kind: "net", options: { tap: taps[id]!, mac: `06:00:ac:10:00:${(id + 2).toString(16).padStart(2, "0")}` } },
      { kind: "vsock", options: { cid: 3, uds: join(dir, `v${id}.sock`) } },
      { kind: "rng", options: {} },
      { kind: "balloon", options: { targetMib: 0 } },
    ],
  });
  return { id, vm, done: vm.run(), text: () => text };
}

/** Resolves once every VM in `vms` has printed `more` further bytes. */
async function progress(vms: readonly Running[], more: number): Promise<void> {
  const from = vms.map((r) => r.text().length);
  while (vms.some((r, i) => r.text().length < from[i]! + more)) await new Promise((r) => setTimeout(r, 10));
}

/** A deterministic shuffle (a test must be repeatable): Fisher-Yates with a fixed LCG. */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let s = seed;
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

for (const deviceThread of ["vm", "process"] as const) {
  const where = deviceThread === "vm" ? "each VM's devices on a thread of its own" : "every VM's devices on the process's one device thread";
  test(`${VMS} VMs with every device in one process, ${where}: a crash, a faulting guest and stops in random order touch no other VM`, { timeout: 120_000 }, async () => {
    const all: Running[] = [];
    try {
      for (let id = 0; id < VMS; id++) all.push(start(id, deviceThread));
      if (deviceThread === "process") {
        await progress(all, 1);
        assert.equal(processDeviceThread().devices.length, VMS * 5, "every VM's devices are on the process's device thread");
      }
      await checkIsolation(all);
      if (deviceThread === "process") assert.deepEqual(processDeviceThread().devices, [], "it let go of every device");
    } finally {
      // A failed check must not leave VMs running (they would keep the test process alive).
      for (const r of all) r.vm.stop();
      await Promise.allSettled(all.map((r) => r.done));
    }
  });
}

async function checkIsolation(all: readonly Running[]): Promise<void> {
  await progress(all, 3);

  // One guest crashes; every other VM keeps printing.
  const crasher = all[CRASHER]!;
  crasher.vm.consoleInput(Buffer.from("x"));
  const crashed = await crasher.done;
  assert.equal(crashed.reason.kind, "reset");
  assert.ok(crashed.reason.kind === "reset" && crashed.reason.source === "triple-fault", JSON.stringify(crashed.reason));
  let running = all.filter((r) => r !== crasher);
  await progress(running, 3);

  // Stopped one by one in random order: after each stop, the rest still run.
  const results = new Map<number, MachineResult>([[CRASHER, crashed]]);
  for (const r of shuffled(running, 20261202)) {
    r.vm.stop();
    results.set(r.id, await r.done);
    running = running.filter((x) => x !== r);
    if (running.length > 0) await progress(running, 2);
  }

  for (const r of all) {
    const result = results.get(r.id)!;
    if (r.id !== CRASHER) assert.deepEqual(result.reason, { kind: "poweroff" }, `VM ${r.id}`);
    // Each console holds only its own guest's letter.
    const letter = String.fromCharCode(65 + r.id);
    assert.match(r.text(), new RegExp(`^${letter}+$`), `VM ${r.id}'s console`);
    // Every device of every VM started and never failed; only the faulting guest has faults.
    assert.deepEqual(result.virtio.map((d) => d.failures.length), [0, 0, 0, 0, 0], `VM ${r.id}'s devices`);
    assert.equal(result.unstoppedDevices.length, 0, `VM ${r.id}`);
    if (r.id === FAULTER) assert.ok(result.guestFaults > 0, `VM ${r.id} faulted`);
    else assert.equal(result.guestFaults, 0, `VM ${r.id}: ${JSON.stringify(result.guestFaultsByDevice)}`);
  }
}

test("with threads kept warm (Machine.keepWarm), VMs one after another start on booted spares and run", { timeout: 60_000 }, async () => {
  Machine.keepWarm({ vcpuThreads: 2, deviceThreads: 1 });
  try {
    for (let id = 0; id < 3; id++) {
      let text = "";
      const consoleOutput = new Writable({ write(chunk: Buffer, _e, cb) { text += chunk.toString("latin1"); cb(); } });
      // vCPU 0 (edi = 0) prints and powers off; vCPU 1 spins.
      const program = assemble(`test edi, edi\n jnz 1f\n mov dx, 0x3f8\n mov al, '${id}'\n out dx, al\n mov dx, 0x600\n mov al, 0x34\n out dx, al\n 1: jmp 1b`, RING3_LAYOUT.code);
      const r = await Machine.create({
        cpus: 2, memoryMib: 64, boot: { kind: "ring3", program }, consoleOutput,
        virtioDevices: [{ kind: "rng", options: {} }, { kind: "balloon", options: { targetMib: 0 } }],
      }).run();
      assert.deepEqual(r.reason, { kind: "poweroff" });
      assert.equal(text, String(id));
      assert.deepEqual(r.virtio.map((d) => d.failures), [[], []]);
    }
  } finally {
    Machine.keepWarm({ vcpuThreads: 0, deviceThreads: 0 });
  }
});
