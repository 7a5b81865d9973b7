/**
 * Direct-KVM tests of the whole machine: vCPU worker threads, the buses and
 * the legacy devices, driven by ring-3 guest programs on this host's KVM.
 */
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { Writable } from "node:stream";
import { test } from "node:test";
import { assemble } from "../kvm/testing/assemble.js";
import { RING3_LAYOUT } from "../arch/x86_64/ring3.js";
import { KVM_CAP_TSC_DEADLINE_TIMER } from "../linux/abi.generated.js";
import { Kvm } from "../kvm/kvm.js";
import { Machine } from "./machine.js";

/** A Writable collecting everything, optionally slow (backpressure). */
function collector(delayMs = 0): { stream: Writable; text(): string } {
  const chunks: Buffer[] = [];
  const stream = new Writable({
    highWaterMark: 1024,
    write(chunk: Buffer, _enc, cb) {
      chunks.push(Buffer.from(chunk));
      if (delayMs) setTimeout(cb, delayMs);
      else cb();
    },
  });
  return { stream, text: () => Buffer.concat(chunks).toString("latin1") };
}

const COUNTER = RING3_LAYOUT.data;
/** ACPI PM1 sleep control: SLP_TYP = 5 (S5, bits 4:2) | SLP_EN (bit 5). */
const S5_POWEROFF = `mov dx, 0x600\n mov al, 0x34\n out dx, al`;

function ring3(source: string): Uint8Array {
  return assemble(source, RING3_LAYOUT.code);
}

/**
 * Each of `cpus` vCPUs (its id in edi) runs `prologue`, waits for its turn,
 * prints "cpuN\n"; vCPU 0 then waits for all and powers the VM off.
 */
function printInTurn(cpus: number, prologue = ""): Uint8Array {
  return ring3(`
       ${prologue}
    1: cmp dword ptr [${COUNTER}], edi   # wait for our turn
       jne 1b
       mov dx, 0x3f8
       mov al, 'c'
       out dx, al
       mov al, 'p'
       out dx, al
       mov al, 'u'
       out dx, al
       mov eax, edi
       add al, '0'
       out dx, al
       mov al, 10
       out dx, al
       lock inc dword ptr [${COUNTER}]
       test edi, edi
       jnz 3f
    2: cmp dword ptr [${COUNTER}], ${cpus}
       jne 2b
       ${S5_POWEROFF}
    3: jmp 3b`);
}

test("two vCPU threads run, print in turn on the UART, and ACPI S5 powers the VM off", async () => {
  const cpus = 2;
  const out = collector();
  const program = printInTurn(cpus);
  const m = Machine.create({ cpus, memoryMib: 64, boot: { kind: "ring3", program }, consoleOutput: out.stream });
  const r = await m.run();
  assert.deepEqual(r.reason, { kind: "poweroff" });
  assert.equal(out.text(), "cpu0\ncpu1\n");
  assert.equal(r.stats.length, cpus);
  assert.ok(r.stats.every((s) => s.ioExits >= 5));
});

test("the i8042 reset command ends the VM as a reset", async () => {
  const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program: ring3("mov al, 0xfe\n out 0x64, al\n 1: jmp 1b") } });
  const r = await m.run();
  assert.deepEqual(r.reason, { kind: "reset", source: "i8042" });
});

test("a device that cannot start fails run() before the guest runs, and the vCPU threads started beside it end", { timeout: 30_000 }, async () => {
  const program = ring3("mov dx, 0x3f8\n mov al, 'x'\n out dx, al\n 1: jmp 1b");
  const out = collector();
  const m = Machine.create({
    cpus: 2, memoryMib: 64, boot: { kind: "ring3", program }, consoleOutput: out.stream,
    virtioDevices: [{ kind: "block", options: { path: "/nonexistent/flint-disk.img", readOnly: true } }],
  });
  await assert.rejects(m.run(), (e: Error & { code?: string }) => e.code === "EVIRTIOBACKEND" && /flint-disk\.img/.test(e.message));
  assert.equal(out.text(), "");
});

test("deviceThread takes \"vm\" or \"process\" and nothing else", () => {
  const program = ring3(S5_POWEROFF);
  assert.throws(
    () => Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, deviceThread: "shared" as "vm" }),
    (e: Error & { code?: string }) => e.code === "EDEVICETHREAD" && e.message === 'Cannot create VM: deviceThread must be "vm" or "process", not "shared"',
  );
});

test("on the process's device thread, a VM whose device cannot start fails its run() alone; another VM's devices there keep working", { timeout: 30_000 }, async () => {
  // VM a prints while its rng runs on the process's thread; VM b's disk does not exist.
  const outA = collector();
  const a = Machine.create({
    cpus: 1, memoryMib: 64, boot: { kind: "ring3", program: ring3("1: mov dx, 0x3f8\n mov al, 'a'\n out dx, al\n mov ecx, 100000\n 2: dec ecx\n jnz 2b\n jmp 1b") },
    consoleOutput: outA.stream, deviceThread: "process", virtioDevices: [{ kind: "rng", options: {} }],
  });
  const runA = a.run();
  try {
    while (outA.text().length < 2) await new Promise((r) => setTimeout(r, 5));
    const b = Machine.create({
      cpus: 1, memoryMib: 64, boot: { kind: "ring3", program: ring3(S5_POWEROFF) }, deviceThread: "process",
      virtioDevices: [{ kind: "rng", options: {} }, { kind: "block", options: { path: "/nonexistent/flint-disk.img", readOnly: true } }],
    });
    await assert.rejects(b.run(), (e: Error & { code?: string }) => e.code === "EVIRTIOBACKEND" && /flint-disk\.img/.test(e.message));
    const seen = outA.text().length;
    while (outA.text().length < seen + 2) await new Promise((r) => setTimeout(r, 5));
    assert.equal(a.state, "running");
  } finally {
    a.stop();
  }
  const r = await runA;
  assert.deepEqual(r.virtio.map((d) => d.failures), [[]]);
  assert.deepEqual(r.unstoppedDevices, []);
});

test("the guest sees the TSC-deadline timer exactly when this host's KVM emulates it", async () => {
  const kvm = Kvm.open();
  const expected = kvm.checkExtension(KVM_CAP_TSC_DEADLINE_TIMER) > 0 ? "1" : "0";
  kvm.close();
  // CPUID.1:ECX bit 24 as '0' or '1' on the UART, then power off.
  const program = ring3(`mov eax, 1\n xor ecx, ecx\n cpuid\n shr ecx, 24\n and ecx, 1\n lea eax, [ecx + '0']\n mov dx, 0x3f8\n out dx, al\n ${S5_POWEROFF}\n 1: jmp 1b`);
  const out = collector();
  const r = await Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, consoleOutput: out.stream }).run();
  assert.deepEqual(r.reason, { kind: "poweroff" });
  assert.equal(out.text(), expected);
});

test("a triple fault ends the VM as a reset that says which vCPU faulted and where", async () => {
  // No IDT: the #UD cannot be delivered, nor the #DF after it.
  const program = ring3("nop\n ud2");
  const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program } });
  const r = await m.run();
  assert.equal(r.reason.kind, "reset");
  assert.ok(r.reason.kind === "reset" && r.reason.source === "triple-fault", JSON.stringify(r.reason));
  assert.match(r.reason.detail ?? "", new RegExp(`^vCPU 0: rip 0x${(RING3_LAYOUT.code + 1).toString(16)} rsp 0x[0-9a-f]+ .* cr3 0x[0-9a-f]+ `));
});

test("stop() from the main thread kicks spinning vCPUs out of KVM_RUN", async () => {
  // Each vCPU says it is running (one byte on the UART), then spins in the guest.
  let seen = 0;
  let bothRunning!: () => void;
  const running2 = new Promise<void>((resolve) => (bothRunning = resolve));
  const out = new Writable({
    write(chunk: Buffer, _e, cb) {
      seen += chunk.length;
      if (seen >= 2) bothRunning();
      cb();
    },
  });
  const m = Machine.create({
    cpus: 2, memoryMib: 64, consoleOutput: out,
    boot: { kind: "ring3", program: ring3("mov dx, 0x3f8\n mov al, 'r'\n out dx, al\n 1: jmp 1b") },
  });
  const running = m.run();
  await running2;
  m.stop({ kind: "poweroff" });
  const r = await running;
  assert.deepEqual(r.reason, { kind: "poweroff" });
  assert.ok(r.stats.every((s) => s.interrupted >= 1), JSON.stringify(r.stats));
});

test("serial output through a slow terminal arrives whole and in order", async () => {
  const bytes = 200_000;
  const out = collector(1);
  const program = ring3(`
       mov dx, 0x3f8
       xor ecx, ecx
    1: mov eax, ecx
       and eax, 63
       add al, 48          # '0' + (i % 64)
       out dx, al
       inc ecx
       cmp ecx, ${bytes}
       jne 1b
       ${S5_POWEROFF}
    2: jmp 2b`);
  const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, consoleOutput: out.stream });
  const r = await m.run();
  assert.deepEqual(r.reason, { kind: "poweroff" });
  const text = out.text();
  assert.equal(text.length, bytes);
  for (let i = 0; i < bytes; i++) {
    if (text.charCodeAt(i) !== 48 + (i % 64)) assert.fail(`byte ${i} is ${text.charCodeAt(i)}`);
  }
});

test("a guest touching unmapped MMIO or unclaimed ports does not disturb the VMM", async () => {
  const program = ring3(`
       mov eax, 0xe0000000
       mov ebx, dword ptr [rax]      # unclaimed MMIO reads as 0
       mov dword ptr [rax], ebx
       mov dx, 0x1234
       in al, dx                     # unclaimed port reads as 0xff
       cmp ebx, 0
       jne 9f
       cmp al, 0xff
       jne 9f
       ${S5_POWEROFF}
    9: mov al, 0xfe
       out 0x64, al
    1: jmp 1b`);
  const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program } });
  const r = await m.run();
  assert.deepEqual(r.reason, { kind: "poweroff" }, "unclaimed reads returned the expected values");
  assert.equal(r.stats[0]!.unhandledMmio, 2);
  assert.equal(r.stats[0]!.unhandledIo, 1);
});

test("console input reaches the guest through the UART receive path", async () => {
  const out = collector();
  const program = ring3(`
       mov dx, 0x3fd          # LSR
    1: in al, dx
       test al, 1             # UART_LSR_DR
       jz 1b
       mov dx, 0x3f8
       in al, dx              # RBR
       cmp al, 'a'
       jb 2f
       cmp al, 'z'
       ja 2f
       sub al, 32             # upper-case letters
    2: out dx, al             # THR
       cmp al, 10
       mov dx, 0x3fd
       jne 1b
       ${S5_POWEROFF}
    3: jmp 3b`);
  const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, consoleOutput: out.stream });
  const running = m.run();
  let input = new TextEncoder().encode("hello, flint\n");
  while (input.length) {
    input = input.subarray(m.consoleInput(input));
    if (input.length) await m.consoleWritable();
  }
  const r = await running;
  assert.deepEqual(r.reason, { kind: "poweroff" });
  assert.equal(out.text(), "HELLO, FLINT\n");
});

test("prestart's bare KVM VM is made in the next turn, taken by the next VM that makes its own, which runs; a vCPU count the host cannot run still fails (ECPUS) and closes it", async () => {
  const fds = () => readdirSync("/proc/self/fd").length;
  const nextTurn = () => new Promise((r) => setImmediate(r));
  Machine.prestart({ vcpuThreads: 0, deviceThreads: 0, kvmVm: true });
  assert.equal(Machine.spareKvmVm, false, "not made in the caller's turn");
  await nextTurn();
  assert.equal(Machine.spareKvmVm, true);
  const out = collector();
  const m = Machine.create({ cpus: 2, memoryMib: 64, boot: { kind: "ring3", program: printInTurn(2) }, consoleOutput: out.stream });
  assert.equal(Machine.spareKvmVm, false, "taken");
  assert.deepEqual((await m.run()).reason, { kind: "poweroff" });
  assert.equal(out.text(), "cpu0\ncpu1\n");

  const before = fds();
  Machine.prestart({ vcpuThreads: 0, deviceThreads: 0, kvmVm: true });
  await nextTurn();
  assert.equal(fds(), before + 2, "/dev/kvm and the VM");
  assert.throws(() => Machine.create({ cpus: 100_000, memoryMib: 64, boot: { kind: "ring3", program: printInTurn(2) } }), (e: Error & { code?: string }) => e.code === "ECPUS");
  assert.equal(Machine.spareKvmVm, false);
  assert.equal(fds(), before, "the spare's fds closed");
  // A request taken by a VM made in the same turn makes nothing later.
  Machine.prestart({ vcpuThreads: 0, deviceThreads: 0, kvmVm: true });
  const n = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program: ring3("mov al, 0xfe\n out 0x64, al\n 1: jmp 1b") } });
  await nextTurn();
  assert.equal(Machine.spareKvmVm, false);
  assert.deepEqual((await n.run()).reason, { kind: "reset", source: "i8042" });
});

test("a new VM takes a VM made ahead (keepWarm's vms) of its shape and runs in fresh memory; dirty tracking or another shape makes its own", async () => {
  const cpus = 2;
  // Each vCPU checks that a word it owns starts at zero ('!' if not) and marks it, then prints in its turn.
  const program = printInTurn(cpus, `
       mov eax, dword ptr [${COUNTER} + 64 + edi * 4]
       test eax, eax
       jz 5f
       mov dx, 0x3f8
       mov al, '!'
       out dx, al
    5: mov dword ptr [${COUNTER} + 64 + edi * 4], 0x5a5a`);
  const until = async (what: string, fn: () => boolean) => {
    for (let i = 0; i < 500 && !fn(); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(fn(), what);
  };
  Machine.keepWarm({ vcpuThreads: 0, deviceThreads: 0, vms: { cpus, memoryMib: 64, count: 2 } });
  try {
    await until("two VMs made ahead", () => Machine.warmVmCount === 2);
    for (let round = 0; round < 2; round++) {
      const out = collector();
      const m = Machine.create({ cpus, memoryMib: 64, boot: { kind: "ring3", program }, consoleOutput: out.stream });
      assert.match(m.summary, /in a VM made ahead/);
      assert.deepEqual((await m.run()).reason, { kind: "poweroff" });
      assert.equal(out.text(), "cpu0\ncpu1\n", "each vCPU found its word zero and printed in turn");
    }
    for (const config of [{ memoryMib: 64, trackDirtyPages: true }, { memoryMib: 128 }]) {
      await until("a VM made ahead again", () => Machine.warmVmCount > 0);
      const before = Machine.warmVmCount;
      const out = collector();
      const m = Machine.create({ ...config, cpus, boot: { kind: "ring3", program }, consoleOutput: out.stream });
      assert.doesNotMatch(m.summary, /made ahead/);
      assert.equal(Machine.warmVmCount, before, "none taken");
      assert.deepEqual((await m.run()).reason, { kind: "poweroff" });
      assert.equal(out.text(), "cpu0\ncpu1\n");
    }
  } finally {
    Machine.keepWarm({ vcpuThreads: 0, deviceThreads: 0 });
  }
});
