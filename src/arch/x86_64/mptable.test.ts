import assert from "node:assert/strict";
import { test } from "node:test";
import {
  CPU_BOOTPROCESSOR, CPU_ENABLED, MP_BUS, MP_INTSRC, MP_IOAPIC, MP_LINTSRC, MP_PROCESSOR, SMP_MAGIC_IDENT,
  mp_ExtINT, mp_NMI, mpc_table, mpf_intel,
} from "../../linux/abi.generated.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { byteSum } from "../../memory/le.js";
import { ArchError } from "./errors.js";
import { EBDA_START, IOAPIC_START, LAPIC_START, MiB, MPTABLE_START } from "./layout.js";
import { MAX_CPUS, writeMpTable } from "./mptable.js";

/** A minimal MP spec 1.4 reader, in the spirit of Linux's smp_read_mpc(). */
function readMpTable(mem: GuestMemory) {
  // smp_scan_config(): 16-byte aligned "_MP_" in the last KiB of base memory.
  let mpf = -1;
  for (let a = EBDA_START; a < EBDA_START + 1024; a += 16) {
    if (mem.readU32(a) === SMP_MAGIC_IDENT) { mpf = a; break; }
  }
  assert.ok(mpf >= 0, "no MP floating pointer in the EBDA");
  assert.equal(byteSum(mem.slice(mpf, 16 * mem.readU8(mpf + mpf_intel.length))), 0, "floating pointer checksum");
  assert.equal(mem.readU8(mpf + mpf_intel.specification), 4);
  const mpc = mem.readU32(mpf + mpf_intel.physptr);
  assert.equal(Buffer.from(mem.read(mpc, 4)).toString("latin1"), "PCMP");
  const length = mem.readU16(mpc + mpc_table.length);
  assert.equal(byteSum(mem.slice(mpc, length)), 0, "configuration table checksum");
  const out = {
    lapic: mem.readU32(mpc + mpc_table.lapic),
    count: mem.readU16(mpc + mpc_table.oemcount),
    cpus: [] as { apicId: number; flags: number }[],
    buses: [] as string[],
    ioapics: [] as { id: number; address: number }[],
    intsrc: [] as { busIrq: number; apic: number; pin: number }[],
    lint: [] as { type: number; apic: number; lint: number }[],
  };
  let off = mpc + mpc_table.SIZE;
  let n = 0;
  while (off < mpc + length) {
    const type = mem.readU8(off);
    n++;
    switch (type) {
      case MP_PROCESSOR: out.cpus.push({ apicId: mem.readU8(off + 1), flags: mem.readU8(off + 3) }); off += 20; break;
      case MP_BUS: out.buses.push(Buffer.from(mem.read(off + 2, 6)).toString("latin1")); off += 8; break;
      case MP_IOAPIC: out.ioapics.push({ id: mem.readU8(off + 1), address: mem.readU32(off + 4) }); off += 8; break;
      case MP_INTSRC: out.intsrc.push({ busIrq: mem.readU8(off + 5), apic: mem.readU8(off + 6), pin: mem.readU8(off + 7) }); off += 8; break;
      case MP_LINTSRC: out.lint.push({ type: mem.readU8(off + 1), apic: mem.readU8(off + 6), lint: mem.readU8(off + 7) }); off += 8; break;
      default: assert.fail(`unknown MP entry type ${type}`);
    }
  }
  assert.equal(off, mpc + length);
  assert.equal(n, out.count);
  return out;
}

function withMemory(fn: (mem: GuestMemory) => void): void {
  const mem = GuestMemory.create([{ guestBase: 0, size: 1 * MiB }]);
  try { fn(mem); } finally { mem.dispose(); }
}

test("the MP table lists every vCPU with the first as the enabled BSP", () => {
  withMemory((mem) => {
    writeMpTable(mem, 4);
    const t = readMpTable(mem);
    assert.deepEqual(t.cpus, [
      { apicId: 0, flags: CPU_ENABLED | CPU_BOOTPROCESSOR },
      { apicId: 1, flags: CPU_ENABLED },
      { apicId: 2, flags: CPU_ENABLED },
      { apicId: 3, flags: CPU_ENABLED },
    ]);
    assert.equal(t.lapic, LAPIC_START);
  });
});

test("the MP table has one ISA bus, the IOAPIC after the CPUs, and a route for each of its 24 pins", () => {
  withMemory((mem) => {
    writeMpTable(mem, 2);
    const t = readMpTable(mem);
    assert.deepEqual(t.buses, ["ISA   "]);
    assert.deepEqual(t.ioapics, [{ id: 2, address: IOAPIC_START }]);
    assert.equal(t.intsrc.length, 24);
    t.intsrc.forEach((s, i) => assert.deepEqual(s, { busIrq: i, apic: 2, pin: i }));
    assert.deepEqual(t.lint, [{ type: mp_ExtINT, apic: 0, lint: 0 }, { type: mp_NMI, apic: 0xff, lint: 1 }]);
  });
});

test("the largest vCPU count still fits and checksums", () => {
  withMemory((mem) => {
    writeMpTable(mem, MAX_CPUS);
    assert.equal(readMpTable(mem).cpus.length, MAX_CPUS);
  });
});

test("zero or too many vCPUs are rejected with ETOOMANYCPUS", () => {
  withMemory((mem) => {
    for (const n of [0, MAX_CPUS + 1, 1.5]) {
      assert.throws(() => writeMpTable(mem, n), (e: unknown) => e instanceof ArchError && e.code === "ETOOMANYCPUS");
    }
  });
});

test("memory without the EBDA gives ENOTABLESPACE instead of an out-of-range write", () => {
  const mem = GuestMemory.create([{ guestBase: 0, size: MPTABLE_START & ~0xfff }]);
  try {
    assert.throws(() => writeMpTable(mem, 1), (e: unknown) => e instanceof ArchError && e.code === "ENOTABLESPACE");
  } finally {
    mem.dispose();
  }
});
