/**
 * Snapshots of a Machine on the real /dev/kvm, with a ring-3 guest whose
 * vCPUs each count in a register, in the x87 FPU (so its state is in the
 * saved XSAVE area) and in guest memory, and check on every step that the
 * three agree: a restore that lost a register, the FPU state or a page
 * shows as a counter that went back or as the guest's mismatch flag.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, describe, it } from "node:test";
import { COM1_PORT } from "../arch/x86_64/layout.js";
import { RING3_LAYOUT } from "../arch/x86_64/ring3.js";
import { assemble } from "../kvm/testing/assemble.js";
import { SnapshotError } from "../snapshot/state-file.js";
import { Machine, MachineError, type MachineResult } from "./machine.js";
import { until } from "./testing/pause-guest.js";

const dir = mkdtempSync(join(tmpdir(), "flint-snap-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Each vCPU's block: the register count, the FPU's count, the mismatch flag. */
const STRIDE = 64;
const COUNT = 0, FPU_COUNT = 8, MISMATCH = 16;
const block = (id: number) => RING3_LAYOUT.data + id * STRIDE;

/** RDI = vCPU id. A '.' on COM1 every 2^20 steps, so the console shows the guest going on. */
const program = assemble(`
     mov rbx, rdi
     shl rbx, 6
     add rbx, ${RING3_LAYOUT.data}
     xor r12, r12
     fninit
     fld1
     fldz
  1: inc r12
     fadd st(0), st(1)
     fld st(0)
     fistp qword ptr [rbx + ${FPU_COUNT}]
     mov [rbx + ${COUNT}], r12
     mov rax, [rbx + ${FPU_COUNT}]
     cmp rax, r12
     jne 2f
     test r12, 0xfffff
     jnz 1b
     mov dx, ${COM1_PORT}
     mov al, '.'
     out dx, al
     jmp 1b
  2: mov qword ptr [rbx + ${MISMATCH}], 1
  3: jmp 3b`, RING3_LAYOUT.code);

function counts(m: Machine): bigint[] {
  return m.vcpus.map((v) => m.memory.readU64(block(v.id) + COUNT));
}

function mismatches(m: Machine): bigint[] {
  return m.vcpus.map((v) => m.memory.readU64(block(v.id) + MISMATCH));
}

function consoleSink(): { stream: PassThrough; text(): string } {
  const stream = new PassThrough();
  let text = "";
  stream.on("data", (b: Buffer) => (text += b.toString("latin1")));
  return { stream, text: () => text };
}

async function runningVm(cpus: number): Promise<{ m: Machine; run: Promise<MachineResult> }> {
  const m = Machine.create({ cpus, memoryMib: 64, boot: { kind: "ring3", program } });
  const run = m.run();
  run.catch(() => undefined);
  await until("every vCPU to count", () => counts(m).every((c) => c > 0n));
  return { m, run };
}

/** Starts a restored machine; resolves (with its run()) once run() let it go (running or paused as asked). */
async function started(m: Machine): Promise<{ run: Promise<MachineResult> }> {
  const run = m.run();
  run.catch(() => undefined);
  await until("the restored VM to start", () => m.state !== "not-started");
  return { run };
}

async function stopped(m: Machine, running: Promise<MachineResult> | { run: Promise<MachineResult> }): Promise<MachineResult> {
  m.stop();
  return "run" in running ? running.run : running;
}

let n = 0;
function paths(): { statePath: string; memoryPath: string } {
  n++;
  return { statePath: join(dir, `vm${n}.snap`), memoryPath: join(dir, `vm${n}.mem`) };
}

describe("Machine snapshots (ring-3 guest on /dev/kvm)", () => {
  it("a paused VM saved and restored in a fresh KVM VM goes on counting from where it was, registers and FPU intact", async () => {
    const { m, run } = await runningVm(2);
    await m.pause();
    const at = counts(m);
    const p = paths();
    const w = await m.snapshot(p);
    assert.equal(m.state, "paused", "snapshot() leaves the VM paused");
    assert.equal(w.memoryBytes, 64 << 20);
    assert.ok(w.memoryDataBytes < 2 << 20, `only pages with data are written (${w.memoryDataBytes} bytes)`);
    assert.equal(statSync(p.memoryPath).size, 64 << 20);
    // The original goes on after its snapshot.
    await m.resume();
    await until("the original to go on", () => counts(m).every((c, i) => c > at[i]!));
    await stopped(m, run);

    const sink = consoleSink();
    const r = Machine.restore({ ...p, consoleOutput: sink.stream });
    assert.deepEqual(counts(r), at, "the restored memory holds the counts of the moment of the snapshot");
    const rrun = await started(r);
    assert.equal(r.state, "running");
    await until("the restored vCPUs to count past the snapshot", () => counts(r).every((c, i) => c > at[i]! + 3_000_000n));
    await until("a console byte from the restored guest", () => sink.text().includes("."));
    assert.deepEqual(mismatches(r), [0n, 0n], "no vCPU saw its FPU count differ from its register count");
    const result = await stopped(r, rrun);
    assert.equal(result.reason.kind, "poweroff");
  });

  it("clones restored into VMs made ahead (keepWarm's vms) count on from the snapshot, each in its own memory; another shape makes its own VM", async () => {
    const { m, run } = await runningVm(2);
    await m.pause();
    const p = paths();
    await m.snapshot(p);
    const at = counts(m);
    await stopped(m, run);
    Machine.keepWarm({ vcpuThreads: 0, deviceThreads: 0, vms: { cpus: 2, memoryMib: 64, count: 2 } });
    try {
      await until("two VMs made ahead", () => Machine.warmVmCount === 2);
      const a = Machine.restore(p);
      const b = Machine.restore(p);
      assert.match(a.summary, /into a VM made ahead/);
      assert.match(b.summary, /into a VM made ahead/);
      assert.deepEqual(counts(a), at, "the warm VM's memory is the snapshot's");
      const [ra, rb] = [await started(a), await started(b)];
      await until("both clones to count past the snapshot", () => [a, b].every((c) => counts(c).every((x, i) => x > at[i]! + 1_000_000n)));
      await a.pause();
      const frozen = counts(a);
      await until("b to go on while a is paused", () => counts(b).every((x, i) => x > frozen[i]! + 1_000_000n));
      assert.deepEqual(counts(a), frozen, "b's writes are not a's: each clone has its own copy-on-write pages");
      assert.deepEqual([...mismatches(a), ...mismatches(b)], [0n, 0n, 0n, 0n]);
      for (const [c, r] of [[a, ra], [b, rb]] as const) assert.equal((await stopped(c, r)).reason.kind, "poweroff");
      // A 1-vCPU snapshot does not fit the 2-vCPU VMs made ahead: it gets its own.
      const one = await runningVm(1);
      await one.m.pause();
      const q = paths();
      await one.m.snapshot(q);
      await stopped(one.m, one.run);
      const c = Machine.restore(q);
      assert.doesNotMatch(c.summary, /made ahead/);
      const rc = await started(c);
      await until("the 1-vCPU clone to count", () => counts(c)[0]! > 0n);
      await stopped(c, rc);
    } finally {
      Machine.keepWarm({ vcpuThreads: 0, deviceThreads: 0 });
    }
    assert.equal(Machine.warmVmCount, 0, "keepWarm without vms releases the VMs made ahead");
  });

  it("restores paused when asked: no vCPU runs until resume()", async () => {
    const { m, run } = await runningVm(1);
    await m.pause();
    const p = paths();
    await m.snapshot(p);
    const at = counts(m);
    await stopped(m, run);
    const r = Machine.restore({ ...p, paused: true });
    const rrun = await started(r);
    await until("paused", () => r.state === "paused");
    await new Promise((res) => setTimeout(res, 50));
    assert.deepEqual(counts(r), at, "nothing ran while paused");
    await r.resume();
    await until("counting after resume", () => counts(r)[0]! > at[0]!);
    assert.deepEqual(mismatches(r), [0n]);
    await stopped(r, rrun);
  });

  it("clones: two VMs restored from one snapshot run at once, each on its own copy of the pages, and the files stay as written", async () => {
    const { m, run } = await runningVm(1);
    await m.pause();
    const p = paths();
    await m.snapshot(p);
    const at = counts(m)[0]!;
    await stopped(m, run);
    const memBefore = readFileSync(p.memoryPath);
    const a = Machine.restore(p), b = Machine.restore(p);
    const [arun, brun] = [await started(a), await started(b)];
    await until("both clones to count", () => counts(a)[0]! > at + 1_000_000n && counts(b)[0]! > at + 1_000_000n);
    await a.pause();
    const aCount = counts(a)[0]!;
    await until("b to go on while a is paused", () => counts(b)[0]! > aCount + 1_000_000n);
    assert.equal(counts(a)[0], aCount, "b's writes are not in a's memory");
    assert.deepEqual([...mismatches(a), ...mismatches(b)], [0n, 0n]);
    await stopped(a, arun);
    await stopped(b, brun);
    assert.ok(readFileSync(p.memoryPath).equals(memBefore), "the memory file is never written by a restored VM");
  });

  it("a restored VM can be saved again, and that snapshot restores too", async () => {
    const { m, run } = await runningVm(1);
    await m.pause();
    const p1 = paths();
    await m.snapshot(p1);
    const at1 = counts(m)[0]!;
    await stopped(m, run);
    const r1 = Machine.restore(p1);
    const r1run = await started(r1);
    await until("r1 counting", () => counts(r1)[0]! > at1 + 1_000_000n);
    await r1.pause();
    const at = counts(r1);
    const p2 = paths();
    await r1.snapshot(p2);
    await stopped(r1, r1run);
    const r2 = Machine.restore(p2);
    assert.deepEqual(counts(r2), at);
    const r2run = await started(r2);
    await until("r2 counting", () => counts(r2)[0]! > at[0]!);
    assert.deepEqual(mismatches(r2), [0n]);
    await stopped(r2, r2run);
  });

  it("a VM with virtio devices its guest never drove saves them and restores them, with a clone's own disk", async () => {
    const disk = join(dir, "disk.img"), cloneDisk = join(dir, "clone-disk.img");
    writeFileSync(disk, Buffer.alloc(1 << 20));
    writeFileSync(cloneDisk, Buffer.alloc(1 << 20));
    const m = Machine.create({
      cpus: 1, memoryMib: 64, boot: { kind: "ring3", program },
      virtioDevices: [{ kind: "block", options: { path: disk } }, { kind: "rng", options: {} }, { kind: "balloon", options: { targetMib: 0 } }],
    });
    const run = m.run();
    run.catch(() => undefined);
    await until("counting", () => counts(m)[0]! > 0n);
    await m.pause();
    const p = paths();
    await m.snapshot(p);
    const at = counts(m)[0]!;
    await stopped(m, run);
    const r = Machine.restore({ ...p, virtioDevices: [{ kind: "block", options: { path: cloneDisk } }, { kind: "rng", options: {} }, { kind: "balloon", options: { targetMib: 0 } }] });
    assert.deepEqual(r.config.virtioDevices?.map((d) => d.kind), ["block", "rng", "balloon"]);
    const rrun = await started(r);
    await until("the clone counting", () => counts(r)[0]! > at);
    assert.equal(r.deviceStats().length, 3);
    await stopped(r, rrun);
    assert.throws(() => Machine.restore({ ...p, virtioDevices: [{ kind: "rng", options: {} }] }), (e: unknown) => e instanceof SnapshotError && /its virtio devices are block, rng, balloon/.test(e.message));
  });

  it("a drive given a new backing file (PATCH /drives) is saved with it, and the snapshot restores onto that file", async () => {
    const first = join(dir, "first.img"), second = join(dir, "second.img");
    writeFileSync(first, Buffer.alloc(1 << 20));
    writeFileSync(second, Buffer.alloc(3 << 20)); // another size: a restore onto the first file is refused
    const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, virtioDevices: [{ kind: "block", options: { path: first } }] });
    const run = m.run();
    run.catch(() => undefined);
    await until("counting", () => counts(m)[0]! > 0n);
    assert.deepEqual(await m.updateDriveBacking(0, second), { capacitySectors: (3 << 20) / 512 });
    await m.pause();
    const p = paths();
    await m.snapshot(p);
    const at = counts(m)[0]!;
    await stopped(m, run);
    assert.equal((m.config.virtioDevices![0]!.options as { path: string }).path, first, "the caller's config is left as given");
    const r = Machine.restore(p);
    assert.equal((r.config.virtioDevices![0]!.options as { path: string }).path, second);
    const rrun = await started(r);
    await until("the restored VM counting", () => counts(r)[0]! > at);
    await stopped(r, rrun);
  });

  it("snapshot() refuses a VM that is not paused", async () => {
    const { m, run } = await runningVm(1);
    await assert.rejects(m.snapshot(paths()), (e: unknown) => e instanceof MachineError && e.code === "ENOTPAUSED");
    await stopped(m, run);
    await assert.rejects(m.snapshot(paths()), (e: unknown) => e instanceof MachineError && e.code === "EENDED");
  });

  it("refuses a corrupted, truncated or foreign state file and a short memory file with one line, starting nothing", async () => {
    const { m, run } = await runningVm(1);
    await m.pause();
    const p = paths();
    await m.snapshot(p);
    await stopped(m, run);
    const good = readFileSync(p.statePath);
    const refused = (statePath: string, memoryPath = p.memoryPath): string => {
      try {
        Machine.restore({ statePath, memoryPath });
      } catch (e) {
        assert.ok(e instanceof SnapshotError, String(e));
        assert.doesNotMatch(e.message, /\n/);
        return e.code;
      }
      assert.fail("restored");
    };
    const variant = (name: string, bytes: Uint8Array) => {
      const path = join(dir, name);
      writeFileSync(path, bytes);
      return path;
    };
    const flipped = Buffer.from(good);
    flipped[Math.floor(flipped.length / 2)]! ^= 0x10;
    assert.equal(refused(variant("flipped.snap", flipped)), "ESNAPCHECKSUM");
    assert.equal(refused(variant("short.snap", good.subarray(0, good.length - 100))), "ESNAPTRUNCATED");
    const other = Buffer.from(good);
    other.writeUInt32LE(99, 8);
    assert.equal(refused(variant("v99.snap", other)), "ESNAPVERSION");
    assert.equal(refused(variant("text.snap", Buffer.from("{}"))), "ESNAPMAGIC");
    assert.equal(refused(join(dir, "missing.snap")), "ESNAPIO");
    const shortMem = join(dir, "short.mem");
    writeFileSync(shortMem, readFileSync(p.memoryPath));
    truncateSync(shortMem, (64 << 20) - 4096);
    assert.equal(refused(p.statePath, shortMem), "ESNAPMEMORY");
    // An intact file whose body is not a machine's.
    const { encodeStateFile } = await import("../snapshot/state-file.js");
    assert.equal(refused(variant("other-body.snap", encodeStateFile({ kind: "something-else" }))), "ESNAPBODY");
  });
});
