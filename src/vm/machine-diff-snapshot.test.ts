/**
 * Diff snapshots on the real /dev/kvm: a ring-3 guest counts in a register
 * and writes its count to a page that moves every 2^16 steps (so it dirties
 * several pages between snapshots), and a device thread (a worker attached
 * to the VM's memory, as a virtio device's thread is) writes guest memory
 * too. A Diff must hold both kinds of write, and a base + Diff merged with
 * rebaseMemoryFile must restore to exactly the VM of the Diff's moment.
 */
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { RING3_LAYOUT } from "../arch/x86_64/ring3.js";
import { assemble } from "../kvm/testing/assemble.js";
import type { MemoryDescriptor } from "../memory/guest-memory.js";
import { rebaseMemoryFile } from "../snapshot/memory-file.js";
import { Machine, MachineError, type MachineResult } from "./machine.js";
import { until } from "./testing/pause-guest.js";

const dir = mkdtempSync(join(tmpdir(), "flint-diff-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const COUNT = RING3_LAYOUT.data;
/** The guest writes its count to page (count >> 16) & 31 of this area. */
const MOVING = 0x200000;
/** Where the device thread writes. */
const DEVICE_AREA = 0x400000;

const program = assemble(`
     xor r12, r12
  1: inc r12
     mov [${COUNT}], r12
     mov rax, r12
     shr rax, 16
     and rax, 31
     shl rax, 12
     mov [rax + ${MOVING}], r12
     jmp 1b`, RING3_LAYOUT.code);

const count = (m: Machine) => m.memory.readU64(COUNT);

/** Writes `bytes` at `address` of the VM's memory from another thread, as a device thread does (GuestMemory.attach). */
async function deviceWrite(desc: MemoryDescriptor, address: number, bytes: Uint8Array): Promise<void> {
  const url = new URL("../memory/guest-memory.js", import.meta.url).href;
  const w = new Worker(`
    const { workerData, parentPort } = require("node:worker_threads");
    import(workerData.url).then(({ GuestMemory }) => {
      GuestMemory.attach(workerData.desc).write(workerData.address, workerData.bytes);
      parentPort.postMessage("done");
    });`, { eval: true, workerData: { url, desc, address, bytes } });
  await new Promise<void>((resolve, reject) => { w.once("message", () => resolve()); w.once("error", reject); });
  await w.terminate();
}

/** A copy of every region's bytes. */
function memoryCopy(m: Machine): Buffer[] {
  return m.memory.regions.map((r) => Buffer.from(r.bytes));
}

async function stopped(m: Machine, run: Promise<MachineResult>): Promise<void> {
  m.stop();
  await run;
}

describe("Diff snapshots (ring-3 guest on /dev/kvm)", () => {
  it("a Diff holds only the pages the guest and a device thread wrote since the Full, and base + Diff restores the VM of the Diff exactly", async (t) => {
    const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, trackDirtyPages: true });
    const run = m.run();
    run.catch(() => undefined);
    // 4 MiB of data that the Diff must not carry again (a booted guest's memory).
    await deviceWrite(m.memory.describe(), 0x1000000, new Uint8Array(4 << 20).fill(0x5a));
    await until("the guest to count", () => count(m) > 0n);
    await m.pause();
    const full = { statePath: join(dir, "full.snap"), memoryPath: join(dir, "full.mem") };
    const fw = await m.snapshot(full);
    assert.equal(fw.type, "full");

    await m.resume();
    const resumedAt = count(m);
    await until("the guest to move its page a few times", () => count(m) > resumedAt + (8n << 16n));
    await m.pause();
    // A device writes guest memory while the vCPUs are parked: only flint's map can know it.
    const deviceBytes = new Uint8Array(3 * 4096 + 100).map((_, i) => (i * 7 + 1) & 0xff);
    await deviceWrite(m.memory.describe(), DEVICE_AREA + 123, deviceBytes);
    const diff = { statePath: join(dir, "diff.snap"), memoryPath: join(dir, "diff.mem"), type: "diff" as const };
    const dw = await m.snapshot(diff);
    const atDiff = count(m);
    const memAtDiff = memoryCopy(m);
    t.diagnostic(`Full memory file: ${fw.memoryDataBytes} bytes of data; Diff: ${dw.memoryDataBytes} bytes of data (files ${fw.memoryBytes} bytes each)`);
    assert.equal(dw.type, "diff");
    assert.equal(statSync(diff.memoryPath).size, 64 << 20, "a Diff's memory file has the full layout");
    assert.ok(fw.memoryDataBytes >= 4 << 20, `the Full holds the 4 MiB (${fw.memoryDataBytes})`);
    assert.ok(dw.memoryDataBytes <= 64 * 4096, `the Diff holds a few pages (${dw.memoryDataBytes} bytes)`);
    assert.ok(statSync(diff.memoryPath).blocks * 512 < fw.memoryDataBytes / 4, "and takes that little room on disk");
    // The pages the Diff must have: the counter's, the moving ones written since the Full, the device's four.
    const diffMem = readFileSync(diff.memoryPath);
    const page = (buf: Buffer, a: number) => buf.subarray(a & ~0xfff, (a & ~0xfff) + 4096);
    assert.ok(page(diffMem, COUNT).equals(page(memAtDiff[0]!, COUNT)), "the guest's counter page");
    for (let k = 0; k < 4; k++) {
      assert.ok(page(diffMem, DEVICE_AREA + k * 4096).equals(page(memAtDiff[0]!, DEVICE_AREA + k * 4096)), `the device's page ${k}`);
    }
    assert.ok(page(diffMem, MOVING + Number((atDiff >> 16n) & 31n) * 4096).readBigUInt64LE(0) > 0n, "the page the guest wrote last");
    await stopped(m, run);

    // rebase: the base becomes the memory of the Diff's moment.
    const merged = join(dir, "merged.mem");
    copyFileSync(full.memoryPath, merged);
    const rb = rebaseMemoryFile(merged, diff.memoryPath);
    assert.equal(rb.copiedBytes, dw.memoryDataBytes);
    const r = Machine.restore({ statePath: diff.statePath, memoryPath: merged, paused: true });
    const rrun = r.run();
    rrun.catch(() => undefined);
    await until("paused", () => r.state === "paused");
    assert.equal(count(r), atDiff, "the restored guest's count is the Diff's");
    r.memory.regions.forEach((reg, i) => assert.ok(Buffer.from(reg.bytes).equals(memAtDiff[i]!), `region ${i} equals the VM's memory at the Diff, byte for byte`));
    await r.resume();
    await until("the restored guest to count on from the Diff", () => count(r) > atDiff + 1_000_000n);
    await stopped(r, rrun);
  });

  it("a second Diff holds only what changed since the first, and base + Diff 1 + Diff 2 restores the second", async () => {
    const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, trackDirtyPages: true });
    const run = m.run();
    run.catch(() => undefined);
    await until("the guest to count", () => count(m) > 0n);
    await m.pause();
    // A Diff of a VM since its creation: everything written since boot, holes read as zero (restorable as it is).
    const d0 = { statePath: join(dir, "d0.snap"), memoryPath: join(dir, "d0.mem"), type: "diff" as const };
    await m.snapshot(d0);
    await m.resume();
    await m.pause();
    await deviceWrite(m.memory.describe(), DEVICE_AREA, new Uint8Array(4096).fill(1));
    const d1 = { statePath: join(dir, "d1.snap"), memoryPath: join(dir, "d1.mem"), type: "diff" as const };
    await m.snapshot(d1);
    await m.resume();
    await m.pause();
    await deviceWrite(m.memory.describe(), DEVICE_AREA + 4096, new Uint8Array(4096).fill(2));
    const d2 = { statePath: join(dir, "d2.snap"), memoryPath: join(dir, "d2.mem"), type: "diff" as const };
    const w2 = await m.snapshot(d2);
    const at = count(m);
    const mem = memoryCopy(m);
    await stopped(m, run);
    assert.equal(readFileSync(d2.memoryPath).subarray(DEVICE_AREA, DEVICE_AREA + 4096).every((b) => b === 0), true, "the first device page is not in the second Diff (a hole)");
    assert.ok(w2.memoryDataBytes <= 40 * 4096, `at most the counter, the 32 moving pages and the device page (${w2.memoryDataBytes} bytes)`);
    const merged = join(dir, "merged2.mem");
    copyFileSync(d0.memoryPath, merged);
    rebaseMemoryFile(merged, d1.memoryPath);
    rebaseMemoryFile(merged, d2.memoryPath);
    const r = Machine.restore({ statePath: d2.statePath, memoryPath: merged, paused: true });
    const rrun = r.run();
    rrun.catch(() => undefined);
    await until("paused", () => r.state === "paused");
    assert.equal(count(r), at);
    r.memory.regions.forEach((reg, i) => assert.ok(Buffer.from(reg.bytes).equals(mem[i]!), `region ${i} byte for byte`));
    await stopped(r, rrun);
  });

  it("a Diff is refused without dirty page tracking, with Firecracker's message", async () => {
    const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program } });
    const run = m.run();
    run.catch(() => undefined);
    await until("the guest to count", () => count(m) > 0n);
    await m.pause();
    await assert.rejects(m.snapshot({ statePath: join(dir, "x.snap"), memoryPath: join(dir, "x.mem"), type: "diff" }),
      (e: unknown) => e instanceof MachineError && e.code === "ENOTTRACKED" && /Diff snapshots are not allowed on uVMs with dirty page tracking disabled/.test(e.message));
    await stopped(m, run);
  });
});
