import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { GED_GSI, MiB, VMGENID_ADDR, VMGENID_SIZE } from "../../arch/x86_64/layout.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { decodeStateFile, encodeStateFile } from "../../snapshot/state-file.js";
import { FakeContext } from "../testing/fake-context.js";
import { VmGenId, VmGenIdError } from "./vmgenid.js";

function withMemory(fn: (mem: GuestMemory) => void): void {
  const mem = GuestMemory.create([{ guestBase: 0, size: 2 * MiB }]);
  try { fn(mem); } finally { mem.dispose(); }
}

const isError = (code: string) => (e: unknown) => e instanceof VmGenIdError && e.code === code && !e.message.includes("\n");

describe("VMGenID device", () => {
  it("writes a 16-byte random id at its address and nothing around it", () => {
    withMemory((mem) => {
      mem.fill(VMGENID_ADDR - 64, 64 + VMGENID_SIZE + 64, 0xee);
      const g = new VmGenId();
      const id = g.writeNewId(mem);
      assert.equal(id.length, VMGENID_SIZE);
      assert.deepEqual(mem.read(VMGENID_ADDR, VMGENID_SIZE), id);
      assert.deepEqual(g.id, id);
      assert.ok(mem.read(VMGENID_ADDR - 64, 64).every((b) => b === 0xee), "bytes below untouched");
      assert.ok(mem.read(VMGENID_ADDR + VMGENID_SIZE, 64).every((b) => b === 0xee), "bytes above untouched");
    });
  });

  it("every write is a new id (what a restore relies on)", () => {
    withMemory((mem) => {
      const g = new VmGenId();
      const ids = new Set(Array.from({ length: 8 }, () => Buffer.from(g.writeNewId(mem)).toString("hex")));
      assert.equal(ids.size, 8);
      assert.equal(Buffer.from(mem.read(VMGENID_ADDR, VMGENID_SIZE)).toString("hex"), Buffer.from(g.id).toString("hex"));
    });
  });

  it("takes exactly 16 bytes from its random source", () => {
    withMemory((mem) => {
      const g = new VmGenId();
      const id = g.writeNewId(mem, (n) => Uint8Array.from({ length: n + 4 }, (_, i) => i + 1));
      assert.deepEqual([...id], Array.from({ length: VMGENID_SIZE }, (_, i) => i + 1));
      assert.equal(mem.readU8(VMGENID_ADDR + VMGENID_SIZE), 0);
      assert.throws(() => g.writeNewId(mem, () => new Uint8Array(3)), isError("ERANGE"));
    });
  });

  it("refuses an id that would not lie entirely inside guest memory", () => {
    withMemory((mem) => {
      assert.throws(() => new VmGenId(2 * MiB - 8).writeNewId(mem), isError("ERANGE"));
      assert.throws(() => new VmGenId(4 * MiB).writeNewId(mem), isError("ERANGE"));
      assert.throws(() => new VmGenId(-16), isError("ERANGE"));
      assert.throws(() => new VmGenId(VMGENID_ADDR, 24), isError("ERANGE"));
      assert.equal(mem.read(2 * MiB - 8, 8).some((b) => b !== 0), false, "nothing written by a refused write");
    });
  });

  it("notifies with one edge on the Generic Event Device's GSI", () => {
    const ctx = new FakeContext();
    new VmGenId().notify(ctx);
    assert.deepEqual(ctx.irqCalls, [{ gsi: GED_GSI, level: 1 }, { gsi: GED_GSI, level: 0 }]);
  });

  it("its saved-state record round-trips through a state file; other records are refused", () => {
    const g = new VmGenId(0x1_0000_0010, 22);
    const { body } = decodeStateFile(encodeStateFile({ vmgenid: g.save() }));
    const saved = (body as { vmgenid: unknown }).vmgenid;
    assert.deepEqual(saved, { kind: "vmgenid", version: 1, guestAddress: 0x1_0000_0010, gsi: 22 });
    const back = VmGenId.fromSaved(saved);
    assert.equal(back.guestAddress, 0x1_0000_0010);
    assert.equal(back.gsi, 22);
    for (const bad of [null, 7, { kind: "i8042", version: 1 }, { kind: "vmgenid", version: 2, guestAddress: 0, gsi: 23 },
      { kind: "vmgenid", version: 1, guestAddress: -1, gsi: 23 }, { kind: "vmgenid", version: 1, guestAddress: 0, gsi: 99 },
      { kind: "vmgenid", version: 1, gsi: 23 }]) {
      assert.throws(() => VmGenId.fromSaved(bad), isError("EBADSTATE"), JSON.stringify(bad));
    }
  });

  it("announces itself and its Generic Event Device in the DSDT", () => {
    const [vgen, ged] = new VmGenId().dsdtDevices();
    assert.ok(Buffer.from(vgen!).includes("VMGENCTR"));
    assert.ok(Buffer.from(ged!).includes("ACPI0013"));
  });
});
