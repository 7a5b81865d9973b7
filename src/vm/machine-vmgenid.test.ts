/**
 * VMGenID on the real /dev/kvm with a ring-3 guest: a restored VM finds a
 * new generation id at VMGENID_ADDR, and the Generic Event Device's GSI was
 * raised before it ran. The guest shows both itself: it enables its local
 * APIC and routes IOAPIC pin GED_GSI to vector GED_VECTOR (the APIC pages are
 * user-accessible in the ring-3 identity map, and the in-kernel irqchip
 * decodes the accesses), then, with interrupts off, loops copying the id and
 * the local APIC's IRR word that holds GED_VECTOR into its data page. So the
 * interrupt stays pending in the IRR, where the guest reads it.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { GED_GSI, IOAPIC_START, LAPIC_START, VMGENID_ADDR, VMGENID_SIZE } from "../arch/x86_64/layout.js";
import { RING3_LAYOUT } from "../arch/x86_64/ring3.js";
import { assemble } from "../kvm/testing/assemble.js";
import { decodeStateFile, encodeStateFile, SnapshotError } from "../snapshot/state-file.js";
import { Machine, type MachineResult } from "./machine.js";
import { readMachineSnapshot } from "./machine-snapshot.js";
import { until } from "./testing/pause-guest.js";

const dir = mkdtempSync(join(tmpdir(), "flint-vmgenid-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The vector the guest routes the GED's pin to: bit 0 of the IRR word at APIC_IRR + 0x20. */
const GED_VECTOR = 0x40;
const APIC_SPIV = 0xf0, APIC_IRR = 0x200, APIC_SPIV_APIC_ENABLED = 0x100;
const IOAPIC_REGSEL = 0x00, IOAPIC_WINDOW = 0x10, IOAPIC_REDTBL = 0x10;
const irrWordOffset = APIC_IRR + (GED_VECTOR >> 5) * 0x10;
const irrBit = 1 << (GED_VECTOR & 31);
/** The guest's data: the id it read, the IRR word, a loop count. */
const D = RING3_LAYOUT.data;
const ID = 0, IRR = 16, LOOPS = 24;

const program = assemble(`
     mov rsi, ${LAPIC_START}
     mov dword ptr [rsi + ${APIC_SPIV}], ${APIC_SPIV_APIC_ENABLED | 0xff}
     mov rcx, ${IOAPIC_START}
     mov dword ptr [rcx + ${IOAPIC_REGSEL}], ${IOAPIC_REDTBL + 2 * GED_GSI}
     mov dword ptr [rcx + ${IOAPIC_WINDOW}], ${GED_VECTOR}
     mov dword ptr [rcx + ${IOAPIC_REGSEL}], ${IOAPIC_REDTBL + 2 * GED_GSI + 1}
     mov dword ptr [rcx + ${IOAPIC_WINDOW}], 0
     mov rbx, ${D}
  1: mov rax, [${VMGENID_ADDR}]
     mov [rbx + ${ID}], rax
     mov rax, [${VMGENID_ADDR + 8}]
     mov [rbx + ${ID + 8}], rax
     mov eax, dword ptr [rsi + ${irrWordOffset}]
     mov dword ptr [rbx + ${IRR}], eax
     inc qword ptr [rbx + ${LOOPS}]
     jmp 1b`, RING3_LAYOUT.code);

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const guestId = (m: Machine): string => hex(m.memory.read(D + ID, VMGENID_SIZE));
const memoryId = (m: Machine): string => hex(m.memory.read(VMGENID_ADDR, VMGENID_SIZE));
const gedPending = (m: Machine): boolean => (m.memory.readU32(D + IRR) & irrBit) !== 0;
const loops = (m: Machine): bigint => m.memory.readU64(D + LOOPS);

/** Starts `m`; resolves once it left "not-started", with its run() (wrapped: an async function returning a promise would wait for it). */
async function started(m: Machine): Promise<{ run: Promise<MachineResult> }> {
  const run = m.run();
  run.catch(() => undefined);
  await until("the VM to start", () => m.state !== "not-started");
  return { run };
}

/** Waits until the guest has looped `n` more times than now (so what it copied is current). */
async function looped(m: Machine, n = 1000n): Promise<void> {
  const at = loops(m);
  await until("the guest to loop on", () => loops(m) > at + n);
}

describe("VMGenID (ring-3 guest on /dev/kvm)", () => {
  const p = { statePath: join(dir, "vm.snap"), memoryPath: join(dir, "vm.mem") };
  let bootId = "";

  it("a VM with VMGenID has a random id at VMGENID_ADDR at boot, the GED interrupt not raised; its snapshot records where", async () => {
    const m = Machine.create({ cpus: 1, memoryMib: 64, boot: { kind: "ring3", program }, vmGenId: true });
    bootId = memoryId(m);
    assert.notEqual(bootId, "0".repeat(32));
    const { run } = await started(m);
    await looped(m);
    assert.equal(guestId(m), bootId, "the guest reads the id flint wrote");
    assert.equal(gedPending(m), false, "no GED interrupt at boot");
    await m.pause();
    await m.snapshot(p);
    m.stop();
    await run;
    const { snapshot } = readMachineSnapshot(p.statePath);
    assert.deepEqual(snapshot.legacy.vmgenid, { kind: "vmgenid", version: 1, guestAddress: VMGENID_ADDR, gsi: GED_GSI });
  });

  it("each clone restored from one snapshot gets its own new id before it runs and the GED interrupt", async () => {
    const clones = [Machine.restore(p), Machine.restore(p)];
    for (const c of clones) assert.equal(memoryId(c), bootId, "the memory file holds the old id until run()");
    const runs = await Promise.all(clones.map(started));
    for (const c of clones) {
      await looped(c);
      assert.notEqual(memoryId(c), bootId, "a new id");
      assert.equal(guestId(c), memoryId(c), "the guest reads the new id");
      assert.equal(gedPending(c), true, "the GED's GSI reached the guest's local APIC");
    }
    assert.notEqual(memoryId(clones[0]!), memoryId(clones[1]!), "clones differ");
    for (const c of clones) c.stop();
    await Promise.all(runs.map((r) => r.run));
  });

  it("a clone restored paused has its new id and pending interrupt when it resumes", async () => {
    const c = Machine.restore({ ...p, paused: true });
    const { run } = await started(c);
    await until("paused", () => c.state === "paused");
    assert.notEqual(memoryId(c), bootId, "the new id is written before any vCPU runs");
    await c.resume();
    await looped(c);
    assert.equal(guestId(c), memoryId(c));
    assert.equal(gedPending(c), true);
    c.stop();
    await run;
  });

  it("a snapshot without a VMGenID record (from before VMGenID) restores without one; a bad record is refused", async () => {
    const { body } = decodeStateFile(readFileSync(p.statePath));
    const old = structuredClone(body) as { legacy: Record<string, unknown> };
    delete old.legacy.vmgenid;
    const oldPath = join(dir, "old.snap");
    writeFileSync(oldPath, encodeStateFile(old));
    const c = Machine.restore({ statePath: oldPath, memoryPath: p.memoryPath });
    const { run } = await started(c);
    await looped(c);
    assert.equal(memoryId(c), bootId, "no new id");
    assert.equal(gedPending(c), false, "no interrupt");
    c.stop();
    await run;

    const bad = structuredClone(body) as { legacy: Record<string, unknown> };
    bad.legacy.vmgenid = { kind: "vmgenid", version: 9, guestAddress: VMGENID_ADDR, gsi: GED_GSI };
    const badPath = join(dir, "bad.snap");
    writeFileSync(badPath, encodeStateFile(bad));
    assert.throws(() => Machine.restore({ statePath: badPath, memoryPath: p.memoryPath }), (e: unknown) => e instanceof SnapshotError && e.code === "ESNAPBODY");
  });
});
